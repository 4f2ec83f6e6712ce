#!/usr/bin/env python3
"""Writer process for tests/test_crash.py: commits transactions k = START, START+1, ...
against the 4-shard table `t` in DB until it is killed, appending `k` to the
ACKED file (and fsyncing it) after each COMMIT returns.

What transaction k does is a pure function of k (`txn_ops`), so the parent can
replay the acked log into an exact model of the table.

Usage: crash_writer.py DB ACKED START
"""
import os
import struct
import sys
import zlib
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))


def png(width, height, shade):
    """A tiny valid 8-bit greyscale PNG."""
    def chunk(kind, body):
        return (struct.pack(">I", len(body)) + kind + body
                + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF))
    raw = b"".join(b"\0" + bytes([shade % 256]) * width for _ in range(height))
    return (b"\x89PNG\r\n\x1a\n"
            + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


def image(seed):
    """(width, height, png bytes) for a seed."""
    w, h = 1 + seed % 7, 1 + seed % 5
    return w, h, png(w, h, seed)


def txn_ops(k):
    """What transaction k does: inserts [(id, name, seed)], renames [(id, name)],
    data updates [(id, seed)] and deletes [id]."""
    inserts = [(4 * k + i + 1, f"{k}-{i}", 4 * k + i) for i in range(4)]
    renames = [(4 * (k - 1) + 1, f"{k - 1}-0-u{k}")] if k >= 1 and k % 3 == 2 else []
    updates = [(4 * (k - 2) + 2, 1000 + k)] if k >= 2 and k % 4 == 3 else []
    deletes = [4 * (k - 3) + i + 1 for i in range(4)] if k >= 3 and k % 5 == 4 else []
    return inserts, renames, updates, deletes


def main():
    import harness
    db, acked, k = sys.argv[1], sys.argv[2], int(sys.argv[3])
    con = harness.connect(db)
    con.execute("SELECT count(*) FROM t").fetchall()
    print("ready", flush=True)
    fd = os.open(acked, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    while True:
        inserts, renames, updates, deletes = txn_ops(k)
        con.execute("BEGIN")
        for rowid, name, seed in inserts:
            con.execute("INSERT INTO t(id, name, data) VALUES (?, ?, ?)",
                        (rowid, name, image(seed)[2]))
        for rowid, name in renames:
            con.execute("UPDATE t SET name = ? WHERE id = ?", (name, rowid))
        for rowid, seed in updates:
            con.execute("UPDATE t SET data = ? WHERE id = ?", (image(seed)[2], rowid))
        if deletes:
            con.execute("DELETE FROM t WHERE id BETWEEN ? AND ?", (min(deletes), max(deletes)))
        con.execute("COMMIT")
        os.write(fd, f"{k}\n".encode())
        os.fsync(fd)
        k += 1


if __name__ == "__main__":
    main()

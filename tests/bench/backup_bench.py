"""Backup and restore throughput against the physical limit and SQLite's own tools, in one run
(issue 7's figures).

  full         imagestore_backup of a 4-shard table of TOTAL_MB, MB/s of shard bytes
  cp           cp of the same shard files, then fsync (the physical limit on this disk)
  .backup      the sqlite3 shell's `.backup` of each shard file (one file at a time, no cut)
  incremental  imagestore_backup into the same folder after 1% new images: bytes written
  restore      CREATE VIRTUAL TABLE ... restore_from= (verified first), MB/s
  stall        the longest commit of a writer process (4-shard transactions) while a backup
               runs, next to its longest commit without one, and while cp + fsync runs

Usage: python3 tests/bench/backup_bench.py [--total-mb 512] [--csv out.csv]
Not part of the test run. Writes about 4 x TOTAL_MB under IMAGESTORE_BENCH_DIR (default target/).
The page cache is warm for every method alike (the table was just written).
"""
import argparse
import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path

from report import report  # tests/bench/report.py

ROOT = Path(__file__).resolve().parents[2]
LIB = os.environ.get("IMAGESTORE_LIB", str(ROOT / "target" / "release" / "libimagestore.so"))
CORPUS = ROOT.parent / "shared" / "corpus" / "images"

WRITER = """
import sys, time, apsw
con = apsw.Connection(sys.argv[1]); con.set_busy_timeout(30000)
con.enable_load_extension(True); con.load_extension(sys.argv[2])
tiny = open(sys.argv[3], 'rb').read()
end = time.time() + float(sys.argv[4]); worst = 0.0; n = 0
while time.time() < end:
    t = time.perf_counter()
    con.execute("BEGIN")
    for i in range(4):
        con.execute("INSERT INTO images(name, data) VALUES ('w', ?)", (tiny,))
    con.execute("COMMIT")
    worst = max(worst, time.perf_counter() - t); n += 1
print(worst * 1000, n)
"""


def connect(path):
    import apsw
    con = apsw.Connection(str(path))
    con.set_busy_timeout(30000)
    con.enable_load_extension(True)
    con.load_extension(LIB)
    return con


def png_with_text(png, k):
    """`png` with a tEXt chunk before IEND: the same picture, a different file (and hash)."""
    data = b"imagestore-bench\0" + str(k).encode()
    chunk = struct.pack(">I", len(data)) + b"tEXt" + data + struct.pack(">I", zlib.crc32(b"tEXt" + data))
    return png[:-12] + chunk + png[-12:]


def timed(fn):
    t = time.perf_counter()
    result = fn()
    return time.perf_counter() - t, result


def shard_files(db):
    return sorted(db.parent.glob(f"{db.stem}.images.shard*.db"))


def checkpoint(files):
    import apsw
    for f in files:
        con = apsw.Connection(str(f))
        list(con.execute("PRAGMA wal_checkpoint(TRUNCATE)"))
        con.close()


def writer_worst(db, seconds, tiny):
    return subprocess.Popen([sys.executable, "-c", WRITER, str(db), LIB, str(tiny), str(seconds)],
                            stdout=subprocess.PIPE, text=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--total-mb", type=int, default=512)
    ap.add_argument("--csv")
    args = ap.parse_args()
    base = Path(os.environ.get("IMAGESTORE_BENCH_DIR", ROOT / "target"))
    base.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="backup-bench-", dir=base))
    try:
        run(work, args)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def run(work, args):
    images = [(p.name, p.read_bytes()) for p in sorted(CORPUS.iterdir())]
    pngs = [data for name, data in images if name.endswith(".png")]
    tiny = CORPUS / "no_time_for_that_tiny.gif"
    db = work / "bench.db"
    con = connect(db)
    list(con.execute("CREATE VIRTUAL TABLE images USING imagestore(shards=4)"))
    total, k = 0, 0
    while total < args.total_mb << 20:
        list(con.execute("BEGIN"))
        for name, data in images:
            list(con.execute("INSERT INTO images(name, data) VALUES (?, ?)", (name, data)))
            total += len(data)
        list(con.execute("COMMIT"))
        k += 1
    con.close()
    files = shard_files(db)
    checkpoint(files)
    shard_bytes = sum(f.stat().st_size for f in files)
    mb = shard_bytes / 1e6

    def cp_and_sync(name="cp"):
        out = work / name
        out.mkdir()
        subprocess.run(["cp", *map(str, files), str(out)], check=True)
        for f in out.iterdir():
            with open(f, "rb") as h:
                os.fsync(h.fileno())
    t_cp, _ = timed(cp_and_sync)

    def shell_backup():
        out = work / "dotbackup"
        out.mkdir()
        for f in files:
            subprocess.run(["sqlite3", str(f), f".backup '{out / f.name}'"], check=True)
    t_dot, _ = timed(shell_backup)

    con = connect(db)
    folder = work / "bk"
    t_full, full = timed(lambda: json.loads(list(con.execute("SELECT imagestore_backup('images', ?)", (str(folder),)))[0][0]))

    # 1% new images (by bytes), then an incremental backup into the same folder.
    added, j = 0, 0
    list(con.execute("BEGIN"))
    while added < total // 100:
        data = png_with_text(pngs[j % len(pngs)], j)
        list(con.execute("INSERT INTO images(name, data) VALUES ('new', ?)", (data,)))
        added += len(data)
        j += 1
    list(con.execute("COMMIT"))
    t_inc, inc = timed(lambda: json.loads(list(con.execute("SELECT imagestore_backup('images', ?)", (str(folder),)))[0][0]))

    t_restore, _ = timed(lambda: list(con.execute(
        f"CREATE VIRTUAL TABLE restored USING imagestore(restore_from='{folder}', shards=4)")))

    # A writer's longest commit without a backup, then while one runs.
    quiet = writer_worst(db, 2, tiny)
    quiet_worst, quiet_n = map(float, quiet.communicate()[0].split())
    busy = writer_worst(db, 4, tiny)
    time.sleep(0.5)
    t_online, online = timed(lambda: json.loads(list(con.execute("SELECT imagestore_backup('images', ?)", (str(work / "bk2"),)))[0][0]))
    busy_worst, busy_n = map(float, busy.communicate()[0].split())
    copying = writer_worst(db, 4, tiny)
    time.sleep(0.5)
    cp_and_sync("cp2")
    copy_worst, _ = map(float, copying.communicate()[0].split())

    rows = [
        ("full backup MB/s", mb / t_full, "cp + fsync", mb / t_cp),
        ("full backup MB/s", mb / t_full, "sqlite3 .backup", mb / t_dot),
        ("restore MB/s", mb / t_restore, "cp + fsync", mb / t_cp),
        ("incremental bytes written after +1%", inc["bytes_written"], "full backup bytes written", full["bytes_written"]),
        ("writer's longest commit during a backup, ms", busy_worst, "without a backup", quiet_worst),
        ("writer's longest commit during a backup, ms", busy_worst, "during cp + fsync", copy_worst),
    ]
    print(f"table: {mb:.0f} MB in 4 shards ({k * len(images)} rows); +1% = {j} new images, {added / 1e6:.1f} MB")
    report("backup and restore against copying the files", ("measure", "imagestore", "baseline", "baseline value", "ratio"),
           [(what, ours, baseline, theirs, ours / theirs) for what, ours, baseline, theirs in rows], args.csv)
    print(f"incremental: copied {inc['images_copied']} images, {inc['image_bytes_copied'] / 1e6:.1f} MB, "
          f"in {t_inc:.2f} s (full: {t_full:.2f} s); online backup took {t_online:.2f} s, writers held "
          f"{online['writers_held_ms']:.3f} ms at its start, writer commits {busy_n:.0f} during vs {quiet_n:.0f} in 2 s quiet")


if __name__ == "__main__":
    main()

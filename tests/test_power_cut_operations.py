"""Power cuts during whole-table operations: `imagestore_derive`, `imagestore_backup` and a restore
(`restore_from=`), each run in a child process on the power-cut file system (tests/powercut) and
cut at a random moment. Afterwards: the derived column is all old or all new (all new if the
call returned before the cut); a backup folder is refused or verifies whole, and a backup that
returned before the cut verifies; a restored table is absent or whole, and present if the CREATE
returned. Oracles: the per-image function (image_phash) on each row, the source's rows, and
imagestore_verify's own checks of every file against the manifest.
"""
import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

import apsw
import pytest

from harness import CORPUS, connect, corpus_bytes, shard_paths
from powercut import PowerCutFS, available

pytestmark = pytest.mark.skipif(available() is not None, reason=str(available()))

HERE = Path(__file__).resolve().parent
IMAGES = sorted((CORPUS / "images").iterdir())
ROUNDS = int(os.environ.get("IMAGESTORE_POWERCUT_ROUNDS", 15))
# The phash methods derive alternates between: each round's outcome is told apart by its oracle.
METHODS = ("projection", "imagehash")


@pytest.fixture
def disk(tmp_path):
    with PowerCutFS(tmp_path / "disk") as fs:
        yield fs


def make_table(db):
    con = connect(db)
    con.execute("CREATE VIRTUAL TABLE t USING imagestore(shards=3, ph INTEGER)")
    con.execute("BEGIN")
    for p in IMAGES:
        con.execute("INSERT INTO t(name, data) VALUES (?, ?)", (p.name, p.read_bytes()))
    con.execute("COMMIT")
    return con


def start(db, sql, work=None):
    """A child that runs `sql` on `db` (or the Python `work`, with `con` and `harness` at hand),
    printing 'go' before and 'done' once it returned."""
    work = work or f"list(con.execute({sql!r}))"
    code = (f"import harness; from harness import connect; con = connect({str(db)!r})\n"
            # SQLite's own rule: in the default rollback-journal mode a commit is durable at a
            # power cut only at EXTRA (FULL does not sync the folder after deleting the
            # journal); the table's schema rides on the host's commits.
            f"con.execute('PRAGMA synchronous=EXTRA'); print('go', flush=True)\n"
            f"{work}\nprint('done', flush=True)\n")
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=HERE,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    assert proc.stdout.readline().strip() == b"go"
    return proc


def cut_during(fs, proc, delay, rng):
    """Cuts the power `delay` seconds into `proc`'s work (all unsynced, or a random part);
    returns whether its statement had returned (acknowledged) before the cut."""
    time.sleep(delay)
    fs.cut_at_random(rng, kill=[proc])
    acknowledged = b"done" in proc.stdout.read()
    proc.stdout.close()
    return acknowledged


def timed(db, sql, work=None):
    """How long `sql` (or `work`) takes in a child, from its 'go' to its 'done' (the window
    cuts fall in)."""
    proc = start(db, sql, work)
    started = time.perf_counter()
    assert proc.stdout.readline().strip() == b"done"
    duration = time.perf_counter() - started
    proc.wait()
    proc.stdout.close()
    return duration


def derive_sql(method):
    return f"SELECT imagestore_derive('t', 'ph', 'phash', '{method}')"


def derived_by(db):
    """Which method's hashes the table holds, whole: a METHODS entry, None (never derived)."""
    con = connect(db)
    (rows,), = con.execute("SELECT count(*) FROM t")
    counts = {m: con.execute(f"SELECT count(*) FROM t WHERE ph IS image_phash(data, '{m}')").fetchone()[0]
              for m in METHODS}
    (unset,), = con.execute("SELECT count(*) FROM t WHERE ph IS NULL")
    con.close()
    assert rows == len(IMAGES)
    whole = [m for m, n in counts.items() if n == rows] + ([None] if unset == rows else [])
    assert whole, f"half derived: {counts}, {unset} unset, of {rows}"
    return whole[0]


def test_power_cuts_during_derive(disk):
    db = Path(disk.path("d.db"))
    make_table(db).close()
    duration = timed(db, derive_sql(METHODS[1])) + timed(db, derive_sql(METHODS[0]))
    rng = random.Random(int(os.environ.get("IMAGESTORE_POWERCUT_SEED", 5)))
    now, outcomes = derived_by(db), {"new": 0, "old": 0}
    for k in range(ROUNDS):
        method = METHODS[(k + 1) % 2]
        proc = start(db, derive_sql(method))
        acknowledged = cut_during(disk, proc, rng.uniform(0, duration * 0.75), rng)
        after = derived_by(db)
        assert after in (now, method), (now, method, after)
        assert after == method or not acknowledged, "an acknowledged derive was lost"
        outcomes["new" if after == method else "old"] += 1
        now = after
    print(f"\npower cuts during derive: {outcomes}")
    assert outcomes["new"] and outcomes["old"], outcomes


def verify(db, folder):
    con = connect(db)
    try:
        (report,), = con.execute("SELECT imagestore_verify(?)", (str(folder),))
        return json.loads(report)
    except apsw.Error as e:
        return {"ok": False, "error": str(e)}
    finally:
        con.close()


def test_power_cuts_during_backup_and_restore(disk):
    db = Path(disk.path("b.db"))
    con = make_table(db)
    expected = con.execute("SELECT id, name, hash FROM t ORDER BY id").fetchall()
    con.close()
    timing = Path(disk.path("timing"))
    backup_duration = timed(db, f"SELECT imagestore_backup('t', '{timing}')")
    restore_duration = timed(db, f"CREATE VIRTUAL TABLE timing USING imagestore(restore_from='{timing}', shards=2)")
    rng = random.Random(int(os.environ.get("IMAGESTORE_POWERCUT_SEED", 7)))
    outcomes = {"backup refused": 0, "backup whole": 0, "table absent": 0, "table whole": 0}
    for k in range(ROUNDS):
        folder = Path(disk.path(f"backup{k}"))
        proc = start(db, f"SELECT imagestore_backup('t', '{folder}')")
        acknowledged = cut_during(disk, proc, rng.uniform(0, backup_duration * 2.5), rng)
        report = verify(db, folder)
        if acknowledged:
            assert report["ok"], f"a backup that returned did not survive the cut: {report}"
        if report["ok"]:
            assert report["rows"] == len(expected), report
            outcomes["backup whole"] += 1
        else:
            outcomes["backup refused"] += 1
    # The restores start from a whole backup: the timing run's, which no cut touched (under a
    # loaded machine every cut backup may have been cut short).
    source = timing
    assert verify(db, source)["ok"]
    for k in range(ROUNDS):
        sql = f"CREATE VIRTUAL TABLE r{k} USING imagestore(restore_from='{source}', shards=2)"
        proc = start(db, sql)
        acknowledged = cut_during(disk, proc, rng.uniform(0, restore_duration * 2.5), rng)
        con = connect(db)
        present = con.execute("SELECT count(*) FROM sqlite_schema WHERE name = ?", (f"r{k}",)).fetchone()[0]
        if present:
            assert con.execute(f"SELECT id, name, hash FROM r{k} ORDER BY id").fetchall() == expected
            outcomes["table whole"] += 1
        else:
            assert not acknowledged, "a restore whose CREATE returned was lost"
            outcomes["table absent"] += 1
        con.close()
    print(f"\npower cuts during backup and restore: {outcomes}")
    assert outcomes["backup refused"] and outcomes["table absent"], outcomes


def write_transactions(fs, db, first, count):
    """Transactions first .. first + count - 1, of four rows each (ids 4k+1 .. 4k+4), in a
    child, then a power cut while it still has the table open (its last close would checkpoint
    the shards, making their commits durable)."""
    code = (f"import time; from harness import connect, corpus_bytes; con = connect({str(db)!r})\n"
            f"image = corpus_bytes('no_time_for_that_tiny.gif')\n"
            f"for k in range({first}, {first + count}):\n"
            f"    con.execute('BEGIN')\n"
            f"    for i in range(4): con.execute('INSERT INTO t(id, data) VALUES (?, ?)', (4 * k + i + 1, image))\n"
            f"    con.execute('COMMIT')\n"
            f"print('done', flush=True); time.sleep(60)\n")
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=HERE, stdout=subprocess.PIPE)
    assert proc.stdout.readline().strip() == b"done"
    fs.cut(kill=[proc])
    proc.stdout.close()


TINY_GIF = corpus_bytes("no_time_for_that_tiny.gif")


def test_power_cuts_during_recovery(disk):
    """Logged commits do not sync their shards, so a cut takes them from the shards and leaves
    them in the journal; the next open replays them. Cut that replay too, at a random moment,
    again and again: every acknowledged transaction is there, whole, once it finishes."""
    db = Path(disk.path("r.db"))
    con = connect(db)
    con.execute("PRAGMA synchronous=EXTRA")
    con.execute("CREATE VIRTUAL TABLE t USING imagestore(shards=4)")
    con.close()
    rng = random.Random(int(os.environ.get("IMAGESTORE_POWERCUT_SEED", 13)))
    written, duration, replayed = 0, None, 0
    for k in range(ROUNDS):
        # The shards lose the logged commits; the journal keeps them.
        write_transactions(disk, db, written, 30)
        written += 30
        if duration is None:
            on_shards = sum(apsw.Connection(str(p)).execute("SELECT count(*) FROM images").fetchone()[0]
                            for p in shard_paths(db, "t", 4))
            assert on_shards < 4 * written, "the cut took nothing from the shards: no replay to cut"
            duration = timed(db, "SELECT count(*) FROM t")
            continue
        proc = start(db, "SELECT count(*) FROM t")
        cut_during(disk, proc, rng.uniform(0, duration * 1.5), rng)
        con = connect(db)
        rows = con.execute("SELECT id, length(data) FROM t ORDER BY id").fetchall()
        con.close()
        assert rows == [(i, len(TINY_GIF)) for i in range(1, 4 * written + 1)], \
            f"round {k}: {len(rows)} rows of {4 * written}"
        replayed += 1
    print(f"\npower cuts during recovery: {replayed} replays cut, {written} transactions kept")


def test_power_cuts_during_an_import(disk):
    """The corpus imported in one transaction (prepared: larger than logged_commit_max), the
    power cut at a random moment: all of it or none of it, all of it if COMMIT returned."""
    db = Path(disk.path("i.db"))
    con = connect(db)
    con.execute("PRAGMA synchronous=EXTRA")
    con.execute("CREATE VIRTUAL TABLE t USING imagestore(shards=3)")
    con.close()
    names = [p.name for p in IMAGES]

    def work(label):
        return (f"con.execute('BEGIN')\n"
                f"for p in {[str(p) for p in IMAGES]!r}:\n"
                f"    con.execute('INSERT INTO t(name, data) VALUES (?, ?)', "
                f"('{label}:' + p.rsplit('/', 1)[1], open(p, 'rb').read()))\n"
                f"con.execute('COMMIT')")
    # The cut comes at a random moment of a window that shrinks after each import that got
    # through and grows after each cut that came first, so that cuts land on both sides of the
    # commit however the timing run's load differed from the rounds'.
    window = timed(db, None, work("timing")) * 2.5
    rng = random.Random(int(os.environ.get("IMAGESTORE_POWERCUT_SEED", 17)))
    outcomes = {"imported": 0, "absent": 0}
    for k in range(ROUNDS):
        proc = start(db, None, work(k))
        acknowledged = cut_during(disk, proc, rng.uniform(0, window), rng)
        con = connect(db)
        got = con.execute("SELECT name, hash FROM t WHERE name LIKE ? ORDER BY id", (f"{k}:%",)).fetchall()
        con.close()
        assert [n.split(":", 1)[1] for n, _ in got] in ([], names), f"round {k}: {len(got)} of {len(names)}"
        assert got or not acknowledged, "an acknowledged import was lost"
        outcomes["imported" if got else "absent"] += 1
        window *= 0.7 if got else 1.4
    print(f"\npower cuts during an import: {outcomes}")
    assert outcomes["imported"] and outcomes["absent"], outcomes

"""The product under power cuts (tests/powercut: a FUSE file system that forgets, on command,
everything not synced): the crash loop of test_crash.py, with the table on the power-cut file
system and each kill a power cut. After every cut: every transaction whole or absent, every
commit acknowledged before the cut present, and the table opens without a person's decision.
"""
import os
import random
import subprocess
import sys
import time
from pathlib import Path

import apsw
import pytest

from harness import connect
from powercut import PowerCutFS, available
from powercut_worker import problems_in, transactions
from test_crash import run_crash_loop, wait_ready

pytestmark = pytest.mark.skipif(available() is not None, reason=str(available()))
HERE = Path(__file__).resolve().parent


def seed_and_cuts(share=1):
    """The run's seed and this test's number of cuts (`IMAGESTORE_POWERCUT_CUTS` // `share`)."""
    seed = int(os.environ.get("IMAGESTORE_POWERCUT_SEED", time.time_ns() % 10 ** 9))
    return seed, int(os.environ.get("IMAGESTORE_POWERCUT_CUTS", 70)) // share

PATHS = {
    # Small transactions: LOGGED records (the shards' commits are not synced); a small journal
    # limit so that trims are cut too.
    "logged": "shards=4, journal_limit=4096",
    # Every transaction prepared on its shards, then a COMMIT record.
    "prepared": "shards=4, logged_commit_max=0",
}


@pytest.mark.parametrize("path", sorted(PATHS))
def test_power_cuts_during_writes(tmp_path, capsys, path):
    seed, cuts = seed_and_cuts()
    seconds = float(os.environ.get("IMAGESTORE_POWERCUT_SECONDS", 60))
    rng = random.Random(seed)
    with PowerCutFS(tmp_path / "disk") as fs:
        summary, partial, lost, problems = run_crash_loop(
            tmp_path, cuts, seconds, seed, crash=lambda proc: fs.cut_at_random(rng, kill=[proc]),
            db_dir=Path(fs.mountpoint),
            options=PATHS[path], min_kills=min(cuts, 10))
    with capsys.disabled():
        print(f"\n{path}: {summary.replace('kills', 'power cuts')} (seed {seed})")
    assert partial == 0 and lost == 0, summary + "\n" + "\n".join(problems)
    assert not problems, "\n".join(problems)


FAULT_LIB = str(HERE.parent / "target" / "fault" / "release" / "libimagestore.so")

# Each sync the protocol document relies on, with the path whose commits it protects. Left out
# (`IMAGESTORE_SKIP_SYNC`, test build only), power cuts must lose an acknowledged commit or
# half a transaction, or leave the table refusing to open because commits are lost: else these
# tests could not see it. (`shard_wal_folder`, the folder sync after a new shard WAL's first
# fsync, is not here: SQLite syncs a new WAL's folder itself when it writes its header, so
# leaving ours out loses nothing, as 40 cuts showed.)
NEEDED_SYNCS = {
    "journal_record": "logged",      # the LOGGED record's fdatasync is the commit point
    "shard_wal": "prepared",         # a prepare's WAL fsync, before the COMMIT record
    "journal_folder": "logged",      # the folder sync after a trim renames a new journal in
}


@pytest.mark.parametrize("sync", sorted(NEEDED_SYNCS))
def test_each_sync_the_protocol_relies_on_is_needed(tmp_path, monkeypatch, capsys, sync):
    assert os.path.exists(FAULT_LIB), f"the fault-injection build is missing: {FAULT_LIB}"
    monkeypatch.setenv("IMAGESTORE_LIB", FAULT_LIB)
    monkeypatch.setenv("IMAGESTORE_SKIP_SYNC", sync)
    seed, _ = seed_and_cuts()
    with PowerCutFS(tmp_path / "disk") as fs:
        try:
            summary, partial, lost, problems = run_crash_loop(
                tmp_path, 40, 60, seed, crash=lambda proc: fs.cut(kill=[proc]),
                db_dir=Path(fs.mountpoint), options=PATHS[NEEDED_SYNCS[sync]])
            outcome = f"{summary}; {problems[:1]}"
            caught = bool(partial or lost or problems)
        except apsw.CorruptError as e:  # the table refuses to open, naming the lost commits
            outcome, caught = f"{type(e).__name__}: {str(e)[:300]}", "lacks transactions" in str(e)
    with capsys.disabled():
        print(f"\nwithout the {sync} sync: {outcome}")
    assert caught, f"with the {sync} sync left out, power cuts lost nothing: {outcome}"


def test_power_cuts_under_several_writers_and_a_reader(tmp_path, capsys):
    """Three writer processes and a reader on one table, the power cut under them again and
    again: no query of the reader ever sees a transaction in part, and after each cut every
    writer's acknowledged transactions are there, whole, in order, and at most the one it had
    in flight besides."""
    seed, cuts = seed_and_cuts(share=2)
    rng = random.Random(seed)
    worker = HERE / "powercut_worker.py"
    writers = 3
    violations, errors = tmp_path / "violations", tmp_path / "errors"
    acked = [tmp_path / f"acked{w}" for w in range(writers)]
    next_k = [0] * writers
    checked = 0
    with PowerCutFS(tmp_path / "disk") as fs:
        db = Path(fs.mountpoint) / "w.db"
        con = connect(db)
        con.execute("PRAGMA synchronous=EXTRA")  # the CREATE itself must survive (README)
        con.execute("CREATE VIRTUAL TABLE t USING imagestore(shards=4, journal_limit=65536)")
        con.close()
        for cut in range(cuts):
            with open(errors, "ab") as err:
                procs = [subprocess.Popen([sys.executable, str(worker), "writer", str(db), str(acked[w]),
                                           str(w), str(next_k[w])], stdout=subprocess.PIPE, stderr=err)
                         for w in range(writers)]
                procs.append(subprocess.Popen([sys.executable, str(worker), "reader", str(db),
                                               str(violations)], stdout=subprocess.PIPE, stderr=err))
            if rng.random() < 0.2:
                time.sleep(rng.uniform(0.0, 0.1))  # sometimes while they open (recovery)
            else:
                assert all(wait_ready(p) for p in procs), "a worker never got ready"
                time.sleep(rng.uniform(0.05, 0.5))
            assert all(p.poll() is None for p in procs), errors.read_text()[-3000:]
            fs.cut_at_random(rng, kill=procs)
            for p in procs:
                p.stdout.close()
            con = connect(db)
            rows = con.execute("SELECT id FROM t").fetchall()
            con.close()
            assert not problems_in(rows), f"cut {cut}: {problems_in(rows)}"
            present = transactions(rows)
            for w in range(writers):
                log = acked[w].read_text().split("\n")[:-1] if acked[w].exists() else []
                acknowledged = int(log[-1]) + 1 if log else 0
                have = len(present.get(w, {}))
                assert acknowledged <= have <= max(acknowledged, next_k[w]) + 1, (
                    f"cut {cut}, writer {w}: {acknowledged} transactions acknowledged, {have} present")
                checked += have - next_k[w]
                next_k[w] = have
    seen = violations.read_text() if violations.exists() else ""
    with capsys.disabled():
        print(f"\nseveral writers: {cuts} power cuts, {checked} transactions checked (seed {seed})")
    assert not seen, seen[:2000]


@pytest.mark.parametrize("journal_mode, synchronous", [("wal", "FULL"), ("delete", "EXTRA")])
@pytest.mark.parametrize("tables", ["one", "two"])
def test_power_cuts_during_mixed_transactions(tmp_path, capsys, journal_mode, synchronous, tables):
    """Transactions that write an ordinary table and the imagestore table (`one`), or two
    imagestore tables (`two`), decided by a row in the host's own transaction, under power cuts,
    with the host durable at each commit (WAL at FULL, or rollback journal at EXTRA): each
    transaction in both tables or neither, every acknowledged one present, nothing left prepared.
    (Found by this test: decision rows were deleted before the shards' finalizes of them were
    durable, and a cut then left a transaction on some shards only.)"""
    seed, cuts = seed_and_cuts(share=4)
    rng = random.Random(seed)
    writer = HERE / "mixed_writer.py"
    acknowledged, start = set(), 0
    with PowerCutFS(tmp_path / "disk") as fs:
        db = fs.path("m.db")
        con = connect(db)
        con.execute(f"PRAGMA journal_mode={journal_mode}")
        con.execute("PRAGMA synchronous=EXTRA")
        con.execute("CREATE TABLE plain(k INTEGER PRIMARY KEY)")
        con.execute("CREATE VIRTUAL TABLE t USING imagestore(shards=4, journal_limit=4096)")
        con.execute("CREATE VIRTUAL TABLE u USING imagestore(shards=2, journal_limit=4096)")
        con.close()
        for cut in range(cuts):
            proc = subprocess.Popen([sys.executable, str(writer), db, str(start), "1000000", tables, synchronous],
                                    cwd=HERE, stdout=subprocess.PIPE,
                                    stderr=subprocess.DEVNULL)  # its I/O errors at the cut
            if rng.random() < 0.2:
                time.sleep(rng.uniform(0, 0.05))  # sometimes while it opens (recovery)
            else:
                assert wait_ready(proc), "the writer never got ready"
                time.sleep(rng.uniform(0.02, 0.4))
            fs.cut_at_random(rng, kill=[proc])
            acknowledged |= {int(x) for x in proc.stdout.read().split() if x.isdigit()}
            proc.stdout.close()
            con = connect(db)
            other = {k for (k,) in con.execute("SELECT k FROM plain" if tables == "one" else "SELECT id FROM u")}
            rows = {}
            for rowid, name in con.execute("SELECT id, name FROM t"):
                rows.setdefault(int(name), set()).add(rowid)
            (prepared,), = con.execute("SELECT imagestore_transactions('t')")
            con.close()
            for k in sorted(other | set(rows)):
                touched = (1, 2, 4)[k % 3]
                assert k in other and rows.get(k) == {k * 10 + j for j in range(touched)}, (
                    f"cut {cut}, transaction {k}: other table {k in other}, t rows {sorted(rows.get(k, ()))} (seed {seed})")
            assert acknowledged <= other, f"cut {cut}: acknowledged but missing {sorted(acknowledged - other)[:10]}"
            assert prepared == "[]", prepared
            start = max(acknowledged | other | {start}) + 1000
    with capsys.disabled():
        print(f"\nmixed ({journal_mode}, {tables}): {cuts} power cuts, {len(other)} transactions present, "
              f"{len(acknowledged)} acknowledged (seed {seed})")

"""The product under power cuts (tests/powercut: a FUSE file system that forgets, on command,
everything not synced): the crash loop of test_crash.py, with the table on the power-cut file
system and each kill a power cut. After every cut: every transaction whole or absent, every
commit acknowledged before the cut present, and the table opens without a person's decision.
"""
import os
import random
import time

import pytest

from powercut import PowerCutFS, available
from test_crash import run_crash_loop

pytestmark = pytest.mark.skipif(available() is not None, reason=str(available()))

PATHS = {
    # Small transactions: LOGGED records (the shards' commits are not synced); a small journal
    # limit so that trims are cut too.
    "logged": "shards=4, journal_limit=4096",
    # Every transaction prepared on its shards, then a COMMIT record.
    "prepared": "shards=4, logged_commit_max=0",
}


@pytest.mark.parametrize("path", sorted(PATHS))
def test_power_cuts_during_writes(tmp_path, capsys, path):
    seed = int(os.environ.get("IMAGESTORE_POWERCUT_SEED", time.time_ns() % 10 ** 9))
    cuts = int(os.environ.get("IMAGESTORE_POWERCUT_CUTS", 40))
    seconds = float(os.environ.get("IMAGESTORE_POWERCUT_SECONDS", 60))
    rng = random.Random(seed)
    backing = tmp_path / "disk"
    backing.mkdir()
    with PowerCutFS(str(backing)) as fs:
        def cut(proc):
            # Half the cuts drop everything unsynced; half keep a random part of it.
            fs.cut(seed=rng.randrange(1, 2 ** 32) if rng.random() < 0.5 else None, kill=[proc])

        summary, partial, lost, problems = run_crash_loop(
            tmp_path, cuts, seconds, seed, crash=cut, db_dir=type(tmp_path)(fs.mountpoint),
            options=PATHS[path])
    with capsys.disabled():
        print(f"\n{path}: {summary.replace('kills', 'power cuts')} (seed {seed})")
    assert partial == 0 and lost == 0, summary + "\n" + "\n".join(problems)
    assert not problems, "\n".join(problems)


FAULT_LIB = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                         "target", "fault", "release", "libimagestore.so")

# Each sync the protocol document relies on, with the path whose commits it protects. Left out
# (`IMAGESTORE_SKIP_SYNC`, test build only), power cuts must lose an acknowledged commit or
# half a transaction, or leave the table refusing to open: else these tests could not see it.
NEEDED_SYNCS = {
    "journal_record": "logged",      # the LOGGED record's fdatasync is the commit point
    "shard_wal": "prepared",         # a prepare's WAL fsync, before the COMMIT record
    "journal_folder": "logged",      # the folder sync after a trim renames a new journal in
}


@pytest.mark.parametrize("sync", sorted(NEEDED_SYNCS))
def test_each_sync_the_protocol_relies_on_is_needed(tmp_path, monkeypatch, capsys, sync):
    monkeypatch.setenv("IMAGESTORE_LIB", FAULT_LIB)
    monkeypatch.setenv("IMAGESTORE_SKIP_SYNC", sync)
    seed = int(os.environ.get("IMAGESTORE_POWERCUT_SEED", time.time_ns() % 10 ** 9))
    backing = tmp_path / "disk"
    backing.mkdir()
    with PowerCutFS(str(backing)) as fs:
        try:
            summary, partial, lost, problems = run_crash_loop(
                tmp_path, 40, 60, seed, crash=lambda proc: fs.cut(kill=[proc]),
                db_dir=type(tmp_path)(fs.mountpoint), options=PATHS[NEEDED_SYNCS[sync]])
            outcome = f"{summary}; {problems[:1]}"
            caught = bool(partial or lost or problems)
        except Exception as e:  # noqa: BLE001 (the table refused to open: also caught)
            outcome, caught = f"{type(e).__name__}: {str(e)[:300]}", True
    with capsys.disabled():
        print(f"\nwithout the {sync} sync: {outcome}")
    assert caught, f"with the {sync} sync left out, power cuts lost nothing: {outcome}"


def test_power_cuts_under_several_writers_and_a_reader(tmp_path, capsys):
    """Three writer processes and a reader on one table, the power cut under them again and
    again: no query of the reader ever sees a transaction in part, and after each cut every
    writer's acknowledged transactions are there, whole, in order, and at most the one it had
    in flight besides."""
    import subprocess
    import sys
    from pathlib import Path

    from harness import connect
    from powercut_worker import problems_in, transactions
    from test_crash import wait_ready

    seed = int(os.environ.get("IMAGESTORE_POWERCUT_SEED", time.time_ns() % 10 ** 9))
    cuts = int(os.environ.get("IMAGESTORE_POWERCUT_CUTS", 40)) // 2
    rng = random.Random(seed)
    worker = Path(__file__).resolve().parent / "powercut_worker.py"
    writers = 3
    backing = tmp_path / "disk"
    backing.mkdir()
    violations, errors = tmp_path / "violations", tmp_path / "errors"
    acked = [tmp_path / f"acked{w}" for w in range(writers)]
    next_k = [0] * writers
    checked = 0
    with PowerCutFS(str(backing)) as fs:
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
            fs.cut(seed=rng.randrange(1, 2 ** 32) if rng.random() < 0.5 else None, kill=procs)
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

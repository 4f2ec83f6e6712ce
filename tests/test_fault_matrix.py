"""Faults at every step of the commit and recovery paths: every transaction whole or absent.

The library built with the cargo feature `fault-injection` (target/fault/release) makes the nth
occurrence of a named protocol step return an I/O error or abort the process
(IMAGESTORE_FAULT=step:n:mode, see src/fault.rs). For every commit path over several shards
(prepared, logged into the journal, and three-phase, whose journal is deleted before the
check: it decides nothing) and every step of each x mode x shards touched
(1, 2 and all 4: a transaction on one shard takes the same paths) a
writer process runs transactions until the fault strikes; then the table is reopened with the
ordinary library (recovery runs) and checked against the writer's log: each transaction whole or
absent, every COMMIT that returned present, every COMMIT that returned an error absent.
Recovery's own steps are faulted after crashes that leave prepare records, or logged commits
that some shards lack, behind.
"""
import os
import subprocess
import sys
from pathlib import Path

import pytest

from fault_worker import baseline_ids, plan
from harness import REPO_ROOT, connect, corpus_bytes, require_lib

HERE = Path(__file__).resolve().parent
FAULT_LIB = Path(os.environ.get("IMAGESTORE_FAULT_LIB", REPO_ROOT / "target" / "fault" / "release" / "libimagestore.so"))
# Each commit path: the table argument that selects it, and its steps.
PATHS = {
    "prepared": (", logged_commit_max=0",
                 ["shard_prepare", "journal_append", "journal_sync", "shard_finalize", "journal_reset"]),
    "logged": ("", ["journal_append", "journal_sync", "shard_commit_logged", "journal_reset"]),
    "3pc": (", protocol='3pc'",
            ["shard_prepare", "shard_pre_commit", "shard_withdraw_pre_commit", "shard_finalize"]),
}
# A withdrawal runs only after a pre-commit failed: that one fails (with an error) first.
WITHDRAWALS = {"shard_withdraw_pre_commit": "shard_pre_commit",
               "server_withdraw_pre_commit": "server_pre_commit"}
CASES = [(path, step, touched) for path, (_, steps) in PATHS.items() for step in steps
         for touched in (1, 2, 4)]
MODES = ["error", "abort"]
TXNS = 6
RESET_TXNS = 160  # enough 2-shard commits to pass journal_limit=4096 and reset the journal
totals = {"runs": 0, "fired": 0, "transactions": 0, "partial": 0, "lost": 0}


def fault_spec(step, nth, mode):
    """IMAGESTORE_FAULT for a fault at the `nth` occurrence of `step` (of a withdrawal: the first
    one after the `nth` pre-commit failed)."""
    if step in WITHDRAWALS:
        return f"{WITHDRAWALS[step]}:{nth}:error,{step}:1:{mode}"
    return f"{step}:{nth}:{mode}"


def make_table(db, txns, touched, path):
    fill_baseline(db, f"shards=4, journal_limit=4096{PATHS[path][0]}", txns, touched)


def fill_baseline(db, arguments, txns, touched):
    """Table t made with `arguments`, holding the plan's baseline rows."""
    con = connect(db)
    con.execute(f"CREATE VIRTUAL TABLE t USING imagestore({arguments})")
    image = corpus_bytes("no_time_for_that_tiny.gif")
    con.execute("BEGIN")
    for i in baseline_ids(txns, touched):
        con.execute("INSERT INTO t(id, name, data) VALUES (?, 'base', ?)", (i, image))
    con.execute("COMMIT")
    con.close()


def run_writer(db, txns, touched, acked, fault):
    env = dict(os.environ, IMAGESTORE_LIB=str(FAULT_LIB), IMAGESTORE_FAULT=fault)
    return subprocess.run([sys.executable, str(HERE / "fault_worker.py"), str(db), str(txns), str(touched), str(acked)],
                          cwd=HERE, env=env, capture_output=True, text=True, timeout=120)


def open_with_fault(db, fault):
    """Opens the table in a process whose recovery step faults."""
    code = f"from harness import connect; list(connect({str(db)!r}).execute('SELECT count(*) FROM t'))"
    env = dict(os.environ, IMAGESTORE_LIB=str(FAULT_LIB), IMAGESTORE_FAULT=fault)
    return subprocess.run([sys.executable, "-c", code], cwd=HERE, env=env, capture_output=True, text=True, timeout=60)


def transaction_state(rows, k, ops):
    """'whole', 'absent' or 'partial': transaction k, doing `ops` (its plan), in `rows`
    (id -> name)."""
    applied = [rows.get(n) == f"t{k}" and rows.get(r) == f"t{k}" and d not in rows for n, r, d in ops]
    absent = [n not in rows and rows.get(r) == "base" and d in rows for n, r, d in ops]
    return "whole" if all(applied) else "absent" if all(absent) else "partial"


def tally(db, txns, touched, acked):
    """(partial, lost) after reopening with the ordinary library: transactions neither whole
    nor absent, and transactions whose outcome disagrees with the writer's log."""
    con = connect(db)
    rows = dict(con.execute("SELECT id, name FROM t"))
    outcomes = dict(line.split() for line in Path(acked).read_text().splitlines()) if Path(acked).exists() else {}
    partial = lost = 0
    for k, ops in enumerate(plan(txns, touched)):
        state = transaction_state(rows, k, ops)
        whole, none = state == "whole", state == "absent"
        if state == "partial":
            partial += 1
        outcome = outcomes.get(str(k))
        if (outcome == "ok" and not whole) or (outcome == "err" and not none):
            lost += 1
    return partial, lost


def check(db, txns, touched, acked):
    """Counts (transactions, partial, lost) after reopening with the ordinary library."""
    partial, lost = tally(db, txns, touched, acked)
    # Nothing of the protocol is left behind, and no orphan blob.
    for i in range(4):
        shard = connect(db.with_name(f"{db.stem}.t.shard{i}.db"), load=False)
        (prepared,), = shard.execute("SELECT count(*) FROM imagestore_prepared")
        (before_states,), = shard.execute("SELECT count(*) FROM imagestore_undo")
        (orphans,), = shard.execute("SELECT count(*) FROM blobs WHERE blob_id NOT IN (SELECT blob_id FROM images)")
        assert (prepared, before_states, orphans) == (0, 0, 0), (i, prepared, before_states, orphans)
    return txns, partial, lost


def record(result, fired):
    txns, partial, lost = result
    totals["runs"] += 1
    totals["fired"] += fired
    totals["transactions"] += txns
    totals["partial"] += partial
    totals["lost"] += lost
    assert (partial, lost) == (0, 0)


@pytest.fixture(scope="module", autouse=True)
def summary():
    require_lib()
    if not FAULT_LIB.exists():
        pytest.fail(f"fault-injection build missing: {FAULT_LIB} (tests/run-all.sh builds it)")
    yield
    print(f"\nfault matrix: {totals['runs']} runs (steps x modes x shards touched), faults fired "
          f"{totals['fired']}, transactions checked {totals['transactions']}, "
          f"partial {totals['partial']}, lost {totals['lost']}")


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("path,step,touched", CASES)
def test_fault_at_commit_step(tmp_path, path, step, mode, touched):
    txns = RESET_TXNS if step == "journal_reset" else TXNS
    db, acked = tmp_path / "f.db", tmp_path / "acked"
    make_table(db, txns, touched, path)
    nth = 1 if step == "journal_reset" else 2
    result = run_writer(db, txns, touched, acked, fault_spec(step, nth, mode))
    fired = f"fault injected at {step}" in result.stderr
    if path == "3pc":
        for journal in tmp_path.glob("*.imagestore-journal"):
            journal.unlink()
    record(check(db, txns, touched, acked), fired)
    assert fired, f"{step} never ran: {result.stderr[-2000:]}"


# A crash that leaves work for recovery, and recovery's step that then faults:
# prepare records before the decision or after it (before finalize), or a logged commit that
# only its first shard committed.
RECOVERY_CASES = {
    "prepared, undecided": ("prepared", "journal_append:2:abort", "recovery_shard"),
    "prepared, decided": ("prepared", "shard_finalize:2:abort", "recovery_shard"),
    "logged, partly committed": ("logged", "shard_commit_logged:2:abort", "recovery_replay"),
    "3pc, pre-committed in part": ("3pc", "shard_pre_commit:2:abort", "recovery_shard"),
}


@pytest.mark.parametrize("case", RECOVERY_CASES)
@pytest.mark.parametrize("mode", MODES)
def test_fault_during_recovery(tmp_path, mode, case):
    path, crash, step = RECOVERY_CASES[case]
    db, acked = tmp_path / "f.db", tmp_path / "acked"
    make_table(db, TXNS, 4, path)
    assert run_writer(db, TXNS, 4, acked, crash).returncode != 0
    # Recovery itself fails at its first shard, then again at its second.
    for nth in (1, 2):
        opened = open_with_fault(db, f"{step}:{nth}:{mode}")
        assert f"fault injected at {step}" in opened.stderr, opened.stderr[-2000:]
    record(check(db, TXNS, 4, acked), True)

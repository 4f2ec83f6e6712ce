"""Faults at every step of the commit and recovery paths of a table on PostgreSQL servers.

tests/test_fault_matrix.py's experiment (its writer, its plan, its oracle) on a table of four
shards on the three test servers (the fourth a second database on the first server, which is
also the anchor): for each server step x mode (error, or the writer killed on the spot) x shards
touched (1, 2 and all 4), a writer runs transactions until the fault strikes; the table is then
reopened with the ordinary library (recovery runs) and every transaction must be whole or
absent, every COMMIT that returned present, every COMMIT that failed absent, and no server may
hold a prepared transaction. Recovery's own step is faulted too, after crashes that leave
prepared transactions undecided and decided, at its first prepared transaction and (when there
are several) at its second. The same for three-phase tables (`protocol='3pc'`: prepare,
pre-commit, finalize), whose anchor's decision records are deleted before each check.
"""
import pytest

from harness import require_lib
from test_fault_matrix import FAULT_LIB, MODES, TXNS, fault_spec, fill_baseline, open_with_fault, run_writer, tally
from test_server_tables import four_shards, prepared

STEPS = {"2pc": ["server_prepare", "anchor_decide", "server_finalize"],
         "3pc": ["server_prepare", "anchor_confirm", "server_pre_commit", "server_withdraw_pre_commit",
                 "server_finalize"]}
OPTIONS = {"2pc": "", "3pc": ", protocol='3pc'"}
CASES = [(protocol, step, touched) for protocol, steps in STEPS.items() for step in steps
         for touched in (1, 2, 4)]


@pytest.fixture(scope="module", autouse=True)
def fault_build():
    require_lib()
    if not FAULT_LIB.exists():
        pytest.fail(f"fault-injection build missing: {FAULT_LIB} (tests/run-all.sh builds it)")


def make_table(pg, db, touched, options="", txns=TXNS):
    """A 4-shard table on the servers (`four_shards`), filled with the plan's baseline rows;
    returns the (server, database) of each shard."""
    places, shards = four_shards(pg, "f_")
    fill_baseline(db, f"shards='{shards}'{options}", txns, touched)
    return places


def check(db, touched, acked, places, txns=TXNS):
    """(partial, lost) after reopening with the ordinary library; no server holds a prepared
    transaction of the table."""
    counts = tally(db, txns, touched, acked)
    assert [prepared(server, database) for server, database in places] == ["0"] * 4
    return counts


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("protocol,step,touched", CASES)
def test_fault_at_server_commit_step(tmp_path, pg, protocol, step, mode, touched):
    db, acked = tmp_path / "f.db", tmp_path / "acked"
    places = make_table(pg, db, touched, OPTIONS[protocol])
    result = run_writer(db, TXNS, touched, acked, fault_spec(step, 2, mode))
    assert f"fault injected at {step}" in result.stderr, f"{step} never ran: {result.stderr[-2000:]}"
    if protocol == "3pc":
        from test_three_phase import delete_decisions
        delete_decisions(places)
    assert check(db, touched, acked, places) == (0, 0)


# A crash that leaves prepared transactions, undecided or decided, and recovery's step that
# then faults, at its first shard and again at its second.
RECOVERY_CASES = {
    "undecided": "anchor_decide:2:abort",
    "decided": "server_finalize:2:abort",
    "3pc, pre-committed in part": "server_pre_commit:2:abort",
}


@pytest.mark.parametrize("case", RECOVERY_CASES)
@pytest.mark.parametrize("mode", MODES)
def test_fault_during_server_recovery(tmp_path, pg, mode, case):
    db, acked = tmp_path / "f.db", tmp_path / "acked"
    places = make_table(pg, db, 4, ", protocol='3pc'" if case.startswith("3pc") else "")
    assert run_writer(db, TXNS, 4, acked, RECOVERY_CASES[case]).returncode != 0
    # Parallel finalizes may all but one have landed before the writer died.
    left = sum(int(prepared(server, database)) for server, database in places)
    assert left >= 1
    for nth in range(1, min(left, 2) + 1):
        opened = open_with_fault(db, f"recovery_shard:{nth}:{mode}")
        assert "fault injected at recovery_shard" in opened.stderr, opened.stderr[-2000:]
    assert check(db, 4, acked, places) == (0, 0)

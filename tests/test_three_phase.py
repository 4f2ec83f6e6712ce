"""Three-phase commit (`protocol='3pc'`): the shards end every transaction among themselves.

Oracles: the writer's log of acknowledged commits (tests/crash_writer.py's model, as in
tests/test_crash.py), each transaction's rows whole or absent (tests/fault_worker.py's plan), and
the shard files read with plain SQLite (which shard holds a transaction prepared or pre-committed
before recovery runs). The same experiment on a two-phase table shows what three-phase commit
is for: there, a deleted journal leaves prepared transactions in doubt.

Env: IMAGESTORE_3PC_KILLS (default 200; the issue's 300 are run by hand, see README),
IMAGESTORE_CRASH_SEED.
"""
import json
import os
import random
import time

import apsw
import pytest

from fault_worker import plan
from harness import connect, corpus_bytes, require_lib, shard_paths
from test_crash import kill_9, run_crash_loop, start_writer, wait_ready
from test_fault_matrix import FAULT_LIB, fill_baseline, run_writer, transaction_state
THREE_PHASE = "shards=4, protocol='3pc'"


def delete_journal(db):
    """Deletes the coordinator's decision record: the journal beside shard 0."""
    for journal in db.parent.glob("*.imagestore-journal"):
        journal.unlink()


def test_kill_9_with_the_journal_deleted_after_every_kill(tmp_path, capsys):
    seed = int(os.environ.get("IMAGESTORE_CRASH_SEED", time.time_ns() % 10 ** 9))
    kills = int(os.environ.get("IMAGESTORE_3PC_KILLS", 200))
    summary, partial, lost, problems = run_crash_loop(
        tmp_path, kills, 300, seed, options=THREE_PHASE, min_kills=kills,
        after_crash=delete_journal)
    with capsys.disabled():
        print(f"\n3pc, journal deleted after every kill: {summary} (seed {seed})")
    assert partial == 0 and lost == 0, summary + "\n" + "\n".join(problems)
    assert not problems, "\n".join(problems)


def test_two_phase_table_with_its_journal_deleted_is_in_doubt(tmp_path, capsys):
    """The same experiment on a 2PC table (every commit prepared): a kill between a prepare and
    its finalize, then the journal deleted, leaves a table that refuses to open and says how a
    person decides (imagestore_resolve)."""
    rng = random.Random(7)
    db = tmp_path / "test.db"
    con = connect(db)
    con.execute("CREATE VIRTUAL TABLE t USING imagestore(shards=4, logged_commit_max=0)")
    con.close()
    kills = refusals = 0
    k = 0
    while kills < 60 and refusals < 3:
        with open(tmp_path / "writer.err", "ab") as err:
            proc = start_writer(db, tmp_path / "acked.log", k, err)
        assert wait_ready(proc), (tmp_path / "writer.err").read_text()[-2000:]
        time.sleep(rng.uniform(0.05, 0.2))
        kill_9(proc)
        proc.stdout.close()
        kills += 1
        k += 1000
        delete_journal(db)
        try:
            connect(db).execute("SELECT count(*) FROM t").fetchall()
        except apsw.Error as e:
            assert "is missing while shard" in str(e) and "imagestore_resolve" in str(e), str(e)
            refusals += 1
            (answer,), = connect(db).execute("SELECT imagestore_resolve('t', 'abort')")
            assert json.loads(answer)["transactions"], answer
    with capsys.disabled():
        print(f"\n2pc, journal deleted after every kill: {refusals} refusals (in doubt) in {kills} kills")
    assert refusals > 0


# ---- termination by whoever comes next, at each combination of states the rule tells apart ----

TXNS = 3
# A crash (the fault build aborts the process at a step's nth occurrence, counted over the
# writer's transactions, each touching 4 shards) and what the shards hold afterwards, for
# transaction 0: per shard 'none', 'prepared' or 'pre-committed' (a finalized one is 'none'
# too); and the rule's outcome.
CRASHES = {
    "some prepared, some not voted": ("shard_prepare:3:abort", ["prepared"] * 2 + ["none"] * 2, "absent"),
    "all prepared, none pre-committed": ("shard_pre_commit:1:abort", ["prepared"] * 4, "absent"),
    "one pre-committed, the rest prepared": ("shard_pre_commit:2:abort", ["pre-committed"] + ["prepared"] * 3, "whole"),
    "some committed, the rest pre-committed": ("shard_finalize:3:abort", ["none"] * 2 + ["pre-committed"] * 2, "whole"),
}


def plain(path):
    """The file through plain SQLite: apsw's own, without the extension (a second copy of SQLite
    in this process would not see the first one's locks, and could checkpoint and unlink a WAL
    that a connection of the first still uses)."""
    return connect(path, load=False)


def shard_states(db, txid):
    """Each shard's hold on `txid`, read from the files with plain SQLite."""
    states = []
    for path in shard_paths(db, "t", 4):
        row = plain(path).execute(
            "SELECT pre_committed FROM imagestore_prepared WHERE txid = ?", (txid,)).fetchone()
        states.append("none" if row is None else ("pre-committed" if row[0] else "prepared"))
    return states


def first_txid(db):
    """The id of the transaction in flight: the largest any shard holds prepared."""
    txids = [t for path in shard_paths(db, "t", 4)
             for (t,) in plain(path).execute("SELECT txid FROM imagestore_prepared")]
    assert txids, "the crash left nothing prepared"
    return max(txids)


@pytest.mark.parametrize("case", CRASHES)
def test_the_next_reader_ends_what_a_dead_coordinator_left(tmp_path, case):
    require_lib()
    if not FAULT_LIB.exists():
        pytest.fail(f"fault-injection build missing: {FAULT_LIB} (tests/run-all.sh builds it)")
    fault, expected_states, expected = CRASHES[case]
    db, acked = tmp_path / "f.db", tmp_path / "acked"
    fill_baseline(db, THREE_PHASE, TXNS, 4)
    # A reader that has the table open already, in another process's place: this connection.
    reader = connect(db)
    assert reader.execute("SELECT count(*) FROM t").fetchone()[0] > 0
    crashed = run_writer(db, TXNS, 4, acked, fault)
    assert crashed.returncode != 0 and "fault injected" in crashed.stderr, crashed.stderr[-2000:]
    assert shard_states(db, first_txid(db)) == expected_states
    delete_journal(db)
    # Its next read ends the transaction by the rule, without the journal.
    rows = dict(reader.execute("SELECT id, name FROM t"))
    assert transaction_state(rows, 0, plan(TXNS, 4)[0]) == expected
    assert reader.execute("SELECT imagestore_transactions('t')").fetchone() == ("[]",)
    # A later transaction goes on as usual.
    reader.execute("INSERT INTO t(id, name, data) VALUES (999999, 'after', ?)", (corpus_bytes("no_time_for_that_tiny.gif"),))
    assert connect(db).execute("SELECT name FROM t WHERE id = 999999").fetchone() == ("after",)


# ---- the option ------------------------------------------------------------------------------

def test_protocol_is_kept_with_the_table_and_shown(tmp_path):
    con = connect(tmp_path / "p.db")
    con.execute("CREATE VIRTUAL TABLE a USING imagestore(shards=2, protocol='3pc')")
    con.execute("CREATE VIRTUAL TABLE b USING imagestore(shards=2)")
    con.execute("INSERT INTO a(id, data) VALUES (1, ?), (2, ?)", (corpus_bytes("camera.png"),) * 2)
    for table, protocol in (("a", "3pc"), ("b", "2pc")):
        (report,), = con.execute(f"SELECT imagestore_check('{table}')")
        assert json.loads(report)["protocol"] == protocol
    paths = shard_paths(tmp_path / "p.db", "a", 2)
    # Format 2: a build that knows only two-phase commit refuses these shards.
    kept = [plain(p).execute("SELECT value FROM imagestore_meta WHERE key = 'format_version'").fetchone() for p in paths]
    assert kept == [(2,), (2,)]
    # A person's decision is never needed (but for a transaction that rode on a host database
    # that is gone), and so refused.
    with pytest.raises(apsw.Error, match="protocol='3pc'"):
        con.execute("SELECT imagestore_resolve('a', 'commit')").fetchall()


@pytest.mark.parametrize("arguments,message", [
    ("shards=2, protocol='4pc'", r"protocol=.?4pc.?: expected 2pc .* or 3pc"),
    ("shards=2, protocol='3pc', logged_commit_max=4096", "logged_commit_max: a protocol='3pc' table never logs"),
    ("shards='postgresql://u@127.0.0.1:1/a,postgresql://u@127.0.0.1:1/b', protocol='3pc'",
     "protocol='3pc' is not yet available for a table on PostgreSQL servers"),
])
def test_bad_protocol_arguments_are_refused(tmp_path, arguments, message):
    con = connect(tmp_path / "p.db")
    with pytest.raises(apsw.Error, match=message):
        con.execute(f"CREATE VIRTUAL TABLE t USING imagestore({arguments})")
    assert list(tmp_path.glob("*.shard*")) == []


def test_shards_of_one_protocol_are_not_opened_as_the_other(tmp_path):
    con = connect(tmp_path / "one.db")
    con.execute(f"CREATE VIRTUAL TABLE t USING imagestore(shards='{tmp_path}/s0.db,{tmp_path}/s1.db', protocol='3pc')")
    con.execute("INSERT INTO t(id, data) VALUES (1, ?)", (corpus_bytes("camera.png"),))
    other = connect(tmp_path / "two.db")
    with pytest.raises(apsw.Error, match="made with protocol='3pc', but this table declares protocol='2pc'"):
        other.execute(f"CREATE VIRTUAL TABLE t USING imagestore(shards='{tmp_path}/s0.db,{tmp_path}/s1.db')")
    other.execute(f"CREATE VIRTUAL TABLE t USING imagestore(shards='{tmp_path}/s0.db,{tmp_path}/s1.db', protocol='3pc')")
    assert other.execute("SELECT count(*) FROM t").fetchone() == (1,)


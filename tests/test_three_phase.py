"""Three-phase commit (`protocol='3pc'`): the shards end every transaction among themselves.

Oracles: the writer's log of acknowledged commits (tests/crash_writer.py's model, as in
tests/test_crash.py), each transaction's rows whole or absent (tests/fault_worker.py's plan), and
the shard files read with plain SQLite (which shard holds a transaction prepared or pre-committed
before recovery runs). The same experiment on a two-phase table shows what three-phase commit
is for: there, a deleted journal leaves prepared transactions in doubt. On PostgreSQL servers
too, with the servers' own states as oracle (`pg_prepared_xacts` and the `fence` rows), and a
writer that loses its writer lock at chosen steps while a second host recovers.

Env: IMAGESTORE_3PC_KILLS (default 200), IMAGESTORE_3PC_SERVER_KILLS (default 100; the issue's
300 each are run by hand, see README), IMAGESTORE_CRASH_SEED.
"""
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import apsw
import pytest

from fault_worker import plan
from harness import connect, corpus_bytes, require_lib, shard_paths
from test_crash import kill_9, run_crash_loop, start_writer, wait_ready
from test_fault_matrix import FAULT_LIB, HERE, fill_baseline, run_writer, transaction_state
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


def in_doubt_after_kills(tmp_path, db, lose_records, refusal, kills_max=60, refusals_max=3):
    """The experiment on a 2PC table (`db` holds it as `t`; every commit prepared): the writer
    killed at random, then `lose_records(db)`. A kill between a prepare and its finalize then
    leaves a table that refuses to be read, with `refusal` in its message and how a person
    decides (imagestore_resolve); 'abort' ends what was in doubt, and the table is read again.
    Returns (refusals, kills)."""
    rng = random.Random(7)
    kills = refusals = 0
    while kills < kills_max and refusals < refusals_max:
        with open(tmp_path / "writer.err", "ab") as err:
            proc = start_writer(db, tmp_path / "acked.log", kills * 1000, err)
        assert wait_ready(proc), (tmp_path / "writer.err").read_text()[-2000:]
        time.sleep(rng.uniform(0.05, 0.2))
        kill_9(proc)
        proc.stdout.close()
        kills += 1
        lose_records(db)
        try:
            connect(db).execute("SELECT count(*) FROM t").fetchall()
        except apsw.Error as e:
            assert refusal in str(e) and "imagestore_resolve" in str(e), str(e)
            refusals += 1
            (answer,), = connect(db).execute("SELECT imagestore_resolve('t', 'abort')")
            answer = json.loads(answer)
            # The person's decision, or the shards' where they show the outcome (a vote that
            # never finished, a part finalized or undone).
            shown = answer.get("shards_decided", {})
            assert answer["transactions"] or shown.get("aborted") or shown.get("committed"), answer
            connect(db).execute("SELECT count(*) FROM t").fetchall()
    return refusals, kills


def test_two_phase_table_with_its_journal_deleted_is_in_doubt(tmp_path, capsys):
    db = tmp_path / "test.db"
    connect(db).execute("CREATE VIRTUAL TABLE t USING imagestore(shards=4, logged_commit_max=0)")
    refusals, kills = in_doubt_after_kills(tmp_path, db, delete_journal, "is missing while shard")
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


# ---- on PostgreSQL servers: the anchor's decision records deleted -------------------------------

def server_states(places, txid):
    """Each shard's hold on `txid` on its server: from pg_prepared_xacts and the `fence` row."""
    if txid is None:
        return ["none"] * len(places)
    states = []
    for index, (server, database) in enumerate(places):
        schema = server.psql("SELECT nspname FROM pg_namespace WHERE nspname LIKE 'imagestore%'", database).strip()
        held = server.psql(
            f"SELECT (SELECT count(*) FROM pg_prepared_xacts WHERE gid LIKE 'imagestore:%:{txid}:{index}:%')"
            f" || ' ' || (SELECT count(*) FROM {schema}.fence WHERE {txid} = ANY(pre_committed))",
            database).split()
        # A finalized shard keeps its pre-commit in the fence until its next pre-commit: "none".
        states.append({("0", "0"): "none", ("0", "1"): "none", ("1", "0"): "prepared",
                       ("1", "1"): "pre-committed"}[tuple(held)])
    return states


def server_txid_in_flight(places):
    """The transaction the servers hold prepared, if any."""
    txids = [int(gid.split(":")[2]) for server, database in places
             for gid in server.psql("SELECT gid FROM pg_prepared_xacts WHERE database = current_database()",
                                    database).split()]
    return max(txids, default=None)


def delete_decisions(places):
    """Deletes the anchor's decision records (the first shard's server keeps them)."""
    server, database = places[0]
    schema = server.psql("SELECT nspname FROM pg_namespace WHERE nspname LIKE 'imagestore%'", database).strip()
    server.psql(f"DELETE FROM {schema}.decisions", database)


# Where the writer dies. A step runs on every server at once, so what the other servers did
# before the process died varies: the outcome the rule must give is read from the servers
# (whole if one holds a pre-commit), except after a finalize began (every pre-commit was
# durable: whole, even if no server holds anything any more).
SERVER_CRASHES = {
    "in the vote": ("server_prepare:2:abort", None),
    "in the first pre-commit": ("server_pre_commit:1:abort", None),
    "in a later pre-commit": ("server_pre_commit:3:abort", None),
    "in a finalize": ("server_finalize:2:abort", "whole"),
}


@pytest.mark.parametrize("case", SERVER_CRASHES)
def test_the_next_host_ends_what_a_dead_coordinator_left_on_servers(tmp_path, pg, case):
    """The writer (the fault build) dies at a step of a transaction over 4 shards on the 3
    servers (their steps run at once, so which servers got there varies); the decision records
    are deleted; a second host (another process, its own load of the extension) reads the table
    and ends the transaction by the rule."""
    from test_server_faults import make_table
    if not FAULT_LIB.exists():
        pytest.fail(f"fault-injection build missing: {FAULT_LIB} (tests/run-all.sh builds it)")
    fault, expected = SERVER_CRASHES[case]
    db, acked = tmp_path / "f.db", tmp_path / "acked"
    places = make_table(pg, db, 4, options=", protocol='3pc'", txns=TXNS)
    crashed = run_writer(db, TXNS, 4, acked, fault)
    assert crashed.returncode != 0 and "fault injected" in crashed.stderr, crashed.stderr[-2000:]
    states = server_states(places, server_txid_in_flight(places))
    expected = expected or ("whole" if "pre-committed" in states else "absent")
    delete_decisions(places)
    code = ("import json, sys; from harness import connect; c = connect(sys.argv[1]); "
            "print(json.dumps(dict(c.execute('SELECT id, name FROM t').fetchall())))")
    read = subprocess.run([sys.executable, "-c", code, str(db)], cwd=HERE, capture_output=True, text=True, timeout=120)
    assert read.returncode == 0, read.stderr[-2000:]
    rows = {int(k): v for k, v in json.loads(read.stdout).items()}
    assert transaction_state(rows, 0, plan(TXNS, 4)[0]) == expected, (states, rows)
    from test_server_tables import prepared
    assert [prepared(server, database) for server, database in places] == ["0"] * 4


def read_in_another_process(db):
    """The rows of table t as a second host reads them (its own process, its own load of the
    extension): {id: name}."""
    code = ("import json, sys; from harness import connect; c = connect(sys.argv[1]); "
            "print(json.dumps(dict(c.execute('SELECT id, name FROM t').fetchall())))")
    read = subprocess.run([sys.executable, "-c", code, str(db)], cwd=HERE, capture_output=True, text=True, timeout=120)
    assert read.returncode == 0, read.stderr[-2000:]
    return {int(k): v for k, v in json.loads(read.stdout).items()}


def start_stalled(db, txns, fault, resume, lib=FAULT_LIB):
    """fault_worker.py writing `txns` transactions over the 4 shards, with the fault build and
    `fault` (a stall), once the fault has fired."""
    env = dict(os.environ, IMAGESTORE_LIB=str(lib), IMAGESTORE_FAULT=fault, IMAGESTORE_FAULT_RESUME=str(resume))
    writer = subprocess.Popen([sys.executable, str(HERE / "fault_worker.py"), str(db), str(txns), "4", str(db) + ".acked"],
                              cwd=HERE, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    seen = []
    for line in writer.stderr:
        seen.append(line)
        if "fault injected at" in line:
            return writer
    pytest.fail("the fault never fired: " + "".join(seen)[-2000:])


def end_writer_session(places):
    """Ends the session with the anchor that holds the writer lock (and the lock with it)."""
    anchor, database = places[0]
    ended = anchor.psql("SELECT pg_terminate_backend(pid) FROM pg_locks WHERE locktype = 'advisory' "
                        "AND mode = 'ExclusiveLock' AND granted AND database = "
                        "(SELECT oid FROM pg_database WHERE datname = current_database())", database)
    assert ended.split() == ["t"], ended


def finish(writer, db, places, txns, stalled):
    """Waits for the writer; checks every transaction against its outcome (the fault matrix's
    oracle) and returns the stalled one's outcome and state."""
    from test_server_faults import check
    _, err = writer.communicate(timeout=120)
    assert writer.returncode == 0, err[-3000:]
    acked = Path(str(db) + ".acked")
    outcomes = dict(line.split() for line in acked.read_text().splitlines())
    rows = read_in_another_process(db)
    state = transaction_state(rows, stalled, plan(txns, 4)[stalled])
    assert check(db, 4, acked, places, txns) == (0, 0), (outcomes, err[-3000:])
    # The writer went on committing once its session was made again.
    assert [outcomes[str(k)] for k in range(stalled + 1, txns)] == ["ok"] * (txns - stalled - 1), (outcomes, err[-3000:])
    return outcomes[str(stalled)], state


# A writer loses its session with the anchor (and the writer lock with it) while it stalls at a
# step of its third transaction; a second host reads the table meanwhile (recovery: it takes the
# servers over and ends the transaction by the rule); then the writer goes on. Stalled before the
# confirmation of its lock (after the vote), it must fail the commit without pre-committing
# anything: a failed COMMIT, the transaction absent. Stalled in one of its pre-commits (the others
# went through), its late pre-commit and its withdrawals must be refused by the fence: the outcome
# unknown, never "failed" while the second host committed it.
LOST_LOCK = {
    "before the confirmation": ("anchor_confirm:3:stall", ("err", "absent")),
    "in a pre-commit": ("server_pre_commit:10:stall", ("unknown", "whole")),
}


@pytest.mark.parametrize("case", LOST_LOCK)
def test_a_writer_that_lost_its_lock_is_fenced_off(tmp_path, pg, case):
    from test_server_faults import make_table
    fault, expected = LOST_LOCK[case]
    txns = 6
    db, resume = tmp_path / "f.db", tmp_path / "resume"
    places = make_table(pg, db, 4, options=", protocol='3pc', busy_timeout=2000", txns=txns)
    writer = start_stalled(db, txns, fault, resume)
    time.sleep(0.5)  # its other pre-commits (they run at once) land meanwhile
    end_writer_session(places)
    read_in_another_process(db)
    resume.touch()
    assert finish(writer, db, places, txns, 2) == expected


def test_a_recovery_that_read_the_servers_is_not_overtaken_by_a_writer_that_lost_its_lock(tmp_path, pg):
    """The review's case: every pre-commit of the writer's third transaction stalls, its session
    with the anchor ends, and a second host's recovery reads the servers (nothing pre-committed:
    abort) and stalls before it acts. The writer's pre-commits then go out: the fence refuses them
    (recovery took the servers over before it read), so the writer cannot report a commit that
    recovery then aborts."""
    from test_server_faults import make_table
    txns = 6
    db, resume, recovery_resume = tmp_path / "f.db", tmp_path / "resume", tmp_path / "recovery_resume"
    places = make_table(pg, db, 4, options=", protocol='3pc', busy_timeout=5000", txns=txns)
    writer = start_stalled(db, txns, "server_pre_commit:9+:stall", resume)
    end_writer_session(places)
    env = dict(os.environ, IMAGESTORE_LIB=str(FAULT_LIB), IMAGESTORE_FAULT="recovery_shard:1:stall",
               IMAGESTORE_FAULT_RESUME=str(recovery_resume))
    code = "import sys; from harness import connect; connect(sys.argv[1]).execute('SELECT count(*) FROM t')"
    recovery = subprocess.Popen([sys.executable, "-c", code, str(db)], cwd=HERE, env=env,
                                stderr=subprocess.PIPE, text=True)
    for line in recovery.stderr:
        if "fault injected at" in line:
            break
    resume.touch()
    time.sleep(1.0)  # the writer's pre-commits go out, and are refused
    recovery_resume.touch()
    _, err = recovery.communicate(timeout=120)
    assert recovery.returncode == 0, err[-3000:]
    assert finish(writer, db, places, txns, 2) == ("unknown", "absent")


def test_kill_9_on_servers_with_the_decision_records_deleted_after_every_kill(tmp_path, pg, capsys):
    from test_server_tables import fresh_databases, prepared
    database, shards = fresh_databases(pg)
    places = [(server, database) for server in pg]
    seed = int(os.environ.get("IMAGESTORE_CRASH_SEED", time.time_ns() % 10 ** 9))
    kills = int(os.environ.get("IMAGESTORE_3PC_SERVER_KILLS", 100))
    summary, partial, lost, problems = run_crash_loop(
        tmp_path, kills, 600, seed, options=f"shards='{shards}', protocol='3pc'", min_kills=kills,
        after_crash=lambda db: delete_decisions(places))
    with capsys.disabled():
        print(f"\n3pc on 3 servers, decision records deleted after every kill: {summary} (seed {seed})")
    assert partial == 0 and lost == 0, summary + "\n" + "\n".join(problems)
    assert not problems, "\n".join(problems)
    assert [prepared(server, database) for server in pg] == ["0", "0", "0"]


def test_a_table_on_servers_keeps_its_protocol(tmp_path, pg):
    from test_server_tables import fresh_databases
    _, shards = fresh_databases(pg)
    first = connect(tmp_path / "first.db")
    first.execute(f"CREATE VIRTUAL TABLE t USING imagestore(shards='{shards}', protocol='3pc')")
    first.execute("INSERT INTO t(id, data) VALUES (1, ?), (2, ?), (3, ?)", (corpus_bytes("camera.png"),) * 3)
    (report,), = first.execute("SELECT imagestore_check('t')")
    assert json.loads(report)["protocol"] == "3pc"
    second = connect(tmp_path / "second.db")
    with pytest.raises(apsw.Error, match="made with protocol='3pc', but this table declares protocol='2pc'"):
        second.execute(f"CREATE VIRTUAL TABLE t USING imagestore(shards='{shards}')")
    second.execute(f"CREATE VIRTUAL TABLE t USING imagestore(shards='{shards}', protocol='3pc')")
    assert second.execute("SELECT count(*) FROM t").fetchone() == (3,)


# ---- the same on a two-phase table on servers: in doubt, and a person decides -------------------

def test_two_phase_table_on_servers_with_its_decision_records_deleted_is_in_doubt(tmp_path, pg, capsys):
    from test_server_tables import fresh_databases
    database, shards = fresh_databases(pg)
    places = [(server, database) for server in pg]
    db = tmp_path / "test.db"
    connect(db).execute(f"CREATE VIRTUAL TABLE t USING imagestore(shards='{shards}')")
    refusals, kills = in_doubt_after_kills(tmp_path, db, lambda db: delete_decisions(places),
                                           "decision records of table t on the anchor", kills_max=40,
                                           refusals_max=2)
    with capsys.disabled():
        print(f"\n2pc on 3 servers, decision records deleted after every kill: {refusals} refusals (in doubt) in {kills} kills")
    assert refusals > 0


def drop_decisions(places):
    """Drops the anchor's decision table itself."""
    server, database = places[0]
    schema = server.psql("SELECT nspname FROM pg_namespace WHERE nspname LIKE 'imagestore%'", database).strip()
    server.psql(f"DROP TABLE {schema}.decisions", database)


def marker_rows(places):
    server, database = places[0]
    schema = server.psql("SELECT nspname FROM pg_namespace WHERE nspname LIKE 'imagestore%'", database).strip()
    return server.psql(f"SELECT count(*) FROM {schema}.decisions WHERE txid = 0", database).strip()


# The writer (the fault build) dies with transaction 0 prepared on all 4 shards, just before its
# decision (whether the row was written before the records went makes no difference once they
# are gone; dying after it, some servers' finalizes may get through, which the next test
# covers); the records are lost one way or another; a person's decision; what the table then
# holds.
IN_DOUBT = {
    "rows deleted, committed": ("anchor_decide:1:abort", delete_decisions, "commit", "whole"),
    "table dropped, aborted": ("anchor_decide:1:abort", drop_decisions, "abort", "absent"),
}


@pytest.mark.parametrize("case", IN_DOUBT)
def test_a_person_decides_what_lost_decision_records_leave_in_doubt_on_servers(tmp_path, pg, case):
    """A second host (another process) refuses to read past what is in doubt, for every one of
    its reads; imagestore_resolve applies the person's decision on every server; the records are
    whole again (their marker is back) and the table is read."""
    from test_server_faults import make_table
    from test_server_tables import prepared
    fault, lose, decision, expected = IN_DOUBT[case]
    db, acked = tmp_path / "f.db", tmp_path / "acked"
    places = make_table(pg, db, 4, txns=TXNS)
    crashed = run_writer(db, TXNS, 4, acked, fault)
    assert crashed.returncode != 0 and "fault injected" in crashed.stderr, crashed.stderr[-2000:]
    txid = server_txid_in_flight(places)
    assert [prepared(server, database) for server, database in places] == ["1"] * 4
    lose(places)
    for _ in range(2):
        read = subprocess.run([sys.executable, "-c", "import sys; from harness import connect; "
                               "connect(sys.argv[1]).execute('SELECT count(*) FROM t').fetchall()", str(db)],
                              cwd=HERE, capture_output=True, text=True, timeout=120)
        assert read.returncode != 0 and "imagestore_resolve('t', 'commit' or 'abort')" in read.stderr, read.stderr[-2000:]
    assert [prepared(server, database) for server, database in places] == ["1"] * 4
    (answer,), = connect(db).execute(f"SELECT imagestore_resolve('t', '{decision}')")
    assert json.loads(answer) == {"decision": decision, "transactions": [txid]}
    assert [prepared(server, database) for server, database in places] == ["0"] * 4
    assert marker_rows(places) == "1"
    rows = dict(connect(db).execute("SELECT id, name FROM t"))
    assert transaction_state(rows, 0, plan(TXNS, 4)[0]) == expected
    with pytest.raises(apsw.Error, match="decide every prepared transaction"):
        connect(db).execute("SELECT imagestore_resolve('t', 'abort')")


def test_a_transaction_a_server_committed_is_committed_everywhere_without_its_decision(tmp_path, pg):
    """The writer dies in its finalizes (sent to every server at once: some may get through);
    if none did, one server's part is committed by hand (as a finalize that got through
    would), then the decision rows are deleted: that server's `last_txid` shows the
    transaction committed, so the next host commits it everywhere, without a person."""
    from test_server_faults import make_table
    from test_server_tables import prepared
    db, acked = tmp_path / "f.db", tmp_path / "acked"
    places = make_table(pg, db, 4, txns=TXNS)
    crashed = run_writer(db, TXNS, 4, acked, "server_finalize:1:abort")
    assert crashed.returncode != 0 and "fault injected" in crashed.stderr, crashed.stderr[-2000:]
    held = [prepared(server, database) for server, database in places]
    assert "1" in held, held
    if held == ["1"] * 4:
        server, database = places[1]
        (gid,) = server.psql("SELECT gid FROM pg_prepared_xacts WHERE database = current_database()",
                             database).split()
        server.psql(f"COMMIT PREPARED '{gid}'", database)
    delete_decisions(places)
    rows = dict(connect(db).execute("SELECT id, name FROM t"))
    assert transaction_state(rows, 0, plan(TXNS, 4)[0]) == "whole"
    assert [prepared(server, database) for server, database in places] == ["0"] * 4
    assert marker_rows(places) == "1"


def test_a_transaction_whose_vote_never_finished_is_not_in_doubt_without_its_decision(tmp_path, pg):
    """The writer is killed in its vote (the prepares go to the 4 shards at once; the third
    stalls, then the process is killed, so two or three land), and the decision rows are
    deleted: each prepare names the shards its transaction wrote (in its gid), one of which
    never prepared, so no decision was ever taken: the next host aborts it without a person,
    and it is absent."""
    from test_server_faults import make_table
    from test_server_tables import prepared
    db = tmp_path / "f.db"
    places = make_table(pg, db, 4, txns=TXNS)
    writer = start_stalled(db, TXNS, "server_prepare:3:stall", tmp_path / "resume")
    time.sleep(0.5)  # the prepares sent before the stall land
    kill_9(writer)
    held = [prepared(server, database) for server, database in places]
    assert "0" in held and held.count("1") >= 2, held
    delete_decisions(places)
    rows = read_in_another_process(db)
    assert transaction_state(rows, 0, plan(TXNS, 4)[0]) == "absent"
    assert [prepared(server, database) for server, database in places] == ["0"] * 4
    assert marker_rows(places) == "1"


@pytest.mark.parametrize("first", ["the host that had it open writes", "another host reads"])
def test_decision_records_lost_with_nothing_in_doubt_are_made_whole_again(tmp_path, pg, first):
    from test_server_tables import fresh_databases
    database, shards = fresh_databases(pg)
    places = [(server, database) for server in pg]
    con = connect(tmp_path / "a.db")
    con.execute(f"CREATE VIRTUAL TABLE t USING imagestore(shards='{shards}')")
    con.execute("INSERT INTO t(id, data) VALUES (1, ?), (2, ?)", (corpus_bytes("camera.png"),) * 2)
    assert marker_rows(places) == "1"
    drop_decisions(places)
    other = connect(tmp_path / "b.db")
    if first == "another host reads":
        other.execute(f"CREATE VIRTUAL TABLE t USING imagestore(shards='{shards}')")
        assert other.execute("SELECT count(*) FROM t").fetchone() == (2,)
        assert marker_rows(places) == "1"
    con.execute("INSERT INTO t(id, data) VALUES (3, ?), (4, ?)", (corpus_bytes("camera.png"),) * 2)
    assert marker_rows(places) == "1"
    if first != "another host reads":
        other.execute(f"CREATE VIRTUAL TABLE t USING imagestore(shards='{shards}')")
    assert other.execute("SELECT count(*) FROM t").fetchone() == (4,)


def test_a_drop_from_a_connection_that_found_the_table_in_doubt_waits_for_a_writer(tmp_path, pg):
    """A connection keeps the table unusable after the in-doubt refusal, even once a person
    resolved it elsewhere; its DROP TABLE must still take the writer lock (on the anchor), not
    roll back the prepared parts of another host's writer between its prepare and its
    decision, which would then report a commit with a part gone."""
    from test_server_faults import make_table
    from test_server_tables import prepared
    db, acked = tmp_path / "f.db", tmp_path / "acked"
    places = make_table(pg, db, 4, options=", busy_timeout=1000", txns=TXNS)
    crashed = run_writer(db, TXNS, 4, acked, "anchor_decide:1:abort")
    assert crashed.returncode != 0 and "fault injected" in crashed.stderr, crashed.stderr[-2000:]
    delete_decisions(places)
    unusable = connect(db)
    with pytest.raises(apsw.Error, match="imagestore_resolve"):
        unusable.execute("SELECT count(*) FROM t").fetchall()
    connect(db).execute("SELECT imagestore_resolve('t', 'abort')").fetchall()
    resume = tmp_path / "resume"
    writer = start_stalled(db, TXNS, "anchor_decide:1:stall", resume)
    assert [prepared(server, database) for server, database in places] == ["1"] * 4
    with pytest.raises(apsw.BusyError):
        unusable.execute("DROP TABLE t")
    assert [prepared(server, database) for server, database in places] == ["1"] * 4
    resume.touch()
    _, err = writer.communicate(timeout=120)
    assert writer.returncode == 0, err[-2000:]
    rows = read_in_another_process(db)
    assert [transaction_state(rows, k, ops) for k, ops in enumerate(plan(TXNS, 4))] == ["whole"] * TXNS

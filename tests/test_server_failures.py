"""Servers that die, stop answering, or drop a connection while a table on them is written.

Each round runs tests/fault_worker.py (the fault matrix's writer and oracle: every transaction
whole or absent, every COMMIT that returned present, every COMMIT that failed absent, a commit
whose answer was lost either) against a fresh 4-shard table on the three test servers, and
strikes one server at a random moment: SIGKILL and a restart, SIGSTOP and SIGCONT after the
table's busy timeout, or its imagestore backends terminated. Then the table is opened again
(recovery) and checked, and no server may hold a prepared transaction. So too, deterministically,
with the anchor or another server killed and restarted while the writer (the fault build,
stalled at a step) is between every server's prepare and the decision, or between the decision
and a server's COMMIT PREPARED.
"""
import os
import random
import signal
import subprocess
import sys
import time

import apsw
import pytest

from harness import connect
from test_fault_matrix import FAULT_LIB, HERE
from test_server_faults import check, make_table
from test_server_tables import schemas

def require_fault_build():
    if not FAULT_LIB.exists():
        pytest.fail(f"fault-injection build missing: {FAULT_LIB} (tests/run-all.sh builds it)")


# Enough transactions that the writer is still writing when the strike comes.
TXNS = 600


def start_writer(db, acked):
    return subprocess.Popen([sys.executable, str(HERE / "fault_worker.py"), str(db), str(TXNS), "4", str(acked)],
                            cwd=HERE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def rounds(pg, tmp_path, strike, count, seed):
    rng = random.Random(seed)
    struck = 0
    for r in range(count):
        db, acked = tmp_path / f"r{r}.db", tmp_path / f"r{r}.acked"
        places = make_table(pg, db, 4, options=", busy_timeout=1000", txns=TXNS)
        writer = start_writer(db, acked)
        time.sleep(rng.uniform(0.1, 0.5))
        assert writer.poll() is None, "the writer finished before the strike"
        victim = pg[rng.randrange(len(pg))]
        strike(victim, rng)
        _, err = writer.communicate(timeout=300)
        assert writer.returncode == 0, err[-3000:]
        assert check(db, 4, acked, places, TXNS) == (0, 0), f"round {r} (seed {seed})"
        outcomes = acked.read_text().split()[1::2]
        struck += outcomes.count("ok") < TXNS
        print(f"round {r}: {outcomes.count('ok')} ok, {outcomes.count('err')} failed, "
              f"{outcomes.count('unknown')} unknown")
    assert struck, "no strike made a transaction fail: the test did not test"


def test_a_server_killed_at_random_moments_and_restarted(tmp_path, pg):
    def kill_and_restart(server, rng):
        server.kill(signal.SIGKILL)
        time.sleep(rng.uniform(0.0, 0.5))
        server.restart()
    rounds(pg, tmp_path, kill_and_restart, 3, time.time_ns() % 10 ** 9)


def test_a_server_that_stops_answering_fails_commits_within_the_timeout(tmp_path, pg):
    def stop_a_while(server, rng):
        # Longer than a call may go unanswered (busy_timeout=1000 and a second).
        server.signal_all(signal.SIGSTOP)
        time.sleep(rng.uniform(2.5, 3.5))
        server.signal_all(signal.SIGCONT)
    rounds(pg, tmp_path, stop_a_while, 2, time.time_ns() % 10 ** 9)


def test_connections_dropped_by_the_server_mid_transaction(tmp_path, pg):
    def terminate_backends(server, rng):
        for pid in server.backends():
            server.psql(f"SELECT pg_terminate_backend({pid})")
    rounds(pg, tmp_path, terminate_backends, 4, time.time_ns() % 10 ** 9)


# The writer stalls (the fault build's `stall`) after every server prepared and before the
# decision, or after the decision and before a server's COMMIT PREPARED; meanwhile the anchor or
# another server is killed with SIGKILL and restarted.
BETWEEN = [(step, victim) for step in ("anchor_decide", "server_finalize") for victim in (0, 1)]


@pytest.mark.parametrize("step,victim", BETWEEN)
def test_a_server_killed_between_prepare_and_commit_and_restarted(tmp_path, pg, step, victim):
    require_fault_build()
    txns = 60
    db, acked = tmp_path / "k.db", tmp_path / "k.acked"
    places = make_table(pg, db, 4, options=", busy_timeout=1000", txns=txns)
    # The writer waits at the step until the struck server is back (however long its restart
    # takes on a loaded machine), then goes on.
    resume = tmp_path / "resume"
    env = dict(os.environ, IMAGESTORE_LIB=str(FAULT_LIB), IMAGESTORE_FAULT=f"{step}:10:stall",
               IMAGESTORE_FAULT_RESUME=str(resume))
    writer = subprocess.Popen([sys.executable, str(HERE / "fault_worker.py"), str(db), str(txns), "4", str(acked)],
                              cwd=HERE, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    seen = []
    for line in writer.stderr:
        seen.append(line)
        if "fault injected at" in line:
            break
    assert seen and "fault injected at" in seen[-1], "".join(seen)[-2000:]
    pg[victim].kill(signal.SIGKILL)
    pg[victim].restart()
    resume.touch()
    _, err = writer.communicate(timeout=120)
    assert writer.returncode == 0, err[-3000:]
    assert check(db, 4, acked, places, txns) == (0, 0)
    outcomes = acked.read_text().split()[1::2]
    assert len(outcomes) == txns and outcomes.count("ok") < txns, outcomes  # the kill failed one
    # The same connection goes on writing once the server is back (recovery settles what the
    # kill left unknown: it does not have to be opened again).
    assert outcomes[-20:] == ["ok"] * 20, (outcomes, err[-3000:])
    print(f"\n{step}, server {victim} killed: {outcomes.count('ok')} ok, {outcomes.count('err')} failed, "
          f"{outcomes.count('unknown')} unknown, partial 0, lost 0, nothing prepared")


def test_another_host_is_not_blocked_longer_than_the_timeout_by_a_stopped_server(tmp_path, pg):
    db = tmp_path / "a.db"
    make_table(pg, db, 4, options=", busy_timeout=1000")
    other = connect(tmp_path / "b.db")
    shards = connect(db).execute("SELECT sql FROM sqlite_schema WHERE name = 't'").fetchone()[0]
    other.execute(shards)
    pg[1].signal_all(signal.SIGSTOP)
    try:
        started = time.monotonic()
        try:
            other.execute("SELECT count(*) FROM t").fetchall()
        except Exception as e:  # noqa: BLE001 - the error is what is checked
            message = str(e)
        else:
            message = ""
        waited = time.monotonic() - started
    finally:
        pg[1].signal_all(signal.SIGCONT)
    assert "did not answer" in message and "within 2000 ms" in message, message
    assert waited < 1000 / 1000 + 3.0, waited
    time.sleep(0.6)  # a server that stopped answering is tried again half a second later
    assert other.execute("SELECT count(*) FROM t").fetchone()[0] > 0


def test_a_drop_that_cannot_reach_a_server_fails_whole_and_a_second_finishes(tmp_path, pg):
    db = tmp_path / "a.db"
    places = make_table(pg, db, 4, options=", busy_timeout=500")
    con = connect(db)
    assert con.execute("SELECT count(*) FROM t").fetchall()[0][0] > 0
    pg[1].signal_all(signal.SIGSTOP)
    try:
        # SQLite keeps only the code of a DROP's error (SQLITE_BUSY), not its message.
        with pytest.raises(apsw.BusyError):
            con.execute("DROP TABLE t")
    finally:
        pg[1].signal_all(signal.SIGCONT)
    assert con.execute("SELECT count(*) FROM sqlite_schema WHERE name = 't'").fetchall() == [(1,)]
    time.sleep(0.6)  # a server that stopped answering is tried again half a second later
    assert con.execute("SELECT count(*) FROM t").fetchall()[0][0] > 0
    con.execute("DROP TABLE t")
    assert [schemas(server, database) for server, database in places] == [0, 0, 0, 0]

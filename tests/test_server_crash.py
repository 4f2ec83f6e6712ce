"""kill -9 of the writer of a table on three PostgreSQL servers.

The same experiment as tests/test_crash.py (its writer, its oracle: the table must equal the
acknowledged transactions replayed, or those plus the one in flight), on a table whose shards
are three real servers: whoever opens the table next settles what the killed writer left
prepared, and after the last kill no server holds a prepared transaction of it.

Env: IMAGESTORE_SERVER_CRASH_KILLS (default 200), IMAGESTORE_SERVER_CRASH_SECONDS (default 300),
IMAGESTORE_CRASH_SEED.
"""
import os
import time

from harness import connect
from test_crash import run_crash_loop
from test_server_tables import fresh_databases, prepared


def test_kill_9_of_the_writer_of_a_table_on_servers(tmp_path, pg, capsys):
    database, shards = fresh_databases(pg)
    seed = int(os.environ.get("IMAGESTORE_CRASH_SEED", time.time_ns() % 10 ** 9))
    kills = int(os.environ.get("IMAGESTORE_SERVER_CRASH_KILLS", 200))
    summary, partial, lost, problems = run_crash_loop(
        tmp_path, kills, float(os.environ.get("IMAGESTORE_SERVER_CRASH_SECONDS", 300)), seed,
        options=f"shards='{shards}'", min_kills=min(kills, 200))
    with capsys.disabled():
        print(f"\n{summary} (seed {seed})")
    assert partial == 0 and lost == 0, summary + "\n" + "\n".join(problems)
    assert not problems, "\n".join(problems)
    # The last check opened the table, which settles what the last writer left.
    con = connect(tmp_path / "test.db")
    assert con.execute("SELECT imagestore_transactions('t')").fetchone() == ("[]",)
    assert [prepared(server, database) for server in pg] == ["0", "0", "0"]

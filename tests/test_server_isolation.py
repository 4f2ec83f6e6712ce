"""Isolation across PostgreSQL servers, and two hosts writing one table at once.

tests/test_isolation.py's experiment on a table whose four shards are on the three test servers
(the fourth a second database on the first): while writers commit transactions that rename
rows on every shard, readers in other processes, one of them a second host (its own host
database and its own load of the extension), never see a transaction on some servers and not
on others. Two hosts then write at once: no update is lost (a counter both add to ends at the
sum of their commits), nothing is left prepared or in doubt, and each waits for the other's
writer lock rather than deadlock.
"""
import isolation_worker
from harness import connect, corpus_bytes
from test_server_tables import four_shards, prepared

SECONDS = 6
IMAGE = corpus_bytes("no_time_for_that_tiny.gif")


def make_hosts(pg, tmp_path, hosts):
    """A table on the servers, opened from `hosts` host databases; returns their paths and the
    (server, database) of each shard."""
    places, shards = four_shards(pg, "i_")
    paths = [tmp_path / f"host{i}.db" for i in range(hosts)]
    for i, path in enumerate(paths):
        con = connect(path)
        con.execute(f"CREATE VIRTUAL TABLE t USING imagestore(shards='{shards}', n INTEGER)")
        if i == 0:
            for row in range(1, 9):
                con.execute("INSERT INTO t(id, name, n, data) VALUES (?, 'gen0', 0, ?)", (row, IMAGE))
        con.close()
    return paths, places


def test_no_fractured_reads_across_servers_from_two_hosts(tmp_path, pg):
    (first, second), _ = make_hosts(pg, tmp_path, 2)
    commits, reads, fractured = isolation_worker.run(first, [first, second], SECONDS)
    print(f"isolation on servers: commits {commits}, reads {reads}, fractured {len(fractured)}")
    assert commits > 20 and min(reads) > 20, (commits, reads)
    assert not fractured, fractured[:5]


def test_a_transactions_reads_share_one_snapshot_across_servers(tmp_path, pg):
    (first, second), _ = make_hosts(pg, tmp_path, 2)
    commits, reads, fractured = isolation_worker.run(first, [second], SECONDS, "transaction_reader")
    assert commits > 20 and min(reads) > 20, (commits, reads)
    assert not fractured, fractured[:5]


def test_two_hosts_writing_at_once_lose_no_update_and_leave_nothing_in_doubt(tmp_path, pg):
    (first, second, third), places = make_hosts(pg, tmp_path, 3)
    commits, reads, fractured = isolation_worker.run(
        None, [third], SECONDS, writer_role="counting_writer", writers=[first, second])
    assert commits > 20 and min(reads) > 20, (commits, reads)
    assert not fractured, fractured[:5]
    con = connect(third)
    assert con.execute("SELECT n FROM t WHERE id = 1").fetchone() == (commits,)
    assert con.execute("SELECT imagestore_transactions('t')").fetchone() == ("[]",)
    assert [prepared(server, database) for server, database in places] == ["0"] * 4

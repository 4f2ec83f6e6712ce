"""A writer for tests/test_mixed_crash.py: transactions that each write a row of an ordinary
table and rows of a 4-shard imagestore table (on 1, 2 or 4 shards, small or large), or with
`two`, a row of a second imagestore table instead of the ordinary one; each prints its number
once COMMIT returned.
mixed_writer.py DB START COUNT one|two [SYNCHRONOUS]   (the host's PRAGMA synchronous, if given)"""
import sys

from harness import connect, corpus_bytes

db, start, count, tables = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
con = connect(db)
con.set_busy_timeout(10000)
if len(sys.argv) > 5:
    con.execute("PRAGMA synchronous=" + sys.argv[5])
small, large = corpus_bytes("no_time_for_that_tiny.gif"), corpus_bytes("horse.png")
print("ready", flush=True)
for k in range(start, start + count):
    touched = (1, 2, 4)[k % 3]
    image = large if k % 5 == 0 else small
    con.execute("BEGIN")
    if tables == "one":
        con.execute("INSERT INTO plain(k) VALUES (?)", (k,))
    for j in range(touched):
        con.execute("INSERT INTO t(id, name, data) VALUES (?, ?, ?)", (k * 10 + j, str(k), image))
    if tables == "two":
        con.execute("INSERT INTO u(id, data) VALUES (?, ?)", (k, small))
    con.execute("COMMIT")
    print(k, flush=True)

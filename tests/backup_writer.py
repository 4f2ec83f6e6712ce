"""A writer for tests/test_backup.py: for SECONDS, transactions that add 1 to the counters of rows
1, 2, 6 and 7 (on all 4 shards) and insert one row. backup_writer.py DB SECONDS"""
import sys
import time

from harness import connect, corpus_bytes

db, seconds = sys.argv[1], float(sys.argv[2])
con = connect(db)
con.set_busy_timeout(30000)
image = corpus_bytes("no_time_for_that_tiny.gif")
end = time.time() + seconds
while time.time() < end:
    con.execute("BEGIN")
    con.execute("UPDATE t SET n = n + 1 WHERE id IN (1, 2, 6, 7)")
    con.execute("INSERT INTO t(name, data, n) VALUES ('row', ?, 0)", (image,))
    con.execute("COMMIT")

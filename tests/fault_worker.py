"""A writer for tests/test_fault_matrix.py, run with the fault-injection build of the library.

fault_worker.py DB TXNS TOUCHED ACKED
Runs TXNS transactions on table t (4 shards). Transaction k touches TOUCHED shards; on each it
inserts row new[k][s], renames row renamed[k][s] to 't<k>' and deletes row deleted[k][s] (the
plan comes from plan() below, shared with the checker). After COMMIT returns it appends
'k ok' to ACKED (fsynced); if a statement or COMMIT fails, 'k err' ('k unknown' if the error
says the commit's outcome is unknown). IMAGESTORE_FAULT (read by the
library) decides which protocol step fails, and how.
"""
import os
import sys

from harness import connect, corpus_bytes, shard_of

IMAGE = corpus_bytes("no_time_for_that_tiny.gif")
SHARDS = 4


def plan(txns, touched):
    """For each transaction k: a list of (new_id, renamed_id, deleted_id), one per touched shard.
    Baseline rows (renamed and deleted ones) have ids below 100000, new rows above."""
    pools = {s: [] for s in range(SHARDS)}
    nxt = 1
    need = 2 * txns
    while min(len(p) for p in pools.values()) < need:
        pools[shard_of(nxt, SHARDS)].append(nxt)
        nxt += 1
    new_pools = {s: [] for s in range(SHARDS)}
    nxt = 100000
    while min(len(p) for p in new_pools.values()) < txns:
        new_pools[shard_of(nxt, SHARDS)].append(nxt)
        nxt += 1
    return [[(new_pools[s][k], pools[s][2 * k], pools[s][2 * k + 1]) for s in range(touched)] for k in range(txns)]


def baseline_ids(txns, touched):
    return sorted(i for txn in plan(txns, touched) for _, a, b in txn for i in (a, b))


def main():
    db, txns, touched, acked = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
    con = connect(db)
    with open(acked, "a") as log:
        for k, ops in enumerate(plan(txns, touched)):
            try:
                con.execute("BEGIN")
                for new_id, renamed, deleted in ops:
                    con.execute("INSERT INTO t(id, name, data) VALUES (?, ?, ?)", (new_id, f"t{k}", IMAGE))
                    con.execute("UPDATE t SET name = ? WHERE id = ?", (f"t{k}", renamed))
                    con.execute("DELETE FROM t WHERE id = ?", (deleted,))
                con.execute("COMMIT")
                outcome = "ok"
            except Exception as e:  # noqa: BLE001 - any failure is an acknowledged 'err'
                # A commit whose answer was lost says so: it may be whole or absent.
                outcome = "unknown" if "outcome of this commit is unknown" in str(e) else "err"
                try:
                    con.execute("ROLLBACK")
                except Exception:  # noqa: BLE001 - the transaction may be gone already
                    pass
                print(f"txn {k}: {e}", file=sys.stderr)
            log.write(f"{k} {outcome}\n")
            log.flush()
            os.fsync(log.fileno())


if __name__ == "__main__":
    main()

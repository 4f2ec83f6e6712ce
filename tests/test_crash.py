"""kill -9 test: cross-shard transactions are atomic and durable.

tests/crash_writer.py commits transactions against a 4-shard table and logs
each acknowledged COMMIT; we SIGKILL it at a random moment, reopen the table
and compare it with the oracle: a model built by replaying the acked log
(`txn_ops(k)` says exactly what transaction k did). The table must equal the
model, or the model plus the one transaction that was in flight (committed
but not yet acked). Anything else is a torn (partial) or lost transaction.

Env: IMAGESTORE_CRASH_KILLS (default 250), IMAGESTORE_CRASH_SECONDS (default 60),
IMAGESTORE_CRASH_SEED. Also runnable directly: python3 tests/test_crash.py
"""
import os
import random
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

from crash_writer import image, txn_ops
from harness import connect

WRITER = Path(__file__).resolve().parent / "crash_writer.py"


def apply(model, k):
    """The model after transaction k: id -> (name, width, height, bytes)."""
    model = dict(model)
    inserts, renames, updates, deletes = txn_ops(k)
    for rowid, name, seed in inserts:
        w, h, data = image(seed)
        model[rowid] = (name, w, h, len(data))
    for rowid, name in renames:
        if rowid in model:
            model[rowid] = (name,) + model[rowid][1:]
    for rowid, seed in updates:
        if rowid in model:
            w, h, data = image(seed)
            model[rowid] = (model[rowid][0], w, h, len(data))
    for rowid in deletes:
        model.pop(rowid, None)
    return model


def observe(db):
    """The table's rows as id -> (name, width, height, bytes), corrupt rows, and what the
    shards still hold prepared once recovery has run (imagestore_transactions)."""
    con = connect(db)
    rows = con.execute("SELECT id, name, format, width, height, bytes, length(data) FROM t").fetchall()
    (prepared,), = con.execute("SELECT imagestore_transactions('t')")
    con.close()
    corrupt = [r for r in rows if r[2] != "png" or r[5] != r[6]]
    return {r[0]: (r[1], r[3], r[4], r[5]) for r in rows}, corrupt, prepared


def diff(want, got):
    lines = []
    for rowid in sorted(set(want) | set(got)):
        if want.get(rowid) != got.get(rowid):
            lines.append(f"  id {rowid}: want {want.get(rowid)} got {got.get(rowid)}")
    return "\n".join(lines[:40])


def classify(states, acked, observed):
    """(partial, lost) for an observed state matching neither allowed state.
    states[j] = model after the first j transactions of this round."""
    n = len(acked)
    for j in range(n):
        if observed == states[j]:
            return 0, n - j
    final = states[n]
    lost = sum(1 for k in acked
               if (ids := [i for i, _, _ in txn_ops(k)[0] if i in final])
               and not any(i in observed for i in ids))
    return 1, lost


def read_acked(path, skip):
    if not path.exists():
        return []
    lines = path.read_text().split("\n")[:-1]  # only complete lines
    return [int(x) for x in lines[skip:]]


def start_writer(db, acked, k, err):
    return subprocess.Popen([sys.executable, str(WRITER), str(db), str(acked), str(k)],
                            stdout=subprocess.PIPE, stderr=err)


def wait_ready(proc, timeout=60):
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    return bool(ready) and proc.stdout.readline().strip() == b"ready"


def kill_9(proc):
    proc.send_signal(signal.SIGKILL)
    proc.wait()


def run_crash_loop(workdir, max_kills, max_seconds, seed, crash=kill_9, db_dir=None,
                   options="shards=4", min_kills=0, after_crash=None):
    """Starts the writer, lets it run a random while, crashes it with `crash(proc)` (by default
    a kill -9; tests/test_power_cut.py cuts the power under it), runs `after_crash(db)` if given
    (tests/test_three_phase.py deletes the coordinator's journal), checks the table against the
    acknowledged log, and again. The table lives in `db_dir` (default `workdir`), the log in
    `workdir`, out of the crash's reach. Fewer than `min_kills` crashes in the time given is a
    problem: a run too slow to crash the writer proves nothing."""
    rng = random.Random(seed)
    db = (db_dir or workdir) / "test.db"
    acked, errlog = workdir / "acked.log", workdir / "writer.err"
    con = connect(db)
    # Durable when it returns, also at a power cut (SQLite's rule in rollback-journal mode).
    con.execute("PRAGMA synchronous=EXTRA")
    con.execute(f"CREATE VIRTUAL TABLE t USING imagestore({options})")
    con.close()

    model, next_k, acked_lines = {}, 0, 0
    kills = checked = partial = lost = 0
    problems = []
    deadline = time.monotonic() + max_seconds
    while kills < max_kills and time.monotonic() < deadline:
        start_k = next_k
        with open(errlog, "ab") as err:
            proc = start_writer(db, acked, start_k, err)
        if rng.random() < 1 / 6:
            time.sleep(rng.uniform(0.0, 0.05))     # sometimes hit the open/recovery path
        elif not wait_ready(proc):
            proc.kill()
            proc.wait()
            proc.stdout.close()
            raise AssertionError(f"writer never got ready:\n{errlog.read_text()[-3000:]}")
        else:
            time.sleep(rng.uniform(0.02, 0.3))
        if proc.poll() is not None:
            raise AssertionError(f"writer exited by itself (rc {proc.returncode}):\n"
                                 f"{errlog.read_text()[-3000:]}")
        crash(proc)
        proc.stdout.close()
        kills += 1
        if after_crash:
            after_crash(db)

        new = read_acked(acked, acked_lines)
        acked_lines += len(new)
        assert new == list(range(start_k, start_k + len(new))), f"acked log out of order: {new}"
        inflight = start_k + len(new)
        states = [model]
        for k in new + [inflight]:
            states.append(apply(states[-1], k))

        observed, corrupt, prepared = observe(db)
        if corrupt:
            partial += 1
            problems.append(f"kill {kills}: rows whose data disagrees with format/bytes: {corrupt[:5]}")
        if prepared != "[]":
            problems.append(f"kill {kills}: left prepared after recovery: {prepared}")
        if observed == states[-2]:
            model, checked = states[-2], checked + len(new)
        elif observed == states[-1]:
            model, checked = states[-1], checked + len(new) + 1
        else:
            p, lo = classify(states, new, observed)
            partial, lost = partial + p, lost + lo
            problems.append(f"kill {kills} (txns {start_k}..{inflight}, {inflight} in flight): "
                            f"table matches no allowed state; diff vs all acked applied:\n"
                            + diff(states[-2], observed))
            break
        next_k = inflight + 1
    summary = f"kills survived {kills}, transactions checked {checked}, partial {partial}, lost {lost}"
    if kills < min_kills:
        problems.append(f"only {kills} kills in {max_seconds} s, fewer than the {min_kills} the test needs")
    return summary, partial, lost, problems


def test_kill_9(tmp_path, capsys):
    seed = int(os.environ.get("IMAGESTORE_CRASH_SEED", time.time_ns() % 10 ** 9))
    kills = int(os.environ.get("IMAGESTORE_CRASH_KILLS", 250))
    summary, partial, lost, problems = run_crash_loop(
        tmp_path, kills, float(os.environ.get("IMAGESTORE_CRASH_SECONDS", 60)), seed,
        min_kills=min(kills, 50))
    with capsys.disabled():
        print(f"\n{summary} (seed {seed})")
    assert partial == 0 and lost == 0, summary + "\n" + "\n".join(problems)
    assert not problems, "\n".join(problems)


if __name__ == "__main__":
    import tempfile
    with tempfile.TemporaryDirectory() as d:
        seed = int(os.environ.get("IMAGESTORE_CRASH_SEED", time.time_ns() % 10 ** 9))
        summary, partial, lost, problems = run_crash_loop(
            Path(d), int(os.environ.get("IMAGESTORE_CRASH_KILLS", 250)),
            float(os.environ.get("IMAGESTORE_CRASH_SECONDS", 60)), seed)
        print("\n".join(problems))
        print(summary)
        sys.exit(1 if partial or lost or problems else 0)

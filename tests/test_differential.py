"""Seeded random differential test: the imagestore virtual table against an ordinary table.

What it proves: for random sequences of writes, reads and transaction control, a 4-shard
imagestore table

    t   CREATE VIRTUAL TABLE t USING imagestore(shards=4, tag TEXT, n INTEGER)

behaves exactly as the ordinary table

    o   CREATE TABLE o(id INTEGER PRIMARY KEY, name TEXT, data BLOB, tag TEXT, n INTEGER)

kept beside it in the same database file and the same apsw connection (so in the same
transactions and savepoints). Every generated statement is one text with `{T}` for the table
written and `{U}` for the other one; it is run on `o` and then on `t`, and after every step the
test asserts:

- the same outcome: the same rows (in order where the statement has ORDER BY, as multisets
  otherwise, with their SQL types), or the same error (apsw class, primary result code, and
  which constraint failed, e.g. "UNIQUE constraint failed"), the same changes() after an
  INSERT, UPDATE or DELETE (after a SELECT, changes() still counts the last of those on an
  ordinary table, while the imagestore table's first read in a transaction resets it to 0, as
  README's Transactions says), the same last_insert_rowid(), the same transaction state
  afterwards;
- the same full contents, `SELECT id, name, data, tag, n ... ORDER BY id`, data compared byte
  for byte;
- the same extended result codes: these are collected and reported when a seed ends rather
  than at once, since a different code alone changes nothing else that follows.

Oracle: SQLite's own behaviour on the ordinary table `o`. Nothing about the expected result is
computed here, with one exception: a statement under `OR ROLLBACK` inside an explicit
transaction is run on `o` as `OR ABORT`, and a constraint failure there counts as "the
transaction was rolled back" -- because the real `OR ROLLBACK` on `o` would also roll back the
statement just run on `t` (they share the transaction), and `t` would then run on a different
state. SQLite documents ROLLBACK as ABORT plus rolling back the transaction.

Covered: INSERT under every conflict clause with ids that collide, multi-row INSERTs with a
duplicate in their 2nd or 3rd row, INSERT without an id, INSERT ... SELECT from the other table
and from itself; UPDATE under every clause, id moves onto taken and free ids, `id = id + k` over
ranges, `-id`, name/tag/n/data updates; DELETE by id, range, column and subquery; BEGIN /
COMMIT / ROLLBACK, nested SAVEPOINT / ROLLBACK TO / RELEASE, statements failing inside them;
reads by id, IN list, ranges, ORDER BY id [DESC] LIMIT/OFFSET, count(*), equality and other
comparisons on name/tag/n (some across types or collations, which decides what t pushes down),
aggregates; values of other types than a column's (ids '7', 7.0, 2.5, 'abc'; n '3', 2.5; tag
5), whose affinity must come out the same; and now and then closing and reopening the
connection outside a transaction. `data` is always one of a few small corpus images, as
`img(k)` (a function this test registers: the bytes of POOL[k]), since `t` refuses non-images.

Not used: RETURNING (SQLite returns NULL for a virtual table's columns there), UPSERT
(`ON CONFLICT DO ...`, which SQLite does not allow on a virtual table), a BLOB name or a NULL or
non-image data (t refuses them by design, README "Columns"), and the id 2**63-1 (below).

Scale: SEEDS (8, or IMAGESTORE_DIFF_SEEDS=1,2,...) times IMAGESTORE_DIFF_STEPS steps each
(default 2000, so 16,000 steps, about 15 s on a 2-core machine, mostly the shards' syncs). On a
mismatch the message gives the seed, the step, both statements, both outcomes, the last
statements before it, and a file holding the whole script up to that point; the generator
depends only on the seed and o's contents, so
`pytest 'tests/test_differential.py::test_differential[seed_<n>]'` replays it.
"""
import json
import os
import random
import re
from dataclasses import dataclass, field

import apsw
import pytest

from harness import connect, corpus_bytes

SEEDS = [int(s) for s in os.environ.get("IMAGESTORE_DIFF_SEEDS", "1,2,3,5,8,13,21,34").split(",")]
STEPS = int(os.environ.get("IMAGESTORE_DIFF_STEPS", "2000"))
HISTORY_SHOWN = 10

# Small images of several formats; `img(k)` in a statement is POOL[k]'s bytes.
POOL = ["chessboard_GRAY.png", "vnc-d.webp", "chessboard_RGB.png", "multipage.tif",
        "phantom.png", "no_time_for_that_tiny.gif", "horse.png"]
IMAGES = [corpus_bytes(f) for f in POOL]
HORSE = POOL.index("horse.png")   # 16.6 KB, the largest

CLAUSES = ["", " OR IGNORE", " OR REPLACE", " OR ABORT", " OR FAIL", " OR ROLLBACK"]
NAMES = ["a", "b", "cat", "x y", "it's", "", None]
TAGS = ["red", "green", "blue", None]
COLUMNS = "id, name, data, tag, n"
CONTENTS = "SELECT id, name, data, tag, n FROM {T} ORDER BY id"

ORDINARY = "CREATE TABLE o(id INTEGER PRIMARY KEY, name TEXT, data BLOB, tag TEXT, n INTEGER)"
IMAGESTORE = "CREATE VIRTUAL TABLE t USING imagestore(shards=4, tag TEXT, n INTEGER)"


# ---------------------------------------------------------------------------------------------
# Statements

@dataclass
class Step:
    """One generated step. kind: 'write' and 'read' run on both tables, 'control' (transaction
    statements) runs once, 'reopen' closes and reopens the connection."""
    kind: str
    text: str
    ordered: bool = True   # for reads: compare rows in order (ORDER BY) or as multisets


def lit(value):
    if value is None:
        return "NULL"
    if isinstance(value, str):
        return "'" + value.replace("'", "''") + "'"
    return str(value)


def render(text, table):
    """The statement for one table: {T} is that table, {U} the other one."""
    other = "o" if table == "t" else "t"
    return text.replace("{T}", table).replace("{U}", other)


class Generator:
    """Random statements, biased towards ids that exist (so that conflicts happen)."""

    def __init__(self, seed):
        self.rng = random.Random(seed)
        self.savepoint_counter = 0

    # -- values ------------------------------------------------------------------------------

    def chance(self, p):
        return self.rng.random() < p

    def pick(self, seq):
        return self.rng.choice(seq)

    def clause(self):
        return self.pick(CLAUSES)

    def some_id(self, ids):
        # Never 2**63-1: with that the largest id, o gives an INSERT without an id a random
        # free one (SQLite's fallback), which no other table can match, and t refuses it ("no
        # id left above the largest one"). That difference is known and not tested here.
        if ids and self.chance(0.6):
            return self.pick(ids)
        if self.chance(0.03):
            return self.pick([-(2 ** 40), 2 ** 40, 2 ** 62])
        return self.rng.randint(-3, 45)

    def id_literal(self, rowid):
        """An id as SQL text; now and then in another type that an INTEGER PRIMARY KEY takes
        (an integral real, a text holding an integer) or refuses (2.5, 'abc')."""
        if self.chance(0.96):
            return str(rowid)
        return self.pick([f"'{rowid}'", f"{rowid}.0", "2.5", "'abc'"])

    def free_id(self, ids):
        taken = set(ids)
        while True:
            i = self.rng.randint(-3, 50)
            if i not in taken:
                return i

    def name(self):
        if self.chance(0.03):
            return self.pick(["5", "2.5"])   # numbers into a TEXT column (affinity)
        return lit(self.pick(NAMES))

    def tag(self):
        if self.chance(0.04):
            return self.pick(["5", "2.5"])
        return lit(self.pick(TAGS))

    def n(self):
        if self.chance(0.05):   # INTEGER affinity: texts and reals that convert, and do not
            return self.pick(["'3'", "'3.0'", "4.0", "2.5", "'abc'"])
        return "NULL" if self.chance(0.08) else str(self.rng.randint(-2, 5))

    def img(self):
        return f"img({self.rng.randrange(len(POOL))})"

    def row(self, rowid):
        return f"({rowid}, {self.name()}, {self.img()}, {self.tag()}, {self.n()})"

    def range_(self, ids):
        a = self.some_id(ids)
        if abs(a) > 1000:
            a = self.rng.randint(-3, 45)
        return a, a + self.rng.randint(0, 8)

    def predicate(self, ids):
        """A condition on one column, for WHERE clauses of every statement. Several compare
        across types or collations, which decides whether t may push them down to its shards."""
        a, b = self.range_(ids)
        value = self.rng.randint(-2, 5)
        return self.pick([
            f"id = {self.id_literal(self.some_id(ids))}",
            f"rowid = {self.some_id(ids)}",
            f"id BETWEEN {a} AND {b}",
            f"id BETWEEN '{a}' AND {b}",
            f"id > {a}.5",
            f"id IN ({self.id_literal(self.some_id(ids))}, {self.some_id(ids)}, "
            f"{self.some_id(ids)})",
            f"n = {value}",
            f"n = '{value}'",
            f"n IN ({value}, '{value + 1}')",
            f"n BETWEEN {value} AND {value + 2}",
            f"n != {value}",
            "n IS NULL",
            f"tag = {lit(self.pick(TAGS[:-1]))}",
            "tag = 5",
            "tag IS NOT NULL",
            f"tag IN ('red', {lit(self.pick(TAGS[:-1]))})",
            f"name = {lit(self.pick(NAMES[:-1]))}",
            "name = 5",
            f"name = {lit(self.pick(NAMES[:-1]).upper())} COLLATE NOCASE",
            "name LIKE 'c%'",
            f"name > {lit(self.pick(NAMES[:-1]))}",
        ])

    def where(self, ids):
        """A WHERE clause for UPDATE and DELETE."""
        choice = self.rng.randrange(6)
        if choice < 2:
            a, b = self.range_(ids)
            return f"id BETWEEN {a} AND {b}"
        if choice == 2:
            return f"id IN (SELECT id FROM {{T}} WHERE n > {self.rng.randint(2, 5)})"
        if choice == 3:
            return f"{self.predicate(ids)} AND {self.predicate(ids)}"
        return self.predicate(ids)

    # -- writes ------------------------------------------------------------------------------

    def insert_one(self, ids):
        verb = "REPLACE" if self.chance(0.05) else f"INSERT{self.clause()}"
        rowid = self.id_literal(self.some_id(ids))
        return f"{verb} INTO {{T}}({COLUMNS}) VALUES {self.row(rowid)}"

    def insert_auto(self, ids):
        if self.chance(0.5):
            return (f"INSERT{self.clause()} INTO {{T}}(name, data, tag, n) "
                    f"VALUES ({self.name()}, {self.img()}, {self.tag()}, {self.n()})")
        return f"INSERT{self.clause()} INTO {{T}}({COLUMNS}) VALUES {self.row('NULL')}"

    def insert_multi(self, ids):
        """2 to 4 rows with a duplicate id in the 2nd or 3rd row: a repeat of an earlier row of
        the statement, or an id the table holds."""
        count = self.rng.randint(2, 4)
        row_ids = [self.free_id(ids) for _ in range(count)]
        at = self.rng.randint(1, min(2, count - 1))
        if ids and self.chance(0.5):
            row_ids[at] = self.pick(ids)
        else:
            row_ids[at] = row_ids[self.rng.randrange(at)]
        rows = ", ".join(self.row(i) for i in row_ids)
        return f"INSERT{self.clause()} INTO {{T}}({COLUMNS}) VALUES {rows}"

    def insert_select_other(self, ids):
        """Copies a range of the other table, shifted by more than its width so that the rows
        written (in o first) are not in the range the second run (into t) reads."""
        a, b = self.range_(ids)
        k = self.pick([-1, 1]) * self.rng.randint(b - a + 1, b - a + 12)
        return (f"INSERT{self.clause()} INTO {{T}}({COLUMNS}) "
                f"SELECT id + {k}, name, data, tag, n FROM {{U}} WHERE id BETWEEN {a} AND {b}")

    def insert_select_self(self, ids):
        a, b = self.range_(ids)
        k = self.rng.randint(-6, 6)
        return (f"INSERT{self.clause()} INTO {{T}}({COLUMNS}) "
                f"SELECT id + {k}, name, data, tag, n + 1 FROM {{T}} WHERE id BETWEEN {a} AND {b}")

    def update_move(self, ids):
        """One row's id onto a taken id (a conflict) or a free one."""
        target = self.pick(ids) if ids and self.chance(0.6) else self.free_id(ids)
        target = "NULL" if self.chance(0.02) else self.id_literal(target)
        return f"UPDATE{self.clause()} {{T}} SET id = {target} WHERE id = {self.some_id(ids)}"

    def update_shift(self, ids):
        """Many ids moved at once: rows collide with rows the statement has not moved yet."""
        a, b = self.range_(ids)
        new_id = self.pick([f"id + {self.pick([-3, -2, -1, 1, 2, 3, 10])}", "-id", "id * 2",
                            "id"])
        extra = f", name = {self.name()}" if self.chance(0.3) else ""
        where = f"id BETWEEN {a} AND {b}" if self.chance(0.7) else self.where(ids)
        return f"UPDATE{self.clause()} {{T}} SET id = {new_id}{extra} WHERE {where}"

    def update_columns(self, ids):
        sets = self.rng.sample([f"name = {self.name()}", f"tag = {self.tag()}",
                                f"n = {self.n()}", "n = n + 1", f"data = {self.img()}"],
                               self.rng.randint(1, 3))
        return f"UPDATE{self.clause()} {{T}} SET {', '.join(sets)} WHERE {self.where(ids)}"

    def update_all_data(self, ids):
        """Many large images in one statement: with what else the transaction wrote, this
        passes t's logged_commit_max (256 KiB), so its commit takes the prepared path."""
        return f"UPDATE{self.clause()} {{T}} SET data = img({HORSE}) WHERE id < {self.some_id(ids)}"

    def delete(self, ids):
        if self.chance(0.02):
            return "DELETE FROM {T}"
        return f"DELETE FROM {{T}} WHERE {self.where(ids)}"

    WRITES = [(insert_one, 12), (insert_auto, 3), (insert_multi, 8), (insert_select_other, 4),
              (insert_select_self, 3), (update_move, 9), (update_shift, 6),
              (update_columns, 7), (update_all_data, 1), (delete, 5)]

    def write(self, ids):
        funcs, weights = zip(*self.WRITES)
        return Step("write", self.rng.choices(funcs, weights)[0](self, ids))

    # -- reads -------------------------------------------------------------------------------

    def read(self, ids):
        a, b = self.range_(ids)
        cols = self.pick([COLUMNS, "id, name, tag, n", "id, length(data), tag"])
        limit = self.rng.randint(1, 5)
        reads = [
            (f"SELECT {cols} FROM {{T}} WHERE id = {self.id_literal(self.some_id(ids))}", True),
            (f"SELECT {cols} FROM {{T}} WHERE id IN ({self.some_id(ids)}, {self.some_id(ids)}, "
             f"{self.some_id(ids)})", False),
            (f"SELECT {cols} FROM {{T}} WHERE id BETWEEN {a} AND {b} ORDER BY id", True),
            (f"SELECT {cols} FROM {{T}} WHERE id > {a} ORDER BY id DESC LIMIT {limit}", True),
            (f"SELECT {cols} FROM {{T}} ORDER BY id DESC LIMIT {limit} "
             f"OFFSET {self.rng.randint(0, 3)}", True),
            (f"SELECT {cols} FROM {{T}} ORDER BY id LIMIT {limit} OFFSET {self.rng.randint(0, 3)}",
             True),
            ("SELECT count(*) FROM {T}", True),
            (f"SELECT count(*) FROM {{T}} WHERE {self.predicate(ids)}", True),
            (f"SELECT {cols} FROM {{T}} WHERE {self.predicate(ids)}", False),
            (f"SELECT {cols} FROM {{T}} WHERE {self.predicate(ids)} ORDER BY id DESC", True),
            (f"SELECT id FROM {{T}} WHERE {self.predicate(ids)} AND {self.predicate(ids)}", False),
            ("SELECT tag, count(*), sum(n) FROM {T} GROUP BY tag ORDER BY tag", True),
            ("SELECT min(id), max(id), total(n) FROM {T}", True),
            ("SELECT id, typeof(name), typeof(tag), typeof(n) FROM {T} ORDER BY id", True),
        ]
        text, ordered = self.pick(reads)
        return Step("read", text, ordered)

    # -- transactions ------------------------------------------------------------------------

    def savepoint(self):
        self.savepoint_counter += 1
        return Step("control", f"SAVEPOINT s{self.savepoint_counter}")

    def control(self, in_tx, savepoints):
        if not in_tx:
            if self.chance(0.6):
                return Step("control", self.pick(["BEGIN", "BEGIN IMMEDIATE", "BEGIN DEFERRED"]))
            return self.savepoint()
        options = [(lambda: Step("control", "COMMIT"), 2),
                   (lambda: Step("control", "ROLLBACK"), 1),
                   (self.savepoint, 3)]
        if savepoints:
            options += [(lambda: Step("control", f"ROLLBACK TO {self.pick(savepoints)}"), 3),
                        (lambda: Step("control", f"RELEASE {self.pick(savepoints)}"), 2)]
        makers, weights = zip(*options)
        return self.rng.choices(makers, weights)[0]()

    # -- a step ------------------------------------------------------------------------------

    def step(self, ids, in_tx, savepoints):
        r = self.rng.random()
        if r < 0.01 and not in_tx:
            return Step("reopen", "-- close and reopen the connection")
        if r < 0.12:
            return self.control(in_tx, savepoints)
        if r < 0.35:
            return self.read(ids)
        return self.write(ids)


# ---------------------------------------------------------------------------------------------
# Running and comparing

@dataclass
class Outcome:
    rows: list = None
    error: tuple = None      # (apsw class, primary result code, message with table name as T)
    extended: int = None     # the error's extended result code
    changes: int = 0
    last_rowid: int = 0
    in_tx: bool = False

    def key(self):
        """What must be equal: rows with their types, and an error's class, primary code and
        which constraint failed if one did (t's messages word other errors their own way and add
        detail such as "(id 3 already exists)"). Extended codes: Session.note_extended_codes."""
        error = self.error and (self.error[0], self.error[1], constraint_kind(self.error[2]))
        return (typed(self.rows), error, self.changes, self.last_rowid, self.in_tx)


def constraint_kind(message):
    found = re.search(r"\b(\w+ constraint failed)", message)
    return found and found.group(1)


def show_value(v):
    if isinstance(v, bytes):
        return f"img({IMAGES.index(v)})" if v in IMAGES else f"<{len(v)} bytes, not in POOL>"
    return repr(v)


def show_rows(rows):
    if rows is None:
        return "None"
    return "[" + ", ".join("(" + ", ".join(show_value(v) for v in r) + ")" for r in rows) + "]"


def show(outcome):
    if outcome.error:
        text = f"error {outcome.error} extended={outcome.extended}"
    else:
        text = f"rows {show_rows(outcome.rows)}"
    return (f"{text}; changes={outcome.changes} last_insert_rowid={outcome.last_rowid} "
            f"in_transaction={outcome.in_tx}")


def typed(rows):
    """Rows with each value's type beside it: in Python 3 == 3.0, in SQL they differ."""
    return rows and [tuple((type(v).__name__, v) for v in row) for row in rows]


def row_sort_key(row):
    return [(type(v).__name__, v) for v in row]


def run(con, sql, table, ordered=True):
    outcome = Outcome()
    try:
        rows = [tuple(r) for r in con.execute(sql)]
        outcome.rows = rows if ordered else sorted(rows, key=row_sort_key)
    except apsw.Error as e:
        message = re.sub(rf"\b{table}\.", "T.", str(e))
        outcome.error = (type(e).__name__, e.result, message)
        outcome.extended = e.extendedresult
    if re.match(r"\s*(INSERT|UPDATE|DELETE|REPLACE)\b", sql, re.IGNORECASE):
        outcome.changes = con.changes()
    outcome.last_rowid = con.last_insert_rowid()
    outcome.in_tx = con.in_transaction
    return outcome


def oracle_text(text, in_tx):
    """The statement as run on o. Inside a transaction OR ROLLBACK becomes OR ABORT (module
    docstring): a real rollback there would also undo what the statement did to t."""
    if in_tx:
        return text.replace(" OR ROLLBACK ", " OR ABORT ")
    return text


def run_both(con, step):
    in_tx = con.in_transaction
    o_sql = render(oracle_text(step.text, in_tx), "o")
    expected = run(con, o_sql, "o", step.ordered)
    if in_tx and " OR ROLLBACK " in step.text and expected.error \
            and expected.error[0] == "ConstraintError":
        expected.in_tx = False
    actual = run(con, render(step.text, "t"), "t", step.ordered)
    return o_sql, expected, actual


def contents(con, table):
    return [tuple(r) for r in con.execute(render(CONTENTS, table))]


def open_db(path):
    con = connect(path)
    con.create_scalar_function("img", lambda k: IMAGES[k], 1, deterministic=True)
    return con


@dataclass
class Session:
    """One seed's run: the connection, the statements so far, the savepoints open."""
    seed: int
    path: object
    con: object = None
    history: list = field(default_factory=list)
    savepoints: list = field(default_factory=list)
    soft: dict = field(default_factory=dict)   # (o's code, t's code) -> (count, first example)

    def ids(self):
        return [r[0] for r in self.con.execute("SELECT id FROM o ORDER BY id")]

    def track_savepoints(self, text):
        words = text.split()
        if words[0] == "SAVEPOINT":
            self.savepoints.append(words[1])
        elif words[0] == "RELEASE":
            del self.savepoints[self.savepoints.index(words[1]):]
        elif words[:2] == ["ROLLBACK", "TO"]:
            del self.savepoints[self.savepoints.index(words[2]) + 1:]
        if not self.con.in_transaction:
            self.savepoints.clear()

    def fail(self, number, step, what, details):
        script = self.path.with_suffix(".replay.sql")
        script.write_text("".join(f"{line}\n" for line in self.history))
        recent = "\n".join(f"    {line}" for line in self.history[-HISTORY_SHOWN - 1:])
        pool = ", ".join(f"img({i})={f}" for i, f in enumerate(POOL))
        pytest.fail(f"{what}\nseed={self.seed} step={number}\nstatement: {render(step.text, 't')}"
                    f"\n{details}\nlast statements (t's text; o's is the same on o):\n{recent}"
                    f"\nwhole script: {script}\n{pool}", pytrace=False)

    def do_step(self, number, step):
        self.history.append(render(step.text, "t") + ";")
        if step.kind == "reopen":
            self.con.close()
            self.con = open_db(self.path)
            return
        if step.kind == "control":
            outcome = run(self.con, step.text, "-")
            self.history[-1] += f"  -- {show(outcome)}"
            if outcome.error:
                self.fail(number, step, "transaction statement failed", show(outcome))
            self.track_savepoints(step.text)
            return
        o_sql, expected, actual = run_both(self.con, step)
        self.history[-1] += f"  -- t: {show(actual)}"
        if expected.key() != actual.key():
            self.fail(number, step, "outcomes differ",
                      f"o ran: {o_sql}\n  o: {show(expected)}\n  t: {show(actual)}")
        self.note_extended_codes(number, step, expected, actual)
        self.track_savepoints(step.text)
        self.check_contents(number, step)

    def note_extended_codes(self, number, step, expected, actual):
        """Extended result codes that differ (same primary code, same behaviour) are collected
        and reported when the seed ends, so that they do not hide a behavioural difference
        later in the run."""
        if expected.extended != actual.extended:
            pair = (expected.extended, actual.extended)
            count, example = self.soft.get(pair, (0, f"step {number}: {render(step.text, 't')}"))
            self.soft[pair] = (count + 1, example)

    def check_soft(self):
        if self.soft:
            lines = "\n".join(f"  o {o} / t {t}: {count} times, first at {example}"
                               for (o, t), (count, example) in self.soft.items())
            pytest.fail(f"seed={self.seed}: extended result codes differ (o / t):\n{lines}",
                        pytrace=False)

    def check_contents(self, number, step):
        want, got = contents(self.con, "o"), contents(self.con, "t")
        if typed(want) != typed(got):
            missing = [r for r in want if typed([r])[0] not in typed(got)]
            extra = [r for r in got if typed([r])[0] not in typed(want)]
            self.fail(number, step, "contents differ after the step",
                      f"rows only in o: {show_rows(missing)}\nrows only in t: {show_rows(extra)}")


def run_seed(seed, steps, path):
    session = Session(seed, path, open_db(path))
    session.con.execute(ORDINARY)
    session.con.execute(IMAGESTORE)
    gen = Generator(seed)
    for i in range(12):   # a first few rows, as ordinary steps
        session.do_step(-12 + i, Step("write", f"INSERT INTO {{T}}({COLUMNS}) VALUES {gen.row(i)}"))
    for number in range(steps):
        step = gen.step(session.ids(), session.con.in_transaction, session.savepoints)
        session.do_step(number, step)
    if session.con.in_transaction:
        session.do_step(steps, Step("control", "COMMIT"))
    session.do_step(steps + 1, Step("reopen", "-- reopen"))
    session.check_contents(steps + 1, Step("read", CONTENTS))
    check = json.loads(session.con.execute("SELECT imagestore_check('t')").fetchall()[0][0])
    assert check["ok"], f"seed={seed}: imagestore_check: {check}"
    session.con.close()
    session.check_soft()


@pytest.mark.parametrize("seed", SEEDS, ids=[f"seed_{s}" for s in SEEDS])
def test_differential(seed, tmp_path):
    run_seed(seed, STEPS, tmp_path / "diff.db")


def test_ids_after_the_largest_possible_one_are_drawn_like_sqlites(tmp_path):
    """Once the largest id is 2^63-1, SQLite gives a row inserted without an id a random unused
    positive one; so does the table, also inside one transaction that inserted that largest id."""
    con = connect(tmp_path / "ids.db")
    con.execute("CREATE VIRTUAL TABLE t USING imagestore(shards=3)")
    con.execute("CREATE TABLE o(id INTEGER PRIMARY KEY, data BLOB)")
    image = corpus_bytes("no_time_for_that_tiny.gif")
    for table in ("t", "o"):
        con.execute("BEGIN")
        con.execute(f"INSERT INTO {table}(id, data) VALUES (5, ?)", (image,))
        con.execute(f"INSERT INTO {table}(data) VALUES (?)", (image,))
        con.execute(f"INSERT INTO {table}(id, data) VALUES (9223372036854775807, ?)", (image,))
        for _ in range(5):
            con.execute(f"INSERT INTO {table}(data) VALUES (?)", (image,))
        con.execute("COMMIT")
        ids = [i for i, in con.execute(f"SELECT id FROM {table}")]
        assert len(ids) == len(set(ids)) == 8 and min(ids) > 0 and 6 in ids, (table, ids)
        assert con.execute(f"SELECT count(*) FROM {table} WHERE data = ?", (image,)).fetchone() == (8,)

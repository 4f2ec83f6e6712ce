#!/usr/bin/env python3
"""Runner for the SQL script tests in tests/sql/*.test (sqllogictest-like).

Each file is run twice, against two independent SQLite hosts that load the
extension: (a) the real sqlite3 shell, one `sqlite3 -batch {tmp}/test.db`
process per record, and (b) apsw, one fresh connection per record. The oracle
is the expected output / error written in the script itself.

Format (records are separated by blank lines; lines starting with # outside
records are comments):

    statement ok
    <sql lines>

    statement error <regex>         -- or `@name` for a pattern in harness.ERRORS
    <sql lines>

    query
    <sql lines>
    ----
    <expected rows: columns joined by |, NULL as empty>

A record may hold several statements, one per line ending with `;`; all of them
run even if one fails (as in the shell). `statement error` passes if at least
one statement fails with a message matching the regex (case-insensitive).
`{corpus}` and `{tmp}` in the SQL are replaced by absolute paths.

Usage: python3 tests/sqltest.py [--backend shell|apsw] [file.test ...]
"""
import argparse
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import apsw

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness  # noqa: E402

SQL_DIR = Path(__file__).resolve().parent / "sql"
BACKENDS = ("shell", "apsw")
SHELL = shutil.which("sqlite3") or "/usr/bin/sqlite3"


@dataclass
class Record:
    kind: str              # "ok", "error" or "query"
    line: int              # line number of the header, for messages
    sql: str
    pattern: str = ""      # regex for "error"
    expected: list = field(default_factory=list)  # rows for "query"


@dataclass
class Outcome:
    rows: list             # output lines
    errors: list           # error messages


def parse(path):
    """Parse a .test file into Records."""
    lines = Path(path).read_text().split("\n")
    records, i = [], 0
    while i < len(lines):
        line = lines[i].strip()
        if not line or line.startswith("#"):
            i += 1
            continue
        header_line = i + 1
        words = line.split(None, 2)
        if words[:2] == ["statement", "ok"]:
            kind, pattern = "ok", ""
        elif words[:2] == ["statement", "error"]:
            kind = "error"
            pattern = line.split(None, 2)[2] if len(words) > 2 else "."
            if pattern.startswith("@"):
                pattern = harness.ERRORS[pattern[1:]]
        elif words[0] == "query":
            kind, pattern = "query", ""
        else:
            raise ValueError(f"{path}:{header_line}: bad record header {line!r}")
        i += 1
        sql = []
        while i < len(lines) and lines[i].strip() and lines[i].strip() != "----":
            sql.append(lines[i])
            i += 1
        expected = []
        if i < len(lines) and lines[i].strip() == "----":
            if kind != "query":
                raise ValueError(f"{path}:{header_line}: ---- in a statement record")
            i += 1
            while i < len(lines) and lines[i].strip():
                expected.append(lines[i])
                i += 1
        elif kind == "query":
            raise ValueError(f"{path}:{header_line}: query without ----")
        records.append(Record(kind, header_line, "\n".join(sql), pattern, expected))
    return records


def substitute(sql, tmp):
    return sql.replace("{corpus}", str(harness.CORPUS)).replace("{tmp}", str(tmp))


def split_statements(sql):
    """Split a record's SQL into complete statements (apsw.complete decides)."""
    stmts, buf = [], ""
    for line in sql.split("\n"):
        buf += line + "\n"
        if apsw.complete(buf):
            stmts.append(buf.strip())
            buf = ""
    if buf.strip():
        stmts.append(buf.strip())
    return stmts


def format_value(v):
    """Render a value the way the shell's list mode does."""
    if v is None:
        return ""
    if isinstance(v, float):
        s = "%.15g" % v
        return s if any(c in s for c in ".en") else s + ".0"
    if isinstance(v, bytes):
        return v.decode("utf-8", "replace")
    return str(v)


def run_shell(sql, tmp):
    lib = harness.require_lib()
    script = f".load {lib}\n.mode list\n{sql}\n"
    p = subprocess.run([SHELL, "-batch", str(tmp / "test.db")], input=script.encode(),
                       capture_output=True, cwd=tmp, timeout=300)
    stderr = p.stderr.decode("utf-8", "replace")
    errors = []
    for line in stderr.splitlines():
        if re.match(r"(Parse error|Runtime error|Error)\b", line):
            errors.append(line)
        elif errors:
            errors[-1] += "\n" + line
        elif line.strip():
            errors.append(line)
    if errors and errors[0].startswith("Error:") and Path(lib).stem in errors[0]:
        raise RuntimeError(f"sqlite3 shell could not load the extension: {errors[0]}")
    stdout = p.stdout.decode("utf-8", "replace")
    return Outcome(stdout.splitlines(), errors)


def run_apsw(sql, tmp):
    con = harness.connect(tmp / "test.db")
    rows, errors = [], []
    try:
        for stmt in split_statements(sql):
            try:
                for row in con.execute(stmt):
                    rows.append("|".join(format_value(v) for v in row))
            except apsw.Error as e:
                errors.append(f"{type(e).__name__}: {e}")
    finally:
        con.close()
    return Outcome(rows, errors)


RUNNERS = {"shell": run_shell, "apsw": run_apsw}


def check(rec, out):
    """Return a failure description, or None if the record passed."""
    if rec.kind == "ok":
        if out.errors:
            return "expected: no error\ngot errors:\n" + "\n".join(out.errors)
    elif rec.kind == "error":
        if not out.errors:
            return f"expected: an error matching /{rec.pattern}/\ngot: no error"
        if not any(re.search(rec.pattern, e, re.IGNORECASE) for e in out.errors):
            return (f"expected: an error matching /{rec.pattern}/\ngot errors:\n"
                    + "\n".join(out.errors))
    else:
        if out.errors or out.rows != rec.expected:
            msg = ("expected:\n" + "\n".join("  " + r for r in rec.expected)
                   + "\ngot:\n" + "\n".join("  " + r for r in out.rows))
            if out.errors:
                msg += "\ngot errors:\n" + "\n".join(out.errors)
            return msg
    return None


def run_file(path, backend, tmp):
    """Run every record of `path` with `backend` in the empty dir `tmp`.
    Returns a list of failure messages (empty on success)."""
    path, tmp = Path(path), Path(tmp)
    failures = []
    for rec in parse(path):
        sql = substitute(rec.sql, tmp)
        out = RUNNERS[backend](sql, tmp)
        problem = check(rec, out)
        if problem:
            sql_shown = "\n".join("  " + s for s in sql.split("\n"))
            failures.append(f"{path.name}:{rec.line} [{backend}] {rec.kind}\n"
                            f"sql:\n{sql_shown}\n{problem}")
    return failures


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--backend", choices=BACKENDS, action="append")
    ap.add_argument("files", nargs="*", type=Path)
    args = ap.parse_args()
    files = args.files or sorted(SQL_DIR.glob("*.test"))
    failed = 0
    for f in files:
        for backend in args.backend or BACKENDS:
            with tempfile.TemporaryDirectory(prefix="sqltest-") as tmp:
                failures = run_file(f, backend, tmp)
            print(f"{'FAIL' if failures else 'ok  '} {f.name} [{backend}]")
            for msg in failures:
                print("  " + msg.replace("\n", "\n  "))
            failed += bool(failures)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()

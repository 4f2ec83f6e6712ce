"""Runs every tests/sql/*.test script through tests/sqltest.py, once with the
sqlite3 shell and once with apsw; the oracle is the expected output and errors
written in each script."""
import pytest

import sqltest

FILES = sorted(sqltest.SQL_DIR.glob("*.test"))


@pytest.mark.parametrize("backend", sqltest.BACKENDS)
@pytest.mark.parametrize("path", FILES, ids=[f.name for f in FILES])
def test_sql_script(path, backend, tmp_path):
    failures = sqltest.run_file(path, backend, tmp_path)
    assert not failures, f"{len(failures)} failing record(s):\n\n" + "\n\n".join(failures)

"""Fixtures shared by the Python tests."""
import os

import pytest

import pg_servers


@pytest.fixture(scope="session")
def pg():
    """Three PostgreSQL servers on free loopback ports, started once for the tests that ask for
    them and stopped when the run ends, whatever happened. Where the server binaries are missing
    the tests are skipped, except in CI (`CI=true`), where that is a failure."""
    if not pg_servers.available():
        if os.environ.get("CI") == "true":
            pytest.fail("PostgreSQL 15 server binaries are needed (Debian's postgresql-15)")
        pytest.skip("PostgreSQL 15 server binaries are not installed")
    with pg_servers.servers(3) as started:
        yield started

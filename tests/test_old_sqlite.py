"""Loading into an SQLite older than the extension's API floor (3.34.1) is an error message,
never an abort of the host. The host here is tests/old-sqlite, a loader linked with SQLite 3.33.0
(built by tests/run-all.sh); the oracle is its exit status and the message SQLite hands back."""
import subprocess

from harness import REPO_ROOT, require_lib

LOADER = REPO_ROOT / "target" / "old-sqlite" / "release" / "old-sqlite-loader"


def test_too_old_sqlite_gets_an_error_not_an_abort():
    assert LOADER.exists(), f"build it: cargo build --release --manifest-path tests/old-sqlite/Cargo.toml --target-dir target/old-sqlite"
    out = subprocess.run([str(LOADER), require_lib()], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, (out.returncode, out.stderr[-2000:])  # the host lives on
    assert out.stdout.startswith("sqlite=3.33.0 rc=1 "), out.stdout  # SQLITE_ERROR
    assert "imagestore needs SQLite 3.34.1 or newer; this program uses SQLite 3.33.0" in out.stdout

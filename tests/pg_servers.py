"""Throwaway PostgreSQL servers for the tests: started on free loopback ports, always stopped.

Each server is a `postgres` process that is a direct child of the test process, run as the
`postgres` user (initdb refuses root), listening on 127.0.0.1 only, in a folder of its own that is
deleted when it stops. The kernel kills it if the test process dies (PR_SET_PDEATHSIG), so not
even a killed test run leaves a server behind; a normal run stops each one (SIGINT: PostgreSQL's
fast shutdown) and waits for it.

    with servers(3) as pg:
        pg[0].url("imagestore")        # postgresql://postgres@127.0.0.1:PORT/imagestore
        pg[1].kill(); pg[1].start()    # SIGKILL, then a restart (crash recovery)

`max_prepared_transactions` is 64, `fsync` on: a prepared transaction is as durable as on a real
server. Needs the PostgreSQL 15 server binaries (Debian's `postgresql-15`).
"""
import contextlib
import ctypes
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

BIN = Path(os.environ.get("IMAGESTORE_PG_BIN", "/usr/lib/postgresql/15/bin"))
PR_SET_PDEATHSIG = 1


def available():
    """Whether servers can be started here (the binaries, and the postgres user to run them)."""
    try:
        pwd.getpwnam("postgres")
    except KeyError:
        return False
    return (BIN / "postgres").exists() and (BIN / "initdb").exists()


def _as_postgres():
    """preexec_fn: become the postgres user, and die with the process that started us."""
    user = pwd.getpwnam("postgres")
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    os.setgid(user.pw_gid)
    os.setuid(user.pw_uid)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """One PostgreSQL server in its own folder."""

    def __init__(self, root, settings=""):
        self.folder = Path(tempfile.mkdtemp(prefix="pg-", dir=root))
        shutil.chown(self.folder, "postgres", "postgres")
        self.data = self.folder / "data"
        self.port = free_port()
        self.process = None
        subprocess.run([BIN / "initdb", "-D", self.data, "-U", "postgres", "--auth=trust",
                        "-E", "UTF8", "--locale=C.UTF-8", "-N"],
                       preexec_fn=_as_postgres, check=True, capture_output=True)
        with open(self.data / "postgresql.conf", "a") as conf:
            conf.write(f"listen_addresses = '127.0.0.1'\nport = {self.port}\n"
                       f"unix_socket_directories = '{self.folder}'\n"
                       "max_prepared_transactions = 64\nfsync = on\n" + settings)

    def url(self, database="postgres", user="postgres"):
        return f"postgresql://{user}@127.0.0.1:{self.port}/{database}"

    def start(self, timeout=30):
        log = open(self.folder / "log", "ab")
        self.process = subprocess.Popen([BIN / "postgres", "-D", self.data],
                                        preexec_fn=_as_postgres, stdout=log, stderr=log)
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"postgres exited: {(self.folder / 'log').read_text()[-2000:]}")
            ready = subprocess.run([BIN / "pg_isready", "-h", "127.0.0.1", "-p", str(self.port)],
                                   capture_output=True)
            if ready.returncode == 0:
                return
            time.sleep(0.05)
        raise RuntimeError(f"postgres did not start within {timeout} s")

    def restart(self, timeout=60):
        """Starts the server again after a kill: a killed postmaster's backends may hold its
        shared memory for a moment, so a start that fails at once is tried again."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                return self.start(timeout=max(1, deadline - time.monotonic()))
            except RuntimeError:
                if time.monotonic() >= deadline:
                    raise
                time.sleep(0.2)

    def signal_all(self, sig):
        """Sends `sig` to the postmaster and every process it started (its backends among them):
        SIGSTOP so, stops the whole server, as a machine that stops answering would."""
        pids = [self.process.pid]
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == self.process.pid:
                pids.append(int(stat.parent.name))
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass

    def backends(self, application="imagestore"):
        """The pids of the server's backends serving connections named `application`."""
        out = self.psql(f"SELECT pid FROM pg_stat_activity WHERE application_name = '{application}'")
        return [int(pid) for pid in out.split()]

    def psql(self, sql, database="postgres"):
        """Runs `sql` with psql; returns its output (tuples only, unaligned)."""
        done = subprocess.run(["psql", "-X", "-q", "-t", "-A", "-v", "ON_ERROR_STOP=1",
                               "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres",
                               "-d", database, "-c", sql], capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(done.stderr)
        return done.stdout

    def create_database(self, name):
        self.psql(f'CREATE DATABASE "{name}"')

    def kill(self, sig=signal.SIGKILL):
        """Kills the postmaster (its backends follow); waits until it is gone."""
        if self.process and self.process.poll() is None:
            self.process.send_signal(sig)
            if sig in (signal.SIGKILL, signal.SIGINT, signal.SIGTERM):
                self.process.wait()

    def stop(self):
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)  # fast shutdown
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def remove(self):
        self.stop()
        shutil.rmtree(self.folder, ignore_errors=True)


@contextlib.contextmanager
def servers(count, settings=""):
    """`count` started servers, stopped and deleted afterwards, whatever happens."""
    root = tempfile.mkdtemp(prefix="imagestore-pg-")
    os.chmod(root, 0o755)
    started = []
    try:
        for _ in range(count):
            started.append(Server(root, settings))
        for server in started:
            server.start()
        yield started
    finally:
        for server in started:
            server.remove()
        shutil.rmtree(root, ignore_errors=True)


def serve(count, settings=""):
    """`python3 pg_servers.py serve N [SETTINGS]`, for tests in other languages: starts N
    servers (SETTINGS: lines added to their postgresql.conf), prints
    the URL of each (database `postgres`) a line, then `ready`; stops them when standard input
    closes (the test process ended, however it ended). Prints `unavailable` where servers
    cannot be started here."""
    import sys
    if not available():
        print("unavailable", flush=True)
        return
    with servers(count, settings) as started:
        for server in started:
            print(server.url(), flush=True)
        print("ready", flush=True)
        sys.stdin.read()


if __name__ == "__main__":
    import sys
    if len(sys.argv) in (3, 4) and sys.argv[1] == "serve":
        serve(int(sys.argv[2]), sys.argv[3] + "\n" if len(sys.argv) == 4 else "")
    else:
        sys.exit("usage: pg_servers.py serve COUNT [SETTINGS]")

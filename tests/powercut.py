"""Drives the power-cut file system (tests/powercut, a FUSE pass-through that forgets on command
what was not synced): mount a backing folder, run things on the mount, cut the power, mount the
surviving folder again. Used by test_powercut_fs.py (the tool's own tests) and by the product's
power-cut tests.

    with PowerCutFS(backing_dir) as fs:
        ... write under fs.mountpoint ...
        fs.cut(kill=[writer_process])     # or fs.cut(seed=7): a random part survives
        ... read under fs.mountpoint: only what was synced before the cut ...

Needs root and /dev/fuse (the CI machine has both). The daemon is always stopped and the folder
unmounted when the block ends, also when a test fails.
"""
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BINARY = os.path.join(ROOT, "target", "powercut", "release", "powercut")
MOUNT_TIMEOUT_S = 10


class PowerCutFS:
    """A power-cut file system over the folder `backing` (made if missing), mounted at
    `mountpoint` (a new folder if None)."""

    def __init__(self, backing, mountpoint=None):
        if not os.path.exists(BINARY):
            raise RuntimeError(f"{BINARY} is missing: tests/run-all.sh builds it")
        self.backing = str(backing)
        os.makedirs(self.backing, exist_ok=True)
        self._own_dirs = tempfile.mkdtemp(prefix="powercut-")
        self.mountpoint = mountpoint or os.path.join(self._own_dirs, "mnt")
        os.makedirs(self.mountpoint, exist_ok=True)
        self.control = os.path.join(self._own_dirs, "control.sock")
        self.daemon = None
        self.cuts = 0

    def __enter__(self):
        self.mount()
        return self

    def __exit__(self, *exc):
        self.close()

    def path(self, *names):
        return os.path.join(self.mountpoint, *names)

    def mount(self):
        self.daemon = subprocess.Popen([BINARY, self.backing, self.mountpoint, self.control],
                                       stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + MOUNT_TIMEOUT_S
        while not (_mounted(self.mountpoint) and os.path.exists(self.control)):
            if self.daemon.poll() is not None:
                raise RuntimeError(f"powercut exited with {self.daemon.returncode} while mounting")
            if time.monotonic() > deadline:
                self.close()
                raise RuntimeError("powercut did not mount in time")
            time.sleep(0.01)

    def _command(self, line):
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.connect(self.control)
            s.sendall(line.encode() + b"\n")
            answer = b""
            while not answer.endswith(b"\n"):
                chunk = s.recv(256)
                if not chunk:
                    break
                answer += chunk
        return answer.decode().strip()

    def pending(self):
        """How many changes a cut would take away now."""
        return int(self._command("pending"))

    def cut(self, seed=None, kill=()):
        """Cuts the power: every change not synced is undone (with `seed`, a random part of
        each file's and directory's, keeping their order); then the processes in `kill` are
        killed (SIGKILL), the dead mount is removed, and the surviving folder is mounted again.
        Returns how many changes were undone."""
        answer = self._command("cut all" if seed is None else f"cut random {seed}")
        if not answer.startswith("cut "):
            raise RuntimeError(f"powercut refused the cut: {answer}")
        self.daemon.wait(timeout=MOUNT_TIMEOUT_S)
        for process in kill:
            _kill(process)
        self._unmount()
        self.cuts += 1
        self.mount()
        return int(answer.split()[1])

    def cut_at_random(self, rng, kill=()):
        """`cut`, half the time dropping everything unsynced, half a random part of it (a
        seed drawn from `rng`, a random.Random)."""
        return self.cut(seed=rng.randrange(1, 2 ** 32) if rng.random() < 0.5 else None, kill=kill)

    def close(self):
        """Stops the daemon and unmounts; the backing folder keeps what it holds."""
        if self.daemon is not None and self.daemon.poll() is None:
            self.daemon.terminate()
            try:
                self.daemon.wait(timeout=MOUNT_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.daemon.kill()
                self.daemon.wait()
        self._unmount()
        # What the daemon kept to put back at a cut: names removed meanwhile, gone for good now.
        shutil.rmtree(os.path.join(self.backing, ".powercut-trash"), ignore_errors=True)
        shutil.rmtree(self._own_dirs, ignore_errors=True)

    def _unmount(self):
        # A dead mount (its daemon gone) fails stat(), so os.path.ismount says no: read the
        # mount table. Lazy: a process the caller did not kill may still hold a file open.
        while _mounted(self.mountpoint):
            subprocess.run(["umount", "-l", self.mountpoint], check=True)


def _mounted(path):
    path = os.path.realpath(path)
    with open("/proc/self/mounts") as mounts:
        return any(line.split()[1] == path for line in mounts)


def _kill(process):
    """SIGKILL for a subprocess.Popen or a pid, and wait for it."""
    if isinstance(process, int):
        try:
            os.kill(process, signal.SIGKILL)
        except ProcessLookupError:
            pass
        return
    if process.poll() is None:
        process.kill()
    process.wait()


def available():
    """Why power-cut tests cannot run here, or None if they can."""
    if os.geteuid() != 0:
        return "the power-cut file system mounts with mount(2): run the tests as root"
    if not os.path.exists("/dev/fuse"):
        return "/dev/fuse is missing"
    return None

"""The power-cut file system's own tests (tests/powercut): an unsynced write, size change, new
name, removal or rename is lost at a cut; a synced one is kept; a random cut keeps a prefix of
each file's writes; SQLite's locks and shared memory work through it, and its synced commits
survive while unsynced ones do not. The oracle is the POSIX rule the tool models: what a file's
or directory's fsync covered is kept, nothing else."""
import ctypes
import errno
import os
import sqlite3

import pytest

from powercut import PowerCutFS, available

pytestmark = pytest.mark.skipif(available() is not None, reason=str(available()))


@pytest.fixture
def fs(tmp_path):
    with PowerCutFS(tmp_path / "backing") as mounted:
        yield mounted


def sync_dir(path):
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_file(path, data, sync_data=True, sync_folder=True, flags=0):
    fd = os.open(path, os.O_CREAT | os.O_WRONLY | flags, 0o644)
    try:
        os.write(fd, data)
        if sync_data:
            os.fsync(fd)
    finally:
        os.close(fd)
    if sync_folder:
        sync_dir(os.path.dirname(path))


def read(path):
    with open(path, "rb") as f:
        return f.read()


def test_a_synced_write_is_kept_and_an_unsynced_one_lost(fs):
    path = fs.path("a")
    write_file(path, b"kept")
    fd = os.open(path, os.O_WRONLY | os.O_APPEND)
    os.write(fd, b" and lost")
    os.close(fd)
    assert read(path) == b"kept and lost"
    assert fs.pending() == 1
    assert fs.cut() == 1
    assert read(fs.path("a")) == b"kept"


def test_fdatasync_counts_as_a_sync(fs):
    path = fs.path("a")
    write_file(path, b"")
    fd = os.open(path, os.O_WRONLY)
    os.pwrite(fd, b"synced by fdatasync", 0)
    os.fdatasync(fd)
    os.close(fd)
    fs.cut()
    assert read(fs.path("a")) == b"synced by fdatasync"


def test_overwrites_and_size_changes_are_put_back(fs):
    path = fs.path("a")
    write_file(path, b"0123456789")
    fd = os.open(path, os.O_RDWR)
    os.pwrite(fd, b"ab", 3)
    os.truncate(path, 5)
    os.pwrite(fd, b"zz", 8)  # past the end: a hole, then bytes
    os.ftruncate(fd, 20)
    os.close(fd)
    assert fs.pending() == 4
    fs.cut()
    assert read(fs.path("a")) == b"0123456789"


def test_a_new_file_whose_folder_was_not_synced_is_gone_even_with_its_data_synced(fs):
    write_file(fs.path("new"), b"data", sync_data=True, sync_folder=False)
    fs.cut()
    assert not os.path.exists(fs.path("new"))


def test_a_new_folder_and_a_hard_link_need_their_folder_synced(fs):
    os.mkdir(fs.path("kept"))
    write_file(fs.path("kept", "f"), b"x")  # syncs "kept" itself
    sync_dir(fs.mountpoint)
    os.mkdir(fs.path("lost"))
    os.link(fs.path("kept", "f"), fs.path("kept", "link"))
    fs.cut()
    assert sorted(os.listdir(fs.mountpoint)) == ["kept"]
    assert os.listdir(fs.path("kept")) == ["f"]
    assert os.stat(fs.path("kept", "f")).st_nlink == 1


def test_a_removal_comes_back_unless_its_folder_was_synced(fs):
    write_file(fs.path("removed-then-synced"), b"gone")
    write_file(fs.path("removed"), b"back")
    os.unlink(fs.path("removed-then-synced"))
    sync_dir(fs.mountpoint)
    os.unlink(fs.path("removed"))
    assert not os.path.exists(fs.path("removed"))
    fs.cut()
    assert os.listdir(fs.mountpoint) == ["removed"]
    assert read(fs.path("removed")) == b"back"


def test_a_file_removed_or_replaced_while_open_stays_usable(fs):
    """As on any disk: the open descriptor still reads, writes and fstats, also once the
    removal is durable (the folder synced)."""
    write_file(fs.path("old"), b"contents")
    write_file(fs.path("new"), b"other")
    fd = os.open(fs.path("old"), os.O_RDWR)
    os.rename(fs.path("new"), fs.path("old"))
    sync_dir(fs.mountpoint)
    os.pwrite(fd, b"C", 0)
    assert os.fstat(fd).st_size == 8
    assert os.pread(fd, 8, 0) == b"Contents"
    os.close(fd)
    assert read(fs.path("old")) == b"other"


def test_fallocate_and_rename_noreplace_pass_through_and_are_undone(fs):
    write_file(fs.path("a"), b"x")
    fd = os.open(fs.path("a"), os.O_RDWR)
    os.posix_fallocate(fd, 0, 1 << 16)
    assert os.fstat(fd).st_size == 1 << 16
    os.close(fd)
    write_file(fs.path("b"), b"y")
    renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    at_cwd, noreplace = -100, 1
    assert renameat2(at_cwd, fs.path("b").encode(), at_cwd, fs.path("a").encode(), noreplace) == -1
    assert ctypes.get_errno() == errno.EEXIST
    assert renameat2(at_cwd, fs.path("b").encode(), at_cwd, fs.path("c").encode(), noreplace) == 0
    fs.cut()
    assert read(fs.path("a")) == b"x"
    assert sorted(os.listdir(fs.mountpoint)) == ["a", "b"]


def test_a_folder_rename_is_refused_as_across_file_systems(fs):
    os.mkdir(fs.path("d"))
    with pytest.raises(OSError) as refused:
        os.rename(fs.path("d"), fs.path("e"))
    assert refused.value.errno == errno.EXDEV


def test_a_rename_over_a_file_is_undone_with_the_file_it_replaced(fs):
    write_file(fs.path("journal"), b"old")
    write_file(fs.path("journal-new"), b"new")
    os.rename(fs.path("journal-new"), fs.path("journal"))
    assert read(fs.path("journal")) == b"new"
    fs.cut()
    assert read(fs.path("journal")) == b"old"
    assert read(fs.path("journal-new")) == b"new"
    os.rename(fs.path("journal-new"), fs.path("journal"))
    sync_dir(fs.mountpoint)
    fs.cut()
    assert os.listdir(fs.mountpoint) == ["journal"]
    assert read(fs.path("journal")) == b"new"


def test_an_o_dsync_handle_writes_durably(fs):
    write_file(fs.path("a"), b"")
    fd = os.open(fs.path("a"), os.O_WRONLY | os.O_DSYNC)
    os.write(fd, b"at once")
    os.close(fd)
    assert fs.pending() == 0
    fs.cut()
    assert read(fs.path("a")) == b"at once"


def test_a_random_cut_keeps_a_prefix_of_each_files_writes(tmp_path):
    """Each file keeps the state after some prefix of its writes, chosen per file: never a
    later write without an earlier one. Several seeds give several prefixes."""
    kept = set()
    for seed in range(1, 9):
        with PowerCutFS(tmp_path / f"seed{seed}") as fs:
            write_file(fs.path("a"), b"")
            write_file(fs.path("b"), b"")
            fds = [os.open(fs.path(name), os.O_WRONLY) for name in ("a", "b")]
            for i in range(40):
                for fd in fds:
                    os.write(fd, b"%02d," % i)
            for fd in fds:
                os.close(fd)
            fs.cut(seed=seed)
            for name in ("a", "b"):
                data = read(fs.path(name))
                records = [r for r in data.split(b",") if r]
                assert records == [b"%02d" % i for i in range(len(records))], data
                assert data == b"".join(b"%02d," % i for i in range(len(records)))
                kept.add(len(records))
    assert len(kept) >= 3, kept


def test_a_random_cut_may_tear_a_write_at_a_sector_boundary(tmp_path):
    """The oldest write a random cut takes back from a file is sometimes torn: the file keeps
    a whole number of its first 512-byte sectors, the old bytes after them. Over the seeds,
    some writes are kept whole, some lost whole, some torn."""
    old, new = b"o" * 8192, bytes(range(256)) * 24  # 6144 bytes over the first 6 KB
    outcomes = {}
    for seed in range(1, 25):
        with PowerCutFS(tmp_path / f"seed{seed}") as fs:
            write_file(fs.path("a"), old)
            fd = os.open(fs.path("a"), os.O_WRONLY)
            os.pwrite(fd, new, 0)
            os.close(fd)
            fs.cut(seed=seed)
            data = read(fs.path("a"))
        kept = next((k for k in range(0, len(new) + 1, 512) if data == new[:k] + old[k:]), None)
        assert kept is not None, f"seed {seed}: not a sector prefix of the write: {data[:64]!r}"
        outcomes[seed] = kept
    assert 0 in outcomes.values() and len(new) in outcomes.values(), outcomes
    assert any(0 < k < len(new) for k in outcomes.values()), outcomes


def test_sqlite_through_it_keeps_synced_commits_and_loses_unsynced_ones(fs):
    """WAL mode, so SQLite's locks and its -shm map run through the mount. At synchronous=FULL
    every acknowledged commit survives; at synchronous=OFF (nothing synced) they are lost."""
    for sync, survive in (("FULL", True), ("OFF", False)):
        name = fs.path(f"{sync}.db")
        con = sqlite3.connect(name, isolation_level=None)
        con.execute("PRAGMA journal_mode=WAL")
        con.execute("PRAGMA synchronous=FULL")
        con.execute("CREATE TABLE t(x)")
        sync_dir(fs.mountpoint)
        con.execute(f"PRAGMA synchronous={sync}")
        for i in range(20):
            con.execute("INSERT INTO t VALUES (?)", (i,))
        assert con.execute("SELECT count(*) FROM t").fetchone() == (20,)
        fs.cut()
        con.close()
        con = sqlite3.connect(fs.path(f"{sync}.db"))
        assert con.execute("SELECT count(*) FROM t").fetchone() == ((20,) if survive else (0,))
        assert con.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        con.close()


def test_a_rollback_journal_commit_needs_synchronous_extra(fs):
    """SQLite's own rule, which the host database of a table follows: in rollback-journal mode
    a commit ends by deleting the journal, and only at synchronous=EXTRA is the folder synced
    after it; at FULL (the default) a power cut can bring the journal back, and the next open
    rolls the acknowledged commit back."""
    for sync, survives in (("FULL", False), ("EXTRA", True)):
        con = sqlite3.connect(fs.path(f"{sync}.db"), isolation_level=None)
        con.execute("PRAGMA synchronous=EXTRA")
        con.execute("CREATE TABLE t(x)")
        sync_dir(fs.mountpoint)
        con.execute(f"PRAGMA synchronous={sync}")
        con.execute("INSERT INTO t VALUES (1)")
        fs.cut()
        con.close()
        con = sqlite3.connect(fs.path(f"{sync}.db"))
        assert con.execute("SELECT count(*) FROM t").fetchone() == ((1,) if survives else (0,))
        con.close()


def test_the_mount_refuses_everything_after_the_cut_until_mounted_again(tmp_path):
    """Nothing written after the moment of the cut reaches the disk: the dying mount answers
    with an error, and the next mount shows the cut state."""
    with PowerCutFS(tmp_path / "backing") as fs:
        write_file(fs.path("a"), b"before")
        fd = os.open(fs.path("a"), os.O_WRONLY | os.O_APPEND)
        answer = fs._command("cut all")
        assert answer == "cut 0"
        fs.daemon.wait(timeout=10)
        with pytest.raises(OSError):
            os.write(fd, b" after")
            os.fsync(fd)
        os.close(fd)
        fs._unmount()
        fs.mount()
        assert read(fs.path("a")) == b"before"

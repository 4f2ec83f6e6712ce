//! The table's two cross-process locks, as `flock(2)` locks on two files beside the journal
//! (`<shard 0>.imagestore-lock` and `<shard 0>.imagestore-publish`).
//!
//! - The **writer lock** (on `.imagestore-lock`), exclusive, is held by the one connection that has a
//!   write transaction open on the table, from its first write until it commits or rolls back.
//!   Writers are serialized by it, so shard locks are never contended between writers and no two
//!   writers can wait for each other in opposite orders: there is one lock, taken first.
//! - The **publish lock** (on `.imagestore-publish`): a writer of several shards holds it
//!   exclusively from before its first shard commit (a prepare, or a logged commit's) until its
//!   decision is durable and, on the logged path, every shard has committed (or until its abort
//!   is complete); a reader holds it shared only while it opens its read snapshot on every
//!   shard. So a reader's snapshots are all taken either before any shard of a transaction
//!   committed or after its decision: never in between.
//! - The publish lock file also holds the **logged-commit mark**: a writer sets it (to the
//!   transaction id) before a logged commit's journal record and clears it once every shard has
//!   committed, all under the exclusive publish lock. So whoever holds the publish lock and finds
//!   the mark set knows that a writer died, or a shard failed, in that window: recovery must
//!   replay the journal first. The mark is written without a sync: only a live system needs it,
//!   and after a power cut every open runs recovery anyway.
//!
//! - It also holds the **publication counter**, raised once in each window the publish lock is
//!   held exclusively ([`Publishing`]), the only windows in which what a reader sees on a shard
//!   can change. A reader reads it with its snapshots, so a transaction that keeps one snapshot
//!   for all its reads can tell, when it starts writing, whether another connection has
//!   published since (SQLITE_BUSY_SNAPSHOT, as for an ordinary WAL table). A false "changed"
//!   (the lock taken for nothing) only refuses a write that could have gone ahead. The raise
//!   is written together with the mark's first write in the window, or when the lock is
//!   released: one write to the file, on every commit's path. Readers may read it at any
//!   point of the window: they cannot take the lock shared until it ends.
//!
//! `flock` locks belong to an open file description, so two connections in one process exclude
//! each other just as two processes do, and the kernel drops a dead process's locks.

use std::fs::{File, OpenOptions, TryLockError};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::error::{Error, Result};

/// Where the publish lock's file holds the logged-commit mark and the publication counter.
const MARK_AT: usize = 0;
const PUBLICATION_AT: usize = 8;
const STATE_BYTES: usize = 16;

fn u64_at(bytes: &[u8; STATE_BYTES], at: usize) -> u64 {
    let mut value = [0u8; 8];
    value.copy_from_slice(&bytes[at..at + 8]);
    u64::from_le_bytes(value)
}

/// A file used only for locking.
#[derive(Clone)]
pub struct LockFile {
    file: Arc<File>,
    path: Arc<Path>,
}

/// A held lock; dropping it unlocks.
pub struct LockGuard {
    file: Arc<File>,
}

/// What the publish lock's file holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PublishState {
    /// The logged-commit mark: a transaction id, or 0 when none is set.
    pub mark: u64,
    /// The publication counter.
    pub publication: u64,
}

/// The publish lock held exclusively, with its file's state as taken. The publication counter
/// is raised once for the window: with the first [`set_mark`](Self::set_mark), or when this is
/// dropped (then a failed write goes unreported: it could only let a transaction whose reads
/// are stale write, as if there were no counter; the mark's writes report theirs).
pub struct Publishing {
    file: LockFile,
    state: PublishState,
    raised: bool,
    // Dropped last, after the raise: the lock is released once its window is written.
    _lock: LockGuard,
}

impl Publishing {
    /// Sets the logged-commit mark (0 clears it), raising the counter with it.
    pub fn set_mark(&mut self, txid: u64) -> Result<()> {
        let state = PublishState {
            mark: txid,
            publication: self.raised_publication(),
        };
        self.file.write_state(state)?;
        self.state = state;
        self.raised = true;
        Ok(())
    }

    fn raised_publication(&self) -> u64 {
        match self.raised {
            true => self.state.publication,
            false => self.state.publication.wrapping_add(1),
        }
    }
}

impl Drop for Publishing {
    fn drop(&mut self) {
        if !self.raised {
            let _ = self.file.write_state(PublishState {
                publication: self.raised_publication(),
                ..self.state
            });
        }
    }
}

impl Drop for LockGuard {
    fn drop(&mut self) {
        // Unlocking a lock we hold cannot fail in a way we could act on; closing the file
        // would release it anyway.
        let _ = self.file.unlock();
    }
}

/// How long to sleep between attempts: short at first, so that an uncontended wait is cheap.
fn backoff(attempt: u32) -> Duration {
    Duration::from_micros(20u64 << attempt.min(10)).min(Duration::from_millis(10))
}

impl LockFile {
    /// Opens (creating if need be) the lock file at `path`.
    pub fn open(path: &Path) -> Result<LockFile> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .map_err(Error::file_io(path))?;
        refuse_link(path, &file)?;
        Ok(LockFile {
            file: Arc::new(file),
            path: Arc::from(path),
        })
    }

    /// Takes the lock exclusively, waiting up to `timeout_ms`.
    pub fn exclusive(&self, what: &str, timeout_ms: u64) -> Result<LockGuard> {
        self.acquire(what, timeout_ms, File::try_lock)
    }

    /// Takes the lock shared, waiting up to `timeout_ms`.
    pub fn shared(&self, what: &str, timeout_ms: u64) -> Result<LockGuard> {
        self.acquire(what, timeout_ms, File::try_lock_shared)
    }

    /// Takes the publish lock exclusively: a window in which the caller may change what
    /// readers see (see [`Publishing`]).
    pub fn publishing(&self, timeout_ms: u64) -> Result<Publishing> {
        let lock = self.exclusive("publish lock", timeout_ms)?;
        Ok(Publishing {
            file: self.clone(),
            state: self.state()?,
            raised: false,
            _lock: lock,
        })
    }

    /// The mark and the counter, in one read. A reader holds the lock shared; a writer holds
    /// the writer lock, so that no logged commit can set the mark meanwhile.
    pub fn state(&self) -> Result<PublishState> {
        // A file shorter than the state (new, or from an older build) reads as zeros.
        let mut bytes = [0u8; STATE_BYTES];
        self.file
            .read_at(&mut bytes, 0)
            .map_err(Error::file_io(&self.path))?;
        Ok(PublishState {
            mark: u64_at(&bytes, MARK_AT),
            publication: u64_at(&bytes, PUBLICATION_AT),
        })
    }

    /// The logged-commit mark (see [`state`](Self::state)).
    pub fn mark(&self) -> Result<u64> {
        self.state().map(|state| state.mark)
    }

    fn write_state(&self, state: PublishState) -> Result<()> {
        let mut bytes = [0u8; STATE_BYTES];
        bytes[MARK_AT..MARK_AT + 8].copy_from_slice(&state.mark.to_le_bytes());
        bytes[PUBLICATION_AT..PUBLICATION_AT + 8].copy_from_slice(&state.publication.to_le_bytes());
        self.file
            .write_all_at(&bytes, 0)
            .map_err(Error::file_io(&self.path))
    }

    fn acquire(
        &self,
        what: &str,
        timeout_ms: u64,
        try_lock: fn(&File) -> std::result::Result<(), TryLockError>,
    ) -> Result<LockGuard> {
        let deadline = Instant::now() + Duration::from_millis(timeout_ms);
        for attempt in 0.. {
            match try_lock(&self.file) {
                Ok(()) => {
                    return Ok(LockGuard {
                        file: Arc::clone(&self.file),
                    })
                }
                Err(TryLockError::Error(e)) => return Err(Error::file_io(&self.path)(e)),
                Err(TryLockError::WouldBlock) if Instant::now() >= deadline => break,
                Err(TryLockError::WouldBlock) => std::thread::sleep(backoff(attempt)),
            }
        }
        Err(Error::Busy {
            what: what.to_string(),
            timeout_ms,
        })
    }
}

/// Refuses a lock file reached through a symbolic link: its counter and mark would be written
/// into whatever file the link names.
fn refuse_link(path: &Path, file: &File) -> Result<()> {
    use std::os::unix::fs::MetadataExt;
    let named = std::fs::symlink_metadata(path).map_err(Error::file_io(path))?;
    let opened = file.metadata().map_err(Error::file_io(path))?;
    if named.file_type().is_symlink() || (named.dev(), named.ino()) != (opened.dev(), opened.ino())
    {
        return Err(Error::BadArgument(format!(
            "{} is a symbolic link; imagestore's lock files must be plain files: remove it",
            path.display()
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two handles on one new lock file named `name` (in a folder kept as long as the first).
    fn two_handles(name: &str) -> (tempfile::TempDir, LockFile, LockFile) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(name);
        let (a, b) = (
            LockFile::open(&path).unwrap(),
            LockFile::open(&path).unwrap(),
        );
        (dir, a, b)
    }

    #[test]
    fn exclusive_excludes_across_handles_and_shared_share() {
        let (_dir, a, b) = two_handles("t.lock");
        let held = a.exclusive("writer lock", 0).unwrap();
        assert!(matches!(
            b.exclusive("writer lock", 20),
            Err(Error::Busy { .. })
        ));
        assert!(matches!(
            b.shared("writer lock", 0),
            Err(Error::Busy { .. })
        ));
        drop(held);
        let s1 = a.shared("publish lock", 0).unwrap();
        let s2 = b.shared("publish lock", 0).unwrap();
        drop((s1, s2));
        assert!(b.exclusive("writer lock", 0).is_ok());
    }

    #[test]
    fn the_mark_is_shared_through_the_file() {
        let (_dir, a, b) = two_handles("t.publish");
        assert_eq!(b.mark().unwrap(), 0);
        a.publishing(0).unwrap().set_mark(41).unwrap();
        assert_eq!(b.mark().unwrap(), 41);
        let mut publishing = a.publishing(0).unwrap();
        publishing.set_mark(0).unwrap();
        drop(publishing);
        assert_eq!(b.mark().unwrap(), 0);
    }

    #[test]
    fn a_lock_file_that_is_a_symbolic_link_is_refused_and_its_target_untouched() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("precious");
        std::fs::write(&target, b"keep me").unwrap();
        let link = dir.path().join("t.publish");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        assert!(matches!(LockFile::open(&link), Err(Error::BadArgument(_))));
        assert_eq!(std::fs::read(&target).unwrap(), b"keep me");
    }

    #[test]
    fn each_publishing_window_raises_the_counter_once_and_keeps_the_mark() {
        let (_dir, a, b) = two_handles("t.publish");
        let state = |mark, publication| PublishState { mark, publication };
        assert_eq!(b.state().unwrap(), state(0, 0));
        a.publishing(0).unwrap().set_mark(7).unwrap();
        assert_eq!(b.state().unwrap(), state(7, 1));
        drop(a.publishing(0).unwrap());
        assert_eq!(b.state().unwrap(), state(7, 2));
        assert!(b.shared("publish lock", 0).is_ok());
        let mut held = a.publishing(0).unwrap();
        assert!(matches!(
            b.shared("publish lock", 20),
            Err(Error::Busy { .. })
        ));
        held.set_mark(9).unwrap();
        held.set_mark(0).unwrap();
        drop(held);
        assert_eq!(b.state().unwrap(), state(0, 3));
    }

    #[test]
    fn a_short_file_from_an_older_build_reads_as_zeros() {
        let (dir, a, _b) = two_handles("t.publish");
        std::fs::write(dir.path().join("t.publish"), 5u64.to_le_bytes()).unwrap();
        assert_eq!(
            a.state().unwrap(),
            PublishState {
                mark: 5,
                publication: 0
            }
        );
    }
}

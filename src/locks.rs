//! The table's two cross-process locks, as `flock(2)` locks on two files beside the journal
//! (`<shard 0>.imagestore-lock` and `<shard 0>.imagestore-publish`).
//!
//! - The **writer lock** (on `.imagestore-lock`), exclusive, is held by the one connection that has a
//!   write transaction open on the table, from its first write until it commits or rolls back.
//!   Writers are serialized by it, so shard locks are never contended between writers and no two
//!   writers can wait for each other in opposite orders: there is one lock, taken first.
//! - The **publish lock** (on `.imagestore-publish`): a writer holds it exclusively from the first
//!   shard's prepare until its COMMIT decision is durable (or its abort is complete); a reader
//!   holds it shared only while it opens its read snapshot on every shard. So a reader's
//!   snapshots are all taken either before any shard of a transaction prepared or after its
//!   decision: never in between.
//!
//! `flock` locks belong to an open file description, so two connections in one process exclude
//! each other just as two processes do, and the kernel drops a dead process's locks.

use std::fs::{File, OpenOptions, TryLockError};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::error::{Error, Result};

/// A file used only for locking.
pub struct LockFile {
    file: Arc<File>,
    path: PathBuf,
}

/// A held lock; dropping it unlocks.
pub struct LockGuard {
    file: Arc<File>,
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
            .map_err(Error::journal_io(path))?;
        Ok(LockFile {
            file: Arc::new(file),
            path: path.to_path_buf(),
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
                Err(TryLockError::Error(e)) => return Err(Error::journal_io(&self.path)(e)),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exclusive_excludes_across_handles_and_shared_share() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.lock");
        let (a, b) = (
            LockFile::open(&path).unwrap(),
            LockFile::open(&path).unwrap(),
        );
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
}

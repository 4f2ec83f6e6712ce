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
//! `flock` locks belong to an open file description, so two connections in one process exclude
//! each other just as two processes do, and the kernel drops a dead process's locks.

use std::fs::{File, OpenOptions, TryLockError};
use std::os::unix::fs::FileExt;
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

    /// The logged-commit mark: a transaction id, or 0 when none is set.
    pub fn mark(&self) -> Result<u64> {
        let mut bytes = [0u8; 8];
        match self.file.read_exact_at(&mut bytes, 0) {
            Ok(()) => Ok(u64::from_le_bytes(bytes)),
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Ok(0),
            Err(e) => Err(Error::journal_io(&self.path)(e)),
        }
    }

    /// Sets the logged-commit mark (0 clears it). The caller holds the lock exclusively.
    pub fn set_mark(&self, txid: u64) -> Result<()> {
        self.file
            .write_all_at(&txid.to_le_bytes(), 0)
            .map_err(Error::journal_io(&self.path))
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

    #[test]
    fn the_mark_is_shared_through_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.publish");
        let (a, b) = (
            LockFile::open(&path).unwrap(),
            LockFile::open(&path).unwrap(),
        );
        assert_eq!(b.mark().unwrap(), 0);
        a.set_mark(41).unwrap();
        assert_eq!(b.mark().unwrap(), 41);
        a.set_mark(0).unwrap();
        assert_eq!(b.mark().unwrap(), 0);
    }
}

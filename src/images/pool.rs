//! The process's image threads: one rayon pool, a thread per core (or `RAYON_NUM_THREADS`), that
//! whole-table processing runs its workers on and `jpeg-decoder` runs its inverse DCTs on.
//!
//! Invariant: the pool handed out belongs to the calling process. A forked child (a Python
//! `multiprocessing` or DataLoader worker) inherits the parent's pool without its threads, and
//! work given to it would wait forever, so a child makes its own pool on first use. The parent's
//! is leaked in the child, not dropped: dropping it would signal threads the child does not have.
//! The lock is never held while threads start, so a fork from another thread cannot leave it
//! locked in the child.

use std::sync::{Arc, Mutex, PoisonError};

use rayon::{ThreadPool, ThreadPoolBuilder};

use crate::error::{Error, Result};

/// This process's pool, started on first use.
pub fn image_pool() -> Result<Arc<ThreadPool>> {
    static POOL: Mutex<Option<(u32, Arc<ThreadPool>)>> = Mutex::new(None);
    let pid = std::process::id();
    let current = || {
        let slot = POOL.lock().unwrap_or_else(PoisonError::into_inner);
        slot.as_ref()
            .filter(|(owner, _)| *owner == pid)
            .map(|(_, pool)| Arc::clone(pool))
    };
    if let Some(pool) = current() {
        return Ok(pool);
    }
    let pool = ThreadPoolBuilder::new()
        .thread_name(|i| format!("imagestore-image-{i}"))
        .build()
        .map_err(|e| Error::Internal(format!("cannot start the image threads: {e}")))?;
    let mut slot = POOL.lock().unwrap_or_else(PoisonError::into_inner);
    match slot.as_ref() {
        // Another thread of this process got there first: use its pool, drop ours.
        Some((owner, pool)) if *owner == pid => Ok(Arc::clone(pool)),
        _ => {
            let pool = Arc::new(pool);
            std::mem::forget(slot.replace((pid, Arc::clone(&pool))));
            Ok(pool)
        }
    }
}

//! The process's image threads: one rayon pool, a thread per core, that whole-table processing
//! runs its workers on and `jpeg-decoder` runs its inverse DCTs on.
//!
//! Invariant: the pool handed out belongs to the calling process. A forked child (a Python
//! `multiprocessing` or DataLoader worker) inherits the parent's pool without its threads, and
//! work given to it would wait forever, so a child makes its own pool on first use. The parent's
//! is leaked in the child, not dropped: dropping it would signal threads the child does not have.

use std::sync::{Arc, Mutex, PoisonError};

use rayon::{ThreadPool, ThreadPoolBuilder};

use crate::error::{Error, Result};

/// This process's pool, started on first use.
pub fn image_pool() -> Result<Arc<ThreadPool>> {
    static POOL: Mutex<Option<(u32, Arc<ThreadPool>)>> = Mutex::new(None);
    let pid = std::process::id();
    let mut slot = POOL.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some((owner, pool)) = slot.as_ref() {
        if *owner == pid {
            return Ok(Arc::clone(pool));
        }
    }
    let pool = ThreadPoolBuilder::new()
        .thread_name(|i| format!("imagestore-image-{i}"))
        .build()
        .map_err(|e| Error::Internal(format!("cannot start the image threads: {e}")))?;
    let pool = Arc::new(pool);
    std::mem::forget(slot.replace((pid, Arc::clone(&pool))));
    Ok(pool)
}

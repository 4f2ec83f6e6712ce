//! Making shard commits durable, several files at once.
//!
//! Shard connections run with `synchronous=NORMAL`: a commit writes its WAL frames but does not
//! sync them. Where the protocol needs a commit durable (a prepare, a one-phase commit, before the
//! journal is trimmed), the coordinator fsyncs the shards' WAL files itself, in parallel on a small
//! pool of threads kept for the life of the process, so that a commit touching n shards waits for
//! about one sync, not n in a row. The threads touch no SQLite object, only files.
//!
//! An fsync of any descriptor of a file flushes all of that file's data, so opening the `-wal` by
//! path is enough. Closing that descriptor is safe: SQLite holds no POSIX lock on a `-wal` file.
//! A `-wal` that does not exist has been checkpointed into the database, which a checkpoint syncs.

use std::path::{Path, PathBuf};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, Mutex, OnceLock};

use crate::error::{Error, Result};

/// Threads that sync files; more shards than this are synced in several rounds.
const SYNC_THREADS_MAX: usize = 8;

type Job = Box<dyn FnOnce() + Send>;

/// The WAL file of a shard database.
pub fn wal_path(db: &Path) -> PathBuf {
    let mut name = db.as_os_str().to_owned();
    name.push("-wal");
    PathBuf::from(name)
}

/// fsyncs the WAL of the shard database at `db`.
pub fn sync_wal(db: &Path) -> Result<()> {
    let wal = wal_path(db);
    match std::fs::File::open(&wal) {
        Ok(f) => f.sync_data().map_err(Error::journal_io(&wal)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::journal_io(&wal)(e)),
    }
}

fn pool() -> &'static Mutex<Sender<Job>> {
    static POOL: OnceLock<Mutex<Sender<Job>>> = OnceLock::new();
    POOL.get_or_init(|| {
        let (sender, receiver) = channel::<Job>();
        let receiver = Arc::new(Mutex::new(receiver));
        for i in 0..SYNC_THREADS_MAX - 1 {
            let receiver: Arc<Mutex<Receiver<Job>>> = Arc::clone(&receiver);
            // A thread that cannot be started only means fewer parallel syncs.
            let _ = std::thread::Builder::new()
                .name(format!("imagestore-sync-{i}"))
                .spawn(move || loop {
                    let job = match receiver.lock() {
                        Ok(r) => r.recv(),
                        Err(poisoned) => poisoned.into_inner().recv(),
                    };
                    match job {
                        Ok(job) => job(),
                        Err(_) => return,
                    }
                });
        }
        Mutex::new(sender)
    })
}

/// fsyncs the WALs of all these shard databases, in parallel; the first error, if any.
pub fn sync_wals(dbs: &[&Path]) -> Result<()> {
    let Some((first, rest)) = dbs.split_first() else {
        return Ok(());
    };
    let (done, results) = channel();
    let mut queued = 0;
    for db in rest {
        let owned = db.to_path_buf();
        let done = done.clone();
        let job: Job = Box::new(move || {
            let _ = done.send(sync_wal(&owned));
        });
        let sent = pool()
            .lock()
            .map_err(|_| ())
            .and_then(|p| p.send(job).map_err(|_| ()));
        match sent {
            Ok(()) => queued += 1,
            Err(()) => sync_wal(db)?,
        }
    }
    let mut outcome = sync_wal(first);
    for _ in 0..queued {
        let result = results
            .recv()
            .unwrap_or_else(|_| Err(Error::Internal("a sync thread died".into())));
        outcome = outcome.and(result);
    }
    outcome
}

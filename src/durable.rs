//! Making shard commits durable, several files at once.
//!
//! Shard connections run with `synchronous=NORMAL`: a commit writes its WAL frames but does not
//! sync them. Where the protocol needs a commit durable (a prepare, a new shard, before the
//! journal is trimmed), the coordinator fsyncs the shards' WAL files itself, in parallel on a small
//! pool of threads kept for the life of the process, so that a commit touching n shards waits for
//! about one sync, not n in a row; a commit starts each shard's sync as soon as that shard is
//! prepared, so the syncs also overlap the preparing of the next shards. The threads touch no
//! SQLite object, only files.
//!
//! An fsync of any descriptor of a file flushes all of that file's data, so opening the `-wal` by
//! path is enough. Closing that descriptor is safe: SQLite holds no POSIX lock on a `-wal` file.
//! A `-wal` that does not exist has been checkpointed into the database, which a checkpoint syncs.

use std::path::{Path, PathBuf};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, Mutex, OnceLock};

use crate::error::{Error, Result};
use crate::files::with_suffix;

/// Threads that sync files; more shards than this are synced in several rounds.
const SYNC_THREADS_MAX: usize = 8;

type Job = Box<dyn FnOnce() + Send>;

/// The WAL file of a shard database.
pub fn wal_path(db: &Path) -> PathBuf {
    with_suffix(db, "-wal")
}

/// fsyncs the WAL of the shard database at `db`. A WAL file this process has not synced before
/// (SQLite creates a new one after the last connection to a shard closed) gets its directory
/// synced too, so that the file's name survives a power cut along with its contents.
pub fn sync_wal(db: &Path) -> Result<()> {
    use std::os::unix::fs::MetadataExt;
    if crate::fault::skips_sync("shard_wal") {
        return Ok(());
    }
    static KNOWN_WALS: Mutex<Vec<(PathBuf, u64)>> = Mutex::new(Vec::new());
    let wal = wal_path(db);
    let io = |e| Error::file_io(&wal)(e);
    let file = match std::fs::File::open(&wal) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io(e)),
    };
    file.sync_data().map_err(io)?;
    let inode = file.metadata().map_err(io)?.ino();
    let mut known = KNOWN_WALS.lock().unwrap_or_else(|p| p.into_inner());
    if !known.iter().any(|(p, i)| p == &wal && *i == inode)
        && !crate::fault::skips_sync("shard_wal_folder")
    {
        let dir = wal
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io)?;
        known.retain(|(p, _)| p != &wal);
        known.push((wal.clone(), inode));
    }
    Ok(())
}

/// The pool's queue, or `None` in a child forked after the pool started (its threads did not
/// survive the fork; the child syncs on its own thread).
fn pool() -> Option<&'static Mutex<Sender<Job>>> {
    static POOL: OnceLock<(u32, Mutex<Sender<Job>>)> = OnceLock::new();
    let (owner, queue) = POOL.get_or_init(|| {
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
        (std::process::id(), Mutex::new(sender))
    });
    (*owner == std::process::id()).then_some(queue)
}

/// Work that makes commits durable (a shard's WAL fsync), run on the pool while the caller
/// goes on. It touches files only, never a SQLite object.
pub type SyncJob = Box<dyn FnOnce() -> Result<()> + Send>;

/// fsyncs the WALs of all these shard databases, in parallel; the first error, if any.
pub fn sync_wals(dbs: &[&Path]) -> Result<()> {
    run_all(
        dbs.iter()
            .map(|db| {
                let db = db.to_path_buf();
                Box::new(move || sync_wal(&db)) as SyncJob
            })
            .collect(),
    )
}

#[cfg(test)]
thread_local! {
    /// Test builds: run this thread's sync jobs on the thread itself, in order, so that the
    /// protocol's simulation (`commit::sim`) repeats exactly under a seed.
    pub static RUN_INLINE: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

fn inline() -> bool {
    #[cfg(test)]
    return RUN_INLINE.with(std::cell::Cell::get);
    #[cfg(not(test))]
    false
}

/// Runs these jobs in parallel (the first on the caller's thread); the first error, if any.
pub fn run_all(jobs: Vec<SyncJob>) -> Result<()> {
    let mut jobs = jobs.into_iter();
    let Some(first) = jobs.next() else {
        return Ok(());
    };
    let mut syncs = Syncs::new();
    jobs.for_each(|job| syncs.start(job));
    let here = first();
    syncs.finish().and(here)
}

/// Sync jobs that run on the pool while the caller goes on (a commit prepares its next shard
/// while the previous one's WAL is being synced); [`finish`](Self::finish) waits for them all.
pub struct Syncs {
    done: Sender<Result<()>>,
    results: Receiver<Result<()>>,
    started: usize,
}

impl Default for Syncs {
    fn default() -> Syncs {
        Syncs::new()
    }
}

impl Syncs {
    pub fn new() -> Syncs {
        let (done, results) = channel();
        Syncs {
            done,
            results,
            started: 0,
        }
    }

    /// Starts `job` on the pool (on the caller's thread when no pool thread can take it).
    pub fn start(&mut self, job: SyncJob) {
        let done = self.done.clone();
        let job: Job = Box::new(move || {
            let _ = done.send(job());
        });
        let unsent = match pool().filter(|_| !inline()).map(Mutex::lock) {
            Some(Ok(queue)) => queue.send(job).err().map(|unsent| unsent.0),
            _ => Some(job),
        };
        if let Some(job) = unsent {
            job();
        }
        self.started += 1;
    }

    /// Waits for every job started; the first error, if any.
    pub fn finish(self) -> Result<()> {
        let Syncs {
            done,
            results,
            started,
        } = self;
        // A job that dies without answering drops its sender; with ours gone too, the wait below
        // ends with an error instead of blocking for ever.
        drop(done);
        let mut outcome = Ok(());
        for _ in 0..started {
            let result = results
                .recv()
                .unwrap_or_else(|_| Err(Error::Internal("a sync thread died".into())));
            outcome = outcome.and(result);
        }
        outcome
    }
}

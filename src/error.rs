//! Errors of the extension, each mapped to the SQLite result code a caller can act on.
//!
//! Invariant: every error that reaches SQLite carries a message that names the thing at fault
//! (the argument, the row, the file) and, where there is one, what to do about it.

use std::io;
use std::os::raw::c_int;
use std::path::PathBuf;

use rusqlite::ffi;

/// errno values that mean "no room": the disk is full, or the file size limit is reached.
const ENOSPC: i32 = 28;
const EFBIG: i32 = 27;

/// Everything that can go wrong in the table, the coordinator, the journal or a shard.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A wrong argument: to CREATE VIRTUAL TABLE, to a statement (an id and a rowid that
    /// disagree), or to an SQL function (SQLITE_ERROR).
    #[error("imagestore: {0}")]
    BadArgument(String),

    /// Something that commits on its own, or cannot be rolled back, was asked for inside an
    /// open transaction (SQLITE_ERROR, as SQLite answers a VACUUM there).
    #[error("imagestore: {0}: run it outside BEGIN ... COMMIT")]
    InTransaction(String),

    /// A write in a transaction whose decision is made and waits for SQLite's own commit,
    /// which failed (SQLITE_ERROR).
    #[error("imagestore: this transaction is decided and waits for SQLite's own commit, which returned SQLITE_BUSY: retry COMMIT, or ROLLBACK; nothing more can be written in it")]
    Decided,

    /// No id is left for a row inserted without one (SQLITE_FULL, as SQLite answers when no
    /// rowid is free).
    #[error("imagestore: no free id: the largest id is {} and {tries} random ids were all taken; give the row an id", i64::MAX)]
    NoFreeId { tries: u64 },

    /// A value written to the table is of the wrong kind (SQLITE_MISMATCH).
    #[error("imagestore: {0}")]
    WrongType(String),

    /// `data` is not an image (SQLITE_ERROR): a row's (`at` names it), or an image function's
    /// argument (`at` names the function).
    #[error("imagestore: {}data is not an image: {reason}", at.as_ref().map_or(String::new(), |at| format!("{at}: ")))]
    NotAnImage { at: Option<String>, reason: String },

    /// An image is larger than the table's limits (SQLITE_TOOBIG).
    #[error("imagestore: row {row}: {reason}")]
    TooBig { row: String, reason: String },

    /// An image a function was given, or would make, is larger than it processes
    /// (SQLITE_TOOBIG).
    #[error("imagestore: {0}")]
    ImageTooBig(String),

    /// An image function could not encode its result (SQLITE_ERROR).
    #[error("imagestore: {0}")]
    CannotEncode(String),

    /// Whole-table processing failed on one row; the code is the cause's.
    #[error("imagestore: row {row}: {}", without_prefix(source))]
    InRow { row: i64, source: Box<Error> },

    /// A write to a column the table computes itself (SQLITE_CONSTRAINT).
    #[error(
        "imagestore: column {0} is derived from data and cannot be written; write data instead"
    )]
    DerivedColumn(&'static str),

    /// An id that another row already has (SQLITE_CONSTRAINT_PRIMARYKEY, as for an INTEGER
    /// PRIMARY KEY; SQLite applies OR IGNORE, OR ABORT, OR FAIL and OR ROLLBACK to it).
    #[error("UNIQUE constraint failed: {table}.id (id {id} already exists)")]
    DuplicateId { table: String, id: i64 },

    /// A shard file is missing (SQLITE_CANTOPEN).
    #[error("imagestore: shard file {path} is missing; restore it from a backup, or drop the table if its images are no longer wanted (it is never recreated empty)")]
    ShardMissing { path: PathBuf },

    /// The table could not be opened (a shard missing or damaged, the journal in doubt): every
    /// use but DROP TABLE answers the error that made it so, with its code.
    #[error("{message}")]
    Unusable {
        message: String,
        code: std::ffi::c_int,
    },

    /// A shard file has several names (hard links), which SQLite cannot share (SQLITE_CANTOPEN).
    #[error("imagestore: {path} has {names} names (hard links). SQLite keeps a shard's WAL file, and imagestore its journal and locks, beside the name it was opened by, so writers and readers using two names would miss each other's commits. Keep one name (find the others with: find / -samefile '{path}') and remove the rest")]
    ShardHardLinked { path: PathBuf, names: u64 },

    /// A shard file exists but is not this table's shard (SQLITE_CORRUPT_VTAB).
    #[error("imagestore: {path}: {detail}")]
    ShardForeign { path: PathBuf, detail: String },

    /// SQLite reported an error on the host database (the one holding the table's schema), for
    /// `what` imagestore asked of it; its code is kept.
    #[error("imagestore: {what}: {source}")]
    Host {
        what: String,
        #[source]
        source: rusqlite::Error,
    },

    /// A PostgreSQL server that is a participant failed `what`; the code follows the server's
    /// SQLSTATE (see `server_code`): SQLITE_FULL for a full disk, SQLITE_BUSY for a lock or
    /// serialization conflict, SQLITE_AUTH for a refused login, SQLITE_CANTOPEN for a server
    /// or database that cannot be reached, SQLITE_IOERR for a connection lost.
    #[error("imagestore: server {server}: {what}: {}", server_message(.source))]
    Server {
        server: String,
        what: String,
        #[source]
        source: tokio_postgres::Error,
    },

    /// A server's database does not hold this table's shard as the table names it
    /// (SQLITE_CORRUPT_VTAB, as a file that is not this table's shard).
    #[error("imagestore: server {server} {detail}")]
    ServerForeign { server: String, detail: String },

    /// A server cannot take part as configured (SQLITE_CANTOPEN).
    #[error("imagestore: server {server} {detail}")]
    ServerUnfit { server: String, detail: String },

    /// The connection to a server broke while a transaction was open on it; the server rolled
    /// that transaction back (SQLITE_IOERR).
    #[error("imagestore: the connection to server {server} broke during a transaction, which the server has rolled back; roll back and retry")]
    ServerLost { server: String },

    /// A three-phase step on a server was refused because another connection took the table
    /// over (its recovery fenced this one's steps off) after this one lost the writer lock
    /// (SQLITE_BUSY).
    #[error("imagestore: server {server}: {what} was refused: another connection took this table over after this one took the writer lock (this one's session with the anchor was lost, or the anchor was put back from an old backup: see README, \"Two-phase or three-phase\"); recovery ends the transaction")]
    TakenOver { server: String, what: String },

    /// A PostgreSQL server did not answer within the table's busy timeout (SQLITE_BUSY).
    #[error("imagestore: server {server} did not answer ({what}) within {timeout_ms} ms (the table's busy_timeout= and a second); its connection is dropped")]
    ServerTimeout {
        server: String,
        what: String,
        timeout_ms: u64,
    },

    /// SQLite reported an error on a shard file; its code is kept.
    #[error("imagestore: shard {path}: {source}")]
    Shard {
        path: PathBuf,
        #[source]
        source: rusqlite::Error,
    },

    /// The coordinator's journal could not be read or written (SQLITE_IOERR).
    #[error("imagestore: journal {path}: {source}")]
    JournalIo {
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    /// The journal is damaged in a way recovery cannot decide alone (SQLITE_CORRUPT_VTAB).
    #[error("imagestore: journal {path} is damaged: {detail}")]
    JournalCorrupt { path: PathBuf, detail: String },

    /// Prepared transactions whose outcome cannot be known (SQLITE_CORRUPT_VTAB).
    #[error("imagestore: {0}")]
    InDoubt(String),

    /// A file outside the shards (a backup's, the journal's folder) could not be read or written
    /// (SQLITE_IOERR, or SQLITE_FULL when the disk or the file size limit is full).
    #[error("imagestore: {path}: {source}")]
    FileIo {
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    /// A backup folder that verify or restore cannot trust (SQLITE_CORRUPT_VTAB).
    #[error("imagestore: backup {dir} cannot be trusted: {detail}")]
    BadBackup { dir: PathBuf, detail: String },

    /// A lock was not granted within the busy timeout (SQLITE_BUSY).
    #[error("imagestore: {what} is busy: {}", busy_advice(*.timeout_ms))]
    Busy { what: String, timeout_ms: u64 },

    /// Recovery found commits the journal decided that a shard does not hold
    /// (SQLITE_CORRUPT_VTAB).
    #[error("imagestore: table {table}: {lost}, which the journal committed: the shard lost them after they were made durable (its file or WAL was damaged or replaced), so they are on their other shards only. Restore the table from a backup, or accept the shards as they are: SELECT imagestore_resolve('{table}', 'accept')")]
    LostCommits { table: String, lost: String },

    /// A transaction that read the table is about to write it, but another connection has
    /// committed to it since the transaction's first read (SQLITE_BUSY_SNAPSHOT).
    #[error("imagestore: table {0} changed since this transaction first read it (another connection committed); roll back and retry the transaction")]
    SnapshotStale(String),

    /// An earlier failure to write or undo a decision (`cause`, its message) left this
    /// connection unsure of the files' state (SQLITE_IOERR; SQLITE_FULL when the cause was a
    /// full disk).
    #[error("imagestore: an earlier error left table {table} in an unknown state ({cause}); close and reopen the database to run recovery")]
    Poisoned {
        table: String,
        cause: String,
        full: bool,
    },

    /// A decision was written, or not, and its answer was lost (a full disk while cutting a
    /// failed record off, a server connection dropped mid-statement): the transaction is whole
    /// or absent, as recovery will find (SQLITE_IOERR; SQLITE_FULL for a full disk).
    #[error("imagestore: table {table}: the outcome of this commit is unknown ({cause}); it is on every shard or on none, as recovery finds when the table is next opened: check before you retry")]
    OutcomeUnknown {
        table: String,
        cause: String,
        full: bool,
    },

    /// Recovery of an interrupted commit is pending and could not run (say for a full disk):
    /// the table can be neither read nor written until it has; the code is the cause's.
    #[error("imagestore: table {table}: an interrupted commit must be finished before the table can be read or written, and finishing it failed: {}. Free disk space (or remove the cause) and retry; nothing is lost meanwhile", without_prefix(source))]
    RecoveryPending { table: String, source: Box<Error> },

    /// A bug: a panic caught at the FFI boundary (SQLITE_INTERNAL).
    #[error("imagestore: internal error: {0}")]
    Internal(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// The message without its `imagestore: ` prefix, to be put inside another's.
    pub fn detail(&self) -> String {
        without_prefix(self)
    }

    /// Whether this is a full disk (or a file at its size limit).
    pub fn is_full(&self) -> bool {
        self.sqlite_code() & 0xff == ffi::SQLITE_FULL
    }
}

/// An error's message without the `imagestore: ` every message starts with, to be put inside
/// another's.
fn without_prefix(error: &Error) -> String {
    let message = error.to_string();
    match message.strip_prefix("imagestore: ") {
        Some(rest) => rest.to_string(),
        None => message,
    }
}

/// What a busy error tells the user to do: a lock that was waited for may be waited for longer;
/// one not waited for (0 ms: waiting could deadlock) is to be retried.
fn busy_advice(timeout_ms: u64) -> String {
    if timeout_ms == 0 {
        "retry in a moment".to_string()
    } else {
        format!("not granted within {timeout_ms} ms (retry, or raise the table's busy_timeout=)")
    }
}

impl Error {
    /// The (extended) SQLite result code this error is reported with.
    pub fn sqlite_code(&self) -> c_int {
        match self {
            Error::BadArgument(_)
            | Error::InTransaction(_)
            | Error::Decided
            | Error::NotAnImage { .. }
            | Error::CannotEncode(_) => ffi::SQLITE_ERROR,
            Error::NoFreeId { .. } => ffi::SQLITE_FULL,
            Error::WrongType(_) => ffi::SQLITE_MISMATCH,
            Error::TooBig { .. } | Error::ImageTooBig(_) => ffi::SQLITE_TOOBIG,
            Error::DerivedColumn(_) => ffi::SQLITE_CONSTRAINT,
            Error::DuplicateId { .. } => ffi::SQLITE_CONSTRAINT_PRIMARYKEY,
            Error::ShardMissing { .. }
            | Error::ShardHardLinked { .. }
            | Error::ServerUnfit { .. } => ffi::SQLITE_CANTOPEN,
            Error::ShardForeign { .. }
            | Error::ServerForeign { .. }
            | Error::JournalCorrupt { .. }
            | Error::InDoubt(_) => ffi::SQLITE_CORRUPT_VTAB,
            Error::Shard { source, .. } | Error::Host { source, .. } => {
                match source.sqlite_error() {
                    Some(e) => e.extended_code,
                    None => ffi::SQLITE_ERROR,
                }
            }
            Error::JournalIo { source, .. } | Error::FileIo { source, .. } => {
                match source.raw_os_error() {
                    Some(ENOSPC | EFBIG) => ffi::SQLITE_FULL,
                    _ => ffi::SQLITE_IOERR,
                }
            }
            Error::RecoveryPending { source, .. } | Error::InRow { source, .. } => {
                source.sqlite_code()
            }
            Error::Poisoned { full: true, .. } | Error::OutcomeUnknown { full: true, .. } => {
                ffi::SQLITE_FULL
            }
            Error::Poisoned { full: false, .. }
            | Error::OutcomeUnknown { full: false, .. }
            | Error::ServerLost { .. } => ffi::SQLITE_IOERR,
            Error::BadBackup { .. } | Error::LostCommits { .. } => ffi::SQLITE_CORRUPT_VTAB,
            Error::Unusable { code, .. } => *code,
            Error::Busy { .. } | Error::ServerTimeout { .. } | Error::TakenOver { .. } => {
                ffi::SQLITE_BUSY
            }
            Error::Server { source, .. } => server_code(source),
            Error::SnapshotStale(_) => ffi::SQLITE_BUSY_SNAPSHOT,
            Error::Internal(_) => ffi::SQLITE_INTERNAL,
        }
    }

    /// Wraps an error SQLite reported on the shard file at `path`.
    pub fn shard(path: &std::path::Path) -> impl FnOnce(rusqlite::Error) -> Error + '_ {
        move |source| Error::Shard {
            path: path.to_path_buf(),
            source,
        }
    }

    /// Wraps an I/O error on a file at `path` that is neither a shard nor the journal.
    pub fn file_io(path: &std::path::Path) -> impl FnOnce(io::Error) -> Error + '_ {
        move |source| Error::FileIo {
            path: path.to_path_buf(),
            source,
        }
    }

    /// Wraps an error SQLite reported on the host database, doing `what`.
    pub fn host(what: impl Into<String>) -> impl FnOnce(rusqlite::Error) -> Error {
        let what = what.into();
        move |source| Error::Host { what, source }
    }

    /// Wraps an I/O error on the journal at `path`.
    pub fn journal_io(path: &std::path::Path) -> impl FnOnce(io::Error) -> Error + '_ {
        move |source| Error::JournalIo {
            path: path.to_path_buf(),
            source,
        }
    }
}

/// The SQLite code for an error of a PostgreSQL server, by its SQLSTATE class.
fn server_code(error: &tokio_postgres::Error) -> c_int {
    let Some(state) = error.code() else {
        // No SQLSTATE: the connection failed or broke.
        return match error.is_closed() {
            true => ffi::SQLITE_IOERR,
            false => ffi::SQLITE_CANTOPEN,
        };
    };
    let state = state.code();
    match &state[..2] {
        "53" => ffi::SQLITE_FULL, // insufficient resources (53100 disk full)
        "40" | "55" if state != "55000" => ffi::SQLITE_BUSY, // serialization, deadlock, lock
        "23" => ffi::SQLITE_CONSTRAINT,
        "28" => ffi::SQLITE_AUTH,            // invalid authorization
        "3D" | "08" => ffi::SQLITE_CANTOPEN, // no such database, connection exception
        "57" => ffi::SQLITE_IOERR,           // operator intervention (shutdown)
        "XX" => ffi::SQLITE_CORRUPT_VTAB,    // internal error, data corrupted
        _ => ffi::SQLITE_ERROR,
    }
}

impl From<Error> for rusqlite::Error {
    fn from(err: Error) -> Self {
        rusqlite::Error::SqliteFailure(ffi::Error::new(err.sqlite_code()), Some(err.to_string()))
    }
}

/// SQL's name for the type of a value, for messages.
pub fn type_name(value: rusqlite::types::ValueRef<'_>) -> &'static str {
    use rusqlite::types::ValueRef;
    match value {
        ValueRef::Null => "NULL",
        ValueRef::Integer(_) => "INTEGER",
        ValueRef::Real(_) => "REAL",
        ValueRef::Text(_) => "TEXT",
        ValueRef::Blob(_) => "BLOB",
    }
}

/// Runs `body`, turning a panic into [`Error::Internal`] so that none crosses the FFI boundary.
pub fn catch_panic<T>(body: impl FnOnce() -> Result<T>) -> Result<T> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(body)) {
        Ok(result) => result,
        Err(payload) => {
            let message = payload
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "panic".to_string());
            Err(Error::Internal(message))
        }
    }
}

/// What a server said, as a person needs it: its message, SQLSTATE and hint, or the cause of a
/// failure below the protocol (a refused connection).
fn server_message(e: &tokio_postgres::Error) -> String {
    if let Some(db) = e.as_db_error() {
        let hint = db.hint().map_or(String::new(), |h| format!(" ({h})"));
        return format!("{} [SQLSTATE {}]{hint}", db.message(), db.code().code());
    }
    match std::error::Error::source(e) {
        Some(cause) => format!("{e}: {cause}"),
        None => e.to_string(),
    }
}

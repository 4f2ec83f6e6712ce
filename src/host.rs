//! The host database (the one holding the table's schema): whether a transaction also wrote its
//! own tables, and the decisions that then ride on its commit.
//!
//! A transaction that writes ordinary tables and an imagestore table must commit both or
//! neither, also across a crash between imagestore's xSync and SQLite's own commit. So when the
//! host's tables were written too, the coordinator prepares the shards and, instead of a journal
//! record, inserts the decision into `imagestore_decisions` in the host database, inside the
//! host's transaction (SQLite lets a virtual table write its host's tables during xSync, as FTS5
//! flushes its own there): the host's commit is then the commit point of both. Recovery, finding
//! a prepared transaction whose prepare record names a host database, asks that database.
//!
//! Whether the host's tables were written is read from SQLite, without running SQL at commit
//! (the journal mode and the attached databases are read when the write transaction begins,
//! `HostAtBegin`), conservatively (a false "yes" costs a slower commit, a false "no" would lose
//! atomicity): pages the connection wrote out to any of its databases since this table's
//! transaction began, after flushing the dirty ones; any other attached database with a write
//! transaction open; and, for the table's own database in rollback-journal mode, an open
//! journal (the pager opens it at its first page write). Not seen: in the table's own database
//! in WAL mode, a transaction whose only other change is to the first page (the header, a tiny
//! schema: `PRAGMA user_version` alone) or whose pages were spilled before this table's first
//! write.

use std::ffi::{c_int, c_void, CStr, CString};

use rusqlite::{ffi, params, Connection, ErrorCode, OpenFlags, OptionalExtension};

use crate::commit::HostDecider;
use crate::error::{Error, Result};
use crate::journal::TableId;
use crate::table_name::quote;

/// The host's table of decisions.
const DECISIONS: &str = "imagestore_decisions";

/// What [`also_wrote`] compares against: the host connection as a table's write transaction
/// began. Read then, with two short queries, because neither the journal mode nor the attached
/// databases can change inside a transaction.
#[derive(Default)]
pub(crate) struct HostAtBegin {
    /// [`pages_written`] then.
    pages_written: i64,
    /// Whether the table's own database was in WAL mode.
    wal: bool,
    /// The other attached databases (not temp).
    others: Vec<CString>,
}

impl HostAtBegin {
    /// Reads it for a table of database `schema` of connection `host` (which keeps the two
    /// queries prepared: this is on every write transaction's path).
    pub(crate) fn read(host: &Connection, schema: &str) -> HostAtBegin {
        // SAFETY: the handle is only passed to sqlite3_db_status, on the connection's thread.
        let pages_written = pages_written(unsafe { host.handle() });
        let wal = host
            .prepare_cached(&format!("PRAGMA {}.journal_mode", quote(schema)))
            .and_then(|mut stmt| stmt.query_row([], |r| r.get::<_, String>(0)))
            .is_ok_and(|mode| mode.eq_ignore_ascii_case("wal"));
        let others = host
            .prepare_cached("PRAGMA database_list")
            .and_then(|mut stmt| {
                stmt.query_map([], |r| r.get::<_, String>(1))?
                    .collect::<rusqlite::Result<Vec<_>>>()
            })
            .unwrap_or_default()
            .into_iter()
            .filter(|name| !name.eq_ignore_ascii_case("temp") && !name.eq_ignore_ascii_case(schema))
            .filter_map(|name| CString::new(name).ok())
            .collect();
        HostAtBegin {
            pages_written,
            wal,
            others,
        }
    }
}

/// How many pages connection `db` has written to its database files so far.
fn pages_written(db: *mut ffi::sqlite3) -> i64 {
    let (mut current, mut highest) = (0, 0);
    // SAFETY: db is a live connection handle; the out-pointers point to locals.
    unsafe {
        ffi::sqlite3_db_status(
            db,
            ffi::SQLITE_DBSTATUS_CACHE_WRITE,
            &mut current,
            &mut highest,
            0,
        )
    };
    i64::from(current)
}

/// Whether the transaction open on `db` changed anything in a database file of the host besides
/// imagestore tables, `schema` being the one that holds the table. No SQL runs: this is on every
/// commit's path.
pub(crate) fn also_wrote(db: *mut ffi::sqlite3, schema: &str, at_begin: &HostAtBegin) -> bool {
    // Dirty pages of every attached database are written out (to the WAL, or after the rollback
    // journal), and counted. SAFETY: db is live. A failure (SQLITE_BUSY) leaves pages unflushed:
    // count them as written, which only costs a slower commit.
    let flushed = unsafe { ffi::sqlite3_db_cacheflush(db) } == ffi::SQLITE_OK;
    if !flushed || pages_written(db) > at_begin.pages_written {
        return true;
    }
    // Another attached database with a write transaction open: conservatively, written (its
    // first page, or pages spilled before this table's first write, are not counted above).
    let other_writing = at_begin.others.iter().any(|name| {
        // SAFETY: db is live, name NUL-terminated.
        unsafe { ffi::sqlite3_txn_state(db, name.as_ptr()) == ffi::SQLITE_TXN_WRITE }
    });
    // Pages the flush does not write in the table's own database: the first page, which SQLite
    // keeps referenced, and pages spilled before this table's first write. A rollback journal
    // shows them.
    other_writing
        || (!at_begin.wal && CString::new(schema).is_ok_and(|name| journal_open(db, &name)))
}

/// Whether database `schema`'s rollback journal is open: its pager opens it at the
/// transaction's first page write.
fn journal_open(db: *mut ffi::sqlite3, schema: &CString) -> bool {
    let mut journal: *mut ffi::sqlite3_file = std::ptr::null_mut();
    // SAFETY: db is live, schema NUL-terminated; SQLITE_FCNTL_JOURNAL_POINTER writes one
    // sqlite3_file pointer into `journal`, which we only read while SQLite holds it open.
    let rc = unsafe {
        ffi::sqlite3_file_control(
            db,
            schema.as_ptr(),
            ffi::SQLITE_FCNTL_JOURNAL_POINTER,
            &mut journal as *mut *mut ffi::sqlite3_file as *mut c_void,
        )
    };
    // SAFETY: a non-null journal pointer is the pager's own sqlite3_file, valid during this call.
    rc != ffi::SQLITE_OK || (!journal.is_null() && unsafe { !(*journal).pMethods.is_null() })
}

/// The host database a transaction's decision rides on.
pub struct HostDecisions {
    db: *mut ffi::sqlite3,
    schema: String,
    path: String,
    table_id: TableId,
}

impl HostDecisions {
    /// The decisions of table `table_id` kept in database `schema` (file `path`) of `db`.
    pub(crate) fn new(db: *mut ffi::sqlite3, schema: &str, path: &str, table_id: TableId) -> Self {
        HostDecisions {
            db,
            schema: schema.to_string(),
            path: path.to_string(),
            table_id,
        }
    }
}

impl HostDecider for HostDecisions {
    fn path(&self) -> &str {
        &self.path
    }

    fn record(&self, txid: u64) -> Result<u64> {
        let conn = self.connection()?;
        let table = self.table();
        conn.execute_batch(&format!(
            "CREATE TABLE IF NOT EXISTS {table}(table_id BLOB NOT NULL, txid INTEGER NOT NULL, \
             PRIMARY KEY(table_id, txid)) WITHOUT ROWID"
        ))
        .and_then(|()| {
            conn.execute(
                &format!("INSERT INTO {table}(table_id, txid) VALUES (?1, ?2)"),
                params![&self.table_id[..], txid as i64],
            )
        })
        .and_then(|_| {
            conn.query_row(
                &format!("SELECT count(*) FROM {table} WHERE table_id = ?1"),
                [&self.table_id[..]],
                |r| r.get::<_, i64>(0),
            )
        })
        .map(|kept| kept as u64)
        .map_err(recording)
    }

    fn forget_before(&self, txid: u64) -> Result<()> {
        let conn = self.connection()?;
        conn.execute(
            &format!(
                "DELETE FROM {} WHERE table_id = ?1 AND txid < ?2",
                self.table()
            ),
            params![&self.table_id[..], txid as i64],
        )
        .map(|_| ())
        .map_err(recording)
    }
}

impl HostDecisions {
    fn connection(&self) -> Result<Connection> {
        // SAFETY: as in `also_wrote`: the handle of the connection running this xSync.
        unsafe { Connection::from_handle(self.db) }.map_err(internal)
    }

    fn table(&self) -> String {
        format!("{}.{DECISIONS}", quote(&self.schema))
    }
}

fn recording(e: rusqlite::Error) -> Error {
    Error::host("recording the commit decision in the host database")(e)
}

/// Whether host database `path` committed the decision for `txid` of table `table_id`: the
/// [`crate::commit::HostLookup`] that recovery uses.
pub fn lookup(path: &str, table_id: &TableId, txid: u64) -> Result<bool> {
    let in_doubt = |why: String| {
        Error::InDoubt(format!(
            "transaction {txid} rode on the commit of database {path}, which {why}; \
             its outcome cannot be known without it. Restore that database, or decide with imagestore_resolve"
        ))
    };
    // Gone, or no longer a database: the decision cannot be known. Busy, or a full disk while
    // a hot journal is rolled back: an error like any other, and recovery runs again later.
    let unreadable = |e: rusqlite::Error| match e.sqlite_error_code() {
        Some(ErrorCode::CannotOpen | ErrorCode::NotADatabase | ErrorCode::DatabaseCorrupt) => {
            in_doubt(format!("cannot be read ({e})"))
        }
        _ => Error::host(format!(
            "reading the decision of transaction {txid} in database {path}"
        ))(e),
    };
    // Opened read-write, never created: SQLite rolls back a hot journal a crash left there.
    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn = Connection::open_with_flags(path, flags).map_err(unreadable)?;
    let has_table: bool = conn
        .query_row(
            "SELECT count(*) FROM sqlite_schema WHERE name = ?1",
            [DECISIONS],
            |r| r.get::<_, c_int>(0),
        )
        .map_err(unreadable)?
        > 0;
    if !has_table {
        // The first transaction that rode on this database made the table in its own
        // transaction: without the table, it rolled back (abort), unless the file is no longer
        // that database at all (emptied, replaced by another one): then nothing can be known.
        let holds_imagestore: bool = conn
            .query_row(
                "SELECT count(*) FROM sqlite_schema WHERE sql LIKE '%USING imagestore%'",
                [],
                |r| r.get::<_, c_int>(0),
            )
            .map_err(unreadable)?
            > 0;
        if !holds_imagestore {
            return Err(in_doubt("holds no imagestore table any more".into()));
        }
        return Ok(false);
    }
    conn.query_row(
        &format!("SELECT 1 FROM {DECISIONS} WHERE table_id = ?1 AND txid = ?2"),
        params![&table_id[..], txid as i64],
        |_| Ok(()),
    )
    .optional()
    .map(|found| found.is_some())
    .map_err(unreadable)
}

fn internal(e: rusqlite::Error) -> Error {
    Error::Internal(e.to_string())
}

/// The file of the database `schema` of connection `db`, or `None` for :memory: and temp.
pub(crate) fn host_filename(db: *mut ffi::sqlite3, schema: &str) -> Option<String> {
    let schema = CString::new(schema).ok()?;
    // SAFETY: db is a valid handle; the returned string is owned by SQLite and valid while the
    // database stays attached; it is copied at once.
    let name = unsafe { ffi::sqlite3_db_filename(db, schema.as_ptr()) };
    if name.is_null() {
        return None;
    }
    // SAFETY: non-null, NUL-terminated, as documented for sqlite3_db_filename.
    let name = unsafe { CStr::from_ptr(name) }
        .to_string_lossy()
        .into_owned();
    (!name.is_empty()).then_some(name)
}

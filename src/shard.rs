//! A shard: one ordinary SQLite file (WAL mode) holding a share of a table's rows.
//!
//! ```sql
//! imagestore_meta(key PRIMARY KEY, value)   -- format_version, table_id, shard_index, shard_count, last_txid,
//!                                               owner_database, owner_table, lifecycle (see `Owner`)
//! images(id INTEGER PRIMARY KEY, name, format, width, height, bytes, hash, blob_id, <user columns>)
//! blobs(blob_id INTEGER PRIMARY KEY, data)  -- image bytes, apart so metadata scans never read them
//! imagestore_prepared(txid PRIMARY KEY, shards, decided_by) -- a transaction prepared here, not
//!                                               yet finalized; decided_by: the host database
//!                                               whose commit decides it, if not the journal
//! imagestore_undo(txid, id, existed, <images columns>) -- each touched row as it was before txid
//! ```
//!
//! Invariants:
//! - Every `blobs` row is referenced by exactly one `images` row or one `imagestore_undo` row.
//! - A write transaction records, before it first changes a row, that row's prior state in
//!   `imagestore_undo` (once per row per transaction). The before-state of a row, and its blob,
//!   therefore survive until the transaction is finalized (committed) or aborted, so that a
//!   prepared transaction can still be undone.
//! - `imagestore_prepared` has a row for `txid` exactly while `txid` is prepared (durable, visible
//!   in the file, and undoable) and not yet finalized or aborted.
//! - `last_txid` only grows: every transaction id is above every id any shard has seen.
//!
//! This module knows SQL; the protocol (when to prepare, finalize or abort) is the coordinator's.

use std::collections::HashSet;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use rusqlite::config::DbConfig;
use rusqlite::types::Value;
use rusqlite::{params, Connection, OpenFlags, OptionalExtension, ToSql};

use crate::commit::{Participant, PrepareRecord, Replayed};
use crate::config::{Owner, UserColumn};
use crate::durable::SyncJob;
use crate::error::{Error, Result};
use crate::journal::TableId;
use crate::redo::{self, Encoder, ShardChanges};

pub const FORMAT_VERSION: i64 = 1;

/// Images from this size up are written in place into a zeroblob (below it, binding is faster).
const BLOB_IN_PLACE_BYTES_MIN: usize = 256 * 1024;

/// The `imagestore_meta` key a restore sets on every shard, with its rows, and clears once
/// every shard holds all of its rows (see `restore`): a shard that has it is refused.
const RESTORE_MARK: &str = "restore_incomplete";

/// The `imagestore_meta` keys naming the database and table that created a shard set (its
/// owner), and the key of its lifecycle mark (`creating` until the CREATE has committed,
/// `dropping` from a DROP until its files are gone; absent while the table lives).
const OWNER_DATABASE: &str = "owner_database";
const OWNER_TABLE: &str = "owner_table";
const LIFECYCLE: &str = "lifecycle";

/// Where a shard set is in its life (see [`Owner`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lifecycle {
    /// Made by a CREATE that has not committed (or never did: then they are leftovers).
    Creating,
    /// In use by a table.
    Live,
    /// Its table's DROP ran; the files go once it has committed.
    Dropping,
}

impl Lifecycle {
    fn mark(self) -> Option<&'static str> {
        match self {
            Lifecycle::Creating => Some("creating"),
            Lifecycle::Live => None,
            Lifecycle::Dropping => Some("dropping"),
        }
    }
}

/// A backup copy syncs its file after about this many bytes of images (see `copy_rows_to`).
const BACKUP_SYNC_BYTES: u64 = 16 << 20;

/// Columns of `images` before the user's: id, name, format, width, height, bytes, hash, blob_id.
const BUILTIN_STORED_COLUMNS: usize = 8;
/// Where `hash` and `blob_id` are in a row of `SELECT * FROM images`.
const HASH_COLUMN: usize = 6;
const BLOB_ID_COLUMN: usize = 7;

/// A row as stored in a shard's `images` table.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredRow {
    pub id: i64,
    pub name: Value,
    pub format: String,
    pub width: i64,
    pub height: i64,
    pub bytes: i64,
    pub hash: String,
    pub blob_id: i64,
    pub user: Vec<Value>,
}

/// The metadata of a row to write; its blob is written separately.
#[derive(Debug, Clone)]
pub struct NewRow {
    pub id: i64,
    pub name: Value,
    pub format: String,
    pub width: i64,
    pub height: i64,
    pub bytes: i64,
    pub hash: String,
    pub user: Vec<Value>,
}

impl From<&StoredRow> for NewRow {
    /// The row as it is, to be written back with some columns changed.
    fn from(row: &StoredRow) -> NewRow {
        NewRow {
            id: row.id,
            name: row.name.clone(),
            format: row.format.clone(),
            width: row.width,
            height: row.height,
            bytes: row.bytes,
            hash: row.hash.clone(),
            user: row.user.clone(),
        }
    }
}

/// Which rows a scan returns (all conditions together).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ScanFilter {
    pub id_eq: Option<i64>,
    /// Smallest id, inclusive.
    pub id_min: Option<i64>,
    /// Largest id, inclusive.
    pub id_max: Option<i64>,
    /// `column = value` conditions: the column as the shard's SQL names it, and the value.
    pub equal: Vec<(String, Value)>,
    pub descending: bool,
}

/// Who this shard says it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardIdentity {
    pub table_id: TableId,
    pub shard_index: usize,
    pub shard_count: usize,
}

impl ShardIdentity {
    /// The table's identity as hex, as a backup manifest records it.
    pub fn table_id_hex(&self) -> String {
        hex(&self.table_id)
    }
}

/// An open shard.
pub struct Shard {
    pub path: PathBuf,
    conn: Connection,
    /// `name, format, ..., blob_id, "user columns"`: the columns of `images` after id, in order.
    columns: Vec<String>,
    /// The same, joined for SQL.
    columns_sql: String,
    user_column_count: usize,
    sql: ShardSql,
}

/// The statements a shard runs on every row or commit, written out once from its columns.
struct ShardSql {
    get: String,
    remember_before: String,
    insert: String,
    insert_or_replace: String,
    changed_rows: String,
}

impl ShardSql {
    /// The statements for `columns` (the columns of `images` after id), `columns_sql` being
    /// them joined for SQL.
    fn new(columns: &[String], columns_sql: &str) -> ShardSql {
        let of_i = columns
            .iter()
            .map(|c| format!("i.{c}"))
            .collect::<Vec<_>>()
            .join(", ");
        let placeholders = (1..=1 + columns.len())
            .map(|i| format!("?{i}"))
            .collect::<Vec<_>>()
            .join(", ");
        let write =
            |verb: &str| format!("{verb} INTO images(id, {columns_sql}) VALUES ({placeholders})");
        ShardSql {
            get: format!("SELECT id, {columns_sql} FROM images WHERE id = ?1"),
            remember_before: format!(
                "INSERT OR IGNORE INTO imagestore_undo(txid, id, existed, {columns_sql})
                 SELECT ?1, ?2, i.id IS NOT NULL, {of_i} FROM (SELECT 1) LEFT JOIN images i ON i.id = ?2"
            ),
            insert: write("INSERT"),
            insert_or_replace: write("INSERT OR REPLACE"),
            // Each row the transaction touched, as it ended; the blob it added (its row did not
            // exist before or had another blob), with the blob's length; the blob it dropped.
            changed_rows: format!(
                "SELECT u.id, i.id IS NOT NULL, b.blob_id, length(b.data),
                     CASE WHEN u.existed AND i.blob_id IS NOT u.blob_id THEN u.blob_id END,
                     i.id, {of_i}
                 FROM imagestore_undo u LEFT JOIN images i ON i.id = u.id
                 LEFT JOIN blobs b ON b.blob_id = i.blob_id
                     AND (NOT u.existed OR i.blob_id IS NOT u.blob_id)
                 WHERE u.txid = ?1"
            ),
        }
    }
}

pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A stored image hash (BLAKE3, hex) as its 32 bytes; `None` if it is not one.
pub fn parse_hash(hex: &str) -> Option<blake3::Hash> {
    blake3::Hash::from_hex(hex).ok()
}

fn unhex(s: &str) -> Option<TableId> {
    if s.len() != 32 {
        return None;
    }
    let mut out = [0u8; 16];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

impl Shard {
    /// Opens an existing shard file (`create` false) or creates a new one (`create` true:
    /// the file must not exist). Never creates a file that should have existed.
    pub fn open(
        path: &Path,
        create: bool,
        user_columns: &[UserColumn],
        busy_timeout_ms: u64,
    ) -> Result<Shard> {
        match (std::fs::metadata(path), create) {
            (Ok(meta), _) if meta.is_dir() => {
                return Err(Error::ShardForeign {
                    path: path.to_path_buf(),
                    detail: "is a directory, not a shard file".into(),
                })
            }
            (Ok(_), true) => {
                return Err(Error::ShardForeign {
                    path: path.to_path_buf(),
                    detail: "already exists; choose a new file for a new shard".into(),
                })
            }
            (Ok(meta), false) if meta.nlink() > 1 => {
                return Err(Error::ShardHardLinked {
                    path: path.to_path_buf(),
                    names: meta.nlink(),
                })
            }
            (Err(_), false) => {
                return Err(Error::ShardMissing {
                    path: path.to_path_buf(),
                })
            }
            _ => {}
        }
        let mut flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        if create {
            flags |= OpenFlags::SQLITE_OPEN_CREATE;
        }
        let conn = Connection::open_with_flags(path, flags).map_err(Error::shard(path))?;
        let shard = Shard::with_connection(path, conn, user_columns);
        if !create {
            // Before anything is set on the file (its WAL mode): a file that is not a shard is
            // never changed.
            shard
                .conn
                .busy_timeout(std::time::Duration::from_millis(busy_timeout_ms))
                .map_err(shard.err())?;
            shard.require_meta()?;
        }
        shard.configure(busy_timeout_ms)?;
        Ok(shard)
    }

    /// Opens a shard file read-only, for checking or reading a backup's copy: no identity check;
    /// rows are read with `user_columns` (none to read only the built-in columns).
    pub fn open_read_only(path: &Path, user_columns: &[UserColumn]) -> Result<Shard> {
        if !path.is_file() {
            return Err(Error::ShardMissing {
                path: path.to_path_buf(),
            });
        }
        let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let conn = Connection::open_with_flags(path, flags).map_err(Error::shard(path))?;
        Ok(Shard::with_connection(path, conn, user_columns))
    }

    fn with_connection(path: &Path, conn: Connection, user_columns: &[UserColumn]) -> Shard {
        let columns: Vec<String> = [
            "name", "format", "width", "height", "bytes", "hash", "blob_id",
        ]
        .iter()
        .map(|s| s.to_string())
        .chain(user_columns.iter().map(|c| quote_ident(&c.name)))
        .collect();
        let columns_sql = columns.join(", ");
        Shard {
            path: path.to_path_buf(),
            conn,
            sql: ShardSql::new(&columns, &columns_sql),
            columns_sql,
            columns,
            user_column_count: user_columns.len(),
        }
    }

    fn err(&self) -> impl FnOnce(rusqlite::Error) -> Error + '_ {
        Error::shard(&self.path)
    }

    fn configure(&self, busy_timeout_ms: u64) -> Result<()> {
        self.conn
            .busy_timeout(std::time::Duration::from_millis(busy_timeout_ms))
            .map_err(self.err())?;
        let mode: String = self
            .conn
            .query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))
            .map_err(|e| match e.sqlite_error_code() {
                Some(rusqlite::ErrorCode::NotADatabase) => Error::ShardForeign {
                    path: self.path.clone(),
                    detail: "is not a SQLite database; it cannot be a shard".into(),
                },
                _ => Error::shard(&self.path)(e),
            })?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(Error::ShardForeign {
                path: self.path.clone(),
                detail: format!("could not be put in WAL mode (it is in {mode} mode)"),
            });
        }
        // Commits are made durable by the coordinator, which fsyncs WAL files itself where the
        // protocol needs it (see `durable`).
        self.conn
            .execute_batch("PRAGMA synchronous=NORMAL")
            .map_err(self.err())?;
        // Every statement a shard runs is ours and cached. Without the query planner stability
        // guarantee, SQLite re-prepares a statement whose plan looked at a bound value (the
        // before-state statements' LEFT JOINs) each time that value changes: a fifth of a
        // small commit's time went to parsing.
        self.conn
            .set_db_config(DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG, true)
            .map(|_| ())
            .map_err(self.err())
    }

    /// Writes the schema and identity of a new shard, durably.
    /// A shard made for a restore (`restoring_from`) carries the restore mark from the start.
    pub fn initialize(
        &self,
        identity: &ShardIdentity,
        owner: &Owner,
        user_columns: &[UserColumn],
        restoring_from: Option<&Path>,
    ) -> Result<()> {
        let user_defs: String = user_columns
            .iter()
            .map(|c| format!(", {} {}", quote_ident(&c.name), c.decl_type))
            .collect();
        let user_undo: String = user_columns
            .iter()
            .map(|c| format!(", {}", quote_ident(&c.name)))
            .collect();
        let sql = format!(
            "BEGIN IMMEDIATE;
             CREATE TABLE imagestore_meta(key TEXT PRIMARY KEY, value) WITHOUT ROWID;
             CREATE TABLE images(id INTEGER PRIMARY KEY, name TEXT, format TEXT NOT NULL,
                 width INTEGER NOT NULL, height INTEGER NOT NULL, bytes INTEGER NOT NULL,
                 hash TEXT NOT NULL, blob_id INTEGER NOT NULL{user_defs});
             CREATE INDEX images_hash ON images(hash);
             CREATE INDEX images_name ON images(name);
             CREATE TABLE blobs(blob_id INTEGER PRIMARY KEY, data BLOB NOT NULL);
             CREATE TABLE imagestore_prepared(txid INTEGER PRIMARY KEY, shards TEXT NOT NULL,
                 decided_by TEXT);
             CREATE TABLE imagestore_undo(txid INTEGER NOT NULL, id INTEGER NOT NULL,
                 existed INTEGER NOT NULL, name, format, width, height, bytes, hash, blob_id{user_undo},
                 PRIMARY KEY(txid, id)) WITHOUT ROWID;
             INSERT INTO imagestore_meta VALUES ('format_version', {FORMAT_VERSION}),
                 ('table_id', '{}'), ('shard_index', {}), ('shard_count', {}), ('last_txid', 0);",
            hex(&identity.table_id),
            identity.shard_index,
            identity.shard_count,
        );
        let written = self
            .conn
            .execute_batch(&sql)
            .map_err(self.err())
            .and_then(|()| self.write_owner(owner))
            .and_then(|()| self.write_lifecycle(Lifecycle::Creating))
            .and_then(|()| match restoring_from {
                Some(dir) => self.mark_restoring(dir),
                None => Ok(()),
            })
            .and_then(|()| self.commit());
        if written.is_err() {
            let _ = self.rollback();
        }
        written?;
        crate::durable::sync_wal(&self.path)
    }

    /// Copies every committed page into the database file and empties the WAL, synced (a new
    /// shard, before it is linked under its name: its file must hold it all).
    pub fn checkpoint(&self) -> Result<()> {
        self.conn
            .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| {
                r.get::<_, i64>(0)
            })
            .map_err(self.err())
            .and_then(|busy| match busy {
                0 => Ok(()),
                _ => Err(Error::Internal(format!(
                    "{}: a new shard's checkpoint could not finish",
                    self.path.display()
                ))),
            })?;
        crate::files::sync_file(&self.path)
    }

    /// Creates the declared indexes this shard lacks (`index(...)` arguments); one it has
    /// costs nothing.
    pub fn ensure_indexes(&self, indexes: &[Vec<String>]) -> Result<()> {
        for columns in indexes {
            let list: Vec<String> = columns.iter().map(|c| quote_ident(c)).collect();
            self.conn
                .execute_batch(&format!(
                    "CREATE INDEX IF NOT EXISTS {} ON images({})",
                    quote_ident(&crate::config::index_name(columns)),
                    list.join(", ")
                ))
                .map_err(self.err())?;
        }
        Ok(())
    }

    /// Refuses a file that is not an imagestore shard (no `imagestore_meta` table).
    fn require_meta(&self) -> Result<()> {
        let has_meta: bool = self
            .conn
            .query_row(
                "SELECT count(*) FROM sqlite_schema WHERE name = 'imagestore_meta'",
                [],
                |r| r.get::<_, i64>(0),
            )
            .map_err(self.err())?
            > 0;
        if !has_meta {
            return Err(Error::ShardForeign {
                path: self.path.clone(),
                detail: "is a SQLite database but not an imagestore shard".into(),
            });
        }
        Ok(())
    }

    /// Reads this shard's identity, and checks that its columns are the table's.
    pub fn identity(&self, user_columns: &[UserColumn]) -> Result<ShardIdentity> {
        let foreign = |detail: &str| Error::ShardForeign {
            path: self.path.clone(),
            detail: detail.to_string(),
        };
        self.require_meta()?;
        let get = |key: &str| self.meta_value(key);
        let version = get("format_version")?;
        if version != Some(Value::Integer(FORMAT_VERSION)) {
            return Err(foreign(&format!(
                "has shard format {version:?}; this build reads format {FORMAT_VERSION}"
            )));
        }
        if let Some(Value::Text(dir)) = get(RESTORE_MARK)? {
            return Err(foreign(&format!(
                "is part of a restore from {dir} that did not finish; delete the table's shard files and restore again"
            )));
        }
        let table_id = match get("table_id")? {
            Some(Value::Text(t)) => unhex(&t),
            _ => None,
        }
        .ok_or_else(|| foreign("has a damaged table id"))?;
        let as_index = |v: Option<Value>| match v {
            Some(Value::Integer(i)) if i >= 0 => Some(i as usize),
            _ => None,
        };
        let shard_index =
            as_index(get("shard_index")?).ok_or_else(|| foreign("has a damaged shard index"))?;
        let shard_count =
            as_index(get("shard_count")?).ok_or_else(|| foreign("has a damaged shard count"))?;
        let found: Vec<String> =
            self.first_column("SELECT name FROM pragma_table_info('images')")?;
        let expected: Vec<&str> = [
            "id", "name", "format", "width", "height", "bytes", "hash", "blob_id",
        ]
        .into_iter()
        .chain(user_columns.iter().map(|c| c.name.as_str()))
        .collect();
        if found != expected {
            return Err(foreign(&format!(
                "holds columns {found:?}, but the table declares {expected:?}"
            )));
        }
        Ok(ShardIdentity {
            table_id,
            shard_index,
            shard_count,
        })
    }

    /// The user columns this shard file was created with, after the built-in ones.
    pub fn user_columns(&self) -> Result<Vec<UserColumn>> {
        let mut stmt = self
            .conn
            .prepare("SELECT name, type FROM pragma_table_info('images') ORDER BY cid")
            .map_err(self.err())?;
        let columns = stmt
            .query_map([], |r| {
                Ok(UserColumn {
                    name: r.get(0)?,
                    decl_type: r.get(1)?,
                })
            })
            .and_then(|rows| rows.collect::<rusqlite::Result<Vec<_>>>())
            .map_err(self.err())?;
        Ok(columns.into_iter().skip(BUILTIN_STORED_COLUMNS).collect())
    }

    // ---- transactions -------------------------------------------------------------------

    pub fn execute(&self, sql: &str) -> Result<()> {
        self.conn
            .prepare_cached(sql)
            .and_then(|mut s| s.execute([]))
            .map(|_| ())
            .map_err(self.err())
    }

    /// Whether a transaction is open on this shard's connection.
    pub fn in_transaction(&self) -> bool {
        !self.conn.is_autocommit()
    }

    /// Begins a write transaction, with a savepoint at its start for
    /// [`rollback_to_start`](Self::rollback_to_start).
    pub fn begin_write(&self) -> Result<()> {
        self.execute("BEGIN IMMEDIATE")?;
        self.execute("SAVEPOINT start")
    }

    /// Undoes everything the open write transaction did, keeping it open.
    pub fn rollback_to_start(&self) -> Result<()> {
        self.execute("ROLLBACK TO start")
    }

    /// Opens a read transaction and pins its snapshot (in WAL mode the snapshot is taken at the
    /// first read). Returns the prepared transaction ids the snapshot holds.
    pub fn begin_read(&self) -> Result<Vec<u64>> {
        self.execute("BEGIN")?;
        self.prepared_txids()
    }

    pub fn commit(&self) -> Result<()> {
        self.execute("COMMIT")
    }

    /// Rolls back the open transaction, if there is one.
    pub fn rollback(&self) -> Result<()> {
        if self.in_transaction() {
            self.execute("ROLLBACK")
        } else {
            Ok(())
        }
    }

    pub fn savepoint(&self, level: i32) -> Result<()> {
        self.execute(&format!("SAVEPOINT s{level}"))
    }

    pub fn release(&self, level: i32) -> Result<()> {
        self.execute(&format!("RELEASE s{level}"))
    }

    pub fn rollback_to(&self, level: i32) -> Result<()> {
        self.execute(&format!("ROLLBACK TO s{level}"))
    }

    // ---- state read at the start of a transaction --------------------------------------

    pub fn prepared_txids(&self) -> Result<Vec<u64>> {
        let txids: Vec<i64> = self.first_column("SELECT txid FROM imagestore_prepared")?;
        Ok(txids.into_iter().map(|t| t as u64).collect())
    }

    /// Each prepared transaction with the host database whose commit decides it, if any.
    pub fn prepared_deciders(&self) -> Result<Vec<(u64, Option<String>)>> {
        let mut stmt = self
            .conn
            .prepare_cached("SELECT txid, decided_by FROM imagestore_prepared")
            .map_err(self.err())?;
        let rows = stmt
            .query_map([], |r| Ok((r.get::<_, i64>(0)? as u64, r.get(1)?)))
            .and_then(|rows| rows.collect::<rusqlite::Result<Vec<_>>>());
        rows.map_err(self.err())
    }

    /// Adds the prepare record's `decided_by` column to a shard made before it existed (0.2).
    pub fn ensure_protocol_columns(&self) -> Result<()> {
        let columns: Vec<String> =
            self.first_column("SELECT name FROM pragma_table_info('imagestore_prepared')")?;
        if columns.iter().any(|c| c == "decided_by") {
            return Ok(());
        }
        match self
            .conn
            .execute_batch("ALTER TABLE imagestore_prepared ADD COLUMN decided_by TEXT")
        {
            // Another process may have added it meanwhile.
            Err(e) if e.to_string().contains("duplicate column") => Ok(()),
            other => other.map_err(self.err()),
        }
    }

    /// The first column of every row `sql` returns.
    fn first_column<T: rusqlite::types::FromSql>(&self, sql: &str) -> Result<Vec<T>> {
        let mut stmt = self.conn.prepare_cached(sql).map_err(self.err())?;
        let rows = stmt
            .query_map([], |r| r.get::<_, T>(0))
            .map_err(self.err())?;
        rows.collect::<rusqlite::Result<_>>().map_err(self.err())
    }

    /// Every row's id, in order.
    pub fn ids(&self) -> Result<Vec<i64>> {
        self.first_column("SELECT id FROM images ORDER BY id")
    }

    pub fn last_txid(&self) -> Result<u64> {
        self.conn
            .prepare_cached("SELECT value FROM imagestore_meta WHERE key = 'last_txid'")
            .and_then(|mut s| s.query_row([], |r| r.get::<_, i64>(0)))
            .map(|t| t as u64)
            .map_err(self.err())
    }

    pub fn max_id(&self) -> Result<Option<i64>> {
        self.conn
            .prepare_cached("SELECT max(id) FROM images")
            .and_then(|mut s| s.query_row([], |r| r.get(0)))
            .map_err(self.err())
    }

    // ---- rows ---------------------------------------------------------------------------

    fn row_from(&self, r: &rusqlite::Row<'_>) -> rusqlite::Result<StoredRow> {
        Ok(StoredRow {
            id: r.get(0)?,
            name: r.get(1)?,
            format: r.get(2)?,
            width: r.get(3)?,
            height: r.get(4)?,
            bytes: r.get(5)?,
            hash: r.get(6)?,
            blob_id: r.get(7)?,
            user: (0..self.user_column_count)
                .map(|i| r.get(8 + i))
                .collect::<rusqlite::Result<_>>()?,
        })
    }

    pub fn get(&self, id: i64) -> Result<Option<StoredRow>> {
        let mut stmt = self
            .conn
            .prepare_cached(&self.sql.get)
            .map_err(self.err())?;
        stmt.query_row([id], |r| self.row_from(r))
            .optional()
            .map_err(self.err())
    }

    /// One page of rows matching `filter`, in id order, after `after` (exclusive).
    pub fn scan_page(
        &self,
        filter: &ScanFilter,
        after: Option<i64>,
        limit: usize,
    ) -> Result<Vec<StoredRow>> {
        let mut conditions = Vec::new();
        let mut values: Vec<Value> = Vec::new();
        let mut add = |cond: &str, value: Value| {
            values.push(value);
            conditions.push(format!("{cond} ?{}", values.len()));
        };
        if let Some(id) = filter.id_eq {
            add("id =", Value::Integer(id));
        }
        if let Some(min) = filter.id_min {
            add("id >=", Value::Integer(min));
        }
        if let Some(max) = filter.id_max {
            add("id <=", Value::Integer(max));
        }
        for (column, value) in &filter.equal {
            add(&format!("{column} ="), value.clone());
        }
        if let Some(after) = after {
            add(
                if filter.descending { "id <" } else { "id >" },
                Value::Integer(after),
            );
        }
        let where_sql = if conditions.is_empty() {
            String::new()
        } else {
            format!("WHERE {}", conditions.join(" AND "))
        };
        let order = if filter.descending { "DESC" } else { "ASC" };
        values.push(Value::Integer(limit as i64));
        let sql = format!(
            "SELECT id, {} FROM images {where_sql} ORDER BY id {order} LIMIT ?{}",
            self.columns_sql,
            values.len()
        );
        let mut stmt = self.conn.prepare_cached(&sql).map_err(self.err())?;
        let rows = stmt
            .query_map(rusqlite::params_from_iter(values.iter()), |r| {
                self.row_from(r)
            })
            .map_err(self.err())?;
        rows.collect::<rusqlite::Result<_>>().map_err(self.err())
    }

    /// Reads image bytes straight from the blob's pages into one buffer.
    pub fn read_blob(&self, blob_id: i64) -> Result<Vec<u8>> {
        let blob = self
            .conn
            .blob_open(rusqlite::MAIN_DB, "blobs", "data", blob_id, true)
            .map_err(self.err())?;
        let mut data = vec![0u8; blob.len()];
        blob.read_at_exact(&mut data, 0).map_err(self.err())?;
        Ok(data)
    }

    /// Records `id`'s state before transaction `txid` first touches it (no-op after the first).
    fn remember_before(&self, txid: u64, id: i64) -> Result<()> {
        self.conn
            .prepare_cached(&self.sql.remember_before)
            .and_then(|mut s| s.execute(params![txid as i64, id]))
            .map(|_| ())
            .map_err(self.err())
    }

    /// Deletes `blob_id` if transaction `txid` created it (it is not `id`'s before-state blob);
    /// a before-state blob stays until the transaction is finalized or aborted.
    fn drop_blob_if_new(&self, txid: u64, id: i64, blob_id: i64) -> Result<()> {
        self.conn
            .prepare_cached(
                "DELETE FROM blobs WHERE blob_id = ?3 AND NOT EXISTS (SELECT 1 FROM imagestore_undo
                 WHERE txid = ?1 AND id = ?2 AND existed AND blob_id = ?3)",
            )
            .and_then(|mut s| s.execute(params![txid as i64, id, blob_id]))
            .map(|_| ())
            .map_err(self.err())
    }

    /// Stores image bytes. A large image is written into a zeroblob in place, so that no copy of
    /// it is made on the way (binding it would copy it once, and building the record again).
    fn insert_blob(&self, data: &[u8]) -> Result<i64> {
        if data.len() < BLOB_IN_PLACE_BYTES_MIN {
            return self
                .conn
                .prepare_cached("INSERT INTO blobs(data) VALUES (?1)")
                .and_then(|mut s| s.insert([data]))
                .map_err(self.err());
        }
        let blob_id = self
            .conn
            .prepare_cached("INSERT INTO blobs(data) VALUES (zeroblob(?1))")
            .and_then(|mut s| s.insert([data.len() as i64]))
            .map_err(self.err())?;
        let mut blob = self
            .conn
            .blob_open(rusqlite::MAIN_DB, "blobs", "data", blob_id, false)
            .map_err(self.err())?;
        blob.write_at(data, 0).map_err(self.err())?;
        Ok(blob_id)
    }

    /// Inserts a row into a shard that is being restored: no before-state is kept, because the
    /// whole shard is discarded if the restore fails.
    /// A second row with the same id is an error, not a replacement.
    pub fn insert_restored(&self, row: &NewRow, data: &[u8]) -> Result<()> {
        let blob_id = self.insert_blob(data)?;
        self.write_row(row, blob_id, false)
    }

    /// Marks this shard as being restored from `dir`, in the open write transaction.
    fn mark_restoring(&self, dir: &Path) -> Result<()> {
        self.conn
            .execute(
                "INSERT INTO imagestore_meta(key, value) VALUES (?1, ?2)",
                params![RESTORE_MARK, dir.to_string_lossy()],
            )
            .map(|_| ())
            .map_err(self.err())
    }

    fn write_owner(&self, owner: &Owner) -> Result<()> {
        self.conn
            .execute(
                "INSERT OR REPLACE INTO imagestore_meta(key, value) VALUES (?1, ?2), (?3, ?4)",
                params![OWNER_DATABASE, owner.database, OWNER_TABLE, owner.table],
            )
            .map(|_| ())
            .map_err(self.err())
    }

    /// Who created this shard set; `None` for a shard made before owners were recorded (0.2).
    pub fn owner(&self) -> Result<Option<Owner>> {
        let database = self.meta_text(OWNER_DATABASE)?;
        let table = self.meta_text(OWNER_TABLE)?;
        Ok(database
            .zip(table)
            .map(|(database, table)| Owner { database, table }))
    }

    /// The `imagestore_meta` value of `key`, if it has one.
    fn meta_value(&self, key: &str) -> Result<Option<Value>> {
        self.conn
            .query_row(
                "SELECT value FROM imagestore_meta WHERE key = ?1",
                [key],
                |r| r.get(0),
            )
            .optional()
            .map_err(self.err())
    }

    fn meta_text(&self, key: &str) -> Result<Option<String>> {
        Ok(match self.meta_value(key)? {
            Some(Value::Text(t)) => Some(t),
            _ => None,
        })
    }

    /// Where this shard set is in its life.
    pub fn lifecycle(&self) -> Result<Lifecycle> {
        Ok(match self.meta_text(LIFECYCLE)?.as_deref() {
            Some("creating") => Lifecycle::Creating,
            Some("dropping") => Lifecycle::Dropping,
            _ => Lifecycle::Live,
        })
    }

    fn write_lifecycle(&self, lifecycle: Lifecycle) -> Result<()> {
        let written = match lifecycle.mark() {
            Some(mark) => self.conn.execute(
                "INSERT OR REPLACE INTO imagestore_meta(key, value) VALUES (?1, ?2)",
                params![LIFECYCLE, mark],
            ),
            None => self
                .conn
                .execute("DELETE FROM imagestore_meta WHERE key = ?1", [LIFECYCLE]),
        };
        written.map(|_| ()).map_err(self.err())
    }

    /// Sets the lifecycle mark, in a transaction of its own, synced.
    pub fn set_lifecycle(&self, lifecycle: Lifecycle) -> Result<()> {
        self.in_own_transaction(|s| s.write_lifecycle(lifecycle))?;
        crate::durable::sync_wal(&self.path)
    }

    /// Clears the restore mark, in a transaction of its own, synced.
    pub fn clear_restoring(&self) -> Result<()> {
        self.in_own_transaction(|s| {
            s.conn
                .execute("DELETE FROM imagestore_meta WHERE key = ?1", [RESTORE_MARK])
                .map(|_| ())
                .map_err(s.err())
        })?;
        crate::durable::sync_wal(&self.path)
    }

    /// Inserts a row (the caller checked that its id is free) with a new blob.
    pub fn insert(&self, txid: u64, row: &NewRow, data: &[u8]) -> Result<()> {
        self.remember_before(txid, row.id)?;
        let blob_id = self.insert_blob(data)?;
        self.write_row(row, blob_id, true)
    }

    /// Writes a row (`replace`: one that may exist, with `INSERT OR REPLACE`).
    fn write_row(&self, row: &NewRow, blob_id: i64, replace: bool) -> Result<()> {
        let sql = match replace {
            true => &self.sql.insert_or_replace,
            false => &self.sql.insert,
        };
        let built_in: [&dyn ToSql; 8] = [
            &row.id,
            &row.name,
            &row.format,
            &row.width,
            &row.height,
            &row.bytes,
            &row.hash,
            &blob_id,
        ];
        let values = built_in
            .into_iter()
            .chain(row.user.iter().map(|v| v as &dyn ToSql));
        self.conn
            .prepare_cached(sql)
            .and_then(|mut s| s.execute(rusqlite::params_from_iter(values)))
            .map(|_| ())
            .map_err(self.err())
    }

    /// Replaces row `row.id` in place; `data` is the new image, or `None` to keep the blob.
    pub fn update(
        &self,
        txid: u64,
        current: &StoredRow,
        row: &NewRow,
        data: Option<&[u8]>,
    ) -> Result<()> {
        self.remember_before(txid, row.id)?;
        let blob_id = match data {
            Some(data) => {
                let blob_id = self.insert_blob(data)?;
                self.drop_blob_if_new(txid, row.id, current.blob_id)?;
                blob_id
            }
            None => current.blob_id,
        };
        self.write_row(row, blob_id, true)
    }

    pub fn delete(&self, txid: u64, current: &StoredRow) -> Result<()> {
        self.remember_before(txid, current.id)?;
        self.conn
            .prepare_cached("DELETE FROM images WHERE id = ?1")
            .and_then(|mut s| s.execute([current.id]))
            .map_err(self.err())?;
        self.drop_blob_if_new(txid, current.id, current.blob_id)
    }

    // ---- the protocol's steps on this shard -----------------------------------------------

    fn set_last_txid(&self, txid: u64) -> Result<()> {
        self.conn
            .prepare_cached(
                "UPDATE imagestore_meta SET value = max(value, ?1) WHERE key = 'last_txid'",
            )
            .and_then(|mut s| s.execute([txid as i64]))
            .map(|_| ())
            .map_err(self.err())
    }

    /// Phase 1: commits the open transaction, still undoable, with a prepare record. It is
    /// durable once the coordinator has synced this shard's WAL.
    pub fn prepare(&self, txid: u64, participants: &[u16], decided_by: Option<&str>) -> Result<()> {
        crate::fault::check("shard_prepare")?;
        let shards = participants
            .iter()
            .map(u16::to_string)
            .collect::<Vec<_>>()
            .join(",");
        self.conn
            .prepare_cached(
                "INSERT INTO imagestore_prepared(txid, shards, decided_by) VALUES (?1, ?2, ?3)",
            )
            .and_then(|mut s| s.execute(params![txid as i64, shards, decided_by]))
            .map_err(self.err())?;
        self.set_last_txid(txid)?;
        self.commit()
    }

    /// A logged commit's shard step, after its decision: finalize and commit, not synced (the
    /// journal holds [`changes`](Self::changes) to replay if a power cut takes this commit away).
    pub fn commit_logged(&self, txid: u64) -> Result<()> {
        crate::fault::check("shard_commit_logged")?;
        self.commit_final(txid)
    }

    fn commit_final(&self, txid: u64) -> Result<()> {
        self.forget_before_states(txid)?;
        self.set_last_txid(txid)?;
        self.commit()
    }

    /// What the open transaction `txid` changed, for a logged commit, encoded (`redo`): `None`
    /// if its rows and the images it added come to more than `bytes_max` (then it is prepared
    /// instead). The images are read only once the total is known to fit.
    pub fn changes(&self, txid: u64, bytes_max: u64) -> Result<Option<Vec<u8>>> {
        let width = 1 + self.columns.len();
        let mut encoder = Encoder::default();
        let mut blobs_added: Vec<i64> = Vec::new();
        let mut blobs_dropped: Vec<i64> = Vec::new();
        let mut blob_bytes = 0u64;
        let mut stmt = self
            .conn
            .prepare_cached(&self.sql.changed_rows)
            .map_err(self.err())?;
        let mut cursor = stmt.query([txid as i64]).map_err(self.err())?;
        while let Some(r) = cursor.next().map_err(self.err())? {
            let values = match r.get::<_, bool>(1).map_err(self.err())? {
                true => Some(
                    (5..5 + width)
                        .map(|k| r.get_ref(k))
                        .collect::<rusqlite::Result<Vec<_>>>()
                        .map_err(self.err())?,
                ),
                false => None,
            };
            encoder.row(r.get(0).map_err(self.err())?, values.as_deref());
            let added: Option<(i64, i64)> = r
                .get::<_, Option<i64>>(2)
                .and_then(|id| Ok(id.zip(r.get(3)?)))
                .map_err(self.err())?;
            if let Some((blob_id, len)) = added {
                blobs_added.push(blob_id);
                blob_bytes += redo::blob_added_bytes(len as u64);
            }
            blobs_dropped.extend(r.get::<_, Option<i64>>(4).map_err(self.err())?);
            if encoder.encoded_bytes() as u64 + blob_bytes > bytes_max {
                return Ok(None);
            }
        }
        drop(cursor);
        encoder.end_rows();
        let mut blob = self
            .conn
            .prepare_cached("SELECT data FROM blobs WHERE blob_id = ?1")
            .map_err(self.err())?;
        for blob_id in blobs_added {
            blob.query_row([blob_id], |r| {
                encoder.blob_added(blob_id, r.get_ref(0)?.as_blob()?);
                Ok(())
            })
            .map_err(self.err())?;
        }
        encoder.end_blobs_added();
        blobs_dropped
            .into_iter()
            .for_each(|id| encoder.blob_dropped(id));
        Ok(Some(encoder.finish(Some(self.last_txid()?))))
    }

    /// Recovery's redo of a logged commit on a shard that lost it (a power cut took its unsynced
    /// commit): applies `changes` and raises `last_txid`, in one transaction, unless `last_txid`
    /// shows the shard has it already, or lacks the commits the changes build on.
    pub fn replay(&self, txid: u64, changes: &ShardChanges) -> Result<Replayed> {
        let width = 1 + self.columns.len();
        if let Some((id, _)) = changes
            .rows
            .iter()
            .find(|(_, row)| row.as_ref().is_some_and(|v| v.len() != width))
        {
            return Err(Error::InDoubt(format!(
                "shard {}: the journal's row {id} of transaction {txid} does not have the shard's {width} columns",
                self.path.display()
            )));
        }
        let mut outcome = Replayed::Applied;
        self.in_own_transaction(|s| {
            let last = s.last_txid()?;
            if last >= txid {
                outcome = Replayed::Present;
                return Ok(());
            }
            if let Some(base) = changes.base_txid.filter(|&base| last < base) {
                outcome = Replayed::Gap { base };
                return Ok(());
            }
            let run = |sql: &str, values: &[&dyn rusqlite::ToSql]| {
                s.conn
                    .prepare_cached(sql)
                    .and_then(|mut st| st.execute(values))
                    .map(|_| ())
                    .map_err(s.err())
            };
            for blob_id in &changes.blobs_dropped {
                run("DELETE FROM blobs WHERE blob_id = ?1", &[blob_id])?;
            }
            for (blob_id, data) in &changes.blobs_added {
                run(
                    "INSERT INTO blobs(blob_id, data) VALUES (?1, ?2)",
                    &[blob_id, data],
                )?;
            }
            for (id, row) in &changes.rows {
                run("DELETE FROM images WHERE id = ?1", &[id])?;
                if let Some(values) = row {
                    s.conn
                        .prepare_cached(&s.sql.insert)
                        .and_then(|mut st| st.execute(rusqlite::params_from_iter(values)))
                        .map_err(s.err())?;
                }
            }
            s.set_last_txid(txid)
        })?;
        Ok(outcome)
    }

    /// Deletes the before-states of `txid` and the blobs only they referenced.
    fn forget_before_states(&self, txid: u64) -> Result<()> {
        self.conn
            .prepare_cached(
                "DELETE FROM blobs WHERE blob_id IN (SELECT u.blob_id FROM imagestore_undo u
                 LEFT JOIN images i ON i.id = u.id
                 WHERE u.txid = ?1 AND u.existed AND i.blob_id IS NOT u.blob_id)",
            )
            .and_then(|mut s| s.execute([txid as i64]))
            .map_err(self.err())?;
        self.conn
            .prepare_cached("DELETE FROM imagestore_undo WHERE txid = ?1")
            .and_then(|mut s| s.execute([txid as i64]))
            .map(|_| ())
            .map_err(self.err())
    }

    fn drop_prepare_record(&self, txid: u64) -> Result<()> {
        self.conn
            .prepare_cached("DELETE FROM imagestore_prepared WHERE txid = ?1")
            .and_then(|mut s| s.execute([txid as i64]))
            .map(|_| ())
            .map_err(self.err())
    }

    /// Phase 2 of a committed transaction: drops its before-states and prepare record, in a
    /// transaction of its own. Not synced: the journal keeps the decision until it is.
    pub fn finalize(&self, txid: u64) -> Result<()> {
        crate::fault::check("shard_finalize")?;
        self.in_own_transaction(|s| {
            s.forget_before_states(txid)?;
            s.drop_prepare_record(txid)
        })
    }

    /// Undoes a prepared (or partly written) transaction from its before-states, in a
    /// transaction of its own.
    pub fn abort_prepared(&self, txid: u64) -> Result<()> {
        self.in_own_transaction(|s| {
            let t = txid as i64;
            let run = |sql: &str| {
                s.conn.prepare_cached(sql).and_then(|mut st| st.execute([t])).map(|_| ()).map_err(Error::shard(&s.path))
            };
            run("DELETE FROM blobs WHERE blob_id IN (SELECT i.blob_id FROM imagestore_undo u
                 JOIN images i ON i.id = u.id
                 WHERE u.txid = ?1 AND (NOT u.existed OR i.blob_id IS NOT u.blob_id))")?;
            run("DELETE FROM images WHERE id IN (SELECT id FROM imagestore_undo WHERE txid = ?1)")?;
            run(&format!(
                "INSERT INTO images(id, {c}) SELECT id, {c} FROM imagestore_undo WHERE txid = ?1 AND existed",
                c = s.columns_sql
            ))?;
            run("DELETE FROM imagestore_undo WHERE txid = ?1")?;
            s.drop_prepare_record(txid)
        })
    }

    fn in_own_transaction(&self, body: impl FnOnce(&Shard) -> Result<()>) -> Result<()> {
        self.execute("BEGIN IMMEDIATE")?;
        match body(self) {
            Ok(()) => self.commit(),
            Err(e) => {
                let _ = self.rollback();
                Err(e)
            }
        }
    }

    // ---- checks -------------------------------------------------------------------------

    /// What `PRAGMA integrity_check` reports, less its "ok".
    pub fn integrity_problems(&self) -> Result<Vec<String>> {
        let found: Vec<String> = self.first_column("PRAGMA integrity_check")?;
        // Newer SQLite reports several problems in one row, one a line.
        Ok(found
            .iter()
            .flat_map(|row| row.lines())
            .filter(|line| *line != "ok" && !line.starts_with("*** in database"))
            .map(str::to_string)
            .collect())
    }

    /// Calls `visit(id, stored hash, image bytes or None if missing)` for every row.
    pub fn for_each_image(&self, mut visit: impl FnMut(i64, &str, Option<&[u8]>)) -> Result<()> {
        let mut stmt = self
            .conn
            .prepare("SELECT i.id, i.hash, b.data FROM images i LEFT JOIN blobs b ON b.blob_id = i.blob_id ORDER BY i.id")
            .map_err(self.err())?;
        let mut rows = stmt.query([]).map_err(self.err())?;
        while let Some(row) = rows.next().map_err(self.err())? {
            let id: i64 = row.get(0).map_err(self.err())?;
            let hash: String = row.get(1).map_err(self.err())?;
            let data = row
                .get_ref(2)
                .map_err(self.err())?
                .as_blob_or_null()
                .map_err(|e| Error::shard(&self.path)(e.into()))?;
            visit(id, &hash, data);
        }
        Ok(())
    }

    /// Blobs that no row and no before-state references.
    pub fn orphan_blob_count(&self) -> Result<i64> {
        self.conn
            .query_row(
                "SELECT count(*) FROM blobs WHERE blob_id NOT IN (SELECT blob_id FROM images)
                 AND blob_id NOT IN (SELECT blob_id FROM imagestore_undo WHERE blob_id IS NOT NULL)",
                [],
                |r| r.get(0),
            )
            .map_err(self.err())
    }

    // ---- backup -------------------------------------------------------------------------

    /// Copies this shard, as the connection's open read transaction sees it, into a new file
    /// `dest`, leaving out the bytes of images whose hash is in `held` (an earlier backup holds
    /// them). Rows, meta and schema are copied whole; protocol state is not. Returns how many
    /// images' bytes were copied, and their size.
    pub fn copy_rows_to(&self, dest: &Path, held: &HashSet<blake3::Hash>) -> Result<(u64, u64)> {
        // Synced through this descriptor, kept open until the connection has closed: closing
        // another descriptor of the file would drop SQLite's POSIX locks on it.
        let file = std::fs::File::create(dest).map_err(Error::file_io(dest))?;
        let out = Connection::open(dest).map_err(Error::shard(dest))?;
        let dest_err = || Error::shard(dest);
        // The file is not part of any backup until a manifest names it, after it is synced: a
        // crash while it is written leaves only a file that nothing trusts.
        out.execute_batch("PRAGMA journal_mode=OFF; PRAGMA synchronous=OFF; BEGIN")
            .map_err(dest_err())?;
        let schema: Vec<String> = self.first_column(
            "SELECT sql FROM sqlite_schema WHERE sql IS NOT NULL AND name NOT LIKE 'sqlite_%' ORDER BY rowid",
        )?;
        for sql in &schema {
            out.execute_batch(sql).map_err(dest_err())?;
        }
        self.copy_table(&out, dest, "imagestore_meta", |_| Ok(()))?;
        let (mut images, mut bytes, mut unsynced) = (0, 0, 0);
        let mut copy_blob = out
            .prepare("INSERT OR IGNORE INTO blobs(blob_id, data) VALUES (?1, ?2)")
            .map_err(dest_err())?;
        self.copy_table(&out, dest, "images", |row| {
            let (Value::Text(hash), Value::Integer(blob_id)) =
                (&row[HASH_COLUMN], &row[BLOB_ID_COLUMN])
            else {
                return Err(Error::ShardForeign {
                    path: self.path.clone(),
                    detail: "holds a row without a hash or blob".into(),
                });
            };
            if !parse_hash(hash).is_some_and(|hash| held.contains(&hash)) {
                let data = self.read_blob(*blob_id)?;
                copy_blob
                    .execute(params![blob_id, data])
                    .map_err(dest_err())?;
                images += 1;
                bytes += data.len() as u64;
                unsynced += data.len() as u64;
                // Written back as it goes, so that the copy never piles up enough dirty pages
                // to stall a writer's commit sync behind them.
                if unsynced >= BACKUP_SYNC_BYTES {
                    file.sync_data().map_err(Error::file_io(dest))?;
                    unsynced = 0;
                }
            }
            Ok(())
        })?;
        drop(copy_blob);
        out.execute_batch("COMMIT").map_err(dest_err())?;
        Ok((images, bytes))
    }

    /// Copies every row of `table` into the same table of `out`, calling `each` on each row.
    fn copy_table(
        &self,
        out: &Connection,
        dest: &Path,
        table: &str,
        mut each: impl FnMut(&[Value]) -> Result<()>,
    ) -> Result<()> {
        let mut read = self
            .conn
            .prepare(&format!("SELECT * FROM {table}"))
            .map_err(self.err())?;
        let width = read.column_count();
        let placeholders = vec!["?"; width].join(", ");
        let mut write = out
            .prepare(&format!("INSERT INTO {table} VALUES ({placeholders})"))
            .map_err(Error::shard(dest))?;
        let mut rows = read.query([]).map_err(self.err())?;
        while let Some(row) = rows.next().map_err(self.err())? {
            let values: Vec<Value> = (0..width)
                .map(|i| row.get(i))
                .collect::<rusqlite::Result<_>>()
                .map_err(self.err())?;
            each(&values)?;
            write
                .execute(rusqlite::params_from_iter(values.iter()))
                .map_err(Error::shard(dest))?;
        }
        Ok(())
    }

    /// Hashes of the images whose bytes this file holds, 32 bytes each (a stored hash that is
    /// not BLAKE3 hex is left out: its image is copied again, never skipped).
    pub fn held_hashes(&self) -> Result<HashSet<blake3::Hash>> {
        let mut held = HashSet::new();
        let mut stmt = self
            .conn
            .prepare("SELECT i.hash FROM images i JOIN blobs b ON b.blob_id = i.blob_id")
            .map_err(self.err())?;
        let mut rows = stmt.query([]).map_err(self.err())?;
        while let Some(row) = rows.next().map_err(self.err())? {
            let hex = row.get_ref(0).map_err(self.err())?;
            if let Some(hash) = hex.as_str().ok().and_then(parse_hash) {
                held.insert(hash);
            }
        }
        Ok(held)
    }

    /// The bytes of a row's image if this file holds them (a backup file of a later
    /// generation holds only the images that earlier ones did not).
    pub fn stored_image(&self, row: &StoredRow) -> Result<Option<Vec<u8>>> {
        self.conn
            .prepare_cached("SELECT data FROM blobs WHERE blob_id = ?1")
            .and_then(|mut s| s.query_row([row.blob_id], |r| r.get(0)).optional())
            .map_err(self.err())
    }

    /// The bytes of any image with this hash that this file holds.
    pub fn image_by_hash(&self, hash: &str) -> Result<Option<Vec<u8>>> {
        self.conn
            .prepare_cached(
                "SELECT b.data FROM images i JOIN blobs b ON b.blob_id = i.blob_id WHERE i.hash = ?1 LIMIT 1",
            )
            .and_then(|mut s| s.query_row([hash], |r| r.get(0)).optional())
            .map_err(self.err())
    }

    /// Rows of protocol state (prepare records and before-states): none in a backup's file.
    pub fn protocol_state_rows(&self) -> Result<i64> {
        self.conn
            .query_row(
                "SELECT (SELECT count(*) FROM imagestore_prepared) + (SELECT count(*) FROM imagestore_undo)",
                [],
                |r| r.get(0),
            )
            .map_err(self.err())
    }

    /// Rows, and bytes of images, in this shard (as the open transaction sees it).
    pub fn totals(&self) -> Result<(i64, i64)> {
        self.conn
            .query_row(
                "SELECT count(*), coalesce(sum(bytes), 0) FROM images",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .map_err(self.err())
    }
}

/// The local SQLite shard as a participant of the commit protocol: each step is one SQLite
/// transaction on the shard file (or a statement in the open one), and durability is the WAL's
/// fsync, run on the sync pool (`durable`).
impl Participant for Shard {
    fn name(&self) -> String {
        self.path.display().to_string()
    }

    fn begin_read(&mut self) -> Result<Vec<u64>> {
        Shard::begin_read(self)
    }

    fn end(&mut self) -> Result<()> {
        self.rollback()
    }

    fn begin_write(&mut self) -> Result<()> {
        Shard::begin_write(self)
    }

    fn savepoint(&mut self, level: i32) -> Result<()> {
        Shard::savepoint(self, level)
    }

    fn release(&mut self, level: i32) -> Result<()> {
        Shard::release(self, level)
    }

    fn rollback_to(&mut self, level: i32) -> Result<()> {
        Shard::rollback_to(self, level)
    }

    fn rollback_to_start(&mut self) -> Result<()> {
        Shard::rollback_to_start(self)
    }

    fn last_txid(&mut self) -> Result<u64> {
        Shard::last_txid(self)
    }

    fn prepared(&mut self) -> Result<Vec<PrepareRecord>> {
        Ok(self
            .prepared_deciders()?
            .into_iter()
            .map(|(txid, decided_by)| PrepareRecord { txid, decided_by })
            .collect())
    }

    fn changes(&mut self, txid: u64, bytes_max: u64) -> Result<Option<Vec<u8>>> {
        Shard::changes(self, txid, bytes_max)
    }

    fn commit_logged(&mut self, txid: u64) -> Result<()> {
        Shard::commit_logged(self, txid)
    }

    fn replay(&mut self, txid: u64, changes: &[u8]) -> Result<Replayed> {
        match ShardChanges::decode(changes) {
            Ok(changes) => Shard::replay(self, txid, &changes),
            Err(detail) => Ok(Replayed::Unreadable(detail)),
        }
    }

    fn prepare(&mut self, txid: u64, participants: &[u16], decided_by: Option<&str>) -> Result<()> {
        Shard::prepare(self, txid, participants, decided_by)
    }

    fn finalize(&mut self, txid: u64) -> Result<()> {
        Shard::finalize(self, txid)
    }

    fn abort_prepared(&mut self, txid: u64) -> Result<()> {
        Shard::abort_prepared(self, txid)
    }

    fn sync_job(&self) -> Option<SyncJob> {
        let path = self.path.clone();
        Some(Box::new(move || crate::durable::sync_wal(&path)))
    }
}

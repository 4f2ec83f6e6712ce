//! A shard: one ordinary SQLite file (WAL mode) holding a share of a table's rows.
//!
//! ```sql
//! imagestore_meta(key PRIMARY KEY, value)   -- format_version (1, or 2 for a three-phase table: see
//!                                               `Protocol::format_version`), table_id, shard_index, shard_count,
//!                                               last_txid, last_finalized and last_aborted (the
//!                                               last prepared transaction finalized, aborted
//!                                               here: a prepare raises last_txid already),
//!                                               owner_database, owner_table, lifecycle (see `Owner`)
//! images(id INTEGER PRIMARY KEY, name, format, width, height, bytes, hash, blob_id, <user columns>)
//! blobs(blob_id INTEGER PRIMARY KEY, data)  -- image bytes, apart so metadata scans never read them
//! imagestore_prepared(txid PRIMARY KEY, shards, decided_by, pre_committed) -- a transaction
//!                                               prepared here, not yet finalized; shards: every
//!                                               participant (for a person reading it);
//!                                               decided_by: the host database whose commit
//!                                               decides it, if not the journal; pre_committed:
//!                                               three-phase commit's pre-commit (see `commit`)
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
//! This folder knows SQL; the protocol (when to prepare, finalize or abort) is the coordinator's.
//! Files: this one opens, creates and identifies a shard (its schema, its `imagestore_meta`, its
//! transactions); `rows` the row types, reads and row writes; `protocol` the protocol's steps on
//! a shard and the shard as a `Participant`; `changes` a logged commit's changes of one shard,
//! encoded as its journal record carries them; `copy` checks and the copy into a backup.

use std::collections::HashSet;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use rusqlite::config::DbConfig;
use rusqlite::types::Value;
use rusqlite::{params, Connection, OpenFlags, OptionalExtension};

use crate::commit::{Participant, PrepareRecord, Replayed};
use crate::config::{Owner, Protocol, UserColumn};
use crate::durable::SyncJob;
use crate::error::{Error, Result};
use crate::journal::TableId;
use changes::{Encoder, ShardChanges};

pub mod changes;
mod copy;
mod protocol;
mod rows;

pub use rows::{Condition, NewRow, ScanFilter, StoredRow};

/// Images from this size up are written in place into a zeroblob (below it, binding is faster).
const BLOB_IN_PLACE_BYTES_MIN: usize = 256 * 1024;

/// The `imagestore_meta` key a restore sets on every shard, with its rows, and clears once
/// every shard holds all of its rows (see `backup::restore`): a shard that has it is refused.
const RESTORE_MARK: &str = "restore_incomplete";

/// The `imagestore_meta` keys naming the database and table that created a shard set (its
/// owner), and the key of its lifecycle mark (`creating` until the CREATE has committed,
/// `dropping` from a DROP until its files are gone; absent while the table lives).
const OWNER_DATABASE: &str = "owner_database";
const OWNER_TABLE: &str = "owner_table";
const LIFECYCLE: &str = "lifecycle";

/// `imagestore_meta` keys: the last prepared transaction finalized, and aborted, here. With the
/// decision records lost they tell a part committed from a part undone (`last_txid` cannot: a
/// prepare raises it).
const LAST_FINALIZED: &str = "last_finalized";
const LAST_ABORTED: &str = "last_aborted";

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

/// The error for shards made with protocol `kept` opened as a table that declares `declared`: a
/// wrong option, not damage.
pub fn protocol_mismatch(kept: Protocol, declared: Protocol) -> Error {
    Error::BadArgument(format!(
        "the table's shards were made with protocol='{}', but this table declares protocol='{}' (a table's protocol is chosen when it is made)",
        kept.name(),
        declared.name()
    ))
}

/// Who this shard says it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardIdentity {
    pub table_id: TableId,
    pub shard_index: usize,
    pub shard_count: usize,
    /// How the table's transactions commit (kept so that every opener agrees).
    pub protocol: Protocol,
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

pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A stored image hash (BLAKE3, hex) as its 32 bytes; `None` if it is not one.
pub fn parse_hash(hex: &str) -> Option<blake3::Hash> {
    blake3::Hash::from_hex(hex).ok()
}

pub(crate) fn unhex(s: &str) -> Option<TableId> {
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
                return Err(Error::BadArgument(format!(
                    "{}: already exists; choose a new file for a new shard",
                    path.display()
                )))
            }
            (Ok(meta), false) if meta.nlink() > 1 => {
                return Err(Error::ShardHardLinked {
                    path: path.to_path_buf(),
                    names: meta.nlink(),
                })
            }
            (Err(e), false) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(Error::ShardMissing {
                    path: path.to_path_buf(),
                })
            }
            (Err(e), false) => return Err(Error::file_io(path)(e)),
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
        match std::fs::metadata(path) {
            Ok(meta) if meta.is_file() => {}
            Ok(_) => {
                return Err(Error::ShardForeign {
                    path: path.to_path_buf(),
                    detail: "is not a regular file".into(),
                })
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(Error::ShardMissing {
                    path: path.to_path_buf(),
                })
            }
            Err(e) => return Err(Error::file_io(path)(e)),
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
                 decided_by TEXT, pre_committed INTEGER NOT NULL DEFAULT 0);
             CREATE TABLE imagestore_undo(txid INTEGER NOT NULL, id INTEGER NOT NULL,
                 existed INTEGER NOT NULL, name, format, width, height, bytes, hash, blob_id{user_undo},
                 PRIMARY KEY(txid, id)) WITHOUT ROWID;
             INSERT INTO imagestore_meta VALUES ('format_version', {}),
                 ('table_id', '{}'), ('shard_index', {}), ('shard_count', {}), ('last_txid', 0);",
            identity.protocol.format_version(),
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
        let protocol = match version {
            Some(Value::Integer(v)) => Protocol::of_format_version(v),
            _ => None,
        }
        .ok_or_else(|| {
            foreign(&format!(
                "has shard format {version:?}; this build reads formats 1 (two-phase) and 2 (three-phase)"
            ))
        })?;
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
            protocol,
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

    // State read at the start of a transaction.

    pub fn prepared_txids(&self) -> Result<Vec<u64>> {
        let txids: Vec<i64> = self.first_column("SELECT txid FROM imagestore_prepared")?;
        Ok(txids.into_iter().map(|t| t as u64).collect())
    }

    /// Every prepare record this shard holds (in its open transaction or snapshot, if any).
    pub fn prepare_records(&self) -> Result<Vec<PrepareRecord>> {
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT txid, decided_by, pre_committed, shards FROM imagestore_prepared",
            )
            .map_err(self.err())?;
        let rows = stmt
            .query_map([], |r| {
                let shards: String = r.get(3)?;
                Ok(PrepareRecord {
                    txid: r.get::<_, i64>(0)? as u64,
                    decided_by: r.get(1)?,
                    pre_committed: r.get(2)?,
                    participants: shards.split(',').map(|s| s.parse().ok()).collect(),
                })
            })
            .and_then(|rows| rows.collect::<rusqlite::Result<Vec<_>>>());
        rows.map_err(self.err())
    }

    /// Adds the prepare record's columns a shard made by an older build lacks: `decided_by`
    /// (0.2) and `pre_committed`.
    pub fn ensure_protocol_columns(&self) -> Result<()> {
        let columns: Vec<String> =
            self.first_column("SELECT name FROM pragma_table_info('imagestore_prepared')")?;
        for (name, definition) in [
            ("decided_by", "decided_by TEXT"),
            ("pre_committed", "pre_committed INTEGER NOT NULL DEFAULT 0"),
        ] {
            if columns.iter().any(|c| c == name) {
                continue;
            }
            let sql = format!("ALTER TABLE imagestore_prepared ADD COLUMN {definition}");
            match self.conn.execute_batch(&sql) {
                // Another process may have added it meanwhile.
                Err(e) if e.to_string().contains("duplicate column") => {}
                other => other.map_err(self.err())?,
            }
        }
        Ok(())
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

    /// The transaction id kept under `key` ([`LAST_FINALIZED`], [`LAST_ABORTED`]); 0 if none
    /// is (nothing yet, or the file was written by a build that did not keep it).
    pub fn meta_txid(&self, key: &str) -> Result<u64> {
        self.conn
            .prepare_cached("SELECT coalesce(max(value), 0) FROM imagestore_meta WHERE key = ?1")
            .and_then(|mut s| s.query_row([key], |r| r.get::<_, i64>(0)))
            .map(|t| t as u64)
            .map_err(self.err())
    }

    pub fn max_id(&self) -> Result<Option<i64>> {
        self.conn
            .prepare_cached("SELECT max(id) FROM images")
            .and_then(|mut s| s.query_row([], |r| r.get(0)))
            .map_err(self.err())
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
}

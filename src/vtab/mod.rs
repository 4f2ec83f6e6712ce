//! The `imagestore` virtual table: SQLite's callbacks, translated to shards and the coordinator.
//!
//! This folder is the only code (with `lib.rs`) that knows SQLite's virtual-table interface:
//! this file the table's callbacks (which turn SQLite's values into the row writes of
//! `crate::table::write`), `plan` the planner, `cursor` the merge cursor, `module` the
//! registration with the version 2 callbacks. The table itself (its handle, its shard set, its
//! row-write rules) is `crate::table`. Every callback runs inside [`catch_panic`], so no panic
//! crosses the FFI boundary.
//!
//! Columns: `id` (the rowid), `name`, `data`, the derived `format`, `width`, `height`, `bytes`,
//! `hash`, the hidden `shard`, then the user's own columns. See `config` for the arguments.
//!
//! Query plans (`idx_num` bits; arguments in this order): id = (one shard), id lower and upper
//! bounds, hash =, name =, and the order. Every plan returns rows in id order (ascending, or
//! descending when asked) by merging the shards' id-ordered pages, so `ORDER BY id` never sorts.
//! No constraint is omitted: SQLite re-checks each, so a pushed-down filter need only be a
//! superset of the answer.

use std::collections::VecDeque;
use std::ffi::{c_char, c_int, CString};
use std::rc::Rc;

use rusqlite::types::{Value, ValueRef};
use rusqlite::vtab::{
    sqlite3_vtab, sqlite3_vtab_cursor, update_module_with_tx, Context, CreateVTab, Filters,
    IndexConstraintOp, IndexInfo, Inserts, TransactionVTab, UpdateVTab, Updates, VTab,
    VTabConnection, VTabCursor, VTabKind,
};
use rusqlite::{ffi, Connection};

use crate::config::TableConfig;
use crate::error::{catch_panic, type_name, Error, Result};
use crate::files::remove_files;
use crate::placement::shard_of;
use crate::shard::{quote_ident, Lifecycle, ScanFilter};
use crate::table::handle::{
    connected_core, open_core, open_tables, OpenTable, TableCore, NEXT_TABLE_KEY,
};
use crate::table::server_set::{drop_server_tables, drop_unopened_server_tables};
use crate::table::shard_set::{owns, table_config, unusable_own_files};
use crate::table::write::{describe_row, image_bytes, Host, ImageData, OnTakenId, RowUpdate};

mod cursor;
mod module;
mod plan;

use cursor::*;
pub use module::register;
use plan::*;

// Column numbers, as declared by `TableConfig::declaration`.
const COL_ID: c_int = 0;
const COL_NAME: c_int = 1;
const COL_DATA: c_int = 2;
const COL_FORMAT: c_int = 3;
const COL_WIDTH: c_int = 4;
const COL_HEIGHT: c_int = 5;
const COL_BYTES: c_int = 6;
const COL_HASH: c_int = 7;
const COL_SHARD: c_int = 8;
const COL_USER_FIRST: c_int = 9;
const COL_ROWID: c_int = -1;
const DERIVED: [(c_int, &str); 6] = [
    (COL_FORMAT, "format"),
    (COL_WIDTH, "width"),
    (COL_HEIGHT, "height"),
    (COL_BYTES, "bytes"),
    (COL_HASH, "hash"),
    (COL_SHARD, "shard"),
];

// Plan bits.
const PLAN_ID_EQ: c_int = 1;
const PLAN_ID_LOWER: c_int = 2;
const PLAN_ID_LOWER_EXCLUSIVE: c_int = 4;
const PLAN_ID_UPPER: c_int = 8;
const PLAN_ID_UPPER_EXCLUSIVE: c_int = 16;
const PLAN_DESCENDING: c_int = 128;

/// Rows a cursor fetches from a shard at first; doubled on every refill up to the maximum, so
/// that `LIMIT 10` reads little and a full scan reads in large pages.
const PAGE_ROWS_FIRST: usize = 16;
const PAGE_ROWS_MAX: usize = 1024;

/// Assumed rows of a table, for costs (SQLite only compares plans of one table).
const TABLE_ROWS_ESTIMATE: f64 = 1_000_000.0;

impl Drop for ImageTable {
    fn drop(&mut self) {
        open_tables().retain(|t| t.key != self.key);
    }
}

/// The virtual table object SQLite holds.
#[repr(C)]
pub struct ImageTable {
    /// SQLite's part; must come first (the struct is cast to and from `sqlite3_vtab`).
    base: sqlite3_vtab,
    db: *mut ffi::sqlite3,
    /// The same connection as `db`, for the queries a write transaction makes of it (kept
    /// prepared); it does not close the connection, and its statements are finalized when the
    /// table is disconnected, which SQLite does before it closes the connection.
    host: rusqlite::Connection,
    /// The database that holds the table (`main`, `temp`, an attached one's name).
    schema: String,
    /// This table's entry in the connection's open tables.
    key: u64,
    state: TableState,
}

/// An ImageTable is open, or unusable: its shards or journal could not be opened (missing,
/// damaged, in doubt). An unusable table still connects, so that SQLite can DROP it; every
/// other use answers the error that made it unusable.
enum TableState {
    Open(Rc<TableCore>),
    Unusable {
        config: Box<TableConfig>,
        message: String,
        code: c_int,
    },
}

fn utf8<'a>(bytes: &'a [u8], what: &str) -> Result<&'a str> {
    std::str::from_utf8(bytes).map_err(|_| Error::BadArgument(format!("{what} is not valid UTF-8")))
}

impl ImageTable {
    fn open(db: &mut VTabConnection, args: &[&[u8]], create: bool) -> Result<(String, ImageTable)> {
        let schema = utf8(args.get(1).copied().unwrap_or(b"main"), "the schema name")?;
        let table_name = utf8(args.get(2).copied().unwrap_or_default(), "the table name")?;
        let options: Vec<&str> = args[3.min(args.len())..]
            .iter()
            .map(|a| utf8(a, "a table argument"))
            .collect::<Result<_>>()?;
        // Duplicate ids answer SQLITE_CONSTRAINT, so that SQLite applies OR IGNORE / OR ABORT
        // itself; OR REPLACE is done here.
        db.config(rusqlite::vtab::VTabConfig::ConstraintSupport)
            .map_err(|e| Error::Internal(e.to_string()))?;
        // SAFETY: SQLite passes a valid connection handle to xCreate/xConnect.
        let handle = unsafe { db.handle() };
        // SAFETY: the handle outlives the table (SQLite disconnects every table before closing
        // the connection), and a Connection made from a handle never closes it.
        let host = unsafe { rusqlite::Connection::from_handle(handle) }
            .map_err(|e| Error::Internal(e.to_string()))?;
        let config = table_config(handle, schema, table_name, &options)?;
        let declaration = config.declaration();
        let connected = (!create)
            .then(|| connected_core(handle, schema, table_name, &config))
            .flatten();
        let opened = match connected {
            Some(core) => Ok(core),
            None => open_core(config, create).map(|core| {
                Rc::new(TableCore {
                    host_db: handle,
                    ..core
                })
            }),
        };
        let state = match opened {
            Ok(core) => TableState::Open(core),
            Err((e, _)) if create => return Err(e),
            Err((e, config)) => TableState::Unusable {
                config,
                code: e.sqlite_code(),
                message: e.to_string(),
            },
        };
        let key = NEXT_TABLE_KEY.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        open_tables().push(OpenTable {
            db: handle as usize,
            schema: schema.to_string(),
            name: table_name.to_string(),
            key,
            core: match &state {
                TableState::Open(core) => Ok(Rc::as_ptr(core)),
                TableState::Unusable { code, message, .. } => Err((*code, message.clone())),
            },
        });
        Ok((
            declaration,
            ImageTable {
                base: sqlite3_vtab::default(),
                db: handle,
                host,
                schema: schema.to_string(),
                key,
                state,
            },
        ))
    }

    /// The open table, or the error that makes it unusable.
    fn core(&self) -> Result<&Rc<TableCore>> {
        match &self.state {
            TableState::Open(core) => Ok(core),
            TableState::Unusable { message, code, .. } => Err(Error::Unusable {
                message: message.clone(),
                code: *code,
            }),
        }
    }

    /// The table's arguments, usable or not.
    fn config(&self) -> &TableConfig {
        match &self.state {
            TableState::Open(core) => &core.config,
            TableState::Unusable { config, .. } => config,
        }
    }

    /// What the statement running this xUpdate does with a taken id: its conflict clause, as
    /// `sqlite3_vtab_on_conflict` says.
    fn on_taken_id(&self) -> OnTakenId {
        // SAFETY: self.db is the connection running this xUpdate.
        match unsafe { ffi::sqlite3_vtab_on_conflict(self.db) } {
            ffi::SQLITE_REPLACE => OnTakenId::Replace,
            _ => OnTakenId::Refuse,
        }
    }

    /// The connection and database this table's writes run on.
    fn host(&self) -> Host<'_> {
        Host {
            db: self.db,
            conn: &self.host,
            schema: &self.schema,
        }
    }

    fn user_values(&self, args: &[ValueRef<'_>]) -> Result<Vec<Value>> {
        (0..self.core()?.config.user_columns.len())
            .map(|i| {
                args.get(COL_USER_FIRST as usize + i)
                    .map_or(Ok(Value::Null), |v| owned(*v))
            })
            .collect()
    }
}

/// An id as SQLite takes a value for an INTEGER PRIMARY KEY: an integer, or a real or text that
/// is one exactly (`7.0`, `'7'`, `' 7 '`); anything else is a type mismatch.
fn integer_id(value: ValueRef<'_>, what: &str) -> Result<Option<i64>> {
    let exact =
        |r: f64| (r.is_finite() && r.fract() == 0.0 && r.abs() < 9.0e18).then_some(r as i64);
    let id = match value {
        ValueRef::Null => return Ok(None),
        ValueRef::Integer(i) => Some(i),
        ValueRef::Real(r) => exact(r),
        ValueRef::Text(t) => std::str::from_utf8(t).ok().and_then(|t| {
            let t = t.trim_ascii();
            t.parse::<i64>()
                .ok()
                .or_else(|| t.parse::<f64>().ok().and_then(exact))
        }),
        ValueRef::Blob(_) => None,
    };
    id.map(Some).ok_or_else(|| {
        Error::WrongType(format!(
            "{what} must be an integer, not {}",
            type_name(value)
        ))
    })
}

/// An owned copy of a value SQLite passed in.
fn owned(value: ValueRef<'_>) -> Result<Value> {
    Value::try_from(value).map_err(|e| Error::WrongType(e.to_string()))
}

fn name_value(value: ValueRef<'_>) -> Result<Value> {
    match value {
        ValueRef::Blob(_) => Err(Error::WrongType("name must be TEXT, not a BLOB".into())),
        other => owned(other),
    }
}

/// The value given for `data`, as the row-write rules take it.
fn image_data(value: ValueRef<'_>) -> ImageData<'_> {
    match value {
        ValueRef::Blob(b) => Ok(b),
        other => Err(type_name(other)),
    }
}

unsafe impl<'vtab> VTab<'vtab> for ImageTable {
    type Aux = ();
    type Cursor = ImageCursor;

    fn connect(
        db: &mut VTabConnection,
        _aux: Option<&()>,
        args: &[&[u8]],
    ) -> rusqlite::Result<(String, Self)> {
        Ok(catch_panic(|| ImageTable::open(db, args, false))?)
    }

    fn best_index(&self, info: &mut IndexInfo) -> rusqlite::Result<()> {
        Ok(catch_panic(|| {
            // Planned from the arguments alone, so that an unusable table's query fails when it
            // runs, with its own error code, not at prepare time as SQLITE_ERROR.
            plan(info, self.config());
            Ok(())
        })?)
    }

    fn open(&'vtab mut self) -> rusqlite::Result<ImageCursor> {
        let core = self.core()?;
        core.open_cursors.set(core.open_cursors.get() + 1);
        Ok(ImageCursor {
            base: sqlite3_vtab_cursor::default(),
            core: Rc::clone(core),
            filter: ScanFilter::default(),
            lanes: Vec::new(),
            current: None,
            version: 0,
            noted: std::cell::Cell::new(None),
        })
    }
}

impl CreateVTab<'_> for ImageTable {
    const KIND: VTabKind = VTabKind::Default;

    fn create(
        db: &mut VTabConnection,
        _aux: Option<&()>,
        args: &[&[u8]],
    ) -> rusqlite::Result<(String, Self)> {
        Ok(catch_panic(|| ImageTable::open(db, args, true))?)
    }

    /// DROP TABLE: marks the table's files dropping, and deletes them (shard files, journal,
    /// lock files) once the host has committed the DROP (see `after_commit`). Files this table
    /// did not create stay: a database's schema can name any file.
    fn destroy(&self) -> rusqlite::Result<()> {
        Ok(catch_panic(|| {
            // SAFETY: self.db is the connection running this DROP TABLE.
            if unsafe { ffi::sqlite3_get_autocommit(self.db) } == 0 {
                return Err(Error::InTransaction(
                    "DROP TABLE deletes the shard files and cannot be rolled back".into(),
                ));
            }
            let (files, writer) = match &self.state {
                // A table on servers goes from them now, so that an error (a server down,
                // another host reading) fails the DROP; should the host's commit then fail,
                // the table is left unusable and a second DROP removes it from the schema.
                TableState::Open(core) if !core.config.servers.is_empty() => {
                    let _writer = core.coordinator.borrow().lock_writer()?;
                    let config = &core.config;
                    return drop_server_tables(
                        &config.servers,
                        &config.table_name,
                        config.busy_timeout_ms,
                    );
                }
                TableState::Unusable { config, .. } if !config.servers.is_empty() => {
                    return drop_unopened_server_tables(config);
                }
                TableState::Open(core) => {
                    // No writer of this table, in any process, is mid-commit while its files
                    // go; the lock is held until the DROP has committed or rolled back.
                    let writer = core.coordinator.borrow().lock_writer()?;
                    if !self.owns_files()? {
                        return Ok(());
                    }
                    for shard in core.shards.borrow().iter() {
                        shard
                            .local("DROP TABLE")?
                            .set_lifecycle(Lifecycle::Dropping)?;
                    }
                    (core.config.files(), writer)
                }
                TableState::Unusable { config, .. } => match unusable_own_files(config)? {
                    Some(found) => found,
                    None => return Ok(()),
                },
            };
            self.after_drop_commits(move || {
                // Best effort: files left here carry the dropping mark, which the next CREATE
                // of this table recognises and removes.
                let _ = remove_files(&files);
                drop(writer);
            })
        })?)
    }
}

impl ImageTable {
    /// Runs `remove` once the host has committed this DROP; if it rolls back, the table is
    /// back in the schema and its next open clears any dropping mark.
    fn after_drop_commits(&self, remove: impl FnOnce() + Send + 'static) -> Result<()> {
        // SAFETY: self.db is the connection running this DROP; the Connection made from it is
        // used within this call and dropped without closing it.
        let host = unsafe { Connection::from_handle(self.db) }
            .map_err(|e| Error::Internal(e.to_string()))?;
        crate::after_commit::queue(
            &host,
            crate::after_commit::Action {
                on_commit: Box::new(remove),
                on_rollback: Box::new(|| {}),
            },
        )
    }

    /// Whether this table owns every one of its shard files (see [`owns`]).
    fn owns_files(&self) -> Result<bool> {
        let core = self.core()?;
        for shard in core.shards.borrow().iter() {
            if !owns(&core.config, shard.local("DROP TABLE")?.owner()?.as_ref()) {
                return Ok(false);
            }
        }
        Ok(true)
    }
}

impl UpdateVTab<'_> for ImageTable {
    fn delete(&mut self, arg: ValueRef<'_>) -> rusqlite::Result<()> {
        Ok(catch_panic(|| match integer_id(arg, "id")? {
            Some(id) => self.core()?.delete_row(&self.host(), id),
            None => Ok(()),
        })?)
    }

    fn insert(&mut self, args: &Inserts<'_>) -> rusqlite::Result<i64> {
        Ok(catch_panic(|| {
            let values: Vec<ValueRef<'_>> = args.iter().skip(2).collect();
            let rowid = integer_id(args.iter().nth(1).unwrap_or(ValueRef::Null), "rowid")?;
            let column_id = integer_id(values[COL_ID as usize], "id")?;
            for (col, name) in DERIVED {
                if values[col as usize] != ValueRef::Null {
                    return Err(Error::DerivedColumn(name));
                }
            }
            let name = name_value(values[COL_NAME as usize])?;
            let core = self.core()?;
            let (id, assigned) = match (column_id, rowid) {
                (Some(a), Some(b)) if a != b => {
                    return Err(Error::BadArgument(format!(
                        "id {a} and rowid {b} disagree; give one of them"
                    )))
                }
                (Some(id), _) | (None, Some(id)) => (id, false),
                (None, None) => (core.assign_id(&self.host())?, true),
            };
            let data = image_data(values[COL_DATA as usize]);
            let checked = image_bytes(data, &describe_row(Some(id), &name)).and_then(|data| {
                let row = core.new_row(id, name, data, self.user_values(&values)?)?;
                Ok((row, data))
            });
            let (row, data) = match checked {
                Ok(checked) => checked,
                Err(e) => {
                    // Refused before anything was written: the next row gets the id.
                    if assigned {
                        core.row_ids.borrow_mut().give_back(id);
                    }
                    return Err(e);
                }
            };
            core.insert_row(&self.host(), &row, data, self.on_taken_id())?;
            Ok(id)
        })?)
    }

    fn update(&mut self, args: &Updates<'_>) -> rusqlite::Result<()> {
        Ok(catch_panic(|| {
            let all: Vec<ValueRef<'_>> = args.iter().collect();
            let changed = |col: c_int| !args.no_change(2 + col as usize);
            let old_id = integer_id(all[0], "rowid")?
                .ok_or_else(|| Error::Internal("UPDATE without a rowid".into()))?;
            for (col, name) in DERIVED {
                if changed(col) {
                    return Err(Error::DerivedColumn(name));
                }
            }
            let values = &all[2..];
            let new_id = if changed(COL_ID) {
                integer_id(values[COL_ID as usize], "id")?
            } else {
                integer_id(all[1], "rowid")?
            }
            .ok_or_else(|| Error::WrongType("id cannot be set to NULL".into()))?;
            let name = match changed(COL_NAME) {
                true => Some(name_value(values[COL_NAME as usize])?),
                false => None,
            };
            let data = changed(COL_DATA).then(|| image_data(values[COL_DATA as usize]));
            let core = self.core()?;
            let user = (0..core.config.user_columns.len())
                .map(|i| {
                    let col = COL_USER_FIRST + i as c_int;
                    changed(col)
                        .then(|| owned(values[col as usize]))
                        .transpose()
                })
                .collect::<Result<_>>()?;
            let update = RowUpdate {
                old_id,
                new_id,
                name,
                data,
                user,
            };
            core.update_row(&self.host(), update, self.on_taken_id())
        })?)
    }
}

impl TransactionVTab<'_> for ImageTable {
    fn begin(&mut self) -> rusqlite::Result<()> {
        Ok(catch_panic(|| self.core()?.begin_write(&self.host()))?)
    }

    fn sync(&mut self) -> rusqlite::Result<()> {
        Ok(catch_panic(|| self.core()?.decide(&self.host()))?)
    }

    fn commit(&mut self) -> rusqlite::Result<()> {
        Ok(catch_panic(|| {
            let Ok(core) = self.core() else {
                return Ok(()); // an unusable table wrote nothing
            };
            let mut coordinator = core.coordinator.borrow_mut();
            coordinator.commit(&mut core.shards.borrow_mut());
            core.transaction_finished();
            core.creation_committed();
            core.resume_open_cursors(&mut coordinator)
        })?)
    }

    fn rollback(&mut self) -> rusqlite::Result<()> {
        Ok(catch_panic(|| {
            let Ok(core) = self.core() else {
                return Ok(());
            };
            let mut coordinator = core.coordinator.borrow_mut();
            coordinator.rollback(&mut core.shards.borrow_mut());
            core.transaction_finished();
            core.creation_rolled_back();
            core.resume_open_cursors(&mut coordinator)
        })?)
    }
}

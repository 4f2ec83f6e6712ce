//! The table handle: one table as one connection has it open (its shards, coordinator and
//! per-transaction state), and each connection's open tables, through which the SQL functions
//! given a table name reach it.

use std::cell::{Cell, RefCell};
use std::ffi::c_int;
use std::rc::Rc;

use rusqlite::ffi;

use super::server_set::{drop_server_tables, open_server_shards, OpenedTable};
use super::shard_set::{open_shards, restore_new_table, settle_lifecycle};
use super::TableShard;
use crate::backup::restore::{restore_into_servers, trusted_manifest};
use crate::commit::control::Held;
use crate::commit::control::LocalControl;
use crate::commit::Coordinator;
use crate::config::TableConfig;
use crate::error::{Error, Result};
use crate::files::remove_files;
use crate::row_ids::RowIds;
use crate::shard::Lifecycle;

/// One table as opened by one connection.
pub struct TableCore {
    pub(crate) config: TableConfig,
    pub(crate) shards: RefCell<Vec<TableShard>>,
    pub(crate) coordinator: RefCell<Coordinator>,
    /// Ids for rows inserted without one, in the open write transaction.
    pub(crate) row_ids: RefCell<RowIds>,
    pub(crate) open_cursors: Cell<usize>,
    /// While the CREATE that made this table's files has not committed: the writer lock, held
    /// so that no other database takes the files for leftovers meanwhile.
    pub(crate) creation: RefCell<Option<Held>>,
    /// The host connection when this table's write transaction began (see `host::also_wrote`).
    pub(crate) host_at_begin: RefCell<crate::host::HostAtBegin>,
    /// The host connection.
    pub(crate) host_db: *mut ffi::sqlite3,
    /// Raised by every write and every new snapshot: a cursor that read a page at another
    /// version reads it again from where it is, since the rows (and the places of their images)
    /// may have changed under it.
    pub(crate) data_version: Cell<u64>,
    /// The rows an UPDATE's scan read without some of their columns (SQLite's "no change"), by
    /// id, with what identifies their content: the row-write rules refuse new values that were
    /// computed from a row the same statement has since overwritten (`require_as_scanned`).
    /// Cleared when the write transaction ends.
    pub(crate) scanned: RefCell<std::collections::HashMap<i64, RowContent>>,
}

/// What identifies a stored row's content: where its image is, the image's hash, and the
/// columns an UPDATE can set.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct RowContent {
    pub(crate) blob_id: i64,
    pub(crate) hash: String,
    pub(crate) name: rusqlite::types::Value,
    pub(crate) user: Vec<rusqlite::types::Value>,
}

impl RowContent {
    pub(crate) fn of(row: &crate::shard::StoredRow) -> RowContent {
        RowContent {
            blob_id: row.blob_id,
            hash: row.hash.clone(),
            name: row.name.clone(),
            user: row.user.clone(),
        }
    }
}

impl TableCore {
    /// The CREATE that made this table's files has committed: the files are the table's.
    pub(crate) fn creation_committed(&self) {
        if self.creation.borrow_mut().take().is_some() {
            for shard in self.shards.borrow().iter() {
                if let TableShard::Local(shard) = shard {
                    // Best effort: a mark left here is cleared by the table's next open.
                    let _ = shard.set_lifecycle(Lifecycle::Live);
                }
            }
        }
    }

    /// The CREATE that made this table's files rolled back: close them and remove them, so that
    /// nothing of it blocks a later CREATE. SQLite disconnects the table next.
    pub(crate) fn creation_rolled_back(&self) {
        let Some(writer) = self.creation.borrow_mut().take() else {
            return;
        };
        // Closed first, so that no later close of these connections touches files of the
        // same names made by a later CREATE.
        drop(std::mem::take(&mut *self.shards.borrow_mut()));
        // Best effort: what is left is named by the next CREATE's error.
        let _ = drop_server_tables(
            &self.config.servers,
            &self.config.table_name,
            self.config.busy_timeout_ms,
        );
        // Best effort: files left here carry the creating mark (see `are_leftovers`).
        let _ = remove_files(&self.config.files());
        drop(writer);
    }

    // The snapshot rule, in one place: a query reads from one consistent snapshot of every
    // shard, opened by its first read (`begin_read`) and kept while any cursor of the connection
    // is open (`end_read_if_unused`); a write transaction replaces it, and when that ends, open
    // cursors get a fresh one (`resume_open_cursors`).

    /// Runs `body` on one consistent snapshot of every shard of the table (the SQL functions
    /// that read a whole table).
    pub(crate) fn with_snapshot<T>(&self, body: impl FnOnce(&TableCore) -> Result<T>) -> Result<T> {
        self.begin_read()?;
        let result = body(self);
        self.end_read_if_unused();
        result
    }

    /// The rows may have changed: cursors read their pages again (see `data_version`).
    pub(crate) fn data_changed(&self) {
        self.data_version
            .set(self.data_version.get().wrapping_add(1));
    }

    /// A write transaction ended: what it kept about its rows goes.
    pub(crate) fn transaction_finished(&self) {
        self.row_ids.borrow_mut().forget();
        self.scanned.borrow_mut().clear();
    }

    /// Ends a query's snapshot once no cursor of this connection reads from it (a transaction's
    /// snapshot stays until the transaction ends).
    pub(crate) fn end_read_if_unused(&self) {
        if self.open_cursors.get() > 0 {
            return;
        }
        if let (Ok(mut coordinator), Ok(mut shards)) = (
            self.coordinator.try_borrow_mut(),
            self.shards.try_borrow_mut(),
        ) {
            coordinator.end_read(&mut shards);
        }
    }

    /// After a write transaction ends, cursors this connection still has open (a query being
    /// stepped while the same connection wrote) go on reading from a fresh consistent snapshot,
    /// never from the shards unguarded.
    pub(crate) fn resume_open_cursors(&self, coordinator: &mut Coordinator) -> Result<()> {
        self.data_changed();
        if self.open_cursors.get() > 0 {
            coordinator.begin_read(&mut self.shards.borrow_mut(), false)?;
        }
        Ok(())
    }

    /// Opens the snapshot a query reads. Inside an explicit transaction that is the
    /// transaction's, kept for all its reads until it ends, as an ordinary WAL table's is (see
    /// `read_transaction`); else the query's own.
    pub(crate) fn begin_read(&self) -> Result<()> {
        let whole_transaction = crate::read_transaction::is_explicit(self.host_db);
        if whole_transaction && self.coordinator.borrow().needs_transaction_read() {
            crate::read_transaction::join(self.host_db)?;
        }
        self.coordinator
            .borrow_mut()
            .begin_read(&mut self.shards.borrow_mut(), whole_transaction)
    }

    /// The host's transaction ended (see `read_transaction`).
    pub(crate) fn transaction_ended(&self) {
        if let (Ok(mut coordinator), Ok(mut shards)) = (
            self.coordinator.try_borrow_mut(),
            self.shards.try_borrow_mut(),
        ) {
            coordinator.end_transaction_read(&mut shards, self.open_cursors.get() > 0);
        }
    }
}

impl crate::backup::ConsistentRead for TableCore {
    fn config(&self) -> &TableConfig {
        &self.config
    }

    fn read_shards<T>(&self, body: impl FnOnce(&[TableShard]) -> Result<T>) -> Result<T> {
        self.with_snapshot(|core| body(&core.shards.borrow()))
    }
}

/// The host transaction on connection `db` ended: every table it has open lets its
/// transaction's snapshot go.
pub(crate) fn transaction_ended(db: *mut ffi::sqlite3) {
    for core in open_cores(db) {
        // SAFETY: see `OpenTable`: SQLite calls this (xCommit, xRollback of the connection's
        // transaction) on connection `db`, and the tables in the list are connected.
        unsafe { &*core }.transaction_ended();
    }
}

/// The tables each connection has open, so that SQL functions given a table name can reach it.
pub(crate) struct OpenTable {
    pub(crate) db: usize,
    pub(crate) schema: String,
    pub(crate) name: String,
    /// The `ImageTable` that registered it (`ImageTable::key`).
    pub(crate) key: u64,
    /// The open table, or the code and message that make it unusable.
    pub(crate) core: std::result::Result<*const TableCore, (c_int, String)>,
}

/// The next `ImageTable::key`.
pub(crate) static NEXT_TABLE_KEY: std::sync::atomic::AtomicU64 =
    std::sync::atomic::AtomicU64::new(1);

// SAFETY: the pointer is only dereferenced on a call SQLite makes on the connection `db` (which
// SQLite serializes), while the table is connected (an entry is removed when the `ImageTable`
// that registered it, holding an `Rc<TableCore>` to it, is dropped).
unsafe impl Send for OpenTable {}

pub(crate) static OPEN_TABLES: std::sync::Mutex<Vec<OpenTable>> = std::sync::Mutex::new(Vec::new());

pub(crate) fn open_tables() -> std::sync::MutexGuard<'static, Vec<OpenTable>> {
    OPEN_TABLES
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The entry of table `table` of database `schema` in connection `db`'s open tables: the newest,
/// since an older instance of the same name may wait to be disconnected.
pub(crate) fn registered(
    db: *mut ffi::sqlite3,
    schema: &str,
    table: &str,
) -> Option<std::result::Result<*const TableCore, (c_int, String)>> {
    open_tables()
        .iter()
        .rev()
        .find(|t| {
            t.db == db as usize
                && t.name.eq_ignore_ascii_case(table)
                && t.schema.eq_ignore_ascii_case(schema)
        })
        .map(|t| t.core.clone())
}

/// The usable tables connection `db` has open (a table shared by two instances, twice).
pub(crate) fn open_cores(db: *mut ffi::sqlite3) -> Vec<*const TableCore> {
    open_tables()
        .iter()
        .filter(|t| t.db == db as usize)
        .filter_map(|t| t.core.as_ref().ok().copied())
        .collect()
}

/// Runs `body` on table `table` of database `schema` (as `table_name` resolves them), connected
/// on connection `db`.
pub fn with_open_table<T>(
    db: *mut ffi::sqlite3,
    schema: &str,
    table: &str,
    body: impl FnOnce(&TableCore) -> Result<T>,
) -> Result<T> {
    let core = registered(db, schema, table)
        .ok_or_else(|| {
            Error::BadArgument(format!(
                "no imagestore table named {schema}.{table} in this connection"
            ))
        })?
        .map_err(|(code, message)| Error::Unusable { message, code })?;
    // SAFETY: see `OpenTable`: we are inside a call on connection `db` and the table is connected.
    body(unsafe { &*core })
}

/// The core of this table that connection `db` already has open and is using in a transaction
/// (writing, or keeping a read snapshot), if any. SQLite connects a table again after it resets
/// its schemas (say a schema change rolled back by `ROLLBACK TO`) while the earlier instance is
/// still in the transaction, holding the writer lock: both must share one coordinator and one
/// set of shard connections. An idle one is never shared: the table may have been dropped and
/// made again, by another connection, under the same name and file names.
pub(crate) fn connected_core(
    db: *mut ffi::sqlite3,
    schema: &str,
    table: &str,
    config: &TableConfig,
) -> Option<Rc<TableCore>> {
    let core = registered(db, schema, table)?.ok()?;
    // SAFETY: `core` is `Rc::as_ptr` of the `Rc<TableCore>` a connected `ImageTable` holds (its
    // entry is removed when it drops), so the allocation is live; raising the count first makes
    // `from_raw` give a new owner without taking the existing one's.
    let core = unsafe {
        Rc::increment_strong_count(core);
        Rc::from_raw(core)
    };
    let same_files = core.config.shard_paths == config.shard_paths
        && core.config.servers == config.servers
        && core.config.journal_path == config.journal_path;
    let in_use = core.coordinator.try_borrow().map_or(true, |c| !c.is_idle());
    (same_files && in_use).then_some(core)
}

/// Opens (or, for a CREATE, makes) the table's shards and coordinator. On an error, gives the
/// configuration back with it.
pub(crate) fn open_core(
    config: TableConfig,
    create: bool,
) -> std::result::Result<TableCore, (Error, Box<TableConfig>)> {
    let opened = (|| {
        // A restore into servers: the backup is checked before anything is made.
        let server_backup = match (create, &config.restore_from, config.servers.is_empty()) {
            (true, Some(dir), false) => Some((dir, trusted_manifest(dir, &config)?)),
            _ => None,
        };
        let OpenedTable {
            table_id,
            mut shards,
            control,
            created,
        } = match config.servers.is_empty() {
            true => open_local_shards(&config, create)?,
            false => open_server_shards(&config, create)?,
        };
        let mut coordinator = Coordinator::with_control(
            &config,
            table_id,
            control,
            &mut shards,
            crate::host::lookup,
        )?;
        let creation = if created {
            Some(coordinator.lock_writer()?)
        } else {
            settle_lifecycle(&config, &shards, &coordinator)?;
            None
        };
        // Under the creation's writer lock: no other host writes the new table meanwhile.
        if let Some((dir, manifest)) = server_backup {
            let restored =
                restore_into_servers(dir, &manifest, &config, &mut shards, &mut coordinator);
            if let Err(e) = restored {
                if created {
                    drop((creation, shards, coordinator));
                    // Best effort: what is left is named by the next CREATE's error.
                    let _ = drop_server_tables(
                        &config.servers,
                        &config.table_name,
                        config.busy_timeout_ms,
                    );
                }
                return Err(e);
            }
        }
        Ok((shards, coordinator, creation))
    })();
    match opened {
        Ok((shards, coordinator, creation)) => Ok(TableCore {
            config,
            shards: RefCell::new(shards),
            coordinator: RefCell::new(coordinator),
            open_cursors: Cell::new(0),
            creation: RefCell::new(creation),
            host_at_begin: RefCell::default(),
            row_ids: RefCell::default(),
            host_db: std::ptr::null_mut(),
            data_version: Cell::new(0),
            scanned: RefCell::default(),
        }),
        Err(e) => Err((e, Box::new(config))),
    }
}

/// Opens (or makes) a table's shard files and its journal, and fills a new table from its
/// backup (`restore_from`), which is checked before any file is made.
fn open_local_shards(config: &TableConfig, create: bool) -> Result<OpenedTable> {
    let backup = match (create, &config.restore_from) {
        (true, Some(dir)) => Some((dir, trusted_manifest(dir, config)?)),
        _ => None,
    };
    let (table_id, mut shards, created) = open_shards(config, create)?;
    if let Some((dir, manifest)) = backup {
        shards = restore_new_table(dir, &manifest, config, shards, created)?;
    }
    let control = LocalControl::open(config, table_id, &mut shards, create)?;
    Ok(OpenedTable {
        table_id,
        shards: shards.into_iter().map(TableShard::Local).collect(),
        control: Box::new(control),
        created,
    })
}

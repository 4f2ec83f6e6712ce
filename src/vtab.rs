//! The `imagestore` virtual table: SQLite's callbacks, translated to shards and the coordinator.
//!
//! This is the only module (with `lib.rs`) that knows SQLite's virtual-table interface. Every
//! callback runs inside [`catch_panic`], so no panic crosses the FFI boundary.
//!
//! Columns: `id` (the rowid), `name`, `data`, the derived `format`, `width`, `height`, `bytes`,
//! `hash`, the hidden `shard`, then the user's own columns. See `config` for the arguments.
//!
//! Query plans (`idx_num` bits; arguments in this order): id = (one shard), id lower and upper
//! bounds, hash =, name =, and the order. Every plan returns rows in id order (ascending, or
//! descending when asked) by merging the shards' id-ordered pages, so `ORDER BY id` never sorts.
//! No constraint is omitted: SQLite re-checks each, so a pushed-down filter need only be a
//! superset of the answer.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::ffi::{c_char, c_int, CStr, CString};
use std::path::{Path, PathBuf};
use std::rc::Rc;

use rusqlite::types::{Value, ValueRef};
use rusqlite::vtab::{
    sqlite3_vtab, sqlite3_vtab_cursor, update_module_with_tx, Context, CreateVTab, Filters,
    IndexConstraintOp, IndexInfo, Inserts, TransactionVTab, UpdateVTab, Updates, VTab,
    VTabConnection, VTabCursor, VTabKind,
};
use rusqlite::{ffi, Connection};

use crate::commit::locks::{LockFile, LockGuard};
use crate::commit::Coordinator;
use crate::config::{HostDatabase, Owner, TableConfig};
use crate::durable::remove_files;
use crate::error::{catch_panic, type_name, Error, Result};
use crate::journal::TableId;
use crate::placement::shard_of;
use crate::probe::{probe, ProbeError};
use crate::row_ids::RowIds;
use crate::shard::{quote_ident, Lifecycle, NewRow, ScanFilter, Shard, ShardIdentity, StoredRow};

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

/// One table as opened by one connection.
pub struct TableCore {
    pub(crate) config: TableConfig,
    pub(crate) shards: RefCell<Vec<Shard>>,
    pub(crate) coordinator: RefCell<Coordinator>,
    /// Ids for rows inserted without one, in the open write transaction.
    row_ids: RefCell<RowIds>,
    pub(crate) open_cursors: Cell<usize>,
    /// While the CREATE that made this table's files has not committed: the writer lock, held
    /// so that no other database takes the files for leftovers meanwhile.
    creation: RefCell<Option<LockGuard>>,
    /// The host connection when this table's write transaction began (see `host::also_wrote`).
    host_at_begin: RefCell<crate::host::HostAtBegin>,
    /// The host connection.
    host_db: *mut ffi::sqlite3,
}

impl TableCore {
    /// The CREATE that made this table's files has committed: the files are the table's.
    fn creation_committed(&self) {
        if self.creation.borrow_mut().take().is_some() {
            for shard in self.shards.borrow().iter() {
                // Best effort: a mark left here is cleared by the table's next open.
                let _ = shard.set_lifecycle(Lifecycle::Live);
            }
        }
    }

    /// The CREATE that made this table's files rolled back: close them and remove them, so that
    /// nothing of it blocks a later CREATE. SQLite disconnects the table next.
    fn creation_rolled_back(&self) {
        let Some(writer) = self.creation.borrow_mut().take() else {
            return;
        };
        // Closed first, so that no later close of these connections touches files of the
        // same names made by a later CREATE.
        drop(std::mem::take(&mut *self.shards.borrow_mut()));
        // Best effort: files left here carry the creating mark (see `are_leftovers`).
        let _ = remove_files(&self.config.files());
        drop(writer);
    }

    /// After a write transaction ends, cursors this connection still has open (a query being
    /// stepped while the same connection wrote) go on reading from a fresh consistent snapshot,
    /// never from the shards unguarded.
    fn resume_open_cursors(&self, coordinator: &mut Coordinator) -> Result<()> {
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
    fn transaction_ended(&self) {
        if let (Ok(mut coordinator), Ok(mut shards)) = (
            self.coordinator.try_borrow_mut(),
            self.shards.try_borrow_mut(),
        ) {
            coordinator.end_transaction_read(&mut shards, self.open_cursors.get() > 0);
        }
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
struct OpenTable {
    db: usize,
    schema: String,
    name: String,
    /// The `ImageTable` that registered it (`ImageTable::key`).
    key: u64,
    /// The open table, or the code and message that make it unusable.
    core: std::result::Result<*const TableCore, (c_int, String)>,
}

/// The next `ImageTable::key`.
static NEXT_TABLE_KEY: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

// SAFETY: the pointer is only dereferenced on a call SQLite makes on the connection `db` (which
// SQLite serializes), while the table is connected (an entry is removed when the `ImageTable`
// that registered it, holding an `Rc<TableCore>` to it, is dropped).
unsafe impl Send for OpenTable {}

static OPEN_TABLES: std::sync::Mutex<Vec<OpenTable>> = std::sync::Mutex::new(Vec::new());

fn open_tables() -> std::sync::MutexGuard<'static, Vec<OpenTable>> {
    OPEN_TABLES
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The entry of table `table` of database `schema` in connection `db`'s open tables: the newest,
/// since an older instance of the same name may wait to be disconnected.
fn registered(
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
fn open_cores(db: *mut ffi::sqlite3) -> Vec<*const TableCore> {
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
fn connected_core(
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
        && core.config.journal_path == config.journal_path;
    let in_use = core.coordinator.try_borrow().map_or(true, |c| !c.is_idle());
    (same_files && in_use).then_some(core)
}

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

/// A fresh table identity: unique across machines and time for all practical purposes.
fn new_table_id(config: &TableConfig) -> TableId {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = blake3::Hasher::new();
    let random = std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    hasher.update(&random.to_le_bytes());
    hasher.update(&now.as_nanos().to_le_bytes());
    hasher.update(&std::process::id().to_le_bytes());
    hasher.update(config.journal_path.to_string_lossy().as_bytes());
    let mut id = [0u8; 16];
    id.copy_from_slice(&hasher.finalize().as_bytes()[..16]);
    id
}

/// Opens every shard of the table. A CREATE (`create`) makes new files, after removing what
/// this table's own CREATE or DROP left unfinished; it takes existing files only when they are
/// a live table's and the CREATE names them (`shards='a.db,...'`), to share them. Returns the
/// table's identity, its shards, and whether they were made now.
pub(crate) fn open_shards(
    config: &TableConfig,
    create: bool,
) -> Result<(TableId, Vec<Shard>, bool)> {
    let existing: Vec<&Path> = config
        .shard_paths
        .iter()
        .filter(|p| std::fs::symlink_metadata(p).is_ok())
        .map(|p| p.as_path())
        .collect();
    if create && !existing.is_empty() && are_leftovers(config, &existing) {
        // The creator or dropper holds the writer lock until its statement has committed or
        // rolled back: if it is free, nobody is making or removing these files any more.
        let lock = LockFile::open(&config.lock_path)?;
        if let Ok(_writer) = lock.exclusive("writer lock", 0) {
            if are_leftovers(config, &existing) {
                remove_files(&config.files())?;
                return create_shards(config).map(|(id, shards)| (id, shards, true));
            }
        }
    }
    if create && existing.is_empty() {
        return create_shards(config).map(|(id, shards)| (id, shards, true));
    }
    if create && (config.derived_paths || existing.len() < config.shard_paths.len()) {
        return Err(Error::BadArgument(format!(
            "shard files {} already exist{}. A new table never takes over files it did not make: drop the table they belong to, delete them, or name other files with shards='...'",
            existing.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", "),
            owner_of(existing[0]).map_or(String::new(), |o| format!(" and belong to {o}"))
        )));
    }
    let (table_id, shards) = open_existing_shards(config)?;
    Ok((table_id, shards, false))
}

/// Makes every shard file of a new table; on an error, removes the files made so far. Each
/// file is made whole under a staging name and only then linked under its own, so that a CREATE
/// killed part-way leaves, under a shard's name, either nothing or a shard carrying this
/// table's creating mark (which the next CREATE of the table removes).
fn create_shards(config: &TableConfig) -> Result<(TableId, Vec<Shard>)> {
    let table_id = new_table_id(config);
    let count = config.shard_paths.len();
    let mut shards = Vec::with_capacity(count);
    for (shard_index, path) in config.shard_paths.iter().enumerate() {
        let identity = ShardIdentity {
            table_id,
            shard_index,
            shard_count: count,
        };
        match create_shard(config, path, &identity) {
            Ok(shard) => shards.push(shard),
            Err(e) => {
                drop(shards);
                let mine: Vec<PathBuf> = config.shard_paths[..=shard_index]
                    .iter()
                    .flat_map(|p| crate::durable::with_sqlite_files(p))
                    .collect();
                // Best effort: a file left behind carries this table's creating mark.
                let _ = remove_files(&mine);
                return Err(e);
            }
        }
    }
    Ok((table_id, shards))
}

/// Makes one shard file: written and synced under `<path>.creating`, then linked as `path`
/// (never replacing a file there) and reopened.
fn create_shard(config: &TableConfig, path: &Path, identity: &ShardIdentity) -> Result<Shard> {
    let staging = crate::config::with_suffix(path, ".creating");
    remove_files(&crate::durable::with_sqlite_files(&staging))?;
    let shard = Shard::open(&staging, true, &config.user_columns, config.busy_timeout_ms)?;
    let made = shard
        .initialize(
            identity,
            &config.owner,
            &config.user_columns,
            config.restore_from.as_deref(),
        )
        .and_then(|()| shard.ensure_indexes(&config.indexes))
        .and_then(|()| shard.checkpoint());
    drop(shard);
    let linked = made.and_then(|()| {
        std::fs::hard_link(&staging, path).map_err(Error::file_io(path))?;
        remove_files(std::slice::from_ref(&staging))?;
        crate::durable::sync_dir(path.parent().unwrap_or(Path::new(".")))
    });
    if let Err(e) = linked {
        let _ = remove_files(&crate::durable::with_sqlite_files(&staging));
        return Err(e);
    }
    Shard::open(path, false, &config.user_columns, config.busy_timeout_ms)
}

/// Opens the shard files of an existing table and checks that they are one table's, in order.
fn open_existing_shards(config: &TableConfig) -> Result<(TableId, Vec<Shard>)> {
    let cols = &config.user_columns;
    let mut shards = Vec::with_capacity(config.shard_paths.len());
    let mut table_id = None;
    for (index, path) in config.shard_paths.iter().enumerate() {
        let shard = Shard::open(path, false, cols, config.busy_timeout_ms)?;
        let identity = shard.identity(cols)?;
        let expected_id = *table_id.get_or_insert(identity.table_id);
        if identity.table_id != expected_id {
            return Err(Error::ShardForeign {
                path: path.clone(),
                detail: format!(
                    "belongs to another table than {}",
                    config.shard_paths[0].display()
                ),
            });
        }
        if identity.shard_index != index || identity.shard_count != config.shard_paths.len() {
            return Err(Error::ShardForeign {
                path: path.clone(),
                detail: format!(
                    "is shard {} of {}, but the table lists it as shard {index} of {}",
                    identity.shard_index,
                    identity.shard_count,
                    config.shard_paths.len()
                ),
            });
        }
        shard.ensure_indexes(&config.indexes)?;
        shard.ensure_protocol_columns()?;
        shards.push(shard);
    }
    let table_id = table_id.ok_or_else(|| Error::Internal("a table without shards".into()))?;
    Ok((table_id, shards))
}

/// Who created the shard file at `path`, if it can be read.
fn owner_of(path: &Path) -> Option<Owner> {
    Shard::open_read_only(path, &[]).ok()?.owner().ok()?
}

/// Whether every one of the `existing` shard files is verifiably left by a CREATE or DROP that
/// did not finish: a shard marked creating or dropping whose owner is this table (its CREATE is
/// running, so the owner's schema has no table of this name: nobody uses them), or a
/// `:memory:` or temp database (whose tables die with their connection). The caller checks that
/// no live process holds them. Anything unreadable or someone else's is not.
fn are_leftovers(config: &TableConfig, existing: &[&Path]) -> bool {
    existing.iter().all(|path| {
        let Ok(shard) = Shard::open_read_only(path, &[]) else {
            return false;
        };
        let owner = shard.owner().ok().flatten();
        let ours_or_nobodys =
            owns(config, owner.as_ref()) || owner.is_some_and(|o| o.database.is_empty());
        ours_or_nobodys
            && matches!(
                shard.lifecycle(),
                Ok(Lifecycle::Creating | Lifecycle::Dropping)
            )
    })
}

/// Whether table `config` owns shard files whose recorded owner is `owner`: it created them;
/// or their names derive from its database's and table's (`shards=N`) and they were made by a
/// database of the same file name (the folder moved whole) or before owners were recorded.
fn owns(config: &TableConfig, owner: Option<&Owner>) -> bool {
    let file_name = |path: &str| Path::new(path).file_name().map(|n| n.to_os_string());
    match owner {
        Some(owner) if owner.is(&config.owner) => true,
        Some(owner) => {
            config.derived_paths
                && owner.table.eq_ignore_ascii_case(&config.owner.table)
                && !owner.database.is_empty()
                && file_name(&owner.database) == file_name(&config.owner.database)
        }
        None => config.derived_paths,
    }
}

/// On opening a table that SQLite's schema holds: a creating or dropping mark left by this
/// table's own CREATE that committed (or DROP that did not) is cleared; another table's mark
/// means its files are in its hands, and they are refused.
fn settle_lifecycle(
    config: &TableConfig,
    shards: &[Shard],
    coordinator: &Coordinator,
) -> Result<()> {
    let unsettled = |shards: &[Shard]| -> Result<bool> {
        for shard in shards {
            if shard.lifecycle()? != Lifecycle::Live {
                return Ok(true);
            }
        }
        Ok(false)
    };
    if !unsettled(shards)? {
        return Ok(());
    }
    let owner = shards[0].owner()?;
    if !owns(config, owner.as_ref()) {
        return Err(Error::ShardForeign {
            path: config.shard_paths[0].clone(),
            detail: format!(
                "is being created or dropped by {}, or was left by its CREATE or DROP that did not finish",
                owner.map_or("another table".to_string(), |o| o.to_string())
            ),
        });
    }
    let _writer = coordinator.lock_writer()?;
    for shard in shards {
        shard.set_lifecycle(Lifecycle::Live)?;
    }
    Ok(())
}

/// Opens (or, for a CREATE, makes) the table's shards and coordinator. On an error, gives the
/// configuration back with it.
fn open_core(
    config: TableConfig,
    create: bool,
) -> std::result::Result<TableCore, (Error, Box<TableConfig>)> {
    let opened = (|| {
        // A restore checks its backup before it creates any file.
        let backup = match (create, &config.restore_from) {
            (true, Some(dir)) => Some((dir, crate::restore::trusted_manifest(dir, &config)?)),
            _ => None,
        };
        let (table_id, mut shards, created) = open_shards(&config, create)?;
        if let Some((dir, manifest)) = backup {
            shards = restore_new_table(dir, &manifest, &config, shards, created)?;
        }
        let coordinator =
            Coordinator::open(&config, table_id, &mut shards, created, crate::host::lookup)?;
        let creation = if created {
            Some(coordinator.lock_writer()?)
        } else {
            settle_lifecycle(&config, &shards, &coordinator)?;
            None
        };
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
        }),
        Err(e) => Err((e, Box::new(config))),
    }
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

    fn shard_count(&self) -> usize {
        self.config().shard_paths.len()
    }

    fn describe_row(id: Option<i64>, name: &Value) -> String {
        let id = id.map_or("(new)".to_string(), |i| i.to_string());
        match name {
            Value::Text(n) => format!("id {id} ('{n}')"),
            _ => format!("id {id}"),
        }
    }

    /// Validates `data` and derives the stored metadata.
    fn derive(&self, id: i64, name: Value, data: &[u8], user: Vec<Value>) -> Result<NewRow> {
        let config = &self.core()?.config;
        let info = probe(data, config.max_pixels, config.verify).map_err(|e| {
            let row = Self::describe_row(Some(id), &name);
            match e {
                ProbeError::NotAnImage(reason) => Error::NotAnImage { row, reason },
                too_big => Error::TooBig {
                    row,
                    reason: too_big.to_string(),
                },
            }
        })?;
        Ok(NewRow {
            id,
            name,
            format: info.format,
            width: i64::from(info.width),
            height: i64::from(info.height),
            bytes: data.len() as i64,
            hash: info.hash,
            user,
        })
    }

    /// Opens the write transaction if SQLite has not (it calls xBegin first, normally; not for
    /// a table created in the same transaction).
    fn ensure_writing(&self) -> Result<()> {
        if !self.core()?.coordinator.borrow().is_writing() {
            self.begin_write()?;
        }
        Ok(())
    }

    /// Step 1 of the protocol, noting the host connection's state then (`host::HostAtBegin`).
    fn begin_write(&self) -> Result<()> {
        let core = self.core()?;
        *core.host_at_begin.borrow_mut() = crate::host::HostAtBegin::read(&self.host, &self.schema);
        core.coordinator
            .borrow_mut()
            .begin_write(&mut core.shards.borrow_mut())
    }

    /// Whether another imagestore table of this connection is written in the same transaction:
    /// then every one of them rides on the host's commit, their one commit point.
    fn other_table_writing(&self) -> bool {
        let Ok(me) = self.core().map(Rc::as_ptr) else {
            return false;
        };
        open_cores(self.db)
            .into_iter()
            .filter(|&core| core != me)
            // SAFETY: see `OpenTable`: a call on connection `db`, the table connected.
            .any(|core| {
                unsafe { &*core }
                    .coordinator
                    .try_borrow()
                    .is_ok_and(|c| c.is_writing())
            })
    }

    /// Where this transaction's decision rides, if it also wrote the host's own tables (or
    /// another imagestore table) and the host is a database file (a `:memory:` or temp
    /// database cannot make a decision durable).
    fn host_decider(&self) -> Result<Option<crate::host::HostDecisions>> {
        let core = self.core()?;
        let Some(file) = host_filename(self.db, &self.schema) else {
            return Ok(None);
        };
        let rides = !self.schema.eq_ignore_ascii_case("temp")
            && (self.other_table_writing()
                || crate::host::also_wrote(self.db, &self.schema, &core.host_at_begin.borrow()));
        if !rides {
            return Ok(None);
        }
        Ok(Some(crate::host::HostDecisions::new(
            self.db,
            &self.schema,
            &file,
            core.coordinator.borrow().table_id(),
        )))
    }

    fn write_shard(&self, shard: usize) -> Result<u64> {
        self.ensure_writing()?;
        self.core()?.coordinator.borrow_mut().record_write(shard)
    }

    fn get_row(&self, id: i64) -> Result<Option<StoredRow>> {
        self.core()?.shards.borrow()[shard_of(id, self.shard_count())].get(id)
    }

    fn insert_row(&self, row: &NewRow, data: &[u8]) -> Result<()> {
        let index = shard_of(row.id, self.shard_count());
        let txid = self.write_shard(index)?;
        if self.get_row(row.id)?.is_some() {
            if self.on_conflict() != ffi::SQLITE_REPLACE {
                return Err(self.duplicate_id(row.id));
            }
            self.delete_row(row.id)?;
        }
        let core = self.core()?;
        core.row_ids.borrow_mut().inserted(row.id);
        core.shards.borrow()[index].insert(txid, row, data)
    }

    /// The conflict clause of the statement running this xUpdate (`SQLITE_REPLACE`, ...).
    fn on_conflict(&self) -> c_int {
        // SAFETY: self.db is the connection that is running this xUpdate.
        unsafe { ffi::sqlite3_vtab_on_conflict(self.db) }
    }

    fn duplicate_id(&self, id: i64) -> Error {
        Error::DuplicateId {
            table: self.config().table_name.clone(),
            id,
        }
    }

    fn delete_row(&self, id: i64) -> Result<()> {
        let index = shard_of(id, self.shard_count());
        let txid = self.write_shard(index)?;
        let core = self.core()?;
        let shards = core.shards.borrow();
        match shards[index].get(id)? {
            Some(current) => {
                shards[index].delete(txid, &current)?;
                core.row_ids.borrow_mut().deleted(id);
                Ok(())
            }
            None => Ok(()),
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

/// The configuration of table `table_name` of database `schema` from its module arguments.
pub(crate) fn table_config(
    db: *mut ffi::sqlite3,
    schema: &str,
    table_name: &str,
    args: &[&str],
) -> Result<TableConfig> {
    let host_file = host_filename(db, schema);
    let host = HostDatabase {
        file: host_file.as_deref().map(Path::new),
    };
    let mut config = TableConfig::parse(table_name, args, host)?;
    crate::restore::adopt_columns(&mut config)?;
    Ok(config)
}

/// Fills the shards CREATE just made from the backup in `dir`; on any error, closes them and
/// removes the table's files again (see `restore`).
fn restore_new_table(
    dir: &Path,
    manifest: &crate::backup_folder::Manifest,
    config: &TableConfig,
    shards: Vec<Shard>,
    created: bool,
) -> Result<Vec<Shard>> {
    if !created {
        return Err(Error::BadArgument(format!(
            "restore_from fills a new table, but its shard files belong to an existing table ({}); choose new shard files",
            config.shard_paths[0].display()
        )));
    }
    match crate::restore::restore(dir, manifest, config, &shards) {
        Ok(()) => Ok(shards),
        Err(e) => {
            drop(shards);
            // Best effort: a file left behind makes a later CREATE fail naming it, never
            // makes a table of half a restore.
            let _ = remove_files(&config.shard_files());
            Err(e)
        }
    }
}

/// The file of the database `schema` of connection `db`, or `None` for :memory: and temp.
fn host_filename(db: *mut ffi::sqlite3, schema: &str) -> Option<String> {
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

fn image_bytes<'a>(value: ValueRef<'a>, row: &str) -> Result<&'a [u8]> {
    match value {
        ValueRef::Blob(b) => Ok(b),
        ValueRef::Null => Err(Error::WrongType(format!(
            "row {row}: data is not an image but NULL; every row holds an image"
        ))),
        other => Err(Error::WrongType(format!(
            "row {row}: data is not an image but {}; store the image file's bytes as a BLOB",
            type_name(other)
        ))),
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
                return Err(Error::BadArgument(
                    "DROP TABLE deletes the shard files and cannot be rolled back: run it outside BEGIN ... COMMIT"
                        .into(),
                ));
            }
            let (files, writer) = match &self.state {
                TableState::Open(core) => {
                    // No writer of this table, in any process, is mid-commit while its files
                    // go; the lock is held until the DROP has committed or rolled back.
                    let writer = core.coordinator.borrow().lock_writer()?;
                    if !self.owns_files()? {
                        return Ok(());
                    }
                    for shard in core.shards.borrow().iter() {
                        shard.set_lifecycle(Lifecycle::Dropping)?;
                    }
                    (core.config.files(), writer)
                }
                TableState::Unusable { config, .. } => match unusable_own_files(config)? {
                    Some(found) => found,
                    None => return Ok(()),
                },
            };
            // SAFETY: self.db is the connection running this DROP; the Connection made from it
            // is used within this call and dropped without closing it.
            let host = unsafe { Connection::from_handle(self.db) }
                .map_err(|e| Error::Internal(e.to_string()))?;
            crate::after_commit::queue(
                &host,
                crate::after_commit::Action {
                    on_commit: Box::new(move || {
                        // Best effort: files left here carry the dropping mark, which the next
                        // CREATE of this table recognises and removes.
                        let _ = remove_files(&files);
                        drop(writer);
                    }),
                    // The table is back in the schema; its next open clears the mark.
                    on_rollback: Box::new(|| {}),
                },
            )
        })?)
    }
}

/// The files a DROP of an unusable table (a shard missing or damaged, the journal in doubt)
/// deletes once it has committed, with the writer lock held till then: each shard file that is
/// still readable, this table's (by its identity and owner), with SQLite's files beside it; and
/// the coordinator's files if one such shard vouches for them (the journal, if readable, names
/// the same table). A file that cannot be read stays: nothing shows whose it is. `None` if
/// nothing is verifiably this table's.
fn unusable_own_files(config: &TableConfig) -> Result<Option<(Vec<PathBuf>, LockGuard)>> {
    let mut files = Vec::new();
    let mut table_id = None;
    for (index, path) in config.shard_paths.iter().enumerate() {
        let Ok(shard) = Shard::open_read_only(path, &config.user_columns) else {
            continue;
        };
        let ours = shard
            .identity(&config.user_columns)
            .ok()
            .filter(|identity| {
                identity.shard_index == index
                    && identity.shard_count == config.shard_paths.len()
                    && table_id.is_none_or(|id| id == identity.table_id)
                    && shard
                        .owner()
                        .is_ok_and(|owner| owns(config, owner.as_ref()))
            });
        if let Some(identity) = ours {
            table_id = Some(identity.table_id);
            files.extend(crate::durable::with_sqlite_files(path));
        }
    }
    let Some(table_id) = table_id else {
        return Ok(None);
    };
    if !config.journal_path.exists() || journal_names(&config.journal_path, &table_id) {
        files.extend([
            config.journal_path.clone(),
            config.lock_path.clone(),
            config.publish_lock_path.clone(),
        ]);
    }
    let lock = LockFile::open(&config.lock_path)?;
    let writer = lock.exclusive("writer lock", config.busy_timeout_ms)?;
    Ok(Some((files, writer)))
}

/// Whether the journal file at `path` names table `table_id` in its header (bytes 8..24, see
/// `journal`), whatever state the rest of it is in.
fn journal_names(path: &Path, table_id: &TableId) -> bool {
    use std::io::Read;
    let mut head = [0u8; 24];
    std::fs::File::open(path)
        .and_then(|mut f| f.read_exact(&mut head))
        .is_ok_and(|()| head[8..24] == table_id[..])
}

impl ImageTable {
    /// Whether this table owns every one of its shard files (see [`owns`]).
    fn owns_files(&self) -> Result<bool> {
        let core = self.core()?;
        for shard in core.shards.borrow().iter() {
            if !owns(&core.config, shard.owner()?.as_ref()) {
                return Ok(false);
            }
        }
        Ok(true)
    }
}

impl UpdateVTab<'_> for ImageTable {
    fn delete(&mut self, arg: ValueRef<'_>) -> rusqlite::Result<()> {
        Ok(catch_panic(|| match integer_id(arg, "id")? {
            Some(id) => self.delete_row(id),
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
            let id = match (column_id, rowid) {
                (Some(a), Some(b)) if a != b => {
                    return Err(Error::BadArgument(format!(
                        "id {a} and rowid {b} disagree; give one of them"
                    )))
                }
                (Some(id), _) | (None, Some(id)) => id,
                (None, None) => {
                    self.ensure_writing()?;
                    let core = self.core()?;
                    let shards = core.shards.borrow();
                    core.row_ids.borrow_mut().assign(&shards)?
                }
            };
            let data = image_bytes(
                values[COL_DATA as usize],
                &Self::describe_row(Some(id), &name),
            )?;
            let row = self.derive(id, name, data, self.user_values(&values)?)?;
            self.insert_row(&row, data)?;
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
            let Some(current) = self.get_row(old_id)? else {
                return Ok(());
            };
            let name = if changed(COL_NAME) {
                name_value(values[COL_NAME as usize])?
            } else {
                current.name.clone()
            };
            let user: Vec<Value> = (0..self.core()?.config.user_columns.len())
                .map(|i| {
                    let col = COL_USER_FIRST + i as c_int;
                    if changed(col) {
                        owned(values[col as usize])
                    } else {
                        Ok(current.user[i].clone())
                    }
                })
                .collect::<Result<_>>()?;
            let new_data = if changed(COL_DATA) {
                Some(image_bytes(
                    values[COL_DATA as usize],
                    &Self::describe_row(Some(new_id), &name),
                )?)
            } else {
                None
            };
            let row = match new_data {
                Some(data) => self.derive(new_id, name, data, user)?,
                None => NewRow {
                    id: new_id,
                    name,
                    format: current.format.clone(),
                    width: current.width,
                    height: current.height,
                    bytes: current.bytes,
                    hash: current.hash.clone(),
                    user,
                },
            };
            if new_id == old_id {
                let index = shard_of(old_id, self.shard_count());
                let txid = self.write_shard(index)?;
                return self.core()?.shards.borrow()[index].update(txid, &current, &row, new_data);
            }
            // A new id may live on another shard: move the row (its blob is copied). A taken id
            // is refused before anything is deleted: under OR IGNORE and OR FAIL SQLite keeps
            // whatever this call changed before it failed.
            if self.get_row(new_id)?.is_some() && self.on_conflict() != ffi::SQLITE_REPLACE {
                return Err(self.duplicate_id(new_id));
            }
            let data = match new_data {
                Some(d) => d.to_vec(),
                None => self.core()?.shards.borrow()[shard_of(old_id, self.shard_count())]
                    .read_blob(current.blob_id)?,
            };
            // insert_row replaces the taken id under OR REPLACE.
            self.delete_row(old_id)?;
            self.insert_row(&row, &data)
        })?)
    }
}

impl TransactionVTab<'_> for ImageTable {
    fn begin(&mut self) -> rusqlite::Result<()> {
        Ok(catch_panic(|| self.begin_write())?)
    }

    fn sync(&mut self) -> rusqlite::Result<()> {
        Ok(catch_panic(|| {
            let core = self.core()?;
            let host = if core.coordinator.borrow().is_writing() {
                self.host_decider()?
            } else {
                None
            };
            core.coordinator.borrow_mut().sync(
                &mut core.shards.borrow_mut(),
                host.as_ref().map(|h| h as &dyn crate::commit::HostDecider),
            )
        })?)
    }

    fn commit(&mut self) -> rusqlite::Result<()> {
        Ok(catch_panic(|| {
            let Ok(core) = self.core() else {
                return Ok(()); // an unusable table wrote nothing
            };
            let mut coordinator = core.coordinator.borrow_mut();
            coordinator.commit(&mut core.shards.borrow_mut());
            core.row_ids.borrow_mut().forget();
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
            core.row_ids.borrow_mut().forget();
            core.creation_rolled_back();
            core.resume_open_cursors(&mut coordinator)
        })?)
    }
}

/// The column of the shard's `images` table that table column `column` is, as SQL names it,
/// for the columns an equality can be pushed down on: every stored one but the key (planned
/// apart) and the image.
fn shard_column(config: &TableConfig, column: c_int) -> Option<String> {
    match column {
        COL_NAME | COL_FORMAT | COL_WIDTH | COL_HEIGHT | COL_BYTES | COL_HASH => {
            Some(crate::config::BUILTIN_COLUMNS[column as usize].to_string())
        }
        _ => Some(quote_ident(&user_column(config, column)?.name)),
    }
}

/// The user's column that table column `column` is, if it is one.
fn user_column(config: &TableConfig, column: c_int) -> Option<&crate::config::UserColumn> {
    let user = usize::try_from(column - COL_USER_FIRST).ok()?;
    config.user_columns.get(user)
}

/// How SQLite converts the values compared with a column: its declared type's affinity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Affinity {
    Numeric,
    Text,
    /// BLOB or no declared type: no conversion of its own.
    Blob,
}

fn column_affinity(config: &TableConfig, column: c_int) -> Affinity {
    match column {
        COL_WIDTH | COL_HEIGHT | COL_BYTES => Affinity::Numeric,
        COL_NAME | COL_FORMAT | COL_HASH => Affinity::Text,
        _ => match user_column(config, column) {
            Some(c) if matches!(c.decl_type.as_str(), "INTEGER" | "INT" | "REAL" | "NUMERIC") => {
                Affinity::Numeric
            }
            Some(c) if c.decl_type == "TEXT" => Affinity::Text,
            _ => Affinity::Blob,
        },
    }
}

/// Whether `column = ?` with `value` bound selects in the shard exactly the rows the query's
/// `column = <expression>` selects. The bound value has no affinity, while the expression may
/// have any (a column of another table, a CAST): compared with a TEXT or untyped column, an
/// expression of numeric affinity makes SQLite convert the column's numeric-looking values to
/// numbers, and one of TEXT affinity makes it convert numbers to text. So a number, or a text
/// that looks like one, is pushed down only to a column of numeric affinity; otherwise SQLite's
/// own check of every row decides.
fn same_rows_in_shard(affinity: Affinity, value: &Value) -> bool {
    match value {
        _ if affinity == Affinity::Numeric => true,
        Value::Blob(_) => true,
        Value::Text(text) => text.trim().parse::<f64>().is_err(),
        Value::Null | Value::Integer(_) | Value::Real(_) => false,
    }
}

/// The table column numbered as xBestIndex numbers them, by name.
fn column_number(config: &TableConfig, name: &str) -> Option<c_int> {
    let builtin = crate::config::BUILTIN_COLUMNS
        .iter()
        .position(|c| *c == name);
    let user = || {
        let at = config.user_columns.iter().position(|c| c.name == name)?;
        Some(COL_USER_FIRST + c_int::try_from(at).ok()?)
    };
    builtin
        .and_then(|at| c_int::try_from(at).ok())
        .or_else(user)
}

/// Every index each shard keeps besides its key, as table column numbers.
fn shard_indexes(config: &TableConfig) -> Vec<Vec<c_int>> {
    let declared = config.indexes.iter().map(|columns| {
        columns
            .iter()
            .filter_map(|name| column_number(config, name))
            .collect()
    });
    [vec![COL_HASH], vec![COL_NAME]]
        .into_iter()
        .chain(declared)
        .collect()
}

/// Chooses the plan for xBestIndex. Constraints on `id` are planned in `idx_num`'s bits; the
/// columns of pushed-down equalities are listed in `idx_str` ("3,9"), their values following
/// the id's in xFilter's arguments. No constraint is omitted: SQLite checks every row again.
fn plan(info: &mut IndexInfo, config: &TableConfig) {
    let mut id_eq = None;
    let mut lower = None;
    let mut upper = None;
    let mut equal: Vec<(usize, c_int)> = Vec::new();
    for (i, c) in info.constraints().enumerate() {
        if !c.is_usable() {
            continue;
        }
        let on_id = c.column() == COL_ID || c.column() == COL_ROWID;
        let slot = match (c.operator(), on_id) {
            (IndexConstraintOp::SQLITE_INDEX_CONSTRAINT_EQ, true) => &mut id_eq,
            (
                IndexConstraintOp::SQLITE_INDEX_CONSTRAINT_GT
                | IndexConstraintOp::SQLITE_INDEX_CONSTRAINT_GE,
                true,
            ) => &mut lower,
            (
                IndexConstraintOp::SQLITE_INDEX_CONSTRAINT_LT
                | IndexConstraintOp::SQLITE_INDEX_CONSTRAINT_LE,
                true,
            ) => &mut upper,
            (IndexConstraintOp::SQLITE_INDEX_CONSTRAINT_EQ, false) => {
                // A text comparison under another collation (NOCASE, ...) is not the shard's `=`.
                let binary = info
                    .collation(i)
                    .is_ok_and(|c| c.eq_ignore_ascii_case("BINARY"));
                let first = !equal.iter().any(|(_, column)| *column == c.column());
                if binary && first && shard_column(config, c.column()).is_some() {
                    equal.push((i, c.column()));
                }
                continue;
            }
            _ => continue,
        };
        if slot.is_none() {
            *slot = Some((i, c.operator()));
        }
    }
    let mut idx_num = 0;
    let mut argv = 0;
    let mut use_constraint =
        |info: &mut IndexInfo, slot: Option<(usize, IndexConstraintOp)>, bit: c_int| {
            if let Some((i, _)) = slot {
                argv += 1;
                info.constraint_usage(i).set_argv_index(argv);
                idx_num |= bit;
            }
        };
    let lower_bits = match &lower {
        Some((_, IndexConstraintOp::SQLITE_INDEX_CONSTRAINT_GT)) => {
            PLAN_ID_LOWER | PLAN_ID_LOWER_EXCLUSIVE
        }
        _ => PLAN_ID_LOWER,
    };
    let upper_bits = match &upper {
        Some((_, IndexConstraintOp::SQLITE_INDEX_CONSTRAINT_LT)) => {
            PLAN_ID_UPPER | PLAN_ID_UPPER_EXCLUSIVE
        }
        _ => PLAN_ID_UPPER,
    };
    let (has_eq, has_lower, has_upper) = (id_eq.is_some(), lower.is_some(), upper.is_some());
    use_constraint(info, id_eq, PLAN_ID_EQ);
    use_constraint(info, lower, lower_bits);
    use_constraint(info, upper, upper_bits);
    let pushed: Vec<c_int> = equal.iter().map(|(_, column)| *column).collect();
    for (i, _) in &equal {
        argv += 1;
        info.constraint_usage(*i).set_argv_index(argv);
    }
    if !pushed.is_empty() {
        let list: Vec<String> = pushed.iter().map(c_int::to_string).collect();
        info.set_idx_str(&list.join(","));
    }
    // An index whose first column is pushed lets each shard search; if all its columns are,
    // few rows match.
    let searched = shard_indexes(config)
        .iter()
        .filter(|columns| columns.first().is_some_and(|c| pushed.contains(c)))
        .map(|columns| columns.iter().all(|c| pushed.contains(c)))
        .max();

    let shards = config.shard_paths.len() as f64;
    let (cost, rows) = if has_eq {
        (1.0, 1.0)
    } else if let Some(whole) = searched {
        (2.0 * shards, if whole { 1.0 } else { 10.0 })
    } else if has_lower && has_upper {
        (
            shards + TABLE_ROWS_ESTIMATE / 100.0,
            TABLE_ROWS_ESTIMATE / 100.0,
        )
    } else if has_lower || has_upper {
        (
            shards + TABLE_ROWS_ESTIMATE / 4.0,
            TABLE_ROWS_ESTIMATE / 4.0,
        )
    } else if !pushed.is_empty() {
        // Every row is read, but inside the shards; only matches come back.
        (
            shards + TABLE_ROWS_ESTIMATE / 2.0,
            TABLE_ROWS_ESTIMATE / 10.0,
        )
    } else {
        (shards + TABLE_ROWS_ESTIMATE, TABLE_ROWS_ESTIMATE)
    };
    let order: Vec<(c_int, bool)> = info
        .order_bys()
        .map(|o| (o.column(), o.is_order_by_desc()))
        .collect();
    if let [(column, desc)] = order.as_slice() {
        if *column == COL_ID || *column == COL_ROWID {
            info.set_order_by_consumed(true);
            if *desc {
                idx_num |= PLAN_DESCENDING;
            }
        }
    }
    info.set_idx_num(idx_num);
    info.set_estimated_cost(cost);
    info.set_estimated_rows(rows as i64);
}

/// Reads a filter from the plan and xFilter's arguments. A bound on `id` that is not a number
/// is left out (SQLite re-checks every constraint); `None` if no row can match.
fn scan_filter(
    config: &TableConfig,
    idx_num: c_int,
    idx_str: Option<&str>,
    args: &Filters<'_>,
) -> Option<ScanFilter> {
    let mut filter = ScanFilter {
        descending: idx_num & PLAN_DESCENDING != 0,
        ..ScanFilter::default()
    };
    let mut next = 0;
    let mut arg = || {
        let v = args.get::<Value>(next).unwrap_or(Value::Null);
        next += 1;
        v
    };
    let number = |v: &Value| match v {
        Value::Integer(i) => Some(*i as f64),
        Value::Real(r) => Some(*r),
        _ => None,
    };
    if idx_num & PLAN_ID_EQ != 0 {
        let v = arg();
        match number(&v) {
            Some(n) if n.fract() != 0.0 => return None,
            Some(_) => {
                filter.id_eq = Some(if let Value::Integer(i) = v {
                    i
                } else {
                    number(&v)? as i64
                })
            }
            None if v == Value::Null => return None,
            None => {}
        }
    }
    if idx_num & PLAN_ID_LOWER != 0 {
        if let Some(n) = number(&arg()) {
            let exclusive = idx_num & PLAN_ID_LOWER_EXCLUSIVE != 0;
            filter.id_min = Some(if exclusive {
                n.floor() as i64 + 1
            } else {
                n.ceil() as i64
            });
        }
    }
    if idx_num & PLAN_ID_UPPER != 0 {
        if let Some(n) = number(&arg()) {
            let exclusive = idx_num & PLAN_ID_UPPER_EXCLUSIVE != 0;
            filter.id_max = Some(if exclusive {
                n.ceil() as i64 - 1
            } else {
                n.floor() as i64
            });
        }
    }
    let pushed = idx_str
        .unwrap_or_default()
        .split(',')
        .filter(|c| !c.is_empty());
    for column in pushed {
        let value = arg();
        if value == Value::Null {
            return None; // `= NULL` is never true
        }
        let Ok(column) = column.parse() else {
            continue;
        };
        if !same_rows_in_shard(column_affinity(config, column), &value) {
            continue;
        }
        if let Some(shard_column) = shard_column(config, column) {
            filter.equal.push((shard_column, value));
        }
    }
    Some(filter)
}

/// The rows of one shard, a page at a time.
struct Lane {
    shard: usize,
    rows: VecDeque<StoredRow>,
    last_id: Option<i64>,
    page_rows: usize,
    exhausted: bool,
}

/// A cursor: a merge, in id order, of the matching rows of every shard it reads.
#[repr(C)]
pub struct ImageCursor {
    /// SQLite's part; must come first.
    base: sqlite3_vtab_cursor,
    core: Rc<TableCore>,
    filter: ScanFilter,
    lanes: Vec<Lane>,
    /// The lane whose first row is the current row.
    current: Option<usize>,
}

impl ImageCursor {
    fn refill(&mut self, lane: usize) -> Result<()> {
        let l = &mut self.lanes[lane];
        if !l.rows.is_empty() || l.exhausted {
            return Ok(());
        }
        let page =
            self.core.shards.borrow()[l.shard].scan_page(&self.filter, l.last_id, l.page_rows)?;
        l.exhausted = page.len() < l.page_rows;
        l.page_rows = (l.page_rows * 2).min(PAGE_ROWS_MAX);
        l.last_id = page.last().map(|r| r.id).or(l.last_id);
        l.rows.extend(page);
        Ok(())
    }

    fn pick_current(&mut self) {
        let heads = self
            .lanes
            .iter()
            .enumerate()
            .filter_map(|(i, l)| l.rows.front().map(|r| (i, r.id)));
        self.current = if self.filter.descending {
            heads.max_by_key(|&(_, id)| id)
        } else {
            heads.min_by_key(|&(_, id)| id)
        }
        .map(|(i, _)| i);
    }

    fn row(&self) -> Result<(&StoredRow, usize)> {
        let lane = self
            .current
            .map(|i| &self.lanes[i])
            .ok_or_else(|| Error::Internal("no current row".into()))?;
        let row = lane
            .rows
            .front()
            .ok_or_else(|| Error::Internal("no current row".into()))?;
        Ok((row, lane.shard))
    }
}

impl Drop for ImageCursor {
    fn drop(&mut self) {
        let open = self.core.open_cursors.get().saturating_sub(1);
        self.core.open_cursors.set(open);
        if open == 0 {
            if let (Ok(mut coordinator), Ok(mut shards)) = (
                self.core.coordinator.try_borrow_mut(),
                self.core.shards.try_borrow_mut(),
            ) {
                coordinator.end_read(&mut shards);
            }
        }
    }
}

unsafe impl VTabCursor for ImageCursor {
    fn filter(
        &mut self,
        idx_num: c_int,
        idx_str: Option<&str>,
        args: &Filters<'_>,
    ) -> rusqlite::Result<()> {
        Ok(catch_panic(|| {
            self.core.begin_read()?;
            self.lanes.clear();
            self.current = None;
            let Some(filter) = scan_filter(&self.core.config, idx_num, idx_str, args) else {
                return Ok(());
            };
            let shard_count = self.core.config.shard_paths.len();
            let shards: Vec<usize> = match filter.id_eq {
                Some(id) => vec![shard_of(id, shard_count)],
                None => (0..shard_count).collect(),
            };
            self.filter = filter;
            self.lanes = shards
                .into_iter()
                .map(|shard| Lane {
                    shard,
                    rows: VecDeque::new(),
                    last_id: None,
                    page_rows: PAGE_ROWS_FIRST,
                    exhausted: false,
                })
                .collect();
            for lane in 0..self.lanes.len() {
                self.refill(lane)?;
            }
            self.pick_current();
            Ok(())
        })?)
    }

    fn next(&mut self) -> rusqlite::Result<()> {
        Ok(catch_panic(|| {
            if let Some(lane) = self.current {
                self.lanes[lane].rows.pop_front();
                self.refill(lane)?;
            }
            self.pick_current();
            Ok(())
        })?)
    }

    fn eof(&self) -> bool {
        self.current.is_none()
    }

    fn column(&self, ctx: &mut Context, i: c_int) -> rusqlite::Result<()> {
        Ok(catch_panic(|| {
            if ctx.no_change() {
                // An UPDATE that does not set this column: leave it unread (xUpdate then sees
                // it as unchanged), above all `data`.
                return Ok(());
            }
            let (row, shard) = self.row()?;
            let set = |ctx: &mut Context, v: &dyn rusqlite::ToSql| {
                ctx.set_result(&v)
                    .map_err(|e| Error::Internal(e.to_string()))
            };
            match i {
                COL_ID => set(ctx, &row.id),
                COL_NAME => set(ctx, &row.name),
                COL_DATA => {
                    let data = self.core.shards.borrow()[shard].read_blob(row.blob_id)?;
                    set(ctx, &data)
                }
                COL_FORMAT => set(ctx, &row.format),
                COL_WIDTH => set(ctx, &row.width),
                COL_HEIGHT => set(ctx, &row.height),
                COL_BYTES => set(ctx, &row.bytes),
                COL_HASH => set(ctx, &row.hash),
                COL_SHARD => set(ctx, &(shard as i64)),
                user => match row.user.get((user - COL_USER_FIRST) as usize) {
                    Some(v) => set(ctx, v),
                    None => Err(Error::Internal(format!("no column {user}"))),
                },
            }
        })?)
    }

    fn rowid(&self) -> rusqlite::Result<i64> {
        Ok(catch_panic(|| Ok(self.row()?.0.id))?)
    }
}

// ---- savepoints: module version 2 -------------------------------------------------------

/// Runs a savepoint callback on the table behind `vtab`.
///
/// # Safety
/// `vtab` must be a pointer SQLite received from this module's xCreate/xConnect, i.e. to an
/// `ImageTable` (whose first field is the `sqlite3_vtab`, `#[repr(C)]`).
unsafe fn with_table(
    vtab: *mut sqlite3_vtab,
    body: impl FnOnce(&ImageTable) -> Result<()>,
) -> c_int {
    // SAFETY: by this function's contract; SQLite calls one method at a time per connection.
    let table = unsafe { &*(vtab as *const ImageTable) };
    match catch_panic(|| body(table)) {
        Ok(()) => ffi::SQLITE_OK,
        Err(e) => {
            // SAFETY: vtab is valid (above); set_error_message owns the SQLite allocation rules.
            unsafe { set_error_message(vtab, &e.to_string()) };
            e.sqlite_code()
        }
    }
}

/// Hands SQLite an error message for a vtab method (it frees the old one and later this one).
unsafe fn set_error_message(vtab: *mut sqlite3_vtab, message: &str) {
    let Ok(text) = CString::new(message) else {
        return;
    };
    let bytes = text.as_bytes_with_nul();
    // SAFETY: sqlite3_malloc returns memory SQLite can free; we copy `bytes.len()` bytes into a
    // block of that size; zErrMsg is freed by SQLite with sqlite3_free.
    unsafe {
        let buf = ffi::sqlite3_malloc(bytes.len() as c_int) as *mut c_char;
        if buf.is_null() {
            return;
        }
        std::ptr::copy_nonoverlapping(bytes.as_ptr() as *const c_char, buf, bytes.len());
        if !(*vtab).zErrMsg.is_null() {
            ffi::sqlite3_free((*vtab).zErrMsg as *mut std::ffi::c_void);
        }
        (*vtab).zErrMsg = buf;
    }
}

unsafe extern "C" fn x_savepoint(vtab: *mut sqlite3_vtab, level: c_int) -> c_int {
    // SAFETY: SQLite calls this with a vtab of this module.
    unsafe {
        with_table(vtab, |t| {
            let core = t.core()?;
            let mut coordinator = core.coordinator.borrow_mut();
            coordinator.savepoint(&mut core.shards.borrow_mut(), level)
        })
    }
}

unsafe extern "C" fn x_release(vtab: *mut sqlite3_vtab, level: c_int) -> c_int {
    // SAFETY: as for x_savepoint.
    unsafe {
        with_table(vtab, |t| {
            let core = t.core()?;
            let mut coordinator = core.coordinator.borrow_mut();
            coordinator.release(&mut core.shards.borrow_mut(), level)
        })
    }
}

unsafe extern "C" fn x_rollback_to(vtab: *mut sqlite3_vtab, level: c_int) -> c_int {
    // SAFETY: as for x_savepoint.
    unsafe {
        with_table(vtab, |t| {
            let core = t.core()?;
            let mut coordinator = core.coordinator.borrow_mut();
            core.row_ids.borrow_mut().forget();
            coordinator.rollback_to(&mut core.shards.borrow_mut(), level)
        })
    }
}

unsafe extern "C" fn x_rename(vtab: *mut sqlite3_vtab, _new_name: *const c_char) -> c_int {
    // SAFETY: as for x_savepoint.
    unsafe {
        with_table(vtab, |_| {
            Err(Error::BadArgument(
                "an imagestore table cannot be renamed (its shard files are named after it); \
                 create a new table and copy the rows"
                    .into(),
            ))
        })
    }
}

/// rusqlite's module for this table, raised to version 2 with savepoint callbacks.
struct ModuleV2(ffi::sqlite3_module);
// SAFETY: the module is an immutable table of function pointers, shared read-only by SQLite.
unsafe impl Sync for ModuleV2 {}
unsafe impl Send for ModuleV2 {}

static MODULE: std::sync::OnceLock<ModuleV2> = std::sync::OnceLock::new();

/// Registers the `imagestore` module on a connection.
pub fn register(conn: &Connection) -> rusqlite::Result<()> {
    let module = MODULE.get_or_init(|| {
        let rusqlite_module = update_module_with_tx::<ImageTable>();
        // SAFETY: rusqlite's `Module` is `#[repr(transparent)]` over `ffi::sqlite3_module`, so a
        // pointer to it is a valid pointer to the module struct, which is plain data we copy.
        let base: ffi::sqlite3_module =
            unsafe { std::ptr::read(rusqlite_module as *const _ as *const ffi::sqlite3_module) };
        ModuleV2(ffi::sqlite3_module {
            iVersion: 2,
            xSavepoint: Some(x_savepoint),
            xRelease: Some(x_release),
            xRollbackTo: Some(x_rollback_to),
            xRename: Some(x_rename),
            ..base
        })
    });
    let name = c"imagestore";
    // SAFETY: conn.handle() is a valid connection; the module is 'static; no client data.
    let rc = unsafe {
        ffi::sqlite3_create_module_v2(
            conn.handle(),
            name.as_ptr(),
            &module.0,
            std::ptr::null_mut(),
            None,
        )
    };
    if rc == ffi::SQLITE_OK {
        Ok(())
    } else {
        Err(rusqlite::Error::SqliteFailure(
            ffi::Error::new(rc),
            Some("could not register module imagestore".into()),
        ))
    }
}

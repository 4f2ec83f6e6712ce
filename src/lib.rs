//! `imagestore`: a SQLite extension that keeps images in a virtual table split across several
//! ordinary SQLite files (shards), committed atomically across them by a two-phase-commit
//! coordinator.
//!
//! ```sql
//! .load target/release/libimagestore
//! CREATE VIRTUAL TABLE images USING imagestore(shards=4);
//! INSERT INTO images(name, data) VALUES ('cat.png', readfile('cat.png'));
//! SELECT id, name, format, width, height, bytes, hash FROM images;
//! ```
//!
//! Modules, from SQLite's side inward:
//! - `vtab`: the virtual table: SQLite's callbacks, the planner, the cursor, the module.
//! - `table`: a table apart from the callbacks: its handle (shards, coordinator, open tables of a
//!   connection), its shard set on disk (make, open, own, leftovers, what DROP deletes) and its
//!   row-write rules.
//! - `after_commit`: work that waits for the host's commit (deleting a dropped table's files).
//! - `read_transaction`: one snapshot for every read of an explicit transaction.
//! - `commit`: the commit protocol, described in full in its folder's front page: the
//!   coordinator, the `Participant` steps it drives shards through, the locks.
//! - `host`: the host database: whether a transaction also wrote its tables, and the decisions
//!   that then ride on its commit.
//! - `journal`: the coordinator's durable decision log (`format`: its records, byte by byte).
//! - `shard`: one shard file: schema, rows, the protocol's per-shard steps, a logged commit's
//!   changes, checks and backup copy.
//! - `durable`: parallel fsync of shard WAL files (and any participant's sync jobs). `files`:
//!   the names of the files beside a table's, plain-file sync and removal.
//! - `placement`: which shard holds an id. `row_ids`: ids for rows inserted without one.
//! - `images`: the image header probe that derives format, size and hash, and the per-image SQL
//!   functions.
//! - `maintenance`: the operating SQL functions (check, transactions, resolve, derive, backup).
//! - `backup`: consistent online backup, full or incremental; a backup folder's layout,
//!   manifest and verification; restore into a new table.
//! - `derive`: whole-table processing.
//! - `table_name`: naming a table to the operating functions as SQL names it.
//! - `sqlfn`: registering SQL functions so that their errors keep their SQLite codes.
//! - `config`: the table's arguments. `error`: errors and their SQLite codes.

pub mod after_commit;
pub mod backup;
pub mod commit;
pub mod config;
pub mod derive;
pub mod durable;
pub mod error;
pub mod fault;
pub mod files;
pub mod host;
pub mod images;
pub mod journal;
pub mod maintenance;
pub mod placement;
pub mod read_transaction;
pub mod row_ids;
pub mod server;
pub mod shard;
pub mod sqlfn;
pub mod table;
pub mod table_name;
pub mod vtab;

use rusqlite::Connection;

/// Registers everything the extension provides on one connection.
pub fn register(conn: &Connection) -> rusqlite::Result<()> {
    vtab::register(conn)?;
    after_commit::register(conn)?;
    read_transaction::register(conn, table::handle::transaction_ended)?;
    maintenance::register(conn)?;
    images::register(conn)?;
    sqlfn::register(
        conn,
        "imagestore_version",
        0,
        sqlfn::Kind::Pure,
        Box::new(|_| {
            Ok(rusqlite::types::Value::Text(
                env!("CARGO_PKG_VERSION").into(),
            ))
        }),
    )
}

/// The entry point SQLite looks for when loading `libimagestore`.
///
/// # Safety
/// Called by SQLite's extension loader with a valid connection and API table.
#[cfg(feature = "loadable_extension")]
#[no_mangle]
pub unsafe extern "C" fn sqlite3_imagestore_init(
    db: *mut rusqlite::ffi::sqlite3,
    pz_err_msg: *mut *mut std::ffi::c_char,
    p_api: *mut rusqlite::ffi::sqlite3_api_routines,
) -> std::ffi::c_int {
    // SAFETY: the arguments come from SQLite's loader unchanged.
    unsafe {
        if let Some(refused) = refuse_old_sqlite(pz_err_msg, p_api) {
            return refused;
        }
        // Loaded permanently: the sync threads of `durable` must never outlive the code.
        Connection::extension_init2(db, pz_err_msg, p_api, |conn| {
            // A host built without a feature the registration needs makes rusqlite panic.
            error::catch_panic(|| {
                register(&conn).map_err(|e| error::Error::Internal(e.to_string()))
            })?;
            Ok(true)
        })
    }
}

/// Refuses, with a message, an SQLite older than the API this build calls. rusqlite checks the
/// version too, but its error path then calls `sqlite3_malloc64` through a slot it has not yet
/// filled, and the panic that follows aborts the host: so the check is made here first, with only
/// two functions that every API table has, read field by field (an older table is shorter than
/// the struct this build knows).
///
/// # Safety
/// `p_api` is null or SQLite's API table; `pz_err_msg` is null or where SQLite takes a message.
#[cfg(feature = "loadable_extension")]
unsafe fn refuse_old_sqlite(
    pz_err_msg: *mut *mut std::ffi::c_char,
    p_api: *mut rusqlite::ffi::sqlite3_api_routines,
) -> Option<std::ffi::c_int> {
    use rusqlite::ffi;
    if p_api.is_null() {
        return None;
    }
    // SAFETY: `p_api` is SQLite's API table; both fields are near the start of every version's
    // table and are read alone, without making a reference to the whole (possibly shorter) table.
    let (libversion_number, malloc) = unsafe {
        (
            std::ptr::addr_of!((*p_api).libversion_number).read(),
            std::ptr::addr_of!((*p_api).malloc).read(),
        )
    };
    // SAFETY: a function of the host's SQLite, taking no argument.
    let version = libversion_number.map_or(0, |f| unsafe { f() });
    if version >= ffi::SQLITE_VERSION_NUMBER {
        return None;
    }
    let dotted = |v: i32| format!("{}.{}.{}", v / 1_000_000, v / 1000 % 1000, v % 1000);
    let message = format!(
        "imagestore needs SQLite {} or newer; this program uses SQLite {}",
        dotted(ffi::SQLITE_VERSION_NUMBER),
        dotted(version)
    );
    if let (false, Some(malloc)) = (pz_err_msg.is_null(), malloc) {
        // SAFETY: SQLite frees the message with sqlite3_free, so it is allocated with the host's
        // sqlite3_malloc; it is written within its length plus the terminating NUL.
        unsafe {
            let buffer = malloc(message.len() as std::ffi::c_int + 1).cast::<u8>();
            if !buffer.is_null() {
                std::ptr::copy_nonoverlapping(message.as_ptr(), buffer, message.len());
                *buffer.add(message.len()) = 0;
                *pz_err_msg = buffer.cast();
            }
        }
    }
    Some(ffi::SQLITE_ERROR)
}

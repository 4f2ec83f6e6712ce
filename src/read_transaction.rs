//! One snapshot for every read of a transaction, from its first read to COMMIT, as an ordinary
//! WAL table gives.
//!
//! SQLite tells a virtual table when a transaction ends (xCommit, xRollback) only if a statement
//! of the transaction wrote it. So a table that reads inside an explicit transaction (`BEGIN`,
//! `SAVEPOINT`) joins the transaction through this module: [`join`] runs
//! `DELETE FROM temp.imagestore_transaction WHERE 0`, a write of no rows to a table of this
//! module in the connection's temp database, which makes SQLite add that table to the
//! transaction. Its xCommit and xRollback then tell every imagestore table the connection has
//! open that the transaction ended (the function `register` is given:
//! `table::handle::transaction_ended`), and each lets its snapshot go.
//! The temp database is the connection's own: joining takes no lock another connection could
//! wait for, and the table itself is made once per connection (`CREATE VIRTUAL TABLE IF NOT
//! EXISTS`), holds nothing and is gone when the connection closes.
//!
//! Invariant: a table keeps a snapshot past its statement only once the transaction has joined
//! (this module's xBegin ran for it, `JOINED`); the table cannot be dropped while it is joined.
//! A read that cannot join (`PRAGMA query_only`, an authorizer, a temp table or view of the
//! same name) fails with an error that says why, rather than read with a weaker isolation.
//!
//! Costs: two short statements at a table's first read in a transaction. The second is a
//! DELETE, so `changes()` reads 0 after it, as after any DELETE of no rows.

use std::collections::HashSet;
use std::ffi::c_int;
use std::sync::{Mutex, MutexGuard};

use rusqlite::types::ValueRef;
use rusqlite::vtab::{
    sqlite3_vtab, update_module_with_tx, CreateVTab, IndexInfo, Inserts, TransactionVTab,
    UpdateVTab, Updates, VTab, VTabConnection, VTabKind,
};
use rusqlite::{ffi, Connection};

use crate::after_commit::NoRows;
use crate::error::{Error, Result};

/// The module's name, and its table's in the temp database.
const MODULE: &str = "imagestore_transaction";

/// Connections whose open transaction this module's table has joined.
static JOINED: Mutex<Option<HashSet<usize>>> = Mutex::new(None);

fn joined() -> MutexGuard<'static, Option<HashSet<usize>>> {
    JOINED
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn mark_joined(db: usize) {
    joined().get_or_insert_with(HashSet::new).insert(db);
}

fn is_joined(db: usize) -> bool {
    joined().as_ref().is_some_and(|set| set.contains(&db))
}

/// Whether connection `db` is inside an explicit transaction.
pub(crate) fn is_explicit(db: *mut ffi::sqlite3) -> bool {
    // SAFETY: db is the live connection the calling table belongs to.
    !db.is_null() && unsafe { ffi::sqlite3_get_autocommit(db) } == 0
}

/// Makes the transaction open on `db` call the function given to [`register`] when it ends.
pub(crate) fn join(db: *mut ffi::sqlite3) -> Result<()> {
    if is_joined(db as usize) {
        return Ok(());
    }
    let cannot = |why: String| {
        Error::BadArgument(format!(
            "a read inside a transaction keeps one snapshot until the transaction ends, and \
             learns of its end through temp.{MODULE}, which failed: {why}. Read outside \
             BEGIN ... COMMIT, or let the connection write its temp database (PRAGMA query_only, \
             an authorizer), or drop a temp table or view of that name"
        ))
    };
    // SAFETY: the Connection wraps the live handle of the calling table, for this call only,
    // and is dropped without closing it.
    let conn =
        unsafe { Connection::from_handle(db) }.map_err(|e| Error::Internal(e.to_string()))?;
    conn.execute_batch(&format!(
        "CREATE VIRTUAL TABLE IF NOT EXISTS temp.{MODULE} USING {MODULE};
         DELETE FROM temp.{MODULE} WHERE 0;"
    ))
    .map_err(|e| cannot(e.to_string()))?;
    if !is_joined(db as usize) {
        return Err(cannot(format!("temp.{MODULE} is not imagestore's")));
    }
    Ok(())
}

/// The table in a connection's temp database; it has no rows.
#[repr(C)]
pub struct TransactionEnd {
    /// SQLite's part; must come first.
    base: sqlite3_vtab,
    db: usize,
    ended: TransactionEnded,
}

/// What to call on connection `db` when its transaction ends.
pub type TransactionEnded = fn(db: *mut ffi::sqlite3);

impl TransactionEnd {
    fn ended(&self) {
        if let Some(set) = joined().as_mut() {
            set.remove(&self.db);
        }
        (self.ended)(self.db as *mut ffi::sqlite3);
    }
}

unsafe impl<'vtab> VTab<'vtab> for TransactionEnd {
    type Aux = TransactionEnded;
    type Cursor = NoRows;

    fn connect(
        db: &mut VTabConnection,
        aux: Option<&TransactionEnded>,
        args: &[&[u8]],
    ) -> rusqlite::Result<(String, Self)> {
        if args
            .get(1)
            .is_none_or(|schema| !schema.eq_ignore_ascii_case(b"temp"))
        {
            return Err(rusqlite::Error::ModuleError(format!(
                "{MODULE} is imagestore's own table of the temp database; it cannot be made elsewhere"
            )));
        }
        Ok((
            "CREATE TABLE x(unused)".to_string(),
            TransactionEnd {
                base: sqlite3_vtab::default(),
                // SAFETY: SQLite passes the live connection handle to xCreate/xConnect.
                db: unsafe { db.handle() } as usize,
                ended: aux.copied().unwrap_or(|_| {}),
            },
        ))
    }

    fn best_index(&self, info: &mut IndexInfo) -> rusqlite::Result<()> {
        info.set_estimated_cost(1.0);
        Ok(())
    }

    fn open(&'vtab mut self) -> rusqlite::Result<NoRows> {
        Ok(NoRows::default())
    }
}

impl CreateVTab<'_> for TransactionEnd {
    const KIND: VTabKind = VTabKind::Default;

    /// SQLite adds a table it has just made to the open transaction without calling xBegin.
    fn create(
        db: &mut VTabConnection,
        aux: Option<&TransactionEnded>,
        args: &[&[u8]],
    ) -> rusqlite::Result<(String, Self)> {
        let made = Self::connect(db, aux, args)?;
        mark_joined(made.1.db);
        Ok(made)
    }

    fn destroy(&self) -> rusqlite::Result<()> {
        if is_joined(self.db) {
            return Err(rusqlite::Error::SqliteFailure(
                ffi::Error::new(ffi::SQLITE_LOCKED),
                Some(format!(
                    "temp.{MODULE} holds this transaction's read snapshots until it ends"
                )),
            ));
        }
        Ok(())
    }
}

impl UpdateVTab<'_> for TransactionEnd {
    fn delete(&mut self, _arg: ValueRef<'_>) -> rusqlite::Result<()> {
        Ok(())
    }

    fn insert(&mut self, _args: &Inserts<'_>) -> rusqlite::Result<i64> {
        Err(rusqlite::Error::SqliteFailure(
            ffi::Error::new(ffi::SQLITE_READONLY as c_int),
            Some(format!("{MODULE} holds no rows")),
        ))
    }

    fn update(&mut self, _args: &Updates<'_>) -> rusqlite::Result<()> {
        Ok(())
    }
}

impl TransactionVTab<'_> for TransactionEnd {
    fn begin(&mut self) -> rusqlite::Result<()> {
        mark_joined(self.db);
        Ok(())
    }

    fn commit(&mut self) -> rusqlite::Result<()> {
        self.ended();
        Ok(())
    }

    fn rollback(&mut self) -> rusqlite::Result<()> {
        self.ended();
        Ok(())
    }
}

/// Registers the module on `conn`: `ended` is called on a connection whose transaction, which
/// a read joined, ends.
pub fn register(conn: &Connection, ended: TransactionEnded) -> rusqlite::Result<()> {
    conn.create_module(
        MODULE,
        update_module_with_tx::<TransactionEnd>(),
        Some(ended),
    )
}

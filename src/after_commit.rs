//! Work that may happen only once the host database's transaction has committed (deleting a
//! dropped table's files), or must be undone if it rolls back.
//!
//! SQLite tells a virtual table nothing after `DROP TABLE`: xDestroy runs before the host's
//! commit, which can still fail (SQLITE_BUSY in rollback-journal mode while another connection
//! reads), and the dropped table gets no xCommit or xRollback. So xDestroy queues its work here:
//! it inserts a token into the eponymous virtual table `imagestore_after_commit`, whose
//! xCommit runs the work's commit half after SQLite has committed its own files, and whose
//! xRollback runs the rollback half. The token rides in the host's transaction like any write.
//!
//! Invariant: a queued action runs exactly one of its halves, on the connection that queued it,
//! or neither if the process dies first (its callers leave marks that make that case safe).

use std::collections::HashMap;
use std::ffi::c_int;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};

use rusqlite::types::ValueRef;
use rusqlite::vtab::{
    sqlite3_vtab, sqlite3_vtab_cursor, update_module_with_tx, Context, CreateVTab, Filters,
    IndexInfo, Inserts, TransactionVTab, UpdateVTab, Updates, VTab, VTabConnection, VTabCursor,
    VTabKind,
};
use rusqlite::Connection;

use crate::error::{catch_panic, Error, Result};

/// The eponymous table's name.
pub const TABLE: &str = "imagestore_after_commit";

/// One queued piece of work.
pub struct Action {
    pub on_commit: Box<dyn FnOnce() + Send>,
    pub on_rollback: Box<dyn FnOnce() + Send>,
}

static QUEUED: Mutex<Option<HashMap<u64, Action>>> = Mutex::new(None);
static NEXT_TOKEN: AtomicU64 = AtomicU64::new(1);

fn queued() -> MutexGuard<'static, Option<HashMap<u64, Action>>> {
    QUEUED
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Queues `action` in the transaction open on `db`: its commit half runs after the host
/// commits, its rollback half if it rolls back.
pub fn queue(db: &Connection, action: Action) -> Result<()> {
    let token = NEXT_TOKEN.fetch_add(1, Ordering::Relaxed);
    queued()
        .get_or_insert_with(HashMap::new)
        .insert(token, action);
    let inserted = db.execute(
        &format!("INSERT INTO main.{TABLE}(token) VALUES (?1)"),
        [token as i64],
    );
    if let Err(e) = inserted {
        take(token);
        return Err(Error::host("queueing work after the commit")(e));
    }
    Ok(())
}

fn take(token: u64) -> Option<Action> {
    queued().as_mut().and_then(|q| q.remove(&token))
}

/// The eponymous table of one connection: the tokens queued in its open transaction.
#[repr(C)]
pub struct AfterCommit {
    /// SQLite's part; must come first.
    base: sqlite3_vtab,
    tokens: Vec<u64>,
}

impl AfterCommit {
    fn run(&mut self, commit: bool) {
        for token in std::mem::take(&mut self.tokens) {
            if let Some(action) = take(token) {
                let half = if commit {
                    action.on_commit
                } else {
                    action.on_rollback
                };
                // The halves are best effort by design (their callers leave marks for the
                // case where they do not run); a panic in one must not reach SQLite.
                let _ = catch_panic(|| {
                    half();
                    Ok(())
                });
            }
        }
    }
}

unsafe impl<'vtab> VTab<'vtab> for AfterCommit {
    type Aux = ();
    type Cursor = NoRows;

    fn connect(
        _db: &mut VTabConnection,
        _aux: Option<&()>,
        _args: &[&[u8]],
    ) -> rusqlite::Result<(String, Self)> {
        Ok((
            "CREATE TABLE x(token INTEGER)".to_string(),
            AfterCommit {
                base: sqlite3_vtab::default(),
                tokens: Vec::new(),
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

impl CreateVTab<'_> for AfterCommit {
    const KIND: VTabKind = VTabKind::EponymousOnly;
}

impl UpdateVTab<'_> for AfterCommit {
    fn delete(&mut self, _arg: ValueRef<'_>) -> rusqlite::Result<()> {
        Ok(())
    }

    fn insert(&mut self, args: &Inserts<'_>) -> rusqlite::Result<i64> {
        let token: i64 = args.get(2)?;
        self.tokens.push(token as u64);
        Ok(token)
    }

    fn update(&mut self, _args: &Updates<'_>) -> rusqlite::Result<()> {
        Ok(())
    }
}

impl TransactionVTab<'_> for AfterCommit {
    fn commit(&mut self) -> rusqlite::Result<()> {
        self.run(true);
        Ok(())
    }

    fn rollback(&mut self) -> rusqlite::Result<()> {
        self.run(false);
        Ok(())
    }
}

/// A cursor over no rows, for tables that only carry something into a transaction (this one,
/// `read_transaction`'s).
#[repr(C)]
#[derive(Default)]
pub struct NoRows {
    /// SQLite's part; must come first.
    base: sqlite3_vtab_cursor,
}

unsafe impl VTabCursor for NoRows {
    fn filter(&mut self, _: c_int, _: Option<&str>, _: &Filters<'_>) -> rusqlite::Result<()> {
        Ok(())
    }
    fn next(&mut self) -> rusqlite::Result<()> {
        Ok(())
    }
    fn eof(&self) -> bool {
        true
    }
    fn column(&self, _: &mut Context, _: c_int) -> rusqlite::Result<()> {
        Ok(())
    }
    fn rowid(&self) -> rusqlite::Result<i64> {
        Ok(0)
    }
}

/// Registers the eponymous table on `conn`.
pub fn register(conn: &Connection) -> rusqlite::Result<()> {
    conn.create_module(TABLE, update_module_with_tx::<AfterCommit>(), None)
}

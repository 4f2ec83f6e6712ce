//! One shard of a table, of either kind: a SQLite file on this machine or a PostgreSQL server.
//! The table reads and writes rows, and the coordinator drives the protocol, through this one
//! type; what only a local file can do (backup, check, the lifecycle marks) asks for
//! [`local`](TableShard::local).

use crate::commit::{Participant, PrepareRecord, Replayed};
use crate::config::UserColumn;
use crate::durable::SyncJob;
use crate::error::{Error, Result};
use crate::server::ServerShard;
use crate::shard::{NewRow, ScanFilter, Shard, ShardIdentity, StoredRow};

// A table holds at most 256 shards, each made once: their sizes do not matter.
#[allow(clippy::large_enum_variant)]
pub enum TableShard {
    Local(Shard),
    Server(ServerShard),
}

/// Calls `$call` on the shard, whichever its kind.
macro_rules! each {
    ($shard:expr, $s:ident => $call:expr) => {
        match $shard {
            TableShard::Local($s) => $call,
            TableShard::Server($s) => $call,
        }
    };
}

impl TableShard {
    /// The local shard file, or an error naming `what` that a table on servers cannot do yet.
    pub fn local(&self, what: &str) -> Result<&Shard> {
        match self {
            TableShard::Local(shard) => Ok(shard),
            TableShard::Server(_) => Err(Error::BadArgument(format!(
                "{what} is not yet available for a table on PostgreSQL servers"
            ))),
        }
    }

    /// This shard's identity: its table and its place in it (a local file's, checked against
    /// the table's columns).
    pub fn identity(&self, user_columns: &[UserColumn]) -> Result<ShardIdentity> {
        match self {
            TableShard::Local(s) => s.identity(user_columns),
            TableShard::Server(s) => Ok(s.identity()),
        }
    }

    /// Rows, and bytes of images, as the open snapshot sees them.
    pub fn totals(&self) -> Result<(i64, i64)> {
        each!(self, s => s.totals())
    }

    /// The row with id `id`.
    pub fn get(&self, id: i64) -> Result<Option<StoredRow>> {
        each!(self, s => s.get(id))
    }

    /// One page of rows matching `filter`, in id order, after `after` (exclusive).
    pub fn scan_page(
        &self,
        filter: &ScanFilter,
        after: Option<i64>,
        limit: usize,
    ) -> Result<Vec<StoredRow>> {
        each!(self, s => s.scan_page(filter, after, limit))
    }

    /// The image a row's `blob_id` names.
    pub fn read_blob(&self, blob_id: i64) -> Result<Vec<u8>> {
        each!(self, s => s.read_blob(blob_id))
    }

    /// The largest id, if any row.
    pub fn max_id(&self) -> Result<Option<i64>> {
        each!(self, s => s.max_id())
    }

    /// Calls `visit(id, stored hash, image bytes or None if missing)` for every row.
    pub fn for_each_image(&self, visit: impl FnMut(i64, &str, Option<&[u8]>)) -> Result<()> {
        each!(self, s => s.for_each_image(visit))
    }

    /// Every id, in order.
    pub fn ids(&self) -> Result<Vec<i64>> {
        each!(self, s => s.ids())
    }

    /// Inserts a row (its id is free) with its image, in transaction `txid`.
    pub fn insert(&self, txid: u64, row: &NewRow, data: &[u8]) -> Result<()> {
        match self {
            TableShard::Local(s) => s.insert(txid, row, data),
            TableShard::Server(s) => s.insert(row, data),
        }
    }

    /// Inserts a row with its image if its id is free, in transaction `txid`; whether it did.
    /// (A server does both in one round trip.)
    pub fn insert_if_free(&self, txid: u64, row: &NewRow, data: &[u8]) -> Result<bool> {
        match self {
            TableShard::Local(s) => match s.get(row.id)? {
                Some(_) => Ok(false),
                None => s.insert(txid, row, data).map(|()| true),
            },
            TableShard::Server(s) => s.insert_if_free(row, data),
        }
    }

    /// Rewrites row `current` as `row` (same id), with a new image if `data` is given.
    pub fn update(
        &self,
        txid: u64,
        current: &StoredRow,
        row: &NewRow,
        data: Option<&[u8]>,
    ) -> Result<()> {
        match self {
            TableShard::Local(s) => s.update(txid, current, row, data),
            TableShard::Server(s) => s.update(row, data),
        }
    }

    /// Deletes row `current`.
    pub fn delete(&self, txid: u64, current: &StoredRow) -> Result<()> {
        match self {
            TableShard::Local(s) => s.delete(txid, current),
            TableShard::Server(s) => s.delete(current.id),
        }
    }
}

impl Participant for TableShard {
    fn name(&self) -> String {
        each!(self, s => s.name())
    }

    fn begin_read(&mut self) -> Result<Vec<u64>> {
        each!(self, s => s.begin_read())
    }

    fn is_remote(&self) -> bool {
        each!(self, s => s.is_remote())
    }

    fn snapshot_last_txid(&self) -> Option<u64> {
        each!(self, s => s.snapshot_last_txid())
    }

    fn prepared_visible(&self) -> bool {
        each!(self, s => s.prepared_visible())
    }

    fn end(&mut self) -> Result<()> {
        each!(self, s => Participant::end(s))
    }

    fn begin_write(&mut self) -> Result<()> {
        each!(self, s => Participant::begin_write(s))
    }

    fn savepoint(&mut self, level: i32) -> Result<()> {
        each!(self, s => Participant::savepoint(s, level))
    }

    fn release(&mut self, level: i32) -> Result<()> {
        each!(self, s => Participant::release(s, level))
    }

    fn rollback_to(&mut self, level: i32) -> Result<()> {
        each!(self, s => Participant::rollback_to(s, level))
    }

    fn rollback_to_start(&mut self) -> Result<()> {
        each!(self, s => Participant::rollback_to_start(s))
    }

    fn last_txid(&mut self) -> Result<u64> {
        each!(self, s => Participant::last_txid(s))
    }

    fn prepared(&mut self) -> Result<Vec<PrepareRecord>> {
        each!(self, s => s.prepared())
    }

    fn changes(&mut self, txid: u64, bytes_max: u64) -> Result<Option<Vec<u8>>> {
        each!(self, s => Participant::changes(s, txid, bytes_max))
    }

    fn commit_logged(&mut self, txid: u64) -> Result<()> {
        each!(self, s => Participant::commit_logged(s, txid))
    }

    fn replay(&mut self, txid: u64, changes: &[u8]) -> Result<Replayed> {
        each!(self, s => Participant::replay(s, txid, changes))
    }

    fn prepare(&mut self, txid: u64, participants: &[u16], decided_by: Option<&str>) -> Result<()> {
        each!(self, s => Participant::prepare(s, txid, participants, decided_by))
    }

    fn finalize(&mut self, txid: u64) -> Result<()> {
        each!(self, s => Participant::finalize(s, txid))
    }

    fn abort_prepared(&mut self, txid: u64) -> Result<()> {
        each!(self, s => Participant::abort_prepared(s, txid))
    }

    fn pre_commit(&mut self, txid: u64) -> Result<()> {
        each!(self, s => Participant::pre_commit(s, txid))
    }

    fn withdraw_pre_commit(&mut self, txid: u64) -> Result<()> {
        each!(self, s => Participant::withdraw_pre_commit(s, txid))
    }

    fn take_over(&mut self) -> Result<()> {
        each!(self, s => Participant::take_over(s))
    }

    fn sync_job(&self) -> Option<SyncJob> {
        each!(self, s => s.sync_job())
    }
}

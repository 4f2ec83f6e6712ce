//! Ids for rows inserted without one, assigned as SQLite assigns rowids: one above the largest
//! id of every shard (the open transaction's writes included), or 1 in an empty table; once the
//! largest is `i64::MAX`, a random unused positive id.
//!
//! The largest id is looked up once a write transaction and then followed as rows are inserted
//! and deleted. The cache belongs to one write transaction: the table forgets it when the
//! transaction ends and when a savepoint rolls back.

use crate::error::{Error, Result};
use crate::placement::shard_of;
use crate::table::TableShard;

#[derive(Default)]
pub struct RowIds {
    /// The next id to assign, once looked up (`None`: look it up).
    next: Option<i64>,
}

impl RowIds {
    /// Takes back `id`, the last one [`assign`](Self::assign) gave, for a row that was refused
    /// before anything was written: the next row gets it, as SQLite would give it.
    pub fn give_back(&mut self, id: i64) {
        if self.next == id.checked_add(1) {
            self.next = Some(id);
        }
    }

    /// The id for a row inserted without one.
    pub fn assign(&mut self, shards: &[TableShard]) -> Result<i64> {
        let next = match self.next {
            Some(next) => Some(next),
            None => {
                let mut max = None;
                for shard in shards {
                    max = max.max(shard.max_id()?);
                }
                max.map_or(Some(1), |max: i64| max.checked_add(1))
            }
        };
        match next {
            Some(next) => {
                self.next = next.checked_add(1);
                Ok(next)
            }
            None => random_unused_id(shards),
        }
    }

    /// A row with this id was inserted: assigned ids stay above it.
    pub fn inserted(&mut self, id: i64) {
        if let Some(next) = self.next {
            // Above `i64::MAX`, nothing: the next id is looked up again (and drawn).
            self.next = id.checked_add(1).map(|after| next.max(after));
        }
    }

    /// The row with this id was deleted: if it may have been the largest, the next id is looked
    /// up again (SQLite reuses a freed largest rowid).
    pub fn deleted(&mut self, id: i64) {
        if self.next.is_some_and(|next| id >= next.saturating_sub(1)) {
            self.next = None;
        }
    }

    /// The transaction ended, or a savepoint rolled back: look the largest id up again.
    pub fn forget(&mut self) {
        self.next = None;
    }
}

/// A random positive id no row has, for when the largest id is `i64::MAX`: a few tries, as
/// SQLite makes, then an error.
fn random_unused_id(shards: &[TableShard]) -> Result<i64> {
    use std::hash::{BuildHasher, Hasher};
    const TRIES: u64 = 100;
    for attempt in 0..TRIES {
        let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
        hasher.write_u64(attempt);
        let id = (hasher.finish() >> 1).max(1) as i64;
        if shards[shard_of(id, shards.len())].get(id)?.is_none() {
            return Ok(id);
        }
    }
    Err(Error::NoFreeId { tries: TRIES })
}

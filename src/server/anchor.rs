//! The anchor: what a table on PostgreSQL servers keeps on its first server in place of the local
//! journal and lock files, so that every host that opens the table coordinates through it (the
//! [`Control`] of such a table).
//!
//! On the anchor, in the table's schema (see the folder's front page):
//! - `decisions(txid PRIMARY KEY, shards)`: one row per prepared transaction decided to commit,
//!   inserted by its own committed statement. **That commit is the commit point.** A decision
//!   taken back (step 8) is the row deleted. Rows go once no server holds any transaction
//!   prepared (the trim, step 9): every COMMIT PREPARED is durable when it returns.
//! - `publication`: a sequence, the publication counter, advanced once in each exclusive
//!   window of the publish lock.
//! - `txids`: a sequence that transaction ids are drawn from, so that none is given twice (see
//!   the protocol document, "Transaction ids").
//! - Two session advisory locks, keyed by the table's id: the writer lock and the publish lock
//!   (taken shared by readers while they open their snapshots). A session's locks go when it
//!   ends, so a dead host's locks free themselves once the server notices (keepalives).
//!
//! Invariants:
//! - Everything runs on one session (this table's connection to the anchor), and a decision is
//!   written on the session that holds the writer lock. If that session drops while a lock is
//!   held, no new one is made until every lock of it is released: a decision written on a new
//!   session could race the recovery of another host that took the writer lock meanwhile.
//! - A decision whose answer was lost (the connection dropped, the deadline passed) is reported
//!   unknown, never as failed: recovery, reading the rows, settles it either way.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio_postgres::error::SqlState;

use super::link::Link;
use super::Address;
use crate::commit::control::{Control, Held, PublishWindow};
use crate::commit::locks::PublishState;
use crate::error::{Error, Result};
use crate::journal::{LoggedAt, Record, TableId};

/// The anchor of one table, as one connection of one host has it open.
pub struct Anchor {
    link: Arc<Mutex<AnchorLink>>,
    /// The table's schema on the server, quoted.
    schema: String,
    writer_key: i64,
    publish_key: i64,
    /// The decisions as last read: transaction id to the shards it wrote.
    committed: HashMap<u64, Vec<u16>>,
}

/// The anchor session, and how many of its locks are held.
struct AnchorLink {
    link: Link,
    locks_held: usize,
}

impl AnchorLink {
    /// The link, for one call; once no lock of a dropped session is held, a new one may be made.
    fn link(&mut self) -> &mut Link {
        if self.locks_held == 0 {
            self.link.lost = false;
        }
        &mut self.link
    }
}

/// A lock held on the anchor session; dropping it unlocks (if the session is gone, so is the
/// lock).
struct AnchorLock {
    link: Arc<Mutex<AnchorLink>>,
    unlock: String,
}

impl Drop for AnchorLock {
    fn drop(&mut self) {
        let mut anchor = lock(&self.link);
        anchor.locks_held = anchor.locks_held.saturating_sub(1);
        if !anchor.link.lost {
            let _ = anchor.link.batch("releasing a lock", &self.unlock);
        }
    }
}

impl PublishWindow for AnchorLock {
    /// A table on servers takes no logged commit, so its mark is never set.
    fn set_mark(&mut self, txid: u64) -> Result<()> {
        match txid {
            0 => Ok(()),
            _ => Err(Error::Internal(
                "a table on PostgreSQL servers has no logged commits".into(),
            )),
        }
    }
}

fn lock(link: &Mutex<AnchorLink>) -> MutexGuard<'_, AnchorLink> {
    link.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The advisory lock key made of 8 bytes of the table id.
fn key(bytes: &[u8]) -> i64 {
    let mut key = [0u8; 8];
    key.copy_from_slice(&bytes[..8]);
    i64::from_le_bytes(key)
}

impl Anchor {
    /// Connects to the anchor of table `table_id` (whose schema `schema`, quoted, holds its
    /// shard 0), making its decision table and counter first if `create`.
    pub fn open(
        address: Address,
        table_id: &TableId,
        schema: &str,
        timeout_ms: u64,
        create: bool,
    ) -> Result<Anchor> {
        let mut link = Link::new(address, timeout_ms)?;
        if create {
            link.batch(
                "making the anchor",
                &format!(
                    "CREATE TABLE IF NOT EXISTS {schema}.decisions(txid bigint PRIMARY KEY, shards text NOT NULL);
                     CREATE SEQUENCE IF NOT EXISTS {schema}.publication;
                     CREATE SEQUENCE IF NOT EXISTS {schema}.txids;"
                ),
            )?;
        }
        let mut anchor = Anchor {
            link: Arc::new(Mutex::new(AnchorLink {
                link,
                locks_held: 0,
            })),
            schema: schema.to_string(),
            writer_key: key(&table_id[..8]),
            publish_key: key(&table_id[8..]),
            committed: HashMap::new(),
        };
        anchor.refresh()?;
        Ok(anchor)
    }

    /// Takes advisory lock `key` (`shared` or not) on the anchor session, waiting up to the
    /// session's `lock_timeout` (the busy timeout, `timeout_ms`) or not at all if that is 0,
    /// then runs `after` in the same round trip.
    fn take(
        &self,
        what: &str,
        key: i64,
        shared: bool,
        timeout_ms: u64,
        after: &str,
    ) -> Result<AnchorLock> {
        let kind = if shared { "_shared" } else { "" };
        let mut anchor = lock(&self.link);
        let sql = match timeout_ms {
            0 => format!(
                "DO $$BEGIN IF NOT pg_try_advisory_lock{kind}({key}) THEN \
                 RAISE EXCEPTION USING ERRCODE = 'lock_not_available'; END IF; END$$; {after}"
            ),
            _ => format!("SELECT pg_advisory_lock{kind}({key}); {after}"),
        };
        if let Err(e) = anchor.link().batch(what, &sql) {
            let refused = matches!(&e, Error::Server { source, .. }
                if source.code() == Some(&SqlState::LOCK_NOT_AVAILABLE));
            // Unless the lock itself was refused, it may have been taken before the statement
            // that failed: a session lock outlives its statement, so the session goes, and
            // every lock with it.
            if !(refused && after.is_empty()) {
                anchor.link.disconnect();
            }
            return Err(match refused {
                true => Error::Busy {
                    what: what.to_string(),
                    timeout_ms,
                },
                false => e,
            });
        }
        anchor.locks_held += 1;
        Ok(AnchorLock {
            link: Arc::clone(&self.link),
            unlock: format!("SELECT pg_advisory_unlock{kind}({key})"),
        })
    }

    fn read_decisions(&self) -> Result<HashMap<u64, Vec<u16>>> {
        let sql = format!("SELECT txid, shards FROM {}.decisions", self.schema);
        let rows = lock(&self.link)
            .link()
            .query("reading the decisions", &sql, &[])?;
        let mut committed = HashMap::new();
        for row in rows {
            let read = |e: tokio_postgres::Error| {
                self.damaged(&format!("a decision row cannot be read ({e})"))
            };
            let txid: i64 = row.try_get(0).map_err(read)?;
            let shards: String = row.try_get(1).map_err(read)?;
            let shards = shards
                .split(',')
                .filter(|s| !s.is_empty())
                .map(str::parse)
                .collect::<std::result::Result<Vec<u16>, _>>()
                .map_err(|_| self.damaged(&format!("decision {txid} names shards {shards:?}")))?;
            committed.insert(txid as u64, shards);
        }
        Ok(committed)
    }

    fn damaged(&self, detail: &str) -> Error {
        Error::ServerForeign {
            server: self.name(),
            detail: format!("holds damaged decision records: {detail}"),
        }
    }
}

/// Whether a failed call may have done its work all the same: its answer was lost (the
/// connection broke, the deadline passed), as opposed to the server refusing it.
fn outcome_unknown(e: &Error) -> bool {
    match e {
        Error::Server { source, .. } => source
            .as_db_error()
            .is_none_or(|d| matches!(d.severity(), "FATAL" | "PANIC")),
        _ => true,
    }
}

impl Control for Anchor {
    fn name(&self) -> String {
        format!("the anchor {}", lock(&self.link).link.address)
    }

    fn lock_writer(&self, timeout_ms: u64) -> Result<Held> {
        self.take("writer lock", self.writer_key, false, timeout_ms, "")
            .map(Held::new)
    }

    fn writer_alive(&self) -> bool {
        let key = self.writer_key;
        let sql = format!(
            "SELECT CASE WHEN pg_try_advisory_lock({key}) THEN NOT pg_advisory_unlock({key}) ELSE true END"
        );
        let alive = lock(&self.link)
            .link()
            .query("checking for a live writer", &sql, &[]);
        // Unknown counts as dead: a reader then goes to recovery, which takes the writer lock
        // (or fails), rather than read past prepared transactions nobody may own.
        alive.is_ok_and(|rows| {
            rows.first()
                .and_then(|r| r.try_get::<_, bool>(0).ok())
                .unwrap_or(false)
        })
    }

    fn lock_publish_shared(&self, timeout_ms: u64) -> Result<Held> {
        self.take("publish lock", self.publish_key, true, timeout_ms, "")
            .map(Held::new)
    }

    fn publishing(&self, timeout_ms: u64) -> Result<Box<dyn PublishWindow>> {
        let raise = format!(
            "SELECT nextval('{}.publication')",
            self.schema.replace('\'', "''")
        );
        Ok(Box::new(self.take(
            "publish lock",
            self.publish_key,
            false,
            timeout_ms,
            &raise,
        )?))
    }

    /// A table on servers takes no logged commit: its mark is never set.
    fn mark(&self) -> Result<u64> {
        Ok(0)
    }

    fn publish_state(&self) -> Result<PublishState> {
        let sql = format!("SELECT last_value FROM {}.publication", self.schema);
        let rows = lock(&self.link)
            .link()
            .query("reading the publication counter", &sql, &[])?;
        let publication: i64 = rows
            .first()
            .and_then(|r| r.try_get(0).ok())
            .ok_or_else(|| self.damaged("the publication counter is missing"))?;
        Ok(PublishState {
            mark: 0,
            publication: publication as u64,
        })
    }

    /// A decision row is durable once its statement returned: nothing to sync.
    fn refresh(&mut self) -> Result<()> {
        self.committed = self.read_decisions()?;
        Ok(())
    }

    fn begin_recovery(&mut self) -> Result<()> {
        self.refresh()
    }

    /// From a sequence on the anchor, which never gives an id twice: a PREPARE whose answer
    /// was lost may land on its server after the writer gave up, and must not be taken for a
    /// later transaction of the same id.
    fn next_txid(&mut self, floor: u64) -> Result<u64> {
        let sql = format!(
            "SELECT setval('{0}.txids', greatest(nextval('{0}.txids'), $1))",
            self.schema.replace('\'', "''")
        );
        let rows = lock(&self.link).link().query(
            "taking a transaction id",
            &sql,
            &[Box::new(floor as i64)],
        )?;
        rows.first()
            .and_then(|r| r.try_get::<_, i64>(0).ok())
            .map(|txid| txid as u64)
            .ok_or_else(|| self.damaged("the transaction id sequence is missing"))
    }

    fn is_committed(&self, txid: u64) -> bool {
        self.committed.contains_key(&txid)
    }

    fn decide(&mut self, record: &Record) -> std::result::Result<(), (Error, bool)> {
        if record.changes.is_some() || record.floor {
            let refused = "a table on PostgreSQL servers takes no logged commit";
            return Err((Error::Internal(refused.into()), false));
        }
        let txid = record.txid as i64;
        let written = {
            let mut anchor = lock(&self.link);
            let link = anchor.link();
            if record.abort {
                let sql = format!("DELETE FROM {}.decisions WHERE txid = $1", self.schema);
                crate::fault::check("anchor_decide")
                    .and_then(|()| link.execute("taking a decision back", &sql, &[Box::new(txid)]))
            } else {
                let shards: Vec<String> = record.shards.iter().map(u16::to_string).collect();
                let sql = format!(
                    "INSERT INTO {}.decisions(txid, shards) VALUES ($1, $2)",
                    self.schema
                );
                crate::fault::check("anchor_decide").and_then(|()| {
                    link.execute(
                        "writing a decision",
                        &sql,
                        &[Box::new(txid), Box::new(shards.join(","))],
                    )
                })
            }
        };
        match written {
            Ok(_) if record.abort => {
                self.committed.remove(&record.txid);
                Ok(())
            }
            Ok(_) => {
                self.committed.insert(record.txid, record.shards.clone());
                Ok(())
            }
            Err(e) => {
                let unknown = outcome_unknown(&e);
                Err((e, unknown))
            }
        }
    }

    fn logged(&self) -> &[LoggedAt] {
        &[]
    }

    fn read_logged(&self, at: LoggedAt) -> Result<Record> {
        Err(Error::Internal(format!(
            "a table on PostgreSQL servers has no logged commit {}",
            at.txid
        )))
    }

    fn committed_shards(&self, txid: u64) -> Option<Vec<u16>> {
        self.committed.get(&txid).cloned()
    }

    fn prepared_decisions(&self) -> Vec<(u64, Vec<u16>)> {
        self.committed
            .iter()
            .map(|(txid, shards)| (*txid, shards.clone()))
            .collect()
    }

    fn floor(&self) -> Vec<u64> {
        Vec::new()
    }

    /// Rows are few and small: trimmed once there are more than this.
    fn needs_trim(&self, _limit_bytes: u64) -> bool {
        self.committed.len() > 64
    }

    fn trim(&mut self, _last_txids: &[u64]) -> Result<()> {
        let sql = format!("DELETE FROM {}.decisions", self.schema);
        lock(&self.link)
            .link()
            .execute("trimming the decisions", &sql, &[])?;
        self.committed.clear();
        Ok(())
    }
}

//! The anchor: what a table on PostgreSQL servers keeps on its first server in place of the local
//! journal and lock files, so that every host that opens the table coordinates through it (the
//! [`Control`] of such a table).
//!
//! On the anchor, in the table's schema (see the folder's front page):
//! - `decisions(txid PRIMARY KEY, shards)`: one row per prepared transaction decided to commit,
//!   inserted by its own committed statement. **That commit is the commit point.** A decision
//!   taken back (step 8) is the row deleted. Rows go once no server holds any transaction
//!   prepared (the trim, step 9): every COMMIT PREPARED is durable when it returns. One more
//!   row, the marker (txid 0, no shards), is made with the table, kept by trims and written
//!   again with every decision: decision rows found without it (deleted, the table dropped)
//!   may have lost decisions, which recovery then does not presume aborted on a two-phase
//!   table (see `Control::records_lost`). Deleting some rows but not the marker is not seen.
//! - `publication`: a sequence, the publication counter, advanced once in each exclusive
//!   window of the publish lock.
//! - `txids`: a sequence that transaction ids are drawn from, so that none is given twice (see
//!   the protocol document, "Transaction ids"); one is drawn in the writer lock's round trip,
//!   and is also the acquisition's token, with which a three-phase table's steps claim each
//!   server's fence (`super::fence`).
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

use super::link::{is_undefined_table, Link};
use super::{Address, WriterToken};
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
    /// Whether the last read found the marker row missing (or no decision table at all).
    lost: bool,
    /// The token of the last acquisition of the writer lock, shared with the table's shards.
    token: WriterToken,
}

/// The anchor session, and how many of its locks are held.
struct AnchorLink {
    link: Link,
    locks_held: usize,
    /// A transaction id drawn with the writer lock, in the same round trip, for `next_txid`.
    drawn_txid: Option<u64>,
    /// While locks are released together: the unlocks waiting to be sent.
    releasing: Option<Vec<String>>,
}

impl AnchorLink {
    /// The link, for one call; once no lock of a dropped session is held, a new one may be made.
    fn link(&mut self) -> &mut Link {
        if self.locks_held == 0 {
            self.link.lost = false;
        }
        &mut self.link
    }

    /// Sends `unlocks` (one statement each) in one round trip. If that fails, the session goes,
    /// and the locks with it: a lock must never outlive its holder's release.
    fn release(&mut self, unlocks: &[String]) {
        self.locks_held = self.locks_held.saturating_sub(unlocks.len());
        if unlocks.is_empty() || self.link.lost {
            return;
        }
        if self
            .link
            .batch("releasing a lock", &unlocks.join("; "))
            .is_err()
        {
            self.link.disconnect();
        }
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
        match &mut anchor.releasing {
            Some(waiting) => waiting.push(std::mem::take(&mut self.unlock)),
            None => anchor.release(std::slice::from_ref(&self.unlock)),
        }
    }
}

/// Locks released together (see [`Control::release_together`]): they go when this drops.
struct ReleaseTogether {
    link: Arc<Mutex<AnchorLink>>,
}

impl Drop for ReleaseTogether {
    fn drop(&mut self) {
        let mut anchor = lock(&self.link);
        let unlocks = anchor.releasing.take().unwrap_or_default();
        anchor.release(&unlocks);
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
    /// shard 0), making its decision table and counter first if `create`. Each acquisition of
    /// the writer lock sets `token`.
    pub fn open(
        address: Address,
        (table_id, schema): (&TableId, &str),
        token: WriterToken,
        timeout_ms: u64,
        create: bool,
    ) -> Result<Anchor> {
        let mut link = Link::new(address, timeout_ms)?;
        if create {
            link.batch(
                "making the anchor",
                &format!(
                    "{}
                     CREATE SEQUENCE IF NOT EXISTS {schema}.publication;
                     CREATE SEQUENCE IF NOT EXISTS {schema}.txids;",
                    decisions_sql(schema)
                ),
            )?;
        }
        let mut anchor = Anchor {
            link: Arc::new(Mutex::new(AnchorLink {
                link,
                locks_held: 0,
                drawn_txid: None,
                releasing: None,
            })),
            schema: schema.to_string(),
            writer_key: key(&table_id[..8]),
            publish_key: key(&table_id[8..]),
            committed: HashMap::new(),
            lost: false,
            token,
        };
        anchor.refresh()?;
        Ok(anchor)
    }

    /// Takes advisory lock `key` (`shared` or not) on the anchor session, waiting up to the
    /// session's `lock_timeout` (the busy timeout, `timeout_ms`) or not at all if that is 0,
    /// then runs `after` in the same round trip; with the first column of the rows it returns.
    fn take(
        &self,
        what: &str,
        (key, shared): (i64, bool),
        timeout_ms: u64,
        after: &str,
    ) -> Result<(AnchorLock, Vec<String>)> {
        let kind = if shared { "_shared" } else { "" };
        let mut anchor = lock(&self.link);
        let sql = match timeout_ms {
            0 => format!(
                "DO $$BEGIN IF NOT pg_try_advisory_lock{kind}({key}) THEN \
                 RAISE EXCEPTION USING ERRCODE = 'lock_not_available'; END IF; END$$; {after}"
            ),
            _ => format!("SELECT pg_advisory_lock{kind}({key}); {after}"),
        };
        let rows = match anchor.link().batch_rows(what, &sql) {
            Ok(rows) => rows,
            Err(e) => {
                let refused = matches!(&e, Error::Server { source, .. }
                if source.code() == Some(&SqlState::LOCK_NOT_AVAILABLE));
                // Unless the lock itself was refused (and nothing after it could have failed the
                // same way with the lock taken), it may have been taken before the statement that
                // failed: a session lock outlives its statement, so the session goes, and every
                // lock with it.
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
        };
        anchor.locks_held += 1;
        let held = AnchorLock {
            link: Arc::clone(&self.link),
            unlock: format!("SELECT pg_advisory_unlock{kind}({key})"),
        };
        Ok((held, rows))
    }

    /// The name of sequence `name` of the table's schema, as a string literal.
    fn sequence(&self, name: &str) -> String {
        format!("'{}.{name}'", self.schema.replace('\'', "''"))
    }

    /// The decision rows, and whether the marker is missing among them (or the table is gone).
    fn read_decisions(&self) -> Result<(HashMap<u64, Vec<u16>>, bool)> {
        let sql = format!("SELECT txid, shards FROM {}.decisions", self.schema);
        let read = lock(&self.link)
            .link()
            .query("reading the decisions", &sql, &[]);
        let rows = match read {
            Err(e) if is_undefined_table(&e) => return Ok((HashMap::new(), true)),
            other => other?,
        };
        let mut committed = HashMap::new();
        let mut marker = false;
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
            match txid {
                0 => marker = true,
                _ => drop(committed.insert(txid as u64, shards)),
            }
        }
        Ok((committed, !marker))
    }

    /// Writes decision `record` (a commit's row, or a row taken back) on the anchor session.
    /// A commit's row carries the marker with it if it was missing: when a decision is written,
    /// every earlier decided transaction is finished on every server (the writer found nothing
    /// prepared when it began), so no row deleted before is still needed.
    fn write_decision(&self, record: &Record) -> Result<()> {
        let txid = record.txid as i64;
        let mut anchor = lock(&self.link);
        let link = anchor.link();
        crate::fault::check("anchor_decide")?;
        if record.abort {
            let sql = format!("DELETE FROM {}.decisions WHERE txid = $1", self.schema);
            return link
                .execute("taking a decision back", &sql, &[Box::new(txid)])
                .map(drop);
        }
        // The decision raises the publication counter in its own transaction: a transaction
        // of another connection that read before it must not write after it
        // (SQLITE_BUSY_SNAPSHOT), even if this writer dies before its finalize.
        let shards: Vec<String> = record.shards.iter().map(u16::to_string).collect();
        let sql = format!(
            "INSERT INTO {schema}.decisions(txid, shards) VALUES ({txid}, '{}');
             {}
             SELECT nextval({})",
            shards.join(","),
            marker_sql(&self.schema),
            self.sequence("publication"),
            schema = self.schema,
        );
        link.batch("writing a decision", &sql)
    }

    /// Makes the decision table and its marker row again where they are missing.
    fn remake_decisions(&self) -> Result<()> {
        lock(&self.link).link().batch(
            "restoring the decision records' marker",
            &decisions_sql(&self.schema),
        )
    }

    fn damaged(&self, detail: &str) -> Error {
        Error::ServerForeign {
            server: self.name(),
            detail: format!("holds damaged decision records: {detail}"),
        }
    }
}

/// Makes the decision table of schema `schema` and its marker row, where they are missing.
fn decisions_sql(schema: &str) -> String {
    format!(
        "CREATE TABLE IF NOT EXISTS {schema}.decisions(txid bigint PRIMARY KEY, shards text NOT NULL);
         {}",
        marker_sql(schema)
    )
}

/// Writes the marker row (txid 0, no shards) among the decisions of schema `schema`, if missing.
fn marker_sql(schema: &str) -> String {
    format!("INSERT INTO {schema}.decisions VALUES (0, '') ON CONFLICT DO NOTHING;")
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

    /// Also draws the next transaction id, in the same round trip, once the lock is held: so
    /// every use of the sequence is under the writer lock, and `next_txid`'s `setval` can never
    /// set it back below an id drawn meanwhile.
    fn lock_writer(&self, timeout_ms: u64) -> Result<Held> {
        let draw = format!("SELECT nextval({})", self.sequence("txids"));
        let writer = (self.writer_key, false);
        let (held, rows) = self.take("writer lock", writer, timeout_ms, &draw)?;
        let drawn = rows.iter().find_map(|t| t.parse().ok());
        self.token.set(drawn.unwrap_or(0));
        lock(&self.link).drawn_txid = drawn;
        Ok(Held::new(held))
    }

    /// A call that succeeds on the session that took the writer lock shows the lock still
    /// held: a session's lock goes only with it, and a lost session is not made again while
    /// it held a lock.
    fn confirm_writer(&self) -> Result<()> {
        let mut anchor = lock(&self.link);
        if anchor.locks_held == 0 {
            return Err(Error::Internal(
                "confirming a writer lock that is not held".into(),
            ));
        }
        crate::fault::check("anchor_confirm")?;
        anchor
            .link()
            .batch("confirming the writer lock", "SELECT 1")
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
        self.take("publish lock", (self.publish_key, true), timeout_ms, "")
            .map(|(held, _)| Held::new(held))
    }

    fn publishing(&self, timeout_ms: u64) -> Result<Box<dyn PublishWindow>> {
        let raise = format!("SELECT nextval({})", self.sequence("publication"));
        // Raised inside the window, never before it: a reader that read the counter must see
        // it raised by any window that opens after.
        let publish = (self.publish_key, false);
        let (held, _) = self.take("publish lock", publish, timeout_ms, &raise)?;
        Ok(Box::new(held))
    }

    /// Decisions are rows on the anchor, read afresh by every recovery.
    fn recovery_lifts_poison(&self) -> bool {
        true
    }

    fn release_together(&self) -> Held {
        let mut anchor = lock(&self.link);
        if anchor.releasing.is_some() {
            return Held::new(());
        }
        anchor.releasing = Some(Vec::new());
        Held::new(ReleaseTogether {
            link: Arc::clone(&self.link),
        })
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
        (self.committed, self.lost) = self.read_decisions()?;
        Ok(())
    }

    fn records_lost(&self) -> bool {
        self.lost
    }

    fn restore_records(&mut self) -> Result<()> {
        self.remake_decisions()?;
        self.lost = false;
        Ok(())
    }

    fn begin_recovery(&mut self) -> Result<()> {
        self.refresh()
    }

    /// From a sequence on the anchor, which never gives an id twice: a PREPARE whose answer
    /// was lost may land on its server after the writer gave up, and must not be taken for a
    /// later transaction of the same id. The id drawn with the writer lock, unless it is below
    /// `floor` (the sequence was set back, say the anchor restored from a backup): then the
    /// sequence is raised to it (the caller holds the writer lock).
    fn next_txid(&mut self, floor: u64) -> Result<u64> {
        if let Some(drawn) = lock(&self.link).drawn_txid.take().filter(|&t| t >= floor) {
            return Ok(drawn);
        }
        let txids = self.sequence("txids");
        let sql = format!("SELECT setval({txids}, greatest(nextval({txids}), $1))");
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
        let written = match self.write_decision(record) {
            // The decision table was dropped by hand: a row to take back is gone with it, and
            // one to write goes into the table made again (see `write_decision` for why the
            // marker may be too).
            Err(e) if is_undefined_table(&e) && record.abort => Ok(()),
            Err(e) if is_undefined_table(&e) => self
                .remake_decisions()
                .and_then(|()| self.write_decision(record)),
            other => other,
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

    /// Keeps the marker (and makes it again if it was missing: nothing is prepared now).
    fn trim(&mut self, _last_txids: &[u64]) -> Result<()> {
        let sql = format!(
            "{} DELETE FROM {}.decisions WHERE txid <> 0",
            decisions_sql(&self.schema),
            self.schema
        );
        lock(&self.link)
            .link()
            .batch("trimming the decisions", &sql)?;
        self.committed.clear();
        self.lost = false;
        Ok(())
    }
}

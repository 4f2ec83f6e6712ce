//! Where a table keeps what coordinates its writers and readers, in every process and on every
//! host that opens it: the writer lock, the publish lock (with the logged-commit mark and the
//! publication counter), and the decision records that are the commit point.
//!
//! A table of local files keeps them in files beside shard 0 ([`LocalControl`]: the journal and
//! the two lock files of `locks`). A table on PostgreSQL servers keeps them on its first server,
//! the anchor (`crate::server::anchor`), so that hosts coordinate through the servers. The
//! coordinator asks only what this trait offers; what each step needs of it, and why, is the
//! protocol document's (this folder's front page).
//!
//! Invariants every implementation keeps:
//! - The writer lock excludes every other writer of the table, on any host, and is released when
//!   its holder dies, so that `writer_alive` answers false only when no writer can still act.
//! - While the publish lock is held exclusively, no reader opens snapshots; each exclusive window
//!   raises the publication counter (a false raise only refuses a write that could have gone on).
//! - A decision that `decide` reported written survives a crash of this host and of the place it
//!   is kept; one it failed to write is absent, unless it reported the outcome unknown.

use std::any::Any;

use super::locks::{LockFile, PublishState};
use super::participant::Participant;
use crate::config::{Protocol, TableConfig};
use crate::error::{Error, Result};
use crate::journal::{Journal, LoggedAt, Record, TableId};

/// A lock of the table, held until dropped.
pub struct Held {
    _lock: Box<dyn Any + Send>,
}

impl Held {
    pub fn new(lock: impl Any + Send) -> Held {
        Held {
            _lock: Box::new(lock),
        }
    }
}

/// The publish lock held exclusively: a window in which what readers see may change.
pub trait PublishWindow {
    /// Sets the logged-commit mark (0 clears it).
    fn set_mark(&mut self, txid: u64) -> Result<()>;
}

/// No publish window: a commit that publishes nothing before its finalize (every written
/// participant's prepare is invisible) takes no lock at its decision, and sets no mark.
pub struct NoWindow;

impl PublishWindow for NoWindow {
    fn set_mark(&mut self, _txid: u64) -> Result<()> {
        Err(Error::Internal(
            "a logged-commit mark set outside the publish lock".into(),
        ))
    }
}

/// The table's locks and decision records (see the module's invariants).
pub trait Control {
    /// Names where the decisions are kept, in messages (a path or a server; never a secret).
    fn name(&self) -> String;

    // ---- locks ----------------------------------------------------------------------

    /// Takes the writer lock, waiting up to `timeout_ms`.
    fn lock_writer(&self, timeout_ms: u64) -> Result<Held>;
    /// Three-phase commit, after the vote and before the first pre-commit: an error unless
    /// this connection still holds the writer lock it took (so it held it through the whole
    /// transaction). Nothing to ask of a lock that cannot be lost while its holder lives (a
    /// local file's).
    fn confirm_writer(&self) -> Result<()> {
        Ok(())
    }
    /// Whether another connection, on any host, holds the writer lock now.
    fn writer_alive(&self) -> bool;
    /// Takes the publish lock shared (a reader opening its snapshots).
    fn lock_publish_shared(&self, timeout_ms: u64) -> Result<Held>;
    /// Takes the publish lock exclusively.
    fn publishing(&self, timeout_ms: u64) -> Result<Box<dyn PublishWindow>>;
    /// The mark and the publication counter.
    fn publish_state(&self) -> Result<PublishState>;
    /// Whether a recovery in this connection settles a decision whose outcome was unknown, and
    /// so may lift the poison: true where decisions are read afresh from where they are kept (a
    /// server's committed rows); false for a local journal after a failed write or sync, whose
    /// pages in memory may no longer be what the disk holds (the table must be opened again).
    fn recovery_lifts_poison(&self) -> bool {
        false
    }
    /// Until the returned guard drops, locks let go are released together, when it drops (on
    /// a server, in one round trip). Without it, each is released when dropped.
    fn release_together(&self) -> Held {
        Held::new(())
    }
    /// The logged-commit mark alone.
    fn mark(&self) -> Result<u64> {
        self.publish_state().map(|state| state.mark)
    }

    // ---- decisions ------------------------------------------------------------------

    /// Reads the decisions written since the last read, and makes what it read durable (a
    /// writer may have died between writing one and syncing it).
    fn refresh(&mut self) -> Result<()>;
    /// Recovery begins: reads every decision, drops a torn tail, makes the rest durable.
    fn begin_recovery(&mut self) -> Result<()>;
    /// The id of a new write transaction: at least `floor` (1 + every shard's `last_txid`),
    /// and never one given before where a prepare whose answer was lost may still land on a
    /// server under the id it carried.
    fn next_txid(&mut self, floor: u64) -> Result<u64>;
    /// Whether a decision commits `txid` (as last read).
    fn is_committed(&self, txid: u64) -> bool;
    /// Whether the records, as last read, may have lost decisions (a server anchor's decision
    /// rows deleted): then a prepared transaction with no decision may have been committed, and
    /// a two-phase recovery must not presume it aborted. A local journal that is missing or
    /// damaged is found when it is opened instead (`LocalControl::open`).
    fn records_lost(&self) -> bool {
        false
    }
    /// Marks the records whole again, once nothing they could have decided is in doubt.
    fn restore_records(&mut self) -> Result<()> {
        Ok(())
    }
    /// Writes a decision durably; `Err` with `true` if its outcome is unknown (then the table is
    /// poisoned until recovery reads the records).
    fn decide(&mut self, record: &Record) -> std::result::Result<(), (Error, bool)>;
    /// The logged commits, in the order they were decided.
    fn logged(&self) -> &[LoggedAt];
    /// A logged commit again, with its changes.
    fn read_logged(&self, at: LoggedAt) -> Result<Record>;
    /// The shards a committed transaction wrote.
    fn committed_shards(&self, txid: u64) -> Option<Vec<u16>>;
    /// Every prepared commit decided, with the shards it wrote.
    fn prepared_decisions(&self) -> Vec<(u64, Vec<u16>)>;
    /// Each shard's `last_txid` when the records were last trimmed (empty if never).
    fn floor(&self) -> Vec<u64>;
    /// Whether the records should be trimmed at the next begin.
    fn needs_trim(&self, limit_bytes: u64) -> bool;
    /// Forgets every decision (every shard has made them durable): `last_txids` are the
    /// shards' as they are now.
    fn trim(&mut self, last_txids: &[u64]) -> Result<()>;
}

/// A table of local files: the journal and the two lock files beside shard 0.
pub struct LocalControl {
    journal: Journal,
    writer_lock: LockFile,
    publish_lock: LockFile,
    /// A three-phase table's journal decides nothing: it is never read after the open (so a
    /// journal deleted or damaged meanwhile changes nothing), and recovery, which reads only the
    /// shards' states, may lift the poison.
    three_phase: bool,
}

impl LocalControl {
    /// Opens the journal (creating it if `create`); a damaged one is set aside when nothing is
    /// in doubt, and a missing one is made again only then.
    pub fn open<P: Participant>(
        config: &TableConfig,
        table_id: TableId,
        shards: &mut [P],
        create: bool,
    ) -> Result<LocalControl> {
        let writer_lock = LockFile::open(&config.lock_path)?;
        let publish_lock = LockFile::open(&config.publish_lock_path)?;
        let existing = match Journal::open_existing(&config.journal_path, table_id) {
            Err(Error::JournalCorrupt { detail, .. }) => {
                let _writer = writer_lock.exclusive("writer lock", config.busy_timeout_ms)?;
                super::coordinator::set_aside_damaged(
                    config,
                    table_id,
                    shards,
                    &publish_lock,
                    &detail,
                )?
            }
            other => other?,
        };
        let journal = match existing {
            Some(journal) => journal,
            None => {
                if !create {
                    super::coordinator::refuse_missing_journal(
                        config,
                        shards,
                        &writer_lock,
                        &publish_lock,
                    )?;
                }
                Journal::create(&config.journal_path, table_id)?
            }
        };
        Ok(LocalControl {
            journal,
            writer_lock,
            publish_lock,
            three_phase: config.protocol == Protocol::ThreePhase,
        })
    }
}

impl PublishWindow for super::locks::Publishing {
    fn set_mark(&mut self, txid: u64) -> Result<()> {
        super::locks::Publishing::set_mark(self, txid)
    }
}

impl Control for LocalControl {
    fn name(&self) -> String {
        self.journal.path().display().to_string()
    }

    fn lock_writer(&self, timeout_ms: u64) -> Result<Held> {
        self.writer_lock
            .exclusive("writer lock", timeout_ms)
            .map(Held::new)
    }

    fn writer_alive(&self) -> bool {
        self.writer_lock.exclusive("writer lock", 0).is_err()
    }

    fn lock_publish_shared(&self, timeout_ms: u64) -> Result<Held> {
        self.publish_lock
            .shared("publish lock", timeout_ms)
            .map(Held::new)
    }

    fn publishing(&self, timeout_ms: u64) -> Result<Box<dyn PublishWindow>> {
        Ok(Box::new(self.publish_lock.publishing(timeout_ms)?))
    }

    fn publish_state(&self) -> Result<PublishState> {
        self.publish_lock.state()
    }

    fn recovery_lifts_poison(&self) -> bool {
        self.three_phase
    }

    fn refresh(&mut self) -> Result<()> {
        if self.three_phase {
            return Ok(());
        }
        self.journal.refresh()?;
        self.journal.sync()
    }

    fn begin_recovery(&mut self) -> Result<()> {
        if self.three_phase {
            return Ok(());
        }
        if self.journal.rescan()? {
            self.journal.cut_torn_tail()?;
        }
        // A record a dead writer wrote but never synced must be durable before anything acts
        // on it: finalizing from a record that a power cut then takes away would half-apply it.
        self.journal.sync()
    }

    /// A local shard's prepare is answered or the writer is dead: ids need not be kept apart.
    fn next_txid(&mut self, floor: u64) -> Result<u64> {
        Ok(floor)
    }

    fn is_committed(&self, txid: u64) -> bool {
        self.journal.is_committed(txid)
    }

    fn decide(&mut self, record: &Record) -> std::result::Result<(), (Error, bool)> {
        self.journal.refresh().map_err(|e| (e, false))?;
        self.journal.append(record)
    }

    fn logged(&self) -> &[LoggedAt] {
        self.journal.logged()
    }

    fn read_logged(&self, at: LoggedAt) -> Result<Record> {
        self.journal.read_logged(at)
    }

    fn committed_shards(&self, txid: u64) -> Option<Vec<u16>> {
        self.journal.committed_shards(txid).map(<[u16]>::to_vec)
    }

    fn prepared_decisions(&self) -> Vec<(u64, Vec<u16>)> {
        self.journal
            .prepared_decisions()
            .map(|(txid, shards)| (txid, shards.to_vec()))
            .collect()
    }

    fn floor(&self) -> Vec<u64> {
        self.journal.floor().to_vec()
    }

    /// A version 1 journal (from an older build) takes no LOGGED record: it is replaced too.
    fn needs_trim(&self, limit_bytes: u64) -> bool {
        self.journal.len_bytes() > limit_bytes || self.journal.is_version1()
    }

    fn trim(&mut self, last_txids: &[u64]) -> Result<()> {
        self.journal.reset(last_txids)
    }
}

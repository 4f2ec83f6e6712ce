//! The two-phase-commit coordinator: how a transaction on a sharded table commits on every shard
//! or on none, across crashes, kills and power cuts. This comment is the protocol's one
//! description; the code below follows it step by step.
//!
//! # Why a coordinator
//! SQLite has no durable "prepared" state, and in WAL mode a transaction over several attached
//! files is not atomic (its super-journal works only with rollback journals). Each shard is an
//! ordinary WAL-mode SQLite file; this module makes a transaction over several of them atomic.
//!
//! # Pieces
//! - Shards (`shard`): each records, inside the transaction itself, every touched row's state
//!   before the transaction (its *before-state*), so a transaction committed in the shard's own
//!   SQLite sense can still be undone. A *prepare record* marks such a transaction.
//! - The journal (`journal`): checksummed COMMIT records, synced. Nothing else.
//! - Two locks (`locks`): the writer lock (one writer at a time, across processes) and the
//!   publish lock (readers open snapshots only outside a commit's undecided window).
//!
//! # States of a transaction
//! ```text
//! Idle -> Writing --sync: 1 shard--> (one-phase commit) ---------------------> Decided -> Idle
//!            |     --sync: n shards-> Prepared (every shard) -> COMMIT synced -> Decided -> Idle
//!            |                          \-> any shard says no -> Aborted ---------------> Idle
//!            \--rollback--> Idle                                       (phase 2 = finalize)
//! ```
//!
//! # Commit steps (at SQLite's xSync; xCommit's result is ignored by SQLite, so the decision must
//! be durable before xSync returns)
//! 1. *Begin* (first write): take the writer lock; BEGIN IMMEDIATE on every shard; if any shard
//!    holds a prepare record, a writer died mid-commit: roll back and run recovery first. The
//!    transaction id is 1 + the largest `last_txid` of all shards.
//! 2. *Write*: each row change goes to its shard's open SQLite transaction, after its
//!    before-state is recorded. The connection reads its own writes through the same shards.
//! 3. *One-phase path*: if one shard was written, it drops its before-states and commits: one
//!    SQLite commit is atomic by itself. Its sync is the commit point.
//! 4. *Prepare* (n > 1 shards): take the publish lock exclusively; each written shard adds a
//!    prepare record and commits, and its WAL fsync starts on a pool thread while the next shard
//!    prepares (`durable`); all are waited for. So the prepare costs about one sync however many
//!    shards it touches. A shard that fails votes no; then
//!    every prepared shard is undone from its before-states and the statement fails. All votes
//!    must be yes: a majority would commit on some shards what another shard refused (say a
//!    constraint failure), so the transaction would be neither whole nor absent.
//! 5. *Decide*: append COMMIT(txid, shards) to the journal and fdatasync it. **That sync is the
//!    commit point.** If the append or sync fails, the record is cut off (and synced) before the
//!    shards are undone, so a failed COMMIT leaves nothing; if even the cut fails, the table is
//!    poisoned and recovery, reading the file, decides. Release the publish lock.
//! 6. *Finalize* (phase 2, at xCommit): each shard drops its before-states and prepare record in a
//!    transaction of its own, not synced: until it is durable the journal keeps the decision, and
//!    recovery finalizes again. Release the writer lock.
//! 7. *Trim*: at a later begin, if the journal is larger than `journal_limit` and no shard holds a
//!    prepare record, fsync every shard's WAL (making every finalize durable) and reset the
//!    journal. Only then may a COMMIT record be forgotten: presumed abort would otherwise turn
//!    an acknowledged commit into an abort.
//!
//! # Crash walk-through (what recovery finds after a crash at each step)
//! - Before 4 or during 2: shard transactions were never committed; SQLite rolls them back.
//! - During 4: some shards hold a prepare record, the journal has no COMMIT: recovery aborts
//!   (presumed abort) from the before-states. The COMMIT statement never returned.
//! - During 5: a torn or unsynced record fails its checksum and is ignored: abort. A synced one
//!   commits. The caller may not have seen the answer; either outcome is whole.
//! - During 6: prepare records remain with a COMMIT in the journal: recovery finalizes them.
//! - During 7: the journal is replaced atomically (rename) only after the shards are synced.
//!
//! # Recovery (at open, and whenever a reader or writer finds a prepare record that no live
//! writer owns): under the writer lock and the publish lock, for each prepare record on each
//! shard, finalize it if the journal holds its COMMIT, else abort it. Each step is one SQLite
//! transaction on one shard, so recovery interrupted at any point is simply run again.
//! A journal that is missing while shards hold prepare records cannot decide them: the table
//! refuses to open (in doubt) rather than guess.
//!
//! # Readers
//! A reader takes the publish lock shared, opens a read transaction on every shard (pinning
//! every snapshot), reads the prepare records they hold, and releases the lock. Writers hold the
//! lock exclusively from step 4 to the end of step 5, so every snapshot of one query is taken
//! before a transaction's first prepare or after its decision: no fractured reads, and no
//! undecided data. A prepare record in a snapshot is either decided (COMMIT in the journal; its
//! data is the committed data, finalize pending) or left by a dead writer: the reader then runs
//! recovery and opens its snapshots again.
//!
//! # Transactions that also write ordinary tables
//! SQLite calls xSync before it commits its own files. If its own commit then fails, SQLite calls
//! xRollback, but the imagestore part has already committed (step 5) and stays committed. The
//! imagestore part is atomic on its own; with the host's tables it is atomic unless the host's
//! own commit fails after ours (an I/O error on the host file).
//!
//! # Transaction ids
//! Every prepare and one-phase commit raises its shards' `last_txid` in the same SQLite
//! transaction, and a new id is above every shard's `last_txid`, so ids never repeat: not after
//! a crash, and not after the journal is reset.

use crate::config::TableConfig;
use crate::error::{Error, Result};
use crate::journal::{Journal, TableId};
use crate::locks::{LockFile, LockGuard};
use crate::shard::Shard;

/// How often a reader or writer retries after running recovery itself.
const RECOVERY_ATTEMPTS_MAX: usize = 3;

/// An open write transaction.
struct WriteTxn {
    txid: u64,
    _writer: LockGuard,
    /// Shards written by this transaction.
    dirty: Vec<bool>,
    /// Open savepoints: SQLite's level, and `dirty` as it was when the savepoint began.
    savepoints: Vec<(i32, Vec<bool>)>,
    /// The next id to assign to a row inserted without one.
    next_id: Option<i64>,
    /// Whether xSync decided this transaction (committed it).
    decided: bool,
}

/// What this connection has open on the shards.
enum Activity {
    Idle,
    /// A read transaction on every shard (one query's consistent snapshot).
    Reading,
    Writing(WriteTxn),
    /// xSync failed and undid the transaction; SQLite will roll back.
    Aborted,
}

/// The coordinator of one table in one connection.
pub struct Coordinator {
    table_name: String,
    busy_timeout_ms: u64,
    journal_limit_bytes: u64,
    journal: Journal,
    writer_lock: LockFile,
    publish_lock: LockFile,
    activity: Activity,
    poisoned: bool,
}

impl Coordinator {
    /// Opens the journal (creating it if `create`) and runs recovery if no writer is active.
    pub fn open(
        config: &TableConfig,
        table_id: TableId,
        shards: &mut [Shard],
        create: bool,
    ) -> Result<Coordinator> {
        let writer_lock = LockFile::open(&config.lock_path)?;
        let publish_lock = LockFile::open(&config.publish_lock_path)?;
        let journal = match Journal::open_existing(&config.journal_path, table_id)? {
            Some(journal) => journal,
            None => {
                if !create {
                    if let Some((shard, txids)) = first_prepared(shards)? {
                        return Err(Error::InDoubt(format!(
                            "the journal {} is missing while shard {} holds prepared transactions {txids:?}; \
                             their outcome cannot be known. Restore the journal, or decide: \
                             SELECT imagestore_resolve('{}', 'commit' or 'abort')",
                            config.journal_path.display(),
                            shard.display(),
                            config.table_name
                        )));
                    }
                }
                Journal::create(&config.journal_path, table_id)?
            }
        };
        let mut coordinator = Coordinator {
            table_name: config.table_name.clone(),
            busy_timeout_ms: config.busy_timeout_ms,
            journal_limit_bytes: config.journal_limit_bytes,
            journal,
            writer_lock,
            publish_lock,
            activity: Activity::Idle,
            poisoned: false,
        };
        // A live writer elsewhere owns its prepare records; only recover when none is active.
        if let Ok(writer) = coordinator.writer_lock.exclusive("writer lock", 0) {
            coordinator.recover(shards)?;
            drop(writer);
        }
        Ok(coordinator)
    }

    fn check_not_poisoned(&self) -> Result<()> {
        if self.poisoned {
            return Err(Error::Poisoned(self.table_name.clone()));
        }
        Ok(())
    }

    // ---- recovery -----------------------------------------------------------------------

    /// Finishes or undoes every prepared transaction. The caller holds the writer lock and has
    /// no transaction open on the shards.
    fn recover(&mut self, shards: &mut [Shard]) -> Result<()> {
        let _publish = self
            .publish_lock
            .exclusive("publish lock", self.busy_timeout_ms)?;
        if self.journal.refresh()? {
            self.journal.cut_torn_tail()?;
        }
        // A record a dead writer wrote but never synced must be durable before anything acts on
        // it: finalizing from a record that a power cut then takes away would half-apply it.
        self.journal.sync()?;
        for shard in shards.iter() {
            for txid in shard.prepared_txids()? {
                crate::fault::check("recovery_shard")?;
                if self.journal.is_committed(txid) {
                    shard.finalize(txid)?;
                } else {
                    shard.abort_prepared(txid)?;
                }
            }
        }
        Ok(())
    }

    // ---- readers ------------------------------------------------------------------------

    /// Opens one consistent snapshot over every shard, unless this connection already has a
    /// transaction open on them (then reads see that transaction).
    pub fn begin_read(&mut self, shards: &mut [Shard]) -> Result<()> {
        if !matches!(self.activity, Activity::Idle) {
            return Ok(());
        }
        self.check_not_poisoned()?;
        for _ in 0..RECOVERY_ATTEMPTS_MAX {
            if self.open_snapshots(shards)? {
                self.activity = Activity::Reading;
                return Ok(());
            }
            end_all(shards);
            let _writer = self
                .writer_lock
                .exclusive("writer lock", self.busy_timeout_ms)?;
            self.recover(shards)?;
        }
        Err(Error::InDoubt(format!(
            "table {}: prepared transactions remain after recovery",
            self.table_name
        )))
    }

    /// Pins a snapshot on every shard; `false` (snapshots still open) if one holds an undecided
    /// prepare record, which only a dead writer leaves behind.
    fn open_snapshots(&mut self, shards: &mut [Shard]) -> Result<bool> {
        let _publish = self
            .publish_lock
            .shared("publish lock", self.busy_timeout_ms)?;
        let mut prepared = Vec::new();
        for shard in shards.iter() {
            match shard.begin_read() {
                Ok(txids) => prepared.extend(txids),
                Err(e) => {
                    end_all(shards);
                    return Err(e);
                }
            }
        }
        if prepared.is_empty() {
            return Ok(true);
        }
        // The reader is about to show these transactions as committed: their records must be
        // durable (a writer may have died between writing and syncing one).
        if let Err(e) = self.journal.refresh().and_then(|_| self.journal.sync()) {
            end_all(shards);
            return Err(e);
        }
        Ok(prepared.iter().all(|&txid| self.journal.is_committed(txid)))
    }

    /// Ends the snapshot opened by [`begin_read`](Self::begin_read).
    pub fn end_read(&mut self, shards: &mut [Shard]) {
        if matches!(self.activity, Activity::Reading) {
            end_all(shards);
            self.activity = Activity::Idle;
        }
    }

    // ---- writers: begin and write -------------------------------------------------------

    /// Step 1: starts a write transaction (xBegin).
    pub fn begin_write(&mut self, shards: &mut [Shard]) -> Result<()> {
        if matches!(self.activity, Activity::Writing(_)) {
            return Ok(());
        }
        self.check_not_poisoned()?;
        self.end_read(shards);
        let writer = self
            .writer_lock
            .exclusive("writer lock", self.busy_timeout_ms)?;
        for _ in 0..RECOVERY_ATTEMPTS_MAX {
            begin_all(shards)?;
            let mut last_txid = 0;
            let mut prepared = false;
            for shard in shards.iter() {
                let state = shard
                    .last_txid()
                    .and_then(|t| Ok((t, !shard.prepared_txids()?.is_empty())));
                match state {
                    Ok((t, p)) => {
                        last_txid = last_txid.max(t);
                        prepared |= p;
                    }
                    Err(e) => {
                        end_all(shards);
                        return Err(e);
                    }
                }
            }
            if prepared {
                end_all(shards);
                self.recover(shards)?;
                continue;
            }
            if self.journal.len_bytes() > self.journal_limit_bytes {
                if let Err(e) = self.trim_journal(shards) {
                    end_all(shards);
                    return Err(e);
                }
            }
            self.activity = Activity::Writing(WriteTxn {
                txid: last_txid + 1,
                _writer: writer,
                dirty: vec![false; shards.len()],
                savepoints: Vec::new(),
                next_id: None,
                decided: false,
            });
            return Ok(());
        }
        Err(Error::InDoubt(format!(
            "table {}: prepared transactions remain after recovery",
            self.table_name
        )))
    }

    /// Step 7: every shard is synced, then the journal forgets its decisions. The caller holds
    /// the writer lock and has checked that no shard holds a prepare record.
    fn trim_journal(&mut self, shards: &[Shard]) -> Result<()> {
        crate::durable::sync_wals(&shards.iter().map(|s| s.path.as_path()).collect::<Vec<_>>())?;
        let _publish = self
            .publish_lock
            .exclusive("publish lock", self.busy_timeout_ms)?;
        self.journal.reset()
    }

    fn write_txn(&mut self) -> Result<&mut WriteTxn> {
        match &mut self.activity {
            Activity::Writing(txn) if !txn.decided => Ok(txn),
            _ => Err(Error::Internal(
                "a write outside a write transaction".into(),
            )),
        }
    }

    /// Step 2: marks `shard` as written and returns the transaction id to tag the write with.
    pub fn record_write(&mut self, shard: usize) -> Result<u64> {
        let txn = self.write_txn()?;
        txn.dirty[shard] = true;
        Ok(txn.txid)
    }

    /// An id for a row inserted without one: above every id of every shard.
    pub fn assign_id(&mut self, shards: &[Shard]) -> Result<i64> {
        let txn = self.write_txn()?;
        let next = match txn.next_id {
            Some(next) => next,
            None => {
                let mut max = 0i64;
                for shard in shards {
                    max = max.max(shard.max_id()?.unwrap_or(0));
                }
                max.checked_add(1)
                    .ok_or_else(|| Error::BadArgument("no id left above the largest one".into()))?
            }
        };
        txn.next_id = Some(next + 1);
        Ok(next)
    }

    /// Tells the coordinator that a row with this id was written, so assigned ids stay above it.
    pub fn note_id(&mut self, id: i64) {
        if let Activity::Writing(txn) = &mut self.activity {
            if let Some(next) = txn.next_id {
                txn.next_id = Some(next.max(id.saturating_add(1)));
            }
        }
    }

    // ---- writers: savepoints ------------------------------------------------------------

    /// The open, undecided write transaction, if any (savepoint calls after a decided xSync,
    /// when SQLite keeps a busy COMMIT open, have nothing left to do).
    fn undecided_txn(&mut self) -> Option<&mut WriteTxn> {
        match &mut self.activity {
            Activity::Writing(txn) if !txn.decided => Some(txn),
            _ => None,
        }
    }

    /// xSavepoint: SQLite's savepoint `level` begins.
    pub fn savepoint(&mut self, shards: &[Shard], level: i32) -> Result<()> {
        let Some(txn) = self.undecided_txn() else {
            return Ok(());
        };
        for shard in shards {
            shard.savepoint(level)?;
        }
        txn.savepoints.push((level, txn.dirty.clone()));
        Ok(())
    }

    /// xRelease: savepoint `level` and every later one end, keeping their changes.
    pub fn release(&mut self, shards: &[Shard], level: i32) -> Result<()> {
        let Some(txn) = self.undecided_txn() else {
            return Ok(());
        };
        let Some(pos) = txn.savepoints.iter().position(|(l, _)| *l >= level) else {
            return Ok(());
        };
        let outermost = txn.savepoints[pos].0;
        for shard in shards {
            shard.release(outermost)?;
        }
        txn.savepoints.truncate(pos);
        Ok(())
    }

    /// xRollbackTo: undoes everything since savepoint `level` began. SQLite reports only the
    /// savepoints that begin after the table joined the transaction, and those end (are
    /// released) with their statements, so a `level` this coordinator does not hold began before
    /// the table's first write: the rollback goes back to the transaction's start.
    pub fn rollback_to(&mut self, shards: &[Shard], level: i32) -> Result<()> {
        let Some(txn) = self.undecided_txn() else {
            return Ok(());
        };
        match txn.savepoints.iter().position(|(l, _)| *l == level) {
            Some(pos) => {
                let (target, dirty) = txn.savepoints[pos].clone();
                for shard in shards {
                    shard.rollback_to(target)?;
                }
                txn.dirty = dirty;
                txn.savepoints.truncate(pos + 1);
            }
            None => {
                for shard in shards {
                    shard.rollback_to_start()?;
                }
                txn.dirty.iter_mut().for_each(|d| *d = false);
                txn.savepoints.clear();
            }
        }
        txn.next_id = None;
        Ok(())
    }

    // ---- writers: commit ----------------------------------------------------------------

    /// Steps 3 to 5 (xSync): commits the transaction, or aborts it everywhere and fails.
    pub fn sync(&mut self, shards: &mut [Shard]) -> Result<()> {
        let (txid, dirty) = match &self.activity {
            Activity::Writing(txn) if txn.decided => return Ok(()), // xSync again after BUSY
            Activity::Writing(txn) => (txn.txid, txn.dirty.clone()),
            Activity::Aborted => {
                return Err(Error::Internal(
                    "commit of a transaction that was already aborted".into(),
                ))
            }
            _ => return Ok(()),
        };
        let written: Vec<usize> = (0..shards.len()).filter(|&i| dirty[i]).collect();
        // Wait for readers before touching anything: if they keep the lock past the timeout,
        // the transaction stays open and SQLite reports SQLITE_BUSY; COMMIT may be retried.
        let publish = match written.len() {
            0 | 1 => None,
            _ => Some(
                self.publish_lock
                    .exclusive("publish lock", self.busy_timeout_ms)?,
            ),
        };
        let outcome =
            self.end_clean_shards(shards, &dirty)
                .and_then(|()| match written.as_slice() {
                    [] => Ok(()),
                    [only] => self.commit_one_phase(&shards[*only], txid),
                    _ => self.commit_two_phase(shards, txid, &written),
                });
        drop(publish);
        match outcome {
            Ok(()) => {
                if let Activity::Writing(txn) = &mut self.activity {
                    txn.decided = true;
                }
                Ok(())
            }
            Err(e) => {
                end_all(shards);
                self.activity = Activity::Aborted;
                Err(e)
            }
        }
    }

    fn end_clean_shards(&self, shards: &[Shard], dirty: &[bool]) -> Result<()> {
        for (shard, _) in shards.iter().zip(dirty).filter(|(_, d)| !**d) {
            shard.rollback()?;
        }
        Ok(())
    }

    fn commit_one_phase(&mut self, shard: &Shard, txid: u64) -> Result<()> {
        shard.commit_one_phase(txid).inspect_err(|_| {
            let _ = shard.rollback();
        })?;
        // Committed in SQLite's sense; if it cannot be made durable it cannot be undone either,
        // and whether it survives a power cut is unknown.
        crate::durable::sync_wal(&shard.path).map_err(|e| {
            self.poisoned = true;
            Error::Poisoned(format!(
                "{} (the commit is visible but its sync failed: {e})",
                self.table_name
            ))
        })
    }

    fn commit_two_phase(
        &mut self,
        shards: &mut [Shard],
        txid: u64,
        written: &[usize],
    ) -> Result<()> {
        let participants: Vec<u16> = written.iter().map(|&i| i as u16).collect();
        let _publish = self
            .publish_lock
            .exclusive("publish lock", self.busy_timeout_ms)?;
        // Phase 1: every written shard votes.
        // Each prepared shard's WAL sync starts at once and runs while the next shard prepares.
        let mut prepared = Vec::new();
        let mut syncs = crate::durable::WalSyncs::new();
        let mut refusal = None;
        for &i in written {
            match shards[i].prepare(txid, &participants) {
                Ok(()) => {
                    prepared.push(i);
                    syncs.start(&shards[i].path);
                }
                Err(e) => {
                    refusal = Some(e);
                    break;
                }
            }
        }
        let synced = syncs.finish();
        let refusal = refusal.or(synced.err());
        if let Some(no) = refusal {
            self.abort_everywhere(shards, txid, &prepared);
            return Err(no);
        }
        // Decision: the journal's synced COMMIT record is the commit point.
        let decided = self.journal.refresh().and_then(|_| {
            self.journal
                .append_commit(txid, &participants)
                .map_err(|(e, poisoned)| {
                    self.poisoned = poisoned;
                    e
                })
        });
        if let Err(e) = decided {
            if !self.poisoned {
                self.abort_everywhere(shards, txid, &prepared);
            }
            return Err(e);
        }
        Ok(())
    }

    /// Undoes a transaction that did not reach its decision: shards still in their SQLite
    /// transaction roll back; prepared ones are undone from their before-states. A shard that
    /// cannot be undone now keeps its prepare record, and recovery aborts it later (there is no
    /// COMMIT record).
    fn abort_everywhere(&mut self, shards: &mut [Shard], txid: u64, prepared: &[usize]) {
        for (i, shard) in shards.iter().enumerate() {
            if prepared.contains(&i) {
                if shard.abort_prepared(txid).is_err() {
                    self.poisoned = true;
                }
            } else {
                let _ = shard.rollback();
            }
        }
    }

    /// Step 6 (xCommit): finalizes a decided transaction and ends it. Errors are not reported
    /// (SQLite ignores them); a shard left unfinalized is finalized by recovery.
    pub fn commit(&mut self, shards: &mut [Shard]) {
        let Activity::Writing(txn) = std::mem::replace(&mut self.activity, Activity::Idle) else {
            return;
        };
        if !txn.decided {
            // xCommit without xSync happens only for transactions that wrote nothing.
            end_all(shards);
            return;
        }
        let written: Vec<usize> = (0..shards.len()).filter(|&i| txn.dirty[i]).collect();
        if written.len() > 1 {
            for &i in &written {
                let _ = shards[i].finalize(txn.txid);
            }
        }
    }

    /// xRollback: abandons an undecided transaction. After a successful xSync the transaction
    /// is committed and stays so; it is finalized as by [`commit`](Self::commit).
    pub fn rollback(&mut self, shards: &mut [Shard]) {
        match &self.activity {
            Activity::Writing(txn) if txn.decided => self.commit(shards),
            Activity::Writing(_) | Activity::Aborted => {
                end_all(shards);
                self.activity = Activity::Idle;
            }
            Activity::Idle | Activity::Reading => {}
        }
    }

    /// Whether the journal holds a COMMIT decision for `txid` (read afresh).
    pub fn is_committed(&mut self, txid: u64) -> Result<bool> {
        self.journal.refresh()?;
        Ok(self.journal.is_committed(txid))
    }

    /// Takes the writer lock (for DROP TABLE).
    pub fn lock_writer(&self) -> Result<LockGuard> {
        self.writer_lock
            .exclusive("writer lock", self.busy_timeout_ms)
    }

    /// Whether this connection has a write transaction open.
    pub fn is_writing(&self) -> bool {
        matches!(self.activity, Activity::Writing(_))
    }
}

/// A person's decision for transactions recovery cannot decide.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resolution {
    Commit,
    Abort,
}

/// Applies a person's decision to every prepared transaction of the shards, when the journal that
/// would decide them is missing (the table then refuses to open). Returns the transactions
/// resolved. With a journal present, recovery decides, and this refuses.
pub fn resolve_in_doubt(
    config: &TableConfig,
    table_id: TableId,
    shards: &[Shard],
    resolution: Resolution,
) -> Result<Vec<u64>> {
    let writer_lock = LockFile::open(&config.lock_path)?;
    let _writer = writer_lock.exclusive("writer lock", config.busy_timeout_ms)?;
    if Journal::open_existing(&config.journal_path, table_id)?.is_some() {
        return Err(Error::BadArgument(format!(
            "the journal {} exists and decides every prepared transaction; opening the table runs recovery",
            config.journal_path.display()
        )));
    }
    let publish_lock = LockFile::open(&config.publish_lock_path)?;
    let _publish = publish_lock.exclusive("publish lock", config.busy_timeout_ms)?;
    let mut resolved = Vec::new();
    for shard in shards {
        for txid in shard.prepared_txids()? {
            match resolution {
                Resolution::Commit => shard.finalize(txid)?,
                Resolution::Abort => shard.abort_prepared(txid)?,
            }
            resolved.push(txid);
        }
    }
    crate::durable::sync_wals(&shards.iter().map(|s| s.path.as_path()).collect::<Vec<_>>())?;
    Journal::create(&config.journal_path, table_id)?;
    resolved.sort_unstable();
    resolved.dedup();
    Ok(resolved)
}

fn begin_all(shards: &[Shard]) -> Result<()> {
    for (i, shard) in shards.iter().enumerate() {
        if let Err(e) = shard.begin_write() {
            end_all(&shards[..i]);
            return Err(e);
        }
    }
    Ok(())
}

/// Rolls back whatever is open on every shard (read snapshots end the same way).
fn end_all(shards: &[Shard]) {
    for shard in shards {
        let _ = shard.rollback();
    }
}

/// The first shard holding prepare records, with them.
fn first_prepared(shards: &[Shard]) -> Result<Option<(std::path::PathBuf, Vec<u64>)>> {
    for shard in shards {
        let txids = shard.prepared_txids()?;
        if !txids.is_empty() {
            return Ok(Some((shard.path.clone(), txids)));
        }
    }
    Ok(None)
}

//! The coordinator of one table in one connection: the protocol of this folder's front page,
//! step by step, over any [`Participant`]s.

use std::collections::{BTreeMap, BTreeSet};

use super::control::{Control, Held, LocalControl, NoWindow, PublishWindow};
use super::locks::{LockFile, PublishState};
use super::participant::{Participant, PrepareRecord, Replayed};
use crate::config::{Protocol, TableConfig};
use crate::durable::Syncs;
use crate::error::{Error, Result};
use crate::journal::{Journal, Record, TableId};

/// How often a reader or writer retries after running recovery itself.
const RECOVERY_ATTEMPTS_MAX: usize = 3;

/// An open write transaction.
struct WriteTxn {
    txid: u64,
    _writer: Held,
    /// Shards written by this transaction.
    dirty: Vec<bool>,
    /// Open savepoints: SQLite's level, and `dirty` as it was when the savepoint began.
    savepoints: Vec<(i32, Vec<bool>)>,
    /// How xSync decided this transaction, once it has: what xCommit then finishes, or
    /// xRollback takes back.
    decided: Option<Decided>,
}

/// How xSync decided a transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Decided {
    /// It wrote no shard: nothing to commit.
    Nothing,
    /// A LOGGED record holds it; its shards' SQLite transactions are still open.
    Logged,
    /// Its shards hold it prepared; a COMMIT record decides it.
    Prepared,
    /// Its shards hold it prepared; a row in the host database's transaction decides it.
    Hosted,
    /// Three-phase: every written shard holds it pre-committed, durably.
    PreCommitted,
}

/// The host database a transaction's decision rides on, when the transaction also wrote the
/// host's own tables (see "Transactions that also write ordinary tables"); `host` implements
/// it over SQLite.
pub trait HostDecider {
    /// The host database's file, kept in every prepare record so that recovery can ask it.
    fn path(&self) -> &str;
    /// Records the decision for `txid` in the host's open transaction, so that it commits or
    /// rolls back with the host's own changes; returns how many of the table's decisions the
    /// host now holds.
    fn record(&self, txid: u64) -> Result<u64>;
    /// Deletes, in the host's open transaction, the decisions before `txid`.
    fn forget_before(&self, txid: u64) -> Result<()>;
}

/// How many decisions the host keeps before the coordinator makes every shard durable and
/// deletes the older ones (see step 6h).
#[cfg(not(test))]
const HOST_DECISIONS_KEPT_MAX: u64 = 64;
/// The protocol's simulation (`sim`) runs a few transactions: it deletes them after two.
#[cfg(test)]
const HOST_DECISIONS_KEPT_MAX: u64 = 2;

/// Asks host database `path` whether it committed the decision for transaction `txid` of table
/// `table_id` (recovery of a transaction that rode on a host's commit).
pub type HostLookup = fn(path: &str, table_id: &TableId, txid: u64) -> Result<bool>;

/// What this connection has open on the shards.
enum Activity {
    Idle,
    /// A read transaction on every shard: one query's consistent snapshot or, if
    /// `whole_transaction`, the one every read of the host's explicit transaction shares until
    /// it ends. `publication` is the publish lock's counter when it was taken.
    Reading {
        whole_transaction: bool,
        publication: u64,
    },
    Writing(WriteTxn),
    /// xSync failed and undid the transaction; SQLite will roll back.
    Aborted,
}

/// The coordinator of one table in one connection.
pub struct Coordinator {
    table_name: String,
    busy_timeout_ms: u64,
    journal_limit_bytes: u64,
    logged_commit_max_bytes: u64,
    protocol: Protocol,
    /// The writer and publish locks and the decision records.
    control: Box<dyn Control>,
    activity: Activity,
    /// Set when a decision could not be written or undone: the message and whether the disk
    /// was full (see [`Error::Poisoned`]). Recovery clears it: at the next open, or, on a table
    /// whose decisions are read afresh (servers), at the next read or write (`heal_or_refuse`).
    poisoned: Option<(String, bool)>,
    table_id: TableId,
    host_lookup: HostLookup,
}

impl Coordinator {
    /// The coordinator of a table of local files: opens its journal (creating it if
    /// `create`; see [`LocalControl::open`]) and runs recovery if no writer is active.
    pub fn open<P: Participant>(
        config: &TableConfig,
        table_id: TableId,
        shards: &mut [P],
        create: bool,
        host_lookup: HostLookup,
    ) -> Result<Coordinator> {
        let control = LocalControl::open(config, table_id, shards, create)?;
        Coordinator::with_control(config, table_id, Box::new(control), shards, host_lookup)
    }

    /// The coordinator of a table over `control` (its locks and decision records), after
    /// recovery if no writer is active.
    pub fn with_control<P: Participant>(
        config: &TableConfig,
        table_id: TableId,
        control: Box<dyn Control>,
        shards: &mut [P],
        host_lookup: HostLookup,
    ) -> Result<Coordinator> {
        let mut coordinator = Coordinator {
            table_name: config.table_name.clone(),
            busy_timeout_ms: config.busy_timeout_ms,
            journal_limit_bytes: config.journal_limit_bytes,
            logged_commit_max_bytes: config.logged_commit_max_bytes,
            protocol: config.protocol,
            control,
            activity: Activity::Idle,
            poisoned: None,
            table_id,
            host_lookup,
        };
        // A live writer elsewhere owns its prepare records; only recover when none is active.
        if let Ok(writer) = coordinator.control.lock_writer(0) {
            coordinator.recover(shards)?;
            drop(writer);
        }
        Ok(coordinator)
    }

    /// Refuses to go on while the table is poisoned; where the decisions are read afresh from
    /// where they are kept (`Control::recovery_lifts_poison`: a server table's anchor), first
    /// runs recovery under the writer lock, which settles what was unknown and lifts the poison.
    /// The caller has no transaction open on the shards.
    fn heal_or_refuse<P: Participant>(&mut self, shards: &mut [P]) -> Result<()> {
        if self.poisoned.is_some() && self.control.recovery_lifts_poison() {
            let _writer = self.control.lock_writer(self.busy_timeout_ms)?;
            self.recover(shards)?;
            self.poisoned = None;
        }
        self.check_not_poisoned()
    }

    fn check_not_poisoned(&self) -> Result<()> {
        match &self.poisoned {
            Some((cause, full)) => Err(Error::Poisoned {
                table: self.table_name.clone(),
                cause: cause.clone(),
                full: *full,
            }),
            None => Ok(()),
        }
    }

    /// Poisons the table with `cause` (see `poisoned`), keeping the first cause.
    fn poison(&mut self, cause: &Error) {
        if self.poisoned.is_none() {
            let message = cause.to_string();
            let message = message.strip_prefix("imagestore: ").unwrap_or(&message);
            self.poisoned = Some((message.to_string(), cause.is_full()));
        }
    }

    // ---- recovery -----------------------------------------------------------------------

    /// Finishes or undoes every prepared transaction, replays every logged commit a shard lacks,
    /// and clears the mark; an error says that recovery is pending (and keeps its cause's code,
    /// SQLITE_FULL for a full disk). The caller holds the writer lock and has no transaction open
    /// on the shards.
    fn recover<P: Participant>(&mut self, shards: &mut [P]) -> Result<()> {
        self.recover_now(shards).map_err(|e| match e {
            Error::InDoubt(_)
            | Error::JournalCorrupt { .. }
            | Error::Busy { .. }
            | Error::LostCommits { .. } => e,
            cause => Error::RecoveryPending {
                table: self.table_name.clone(),
                source: Box::new(cause),
            },
        })
    }

    fn recover_now<P: Participant>(&mut self, shards: &mut [P]) -> Result<()> {
        let mut publish = self.control.publishing(self.busy_timeout_ms)?;
        self.control.begin_recovery()?;
        // Prepared transactions first: on any one shard they are older than every logged commit
        // it lacks (see "Recovery" above).
        let mut records = prepare_records(shards)?;
        if self.protocol == Protocol::ThreePhase && records.iter().any(|r| !r.is_empty()) {
            // (I4) No earlier coordinator's step changes the states read again now. With none
            // prepared anywhere there is nothing to take over: a pre-commit needs its
            // transaction prepared, and a vote that ends after this read was taken by a writer
            // that lost its lock before this one took it, whose confirmation fails (I0).
            take_over_all(shards)?;
            records = prepare_records(shards)?;
        }
        let shown_committed = self.refuse_lost_records(shards, &records)?;
        let shown = |txid| shown_committed.as_ref().is_some_and(|c| c.contains(&txid));
        let terminated = self.terminate_three_phase(shards, &records)?;
        for ((index, shard), records) in shards.iter_mut().enumerate().zip(records) {
            for record in records {
                crate::fault::check("recovery_shard")?;
                let commit = match (self.protocol, &record.decided_by) {
                    (Protocol::ThreePhase, None) => terminated.contains(&record.txid),
                    _ => shown(record.txid) || self.decided_by_record(index, &record)?,
                };
                if commit {
                    shard.finalize(record.txid)?;
                } else {
                    shard.abort_prepared(record.txid)?;
                }
            }
        }
        if shown_committed.is_some() {
            self.control.restore_records()?;
        }
        self.replay_logged(shards)?;
        publish.set_mark(0)?;
        self.refuse_lost_commits(shards)
    }

    /// Decision records that may have lost decisions (`Control::records_lost`) decide only what
    /// they hold, and what the shards show (see [`after_lost_records`]): on a two-phase table a
    /// prepared transaction they cannot decide is in doubt (the table refuses, naming
    /// `imagestore_resolve`), never presumed aborted. Returns, when the records are lost, the
    /// transactions the shards show committed; the caller marks the records whole once it has
    /// finalized them (before, a crash would leave them to presumed abort).
    fn refuse_lost_records<P: Participant>(
        &self,
        shards: &mut [P],
        records: &[Vec<PrepareRecord>],
    ) -> Result<Option<BTreeSet<u64>>> {
        if !self.control.records_lost() {
            return Ok(None);
        }
        let decided = |txid| self.control.is_committed(txid);
        let lost = after_lost_records(&decided, self.protocol, shards, records)?;
        if lost.in_doubt.is_empty() {
            return Ok(Some(lost.committed));
        }
        let table = &self.table_name;
        let held: Vec<String> = lost
            .in_doubt
            .iter()
            .map(|(txid, on)| format!("{txid} (on shards {on:?})"))
            .collect();
        Err(Error::InDoubt(format!(
            "the decision records of table {table} on {} are incomplete (their marker row is gone: \
             deleted, or their table dropped) while prepared transactions {} have no decision \
             left and no shard committed them; their outcome cannot be known. Put the anchor's \
             decisions table back from a PostgreSQL backup, or decide: \
             SELECT imagestore_resolve('{table}', 'commit' or 'abort')",
            self.control.name(),
            held.join(", ")
        )))
    }

    /// Damage is never silent: a prepared commit the journal decided that a shard's
    /// `last_txid` does not reach (the shard lost it after it was durable) makes the table
    /// unusable, naming the shard and the transaction, until a backup is restored or a person
    /// accepts the shards as they are (`accept_lost_commits`).
    fn refuse_lost_commits<P: Participant>(&mut self, shards: &mut [P]) -> Result<()> {
        let lost = self.lost_commits(shards)?;
        if lost.is_empty() {
            return Ok(());
        }
        Err(Error::LostCommits {
            table: self.table_name.clone(),
            lost: describe_lost(shards, &lost),
        })
    }

    /// Recovery of a record a decision record decides (two-phase; on either protocol, one that
    /// rode on a host database's commit): whether shard `index`'s prepare `record` was decided.
    /// A decision commits only the shards it names: a prepare that reached some other shard (a
    /// call whose answer was lost, landing late) is not part of it.
    fn decided_by_record(&self, index: usize, record: &PrepareRecord) -> Result<bool> {
        let named = self
            .control
            .committed_shards(record.txid)
            .is_none_or(|named| named.contains(&(index as u16)));
        Ok(named && self.decided(record.txid, record.decided_by.as_deref())?)
    }

    /// Three-phase recovery, the termination rule (see "Three-phase commit"): the transactions
    /// (of the prepare `records`, each shard's) that commit, those some shard holds
    /// pre-committed. Each commit's shards still only prepared are pre-committed first; then
    /// every shard is synced, so that what the rule read (a dead writer's last steps may not
    /// be durable) and those pre-commits are kept whatever happens next: no finalize or abort
    /// is acted on from a state a power cut could take back.
    fn terminate_three_phase<P: Participant>(
        &self,
        shards: &mut [P],
        records: &[Vec<PrepareRecord>],
    ) -> Result<BTreeSet<u64>> {
        let three_phase = |r: &&PrepareRecord| r.decided_by.is_none();
        let all = || records.iter().flatten().filter(three_phase);
        if self.protocol != Protocol::ThreePhase || all().next().is_none() {
            return Ok(Default::default());
        }
        let commits: BTreeSet<u64> = all().filter(|r| r.pre_committed).map(|r| r.txid).collect();
        for (index, records) in records.iter().enumerate() {
            let behind: Vec<u64> = records
                .iter()
                .filter(three_phase)
                .filter(|r| !r.pre_committed && commits.contains(&r.txid))
                .map(|r| r.txid)
                .collect();
            for txid in behind {
                crate::fault::check("recovery_shard")?;
                shards[index].pre_commit(txid)?;
            }
        }
        make_durable(shards)?;
        Ok(commits)
    }

    /// Whether prepared transaction `txid` was decided: by a COMMIT record, or, for one that
    /// rode on a host database's commit, by the decision row that commit holds.
    fn decided(&self, txid: u64, decided_by: Option<&str>) -> Result<bool> {
        if self.control.is_committed(txid) {
            return Ok(true);
        }
        match decided_by {
            Some(host) => (self.host_lookup)(host, &self.table_id, txid),
            None => Ok(false),
        }
    }

    /// Replays each LOGGED record on every shard it names whose `last_txid` is below it.
    fn replay_logged<P: Participant>(&self, shards: &mut [P]) -> Result<()> {
        if self.control.logged().is_empty() {
            return Ok(());
        }
        let mut applied = last_txids(shards)?;
        let lacks = |applied: &[u64], shard: u16, txid: u64| {
            applied.get(shard as usize).is_none_or(|&t| t < txid)
        };
        for &at in self.control.logged() {
            let named = self.control.committed_shards(at.txid).unwrap_or_default();
            if !named.iter().any(|&s| lacks(&applied, s, at.txid)) {
                continue;
            }
            let record = self.control.read_logged(at)?;
            for (&s, changes) in record.shards.iter().zip(record.changes.iter().flatten()) {
                if !lacks(&applied, s, at.txid) {
                    continue;
                }
                let shard = shards.get_mut(s as usize).ok_or_else(|| {
                    Error::InDoubt(format!(
                        "table {}: the journal's transaction {} wrote shard {s}, which the table does not have",
                        self.table_name, at.txid
                    ))
                })?;
                crate::fault::check("recovery_replay")?;
                match shard.replay(at.txid, changes)? {
                    Replayed::Applied | Replayed::Present => applied[s as usize] = at.txid,
                    Replayed::Gap { base } => {
                        return Err(Error::LostCommits {
                            table: self.table_name.clone(),
                            lost: format!(
                                "shard {s} ({}) lacks its commits after transaction {} up to {base}, on which the journal's transaction {} builds",
                                shard.name(),
                                applied[s as usize],
                                at.txid
                            ),
                        })
                    }
                    Replayed::Unreadable(detail) => {
                        return Err(Error::JournalCorrupt {
                            path: self.control.name().into(),
                            detail: format!("transaction {}, shard {s}: {detail}", at.txid),
                        })
                    }
                }
            }
        }
        Ok(())
    }

    // ---- readers ------------------------------------------------------------------------

    /// Opens one consistent snapshot over every shard, unless this connection already has a
    /// transaction open on them (then reads see that transaction).
    pub fn begin_read<P: Participant>(
        &mut self,
        shards: &mut [P],
        whole_transaction: bool,
    ) -> Result<()> {
        match &mut self.activity {
            Activity::Idle => {}
            Activity::Reading {
                whole_transaction: whole,
                ..
            } => {
                *whole |= whole_transaction;
                return Ok(());
            }
            Activity::Writing(_) | Activity::Aborted => return Ok(()),
        }
        self.heal_or_refuse(shards)?;
        for _ in 0..RECOVERY_ATTEMPTS_MAX {
            if let Some(publication) = self.open_snapshots(shards)? {
                self.activity = Activity::Reading {
                    whole_transaction,
                    publication,
                };
                return Ok(());
            }
            end_all(shards);
            let _writer = self.control.lock_writer(self.busy_timeout_ms)?;
            self.recover(shards)?;
        }
        Err(Error::InDoubt(format!(
            "table {}: prepared transactions remain after recovery",
            self.table_name
        )))
    }

    /// Pins a snapshot on every shard and returns the publication counter it matches; `None`
    /// (snapshots perhaps still open) if the mark is set or a shard holds an undecided prepare
    /// record, which only a dead writer leaves behind.
    fn open_snapshots<P: Participant>(&mut self, shards: &mut [P]) -> Result<Option<u64>> {
        let _publish = self.control.lock_publish_shared(self.busy_timeout_ms)?;
        let PublishState { mark, publication } = self.control.publish_state()?;
        let mut prepared = Vec::new();
        for shard in shards.iter_mut() {
            match shard.begin_read() {
                Ok(txids) => prepared.extend(txids),
                Err(e) => {
                    end_all(shards);
                    return Err(e);
                }
            }
        }
        if mark != 0 {
            match self.pending_on_no_shard(shards, mark) {
                Ok(true) => {}
                Ok(false) => return Ok(None),
                Err(e) => {
                    end_all(shards);
                    return Err(e);
                }
            }
        }
        if prepared.is_empty() {
            return Ok(Some(publication));
        }
        if !shards.iter().all(P::prepared_visible) {
            // A server's prepared transaction is not in the snapshots. A live writer's, between
            // its decision and its finalize, is finalized only under the publish lock this
            // reader holds, so no snapshot has it: read past it. One that some snapshot shows
            // finalized (its shard's `last_txid` reaches it), or one with no live writer, is
            // a dead writer's, perhaps half finalized: recovery settles it first.
            let finalized_somewhere = prepared.iter().any(|&txid| {
                shards
                    .iter()
                    .any(|s| s.snapshot_last_txid().is_some_and(|last| last >= txid))
            });
            if !finalized_somewhere && self.writer_alive() {
                return Ok(Some(publication));
            }
            end_all(shards);
            return Ok(None);
        }
        // The reader is about to show these transactions as committed: their records must be
        // durable (a writer may have died between writing and syncing one).
        if let Err(e) = self.control.refresh() {
            end_all(shards);
            return Err(e);
        }
        // Prepare records with a live writer: a transaction between its decision and SQLite's
        // own commit, which may still fail and take it back (or, riding on the host's commit,
        // not yet decided). The writer released the publish lock so that the host's readers
        // can finish; waiting here could hold up that very commit. Answer busy, as SQLite
        // answers a reader of a file being committed.
        if self.writer_alive() {
            end_all(shards);
            return Err(Error::Busy {
                what: "a transaction is being committed; the table".into(),
                timeout_ms: 0,
            });
        }
        // A dead writer's: two-phase, committed data whose finalize is pending if the journal
        // decided it; three-phase, recovery's to terminate.
        let decided = self.protocol == Protocol::TwoPhase
            && prepared.iter().all(|&txid| self.control.is_committed(txid));
        Ok(decided.then_some(publication))
    }

    /// Whether the logged commit `mark` names is a live writer's that waits for SQLite's own
    /// commit (between its xSync and xCommit) and is on no shard yet: then the snapshots are a
    /// consistent cut from before it, and waiting for it could deadlock (the writer may be
    /// waiting for this reader's statement to end, to commit the host file).
    fn pending_on_no_shard<P: Participant>(&self, shards: &mut [P], mark: u64) -> Result<bool> {
        if !self.writer_alive() {
            return Ok(false); // recovery
        }
        for shard in shards.iter_mut() {
            if shard.last_txid()? >= mark {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Whether another connection, in this process or another, holds the writer lock now.
    fn writer_alive(&self) -> bool {
        self.control.writer_alive()
    }

    /// Ends a query's snapshot opened by [`begin_read`](Self::begin_read) (a transaction's
    /// stays until [`end_transaction_read`](Self::end_transaction_read)).
    pub fn end_read<P: Participant>(&mut self, shards: &mut [P]) {
        if let Activity::Reading {
            whole_transaction: false,
            ..
        } = self.activity
        {
            end_all(shards);
            self.activity = Activity::Idle;
        }
    }

    /// The host's transaction ended: its snapshot ends too, or, while a query of this
    /// connection still reads from it (`queries_reading`), becomes that query's.
    pub fn end_transaction_read<P: Participant>(
        &mut self,
        shards: &mut [P],
        queries_reading: bool,
    ) {
        if let Activity::Reading {
            whole_transaction, ..
        } = &mut self.activity
        {
            *whole_transaction = false;
            if !queries_reading {
                self.end_read(shards);
            }
        }
    }

    /// Whether a read now would open a snapshot the host's transaction does not yet hold.
    pub fn needs_transaction_read(&self) -> bool {
        matches!(
            self.activity,
            Activity::Idle
                | Activity::Reading {
                    whole_transaction: false,
                    ..
                }
        )
    }

    /// Ends any snapshot before a write; a transaction's own may end only if nothing was
    /// published since it was taken (else its reads and its writes would see different states
    /// of the table: SQLITE_BUSY_SNAPSHOT, as SQLite answers for an ordinary WAL table). The
    /// caller holds the writer lock, so nothing can be published meanwhile.
    fn end_read_for_write<P: Participant>(&mut self, shards: &mut [P]) -> Result<()> {
        let Activity::Reading {
            whole_transaction,
            publication,
        } = self.activity
        else {
            return Ok(());
        };
        let now = self.control.publish_state()?;
        if whole_transaction && (now.publication != publication || now.mark != 0) {
            return Err(Error::SnapshotStale(self.table_name.clone()));
        }
        end_all(shards);
        self.activity = Activity::Idle;
        Ok(())
    }

    // ---- writers: begin and write -------------------------------------------------------

    /// Step 1: starts a write transaction (xBegin).
    pub fn begin_write<P: Participant>(&mut self, shards: &mut [P]) -> Result<()> {
        if matches!(self.activity, Activity::Writing(_)) {
            return Ok(());
        }
        // A read transaction still holds its snapshots: no recovery now.
        match self.activity {
            Activity::Reading { .. } => self.check_not_poisoned()?,
            _ => self.heal_or_refuse(shards)?,
        }
        let writer = self.control.lock_writer(self.busy_timeout_ms)?;
        self.end_read_for_write(shards)?;
        for _ in 0..RECOVERY_ATTEMPTS_MAX {
            if self.control.mark()? != 0 {
                self.recover(shards)?;
                continue;
            }
            begin_all(shards)?;
            let mut last_txid = 0;
            let mut prepared = false;
            for shard in shards.iter_mut() {
                let state = shard
                    .last_txid()
                    .and_then(|t| Ok((t, !shard.prepared()?.is_empty())));
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
            if self.control.needs_trim(self.journal_limit_bytes) {
                if let Err(e) = self.trim_journal(shards) {
                    end_all(shards);
                    return Err(e);
                }
            }
            let txid = match self.control.next_txid(last_txid + 1) {
                Ok(txid) => txid,
                Err(e) => {
                    end_all(shards);
                    return Err(e);
                }
            };
            self.activity = Activity::Writing(WriteTxn {
                txid,
                _writer: writer,
                dirty: vec![false; shards.len()],
                savepoints: Vec::new(),
                decided: None,
            });
            return Ok(());
        }
        Err(Error::InDoubt(format!(
            "table {}: prepared transactions remain after recovery",
            self.table_name
        )))
    }

    /// Step 9: every shard is synced, then the journal forgets its decisions. The caller holds
    /// the writer lock and has checked that no shard holds a prepare record.
    fn trim_journal<P: Participant>(&mut self, shards: &mut [P]) -> Result<()> {
        let last_txids = last_txids(shards)?;
        make_durable(shards)?;
        let _publish = self.control.publishing(self.busy_timeout_ms)?;
        self.control.trim(&last_txids)
    }

    fn write_txn(&mut self) -> Result<&mut WriteTxn> {
        match &mut self.activity {
            Activity::Writing(txn) if txn.decided.is_none() => Ok(txn),
            Activity::Writing(_) => Err(Error::Decided),
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

    // ---- writers: savepoints ------------------------------------------------------------

    /// The open, undecided write transaction, if any (savepoint calls after a decided xSync,
    /// when SQLite keeps a busy COMMIT open, have nothing left to do).
    fn undecided_txn(&mut self) -> Option<&mut WriteTxn> {
        match &mut self.activity {
            Activity::Writing(txn) if txn.decided.is_none() => Some(txn),
            _ => None,
        }
    }

    /// xSavepoint: SQLite's savepoint `level` begins.
    pub fn savepoint<P: Participant>(&mut self, shards: &mut [P], level: i32) -> Result<()> {
        let Some(txn) = self.undecided_txn() else {
            return Ok(());
        };
        for shard in shards.iter_mut() {
            shard.savepoint(level)?;
        }
        txn.savepoints.push((level, txn.dirty.clone()));
        Ok(())
    }

    /// xRelease: savepoint `level` and every later one end, keeping their changes.
    pub fn release<P: Participant>(&mut self, shards: &mut [P], level: i32) -> Result<()> {
        let Some(txn) = self.undecided_txn() else {
            return Ok(());
        };
        let Some(pos) = txn.savepoints.iter().position(|(l, _)| *l >= level) else {
            return Ok(());
        };
        let outermost = txn.savepoints[pos].0;
        for shard in shards.iter_mut() {
            shard.release(outermost)?;
        }
        txn.savepoints.truncate(pos);
        Ok(())
    }

    /// xRollbackTo: undoes everything since savepoint `level` began. SQLite reports only the
    /// savepoints that begin after the table joined the transaction, and those end (are
    /// released) with their statements, so a `level` this coordinator does not hold began before
    /// the table's first write: the rollback goes back to the transaction's start.
    pub fn rollback_to<P: Participant>(&mut self, shards: &mut [P], level: i32) -> Result<()> {
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
        Ok(())
    }

    // ---- writers: commit ----------------------------------------------------------------

    /// Steps 3 to 6 (xSync): decides the transaction, or aborts it everywhere and fails. With
    /// `host`, the transaction also wrote the host's tables: its decision rides on the host's
    /// commit (step 6h).
    pub fn sync<P: Participant>(
        &mut self,
        shards: &mut [P],
        host: Option<&dyn HostDecider>,
    ) -> Result<()> {
        let (txid, dirty) = match &self.activity {
            Activity::Writing(txn) if txn.decided.is_some() => return Ok(()), // again after BUSY
            Activity::Writing(txn) => (txn.txid, txn.dirty.clone()),
            Activity::Aborted => {
                return Err(Error::Internal(
                    "commit of a transaction that was already aborted".into(),
                ))
            }
            _ => return Ok(()),
        };
        let written: Vec<usize> = (0..shards.len()).filter(|&i| dirty[i]).collect();
        if written.is_empty() {
            end_all(shards);
            self.set_decided(Decided::Nothing);
            return Ok(());
        }
        // Step 3: the logged path if the changes are small (never with the host's tables).
        let changes = match host {
            Some(_) => Ok(None),
            None => self.logged_changes(shards, txid, &written),
        };
        let changes = match changes {
            Ok(changes) => changes,
            Err(e) => {
                self.abort_everywhere(shards, txid, &[]);
                return Err(self.aborted(shards, e));
            }
        };
        // Wait for readers before touching anything they could see: if they keep the lock past
        // the timeout, the transaction stays open and SQLite reports SQLITE_BUSY; COMMIT may be
        // retried. Prepares that no reader sees (servers) publish nothing before step 7.
        let publishes = host.is_some()
            || changes.is_some()
            || written.iter().any(|&i| shards[i].prepared_visible());
        let mut publish: Box<dyn PublishWindow> = match publishes {
            true => self.control.publishing(self.busy_timeout_ms)?,
            false => Box::new(NoWindow),
        };
        let outcome = self
            .end_clean_shards(shards, &dirty)
            .and_then(|()| match (host, changes) {
                (Some(host), _) => self
                    .commit_two_phase(shards, txid, &written, Some(host))
                    .map(|()| Decided::Hosted),
                (None, Some(changes)) => self
                    .decide_logged(shards, txid, &written, changes, publish.as_mut())
                    .map(|()| Decided::Logged),
                (None, None) => match self.protocol {
                    Protocol::TwoPhase => self
                        .commit_two_phase(shards, txid, &written, None)
                        .map(|()| Decided::Prepared),
                    Protocol::ThreePhase => self
                        .commit_three_phase(shards, txid, &written)
                        .map(|()| Decided::PreCommitted),
                },
            });
        drop(publish);
        match outcome {
            Ok(decided) => {
                self.set_decided(decided);
                Ok(())
            }
            Err(e) => Err(self.aborted(shards, e)),
        }
    }

    /// The transaction failed at xSync with `e`: every shard's transaction ends, and SQLite's
    /// rollback to come finds nothing to undo.
    fn aborted<P: Participant>(&mut self, shards: &mut [P], e: Error) -> Error {
        end_all(shards);
        self.activity = Activity::Aborted;
        e
    }

    fn set_decided(&mut self, decided: Decided) {
        if let Activity::Writing(txn) = &mut self.activity {
            txn.decided = Some(decided);
        }
    }

    fn end_clean_shards<P: Participant>(&self, shards: &mut [P], dirty: &[bool]) -> Result<()> {
        for (shard, _) in shards.iter_mut().zip(dirty).filter(|(_, d)| !**d) {
            shard.end()?;
        }
        Ok(())
    }

    /// Each written shard's encoded changes, or `None` if together they come to more than
    /// `logged_commit_max`.
    fn logged_changes<P: Participant>(
        &self,
        shards: &mut [P],
        txid: u64,
        written: &[usize],
    ) -> Result<Option<Vec<Vec<u8>>>> {
        let mut budget = self.logged_commit_max_bytes;
        if budget == 0 {
            return Ok(None);
        }
        let mut all = Vec::with_capacity(written.len());
        for &i in written {
            let Some(encoded) = shards[i].changes(txid, budget)? else {
                return Ok(None);
            };
            match budget.checked_sub(encoded.len() as u64) {
                Some(left) => budget = left,
                None => return Ok(None),
            }
            all.push(encoded);
        }
        Ok(Some(all))
    }

    /// Step 4, the logged path: the LOGGED record's sync is the commit point. The shards commit
    /// at xCommit, once the host has committed too ([`finish_logged`](Self::finish_logged)).
    fn decide_logged<P: Participant>(
        &mut self,
        shards: &mut [P],
        txid: u64,
        written: &[usize],
        changes: Vec<Vec<u8>>,
        publish: &mut dyn PublishWindow,
    ) -> Result<()> {
        let record = Record::commit(txid, participants(written), Some(changes));
        let decided = publish.set_mark(txid).and_then(|()| self.decide(&record));
        if let Err(e) = decided {
            // Nothing is committed on a shard; if the decision is unknown (poisoned), the mark
            // stays and recovery reads it from the journal.
            self.abort_everywhere(shards, txid, &[]);
            if self.poisoned.is_none() {
                let _ = publish.set_mark(0);
            }
            return Err(e);
        }
        Ok(())
    }

    /// Step 7 on the logged path: under the publish lock, every written shard commits, not
    /// synced. A shard whose commit fails (or all, if the lock cannot be had) is rolled back and
    /// the mark stays: the next reader or writer replays it from the journal.
    fn finish_logged<P: Participant>(&self, shards: &mut [P], txn: &WriteTxn) {
        let Ok(mut publish) = self.control.publishing(self.busy_timeout_ms) else {
            end_all(shards);
            return;
        };
        let mut all_committed = true;
        for (shard, _) in shards.iter_mut().zip(&txn.dirty).filter(|(_, d)| **d) {
            if shard.commit_logged(txn.txid).is_err() {
                let _ = shard.end();
                all_committed = false;
            }
        }
        if all_committed {
            // Should this fail, the mark costs the next reader a recovery with nothing to do.
            let _ = publish.set_mark(0);
        }
    }

    /// Step 7 on the prepared path: under the publish lock, every written shard ends its
    /// prepared transaction as committed. On a server that is what makes its changes visible,
    /// so no reader may open snapshots in between; if the lock cannot be had, recovery finalizes.
    fn finalize_prepared<P: Participant>(&self, shards: &mut [P], txn: &WriteTxn) {
        let Ok(_publish) = self.control.publishing(self.busy_timeout_ms) else {
            return;
        };
        let written: Vec<usize> = (0..shards.len()).filter(|&i| txn.dirty[i]).collect();
        // Errors are recovery's to settle: the decision is durable.
        let txid = txn.txid;
        let _ = each_shard(shards, &written, false, |shard| shard.finalize(txid));
    }

    /// Writes a decision durably (a synced journal record, or a row on a server table's
    /// anchor): the commit point of both paths. One whose answer was lost poisons the table
    /// and says that the outcome is unknown.
    fn decide(&mut self, record: &Record) -> Result<()> {
        self.control.decide(record).map_err(|(e, unknown)| {
            if !unknown {
                return e;
            }
            self.poison(&e);
            Error::OutcomeUnknown {
                table: self.table_name.clone(),
                cause: e.detail(),
                full: e.is_full(),
            }
        })
    }

    /// Steps 5 and 6, the prepared path; with `host`, 5 and 6h.
    fn commit_two_phase<P: Participant>(
        &mut self,
        shards: &mut [P],
        txid: u64,
        written: &[usize],
        host: Option<&dyn HostDecider>,
    ) -> Result<()> {
        let names = participants(written);
        let prepared = self.vote(shards, txid, written, &names, host.map(|h| h.path()))?;
        // Decision: the journal's synced COMMIT record is the commit point; or the host's
        // decision row, which its commit makes durable (6h).
        let decided = match host {
            Some(host) => host
                .record(txid)
                .and_then(|kept| forget_settled_decisions(shards, host, txid, kept)),
            None => self.decide(&Record::commit(txid, names, None)),
        };
        if let Err(e) = decided {
            if self.poisoned.is_none() {
                self.abort_everywhere(shards, txid, &prepared);
            }
            return Err(e);
        }
        Ok(())
    }

    /// Step 5, the vote: every written shard prepares `txid`; returns them all. If any says no
    /// (or cannot answer), the transaction is undone everywhere and the refusal returned.
    fn vote<P: Participant>(
        &mut self,
        shards: &mut [P],
        txid: u64,
        written: &[usize],
        names: &[u16],
        decided_by: Option<&str>,
    ) -> Result<Vec<usize>> {
        let (prepared, refused, refusal) = step_and_sync(shards, written, true, |shard| {
            shard.prepare(txid, names, decided_by)
        });
        let Some(no) = refusal else {
            return Ok(prepared);
        };
        self.abort_everywhere(shards, txid, &prepared);
        // A call that broke off may have prepared it all the same: undo that too (nothing to
        // do if not); if this fails, recovery finds the record undecided and aborts it.
        for i in refused {
            let _ = shards[i].abort_prepared(txid);
        }
        Err(no)
    }

    /// Steps 5 and 6p, three-phase commit: the vote, then every written shard's pre-commit,
    /// all synced: that is the decision. If a pre-commit fails, every pre-commit is taken back,
    /// durably, before anything is undone (a shard left pre-committed commits the transaction
    /// in recovery); if even that fails, the outcome is recovery's, and unknown to the caller.
    fn commit_three_phase<P: Participant>(
        &mut self,
        shards: &mut [P],
        txid: u64,
        written: &[usize],
    ) -> Result<()> {
        let names = participants(written);
        let prepared = self.vote(shards, txid, written, &names, None)?;
        // (I0) Nothing is pre-committed unless the writer lock was held through the vote.
        if let Err(e) = self.control.confirm_writer() {
            self.abort_everywhere(shards, txid, &prepared);
            return Err(e);
        }
        let (_, _, failure) = step_and_sync(shards, written, true, |shard| shard.pre_commit(txid));
        let Some(failure) = failure else {
            return Ok(());
        };
        match withdraw_pre_commits(shards, txid, written) {
            Ok(()) => {
                self.abort_everywhere(shards, txid, &prepared);
                Err(failure)
            }
            Err(e) => {
                self.poison(&e);
                Err(Error::OutcomeUnknown {
                    table: self.table_name.clone(),
                    cause: failure.detail(),
                    full: failure.is_full(),
                })
            }
        }
    }

    /// Undoes a transaction that did not reach its decision: every shard's open transaction
    /// ends (rolled back); prepared ones are undone from their before-states. A shard that
    /// cannot be undone now keeps its prepare record, and recovery aborts it later (there is no
    /// COMMIT record).
    fn abort_everywhere<P: Participant>(
        &mut self,
        shards: &mut [P],
        txid: u64,
        prepared: &[usize],
    ) {
        for (i, shard) in shards.iter_mut().enumerate() {
            let _ = shard.end();
            if prepared.contains(&i) {
                if let Err(e) = shard.abort_prepared(txid) {
                    self.poison(&e);
                }
            }
        }
    }

    /// Step 7 (xCommit): the host has committed too; finishes the decided transaction (the
    /// logged path's shard commits, or the prepared path's finalize) and ends it, releasing its
    /// locks. Errors are not reported (SQLite ignores them): recovery finishes what is left.
    pub fn commit<P: Participant>(&mut self, shards: &mut [P]) {
        let Activity::Writing(txn) = std::mem::replace(&mut self.activity, Activity::Idle) else {
            return;
        };
        // The publish lock of step 7 and the writer lock go together.
        let releases = self.control.release_together();
        match txn.decided {
            // xCommit without xSync happens only for transactions that wrote nothing.
            None => end_all(shards),
            Some(Decided::Nothing) => {}
            Some(Decided::Logged) => self.finish_logged(shards, &txn),
            Some(Decided::Prepared | Decided::Hosted | Decided::PreCommitted) => {
                self.finalize_prepared(shards, &txn)
            }
        }
        drop(txn);
        drop(releases);
    }

    /// xRollback: abandons an undecided transaction. After xSync decided it, SQLite's own commit
    /// failed (SQLITE_BUSY on the host file, a commit hook's veto): see
    /// [`take_back`](Self::take_back).
    pub fn rollback<P: Participant>(&mut self, shards: &mut [P]) {
        let decided = match &self.activity {
            Activity::Writing(txn) => txn.decided,
            Activity::Aborted => None,
            Activity::Idle | Activity::Reading { .. } => return,
        };
        match decided {
            Some(Decided::Logged | Decided::Prepared | Decided::Hosted | Decided::PreCommitted) => {
                self.take_back(shards)
            }
            Some(Decided::Nothing) => self.activity = Activity::Idle,
            None => {
                end_all(shards);
                self.activity = Activity::Idle;
            }
        }
    }

    /// Step 8: takes back the decision of the open transaction, whose host commit failed: a
    /// synced ABORT record (three-phase: every pre-commit withdrawn, synced), then the shards
    /// undone, so that the host's tables and this table agree. If even the ABORT cannot be
    /// written, the decision stands: the transaction is finished as committed, and the table is
    /// poisoned (recovery runs at the next open); if a withdrawal fails, the table is poisoned
    /// and recovery ends the transaction as the shards' states say.
    fn take_back<P: Participant>(&mut self, shards: &mut [P]) {
        let Activity::Writing(txn) = std::mem::replace(&mut self.activity, Activity::Idle) else {
            return;
        };
        let written: Vec<usize> = (0..shards.len()).filter(|&i| txn.dirty[i]).collect();
        let taken_back = match txn.decided {
            // A hosted decision needs no record: the host's decision row rolled back with it.
            Some(Decided::Hosted) => Ok(()),
            // Three-phase: the shards' pre-commits are the decision.
            Some(Decided::PreCommitted) => withdraw_pre_commits(shards, txn.txid, &written),
            _ => self.decide(&Record::abort(txn.txid)),
        };
        if let Err(e) = taken_back {
            self.poison(&e);
            if txn.decided == Some(Decided::PreCommitted) {
                // Some shards may hold it pre-committed and others not: only recovery may end
                // it, pre-committing every shard before it finalizes one.
                return;
            }
            self.activity = Activity::Writing(txn);
            return self.commit(shards);
        }
        // No reader may see the undo half done; a shard left prepared is aborted by recovery.
        let mut publish = match self.control.publishing(self.busy_timeout_ms) {
            Ok(publish) => publish,
            Err(e) => {
                end_all(shards);
                return self.poison(&e);
            }
        };
        match txn.decided {
            // The shards never committed it: rolling back their SQLite transactions undoes it.
            Some(Decided::Logged) => {
                end_all(shards);
                let _ = publish.set_mark(0);
            }
            _ => self.abort_everywhere(shards, txn.txid, &written),
        }
    }

    /// Whether prepared transaction `txid` is decided: by a COMMIT record (the journal read
    /// afresh), or by the decision row of the host database `decided_by` names; on a
    /// three-phase table, by a shard holding it pre-committed (`pre_committed_somewhere`).
    pub fn is_decided(
        &mut self,
        txid: u64,
        decided_by: Option<&str>,
        pre_committed_somewhere: bool,
    ) -> Result<bool> {
        if self.protocol == Protocol::ThreePhase && decided_by.is_none() {
            return Ok(pre_committed_somewhere);
        }
        self.control.refresh()?;
        self.decided(txid, decided_by)
    }

    /// How the table's transactions commit.
    pub fn protocol(&self) -> Protocol {
        self.protocol
    }

    /// The commits shards lost after they were durable (their file or WAL damaged or
    /// replaced), as (transaction, shard) pairs: see [`lost_commits`]. Logged commits are not
    /// listed: recovery replays them on a shard that lacks them (or refuses, if the shard lacks
    /// what they build on).
    pub fn lost_commits<P: Participant>(&mut self, shards: &mut [P]) -> Result<Vec<(u64, usize)>> {
        self.control.refresh()?;
        Ok(lost_commits(
            &self.control.prepared_decisions(),
            &self.control.floor(),
            &last_txids(shards)?,
        ))
    }

    /// Takes the writer lock (for DROP TABLE).
    pub fn lock_writer(&self) -> Result<Held> {
        self.control.lock_writer(self.busy_timeout_ms)
    }

    /// The table's identity.
    pub fn table_id(&self) -> TableId {
        self.table_id
    }

    /// Whether a decision could not be written or undone (the outcome of the transaction that
    /// met it is recovery's).
    #[cfg(test)]
    pub fn is_poisoned(&self) -> bool {
        self.poisoned.is_some()
    }

    /// Whether this connection has nothing open on the shards.
    pub fn is_idle(&self) -> bool {
        matches!(self.activity, Activity::Idle)
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

/// Applies a person's decision to the prepared transactions no record can decide: every one, when
/// the journal that would decide them is missing or damaged (the table then refuses to open);
/// with a journal, those that rode on a host database's commit that cannot be read (gone,
/// damaged: `host_lookup` fails) and that the journal does not commit. On a three-phase table,
/// whose shards decide the rest, only those that rode on a host database that cannot be read.
/// Refuses if there is nothing to resolve (recovery decides then).
pub fn resolve_in_doubt<P: Participant>(
    config: &TableConfig,
    table_id: TableId,
    shards: &mut [P],
    resolution: Resolution,
    host_lookup: HostLookup,
) -> Result<Resolved> {
    let writer_lock = LockFile::open(&config.lock_path)?;
    let _writer = writer_lock.exclusive("writer lock", config.busy_timeout_ms)?;
    let journal = match Journal::open_existing(&config.journal_path, table_id) {
        // A damaged journal decides nothing: the person's decision replaces it.
        Err(Error::JournalCorrupt { .. }) => {
            move_aside(&config.journal_path, "damaged")?;
            None
        }
        other => other?,
    };
    // Only a decision that cannot be known is the person's to make: a host database that
    // cannot be read for now (busy, a full disk) is an error, not a reason to guess. A
    // three-phase table's shards decide what rode on no host, journal or not.
    let three_phase = config.protocol == Protocol::ThreePhase;
    let host_undecidable = |txid: u64, host: &str| match host_lookup(host, &table_id, txid) {
        Ok(_) => Ok(false),
        Err(Error::InDoubt(_)) => Ok(true),
        Err(e) => Err(e),
    };
    let undecidable = |txid: u64, host: Option<&str>| match (&journal, host) {
        (None, _) if !three_phase => Ok(true),
        (Some(journal), Some(_)) if journal.is_committed(txid) => Ok(false),
        (_, Some(host)) => host_undecidable(txid, host),
        // Decided by the journal (two-phase) or by the shards (three-phase).
        (_, None) => Ok(false),
    };
    let publish_lock = LockFile::open(&config.publish_lock_path)?;
    let mut publish = publish_lock.publishing(config.busy_timeout_ms)?;
    // Without a journal the shards still tell two cases apart, which no person may overrule:
    // a transaction a shard committed is committed everywhere, one a shard it wrote never
    // prepared, or undid, is aborted everywhere (see `after_lost_records`).
    let shown = match &journal {
        None => {
            let records = prepare_records(shards)?;
            after_lost_records(&|_| false, config.protocol, shards, &records)?
        }
        Some(_) => AfterLostRecords::default(),
    };
    let resolved = apply_resolution(shards, |record| match shown.outcome(record.txid) {
        Some(outcome) => Ok(Some(outcome)),
        None => Ok(undecidable(record.txid, record.decided_by.as_deref())?.then_some(resolution)),
    })?;
    if (journal.is_some() || three_phase) && resolved.is_empty() {
        return Err(nothing_in_doubt(config, &config.journal_path.display()));
    }
    make_durable(shards)?;
    if journal.is_none() {
        Journal::create(&config.journal_path, table_id)?;
        publish.set_mark(0)?;
    }
    Ok(Resolved::split(resolved, &shown))
}

/// What `imagestore_resolve` did with the prepared transactions.
#[derive(Debug, Default)]
pub struct Resolved {
    /// Those the person's decision applied to.
    pub decided: Vec<u64>,
    /// Those the shards decided: committed on some shard, so committed everywhere.
    pub committed: Vec<u64>,
    /// Those the shards decided: never prepared on every shard they wrote, or undone on one,
    /// so aborted.
    pub aborted: Vec<u64>,
}

impl Resolved {
    /// Sorts the transactions `resolved` into what the shards showed (`shown`) and the rest.
    fn split(resolved: Vec<u64>, shown: &AfterLostRecords) -> Resolved {
        let mut split = Resolved::default();
        for txid in resolved {
            if shown.committed.contains(&txid) {
                split.committed.push(txid);
            } else if shown.aborted.contains(&txid) {
                split.aborted.push(txid);
            } else {
                split.decided.push(txid);
            }
        }
        split
    }
}

/// `resolve_in_doubt` for a table whose [`Control`] sees a loss of its records when it reads
/// them (a table on servers: its anchor's marker row): under the writer and publish locks,
/// applies a person's decision to what recovery refuses to decide, commits what the shards show
/// committed (see [`after_lost_records`]), then marks the records whole. Refuses if the person
/// has nothing to decide.
pub fn resolve_through_control<P: Participant>(
    config: &TableConfig,
    control: &mut dyn Control,
    shards: &mut [P],
    resolution: Resolution,
) -> Result<Resolved> {
    let _writer = control.lock_writer(config.busy_timeout_ms)?;
    let _publish = control.publishing(config.busy_timeout_ms)?;
    control.begin_recovery()?;
    if !control.records_lost() {
        return Err(nothing_in_doubt(config, &control.name()));
    }
    let records = prepare_records(shards)?;
    let decided = |txid| control.is_committed(txid);
    let lost = after_lost_records(&decided, config.protocol, shards, &records)?;
    if lost.in_doubt.is_empty() {
        return Err(nothing_in_doubt(config, &control.name()));
    }
    let resolved = apply_resolution(shards, |record| {
        Ok(lost.outcome(record.txid).or_else(|| {
            lost.in_doubt
                .contains_key(&record.txid)
                .then_some(resolution)
        }))
    })?;
    make_durable(shards)?;
    control.restore_records()?;
    Ok(Resolved::split(resolved, &lost))
}

/// What decision records that may have lost decisions leave of the prepared transactions (the
/// shards' `records`), on a two-phase table: those some shard already committed, those no
/// commit decision was taken for (a vote that never finished, a part undone), and those in
/// doubt, with the shards holding them; `decided` says which a remaining record commits (those
/// are recovery's as usual). A transaction that some shard it wrote never prepared never had a
/// decision (every participant prepares before one is taken): abort is right for it.
///
/// A shard that no longer holds a transaction and whose `last_finalized` is its id committed
/// it: only the transaction raises it to its id (an id is above every shard's `last_txid` when
/// it is given), no later transaction commits while it is prepared anywhere (a writer runs
/// recovery first), a shard raises it only when it finalizes its prepared part, which it does
/// only once the transaction was decided, and an abort leaves it where it was. (A server's
/// `last_finalized` is its `last_txid`, which its prepare does not raise; a local shard's
/// prepare raises `last_txid`, so it keeps the two apart.) A shard the transaction wrote whose
/// `last_txid` is below it never prepared it: its vote never finished. A shard whose
/// `last_aborted` is its id undid its part, which it does only without a commit decision. A
/// three-phase table's records decide nothing: nothing is in doubt.
fn after_lost_records<P: Participant>(
    decided: &dyn Fn(u64) -> bool,
    protocol: Protocol,
    shards: &mut [P],
    records: &[Vec<PrepareRecord>],
) -> Result<AfterLostRecords> {
    let mut lost = AfterLostRecords::default();
    if protocol == Protocol::ThreePhase {
        return Ok(lost);
    }
    let last_txids = last_txids(shards)?;
    let mut held: BTreeMap<u64, (Vec<usize>, Option<&[u16]>)> = BTreeMap::new();
    for (index, records) in records.iter().enumerate() {
        for record in records.iter().filter(|r| r.decided_by.is_none()) {
            let entry = held.entry(record.txid).or_default();
            entry.0.push(index);
            entry.1 = entry.1.or(record.participants.as_deref());
        }
    }
    let last_finalized = each_shard_value(shards, P::last_finalized)?;
    let last_aborted = each_shard_value(shards, P::last_aborted)?;
    for (txid, (on, participants)) in held {
        let let_go = |index: usize| !on.contains(&index);
        // `last_txid` below the transaction: the shard never prepared it (a local shard's
        // prepare raises it; a server's rollback leaves it there).
        let never_voted = participants.is_some_and(|wrote| {
            wrote
                .iter()
                .map(|&p| p as usize)
                .any(|p| p < shards.len() && let_go(p) && last_txids[p] < txid)
        });
        let ended_as = |last: &[u64]| (0..shards.len()).any(|i| let_go(i) && last[i] == txid);
        if ended_as(&last_finalized) {
            lost.committed.insert(txid);
        } else if never_voted || ended_as(&last_aborted) {
            lost.aborted.insert(txid);
        } else if !decided(txid) {
            lost.in_doubt.insert(txid, on);
        }
    }
    Ok(lost)
}

/// See [`after_lost_records`].
#[derive(Default)]
struct AfterLostRecords {
    committed: BTreeSet<u64>,
    aborted: BTreeSet<u64>,
    in_doubt: BTreeMap<u64, Vec<usize>>,
}

impl AfterLostRecords {
    /// The outcome the shards show for `txid`, if they show one.
    fn outcome(&self, txid: u64) -> Option<Resolution> {
        if self.committed.contains(&txid) {
            Some(Resolution::Commit)
        } else {
            self.aborted.contains(&txid).then_some(Resolution::Abort)
        }
    }
}

/// Applies to each prepared transaction what `decide` says (nothing for `None`); returns those
/// acted on, sorted.
fn apply_resolution<P: Participant>(
    shards: &mut [P],
    mut decide: impl FnMut(&PrepareRecord) -> Result<Option<Resolution>>,
) -> Result<Vec<u64>> {
    let mut resolved = Vec::new();
    for shard in shards.iter_mut() {
        for record in shard.prepared()? {
            match decide(&record)? {
                Some(Resolution::Commit) => shard.finalize(record.txid)?,
                Some(Resolution::Abort) => shard.abort_prepared(record.txid)?,
                None => continue,
            }
            resolved.push(record.txid);
        }
    }
    resolved.sort_unstable();
    resolved.dedup();
    Ok(resolved)
}

/// `imagestore_resolve` with nothing a person must decide: the records (kept at `records`)
/// decide every prepared transaction, or, on a three-phase table, the shards do.
fn nothing_in_doubt(config: &TableConfig, records: &dyn std::fmt::Display) -> Error {
    Error::BadArgument(match config.protocol {
        Protocol::ThreePhase => format!(
            "table {} commits with protocol='3pc': its shards decide every transaction that rode on no host database, and opening the table runs that recovery",
            config.table_name
        ),
        Protocol::TwoPhase => format!(
            "the decision records ({records}) decide every prepared transaction; opening the table runs recovery"
        ),
    })
}

/// The (transaction, shard) pairs, sorted, of prepared commits the journal decided on shards
/// whose `last_txid` (`last_txids`, one per shard) is below them, and of shards below the
/// journal's floor (then the transaction is the floor: the shard lacks commits up to it).
fn lost_commits(
    decisions: &[(u64, Vec<u16>)],
    floor: &[u64],
    last_txids: &[u64],
) -> Vec<(u64, usize)> {
    let below = |s: usize, txid: u64| last_txids.get(s).is_some_and(|&last| last < txid);
    let mut lost: Vec<(u64, usize)> = decisions
        .iter()
        .flat_map(|(txid, shards)| {
            let txid = *txid;
            shards
                .iter()
                .map(|&s| s as usize)
                .filter(move |&s| below(s, txid))
                .map(move |s| (txid, s))
        })
        .chain(
            floor
                .iter()
                .enumerate()
                .filter(|&(s, &floor)| below(s, floor))
                .map(|(s, &floor)| (floor, s)),
        )
        .collect();
    lost.sort_unstable();
    lost
}

/// Lists lost commits as `shard 1 (path): transactions [17, 18]`.
fn describe_lost<P: Participant>(shards: &[P], lost: &[(u64, usize)]) -> String {
    let mut by_shard: BTreeMap<usize, Vec<u64>> = Default::default();
    for &(txid, shard) in lost {
        by_shard.entry(shard).or_default().push(txid);
    }
    by_shard
        .iter()
        .map(|(&shard, txids)| {
            let path = shards.get(shard).map(P::name);
            format!(
                "shard {shard} ({}) lacks transactions {txids:?}",
                path.unwrap_or_default()
            )
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// A person accepts the shards as they are after recovery reported commits a shard lost
/// (`refuse_lost_commits`, or a logged commit whose base a shard lacks): the journal, whose
/// records name them, is set aside (kept as `<journal>.accepted-<nanoseconds>`) and replaced,
/// and the mark cleared. Refused while a shard holds a prepare record (recovery settles those
/// before it looks for lost commits). Returns the lost prepared commits.
pub fn accept_lost_commits<P: Participant>(
    config: &TableConfig,
    table_id: TableId,
    shards: &mut [P],
) -> Result<Vec<u64>> {
    let writer_lock = LockFile::open(&config.lock_path)?;
    let _writer = writer_lock.exclusive("writer lock", config.busy_timeout_ms)?;
    let publish_lock = LockFile::open(&config.publish_lock_path)?;
    let mut publish = publish_lock.publishing(config.busy_timeout_ms)?;
    let in_doubt = first_prepared(shards)?.is_some();
    let journal = match Journal::open_existing(&config.journal_path, table_id)? {
        Some(journal) if !in_doubt => journal,
        _ => {
            return Err(Error::BadArgument(format!(
                "table {}: 'accept' applies to commits a shard lost, once recovery has run; \
                 open the table to run it (its error says what it found)",
                config.table_name
            )))
        }
    };
    let decisions: Vec<(u64, Vec<u16>)> = journal
        .prepared_decisions()
        .map(|(txid, shards)| (txid, shards.to_vec()))
        .collect();
    let mut lost: Vec<u64> = lost_commits(&decisions, journal.floor(), &last_txids(shards)?)
        .into_iter()
        .map(|(txid, _)| txid)
        .collect();
    lost.dedup();
    // The shards' commits must be durable before the records that decided them go.
    make_durable(shards)?;
    drop(journal);
    move_aside(&config.journal_path, "accepted")?;
    Journal::create(&config.journal_path, table_id)?;
    publish.set_mark(0)?;
    Ok(lost)
}

/// A journal that is missing when the table exists: made again only if nothing is in doubt (no
/// shard holds a prepare record once what the shards show is finished, no logged commit is
/// marked unfinished); else the error says how to decide. A three-phase table's journal decides
/// nothing: it is always made again.
pub(super) fn refuse_missing_journal<P: Participant>(
    config: &TableConfig,
    shards: &mut [P],
    writer_lock: &LockFile,
    publish_lock: &LockFile,
) -> Result<()> {
    if config.protocol == Protocol::ThreePhase {
        return Ok(());
    }
    if first_prepared(shards)?.is_some() {
        let _writer = writer_lock.exclusive("writer lock", config.busy_timeout_ms)?;
        finish_what_the_shards_show(config, shards, publish_lock)?;
    }
    if let Some((shard, txids)) = first_prepared(shards)? {
        return Err(Error::InDoubt(format!(
            "the journal {} is missing while shard {} holds prepared transactions {txids:?}; \
             their outcome cannot be known. Restore the journal, or decide: \
             SELECT imagestore_resolve('{}', 'commit' or 'abort')",
            config.journal_path.display(),
            shard,
            config.table_name
        )));
    }
    let mark = publish_lock.mark()?;
    if mark != 0 {
        return Err(Error::InDoubt(format!(
            "the journal {} is missing while logged transaction {mark} may not be on every shard yet; \
             restore the journal, or accept the shards as they are: SELECT imagestore_resolve('{}', 'abort')",
            config.journal_path.display(),
            config.table_name
        )));
    }
    Ok(())
}

/// A journal that cannot be read (a damaged header or record, an empty file, another table's):
/// if nothing is in doubt (no shard holds a prepare record once what the shards show is
/// finished, no logged commit is marked as unfinished) it is moved aside, kept for inspection,
/// and `None` is returned (a new one is made); else the error names what is in doubt and how to
/// decide it. The caller holds the writer lock.
pub(super) fn set_aside_damaged<P: Participant>(
    config: &TableConfig,
    table_id: TableId,
    shards: &mut [P],
    publish_lock: &LockFile,
    detail: &str,
) -> Result<Option<Journal>> {
    // Read again under the lock: a writer may have been replacing it.
    match Journal::open_existing(&config.journal_path, table_id) {
        Err(Error::JournalCorrupt { .. }) => {}
        other => return other,
    }
    let journal = config.journal_path.display();
    let table = &config.table_name;
    let in_doubt = match config.protocol {
        Protocol::TwoPhase => {
            finish_what_the_shards_show(config, shards, publish_lock)?;
            first_prepared(shards)?
        }
        // Its journal decides nothing: the shards do.
        Protocol::ThreePhase => None,
    };
    if let Some((shard, txids)) = in_doubt {
        return Err(Error::InDoubt(format!(
            "the journal {journal} is damaged ({detail}) while shard {} holds prepared transactions {txids:?}; \
             their outcome cannot be known. Restore the journal, or decide: \
             SELECT imagestore_resolve('{table}', 'commit' or 'abort') (it sets the damaged journal aside)",
            shard
        )));
    }
    let mark = publish_lock.mark()?;
    if mark != 0 {
        return Err(Error::InDoubt(format!(
            "the journal {journal} is damaged ({detail}) while logged transaction {mark} may not be on every shard yet; \
             restore the journal, or accept the shards as they are: SELECT imagestore_resolve('{table}', 'abort')"
        )));
    }
    move_aside(&config.journal_path, "damaged")?;
    Ok(None)
}

/// Without a journal that decides them, ends the prepared transactions whose outcome the shards
/// show ([`after_lost_records`]: committed where a shard finalized one, aborted where a shard it
/// wrote never prepared it or one undid it), under the publish lock, durably. What remains
/// prepared is in doubt. The caller holds the writer lock.
fn finish_what_the_shards_show<P: Participant>(
    config: &TableConfig,
    shards: &mut [P],
    publish_lock: &LockFile,
) -> Result<()> {
    let records = prepare_records(shards)?;
    let shown = after_lost_records(&|_| false, config.protocol, shards, &records)?;
    if shown.committed.is_empty() && shown.aborted.is_empty() {
        return Ok(());
    }
    let _publish = publish_lock.publishing(config.busy_timeout_ms)?;
    apply_resolution(shards, |record| Ok(shown.outcome(record.txid)))?;
    make_durable(shards)
}

/// Moves a journal aside, kept for inspection, to `<journal>.<why>-<nanoseconds since 1970>`
/// (never over an earlier one), and syncs its folder.
fn move_aside(journal: &std::path::Path, why: &str) -> Result<()> {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let aside = crate::files::with_suffix(journal, &format!(".{why}-{nanos}"));
    // A link never replaces a file; then the damaged journal's own name goes.
    std::fs::hard_link(journal, &aside)
        .and_then(|()| std::fs::remove_file(journal))
        .map_err(Error::file_io(journal))?;
    crate::files::sync_dir(journal.parent().unwrap_or(std::path::Path::new(".")))
}

/// Step 6h's housekeeping: the host's decision rows of earlier transactions are needed until
/// every shard's finalize of them is durable (a finalize is not synced; a shard that lost one
/// would find its prepare record without a row, presume abort and undo its half). Once the host
/// holds more than [`HOST_DECISIONS_KEPT_MAX`], every shard's WAL is synced, which makes all
/// those finalizes durable (each committed before this transaction began), and the older rows
/// are deleted with this transaction's own.
fn forget_settled_decisions<P: Participant>(
    shards: &mut [P],
    host: &dyn HostDecider,
    txid: u64,
    kept: u64,
) -> Result<()> {
    if kept <= HOST_DECISIONS_KEPT_MAX {
        return Ok(());
    }
    make_durable(shards)?;
    host.forget_before(txid)
}

/// Runs `step` on each shard of `indices` (see [`each_shard`]), each local shard's WAL sync
/// starting as soon as its step succeeded and running while the next one's goes on; all are
/// waited for. So a step that must be durable costs about one sync however many shards take
/// it. Returns the shards whose step succeeded, those whose step failed (a call that broke off
/// may have acted all the same), and the first error, of a step or of a sync.
fn step_and_sync<P: Participant>(
    shards: &mut [P],
    indices: &[usize],
    stop_at_error: bool,
    step: impl Fn(&mut P) -> Result<()> + Sync,
) -> (Vec<usize>, Vec<usize>, Option<Error>) {
    let mut done = Vec::new();
    let mut failed = Vec::new();
    let mut first_error = None;
    let mut syncs = Syncs::new();
    for (i, outcome) in each_shard(shards, indices, stop_at_error, step) {
        match outcome {
            Ok(()) => {
                done.push(i);
                if let Some(job) = shards[i].sync_job() {
                    syncs.start(job);
                }
            }
            Err(e) => {
                failed.push(i);
                first_error = first_error.or(Some(e));
            }
        }
    }
    let first_error = first_error.or(syncs.finish().err());
    (done, failed, first_error)
}

/// Three-phase commit's take-back (steps 6p and 8): every shard of `written` withdraws its
/// pre-commit of `txid`, and all are synced, before any shard is undone. An error says some
/// shard may still hold it pre-committed: then nothing may be undone.
fn withdraw_pre_commits<P: Participant>(
    shards: &mut [P],
    txid: u64,
    written: &[usize],
) -> Result<()> {
    let (_, _, failure) = step_and_sync(shards, written, true, |shard| {
        shard.withdraw_pre_commit(txid)
    });
    failure.map_or(Ok(()), Err)
}

/// Runs `step` on each shard of `indices`, and returns each one's outcome. Remote participants
/// (each step a round trip, mostly waiting for the server) take it all at once, each on a thread
/// of its own; local ones in turn, stopping at the first error if `stop_at_error` (the rest
/// are not reached).
fn each_shard<P: Participant>(
    shards: &mut [P],
    indices: &[usize],
    stop_at_error: bool,
    step: impl Fn(&mut P) -> Result<()> + Sync,
) -> Vec<(usize, Result<()>)> {
    let at_once = indices.len() > 1 && indices.iter().all(|&i| shards[i].is_remote());
    if !at_once {
        let mut outcomes = Vec::with_capacity(indices.len());
        for &i in indices {
            let outcome = step(&mut shards[i]);
            let failed = outcome.is_err();
            outcomes.push((i, outcome));
            if failed && stop_at_error {
                break;
            }
        }
        return outcomes;
    }
    let step = &step;
    std::thread::scope(|scope| {
        let running: Vec<_> = shards
            .iter_mut()
            .enumerate()
            .filter(|(i, _)| indices.contains(i))
            .map(|(i, shard)| (i, scope.spawn(move || step(shard))))
            .collect();
        let joined: Vec<_> = running
            .into_iter()
            .map(|(i, thread)| (i, thread.join()))
            .collect();
        // A panic goes on out of the coordinator, as it would have on this thread.
        joined
            .into_iter()
            .map(|(i, outcome)| {
                (
                    i,
                    outcome.unwrap_or_else(|panic| std::panic::resume_unwind(panic)),
                )
            })
            .collect()
    })
}

/// The journal's names for the written shards.
fn participants(written: &[usize]) -> Vec<u16> {
    written.iter().map(|&i| i as u16).collect()
}

/// Every shard's `last_txid`, in shard order.
fn last_txids<P: Participant>(shards: &mut [P]) -> Result<Vec<u64>> {
    each_shard_value(shards, P::last_txid)
}

/// `read` of every shard, in shard order.
fn each_shard_value<P: Participant>(
    shards: &mut [P],
    read: impl FnMut(&mut P) -> Result<u64>,
) -> Result<Vec<u64>> {
    shards.iter_mut().map(read).collect()
}

/// What every shard holds prepared, in shard order.
fn prepare_records<P: Participant>(shards: &mut [P]) -> Result<Vec<Vec<PrepareRecord>>> {
    shards.iter_mut().map(P::prepared).collect()
}

/// Recovery's take-over of every shard (remote ones at once); the first error, if any.
fn take_over_all<P: Participant>(shards: &mut [P]) -> Result<()> {
    let all: Vec<usize> = (0..shards.len()).collect();
    each_shard(shards, &all, true, P::take_over)
        .into_iter()
        .find_map(|(_, outcome)| outcome.err())
        .map_or(Ok(()), Err)
}

/// Makes every shard's commits so far durable, the shards' syncs in parallel.
fn make_durable<P: Participant>(shards: &[P]) -> Result<()> {
    crate::durable::run_all(shards.iter().filter_map(P::sync_job).collect())
}

/// Step 1 on every shard (remote ones at once); on an error, ends what was begun.
fn begin_all<P: Participant>(shards: &mut [P]) -> Result<()> {
    let all: Vec<usize> = (0..shards.len()).collect();
    let failed = each_shard(shards, &all, true, P::begin_write)
        .into_iter()
        .find_map(|(_, outcome)| outcome.err());
    match failed {
        Some(e) => {
            end_all(shards);
            Err(e)
        }
        None => Ok(()),
    }
}

/// Rolls back whatever is open on every shard (read snapshots end the same way).
fn end_all<P: Participant>(shards: &mut [P]) {
    for shard in shards.iter_mut() {
        let _ = shard.end();
    }
}

/// The first shard holding prepare records, with them.
fn first_prepared<P: Participant>(shards: &mut [P]) -> Result<Option<(String, Vec<u64>)>> {
    for shard in shards.iter_mut() {
        let txids: Vec<u64> = shard.prepared()?.iter().map(|r| r.txid).collect();
        if !txids.is_empty() {
            return Ok(Some((shard.name(), txids)));
        }
    }
    Ok(None)
}

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
//!   SQLite sense can still be undone. A *prepare record* marks such a transaction. Shards run
//!   with `synchronous=NORMAL`: a WAL-mode file then keeps, after a power cut, a prefix of its
//!   commits (never a torn one), and this module syncs WAL files itself where a step needs it.
//! - The journal (`journal`): checksummed decision records, synced. A COMMIT record says the
//!   shards it names hold the transaction prepared; a LOGGED record carries each shard's changes
//!   itself (`redo`). Nothing else is ever written there.
//! - Two locks (`locks`): the writer lock (one writer at a time, across processes) and the
//!   publish lock (readers open snapshots only outside a commit's undecided window). The publish
//!   lock's file holds the *logged-commit mark*, set while a logged commit's shards commit.
//!
//! # States of a transaction
//! ```text
//! Idle -> Writing --sync: small--> LOGGED synced --xCommit: every shard commits---------> Idle
//!            |     --sync: large--> Prepared (every shard) -> COMMIT synced --xCommit: finalize-> Idle
//!            |                        \-> any shard says no -> Aborted --------------------> Idle
//!            |      (decided) --xRollback: SQLite's own commit failed--> ABORT synced, undo -> Idle
//!            \--rollback--> Idle
//! ```
//!
//! # Commit steps (at SQLite's xSync; xCommit's result is ignored by SQLite, so the decision must
//! be durable before xSync returns; and SQLite commits its own files between xSync and xCommit,
//! which can still fail, so a decision must be undoable until xCommit)
//! 1. *Begin* (first write): take the writer lock; BEGIN IMMEDIATE on every shard; if any shard
//!    holds a prepare record, or the logged-commit mark is set, a writer died mid-commit: roll
//!    back and run recovery first. The transaction id is 1 + the largest `last_txid` of all
//!    shards.
//! 2. *Write*: each row change goes to its shard's open SQLite transaction, after its
//!    before-state is recorded. The connection reads its own writes through the same shards.
//! 3. *Choose* (xSync): take the publish lock exclusively. If the changes (rows as they end, and
//!    the images they add) come to at most `logged_commit_max` bytes, the logged path (4)
//!    decides them with one sync in all, however many shards they touch (one included); a
//!    larger transaction is prepared (5, 6), so that its images are not written twice.
//! 4. *Logged path*: read each written shard's changes from its still-open SQLite transaction.
//!    Set the mark; append LOGGED(txid, shards, changes) to the journal and fdatasync it. **That
//!    sync is the commit point.** (If the append or sync fails, the record is cut off as in 6 and
//!    the shards roll back: nothing of it was committed anywhere.) The shards' SQLite
//!    transactions stay open: they commit at xCommit (7).
//! 5. *Prepare*: each written shard adds a prepare record and commits, and its WAL fsync starts
//!    on a pool thread while the next shard prepares (`durable`); all are waited for. So the
//!    prepare costs about one sync however many shards it touches. A shard that fails votes no;
//!    then every prepared shard is undone from its before-states and the statement fails. All
//!    votes must be yes: a majority would commit on some shards what another shard refused (say
//!    a constraint failure), so the transaction would be neither whole nor absent.
//! 6. *Decide*: append COMMIT(txid, shards) to the journal and fdatasync it. **That sync is the
//!    commit point.** If the append or sync fails, the record is cut off (and synced) before the
//!    shards are undone, so a failed COMMIT leaves nothing; if even the cut fails, the table is
//!    poisoned and recovery, reading the file, decides. Release the publish lock.
//!
//!    6h. *Decide in the host* (a transaction that also wrote the host database's own tables,
//!    see below): always prepared (5, every prepare record naming the host database), then the
//!    decision is a row inserted into the host's `imagestore_decisions` inside the host's own
//!    transaction. **The host's commit is the commit point**, of its tables and of this one.
//!    The publish lock is released before it. Rows of earlier transactions stay until their
//!    finalizes (7, not synced) are durable on every shard: once the host holds more than 64,
//!    every shard's WAL is synced and the older rows are deleted in the same host transaction.
//! 7. *Finish* (xCommit, after SQLite committed its own files): on the logged path, take the
//!    publish lock again and commit every written shard, not synced, then clear the mark (a
//!    shard whose commit fails is rolled back and the mark stays: the next reader or writer
//!    runs recovery, which replays it from the journal); on the prepared path, each shard drops
//!    its before-states and prepare record in a transaction of its own, not synced (until that
//!    is durable the journal keeps the decision, and recovery finalizes again). Release the
//!    writer lock.
//! 8. *Take back* (xRollback after a decided xSync: SQLite's commit of its own files failed,
//!    with SQLITE_BUSY on the host file or a commit hook's veto, and SQLite rolls back): append
//!    ABORT(txid) and fdatasync it, so that the journal no longer decides the transaction; then,
//!    under the publish lock, roll back the logged path's open shard transactions, or undo the
//!    prepared shards from their before-states. So the host's tables and this table agree: the
//!    transaction is in neither. (If the ABORT cannot be written, the decision stands, the
//!    transaction is finished as in 7, and the table is poisoned.)
//! 9. *Trim*: at a later begin, if the journal is larger than `journal_limit` (or is version 1) and no shard holds a
//!    prepare record, fsync every shard's WAL (making every finalize and every logged shard
//!    commit durable) and reset the journal. Only then may a record be forgotten: presumed abort
//!    would otherwise turn an acknowledged commit into an abort.
//!
//! # Crash walk-through (what recovery finds after a crash at each step)
//! - Before 4 or 5, or during 2: shard transactions were never committed; SQLite rolls them back.
//! - During 4, before the LOGGED sync: the record is absent or torn (checksum): abort. Nothing
//!   was committed on a shard; the mark only makes the next reader run recovery. A record
//!   written whole but not yet synced is valid: recovery syncs it and replays it (a commit the
//!   caller never saw acknowledged; whole either way).
//! - During 4, after the sync: some shards committed, some not (or, after a power cut, lost
//!   their unsynced commits): recovery replays the record's changes on each shard whose
//!   `last_txid` is below the transaction's. Whole.
//! - During 5: some shards hold a prepare record, the journal has no COMMIT: recovery aborts
//!   (presumed abort) from the before-states. The COMMIT statement never returned.
//! - During 6: a torn or unsynced record fails its checksum and is ignored: abort. A synced one
//!   commits. The caller may not have seen the answer; either outcome is whole.
//! - During 7: prepare records remain with a COMMIT in the journal: recovery finalizes them; or
//!   a logged commit's shards have committed in part: the mark is set and recovery replays.
//! - During 6h, or between it and the host's commit: the host's decision row is not committed:
//!   recovery, asking the host database the prepare records name, aborts. After the host's
//!   commit: it finalizes. Both tables agree either way.
//! - During 8, before the ABORT is durable: the decision stands and recovery commits (the caller
//!   never heard an answer: whole either way). After it: recovery aborts what is prepared; a
//!   logged commit was never on a shard.
//! - During 9: the journal is replaced atomically (rename) only after the shards are synced.
//!
//! # Recovery (at open, and whenever a reader or writer finds a prepare record that no live
//! writer owns, or the mark set): under the writer lock and the publish lock,
//! - for each prepare record on each shard, finalize it if the journal holds its COMMIT (and no
//!   ABORT after it), or if the host database it names holds its decision row; else abort it;
//! - then replay every LOGGED record, in journal order, on each of its shards whose
//!   `last_txid` is below it (a shard keeps a prefix of its commits, so `last_txid` says which
//!   it has), provided the shard is at the state the record's changes apply to (each carries
//!   the shard's `last_txid` when the transaction began): a shard below it lost commits (an
//!   old copy put back after the journal was trimmed), and replaying over the gap would bring
//!   back rows without their images, so the table is refused instead, naming the shard;
//! - clear the mark.
//!
//! The order matters. A finalize or abort is not synced, and a logged commit does not sync its
//! shards, so a power cut can take both from a shard, leaving the prepare record that came
//! before them. Settling that record first gives back the state the logged commit started from
//! (blob ids included); replaying first would write over it and then undo the replay. The other
//! order cannot arise: a prepare syncs its shard, and with it every logged commit before it.
//!
//! Each step is one SQLite transaction on one shard, so recovery interrupted at any point is
//! simply run again. A journal that is missing, or cannot be read, while shards hold prepare
//! records (or the mark is set) cannot decide them: the table is unusable (in doubt) rather
//! than guess, and says how to decide (`imagestore_resolve`). A journal that cannot be read
//! while nothing is in doubt is moved aside (kept) and replaced.
//!
//! # Readers
//! A reader takes the publish lock shared, checks the mark, opens a read transaction on every
//! shard (pinning every snapshot), reads the prepare records they hold, and releases the lock.
//! Writers hold the lock exclusively from the choice in 3 to the end of 4 or 6, and again while
//! 7 commits a logged transaction's shards or 8 undoes one: so every snapshot of one query is
//! taken before a transaction's first shard commit or after all of them: no fractured reads,
//! and no undecided data. A prepare record that is not decided (no COMMIT in the journal) was
//! left by a dead writer: the reader runs recovery and opens its snapshots again. So does a
//! mark set while no writer is alive (the writer lock is free), or one that some shard's
//! `last_txid` has reached (a commit half applied). A mark set by a live writer whose logged
//! commit is on no shard yet (between its xSync and its xCommit) is left alone: the snapshots
//! are a consistent cut from before that transaction, and waiting could deadlock (that writer
//! may be waiting for this reader's statement to end, to commit the host file). A decided
//! prepare record's data is committed data whose finalize is pending.
//!
//! Inside the host's explicit transaction the snapshots are kept for all its reads until it
//! ends (`read_transaction`), with the publish lock's publication counter as it was when they
//! were taken. A write of that transaction (step 1, under the writer lock, so nothing can be
//! published meanwhile) first checks the counter and the mark: if either says that another
//! connection published since, the write is refused with SQLITE_BUSY_SNAPSHOT and the snapshots
//! stay, as SQLite does for an ordinary WAL table; else they end and step 1 goes on. Reads and
//! writes of one transaction thus see one state of the table.
//!
//! After recovery, a prepared commit that the journal decided and a shard's `last_txid` does not
//! reach was lost by that shard after it was durable (a damaged WAL, an old copy put back): the
//! table refuses to be used, naming shard and transaction, until a backup is restored or a
//! person accepts the shards as they are (`accept_lost_commits`).
//!
//! # Transactions that also write ordinary tables
//! SQLite calls xSync before it commits its own files, and xRollback if that commit then fails
//! (SQLITE_BUSY, a commit hook's veto): step 8 takes the decision back, so the two commit
//! together or not at all. Across a crash between xSync and SQLite's commit, atomicity needs one
//! commit point for both: when xSync finds that the transaction also wrote the host's tables
//! (`host::also_wrote`), the decision rides on the host's commit (6h). A reader that meets such
//! a transaction's undecided prepare records while its writer is alive is answered SQLITE_BUSY
//! at once: waiting could hold up the host commit it waits for (the writer may be waiting for
//! that reader's statement to end). A transaction that wrote only this table is decided in the
//! journal as before: it costs no host commit.
//!
//! Where the decision cannot ride: a `:memory:` or temp host database has nothing durable, so a
//! transaction there is decided in the journal at xSync (a crash loses the host's part anyway).
//! Shards shared by several host databases: a transaction rides on the host database of the
//! connection that wrote it; its prepare records name that database's file, so recovery from
//! any other database opens that file to read the decision (if it is gone, the transaction is
//! in doubt and the table says which database it needs).
//!
//! # What the protocol assumes of the disk, and which test shows it needed
//! - A synced write survives a power cut; an unsynced one may not, in whole or in part (each
//!   file keeping a prefix of its writes).
//! - A WAL-mode file at `synchronous=NORMAL` keeps a prefix of its commits (SQLite's own rule):
//!   so `last_txid` says which commits a shard kept, and replay gives back the rest.
//! - A name created, removed or renamed is durable only once its folder is synced: after making
//!   or replacing the journal, and after a new shard WAL (`durable::sync_wal`).
//!
//! `tests/test_power_cut.py` runs the table on a file system that drops, at each cut, what was
//! not synced, and leaves out, in the test build (`fault::skips_sync`), in turn the LOGGED
//! record's fdatasync (4), a prepare's WAL fsync (5) and the journal folder's sync (9): each time
//! the cuts lose acknowledged commits, or the table refuses to open (commits lost).
//!
//! # Transaction ids
//! Every prepare, logged shard commit and replay raises its shards'
//! `last_txid` in the same SQLite transaction, and a new id is above every shard's `last_txid`,
//! so ids never repeat: not after a crash, and not after the journal is reset.

use crate::config::TableConfig;
use crate::error::{Error, Result};
use crate::journal::{Journal, Record, TableId};
use crate::locks::{LockFile, LockGuard, PublishState, Publishing};
use crate::redo::ShardChanges;
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
const HOST_DECISIONS_KEPT_MAX: u64 = 64;

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
    journal: Journal,
    writer_lock: LockFile,
    publish_lock: LockFile,
    activity: Activity,
    poisoned: bool,
    table_id: TableId,
    host_lookup: HostLookup,
}

impl Coordinator {
    /// Opens the journal (creating it if `create`) and runs recovery if no writer is active.
    pub fn open(
        config: &TableConfig,
        table_id: TableId,
        shards: &mut [Shard],
        create: bool,
        host_lookup: HostLookup,
    ) -> Result<Coordinator> {
        let writer_lock = LockFile::open(&config.lock_path)?;
        let publish_lock = LockFile::open(&config.publish_lock_path)?;
        let existing = match Journal::open_existing(&config.journal_path, table_id) {
            Err(Error::JournalCorrupt { detail, .. }) => {
                let _writer = writer_lock.exclusive("writer lock", config.busy_timeout_ms)?;
                set_aside_damaged(config, table_id, shards, &publish_lock, &detail)?
            }
            other => other?,
        };
        let journal = match existing {
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
                    let mark = publish_lock.mark()?;
                    if mark != 0 {
                        return Err(Error::InDoubt(format!(
                            "the journal {} is missing while logged transaction {mark} may not be on every shard yet; \
                             restore the journal, or accept the shards as they are: SELECT imagestore_resolve('{}', 'abort')",
                            config.journal_path.display(),
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
            logged_commit_max_bytes: config.logged_commit_max_bytes,
            journal,
            writer_lock,
            publish_lock,
            activity: Activity::Idle,
            poisoned: false,
            table_id,
            host_lookup,
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

    /// Finishes or undoes every prepared transaction, replays every logged commit a shard lacks,
    /// and clears the mark; an error says that recovery is pending (and keeps its cause's code,
    /// SQLITE_FULL for a full disk). The caller holds the writer lock and has no transaction open
    /// on the shards.
    fn recover(&mut self, shards: &mut [Shard]) -> Result<()> {
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

    fn recover_now(&mut self, shards: &mut [Shard]) -> Result<()> {
        let mut publish = self.publish_lock.publishing(self.busy_timeout_ms)?;
        if self.journal.rescan()? {
            self.journal.cut_torn_tail()?;
        }
        // A record a dead writer wrote but never synced must be durable before anything acts on
        // it: finalizing from a record that a power cut then takes away would half-apply it.
        self.journal.sync()?;
        // Prepared transactions first: on any one shard they are older than every logged commit
        // it lacks (see "Recovery" above).
        for shard in shards.iter() {
            for (txid, decided_by) in shard.prepared_deciders()? {
                crate::fault::check("recovery_shard")?;
                if self.decided(txid, decided_by.as_deref())? {
                    shard.finalize(txid)?;
                } else {
                    shard.abort_prepared(txid)?;
                }
            }
        }
        self.replay_logged(shards)?;
        publish.set_mark(0)?;
        self.refuse_lost_commits(shards)
    }

    /// Damage is never silent: a prepared commit the journal decided that a shard's
    /// `last_txid` does not reach (the shard lost it after it was durable) makes the table
    /// unusable, naming the shard and the transaction, until a backup is restored or a person
    /// accepts the shards as they are (`accept_lost_commits`).
    fn refuse_lost_commits(&mut self, shards: &[Shard]) -> Result<()> {
        let lost = self.lost_commits(shards)?;
        if lost.is_empty() {
            return Ok(());
        }
        Err(Error::LostCommits {
            table: self.table_name.clone(),
            lost: describe_lost(shards, &lost),
        })
    }

    /// Whether prepared transaction `txid` was decided: by a COMMIT record, or, for one that
    /// rode on a host database's commit, by the decision row that commit holds.
    fn decided(&self, txid: u64, decided_by: Option<&str>) -> Result<bool> {
        if self.journal.is_committed(txid) {
            return Ok(true);
        }
        match decided_by {
            Some(host) => (self.host_lookup)(host, &self.table_id, txid),
            None => Ok(false),
        }
    }

    /// Replays each LOGGED record on every shard it names whose `last_txid` is below it.
    fn replay_logged(&self, shards: &[Shard]) -> Result<()> {
        if self.journal.logged().is_empty() {
            return Ok(());
        }
        let mut applied = last_txids(shards)?;
        let lacks = |applied: &[u64], shard: u16, txid: u64| {
            applied.get(shard as usize).is_none_or(|&t| t < txid)
        };
        for &at in self.journal.logged() {
            let named = self.journal.committed_shards(at.txid).unwrap_or_default();
            if !named.iter().any(|&s| lacks(&applied, s, at.txid)) {
                continue;
            }
            let record = self.journal.read_logged(at)?;
            for (&s, changes) in record.shards.iter().zip(record.changes.iter().flatten()) {
                if !lacks(&applied, s, at.txid) {
                    continue;
                }
                let shard = shards.get(s as usize).ok_or_else(|| {
                    Error::InDoubt(format!(
                        "table {}: the journal's transaction {} wrote shard {s}, which the table does not have",
                        self.table_name, at.txid
                    ))
                })?;
                let changes =
                    ShardChanges::decode(changes).map_err(|detail| Error::JournalCorrupt {
                        path: self.journal.path().to_path_buf(),
                        detail: format!("transaction {}, shard {s}: {detail}", at.txid),
                    })?;
                if let Some(base) = changes.base_txid.filter(|&base| applied[s as usize] < base) {
                    return Err(Error::LostCommits {
                        table: self.table_name.clone(),
                        lost: format!(
                            "shard {s} ({}) lacks its commits after transaction {} up to {base}, on which the journal's transaction {} builds",
                            shard.path.display(),
                            applied[s as usize],
                            at.txid
                        ),
                    });
                }
                crate::fault::check("recovery_replay")?;
                shard.replay(at.txid, &changes)?;
                applied[s as usize] = at.txid;
            }
        }
        Ok(())
    }

    // ---- readers ------------------------------------------------------------------------

    /// Opens one consistent snapshot over every shard, unless this connection already has a
    /// transaction open on them (then reads see that transaction).
    pub fn begin_read(&mut self, shards: &mut [Shard], whole_transaction: bool) -> Result<()> {
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
        self.check_not_poisoned()?;
        for _ in 0..RECOVERY_ATTEMPTS_MAX {
            if let Some(publication) = self.open_snapshots(shards)? {
                self.activity = Activity::Reading {
                    whole_transaction,
                    publication,
                };
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

    /// Pins a snapshot on every shard and returns the publication counter it matches; `None`
    /// (snapshots perhaps still open) if the mark is set or a shard holds an undecided prepare
    /// record, which only a dead writer leaves behind.
    fn open_snapshots(&mut self, shards: &mut [Shard]) -> Result<Option<u64>> {
        let _publish = self
            .publish_lock
            .shared("publish lock", self.busy_timeout_ms)?;
        let PublishState { mark, publication } = self.publish_lock.state()?;
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
        // The reader is about to show these transactions as committed: their records must be
        // durable (a writer may have died between writing and syncing one).
        if let Err(e) = self.journal.refresh().and_then(|_| self.journal.sync()) {
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
        let decided = prepared.iter().all(|&txid| self.journal.is_committed(txid));
        Ok(decided.then_some(publication))
    }

    /// Whether the logged commit `mark` names is a live writer's that waits for SQLite's own
    /// commit (between its xSync and xCommit) and is on no shard yet: then the snapshots are a
    /// consistent cut from before it, and waiting for it could deadlock (the writer may be
    /// waiting for this reader's statement to end, to commit the host file).
    fn pending_on_no_shard(&self, shards: &[Shard], mark: u64) -> Result<bool> {
        if !self.writer_alive() {
            return Ok(false); // recovery
        }
        for shard in shards {
            if shard.last_txid()? >= mark {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Whether another connection, in this process or another, holds the writer lock now.
    fn writer_alive(&self) -> bool {
        self.writer_lock.exclusive("writer lock", 0).is_err()
    }

    /// Ends a query's snapshot opened by [`begin_read`](Self::begin_read) (a transaction's
    /// stays until [`end_transaction_read`](Self::end_transaction_read)).
    pub fn end_read(&mut self, shards: &mut [Shard]) {
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
    pub fn end_transaction_read(&mut self, shards: &mut [Shard], queries_reading: bool) {
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
    fn end_read_for_write(&mut self, shards: &mut [Shard]) -> Result<()> {
        let Activity::Reading {
            whole_transaction,
            publication,
        } = self.activity
        else {
            return Ok(());
        };
        let now = self.publish_lock.state()?;
        if whole_transaction && (now.publication != publication || now.mark != 0) {
            return Err(Error::SnapshotStale(self.table_name.clone()));
        }
        end_all(shards);
        self.activity = Activity::Idle;
        Ok(())
    }

    // ---- writers: begin and write -------------------------------------------------------

    /// Step 1: starts a write transaction (xBegin).
    pub fn begin_write(&mut self, shards: &mut [Shard]) -> Result<()> {
        if matches!(self.activity, Activity::Writing(_)) {
            return Ok(());
        }
        self.check_not_poisoned()?;
        let writer = self
            .writer_lock
            .exclusive("writer lock", self.busy_timeout_ms)?;
        self.end_read_for_write(shards)?;
        for _ in 0..RECOVERY_ATTEMPTS_MAX {
            if self.publish_lock.mark()? != 0 {
                self.recover(shards)?;
                continue;
            }
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
            // A version 1 journal (from an older build) takes no LOGGED record: replace it.
            if self.journal.len_bytes() > self.journal_limit_bytes || self.journal.is_version1() {
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
    fn trim_journal(&mut self, shards: &[Shard]) -> Result<()> {
        let last_txids = last_txids(shards)?;
        crate::durable::sync_wals(&shards.iter().map(|s| s.path.as_path()).collect::<Vec<_>>())?;
        let _publish = self.publish_lock.publishing(self.busy_timeout_ms)?;
        self.journal.reset(&last_txids)
    }

    fn write_txn(&mut self) -> Result<&mut WriteTxn> {
        match &mut self.activity {
            Activity::Writing(txn) if txn.decided.is_none() => Ok(txn),
            Activity::Writing(_) => Err(Error::BadArgument(
                "this transaction is decided and waits for SQLite's own commit, which returned SQLITE_BUSY: \
                 retry COMMIT, or ROLLBACK; nothing more can be written in it"
                    .into(),
            )),
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

    /// An id for a row inserted without one, as SQLite assigns a rowid: one above the largest id
    /// of every shard (this transaction's writes included), or 1 in an empty table; once the
    /// largest is `i64::MAX`, a random unused positive id (SQLite's rule too).
    pub fn assign_id(&mut self, shards: &[Shard]) -> Result<i64> {
        let txn = self.write_txn()?;
        let next = match txn.next_id {
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
                txn.next_id = next.checked_add(1);
                Ok(next)
            }
            None => random_unused_id(shards),
        }
    }
    /// Tells the coordinator that a row with this id was inserted, so assigned ids stay above it.
    pub fn note_inserted_id(&mut self, id: i64) {
        if let Activity::Writing(txn) = &mut self.activity {
            if let Some(next) = txn.next_id {
                // Above `i64::MAX`, nothing: the next id is looked up again (and drawn).
                txn.next_id = id.checked_add(1).map(|after| next.max(after));
            }
        }
    }

    /// Tells the coordinator that the row with this id was deleted: if it may have been the
    /// largest, the next assigned id is looked up again (SQLite reuses a freed largest rowid).
    pub fn note_deleted_id(&mut self, id: i64) {
        if let Activity::Writing(txn) = &mut self.activity {
            if txn.next_id.is_some_and(|next| id >= next.saturating_sub(1)) {
                txn.next_id = None;
            }
        }
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

    /// Steps 3 to 6 (xSync): decides the transaction, or aborts it everywhere and fails. With
    /// `host`, the transaction also wrote the host's tables: its decision rides on the host's
    /// commit (step 6h).
    pub fn sync(&mut self, shards: &mut [Shard], host: Option<&dyn HostDecider>) -> Result<()> {
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
        // Wait for readers before touching anything: if they keep the lock past the timeout,
        // the transaction stays open and SQLite reports SQLITE_BUSY; COMMIT may be retried.
        let mut publish = self.publish_lock.publishing(self.busy_timeout_ms)?;
        let outcome = self
            .end_clean_shards(shards, &dirty)
            .and_then(|()| match host {
                Some(host) => self
                    .commit_two_phase(shards, txid, &written, Some(host))
                    .map(|()| Decided::Hosted),
                None => self.decide_written(shards, txid, &written, &mut publish),
            });
        drop(publish);
        match outcome {
            Ok(decided) => {
                self.set_decided(decided);
                Ok(())
            }
            Err(e) => {
                end_all(shards);
                self.activity = Activity::Aborted;
                Err(e)
            }
        }
    }

    fn set_decided(&mut self, decided: Decided) {
        if let Activity::Writing(txn) = &mut self.activity {
            txn.decided = Some(decided);
        }
    }

    fn end_clean_shards(&self, shards: &[Shard], dirty: &[bool]) -> Result<()> {
        for (shard, _) in shards.iter().zip(dirty).filter(|(_, d)| !**d) {
            shard.rollback()?;
        }
        Ok(())
    }

    /// Decides a transaction (the caller holds the publish lock): logged if its changes are
    /// small, else prepared.
    fn decide_written(
        &mut self,
        shards: &mut [Shard],
        txid: u64,
        written: &[usize],
        publish: &mut Publishing,
    ) -> Result<Decided> {
        match self.logged_changes(shards, txid, written) {
            Ok(Some(changes)) => self
                .decide_logged(shards, txid, written, changes, publish)
                .map(|()| Decided::Logged),
            Ok(None) => self
                .commit_two_phase(shards, txid, written, None)
                .map(|()| Decided::Prepared),
            Err(e) => {
                self.abort_everywhere(shards, txid, &[]);
                Err(e)
            }
        }
    }

    /// Each written shard's encoded changes, or `None` if together they come to more than
    /// `logged_commit_max`.
    fn logged_changes(
        &self,
        shards: &[Shard],
        txid: u64,
        written: &[usize],
    ) -> Result<Option<Vec<Vec<u8>>>> {
        let mut budget = self.logged_commit_max_bytes;
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
    fn decide_logged(
        &mut self,
        shards: &mut [Shard],
        txid: u64,
        written: &[usize],
        changes: Vec<Vec<u8>>,
        publish: &mut Publishing,
    ) -> Result<()> {
        let record = Record::commit(txid, participants(written), Some(changes));
        let decided = publish.set_mark(txid).and_then(|()| self.decide(&record));
        if let Err(e) = decided {
            // Nothing is committed on a shard; if the decision is unknown (poisoned), the mark
            // stays and recovery reads it from the journal.
            self.abort_everywhere(shards, txid, &[]);
            if !self.poisoned {
                let _ = publish.set_mark(0);
            }
            return Err(e);
        }
        Ok(())
    }

    /// Step 7 on the logged path: under the publish lock, every written shard commits, not
    /// synced. A shard whose commit fails (or all, if the lock cannot be had) is rolled back and
    /// the mark stays: the next reader or writer replays it from the journal.
    fn finish_logged(&self, shards: &[Shard], txn: &WriteTxn) {
        let Ok(mut publish) = self.publish_lock.publishing(self.busy_timeout_ms) else {
            end_all(shards);
            return;
        };
        let mut all_committed = true;
        for (shard, _) in shards.iter().zip(&txn.dirty).filter(|(_, d)| **d) {
            if shard.commit_logged(txn.txid).is_err() {
                let _ = shard.rollback();
                all_committed = false;
            }
        }
        if all_committed {
            // Should this fail, the mark costs the next reader a recovery with nothing to do.
            let _ = publish.set_mark(0);
        }
    }

    /// Appends a decision to the journal and syncs it: the commit point of both paths over
    /// several shards.
    fn decide(&mut self, record: &Record) -> Result<()> {
        self.journal.refresh()?;
        self.journal.append(record).map_err(|(e, poisoned)| {
            self.poisoned = poisoned;
            e
        })
    }

    /// Steps 5 and 6, the prepared path; with `host`, 5 and 6h.
    fn commit_two_phase(
        &mut self,
        shards: &mut [Shard],
        txid: u64,
        written: &[usize],
        host: Option<&dyn HostDecider>,
    ) -> Result<()> {
        let names = participants(written);
        // Phase 1: every written shard votes.
        // Each prepared shard's WAL sync starts at once and runs while the next shard prepares.
        let mut prepared = Vec::new();
        let mut syncs = crate::durable::WalSyncs::new();
        let mut refusal = None;
        for &i in written {
            match shards[i].prepare(txid, &names, host.map(|h| h.path())) {
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
        // Decision: the journal's synced COMMIT record is the commit point; or the host's
        // decision row, which its commit makes durable (6h).
        let decided = match host {
            Some(host) => host
                .record(txid)
                .and_then(|kept| forget_settled_decisions(shards, host, txid, kept)),
            None => self.decide(&Record::commit(txid, names, None)),
        };
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

    /// Step 7 (xCommit): the host has committed too; finishes the decided transaction (the
    /// logged path's shard commits, or the prepared path's finalize) and ends it, releasing its
    /// locks. Errors are not reported (SQLite ignores them): recovery finishes what is left.
    pub fn commit(&mut self, shards: &mut [Shard]) {
        let Activity::Writing(txn) = std::mem::replace(&mut self.activity, Activity::Idle) else {
            return;
        };
        match txn.decided {
            // xCommit without xSync happens only for transactions that wrote nothing.
            None => end_all(shards),
            Some(Decided::Nothing) => {}
            Some(Decided::Logged) => self.finish_logged(shards, &txn),
            Some(Decided::Prepared | Decided::Hosted) => {
                for (shard, _) in shards.iter().zip(&txn.dirty).filter(|(_, d)| **d) {
                    let _ = shard.finalize(txn.txid);
                }
            }
        }
    }

    /// xRollback: abandons an undecided transaction. After xSync decided it, SQLite's own commit
    /// failed (SQLITE_BUSY on the host file, a commit hook's veto): see
    /// [`take_back`](Self::take_back).
    pub fn rollback(&mut self, shards: &mut [Shard]) {
        let decided = match &self.activity {
            Activity::Writing(txn) => txn.decided,
            Activity::Aborted => None,
            Activity::Idle | Activity::Reading { .. } => return,
        };
        match decided {
            Some(Decided::Logged | Decided::Prepared | Decided::Hosted) => self.take_back(shards),
            Some(Decided::Nothing) => self.activity = Activity::Idle,
            None => {
                end_all(shards);
                self.activity = Activity::Idle;
            }
        }
    }

    /// Step 8: takes back the decision of the open transaction, whose host commit failed: a
    /// synced ABORT record, then the shards undone, so that the host's tables and this table
    /// agree. If even the ABORT cannot be written, the decision stands: the transaction is
    /// finished as committed, and the table is poisoned (recovery runs at the next open).
    fn take_back(&mut self, shards: &mut [Shard]) {
        let Activity::Writing(txn) = std::mem::replace(&mut self.activity, Activity::Idle) else {
            return;
        };
        // A hosted decision needs no record: the host's decision row rolled back with it.
        if txn.decided != Some(Decided::Hosted) && self.decide(&Record::abort(txn.txid)).is_err() {
            self.poisoned = true;
            self.activity = Activity::Writing(txn);
            return self.commit(shards);
        }
        // No reader may see the undo half done; a shard left prepared is aborted by recovery.
        let Ok(mut publish) = self.publish_lock.publishing(self.busy_timeout_ms) else {
            end_all(shards);
            self.poisoned = true;
            return;
        };
        match txn.decided {
            // The shards never committed it: rolling back their SQLite transactions undoes it.
            Some(Decided::Logged) => {
                end_all(shards);
                let _ = publish.set_mark(0);
            }
            _ => {
                let written: Vec<usize> = (0..shards.len()).filter(|&i| txn.dirty[i]).collect();
                self.abort_everywhere(shards, txn.txid, &written);
            }
        }
    }

    /// Whether prepared transaction `txid` is decided: by a COMMIT record (the journal read
    /// afresh), or by the decision row of the host database `decided_by` names.
    pub fn is_decided(&mut self, txid: u64, decided_by: Option<&str>) -> Result<bool> {
        self.journal.refresh()?;
        self.decided(txid, decided_by)
    }

    /// The commits shards lost after they were durable (their file or WAL damaged or
    /// replaced), as (transaction, shard) pairs: see [`lost_commits`]. Logged commits are not
    /// listed: recovery replays them on a shard that lacks them (or refuses, if the shard lacks
    /// what they build on).
    pub fn lost_commits(&mut self, shards: &[Shard]) -> Result<Vec<(u64, usize)>> {
        self.journal.refresh()?;
        Ok(lost_commits(&self.journal, &last_txids(shards)?))
    }

    /// Takes the writer lock (for DROP TABLE).
    pub fn lock_writer(&self) -> Result<LockGuard> {
        self.writer_lock
            .exclusive("writer lock", self.busy_timeout_ms)
    }

    /// The table's identity.
    pub fn table_id(&self) -> TableId {
        self.table_id
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
/// damaged: `host_lookup` fails) and that the journal does not commit. Returns the transactions
/// resolved; refuses if there are none (recovery decides then).
pub fn resolve_in_doubt(
    config: &TableConfig,
    table_id: TableId,
    shards: &[Shard],
    resolution: Resolution,
    host_lookup: HostLookup,
) -> Result<Vec<u64>> {
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
    let undecidable = |txid: u64, host: Option<&str>| match (&journal, host) {
        (None, _) => true,
        (Some(journal), Some(host)) => {
            !journal.is_committed(txid) && host_lookup(host, &table_id, txid).is_err()
        }
        (Some(_), None) => false,
    };
    let publish_lock = LockFile::open(&config.publish_lock_path)?;
    let mut publish = publish_lock.publishing(config.busy_timeout_ms)?;
    let mut resolved = Vec::new();
    for shard in shards {
        for (txid, host) in shard.prepared_deciders()? {
            if !undecidable(txid, host.as_deref()) {
                continue;
            }
            match resolution {
                Resolution::Commit => shard.finalize(txid)?,
                Resolution::Abort => shard.abort_prepared(txid)?,
            }
            resolved.push(txid);
        }
    }
    if journal.is_some() && resolved.is_empty() {
        return Err(Error::BadArgument(format!(
            "the journal {} exists and decides every prepared transaction; opening the table runs recovery",
            config.journal_path.display()
        )));
    }
    crate::durable::sync_wals(&shards.iter().map(|s| s.path.as_path()).collect::<Vec<_>>())?;
    if journal.is_none() {
        Journal::create(&config.journal_path, table_id)?;
        publish.set_mark(0)?;
    }
    resolved.sort_unstable();
    resolved.dedup();
    Ok(resolved)
}

/// The (transaction, shard) pairs, sorted, of prepared commits the journal decided on shards
/// whose `last_txid` (`last_txids`, one per shard) is below them, and of shards below the
/// journal's floor (then the transaction is the floor: the shard lacks commits up to it).
fn lost_commits(journal: &Journal, last_txids: &[u64]) -> Vec<(u64, usize)> {
    let below = |s: usize, txid: u64| last_txids.get(s).is_some_and(|&last| last < txid);
    let mut lost: Vec<(u64, usize)> = journal
        .prepared_decisions()
        .flat_map(|(txid, shards)| {
            shards
                .iter()
                .map(|&s| s as usize)
                .filter(move |&s| below(s, txid))
                .map(move |s| (txid, s))
        })
        .chain(
            journal
                .floor()
                .iter()
                .enumerate()
                .filter(|&(s, &floor)| below(s, floor))
                .map(|(s, &floor)| (floor, s)),
        )
        .collect();
    lost.sort_unstable();
    lost
}

/// A random positive id no row has, for when the largest id is `i64::MAX`: a few tries, as
/// SQLite makes, then an error.
fn random_unused_id(shards: &[Shard]) -> Result<i64> {
    use std::hash::{BuildHasher, Hasher};
    const TRIES: u64 = 100;
    for attempt in 0..TRIES {
        let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
        hasher.write_u64(attempt);
        let id = (hasher.finish() >> 1).max(1) as i64;
        let shard = &shards[crate::placement::shard_of(id, shards.len())];
        if shard.get(id)?.is_none() {
            return Ok(id);
        }
    }
    Err(Error::BadArgument(format!(
        "no free id: the largest id is {} and {TRIES} random ids were all taken; give the row an id",
        i64::MAX
    )))
}

/// Lists lost commits as `shard 1 (path): transactions [17, 18]`.
fn describe_lost(shards: &[Shard], lost: &[(u64, usize)]) -> String {
    let mut by_shard: std::collections::BTreeMap<usize, Vec<u64>> = Default::default();
    for &(txid, shard) in lost {
        by_shard.entry(shard).or_default().push(txid);
    }
    by_shard
        .iter()
        .map(|(&shard, txids)| {
            let path = shards.get(shard).map(|s| s.path.display().to_string());
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
pub fn accept_lost_commits(
    config: &TableConfig,
    table_id: TableId,
    shards: &[Shard],
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
    let mut lost: Vec<u64> = lost_commits(&journal, &last_txids(shards)?)
        .into_iter()
        .map(|(txid, _)| txid)
        .collect();
    lost.dedup();
    // The shards' commits must be durable before the records that decided them go.
    crate::durable::sync_wals(&shards.iter().map(|s| s.path.as_path()).collect::<Vec<_>>())?;
    drop(journal);
    move_aside(&config.journal_path, "accepted")?;
    Journal::create(&config.journal_path, table_id)?;
    publish.set_mark(0)?;
    Ok(lost)
}

/// A journal that cannot be read (a damaged header or record, an empty file, another table's):
/// if nothing is in doubt (no shard holds a prepare record, no logged commit is marked as
/// unfinished) it is moved aside, kept for inspection, and `None` is returned (a new one is
/// made); else the error names what is in doubt and how to decide it. The caller holds the
/// writer lock.
fn set_aside_damaged(
    config: &TableConfig,
    table_id: TableId,
    shards: &[Shard],
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
    if let Some((shard, txids)) = first_prepared(shards)? {
        return Err(Error::InDoubt(format!(
            "the journal {journal} is damaged ({detail}) while shard {} holds prepared transactions {txids:?}; \
             their outcome cannot be known. Restore the journal, or decide: \
             SELECT imagestore_resolve('{table}', 'commit' or 'abort') (it sets the damaged journal aside)",
            shard.display()
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

/// Moves a journal aside, kept for inspection, to `<journal>.<why>-<nanoseconds since 1970>`
/// (never over an earlier one), and syncs its folder.
fn move_aside(journal: &std::path::Path, why: &str) -> Result<()> {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let aside = crate::config::with_suffix(journal, &format!(".{why}-{nanos}"));
    // A link never replaces a file; then the damaged journal's own name goes.
    std::fs::hard_link(journal, &aside)
        .and_then(|()| std::fs::remove_file(journal))
        .map_err(Error::file_io(journal))?;
    crate::durable::sync_dir(journal.parent().unwrap_or(std::path::Path::new(".")))
}

/// Step 6h's housekeeping: the host's decision rows of earlier transactions are needed until
/// every shard's finalize of them is durable (a finalize is not synced; a shard that lost one
/// would find its prepare record without a row, presume abort and undo its half). Once the host
/// holds more than [`HOST_DECISIONS_KEPT_MAX`], every shard's WAL is synced, which makes all
/// those finalizes durable (each committed before this transaction began), and the older rows
/// are deleted with this transaction's own.
fn forget_settled_decisions(
    shards: &[Shard],
    host: &dyn HostDecider,
    txid: u64,
    kept: u64,
) -> Result<()> {
    if kept <= HOST_DECISIONS_KEPT_MAX {
        return Ok(());
    }
    crate::durable::sync_wals(&shards.iter().map(|s| s.path.as_path()).collect::<Vec<_>>())?;
    host.forget_before(txid)
}

/// The journal's names for the written shards.
fn participants(written: &[usize]) -> Vec<u16> {
    written.iter().map(|&i| i as u16).collect()
}

/// Every shard's `last_txid`, in shard order.
fn last_txids(shards: &[Shard]) -> Result<Vec<u64>> {
    shards.iter().map(Shard::last_txid).collect()
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

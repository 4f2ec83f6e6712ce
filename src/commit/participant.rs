//! What the coordinator asks of a participant: the protocol's steps as seen from one shard.
//!
//! The local SQLite shard (`crate::shard`) is one implementation; the protocol's tests drive an
//! in-memory one (`sim`) that fails, refuses, times out or crashes at any call. Every call may
//! fail; the protocol document ("Participants behind a network connection") says what the
//! coordinator concludes from a failure at each step, so that a participant that is a round
//! trip away, and whose call can hang or break off part-way, fits without a change of protocol.
//!
//! Invariants a participant keeps:
//! - Between [`begin_write`](Participant::begin_write) and the end of the transaction, its writes
//!   are invisible to other connections, and [`end`](Participant::end) discards them.
//! - [`prepare`](Participant::prepare) makes the transaction's changes and its *before-states*
//!   (what each touched row was) committed in its own sense, tagged with a prepare record; once
//!   the participant's [`sync_job`](Participant::sync_job) has run (or at once, if it has none),
//!   they survive a crash and a power cut. From then on only [`finalize`](Participant::finalize)
//!   or [`abort_prepared`](Participant::abort_prepared) ends it, and each may be repeated.
//! - Every prepare, logged commit and replay raises [`last_txid`](Participant::last_txid) to the
//!   transaction's id in the same atomic step; after a power cut the participant keeps a prefix
//!   of its commits, so `last_txid` says which it has.

use crate::error::Result;

/// A prepare record: a transaction a participant holds prepared.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PrepareRecord {
    pub txid: u64,
    /// The host database whose commit decides it (step 6h), or `None`: the journal decides
    /// (two-phase) or the participants do (three-phase).
    pub decided_by: Option<String>,
    /// Three-phase commit: every participant voted yes and this one holds that durably (its
    /// pre-commit), so the transaction commits.
    pub pre_committed: bool,
    /// The participants the transaction wrote, as its prepare recorded them; `None` where it
    /// did not (a prepare made by an older build).
    pub participants: Option<Vec<u16>>,
}

/// What a replay of a logged commit found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Replayed {
    /// The changes are applied, and `last_txid` raised to the transaction.
    Applied,
    /// The participant already had the transaction (`last_txid` reaches it): nothing done.
    Present,
    /// The participant lacks commits the changes build on (its `last_txid` is below `base`,
    /// the state they apply to): nothing done.
    Gap { base: u64 },
    /// The changes cannot be read (damaged, or written by another kind of participant).
    Unreadable(String),
}

/// Work that makes a participant's commits so far durable, run on another thread while the
/// coordinator goes on (so that the syncs of several participants overlap).
pub use crate::durable::SyncJob;

/// One participant of the commit protocol. Methods are listed in the order of the protocol's
/// steps; each names its step in the protocol document.
pub trait Participant: Send {
    /// Names the participant in messages (a path; never a secret).
    fn name(&self) -> String;

    // ---- reading --------------------------------------------------------------------

    /// Readers: opens a read snapshot and returns the transactions it shows prepared.
    fn begin_read(&mut self) -> Result<Vec<u64>>;

    /// The `last_txid` the read snapshot opened last shows, where reading it costs nothing
    /// more (a server reads it in the snapshot's first statement); else `None`.
    fn snapshot_last_txid(&self) -> Option<u64> {
        None
    }

    /// Whether each step is a round trip to a server (mostly waiting): then the coordinator
    /// takes a step on several such participants at once.
    fn is_remote(&self) -> bool {
        false
    }

    /// Whether a snapshot shows a prepared transaction's changes (a local shard's prepare is
    /// its own commit; a server's prepared transaction is invisible until it is finalized).
    fn prepared_visible(&self) -> bool {
        true
    }

    /// Ends whatever is open: a read snapshot, or a write transaction not yet prepared or
    /// committed (its writes are discarded). Nothing to do if nothing is open. Most callers are
    /// already failing and ignore its error; a commit does not go ahead past one.
    fn end(&mut self) -> Result<()>;

    // ---- writing --------------------------------------------------------------------

    /// Step 1: opens a write transaction, which takes the participant's own write lock.
    fn begin_write(&mut self) -> Result<()>;

    /// SQL savepoints inside the write transaction (`level` as SQLite numbers them).
    fn savepoint(&mut self, level: i32) -> Result<()>;
    fn release(&mut self, level: i32) -> Result<()>;
    fn rollback_to(&mut self, level: i32) -> Result<()>;
    /// Undoes every write of the transaction, which stays open.
    fn rollback_to_start(&mut self) -> Result<()>;

    // ---- what the participant holds -------------------------------------------------

    /// The id of the last transaction it committed (prepared, logged or replayed).
    fn last_txid(&mut self) -> Result<u64>;

    /// The id of the last prepared transaction whose part it finalized: what tells, once it
    /// holds a transaction no longer, a part committed from a part aborted. A participant whose
    /// prepared part is invisible until finalized (a server) raises `last_txid` only then, so
    /// that is it; a local shard's prepare raises `last_txid` itself, so it keeps this apart.
    fn last_finalized(&mut self) -> Result<u64> {
        self.last_txid()
    }

    /// The id of the last prepared transaction whose part it aborted, where it keeps one (a
    /// local shard); 0 where it does not (a server, whose `last_txid` below a transaction it no
    /// longer holds already shows the part was not committed).
    fn last_aborted(&mut self) -> Result<u64> {
        Ok(0)
    }

    /// The transactions it holds prepared.
    fn prepared(&mut self) -> Result<Vec<PrepareRecord>>;

    // ---- the logged path (steps 4 and 7) --------------------------------------------

    /// Step 4: the changes of open transaction `txid`, as bytes that
    /// [`replay`](Self::replay) applies, or `None` if they come to more than `bytes_max`.
    fn changes(&mut self, txid: u64, bytes_max: u64) -> Result<Option<Vec<u8>>>;

    /// Step 7: commits open transaction `txid` (decided by its LOGGED record), not durably.
    fn commit_logged(&mut self, txid: u64) -> Result<()>;

    /// Recovery: applies a logged commit's `changes` unless the participant has it already
    /// or lacks what it builds on, in one atomic step with raising `last_txid`.
    fn replay(&mut self, txid: u64, changes: &[u8]) -> Result<Replayed>;

    // ---- the prepared path (steps 5 to 7) -------------------------------------------

    /// Step 5, the vote: prepares open transaction `txid`, naming every participant's index
    /// and the host database that decides it, if any. An error is a no.
    fn prepare(&mut self, txid: u64, participants: &[u16], decided_by: Option<&str>) -> Result<()>;

    /// Step 7 and recovery: ends prepared transaction `txid` as committed (its before-states
    /// and prepare record go), not durably. Nothing to do if it is not prepared.
    fn finalize(&mut self, txid: u64) -> Result<()>;

    /// Steps 5 and 8 and recovery: undoes prepared transaction `txid` from its before-states.
    /// Nothing to do if it is not prepared.
    fn abort_prepared(&mut self, txid: u64) -> Result<()>;

    // ---- three-phase commit (step 6p) -----------------------------------------------

    /// Step 6p: marks prepared transaction `txid` pre-committed, in an atomic step of its own,
    /// durable once [`sync_job`](Self::sync_job) has run. An error if it is not prepared.
    fn pre_commit(&mut self, txid: u64) -> Result<()>;

    /// Steps 6p and 8: takes the pre-commit of `txid` back, in an atomic step of its own (the
    /// transaction is only prepared again). Nothing to do if it is not pre-committed.
    fn withdraw_pre_commit(&mut self, txid: u64) -> Result<()>;

    /// Recovery of a three-phase table, before it reads what the participant holds: from
    /// then on no step of an earlier holder of the writer lock (one that lost it, or a call of
    /// its that broke off and lands late) changes the participant's pre-commits. Nothing to do
    /// where the writer lock cannot be lost while its holder goes on (local files).
    fn take_over(&mut self) -> Result<()> {
        Ok(())
    }

    // ---- durability -----------------------------------------------------------------

    /// What makes every commit so far durable (steps 5, 6h and 9), or `None` if each commit
    /// is durable when it returns.
    fn sync_job(&self) -> Option<SyncJob>;
}

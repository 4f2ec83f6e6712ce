//! The commit protocol: how a transaction on a sharded table commits on every shard or on none,
//! across crashes, kills and power cuts. This comment is the protocol's one description; the
//! coordinator (`coordinator.rs`) follows it step by step, driving the shards through the
//! [`Participant`] interface (`participant.rs`), with the locks and decision records of
//! [`control::Control`] (`control.rs`: for local tables the locks of `locks.rs` and the journal,
//! `crate::journal`). Nothing in this folder knows SQLite: the local SQLite shard is one
//! participant (`crate::shard`), and the protocol's own tests (`sim.rs`) drive another, in
//! memory, that fails, refuses, times out and crashes at every step.
//!
//! # Why a coordinator
//! SQLite has no durable "prepared" state, and in WAL mode a transaction over several attached
//! files is not atomic (its super-journal works only with rollback journals). Each shard is an
//! ordinary WAL-mode SQLite file; this module makes a transaction over several of them atomic.
//!
//! # Pieces
//! - Participants (`participant`): the coordinator drives each shard through the steps of the
//!   [`Participant`] trait, and knows nothing else of it. The local SQLite shard (`shard`) is
//!   the first implementation: it records, inside the transaction itself, every touched row's state
//!   before the transaction (its *before-state*), so a transaction committed in the shard's own
//!   SQLite sense can still be undone. A *prepare record* marks such a transaction. Shards run
//!   with `synchronous=NORMAL`: a WAL-mode file then keeps, after a power cut, a prefix of its
//!   commits (never a torn one), and this module syncs WAL files itself where a step needs it.
//! - The journal (`journal`): checksummed decision records, synced. A COMMIT record says the
//!   shards it names hold the transaction prepared; a LOGGED record carries each shard's changes
//!   itself (`shard::changes`). Nothing else is ever written there.
//! - Two locks (`locks`): the writer lock (one writer at a time, across processes) and the
//!   publish lock (readers open snapshots only outside a commit's undecided window). The publish
//!   lock's file holds the *logged-commit mark*, set while a logged commit's shards commit.
//!
//! # States of a transaction (two-phase; see "Three-phase commit" for `protocol='3pc'`)
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
//! 3. *Choose* (xSync): if the changes (rows as they end, and the images they add) come to at
//!    most `logged_commit_max` bytes, the logged path (4) decides them with one sync in all,
//!    however many shards they touch (one included); a larger transaction is prepared (5, 6),
//!    so that its images are not written twice. Then take the publish lock exclusively: a
//!    local shard's prepare is visible to readers. (A prepare no reader sees, a server's,
//!    publishes nothing before step 7, so a transaction on servers skips the lock here.)
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
//!    publish lock and the writer lock (on servers, in one round trip).
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
//! - A transaction that wrote one shard takes the same steps (4 with one shard's changes, or 5
//!   and 6 with one prepare): its commit point is the journal's sync as well, never the shard's
//!   own commit, so that step 8 can still take it back and a power cut that takes the shard's
//!   unsynced commit is repaired by replay, as above.
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
//! Writers of local shards hold the lock exclusively from the choice in 3 to the end of 4 or 6,
//! and writers of any kind again while 7 commits a logged transaction's shards (or finalizes
//! on servers) or 8 undoes one: so every snapshot of one query is
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
//! # Participants behind a network connection
//! A participant that is a server (a PostgreSQL database) implements the same steps, one round
//! trip each, without a change to the protocol:
//! - `prepare` is the server's own prepared state (`PREPARE TRANSACTION`), durable when it
//!   returns: its `sync_job` is `None`. `finalize` and `abort_prepared` are `COMMIT PREPARED`
//!   and `ROLLBACK PREPARED`, each doing nothing for a transaction the server no longer holds
//!   prepared, so that recovery may repeat them; `prepared` lists the server's prepared
//!   transactions of this table; `last_txid` is a row the same transactions raise.
//! - A participant whose prepare costs what a commit costs declines the logged path
//!   (`changes` returns `None`): its transactions are always prepared, and it never replays.
//! - A call that hangs ends at the table's timeout with an error, and an error means the same
//!   whatever its cause. Before the decision (steps 1 to 5) it is a no: the coordinator undoes
//!   the transaction everywhere. A call that broke off after the server acted (a PREPARE whose
//!   answer was lost) leaves a prepare record the coordinator did not count; `abort_prepared`
//!   is asked of that participant too where it can be reached, and otherwise recovery finds the
//!   record without a decision and aborts it (presumed abort). After the decision (step 7) an
//!   error leaves the finalize to recovery, as a crash there would: SQLite ignores xCommit's
//!   errors, and the decision is durable already.
//! - The coordinator never holds a participant's answer as true across a call of another: each
//!   step reads what it needs (`last_txid`, `prepared`) from the participant itself.
//! - A server's prepared transaction is invisible to readers until COMMIT PREPARED, unlike a
//!   local shard's prepare (`prepared_visible`). So on a server, step 7 (the finalize) is what
//!   publishes: it runs under the publish lock, like a logged commit's shard commits (for a
//!   local shard the lock costs little there and changes nothing). A reader that finds a live
//!   writer's prepared transactions on servers reads past them (none of them is in any of its
//!   snapshots: the writer finalizes only under the lock the reader holds), unless a snapshot
//!   shows one finalized on its server (that server's `last_txid`, read in the snapshot,
//!   reaches it: a dead writer's, half finalized, while another writer holds the lock); that,
//!   and any with no live writer (or when liveness cannot be known), go to recovery first.
//! - A server lists its prepared transactions before it takes the reader's snapshot, in one
//!   round trip: a transaction finalized meanwhile (say by a writer whose session, and with it
//!   the publish lock, was lost) is then in the snapshot or still in the list, never in neither.
//!
//! # Where a table on servers keeps the coordinator's state
//! Hosts that share a table on servers share no file: the writer lock, the publish lock and the
//! decision records live on the first server, the anchor (`crate::server::anchor`, behind the
//! [`control::Control`] seam that the journal and lock files implement for local tables). The
//! locks are session advisory locks, released when their holder's session ends (a dead host's,
//! once the server notices it); a decision is a row committed on the session that holds the
//! writer lock (**that commit is the commit point**), so a decision cannot land after another
//! host took the writer lock to recover: the session that would write it is gone, and a session
//! that lost a lock is never replaced while its holder still counts on the lock. A decision
//! whose answer was lost is unknown, never taken for a failure: the table is poisoned in that
//! connection until recovery, run by its next read or write (or by any other host), reads the
//! row. A decision taken back (step 8) is its row deleted.
//!
//! Rows deleted by hand, unlike a local journal, leave nothing missing to notice at open: so
//! the decision rows carry a marker row, made with them, kept by every trim and written again
//! with every decision (then every earlier decided transaction is finished: its writer found
//! nothing prepared when it began). Recovery that finds the marker gone
//! (`Control::records_lost`) treats the rows as a missing journal, on a two-phase table: a
//! prepared transaction that some server already committed (its `last_txid` is exactly the
//! transaction's id) is committed everywhere; one that some server it wrote (its prepares name
//! them) never prepared had no decision, and is aborted; one that no remaining row commits
//! either is in doubt (the table refuses, naming `imagestore_resolve`), never presumed aborted, since its
//! decision may be the row that went. Only once it has finished what the rows and servers
//! decide, with nothing in doubt (or a person decided), is the marker made again, under the
//! writer lock: made earlier, a crash in between would leave a committed transaction to
//! presumed abort.
//!
//! `sim.rs` tests the protocol this way: participants in memory that fail, refuse, time out,
//! break off after acting, or crash (before or after acting, followed by a kill or a power cut
//! that keeps each participant's durable state and a random prefix of its later commits) at
//! every call of seeded runs over 1 to 8 participants, on both paths; after each, recovery,
//! and the oracle: every transaction whole or absent, every acknowledged one present, every
//! failed one absent, nothing left prepared, and the table takes the next transaction.
//!
//! # Three-phase commit (`protocol='3pc'`)
//! With two-phase commit a shard that voted yes cannot decide alone: if the journal is lost (or
//! damaged) while shards hold prepare records, the transaction is in doubt and a person decides
//! (`imagestore_resolve`). A three-phase table (Skeen, 1981) puts a durable *pre-commit* on every
//! shard between the unanimous vote and the end, so the shards' own states decide, and the
//! journal decides nothing: it is not read after the table opens, a deleted or damaged one is
//! made again at the next open, and the logged path, whose commit point is the journal, is
//! never taken.
//!
//! States of one shard for one transaction (the prepare record and its `pre_committed` flag):
//! ```text
//! (none) --prepare: voted yes--> Prepared --pre-commit--> PreCommitted --finalize--> (none: committed)
//!                                   |   <--withdraw (take back)--|
//!                                   \--abort--> (none: aborted)
//! ```
//! Steps, replacing 5 and 6 (xSync):
//! - 5 *Vote*: as for two-phase commit; any no undoes every shard.
//! - 6p *Pre-commit*: every written shard marks its record pre-committed in a transaction of its
//!   own; the WAL syncs run as in 5. **All of them synced is the decision**: xSync returns. If a
//!   pre-commit (or its sync) fails, every pre-commit is withdrawn and synced, and only then are
//!   the shards undone; if a withdrawal fails, the transaction is left to recovery and the caller
//!   told that its outcome is unknown.
//! - 7 *Finish*: each shard finalizes, not synced, as on the prepared path.
//! - 8 *Take back* (SQLite's own commit failed after xSync): every pre-commit withdrawn, synced,
//!   then the shards undone under the publish lock. If a withdrawal fails, the table is poisoned
//!   and recovery ends the transaction.
//!
//! A transaction that also wrote the host's tables is decided by the host's commit (6h), as on a
//! two-phase table: atomicity with the host's own tables needs that commit point, and it is not
//! the journal either.
//!
//! Invariants, on which the termination rule stands:
//! - (I1) A shard is pre-committed only after every shard voted yes.
//! - (I2) A shard finalizes only once every shard of the transaction holds its pre-commit
//!   durably (7 follows 6p's syncs; recovery pre-commits and syncs every shard before it
//!   finalizes one).
//! - (I3) A shard aborts only while no shard holds a pre-commit (the coordinator withdraws every
//!   one durably first; recovery aborts only when it finds none, after syncing what it read).
//!
//! **Termination rule** (recovery, run by whichever connection or process next opens, reads or
//! writes the table while no writer is alive, under the writer and publish locks): for each
//! transaction the shards hold records of, if any shard holds it pre-committed, every shard still
//! holding it only prepared is pre-committed, every shard is synced, and all finalize; otherwise
//! every shard's record is aborted (after the same sync). Why each case is safe:
//! - Some shard pre-committed: by I1 all voted yes, so committing is what the coordinator meant
//!   or could have meant; by I3 no shard aborted it, so every shard's changes are still there to
//!   keep. A shard without a record either never held one (impossible by I1) or finalized.
//! - None pre-committed, some prepared: by I2 no shard finalized (a shard that finalized would
//!   have left every other pre-committed, and pre-commits are durable before any finalize), so
//!   aborting loses nothing committed anywhere; the coordinator never acknowledged it (the
//!   acknowledgement follows every pre-commit's sync).
//! - A shard that had not voted (no record, `last_txid` below the transaction) means no shard is
//!   pre-committed (I1): abort.
//! - The rule reads states a dead writer may not have synced: it syncs every shard before it
//!   acts, so that a power cut after recovery cannot take back what the rule read (a withdrawal,
//!   a pre-commit) while keeping what it did. Recovery interrupted anywhere is run again and
//!   reaches the same outcome (pre-commits it added only make "commit" more certain, and it adds
//!   them only when one was already there).
//!
//! On PostgreSQL servers a shard's prepare is the server's prepared transaction, and its
//! pre-commit is its server's `fence` row naming the transaction, committed on its own (durable
//! when the call returns); a withdrawal removes the name; the anchor writes no decision record.
//! A prepare that lands late (its answer lost, its writer gone) has no pre-commit anywhere: the
//! rule aborts it. Two things a local shard rules out must be fenced there, and are, by two
//! more invariants (`crate::server::fence` gives the statements):
//! - (I0) A transaction is pre-committed only if its coordinator held the writer lock from its
//!   begin through its vote: between the vote and the first pre-commit the coordinator confirms
//!   the lock on the anchor session that took it (a session's lock goes only with the session,
//!   and a lost one is not made again while it held a lock). A writer whose session (and lock)
//!   was lost, and which another host's writer may have followed, never pre-commits.
//! - (I4) Once recovery has taken a server over (before it reads that server's states), no step
//!   of an earlier coordinator changes that server's pre-commits: not one of a writer that lost
//!   its lock after (I0), nor a pre-commit or withdrawal whose call broke off and whose
//!   statement is still running on its old backend. Each writer-lock acquisition draws a
//!   greater token; every pre-commit, withdrawal and take-over is one UPDATE of the fence row
//!   that claims it with the token and is refused under a greater claim; a withdrawal claims one
//!   above its own pre-commits, so a late pre-commit of the same writer is refused after it.
//!   So the states recovery reads are final as far as earlier coordinators go, and a refused
//!   step's coordinator reports the outcome unknown (its withdrawals are refused too).
//!
//! Limits, plainly. The rule is non-blocking only while failures are crashes and every shard can
//! be read: it needs every shard's state. A shard that cannot be opened (a missing or unreadable
//! file, a server that does not answer within the busy timeout) makes the table refuse to open
//! (or the read or write that runs recovery fail), naming it, until it is back: imagestore
//! waits for the person to bring it back and never decides without it, because the missing
//! shard may be the one pre-committed (then the others must commit) or the one that refused
//! (then they must abort); deciding either way could break atomicity. So three-phase commit
//! removes the journal from what must survive, not the shards. It is not a majority protocol:
//! every vote counts.
//! And without decision records nothing tells that a shard lost commits after they were durable
//! (an old copy put back, a damaged WAL), which a two-phase table's journal shows ("Damage is
//! never silent" holds for two-phase tables only); a transaction that rode on a host database
//! that is gone is in doubt as on a two-phase table (`imagestore_resolve` decides it).
//! Cost: the same two syncs per transaction as the prepared path (the pre-commit's instead of the
//! journal's), where a two-phase table commits a small transaction with one (the logged path).
//!
//! # Transaction ids
//! Every prepare, logged shard commit and replay raises its shards'
//! `last_txid` in the same SQLite transaction, and a new id is above every shard's `last_txid`,
//! so ids never repeat: not after a crash, and not after the journal is reset. On servers that
//! is not enough: a PREPARE whose answer was lost may land after its writer gave up, and the
//! next writer, seeing no shard raised, would take the same id, and its decision would commit
//! the stray. So a table on servers also draws each id from a sequence on the anchor, which
//! never gives one twice, and recovery finalizes a prepared transaction only on the shards its
//! decision names (two-phase; on a three-phase table such a stray has no pre-commit anywhere,
//! since its vote failed before any, so the rule aborts it).

pub mod control;
mod coordinator;
pub mod locks;
pub mod participant;
#[cfg(test)]
mod sim;

pub use coordinator::{
    accept_lost_commits, resolve_in_doubt, resolve_through_control, Coordinator, HostDecider,
    HostLookup, Resolution, Resolved,
};
pub use participant::{Participant, PrepareRecord, Replayed};

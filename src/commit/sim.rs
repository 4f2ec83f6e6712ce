//! The protocol tested on its own: the real [`Coordinator`] drives in-memory participants that
//! fail, refuse, time out or crash at any call, with its real journal and locks (in a folder on
//! a RAM disk where there is one).
//!
//! Each participant keeps what a WAL-mode SQLite file at `synchronous=NORMAL` keeps: a *durable*
//! image (what its last sync made durable) and the commits since, of which a power cut keeps a
//! prefix (redb's crash simulator keeps a "live" and a "durable" image the same way). A run
//! commits a few random transactions (rows on random participants, savepoints rolled back or
//! released); one call of the run, chosen by its number, is faulted:
//! - *crash* before or after the call takes effect: the process dies there (a panic unwinds out
//!   of the coordinator, and no other code of it runs), then either a kill (every participant
//!   keeps its commits) or a power cut (each keeps its durable image and a random prefix of its
//!   commits since), then a new coordinator opens the table, which runs recovery;
//! - *fail* before or after the call takes effect (a call that breaks off part-way), *refuse*
//!   (a no), *time out*: the call returns an error; the run goes on as SQLite would (rolling the
//!   transaction back), then reopens the table.
//!
//! Some transactions also write the host database, so that their decision rides on the host's
//! commit (step 6h; the host is in memory too, its commits durable, its open transaction lost
//! at a crash); in some, SQLite's own commit then fails after xSync, and xRollback takes the
//! decision back (step 8).
//!
//! After each run the checks: every transaction whole or absent; every acknowledged one (xSync
//! returned Ok and SQLite's own commit went through) present; every refused, failed or taken
//! back one absent; nothing left prepared; the table then takes a new transaction.
//!
//! Not simulated: the journal is a real file, and all its writes survive a crash (its own syncs
//! are shown needed by the power-cut tests, `tests/test_power_cut.py`); and the unwinding of a
//! crash runs drops (the publish lock's guard raises the publication counter), which a killed
//! process would not: it only makes a reader's snapshot look older.
//!
//! A run repeats exactly under its seed: sync jobs run in order on the calling thread
//! (`durable::RUN_INLINE`). To replay one failing case call by call: `SIM_ONLY=<participants>
//! SIM_AT=<call> SIM_TRACE=1 cargo test --no-default-features --features bundled --lib sim`.

use std::collections::{BTreeMap, BTreeSet};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard, Once};

use super::participant::{Participant, PrepareRecord, Replayed};
use super::{Coordinator, HostDecider};
use crate::config::{HostDatabase, TableConfig};
use crate::durable::SyncJob;
use crate::error::{Error, Result};
use crate::journal::TableId;
use crate::placement::SplitMix64;

const TABLE_ID: TableId = [7; 16];

/// What a participant holds.
#[derive(Clone, Debug, Default, PartialEq)]
struct Image {
    rows: BTreeMap<i64, i64>,
    last_txid: u64,
    /// The last prepared transaction finalized, and aborted, here (as a local shard keeps them).
    last_finalized: u64,
    last_aborted: u64,
    prepared: BTreeMap<u64, Prepared>,
}

/// A prepare record with the before-states it keeps: each touched row as it was (`None`: absent).
#[derive(Clone, Debug, PartialEq)]
struct Prepared {
    decided_by: Option<String>,
    participants: Vec<u16>,
    pre_committed: bool,
    before: BTreeMap<i64, Option<i64>>,
}

/// One participant's storage: the durable image and the commits made since.
#[derive(Default)]
struct Disk {
    durable: Image,
    unsynced: Vec<Image>,
}

impl Disk {
    /// What the participant shows now.
    fn live(&self) -> Image {
        self.unsynced.last().unwrap_or(&self.durable).clone()
    }

    fn commit(&mut self, image: Image) {
        self.unsynced.push(image);
    }

    fn sync(&mut self) {
        if let Some(last) = self.unsynced.pop() {
            self.durable = last;
        }
        self.unsynced.clear();
    }

    /// A power cut: the durable image and the first `kept` commits since survive.
    fn power_cut(&mut self, kept: usize) {
        self.unsynced.truncate(kept);
        self.sync();
    }
}

/// How one call is faulted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fault {
    CrashBefore,
    CrashAfter,
    FailBefore,
    /// The call takes effect but reports an error: a network call that broke off part-way.
    FailAfter,
    /// A no: the participant refuses (a constraint, a full disk).
    Refuse,
    /// The call hung past its timeout.
    Timeout,
}

const FAULTS: [Fault; 6] = [
    Fault::CrashBefore,
    Fault::CrashAfter,
    Fault::FailBefore,
    Fault::FailAfter,
    Fault::Refuse,
    Fault::Timeout,
];

/// The panic payload of a simulated crash.
struct SimCrash;

/// Shared by the participants of a run: numbers their calls and faults the planned ones.
#[derive(Default)]
struct World {
    calls: u64,
    /// The faults planned: (call number, fault).
    plan: Vec<(u64, Fault)>,
    /// How many of them fired (the run's outcome depends on them).
    fired: usize,
}

impl World {
    /// Numbers a call; the fault planned for it, if any.
    fn next_call(&mut self) -> Option<Fault> {
        self.calls += 1;
        let fault = self
            .plan
            .iter()
            .find(|(at, _)| *at == self.calls)
            .map(|&(_, fault)| fault);
        self.fired += fault.is_some() as usize;
        fault
    }

    /// Ends the plan; how many of its faults fired.
    fn unplan(&mut self) -> usize {
        self.plan.clear();
        std::mem::take(&mut self.fired)
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Runs one participant call under the world's plan.
fn faulted<T>(world: &Mutex<World>, what: &str, body: impl FnOnce() -> Result<T>) -> Result<T> {
    let fault = lock(world).next_call();
    if std::env::var("SIM_TRACE").is_ok() {
        eprintln!("call {}: {what} {fault:?}", lock(world).calls);
    }
    let injected = |kind: &str| Error::Internal(format!("sim: {what} {kind}"));
    match fault {
        None => body(),
        Some(Fault::CrashBefore) => std::panic::panic_any(SimCrash),
        Some(Fault::CrashAfter) => {
            let _ = body();
            std::panic::panic_any(SimCrash)
        }
        Some(Fault::FailBefore) => Err(injected("failed")),
        Some(Fault::FailAfter) => body().and(Err(injected("broke off after taking effect"))),
        Some(Fault::Refuse) => Err(Error::BadArgument(format!("sim: {what} refused"))),
        Some(Fault::Timeout) => Err(Error::Busy {
            what: format!("sim: {what}"),
            timeout_ms: 5000,
        }),
    }
}

/// A write transaction open on a participant.
struct Open {
    image: Image,
    start: Image,
    before: BTreeMap<i64, Option<i64>>,
    savepoints: Vec<(i32, Image, BTreeMap<i64, Option<i64>>)>,
}

struct SimParticipant {
    index: usize,
    disk: Arc<Mutex<Disk>>,
    world: Arc<Mutex<World>>,
    open: Option<Open>,
    snapshot: Option<Image>,
    /// Its prepares are invisible to readers and it declines the logged path, as a server's.
    invisible: bool,
}

impl SimParticipant {
    fn call<T>(&mut self, what: &str, body: impl FnOnce(&mut Self) -> Result<T>) -> Result<T> {
        let world = Arc::clone(&self.world);
        let what = format!("participant {} {what}", self.index);
        faulted(&world, &what, || body(self))
    }

    fn open(&mut self) -> Result<&mut Open> {
        self.open
            .as_mut()
            .ok_or_else(|| Error::Internal("sim: no write transaction open".into()))
    }

    /// A row write in the open transaction (the table's, not the protocol's: never faulted).
    fn write(&mut self, id: i64, value: Option<i64>) {
        let open = self.open.as_mut().expect("a write transaction is open");
        let was = open.image.rows.get(&id).copied();
        open.before.entry(id).or_insert(was);
        match value {
            Some(v) => open.image.rows.insert(id, v),
            None => open.image.rows.remove(&id),
        };
    }

    /// Commits `image` as a step of its own (no write transaction open).
    fn commit_alone(&mut self, change: impl FnOnce(&mut Image)) -> Result<()> {
        if self.open.is_some() {
            return Err(Error::Internal(
                "sim: a step of its own inside a transaction".into(),
            ));
        }
        let mut disk = lock(&self.disk);
        let mut image = disk.live();
        change(&mut image);
        disk.commit(image);
        Ok(())
    }

    /// Three-phase commit: marks prepared `txid` pre-committed, or takes that back, as a commit
    /// of its own; pre-committing what is not prepared is an error.
    fn set_pre_committed(&mut self, txid: u64, pre_committed: bool) -> Result<()> {
        let prepared = lock(&self.disk).live().prepared.contains_key(&txid);
        if pre_committed && !prepared {
            return Err(Error::Internal(format!("sim: {txid} is not prepared")));
        }
        self.commit_alone(|image| {
            if let Some(record) = image.prepared.get_mut(&txid) {
                record.pre_committed = pre_committed;
            }
        })
    }

    /// What the participant's connection sees: its open transaction, its snapshot, or the
    /// latest commit.
    fn seen(&self) -> Image {
        match (&self.open, &self.snapshot) {
            (Some(open), _) => open.image.clone(),
            (None, Some(snapshot)) => snapshot.clone(),
            (None, None) => lock(&self.disk).live(),
        }
    }
}

/// A touched row as a transaction left it: its id and value, or `None` if deleted.
type RowChange = (i64, Option<i64>);

/// The changes a logged commit carries: the base, then each touched row as it ended.
fn encode_changes(base: u64, rows: &[RowChange]) -> Vec<u8> {
    let mut out = base.to_le_bytes().to_vec();
    for (id, value) in rows {
        out.extend_from_slice(&id.to_le_bytes());
        out.push(value.is_some() as u8);
        out.extend_from_slice(&value.unwrap_or(0).to_le_bytes());
    }
    out
}

fn decode_changes(bytes: &[u8]) -> Option<(u64, Vec<RowChange>)> {
    let base = u64::from_le_bytes(bytes.get(..8)?.try_into().ok()?);
    let rows = bytes[8..]
        .chunks(17)
        .map(|c| {
            let id = i64::from_le_bytes(c.get(..8)?.try_into().ok()?);
            let value = i64::from_le_bytes(c.get(9..17)?.try_into().ok()?);
            Some((id, (*c.get(8)? == 1).then_some(value)))
        })
        .collect::<Option<_>>()?;
    Some((base, rows))
}

impl Participant for SimParticipant {
    fn name(&self) -> String {
        format!("sim participant {}", self.index)
    }

    fn begin_read(&mut self) -> Result<Vec<u64>> {
        self.call("begin_read", |p| {
            let image = lock(&p.disk).live();
            let prepared = image.prepared.keys().copied().collect();
            p.snapshot = Some(image);
            Ok(prepared)
        })
    }

    fn end(&mut self) -> Result<()> {
        self.call("end", |p| {
            p.open = None;
            p.snapshot = None;
            Ok(())
        })
    }

    fn begin_write(&mut self) -> Result<()> {
        self.call("begin_write", |p| {
            let image = lock(&p.disk).live();
            p.snapshot = None;
            p.open = Some(Open {
                start: image.clone(),
                image,
                before: BTreeMap::new(),
                savepoints: Vec::new(),
            });
            Ok(())
        })
    }

    fn savepoint(&mut self, level: i32) -> Result<()> {
        self.call("savepoint", |p| {
            let open = p.open()?;
            open.savepoints
                .push((level, open.image.clone(), open.before.clone()));
            Ok(())
        })
    }

    fn release(&mut self, level: i32) -> Result<()> {
        self.call("release", |p| {
            p.open()?.savepoints.retain(|(l, _, _)| *l < level);
            Ok(())
        })
    }

    fn rollback_to(&mut self, level: i32) -> Result<()> {
        self.call("rollback_to", |p| {
            let open = p.open()?;
            let at = open
                .savepoints
                .iter()
                .position(|(l, _, _)| *l == level)
                .ok_or_else(|| Error::Internal(format!("sim: no savepoint {level}")))?;
            let (_, image, before) = open.savepoints[at].clone();
            open.image = image;
            open.before = before;
            open.savepoints.truncate(at + 1);
            Ok(())
        })
    }

    fn rollback_to_start(&mut self) -> Result<()> {
        self.call("rollback_to_start", |p| {
            let open = p.open()?;
            open.image = open.start.clone();
            open.before.clear();
            open.savepoints.clear();
            Ok(())
        })
    }

    fn last_txid(&mut self) -> Result<u64> {
        self.call("last_txid", |p| Ok(p.seen().last_txid))
    }

    fn last_finalized(&mut self) -> Result<u64> {
        self.call("last_finalized", |p| Ok(p.seen().last_finalized))
    }

    fn last_aborted(&mut self) -> Result<u64> {
        self.call("last_aborted", |p| Ok(p.seen().last_aborted))
    }

    fn prepared(&mut self) -> Result<Vec<PrepareRecord>> {
        self.call("prepared", |p| {
            Ok(p.seen()
                .prepared
                .iter()
                .map(|(&txid, record)| PrepareRecord {
                    txid,
                    decided_by: record.decided_by.clone(),
                    pre_committed: record.pre_committed,
                    participants: Some(record.participants.clone()),
                })
                .collect())
        })
    }

    fn prepared_visible(&self) -> bool {
        !self.invisible
    }

    fn changes(&mut self, _txid: u64, bytes_max: u64) -> Result<Option<Vec<u8>>> {
        if self.invisible {
            return Ok(None);
        }
        self.call("changes", |p| {
            let open = p.open()?;
            let rows: Vec<RowChange> = open
                .before
                .keys()
                .map(|&id| (id, open.image.rows.get(&id).copied()))
                .collect();
            let bytes = encode_changes(open.start.last_txid, &rows);
            Ok((bytes.len() as u64 <= bytes_max).then_some(bytes))
        })
    }

    fn commit_logged(&mut self, txid: u64) -> Result<()> {
        self.call("commit_logged", |p| {
            let mut open = p
                .open
                .take()
                .ok_or_else(|| Error::Internal("sim: nothing open".into()))?;
            open.image.last_txid = txid;
            lock(&p.disk).commit(open.image);
            Ok(())
        })
    }

    fn replay(&mut self, txid: u64, changes: &[u8]) -> Result<Replayed> {
        self.call("replay", |p| {
            let Some((base, rows)) = decode_changes(changes) else {
                return Ok(Replayed::Unreadable("sim: bad changes".into()));
            };
            let live = lock(&p.disk).live();
            if live.last_txid >= txid {
                return Ok(Replayed::Present);
            }
            if live.last_txid < base {
                return Ok(Replayed::Gap { base });
            }
            p.commit_alone(|image| {
                for (id, value) in rows {
                    match value {
                        Some(v) => image.rows.insert(id, v),
                        None => image.rows.remove(&id),
                    };
                }
                image.last_txid = txid;
            })?;
            Ok(Replayed::Applied)
        })
    }

    fn prepare(&mut self, txid: u64, participants: &[u16], decided_by: Option<&str>) -> Result<()> {
        self.call("prepare", |p| {
            let mut open = p
                .open
                .take()
                .ok_or_else(|| Error::Internal("sim: nothing open".into()))?;
            open.image.prepared.insert(
                txid,
                Prepared {
                    decided_by: decided_by.map(str::to_string),
                    participants: participants.to_vec(),
                    pre_committed: false,
                    before: open.before,
                },
            );
            open.image.last_txid = txid;
            lock(&p.disk).commit(open.image);
            Ok(())
        })
    }

    fn finalize(&mut self, txid: u64) -> Result<()> {
        self.call("finalize", |p| {
            p.commit_alone(|image| {
                image.prepared.remove(&txid);
                image.last_finalized = image.last_finalized.max(txid);
            })
        })
    }

    fn abort_prepared(&mut self, txid: u64) -> Result<()> {
        self.call("abort_prepared", |p| {
            p.commit_alone(|image| {
                if let Some(record) = image.prepared.remove(&txid) {
                    for (id, was) in record.before {
                        match was {
                            Some(v) => image.rows.insert(id, v),
                            None => image.rows.remove(&id),
                        };
                    }
                }
                image.last_aborted = image.last_aborted.max(txid);
            })
        })
    }

    fn pre_commit(&mut self, txid: u64) -> Result<()> {
        self.call("pre_commit", |p| p.set_pre_committed(txid, true))
    }

    fn withdraw_pre_commit(&mut self, txid: u64) -> Result<()> {
        self.call("withdraw_pre_commit", |p| p.set_pre_committed(txid, false))
    }

    fn sync_job(&self) -> Option<SyncJob> {
        let (disk, world) = (Arc::clone(&self.disk), Arc::clone(&self.world));
        let what = format!("participant {} sync", self.index);
        Some(Box::new(move || {
            faulted(&world, &what, || {
                lock(&disk).sync();
                Ok(())
            })
        }))
    }
}

/// The host database's decision rows: committed (durable: the host commits at synchronous
/// FULL or in WAL), and those of its open transaction.
#[derive(Default)]
struct HostRows {
    committed: BTreeSet<u64>,
    open: Option<BTreeSet<u64>>,
}

/// The host database of a run's table, deciding the transactions that also wrote it.
struct SimHost {
    path: String,
    rows: Arc<Mutex<HostRows>>,
    world: Arc<Mutex<World>>,
}

impl SimHost {
    /// SQLite's own commit of the host database: its decision rows become durable.
    fn commit(&self) {
        let mut rows = lock(&self.rows);
        if let Some(open) = rows.open.take() {
            rows.committed = open;
        }
    }

    /// SQLite's own commit failed (or a crash): the open transaction's rows are gone.
    fn roll_back(&self) {
        lock(&self.rows).open = None;
    }
}

impl HostDecider for SimHost {
    fn path(&self) -> &str {
        &self.path
    }

    fn record(&self, txid: u64) -> Result<u64> {
        faulted(&self.world, "host record", || {
            let mut rows = lock(&self.rows);
            let mut open = rows.open.take().unwrap_or_else(|| rows.committed.clone());
            open.insert(txid);
            let kept = open.len() as u64;
            rows.open = Some(open);
            Ok(kept)
        })
    }

    fn forget_before(&self, txid: u64) -> Result<()> {
        faulted(&self.world, "host forget_before", || {
            if let Some(open) = lock(&self.rows).open.as_mut() {
                open.retain(|&t| t >= txid);
            }
            Ok(())
        })
    }
}

/// A host's rows and the world its calls are faulted in.
type HostHandle = (Arc<Mutex<HostRows>>, Arc<Mutex<World>>);

/// The runs' hosts by path, for recovery's lookup (a plain function).
static HOSTS: Mutex<BTreeMap<String, HostHandle>> = Mutex::new(BTreeMap::new());

fn host_lookup(path: &str, _table: &TableId, txid: u64) -> Result<bool> {
    let (rows, world) = lock(&HOSTS)
        .get(path)
        .cloned()
        .ok_or_else(|| Error::Internal(format!("sim: no host {path}")))?;
    faulted(&world, "host lookup", || {
        Ok(lock(&rows).committed.contains(&txid))
    })
}

/// The runs' only source of chance, seeded.
struct Rng(SplitMix64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(SplitMix64(seed))
    }

    fn below(&mut self, n: u64) -> u64 {
        self.0.next_u64() % n.max(1)
    }
}

/// One transaction of a run: writes on participants, some inside a savepoint.
#[derive(Clone, Debug)]
struct TxnPlan {
    /// (participant, id, value or delete, inside the savepoint), those inside the savepoint last
    writes: Vec<(usize, i64, Option<i64>, bool)>,
    /// Whether the savepoint rolls back (else it is released).
    savepoint_rolls_back: bool,
    /// Whether it also writes the host database (its decision rides on the host's commit).
    hosted: bool,
    /// Whether SQLite's own commit fails after xSync (xRollback takes the decision back).
    host_commit_fails: bool,
}

/// Every participant's rows, as the oracle expects them.
type Rows = Vec<BTreeMap<i64, i64>>;

impl TxnPlan {
    /// A random transaction `k` of a run of `mix`.
    fn random(rng: &mut Rng, participants: usize, k: i64, mix: Mix) -> TxnPlan {
        let count = 1 + rng.below(4) as usize;
        let mut writes: Vec<_> = (0..count)
            .map(|j| {
                let p = rng.below(participants as u64) as usize;
                // A few ids per participant, so transactions overwrite and delete each other's rows.
                let id = rng.below(4) as i64;
                let value = (rng.below(5) != 0).then_some(k * 10 + j as i64);
                (p, id, value, rng.below(3) == 0)
            })
            .collect();
        // The savepoint begins at its first write and lasts to the end.
        writes.sort_by_key(|w| w.3);
        TxnPlan {
            writes,
            savepoint_rolls_back: rng.below(2) == 0,
            hosted: mix == Mix::Hosted || (mix != Mix::Invisible && rng.below(3) == 0),
            host_commit_fails: rng.below(4) == 0,
        }
    }

    /// `rows` with this transaction applied.
    fn applied(&self, rows: &Rows) -> Rows {
        let mut rows = rows.clone();
        for &(p, id, value, in_savepoint) in &self.writes {
            if in_savepoint && self.savepoint_rolls_back {
                continue;
            }
            match value {
                Some(v) => rows[p].insert(id, v),
                None => rows[p].remove(&id),
            };
        }
        rows
    }
}

/// A run's table: its folder, configuration, participants and their storage.
struct Table {
    _dir: tempfile::TempDir,
    config: TableConfig,
    world: Arc<Mutex<World>>,
    disks: Vec<Arc<Mutex<Disk>>>,
    host: SimHost,
    invisible: bool,
    /// A three-phase table: after every crash its journal is deleted (it decides nothing).
    three_phase: bool,
}

impl Drop for Table {
    fn drop(&mut self) {
        lock(&HOSTS).remove(&self.host.path);
    }
}

impl Table {
    fn new(participants: usize, mix: Mix) -> Table {
        let logged = mix == Mix::Logged;
        let three_phase = mix == Mix::ThreePhase;
        let dir = match Path::new("/dev/shm").is_dir() {
            true => tempfile::tempdir_in("/dev/shm"),
            false => tempfile::tempdir(),
        }
        .expect("a temporary folder");
        let shards = format!("shards={participants}");
        let mut args = vec![shards.as_str(), "busy_timeout=0"];
        if !logged {
            args.push("logged_commit_max=0");
        }
        if three_phase {
            args.push("protocol=3pc");
        }
        let host = dir.path().join("host.db");
        let mut config = TableConfig::parse("t", &args, HostDatabase { file: Some(&host) })
            .expect("a valid configuration");
        // Below what a user may set: runs trim the journal every transaction or two.
        config.journal_limit_bytes = 200;
        let world: Arc<Mutex<World>> = Arc::default();
        let host = SimHost {
            path: host.to_string_lossy().into_owned(),
            rows: Arc::default(),
            world: Arc::clone(&world),
        };
        lock(&HOSTS).insert(
            host.path.clone(),
            (Arc::clone(&host.rows), Arc::clone(&world)),
        );
        Table {
            _dir: dir,
            config,
            world,
            disks: (0..participants).map(|_| Arc::default()).collect(),
            host,
            invisible: mix == Mix::Invisible,
            three_phase,
        }
    }

    /// The participants as a new connection finds them.
    fn participants(&self) -> Vec<SimParticipant> {
        self.disks
            .iter()
            .enumerate()
            .map(|(index, disk)| SimParticipant {
                index,
                disk: Arc::clone(disk),
                world: Arc::clone(&self.world),
                open: None,
                snapshot: None,
                invisible: self.invisible,
            })
            .collect()
    }

    fn open(&self, parts: &mut [SimParticipant], create: bool) -> Result<Coordinator> {
        Coordinator::open(&self.config, TABLE_ID, parts, create, host_lookup)
    }
}

/// What a run showed.
struct Outcome {
    /// The rows before and after each transaction that the run began.
    states: Vec<Rows>,
    /// Whether the transaction (by position) was acknowledged (its xSync returned Ok).
    acknowledged: Vec<bool>,
    crashed: bool,
    /// The last transaction failed with its outcome unknown (the caller was told so): recovery
    /// may commit or abort it, and the run stops there.
    unknown: bool,
}

/// How one transaction of a run ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Ran {
    Committed,
    Failed,
    /// Failed with `Error::OutcomeUnknown`: whole or absent, as recovery finds it.
    Unknown,
}

/// Runs `plans` on `table`, one transaction after another, as SQLite would call the
/// coordinator; stops at a crash (a panic with [`SimCrash`]). A transaction that fails is
/// rolled back and the table reopened, as a new connection would.
fn run_transactions(table: &Table, plans: &[TxnPlan]) -> Outcome {
    let mut outcome = Outcome {
        states: vec![vec![BTreeMap::new(); table.disks.len()]],
        acknowledged: Vec::new(),
        crashed: false,
        unknown: false,
    };
    let ran = catch_unwind(AssertUnwindSafe(|| {
        let mut parts = table.participants();
        let mut coordinator = table.open(&mut parts, true).ok();
        for plan in plans {
            if coordinator.is_none() {
                parts = table.participants();
                coordinator = table.open(&mut parts, false).ok();
            }
            let before = outcome.states.last().cloned().unwrap_or_default();
            outcome.states.push(plan.applied(&before));
            outcome.acknowledged.push(false);
            let acknowledged = outcome.acknowledged.last_mut().expect("pushed above");
            // A table that cannot be opened takes no transaction.
            let ran = coordinator.as_mut().map_or(Ran::Failed, |c| {
                run_one(c, &mut parts, plan, &table.host, acknowledged)
            });
            if ran == Ran::Unknown {
                outcome.unknown = true;
                break;
            }
            if ran == Ran::Failed {
                // Gone: the oracle's next state is the one before; a new connection goes on.
                *outcome.states.last_mut().expect("pushed above") = before;
                coordinator = None;
            }
        }
    }));
    match ran {
        Ok(()) => {}
        Err(payload) if payload.is::<SimCrash>() => outcome.crashed = true,
        Err(payload) => std::panic::resume_unwind(payload),
    }
    outcome
}

/// One transaction as SQLite runs it: begin, writes (some in a savepoint), xSync, SQLite's own
/// commit of the host database, then xCommit, or xRollback if either failed. Sets
/// `acknowledged` once the commit is the caller's (before xCommit: a crash there keeps it);
/// returns how it ended.
fn run_one(
    c: &mut Coordinator,
    parts: &mut [SimParticipant],
    plan: &TxnPlan,
    host: &SimHost,
    acknowledged: &mut bool,
) -> Ran {
    let decided = (|| -> Result<()> {
        c.begin_write(parts)?;
        let mut in_savepoint = false;
        for &(p, id, value, savepointed) in &plan.writes {
            if savepointed && !in_savepoint {
                c.savepoint(parts, 1)?;
                in_savepoint = true;
            }
            c.record_write(p)?;
            parts[p].write(id, value);
        }
        if in_savepoint {
            match plan.savepoint_rolls_back {
                true => c.rollback_to(parts, 1),
                false => c.release(parts, 1),
            }?;
        }
        c.sync(parts, plan.hosted.then_some(host as &dyn HostDecider))
    })();
    if decided.is_err() || plan.host_commit_fails {
        host.roll_back();
        c.rollback(parts);
        // Told it failed, but its decision could not be taken back (step 8): recovery's.
        let taken_back_or_not = decided.is_ok() && c.is_poisoned();
        return match decided {
            Err(Error::OutcomeUnknown { .. }) => Ran::Unknown,
            _ if taken_back_or_not => Ran::Unknown,
            _ => Ran::Failed,
        };
    }
    host.commit();
    *acknowledged = true;
    c.commit(parts);
    Ran::Committed
}

/// After a crash: a kill (every participant keeps its commits) or a power cut (each keeps its
/// durable image and a random prefix of the commits since).
fn crash(table: &Table, rng: &mut Rng) {
    table.host.roll_back();
    if table.three_phase {
        let _ = std::fs::remove_file(&table.config.journal_path);
    }
    if rng.below(2) == 0 {
        return;
    }
    for disk in &table.disks {
        let mut disk = lock(disk);
        let kept = rng.below(disk.unsynced.len() as u64 + 1) as usize;
        disk.power_cut(kept);
    }
}

/// Opens the table (recovery runs) and reads every participant's rows in one snapshot.
fn recover_and_read(table: &Table) -> Result<Rows> {
    let mut parts = table.participants();
    let mut c = table.open(&mut parts, false)?;
    c.begin_read(&mut parts, false)?;
    let rows = parts.iter().map(|p| p.seen().rows).collect();
    c.end_read(&mut parts);
    Ok(rows)
}

/// The checks after a run (see the module comment); `Err` describes what broke.
fn check(table: &Table, outcome: &Outcome) -> std::result::Result<(), String> {
    let rows = recover_and_read(table).map_err(|e| format!("the table does not open: {e}"))?;
    let n = outcome.acknowledged.len();
    // Every transaction before the last ended before the crash: its state is known.
    let after_last = &outcome.states[n];
    let before_last = &outcome.states[n.saturating_sub(1)];
    let last_acknowledged = outcome.acknowledged.last() == Some(&true);
    let allowed: Vec<&Rows> = match (outcome.crashed || outcome.unknown, last_acknowledged) {
        (_, true) => vec![after_last],
        (true, false) => vec![before_last, after_last],
        (false, false) => vec![after_last], // the failed transaction is already left out
    };
    if !allowed.contains(&&rows) {
        return Err(format!(
            "rows {rows:?}, expected one of {allowed:?} (acknowledged {:?})",
            outcome.acknowledged
        ));
    }
    for disk in &table.disks {
        let live = lock(disk).live();
        if !live.prepared.is_empty() {
            return Err(format!("left prepared: {:?}", live.prepared));
        }
    }
    // The table takes a new transaction afterwards.
    let mut parts = table.participants();
    let mut c = table.open(&mut parts, false).map_err(|e| e.to_string())?;
    let plan = TxnPlan {
        writes: (0..parts.len()).map(|p| (p, 99, Some(99), false)).collect(),
        savepoint_rolls_back: false,
        hosted: false,
        host_commit_fails: false,
    };
    match run_one(&mut c, &mut parts, &plan, &table.host, &mut false) {
        Ran::Committed => Ok(()),
        _ => Err("a new transaction fails after recovery".into()),
    }
}

/// Silences the panics of simulated crashes (they are expected), keeping every other.
fn quiet_crashes() {
    static HOOK: Once = Once::new();
    HOOK.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if !info.payload().is::<SimCrash>() {
                default(info);
            }
        }));
    });
}

/// The most participants a run with a second fault has.
const SECOND_FAULT_PARTICIPANTS_MAX: usize = 3;

/// A second fault after the first, on a three-phase table: what one fault cannot show.
#[derive(Clone, Copy, Debug)]
enum Then {
    Nothing,
    /// A crash before the `j`-th call after the first fault (one that did not crash): while a
    /// failed commit is undone, say.
    CrashLater(u64),
    /// After the first fault's crash (and its kill or power cut), a crash before recovery's
    /// `j`-th call (or after its last), then another kill or power cut.
    CrashInRecovery(u64),
}

/// One faulted run of `plans` and its checks (a panic says what broke); returns whether the
/// first fault fired, and whether the second did.
fn run_case(
    participants: usize,
    mix: Mix,
    seed: u64,
    plans: &[TxnPlan],
    (at, fault): (u64, Fault),
    then: Then,
) -> (bool, bool) {
    let table = Table::new(participants, mix);
    lock(&table.world).plan = match then {
        Then::CrashLater(j) => vec![(at, fault), (at + j, Fault::CrashBefore)],
        _ => vec![(at, fault)],
    };
    let outcome = run_transactions(&table, plans);
    // A fault planned past the calls this run made fires nowhere.
    let fired = lock(&table.world).unplan();
    let mut second = matches!(then, Then::CrashLater(_)) && fired == 2;
    let mut cut = Rng::new(seed ^ at.wrapping_mul(31) ^ fault as u64);
    if outcome.crashed {
        crash(&table, &mut cut);
        if let Then::CrashInRecovery(j) = then {
            let calls = lock(&table.world).calls;
            lock(&table.world).plan = vec![(calls + j, Fault::CrashBefore)];
            let recovered = catch_unwind(AssertUnwindSafe(|| {
                let mut parts = table.participants();
                table.open(&mut parts, false).map(drop)
            }));
            second = lock(&table.world).unplan() == 1;
            match recovered {
                Err(payload) if !payload.is::<SimCrash>() => std::panic::resume_unwind(payload),
                // Crashed in recovery, or right after it (what it did not sync may be lost).
                _ => crash(&table, &mut cut),
            }
        }
    }
    if let Err(problem) = check(&table, &outcome) {
        let calls = outcome.acknowledged.len();
        panic!(
            "{participants} participants, {mix:?}, seed {seed}: {fault:?} at call {at} (transaction {calls}), then {then:?}: {problem}"
        );
    }
    (fired > 0, second)
}

/// Every fault at every call of a seeded run of `transactions` on `participants`, logged or
/// prepared; on a three-phase table, each followed by a second fault (see [`Then`]). Returns
/// how many faulted runs fired.
fn every_fault_at_every_call(participants: usize, mix: Mix, seed: u64) -> usize {
    quiet_crashes();
    crate::durable::RUN_INLINE.with(|inline| inline.set(true));
    let mut rng = Rng::new(seed);
    let transactions = if mix == Mix::Hosted { 6 } else { 4 };
    let plans: Vec<TxnPlan> = (1..=transactions)
        .map(|k| TxnPlan::random(&mut rng, participants, k, mix))
        .collect();
    // A run without faults counts the calls, and must hold by itself.
    let clean = Table::new(participants, mix);
    let outcome = run_transactions(&clean, &plans);
    let expected: Vec<bool> = plans.iter().map(|p| !p.host_commit_fails).collect();
    assert_eq!(outcome.acknowledged, expected, "a clean run");
    check(&clean, &outcome).unwrap_or_else(|e| panic!("clean run: {e}"));
    let calls = lock(&clean.world).calls;
    let mut fired = 0;
    let only_at: Option<u64> = std::env::var("SIM_AT").ok().and_then(|v| v.parse().ok());
    let case = |first, then| run_case(participants, mix, seed, &plans, first, then);
    for at in (1..=calls).filter(|a| only_at.is_none_or(|o| o == *a)) {
        for fault in FAULTS {
            let (first, _) = case((at, fault), Then::Nothing);
            fired += first as usize;
            // Second faults multiply the runs: up to 3 participants show what they can.
            if !first || mix != Mix::ThreePhase || participants > SECOND_FAULT_PARTICIPANTS_MAX {
                continue;
            }
            match fault {
                Fault::CrashBefore | Fault::CrashAfter => {
                    // Every call of the recovery, until one that it no longer makes.
                    for j in 1.. {
                        if !case((at, fault), Then::CrashInRecovery(j)).1 {
                            break;
                        }
                    }
                }
                _ => {
                    for j in 1..=4 {
                        case((at, fault), Then::CrashLater(j));
                    }
                }
            }
        }
    }
    fired
}

/// Which transactions a run makes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mix {
    /// Four transactions, small enough to be logged; a third of them also write the host.
    Logged,
    /// The same on a table that prepares every transaction (`logged_commit_max=0`).
    Prepared,
    /// Six transactions that all write the host: their decisions ride on its commits, and the
    /// host's older decisions are deleted once it holds more than two.
    Hosted,
    /// Four transactions on participants whose prepares no reader sees (servers): always
    /// prepared, decided without the publish lock, never with the host's tables.
    Invisible,
    /// Four transactions on a three-phase table (`protocol=3pc`): prepared, then pre-committed;
    /// a third also write the host, whose commit decides them.
    ThreePhase,
}

/// `SIM_ONLY=n` runs the cases of `n` participants only.
fn participant_counts(most: usize) -> impl Iterator<Item = usize> {
    let only: Option<usize> = std::env::var("SIM_ONLY").ok().and_then(|v| v.parse().ok());
    (1..=most).filter(move |p| only.is_none_or(|o| o == *p))
}

#[test]
fn every_fault_at_every_step_leaves_each_transaction_whole_or_absent() {
    for participants in participant_counts(8) {
        for (k, mix) in [Mix::Logged, Mix::Prepared, Mix::Invisible, Mix::ThreePhase]
            .into_iter()
            .enumerate()
        {
            let seed = 1000 + participants as u64 * 3 + k as u64;
            let fired = every_fault_at_every_call(participants, mix, seed);
            assert!(fired > 0, "{participants} participants: no fault fired");
        }
    }
}

#[test]
fn every_fault_at_every_step_of_transactions_decided_by_the_host() {
    for participants in participant_counts(4) {
        let fired =
            every_fault_at_every_call(participants, Mix::Hosted, 2000 + participants as u64);
        assert!(fired > 0, "{participants} participants: no fault fired");
    }
}

/// A participant's state for transaction 1 (which writes row 0 on every participant), as the
/// termination rule of three-phase commit meets it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Held {
    /// It never prepared: its vote was not yes (or never cast).
    NotVoted,
    Prepared,
    PreCommitted,
    /// It finalized (committed): its record is gone.
    Committed,
    /// It undid its prepare: its record is gone.
    Aborted,
}

const HELD: [Held; 5] = [
    Held::NotVoted,
    Held::Prepared,
    Held::PreCommitted,
    Held::Committed,
    Held::Aborted,
];

impl Held {
    fn image(self) -> Image {
        let written = BTreeMap::from([(0, 10)]);
        let record = |pre_committed| Prepared {
            decided_by: None,
            participants: Vec::new(),
            pre_committed,
            before: BTreeMap::from([(0, None)]),
        };
        let (rows, last_txid, prepared) = match self {
            Held::NotVoted => (BTreeMap::new(), 0, None),
            Held::Prepared => (written, 1, Some(record(false))),
            Held::PreCommitted => (written, 1, Some(record(true))),
            Held::Committed => (written, 1, None),
            Held::Aborted => (BTreeMap::new(), 1, None),
        };
        Image {
            rows,
            last_txid,
            last_finalized: u64::from(self == Held::Committed),
            last_aborted: u64::from(self == Held::Aborted),
            prepared: prepared.into_iter().map(|p| (1, p)).collect(),
        }
    }
}

/// Whether the protocol can leave these states together: a pre-commit follows a unanimous
/// yes (so nothing beside one is unvoted or aborted), and a finalize follows every shard's
/// durable pre-commit (so nothing beside a committed shard is only prepared, unvoted or
/// aborted).
fn reachable(states: &[Held]) -> bool {
    let has = |h: Held| states.contains(&h);
    let undecided = has(Held::NotVoted) || has(Held::Aborted);
    !(has(Held::PreCommitted) && undecided)
        && !(has(Held::Committed) && (undecided || has(Held::Prepared)))
}

/// Every combination of states of 1 to 3 participants.
fn combinations(participants: usize) -> Vec<Vec<Held>> {
    (0..HELD.len().pow(participants as u32))
        .map(|mut code| {
            (0..participants)
                .map(|_| {
                    let held = HELD[code % HELD.len()];
                    code /= HELD.len();
                    held
                })
                .collect()
        })
        .collect()
}

#[test]
fn three_phase_recovery_ends_every_combination_of_states_without_the_journal() {
    quiet_crashes();
    let mut ended = 0;
    for participants in 1..=3 {
        for states in combinations(participants)
            .into_iter()
            .filter(|s| reachable(s))
        {
            let table = Table::new(participants, Mix::ThreePhase);
            for (disk, held) in table.disks.iter().zip(&states) {
                lock(disk).durable = held.image();
            }
            // No journal: the shards alone decide.
            let commits = states
                .iter()
                .any(|h| matches!(h, Held::PreCommitted | Held::Committed));
            let rows = recover_and_read(&table)
                .unwrap_or_else(|e| panic!("{states:?}: the table does not open: {e}"));
            let expected: Rows = (0..participants)
                .map(|_| match commits {
                    true => BTreeMap::from([(0, 10)]),
                    false => BTreeMap::new(),
                })
                .collect();
            assert_eq!(rows, expected, "{states:?}");
            for disk in &table.disks {
                assert!(
                    lock(disk).live().prepared.is_empty(),
                    "{states:?}: left prepared"
                );
            }
            ended += 1;
        }
    }
    // 1 participant: 5 states; 2: 13 of 25; 3: 31 of 125 reachable.
    assert!(ended >= 40, "{ended} combinations");
}

/// What one step of the protocol (the coordinator's or recovery's) may make of `held`.
fn next_states(held: Held) -> &'static [Held] {
    match held {
        Held::NotVoted => &[Held::Prepared],
        Held::Prepared => &[Held::PreCommitted, Held::Aborted],
        Held::PreCommitted => &[Held::Prepared, Held::Committed],
        Held::Committed | Held::Aborted => &[],
    }
}

/// A table whose participants hold `durable` synced and `live` (one step later, or the same)
/// not yet synced.
fn table_holding(durable: &[Held], live: &[Held]) -> Table {
    let n = durable.len();
    let table = Table::new(n, Mix::ThreePhase);
    for ((disk, d), l) in table.disks.iter().zip(durable).zip(live) {
        let mut disk = lock(disk);
        disk.durable = d.image();
        if l != d {
            disk.commit(l.image());
        }
    }
    table
}

#[test]
fn three_phase_recovery_acts_only_on_what_a_power_cut_keeps() {
    quiet_crashes();
    crate::durable::RUN_INLINE.with(|inline| inline.set(true));
    let mut cases = 0;
    for participants in 1..=3 {
        for durable in combinations(participants)
            .into_iter()
            .filter(|s| reachable(s))
        {
            // Each participant one step further, or not, unsynced.
            let choices: Vec<Vec<Held>> = durable
                .iter()
                .map(|&d| {
                    std::iter::once(d)
                        .chain(next_states(d).iter().copied())
                        .collect()
                })
                .collect();
            let lives = choices.iter().fold(vec![Vec::new()], |lives, choice| {
                lives
                    .iter()
                    .flat_map(|l| choice.iter().map(move |&c| [l.clone(), vec![c]].concat()))
                    .collect::<Vec<_>>()
            });
            for live in lives {
                // Every mix of synced and unsynced states must be one the protocol can leave.
                let mixes_reachable = (0..1u32 << participants).all(|mask| {
                    let mix: Vec<Held> = (0..participants)
                        .map(|i| {
                            if mask >> i & 1 == 1 {
                                live[i]
                            } else {
                                durable[i]
                            }
                        })
                        .collect();
                    reachable(&mix)
                });
                if !mixes_reachable {
                    continue;
                }
                let seen = recover_and_read(&table_holding(&durable, &live))
                    .unwrap_or_else(|e| panic!("{durable:?} -> {live:?}: {e}"));
                // Then a power cut keeping any prefix of each participant's unsynced commits.
                let table = table_holding(&durable, &live);
                recover_and_read(&table).expect("recovers as before");
                let pending: Vec<usize> =
                    table.disks.iter().map(|d| lock(d).unsynced.len()).collect();
                let cuts: usize = pending.iter().map(|p| p + 1).product();
                for cut in 0..cuts {
                    let table = table_holding(&durable, &live);
                    recover_and_read(&table).expect("recovers as before");
                    let mut code = cut;
                    for (disk, &p) in table.disks.iter().zip(&pending) {
                        lock(disk).power_cut(code % (p + 1));
                        code /= p + 1;
                    }
                    let after = recover_and_read(&table)
                        .unwrap_or_else(|e| panic!("{durable:?} -> {live:?}, cut {cut}: {e}"));
                    assert_eq!(
                        after, seen,
                        "{durable:?} -> {live:?}, cut {cut}: a reader saw otherwise"
                    );
                    cases += 1;
                }
            }
        }
    }
    assert!(cases > 100, "{cases} cases");
}

#[test]
fn two_phase_recovery_without_the_journal_ends_what_the_shards_show_and_refuses_the_rest() {
    // Transaction 1 wrote row 0 on both participants; the journal that decided it is gone.
    let written = BTreeMap::from([(0, 10)]);
    for (states, outcome) in [
        ([Held::Prepared, Held::Prepared], None),
        ([Held::Prepared, Held::Committed], Some(written.clone())),
        ([Held::Prepared, Held::Aborted], Some(BTreeMap::new())),
        ([Held::Prepared, Held::NotVoted], Some(BTreeMap::new())),
    ] {
        let table = Table::new(2, Mix::Prepared);
        for (disk, held) in table.disks.iter().zip(&states) {
            let mut image = held.image();
            for record in image.prepared.values_mut() {
                record.participants = vec![0, 1];
            }
            lock(disk).durable = image;
        }
        match (recover_and_read(&table), outcome) {
            (Err(Error::InDoubt(message)), None) => assert!(message.contains("imagestore_resolve")),
            (Ok(rows), Some(rows_each)) => assert_eq!(rows, vec![rows_each; 2], "{states:?}"),
            (other, _) => panic!("{states:?}: {other:?}"),
        }
    }
}

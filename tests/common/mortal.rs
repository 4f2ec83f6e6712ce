//! A writer that dies at a chosen call: each participant wrapped so that the writer dies (a
//! panic unwinds out of the coordinator, and nothing more of it runs) at the `n`th call of a
//! named protocol step, before or after the participant acts, or at call number `n` of any.
//! Shared by the recovery tests of local shards (`recovery.rs`) and of servers.

use std::collections::HashMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Arc, Mutex};

use imagestore::commit::{Participant, PrepareRecord, Replayed};
use imagestore::durable::SyncJob;
use imagestore::error::Result;

/// The panic payload of a writer's death.
pub struct WriterDied;

/// Where the writer dies: at the `nth` call (1-based) of step `step` (a `Participant` method),
/// or at call number `nth` of any step (`step` empty); before the shard acts, or after.
#[derive(Clone, Copy, Debug)]
pub struct Death {
    pub step: &'static str,
    pub nth: u32,
    pub after: bool,
}

pub fn before(step: &'static str, nth: u32) -> Death {
    Death {
        step,
        nth,
        after: false,
    }
}

pub fn after(step: &'static str, nth: u32) -> Death {
    Death {
        step,
        nth,
        after: true,
    }
}

/// The calls the writer's shards have taken, and where it dies.
#[derive(Default)]
pub struct Calls {
    pub total: u32,
    pub per_step: HashMap<&'static str, u32>,
    pub death: Option<Death>,
}

impl Calls {
    /// Counts a call of `step`: whether the writer dies before it, and after it.
    fn tick(&mut self, step: &'static str) -> (bool, bool) {
        self.total += 1;
        let nth = self.per_step.entry(step).or_insert(0);
        *nth += 1;
        let hit = match self.death {
            Some(d) if d.step.is_empty() => d.nth == self.total,
            Some(d) => d.step == step && d.nth == *nth,
            None => false,
        };
        let after = self.death.is_some_and(|d| d.after);
        (hit && !after, hit && after)
    }
}

/// A real participant whose writer dies at the planned call.
pub struct Mortal<P> {
    pub shard: P,
    pub calls: Arc<Mutex<Calls>>,
}

impl<P> Mortal<P> {
    fn call<T>(&mut self, step: &'static str, body: impl FnOnce(&mut P) -> T) -> T {
        let (before, after) = self
            .calls
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .tick(step);
        if before {
            std::panic::panic_any(WriterDied);
        }
        let out = body(&mut self.shard);
        if after {
            std::panic::panic_any(WriterDied);
        }
        out
    }
}

impl<P: Participant> Participant for Mortal<P> {
    fn name(&self) -> String {
        self.shard.name()
    }
    fn begin_read(&mut self) -> Result<Vec<u64>> {
        self.call("begin_read", Participant::begin_read)
    }
    fn end(&mut self) -> Result<()> {
        self.call("end", Participant::end)
    }
    fn is_remote(&self) -> bool {
        self.shard.is_remote()
    }
    fn snapshot_last_txid(&self) -> Option<u64> {
        self.shard.snapshot_last_txid()
    }
    fn prepared_visible(&self) -> bool {
        self.shard.prepared_visible()
    }
    fn begin_write(&mut self) -> Result<()> {
        self.call("begin_write", Participant::begin_write)
    }
    fn savepoint(&mut self, level: i32) -> Result<()> {
        self.call("savepoint", |s| Participant::savepoint(s, level))
    }
    fn release(&mut self, level: i32) -> Result<()> {
        self.call("release", |s| Participant::release(s, level))
    }
    fn rollback_to(&mut self, level: i32) -> Result<()> {
        self.call("rollback_to", |s| Participant::rollback_to(s, level))
    }
    fn rollback_to_start(&mut self) -> Result<()> {
        self.call("rollback_to_start", Participant::rollback_to_start)
    }
    fn last_txid(&mut self) -> Result<u64> {
        self.call("last_txid", Participant::last_txid)
    }
    fn prepared(&mut self) -> Result<Vec<PrepareRecord>> {
        self.call("prepared", Participant::prepared)
    }
    fn changes(&mut self, txid: u64, bytes_max: u64) -> Result<Option<Vec<u8>>> {
        self.call("changes", |s| Participant::changes(s, txid, bytes_max))
    }
    fn commit_logged(&mut self, txid: u64) -> Result<()> {
        self.call("commit_logged", |s| Participant::commit_logged(s, txid))
    }
    fn replay(&mut self, txid: u64, changes: &[u8]) -> Result<Replayed> {
        self.call("replay", |s| Participant::replay(s, txid, changes))
    }
    fn prepare(&mut self, txid: u64, shards: &[u16], decided_by: Option<&str>) -> Result<()> {
        self.call("prepare", |s| {
            Participant::prepare(s, txid, shards, decided_by)
        })
    }
    fn finalize(&mut self, txid: u64) -> Result<()> {
        self.call("finalize", |s| Participant::finalize(s, txid))
    }
    fn abort_prepared(&mut self, txid: u64) -> Result<()> {
        self.call("abort_prepared", |s| Participant::abort_prepared(s, txid))
    }
    fn pre_commit(&mut self, txid: u64) -> Result<()> {
        self.call("pre_commit", |s| Participant::pre_commit(s, txid))
    }
    fn withdraw_pre_commit(&mut self, txid: u64) -> Result<()> {
        self.call("withdraw_pre_commit", |s| {
            Participant::withdraw_pre_commit(s, txid)
        })
    }
    fn take_over(&mut self) -> Result<()> {
        self.call("take_over", Participant::take_over)
    }
    fn sync_job(&self) -> Option<SyncJob> {
        // Counted as a call: a writer that dies here never started this sync.
        let (before, after) = self
            .calls
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .tick("sync_job");
        if before || after {
            std::panic::panic_any(WriterDied);
        }
        self.shard.sync_job()
    }
}

/// Silences the panics of a writer's planned death, keeping every other.
pub fn quiet_deaths() {
    static HOOK: std::sync::Once = std::sync::Once::new();
    HOOK.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if !info.payload().is::<WriterDied>() {
                default(info);
            }
        }));
    });
}

/// Runs `body`, a writer or a recovery over mortal shards: whether it died as planned (any
/// other panic goes on unwinding).
pub fn dies(body: impl FnOnce()) -> bool {
    quiet_deaths();
    match catch_unwind(AssertUnwindSafe(body)) {
        Ok(()) => false,
        Err(payload) if payload.is::<WriterDied>() => true,
        Err(payload) => std::panic::resume_unwind(payload),
    }
}

//! Test-only fault injection at the named steps of the commit and recovery paths.
//!
//! Built only with the cargo feature `fault-injection` (never in the shipped library, where
//! [`check`] is an empty inline function). With it, the environment variable
//! `IMAGESTORE_FAULT=step:n:mode` makes the `n`th (1-based) occurrence of `step` in this process
//! (with `n+`, that one and every later one) either return an I/O error (`mode` = `error`),
//! panic (`panic`), kill the process on the spot (`abort`), or wait and go on (`stall`: a test
//! strikes something else meanwhile, say kills a server between the prepares and the decision;
//! the wait lasts until the file that `IMAGESTORE_FAULT_RESUME` names exists, at most a minute,
//! or three seconds without it). Faults at several steps are separated by commas.
//!
//! Steps: `shard_prepare`, `journal_append`, `journal_sync`, `shard_commit_logged`,
//! `shard_finalize`, `journal_reset`, `shard_pre_commit`, `shard_withdraw_pre_commit`,
//! `recovery_shard`, `recovery_replay`, `derive_row`, `backup_shard`, `restore_commit`; on
//! servers `server_prepare`, `anchor_decide`, `server_finalize`, `anchor_confirm`,
//! `server_pre_commit`, `server_withdraw_pre_commit`.
//!
//! Also, `IMAGESTORE_SKIP_SYNC=name,...` leaves out the syncs named ([`skips_sync`]), so that the
//! power-cut tests can show that each sync the protocol relies on is needed.

use crate::error::Result;

#[cfg(not(feature = "fault-injection"))]
#[inline(always)]
pub fn check(_step: &'static str) -> Result<()> {
    Ok(())
}

/// Whether the sync named `what` is to be left out: `journal_record` (a decision's fdatasync),
/// `journal_folder` (the folder's sync after a journal is made or replaced), `shard_wal` (a
/// shard WAL's fsync, at a prepare and before a trim), `shard_wal_folder` (the folder's sync
/// after a new shard WAL's first fsync). Always false in the shipped library.
#[cfg(not(feature = "fault-injection"))]
#[inline(always)]
pub fn skips_sync(_what: &str) -> bool {
    false
}

#[cfg(feature = "fault-injection")]
pub fn skips_sync(what: &str) -> bool {
    std::env::var("IMAGESTORE_SKIP_SYNC").is_ok_and(|list| list.split(',').any(|w| w == what))
}

#[cfg(feature = "fault-injection")]
pub fn check(step: &'static str) -> Result<()> {
    use std::collections::HashMap;
    use std::sync::Mutex;
    static SEEN: Mutex<Option<HashMap<&'static str, u64>>> = Mutex::new(None);

    let Ok(specs) = std::env::var("IMAGESTORE_FAULT") else {
        return Ok(());
    };
    // Faults at several steps: `step:n:mode,step:n:mode`.
    let Some((nth, mode)) = specs.split(',').find_map(|spec| {
        let mut parts = spec.split(':');
        match (parts.next(), parts.next(), parts.next()) {
            (Some(name), Some(nth), Some(mode)) if name == step => Some((nth, mode)),
            _ => None,
        }
    }) else {
        return Ok(());
    };
    let count = {
        let mut seen = SEEN.lock().unwrap_or_else(|e| e.into_inner());
        let counter = seen
            .get_or_insert_with(HashMap::new)
            .entry(step)
            .or_insert(0);
        *counter += 1;
        *counter
    };
    // `n+`: the nth occurrence and every later one.
    let fires = match nth.strip_suffix('+') {
        Some(from) => from.parse::<u64>().is_ok_and(|from| count >= from),
        None => nth.parse::<u64>().ok() == Some(count),
    };
    if !fires {
        return Ok(());
    }
    // Tests read this line to know that the fault fired.
    eprintln!("imagestore: fault injected at {step} (occurrence {count}, {mode})");
    match mode {
        "abort" => std::process::abort(),
        "panic" => panic!("injected panic at {step}"),
        "stall" => {
            stall();
            return Ok(());
        }
        _ => {}
    }
    Err(crate::error::Error::JournalIo {
        path: std::path::PathBuf::from(format!("<injected fault at {step}>")),
        source: std::io::Error::other("injected fault"),
    })
}

/// The `stall` mode's wait (see the module's comment).
#[cfg(feature = "fault-injection")]
fn stall() {
    use std::time::{Duration, Instant};
    let Some(resume) = std::env::var_os("IMAGESTORE_FAULT_RESUME") else {
        return std::thread::sleep(Duration::from_secs(3));
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while !std::path::Path::new(&resume).exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
}

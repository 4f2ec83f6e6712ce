//! The commit protocol over PostgreSQL servers: the real coordinator drives three server
//! participants, and the writer dies (its connections drop, as a killed process's do) at every
//! call of a transaction in turn; a new coordinator then opens the table, which runs recovery.
//! The oracle is the servers themselves: every transaction whole or absent on all three (whole
//! if its commit was acknowledged), and nothing left prepared (`pg_prepared_xacts`).
//!
//! The servers are started by `tests/pg_servers.py` and stopped when the test process ends.
//! Run with `cargo test --no-default-features --features bundled --test server_recovery`.

mod common;

use std::io::Cursor;
use std::sync::{Arc, Mutex};

use common::mortal::{dies, Calls, Death, Mortal};
use common::servers::{servers, start};
use imagestore::commit::{Coordinator, Participant};
use imagestore::config::{HostDatabase, Protocol, TableConfig};
use imagestore::journal::TableId;
use imagestore::placement::shard_of;
use imagestore::server::{Address, ServerShard, WriterToken};
use imagestore::shard::{NewRow, ScanFilter};

const SHARDS: usize = 3;
const TIMEOUT_MS: u64 = 10_000;

/// How a two-phase table's shards are made and opened (no fence, so no writer token is read).
fn two_phase() -> (Protocol, WriterToken) {
    (Protocol::TwoPhase, WriterToken::default())
}

fn png(side: u32) -> Vec<u8> {
    let mut out = Vec::new();
    image::RgbImage::from_pixel(side, side, image::Rgb([side as u8, 7, 9]))
        .write_to(&mut Cursor::new(&mut out), image::ImageFormat::Png)
        .expect("encode png");
    out
}

fn row(id: i64, name: &str, data: &[u8]) -> NewRow {
    let info = imagestore::images::probe::probe(
        data,
        1 << 30,
        imagestore::images::probe::Verify::Structure,
    )
    .expect("probe");
    NewRow {
        id,
        name: name.to_string().into(),
        format: info.format,
        width: i64::from(info.width),
        height: i64::from(info.height),
        bytes: data.len() as i64,
        hash: info.hash,
        user: vec![],
    }
}

/// A table on the three servers, with its coordinator's files in a folder of its own.
struct Fixture {
    _dir: tempfile::TempDir,
    config: TableConfig,
    name: String,
    table_id: TableId,
    addresses: Vec<Address>,
}

impl Fixture {
    /// A new table named `name` holding rows 1..=9 ("row<id>").
    fn new(name: &str) -> Option<Fixture> {
        let urls = &servers()?.urls;
        let dir = tempfile::tempdir().expect("tempdir");
        let db = dir.path().join("host.db");
        let config = TableConfig::parse(name, &["shards=3"], HostDatabase { file: Some(&db) })
            .expect("config");
        let addresses: Vec<Address> = urls
            .iter()
            .map(|u| Address::parse(u).expect("address"))
            .collect();
        let table_id: TableId = *blake3::hash(name.as_bytes())
            .as_bytes()
            .first_chunk()
            .unwrap();
        let mut shards: Vec<ServerShard> = addresses
            .iter()
            .enumerate()
            .map(|(i, a)| {
                ServerShard::create(
                    a.clone(),
                    name,
                    table_id,
                    (i, SHARDS),
                    &[],
                    two_phase(),
                    TIMEOUT_MS,
                )
                .expect("create shard")
            })
            .collect();
        let fixture = Fixture {
            _dir: dir,
            config,
            name: name.to_string(),
            table_id,
            addresses,
        };
        let mut c = Coordinator::open(
            &fixture.config,
            table_id,
            &mut shards,
            true,
            imagestore::host::lookup,
        )
        .expect("coordinator");
        c.begin_write(&mut shards).expect("begin");
        for id in 1..=9 {
            let shard = shard_of(id, SHARDS);
            c.record_write(shard).expect("record");
            shards[shard]
                .insert(
                    &row(id, &format!("row{id}"), &png(id as u32)),
                    &png(id as u32),
                )
                .expect("insert");
        }
        c.sync(&mut shards, None).expect("sync");
        c.commit(&mut shards);
        Some(fixture)
    }

    fn shards(&self) -> Vec<ServerShard> {
        self.addresses
            .iter()
            .enumerate()
            .map(|(i, a)| {
                ServerShard::open(
                    a.clone(),
                    &self.name,
                    (i, SHARDS),
                    &[],
                    two_phase(),
                    TIMEOUT_MS,
                )
                .expect("open shard")
            })
            .collect()
    }

    /// Opens the table as the next process would: recovery runs.
    fn recover(&self) -> Vec<ServerShard> {
        let mut shards = self.shards();
        Coordinator::open(
            &self.config,
            self.table_id,
            &mut shards,
            false,
            imagestore::host::lookup,
        )
        .expect("recovery");
        shards
    }

    /// Every row of every shard, by id, with its name and whether its image is its own.
    fn rows(&self, shards: &mut [ServerShard]) -> Vec<(i64, String, bool)> {
        let mut rows = Vec::new();
        for shard in shards.iter_mut() {
            for r in shard
                .scan_page(&ScanFilter::default(), None, 1000)
                .expect("scan")
            {
                let data = shard.read_blob(r.blob_id).expect("image");
                let own = blake3::hash(&data).to_hex().to_string() == r.hash;
                let name = match r.name {
                    rusqlite::types::Value::Text(t) => t,
                    other => format!("{other:?}"),
                };
                rows.push((r.id, name, own));
            }
        }
        rows.sort();
        rows
    }
}

fn baseline() -> Vec<(i64, String, bool)> {
    (1..=9).map(|id| (id, format!("row{id}"), true)).collect()
}

/// What the sweep's transaction leaves: on every shard a new row, a renamed row with a new
/// image, and a deleted row.
fn after_transaction() -> Vec<(i64, String, bool)> {
    let mut rows: Vec<_> = baseline()
        .into_iter()
        .filter(|(id, _, _)| !deleted().contains(id))
        .map(|(id, name, own)| match renamed().contains(&id) {
            true => (id, format!("renamed{id}"), own),
            false => (id, name, own),
        })
        .collect();
    rows.extend(
        new_ids()
            .into_iter()
            .map(|id| (id, format!("new{id}"), true)),
    );
    rows.sort();
    rows
}

fn ids_on(shard: usize, from: i64) -> impl Iterator<Item = i64> {
    (from..).filter(move |&id| shard_of(id, SHARDS) == shard)
}

fn new_ids() -> Vec<i64> {
    (0..SHARDS)
        .map(|s| ids_on(s, 100).next().unwrap())
        .collect()
}

/// The first two baseline rows of each shard: the first is renamed, the second deleted.
fn renamed() -> Vec<i64> {
    (0..SHARDS).map(|s| ids_on(s, 1).next().unwrap()).collect()
}

fn deleted() -> Vec<i64> {
    (0..SHARDS).map(|s| ids_on(s, 1).nth(1).unwrap()).collect()
}

/// Runs the sweep's transaction through the real coordinator; the writer dies at `death`.
/// Returns whether it died, and whether its commit was acknowledged.
fn write(f: &Fixture, death: Death) -> (bool, bool) {
    let calls = Arc::new(Mutex::new(Calls {
        death: Some(death),
        ..Calls::default()
    }));
    let mut acknowledged = false;
    let died = dies(|| {
        let mut shards: Vec<Mortal<ServerShard>> = f
            .shards()
            .into_iter()
            .map(|shard| Mortal {
                shard,
                calls: Arc::clone(&calls),
            })
            .collect();
        let mut c = Coordinator::open(
            &f.config,
            f.table_id,
            &mut shards,
            false,
            imagestore::host::lookup,
        )
        .expect("open");
        c.begin_write(&mut shards).expect("begin");
        for (s, mortal) in shards.iter_mut().enumerate() {
            c.record_write(s).expect("record");
            let shard = &mut mortal.shard;
            let new = new_ids()[s];
            let data = png(50 + s as u32);
            shard
                .insert(&row(new, &format!("new{new}"), &data), &data)
                .expect("insert");
            let id = renamed()[s];
            let image = png(70 + s as u32);
            shard
                .update(&row(id, &format!("renamed{id}"), &image), Some(&image))
                .expect("update");
            shard.delete(deleted()[s]).expect("delete");
        }
        match c.sync(&mut shards, None) {
            Ok(()) => {
                acknowledged = true;
                c.commit(&mut shards);
            }
            Err(_) => c.rollback(&mut shards),
        }
    });
    (died, acknowledged)
}

#[test]
fn a_writer_dying_at_any_call_leaves_every_transaction_whole_or_absent_on_every_server() {
    let Some(f) = Fixture::new(&format!("sweep_{}", std::process::id())) else {
        return;
    };
    let mut deaths = 0;
    for nth in 1.. {
        let death = Death {
            step: "",
            nth,
            after: nth % 2 == 0,
        };
        // Each run starts from the baseline: a transaction that committed is undone by one
        // of its own (`restore_baseline`).
        let (died, acknowledged) = write(&f, death);
        let mut shards = f.recover();
        let found = f.rows(&mut shards);
        assert!(
            found == baseline() || found == after_transaction(),
            "death at call {nth}: a transaction in part: {found:?}"
        );
        if acknowledged {
            assert_eq!(
                found,
                after_transaction(),
                "death at call {nth}: acknowledged, lost"
            );
        }
        for shard in shards.iter_mut() {
            assert_eq!(
                shard.prepared().expect("prepared"),
                vec![],
                "death at call {nth}: left prepared on {}",
                shard.name()
            );
        }
        if !died {
            break;
        }
        deaths += 1;
        if found != baseline() {
            restore_baseline(&f, &mut shards);
        }
    }
    eprintln!("the writer died at {deaths} calls in turn");
    assert!(deaths >= 10, "the writer died only {deaths} times");
}

/// Puts the baseline back after a transaction that committed.
fn restore_baseline(f: &Fixture, shards: &mut [ServerShard]) {
    let mut c = Coordinator::open(
        &f.config,
        f.table_id,
        shards,
        false,
        imagestore::host::lookup,
    )
    .expect("open");
    c.begin_write(shards).expect("begin");
    for (s, shard) in shards.iter_mut().enumerate() {
        c.record_write(s).expect("record");
        shard.delete(new_ids()[s]).expect("delete new");
        let id = renamed()[s];
        let image = png(id as u32);
        shard
            .update(&row(id, &format!("row{id}"), &image), Some(&image))
            .expect("rename back");
        let id = deleted()[s];
        let image = png(id as u32);
        shard
            .insert(&row(id, &format!("row{id}"), &image), &image)
            .expect("insert back");
    }
    c.sync(shards, None).expect("sync");
    c.commit(shards);
    assert_eq!(f.rows(shards), baseline());
}

#[test]
fn a_server_listed_at_the_wrong_place_without_the_table_or_down_is_refused() {
    let Some(f) = Fixture::new(&format!("refuse_{}", std::process::id())) else {
        return;
    };
    // Listed at another place than it holds.
    let wrong = ServerShard::open(
        f.addresses[0].clone(),
        &f.name,
        (1, SHARDS),
        &[],
        two_phase(),
        TIMEOUT_MS,
    );
    let message = wrong.err().expect("refused").to_string();
    assert!(message.contains("holds shard 0 of 3"), "{message}");
    // A database holding no such table.
    let missing = ServerShard::open(
        f.addresses[0].clone(),
        "no_such_table",
        (0, 1),
        &[],
        two_phase(),
        TIMEOUT_MS,
    );
    let message = missing.err().expect("refused").to_string();
    assert!(
        message.contains("holds no imagestore table named no_such_table"),
        "{message}"
    );
    // The same name made again.
    let again = ServerShard::create(
        f.addresses[1].clone(),
        &f.name,
        [9; 16],
        (1, SHARDS),
        &[],
        two_phase(),
        TIMEOUT_MS,
    );
    let message = again.err().expect("refused").to_string();
    assert!(
        message.contains("already holds an imagestore table"),
        "{message}"
    );
    // A server that is not there.
    let down = Address::parse("postgresql://postgres@127.0.0.1:1/postgres").unwrap();
    let e = ServerShard::open(down, &f.name, (0, SHARDS), &[], two_phase(), 2000)
        .err()
        .expect("refused");
    assert_eq!(e.sqlite_code(), rusqlite::ffi::SQLITE_CANTOPEN, "{e}");
}

#[test]
fn a_server_that_cannot_prepare_is_refused_at_create_and_at_open() {
    let Some(unfit) = start(1, "max_prepared_transactions = 0") else {
        return;
    };
    let address = Address::parse(&unfit.urls[0]).expect("address");
    let e = ServerShard::create(
        address.clone(),
        "unfit",
        [5; 16],
        (0, 1),
        &[],
        two_phase(),
        TIMEOUT_MS,
    )
    .err()
    .expect("refused");
    assert_eq!(e.sqlite_code(), rusqlite::ffi::SQLITE_CANTOPEN, "{e}");
    assert!(
        e.to_string().contains("max_prepared_transactions = 0"),
        "{e}"
    );
    // Nothing was made there.
    let e = ServerShard::open(address, "unfit", (0, 1), &[], two_phase(), TIMEOUT_MS)
        .err()
        .expect("refused");
    assert!(
        e.to_string()
            .contains("holds no imagestore table named unfit"),
        "{e}"
    );
}

/// Ends the backends on `url`'s server that have a transaction open on table `table_id` (their
/// last statement named its schema), as a server restart or a network cut would; other tests'
/// connections are left alone.
fn terminate_open_transactions(url: &str, table_id: &TableId) {
    let hex: String = table_id.iter().map(|b| format!("{b:02x}")).collect();
    let sql = format!(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
         WHERE application_name = 'imagestore' AND state LIKE 'idle in transaction%'
         AND query LIKE '%{hex}%'"
    );
    let done = std::process::Command::new("psql")
        .args(["-X", "-q", "-d", url, "-c", &sql])
        .output()
        .expect("psql");
    assert!(done.status.success(), "{done:?}");
}

#[test]
fn a_connection_lost_mid_transaction_fails_what_follows_and_never_runs_it_outside() {
    let Some(f) = Fixture::new(&format!("lost_{}", std::process::id())) else {
        return;
    };
    let mut shards = f.shards();
    let shard = &mut shards[0];
    shard.begin_write().expect("begin");
    let data = png(40);
    let id = ids_on(0, 500).next().unwrap();
    shard
        .insert(&row(id, "lost", &data), &data)
        .expect("insert");
    terminate_open_transactions(&servers().unwrap().urls[0], &f.table_id);
    let later = ids_on(0, id + 1).next().unwrap();
    // The first call finds the connection gone; the next ones refuse to make a new one, which
    // would run them outside the transaction (committed at once, alone).
    assert!(shard.insert(&row(later, "later", &data), &data).is_err());
    for _ in 0..2 {
        let e = shard
            .insert(&row(later, "later", &data), &data)
            .expect_err("refused");
        assert_eq!(e.sqlite_code(), rusqlite::ffi::SQLITE_IOERR, "{e}");
    }
    shard.end().expect("end");
    // Neither row is there; the shard works again once the transaction is ended.
    assert_eq!(f.rows(&mut shards), baseline());
}

// ---- the fence of a three-phase table ------------------------------------------------------

/// Shard 0 of 1 of a new three-phase table `name` on the first server, as two hosts open it:
/// `(writer, other)`, each with its own writer token (`writer`'s the lower, drawn first).
fn three_phase_pair(name: &str) -> Option<(ServerShard, ServerShard)> {
    let address = Address::parse(&servers()?.urls[0]).expect("address");
    let table_id: TableId = *blake3::hash(name.as_bytes())
        .as_bytes()
        .first_chunk()
        .unwrap();
    let (writer_token, other_token) = (WriterToken::default(), WriterToken::default());
    writer_token.set(10);
    other_token.set(11);
    let commit = (Protocol::ThreePhase, writer_token.clone());
    let writer = ServerShard::create(
        address.clone(),
        name,
        table_id,
        (0, 1),
        &[],
        commit,
        TIMEOUT_MS,
    )
    .expect("create shard");
    let commit = (Protocol::ThreePhase, other_token.clone());
    let other =
        ServerShard::open(address, name, (0, 1), &[], commit, TIMEOUT_MS).expect("open shard");
    Some((writer, other))
}

/// Prepares transaction `txid` on `shard`, writing one row.
fn prepare_one(shard: &mut ServerShard, txid: u64) {
    shard.begin_write().expect("begin");
    let data = png(12);
    shard
        .insert(&row(txid as i64, "fenced", &data), &data)
        .expect("insert");
    shard.prepare(txid, &[0], None).expect("prepare");
}

/// Whether `shard` reads `txid` as prepared and pre-committed: `(prepared, pre_committed)`.
fn held(shard: &mut ServerShard, txid: u64) -> (bool, bool) {
    let records = shard.prepared().expect("prepared");
    let record = records.iter().find(|r| r.txid == txid);
    (record.is_some(), record.is_some_and(|r| r.pre_committed))
}

fn refused(outcome: imagestore::error::Result<()>) -> bool {
    match outcome {
        Err(e) => {
            assert_eq!(e.sqlite_code(), rusqlite::ffi::SQLITE_BUSY, "{e}");
            assert!(
                e.to_string()
                    .contains("another connection took this table over"),
                "{e}"
            );
            true
        }
        Ok(()) => false,
    }
}

fn drop_table(shard: &ServerShard, name: &str) {
    ServerShard::drop_named(shard.address(), name, 0, 1, TIMEOUT_MS).expect("drop");
}

#[test]
fn a_taken_over_writer_and_its_late_statements_are_refused_by_the_fence() {
    let name = format!("fence_{}", std::process::id());
    let Some((mut writer, mut other)) = three_phase_pair(&name) else {
        return;
    };
    prepare_one(&mut writer, 100);
    writer.pre_commit(100).expect("pre-commit");
    assert_eq!(held(&mut other, 100), (true, true));
    // Its own withdrawal fences off its own pre-commit landing late (the same statement, with
    // the same token, sent again after it).
    writer.withdraw_pre_commit(100).expect("withdraw");
    assert_eq!(held(&mut other, 100), (true, false));
    assert!(refused(writer.pre_commit(100)));
    assert_eq!(held(&mut other, 100), (true, false));
    // Another host takes over (recovery, its token the greater): the first writer's steps are
    // refused from then on, whichever they are; the new holder's go through.
    other.take_over().expect("take over");
    assert!(refused(writer.pre_commit(100)));
    assert!(refused(writer.withdraw_pre_commit(100)));
    assert!(refused(writer.take_over()));
    other.pre_commit(100).expect("the new holder pre-commits");
    assert_eq!(held(&mut writer, 100), (true, true));
    assert!(refused(writer.withdraw_pre_commit(100)));
    assert_eq!(held(&mut writer, 100), (true, true));
    // A pre-commit of a transaction the server does not hold prepared is refused, as such.
    let e = other.pre_commit(101).expect_err("not prepared");
    assert!(e.to_string().contains("is not prepared there"), "{e}");
    other.finalize(100).expect("finalize");
    assert_eq!(held(&mut other, 100), (false, false));
    drop_table(&other, &name);
}

/// A session of `psql` on `url` holding the fence row of `schema` locked until dropped.
struct FenceHeld(std::process::Child);

impl FenceHeld {
    fn new(url: &str, schema: &str) -> FenceHeld {
        use std::io::{BufRead, Write};
        let mut psql = std::process::Command::new("psql")
            .args(["-X", "-q", "-At", "-d", url])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("psql");
        let stdin = psql.stdin.as_mut().expect("stdin");
        writeln!(
            stdin,
            "BEGIN; SELECT 'locked' FROM {schema}.fence FOR UPDATE;"
        )
        .expect("lock");
        stdin.flush().expect("flush");
        // Held once psql says so.
        let mut line = String::new();
        let stdout = psql.stdout.as_mut().expect("stdout");
        std::io::BufReader::new(stdout)
            .read_line(&mut line)
            .expect("read");
        assert_eq!(line.trim(), "locked");
        FenceHeld(psql)
    }

    /// Statements on the fence of `schema` waiting for a lock.
    fn waiters(url: &str, schema: &str) -> usize {
        let sql = format!(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'imagestore' \
             AND wait_event_type = 'Lock' AND query LIKE '%{}%fence%'",
            schema.trim_matches('"')
        );
        let out = std::process::Command::new("psql")
            .args(["-X", "-At", "-d", url, "-c", &sql])
            .output()
            .expect("psql");
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .unwrap_or(0)
    }

    fn wait_for(url: &str, schema: &str, waiters: usize) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while FenceHeld::waiters(url, schema) < waiters {
            assert!(std::time::Instant::now() < deadline, "never waited");
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }
}

impl Drop for FenceHeld {
    fn drop(&mut self) {
        // Closing psql's input ends its session, and the row lock with it.
        drop(self.0.stdin.take());
        let _ = self.0.wait();
    }
}

/// A pre-commit and another host's take-over sent at the same moment, queued behind the same
/// row lock in either order: the pre-commit succeeds exactly when the take-over's recovery
/// then reads it (never one without the other).
#[test]
fn a_pre_commit_racing_a_take_over_is_read_by_it_or_refused() {
    let url = &match servers() {
        Some(servers) => servers,
        None => return,
    }
    .urls[0];
    for (round, pre_commit_first) in [true, false, true, false].into_iter().enumerate() {
        let name = format!("race_{}_{round}", std::process::id());
        let (mut writer, mut other) = three_phase_pair(&name).expect("servers");
        prepare_one(&mut writer, 200);
        let schema = writer.schema().to_string();
        let lock = FenceHeld::new(url, &schema);
        let (pre_committed, read) = std::thread::scope(|scope| {
            fn pre_commit(writer: &mut ServerShard) -> bool {
                writer.pre_commit(200).is_ok()
            }
            fn take_over(other: &mut ServerShard) -> bool {
                other.take_over().expect("take over");
                held(other, 200).1
            }
            let (writer, other) = (&mut writer, &mut other);
            let (first, second) = if pre_commit_first {
                let first = scope.spawn(move || pre_commit(writer));
                FenceHeld::wait_for(url, &schema, 1);
                (first, scope.spawn(move || take_over(other)))
            } else {
                let first = scope.spawn(move || take_over(other));
                FenceHeld::wait_for(url, &schema, 1);
                (scope.spawn(move || pre_commit(writer)), first)
            };
            FenceHeld::wait_for(url, &schema, 2);
            drop(lock);
            (first.join().unwrap(), second.join().unwrap())
        });
        assert_eq!(pre_committed, read, "round {round}");
        assert_eq!(pre_committed, pre_commit_first, "round {round}");
        other.abort_prepared(200).expect("abort");
        drop_table(&other, &name);
    }
}

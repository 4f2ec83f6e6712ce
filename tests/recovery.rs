//! Recovery after a crash at each step of the commit protocol, on real shard files, driven
//! below the SQL layer.
//!
//! Each test commits a baseline through SQL; then a writer runs the real coordinator over the
//! real shards, each wrapped so that the writer dies (a panic unwinds out of the coordinator, and
//! nothing more of it runs) at a chosen call: the `n`th of a named protocol step, before or after
//! the shard acts, or, in the sweeps, every call in turn. A fresh connection then opens the table
//! (which runs recovery) and the test checks the oracle: the transaction is whole or absent
//! (whole if its xSync had returned), and no shard keeps prepare records, before-states or orphan
//! blobs.
//!
//! Run with `cargo test --no-default-features --features bundled` (links SQLite into the test).

use std::io::Cursor;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

mod common;

use common::mortal::{after, before, dies, Calls, Death, Mortal};
use imagestore::commit::Coordinator;
use imagestore::config::{HostDatabase, TableConfig};
use imagestore::journal::{Journal, Record, TableId};
use imagestore::placement::shard_of;
use imagestore::shard::{NewRow, Shard};
use rusqlite::Connection;

fn png(side: u32) -> Vec<u8> {
    let mut out = Vec::new();
    image::RgbImage::from_pixel(side, side, image::Rgb([side as u8, 7, 9]))
        .write_to(&mut Cursor::new(&mut out), image::ImageFormat::Png)
        .expect("encode png");
    out
}

struct Fixture {
    _dir: tempfile::TempDir,
    db: PathBuf,
    /// The table's arguments.
    args: Vec<String>,
}

impl Fixture {
    /// A 2-shard table holding rows 1..=8, named "row<id>".
    fn new() -> Fixture {
        Fixture::with_options("")
    }

    /// The same, with more table arguments.
    fn with_options(options: &str) -> Fixture {
        // On a RAM disk where there is one: the sweeps make hundreds of tables.
        let dir = match Path::new("/dev/shm").is_dir() {
            true => tempfile::tempdir_in("/dev/shm"),
            false => tempfile::tempdir(),
        }
        .expect("tempdir");
        let db = dir.path().join("lib.db");
        let conn = open(&db);
        conn.execute_batch(&format!(
            "CREATE VIRTUAL TABLE t USING imagestore(shards=2{options})"
        ))
        .expect("create");
        for id in 1..=8 {
            conn.execute(
                "INSERT INTO t(id, name, data) VALUES (?1, ?2, ?3)",
                rusqlite::params![id, format!("row{id}"), png(id as u32)],
            )
            .expect("insert");
        }
        let args = std::iter::once("shards=2".to_string())
            .chain(
                options
                    .split(',')
                    .map(str::trim)
                    .filter(|a| !a.is_empty())
                    .map(str::to_string),
            )
            .collect();
        Fixture {
            _dir: dir,
            db,
            args,
        }
    }

    fn shard_path(&self, i: usize) -> PathBuf {
        self.db.with_file_name(format!("lib.t.shard{i}.db"))
    }

    fn journal_path(&self) -> PathBuf {
        self.db.with_file_name("lib.t.shard0.db.imagestore-journal")
    }

    fn shards(&self) -> Vec<Shard> {
        (0..2)
            .map(|i| Shard::open(&self.shard_path(i), false, &[], 1000).expect("open shard"))
            .collect()
    }

    /// Rows as (id, name) in id order, read through a fresh connection (which runs recovery).
    fn rows(&self) -> Vec<(i64, String)> {
        let conn = open(&self.db);
        let mut stmt = conn
            .prepare("SELECT id, name FROM t ORDER BY id")
            .expect("prepare");
        let rows = stmt
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .expect("query");
        rows.collect::<rusqlite::Result<_>>().expect("rows")
    }

    /// Checks that no shard keeps protocol state or an unreferenced blob.
    fn assert_clean(&self) {
        for i in 0..2 {
            let conn = Connection::open(self.shard_path(i)).expect("open shard file");
            let count = |sql: &str| conn.query_row(sql, [], |r| r.get::<_, i64>(0)).expect(sql);
            assert_eq!(
                count("SELECT count(*) FROM imagestore_prepared"),
                0,
                "shard {i} prepare records"
            );
            assert_eq!(
                count("SELECT count(*) FROM imagestore_undo"),
                0,
                "shard {i} before-states"
            );
            assert_eq!(
                count("SELECT count(*) FROM blobs"),
                count("SELECT count(*) FROM images"),
                "shard {i}: every blob belongs to one row"
            );
            assert_eq!(
                count(
                    "SELECT count(*) FROM images WHERE blob_id NOT IN (SELECT blob_id FROM blobs)"
                ),
                0,
                "shard {i}: every row has its blob"
            );
        }
    }
}

fn open(db: &Path) -> Connection {
    let conn = Connection::open(db).expect("open db");
    imagestore::register(&conn).expect("register");
    conn
}

fn baseline() -> Vec<(i64, String)> {
    (1..=8).map(|id| (id, format!("row{id}"))).collect()
}

/// The first id above 100 placed on `shard` of 2.
fn new_id_on(shard: usize) -> i64 {
    (101..).find(|&id| shard_of(id, 2) == shard).expect("an id")
}

/// An existing id (1..=8) on `shard`.
fn old_id_on(shard: usize) -> i64 {
    (1..=8).find(|&id| shard_of(id, 2) == shard).expect("an id")
}

/// What a writer's run showed.
struct Run {
    /// The rows the transaction leaves if it commits.
    after: Vec<(i64, String)>,
    /// Whether its xSync returned Ok (the commit was acknowledged).
    acknowledged: bool,
    died: bool,
    /// The calls the shards took.
    calls: u32,
}

/// The shards of `f`, each mortal under `calls`.
fn mortal_shards(f: &Fixture, calls: &Arc<Mutex<Calls>>) -> Vec<Mortal<Shard>> {
    f.shards()
        .into_iter()
        .map(|shard| Mortal {
            shard,
            calls: Arc::clone(calls),
        })
        .collect()
}

fn config(f: &Fixture) -> TableConfig {
    let args: Vec<&str> = f.args.iter().map(String::as_str).collect();
    TableConfig::parse("t", &args, HostDatabase { file: Some(&f.db) }).expect("config")
}

/// A transaction on both shards, run by the real coordinator: on shard 0 it inserts a new row
/// and renames an old one with a new image; on shard 1 it deletes an old row. The writer dies
/// at `death`, if given.
fn write(f: &Fixture, death: Option<Death>) -> Run {
    write_on(f, death, false)
}

/// [`write`], on the prepared path if `prepared` whatever the table's `logged_commit_max`.
fn write_on(f: &Fixture, death: Option<Death>, prepared: bool) -> Run {
    let calls = Arc::new(Mutex::new(Calls {
        death,
        ..Calls::default()
    }));
    let (new_id, renamed, deleted) = (new_id_on(0), old_id_on(0), old_id_on(1));
    let mut acknowledged = false;
    let died = dies(|| {
        let mut shards = mortal_shards(f, &calls);
        let mut config = config(f);
        if prepared {
            config.logged_commit_max_bytes = 0;
        }
        let mut c = Coordinator::open(
            &config,
            table_id(f),
            &mut shards,
            false,
            imagestore::host::lookup,
        )
        .expect("open");
        c.begin_write(&mut shards).expect("begin");
        let data = png(20);
        let info = imagestore::images::probe::probe(
            &data,
            1 << 30,
            imagestore::images::probe::Verify::Structure,
        )
        .expect("probe");
        let row = |id: i64, name: &str| NewRow {
            id,
            name: name.to_string().into(),
            format: info.format.clone(),
            width: 20,
            height: 20,
            bytes: data.len() as i64,
            hash: info.hash.clone(),
            user: vec![],
        };
        let txid = c.record_write(0).expect("write 0");
        let s0 = &shards[0].shard;
        s0.insert(txid, &row(new_id, "new"), &data).expect("insert");
        let current = s0.get(renamed).expect("get").expect("row");
        s0.update(txid, &current, &row(renamed, "renamed"), Some(&data))
            .expect("update");
        c.record_write(1).expect("write 1");
        let s1 = &shards[1].shard;
        let current = s1.get(deleted).expect("get").expect("row");
        s1.delete(txid, &current).expect("delete");
        match c.sync(&mut shards, None) {
            Ok(()) => {
                acknowledged = true;
                c.commit(&mut shards);
            }
            Err(_) => c.rollback(&mut shards),
        }
    });
    let mut after: Vec<(i64, String)> = baseline()
        .into_iter()
        .filter(|(id, _)| *id != deleted)
        .map(|(id, name)| match id == renamed {
            true => (id, "renamed".into()),
            false => (id, name),
        })
        .collect();
    after.push((new_id, "new".into()));
    after.sort();
    let calls = calls.lock().unwrap().total;
    Run {
        after,
        acknowledged,
        died,
        calls,
    }
}

/// The writer dies at `death`; returns the rows its transaction would leave.
fn writer_dies(f: &Fixture, death: Death) -> Vec<(i64, String)> {
    let run = write(f, Some(death));
    assert!(run.died, "the writer did not reach {death:?}");
    run.after
}

/// Prepared on both shards, no decision: the writer dies after the second shard's prepare.
/// Returns the rows the transaction would leave.
fn prepared_on_both(f: &Fixture) -> Vec<(i64, String)> {
    let run = write_on(f, Some(PREPARED_BOTH), true);
    assert!(run.died);
    run.after
}

fn table_id(f: &Fixture) -> TableId {
    let conn = Connection::open(f.shard_path(0)).unwrap();
    let hex: String = conn
        .query_row(
            "SELECT value FROM imagestore_meta WHERE key = 'table_id'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    let mut id = [0u8; 16];
    for (i, b) in id.iter_mut().enumerate() {
        *b = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).unwrap();
    }
    id
}

fn journal(f: &Fixture) -> Journal {
    Journal::open_existing(&f.journal_path(), table_id(f))
        .unwrap()
        .expect("journal exists")
}

/// Prepared on both shards, no decision: the writer dies after the second shard's prepare.
const PREPARED_BOTH: Death = Death {
    step: "prepare",
    nth: 2,
    after: true,
};

#[test]
fn crash_after_prepare_without_decision_aborts_everywhere() {
    let f = Fixture::new();
    prepared_on_both(&f);
    assert_eq!(f.rows(), baseline());
    f.assert_clean();
}

#[test]
fn crash_after_decision_commits_everywhere() {
    let f = Fixture::with_options(", logged_commit_max=0");
    let after = writer_dies(&f, before("finalize", 1));
    assert_eq!(f.rows(), after);
    f.assert_clean();
}

#[test]
fn crash_during_finalize_commits_everywhere() {
    let f = Fixture::with_options(", logged_commit_max=0");
    let after = writer_dies(&f, after("finalize", 1));
    assert_eq!(f.rows(), after);
    f.assert_clean();
}

#[test]
fn crash_during_logged_commit_is_replayed() {
    let f = Fixture::new();
    let after = writer_dies(&f, after("commit_logged", 1));
    assert_eq!(f.rows(), after);
    f.assert_clean();
}

/// Every call of the writer in turn, before and after the shard acts, on both paths: whole or
/// absent, whole if acknowledged, and clean; then recovery itself dies at each of its calls.
fn die_at_every_call(options: &str) {
    let clean = write(&Fixture::with_options(options), None);
    assert!(clean.acknowledged && !clean.died);
    for nth in 1..=clean.calls {
        for after in [false, true] {
            let f = Fixture::with_options(options);
            let death = Death {
                step: "",
                nth,
                after,
            };
            let run = write(&f, Some(death));
            assert!(run.died, "{death:?}");
            let rows = f.rows();
            let allowed = match run.acknowledged {
                true => vec![run.after.clone()],
                false => vec![baseline(), run.after.clone()],
            };
            assert!(allowed.contains(&rows), "{death:?} {options}: {rows:?}");
            f.assert_clean();
        }
    }
}

#[test]
fn a_writer_dying_at_any_call_of_a_prepared_commit_leaves_it_whole_or_absent() {
    die_at_every_call(", logged_commit_max=0");
}

#[test]
fn a_writer_dying_at_any_call_of_a_logged_commit_leaves_it_whole_or_absent() {
    die_at_every_call("");
}

/// Recovery run by the real coordinator over mortal shards, dying at its `nth` call; returns
/// whether it died (else it finished).
fn recovery_dies(f: &Fixture, nth: u32) -> bool {
    recovery_dies_at(
        f,
        Death {
            step: "",
            nth,
            after: nth.is_multiple_of(2),
        },
    )
}

/// Recovery run by the real coordinator over mortal shards, dying at `death`; returns whether
/// it died.
fn recovery_dies_at(f: &Fixture, death: Death) -> bool {
    let calls = Arc::new(Mutex::new(Calls {
        death: Some(death),
        ..Calls::default()
    }));
    dies(|| {
        let mut shards = mortal_shards(f, &calls);
        let _ = Coordinator::open(
            &config(f),
            table_id(f),
            &mut shards,
            false,
            imagestore::host::lookup,
        );
    })
}

#[test]
fn crash_during_recovery_is_recovered() {
    // Recovery dies at each of its calls in turn, after writers died undecided, decided, and
    // half-way through a logged commit; the next open finishes it.
    let cases = [
        (PREPARED_BOTH, false),
        (before("finalize", 1), true),
        (after("commit_logged", 1), true),
    ];
    for (death, commits) in cases {
        let prepared = death.step != "commit_logged";
        for nth in 1.. {
            let f = Fixture::new();
            let after = write_on(&f, Some(death), prepared).after;
            if !recovery_dies(&f, nth) {
                break;
            }
            let expected = if commits { after } else { baseline() };
            assert_eq!(f.rows(), expected, "{death:?}, recovery died at call {nth}");
            f.assert_clean();
        }
    }
}

#[test]
fn a_torn_decision_record_aborts() {
    let f = Fixture::new();
    prepared_on_both(&f);
    let txid = f.shards()[0].last_txid().unwrap();
    let record = journal(&f).encode(&Record::commit(txid, vec![0, 1], None));
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .open(f.journal_path())
        .unwrap();
    std::io::Write::write_all(&mut file, &record[..record.len() - 3]).unwrap();
    assert_eq!(f.rows(), baseline());
    f.assert_clean();
}

#[test]
fn a_missing_journal_with_prepared_shards_is_refused_not_guessed() {
    let f = Fixture::new();
    prepared_on_both(&f);
    std::fs::remove_file(f.journal_path()).unwrap();
    let conn = Connection::open(&f.db).unwrap();
    imagestore::register(&conn).unwrap();
    let err = conn
        .prepare("SELECT count(*) FROM t")
        .and_then(|mut s| s.query_row([], |r| r.get::<_, i64>(0)));
    let message = err.expect_err("must refuse").to_string();
    assert!(
        message.contains("journal") && message.contains("missing"),
        "{message}"
    );
    // Still in doubt: nothing was decided behind the user's back.
    let prepared: i64 = Connection::open(f.shard_path(0))
        .unwrap()
        .query_row("SELECT count(*) FROM imagestore_prepared", [], |r| r.get(0))
        .unwrap();
    assert_eq!(prepared, 1);
}

#[test]
fn one_shard_voting_no_aborts_the_transaction_on_every_shard() {
    // Prepared, not logged: only the prepared path asks shards to vote.
    let f = Fixture::with_options(", logged_commit_max=0");
    // Shard 1 refuses every prepare.
    Connection::open(f.shard_path(1))
        .unwrap()
        .execute_batch("CREATE TRIGGER refuse BEFORE INSERT ON imagestore_prepared BEGIN SELECT RAISE(ABORT, 'shard 1 votes no'); END;")
        .unwrap();
    let conn = open(&f.db);
    let result = conn.execute_batch(&format!(
        "BEGIN; UPDATE t SET name = 'changed' WHERE id IN ({}, {}); COMMIT;",
        old_id_on(0),
        old_id_on(1)
    ));
    let message = result.expect_err("a no vote fails the commit").to_string();
    assert!(message.contains("votes no"), "{message}");
    drop(conn);
    assert_eq!(f.rows(), baseline());
    f.assert_clean();
    // A transaction on shard 0 alone does not ask shard 1 and commits.
    let conn = open(&f.db);
    conn.execute("UPDATE t SET name = 'solo' WHERE id = ?1", [old_id_on(0)])
        .unwrap();
    drop(conn);
    assert!(f.rows().contains(&(old_id_on(0), "solo".into())));
}

#[test]
fn transaction_ids_grow_across_reopen() {
    let f = Fixture::new();
    let before = f
        .shards()
        .iter()
        .map(|s| s.last_txid().unwrap())
        .max()
        .unwrap();
    let conn = open(&f.db);
    conn.execute_batch("BEGIN; UPDATE t SET name = 'x'; COMMIT;")
        .unwrap();
    drop(conn);
    let after = f
        .shards()
        .iter()
        .map(|s| s.last_txid().unwrap())
        .max()
        .unwrap();
    assert!(after > before, "{after} > {before}");
    f.assert_clean();
}

/// A person decides what recovery cannot: the prepared transaction, with its journal gone.
fn resolve_after_losing_the_journal(decision: &str) -> (Fixture, Vec<(i64, String)>) {
    let f = Fixture::new();
    let after = prepared_on_both(&f);
    let report = lose_the_journal_and_resolve(&f, decision);
    assert!(report.contains(decision), "{report}");
    (f, after)
}

/// Deletes the journal, then answers `decision` to `imagestore_resolve`; returns its report.
fn lose_the_journal_and_resolve(f: &Fixture, decision: &str) -> String {
    std::fs::remove_file(f.journal_path()).unwrap();
    let conn = Connection::open(&f.db).unwrap();
    imagestore::register(&conn).unwrap();
    conn.query_row("SELECT imagestore_resolve('t', ?1)", [decision], |r| {
        r.get(0)
    })
    .expect("resolve")
}

#[test]
fn a_lost_journal_needs_no_person_where_the_shards_show_the_outcome() {
    // A vote that never finished (aborted), a part undone (aborted), a part finalized
    // (committed): the next open ends each without a person, and makes a new journal.
    let never_voted = Fixture::new();
    assert!(write_on(&never_voted, Some(after("prepare", 1)), true).died);
    let undone = Fixture::new();
    prepared_on_both(&undone);
    assert!(recovery_dies_at(&undone, after("abort_prepared", 1)));
    let finalized = Fixture::with_options(", logged_commit_max=0");
    let committed = writer_dies(&finalized, after("finalize", 1));
    for (f, expected) in [
        (never_voted, baseline()),
        (undone, baseline()),
        (finalized, committed),
    ] {
        std::fs::remove_file(f.journal_path()).unwrap();
        assert_eq!(f.rows(), expected);
        f.assert_clean();
        assert!(f.journal_path().exists());
    }
}

#[test]
fn a_person_cannot_commit_a_transaction_whose_vote_never_finished() {
    // Prepared on shard 0 only: shard 1, which it wrote, never voted, so no decision was ever
    // taken. Committing shard 0 alone would apply it in part.
    let f = Fixture::new();
    let run = write_on(&f, Some(after("prepare", 1)), true);
    assert!(run.died);
    let report = lose_the_journal_and_resolve(&f, "commit");
    assert!(report.contains(r#""aborted":["#), "{report}");
    assert_eq!(f.rows(), baseline());
    f.assert_clean();
}

#[test]
fn a_person_cannot_commit_a_transaction_a_shard_undid() {
    // Prepared on both shards, undecided; recovery aborted shard 0's part and died before
    // shard 1's. Committing shard 1 would apply it in part.
    let f = Fixture::new();
    prepared_on_both(&f);
    assert!(recovery_dies_at(&f, after("abort_prepared", 1)));
    let report = lose_the_journal_and_resolve(&f, "commit");
    assert!(report.contains(r#""aborted":["#), "{report}");
    assert_eq!(f.rows(), baseline());
    f.assert_clean();
}

#[test]
fn a_person_cannot_abort_a_transaction_a_shard_committed() {
    // Decided and finalized on shard 0, still prepared on shard 1: aborting shard 1 would
    // leave it in part.
    let f = Fixture::with_options(", logged_commit_max=0");
    let after = writer_dies(&f, after("finalize", 1));
    let report = lose_the_journal_and_resolve(&f, "abort");
    assert!(report.contains(r#""committed":["#), "{report}");
    assert_eq!(f.rows(), after);
    f.assert_clean();
}

#[test]
fn a_person_can_abort_what_a_lost_journal_left_in_doubt() {
    let (f, _) = resolve_after_losing_the_journal("abort");
    assert_eq!(f.rows(), baseline());
    f.assert_clean();
}

#[test]
fn a_person_can_commit_what_a_lost_journal_left_in_doubt() {
    let (f, after) = resolve_after_losing_the_journal("commit");
    assert_eq!(f.rows(), after);
    f.assert_clean();
}

#[test]
fn resolve_refuses_while_the_journal_decides() {
    let f = Fixture::new();
    let conn = open(&f.db);
    let err = conn
        .query_row("SELECT imagestore_resolve('t', 'abort')", [], |r| {
            r.get::<_, String>(0)
        })
        .expect_err("the journal exists");
    assert!(err.to_string().contains("recovery"), "{err}");
}

// ---- the logged path ------------------------------------------------------------------------

/// Rows as (id, name, hash), read through a fresh connection (which runs recovery).
fn rows_with_hash(f: &Fixture) -> Vec<(i64, String, String)> {
    let conn = open(&f.db);
    let mut stmt = conn
        .prepare("SELECT id, name, hash FROM t ORDER BY id")
        .expect("prepare");
    let rows = stmt
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .expect("query");
    rows.collect::<rusqlite::Result<_>>().expect("rows")
}

/// A transaction over both shards small enough to be logged: on shard 0 a rename, on shard 1 a
/// new image for one row, a deletion and an insertion (so it adds and drops blobs there).
fn logged_transaction(f: &Fixture) {
    let conn = open(&f.db);
    let on_1: Vec<i64> = (1..=8).filter(|&id| shard_of(id, 2) == 1).collect();
    conn.execute_batch("BEGIN").unwrap();
    conn.execute(
        "UPDATE t SET name = 'renamed' WHERE id = ?1",
        [old_id_on(0)],
    )
    .unwrap();
    conn.execute(
        "UPDATE t SET data = ?2 WHERE id = ?1",
        rusqlite::params![on_1[0], png(31)],
    )
    .unwrap();
    conn.execute("DELETE FROM t WHERE id = ?1", [on_1[1]])
        .unwrap();
    conn.execute(
        "INSERT INTO t(id, name, data) VALUES (?1, 'new', ?2)",
        rusqlite::params![new_id_on(1), png(32)],
    )
    .unwrap();
    conn.execute_batch("COMMIT").unwrap();
}

fn shard_files(f: &Fixture, i: usize) -> Vec<PathBuf> {
    ["", "-wal", "-shm"]
        .iter()
        .map(|suffix| {
            let mut name = f.shard_path(i).into_os_string();
            name.push(suffix);
            PathBuf::from(name)
        })
        .collect()
}

/// Copies shard `i`'s files (no connection may be open) into `dir`.
fn save_shard(f: &Fixture, i: usize, dir: &Path) {
    for (k, file) in shard_files(f, i).iter().enumerate() {
        if file.exists() {
            std::fs::copy(file, dir.join(format!("{i}.{k}"))).unwrap();
        }
    }
}

/// A power cut that loses what shard `i` did since [`save_shard`] (nothing of it was synced):
/// its files as they were then.
fn put_back_shard(f: &Fixture, i: usize, dir: &Path) {
    for (k, file) in shard_files(f, i).iter().enumerate() {
        let _ = std::fs::remove_file(file);
        let saved = dir.join(format!("{i}.{k}"));
        if saved.exists() {
            std::fs::copy(saved, file).unwrap();
        }
    }
}

/// What a shard file holds, read directly (no recovery): (id, name) pairs.
fn shard_rows(f: &Fixture, i: usize) -> Vec<(i64, String)> {
    let conn = Connection::open(f.shard_path(i)).unwrap();
    let mut stmt = conn
        .prepare("SELECT id, name FROM images ORDER BY id")
        .unwrap();
    let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?))).unwrap();
    rows.collect::<rusqlite::Result<_>>().unwrap()
}

#[test]
fn a_shard_that_lost_a_logged_commit_gets_it_back_from_the_journal() {
    let f = Fixture::new();
    let saved = tempfile::tempdir().unwrap();
    // A power cut loses a logged commit's unsynced shard commit: played by putting back the
    // shard's files as they were before it.
    save_shard(&f, 1, saved.path());
    let before_on_1 = shard_rows(&f, 1);
    let journal_before = journal(&f).len_bytes();
    logged_transaction(&f);
    let logged = journal(&f).len_bytes() - journal_before;
    assert!(
        logged > 1000,
        "the images went into the journal ({logged} bytes)"
    );
    let committed = rows_with_hash(&f);
    put_back_shard(&f, 1, saved.path());
    assert_eq!(shard_rows(&f, 1), before_on_1, "the shard lost the commit");
    assert_eq!(rows_with_hash(&f), committed);
    assert_ne!(shard_rows(&f, 1), before_on_1);
    f.assert_clean();
    // Replay happens once: reopening again changes nothing.
    assert_eq!(rows_with_hash(&f), committed);
}

/// Makes shard 1 fail the step that raises its `last_txid` (its commit on the logged path, and a
/// replay) until the returned connection drops the trigger `fail`.
fn fail_shard_1_commits(f: &Fixture) -> Connection {
    let shard_1 = Connection::open(f.shard_path(1)).unwrap();
    shard_1
        .execute_batch(
            "CREATE TRIGGER fail BEFORE UPDATE ON imagestore_meta BEGIN SELECT RAISE(ABORT, 'shard 1 fails'); END;",
        )
        .unwrap();
    shard_1
}

/// A logged transaction renaming one row on each shard to 'changed'.
fn rename_on_both_shards(conn: &Connection) -> rusqlite::Result<()> {
    conn.execute_batch(&format!(
        "BEGIN; UPDATE t SET name = 'changed' WHERE id IN ({}, {}); COMMIT;",
        old_id_on(0),
        old_id_on(1)
    ))
}

#[test]
fn a_shard_failing_after_a_logged_decision_is_replayed_before_anyone_reads() {
    let f = Fixture::new();
    let on_1 = old_id_on(1);
    let shard_1 = fail_shard_1_commits(&f);
    let conn = open(&f.db);
    rename_on_both_shards(&conn)
        .expect("the decision is made before the shards commit: COMMIT succeeds");
    // Shard 0 has the change, shard 1 does not; no reader may see that.
    let read = conn.query_row("SELECT count(*) FROM t WHERE name = 'changed'", [], |r| {
        r.get::<_, i64>(0)
    });
    let message = read
        .expect_err("replay fails while the trigger is there")
        .to_string();
    assert!(message.contains("shard 1 fails"), "{message}");
    drop(conn);
    shard_1.execute_batch("DROP TRIGGER fail").unwrap();
    drop(shard_1);
    let rows = f.rows();
    assert!(rows.contains(&(old_id_on(0), "changed".into())));
    assert!(rows.contains(&(on_1, "changed".into())));
    f.assert_clean();
}

#[test]
fn a_transaction_over_logged_commit_max_is_prepared_instead() {
    let f = Fixture::with_options(", logged_commit_max=100");
    let before = journal(&f).len_bytes();
    logged_transaction(&f);
    let grown = journal(&f).len_bytes() - before;
    assert!(
        grown < 100,
        "a COMMIT record, not the images ({grown} bytes)"
    );
    let rows = f.rows();
    assert!(rows.contains(&(new_id_on(1), "new".into())));
    f.assert_clean();
}

#[test]
fn a_lost_journal_with_a_logged_commit_under_way_is_refused_until_resolved() {
    let f = Fixture::new();
    // Shard 1 fails its commit after the decision: the mark stays set.
    let shard_1 = fail_shard_1_commits(&f);
    rename_on_both_shards(&open(&f.db)).unwrap();
    shard_1.execute_batch("DROP TRIGGER fail").unwrap();
    std::fs::remove_file(f.journal_path()).unwrap();
    let conn = Connection::open(&f.db).unwrap();
    imagestore::register(&conn).unwrap();
    let refused = conn
        .query_row("SELECT count(*) FROM t", [], |r| r.get::<_, i64>(0))
        .expect_err("in doubt")
        .to_string();
    assert!(
        refused.contains("missing") && refused.contains("logged"),
        "{refused}"
    );
    conn.query_row("SELECT imagestore_resolve('t', 'abort')", [], |r| {
        r.get::<_, String>(0)
    })
    .expect("resolve");
    drop(conn);
    // Accepted as the shards are: shard 0 has the change, shard 1 does not.
    let rows = f.rows();
    assert!(rows.contains(&(old_id_on(0), "changed".into())));
    assert!(rows.contains(&(old_id_on(1), format!("row{}", old_id_on(1)))));
    f.assert_clean();
}

#[test]
fn a_power_cut_that_takes_an_abort_and_a_logged_commit_gets_both_back_in_order() {
    let f = Fixture::new();
    // A writer prepared both shards and died before its decision (prepares are synced).
    prepared_on_both(&f);
    let saved = tempfile::tempdir().unwrap();
    for i in 0..2 {
        save_shard(&f, i, saved.path());
    }
    // The next open aborts it (not synced); a logged commit then changes the same rows and adds
    // images, whose blob ids are those the abort freed.
    logged_transaction(&f);
    let committed = rows_with_hash(&f);
    // A power cut takes both the abort and the logged commit from both shards.
    for i in 0..2 {
        put_back_shard(&f, i, saved.path());
    }
    let prepared: i64 = Connection::open(f.shard_path(0))
        .unwrap()
        .query_row("SELECT count(*) FROM imagestore_prepared", [], |r| r.get(0))
        .unwrap();
    assert_eq!(prepared, 1, "back at the prepare point");
    assert_eq!(rows_with_hash(&f), committed);
    f.assert_clean();
}

//! SQL functions for operating a table: checking it, and seeing transactions left in doubt.
//!
//! ```sql
//! SELECT imagestore_check('images');         -- JSON: rows and bytes checked, and every problem
//! SELECT imagestore_transactions('images');  -- JSON: prepared transactions and their state
//! SELECT imagestore_resolve('images', 'abort'); -- decide transactions left in doubt
//! SELECT imagestore_derive('images', 'thumb', 'thumbnail', 256, 'webp'); -- see `derive`
//! SELECT imagestore_derive_missing('images', 'thumb', 'thumbnail', 256, 'webp'); -- new rows
//! ```
//! `imagestore_resolve` is for the one case recovery cannot decide: the decision records are
//! missing (a local journal deleted or damaged, a server anchor's decision rows deleted) while
//! shards hold prepared transactions, and the table refuses to open. It reads the table's
//! definition from the schema, opens the shards itself, applies the decision to every prepared
//! transaction the records cannot decide, and makes the records whole again.
//! The table is named as SQL names it (`table`, `schema.table`, a quoted name; see `table_name`). Both read one consistent snapshot of every
//! shard, like a query on the table.

use std::ffi::c_int;
use std::path::Path;

use rusqlite::Connection;

use rusqlite::types::Value;

use crate::commit::{
    accept_lost_commits, resolve_in_doubt, resolve_through_control, Participant, Resolution,
    Resolved,
};
use crate::config::{module_arguments, TableConfig};
use crate::derive::{Operation, Rows};
use crate::error::{Error, Result};
use crate::placement::shard_of;
use crate::sqlfn::{self, Call, Kind};
use crate::table::{
    open_server_shards, open_shards, table_config, with_open_table, TableCore, TableShard,
};
use crate::table_name::{self, quote, TableName};

/// Verifies every shard's integrity, every blob against its BLAKE3 hash, placement, and that no
/// blob is orphaned. Problems are reported, not raised: a damaged shard still lets the others
/// be checked.
fn check(core: &TableCore) -> Result<String> {
    core.with_snapshot(|core| {
        let mut shards = core.shards.borrow_mut();
        let count = shards.len();
        let (mut rows, mut bytes, mut problems) = (0u64, 0u64, Vec::new());
        for (txid, index) in core.coordinator.borrow_mut().lost_commits(&mut shards)? {
            problems.push(format!(
                "shard {index} ({}): transaction {txid}, which the journal committed, is missing: the shard lost commits after they were made durable (its file or WAL was damaged or replaced); restore the shard from a backup",
                shards[index].name()
            ));
        }
        for (index, shard) in shards.iter().enumerate() {
            let file = shard.name();
            let local = match shard {
                TableShard::Local(shard) => Some(shard),
                TableShard::Server(_) => None,
            };
            let mut checked = || -> Result<()> {
                // A server checks its own pages; a local file is asked to.
                if let Some(shard) = local {
                    for line in shard.integrity_problems()? {
                        problems.push(format!("shard {index} ({file}): integrity_check: {line}"));
                    }
                }
                shard.for_each_image(|id, hash, data| {
                    rows += 1;
                    match data {
                        None => problems.push(format!("shard {index} ({file}): row {id}: image bytes missing")),
                        Some(data) => {
                            bytes += data.len() as u64;
                            let actual = blake3::hash(data).to_hex();
                            if actual.as_str() != hash {
                                problems.push(format!(
                                    "shard {index} ({file}): row {id}: image bytes do not match their hash (stored {hash}, computed {actual})"
                                ));
                            }
                        }
                    }
                    let home = shard_of(id, count);
                    if home != index {
                        problems.push(format!("shard {index} ({file}): row {id} belongs on shard {home}"));
                    }
                })?;
                // On a server an image is in its row: none can be orphaned.
                let orphans = local.map_or(Ok(0), |shard| shard.orphan_blob_count())?;
                if orphans > 0 {
                    problems.push(format!(
                        "shard {index} ({file}): {orphans} image blobs belong to no row"
                    ));
                }
                Ok(())
            };
            if let Err(e) = checked() {
                problems.push(format!("shard {index} ({file}): {}", e.detail()));
            }
        }
        Ok(serde_json::json!({
            "table": core.config.table_name,
            "shards": count,
            "protocol": core.config.protocol.name(),
            "rows": rows,
            "bytes": bytes,
            "ok": problems.is_empty(),
            "problems": problems,
        })
        .to_string())
    })
}

/// Prepared transactions found on the shards, each with its shards, the table's protocol, the
/// shards that hold it pre-committed (three-phase) and its state: `committed` (decided;
/// recovery finalizes it) or `undecided` (recovery aborts it).
fn transactions(core: &TableCore) -> Result<String> {
    /// What the shards hold of one transaction.
    #[derive(Default)]
    struct Found {
        on: Vec<usize>,
        pre_committed: Vec<usize>,
        decided_by: Option<String>,
    }
    core.with_snapshot(|core| {
        let mut shards = core.shards.borrow_mut();
        let mut found: std::collections::BTreeMap<u64, Found> = Default::default();
        for (index, shard) in shards.iter_mut().enumerate() {
            for record in shard.prepared()? {
                let entry = found.entry(record.txid).or_default();
                entry.on.push(index);
                if record.pre_committed {
                    entry.pre_committed.push(index);
                }
                entry.decided_by = entry.decided_by.take().or(record.decided_by);
            }
        }
        let mut coordinator = core.coordinator.borrow_mut();
        let protocol = coordinator.protocol().name();
        let mut items = Vec::new();
        for (txid, f) in &found {
            let decided = coordinator.is_decided(
                *txid,
                f.decided_by.as_deref(),
                !f.pre_committed.is_empty(),
            )?;
            items.push(serde_json::json!({
                "txid": txid,
                "shards": f.on,
                "protocol": protocol,
                "pre_committed": f.pre_committed,
                "state": if decided { "committed" } else { "undecided" },
            }));
        }
        Ok(serde_json::Value::from(items).to_string())
    })
}

/// Runs `body` on the table named by the function's first argument (see `table_name`),
/// connecting it first if this connection has not used it yet.
pub(crate) fn with_table_argument<T>(
    call: &Call<'_>,
    body: impl FnOnce(&TableCore) -> Result<T>,
) -> Result<T> {
    let db = call.connection()?;
    let table = imagestore_table(&db, &call.text(0, "give the table's name as TEXT")?)?;
    // Preparing a statement on the table connects it if this connection has not yet.
    db.prepare(&format!(
        "SELECT 1 FROM {}.{} LIMIT 0",
        quote(&table.schema),
        quote(&table.table)
    ))
    .map_err(Error::host(format!("{}.{}", table.schema, table.table)))?;
    with_open_table(call.handle(), &table.schema, &table.table, body)
}

/// The imagestore table that `name` denotes, as SQL resolves it.
fn imagestore_table(db: &Connection, name: &str) -> Result<TableName> {
    let table = table_name::resolve(db, name)?;
    let is_imagestore = module_arguments(&table.sql).is_some()
        && table.sql.to_ascii_lowercase().contains("using imagestore");
    if !is_imagestore {
        return Err(Error::BadArgument(format!(
            "{}.{} is not an imagestore table",
            table.schema, table.table
        )));
    }
    Ok(table)
}

/// `imagestore_derive(table, column, operation, args...)` and `imagestore_derive_missing` (the
/// same, for the rows whose column is NULL): see `derive`.
fn derive(call: &Call<'_>, which: Rows) -> Result<String> {
    if call.args.len() < 3 {
        return Err(Error::BadArgument(
            "imagestore_derive(table, column, operation, arguments...)".into(),
        ));
    }
    let column = call.text(1, "give the column's name as TEXT")?;
    let operation = call.text(2, "give the operation as TEXT")?;
    let args = call.args[3..]
        .iter()
        .map(|v| Value::try_from(*v).map_err(|e| Error::WrongType(e.to_string())))
        .collect::<Result<Vec<_>>>()?;
    let operation = Operation::parse(&operation, &args)?;
    let summary = with_table_argument(call, |core| {
        crate::derive::derive(core, &column, operation, which)
    })?;
    Ok(serde_json::json!({
        "rows": summary.rows,
        "threads": summary.threads,
        "seconds": (summary.seconds * 1000.0).round() / 1000.0,
    })
    .to_string())
}

/// `imagestore_resolve(table, 'commit' | 'abort' | 'accept')`.
fn resolve(call: &Call<'_>) -> Result<String> {
    let table = call.text(0, "give the table's name as TEXT")?;
    let decision = call.text(1, "give 'commit', 'abort' or 'accept'")?;
    let resolution = match decision.to_ascii_lowercase().as_str() {
        "commit" => Some(Resolution::Commit),
        "abort" => Some(Resolution::Abort),
        "accept" => None,
        other => {
            return Err(Error::BadArgument(format!(
                "decision '{other}': give 'commit' or 'abort' (in-doubt transactions), or 'accept' (commits a shard lost)"
            )))
        }
    };
    let table = imagestore_table(&call.connection()?, &table)?;
    let args = module_arguments(&table.sql).unwrap_or_default();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let config = table_config(call.handle(), &table.schema, &table.table, &args)?;
    if !config.servers.is_empty() {
        return resolve_on_servers(&config, resolution)
            .map(|resolved| answer(&decision, &resolved));
    }
    let (table_id, mut shards, _) = open_shards(&config, false)?;
    let resolved = match resolution {
        Some(resolution) => resolve_in_doubt(
            &config,
            table_id,
            &mut shards,
            resolution,
            crate::host::lookup,
        )?,
        None => Resolved {
            decided: accept_lost_commits(&config, table_id, &mut shards)?,
            ..Resolved::default()
        },
    };
    Ok(answer(&decision, &resolved))
}

/// `imagestore_resolve` on a table on PostgreSQL servers: its shards and anchor opened without
/// the recovery that refuses to, then the person's decision. A table on servers keeps no record
/// of lost commits to accept.
fn resolve_on_servers(config: &TableConfig, resolution: Option<Resolution>) -> Result<Resolved> {
    let Some(resolution) = resolution else {
        return Err(Error::BadArgument(format!(
            "table {}: 'accept' applies to commits a local shard lost, which the journal names; a table on PostgreSQL servers has no journal",
            config.table_name
        )));
    };
    let mut table = open_server_shards(config, false)?;
    resolve_through_control(config, &mut *table.control, &mut table.shards, resolution)
}

/// `imagestore_resolve`'s answer: the decision and the transactions it applied to, and, only
/// where there were any, those the shards decided instead (`shards_decided`).
fn answer(decision: &str, resolved: &Resolved) -> String {
    let mut answer = serde_json::json!({
        "decision": decision.to_ascii_lowercase(),
        "transactions": resolved.decided,
    });
    if !resolved.committed.is_empty() || !resolved.aborted.is_empty() {
        answer["shards_decided"] =
            serde_json::json!({"committed": resolved.committed, "aborted": resolved.aborted});
    }
    answer.to_string()
}

/// `imagestore_backup(table, folder)`: see `backup`.
fn backup(call: &Call<'_>) -> Result<String> {
    let dest = call.text(1, "give the backup folder as TEXT")?;
    with_table_argument(call, |core| crate::backup::backup(core, Path::new(&dest)))
}

/// `imagestore_verify(folder)`: see `backup::folder`.
fn verify(call: &Call<'_>) -> Result<String> {
    let dir = call.text(0, "give the backup folder as TEXT")?;
    crate::backup::folder::verify_report(Path::new(&dir))
}

/// A function's body: its JSON result.
type Run = fn(&Call<'_>) -> Result<String>;

/// Every operating function: name, argument count (-1: any), whether it refuses to run inside
/// an open transaction (it commits on its own, or must see only what is committed), body.
const FUNCTIONS: &[(&str, c_int, bool, Run)] = &[
    ("imagestore_check", 1, false, |call| {
        with_table_argument(call, check)
    }),
    ("imagestore_transactions", 1, false, |call| {
        with_table_argument(call, transactions)
    }),
    ("imagestore_resolve", 2, true, resolve),
    ("imagestore_derive", -1, true, |call| {
        derive(call, Rows::All)
    }),
    ("imagestore_derive_missing", -1, true, |call| {
        derive(call, Rows::Missing)
    }),
    ("imagestore_backup", 2, true, backup),
    ("imagestore_verify", 1, false, verify),
];

/// Registers the operating functions.
pub fn register(conn: &Connection) -> rusqlite::Result<()> {
    for &(name, arity, outside_transaction, run) in FUNCTIONS {
        let body = move |call: &Call<'_>| {
            if outside_transaction {
                call.outside_transaction(name)?;
            }
            run(call).map(Value::Text)
        };
        sqlfn::register(conn, name, arity, Kind::Operating, Box::new(body))?;
    }
    Ok(())
}

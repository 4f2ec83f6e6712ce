//! SQL functions for operating a table: checking it, and seeing transactions left in doubt.
//!
//! ```sql
//! SELECT imagestore_check('images');         -- JSON: rows and bytes checked, and every problem
//! SELECT imagestore_transactions('images');  -- JSON: prepared transactions and their state
//! SELECT imagestore_resolve('images', 'abort'); -- decide transactions left in doubt
//! SELECT imagestore_derive('images', 'thumb', 'thumbnail', 256, 'webp'); -- see `derive`
//! ```
//! `imagestore_resolve` is for the one case recovery cannot decide: the journal is missing while
//! shards hold prepared transactions, and the table refuses to open. It reads the table's
//! definition from the schema, opens the shards itself, applies the decision to every prepared
//! transaction, and starts a new journal.
//! The table is named as `table` or `schema.table`. Both read one consistent snapshot of every
//! shard, like a query on the table.

use rusqlite::functions::{Context, FunctionFlags};
use rusqlite::Connection;

use rusqlite::types::Value;

use crate::config::module_arguments;
use crate::coordinator::{resolve_in_doubt, Resolution};
use crate::derive::Operation;
use crate::error::{catch_panic, Error, Result};
use crate::placement::shard_of;
use crate::vtab::{open_shards, table_config, with_open_table, TableCore};

/// Runs `body` on one consistent snapshot of every shard of the table.
pub(crate) fn on_snapshot<T>(
    core: &TableCore,
    body: impl FnOnce(&TableCore) -> Result<T>,
) -> Result<T> {
    core.coordinator
        .borrow_mut()
        .begin_read(&mut core.shards.borrow_mut())?;
    let result = body(core);
    if core.open_cursors.get() == 0 {
        core.coordinator
            .borrow_mut()
            .end_read(&mut core.shards.borrow_mut());
    }
    result
}

/// Verifies every shard's integrity, every blob against its BLAKE3 hash, placement, and that no
/// blob is orphaned. Problems are reported, not raised: a damaged shard still lets the others
/// be checked.
fn check(core: &TableCore) -> Result<String> {
    on_snapshot(core, |core| {
        let shards = core.shards.borrow();
        let count = shards.len();
        let (mut rows, mut bytes, mut problems) = (0u64, 0u64, Vec::new());
        for (index, shard) in shards.iter().enumerate() {
            let file = shard.path.display();
            let mut checked = || -> Result<()> {
                for line in shard.integrity_problems()? {
                    problems.push(format!("shard {index} ({file}): integrity_check: {line}"));
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
                let orphans = shard.orphan_blob_count()?;
                if orphans > 0 {
                    problems.push(format!(
                        "shard {index} ({file}): {orphans} image blobs belong to no row"
                    ));
                }
                Ok(())
            };
            if let Err(e) = checked() {
                problems.push(format!("shard {index} ({file}): {e}"));
            }
        }
        Ok(serde_json::json!({
            "table": core.config.table_name,
            "shards": count,
            "rows": rows,
            "bytes": bytes,
            "ok": problems.is_empty(),
            "problems": problems,
        })
        .to_string())
    })
}

/// Prepared transactions found on the shards, each with its shards and state: `committed`
/// (decided; recovery finalizes it) or `undecided` (recovery aborts it).
fn transactions(core: &TableCore) -> Result<String> {
    on_snapshot(core, |core| {
        let shards = core.shards.borrow();
        let mut found: std::collections::BTreeMap<u64, Vec<usize>> = Default::default();
        for (index, shard) in shards.iter().enumerate() {
            for txid in shard.prepared_txids()? {
                found.entry(txid).or_default().push(index);
            }
        }
        let mut coordinator = core.coordinator.borrow_mut();
        let mut items = Vec::new();
        for (txid, on) in &found {
            let state = if coordinator.is_committed(*txid)? {
                "committed"
            } else {
                "undecided"
            };
            items.push(serde_json::json!({"txid": txid, "shards": on, "state": state}));
        }
        Ok(serde_json::Value::from(items).to_string())
    })
}

/// Argument `index` of a function call as TEXT, or a type error saying `what`.
fn text_arg(ctx: &Context<'_>, index: usize, what: &str) -> Result<String> {
    ctx.get(index)
        .map_err(|_| Error::WrongType(what.to_string()))
}

/// Runs `body` on the table named by the function's first argument, connecting it first if this
/// connection has not used it yet.
pub(crate) fn with_table_argument<T>(
    ctx: &Context<'_>,
    body: impl FnOnce(&TableCore) -> Result<T>,
) -> Result<T> {
    let table = text_arg(ctx, 0, "give the table's name as TEXT")?;
    // SAFETY: the handle of the connection running this function, used only during it.
    let db = unsafe { ctx.get_connection() }.map_err(|e| Error::Internal(e.to_string()))?;
    // Preparing a statement on the table connects it if this connection has not yet.
    let quoted = table
        .split('.')
        .map(|p| format!("\"{}\"", p.replace('"', "\"\"")))
        .collect::<Vec<_>>()
        .join(".");
    db.prepare(&format!("SELECT 1 FROM {quoted} LIMIT 0"))
        .map_err(|e| Error::BadArgument(format!("{table}: {e}")))?;
    // SAFETY: as above.
    let handle = unsafe { db.handle() };
    with_open_table(handle, &table, body)
}

fn table_function(
    conn: &Connection,
    name: &str,
    run: fn(&TableCore) -> Result<String>,
) -> rusqlite::Result<()> {
    conn.create_scalar_function(
        name,
        1,
        FunctionFlags::SQLITE_UTF8,
        move |ctx: &Context<'_>| Ok(catch_panic(|| with_table_argument(ctx, run))?),
    )
}

/// `imagestore_derive(table, column, operation, args...)`: see `derive`.
fn derive(ctx: &Context<'_>) -> Result<String> {
    if ctx.len() < 3 {
        return Err(Error::BadArgument(
            "imagestore_derive(table, column, operation, arguments...)".into(),
        ));
    }
    let column = text_arg(ctx, 1, "give the column's name as TEXT")?;
    let operation = text_arg(ctx, 2, "give the operation as TEXT")?;
    let args = (3..ctx.len())
        .map(|i| Value::try_from(ctx.get_raw(i)).map_err(|e| Error::WrongType(e.to_string())))
        .collect::<Result<Vec<_>>>()?;
    let operation = Operation::parse(&operation, &args)?;
    let summary = with_table_argument(ctx, |core| crate::derive::derive(core, &column, operation))?;
    Ok(format!(
        "{{\"rows\":{},\"threads\":{},\"seconds\":{:.3}}}",
        summary.rows, summary.threads, summary.seconds
    ))
}

/// `imagestore_resolve(table, 'commit' | 'abort')`.
fn resolve(ctx: &Context<'_>) -> Result<String> {
    let table = text_arg(ctx, 0, "give the table's name as TEXT")?;
    let decision = text_arg(ctx, 1, "give 'commit' or 'abort'")?;
    let resolution = match decision.to_ascii_lowercase().as_str() {
        "commit" => Resolution::Commit,
        "abort" => Resolution::Abort,
        other => {
            return Err(Error::BadArgument(format!(
                "decision '{other}': give 'commit' or 'abort'"
            )))
        }
    };
    let (schema, name) = table.split_once('.').unwrap_or(("main", table.as_str()));
    // SAFETY: the handle of the connection running this function, used only during it.
    let db = unsafe { ctx.get_connection() }.map_err(|e| Error::Internal(e.to_string()))?;
    let quoted_schema = format!("\"{}\"", schema.replace('"', "\"\""));
    let sql: String = db
        .query_row(
            &format!("SELECT sql FROM {quoted_schema}.sqlite_schema WHERE type = 'table' AND name = ?1 COLLATE NOCASE"),
            [name],
            |r| r.get(0),
        )
        .map_err(|_| Error::BadArgument(format!("no table named {table}")))?;
    let args = module_arguments(&sql)
        .filter(|_| sql.to_ascii_lowercase().contains("using imagestore"))
        .ok_or_else(|| Error::BadArgument(format!("{table} is not an imagestore table")))?;
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    // SAFETY: as above.
    let config = table_config(unsafe { db.handle() }, schema, name, &args)?;
    let (table_id, shards, _) = open_shards(&config, false)?;
    let resolved = resolve_in_doubt(&config, table_id, &shards, resolution)?;
    Ok(format!(
        "{{\"decision\":\"{}\",\"transactions\":{resolved:?}}}",
        decision.to_ascii_lowercase()
    ))
}

/// Registers the operating functions.
pub fn register(conn: &Connection) -> rusqlite::Result<()> {
    table_function(conn, "imagestore_check", check)?;
    table_function(conn, "imagestore_transactions", transactions)?;
    conn.create_scalar_function("imagestore_resolve", 2, FunctionFlags::SQLITE_UTF8, |ctx| {
        Ok(catch_panic(|| resolve(ctx))?)
    })?;
    conn.create_scalar_function("imagestore_derive", -1, FunctionFlags::SQLITE_UTF8, |ctx| {
        Ok(catch_panic(|| derive(ctx))?)
    })?;
    conn.create_scalar_function("imagestore_backup", 2, FunctionFlags::SQLITE_UTF8, |ctx| {
        Ok(catch_panic(|| {
            let dest = text_arg(ctx, 1, "give the backup folder as TEXT")?;
            with_table_argument(ctx, |core| {
                crate::backup::backup(core, std::path::Path::new(&dest))
            })
        })?)
    })?;
    conn.create_scalar_function("imagestore_verify", 1, FunctionFlags::SQLITE_UTF8, |ctx| {
        Ok(catch_panic(|| {
            let dir = text_arg(ctx, 0, "give the backup folder as TEXT")?;
            crate::backup_folder::verify_report(std::path::Path::new(&dir))
        })?)
    })
}

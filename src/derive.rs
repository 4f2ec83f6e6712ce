//! Whole-table processing: derive a value from every image, on every core, and store the results
//! in one transaction that commits on every shard or on none.
//!
//! ```sql
//! CREATE VIRTUAL TABLE photos USING imagestore(shards=4, thumb BLOB, phash INTEGER);
//! SELECT imagestore_derive('photos', 'thumb', 'thumbnail', 256, 'webp');  -- {"rows":31,...}
//! SELECT imagestore_derive('photos', 'phash', 'phash');
//! SELECT imagestore_derive('photos', 'small', 'convert', 'jpeg', 80);
//! SELECT imagestore_derive_missing('photos', 'thumb', 'thumbnail', 256, 'webp');  -- new rows
//! ```
//! Operations: `thumbnail, max_side [, format]` (as `image_thumbnail`), `convert, format
//! [, quality]` (as `image_convert`), `phash [, method]` (as `image_phash`). The target is one of
//! the table's own columns. `imagestore_derive_missing` computes it only for the rows whose
//! column is NULL (the images added since the last run: a thumbnail cache's daily top-up), with
//! the same guarantees; every operation gives a value, so a derived row is never NULL again.
//!
//! How: the table's write transaction is opened (the writer lock excludes other writers, so the
//! images cannot change underneath); images are read a batch at a time, bounded in bytes, and
//! processed on the image threads, one per core (`images::pool`; pure Rust: no SQLite object
//! crosses a thread); each result is written to its row through the same path as an UPDATE of
//! that column. Any failure (a damaged image, a full disk, a panic) rolls the whole derivation
//! back. It commits on its own, so it refuses to run inside a transaction the connection has
//! open.

use std::sync::atomic::{AtomicUsize, Ordering};

use rayon::ThreadPool;
use rusqlite::types::Value;

use crate::commit::Coordinator;
use crate::error::{catch_panic, Error, Result};
use crate::images::encode::{self, OutputFormat, Quality};
use crate::images::pool::image_pool;
use crate::images::{decode, perceptual_hash, phash, thumbnail};
use crate::shard::NewRow;
use crate::table::TableCore;
use crate::table::TableShard;

/// Images read into memory at most at once, before they are processed and written.
const BATCH_BYTES_MAX: usize = 256 << 20;

/// What to compute from each image.
#[derive(Debug, Clone, Copy)]
pub enum Operation {
    Thumbnail {
        max_side: u32,
        format: Option<OutputFormat>,
        quality: Quality,
    },
    Convert {
        format: OutputFormat,
        quality: Quality,
    },
    Phash(phash::Method),
}

impl Operation {
    /// Parses the operation's name and arguments as given in SQL.
    pub fn parse(name: &str, args: &[Value]) -> Result<Operation> {
        let text = |v: Option<&Value>| match v {
            Some(Value::Text(t)) => Ok(Some(t.clone())),
            None | Some(Value::Null) => Ok(None),
            Some(_) => Err(Error::WrongType(format!(
                "{name}: expected a TEXT argument"
            ))),
        };
        let integer = |v: Option<&Value>| match v {
            Some(Value::Integer(i)) => Ok(Some(*i)),
            None | Some(Value::Null) => Ok(None),
            Some(_) => Err(Error::WrongType(format!(
                "{name}: expected an INTEGER argument"
            ))),
        };
        let quality = |v: Option<&Value>| match v {
            Some(Value::Integer(level)) => Quality::level(*level),
            Some(Value::Text(named)) => Quality::named(named),
            None | Some(Value::Null) => Ok(Quality::Default),
            Some(_) => Err(Error::WrongType(format!(
                "{name}: expected a quality from 1 to 100, or 'lossless'"
            ))),
        };
        match (name.to_ascii_lowercase().as_str(), args.len()) {
            ("thumbnail", 1..=3) => {
                let side = integer(args.first())?.filter(|s| (1..=65_535).contains(s));
                let max_side = side.ok_or_else(|| Error::BadArgument("thumbnail: max_side from 1 to 65535".into()))?;
                let format = text(args.get(1))?.map(|f| OutputFormat::parse(&f)).transpose()?;
                let quality = quality(args.get(2))?;
                Ok(Operation::Thumbnail { max_side: max_side as u32, format, quality })
            }
            ("convert", 1 | 2) => {
                let format = text(args.first())?.ok_or_else(|| Error::BadArgument("convert: give a format".into()))?;
                let quality = quality(args.get(1))?;
                Ok(Operation::Convert { format: OutputFormat::parse(&format)?, quality })
            }
            ("phash", 0) => Ok(Operation::Phash(phash::Method::Projection)),
            ("phash", 1) => {
                let method = text(args.first())?.ok_or_else(|| Error::BadArgument("phash: give a method".into()))?;
                Ok(Operation::Phash(phash::Method::parse(&method)?))
            }
            (other, n) => Err(Error::BadArgument(format!(
                "derive: '{other}' with {n} arguments is not an operation; use thumbnail, max_side [, format [, quality]] | \
                 convert, format [, quality] | phash [, method]"
            ))),
        }
    }

    fn apply(self, data: &[u8]) -> Result<Value> {
        Ok(match self {
            Operation::Thumbnail {
                max_side,
                format,
                quality,
            } => Value::Blob(thumbnail(data, max_side, format, quality)?),
            Operation::Convert { format, quality } => Value::Blob(encode::encode(
                decode::decode(data)?.image,
                format,
                quality,
            )?),
            Operation::Phash(method) => Value::Integer(perceptual_hash(data, method)?),
        })
    }
}

/// Which rows a derivation computes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rows {
    /// Every row (`imagestore_derive`).
    All,
    /// The rows whose target column is NULL (`imagestore_derive_missing`).
    Missing,
}

/// An image to process: its shard, its id, its bytes.
type Job = (usize, i64, Vec<u8>);

/// Computes `operation` for every image on the image threads (a worker per thread, at most one
/// per image), each taking the next image as it finishes one, largest images first (so that one
/// large image does not end the work alone). Results come in input order. A worker decodes on
/// its own thread (rayon runs an `install` from one of the pool's threads in place), and offers
/// its thread between images, so that other connections' decodes wait one image at most.
fn compute(operation: Operation, images: &[Job], pool: &ThreadPool) -> Result<Vec<Value>> {
    let mut order: Vec<usize> = (0..images.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(images[i].2.len()));
    let next = AtomicUsize::new(0);
    let work = || {
        let mut out = Vec::new();
        loop {
            let k = next.fetch_add(1, Ordering::Relaxed);
            let Some(&i) = order.get(k) else {
                return Ok(out);
            };
            let (_, id, data) = &images[i];
            crate::fault::check("derive_row")?;
            let value = operation.apply(data).map_err(|e| Error::InRow {
                row: *id,
                source: Box::new(e),
            })?;
            out.push((i, value));
            rayon::yield_now();
        }
    };
    let workers = pool.current_num_threads().clamp(1, images.len().max(1));
    let mut done: Vec<Result<Vec<(usize, Value)>>> = Vec::new();
    done.resize_with(workers, || Ok(Vec::new()));
    pool.scope(|scope| {
        for slot in done.iter_mut() {
            scope.spawn(|_| {
                // A panic must come back as an error: the caller rolls the transaction back.
                *slot = catch_panic(work).map_err(|e| match e {
                    Error::Internal(panic) => {
                        Error::Internal(format!("a derive worker panicked: {panic}"))
                    }
                    other => other,
                });
            });
        }
    });
    let mut results: Vec<(usize, Value)> = Vec::new();
    for worker in done {
        results.extend(worker?);
    }
    results.sort_by_key(|(i, _)| *i);
    Ok(results.into_iter().map(|(_, v)| v).collect())
}

/// The summary `imagestore_derive` returns.
pub struct Summary {
    pub rows: usize,
    pub threads: usize,
    pub seconds: f64,
}

/// Runs the derivation in one write transaction of the table; on any error, nothing is kept.
pub fn derive(
    core: &TableCore,
    column: &str,
    operation: Operation,
    which: Rows,
) -> Result<Summary> {
    let started = std::time::Instant::now();
    let target = core
        .config
        .user_columns
        .iter()
        .position(|c| c.name.eq_ignore_ascii_case(column))
        .ok_or_else(|| {
            Error::BadArgument(format!("{column} is not one of the table's own columns"))
        })?;
    let pool = image_pool()?;
    let mut coordinator = core.coordinator.borrow_mut();
    if coordinator.is_writing() {
        return Err(Error::InTransaction(
            "imagestore_derive commits on its own, so it cannot run inside a transaction or a statement that writes the table".into(),
        ));
    }
    let mut shards = core.shards.borrow_mut();
    coordinator.begin_write(&mut shards)?;
    // A panic anywhere in here is an error like any other: the transaction is rolled back.
    let outcome = catch_panic(|| {
        let mut rows = 0;
        let mut batch: Vec<Job> = Vec::new();
        let mut bytes = 0;
        let mut flush = |batch: &mut Vec<Job>| -> Result<usize> {
            let done = process(&mut coordinator, &shards, target, operation, batch, &pool)?;
            batch.clear();
            Ok(done)
        };
        for (index, shard) in shards.iter().enumerate() {
            for id in shard.ids()? {
                let Some(row) = shard.get(id)? else { continue };
                if which == Rows::Missing && row.user[target] != Value::Null {
                    continue;
                }
                let data = shard.read_blob(row.blob_id)?;
                bytes += data.len();
                batch.push((index, id, data));
                if bytes >= BATCH_BYTES_MAX {
                    rows += flush(&mut batch)?;
                    bytes = 0;
                }
            }
        }
        rows += flush(&mut batch)?;
        // derive runs outside any transaction: the host has nothing to commit with it.
        coordinator.sync(&mut shards, None)?;
        Ok(rows)
    });
    match &outcome {
        Ok(_) => coordinator.commit(&mut shards),
        Err(_) => coordinator.rollback(&mut shards),
    }
    // A query of this connection may be reading the table (`SELECT imagestore_derive(...)
    // FROM t`): its cursors go on from a fresh snapshot, as after any write transaction.
    drop(shards);
    core.resume_open_cursors(&mut coordinator)?;
    outcome.map(|rows| Summary {
        rows,
        threads: pool.current_num_threads(),
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// Computes a batch and stores each result in its row's `target` user column; returns how
/// many rows were written.
fn process(
    coordinator: &mut Coordinator,
    shards: &[TableShard],
    target: usize,
    operation: Operation,
    batch: &[Job],
    pool: &ThreadPool,
) -> Result<usize> {
    let results = compute(operation, batch, pool)?;
    for ((index, id, _), value) in batch.iter().zip(results) {
        let shard = &shards[*index];
        let txid = coordinator.record_write(*index)?;
        let current = shard
            .get(*id)?
            .ok_or_else(|| Error::Internal(format!("row {id} vanished")))?;
        let mut row = NewRow::from(&current);
        row.user[target] = value;
        shard.update(txid, &current, &row, None)?;
    }
    Ok(batch.len())
}

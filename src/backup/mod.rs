//! Taking a consistent online backup of a sharded table: full the first time, incremental after.
//!
//! ```sql
//! SELECT imagestore_backup('images', '/backups/images');  -- JSON summary
//! SELECT imagestore_verify('/backups/images');            -- JSON: ok, problems
//! ```
//! Files: this one takes a backup; `folder` is a backup folder's layout, manifest and
//! verification; `restore` makes a new table from a backup. Into a new or empty folder a backup
//! writes generation 1, a copy of every shard's rows and images. Into a folder that holds a
//! backup of the same table it writes the next generation: every row again (rows are small),
//! but only the images no earlier file of that shard holds, by BLAKE3 hash. Either way each
//! file is written by SQL from the snapshot, so it holds no protocol state. (The caller refuses
//! a backup inside a transaction: it would see uncommitted rows.) A shard on a PostgreSQL
//! server is copied into a shard file of the same layout, so a backup of a table on servers is
//! the same kind of folder, verified and restored the same way, into either kind of table.
//!
//! Invariants:
//! - Consistent cut: every shard is copied from one read snapshot of the table, taken as a query
//!   takes it (under the publish lock), so each transaction is in the backup whole or not at all,
//!   and no undecided transaction is (on servers: every server's snapshot, opened as a query
//!   opens them). Writers are never blocked by the copy (WAL readers and PostgreSQL snapshots
//!   do not block writers); they wait only while the snapshot is opened (`writers_held_ms`).
//! - All or nothing: new files get names no manifest uses; they are synced, then the folder,
//!   then the new manifest is renamed over the old one. Until that rename the folder is the
//!   earlier backup (or, the first time, no backup at all); a failed backup removes its files.
//! - One backup at a time writes into a folder (an exclusive lock on the folder).

use std::collections::HashSet;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use serde::Serialize;

use crate::commit::Participant;
use crate::config::TableConfig;
use crate::error::{Error, Result};
use crate::files::{remove_files, sync_dir, sync_file, with_sqlite_files};
use crate::server::ServerShard;
use crate::shard::{parse_hash, NewRow, ScanFilter, Shard, StoredRow};
use crate::table::TableShard;
use folder::{
    file_digest, file_name, prepare_destination, write_manifest, Destination, Manifest,
    ManifestColumn, ManifestFile, FORMAT, FORMAT_VERSION, IN_PROGRESS,
};

pub mod folder;
pub mod restore;

/// What `imagestore_backup` returns.
#[derive(Serialize)]
struct Summary {
    generation: u32,
    incremental: bool,
    shards: usize,
    rows: i64,
    image_bytes: i64,
    /// Images whose bytes this backup copied, and their size (all of them for a full backup).
    images_copied: u64,
    image_bytes_copied: u64,
    /// Size of the files this backup wrote.
    bytes_written: u64,
    last_txid: u64,
    writers_held_ms: f64,
    seconds: f64,
}

/// What the copy from the snapshot found and wrote.
#[derive(Default)]
struct Copied {
    rows: i64,
    image_bytes: i64,
    last_txid: u64,
    images_copied: u64,
    image_bytes_copied: u64,
}

/// What a backup needs of a table: its arguments, and its shards read on one consistent
/// snapshot (the table handle, `crate::table::TableCore`, gives both).
pub trait ConsistentRead {
    fn config(&self) -> &TableConfig;
    /// Runs `body` on every shard of the table, all read from one consistent snapshot.
    fn read_shards<T>(&self, body: impl FnOnce(&[TableShard]) -> Result<T>) -> Result<T>;
}

/// Backs the table up into `dest`; returns the JSON summary.
pub fn backup(table: &impl ConsistentRead, dest: &Path) -> Result<String> {
    let started = Instant::now();
    let config = table.config();
    let shard_count = config.shard_count();
    let table_id = table
        .read_shards(|shards| shards[0].identity(&config.user_columns))?
        .table_id_hex();
    let _folder_lock = lock_folder(dest)?;
    let earlier = match prepare_destination(dest, &table_id, shard_count)? {
        Destination::New => None,
        Destination::Earlier(manifest) => Some(manifest),
    };
    mark_in_progress(dest)?;
    let generation = earlier.as_ref().map_or(1, |m| m.generation + 1);
    let new_files: Vec<PathBuf> = (0..shard_count)
        .map(|shard| dest.join(file_name(shard, generation)))
        .collect();
    let written = write_generation(table, dest, earlier.as_ref(), generation, &new_files);
    let (copied, writers_held_ms, files) = match written {
        Ok(written) => written,
        Err(e) => {
            discard(dest, &new_files);
            return Err(e);
        }
    };
    let bytes_written = files.iter().map(|f| f.bytes).sum();
    let earlier_files = earlier.map(|m| m.files).unwrap_or_default();
    let manifest = Manifest {
        format: FORMAT.into(),
        version: FORMAT_VERSION,
        table: config.table_name.clone(),
        table_id,
        shards: shard_count,
        columns: config
            .user_columns
            .iter()
            .map(ManifestColumn::from)
            .collect(),
        generation,
        rows: copied.rows,
        image_bytes: copied.image_bytes,
        last_txid: copied.last_txid,
        taken_unix_ms: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64),
        files: earlier_files.into_iter().chain(files).collect(),
    };
    if let Err(e) = write_manifest(dest, &manifest) {
        discard(dest, &new_files);
        return Err(e);
    }
    // From here the new manifest may be the folder's: nothing it names is ever removed.
    sync_dir(dest)?;
    remove_files(&[dest.join(IN_PROGRESS)])?;
    let summary = Summary {
        generation,
        incremental: generation > 1,
        shards: shard_count,
        rows: copied.rows,
        image_bytes: copied.image_bytes,
        images_copied: copied.images_copied,
        image_bytes_copied: copied.image_bytes_copied,
        bytes_written,
        last_txid: copied.last_txid,
        writers_held_ms,
        seconds: started.elapsed().as_secs_f64(),
    };
    serde_json::to_string(&summary).map_err(|e| Error::Internal(e.to_string()))
}

/// Removes the files of a backup that failed, then the in-progress mark. Best effort: no
/// manifest names the files, so nothing trusts them even if they stay, and while the mark stays
/// with them the next backup into the folder removes them.
fn discard(dest: &Path, new_files: &[PathBuf]) {
    let files: Vec<PathBuf> = new_files
        .iter()
        .flat_map(|f| with_sqlite_files(f))
        .collect();
    if remove_files(&files).is_ok() {
        let _ = remove_files(&[dest.join(IN_PROGRESS)]);
    }
}

/// Marks the folder as holding a backup in progress (see `folder::IN_PROGRESS`).
fn mark_in_progress(dest: &Path) -> Result<()> {
    let mark = dest.join(IN_PROGRESS);
    File::create(&mark)
        .and_then(|f| f.sync_all())
        .map_err(Error::file_io(&mark))?;
    sync_dir(dest)
}

/// Writes this generation's files from one snapshot, then syncs them and the folder. Returns
/// what was copied, how long writers were held, and the manifest entries of the new files.
fn write_generation(
    table: &impl ConsistentRead,
    dest: &Path,
    earlier: Option<&Manifest>,
    generation: u32,
    new_files: &[PathBuf],
) -> Result<(Copied, f64, Vec<ManifestFile>)> {
    // The images each shard's earlier files hold, read before the snapshot opens.
    let held: Vec<HashSet<blake3::Hash>> = match earlier {
        None => vec![HashSet::new(); new_files.len()],
        Some(manifest) => (0..new_files.len())
            .map(|shard| held_by_earlier_files(dest, manifest, shard))
            .collect::<Result<_>>()?,
    };
    let snapshot_started = Instant::now();
    let mut writers_held_ms = 0.0;
    let copied = table.read_shards(|shards| {
        writers_held_ms = snapshot_started.elapsed().as_secs_f64() * 1000.0;
        copy_shards(table.config(), shards, new_files, &held)
    })?;
    // Each file is synced and hashed on a thread of its own: the files are independent, and
    // the disk and the cores are better used together.
    let entries = std::thread::scope(|scope| {
        let jobs: Vec<_> = new_files
            .iter()
            .enumerate()
            .map(|(shard, path)| {
                scope.spawn(move || -> Result<ManifestFile> {
                    sync_file(path)?;
                    let (bytes, blake3) = file_digest(path)?;
                    Ok(ManifestFile {
                        name: file_name(shard, generation),
                        shard,
                        generation,
                        bytes,
                        blake3,
                    })
                })
            })
            .collect();
        jobs.into_iter()
            .map(|job| {
                job.join().unwrap_or_else(|_| {
                    Err(Error::Internal("a backup hashing thread panicked".into()))
                })
            })
            .collect::<Result<Vec<_>>>()
    })?;
    sync_dir(dest)?;
    Ok((copied, writers_held_ms, entries))
}

/// Hashes of the images that the earlier files of `shard` hold, from files whose BLAKE3 is the
/// manifest's (an image is left out of the new generation only if an intact file holds it).
fn held_by_earlier_files(
    dest: &Path,
    manifest: &Manifest,
    shard: usize,
) -> Result<HashSet<blake3::Hash>> {
    let mut held = HashSet::new();
    for file in manifest.files_of(shard) {
        let path = dest.join(&file.name);
        let intact =
            file_digest(&path).is_ok_and(|found| found == (file.bytes, file.blake3.clone()));
        if !intact || file.name != file_name(shard, file.generation) {
            return Err(Error::BadBackup {
                dir: dest.to_path_buf(),
                detail: format!(
                    "{} is missing or damaged: run imagestore_verify, and back up into a new folder",
                    file.name
                ),
            });
        }
        held.extend(Shard::open_read_only(&path, &[])?.held_hashes()?);
    }
    Ok(held)
}

/// Copies every shard from the open snapshot: its rows, and the images no earlier file holds
/// (all of them for a first backup).
fn copy_shards(
    config: &TableConfig,
    shards: &[TableShard],
    new_files: &[PathBuf],
    held: &[HashSet<blake3::Hash>],
) -> Result<Copied> {
    let mut copied = Copied::default();
    for ((shard, path), held) in shards.iter().zip(new_files).zip(held) {
        crate::fault::check("backup_shard")?;
        let (rows, image_bytes) = shard.totals()?;
        copied.rows += rows;
        copied.image_bytes += image_bytes;
        let (last_txid, (images, bytes)) = match shard {
            TableShard::Local(shard) => (shard.last_txid()?, shard.copy_rows_to(path, held)?),
            TableShard::Server(shard) => {
                let last_txid = shard.snapshot_last_txid().ok_or_else(|| {
                    Error::Internal("a backup of a server without a snapshot".into())
                })?;
                let copied = copy_server_shard(config, shard, path, held, last_txid)?;
                (last_txid, copied)
            }
        };
        copied.last_txid = copied.last_txid.max(last_txid);
        copied.images_copied += images;
        copied.image_bytes_copied += bytes;
    }
    Ok(copied)
}

/// Copies a shard on a server, as its open snapshot sees it, into `dest`, a new shard file of
/// the same identity, columns and indexes (the layout a local shard's copy has), leaving out
/// the bytes of images whose hash is in `held`. Rows are read a page at
/// a time, and their images in batches of about [`SERVER_BATCH_BYTES`]. Returns how many
/// images' bytes were copied, and their size.
fn copy_server_shard(
    config: &TableConfig,
    shard: &ServerShard,
    dest: &Path,
    held: &HashSet<blake3::Hash>,
    last_txid: u64,
) -> Result<(u64, u64)> {
    let out = Shard::open(dest, true, &config.user_columns, config.busy_timeout_ms)?;
    out.initialize(&shard.identity(), &config.owner, &config.user_columns, None)?;
    out.ensure_indexes(&config.indexes)?;
    out.begin_copy()?;
    let mut copied = (0, 0);
    let mut after = None;
    let mut batch: Vec<StoredRow> = Vec::new();
    let mut batch_bytes = 0;
    let filled = (|| -> Result<()> {
        loop {
            let page = shard.scan_page(&ScanFilter::default(), after, SERVER_PAGE_ROWS)?;
            let Some(last) = page.last() else {
                return Ok(());
            };
            after = Some(last.id);
            for row in page {
                if !is_held(held, &row.hash) {
                    batch_bytes += row.bytes.max(0) as u64;
                }
                batch.push(row);
                if batch_bytes >= SERVER_BATCH_BYTES {
                    copy_batch(shard, &out, held, &mut batch, &mut copied)?;
                    batch_bytes = 0;
                }
            }
            // A page at most is held in memory, whatever the images held elsewhere.
            copy_batch(shard, &out, held, &mut batch, &mut copied)?;
            batch_bytes = 0;
        }
    })();
    if let Err(e) = filled {
        let _ = out.rollback();
        return Err(e);
    }
    out.finish_copy(last_txid)?;
    Ok(copied)
}

/// Rows read from a server at a time, by a backup.
const SERVER_PAGE_ROWS: usize = 256;
/// About how many bytes of images a backup reads from a server in one round trip.
const SERVER_BATCH_BYTES: u64 = 16 << 20;

/// Whether an earlier file of the backup holds the image of this hash.
fn is_held(held: &HashSet<blake3::Hash>, hash: &str) -> bool {
    parse_hash(hash).is_some_and(|hash| held.contains(&hash))
}

/// Writes the rows of `batch` into `out`, with the images no earlier file holds, read from the
/// server in one round trip; empties the batch and counts the images copied.
fn copy_batch(
    shard: &ServerShard,
    out: &Shard,
    held: &HashSet<blake3::Hash>,
    batch: &mut Vec<StoredRow>,
    (images, bytes): &mut (u64, u64),
) -> Result<()> {
    let wanted: Vec<i64> = batch
        .iter()
        .filter(|row| !is_held(held, &row.hash))
        .map(|row| row.id)
        .collect();
    let mut data = shard.images_of(&wanted)?;
    for row in batch.drain(..) {
        let image = match is_held(held, &row.hash) {
            true => None,
            false => Some(data.remove(&row.id).ok_or_else(|| Error::ServerForeign {
                server: shard.name(),
                detail: format!("lost the image of row {} during the backup", row.id),
            })?),
        };
        if let Some(image) = &image {
            *images += 1;
            *bytes += image.len() as u64;
        }
        out.insert_copied(&NewRow::from(&row), image.as_deref())?;
    }
    Ok(())
}

/// Takes the folder's backup lock: an exclusive `flock` on the folder itself, which the kernel
/// drops if this process dies. Creates the folder first if need be, durably.
fn lock_folder(dest: &Path) -> Result<File> {
    if !dest.exists() {
        std::fs::create_dir_all(dest).map_err(Error::file_io(dest))?;
        if let Some(parent) = dest.parent().filter(|p| !p.as_os_str().is_empty()) {
            sync_dir(parent)?;
        }
    }
    let folder = File::open(dest).map_err(Error::file_io(dest))?;
    match folder.try_lock() {
        Ok(()) => Ok(folder),
        Err(std::fs::TryLockError::WouldBlock) => Err(Error::Busy {
            what: format!(
                "backup folder {} (another backup is writing into it)",
                dest.display()
            ),
            timeout_ms: 0,
        }),
        Err(std::fs::TryLockError::Error(e)) => Err(Error::file_io(dest)(e)),
    }
}

//! Restoring a table from a backup: `CREATE VIRTUAL TABLE t USING imagestore(restore_from=DIR, ...)`.
//!
//! ```sql
//! CREATE VIRTUAL TABLE restored USING imagestore(restore_from='/backups/images', shards=4);
//! ```
//! The new table gets its own new shard files (any number: every row is placed by the
//! placement rule for the new count) and its own identity. Its columns are the backup's; a
//! CREATE that declares columns must declare exactly those.
//!
//! Invariants:
//! - Verified before visible: the whole backup is verified first (`folder::verify`), and
//!   every image is hashed again as it is copied; any problem refuses the restore.
//! - Onto servers (`shards='postgresql://...'`): verified before anything is made on a server;
//!   the rows go in as one transaction of the table's own protocol (two-phase commit across the
//!   servers), so the servers hold all of them or none; a table the servers already hold is
//!   filled only if it is empty (what a killed restore leaves), else refused. On an error, a
//!   table this CREATE made is dropped from the servers again.
//! - All or nothing: the backup is verified before any file is made; each new shard is created
//!   with a mark (`restore_incomplete` in `imagestore_meta`); rows are written inside one
//!   transaction per shard, committed only after every row is in, and synced; then each shard's
//!   mark is cleared. A shard that has the mark is
//!   refused by every open, so a crash part-way leaves files no table will use (a CREATE naming
//!   them says so). On an error the transactions are rolled back and the new shard files are
//!   removed. The table enters the schema only when CREATE returns, after all of this.

use std::path::Path;

use super::folder::{self, Manifest};
use crate::commit::Coordinator;
use crate::config::{validated_user_columns, TableConfig};
use crate::durable::sync_wals;
use crate::error::{Error, Result};
use crate::placement::shard_of;
use crate::server::ServerShard;
use crate::shard::{NewRow, ScanFilter, Shard};
use crate::table::TableShard;

/// Rows read from a backup file at a time.
const PAGE_ROWS: usize = 256;

fn untrusted(dir: &Path, detail: impl Into<String>) -> Error {
    Error::BadBackup {
        dir: dir.to_path_buf(),
        detail: detail.into(),
    }
}

/// Gives a table that is restored from a backup the backup's columns: those of its own shard 0
/// (or, on servers, those the first server registered) once it exists, the manifest's before.
/// Declared columns must be the same.
pub fn adopt_columns(config: &mut TableConfig) -> Result<()> {
    let Some(dir) = &config.restore_from else {
        return Ok(());
    };
    // Once the table exists, its own columns (the backup may be gone by then).
    let existing = match config.servers.first() {
        Some(anchor) => ServerShard::registered_columns(
            anchor.clone(),
            &config.table_name,
            config.busy_timeout_ms,
        )
        .ok()
        .flatten()
        .map(|columns| (columns, "the servers hold the table with")),
        None => match config
            .shard_paths
            .first()
            .map(|p| Shard::open_read_only(p, &[]))
        {
            Some(Ok(shard)) => Some((shard.user_columns()?, "the table's shard files have")),
            _ => None,
        },
    };
    let (source, from) = match existing {
        Some(found) => found,
        None => match folder::read_manifest(dir) {
            Ok(manifest) => (manifest.user_columns(), "the backup has"),
            // Neither exists: opening the table or the restore reports what is missing.
            Err(_) => return Ok(()),
        },
    };
    let source = validated_user_columns(source)?;
    let same = config.user_columns.len() == source.len()
        && config.user_columns.iter().zip(&source).all(|(a, b)| {
            a.name.eq_ignore_ascii_case(&b.name) && a.decl_type.eq_ignore_ascii_case(&b.decl_type)
        });
    if !config.user_columns.is_empty() && !same {
        let list: Vec<String> = source
            .iter()
            .map(|c| format!("{} {}", c.name, c.decl_type).trim().to_string())
            .collect();
        return Err(Error::BadArgument(format!(
            "restore_from: {from} the columns ({}); declare exactly these, or none",
            list.join(", ")
        )));
    }
    config.user_columns = source;
    Ok(())
}

/// The manifest of the backup in `dir`, once the whole backup is verified and its columns are
/// the table's; an error otherwise.
pub fn trusted_manifest(dir: &Path, config: &TableConfig) -> Result<Manifest> {
    let (manifest, problems) = folder::verify(dir)?;
    if !problems.is_empty() {
        return Err(untrusted(
            dir,
            format!(
                "imagestore_verify finds {} problem(s), the first: {}",
                problems.len(),
                problems[0]
            ),
        ));
    }
    if manifest.user_columns() != config.user_columns {
        return Err(Error::BadArgument(format!(
            "the backup in {} has other columns than the table declares",
            dir.display()
        )));
    }
    Ok(manifest)
}

/// Fills the new, empty, marked `shards` of the table from the verified backup in `dir`, all or
/// nothing. On an error the shards are left rolled back; the caller removes their files.
pub fn restore(
    dir: &Path,
    manifest: &Manifest,
    config: &TableConfig,
    shards: &[Shard],
) -> Result<()> {
    for shard in shards {
        shard.begin_write()?;
    }
    let copied = copy_rows(dir, manifest, config, shards.len(), |index, row, data| {
        shards[index].insert_restored(row, data)
    });
    if let Err(e) = copied {
        for shard in shards {
            let _ = shard.rollback();
        }
        return Err(e);
    }
    for shard in shards {
        crate::fault::check("restore_commit")?;
        shard.commit()?;
    }
    let paths: Vec<&Path> = shards.iter().map(|s| s.path.as_path()).collect();
    sync_wals(&paths)?;
    // Every shard holds all of its rows, durably: only now may any of them lose its mark.
    for shard in shards {
        shard.clear_restoring()?;
    }
    Ok(())
}

/// Fills a new table on servers (its `shards`, just made, or an empty one they held already)
/// from the verified backup in `dir`: one transaction of the table's own protocol, so that
/// every row is on the servers, or none is. On an error it is aborted everywhere.
pub fn restore_into_servers(
    dir: &Path,
    manifest: &Manifest,
    config: &TableConfig,
    shards: &mut [TableShard],
    coordinator: &mut Coordinator,
) -> Result<()> {
    coordinator.begin_write(shards)?;
    let filled = refuse_rows(config, shards).and_then(|()| {
        copy_rows(dir, manifest, config, shards.len(), |index, row, data| {
            let txid = coordinator.record_write(index)?;
            shards[index].insert(txid, row, data)
        })
    });
    if let Err(e) = filled {
        coordinator.rollback(shards);
        return Err(e);
    }
    if let Err(e) = coordinator.sync(shards, None) {
        coordinator.rollback(shards);
        return Err(e);
    }
    coordinator.commit(shards);
    Ok(())
}

/// Refuses to restore into servers that hold rows of the table already.
fn refuse_rows(config: &TableConfig, shards: &[TableShard]) -> Result<()> {
    let mut rows = 0;
    for shard in shards {
        rows += shard.totals()?.0;
    }
    match rows {
        0 => Ok(()),
        _ => Err(Error::BadArgument(format!(
            "restore_from fills a new table, but the servers already hold table {} with {rows} rows (another table, or a restore that finished there): CREATE it without restore_from to open it, or drop it first",
            config.table_name
        ))),
    }
}

/// Copies every row of the backup, checked against its hash and size, to `insert` with the
/// shard (of `shard_count`) the placement rule gives it; checks that the rows and image bytes
/// copied are the manifest's.
fn copy_rows(
    dir: &Path,
    manifest: &Manifest,
    config: &TableConfig,
    shard_count: usize,
    mut insert: impl FnMut(usize, &NewRow, &[u8]) -> Result<()>,
) -> Result<()> {
    let (mut rows, mut image_bytes) = (0, 0);
    for backup_shard in 0..manifest.shards {
        let files = manifest.files_of(backup_shard);
        let Some((newest, earlier)) = files.split_last() else {
            continue;
        };
        let newest = Shard::open_read_only(&dir.join(&newest.name), &config.user_columns)?;
        let earlier: Vec<Shard> = earlier
            .iter()
            .rev()
            .map(|f| Shard::open_read_only(&dir.join(&f.name), &[]))
            .collect::<Result<_>>()?;
        let mut after = None;
        loop {
            let page = newest.scan_page(&ScanFilter::default(), after, PAGE_ROWS)?;
            let Some(last) = page.last() else {
                break;
            };
            after = Some(last.id);
            for row in &page {
                let mut data = newest.stored_image(row)?;
                for file in &earlier {
                    if data.is_some() {
                        break;
                    }
                    data = file.image_by_hash(&row.hash)?;
                }
                let data = data.ok_or_else(|| {
                    untrusted(
                        dir,
                        format!("row {}: its image bytes are in no file", row.id),
                    )
                })?;
                if blake3::hash(&data).to_hex().as_str() != row.hash
                    || usize::try_from(row.bytes).ok() != Some(data.len())
                {
                    return Err(untrusted(
                        dir,
                        format!(
                            "row {}: image bytes do not match their hash or size",
                            row.id
                        ),
                    ));
                }
                insert(shard_of(row.id, shard_count), &NewRow::from(row), &data)?;
                rows += 1;
                image_bytes += data.len() as i64;
            }
        }
    }
    if (rows, image_bytes) != (manifest.rows, manifest.image_bytes) {
        return Err(untrusted(
            dir,
            format!(
                "restored {rows} rows and {image_bytes} image bytes; the manifest says {} and {}",
                manifest.rows, manifest.image_bytes
            ),
        ));
    }
    Ok(())
}

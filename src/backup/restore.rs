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
//! - All or nothing: the backup is verified before any file is made; each new shard is created
//!   with a mark (`restore_incomplete` in `imagestore_meta`); rows are written inside one
//!   transaction per shard, committed only after every row is in, and synced; then each shard's
//!   mark is cleared. A shard that has the mark is
//!   refused by every open, so a crash part-way leaves files no table will use (a CREATE naming
//!   them says so). On an error the transactions are rolled back and the new shard files are
//!   removed. The table enters the schema only when CREATE returns, after all of this.

use std::path::Path;

use super::folder::{self, Manifest};
use crate::config::{validated_user_columns, TableConfig};
use crate::durable::sync_wals;
use crate::error::{Error, Result};
use crate::placement::shard_of;
use crate::shard::{NewRow, ScanFilter, Shard};

/// Rows read from a backup file at a time.
const PAGE_ROWS: usize = 256;

fn untrusted(dir: &Path, detail: impl Into<String>) -> Error {
    Error::BadBackup {
        dir: dir.to_path_buf(),
        detail: detail.into(),
    }
}

/// Gives a table that is restored from a backup the backup's columns: those of its own shard 0
/// once it exists, the manifest's before. Declared columns must be the same.
pub fn adopt_columns(config: &mut TableConfig) -> Result<()> {
    let Some(dir) = &config.restore_from else {
        return Ok(());
    };
    let (source, from) = match Shard::open_read_only(&config.shard_paths[0], &[]) {
        Ok(shard) => (shard.user_columns()?, "the table's shard files have"),
        Err(_) => match folder::read_manifest(dir) {
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
    let copied = copy_rows(dir, manifest, config, shards).and_then(|totals| {
        if totals == (manifest.rows, manifest.image_bytes) {
            Ok(())
        } else {
            Err(untrusted(
                dir,
                format!(
                    "restored {} rows and {} image bytes; the manifest says {} and {}",
                    totals.0, totals.1, manifest.rows, manifest.image_bytes
                ),
            ))
        }
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

/// Copies every row of the backup into the shard the placement rule gives it; returns the rows
/// and image bytes copied.
fn copy_rows(
    dir: &Path,
    manifest: &Manifest,
    config: &TableConfig,
    shards: &[Shard],
) -> Result<(i64, i64)> {
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
                shards[shard_of(row.id, shards.len())]
                    .insert_restored(&NewRow::from(row), &data)?;
                rows += 1;
                image_bytes += data.len() as i64;
            }
        }
    }
    Ok((rows, image_bytes))
}

//! Consistent online backup of a sharded table, and its verification.
//!
//! ```sql
//! SELECT imagestore_backup('images', '/backups/images-2026-11-24');  -- JSON summary
//! SELECT imagestore_verify('/backups/images-2026-11-24');            -- JSON: ok, problems
//! ```
//! A backup folder holds `shard<i>.db` (ordinary SQLite files, one per shard) and, written last,
//! `manifest.json` (format version, table, shard count, columns, rows, image bytes, the last
//! transaction included, and each file's size and BLAKE3).
//!
//! Invariants:
//! - Consistent cut: every shard is copied from one read snapshot of the table, taken as a query
//!   takes it (under the publish lock), so each transaction is in the backup whole or not at all,
//!   and no undecided transaction is. Writers are never blocked by the copy (WAL readers do not
//!   block writers); they wait only while the snapshot is opened.
//! - Atomic: the manifest is written to a temporary name, synced, and renamed into place only after
//!   every shard file and the folder are synced. A folder without a manifest is an incomplete
//!   backup, and verify refuses it; a kill at any moment leaves either that or a whole backup.
//! - The destination must not exist (or be an empty folder): a backup never overwrites anything.

use std::fs::{self, File};
use std::io::Write;
use std::path::Path;

use crate::error::{Error, Result};
use crate::maintenance::on_snapshot;
use crate::shard::Shard;
use crate::vtab::TableCore;

pub const MANIFEST: &str = "manifest.json";
pub const FORMAT: &str = "imagestore-backup";
pub const FORMAT_VERSION: u32 = 1;

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    Error::journal_io(path)
}

fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_error(dir))
}

/// Size and BLAKE3 of a file, read in blocks.
fn file_digest(path: &Path) -> Result<(u64, String)> {
    let mut hasher = blake3::Hasher::new();
    let file = File::open(path).map_err(io_error(path))?;
    hasher.update_reader(file).map_err(io_error(path))?;
    let bytes = fs::metadata(path).map_err(io_error(path))?.len();
    Ok((bytes, hasher.finalize().to_hex().to_string()))
}

fn shard_file(index: usize) -> String {
    format!("shard{index}.db")
}

/// Backs the table up into `dest`; returns the JSON summary.
pub fn backup(core: &TableCore, dest: &Path) -> Result<String> {
    let started = std::time::Instant::now();
    match fs::read_dir(dest).map(|mut entries| entries.next().is_some()) {
        Ok(true) => {
            return Err(Error::BadArgument(format!(
                "{} exists and is not empty: choose a new folder",
                dest.display()
            )))
        }
        Ok(false) => {}
        Err(_) => fs::create_dir_all(dest).map_err(io_error(dest))?,
    }
    let snapshot_started = std::time::Instant::now();
    let mut snapshot_ms = 0.0;
    let copied = on_snapshot(core, |core| {
        snapshot_ms = snapshot_started.elapsed().as_secs_f64() * 1000.0;
        copy_shards(core, dest)
    });
    let (rows, image_bytes, last_txid) = copied?;
    let mut files = Vec::new();
    let mut bytes_written = 0;
    for index in 0..core.config.shard_paths.len() {
        let path = dest.join(shard_file(index));
        File::open(&path)
            .and_then(|f| f.sync_all())
            .map_err(io_error(&path))?;
        let (bytes, hash) = file_digest(&path)?;
        bytes_written += bytes;
        files.push(format!(
            "{{\"name\":\"{}\",\"bytes\":{bytes},\"blake3\":\"{hash}\"}}",
            shard_file(index)
        ));
    }
    sync_dir(dest)?;
    let columns: Vec<String> = core
        .config
        .user_columns
        .iter()
        .map(|c| {
            format!(
                "{{\"name\":{},\"type\":\"{}\"}}",
                json_string(&c.name),
                c.decl_type
            )
        })
        .collect();
    let manifest = format!(
        "{{\"format\":\"{FORMAT}\",\"version\":{FORMAT_VERSION},\"table\":{},\"shards\":{},\"columns\":[{}],\
         \"rows\":{rows},\"image_bytes\":{image_bytes},\"last_txid\":{last_txid},\"files\":[{}]}}\n",
        json_string(&core.config.table_name),
        core.config.shard_paths.len(),
        columns.join(","),
        files.join(",")
    );
    write_atomically(&dest.join(MANIFEST), manifest.as_bytes())?;
    Ok(format!(
        "{{\"shards\":{},\"rows\":{rows},\"image_bytes\":{image_bytes},\"bytes_written\":{bytes_written},\
         \"last_txid\":{last_txid},\"writers_held_ms\":{snapshot_ms:.3},\"seconds\":{:.3}}}",
        core.config.shard_paths.len(),
        started.elapsed().as_secs_f64()
    ))
}

/// Copies every shard from the open snapshot; returns rows, image bytes, and the last txid.
fn copy_shards(core: &TableCore, dest: &Path) -> Result<(i64, i64, u64)> {
    let shards = core.shards.borrow();
    let (mut rows, mut image_bytes, mut last_txid) = (0, 0, 0);
    for (index, shard) in shards.iter().enumerate() {
        crate::fault::check("backup_shard")?;
        let (r, b) = shard.totals()?;
        rows += r;
        image_bytes += b;
        last_txid = last_txid.max(shard.last_txid()?);
        shard.backup_to(&dest.join(shard_file(index)))?;
    }
    Ok((rows, image_bytes, last_txid))
}

fn write_atomically(path: &Path, contents: &[u8]) -> Result<()> {
    let tmp = path.with_extension("json.tmp");
    let mut file = File::create(&tmp).map_err(io_error(&tmp))?;
    file.write_all(contents)
        .and_then(|()| file.sync_all())
        .map_err(io_error(&tmp))?;
    fs::rename(&tmp, path).map_err(io_error(path))?;
    sync_dir(path.parent().unwrap_or(Path::new(".")))
}

/// A JSON string literal.
pub fn json_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// The value of `"key":` in a flat JSON text written by `backup` (numbers and strings only).
fn json_field<'a>(json: &'a str, key: &str) -> Option<&'a str> {
    let at = json.find(&format!("\"{key}\":"))? + key.len() + 3;
    let rest = &json[at..];
    let end = if let Some(stripped) = rest.strip_prefix('"') {
        return stripped.find('"').map(|e| &stripped[..e]);
    } else {
        rest.find([',', '}', ']']).unwrap_or(rest.len())
    };
    Some(rest[..end].trim())
}

/// Re-checks a backup folder: manifest, every file's size and BLAKE3, every shard's integrity,
/// and every image against its stored hash. Returns JSON `{"ok", "problems": [...]}`.
pub fn verify(dir: &Path) -> Result<String> {
    let manifest_path = dir.join(MANIFEST);
    let manifest = fs::read_to_string(&manifest_path).map_err(|_| {
        Error::BadArgument(format!(
            "{} holds no {MANIFEST}: it is not a backup, or an incomplete one (never trust it)",
            dir.display()
        ))
    })?;
    if json_field(&manifest, "format") != Some(FORMAT) {
        return Err(Error::BadArgument(format!(
            "{}: not an imagestore backup manifest",
            manifest_path.display()
        )));
    }
    let mut problems = Vec::new();
    let mut files = Vec::new();
    let listed = manifest
        .split_once("\"files\":[")
        .map_or("", |(_, files)| files);
    for entry in listed.split("{\"name\":").skip(1) {
        let record = format!("{{\"name\":{entry}");
        let (Some(name), Some(bytes), Some(hash)) = (
            json_field(&record, "name"),
            json_field(&record, "bytes"),
            json_field(&record, "blake3"),
        ) else {
            problems.push("manifest: a damaged file entry".to_string());
            continue;
        };
        if name.contains(['/', '\\']) || name.starts_with('.') {
            problems.push(format!(
                "manifest: file name {name} points outside the backup"
            ));
            continue;
        }
        let path = dir.join(name);
        match file_digest(&path) {
            Err(_) => problems.push(format!("{name}: missing")),
            Ok((found_bytes, found_hash)) => {
                if found_bytes.to_string() != bytes || found_hash != hash {
                    problems.push(format!(
                        "{name}: size or BLAKE3 differs from the manifest (damaged)"
                    ));
                }
            }
        }
        files.push(path);
    }
    let shard_count: usize = json_field(&manifest, "shards")
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    if files.len() != shard_count {
        problems.push(format!(
            "manifest lists {} shard files for {shard_count} shards",
            files.len()
        ));
    }
    for (index, path) in files.iter().enumerate() {
        check_shard_file(index, path, &mut problems);
    }
    let list: Vec<String> = problems.iter().map(|p| json_string(p)).collect();
    Ok(format!(
        "{{\"ok\":{},\"shards\":{shard_count},\"problems\":[{}]}}",
        problems.is_empty(),
        list.join(",")
    ))
}

/// Integrity and image hashes of one backup shard file, read-only.
fn check_shard_file(index: usize, path: &Path, problems: &mut Vec<String>) {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let checked = (|| -> Result<()> {
        let shard = Shard::open_read_only(path)?;
        for line in shard.integrity_problems()? {
            problems.push(format!("{name}: integrity_check: {line}"));
        }
        shard.for_each_image(|id, hash, data| match data {
            None => problems.push(format!("{name}: row {id}: image bytes missing")),
            Some(data) if blake3::hash(data).to_hex().as_str() != hash => problems.push(format!(
                "{name}: row {id}: image bytes do not match their hash"
            )),
            Some(_) => {}
        })
    })();
    if let Err(e) = checked {
        problems.push(format!("shard {index} ({name}): {e}"));
    }
}

//! The backup folder: its layout, its manifest, and verifying it.
//!
//! ```text
//! /backups/images/
//!   shard0.g1.db  shard1.g1.db ...   generation 1: a full copy of every shard
//!   shard0.g2.db  shard1.g2.db ...   generation 2 (incremental): every row, and only the images
//!                                    that no earlier file of the same shard holds
//!   manifest.json                    written last; names every file the backup needs
//! ```
//! Every file is an ordinary SQLite database with the shard schema (`images`, `blobs`,
//! `imagestore_meta`); a user can open one with the sqlite3 shell. The newest generation's files
//! hold every row of the backup; a row whose bytes are not in its own file finds them, by BLAKE3
//! hash, in an earlier generation's file of the same shard.
//!
//! Invariants:
//! - A folder is a backup exactly when it holds a `manifest.json` that parses; the manifest is
//!   renamed into place only after every file it names, and the folder, are synced. Files the
//!   manifest does not name are leftovers of an interrupted backup and are never read.
//! - Files named in a manifest are never changed: a later generation adds files and replaces the
//!   manifest, so a crash during an incremental backup leaves the previous backup whole.
//! - Verify trusts nothing: each file's size and BLAKE3 against the manifest, each file's
//!   `PRAGMA integrity_check`, each image against its stored hash, each row's bytes present in
//!   its file or an earlier one, and the manifest's totals against the newest files.

use std::collections::HashSet;
use std::fs::{self, File};
use std::io::Write;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::config::{validated_user_columns, UserColumn, SHARD_COUNT_MAX};
use crate::error::{Error, Result};
use crate::files::remove_files;
use crate::placement::shard_of;
use crate::shard::{parse_hash, Shard};

pub const MANIFEST: &str = "manifest.json";
const MANIFEST_TMP: &str = "manifest.json.tmp";
/// Present while a backup writes into the folder: files without a manifest are leftovers only
/// when it is there (a folder whose manifest was lost is refused, never emptied).
pub const IN_PROGRESS: &str = "backup-in-progress";
pub const FORMAT: &str = "imagestore-backup";
pub const FORMAT_VERSION: u32 = 1;

/// `manifest.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Manifest {
    pub format: String,
    pub version: u32,
    /// The name of the table backed up, and its identity (hex), which stays with its shards.
    pub table: String,
    pub table_id: String,
    pub shards: usize,
    pub columns: Vec<ManifestColumn>,
    /// 1 for the first backup into the folder, one more for each incremental backup.
    pub generation: u32,
    /// Rows and image bytes in the backup (the newest generation).
    pub rows: i64,
    pub image_bytes: i64,
    /// The last transaction the backup includes.
    pub last_txid: u64,
    pub taken_unix_ms: u64,
    pub files: Vec<ManifestFile>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestColumn {
    pub name: String,
    #[serde(rename = "type")]
    pub decl_type: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ManifestFile {
    pub name: String,
    pub shard: usize,
    pub generation: u32,
    pub bytes: u64,
    pub blake3: String,
}

impl From<&UserColumn> for ManifestColumn {
    fn from(column: &UserColumn) -> Self {
        ManifestColumn {
            name: column.name.clone(),
            decl_type: column.decl_type.clone(),
        }
    }
}

impl Manifest {
    pub fn user_columns(&self) -> Vec<UserColumn> {
        self.columns
            .iter()
            .map(|c| UserColumn {
                name: c.name.clone(),
                decl_type: c.decl_type.clone(),
            })
            .collect()
    }

    /// The files of shard `shard`, oldest generation first.
    pub fn files_of(&self, shard: usize) -> Vec<&ManifestFile> {
        let mut files: Vec<&ManifestFile> =
            self.files.iter().filter(|f| f.shard == shard).collect();
        files.sort_by_key(|f| f.generation);
        files
    }
}

/// The name of shard `shard`'s file of generation `generation`.
pub fn file_name(shard: usize, generation: u32) -> String {
    format!("shard{shard}.g{generation}.db")
}

/// Whether a name is one a backup writes (a shard file and SQLite's files beside it, the
/// manifest's temporary, the in-progress mark): such a file not named by the manifest is a
/// leftover of an interrupted backup.
fn is_backup_file_name(name: &str) -> bool {
    let shard_file = ["", "-journal", "-wal", "-shm"]
        .iter()
        .find_map(|suffix| name.strip_suffix(&format!(".db{suffix}")))
        .and_then(|stem| stem.strip_prefix("shard"))
        .and_then(|rest| rest.split_once(".g"))
        .is_some_and(|(shard, generation)| {
            [shard, generation]
                .iter()
                .all(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
        });
    shard_file || name == MANIFEST_TMP || name == IN_PROGRESS
}

/// Size and BLAKE3 (hex) of a file, read in blocks.
pub fn file_digest(path: &Path) -> Result<(u64, String)> {
    if !fs::metadata(path).map_err(Error::file_io(path))?.is_file() {
        return Err(Error::file_io(path)(std::io::Error::other(
            "not a regular file",
        )));
    }
    let mut hasher = blake3::Hasher::new();
    let file = File::open(path).map_err(Error::file_io(path))?;
    hasher.update_reader(file).map_err(Error::file_io(path))?;
    let bytes = fs::metadata(path).map_err(Error::file_io(path))?.len();
    Ok((bytes, hasher.finalize().to_hex().to_string()))
}

fn untrusted(dir: &Path, detail: impl Into<String>) -> Error {
    Error::BadBackup {
        dir: dir.to_path_buf(),
        detail: detail.into(),
    }
}

/// Reads and parses the manifest of the backup in `dir`.
pub fn read_manifest(dir: &Path) -> Result<Manifest> {
    let path = dir.join(MANIFEST);
    let text = fs::read_to_string(&path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => untrusted(
            dir,
            format!("it holds no {MANIFEST}: it is not a backup, or one that was interrupted"),
        ),
        std::io::ErrorKind::InvalidData => untrusted(dir, format!("{MANIFEST} is damaged ({e})")),
        _ => Error::file_io(&path)(e),
    })?;
    let mut manifest: Manifest = serde_json::from_str(&text)
        .map_err(|e| untrusted(dir, format!("{MANIFEST} is damaged ({e})")))?;
    if manifest.format != FORMAT {
        return Err(untrusted(
            dir,
            format!("{MANIFEST} is not an imagestore backup manifest"),
        ));
    }
    if manifest.version != FORMAT_VERSION {
        return Err(untrusted(
            dir,
            format!(
                "backup format version {} (this build reads {FORMAT_VERSION})",
                manifest.version
            ),
        ));
    }
    if manifest.shards == 0 || manifest.shards > SHARD_COUNT_MAX {
        return Err(untrusted(
            dir,
            format!("{MANIFEST} gives {} shards", manifest.shards),
        ));
    }
    // Columns go into SQL when a table is restored: they must be what a declaration allows.
    let columns = validated_user_columns(manifest.user_columns())
        .map_err(|e| untrusted(dir, format!("{MANIFEST} lists columns no table has: {e}")))?;
    manifest.columns = columns.iter().map(ManifestColumn::from).collect();
    Ok(manifest)
}

/// Writes `manifest` into `dir` atomically: a temporary file, synced, then renamed over the old
/// one. The caller syncs the folder; once this returns, the new manifest may be the folder's.
pub fn write_manifest(dir: &Path, manifest: &Manifest) -> Result<()> {
    let text = serde_json::to_string_pretty(manifest)
        .map_err(|e| Error::Internal(format!("manifest: {e}")))?;
    let tmp = dir.join(MANIFEST_TMP);
    let mut file = File::create(&tmp).map_err(Error::file_io(&tmp))?;
    file.write_all(text.as_bytes())
        .and_then(|()| file.write_all(b"\n"))
        .and_then(|()| file.sync_all())
        .map_err(Error::file_io(&tmp))?;
    let path = dir.join(MANIFEST);
    fs::rename(&tmp, &path).map_err(Error::file_io(&path))
}

/// What a backup finds at its destination.
pub enum Destination {
    /// A new or empty folder (leftovers of an interrupted first backup were removed).
    New,
    /// A backup of this table: the next backup is incremental.
    Earlier(Manifest),
}

/// Readies the existing folder `dir` for a backup of the table with identity `table_id` and
/// `shards` shards: accepts it empty, or holding an earlier backup of the same table, and
/// removes leftovers of an interrupted backup. Anything else is refused, and nothing touched.
pub fn prepare_destination(dir: &Path, table_id: &str, shards: usize) -> Result<Destination> {
    let names: Vec<String> = fs::read_dir(dir)
        .map_err(Error::file_io(dir))?
        .map(|entry| entry.map(|e| e.file_name().to_string_lossy().into_owned()))
        .collect::<std::io::Result<_>>()
        .map_err(Error::file_io(dir))?;
    let not_a_backup = |why: &str| {
        Error::BadArgument(format!(
            "{} {why}: choose a new folder (a backup never overwrites anything)",
            dir.display()
        ))
    };
    let earlier = if names.iter().any(|n| n == MANIFEST) {
        let manifest = read_manifest(dir).map_err(|e| match e {
            Error::BadBackup { detail, .. } => {
                not_a_backup(&format!("holds a backup that cannot be trusted ({detail})"))
            }
            other => other,
        })?;
        if manifest.table_id != table_id {
            return Err(not_a_backup(&format!(
                "holds a backup of another table ({}, id {})",
                manifest.table, manifest.table_id
            )));
        }
        if manifest.shards != shards {
            return Err(not_a_backup(&format!(
                "holds a backup of this table when it had {} shards, not {shards}",
                manifest.shards
            )));
        }
        Some(manifest)
    } else {
        None
    };
    let listed: HashSet<&str> = earlier
        .iter()
        .flat_map(|m| m.files.iter().map(|f| f.name.as_str()))
        .collect();
    let interrupted = earlier.is_some() || names.iter().any(|n| n == IN_PROGRESS);
    let mut leftovers = Vec::new();
    for name in &names {
        // The in-progress mark stays until the backup that finds it succeeds: were it removed
        // with the other leftovers, a second interruption would leave them unrecognised.
        if name == MANIFEST || name == IN_PROGRESS || listed.contains(name.as_str()) {
            continue;
        }
        if !is_backup_file_name(name) {
            return Err(not_a_backup(&format!(
                "holds {name}, which no imagestore backup writes"
            )));
        }
        if !interrupted {
            return Err(not_a_backup(&format!(
                "holds {name} but no {MANIFEST}, and no backup was interrupted there (was {MANIFEST} removed?)"
            )));
        }
        leftovers.push(dir.join(name));
    }
    remove_files(&leftovers)?;
    Ok(match earlier {
        Some(manifest) => Destination::Earlier(manifest),
        None => Destination::New,
    })
}

/// Verifies the backup in `dir`; returns its manifest and every problem found (none: the
/// backup can be trusted). A folder that holds no readable manifest is an error.
pub fn verify(dir: &Path) -> Result<(Manifest, Vec<String>)> {
    let manifest = read_manifest(dir)?;
    let mut problems = Vec::new();
    let mut names = HashSet::new();
    for file in &manifest.files {
        if file.name.contains(['/', '\\']) || file.name.starts_with('.') {
            problems.push(format!(
                "{MANIFEST}: file name {} points outside the backup",
                file.name
            ));
            continue;
        }
        if !names.insert(file.name.as_str())
            || file.shard >= manifest.shards
            || file.generation > manifest.generation
        {
            problems.push(format!(
                "{MANIFEST}: entry {} is repeated or out of range",
                file.name
            ));
            continue;
        }
        match file_digest(&dir.join(&file.name)) {
            Err(_) => problems.push(format!("{}: missing", file.name)),
            Ok((bytes, hash)) if bytes != file.bytes || hash != file.blake3 => {
                problems.push(format!(
                    "{}: size or BLAKE3 differs from {MANIFEST} (damaged)",
                    file.name
                ))
            }
            Ok(_) => {}
        }
    }
    if problems.iter().any(|p| p.starts_with(MANIFEST)) {
        // A manifest naming files outside the folder, or repeating them, is not followed.
        return Ok((manifest, problems));
    }
    let (mut rows, mut image_bytes) = (0, 0);
    for shard in 0..manifest.shards {
        let files = manifest.files_of(shard);
        match files.last() {
            Some(newest) if newest.generation == manifest.generation => {}
            _ => {
                problems.push(format!(
                    "{MANIFEST}: no file of generation {} for shard {shard}",
                    manifest.generation
                ));
                continue;
            }
        }
        let (r, b) = check_shard_files(dir, &manifest, &files, &mut problems);
        rows += r;
        image_bytes += b;
    }
    if problems.is_empty() && (rows, image_bytes) != (manifest.rows, manifest.image_bytes) {
        problems.push(format!(
            "the newest files hold {rows} rows and {image_bytes} image bytes; {MANIFEST} says {} and {}",
            manifest.rows, manifest.image_bytes
        ));
    }
    Ok((manifest, problems))
}

/// Checks one shard's files, oldest first: each is the file its manifest entry says, intact,
/// every row on its shard by the placement rule, every image against its hash, and a row whose
/// bytes its file does not hold finds them in an earlier file. Returns the rows and image bytes
/// of the newest file.
fn check_shard_files(
    dir: &Path,
    manifest: &Manifest,
    files: &[&ManifestFile],
    problems: &mut Vec<String>,
) -> (i64, i64) {
    let mut held: HashSet<blake3::Hash> = HashSet::new();
    let mut totals = (0, 0);
    for file in files {
        let name = &file.name;
        let checked = (|| -> Result<(i64, i64)> {
            let shard = Shard::open_read_only(&dir.join(name), &[])?;
            for line in shard.integrity_problems()? {
                problems.push(format!("{name}: integrity_check: {line}"));
            }
            check_file_identity(&shard, manifest, file, problems)?;
            let mut found = Vec::new();
            shard.for_each_image(|id, hash, data| {
                let home = shard_of(id, manifest.shards);
                if home != file.shard {
                    problems.push(format!("{name}: row {id} belongs on shard {home}"));
                }
                let stored = parse_hash(hash);
                match data.map(blake3::hash) {
                    Some(actual) if stored == Some(actual) => found.push(actual),
                    Some(_) => problems
                        .push(format!("{name}: row {id}: image bytes do not match their hash")),
                    None if stored.is_some_and(|stored| held.contains(&stored)) => {}
                    None => problems.push(format!(
                        "{name}: row {id}: image bytes are in no file of this or an earlier generation"
                    )),
                }
            })?;
            held.extend(found);
            shard.totals()
        })();
        match checked {
            Ok(file_totals) => totals = file_totals,
            Err(e) => problems.push(format!("{name}: {e}")),
        }
    }
    totals
}

/// Checks that a file is named, and is, the shard its manifest entry says, of the table and with
/// the columns the manifest says, and that it holds no protocol state.
fn check_file_identity(
    shard: &Shard,
    manifest: &Manifest,
    file: &ManifestFile,
    problems: &mut Vec<String>,
) -> Result<()> {
    let name = &file.name;
    if *name != file_name(file.shard, file.generation) {
        problems.push(format!(
            "{MANIFEST}: {name} is listed as shard {} generation {}",
            file.shard, file.generation
        ));
    }
    let identity = shard.identity(&manifest.user_columns())?;
    if identity.table_id_hex() != manifest.table_id || identity.shard_index != file.shard {
        problems.push(format!(
            "{name}: is shard {} of table {}, not shard {} of {}",
            identity.shard_index,
            identity.table_id_hex(),
            file.shard,
            manifest.table_id
        ));
    }
    if shard.user_columns()? != manifest.user_columns() {
        problems.push(format!("{name}: its columns are not those of {MANIFEST}"));
    }
    if shard.protocol_state_rows()? != 0 {
        problems.push(format!(
            "{name}: holds protocol state (prepare records or before-states)"
        ));
    }
    Ok(())
}

/// `imagestore_verify(dir)`: JSON `{"ok", "generation", "shards", "rows", "problems": [...]}`.
pub fn verify_report(dir: &Path) -> Result<String> {
    let (manifest, problems) = verify(dir)?;
    Ok(serde_json::json!({
        "ok": problems.is_empty(),
        "table": manifest.table,
        "generation": manifest.generation,
        "shards": manifest.shards,
        "rows": manifest.rows,
        "image_bytes": manifest.image_bytes,
        "last_txid": manifest.last_txid,
        "problems": problems,
    })
    .to_string())
}

//! A table's shard set on disk: making it (staged, owned, never adopting another table's
//! files), opening it and checking it is one table's, settling what an unfinished CREATE or
//! DROP left, and the files a DROP may delete.

use std::path::{Path, PathBuf};

use rusqlite::ffi;

use crate::commit::control::Held;
use crate::commit::locks::LockFile;
use crate::commit::Coordinator;
use crate::config::{HostDatabase, Owner, TableConfig};
use crate::error::{Error, Result};
use crate::files::remove_files;
use crate::journal::TableId;
use crate::shard::{Lifecycle, Shard, ShardIdentity};
use crate::table::TableShard;

/// A fresh table identity: unique across machines and time for all practical purposes.
pub(crate) fn new_table_id(config: &TableConfig) -> TableId {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = blake3::Hasher::new();
    let random = std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    hasher.update(&random.to_le_bytes());
    hasher.update(&now.as_nanos().to_le_bytes());
    hasher.update(&std::process::id().to_le_bytes());
    hasher.update(config.journal_path.to_string_lossy().as_bytes());
    let mut id = [0u8; 16];
    id.copy_from_slice(&hasher.finalize().as_bytes()[..16]);
    id
}

/// Opens every shard of the table. A CREATE (`create`) makes new files, after removing what
/// this table's own CREATE or DROP left unfinished; it takes existing files only when they are
/// a live table's and the CREATE names them (`shards='a.db,...'`), to share them. Returns the
/// table's identity, its shards, and whether they were made now.
pub(crate) fn open_shards(
    config: &TableConfig,
    create: bool,
) -> Result<(TableId, Vec<Shard>, bool)> {
    let existing: Vec<&Path> = config
        .shard_paths
        .iter()
        .filter(|p| std::fs::symlink_metadata(p).is_ok())
        .map(|p| p.as_path())
        .collect();
    if create && !existing.is_empty() && are_leftovers(config, &existing) {
        // The creator or dropper holds the writer lock until its statement has committed or
        // rolled back: if it is free, nobody is making or removing these files any more.
        let lock = LockFile::open(&config.lock_path)?;
        if let Ok(_writer) = lock.exclusive("writer lock", 0) {
            if are_leftovers(config, &existing) {
                remove_files(&config.files())?;
                return create_shards(config).map(|(id, shards)| (id, shards, true));
            }
        }
    }
    if create && existing.is_empty() {
        return create_shards(config).map(|(id, shards)| (id, shards, true));
    }
    if create && (config.derived_paths || existing.len() < config.shard_count()) {
        return Err(Error::BadArgument(format!(
            "shard files {} already exist{}. A new table never takes over files it did not make: drop the table they belong to, delete them, or name other files with shards='...'",
            existing.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", "),
            owner_of(existing[0]).map_or(String::new(), |o| format!(" and belong to {o}"))
        )));
    }
    let (table_id, shards) = open_existing_shards(config)?;
    Ok((table_id, shards, false))
}

/// Makes every shard file of a new table; on an error, removes the files made so far. Each
/// file is made whole under a staging name and only then linked under its own, so that a CREATE
/// killed part-way leaves, under a shard's name, either nothing or a shard carrying this
/// table's creating mark (which the next CREATE of the table removes).
pub(crate) fn create_shards(config: &TableConfig) -> Result<(TableId, Vec<Shard>)> {
    let table_id = new_table_id(config);
    let count = config.shard_count();
    let mut shards = Vec::with_capacity(count);
    for (shard_index, path) in config.shard_paths.iter().enumerate() {
        let identity = ShardIdentity {
            table_id,
            shard_index,
            shard_count: count,
            protocol: config.protocol,
        };
        match create_shard(config, path, &identity) {
            Ok(shard) => shards.push(shard),
            Err(e) => {
                drop(shards);
                let mine: Vec<PathBuf> = config.shard_paths[..=shard_index]
                    .iter()
                    .flat_map(|p| crate::files::with_sqlite_files(p))
                    .collect();
                // Best effort: a file left behind carries this table's creating mark.
                let _ = remove_files(&mine);
                return Err(e);
            }
        }
    }
    Ok((table_id, shards))
}

/// Makes one shard file: written and synced under `<path>.creating`, then linked as `path`
/// (never replacing a file there) and reopened.
pub(crate) fn create_shard(
    config: &TableConfig,
    path: &Path,
    identity: &ShardIdentity,
) -> Result<Shard> {
    let staging = crate::files::with_suffix(path, ".creating");
    remove_files(&crate::files::with_sqlite_files(&staging))?;
    let shard = Shard::open(&staging, true, &config.user_columns, config.busy_timeout_ms)?;
    let made = shard
        .initialize(
            identity,
            &config.owner,
            &config.user_columns,
            config.restore_from.as_deref(),
        )
        .and_then(|()| shard.ensure_indexes(&config.indexes))
        .and_then(|()| shard.checkpoint());
    drop(shard);
    let linked = made.and_then(|()| {
        std::fs::hard_link(&staging, path).map_err(Error::file_io(path))?;
        remove_files(std::slice::from_ref(&staging))?;
        crate::files::sync_dir(path.parent().unwrap_or(Path::new(".")))
    });
    if let Err(e) = linked {
        let _ = remove_files(&crate::files::with_sqlite_files(&staging));
        return Err(e);
    }
    Shard::open(path, false, &config.user_columns, config.busy_timeout_ms)
}

/// Opens the shard files of an existing table and checks that they are one table's, in order.
pub(crate) fn open_existing_shards(config: &TableConfig) -> Result<(TableId, Vec<Shard>)> {
    let cols = &config.user_columns;
    let mut shards = Vec::with_capacity(config.shard_count());
    let mut table_id = None;
    for (index, path) in config.shard_paths.iter().enumerate() {
        let shard = Shard::open(path, false, cols, config.busy_timeout_ms)?;
        let identity = shard.identity(cols)?;
        let expected_id = *table_id.get_or_insert(identity.table_id);
        if identity.table_id != expected_id {
            return Err(Error::ShardForeign {
                path: path.clone(),
                detail: format!(
                    "belongs to another table than {}",
                    config.shard_paths[0].display()
                ),
            });
        }
        if identity.shard_index != index || identity.shard_count != config.shard_count() {
            return Err(Error::ShardForeign {
                path: path.clone(),
                detail: format!(
                    "is shard {} of {}, but the table lists it as shard {index} of {}",
                    identity.shard_index,
                    identity.shard_count,
                    config.shard_count()
                ),
            });
        }
        if identity.protocol != config.protocol {
            return Err(crate::shard::protocol_mismatch(
                identity.protocol,
                config.protocol,
            ));
        }
        shard.ensure_indexes(&config.indexes)?;
        shard.ensure_protocol_columns()?;
        shards.push(shard);
    }
    let table_id = table_id.ok_or_else(|| Error::Internal("a table without shards".into()))?;
    Ok((table_id, shards))
}

/// Who created the shard file at `path`, if it can be read.
pub(crate) fn owner_of(path: &Path) -> Option<Owner> {
    Shard::open_read_only(path, &[]).ok()?.owner().ok()?
}

/// Whether every one of the `existing` shard files is verifiably left by a CREATE or DROP that
/// did not finish: a shard marked creating or dropping whose owner is this table (its CREATE is
/// running, so the owner's schema has no table of this name: nobody uses them), or a
/// `:memory:` or temp database (whose tables die with their connection). The caller checks that
/// no live process holds them. Anything unreadable or someone else's is not.
pub(crate) fn are_leftovers(config: &TableConfig, existing: &[&Path]) -> bool {
    existing.iter().all(|path| {
        let Ok(shard) = Shard::open_read_only(path, &[]) else {
            return false;
        };
        let owner = shard.owner().ok().flatten();
        let ours_or_nobodys =
            owns(config, owner.as_ref()) || owner.is_some_and(|o| o.database.is_empty());
        ours_or_nobodys
            && matches!(
                shard.lifecycle(),
                Ok(Lifecycle::Creating | Lifecycle::Dropping)
            )
    })
}

/// Whether table `config` owns shard files whose recorded owner is `owner`: it created them;
/// or their names derive from its database's and table's (`shards=N`) and they were made by a
/// database of the same file name (the folder moved whole) or before owners were recorded.
pub(crate) fn owns(config: &TableConfig, owner: Option<&Owner>) -> bool {
    let file_name = |path: &str| Path::new(path).file_name().map(|n| n.to_os_string());
    match owner {
        Some(owner) if owner.is(&config.owner) => true,
        Some(owner) => {
            config.derived_paths
                && owner.table.eq_ignore_ascii_case(&config.owner.table)
                && !owner.database.is_empty()
                && file_name(&owner.database) == file_name(&config.owner.database)
        }
        None => config.derived_paths,
    }
}

/// On opening a table that SQLite's schema holds: a creating or dropping mark left by this
/// table's own CREATE that committed (or DROP that did not) is cleared; another table's mark
/// means its files are in its hands, and they are refused.
pub(crate) fn settle_lifecycle(
    config: &TableConfig,
    shards: &[TableShard],
    coordinator: &Coordinator,
) -> Result<()> {
    // Only shard files carry the marks.
    let shards: Vec<&Shard> = shards
        .iter()
        .filter_map(|shard| match shard {
            TableShard::Local(shard) => Some(shard),
            TableShard::Server(_) => None,
        })
        .collect();
    if shards.is_empty() {
        return Ok(());
    }
    let shards = shards.as_slice();
    let unsettled = |shards: &[&Shard]| -> Result<bool> {
        for shard in shards {
            if shard.lifecycle()? != Lifecycle::Live {
                return Ok(true);
            }
        }
        Ok(false)
    };
    if !unsettled(shards)? {
        return Ok(());
    }
    let owner = shards[0].owner()?;
    if !owns(config, owner.as_ref()) {
        return Err(Error::ShardForeign {
            path: config.shard_paths[0].clone(),
            detail: format!(
                "is being created or dropped by {}, or was left by its CREATE or DROP that did not finish",
                owner.map_or("another table".to_string(), |o| o.to_string())
            ),
        });
    }
    let _writer = coordinator.lock_writer()?;
    for shard in shards {
        shard.set_lifecycle(Lifecycle::Live)?;
    }
    Ok(())
}

/// The configuration of table `table_name` of database `schema` from its module arguments.
pub(crate) fn table_config(
    db: *mut ffi::sqlite3,
    schema: &str,
    table_name: &str,
    args: &[&str],
) -> Result<TableConfig> {
    let host_file = crate::host::host_filename(db, schema);
    let host = HostDatabase {
        file: host_file.as_deref().map(Path::new),
    };
    let mut config = TableConfig::parse(table_name, args, host)?;
    crate::backup::restore::adopt_columns(&mut config)?;
    Ok(config)
}

/// Fills the shards CREATE just made from the backup in `dir`; on any error, closes them and
/// removes the table's files again (see `backup::restore`).
pub(crate) fn restore_new_table(
    dir: &Path,
    manifest: &crate::backup::folder::Manifest,
    config: &TableConfig,
    shards: Vec<Shard>,
    created: bool,
) -> Result<Vec<Shard>> {
    if !created {
        return Err(Error::BadArgument(format!(
            "restore_from fills a new table, but its shard files belong to an existing table ({}); choose new shard files",
            config.shard_paths[0].display()
        )));
    }
    match crate::backup::restore::restore(dir, manifest, config, &shards) {
        Ok(()) => Ok(shards),
        Err(e) => {
            drop(shards);
            // Best effort: a file left behind makes a later CREATE fail naming it, never
            // makes a table of half a restore.
            let _ = remove_files(&config.shard_files());
            Err(e)
        }
    }
}

/// The files a DROP of an unusable table (a shard missing or damaged, the journal in doubt)
/// deletes once it has committed, with the writer lock held till then: each shard file that is
/// still readable, this table's (by its identity and owner), with SQLite's files beside it; and
/// the coordinator's files if one such shard vouches for them (the journal, if readable, names
/// the same table). A file that cannot be read stays: nothing shows whose it is. `None` if
/// nothing is verifiably this table's.
pub(crate) fn unusable_own_files(config: &TableConfig) -> Result<Option<(Vec<PathBuf>, Held)>> {
    let mut files = Vec::new();
    let mut table_id = None;
    for (index, path) in config.shard_paths.iter().enumerate() {
        let Ok(shard) = Shard::open_read_only(path, &config.user_columns) else {
            continue;
        };
        let ours = shard
            .identity(&config.user_columns)
            .ok()
            .filter(|identity| {
                identity.shard_index == index
                    && identity.shard_count == config.shard_count()
                    && table_id.is_none_or(|id| id == identity.table_id)
                    && shard
                        .owner()
                        .is_ok_and(|owner| owns(config, owner.as_ref()))
            });
        if let Some(identity) = ours {
            table_id = Some(identity.table_id);
            files.extend(crate::files::with_sqlite_files(path));
        }
    }
    let Some(table_id) = table_id else {
        return Ok(None);
    };
    if !config.journal_path.exists() || journal_names(&config.journal_path, &table_id) {
        files.extend([
            config.journal_path.clone(),
            config.lock_path.clone(),
            config.publish_lock_path.clone(),
        ]);
    }
    let lock = LockFile::open(&config.lock_path)?;
    let writer = Held::new(lock.exclusive("writer lock", config.busy_timeout_ms)?);
    Ok(Some((files, writer)))
}

/// Whether the journal file at `path` names table `table_id` in its header (bytes 8..24, see
/// `journal`), whatever state the rest of it is in.
pub(crate) fn journal_names(path: &Path, table_id: &TableId) -> bool {
    use std::io::Read;
    let mut head = [0u8; 24];
    std::fs::File::open(path)
        .and_then(|mut f| f.read_exact(&mut head))
        .is_ok_and(|()| head[8..24] == table_id[..])
}

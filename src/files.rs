//! Files beside a table's: the names SQLite and this extension give them, and plain-file
//! durability and removal (backups, a table's own files). No SQLite object here.

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// `base` with `suffix` appended to its file name (`a.db` + `-wal` = `a.db-wal`).
pub fn with_suffix(base: &Path, suffix: &str) -> PathBuf {
    let mut name = base.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}

/// fsyncs a file's contents.
pub fn sync_file(path: &Path) -> Result<()> {
    std::fs::File::open(path)
        .and_then(|f| f.sync_all())
        .map_err(Error::file_io(path))
}

/// fsyncs a folder, so that the names created or removed in it survive a power cut.
pub fn sync_dir(dir: &Path) -> Result<()> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(Error::file_io(dir))
}

/// A database file and the files SQLite keeps beside it (rollback journal, WAL, shared memory).
pub fn with_sqlite_files(db: &Path) -> [PathBuf; 4] {
    ["", "-journal", "-wal", "-shm"].map(|suffix| with_suffix(db, suffix))
}

/// Removes files; one that is already gone is not an error.
pub fn remove_files(files: &[PathBuf]) -> Result<()> {
    for file in files {
        match std::fs::remove_file(file) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(Error::file_io(file)(e))
            }
            _ => {}
        }
    }
    Ok(())
}

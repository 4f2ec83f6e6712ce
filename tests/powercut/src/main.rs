//! A FUSE file system for power-cut tests. It passes every operation through to a backing
//! folder and remembers what a power cut could take away: for each file, the writes and size
//! changes since its last fsync/fdatasync; for each directory, the names created, removed or
//! renamed in it since its last fsync. On command it cuts the power: it undoes all of that in
//! the backing folder (`cut all`), or, for each file and each directory on its own, a random
//! suffix of it (`cut random SEED`: each keeps a prefix of its own changes, in their order, as
//! a disk that reorders writes between files may; the oldest write undone in a file is torn
//! half the time, a random number of its first 512-byte sectors kept), and exits. The mount then answers every
//! call with an error until the tests unmount it, kill whatever used it, and mount the
//! surviving folder again (tests/powercut.py does all of that).
//!
//! Usage: `powercut BACKING MOUNTPOINT CONTROL_SOCKET`, run as root (it mounts with mount(2),
//! without libfuse or fusermount). The control socket takes one command per connection, a line,
//! and answers a line: `pending` (how many changes a cut would undo now), `cut all`,
//! `cut random SEED` (answered `cut N`, N the changes undone, before the process exits).
//!
//! The durability model, as strict as POSIX allows (stricter than ext4's ordered mode):
//! - a write, truncation or allocation is durable once its file is synced, through any of its
//!   names or handles (fdatasync counts as fsync), or at once for a handle opened O_SYNC/O_DSYNC;
//! - a name created, removed or renamed in a directory is durable once that directory is synced
//!   (a rename across directories, once the target directory is);
//! - nothing else is: a new file whose data was synced but whose directory was not is gone.
//!
//! POSIX and flock locks, and shared memory maps (SQLite's `-shm`), are left to the kernel, which
//! keeps them local to the mount; the maps' pages reach this file system as ordinary writes.
//!
//! Limits: a folder cannot be renamed (EXDEV, as across file systems); a file with several
//! names is reached through the last name looked up, so removing that name (and syncing its
//! folder) leaves the others unusable through this mount; each file keeps its writes in order,
//! torn only at the first one lost.
//! Removed names are kept, until their directory is synced, in a hidden folder of the backing
//! root (`.powercut-trash`), so that a cut can put them back.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, UNIX_EPOCH};

use fuser::{
    FileAttr, FileType, Filesystem, MountOption, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory,
    ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite, Request, TimeOrNow, FUSE_ROOT_ID,
};

/// How long the kernel may cache names and attributes. Nothing changes the backing folder
/// behind the kernel's back while mounted (a cut ends the mount).
const TTL: Duration = Duration::from_secs(1);
const TRASH: &str = ".powercut-trash";

/// Whose sync makes a change durable.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
enum Scope {
    /// A file's data and size (by inode).
    Data(u64),
    /// A directory's names (by inode).
    Names(u64),
}

/// How to take one change back.
enum Undo {
    /// Bytes `old` were at `offset` and the file was `old_len` long before a write of
    /// `written` bytes there, a truncation or an allocation (`written` 0).
    Data {
        file: Arc<File>,
        offset: u64,
        old: Vec<u8>,
        old_len: u64,
        written: u64,
    },
    /// A name was created (a file, folder, link or hard link).
    Created { path: PathBuf },
    /// A name was removed; what it named waits in the trash.
    Removed { path: PathBuf, trash: PathBuf },
    /// `from` was renamed to `to`, which named `replaced` (now in the trash) before.
    Renamed {
        from: PathBuf,
        to: PathBuf,
        replaced: Option<PathBuf>,
    },
}

/// An open file: the backing file, whether every write is synced (O_SYNC, O_DSYNC), and its
/// kernel inode number.
struct Handle {
    file: Arc<File>,
    sync: bool,
    ino: u64,
}

struct Change {
    scope: Scope,
    undo: Undo,
}

/// Everything the file system keeps; one lock for all, taken by each operation and by a cut.
struct State {
    root: PathBuf,
    /// Inode numbers given to the kernel, by backing (device, inode), and one path of each.
    inodes: HashMap<(u64, u64), u64>,
    paths: HashMap<u64, PathBuf>,
    next_inode: u64,
    /// Open files, by handle.
    handles: HashMap<u64, Handle>,
    next_handle: u64,
    /// The changes not yet durable, oldest first.
    pending: Vec<Change>,
    next_trash: u64,
}

type Errno = libc::c_int;

fn errno(e: std::io::Error) -> Errno {
    e.raw_os_error().unwrap_or(libc::EIO)
}

impl State {
    fn path(&self, ino: u64) -> Result<PathBuf, Errno> {
        self.paths.get(&ino).cloned().ok_or(libc::ENOENT)
    }

    fn child(&self, parent: u64, name: &OsStr) -> Result<PathBuf, Errno> {
        if parent == FUSE_ROOT_ID && name == TRASH {
            return Err(libc::EACCES);
        }
        Ok(self.path(parent)?.join(name))
    }

    /// The kernel's inode number for what `path` names (given one if new), and its attributes.
    fn attr_of(&mut self, path: &Path) -> Result<FileAttr, Errno> {
        let meta = std::fs::symlink_metadata(path).map_err(errno)?;
        let ino = self.inode(path, &meta);
        Ok(attr(ino, &meta))
    }

    fn inode(&mut self, path: &Path, meta: &std::fs::Metadata) -> u64 {
        let key = (meta.dev(), meta.ino());
        let ino = match self.inodes.get(&key) {
            Some(&ino) => ino,
            None => {
                let ino = self.next_inode;
                self.next_inode += 1;
                self.inodes.insert(key, ino);
                ino
            }
        };
        if ino != FUSE_ROOT_ID {
            self.paths.insert(ino, path.to_path_buf());
        }
        ino
    }

    fn record(&mut self, scope: Scope, undo: Undo) {
        self.pending.push(Change { scope, undo });
    }

    /// Before changing `file` (inode `ino`) over `offset..offset + len` (writing `written`
    /// bytes there, or 0 for a size change): remembers what was there.
    fn record_data(
        &mut self,
        ino: u64,
        file: &Arc<File>,
        offset: u64,
        len: u64,
        written: u64,
    ) -> Result<(), Errno> {
        let old_len = file.metadata().map_err(errno)?.len();
        let end = (offset + len).min(old_len);
        let mut old = vec![0u8; end.saturating_sub(offset) as usize];
        file.read_exact_at(&mut old, offset).map_err(errno)?;
        self.record(
            Scope::Data(ino),
            Undo::Data {
                file: Arc::clone(file),
                offset,
                old,
                old_len,
                written,
            },
        );
        Ok(())
    }

    /// Moves what `path` names into the trash and returns where.
    fn move_to_trash(&mut self, path: &Path) -> Result<PathBuf, Errno> {
        let trash = self.root.join(TRASH).join(self.next_trash.to_string());
        self.next_trash += 1;
        std::fs::rename(path, &trash).map_err(errno)?;
        self.renamed(path, &trash);
        Ok(trash)
    }

    /// Keeps the paths of inodes under `from` right after it became `to`.
    fn renamed(&mut self, from: &Path, to: &Path) {
        for path in self.paths.values_mut() {
            if let Ok(rest) = path.strip_prefix(from) {
                // (`join("")` would add a trailing slash.)
                *path = match rest.as_os_str().is_empty() {
                    true => to.to_path_buf(),
                    false => to.join(rest),
                };
            }
        }
    }

    fn handle(&self, fh: u64) -> Result<(Arc<File>, bool), Errno> {
        let handle = self.handles.get(&fh).ok_or(libc::EBADF)?;
        Ok((Arc::clone(&handle.file), handle.sync))
    }

    fn new_handle(&mut self, file: File, sync: bool, ino: u64) -> u64 {
        let fh = self.next_handle;
        self.next_handle += 1;
        let file = Arc::new(file);
        self.handles.insert(fh, Handle { file, sync, ino });
        fh
    }

    /// The attributes of inode `ino`: through handle `fh` if given, else through its name, else
    /// through any open handle (a file removed while open has no name left, yet fstat works on
    /// it, as on any disk).
    fn attr_of_inode(&mut self, ino: u64, fh: Option<u64>) -> Result<FileAttr, Errno> {
        let fstat = |handle: &Handle| handle.file.metadata().map(|m| attr(ino, &m)).map_err(errno);
        if let Some(handle) = fh.and_then(|fh| self.handles.get(&fh)) {
            return fstat(handle);
        }
        let by_name = self.path(ino).and_then(|path| self.attr_of(&path));
        match self.handles.values().find(|h| h.ino == ino) {
            Some(handle) if by_name.is_err() => fstat(handle),
            _ => by_name,
        }
    }

    /// A sync of `scope`: its changes are durable. Names removed for good leave the trash.
    fn synced(&mut self, scope: Scope) {
        let (durable, pending) = std::mem::take(&mut self.pending)
            .into_iter()
            .partition(|c| c.scope == scope);
        self.pending = pending;
        for change in durable {
            match change.undo {
                Undo::Removed { trash, .. }
                | Undo::Renamed {
                    replaced: Some(trash),
                    ..
                } => remove_all(&trash),
                _ => {}
            }
        }
    }

    /// The power cut: undoes every pending change (`seed` None), or a random suffix of each
    /// scope's, newest first, where the oldest write undone in a file may be torn: a random
    /// number of its first 512-byte sectors kept, as a disk may have written them. Then empties
    /// the trash. Returns how many changes were undone.
    fn cut(&mut self, seed: Option<u64>) -> usize {
        let pending = std::mem::take(&mut self.pending);
        // How many bytes of each change to keep: 0 undoes it whole, u64::MAX keeps it.
        let mut keep = vec![0u64; pending.len()];
        if let Some(seed) = seed {
            let mut random = SplitMix(seed);
            // Scopes in the order they first changed, so that a seed always cuts alike.
            let mut scopes: Vec<(Scope, usize)> = Vec::new();
            for change in &pending {
                match scopes.iter_mut().find(|(scope, _)| *scope == change.scope) {
                    Some((_, n)) => *n += 1,
                    None => scopes.push((change.scope, 1)),
                }
            }
            let kept: HashMap<Scope, usize> = scopes
                .into_iter()
                .map(|(scope, n)| (scope, random.below(n as u64 + 1) as usize))
                .collect();
            let mut seen: HashMap<Scope, usize> = HashMap::new();
            for (i, change) in pending.iter().enumerate() {
                let index = seen.entry(change.scope).or_default();
                keep[i] = match (*index).cmp(&kept[&change.scope]) {
                    std::cmp::Ordering::Less => u64::MAX,
                    std::cmp::Ordering::Equal => torn_prefix(&change.undo, &mut random),
                    std::cmp::Ordering::Greater => 0,
                };
                *index += 1;
            }
        }
        let mut undone = 0;
        for (change, keep) in pending.into_iter().zip(keep).rev() {
            if keep != u64::MAX {
                take_back(change.undo, keep);
                undone += 1;
            }
        }
        remove_all(&self.root.join(TRASH));
        undone
    }
}

/// How many bytes of the write `undo` takes back a cut keeps: half the time none, else a
/// random whole number of 512-byte sectors short of all of it.
fn torn_prefix(undo: &Undo, random: &mut SplitMix) -> u64 {
    const SECTOR: u64 = 512;
    match undo {
        Undo::Data { written, .. } if *written > SECTOR && random.below(2) == 1 => {
            SECTOR * random.below(written.div_ceil(SECTOR))
        }
        _ => 0,
    }
}

/// Undoes one change in the backing folder, but for the first `keep` bytes of a write (a torn
/// write). A failure is reported, not fatal: the folder is what the tests look at next, and
/// they see what could not be undone.
fn take_back(undo: Undo, keep: u64) {
    let result = match undo {
        Undo::Data {
            file,
            offset,
            old,
            old_len,
            ..
        } => {
            let kept_end = offset + keep;
            let len = match keep {
                0 => old_len,
                _ => old_len.max(kept_end),
            };
            let restored = old.get(keep as usize..).unwrap_or_default();
            // The file is as this write left it: every later change was undone first.
            file.write_all_at(restored, kept_end)
                .and_then(|()| file.set_len(len))
        }
        Undo::Created { path } => {
            remove_all(&path);
            Ok(())
        }
        Undo::Removed { path, trash } => std::fs::rename(trash, path),
        Undo::Renamed { from, to, replaced } => {
            std::fs::rename(&to, from).and_then(|()| match replaced {
                Some(trash) => std::fs::rename(trash, to),
                None => Ok(()),
            })
        }
    };
    if let Err(e) = result {
        eprintln!("powercut: could not undo a change: {e}");
    }
}

fn remove_all(path: &Path) {
    let _ = match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.is_dir() => std::fs::remove_dir_all(path),
        Ok(_) => std::fs::remove_file(path),
        Err(_) => Ok(()),
    };
}

/// A small seeded generator (SplitMix64): the cut a seed gives can be run again.
struct SplitMix(u64);

impl SplitMix {
    fn below(&mut self, n: u64) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        (z ^ (z >> 31)) % n
    }
}

fn attr(ino: u64, meta: &std::fs::Metadata) -> FileAttr {
    let time = |secs: i64, nanos: i64| {
        UNIX_EPOCH + Duration::new(secs.max(0) as u64, nanos.clamp(0, 999_999_999) as u32)
    };
    let kind = match meta.mode() & libc::S_IFMT {
        libc::S_IFDIR => FileType::Directory,
        libc::S_IFLNK => FileType::Symlink,
        libc::S_IFIFO => FileType::NamedPipe,
        libc::S_IFSOCK => FileType::Socket,
        libc::S_IFCHR => FileType::CharDevice,
        libc::S_IFBLK => FileType::BlockDevice,
        _ => FileType::RegularFile,
    };
    FileAttr {
        ino,
        size: meta.size(),
        blocks: meta.blocks(),
        atime: time(meta.atime(), meta.atime_nsec()),
        mtime: time(meta.mtime(), meta.mtime_nsec()),
        ctime: time(meta.ctime(), meta.ctime_nsec()),
        crtime: time(meta.ctime(), meta.ctime_nsec()),
        kind,
        perm: (meta.mode() & 0o7777) as u16,
        nlink: meta.nlink() as u32,
        uid: meta.uid(),
        gid: meta.gid(),
        rdev: meta.rdev() as u32,
        blksize: meta.blksize() as u32,
        flags: 0,
    }
}

/// Whether open flags make every write synced.
fn sync_flags(flags: i32) -> bool {
    flags & (libc::O_SYNC | libc::O_DSYNC) != 0
}

/// Opens the backing file for `flags`, read-write whenever writing (a change's undo reads what
/// it overwrites).
fn open_backing(path: &Path, flags: i32, create: Option<u32>) -> std::io::Result<File> {
    let writing = flags & libc::O_ACCMODE != libc::O_RDONLY;
    let mut options = OpenOptions::new();
    options.read(true).write(writing);
    if let Some(mode) = create {
        options.create_new(true).mode(mode);
    }
    options.custom_flags(libc::O_NOFOLLOW).open(path)
}

struct PowerCut(Arc<Mutex<State>>);

impl PowerCut {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        // A poisoned lock means an operation panicked; the state is still what it was.
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Creates a name with `make` and answers its entry, recording the creation.
    fn create_entry(
        &mut self,
        parent: u64,
        name: &OsStr,
        make: impl FnOnce(&Path) -> std::io::Result<()>,
    ) -> Result<FileAttr, Errno> {
        let mut state = self.state();
        let path = state.child(parent, name)?;
        make(&path).map_err(errno)?;
        state.record(Scope::Names(parent), Undo::Created { path: path.clone() });
        state.attr_of(&path)
    }
}

fn entry(reply: ReplyEntry, result: Result<FileAttr, Errno>) {
    match result {
        Ok(attr) => reply.entry(&TTL, &attr, 0),
        Err(e) => reply.error(e),
    }
}

fn empty(reply: ReplyEmpty, result: Result<(), Errno>) {
    match result {
        Ok(()) => reply.ok(),
        Err(e) => reply.error(e),
    }
}

impl Filesystem for PowerCut {
    fn lookup(&mut self, _req: &Request<'_>, parent: u64, name: &OsStr, reply: ReplyEntry) {
        let mut state = self.state();
        let result = state
            .child(parent, name)
            .and_then(|path| state.attr_of(&path));
        entry(reply, result);
    }

    fn getattr(&mut self, _req: &Request<'_>, ino: u64, fh: Option<u64>, reply: ReplyAttr) {
        match self.state().attr_of_inode(ino, fh) {
            Ok(attr) => reply.attr(&TTL, &attr),
            Err(e) => reply.error(e),
        }
    }

    fn setattr(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        _atime: Option<TimeOrNow>,
        _mtime: Option<TimeOrNow>,
        _ctime: Option<std::time::SystemTime>,
        fh: Option<u64>,
        _crtime: Option<std::time::SystemTime>,
        _chgtime: Option<std::time::SystemTime>,
        _bkuptime: Option<std::time::SystemTime>,
        _flags: Option<u32>,
        reply: ReplyAttr,
    ) {
        let mut state = self.state();
        let result = (|| {
            let path = state.path(ino)?;
            if let Some(mode) = mode {
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode))
                    .map_err(errno)?;
            }
            if uid.is_some() || gid.is_some() {
                std::os::unix::fs::lchown(&path, uid, gid).map_err(errno)?;
            }
            if let Some(size) = size {
                let (file, sync) = match fh.and_then(|fh| state.handle(fh).ok()) {
                    Some(handle) => handle,
                    None => (
                        Arc::new(open_backing(&path, libc::O_RDWR, None).map_err(errno)?),
                        false,
                    ),
                };
                if !sync {
                    let old_len = file.metadata().map_err(errno)?.len();
                    state.record_data(ino, &file, size, old_len.saturating_sub(size), 0)?;
                }
                file.set_len(size).map_err(errno)?;
            }
            state.attr_of(&path)
        })();
        match result {
            Ok(attr) => reply.attr(&TTL, &attr),
            Err(e) => reply.error(e),
        }
    }

    fn readlink(&mut self, _req: &Request<'_>, ino: u64, reply: ReplyData) {
        let state = self.state();
        match state
            .path(ino)
            .and_then(|p| std::fs::read_link(p).map_err(errno))
        {
            Ok(target) => reply.data(target.as_os_str().as_encoded_bytes()),
            Err(e) => reply.error(e),
        }
    }

    fn mkdir(
        &mut self,
        _req: &Request<'_>,
        parent: u64,
        name: &OsStr,
        mode: u32,
        umask: u32,
        reply: ReplyEntry,
    ) {
        let result = self.create_entry(parent, name, |path| {
            std::fs::create_dir(path)?;
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode & !umask))
        });
        entry(reply, result);
    }

    fn symlink(
        &mut self,
        _req: &Request<'_>,
        parent: u64,
        link_name: &OsStr,
        target: &Path,
        reply: ReplyEntry,
    ) {
        let result = self.create_entry(parent, link_name, |path| {
            std::os::unix::fs::symlink(target, path)
        });
        entry(reply, result);
    }

    fn link(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        newparent: u64,
        newname: &OsStr,
        reply: ReplyEntry,
    ) {
        let existing = self.state().path(ino);
        let result = existing.and_then(|existing| {
            self.create_entry(newparent, newname, |path| {
                std::fs::hard_link(&existing, path)
            })
        });
        entry(reply, result);
    }

    fn unlink(&mut self, _req: &Request<'_>, parent: u64, name: &OsStr, reply: ReplyEmpty) {
        let mut state = self.state();
        let result = state.child(parent, name).and_then(|path| {
            let trash = state.move_to_trash(&path)?;
            state.record(Scope::Names(parent), Undo::Removed { path, trash });
            Ok(())
        });
        empty(reply, result);
    }

    fn rmdir(&mut self, _req: &Request<'_>, parent: u64, name: &OsStr, reply: ReplyEmpty) {
        let mut state = self.state();
        let result = state.child(parent, name).and_then(|path| {
            if std::fs::read_dir(&path).map_err(errno)?.next().is_some() {
                return Err(libc::ENOTEMPTY);
            }
            let trash = state.move_to_trash(&path)?;
            state.record(Scope::Names(parent), Undo::Removed { path, trash });
            Ok(())
        });
        empty(reply, result);
    }

    fn rename(
        &mut self,
        _req: &Request<'_>,
        parent: u64,
        name: &OsStr,
        newparent: u64,
        newname: &OsStr,
        flags: u32,
        reply: ReplyEmpty,
    ) {
        let mut state = self.state();
        let result = (|| {
            if flags & !libc::RENAME_NOREPLACE != 0 {
                return Err(libc::EINVAL);
            }
            let from = state.child(parent, name)?;
            let to = state.child(newparent, newname)?;
            // A folder's rename is refused as a rename across file systems is: the changes
            // recorded inside it name its old path (the product renames only files).
            if std::fs::symlink_metadata(&from).map_err(errno)?.is_dir() {
                return Err(libc::EXDEV);
            }
            let replaced = match std::fs::symlink_metadata(&to) {
                Ok(_) if flags & libc::RENAME_NOREPLACE != 0 => return Err(libc::EEXIST),
                Ok(meta)
                    if meta.is_dir() && std::fs::read_dir(&to).map_err(errno)?.next().is_some() =>
                {
                    return Err(libc::ENOTEMPTY)
                }
                Ok(_) => Some(state.move_to_trash(&to)?),
                Err(_) => None,
            };
            std::fs::rename(&from, &to).map_err(errno)?;
            state.renamed(&from, &to);
            state.record(
                Scope::Names(newparent),
                Undo::Renamed { from, to, replaced },
            );
            Ok(())
        })();
        empty(reply, result);
    }

    fn open(&mut self, _req: &Request<'_>, ino: u64, flags: i32, reply: ReplyOpen) {
        let mut state = self.state();
        let result = state
            .path(ino)
            .and_then(|path| open_backing(&path, flags, None).map_err(errno));
        match result {
            Ok(file) => reply.opened(state.new_handle(file, sync_flags(flags), ino), 0),
            Err(e) => reply.error(e),
        }
    }

    fn create(
        &mut self,
        _req: &Request<'_>,
        parent: u64,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        let mut file = None;
        let result = self.create_entry(parent, name, |path| {
            file = Some(open_backing(
                path,
                flags | libc::O_RDWR,
                Some(mode & !umask),
            )?);
            Ok(())
        });
        match (result, file) {
            (Ok(attr), Some(file)) => {
                let fh = self.state().new_handle(file, sync_flags(flags), attr.ino);
                reply.created(&TTL, &attr, 0, fh, 0)
            }
            (Err(e), _) => reply.error(e),
            (Ok(_), None) => reply.error(libc::EIO),
        }
    }

    fn read(
        &mut self,
        _req: &Request<'_>,
        _ino: u64,
        fh: u64,
        offset: i64,
        size: u32,
        _flags: i32,
        _lock_owner: Option<u64>,
        reply: ReplyData,
    ) {
        let state = self.state();
        let result = state.handle(fh).and_then(|(file, _)| {
            let mut buffer = vec![0u8; size as usize];
            let mut filled = 0;
            while filled < buffer.len() {
                match file.read_at(&mut buffer[filled..], offset as u64 + filled as u64) {
                    Ok(0) => break,
                    Ok(n) => filled += n,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(errno(e)),
                }
            }
            buffer.truncate(filled);
            Ok(buffer)
        });
        match result {
            Ok(bytes) => reply.data(&bytes),
            Err(e) => reply.error(e),
        }
    }

    fn write(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        fh: u64,
        offset: i64,
        data: &[u8],
        _write_flags: u32,
        _flags: i32,
        _lock_owner: Option<u64>,
        reply: ReplyWrite,
    ) {
        let mut state = self.state();
        let result = state.handle(fh).and_then(|(file, sync)| {
            if !sync {
                state.record_data(
                    ino,
                    &file,
                    offset as u64,
                    data.len() as u64,
                    data.len() as u64,
                )?;
            }
            file.write_all_at(data, offset as u64).map_err(errno)
        });
        match result {
            Ok(()) => reply.written(data.len() as u32),
            Err(e) => reply.error(e),
        }
    }

    fn release(
        &mut self,
        _req: &Request<'_>,
        _ino: u64,
        fh: u64,
        _flags: i32,
        _lock_owner: Option<u64>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        self.state().handles.remove(&fh);
        reply.ok();
    }

    fn fsync(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        _fh: u64,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        self.state().synced(Scope::Data(ino));
        reply.ok();
    }

    fn readdir(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        _fh: u64,
        offset: i64,
        mut reply: ReplyDirectory,
    ) {
        let mut state = self.state();
        let listed = (|| {
            let path = state.path(ino)?;
            let mut entries = vec![
                (ino, FileType::Directory, ".".into()),
                (ino, FileType::Directory, "..".into()),
            ];
            for item in std::fs::read_dir(&path).map_err(errno)? {
                let item = item.map_err(errno)?;
                if ino == FUSE_ROOT_ID && item.file_name() == TRASH {
                    continue;
                }
                let child = state.attr_of(&item.path())?;
                entries.push((child.ino, child.kind, item.file_name()));
            }
            Ok(entries)
        })();
        match listed {
            Ok(entries) => {
                for (i, (ino, kind, name)) in entries.into_iter().enumerate().skip(offset as usize)
                {
                    if reply.add(ino, i as i64 + 1, kind, name) {
                        break;
                    }
                }
                reply.ok();
            }
            Err(e) => reply.error(e),
        }
    }

    fn fsyncdir(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        _fh: u64,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        self.state().synced(Scope::Names(ino));
        reply.ok();
    }

    fn statfs(&mut self, _req: &Request<'_>, _ino: u64, reply: ReplyStatfs) {
        let root = self.state().root.clone();
        let stats = statvfs(&root);
        match stats {
            Ok(s) => reply.statfs(
                s.f_blocks,
                s.f_bfree,
                s.f_bavail,
                s.f_files,
                s.f_ffree,
                s.f_bsize as u32,
                s.f_namemax as u32,
                s.f_frsize as u32,
            ),
            Err(e) => reply.error(e),
        }
    }

    fn access(&mut self, _req: &Request<'_>, _ino: u64, _mask: i32, reply: ReplyEmpty) {
        reply.ok();
    }

    fn fallocate(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        fh: u64,
        offset: i64,
        length: i64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        let mut state = self.state();
        let result = state.handle(fh).and_then(|(file, sync)| {
            if !sync {
                state.record_data(ino, &file, offset as u64, length as u64, 0)?;
            }
            // SAFETY: a plain system call on a file descriptor this handle owns.
            let rc = unsafe {
                libc::fallocate(
                    std::os::fd::AsRawFd::as_raw_fd(&*file),
                    mode,
                    offset,
                    length,
                )
            };
            match rc {
                0 => Ok(()),
                _ => Err(errno(std::io::Error::last_os_error())),
            }
        });
        empty(reply, result);
    }
}

fn statvfs(path: &Path) -> Result<libc::statvfs, Errno> {
    let c_path =
        std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).map_err(|_| libc::EINVAL)?;
    let mut stats = std::mem::MaybeUninit::<libc::statvfs>::uninit();
    // SAFETY: c_path is NUL-terminated and `stats` is written whole by a successful call.
    match unsafe { libc::statvfs(c_path.as_ptr(), stats.as_mut_ptr()) } {
        // SAFETY: the call succeeded, so it wrote the whole struct.
        0 => Ok(unsafe { stats.assume_init() }),
        _ => Err(errno(std::io::Error::last_os_error())),
    }
}

/// Serves the control socket: each connection sends one command line and gets one line back.
fn serve_control(listener: UnixListener, state: Arc<Mutex<State>>) {
    for stream in listener.incoming().flatten() {
        let mut line = String::new();
        if BufReader::new(&stream).read_line(&mut line).is_err() {
            continue;
        }
        let mut state = state.lock().unwrap_or_else(|e| e.into_inner());
        let words: Vec<&str> = line.split_whitespace().collect();
        let (answer, exit) = match words.as_slice() {
            ["pending"] => (format!("{}", state.pending.len()), false),
            ["cut", "all"] => (format!("cut {}", state.cut(None)), true),
            ["cut", "random", seed] => match seed.parse::<u64>() {
                Ok(seed) => (format!("cut {}", state.cut(Some(seed))), true),
                Err(_) => ("error: the seed is not a number".into(), false),
            },
            _ => (format!("error: unknown command {:?}", line.trim()), false),
        };
        let _ = writeln!(&stream, "{answer}");
        if exit {
            // The lock stays held: no operation reaches the backing folder after the cut.
            std::process::exit(0);
        }
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let [_, backing, mountpoint, control] = args.as_slice() else {
        eprintln!("usage: powercut BACKING MOUNTPOINT CONTROL_SOCKET");
        std::process::exit(2);
    };
    let root = match std::fs::canonicalize(backing) {
        Ok(root) => root,
        Err(e) => {
            eprintln!("powercut: {backing}: {e}");
            std::process::exit(2);
        }
    };
    // A trash left by an earlier mount holds removals that were made durable or put back.
    remove_all(&root.join(TRASH));
    if let Err(e) = std::fs::create_dir(root.join(TRASH)) {
        eprintln!("powercut: {}: {e}", root.join(TRASH).display());
        std::process::exit(2);
    }
    let root_meta = match std::fs::metadata(&root) {
        Ok(meta) => meta,
        Err(e) => {
            eprintln!("powercut: {}: {e}", root.display());
            std::process::exit(2);
        }
    };
    let state = State {
        root: root.clone(),
        inodes: HashMap::from([((root_meta.dev(), root_meta.ino()), FUSE_ROOT_ID)]),
        paths: HashMap::from([(FUSE_ROOT_ID, root)]),
        next_inode: FUSE_ROOT_ID + 1,
        handles: HashMap::new(),
        next_handle: 1,
        pending: Vec::new(),
        next_trash: 0,
    };
    let state = Arc::new(Mutex::new(state));
    let _ = std::fs::remove_file(control);
    let listener = match UnixListener::bind(control) {
        Ok(listener) => listener,
        Err(e) => {
            eprintln!("powercut: {control}: {e}");
            std::process::exit(2);
        }
    };
    let shared = Arc::clone(&state);
    std::thread::spawn(move || serve_control(listener, shared));
    let options = [MountOption::FSName("powercut".into()), MountOption::RW];
    if let Err(e) = fuser::mount2(PowerCut(state), mountpoint, &options) {
        eprintln!("powercut: mounting {mountpoint}: {e}");
        std::process::exit(1);
    }
}

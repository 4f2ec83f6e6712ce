//! The coordinator's journal: the durable record of commit decisions.
//!
//! One file per table, appended by whichever process holds the table's writer lock. It holds only
//! commit decisions: a transaction with no record is aborted (presumed abort), so aborts never
//! need a record. A decision is one of two kinds:
//! - COMMIT: the shards named hold the transaction prepared (two-phase commit);
//! - LOGGED: the record itself carries each shard's changes (`shard::changes`), which recovery replays on
//!   a shard that lost them (a logged commit does not sync the shards).
//!
//! and an ABORT record takes one back: the host database's own commit failed after the decision
//! (SQLITE_BUSY, a commit hook's veto), so the transaction is aborted after all. A FLOOR record,
//! first in a journal a trim made, names every shard with its `last_txid` at the trim (durable
//! then): a shard found below it lost commits the trimmed records no longer name.
//!
//! The file layout and its checksums are `format`'s.
//!
//! Damage rules:
//! - A record that is incomplete or fails its checksum, with no valid record after it, is a torn
//!   tail: the write that made it never completed its sync, so it was never acknowledged. It is
//!   ignored; the next append writes over it, and recovery cuts it off.
//! - A damaged record followed by a valid one is not a torn write: the file is corrupt, and which
//!   commits it held cannot be known. That is [`Error::JournalCorrupt`], for a person to resolve.
//! - A damaged header, or another table's header, is [`Error::JournalCorrupt`] too.
//!
//! The journal is emptied ("reset") by writing a new file holding only the header and renaming it
//! over the old one; other processes notice the new inode and reload.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

mod format;

use format::*;
pub use format::{
    decode_record, encode_record, scan_records, Record, RecordKey, Scan, TableId, MAGIC,
};

/// How much the file grows at a time (zeros written), so that appends change no file size.
#[cfg(not(test))]
const PREALLOCATE_BYTES: u64 = 1 << 20;
/// Unit tests make thousands of journals (the protocol's simulation): a smaller step, which
/// also has them grow the file more often.
#[cfg(test)]
const PREALLOCATE_BYTES: u64 = 8 << 10;
/// Where a LOGGED record is in the file, so that recovery can read its changes when it needs them
/// (they are not kept in memory).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LoggedAt {
    pub txid: u64,
    pub offset: u64,
}

/// The journal of one table, as this process last read it.
pub struct Journal {
    path: PathBuf,
    file: File,
    inode: u64,
    table_id: TableId,
    key: RecordKey,
    /// Length of the valid prefix read so far; the next record is appended here.
    end: u64,
    /// The file's length as last read or written (records and preallocated zeros), so that an
    /// append after [`refresh`](Journal::refresh) asks the file system nothing more.
    file_len: u64,
    /// Decisions of either kind: transaction id to the shards it wrote.
    committed: HashMap<u64, Vec<u16>>,
    /// The LOGGED records, in file order.
    logged: Vec<LoggedAt>,
    /// Each shard's `last_txid` at the trim that made this journal (empty if none did).
    floor: Vec<u64>,
}

/// Writes a new journal's header, its `first` record if any, and its first preallocated space.
fn write_empty(file: &mut File, table_id: &TableId, first: Option<&Record>) -> std::io::Result<()> {
    let header = header(table_id).map_err(std::io::Error::other)?;
    file.write_all(&header)?;
    let mut key = [0u8; 32];
    key.copy_from_slice(&header[24..56]);
    let record = first
        .map(|r| encode_record(&Some(key), r))
        .unwrap_or_default();
    file.write_all(&record)?;
    let written = (header.len() + record.len()) as u64;
    write_zeros(file, written, written.next_multiple_of(PREALLOCATE_BYTES))
}

/// Writes zeros over `from..to`.
fn write_zeros(file: &File, from: u64, to: u64) -> std::io::Result<()> {
    const CHUNK: u64 = 64 << 10;
    let zeros = vec![0u8; CHUNK.min(to.saturating_sub(from)) as usize];
    let mut at = from;
    while at < to {
        let n = CHUNK.min(to - at) as usize;
        file.write_all_at(&zeros[..n], at)?;
        at += n as u64;
    }
    Ok(())
}

fn sync_dir(path: &Path) -> std::io::Result<()> {
    if crate::fault::skips_sync("journal_folder") {
        return Ok(());
    }
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    File::open(dir)?.sync_all()
}

impl Journal {
    /// Creates a new, empty journal, or opens the one another process created meanwhile. The
    /// file is written whole under a name of its own and linked into place, so that nobody
    /// ever reads a journal without its header (which would look damaged).
    pub fn create(path: &Path, table_id: TableId) -> Result<Journal> {
        static MADE: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let made = MADE.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut staging = path.as_os_str().to_owned();
        staging.push(format!(".new-{}-{made}", std::process::id()));
        let staging = PathBuf::from(staging);
        let io = Error::journal_io(path);
        let written = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&staging)
            .and_then(|mut file| {
                write_empty(&mut file, &table_id, None)?;
                file.sync_all()
            })
            .and_then(|()| match std::fs::hard_link(&staging, path) {
                Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => Err(e),
                _ => Ok(()),
            });
        let _ = std::fs::remove_file(&staging);
        written.and_then(|()| sync_dir(path)).map_err(io)?;
        Journal::open(path, table_id)
    }

    /// Opens an existing journal and reads its decisions. `Ok(None)` if there is no file.
    pub fn open_existing(path: &Path, table_id: TableId) -> Result<Option<Journal>> {
        match std::fs::metadata(path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::journal_io(path)(e)),
            Ok(_) => Journal::open(path, table_id).map(Some),
        }
    }

    fn open(path: &Path, table_id: TableId) -> Result<Journal> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(Error::journal_io(path))?;
        let inode = file.metadata().map_err(Error::journal_io(path))?.ino();
        let (found_id, key, header_bytes) = read_header(&file, path)?;
        if found_id != table_id {
            return Err(Error::JournalCorrupt {
                path: path.to_path_buf(),
                detail: "it belongs to another table".into(),
            });
        }
        let mut journal = Journal {
            path: path.to_path_buf(),
            file,
            inode,
            table_id,
            key,
            end: header_bytes as u64,
            file_len: 0,
            committed: HashMap::new(),
            logged: Vec::new(),
            floor: Vec::new(),
        };
        journal.rescan()?;
        Ok(journal)
    }

    /// Reads what other processes appended since the last read (or reloads a reset journal),
    /// record by record: a commit reads only the bytes it needs. Damage sends it to
    /// [`rescan`](Self::rescan).
    pub fn refresh(&mut self) -> Result<()> {
        let Some(len) = self.current_len()? else {
            return Ok(());
        };
        while self.end < len {
            if self.end + 4 > len {
                return self.rescan().map(|_| ());
            }
            let record_len = self.record_len_at(self.end)?;
            if record_len == 0 {
                return Ok(());
            }
            if record_len > len - self.end {
                return self.rescan().map(|_| ());
            }
            let bytes = self.read_bytes(self.end, record_len)?;
            match decode_record(&self.key, &bytes) {
                Some((_, record)) => {
                    self.absorb(&record, self.end);
                    self.end += record_len;
                }
                None => return self.rescan().map(|_| ()),
            }
        }
        Ok(())
    }

    /// Reads everything after the records read so far, checking that what follows them is zeros
    /// (preallocated) or a torn tail, and not a valid record after damage. Returns whether there
    /// is a torn tail.
    pub fn rescan(&mut self) -> Result<bool> {
        let Some(len) = self.current_len()? else {
            return Ok(false);
        };
        // One read may catch a writer between two appends: the first record's bytes read before
        // they were written, the second's after. Read again: the first append finished before the
        // second began, so a second read sees it. Damage seen twice is damage.
        let mut scan = scan_records(&self.key, &self.read_bytes(self.end, len - self.end)?);
        if scan.is_err() {
            scan = scan_records(&self.key, &self.read_bytes(self.end, len - self.end)?);
        }
        let scan = scan.map_err(|offset| Error::JournalCorrupt {
                path: self.path.clone(),
                detail: format!(
                    "damaged bytes at byte {} are followed by a valid record; the decisions they held are unknown",
                    self.end + offset as u64
                ),
            })?;
        let start = self.end;
        for (offset, record) in scan.records {
            self.absorb(&record, start + offset as u64);
        }
        self.end = start + scan.valid_bytes as u64;
        Ok(scan.torn_tail)
    }

    /// The length the record at `offset` gives itself (its first 4 bytes).
    fn record_len_at(&self, offset: u64) -> Result<u64> {
        let head = self.read_bytes(offset, 4)?;
        Ok(u32::from_le_bytes([head[0], head[1], head[2], head[3]]) as u64)
    }

    fn read_bytes(&self, offset: u64, len: u64) -> Result<Vec<u8>> {
        let mut bytes = vec![0u8; len as usize];
        self.file
            .read_exact_at(&mut bytes, offset)
            .map_err(Error::journal_io(&self.path))?;
        Ok(bytes)
    }

    /// The file's length, after reopening it if another process replaced (reset) it; `None` if
    /// the reopen read it all already.
    fn current_len(&mut self) -> Result<Option<u64>> {
        let on_disk = std::fs::metadata(&self.path).map_err(Error::journal_io(&self.path))?;
        let len = self
            .file
            .metadata()
            .map_err(Error::journal_io(&self.path))?
            .len();
        if on_disk.ino() != self.inode || len < self.end {
            *self = Journal::open(&self.path, self.table_id)?;
            return Ok(None);
        }
        self.file_len = len;
        Ok(Some(len))
    }

    /// Takes in the decision of a record found at `offset`.
    fn absorb(&mut self, record: &Record, offset: u64) {
        if record.floor {
            self.floor = record
                .changes
                .iter()
                .flatten()
                .map(|part| u64::from_le_bytes(part.as_slice().try_into().unwrap_or([0; 8])))
                .collect();
            return;
        }
        if record.abort {
            self.committed.remove(&record.txid);
            self.logged.retain(|at| at.txid != record.txid);
            return;
        }
        if record.changes.is_some() {
            self.logged.push(LoggedAt {
                txid: record.txid,
                offset,
            });
        }
        self.committed.insert(record.txid, record.shards.clone());
    }

    /// Cuts a torn tail off (with the preallocated space, which the next append grows again),
    /// so that the next append follows the last valid record.
    pub fn cut_torn_tail(&mut self) -> Result<()> {
        self.file
            .set_len(self.end)
            .map_err(Error::journal_io(&self.path))?;
        self.file_len = self.end;
        self.file.sync_all().map_err(Error::journal_io(&self.path))
    }

    /// Makes everything read from the journal durable (a writer may have died before its sync).
    pub fn sync(&self) -> Result<()> {
        self.file.sync_data().map_err(Error::journal_io(&self.path))
    }

    /// Each shard's `last_txid` at the trim that made this journal (empty if none did): a shard
    /// below its floor lost commits.
    pub fn floor(&self) -> &[u64] {
        &self.floor
    }

    /// Whether the journal holds a decision (of either kind) for `txid`.
    pub fn is_committed(&self, txid: u64) -> bool {
        self.committed.contains_key(&txid)
    }

    /// Every COMMIT decision (not LOGGED: recovery replays those on a shard that lacks them),
    /// with the shards it names.
    pub fn prepared_decisions(&self) -> impl Iterator<Item = (u64, &[u16])> {
        self.committed
            .iter()
            .filter(|(txid, _)| !self.logged.iter().any(|at| at.txid == **txid))
            .map(|(txid, shards)| (*txid, shards.as_slice()))
    }

    /// The shards a committed transaction touched.
    pub fn committed_shards(&self, txid: u64) -> Option<&[u16]> {
        self.committed.get(&txid).map(Vec::as_slice)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The LOGGED records, in the order they were appended.
    pub fn logged(&self) -> &[LoggedAt] {
        &self.logged
    }

    /// Reads a LOGGED record again, with its changes.
    pub fn read_logged(&self, at: LoggedAt) -> Result<Record> {
        let len = self.record_len_at(at.offset)?;
        let bytes = self.read_bytes(at.offset, len.min(self.end.saturating_sub(at.offset)))?;
        match decode_record(&self.key, &bytes) {
            Some((_, record)) if record.txid == at.txid && record.changes.is_some() => Ok(record),
            _ => Err(Error::JournalCorrupt {
                path: self.path.clone(),
                detail: format!(
                    "the record of transaction {} at byte {} changed after it was read",
                    at.txid, at.offset
                ),
            }),
        }
    }

    /// Size of the valid journal in bytes.
    pub fn len_bytes(&self) -> u64 {
        self.end
    }

    /// Appends a decision and syncs it: when this returns `Ok`, the transaction is committed.
    /// On failure the record is cut off again; `Err` with `poisoned` true if even that failed,
    /// so that the decision is unknown until recovery reads the file.
    pub fn append(&mut self, record: &Record) -> Result<(), (Error, bool)> {
        if (record.changes.is_some() || record.abort) && self.key.is_none() {
            let refused = "a LOGGED or ABORT record cannot go into a version 1 journal";
            return Err((Error::Internal(refused.into()), false));
        }
        let bytes = self.encode(record);
        let written = crate::fault::check("journal_append")
            .and_then(|()| {
                self.make_room(bytes.len() as u64)
                    .and_then(|()| self.file.write_all_at(&bytes, self.end))
                    .map_err(Error::journal_io(&self.path))
            })
            .and_then(|()| crate::fault::check("journal_sync"))
            .and_then(|()| match crate::fault::skips_sync("journal_record") {
                true => Ok(()),
                false => self.file.sync_data().map_err(Error::journal_io(&self.path)),
            });
        match written {
            Ok(()) => {
                self.absorb(record, self.end);
                self.end += bytes.len() as u64;
                Ok(())
            }
            Err(err) => {
                self.file_len = self.end;
                let undone = self
                    .file
                    .set_len(self.end)
                    .and_then(|()| self.file.sync_all());
                Err((err, undone.is_err()))
            }
        }
    }

    /// `record` as this journal stores it (checksummed with its key).
    pub fn encode(&self, record: &Record) -> Vec<u8> {
        encode_record(&self.key, record)
    }

    /// Grows the file with zeros, a megabyte at a time, until `bytes` more fit after the records.
    fn make_room(&mut self, bytes: u64) -> std::io::Result<()> {
        let needed = self.end + bytes;
        if needed <= self.file_len {
            return Ok(());
        }
        let from = self.file_len.max(self.end);
        let to = needed.next_multiple_of(PREALLOCATE_BYTES);
        write_zeros(&self.file, from, to)?;
        self.file_len = to;
        Ok(())
    }

    /// Whether this is a version 1 journal, which takes no LOGGED record.
    pub fn is_version1(&self) -> bool {
        self.key.is_none()
    }

    /// Empties the journal: a new file with only the header and a FLOOR record of `last_txids`
    /// (each shard's, synced) replaces it atomically.
    pub fn reset(&mut self, last_txids: &[u64]) -> Result<()> {
        let io = || Error::journal_io(&self.path);
        let tmp = self.path.with_extension("journal-new");
        let mut file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)
            .map_err(io())?;
        write_empty(&mut file, &self.table_id, Some(&Record::floor(last_txids))).map_err(io())?;
        file.sync_all().map_err(io())?;
        crate::fault::check("journal_reset")?;
        std::fs::rename(&tmp, &self.path).map_err(io())?;
        sync_dir(&self.path).map_err(io())?;
        *self = Journal::open(&self.path, self.table_id)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TABLE: TableId = [7; 16];
    const KEY: RecordKey = Some([3; 32]);

    fn encode(record: &Record) -> Vec<u8> {
        encode_record(&KEY, record)
    }

    fn scan(bytes: &[u8]) -> Result<Scan, usize> {
        scan_records(&KEY, bytes)
    }

    fn commit(txid: u64, shards: &[u16]) -> Record {
        Record::commit(txid, shards.to_vec(), None)
    }

    fn logged(txid: u64, shards: &[u16]) -> Record {
        let changes = shards
            .iter()
            .map(|&s| vec![s as u8; 5 + s as usize])
            .collect();
        Record::commit(txid, shards.to_vec(), Some(changes))
    }

    fn txids(scan: &Scan) -> Vec<u64> {
        scan.records.iter().map(|(_, r)| r.txid).collect()
    }

    #[test]
    fn an_abort_record_takes_back_an_earlier_decision() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("j");
        let mut journal = Journal::create(&path, TABLE).unwrap();
        for record in [commit(5, &[0, 1]), logged(6, &[1, 2]), commit(7, &[0])] {
            journal.append(&record).unwrap();
        }
        journal.append(&Record::abort(5)).unwrap();
        journal.append(&Record::abort(6)).unwrap();
        let encoded = encode(&Record::abort(5));
        assert_eq!(decode_record(&KEY, &encoded).unwrap().1, Record::abort(5));
        let reopened = Journal::open_existing(&path, TABLE).unwrap().unwrap();
        assert!(!reopened.is_committed(5) && !reopened.is_committed(6));
        assert!(reopened.is_committed(7));
        assert!(reopened.logged().is_empty());
    }

    #[test]
    fn decisions_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.journal");
        let mut j = Journal::create(&path, TABLE).unwrap();
        j.append(&commit(5, &[0, 2])).map_err(|e| e.0).unwrap();
        j.append(&logged(6, &[1, 3])).map_err(|e| e.0).unwrap();
        let j = Journal::open_existing(&path, TABLE).unwrap().unwrap();
        assert!(j.is_committed(5) && j.is_committed(6) && !j.is_committed(7));
        assert_eq!(j.committed_shards(6), Some(&[1u16, 3][..]));
        assert_eq!(j.logged().len(), 1);
        assert_eq!(j.read_logged(j.logged()[0]).unwrap(), logged(6, &[1, 3]));
    }

    #[test]
    fn every_truncation_of_the_last_record_is_a_torn_tail() {
        let a = encode(&commit(1, &[0, 1]));
        for b in [commit(2, &[2, 3]), logged(2, &[2, 3])] {
            let b = encode(&b);
            for cut in 0..b.len() {
                let mut bytes = a.clone();
                bytes.extend_from_slice(&b[..cut]);
                let scan = scan(&bytes).unwrap();
                assert_eq!(scan.records, vec![(0, commit(1, &[0, 1]))]);
                assert_eq!(scan.torn_tail, cut > 0);
            }
        }
    }

    #[test]
    fn every_bit_flip_in_the_last_record_drops_only_it() {
        let a = encode(&logged(1, &[0, 1]));
        for b in [commit(2, &[2, 3]), logged(2, &[2, 3])] {
            let b = encode(&b);
            for bit in 0..b.len() * 8 {
                let mut bytes = a.clone();
                let mut damaged = b.clone();
                damaged[bit / 8] ^= 1 << (bit % 8);
                bytes.extend_from_slice(&damaged);
                let scan = scan(&bytes).unwrap();
                assert_eq!(txids(&scan), vec![1], "bit {bit}");
            }
        }
    }

    #[test]
    fn damage_before_a_valid_record_is_corruption() {
        let mut bytes = encode(&commit(1, &[0, 1]));
        bytes[6] ^= 0x40;
        bytes.extend_from_slice(&encode(&logged(2, &[2, 3])));
        assert_eq!(scan(&bytes), Err(0));
    }

    #[test]
    fn zeros_after_the_records_end_them_and_a_record_after_zeros_is_corruption() {
        let mut bytes = encode(&commit(1, &[0, 1]));
        bytes.extend_from_slice(&[0; 300]);
        let clean = scan(&bytes).unwrap();
        assert_eq!((txids(&clean), clean.torn_tail), (vec![1], false));
        // A record whose length was zeroed by damage hides the ones after it: refused.
        let mut damaged = encode(&commit(1, &[0, 1]));
        let second = damaged.len();
        damaged.extend_from_slice(&encode(&logged(2, &[0])));
        damaged.extend_from_slice(&encode(&commit(3, &[1])));
        damaged[second..second + 4].fill(0);
        assert_eq!(scan(&damaged), Err(second));
    }

    #[test]
    fn first_nonzero_finds_the_first_byte_that_is_not_zero() {
        for len in [0usize, 1, 7, 8, 9, 64, 1001] {
            assert_eq!(first_nonzero(&vec![0; len]), None, "len {len}");
            for at in 0..len {
                let mut bytes = vec![0; len];
                bytes[at] = 1;
                bytes[len - 1] = 2;
                assert_eq!(first_nonzero(&bytes), Some(at), "len {len} at {at}");
            }
        }
    }

    #[test]
    fn appends_fill_the_preallocated_space_without_growing_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.journal");
        let mut j = Journal::create(&path, TABLE).unwrap();
        let size = || std::fs::metadata(&path).unwrap().len();
        assert_eq!(size(), PREALLOCATE_BYTES);
        let mut reader = Journal::open_existing(&path, TABLE).unwrap().unwrap();
        for txid in 1..=50 {
            j.append(&logged(txid, &[0, 1, 2]))
                .map_err(|e| e.0)
                .unwrap();
        }
        assert_eq!(size(), PREALLOCATE_BYTES);
        reader.refresh().unwrap();
        assert!((1..=50).all(|t| reader.is_committed(t)));
        assert_eq!(reader.logged().len(), 50);
        assert_eq!(reader.len_bytes(), j.len_bytes());
        // A record larger than the space left grows the file by whole megabytes.
        let mut big = logged(51, &[0]);
        big.changes = Some(vec![vec![7; PREALLOCATE_BYTES as usize]]);
        j.append(&big).map_err(|e| e.0).unwrap();
        assert_eq!(size(), 2 * PREALLOCATE_BYTES);
        let reopened = Journal::open_existing(&path, TABLE).unwrap().unwrap();
        assert_eq!(reopened.read_logged(reopened.logged()[50]).unwrap(), big);
    }

    #[test]
    fn another_tables_journal_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.journal");
        Journal::create(&path, TABLE).unwrap();
        assert!(matches!(
            Journal::open_existing(&path, [8; 16]),
            Err(Error::JournalCorrupt { .. })
        ));
    }

    #[test]
    fn a_version_1_journal_is_read_takes_no_logged_record_and_resets_to_version_2() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.journal");
        let mut bytes = MAGIC_V1.to_vec();
        bytes.extend_from_slice(&TABLE);
        let sum = checksum(&None, &bytes);
        bytes.extend_from_slice(&sum);
        bytes.extend_from_slice(&encode_record(&None, &commit(1, &[0, 1])));
        std::fs::write(&path, &bytes).unwrap();
        let mut j = Journal::open_existing(&path, TABLE).unwrap().unwrap();
        assert!(j.is_committed(1) && j.is_version1());
        j.append(&commit(2, &[0, 1])).map_err(|e| e.0).unwrap();
        assert!(j.append(&logged(3, &[0, 1])).is_err());
        let mut j = Journal::open_existing(&path, TABLE).unwrap().unwrap();
        assert!(j.is_committed(2) && !j.is_committed(3));
        j.reset(&[4, 9]).unwrap();
        assert_eq!(j.floor(), &[4, 9]);
        assert!(!j.is_version1());
        assert_eq!(&std::fs::read(&path).unwrap()[..8], MAGIC);
        j.append(&logged(3, &[0, 1])).map_err(|e| e.0).unwrap();
    }

    #[test]
    fn a_record_hidden_in_a_torn_logged_record_is_not_read() {
        // An image crafted to hold a record: whoever made it does not know the journal's key.
        let forged = encode_record(&Some([9; 32]), &commit(9, &[0, 1]));
        let mut victim = logged(2, &[0]);
        victim.changes = Some(vec![forged.clone()]);
        let victim = encode(&victim);
        let mut bytes = encode(&commit(1, &[0, 1]));
        bytes.extend_from_slice(&victim[..victim.len() - 1]);
        let found = scan(&bytes).unwrap();
        assert_eq!(txids(&found), vec![1]);
        assert!(found.torn_tail);
        // With the key, the same bytes would be a record after damage: corruption.
        let mut keyed = logged(2, &[0]);
        keyed.changes = Some(vec![encode(&commit(9, &[0, 1]))]);
        let keyed = encode(&keyed);
        let mut bytes = encode(&commit(1, &[0, 1]));
        bytes.extend_from_slice(&keyed[..keyed.len() - 1]);
        assert!(scan(&bytes).is_err());
    }

    #[test]
    fn every_new_journal_has_its_own_key() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a.journal"), dir.path().join("b.journal"));
        Journal::create(&a, TABLE).unwrap();
        Journal::create(&b, TABLE).unwrap();
        let key = |p: &Path| std::fs::read(p).unwrap()[24..56].to_vec();
        assert_ne!(key(&a), key(&b));
    }

    #[test]
    fn torn_tail_is_cut_before_the_next_append() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.journal");
        let mut j = Journal::create(&path, TABLE).unwrap();
        j.append(&commit(1, &[0])).map_err(|e| e.0).unwrap();
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(&encode(&logged(2, &[1]))[..10]).unwrap();
        let mut j = Journal::open_existing(&path, TABLE).unwrap().unwrap();
        assert!(j.rescan().unwrap());
        j.cut_torn_tail().unwrap();
        j.append(&commit(3, &[1])).map_err(|e| e.0).unwrap();
        let j = Journal::open_existing(&path, TABLE).unwrap().unwrap();
        assert!(j.is_committed(1) && !j.is_committed(2) && j.is_committed(3));
        assert!(j.logged().is_empty());
    }

    #[test]
    fn reset_empties_and_other_handles_notice() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.journal");
        let mut a = Journal::create(&path, TABLE).unwrap();
        let mut b = Journal::open_existing(&path, TABLE).unwrap().unwrap();
        a.append(&logged(1, &[0])).map_err(|e| e.0).unwrap();
        b.refresh().unwrap();
        assert!(b.is_committed(1) && b.logged().len() == 1);
        a.reset(&[]).unwrap();
        a.append(&commit(2, &[0])).map_err(|e| e.0).unwrap();
        b.refresh().unwrap();
        assert!(!b.is_committed(1) && b.is_committed(2) && b.logged().is_empty());
    }
}

//! The coordinator's journal: the durable record of commit decisions.
//!
//! One file per table, appended by whichever process holds the table's writer lock. It holds only
//! COMMIT decisions: a transaction with no COMMIT record is aborted (presumed abort), so aborts
//! never need a record.
//!
//! ```text
//! header (32 bytes)                     record (23 + 2 * shard_count bytes)
//! 0..8   magic  b"ISJRNL\0\x01"          0..4    length of the whole record, u32 LE
//! 8..24  table id (16 bytes)            4       kind: 1 = COMMIT
//! 24..32 checksum of bytes 0..24        5..13   transaction id, u64 LE
//!                                       13..15  number of shards, u16 LE
//!                                       15..    the shards, u16 LE each
//!                                       last 8  checksum of all the record's other bytes
//! ```
//! A checksum is the first 8 bytes of the BLAKE3 hash of the bytes it covers.
//!
//! Damage rules:
//! - A record that is incomplete or fails its checksum, with no valid record after it, is a torn
//!   tail: the write that made it never completed its sync, so it was never acknowledged. It is
//!   ignored, and cut off before the next append.
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

pub const MAGIC: &[u8; 8] = b"ISJRNL\0\x01";
pub const HEADER_BYTES: u64 = 32;
const CHECKSUM_BYTES: usize = 8;
const RECORD_FIXED_BYTES: usize = 4 + 1 + 8 + 2 + CHECKSUM_BYTES;
const RECORD_BYTES_MAX: usize = RECORD_FIXED_BYTES + 2 * crate::config::SHARD_COUNT_MAX;
const KIND_COMMIT: u8 = 1;

/// A table's unique identity, written into its journal and every shard.
pub type TableId = [u8; 16];

/// The journal of one table, as this process last read it.
pub struct Journal {
    path: PathBuf,
    file: File,
    inode: u64,
    table_id: TableId,
    /// Length of the valid prefix read so far; the next record is appended here.
    end: u64,
    /// COMMIT decisions: transaction id to the shards it touched.
    committed: HashMap<u64, Vec<u16>>,
}

fn checksum(bytes: &[u8]) -> [u8; CHECKSUM_BYTES] {
    let mut out = [0u8; CHECKSUM_BYTES];
    out.copy_from_slice(&blake3::hash(bytes).as_bytes()[..CHECKSUM_BYTES]);
    out
}

fn header(table_id: &TableId) -> [u8; HEADER_BYTES as usize] {
    let mut out = [0u8; HEADER_BYTES as usize];
    out[..8].copy_from_slice(MAGIC);
    out[8..24].copy_from_slice(table_id);
    let sum = checksum(&out[..24]);
    out[24..].copy_from_slice(&sum);
    out
}

/// Encodes one COMMIT record.
pub fn encode_commit(txid: u64, shards: &[u16]) -> Vec<u8> {
    let len = RECORD_FIXED_BYTES + 2 * shards.len();
    let mut out = Vec::with_capacity(len);
    out.extend_from_slice(&(len as u32).to_le_bytes());
    out.push(KIND_COMMIT);
    out.extend_from_slice(&txid.to_le_bytes());
    out.extend_from_slice(&(shards.len() as u16).to_le_bytes());
    for shard in shards {
        out.extend_from_slice(&shard.to_le_bytes());
    }
    let sum = checksum(&out);
    out.extend_from_slice(&sum);
    out
}

/// Decodes the record at the start of `bytes`: its length, transaction id and shards, or `None`
/// if the bytes there are not a whole, valid record.
pub fn decode_record(bytes: &[u8]) -> Option<(usize, u64, Vec<u16>)> {
    let len = u32::from_le_bytes(bytes.get(..4)?.try_into().ok()?) as usize;
    if !(RECORD_FIXED_BYTES..=RECORD_BYTES_MAX).contains(&len) || bytes.len() < len {
        return None;
    }
    let (body, sum) = bytes[..len].split_at(len - CHECKSUM_BYTES);
    if checksum(body) != sum || body[4] != KIND_COMMIT {
        return None;
    }
    let txid = u64::from_le_bytes(body[5..13].try_into().ok()?);
    let count = u16::from_le_bytes(body[13..15].try_into().ok()?) as usize;
    if len != RECORD_FIXED_BYTES + 2 * count {
        return None;
    }
    let shards = body[15..]
        .chunks_exact(2)
        .map(|c| u16::from_le_bytes([c[0], c[1]]))
        .collect();
    Some((len, txid, shards))
}

/// What a scan of journal bytes found.
#[derive(Debug, PartialEq)]
pub struct Scan {
    pub records: Vec<(u64, Vec<u16>)>,
    /// Bytes of valid records from the start of the scanned bytes.
    pub valid_bytes: usize,
    /// Whether damaged bytes follow the valid prefix (a torn tail).
    pub torn_tail: bool,
}

/// Scans records; `Err` with the offset of the damage if a valid record follows damaged bytes.
pub fn scan_records(bytes: &[u8]) -> Result<Scan, usize> {
    let mut records = Vec::new();
    let mut at = 0;
    while at < bytes.len() {
        match decode_record(&bytes[at..]) {
            Some((len, txid, shards)) => {
                records.push((txid, shards));
                at += len;
            }
            None => {
                let later_valid =
                    (at + 1..bytes.len()).any(|i| decode_record(&bytes[i..]).is_some());
                if later_valid {
                    return Err(at);
                }
                return Ok(Scan {
                    records,
                    valid_bytes: at,
                    torn_tail: true,
                });
            }
        }
    }
    Ok(Scan {
        records,
        valid_bytes: at,
        torn_tail: false,
    })
}

fn sync_dir(path: &Path) -> std::io::Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    File::open(dir)?.sync_all()
}

impl Journal {
    /// Creates a new, empty journal; fails if one exists.
    pub fn create(path: &Path, table_id: TableId) -> Result<Journal> {
        let io = Error::journal_io(path);
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(path)
            .map_err(io)?;
        file.write_all(&header(&table_id))
            .map_err(Error::journal_io(path))?;
        file.sync_all().map_err(Error::journal_io(path))?;
        sync_dir(path).map_err(Error::journal_io(path))?;
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
        let mut found = [0u8; HEADER_BYTES as usize];
        file.read_exact_at(&mut found, 0)
            .map_err(|_| Error::JournalCorrupt {
                path: path.to_path_buf(),
                detail: "shorter than its header".into(),
            })?;
        if found[..8] != MAGIC[..] || checksum(&found[..24]) != found[24..] {
            return Err(Error::JournalCorrupt {
                path: path.to_path_buf(),
                detail: "not an imagestore journal, or its header is damaged".into(),
            });
        }
        if found[8..24] != table_id {
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
            end: HEADER_BYTES,
            committed: HashMap::new(),
        };
        journal.refresh()?;
        Ok(journal)
    }

    /// Reads what other processes appended since the last read (or reloads a reset journal).
    /// Returns whether a torn tail follows the valid records.
    pub fn refresh(&mut self) -> Result<bool> {
        let on_disk = std::fs::metadata(&self.path).map_err(Error::journal_io(&self.path))?;
        if on_disk.ino() != self.inode {
            *self = Journal::open(&self.path, self.table_id)?;
        }
        let len = self
            .file
            .metadata()
            .map_err(Error::journal_io(&self.path))?
            .len();
        if len < self.end {
            *self = Journal::open(&self.path, self.table_id)?;
            return Ok(false);
        }
        let mut bytes = vec![0u8; (len - self.end) as usize];
        self.file
            .read_exact_at(&mut bytes, self.end)
            .map_err(Error::journal_io(&self.path))?;
        let scan = scan_records(&bytes).map_err(|offset| Error::JournalCorrupt {
            path: self.path.clone(),
            detail: format!(
                "a damaged record at byte {} is followed by valid ones; the decisions it held are unknown",
                self.end + offset as u64
            ),
        })?;
        self.committed.extend(scan.records);
        self.end += scan.valid_bytes as u64;
        Ok(scan.torn_tail)
    }

    /// Cuts a torn tail off, so that the next append follows the last valid record.
    pub fn cut_torn_tail(&mut self) -> Result<()> {
        self.file
            .set_len(self.end)
            .map_err(Error::journal_io(&self.path))?;
        self.file.sync_all().map_err(Error::journal_io(&self.path))
    }

    /// Makes everything read from the journal durable (a writer may have died before its sync).
    pub fn sync(&self) -> Result<()> {
        self.file.sync_data().map_err(Error::journal_io(&self.path))
    }

    /// Whether the journal holds a COMMIT decision for `txid`.
    pub fn is_committed(&self, txid: u64) -> bool {
        self.committed.contains_key(&txid)
    }

    /// The shards a committed transaction touched.
    pub fn committed_shards(&self, txid: u64) -> Option<&[u16]> {
        self.committed.get(&txid).map(Vec::as_slice)
    }

    /// Size of the valid journal in bytes.
    pub fn len_bytes(&self) -> u64 {
        self.end
    }

    /// Appends a COMMIT decision and syncs it: when this returns `Ok`, the transaction is
    /// committed. On failure the record is cut off again; `Err` with `poisoned` true if even
    /// that failed, so that the decision is unknown until recovery reads the file.
    pub fn append_commit(&mut self, txid: u64, shards: &[u16]) -> Result<(), (Error, bool)> {
        let record = encode_commit(txid, shards);
        let written = crate::fault::check("journal_append")
            .and_then(|()| {
                self.file
                    .write_all_at(&record, self.end)
                    .map_err(Error::journal_io(&self.path))
            })
            .and_then(|()| crate::fault::check("journal_sync"))
            .and_then(|()| self.file.sync_data().map_err(Error::journal_io(&self.path)));
        match written {
            Ok(()) => {
                self.end += record.len() as u64;
                self.committed.insert(txid, shards.to_vec());
                Ok(())
            }
            Err(err) => {
                let undone = self
                    .file
                    .set_len(self.end)
                    .and_then(|()| self.file.sync_all());
                Err((err, undone.is_err()))
            }
        }
    }

    /// Empties the journal: a new file with only the header replaces it atomically.
    pub fn reset(&mut self) -> Result<()> {
        let io = || Error::journal_io(&self.path);
        let tmp = self.path.with_extension("journal-new");
        let mut file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)
            .map_err(io())?;
        file.write_all(&header(&self.table_id)).map_err(io())?;
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

    #[test]
    fn commits_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.journal");
        let mut j = Journal::create(&path, TABLE).unwrap();
        j.append_commit(5, &[0, 2]).map_err(|e| e.0).unwrap();
        j.append_commit(6, &[1, 3]).map_err(|e| e.0).unwrap();
        let j = Journal::open_existing(&path, TABLE).unwrap().unwrap();
        assert!(j.is_committed(5) && j.is_committed(6) && !j.is_committed(7));
        assert_eq!(j.committed_shards(6), Some(&[1u16, 3][..]));
    }

    #[test]
    fn every_truncation_of_the_last_record_is_a_torn_tail() {
        let a = encode_commit(1, &[0, 1]);
        let b = encode_commit(2, &[2, 3]);
        for cut in 0..b.len() {
            let mut bytes = a.clone();
            bytes.extend_from_slice(&b[..cut]);
            let scan = scan_records(&bytes).unwrap();
            assert_eq!(scan.records, vec![(1, vec![0, 1])]);
            assert_eq!(scan.torn_tail, cut > 0);
        }
    }

    #[test]
    fn every_bit_flip_in_the_last_record_drops_only_it() {
        let a = encode_commit(1, &[0, 1]);
        let b = encode_commit(2, &[2, 3]);
        for bit in 0..b.len() * 8 {
            let mut bytes = a.clone();
            let mut damaged = b.clone();
            damaged[bit / 8] ^= 1 << (bit % 8);
            bytes.extend_from_slice(&damaged);
            let scan = scan_records(&bytes).unwrap();
            assert_eq!(scan.records, vec![(1, vec![0, 1])], "bit {bit}");
        }
    }

    #[test]
    fn damage_before_a_valid_record_is_corruption() {
        let mut bytes = encode_commit(1, &[0, 1]);
        bytes[6] ^= 0x40;
        bytes.extend_from_slice(&encode_commit(2, &[2, 3]));
        assert_eq!(scan_records(&bytes), Err(0));
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
    fn torn_tail_is_cut_before_the_next_append() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.journal");
        let mut j = Journal::create(&path, TABLE).unwrap();
        j.append_commit(1, &[0]).map_err(|e| e.0).unwrap();
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(&encode_commit(2, &[1])[..10]).unwrap();
        let mut j = Journal::open_existing(&path, TABLE).unwrap().unwrap();
        assert!(j.refresh().unwrap() || j.len_bytes() < std::fs::metadata(&path).unwrap().len());
        j.cut_torn_tail().unwrap();
        j.append_commit(3, &[1]).map_err(|e| e.0).unwrap();
        let j = Journal::open_existing(&path, TABLE).unwrap().unwrap();
        assert!(j.is_committed(1) && !j.is_committed(2) && j.is_committed(3));
    }

    #[test]
    fn reset_empties_and_other_handles_notice() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.journal");
        let mut a = Journal::create(&path, TABLE).unwrap();
        let mut b = Journal::open_existing(&path, TABLE).unwrap().unwrap();
        a.append_commit(1, &[0]).map_err(|e| e.0).unwrap();
        b.refresh().unwrap();
        assert!(b.is_committed(1));
        a.reset().unwrap();
        a.append_commit(2, &[0]).map_err(|e| e.0).unwrap();
        b.refresh().unwrap();
        assert!(!b.is_committed(1) && b.is_committed(2));
    }
}

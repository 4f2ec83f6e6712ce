//! The journal's file format, apart from the file: encoding and decoding records, checking
//! the header, scanning a file's bytes for its valid records. Pure functions of bytes (but the
//! fresh key a new header draws), so that damage rules can be tested byte by byte.
//!
//! ```text
//! header (64 bytes)                     record
//! 0..8   magic  b"ISJRNL\0\x02"          0..4    length of the whole record, u32 LE
//! 8..24  table id (16 bytes)            4       kind: 1 = COMMIT, 2 = LOGGED, 3 = ABORT, 4 = FLOOR
//! 24..56 record key (32 random bytes)   5..13   transaction id, u64 LE
//! 56..64 checksum of bytes 0..56        13..15  number of shards, u16 LE
//!                                       15..23  record checksum of bytes 0..15 (the head)
//!                                       23..    the shards, u16 LE each
//!                                       LOGGED only: per shard, u32 LE length + its changes
//!                                       FLOOR only: per shard, u32 LE 8 + its last_txid, u64 LE
//!                                       last 8  record checksum of the record's other bytes
//! ```
//! Zeros follow the records: the file is grown a megabyte at a time with zeros written, so that
//! appending a record changes no file size and its fdatasync flushes the record alone (on ext4 a
//! size change costs another flush: 0.26 ms a sync against 0.16 here). A length of zero where a
//! record would begin ends the records.
//!
//! A checksum is the first 8 bytes of the BLAKE3 hash of the bytes it covers; a record checksum
//! is BLAKE3 keyed with the header's record key, drawn afresh for every new or reset journal.
//! The key is what lets a LOGGED record carry users' bytes (images) safely: bytes crafted to look
//! like a record cannot carry a valid record checksum, so a torn LOGGED record can never show a
//! "valid record" inside itself, which would read as corruption or, worse, as a decision.
//!
//! Version 1 journals (magic `\x01`, a 32-byte header without a key, unkeyed record checksums,
//! no head checksum, COMMIT records only) are read; the coordinator writes no LOGGED record into one and replaces
//! it with a version 2 journal at its next trim. Older builds refuse version 2 rather than
//! misread it.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;

use crate::error::{Error, Result};

/// The magic of the current format, and of version 1 (COMMIT records only), still read.
pub const MAGIC: &[u8; 8] = b"ISJRNL\0\x02";
pub(super) const MAGIC_V1: &[u8; 8] = b"ISJRNL\0\x01";
const HEADER_BYTES: usize = 64;
const HEADER_BYTES_V1: usize = 32;
const CHECKSUM_BYTES: usize = 8;
/// A record's head: length, kind, transaction id, number of shards.
const HEAD_BYTES: usize = 4 + 1 + 8 + 2;
const KIND_COMMIT: u8 = 1;
const KIND_LOGGED: u8 = 2;
const KIND_ABORT: u8 = 3;
const KIND_FLOOR: u8 = 4;

/// A table's unique identity, written into its journal and every shard.
pub type TableId = [u8; 16];

/// The key of a journal's record checksums; `None` for a version 1 journal (unkeyed).
pub type RecordKey = Option<[u8; 32]>;

/// One commit decision, as appended and as read back.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    pub txid: u64,
    /// The shards the transaction wrote.
    pub shards: Vec<u16>,
    /// A LOGGED record's changes, one encoded `shard::changes::ShardChanges` per shard in `shards` order;
    /// `None` for a COMMIT record.
    pub changes: Option<Vec<Vec<u8>>>,
    /// An ABORT record (no shards, no changes): the decision recorded before it for `txid` was
    /// taken back, because the host database's own commit failed after it (see `commit`).
    pub abort: bool,
    /// A FLOOR record: `changes` holds each shard's `last_txid` at a trim (u64 LE); `txid` 0.
    pub floor: bool,
}

impl Record {
    /// A COMMIT record (`changes` `None`) or a LOGGED one.
    pub fn commit(txid: u64, shards: Vec<u16>, changes: Option<Vec<Vec<u8>>>) -> Record {
        Record {
            txid,
            shards,
            changes,
            abort: false,
            floor: false,
        }
    }

    /// An ABORT record for `txid`.
    pub fn abort(txid: u64) -> Record {
        Record {
            txid,
            shards: Vec::new(),
            changes: None,
            abort: true,
            floor: false,
        }
    }

    /// A FLOOR record: shard `i`'s `last_txid` is `last_txids[i]`.
    pub fn floor(last_txids: &[u64]) -> Record {
        Record {
            txid: 0,
            shards: (0..last_txids.len() as u16).collect(),
            changes: Some(
                last_txids
                    .iter()
                    .map(|t| t.to_le_bytes().to_vec())
                    .collect(),
            ),
            abort: false,
            floor: true,
        }
    }
}

pub(super) fn checksum(key: &RecordKey, bytes: &[u8]) -> [u8; CHECKSUM_BYTES] {
    let hash = match key {
        Some(key) => blake3::keyed_hash(key, bytes),
        None => blake3::hash(bytes),
    };
    let mut out = [0u8; CHECKSUM_BYTES];
    out.copy_from_slice(&hash.as_bytes()[..CHECKSUM_BYTES]);
    out
}

/// A new version 2 header with a fresh record key.
pub(super) fn header(table_id: &TableId) -> Result<[u8; HEADER_BYTES]> {
    let mut out = [0u8; HEADER_BYTES];
    out[..8].copy_from_slice(MAGIC);
    out[8..24].copy_from_slice(table_id);
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut out[24..56]))
        .map_err(Error::file_io(Path::new("/dev/urandom")))?;
    let sum = checksum(&None, &out[..56]);
    out[56..].copy_from_slice(&sum);
    Ok(out)
}

/// Reads and checks a header: the table id, the record key and the header's length.
pub(super) fn read_header(file: &File, path: &Path) -> Result<(TableId, RecordKey, usize)> {
    let corrupt = |detail: &str| Error::JournalCorrupt {
        path: path.to_path_buf(),
        detail: detail.into(),
    };
    let mut found = [0u8; HEADER_BYTES];
    let read = file
        .read_at(&mut found, 0)
        .map_err(Error::journal_io(path))?;
    let mut key = [0u8; 32];
    key.copy_from_slice(&found[24..56]);
    let (key, len) = match &found[..8] {
        m if m == MAGIC => (Some(key), HEADER_BYTES),
        m if m == MAGIC_V1 => (None, HEADER_BYTES_V1),
        _ => {
            return Err(corrupt(
                "not an imagestore journal, or its header is damaged",
            ))
        }
    };
    if read < len {
        return Err(corrupt("shorter than its header"));
    }
    if checksum(&None, &found[..len - CHECKSUM_BYTES])[..] != found[len - CHECKSUM_BYTES..len] {
        return Err(corrupt("its header is damaged"));
    }
    let mut table_id = TableId::default();
    table_id.copy_from_slice(&found[8..24]);
    Ok((table_id, key, len))
}

/// Where a record's shard list starts: after its head and, in version 2, the head's own keyed
/// checksum, which lets a scan reject a forged head before hashing the length it claims.
fn shards_start(key: &RecordKey) -> usize {
    HEAD_BYTES + if key.is_some() { CHECKSUM_BYTES } else { 0 }
}

/// Encodes one record, checksummed with `key` (a version 1 record if `key` is `None`).
pub fn encode_record(key: &RecordKey, record: &Record) -> Vec<u8> {
    let changes = record.changes.as_deref().unwrap_or_default();
    let len = shards_start(key)
        + 2 * record.shards.len()
        + changes.iter().map(|c| 4 + c.len()).sum::<usize>()
        + CHECKSUM_BYTES;
    let mut out = Vec::with_capacity(len);
    out.extend_from_slice(&(len as u32).to_le_bytes());
    out.push(match (record.abort, &record.changes) {
        _ if record.floor => KIND_FLOOR,
        (true, _) => KIND_ABORT,
        (false, None) => KIND_COMMIT,
        (false, Some(_)) => KIND_LOGGED,
    });
    out.extend_from_slice(&record.txid.to_le_bytes());
    out.extend_from_slice(&(record.shards.len() as u16).to_le_bytes());
    if key.is_some() {
        let head_sum = checksum(key, &out);
        out.extend_from_slice(&head_sum);
    }
    for shard in &record.shards {
        out.extend_from_slice(&shard.to_le_bytes());
    }
    for shard_changes in changes {
        out.extend_from_slice(&(shard_changes.len() as u32).to_le_bytes());
        out.extend_from_slice(shard_changes);
    }
    let sum = checksum(key, &out);
    out.extend_from_slice(&sum);
    out
}

/// Decodes the record at the start of `bytes`: its length and contents, or `None` if the bytes
/// there are not a whole, valid record. The cheap checks come first: after a torn record, the
/// damage scan calls this at every byte offset.
pub fn decode_record(key: &RecordKey, bytes: &[u8]) -> Option<(usize, Record)> {
    let head = bytes.get(..HEAD_BYTES)?;
    let len = u32::from_le_bytes([head[0], head[1], head[2], head[3]]) as usize;
    let kind = head[4];
    let count = u16::from_le_bytes([head[13], head[14]]) as usize;
    let start = shards_start(key);
    let shards_end = start + 2 * count;
    if count > crate::config::SHARD_COUNT_MAX
        || bytes.len() < len
        || len < shards_end + CHECKSUM_BYTES
    {
        return None;
    }
    let fits_kind = match kind {
        KIND_COMMIT => len == shards_end + CHECKSUM_BYTES,
        KIND_LOGGED | KIND_FLOOR => key.is_some(),
        KIND_ABORT => key.is_some() && count == 0 && len == shards_end + CHECKSUM_BYTES,
        _ => false,
    };
    if !fits_kind || (key.is_some() && checksum(key, head)[..] != bytes[HEAD_BYTES..start]) {
        return None;
    }
    let (body, sum) = bytes[..len].split_at(len - CHECKSUM_BYTES);
    if checksum(key, body) != sum {
        return None;
    }
    let mut txid = [0u8; 8];
    txid.copy_from_slice(&head[5..13]);
    let shards = body[start..shards_end]
        .chunks_exact(2)
        .map(|c| u16::from_le_bytes([c[0], c[1]]))
        .collect();
    let changes = match kind {
        KIND_LOGGED | KIND_FLOOR => Some(split_changes(&body[shards_end..], count)?),
        _ => None,
    };
    if kind == KIND_FLOOR && changes.iter().flatten().any(|part| part.len() != 8) {
        return None;
    }
    Some((
        len,
        Record {
            txid: u64::from_le_bytes(txid),
            shards,
            changes,
            abort: kind == KIND_ABORT,
            floor: kind == KIND_FLOOR,
        },
    ))
}

/// Splits a LOGGED record's tail into its `count` length-prefixed parts, which must fill it.
fn split_changes(mut rest: &[u8], count: usize) -> Option<Vec<Vec<u8>>> {
    let mut parts = Vec::with_capacity(count);
    for _ in 0..count {
        let n = u32::from_le_bytes(rest.get(..4)?.try_into().ok()?) as usize;
        parts.push(rest.get(4..4usize.checked_add(n)?)?.to_vec());
        rest = &rest[4 + n..];
    }
    rest.is_empty().then_some(parts)
}

/// What a scan of journal bytes found.
#[derive(Debug, PartialEq)]
pub struct Scan {
    /// Each valid record with its offset in the scanned bytes.
    pub records: Vec<(usize, Record)>,
    /// Bytes of valid records from the start of the scanned bytes.
    pub valid_bytes: usize,
    /// Whether damaged bytes follow the valid prefix (a torn tail).
    pub torn_tail: bool,
}

/// Scans records up to a zero length, a damaged record or the end; `Err` with the offset where
/// the valid records end if a valid record follows damaged (non-zero) bytes after them.
pub fn scan_records(key: &RecordKey, bytes: &[u8]) -> Result<Scan, usize> {
    let mut records = Vec::new();
    let mut at = 0;
    while bytes.get(at..at + 4).is_some_and(|len| len != [0; 4]) {
        let Some((len, record)) = decode_record(key, &bytes[at..]) else {
            break;
        };
        records.push((at, record));
        at += len;
    }
    // After the records: nothing, the zeros of the preallocated space, or damage.
    let Some(damage) = first_nonzero(&bytes[at..]) else {
        return Ok(Scan {
            records,
            valid_bytes: at,
            torn_tail: false,
        });
    };
    if (at + damage..bytes.len()).any(|i| decode_record(key, &bytes[i..]).is_some()) {
        return Err(at);
    }
    Ok(Scan {
        records,
        valid_bytes: at,
        torn_tail: true,
    })
}

/// The position of the first byte that is not zero. It reads the preallocated space (a
/// megabyte) at every open, eight bytes at a time.
pub(super) fn first_nonzero(bytes: &[u8]) -> Option<usize> {
    let words = bytes.chunks_exact(8);
    let tail_at = bytes.len() - words.remainder().len();
    let word = words
        .map(|w| u64::from_ne_bytes([w[0], w[1], w[2], w[3], w[4], w[5], w[6], w[7]]))
        .position(|w| w != 0)
        .map_or(tail_at, |k| 8 * k);
    bytes[word..].iter().position(|&b| b != 0).map(|k| word + k)
}

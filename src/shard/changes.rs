//! A shard's changes in one transaction, as a logged commit writes them into the journal and
//! recovery replays them (see the coordinator's "logged commit").
//!
//! The changes are physical and complete for the rows they name: each touched row as it ended
//! (or its absence), every blob the transaction added, with its id, and every blob it dropped.
//! Replayed on the shard state the transaction started from, they give exactly the state it
//! committed; the shard's `last_txid` tells whether that state is already there.
//!
//! ```text
//! changes   = rows blobs_added blobs_dropped [base]
//! rows      = u32 count, then per row: i64 id, u8 present, if present: u16 n, n values
//! blobs_added   = u32 count, then per blob: i64 blob_id, u32 length, bytes
//! blobs_dropped = u32 count, then i64 blob_id each
//! value     = u8 tag (0 NULL, 1 INTEGER i64, 2 REAL f64, 3 TEXT u32 length + UTF-8, 4 BLOB u32 length + bytes)
//! base      = u64: the shard's last_txid the changes apply to (absent in records of older builds)
//! ```
//! All numbers little-endian. Decoding checks every length, so damaged bytes are an error,
//! never a panic (the journal's checksum makes damage unlikely, not impossible to handle).

use rusqlite::types::{Value, ValueRef};

/// A touched row: its id, and its `images` columns after the transaction (in the shard's column
/// order, id first), or `None` if the transaction deleted it.
pub type ChangedRow = (i64, Option<Vec<Value>>);

/// What one transaction did to one shard.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ShardChanges {
    /// Each touched row.
    pub rows: Vec<ChangedRow>,
    /// Blobs the transaction added: blob id and bytes.
    pub blobs_added: Vec<(i64, Vec<u8>)>,
    /// Blobs the transaction deleted.
    pub blobs_dropped: Vec<i64>,
    /// The shard's `last_txid` when the transaction began: the state the changes apply to. A
    /// shard found below it lost commits (recovery refuses to replay over the gap).
    pub base_txid: Option<u64>,
}

const TAG_NULL: u8 = 0;
const TAG_INTEGER: u8 = 1;
const TAG_REAL: u8 = 2;
const TAG_TEXT: u8 = 3;
const TAG_BLOB: u8 = 4;

impl ShardChanges {
    pub fn encode(&self) -> Vec<u8> {
        let mut encoder = Encoder::default();
        for (id, row) in &self.rows {
            let values: Option<Vec<ValueRef>> =
                row.as_ref().map(|v| v.iter().map(ValueRef::from).collect());
            encoder.row(*id, values.as_deref());
        }
        encoder.end_rows();
        for (blob_id, data) in &self.blobs_added {
            encoder.blob_added(*blob_id, data);
        }
        encoder.end_blobs_added();
        for &blob_id in &self.blobs_dropped {
            encoder.blob_dropped(blob_id);
        }
        encoder.finish(self.base_txid)
    }

    pub fn decode(bytes: &[u8]) -> Result<ShardChanges, String> {
        let mut r = Reader { bytes, at: 0 };
        let mut changes = ShardChanges::default();
        for _ in 0..r.u32()? {
            let id = r.i64()?;
            let row = match r.u8()? {
                0 => None,
                1 => {
                    let n = r.u16()?;
                    Some((0..n).map(|_| r.value()).collect::<Result<_, _>>()?)
                }
                other => return Err(format!("row presence byte {other}")),
            };
            changes.rows.push((id, row));
        }
        for _ in 0..r.u32()? {
            let blob_id = r.i64()?;
            changes.blobs_added.push((blob_id, r.bytes()?.to_vec()));
        }
        for _ in 0..r.u32()? {
            changes.blobs_dropped.push(r.i64()?);
        }
        if r.at < bytes.len() {
            changes.base_txid = Some(r.i64()? as u64);
        }
        if r.at != bytes.len() {
            return Err(format!("{} bytes after the changes", bytes.len() - r.at));
        }
        Ok(changes)
    }
}

/// Writes the encoding as the changes are read, section by section (rows, then blobs added,
/// then blobs dropped, then the base), so that a shard's rows and images go from SQLite into the
/// encoding without a copy in between. Each section's count is filled in when it ends.
pub struct Encoder {
    out: Vec<u8>,
    /// Where the open section's count goes, and the count so far.
    count_at: usize,
    count: u32,
}

impl Default for Encoder {
    /// Starts the rows section.
    fn default() -> Encoder {
        Encoder {
            out: vec![0; 4],
            count_at: 0,
            count: 0,
        }
    }
}

impl Encoder {
    /// A touched row: its values as it ended (id first), or `None` if it was deleted.
    pub fn row(&mut self, id: i64, values: Option<&[ValueRef]>) {
        self.out.extend_from_slice(&id.to_le_bytes());
        match values {
            None => self.out.push(0),
            Some(values) => {
                self.out.push(1);
                self.out
                    .extend_from_slice(&(values.len() as u16).to_le_bytes());
                values.iter().for_each(|v| put_value(&mut self.out, *v));
            }
        }
        self.count += 1;
    }

    /// Ends the rows; blobs added follow.
    pub fn end_rows(&mut self) {
        self.next_section();
    }

    pub fn blob_added(&mut self, blob_id: i64, data: &[u8]) {
        self.out.extend_from_slice(&blob_id.to_le_bytes());
        put_bytes(&mut self.out, data);
        self.count += 1;
    }

    /// Ends the blobs added; blobs dropped follow.
    pub fn end_blobs_added(&mut self) {
        self.next_section();
    }

    pub fn blob_dropped(&mut self, blob_id: i64) {
        self.out.extend_from_slice(&blob_id.to_le_bytes());
        self.count += 1;
    }

    /// Ends the blobs dropped and adds the base.
    pub fn finish(mut self, base_txid: Option<u64>) -> Vec<u8> {
        self.close_section();
        if let Some(base) = base_txid {
            self.out.extend_from_slice(&base.to_le_bytes());
        }
        self.out
    }

    /// The bytes encoded so far.
    pub fn encoded_bytes(&self) -> usize {
        self.out.len()
    }

    fn close_section(&mut self) {
        self.out[self.count_at..self.count_at + 4].copy_from_slice(&self.count.to_le_bytes());
    }

    fn next_section(&mut self) {
        self.close_section();
        self.count_at = self.out.len();
        self.count = 0;
        self.out.extend_from_slice(&[0; 4]);
    }
}

/// The bytes a blob added takes in the encoding.
pub fn blob_added_bytes(data_len: u64) -> u64 {
    8 + 4 + data_len
}

fn put_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
    out.extend_from_slice(bytes);
}

fn put_value(out: &mut Vec<u8>, value: ValueRef) {
    match value {
        ValueRef::Null => out.push(TAG_NULL),
        ValueRef::Integer(i) => {
            out.push(TAG_INTEGER);
            out.extend_from_slice(&i.to_le_bytes());
        }
        ValueRef::Real(f) => {
            out.push(TAG_REAL);
            out.extend_from_slice(&f.to_le_bytes());
        }
        ValueRef::Text(s) => {
            out.push(TAG_TEXT);
            put_bytes(out, s);
        }
        ValueRef::Blob(b) => {
            out.push(TAG_BLOB);
            put_bytes(out, b);
        }
    }
}

/// Reads the encoding front to back; every read checks that its bytes are there.
struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        let end = self
            .at
            .checked_add(n)
            .filter(|&end| end <= self.bytes.len())
            .ok_or_else(|| format!("changes cut short at byte {}", self.at))?;
        let out = &self.bytes[self.at..end];
        self.at = end;
        Ok(out)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], String> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }

    fn u8(&mut self) -> Result<u8, String> {
        Ok(self.array::<1>()?[0])
    }

    fn u16(&mut self) -> Result<u16, String> {
        self.array().map(u16::from_le_bytes)
    }

    fn u32(&mut self) -> Result<u32, String> {
        self.array().map(u32::from_le_bytes)
    }

    fn i64(&mut self) -> Result<i64, String> {
        self.array().map(i64::from_le_bytes)
    }

    fn bytes(&mut self) -> Result<&'a [u8], String> {
        let n = self.u32()? as usize;
        self.take(n)
    }

    fn value(&mut self) -> Result<Value, String> {
        Ok(match self.u8()? {
            TAG_NULL => Value::Null,
            TAG_INTEGER => Value::Integer(self.i64()?),
            TAG_REAL => Value::Real(f64::from_le_bytes(self.array()?)),
            TAG_TEXT => Value::Text(
                String::from_utf8(self.bytes()?.to_vec()).map_err(|e| format!("text: {e}"))?,
            ),
            TAG_BLOB => Value::Blob(self.bytes()?.to_vec()),
            other => return Err(format!("value tag {other}")),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> ShardChanges {
        ShardChanges {
            rows: vec![
                (
                    7,
                    Some(vec![
                        Value::Integer(7),
                        Value::Text("a.png".into()),
                        Value::Real(-0.5),
                        Value::Blob(vec![1, 2, 3]),
                        Value::Null,
                    ]),
                ),
                (-3, None),
            ],
            blobs_added: vec![(11, vec![9; 300])],
            blobs_dropped: vec![4, 5],
            base_txid: Some(41),
        }
    }

    #[test]
    fn round_trip() {
        let changes = sample();
        assert_eq!(ShardChanges::decode(&changes.encode()), Ok(changes));
        let empty = ShardChanges::default();
        assert_eq!(ShardChanges::decode(&empty.encode()), Ok(empty));
    }

    #[test]
    fn blob_added_bytes_is_what_a_blob_takes() {
        let mut encoder = Encoder::default();
        encoder.end_rows();
        let before = encoder.encoded_bytes();
        encoder.blob_added(3, &[7; 100]);
        assert_eq!(
            (encoder.encoded_bytes() - before) as u64,
            blob_added_bytes(100)
        );
    }

    #[test]
    fn every_truncation_and_extension_is_an_error() {
        let bytes = sample().encode();
        // Cut exactly before the base: a record of an older build, which had none.
        let without_base = bytes.len() - 8;
        for cut in (0..bytes.len()).filter(|&cut| cut != without_base) {
            assert!(ShardChanges::decode(&bytes[..cut]).is_err(), "cut {cut}");
        }
        let older = ShardChanges::decode(&bytes[..without_base]).unwrap();
        assert_eq!(
            older,
            ShardChanges {
                base_txid: None,
                ..sample()
            }
        );
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(ShardChanges::decode(&longer).is_err());
    }
}

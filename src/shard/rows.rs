//! A shard's rows: the row types, reads (by id, pages of a scan, images) and the row writes,
//! each recording the row's before-state first (see the invariants in `shard`).

use rusqlite::types::Value;
use rusqlite::{params, OptionalExtension, ToSql};

use super::*;

/// A row as stored in a shard's `images` table.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredRow {
    pub id: i64,
    pub name: Value,
    pub format: String,
    pub width: i64,
    pub height: i64,
    pub bytes: i64,
    pub hash: String,
    pub blob_id: i64,
    pub user: Vec<Value>,
}

/// The metadata of a row to write; its blob is written separately.
#[derive(Debug, Clone)]
pub struct NewRow {
    pub id: i64,
    pub name: Value,
    pub format: String,
    pub width: i64,
    pub height: i64,
    pub bytes: i64,
    pub hash: String,
    pub user: Vec<Value>,
}

impl From<&StoredRow> for NewRow {
    /// The row as it is, to be written back with some columns changed.
    fn from(row: &StoredRow) -> NewRow {
        NewRow {
            id: row.id,
            name: row.name.clone(),
            format: row.format.clone(),
            width: row.width,
            height: row.height,
            bytes: row.bytes,
            hash: row.hash.clone(),
            user: row.user.clone(),
        }
    }
}

/// Which rows a scan returns (all conditions together).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ScanFilter {
    pub id_eq: Option<i64>,
    /// Smallest id, inclusive.
    pub id_min: Option<i64>,
    /// Largest id, inclusive.
    pub id_max: Option<i64>,
    /// `column = value` conditions: the column as the shard's SQL names it, and the value.
    pub equal: Vec<(String, Value)>,
    pub descending: bool,
}

/// One condition of a scan: `column op value`, the column as the shard's SQL names it.
pub struct Condition {
    pub column: String,
    pub op: &'static str,
    pub value: Value,
}

impl ScanFilter {
    /// The filter's conditions for a page after `after` (exclusive, in the scan's order): one
    /// list whatever kind of shard runs it, each writing its own placeholders.
    pub fn conditions(&self, after: Option<i64>) -> Vec<Condition> {
        let on_id = |op, id| Condition {
            column: "id".into(),
            op,
            value: Value::Integer(id),
        };
        let mut conditions = Vec::new();
        conditions.extend(self.id_eq.map(|id| on_id("=", id)));
        conditions.extend(self.id_min.map(|id| on_id(">=", id)));
        conditions.extend(self.id_max.map(|id| on_id("<=", id)));
        conditions.extend(self.equal.iter().map(|(column, value)| Condition {
            column: column.clone(),
            op: "=",
            value: value.clone(),
        }));
        let after_op = if self.descending { "<" } else { ">" };
        conditions.extend(after.map(|id| on_id(after_op, id)));
        conditions
    }

    /// `WHERE ... ORDER BY id ...` for `conditions`, the n-th one's value (1-based) written as
    /// `placeholder(n)`.
    pub fn where_and_order(
        &self,
        conditions: &[Condition],
        placeholder: impl Fn(usize) -> String,
    ) -> String {
        let terms: Vec<String> = conditions
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{} {} {}", c.column, c.op, placeholder(i + 1)))
            .collect();
        let order = if self.descending { "DESC" } else { "ASC" };
        match terms.is_empty() {
            true => format!("ORDER BY id {order}"),
            false => format!("WHERE {} ORDER BY id {order}", terms.join(" AND ")),
        }
    }
}
impl Shard {
    fn row_from(&self, r: &rusqlite::Row<'_>) -> rusqlite::Result<StoredRow> {
        Ok(StoredRow {
            id: r.get(0)?,
            name: r.get(1)?,
            format: r.get(2)?,
            width: r.get(3)?,
            height: r.get(4)?,
            bytes: r.get(5)?,
            hash: r.get(6)?,
            blob_id: r.get(7)?,
            user: (0..self.user_column_count)
                .map(|i| r.get(8 + i))
                .collect::<rusqlite::Result<_>>()?,
        })
    }

    pub fn get(&self, id: i64) -> Result<Option<StoredRow>> {
        let mut stmt = self
            .conn
            .prepare_cached(&self.sql.get)
            .map_err(self.err())?;
        stmt.query_row([id], |r| self.row_from(r))
            .optional()
            .map_err(self.err())
    }

    /// One page of rows matching `filter`, in id order, after `after` (exclusive).
    pub fn scan_page(
        &self,
        filter: &ScanFilter,
        after: Option<i64>,
        limit: usize,
    ) -> Result<Vec<StoredRow>> {
        let conditions = filter.conditions(after);
        let where_and_order = filter.where_and_order(&conditions, |n| format!("?{n}"));
        let mut values: Vec<Value> = conditions.into_iter().map(|c| c.value).collect();
        values.push(Value::Integer(limit as i64));
        let sql = format!(
            "SELECT id, {} FROM images {where_and_order} LIMIT ?{}",
            self.columns_sql,
            values.len()
        );
        let mut stmt = self.conn.prepare_cached(&sql).map_err(self.err())?;
        let rows = stmt
            .query_map(rusqlite::params_from_iter(values.iter()), |r| {
                self.row_from(r)
            })
            .map_err(self.err())?;
        rows.collect::<rusqlite::Result<_>>().map_err(self.err())
    }

    /// Reads image bytes straight from the blob's pages into one buffer.
    pub fn read_blob(&self, blob_id: i64) -> Result<Vec<u8>> {
        let blob = self
            .conn
            .blob_open(rusqlite::MAIN_DB, "blobs", "data", blob_id, true)
            .map_err(self.err())?;
        let mut data = vec![0u8; blob.len()];
        blob.read_at_exact(&mut data, 0).map_err(self.err())?;
        Ok(data)
    }

    /// Records `id`'s state before transaction `txid` first touches it (no-op after the first).
    fn remember_before(&self, txid: u64, id: i64) -> Result<()> {
        self.conn
            .prepare_cached(&self.sql.remember_before)
            .and_then(|mut s| s.execute(params![txid as i64, id]))
            .map(|_| ())
            .map_err(self.err())
    }

    /// Deletes `blob_id` if transaction `txid` created it (it is not `id`'s before-state blob);
    /// a before-state blob stays until the transaction is finalized or aborted.
    fn drop_blob_if_new(&self, txid: u64, id: i64, blob_id: i64) -> Result<()> {
        self.conn
            .prepare_cached(
                "DELETE FROM blobs WHERE blob_id = ?3 AND NOT EXISTS (SELECT 1 FROM imagestore_undo
                 WHERE txid = ?1 AND id = ?2 AND existed AND blob_id = ?3)",
            )
            .and_then(|mut s| s.execute(params![txid as i64, id, blob_id]))
            .map(|_| ())
            .map_err(self.err())
    }

    /// Stores image bytes. A large image is written into a zeroblob in place, so that no copy of
    /// it is made on the way (binding it would copy it once, and building the record again).
    fn insert_blob(&self, data: &[u8]) -> Result<i64> {
        if data.len() < BLOB_IN_PLACE_BYTES_MIN {
            return self
                .conn
                .prepare_cached("INSERT INTO blobs(data) VALUES (?1)")
                .and_then(|mut s| s.insert([data]))
                .map_err(self.err());
        }
        let blob_id = self
            .conn
            .prepare_cached("INSERT INTO blobs(data) VALUES (zeroblob(?1))")
            .and_then(|mut s| s.insert([data.len() as i64]))
            .map_err(self.err())?;
        let mut blob = self
            .conn
            .blob_open(rusqlite::MAIN_DB, "blobs", "data", blob_id, false)
            .map_err(self.err())?;
        blob.write_at(data, 0).map_err(self.err())?;
        Ok(blob_id)
    }

    /// Inserts a row into a shard that is being restored: no before-state is kept, because the
    /// whole shard is discarded if the restore fails.
    /// A second row with the same id is an error, not a replacement.
    pub fn insert_restored(&self, row: &NewRow, data: &[u8]) -> Result<()> {
        self.insert_copied(row, Some(data))
    }

    /// Inserts a row into a backup's copy of a shard kept elsewhere (a server), with its image,
    /// or without (`None`: an earlier file of the backup holds it; the row names blob 0, which
    /// SQLite never gives a row, so no file has it).
    pub fn insert_copied(&self, row: &NewRow, data: Option<&[u8]>) -> Result<()> {
        let blob_id = match data {
            Some(data) => self.insert_blob(data)?,
            None => 0,
        };
        self.write_row(row, blob_id, false)
    }

    /// Inserts a row (the caller checked that its id is free) with a new blob.
    pub fn insert(&self, txid: u64, row: &NewRow, data: &[u8]) -> Result<()> {
        self.remember_before(txid, row.id)?;
        let blob_id = self.insert_blob(data)?;
        self.write_row(row, blob_id, true)
    }

    /// Writes a row (`replace`: one that may exist, with `INSERT OR REPLACE`).
    fn write_row(&self, row: &NewRow, blob_id: i64, replace: bool) -> Result<()> {
        let sql = match replace {
            true => &self.sql.insert_or_replace,
            false => &self.sql.insert,
        };
        let built_in: [&dyn ToSql; 8] = [
            &row.id,
            &row.name,
            &row.format,
            &row.width,
            &row.height,
            &row.bytes,
            &row.hash,
            &blob_id,
        ];
        let values = built_in
            .into_iter()
            .chain(row.user.iter().map(|v| v as &dyn ToSql));
        self.conn
            .prepare_cached(sql)
            .and_then(|mut s| s.execute(rusqlite::params_from_iter(values)))
            .map(|_| ())
            .map_err(self.err())
    }

    /// Replaces row `row.id` in place; `data` is the new image, or `None` to keep the blob.
    pub fn update(
        &self,
        txid: u64,
        current: &StoredRow,
        row: &NewRow,
        data: Option<&[u8]>,
    ) -> Result<()> {
        self.remember_before(txid, row.id)?;
        let blob_id = match data {
            Some(data) => {
                let blob_id = self.insert_blob(data)?;
                self.drop_blob_if_new(txid, row.id, current.blob_id)?;
                blob_id
            }
            None => current.blob_id,
        };
        self.write_row(row, blob_id, true)
    }

    pub fn delete(&self, txid: u64, current: &StoredRow) -> Result<()> {
        self.remember_before(txid, current.id)?;
        self.conn
            .prepare_cached("DELETE FROM images WHERE id = ?1")
            .and_then(|mut s| s.execute([current.id]))
            .map_err(self.err())?;
        self.drop_blob_if_new(txid, current.id, current.blob_id)
    }
}

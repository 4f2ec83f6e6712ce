//! The row-write rules of a table: what an INSERT, UPDATE or DELETE does to its shards, apart
//! from how SQLite hands the values over (that is `crate::vtab`).
//!
//! - Every image is probed before anything is written (`new_row`): a row that is not an image,
//!   or too large, changes nothing.
//! - A row lives on the shard its id places it on (`placement::shard_of`); an update that
//!   changes the id moves the row, image and all, and may cross shards.
//! - A taken id is refused (SQLITE_CONSTRAINT, so that SQLite applies OR IGNORE, OR ABORT, ...
//!   itself) before anything is changed, except under OR REPLACE, where the row holding it goes.
//! - The first write of a transaction begins it on every shard (step 1 of the protocol), noting
//!   the host connection's state then, which later tells whether the host's own tables were
//!   written too (`host::also_wrote`) and so where the decision rides.

use rusqlite::types::Value;
use rusqlite::{ffi, Connection};

use super::handle::{open_cores, RowContent, TableCore};
use crate::error::{Error, Result};
use crate::host::{HostAtBegin, HostDecisions};
use crate::images::probe::{probe, ProbeError};
use crate::placement::shard_of;
use crate::shard::{NewRow, StoredRow};

/// The connection a write runs on, and the database of that connection holding the table.
pub(crate) struct Host<'a> {
    pub(crate) db: *mut ffi::sqlite3,
    /// The same connection, for the queries a write transaction makes of it (kept prepared).
    pub(crate) conn: &'a Connection,
    /// `main`, `temp`, or an attached database's name.
    pub(crate) schema: &'a str,
}

/// What a write does with an id another row holds: the statement's conflict clause.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum OnTakenId {
    /// OR REPLACE: the other row is deleted.
    Replace,
    /// Any other clause: the write fails with SQLITE_CONSTRAINT, and SQLite applies the clause.
    Refuse,
}

/// The value given for the `data` column: an image file's bytes, or else the SQL type name of
/// what was given instead (`NULL`, `TEXT`, ...), refused with the row named (`image_bytes`).
pub(crate) type ImageData<'a> = std::result::Result<&'a [u8], &'static str>;

/// An UPDATE of one row: each field the statement set, `None` where it keeps the row's value.
pub(crate) struct RowUpdate<'a> {
    pub(crate) old_id: i64,
    pub(crate) new_id: i64,
    pub(crate) name: Option<Value>,
    pub(crate) data: Option<ImageData<'a>>,
    /// One entry per user column.
    pub(crate) user: Vec<Option<Value>>,
}

/// How a row is named in an error: its id and, when it has one, its name.
pub(crate) fn describe_row(id: Option<i64>, name: &Value) -> String {
    let id = id.map_or("(new)".to_string(), |i| i.to_string());
    match name {
        Value::Text(n) => format!("id {id} ('{n}')"),
        _ => format!("id {id}"),
    }
}

/// The image of row `row`, or the error that names what was given instead.
pub(crate) fn image_bytes<'a>(data: ImageData<'a>, row: &str) -> Result<&'a [u8]> {
    data.map_err(|given| {
        Error::WrongType(match given {
            "NULL" => format!("row {row}: data is not an image but NULL; every row holds an image"),
            other => format!(
                "row {row}: data is not an image but {other}; store the image file's bytes as a BLOB"
            ),
        })
    })
}

impl TableCore {
    /// Step 1 of the protocol, noting the host connection's state then (`host::HostAtBegin`).
    pub(crate) fn begin_write(&self, host: &Host<'_>) -> Result<()> {
        *self.host_at_begin.borrow_mut() = HostAtBegin::read(host.conn, host.schema);
        self.coordinator
            .borrow_mut()
            .begin_write(&mut self.shards.borrow_mut())
    }

    /// Opens the write transaction if SQLite has not (it calls xBegin first, normally; not for
    /// a table created in the same transaction).
    fn ensure_writing(&self, host: &Host<'_>) -> Result<()> {
        if !self.coordinator.borrow().is_writing() {
            self.begin_write(host)?;
        }
        Ok(())
    }

    /// The transaction id of the open write transaction, which now writes shard `shard`.
    fn write_shard(&self, host: &Host<'_>, shard: usize) -> Result<u64> {
        self.ensure_writing(host)?;
        self.coordinator.borrow_mut().record_write(shard)
    }

    fn shard_count(&self) -> usize {
        self.config.shard_count()
    }

    fn get_row(&self, id: i64) -> Result<Option<StoredRow>> {
        self.shards.borrow()[shard_of(id, self.shard_count())].get(id)
    }

    /// The id of a row inserted without one (as SQLite assigns a rowid).
    pub(crate) fn assign_id(&self, host: &Host<'_>) -> Result<i64> {
        self.ensure_writing(host)?;
        let shards = self.shards.borrow();
        self.row_ids.borrow_mut().assign(&shards)
    }

    /// Probes `data` and derives the row's stored metadata; an image that is not one, or too
    /// large, is refused with the row named.
    pub(crate) fn new_row(
        &self,
        id: i64,
        name: Value,
        data: &[u8],
        user: Vec<Value>,
    ) -> Result<NewRow> {
        let info = probe(data, self.config.max_pixels, self.config.verify).map_err(|e| {
            let row = describe_row(Some(id), &name);
            match e {
                ProbeError::NotAnImage(reason) => Error::NotAnImage {
                    at: Some(format!("row {row}")),
                    reason,
                },
                too_big => Error::TooBig {
                    row,
                    reason: too_big.to_string(),
                },
            }
        })?;
        Ok(NewRow {
            id,
            name,
            format: info.format,
            width: i64::from(info.width),
            height: i64::from(info.height),
            bytes: data.len() as i64,
            hash: info.hash,
            user,
        })
    }

    fn taken(&self, id: i64) -> Error {
        Error::DuplicateId {
            table: self.config.table_name.clone(),
            id,
        }
    }

    /// Inserts `row` with image `data`.
    pub(crate) fn insert_row(
        &self,
        host: &Host<'_>,
        row: &NewRow,
        data: &[u8],
        on_taken: OnTakenId,
    ) -> Result<()> {
        let index = shard_of(row.id, self.shard_count());
        let txid = self.write_shard(host, index)?;
        self.data_changed();
        if !self.shards.borrow()[index].insert_if_free(txid, row, data)? {
            if on_taken == OnTakenId::Refuse {
                return Err(self.taken(row.id));
            }
            self.delete_row(host, row.id)?;
            self.shards.borrow()[index].insert(txid, row, data)?;
        }
        self.row_ids.borrow_mut().inserted(row.id);
        Ok(())
    }

    /// Deletes the row with id `id`, if there is one.
    pub(crate) fn delete_row(&self, host: &Host<'_>, id: i64) -> Result<()> {
        let index = shard_of(id, self.shard_count());
        let txid = self.write_shard(host, index)?;
        let shards = self.shards.borrow();
        if let Some(current) = shards[index].get(id)? {
            self.data_changed();
            shards[index].delete(txid, &current)?;
            self.row_ids.borrow_mut().deleted(id);
        }
        Ok(())
    }

    /// Applies `update` to its row, if the row is there.
    pub(crate) fn update_row(
        &self,
        host: &Host<'_>,
        update: RowUpdate<'_>,
        on_taken: OnTakenId,
    ) -> Result<()> {
        let Some(current) = self.get_row(update.old_id)? else {
            return Ok(());
        };
        self.require_as_scanned(&current, &update)?;
        let RowUpdate {
            old_id,
            new_id,
            name,
            data,
            user,
        } = update;
        let name = name.unwrap_or_else(|| current.name.clone());
        let data = data
            .map(|data| image_bytes(data, &describe_row(Some(new_id), &name)))
            .transpose()?;
        let user: Vec<Value> = user
            .into_iter()
            .zip(&current.user)
            .map(|(new, old)| new.unwrap_or_else(|| old.clone()))
            .collect();
        let row = match data {
            Some(data) => self.new_row(new_id, name, data, user)?,
            None => NewRow {
                id: new_id,
                name,
                user,
                ..NewRow::from(&current)
            },
        };
        if new_id == old_id {
            let index = shard_of(old_id, self.shard_count());
            let txid = self.write_shard(host, index)?;
            self.data_changed();
            return self.shards.borrow()[index].update(txid, &current, &row, data);
        }
        // A new id may live on another shard: move the row (its blob is copied). A taken id is
        // refused before anything is deleted: under OR IGNORE and OR FAIL SQLite keeps whatever
        // this call changed before it failed.
        if on_taken == OnTakenId::Refuse && self.get_row(new_id)?.is_some() {
            return Err(self.taken(new_id));
        }
        let data = match data {
            Some(d) => d.to_vec(),
            None => self.shards.borrow()[shard_of(old_id, self.shard_count())]
                .read_blob(current.blob_id)?,
        };
        // insert_row replaces the taken id under OR REPLACE.
        self.delete_row(host, old_id)?;
        self.insert_row(host, &row, &data, on_taken)
    }

    /// Refuses an update whose new values were computed from a row that is no longer there.
    /// SQLite computes an UPDATE's new values for a virtual table from the rows as its scan read
    /// them, before it writes any, and leaves the columns the statement does not set to the
    /// table ("no change"). An UPDATE OR REPLACE that moves rows can overwrite a row before its
    /// own turn comes; keeping the columns it does not set from the row there now is what an
    /// ordinary table does (its moves chain), but a value it sets that differs from that row's
    /// was computed from the overwritten one, and would make a row of two.
    fn require_as_scanned(&self, current: &StoredRow, update: &RowUpdate<'_>) -> Result<()> {
        let overwritten = self
            .scanned
            .borrow()
            .get(&current.id)
            .is_some_and(|scanned| *scanned != RowContent::of(current));
        if !overwritten {
            return Ok(());
        }
        let differs = update.name.as_ref().is_some_and(|n| *n != current.name)
            || update
                .user
                .iter()
                .zip(&current.user)
                .any(|(new, old)| new.as_ref().is_some_and(|n| n != old))
            || matches!(update.data, Some(Ok(d)) if blake3::hash(d).to_hex().as_str() != current.hash);
        match differs {
            true => Err(Error::BadArgument(format!(
                "this UPDATE moved another row onto id {} before updating it, and the values it \
                 sets there were computed from the row it overwrote, so they would mix two rows; \
                 update those rows in separate statements",
                current.id
            ))),
            false => Ok(()),
        }
    }

    /// The decision step (xSync): where the decision rides, then the coordinator's choice.
    pub(crate) fn decide(&self, host: &Host<'_>) -> Result<()> {
        let decider = if self.coordinator.borrow().is_writing() {
            self.host_decider(host)?
        } else {
            None
        };
        self.coordinator.borrow_mut().sync(
            &mut self.shards.borrow_mut(),
            decider
                .as_ref()
                .map(|h| h as &dyn crate::commit::HostDecider),
        )
    }

    /// Where this transaction's decision rides, if it also wrote the host's own tables (or
    /// another imagestore table) and the host is a database file (a `:memory:` or temp
    /// database cannot make a decision durable).
    fn host_decider(&self, host: &Host<'_>) -> Result<Option<HostDecisions>> {
        let Some(file) = crate::host::host_filename(host.db, host.schema) else {
            return Ok(None);
        };
        let rides = !host.schema.eq_ignore_ascii_case("temp")
            && (self.other_table_writing(host.db)
                || crate::host::also_wrote(host.db, host.schema, &self.host_at_begin.borrow()));
        if !rides {
            return Ok(None);
        }
        Ok(Some(HostDecisions::new(
            host.db,
            host.schema,
            &file,
            self.coordinator.borrow().table_id(),
        )))
    }

    /// Whether another imagestore table of this connection is written in the same transaction:
    /// then every one of them rides on the host's commit, their one commit point.
    fn other_table_writing(&self, db: *mut ffi::sqlite3) -> bool {
        let me: *const TableCore = self;
        open_cores(db)
            .into_iter()
            .filter(|&core| core != me)
            // SAFETY: see `OpenTable`: a call on connection `db`, the table connected.
            .any(|core| {
                unsafe { &*core }
                    .coordinator
                    .try_borrow()
                    .is_ok_and(|c| c.is_writing())
            })
    }
}

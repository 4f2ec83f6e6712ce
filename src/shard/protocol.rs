//! The protocol's steps on one shard (prepare, logged commit and its changes, replay,
//! finalize, abort), and the shard as a [`Participant`] of the commit protocol.

use super::*;

impl Shard {
    pub(super) fn set_last_txid(&self, txid: u64) -> Result<()> {
        self.conn
            .prepare_cached(
                "UPDATE imagestore_meta SET value = max(value, ?1) WHERE key = 'last_txid'",
            )
            .and_then(|mut s| s.execute([txid as i64]))
            .map(|_| ())
            .map_err(self.err())
    }

    /// Phase 1: commits the open transaction, still undoable, with a prepare record. It is
    /// durable once the coordinator has synced this shard's WAL.
    pub fn prepare(&self, txid: u64, participants: &[u16], decided_by: Option<&str>) -> Result<()> {
        crate::fault::check("shard_prepare")?;
        let shards = participants
            .iter()
            .map(u16::to_string)
            .collect::<Vec<_>>()
            .join(",");
        self.conn
            .prepare_cached(
                "INSERT INTO imagestore_prepared(txid, shards, decided_by) VALUES (?1, ?2, ?3)",
            )
            .and_then(|mut s| s.execute(params![txid as i64, shards, decided_by]))
            .map_err(self.err())?;
        self.set_last_txid(txid)?;
        self.commit()
    }

    /// A logged commit's shard step, after its decision: finalize and commit, not synced (the
    /// journal holds [`changes`](Self::changes) to replay if a power cut takes this commit away).
    pub fn commit_logged(&self, txid: u64) -> Result<()> {
        crate::fault::check("shard_commit_logged")?;
        self.commit_final(txid)
    }

    fn commit_final(&self, txid: u64) -> Result<()> {
        self.forget_before_states(txid)?;
        self.set_last_txid(txid)?;
        self.commit()
    }

    /// What the open transaction `txid` changed, for a logged commit, encoded (`changes`): `None`
    /// if its rows and the images it added come to more than `bytes_max` (then it is prepared
    /// instead). The images are read only once the total is known to fit.
    pub fn changes(&self, txid: u64, bytes_max: u64) -> Result<Option<Vec<u8>>> {
        let width = 1 + self.columns.len();
        let mut encoder = Encoder::default();
        let mut blobs_added: Vec<i64> = Vec::new();
        let mut blobs_dropped: Vec<i64> = Vec::new();
        let mut blob_bytes = 0u64;
        let mut stmt = self
            .conn
            .prepare_cached(&self.sql.changed_rows)
            .map_err(self.err())?;
        let mut cursor = stmt.query([txid as i64]).map_err(self.err())?;
        while let Some(r) = cursor.next().map_err(self.err())? {
            let values = match r.get::<_, bool>(1).map_err(self.err())? {
                true => Some(
                    (5..5 + width)
                        .map(|k| r.get_ref(k))
                        .collect::<rusqlite::Result<Vec<_>>>()
                        .map_err(self.err())?,
                ),
                false => None,
            };
            encoder.row(r.get(0).map_err(self.err())?, values.as_deref());
            let added: Option<(i64, i64)> = r
                .get::<_, Option<i64>>(2)
                .and_then(|id| Ok(id.zip(r.get(3)?)))
                .map_err(self.err())?;
            if let Some((blob_id, len)) = added {
                blobs_added.push(blob_id);
                blob_bytes += changes::blob_added_bytes(len as u64);
            }
            blobs_dropped.extend(r.get::<_, Option<i64>>(4).map_err(self.err())?);
            if encoder.encoded_bytes() as u64 + blob_bytes > bytes_max {
                return Ok(None);
            }
        }
        drop(cursor);
        encoder.end_rows();
        let mut blob = self
            .conn
            .prepare_cached("SELECT data FROM blobs WHERE blob_id = ?1")
            .map_err(self.err())?;
        for blob_id in blobs_added {
            blob.query_row([blob_id], |r| {
                encoder.blob_added(blob_id, r.get_ref(0)?.as_blob()?);
                Ok(())
            })
            .map_err(self.err())?;
        }
        encoder.end_blobs_added();
        blobs_dropped
            .into_iter()
            .for_each(|id| encoder.blob_dropped(id));
        Ok(Some(encoder.finish(Some(self.last_txid()?))))
    }

    /// Recovery's redo of a logged commit on a shard that lost it (a power cut took its unsynced
    /// commit): applies `changes` and raises `last_txid`, in one transaction, unless `last_txid`
    /// shows the shard has it already, or lacks the commits the changes build on.
    pub fn replay(&self, txid: u64, changes: &ShardChanges) -> Result<Replayed> {
        let width = 1 + self.columns.len();
        if let Some((id, _)) = changes
            .rows
            .iter()
            .find(|(_, row)| row.as_ref().is_some_and(|v| v.len() != width))
        {
            return Err(Error::InDoubt(format!(
                "shard {}: the journal's row {id} of transaction {txid} does not have the shard's {width} columns",
                self.path.display()
            )));
        }
        let mut outcome = Replayed::Applied;
        self.in_own_transaction(|s| {
            let last = s.last_txid()?;
            if last >= txid {
                outcome = Replayed::Present;
                return Ok(());
            }
            if let Some(base) = changes.base_txid.filter(|&base| last < base) {
                outcome = Replayed::Gap { base };
                return Ok(());
            }
            let run = |sql: &str, values: &[&dyn rusqlite::ToSql]| {
                s.conn
                    .prepare_cached(sql)
                    .and_then(|mut st| st.execute(values))
                    .map(|_| ())
                    .map_err(s.err())
            };
            for blob_id in &changes.blobs_dropped {
                run("DELETE FROM blobs WHERE blob_id = ?1", &[blob_id])?;
            }
            for (blob_id, data) in &changes.blobs_added {
                run(
                    "INSERT INTO blobs(blob_id, data) VALUES (?1, ?2)",
                    &[blob_id, data],
                )?;
            }
            for (id, row) in &changes.rows {
                run("DELETE FROM images WHERE id = ?1", &[id])?;
                if let Some(values) = row {
                    s.conn
                        .prepare_cached(&s.sql.insert)
                        .and_then(|mut st| st.execute(rusqlite::params_from_iter(values)))
                        .map_err(s.err())?;
                }
            }
            s.set_last_txid(txid)
        })?;
        Ok(outcome)
    }

    /// Deletes the before-states of `txid` and the blobs only they referenced.
    fn forget_before_states(&self, txid: u64) -> Result<()> {
        self.conn
            .prepare_cached(
                "DELETE FROM blobs WHERE blob_id IN (SELECT u.blob_id FROM imagestore_undo u
                 LEFT JOIN images i ON i.id = u.id
                 WHERE u.txid = ?1 AND u.existed AND i.blob_id IS NOT u.blob_id)",
            )
            .and_then(|mut s| s.execute([txid as i64]))
            .map_err(self.err())?;
        self.conn
            .prepare_cached("DELETE FROM imagestore_undo WHERE txid = ?1")
            .and_then(|mut s| s.execute([txid as i64]))
            .map(|_| ())
            .map_err(self.err())
    }

    fn drop_prepare_record(&self, txid: u64) -> Result<()> {
        self.conn
            .prepare_cached("DELETE FROM imagestore_prepared WHERE txid = ?1")
            .and_then(|mut s| s.execute([txid as i64]))
            .map(|_| ())
            .map_err(self.err())
    }

    /// Phase 2 of a committed transaction: drops its before-states and prepare record, in a
    /// transaction of its own. Not synced: the journal keeps the decision until it is.
    pub fn finalize(&self, txid: u64) -> Result<()> {
        crate::fault::check("shard_finalize")?;
        self.in_own_transaction(|s| {
            s.forget_before_states(txid)?;
            s.raise_meta_txid(LAST_FINALIZED, txid)?;
            s.drop_prepare_record(txid)
        })
    }

    /// Raises the transaction id kept under `key` in `imagestore_meta` to `txid`, in the open
    /// transaction.
    fn raise_meta_txid(&self, key: &str, txid: u64) -> Result<()> {
        self.conn
            .prepare_cached(
                "INSERT INTO imagestore_meta(key, value) VALUES (?1, ?2)
                 ON CONFLICT(key) DO UPDATE SET value = max(value, excluded.value)",
            )
            .and_then(|mut s| s.execute(params![key, txid as i64]))
            .map(|_| ())
            .map_err(self.err())
    }

    /// Undoes a prepared (or partly written) transaction from its before-states, in a
    /// transaction of its own.
    pub fn abort_prepared(&self, txid: u64) -> Result<()> {
        self.in_own_transaction(|s| {
            let t = txid as i64;
            let run = |sql: &str| {
                s.conn.prepare_cached(sql).and_then(|mut st| st.execute([t])).map(|_| ()).map_err(Error::shard(&s.path))
            };
            run("DELETE FROM blobs WHERE blob_id IN (SELECT i.blob_id FROM imagestore_undo u
                 JOIN images i ON i.id = u.id
                 WHERE u.txid = ?1 AND (NOT u.existed OR i.blob_id IS NOT u.blob_id))")?;
            run("DELETE FROM images WHERE id IN (SELECT id FROM imagestore_undo WHERE txid = ?1)")?;
            run(&format!(
                "INSERT INTO images(id, {c}) SELECT id, {c} FROM imagestore_undo WHERE txid = ?1 AND existed",
                c = s.columns_sql
            ))?;
            run("DELETE FROM imagestore_undo WHERE txid = ?1")?;
            s.raise_meta_txid(LAST_ABORTED, txid)?;
            s.drop_prepare_record(txid)
        })
    }

    /// Three-phase commit: marks prepared transaction `txid` pre-committed, or takes that back,
    /// in a transaction of its own; durable once the coordinator has synced this shard's WAL.
    /// Pre-committing a transaction that is not prepared here is an error.
    pub fn set_pre_committed(&self, txid: u64, pre_committed: bool) -> Result<()> {
        crate::fault::check(match pre_committed {
            true => "shard_pre_commit",
            false => "shard_withdraw_pre_commit",
        })?;
        self.in_own_transaction(|s| {
            let changed = s
                .conn
                .prepare_cached("UPDATE imagestore_prepared SET pre_committed = ?2 WHERE txid = ?1")
                .and_then(|mut st| st.execute(params![txid as i64, pre_committed]))
                .map_err(s.err())?;
            match (changed, pre_committed) {
                (0, true) => Err(Error::Internal(format!(
                    "shard {}: transaction {txid} is not prepared here, so it cannot be pre-committed",
                    s.path.display()
                ))),
                _ => Ok(()),
            }
        })
    }

    pub(super) fn in_own_transaction(&self, body: impl FnOnce(&Shard) -> Result<()>) -> Result<()> {
        self.execute("BEGIN IMMEDIATE")?;
        match body(self) {
            Ok(()) => self.commit(),
            Err(e) => {
                let _ = self.rollback();
                Err(e)
            }
        }
    }
}

/// The local SQLite shard as a participant of the commit protocol: each step is one SQLite
/// transaction on the shard file (or a statement in the open one), and durability is the WAL's
/// fsync, run on the sync pool (`durable`).
impl Participant for Shard {
    fn name(&self) -> String {
        self.path.display().to_string()
    }

    fn begin_read(&mut self) -> Result<Vec<u64>> {
        Shard::begin_read(self)
    }

    fn end(&mut self) -> Result<()> {
        self.rollback()
    }

    fn begin_write(&mut self) -> Result<()> {
        Shard::begin_write(self)
    }

    fn savepoint(&mut self, level: i32) -> Result<()> {
        Shard::savepoint(self, level)
    }

    fn release(&mut self, level: i32) -> Result<()> {
        Shard::release(self, level)
    }

    fn rollback_to(&mut self, level: i32) -> Result<()> {
        Shard::rollback_to(self, level)
    }

    fn rollback_to_start(&mut self) -> Result<()> {
        Shard::rollback_to_start(self)
    }

    fn last_txid(&mut self) -> Result<u64> {
        Shard::last_txid(self)
    }

    fn last_finalized(&mut self) -> Result<u64> {
        Shard::meta_txid(self, LAST_FINALIZED)
    }

    fn last_aborted(&mut self) -> Result<u64> {
        Shard::meta_txid(self, LAST_ABORTED)
    }

    fn prepared(&mut self) -> Result<Vec<PrepareRecord>> {
        self.prepare_records()
    }

    fn changes(&mut self, txid: u64, bytes_max: u64) -> Result<Option<Vec<u8>>> {
        Shard::changes(self, txid, bytes_max)
    }

    fn commit_logged(&mut self, txid: u64) -> Result<()> {
        Shard::commit_logged(self, txid)
    }

    fn replay(&mut self, txid: u64, changes: &[u8]) -> Result<Replayed> {
        match ShardChanges::decode(changes) {
            Ok(changes) => Shard::replay(self, txid, &changes),
            Err(detail) => Ok(Replayed::Unreadable(detail)),
        }
    }

    fn prepare(&mut self, txid: u64, participants: &[u16], decided_by: Option<&str>) -> Result<()> {
        Shard::prepare(self, txid, participants, decided_by)
    }

    fn finalize(&mut self, txid: u64) -> Result<()> {
        Shard::finalize(self, txid)
    }

    fn abort_prepared(&mut self, txid: u64) -> Result<()> {
        Shard::abort_prepared(self, txid)
    }

    fn pre_commit(&mut self, txid: u64) -> Result<()> {
        Shard::set_pre_committed(self, txid, true)
    }

    fn withdraw_pre_commit(&mut self, txid: u64) -> Result<()> {
        Shard::set_pre_committed(self, txid, false)
    }

    fn sync_job(&self) -> Option<SyncJob> {
        let path = self.path.clone();
        Some(Box::new(move || crate::durable::sync_wal(&path)))
    }
}

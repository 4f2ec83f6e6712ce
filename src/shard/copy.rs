//! Checks of a shard (integrity, orphan images, totals) and its copy into a backup.

use super::*;

impl Shard {
    /// What `PRAGMA integrity_check` reports, less its "ok".
    pub fn integrity_problems(&self) -> Result<Vec<String>> {
        let found: Vec<String> = self.first_column("PRAGMA integrity_check")?;
        // Newer SQLite reports several problems in one row, one a line.
        Ok(found
            .iter()
            .flat_map(|row| row.lines())
            .filter(|line| *line != "ok" && !line.starts_with("*** in database"))
            .map(str::to_string)
            .collect())
    }

    /// Calls `visit(id, stored hash, image bytes or None if missing)` for every row.
    pub fn for_each_image(&self, mut visit: impl FnMut(i64, &str, Option<&[u8]>)) -> Result<()> {
        let mut stmt = self
            .conn
            .prepare("SELECT i.id, i.hash, b.data FROM images i LEFT JOIN blobs b ON b.blob_id = i.blob_id ORDER BY i.id")
            .map_err(self.err())?;
        let mut rows = stmt.query([]).map_err(self.err())?;
        while let Some(row) = rows.next().map_err(self.err())? {
            let id: i64 = row.get(0).map_err(self.err())?;
            let hash: String = row.get(1).map_err(self.err())?;
            let data = row
                .get_ref(2)
                .map_err(self.err())?
                .as_blob_or_null()
                .map_err(|e| Error::shard(&self.path)(e.into()))?;
            visit(id, &hash, data);
        }
        Ok(())
    }

    /// Blobs that no row and no before-state references.
    pub fn orphan_blob_count(&self) -> Result<i64> {
        self.conn
            .query_row(
                "SELECT count(*) FROM blobs WHERE blob_id NOT IN (SELECT blob_id FROM images)
                 AND blob_id NOT IN (SELECT blob_id FROM imagestore_undo WHERE blob_id IS NOT NULL)",
                [],
                |r| r.get(0),
            )
            .map_err(self.err())
    }

    /// Copies this shard, as the connection's open read transaction sees it, into a new file
    /// `dest`, leaving out the bytes of images whose hash is in `held` (an earlier backup holds
    /// them). Rows, meta and schema are copied whole; protocol state is not. Returns how many
    /// images' bytes were copied, and their size.
    pub fn copy_rows_to(&self, dest: &Path, held: &HashSet<blake3::Hash>) -> Result<(u64, u64)> {
        // Synced through this descriptor, kept open until the connection has closed: closing
        // another descriptor of the file would drop SQLite's POSIX locks on it.
        let file = std::fs::File::create(dest).map_err(Error::file_io(dest))?;
        let out = Connection::open(dest).map_err(Error::shard(dest))?;
        let dest_err = || Error::shard(dest);
        // The file is not part of any backup until a manifest names it, after it is synced: a
        // crash while it is written leaves only a file that nothing trusts.
        out.execute_batch("PRAGMA journal_mode=OFF; PRAGMA synchronous=OFF; BEGIN")
            .map_err(dest_err())?;
        let schema: Vec<String> = self.first_column(
            "SELECT sql FROM sqlite_schema WHERE sql IS NOT NULL AND name NOT LIKE 'sqlite_%' ORDER BY rowid",
        )?;
        for sql in &schema {
            out.execute_batch(sql).map_err(dest_err())?;
        }
        self.copy_table(&out, dest, "imagestore_meta", |_| Ok(()))?;
        let (mut images, mut bytes, mut unsynced) = (0, 0, 0);
        let mut copy_blob = out
            .prepare("INSERT OR IGNORE INTO blobs(blob_id, data) VALUES (?1, ?2)")
            .map_err(dest_err())?;
        self.copy_table(&out, dest, "images", |row| {
            let (Value::Text(hash), Value::Integer(blob_id)) =
                (&row[HASH_COLUMN], &row[BLOB_ID_COLUMN])
            else {
                return Err(Error::ShardForeign {
                    path: self.path.clone(),
                    detail: "holds a row without a hash or blob".into(),
                });
            };
            if !parse_hash(hash).is_some_and(|hash| held.contains(&hash)) {
                let data = self.read_blob(*blob_id)?;
                copy_blob
                    .execute(params![blob_id, data])
                    .map_err(dest_err())?;
                images += 1;
                bytes += data.len() as u64;
                unsynced += data.len() as u64;
                // Written back as it goes, so that the copy never piles up enough dirty pages
                // to stall a writer's commit sync behind them.
                if unsynced >= BACKUP_SYNC_BYTES {
                    file.sync_data().map_err(Error::file_io(dest))?;
                    unsynced = 0;
                }
            }
            Ok(())
        })?;
        drop(copy_blob);
        out.execute_batch("COMMIT").map_err(dest_err())?;
        Ok((images, bytes))
    }

    /// Starts filling a backup's copy of a shard kept elsewhere (a new shard file, just
    /// initialized): without a journal, as [`copy_rows_to`](Self::copy_rows_to) writes one (the
    /// file is trusted only once a manifest names it, after it is synced), in one transaction
    /// that [`insert_copied`](Self::insert_copied) adds rows to.
    pub fn begin_copy(&self) -> Result<()> {
        self.set_journal_mode("off")?;
        self.conn
            .execute_batch("PRAGMA synchronous=OFF; BEGIN")
            .map_err(self.err())
    }

    /// Ends the filling begun by [`begin_copy`](Self::begin_copy): records `last_txid`, commits,
    /// and leaves the file whole by itself (no WAL), as a copy of a local shard is.
    pub fn finish_copy(&self, last_txid: u64) -> Result<()> {
        let finished = self
            .set_last_txid(last_txid)
            .and_then(|()| self.write_lifecycle(Lifecycle::Live))
            .and_then(|()| self.commit());
        if finished.is_err() {
            let _ = self.rollback();
        }
        finished?;
        self.set_journal_mode("delete")
    }

    fn set_journal_mode(&self, mode: &str) -> Result<()> {
        let set: String = self
            .conn
            .query_row(&format!("PRAGMA journal_mode={mode}"), [], |r| r.get(0))
            .map_err(self.err())?;
        match set.eq_ignore_ascii_case(mode) {
            true => Ok(()),
            false => Err(Error::Internal(format!(
                "{}: journal mode {set}, not {mode}",
                self.path.display()
            ))),
        }
    }

    /// Copies every row of `table` into the same table of `out`, calling `each` on each row.
    fn copy_table(
        &self,
        out: &Connection,
        dest: &Path,
        table: &str,
        mut each: impl FnMut(&[Value]) -> Result<()>,
    ) -> Result<()> {
        let mut read = self
            .conn
            .prepare(&format!("SELECT * FROM {table}"))
            .map_err(self.err())?;
        let width = read.column_count();
        let placeholders = vec!["?"; width].join(", ");
        let mut write = out
            .prepare(&format!("INSERT INTO {table} VALUES ({placeholders})"))
            .map_err(Error::shard(dest))?;
        let mut rows = read.query([]).map_err(self.err())?;
        while let Some(row) = rows.next().map_err(self.err())? {
            let values: Vec<Value> = (0..width)
                .map(|i| row.get(i))
                .collect::<rusqlite::Result<_>>()
                .map_err(self.err())?;
            each(&values)?;
            write
                .execute(rusqlite::params_from_iter(values.iter()))
                .map_err(Error::shard(dest))?;
        }
        Ok(())
    }

    /// Hashes of the images whose bytes this file holds, 32 bytes each (a stored hash that is
    /// not BLAKE3 hex is left out: its image is copied again, never skipped).
    pub fn held_hashes(&self) -> Result<HashSet<blake3::Hash>> {
        let mut held = HashSet::new();
        let mut stmt = self
            .conn
            .prepare("SELECT i.hash FROM images i JOIN blobs b ON b.blob_id = i.blob_id")
            .map_err(self.err())?;
        let mut rows = stmt.query([]).map_err(self.err())?;
        while let Some(row) = rows.next().map_err(self.err())? {
            let hex = row.get_ref(0).map_err(self.err())?;
            if let Some(hash) = hex.as_str().ok().and_then(parse_hash) {
                held.insert(hash);
            }
        }
        Ok(held)
    }

    /// The bytes of a row's image if this file holds them (a backup file of a later
    /// generation holds only the images that earlier ones did not).
    pub fn stored_image(&self, row: &StoredRow) -> Result<Option<Vec<u8>>> {
        self.conn
            .prepare_cached("SELECT data FROM blobs WHERE blob_id = ?1")
            .and_then(|mut s| s.query_row([row.blob_id], |r| r.get(0)).optional())
            .map_err(self.err())
    }

    /// The bytes of any image with this hash that this file holds.
    pub fn image_by_hash(&self, hash: &str) -> Result<Option<Vec<u8>>> {
        self.conn
            .prepare_cached(
                "SELECT b.data FROM images i JOIN blobs b ON b.blob_id = i.blob_id WHERE i.hash = ?1 LIMIT 1",
            )
            .and_then(|mut s| s.query_row([hash], |r| r.get(0)).optional())
            .map_err(self.err())
    }

    /// Rows of protocol state (prepare records and before-states): none in a backup's file.
    pub fn protocol_state_rows(&self) -> Result<i64> {
        self.conn
            .query_row(
                "SELECT (SELECT count(*) FROM imagestore_prepared) + (SELECT count(*) FROM imagestore_undo)",
                [],
                |r| r.get(0),
            )
            .map_err(self.err())
    }

    /// Rows, and bytes of images, in this shard (as the open transaction sees it).
    pub fn totals(&self) -> Result<(i64, i64)> {
        self.conn
            .query_row(
                "SELECT count(*), coalesce(sum(bytes), 0) FROM images",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .map_err(self.err())
    }
}

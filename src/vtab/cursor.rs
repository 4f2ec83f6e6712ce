//! The cursor: a merge, in id order, of the matching rows of every shard a query reads, a page
//! at a time from each.

use super::*;
use crate::shard::StoredRow;

/// The rows of one shard, a page at a time.
pub(super) struct Lane {
    shard: usize,
    rows: VecDeque<StoredRow>,
    last_id: Option<i64>,
    page_rows: usize,
    exhausted: bool,
}

/// A cursor: a merge, in id order, of the matching rows of every shard it reads.
#[repr(C)]
pub struct ImageCursor {
    /// SQLite's part; must come first.
    pub(super) base: sqlite3_vtab_cursor,
    pub(super) core: Rc<TableCore>,
    pub(super) filter: ScanFilter,
    pub(super) lanes: Vec<Lane>,
    /// The lane whose first row is the current row.
    pub(super) current: Option<usize>,
    /// The table's `data_version` when the lanes' pages were read.
    pub(super) version: u64,
    /// The last row whose content this cursor noted for an UPDATE (`TableCore::scanned`): it is
    /// noted once, not once for each column the UPDATE leaves unread.
    pub(super) noted: std::cell::Cell<Option<i64>>,
}

impl ImageCursor {
    fn refill(&mut self, lane: usize) -> Result<()> {
        let l = &mut self.lanes[lane];
        if !l.rows.is_empty() || l.exhausted {
            return Ok(());
        }
        let page =
            self.core.shards.borrow()[l.shard].scan_page(&self.filter, l.last_id, l.page_rows)?;
        l.exhausted = page.len() < l.page_rows;
        l.page_rows = (l.page_rows * 2).min(PAGE_ROWS_MAX);
        l.last_id = page.last().map(|r| r.id).or(l.last_id);
        l.rows.extend(page);
        Ok(())
    }

    /// After a write of this connection (or a new snapshot), the rows read ahead may be stale
    /// (deleted, changed, their images moved): each lane reads again from after `after`, the
    /// row the cursor is leaving.
    fn reread_after(&mut self, after: Option<i64>) -> Result<()> {
        self.version = self.core.data_version.get();
        for lane in &mut self.lanes {
            lane.rows.clear();
            lane.last_id = after;
            lane.page_rows = PAGE_ROWS_FIRST;
            lane.exhausted = false;
        }
        for lane in 0..self.lanes.len() {
            self.refill(lane)?;
        }
        Ok(())
    }

    fn pick_current(&mut self) {
        let heads = self
            .lanes
            .iter()
            .enumerate()
            .filter_map(|(i, l)| l.rows.front().map(|r| (i, r.id)));
        self.current = if self.filter.descending {
            heads.max_by_key(|&(_, id)| id)
        } else {
            heads.min_by_key(|&(_, id)| id)
        }
        .map(|(i, _)| i);
    }

    fn row(&self) -> Result<(&StoredRow, usize)> {
        let lane = self
            .current
            .map(|i| &self.lanes[i])
            .ok_or_else(|| Error::Internal("no current row".into()))?;
        let row = lane
            .rows
            .front()
            .ok_or_else(|| Error::Internal("no current row".into()))?;
        Ok((row, lane.shard))
    }
}

impl Drop for ImageCursor {
    fn drop(&mut self) {
        let open = self.core.open_cursors.get().saturating_sub(1);
        self.core.open_cursors.set(open);
        self.core.end_read_if_unused();
    }
}

unsafe impl VTabCursor for ImageCursor {
    fn filter(
        &mut self,
        idx_num: c_int,
        idx_str: Option<&str>,
        args: &Filters<'_>,
    ) -> rusqlite::Result<()> {
        Ok(catch_panic(|| {
            self.core.begin_read()?;
            self.version = self.core.data_version.get();
            self.lanes.clear();
            self.noted.set(None);
            self.current = None;
            let Some(filter) = scan_filter(&self.core.config, idx_num, idx_str, args) else {
                return Ok(());
            };
            let shard_count = self.core.config.shard_count();
            let shards: Vec<usize> = match filter.id_eq {
                Some(id) => vec![shard_of(id, shard_count)],
                None => (0..shard_count).collect(),
            };
            self.filter = filter;
            self.lanes = shards
                .into_iter()
                .map(|shard| Lane {
                    shard,
                    rows: VecDeque::new(),
                    last_id: None,
                    page_rows: PAGE_ROWS_FIRST,
                    exhausted: false,
                })
                .collect();
            for lane in 0..self.lanes.len() {
                self.refill(lane)?;
            }
            self.pick_current();
            Ok(())
        })?)
    }

    fn next(&mut self) -> rusqlite::Result<()> {
        Ok(catch_panic(|| {
            if let Some(lane) = self.current {
                let leaving = self.lanes[lane].rows.pop_front().map(|r| r.id);
                if self.version != self.core.data_version.get() {
                    self.reread_after(leaving)?;
                } else {
                    self.refill(lane)?;
                }
            }
            self.pick_current();
            Ok(())
        })?)
    }

    fn eof(&self) -> bool {
        self.current.is_none()
    }

    fn column(&self, ctx: &mut Context, i: c_int) -> rusqlite::Result<()> {
        Ok(catch_panic(|| {
            let (row, shard) = self.row()?;
            if ctx.no_change() {
                // An UPDATE that does not set this column: leave it unread (xUpdate then sees
                // it as unchanged), above all `data`; note what the scan read of the row.
                if self.noted.replace(Some(row.id)) != Some(row.id) {
                    let content = crate::table::handle::RowContent::of(row);
                    self.core.scanned.borrow_mut().insert(row.id, content);
                }
                return Ok(());
            }
            let set = |ctx: &mut Context, v: &dyn rusqlite::ToSql| {
                ctx.set_result(&v)
                    .map_err(|e| Error::Internal(e.to_string()))
            };
            match i {
                COL_ID => set(ctx, &row.id),
                COL_NAME => set(ctx, &row.name),
                COL_DATA => {
                    let data = self.core.shards.borrow()[shard].read_blob(row.blob_id)?;
                    set(ctx, &data)
                }
                COL_FORMAT => set(ctx, &row.format),
                COL_WIDTH => set(ctx, &row.width),
                COL_HEIGHT => set(ctx, &row.height),
                COL_BYTES => set(ctx, &row.bytes),
                COL_HASH => set(ctx, &row.hash),
                COL_SHARD => set(ctx, &(shard as i64)),
                user => match row.user.get((user - COL_USER_FIRST) as usize) {
                    Some(v) => set(ctx, v),
                    None => Err(Error::Internal(format!("no column {user}"))),
                },
            }
        })?)
    }

    fn rowid(&self) -> rusqlite::Result<i64> {
        Ok(catch_panic(|| Ok(self.row()?.0.id))?)
    }
}

//! One shard on a PostgreSQL server: its place in the server's database, its rows, and the
//! protocol's steps as the server's own transactions (see the folder's front page for the
//! layout).
//!
//! Invariants:
//! - At most one transaction is open on the connection: a read snapshot (REPEATABLE READ, taken
//!   by its first statement), or a write transaction, which begins with a savepoint `start` so
//!   that its writes can be undone while it stays open.
//! - A write transaction ends by PREPARE TRANSACTION (the vote) or ROLLBACK; a prepared one only
//!   by COMMIT PREPARED or ROLLBACK PREPARED, each of which does nothing for a transaction the
//!   server no longer holds, so that recovery may repeat them.
//! - `state.last_txid` is raised in the transaction it names, so it commits with it.
//! - Every call ends within the busy timeout; one that does not drops the connection (which the
//!   server then rolls back, or keeps prepared if the PREPARE got through: recovery settles it).

use std::cell::{Cell, RefCell, RefMut};
use std::collections::HashMap;

use rusqlite::types::Value;
use tokio_postgres::Row;

use super::fence::{self, Fence, WriterToken};
use super::gid;
use super::link::{is_undefined_table, Link, Param};
use super::Address;
use crate::commit::{Participant, PrepareRecord, Replayed};
use crate::config::{Protocol, UserColumn};
use crate::durable::SyncJob;
use crate::error::{Error, Result};
use crate::journal::TableId;
use crate::shard::{
    hex, protocol_mismatch, quote_ident, unhex, NewRow, ScanFilter, ShardIdentity, StoredRow,
};

// The table's layout version on a server is `Protocol::format_version` (1: two-phase; 2:
// three-phase, which an older build, reading only 1, refuses rather than apply two-phase
// rules to it).

/// What the connection has open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Open {
    Nothing,
    Reading,
    Writing,
}

/// An open shard on a PostgreSQL server.
pub struct ServerShard {
    /// The server, as messages name it (no password, ever).
    address: Address,
    link: RefCell<Link>,
    table_id: TableId,
    shard_index: usize,
    shard_count: usize,
    user_columns: Vec<UserColumn>,
    /// The quoted schema that holds this table on the server.
    schema: String,
    /// `id, name, ..., hash, id AS blob_id, <user columns>`: a row as `StoredRow` reads it.
    select_columns: String,
    /// What is open on the connection; a connection lost while something is open is not made
    /// again until it is ended (see `Link::lost`).
    open: Cell<Open>,
    /// The `last_txid` the last read snapshot shows.
    snapshot_last_txid: Cell<Option<u64>>,
    /// `last_txid` and the prepared transactions as `begin_write` read them, for step 1's next
    /// questions; gone once `prepared` has answered, or the transaction ends.
    begun: RefCell<Option<(u64, Vec<u64>)>>,
    /// The gid of each transaction this shard prepared or listed, until it ends it (a gid
    /// carries the participants, which only the prepare knows: see `gid`).
    gids: RefCell<HashMap<u64, String>>,
    /// How the table commits; a three-phase table keeps its pre-commits in its `fence`.
    protocol: Protocol,
    /// The token of this connection's writer lock, which a three-phase step claims the fence
    /// with (see `fence`).
    token: WriterToken,
}

/// Rows of `sql`, a query of the registry `imagestore_tables`: none where the database has no
/// registry (it holds no imagestore table).
fn registry_rows(link: &mut Link, sql: &str, params: &[Param]) -> Result<Vec<tokio_postgres::Row>> {
    match link.query("looking up the table", sql, params) {
        Err(e) if is_undefined_table(&e) => Ok(Vec::new()),
        other => other,
    }
}

/// The id of table `name` on the server `link` reaches, if it holds it as shard `shard_index`
/// of `shard_count`.
fn registered_id(
    link: &mut Link,
    name: &str,
    (shard_index, shard_count): (usize, usize),
) -> Result<Option<TableId>> {
    let found = registry_rows(
        link,
        "SELECT table_id FROM imagestore_tables
         WHERE name = $1 AND shard_index = $2 AND shard_count = $3",
        &[
            Box::new(name.to_string()),
            Box::new(shard_index as i32),
            Box::new(shard_count as i32),
        ],
    )?;
    let Some(row) = found.first() else {
        return Ok(None);
    };
    row.try_get::<_, String>(0)
        .ok()
        .and_then(|id| unhex(&id))
        .map(Some)
        .ok_or_else(|| Error::ServerForeign {
            server: link.address.to_string(),
            detail: format!("has a damaged table id for {name}"),
        })
}

/// The statement that lists the gids of the transactions of table `table_id` the database
/// holds prepared (of every shard of the table in it).
fn list_prepared_sql(table_id: &TableId) -> String {
    format!(
        "SELECT gid FROM pg_prepared_xacts WHERE database = current_database() AND gid LIKE '{}%'",
        gid::table_prefix(table_id)
    )
}

/// The name of the schema that holds table `table_id` on a server.
pub(crate) fn schema_name(table_id: &TableId) -> String {
    quote_ident(&format!("imagestore_{}", hex(table_id)))
}

/// The server's type for a user column of SQLite's declared type.
fn server_type(decl_type: &str) -> &'static str {
    match decl_type.to_ascii_uppercase().as_str() {
        "INTEGER" => "bigint",
        "REAL" | "NUMERIC" => "double precision",
        "BLOB" => "bytea",
        _ => "text",
    }
}

/// The user columns as the registry records them: a JSON list of [name, declared type].
fn columns_json(user_columns: &[UserColumn]) -> Result<String> {
    let pairs: Vec<(&str, &str)> = user_columns
        .iter()
        .map(|c| (c.name.as_str(), c.decl_type.as_str()))
        .collect();
    serde_json::to_string(&pairs).map_err(|e| Error::Internal(e.to_string()))
}

impl ServerShard {
    /// Connects to the server at `address` and makes shard `shard_index` of `shard_count` of
    /// a new table `name` (`table_id`) there. Refuses a server that cannot prepare
    /// transactions, and a database that already holds a table of that name.
    pub fn create(
        address: Address,
        name: &str,
        table_id: TableId,
        (shard_index, shard_count): (usize, usize),
        user_columns: &[UserColumn],
        (protocol, token): (Protocol, WriterToken),
        timeout_ms: u64,
    ) -> Result<ServerShard> {
        let mut link = Link::new(address, timeout_ms)?;
        link.connect()?;
        let shard = ServerShard::with_link(
            link,
            table_id,
            (shard_index, shard_count),
            user_columns,
            (protocol, token),
        );
        shard.require_prepared_transactions()?;
        let user_sql: String = user_columns
            .iter()
            .map(|c| format!(", {} {}", quote_ident(&c.name), server_type(&c.decl_type)))
            .collect();
        let columns_text = columns_json(user_columns)?;
        let schema = shard.schema.clone();
        let fence = match protocol {
            Protocol::TwoPhase => String::new(),
            Protocol::ThreePhase => fence::create_sql(&schema),
        };
        let made = shard.link().batch(
            "making the table",
            &format!(
                "BEGIN;
                 -- Two hosts making tables at once would race to make the registry.
                 SELECT pg_advisory_xact_lock(hashtext('imagestore_tables'));
                 CREATE TABLE IF NOT EXISTS imagestore_tables(
                     name text PRIMARY KEY, table_id text NOT NULL UNIQUE,
                     shard_index integer NOT NULL, shard_count integer NOT NULL,
                     format_version integer NOT NULL, columns text NOT NULL);
                 CREATE SCHEMA {schema};
                 CREATE TABLE {schema}.images(id bigint PRIMARY KEY, name text, format text NOT NULL,
                     width bigint NOT NULL, height bigint NOT NULL, bytes bigint NOT NULL,
                     hash text NOT NULL, data bytea NOT NULL{user_sql});
                 ALTER TABLE {schema}.images ALTER COLUMN data SET STORAGE EXTERNAL;
                 CREATE TABLE {schema}.state(last_txid bigint NOT NULL);
                 INSERT INTO {schema}.state VALUES (0);
                 {fence}"
            ),
        );
        if let Err(e) = made {
            let _ = shard.link().batch("making the table", "ROLLBACK");
            return Err(e);
        }
        let registered = shard.link().execute(
            "registering the table",
            "INSERT INTO imagestore_tables VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING",
            &[
                Box::new(name.to_string()),
                Box::new(hex(&table_id)),
                Box::new(shard_index as i32),
                Box::new(shard_count as i32),
                Box::new(protocol.format_version() as i32),
                Box::new(columns_text),
            ],
        );
        match registered {
            Ok(1) => shard.link().batch("making the table", "COMMIT")?,
            Ok(_) => {
                let _ = shard.link().batch("making the table", "ROLLBACK");
                return Err(shard.foreign(&format!(
                    "already holds an imagestore table named {name}; drop it there, or name this table otherwise"
                )));
            }
            Err(e) => {
                let _ = shard.link().batch("making the table", "ROLLBACK");
                return Err(e);
            }
        }
        Ok(shard)
    }

    /// Connects to the server at `address` and opens shard `shard_index` of `shard_count` of
    /// table `name`, checking that the server holds it, as that shard, with these columns and
    /// this protocol (a three-phase table's fence claimed with `token`).
    pub fn open(
        address: Address,
        name: &str,
        (shard_index, shard_count): (usize, usize),
        user_columns: &[UserColumn],
        (protocol, token): (Protocol, WriterToken),
        timeout_ms: u64,
    ) -> Result<ServerShard> {
        let mut link = Link::new(address.clone(), timeout_ms)?;
        let foreign = |detail: String| Error::ServerForeign {
            server: address.to_string(),
            detail,
        };
        let row = registry_rows(
            &mut link,
            "SELECT table_id, shard_index, shard_count, format_version, columns
             FROM imagestore_tables WHERE name = $1",
            &[Box::new(name.to_string())],
        )?
        .into_iter()
        .next()
        .ok_or_else(|| foreign(format!("holds no imagestore table named {name}")))?;
        let identity = (|| -> std::result::Result<_, tokio_postgres::Error> {
            Ok((
                row.try_get::<_, String>(0)?,
                row.try_get::<_, i32>(1)?,
                row.try_get::<_, i32>(2)?,
                row.try_get::<_, i32>(3)?,
                row.try_get::<_, String>(4)?,
            ))
        })()
        .map_err(|e| foreign(format!("has a damaged entry for table {name} ({e})")))?;
        let (table_id, index, count, version, columns) = identity;
        let table_id = unhex(&table_id)
            .ok_or_else(|| foreign(format!("has a damaged table id for {name}")))?;
        let kept = Protocol::of_format_version(version.into()).ok_or_else(|| {
            foreign(format!(
                "holds table {name} in layout {version}; this build reads layouts 1 (two-phase) and 2 (three-phase)"
            ))
        })?;
        if kept != protocol {
            return Err(protocol_mismatch(kept, protocol));
        }
        if (index as usize, count as usize) != (shard_index, shard_count) {
            return Err(foreign(format!(
                "holds shard {index} of {count} of table {name}, but the table lists it as shard {shard_index} of {shard_count}"
            )));
        }
        let declared = columns_json(user_columns)?;
        if declared != columns {
            return Err(foreign(format!(
                "holds table {name} with columns {columns}, but the table declares {declared}"
            )));
        }
        let shard = ServerShard::with_link(
            link,
            table_id,
            (shard_index, shard_count),
            user_columns,
            (protocol, token),
        );
        shard.require_prepared_transactions()?;
        Ok(shard)
    }

    fn with_link(
        link: Link,
        table_id: TableId,
        (shard_index, shard_count): (usize, usize),
        user_columns: &[UserColumn],
        (protocol, token): (Protocol, WriterToken),
    ) -> ServerShard {
        let user: String = user_columns
            .iter()
            .map(|c| format!(", {}", quote_ident(&c.name)))
            .collect();
        ServerShard {
            address: link.address.clone(),
            link: RefCell::new(link),
            table_id,
            shard_index,
            shard_count,
            user_columns: user_columns.to_vec(),
            schema: schema_name(&table_id),
            select_columns: format!("id, name, format, width, height, bytes, hash, id{user}"),
            open: Cell::new(Open::Nothing),
            snapshot_last_txid: Cell::new(None),
            begun: RefCell::new(None),
            gids: RefCell::new(HashMap::new()),
            protocol,
            token,
        }
    }

    /// The connection, for one call (never held across another).
    fn link(&self) -> RefMut<'_, Link> {
        let mut link = self.link.borrow_mut();
        if self.open.get() == Open::Nothing {
            link.lost = false;
        }
        link
    }

    fn foreign(&self, detail: &str) -> Error {
        Error::ServerForeign {
            server: self.address.to_string(),
            detail: detail.to_string(),
        }
    }

    /// A server whose `max_prepared_transactions` is 0 cannot vote: refused at once.
    fn require_prepared_transactions(&self) -> Result<()> {
        let rows = self.link().query(
            "reading max_prepared_transactions",
            "SELECT current_setting('max_prepared_transactions')::int",
            &[],
        )?;
        let max: i32 = rows.first().and_then(|r| r.try_get(0).ok()).unwrap_or(0);
        if max < 1 {
            return Err(Error::ServerUnfit {
                server: self.address.to_string(),
                detail: "has max_prepared_transactions = 0, so it cannot prepare a transaction: set it (say to 64) in postgresql.conf and restart the server".into(),
            });
        }
        Ok(())
    }

    /// The user columns of table `name` as the server at `address` registered them, if it
    /// holds such a table.
    pub fn registered_columns(
        address: Address,
        name: &str,
        timeout_ms: u64,
    ) -> Result<Option<Vec<UserColumn>>> {
        let mut link = Link::new(address.clone(), timeout_ms)?;
        let rows = registry_rows(
            &mut link,
            "SELECT columns FROM imagestore_tables WHERE name = $1",
            &[Box::new(name.to_string())],
        )?;
        let Some(row) = rows.first() else {
            return Ok(None);
        };
        let damaged = |detail: String| Error::ServerForeign {
            server: address.to_string(),
            detail: format!("has a damaged entry for table {name} ({detail})"),
        };
        let text: String = row.try_get(0).map_err(|e| damaged(e.to_string()))?;
        let pairs: Vec<(String, String)> =
            serde_json::from_str(&text).map_err(|e| damaged(e.to_string()))?;
        Ok(Some(
            pairs
                .into_iter()
                .map(|(name, decl_type)| UserColumn { name, decl_type })
                .collect(),
        ))
    }

    /// Whether the server at `address` holds an imagestore table named `name`.
    pub fn holds_table(address: Address, name: &str, timeout_ms: u64) -> Result<bool> {
        let mut link = Link::new(address, timeout_ms)?;
        let found = registry_rows(
            &mut link,
            "SELECT 1 FROM imagestore_tables WHERE name = $1",
            &[Box::new(name.to_string())],
        )?;
        Ok(!found.is_empty())
    }

    /// Keeps an index on each of `indexes` (column lists) on the server.
    /// Only a missing index is made: CREATE INDEX IF NOT EXISTS would first wait for the
    /// table's lock, which a dead writer's prepared transaction holds until recovery.
    pub fn ensure_indexes(&self, indexes: &[Vec<String>]) -> Result<()> {
        for columns in indexes {
            let index = quote_ident(&crate::config::index_name(columns));
            let missing = self.link().query(
                "looking up an index",
                "SELECT to_regclass($1) IS NULL",
                &[Box::new(format!("{}.{index}", self.schema))],
            )?;
            if !missing
                .first()
                .is_some_and(|r| r.try_get::<_, bool>(0).unwrap_or(false))
            {
                continue;
            }
            let list: Vec<String> = columns.iter().map(|c| quote_ident(c)).collect();
            self.link().batch(
                "making an index",
                &format!(
                    "CREATE INDEX IF NOT EXISTS {index} ON {}.images({})",
                    self.schema,
                    list.join(", ")
                ),
            )?;
        }
        Ok(())
    }

    /// The id of table `name` on the server at `address`, if it holds it as shard
    /// `shard_index` of `shard_count`.
    pub fn registered_table_id(
        address: &Address,
        name: &str,
        (shard_index, shard_count): (usize, usize),
        timeout_ms: u64,
    ) -> Result<Option<TableId>> {
        let mut link = Link::new(address.clone(), timeout_ms)?;
        registered_id(&mut link, name, (shard_index, shard_count))
    }

    /// Removes the table named `name`, as shard `shard_index` of `shard_count`, from the
    /// server at `address`, on a connection of its own: its prepared transactions rolled back
    /// (the table goes, whatever they decided), then its schema and its entry in the registry.
    /// Nothing to do if the server does not hold it. An entry of another shape (not shard
    /// `shard_index` of `shard_count`) is another table's, and stays. The caller holds the
    /// table's writer lock, or knows no writer can be using the table.
    pub fn drop_named(
        address: &Address,
        name: &str,
        shard_index: usize,
        shard_count: usize,
        timeout_ms: u64,
    ) -> Result<()> {
        let mut link = Link::new(address.clone(), timeout_ms)?;
        let Some(table_id) = registered_id(&mut link, name, (shard_index, shard_count))? else {
            return Ok(());
        };
        let gids = link.batch_rows(
            "listing prepared transactions",
            &list_prepared_sql(&table_id),
        )?;
        for gid in gids {
            // Gids of this table are made of [0-9a-f:] and the prefix: safe as a literal.
            if gid.chars().all(|c| c.is_ascii_alphanumeric() || c == ':') {
                link.settle(
                    "rolling back a prepared transaction",
                    &format!("ROLLBACK PREPARED '{gid}'"),
                )?;
            }
        }
        let sql = format!(
            "BEGIN; DROP SCHEMA IF EXISTS {} CASCADE;
             DELETE FROM imagestore_tables WHERE table_id = '{}'; COMMIT",
            schema_name(&table_id),
            hex(&table_id)
        );
        link.batch("dropping the table", &sql)
    }

    /// The quoted schema that holds this table on the server.
    pub fn schema(&self) -> &str {
        &self.schema
    }

    /// The server.
    pub fn address(&self) -> &Address {
        &self.address
    }

    /// Who this shard is.
    pub fn identity(&self) -> ShardIdentity {
        ShardIdentity {
            table_id: self.table_id,
            shard_index: self.shard_index,
            shard_count: self.shard_count,
            protocol: self.protocol,
        }
    }

    /// Ends prepared transaction `txid` by `verb` (COMMIT or ROLLBACK) PREPARED, doing nothing
    /// if the server no longer holds it. Whatever was open on the connection goes first; the
    /// statement runs on its own (on a new connection if that one broke).
    fn end_prepared(&mut self, txid: u64, verb: &str, what: &str) -> Result<()> {
        let _ = Participant::end(self);
        let gid = self.known_gid(txid)?;
        self.link()
            .settle(what, &format!("{verb} PREPARED '{gid}'"))?;
        self.gids.borrow_mut().remove(&txid);
        Ok(())
    }

    /// The gid of this shard's prepared transaction `txid`: as this shard prepared it or last
    /// listed it, else as the server lists it now (a round trip), else as an older build made
    /// it (then the server does not hold it: ending it does nothing).
    fn known_gid(&self, txid: u64) -> Result<String> {
        if !self.gids.borrow().contains_key(&txid) {
            self.prepare_records()?;
        }
        Ok(self
            .gids
            .borrow()
            .get(&txid)
            .cloned()
            .unwrap_or_else(|| gid::without_participants(&self.table_id, txid, self.shard_index)))
    }

    /// The statement that reads `last_txid`, as a row `read_state` tells from a gid.
    fn last_txid_sql(&self) -> String {
        format!(
            "SELECT 'last_txid ' || last_txid FROM {}.state",
            self.schema
        )
    }

    /// `last_txid` and the prepared transactions of this shard, from the rows of
    /// `last_txid_sql` and `list_prepared_sql`; each one's gid is kept for ending it, in place
    /// of those kept before (what is not listed any more has ended).
    fn read_state(&self, rows: &[String]) -> (Option<u64>, Vec<gid::Named>) {
        let mut last_txid = None;
        let mut prepared = Vec::new();
        self.gids.borrow_mut().clear();
        for row in rows {
            if let Some(last) = row.strip_prefix("last_txid ") {
                last_txid = last.parse().ok();
                continue;
            }
            let Some(named) = gid::parse(&self.table_id, row) else {
                continue;
            };
            if named.shard == self.shard_index {
                self.gids.borrow_mut().insert(named.txid, row.clone());
                prepared.push(named);
            }
        }
        (last_txid, prepared)
    }

    /// The statement that lists this shard's prepared transactions (by gid).
    fn list_prepared_sql(&self) -> String {
        list_prepared_sql(&self.table_id)
    }

    /// Every transaction this shard holds prepared, each pre-committed where the fence has it
    /// (three-phase), in one round trip.
    fn prepare_records(&self) -> Result<Vec<PrepareRecord>> {
        let mut sql = self.list_prepared_sql();
        if self.protocol == Protocol::ThreePhase {
            sql = format!("{sql}; {}", fence::pre_committed_sql(&self.schema));
        }
        let rows = self
            .link()
            .batch_rows("listing prepared transactions", &sql)?;
        let pre_committed: Vec<u64> = rows
            .iter()
            .filter_map(|r| r.strip_prefix("pre_committed ")?.parse().ok())
            .collect();
        Ok(self
            .read_state(&rows)
            .1
            .into_iter()
            .map(|named| PrepareRecord {
                txid: named.txid,
                decided_by: None,
                pre_committed: pre_committed.contains(&named.txid),
                participants: named.participants,
            })
            .collect())
    }

    /// The fence of a three-phase table (see `fence`); an error for a two-phase one, which
    /// takes no three-phase step.
    fn fence(&self) -> Result<Fence<'_>> {
        match self.protocol {
            Protocol::ThreePhase => Ok(Fence {
                schema: &self.schema,
                token: &self.token,
            }),
            Protocol::TwoPhase => Err(Error::Internal(format!(
                "server {}: a two-phase table has no pre-commits",
                self.address
            ))),
        }
    }

    // ---- rows -------------------------------------------------------------------------

    fn row_from(&self, row: &Row) -> Result<StoredRow> {
        let wrong = |e: tokio_postgres::Error| {
            self.foreign(&format!("holds a row the table cannot read ({e})"))
        };
        let user = self
            .user_columns
            .iter()
            .enumerate()
            .map(|(i, c)| read_value(row, 8 + i, &c.decl_type).map_err(wrong))
            .collect::<Result<_>>()?;
        Ok(StoredRow {
            id: row.try_get(0).map_err(wrong)?,
            name: row
                .try_get::<_, Option<String>>(1)
                .map_err(wrong)?
                .map_or(Value::Null, Value::Text),
            format: row.try_get(2).map_err(wrong)?,
            width: row.try_get(3).map_err(wrong)?,
            height: row.try_get(4).map_err(wrong)?,
            bytes: row.try_get(5).map_err(wrong)?,
            hash: row.try_get(6).map_err(wrong)?,
            blob_id: row.try_get(7).map_err(wrong)?,
            user,
        })
    }

    /// The row with id `id`.
    pub fn get(&self, id: i64) -> Result<Option<StoredRow>> {
        let sql = format!(
            "SELECT {} FROM {}.images WHERE id = $1",
            self.select_columns, self.schema
        );
        let rows = self.link().query("reading a row", &sql, &[Box::new(id)])?;
        rows.first().map(|r| self.row_from(r)).transpose()
    }

    /// One page of rows matching `filter`, in id order, after `after` (exclusive).
    pub fn scan_page(
        &self,
        filter: &ScanFilter,
        after: Option<i64>,
        limit: usize,
    ) -> Result<Vec<StoredRow>> {
        let conditions = filter.conditions(after);
        let where_and_order = filter.where_and_order(&conditions, |n| format!("${n}"));
        let params = conditions
            .iter()
            .map(|c| to_param(&c.value, &self.declared_type(&c.column), &c.column))
            .collect::<Result<Vec<Param>>>()?;
        let sql = format!(
            "SELECT {} FROM {}.images {where_and_order} LIMIT {limit}",
            self.select_columns, self.schema
        );
        let rows = self.link().query("reading rows", &sql, &params)?;
        rows.iter().map(|r| self.row_from(r)).collect()
    }

    /// The declared type of a column as `ScanFilter` names it (quoted), for its parameter.
    fn declared_type(&self, quoted: &str) -> String {
        match quoted.trim_matches('"') {
            "name" | "format" | "hash" => "TEXT".into(),
            "id" | "width" | "height" | "bytes" => "INTEGER".into(),
            other => self
                .user_columns
                .iter()
                .find(|c| c.name == other.replace("\"\"", "\""))
                .map_or("TEXT".into(), |c| c.decl_type.clone()),
        }
    }

    /// The image of the row whose blob is `blob_id` (on a server, the row's own id).
    pub fn read_blob(&self, blob_id: i64) -> Result<Vec<u8>> {
        let sql = format!("SELECT data FROM {}.images WHERE id = $1", self.schema);
        let rows = self
            .link()
            .query("reading an image", &sql, &[Box::new(blob_id)])?;
        rows.first()
            .and_then(|r| r.try_get::<_, Vec<u8>>(0).ok())
            .ok_or_else(|| self.foreign(&format!("lost the image of row {blob_id}")))
    }

    /// The images of rows `ids` (those that exist), by id, in one round trip.
    pub fn images_of(&self, ids: &[i64]) -> Result<HashMap<i64, Vec<u8>>> {
        if ids.is_empty() {
            return Ok(HashMap::new());
        }
        let sql = format!(
            "SELECT id, data FROM {}.images WHERE id = ANY($1)",
            self.schema
        );
        let rows = self
            .link()
            .query("reading images", &sql, &[Box::new(ids.to_vec())])?;
        rows.iter()
            .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
            .collect::<std::result::Result<_, tokio_postgres::Error>>()
            .map_err(|e| self.foreign(&format!("holds a row the table cannot read ({e})")))
    }

    /// Rows, and bytes of images, on this server (as the open transaction sees it).
    pub fn totals(&self) -> Result<(i64, i64)> {
        let sql = format!(
            "SELECT count(*), coalesce(sum(bytes), 0)::bigint FROM {}.images",
            self.schema
        );
        let rows = self.link().query("counting rows", &sql, &[])?;
        let row = rows
            .first()
            .ok_or_else(|| self.foreign("cannot count its rows"))?;
        let unreadable = |e| self.foreign(&format!("cannot count its rows ({e})"));
        Ok((
            row.try_get(0).map_err(unreadable)?,
            row.try_get(1).map_err(unreadable)?,
        ))
    }

    /// Calls `visit(id, stored hash, image bytes)` for every row, in id order, a page at a time
    /// (the snapshot open on the connection sees every page alike).
    pub fn for_each_image(&self, mut visit: impl FnMut(i64, &str, Option<&[u8]>)) -> Result<()> {
        const PAGE_ROWS: i64 = 64;
        let sql = format!(
            "SELECT id, hash, data FROM {}.images WHERE id > $1 ORDER BY id LIMIT {PAGE_ROWS}",
            self.schema
        );
        let mut after = i64::MIN;
        loop {
            let rows = self
                .link()
                .query("reading images", &sql, &[Box::new(after)])?;
            for row in &rows {
                let read = (|| -> std::result::Result<_, tokio_postgres::Error> {
                    Ok((
                        row.try_get::<_, i64>(0)?,
                        row.try_get::<_, String>(1)?,
                        row.try_get::<_, Vec<u8>>(2)?,
                    ))
                })();
                let (id, hash, data) = read.map_err(|e| {
                    self.foreign(&format!("holds a row the table cannot read ({e})"))
                })?;
                visit(id, &hash, Some(&data));
                after = id;
            }
            if (rows.len() as i64) < PAGE_ROWS {
                return Ok(());
            }
        }
    }

    /// Every id, in order.
    pub fn ids(&self) -> Result<Vec<i64>> {
        let sql = format!("SELECT id FROM {}.images ORDER BY id", self.schema);
        let rows = self.link().query("reading the ids", &sql, &[])?;
        rows.iter()
            .map(|r| r.try_get(0))
            .collect::<std::result::Result<_, _>>()
            .map_err(|e| self.foreign(&format!("holds an id the table cannot read ({e})")))
    }

    /// The largest id, if any row.
    pub fn max_id(&self) -> Result<Option<i64>> {
        let sql = format!("SELECT max(id) FROM {}.images", self.schema);
        let rows = self.link().query("reading the largest id", &sql, &[])?;
        Ok(rows.first().and_then(|r| r.try_get(0).ok()).flatten())
    }

    fn row_params(&self, row: &NewRow) -> Result<Vec<Param>> {
        let name: Option<String> = match &row.name {
            Value::Null => None,
            Value::Integer(i) => Some(i.to_string()),
            Value::Real(r) => Some(r.to_string()),
            Value::Text(t) => Some(t.clone()),
            Value::Blob(_) => return Err(Error::WrongType("name must be TEXT, not a BLOB".into())),
        };
        let mut params: Vec<Param> = vec![
            Box::new(row.id),
            Box::new(name),
            Box::new(row.format.clone()),
            Box::new(row.width),
            Box::new(row.height),
            Box::new(row.bytes),
            Box::new(row.hash.clone()),
        ];
        for (value, column) in row.user.iter().zip(&self.user_columns) {
            params.push(to_param(value, &column.decl_type, &column.name)?);
        }
        Ok(params)
    }

    /// Inserts a row (its id is free) with its image.
    pub fn insert(&self, row: &NewRow, data: &[u8]) -> Result<()> {
        self.insert_unless_taken(row, data, "").map(drop)
    }

    /// Inserts a row with its image if its id is free; whether it did.
    pub fn insert_if_free(&self, row: &NewRow, data: &[u8]) -> Result<bool> {
        self.insert_unless_taken(row, data, " ON CONFLICT (id) DO NOTHING")
            .map(|inserted| inserted == 1)
    }

    /// The INSERT of `insert` with `on_conflict` after it; the number of rows inserted.
    fn insert_unless_taken(&self, row: &NewRow, data: &[u8], on_conflict: &str) -> Result<u64> {
        let mut params = self.row_params(row)?;
        params.push(Box::new(data.to_vec()));
        let user: String = self
            .user_columns
            .iter()
            .map(|c| format!(", {}", quote_ident(&c.name)))
            .collect();
        let placeholders: String = (1..=params.len()).map(|i| format!(", ${i}")).collect();
        let sql = format!(
            "INSERT INTO {}.images(id, name, format, width, height, bytes, hash{user}, data) VALUES ({}){on_conflict}",
            self.schema,
            &placeholders[2..]
        );
        self.link().execute("writing a row", &sql, &params)
    }

    /// Rewrites row `row.id` (its id unchanged), and its image when `data` is given.
    pub fn update(&self, row: &NewRow, data: Option<&[u8]>) -> Result<()> {
        let mut params = self.row_params(row)?;
        let mut sets: Vec<String> = ["name", "format", "width", "height", "bytes", "hash"]
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{c} = ${}", i + 2))
            .collect();
        for (i, c) in self.user_columns.iter().enumerate() {
            sets.push(format!("{} = ${}", quote_ident(&c.name), i + 8));
        }
        if let Some(data) = data {
            params.push(Box::new(data.to_vec()));
            sets.push(format!("data = ${}", params.len()));
        }
        let sql = format!(
            "UPDATE {}.images SET {} WHERE id = $1",
            self.schema,
            sets.join(", ")
        );
        self.link()
            .execute("writing a row", &sql, &params)
            .map(drop)
    }

    /// Deletes row `id`.
    pub fn delete(&self, id: i64) -> Result<()> {
        let sql = format!("DELETE FROM {}.images WHERE id = $1", self.schema);
        self.link()
            .execute("deleting a row", &sql, &[Box::new(id)])
            .map(drop)
    }
}

/// A value for a user column of declared type `decl`, as SQLite's affinity would store it, in
/// the server's type for it; a value that type cannot hold is a type mismatch.
fn to_param(value: &Value, decl: &str, column: &str) -> Result<Param> {
    let mismatch = || {
        Error::WrongType(format!(
            "column {column} is {} on a PostgreSQL table and cannot hold this value",
            server_type(decl)
        ))
    };
    Ok(match (server_type(decl), value) {
        (_, Value::Null) => match server_type(decl) {
            "bigint" => Box::new(None::<i64>),
            "double precision" => Box::new(None::<f64>),
            "bytea" => Box::new(None::<Vec<u8>>),
            _ => Box::new(None::<String>),
        },
        ("bigint", Value::Integer(i)) => Box::new(*i),
        ("bigint", Value::Real(r)) if r.fract() == 0.0 && r.abs() < 9.0e18 => Box::new(*r as i64),
        ("bigint", Value::Text(t)) => Box::new(t.trim().parse::<i64>().map_err(|_| mismatch())?),
        ("double precision", Value::Integer(i)) => Box::new(*i as f64),
        ("double precision", Value::Real(r)) => Box::new(*r),
        ("double precision", Value::Text(t)) => {
            Box::new(t.trim().parse::<f64>().map_err(|_| mismatch())?)
        }
        ("bytea", Value::Blob(b)) => Box::new(b.clone()),
        ("text", Value::Integer(i)) => Box::new(i.to_string()),
        ("text", Value::Real(r)) => Box::new(r.to_string()),
        ("text", Value::Text(t)) => Box::new(t.clone()),
        _ => return Err(mismatch()),
    })
}

fn read_value(
    row: &Row,
    index: usize,
    decl: &str,
) -> std::result::Result<Value, tokio_postgres::Error> {
    Ok(match server_type(decl) {
        "bigint" => row
            .try_get::<_, Option<i64>>(index)?
            .map_or(Value::Null, Value::Integer),
        "double precision" => row
            .try_get::<_, Option<f64>>(index)?
            .map_or(Value::Null, Value::Real),
        "bytea" => row
            .try_get::<_, Option<Vec<u8>>>(index)?
            .map_or(Value::Null, Value::Blob),
        _ => row
            .try_get::<_, Option<String>>(index)?
            .map_or(Value::Null, Value::Text),
    })
}

/// A PostgreSQL server as a participant: each step is one round trip, and a prepared
/// transaction is the server's own, durable when PREPARE TRANSACTION returns.
impl Participant for ServerShard {
    fn name(&self) -> String {
        self.address.to_string()
    }

    /// Lists the prepared transactions first, then takes the snapshot (at the first statement
    /// of the transaction), in one round trip. In that order, a transaction missing from the
    /// list was finished before the snapshot (a COMMIT PREPARED makes its changes visible
    /// before it leaves the list), so a commit that lands meanwhile, from a writer that lost
    /// the publish lock with its session, is either in the snapshot or in the list.
    fn begin_read(&mut self) -> Result<Vec<u64>> {
        self.end()?;
        let sql = format!(
            "{}; COMMIT; BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY; {}",
            self.list_prepared_sql(),
            self.last_txid_sql()
        );
        self.open.set(Open::Reading);
        self.snapshot_last_txid.set(None);
        let rows = self.link().batch_rows("opening a snapshot", &sql)?;
        let (last_txid, prepared) = self.read_state(&rows);
        self.snapshot_last_txid.set(last_txid);
        Ok(prepared.into_iter().map(|named| named.txid).collect())
    }

    fn snapshot_last_txid(&self) -> Option<u64> {
        self.snapshot_last_txid.get()
    }

    fn is_remote(&self) -> bool {
        true
    }

    /// A prepared transaction's changes are invisible until COMMIT PREPARED.
    fn prepared_visible(&self) -> bool {
        false
    }

    fn end(&mut self) -> Result<()> {
        self.begun.borrow_mut().take();
        if self.open.get() == Open::Nothing {
            return Ok(());
        }
        self.open.set(Open::Nothing);
        self.link().batch("ending a transaction", "ROLLBACK")
    }

    /// Also reads, in the same round trip, what step 1 asks next (`last_txid`, `prepared`).
    fn begin_write(&mut self) -> Result<()> {
        self.end()?;
        let sql = format!(
            "BEGIN; SAVEPOINT start; {}; {}",
            self.list_prepared_sql(),
            self.last_txid_sql()
        );
        self.open.set(Open::Writing);
        let rows = self.link().batch_rows("beginning a transaction", &sql)?;
        let (last_txid, prepared) = self.read_state(&rows);
        let last_txid = last_txid.ok_or_else(|| self.foreign("has lost its state row"))?;
        let prepared = prepared.into_iter().map(|named| named.txid).collect();
        *self.begun.borrow_mut() = Some((last_txid, prepared));
        Ok(())
    }

    fn savepoint(&mut self, level: i32) -> Result<()> {
        self.link()
            .batch("making a savepoint", &format!("SAVEPOINT s{level}"))
    }

    fn release(&mut self, level: i32) -> Result<()> {
        self.link().batch(
            "releasing a savepoint",
            &format!("RELEASE SAVEPOINT s{level}"),
        )
    }

    fn rollback_to(&mut self, level: i32) -> Result<()> {
        self.link().batch(
            "rolling back to a savepoint",
            &format!("ROLLBACK TO SAVEPOINT s{level}"),
        )
    }

    fn rollback_to_start(&mut self) -> Result<()> {
        self.link().batch(
            "rolling back the transaction",
            "ROLLBACK TO SAVEPOINT start",
        )
    }

    fn last_txid(&mut self) -> Result<u64> {
        if let Some((last_txid, _)) = self.begun.borrow().as_ref() {
            return Ok(*last_txid);
        }
        let sql = format!("SELECT last_txid FROM {}.state", self.schema);
        let rows = self.link().query("reading last_txid", &sql, &[])?;
        let last: i64 = rows
            .first()
            .and_then(|r| r.try_get(0).ok())
            .ok_or_else(|| self.foreign("has lost its state row"))?;
        Ok(last.max(0) as u64)
    }

    fn prepared(&mut self) -> Result<Vec<PrepareRecord>> {
        // Step 1 asks this once, right after `begin_write` read it: the answer then, if it
        // was none (else recovery follows, which reads them afresh).
        let begun = self.begun.borrow_mut().take();
        if begun.is_some_and(|(_, txids)| txids.is_empty()) {
            return Ok(Vec::new());
        }
        self.prepare_records()
    }

    /// A server's prepare costs what a commit does: it takes no logged path.
    fn changes(&mut self, _txid: u64, _bytes_max: u64) -> Result<Option<Vec<u8>>> {
        Ok(None)
    }

    fn commit_logged(&mut self, _txid: u64) -> Result<()> {
        Err(Error::Internal(
            "a server participant has no logged commits".into(),
        ))
    }

    fn replay(&mut self, _txid: u64, _changes: &[u8]) -> Result<Replayed> {
        Ok(Replayed::Unreadable(
            "a server participant replays no logged commit".into(),
        ))
    }

    fn prepare(&mut self, txid: u64, participants: &[u16], decided_by: Option<&str>) -> Result<()> {
        if decided_by.is_some() {
            return Err(Error::BadArgument(
                "a transaction that also writes the host database's own tables (or another imagestore table) cannot include a table on PostgreSQL servers: commit them separately".into(),
            ));
        }
        crate::fault::check("server_prepare")?;
        let gid = gid::make(&self.table_id, txid, self.shard_index, participants);
        let sql = format!(
            "UPDATE {}.state SET last_txid = greatest(last_txid, {txid}); PREPARE TRANSACTION '{gid}'",
            self.schema,
        );
        // Kept before the answer: a PREPARE whose answer is lost may have landed.
        self.gids.borrow_mut().insert(txid, gid);
        // A PREPARE that fails becomes a ROLLBACK; a failed UPDATE leaves the transaction
        // open and aborted: `end` then rolls it back.
        self.link().batch("preparing", &sql)?;
        self.open.set(Open::Nothing);
        // What step 1 read is out of date now.
        self.begun.borrow_mut().take();
        Ok(())
    }

    fn finalize(&mut self, txid: u64) -> Result<()> {
        crate::fault::check("server_finalize")?;
        self.end_prepared(txid, "COMMIT", "committing a prepared transaction")
    }

    fn abort_prepared(&mut self, txid: u64) -> Result<()> {
        self.end_prepared(txid, "ROLLBACK", "rolling back a prepared transaction")
    }

    fn pre_commit(&mut self, txid: u64) -> Result<()> {
        crate::fault::check("server_pre_commit")?;
        let gids = (
            gid::table_prefix(&self.table_id),
            format!(":{}", self.shard_index),
        );
        let gid = self.known_gid(txid)?;
        self.fence()?.pre_commit(&mut self.link(), txid, gid, gids)
    }

    fn withdraw_pre_commit(&mut self, txid: u64) -> Result<()> {
        crate::fault::check("server_withdraw_pre_commit")?;
        self.fence()?.withdraw(&mut self.link(), txid)
    }

    /// Three-phase: every earlier holder of the writer lock is fenced off this server.
    fn take_over(&mut self) -> Result<()> {
        match self.protocol {
            Protocol::TwoPhase => Ok(()),
            Protocol::ThreePhase => self.fence()?.take_over(&mut self.link()),
        }
    }

    /// PREPARE TRANSACTION, and a pre-commit (a committed UPDATE), are durable when they
    /// return.
    fn sync_job(&self) -> Option<SyncJob> {
        None
    }
}

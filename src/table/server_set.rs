//! A table's shard set on PostgreSQL servers: making it on every server (or on none), opening
//! it and checking that every server holds the same table, in order, and dropping it.
//!
//! A CREATE whose name the servers already hold, with the same shard list and columns, opens
//! that table: this is how a second host joins a table (see README, "Tables on PostgreSQL
//! servers"). The first server is the anchor, which keeps the coordinator's state
//! (`server::anchor`).

use super::shard_set::new_table_id;
use super::table_shard::TableShard;
use crate::commit::control::Control;
use crate::config::TableConfig;
use crate::error::{Error, Result};
use crate::journal::TableId;
use crate::server::anchor::Anchor;
use crate::server::{Address, ServerShard, WriterToken};

/// A table's open shards, of either kind, with what keeps its locks and decisions (the anchor
/// of a table on servers, the journal and lock files of a local one).
pub(crate) struct OpenedTable {
    pub table_id: TableId,
    pub shards: Vec<TableShard>,
    pub control: Box<dyn Control>,
    /// Whether this CREATE made the table on the servers.
    pub created: bool,
}

/// Opens the table on its servers; a CREATE makes it there first, unless every server holds it
/// already (then it is shared).
pub(crate) fn open_server_shards(config: &TableConfig, create: bool) -> Result<OpenedTable> {
    if create {
        let name = &config.table_name;
        let mut holding = Vec::new();
        for address in &config.servers {
            if ServerShard::holds_table(address.clone(), name, config.busy_timeout_ms)? {
                holding.push(address);
            }
        }
        if holding.is_empty() {
            return create_server_shards(config);
        }
        if holding.len() < config.servers.len() {
            let lacking = config
                .servers
                .iter()
                .find(|a| !holding.contains(a))
                .map_or(String::new(), ToString::to_string);
            return Err(Error::ServerForeign {
                server: holding[0].to_string(),
                detail: format!(
                    "holds an imagestore table named {name} that {lacking} does not: another table's, or one whose CREATE did not finish; drop it there (DROP SCHEMA and its row in imagestore_tables) or name this table otherwise"
                ),
            });
        }
    }
    open_existing_server_shards(config)
}

fn open_existing_server_shards(config: &TableConfig) -> Result<OpenedTable> {
    let count = config.servers.len();
    let token = WriterToken::default();
    let mut shards = Vec::with_capacity(count);
    for (index, address) in config.servers.iter().enumerate() {
        let shard = ServerShard::open(
            address.clone(),
            &config.table_name,
            (index, count),
            &config.user_columns,
            (config.protocol, token.clone()),
            config.busy_timeout_ms,
        )?;
        shard.ensure_indexes(&config.indexes)?;
        shards.push(shard);
    }
    let table_id = shards[0].identity().table_id;
    if let Some(other) = shards.iter().find(|s| s.identity().table_id != table_id) {
        return Err(Error::ServerForeign {
            server: other.address().to_string(),
            detail: format!(
                "holds another table named {} than {} does",
                config.table_name,
                shards[0].address()
            ),
        });
    }
    let anchor = Anchor::open(
        config.servers[0].clone(),
        (&table_id, shards[0].schema()),
        token,
        config.busy_timeout_ms,
        false,
    )?;
    Ok(OpenedTable {
        table_id,
        shards: shards.into_iter().map(TableShard::Server).collect(),
        control: Box::new(anchor),
        created: false,
    })
}

/// Makes the table on every server; on an error, removes it from those it was made on.
fn create_server_shards(config: &TableConfig) -> Result<OpenedTable> {
    let table_id = new_table_id(config);
    let count = config.servers.len();
    let token = WriterToken::default();
    let mut shards: Vec<ServerShard> = Vec::with_capacity(count);
    let made = (|| {
        for (index, address) in config.servers.iter().enumerate() {
            let shard = ServerShard::create(
                address.clone(),
                &config.table_name,
                table_id,
                (index, count),
                &config.user_columns,
                (config.protocol, token.clone()),
                config.busy_timeout_ms,
            )?;
            shards.push(shard);
            shards[index].ensure_indexes(&config.indexes)?;
        }
        Anchor::open(
            config.servers[0].clone(),
            (&table_id, shards[0].schema()),
            token,
            config.busy_timeout_ms,
            true,
        )
    })();
    match made {
        Ok(anchor) => Ok(OpenedTable {
            table_id,
            shards: shards.into_iter().map(TableShard::Server).collect(),
            control: Box::new(anchor),
            created: true,
        }),
        Err(e) => {
            drop(shards);
            // Best effort: what is left is named by the next CREATE's error.
            let _ = drop_server_tables(&config.servers, &config.table_name, config.busy_timeout_ms);
            Err(e)
        }
    }
}

/// DROP of a table on servers that could not be opened (no coordinator holds its writer lock):
/// as [`drop_server_tables`], under the writer lock taken on the anchor first, if the anchor
/// still holds the table. So no writer of any host is between its prepare and its finalize while
/// its prepared parts are rolled back (a writer told its commit succeeded would be left with a
/// part gone); one that holds the lock makes this DROP wait, then fail as busy.
pub(crate) fn drop_unopened_server_tables(config: &TableConfig) -> Result<()> {
    let (anchor, timeout_ms) = (&config.servers[0], config.busy_timeout_ms);
    let count = config.servers.len();
    let _writer =
        match ServerShard::registered_table_id(anchor, &config.table_name, (0, count), timeout_ms)?
        {
            Some(table_id) => {
                let schema = crate::server::shard::schema_name(&table_id);
                let token = WriterToken::default();
                let anchor = Anchor::open(
                    anchor.clone(),
                    (&table_id, &schema),
                    token,
                    timeout_ms,
                    false,
                )?;
                Some((anchor.lock_writer(timeout_ms)?, anchor))
            }
            None => None,
        };
    drop_server_tables(&config.servers, &config.table_name, timeout_ms)
}

/// Removes table `name` from every one of `servers`, the anchor last (so that the decision
/// records go only once nothing else of the table is left); the first error stops it, and a
/// second DROP finishes what it left.
pub(crate) fn drop_server_tables(servers: &[Address], name: &str, timeout_ms: u64) -> Result<()> {
    let count = servers.len();
    for index in (1..count).chain(0..1.min(count)) {
        ServerShard::drop_named(&servers[index], name, index, count, timeout_ms)?;
    }
    Ok(())
}

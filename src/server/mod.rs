//! PostgreSQL servers as participants: a table's shards on other machines.
//!
//! A server has what a participant needs and SQLite lacks, a durable prepared state of its own
//! (`PREPARE TRANSACTION`, `COMMIT PREPARED`, `ROLLBACK PREPARED`, `pg_prepared_xacts`), so a
//! server participant keeps no before-states: its prepared transaction is the server's. Each
//! protocol step is one round trip (see the protocol document, "Participants behind a network
//! connection"), and every call ends at the table's busy timeout, with the connection dropped, so
//! that a server that stops answering fails the step instead of hanging the host.
//!
//! On each server, in the database the shard's URL names:
//!
//! ```sql
//! imagestore_tables(name PRIMARY KEY, table_id, shard_index, shard_count, format_version,
//!                   columns)                 -- each imagestore table this database holds
//! "imagestore_<table id>".images(id bigint PRIMARY KEY, name, format, width, height, bytes,
//!                   hash, data bytea STORAGE EXTERNAL, <user columns>)
//! "imagestore_<table id>".state(last_txid)  -- one row
//! "imagestore_<table id>".fence(owner, pre_committed)  -- one row; three-phase tables only
//! ```
//!
//! A prepared transaction's identifier (gid) is `imagestore:<table id>:<txid>:<shard index>:
//! <participants>` (see `gid`), so that recovery finds a table's own among the server's
//! (`pg_prepared_xacts`), and what the transaction wrote.
//!
//! Files: `address` the URL and its password (never kept, never shown); `gid` a prepared
//! transaction's identifier; `shard` one server
//! shard, its rows and its protocol steps; `fence` what keeps a three-phase step from landing
//! after another host took the table over; `anchor` the coordinator's state on the first
//! server; `link` the connection to one server.

pub mod address;
pub mod anchor;
pub mod fence;
mod gid;
mod link;
pub mod shard;

pub use address::Address;
pub use fence::WriterToken;
pub use shard::ServerShard;

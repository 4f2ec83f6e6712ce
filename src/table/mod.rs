//! A table, apart from SQLite's callbacks: its handle (`handle`), its shard set on disk
//! (`shard_set`) and its row-write rules (`write`). The virtual table (`crate::vtab`) and the
//! operating functions (`crate::maintenance`, `crate::derive`, `crate::backup`) work through
//! these; nothing here imports them, but for restoring a backup into a new table.

pub mod handle;
pub mod server_set;
pub mod shard_set;
pub mod table_shard;
pub mod write;

pub use handle::{with_open_table, TableCore};
pub(crate) use server_set::open_server_shards;
pub(crate) use shard_set::{open_shards, table_config};
pub use table_shard::TableShard;

//! A table, apart from SQLite's callbacks: its handle (`handle`) and its shard set on disk
//! (`shard_set`). The virtual table (`crate::vtab`) and the operating functions
//! (`crate::maintenance`, `crate::derive`, `crate::backup`) work through these.

pub mod handle;
pub mod shard_set;

pub use handle::{with_open_table, TableCore};
pub(crate) use shard_set::{open_shards, table_config};

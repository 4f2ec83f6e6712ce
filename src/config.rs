//! The table's configuration: the arguments of `CREATE VIRTUAL TABLE ... USING imagestore(...)`.
//!
//! ```text
//! shards=N                 -- N shard files beside the database: <db stem>.<table>.shard<i>.db
//! shards='a.db,b.db,...'   -- named shard files; relative paths resolve against the database's
//!                             folder (or the current folder for a :memory: or temp database)
//! busy_timeout=MS          -- how long a writer waits for the table's locks. Default 5000.
//! max_pixels=N             -- largest width*height accepted. Default 268435456 (16384^2).
//! verify=LEVEL             -- header, structure or decode: how far data is checked before it
//!                             is stored (see `images::probe`). Default structure.
//! journal_limit=BYTES      -- the journal is emptied when it grows past this. Default 1048576.
//! logged_commit_max=BYTES  -- a commit over several shards whose changes (rows and new images)
//!                             come to at most this is written whole into the journal: one sync
//!                             instead of one per shard (see `commit`). Default 262144; 0
//!                             turns it off.
//! protocol='2pc'|'3pc'     -- how a transaction over several shards commits (see `commit`):
//!                             two-phase, decided by the journal (the default), or three-phase,
//!                             whose shards end a transaction among themselves without it.
//!                             Kept in every shard; a 3pc table never takes the logged path.
//! restore_from='DIR'       -- CREATE fills the new table from the backup in DIR (see `backup::restore`);
//!                             its columns are the backup's unless declared (then they must match)
//! <name> [TYPE]            -- a column of the user's own (TYPE: TEXT, INTEGER, REAL, BLOB,
//!                             NUMERIC, or none), stored with the row and writable.
//! ```
//! `shards` is required. Unknown or repeated options are errors that name them.
//! The coordinator's journal and two lock files sit beside the first shard, named after it:
//! `<shard 0>.imagestore-journal`, `.imagestore-lock` and `.imagestore-publish`. They belong to the
//! shard set, so every database that opens these shards coordinates through the same files.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::files::with_suffix;
use crate::images::probe::Verify;
use crate::server::address::{is_server, Address};

/// Most shards a table may have (journal records store shard numbers as u16; a commit touches
/// at most this many files).
pub const SHARD_COUNT_MAX: usize = 256;
pub const BUSY_TIMEOUT_MS_DEFAULT: u64 = 5000;
pub const MAX_PIXELS_DEFAULT: u64 = 16384 * 16384;
pub const JOURNAL_LIMIT_BYTES_DEFAULT: u64 = 1 << 20;
pub const LOGGED_COMMIT_MAX_BYTES_DEFAULT: u64 = 256 << 10;
/// The largest `logged_commit_max`: a journal record's length is a u32, and a larger logged
/// commit would gain nothing over preparing (its time is in writing the images twice).
pub const LOGGED_COMMIT_MAX_BYTES_LIMIT: u64 = 64 << 20;

/// Columns every table has, in declaration order; user columns follow.
pub const BUILTIN_COLUMNS: [&str; 9] = [
    "id", "name", "data", "format", "width", "height", "bytes", "hash", "shard",
];

/// Built-in columns an `index(...)` may name besides the user's own (`id` is the key already;
/// `data` is the image; `shard` is not stored).
const INDEXABLE_BUILTIN_COLUMNS: [&str; 6] = ["name", "format", "width", "height", "bytes", "hash"];

/// A column of the user's own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserColumn {
    pub name: String,
    pub decl_type: String,
}

/// How a transaction over several shards commits (`protocol=`; see `commit`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// Two-phase commit: a prepared transaction is decided by the coordinator's record.
    TwoPhase,
    /// Three-phase commit: a durable pre-commit on the shards between the vote and the end, so
    /// that the shards decide a transaction among themselves.
    ThreePhase,
}

impl Protocol {
    fn parse(value: &str) -> Result<Protocol> {
        match value.to_ascii_lowercase().as_str() {
            "2pc" => Ok(Protocol::TwoPhase),
            "3pc" => Ok(Protocol::ThreePhase),
            _ => Err(bad(format!(
                "protocol={value}: expected 2pc (two-phase commit, the default) or 3pc (three-phase commit)"
            ))),
        }
    }

    /// The name the option takes (shards keep their protocol as their format version).
    pub fn name(self) -> &'static str {
        match self {
            Protocol::TwoPhase => "2pc",
            Protocol::ThreePhase => "3pc",
        }
    }

    /// The format version a shard (or a table on a server) of this protocol carries: 1 for
    /// two-phase, 2 for three-phase, so that a build that knows only two-phase commit refuses
    /// a three-phase table rather than apply its rules to it.
    pub fn format_version(self) -> i64 {
        match self {
            Protocol::TwoPhase => 1,
            Protocol::ThreePhase => 2,
        }
    }

    /// The protocol a format version says, if it is one this build reads.
    pub fn of_format_version(version: i64) -> Option<Protocol> {
        [Protocol::TwoPhase, Protocol::ThreePhase]
            .into_iter()
            .find(|p| p.format_version() == version)
    }
}

/// Everything the table needs to know to open its files.
#[derive(Debug, Clone)]
pub struct TableConfig {
    pub table_name: String,
    /// The shard files of a table on this machine (empty for a table on servers).
    pub shard_paths: Vec<PathBuf>,
    /// The servers of a table on PostgreSQL servers (empty for a table of files); the first is
    /// the anchor (see `server::anchor`).
    pub servers: Vec<Address>,
    /// Whether the shard paths were derived from the database name (`shards=N`).
    pub derived_paths: bool,
    pub journal_path: PathBuf,
    /// The writer lock (see `locks`).
    pub lock_path: PathBuf,
    /// The publish lock (see `locks`).
    pub publish_lock_path: PathBuf,
    pub busy_timeout_ms: u64,
    pub max_pixels: u64,
    pub verify: Verify,
    pub journal_limit_bytes: u64,
    /// A transaction over several shards whose changes come to at most this many bytes is
    /// committed by logging its changes in the journal (one sync) rather than by preparing
    /// every shard (a sync each); 0 always prepares.
    pub logged_commit_max_bytes: u64,
    pub user_columns: Vec<UserColumn>,
    /// How a transaction over several shards commits (`protocol=`).
    pub protocol: Protocol,
    /// The backup folder a new table is restored from (`restore_from=`).
    pub restore_from: Option<PathBuf>,
    /// Indexes declared with `index(col, ...)`, each kept on every shard: its columns' names.
    pub indexes: Vec<Vec<String>>,
    /// This table as the owner of the shard files it creates.
    pub owner: Owner,
}

/// Where the database that holds the table lives: its file, or `None` for :memory: and temp.
pub struct HostDatabase<'a> {
    pub file: Option<&'a Path>,
}

fn bad(message: impl Into<String>) -> Error {
    Error::BadArgument(message.into())
}

/// The module arguments of a `CREATE VIRTUAL TABLE ... USING imagestore(...)` statement, split
/// as SQLite splits them (top-level commas; quotes and parentheses kept whole).
pub fn module_arguments(create_sql: &str) -> Option<Vec<String>> {
    let open = create_sql.find('(')?;
    let close = create_sql.rfind(')')?;
    let inner = create_sql.get(open + 1..close)?;
    let (mut args, mut current, mut depth, mut quote) =
        (Vec::new(), String::new(), 0i32, None::<char>);
    for c in inner.chars() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), _) => {}
            (None, '\'' | '"' | '`') => quote = Some(c),
            (None, '[') => quote = Some(']'),
            (None, '(') => depth += 1,
            (None, ')') => depth -= 1,
            (None, ',') if depth == 0 => {
                args.push(std::mem::take(&mut current).trim().to_string());
                continue;
            }
            _ => {}
        }
        current.push(c);
    }
    args.push(current.trim().to_string());
    Some(args)
}

/// Removes one level of SQL quoting ('x', "x", `x`, [x]).
fn dequote(s: &str) -> String {
    let s = s.trim();
    let bytes = s.as_bytes();
    if bytes.len() >= 2 {
        let (first, last) = (bytes[0], bytes[bytes.len() - 1]);
        if matches!((first, last), (b'\'', b'\'') | (b'"', b'"') | (b'`', b'`')) {
            let q = first as char;
            return s[1..s.len() - 1].replace(&format!("{q}{q}"), &q.to_string());
        }
        if first == b'[' && last == b']' {
            return s[1..s.len() - 1].to_string();
        }
    }
    s.to_string()
}

fn is_identifier(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn parse_number(key: &str, value: &str, min: u64, max: u64) -> Result<u64> {
    let text = dequote(value);
    match text.parse::<u64>() {
        Ok(n) if (min..=max).contains(&n) => Ok(n),
        _ => Err(bad(format!(
            "{key}={value}: expected a whole number from {min} to {max}"
        ))),
    }
}

fn parse_user_column(arg: &str) -> Result<UserColumn> {
    let mut words = arg.split_whitespace();
    let name = dequote(words.next().unwrap_or(""));
    let decl_type = words.collect::<Vec<_>>().join(" ").to_ascii_uppercase();
    if !is_identifier(&name) {
        return Err(bad(format!(
            "'{arg}' is neither an option (key=value), a column definition (name [TYPE]) nor an index (index(column, ...))"
        )));
    }
    UserColumn::new(name, decl_type)
}

impl UserColumn {
    /// A column of the user's own, if its name is an identifier and its type one the table
    /// stores.
    pub fn new(name: String, decl_type: String) -> Result<UserColumn> {
        if !is_identifier(&name) {
            return Err(bad(format!("column name '{name}' is not an identifier")));
        }
        if !matches!(
            decl_type.as_str(),
            "" | "TEXT" | "INTEGER" | "INT" | "REAL" | "BLOB" | "NUMERIC"
        ) {
            return Err(bad(format!(
                "column {name}: type '{decl_type}' is not one of TEXT, INTEGER, REAL, BLOB, NUMERIC"
            )));
        }
        Ok(UserColumn { name, decl_type })
    }
}

/// Adds `column` to a table's user columns, refusing built-in and repeated names.
/// The column list of an `index(col, ...)` argument, or `None` if `arg` is not one.
fn index_argument(arg: &str) -> Option<Vec<String>> {
    let open = arg.find('(')?;
    if !arg[..open].trim().eq_ignore_ascii_case("index") || !arg.ends_with(')') {
        return None;
    }
    Some(
        arg[open + 1..arg.len() - 1]
            .split(',')
            .map(dequote)
            .collect(),
    )
}

/// Resolves the columns of each declared index to the names they were declared with, and refuses
/// an unknown or repeated column, an empty list, and an index given twice.
fn resolve_indexes(
    declared: Vec<Vec<String>>,
    user_columns: &[UserColumn],
) -> Result<Vec<Vec<String>>> {
    let known = INDEXABLE_BUILTIN_COLUMNS
        .iter()
        .map(|c| c.to_string())
        .chain(user_columns.iter().map(|c| c.name.clone()));
    let known: Vec<String> = known.collect();
    let mut indexes: Vec<Vec<String>> = Vec::new();
    for columns in declared {
        let mut resolved: Vec<String> = Vec::new();
        for column in &columns {
            let name = known
                .iter()
                .find(|k| k.eq_ignore_ascii_case(column))
                .ok_or_else(|| {
                    bad(format!(
                        "index({}): '{column}' is not a column an index can hold \
                         (name, format, width, height, bytes, hash, or a declared column)",
                        columns.join(", ")
                    ))
                })?;
            if resolved.contains(name) {
                return Err(bad(format!(
                    "index({}): {name} is listed twice",
                    columns.join(", ")
                )));
            }
            resolved.push(name.clone());
        }
        if indexes.contains(&resolved) {
            return Err(bad(format!(
                "index({}) is declared twice",
                resolved.join(", ")
            )));
        }
        indexes.push(resolved);
    }
    Ok(indexes)
}

/// The name of the shard index on `columns`: the same for the same columns, in every shard.
pub fn index_name(columns: &[String]) -> String {
    let key = columns.join("\0").to_ascii_lowercase();
    let hash = blake3::hash(key.as_bytes()).to_hex();
    format!("images_by_{}", &hash[..16])
}

fn add_user_column(columns: &mut Vec<UserColumn>, column: UserColumn) -> Result<()> {
    if BUILTIN_COLUMNS.contains(&column.name.to_ascii_lowercase().as_str()) {
        return Err(bad(format!(
            "column {} is built in; choose another name",
            column.name
        )));
    }
    if columns
        .iter()
        .any(|c| c.name.eq_ignore_ascii_case(&column.name))
    {
        return Err(bad(format!("column {} is declared twice", column.name)));
    }
    columns.push(column);
    Ok(())
}

/// Checks columns that come from elsewhere (a backup, a shard file) as a declaration would be.
pub fn validated_user_columns(columns: Vec<UserColumn>) -> Result<Vec<UserColumn>> {
    let mut valid = Vec::with_capacity(columns.len());
    for column in columns {
        add_user_column(&mut valid, UserColumn::new(column.name, column.decl_type)?)?;
    }
    Ok(valid)
}

/// Resolves a shard path given by the user against the database's folder.
fn resolve(path: &str, base_dir: &Path) -> PathBuf {
    let p = Path::new(path);
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        base_dir.join(p)
    }
}

/// Who created a shard set (kept in every shard, see `shard::Lifecycle`): the host database's
/// file (its canonical path; empty for `:memory:` and temp databases) and the table's name.
/// Only the owner's DROP deletes the files; only the owner's CREATE removes leftovers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Owner {
    pub database: String,
    pub table: String,
}

impl Owner {
    /// Whether `other` names the same owner (table names compare as SQL compares them).
    pub fn is(&self, other: &Owner) -> bool {
        !self.database.is_empty()
            && self.database == other.database
            && self.table.eq_ignore_ascii_case(&other.table)
    }
}

impl std::fmt::Display for Owner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.database.as_str() {
            "" => write!(f, "table {} of a :memory: or temp database", self.table),
            db => write!(f, "table {} of database {db}", self.table),
        }
    }
}

impl TableConfig {
    /// Parses the module arguments (after module, database and table names).
    pub fn parse(table_name: &str, args: &[&str], host: HostDatabase<'_>) -> Result<TableConfig> {
        let mut shards: Option<String> = None;
        let mut busy_timeout_ms = None;
        let mut max_pixels = None;
        let mut journal_limit_bytes = None;
        let mut logged_commit_max_bytes = None;
        let mut verify = Verify::Structure;
        let mut restore_from = None;
        let mut protocol = Protocol::TwoPhase;
        let mut user_columns: Vec<UserColumn> = Vec::new();
        let mut indexes = Vec::new();
        let mut seen_keys = HashSet::new();
        for raw in args {
            let arg = raw.trim();
            if arg.is_empty() {
                continue;
            }
            if let Some(columns) = index_argument(arg) {
                indexes.push(columns);
                continue;
            }
            let Some((key, value)) = arg.split_once('=') else {
                add_user_column(&mut user_columns, parse_user_column(arg)?)?;
                continue;
            };
            let key = key.trim().to_ascii_lowercase();
            if !seen_keys.insert(key.clone()) {
                return Err(bad(format!("option {key} is given twice")));
            }
            let value = value.trim();
            match key.as_str() {
                "shards" => shards = Some(value.to_string()),
                "busy_timeout" => busy_timeout_ms = Some(parse_number(&key, value, 0, 3_600_000)?),
                "max_pixels" => max_pixels = Some(parse_number(&key, value, 1, u64::MAX)?),
                "verify" => {
                    verify = Verify::parse(&dequote(value)).ok_or_else(|| {
                        bad(format!("verify={value}: expected header, structure or decode"))
                    })?
                }
                "journal_limit" => journal_limit_bytes = Some(parse_number(&key, value, 4096, u64::MAX)?),
                "logged_commit_max" => {
                    logged_commit_max_bytes =
                        Some(parse_number(&key, value, 0, LOGGED_COMMIT_MAX_BYTES_LIMIT)?)
                }
                "restore_from" => restore_from = Some(dequote(value)),
                "protocol" => protocol = Protocol::parse(&dequote(value))?,
                _ => {
                    return Err(bad(format!(
                        "unknown option '{key}'; the options are shards, busy_timeout, max_pixels, verify, journal_limit, logged_commit_max, protocol, restore_from"
                    )))
                }
            }
        }
        let indexes = resolve_indexes(indexes, &user_columns)?;
        let shards = shards.ok_or_else(|| {
            bad("the shards option is required: shards=N or shards='a.db,b.db,...'")
        })?;
        if table_name.contains(['/', '\\', '\0']) {
            return Err(bad(format!(
                "table name '{table_name}' cannot be used in file names"
            )));
        }
        let base_dir = match host.file {
            Some(file) => file.parent().map(Path::to_path_buf).unwrap_or_default(),
            None => std::env::current_dir().unwrap_or_default(),
        };
        // Checked first: a URL with a password is refused before anything else looks at it.
        let servers = Self::servers(&shards)?;
        if protocol == Protocol::ThreePhase && logged_commit_max_bytes.is_some_and(|b| b > 0) {
            return Err(bad(
                "logged_commit_max: a protocol='3pc' table never logs a commit in the journal (its shards must be able to decide without it); leave it out",
            ));
        }
        let (shard_paths, derived_paths) = match servers.is_empty() {
            true => Self::shard_paths(table_name, &shards, &host, &base_dir)?,
            false => (Vec::new(), false),
        };
        // Every path to a shard (a symbolic link, a linked folder) leads to the same coordinator
        // files, which are named after shard 0's canonical path.
        let shard_paths: Vec<PathBuf> = shard_paths.iter().map(|p| canonical(p)).collect();
        if let Some(twice) = first_repeated(&shard_paths) {
            return Err(bad(format!(
                "shards: {} is listed twice; each shard needs its own file",
                twice.display()
            )));
        }
        // The coordinator's files go with the shard set, not with the database or the table's
        // name: whoever opens these shards, from whichever database, shares one journal and one
        // pair of locks. A table on servers keeps them on its anchor instead (no files).
        let coordinator_base = shard_paths.first().cloned().unwrap_or_default();
        Ok(TableConfig {
            table_name: table_name.to_string(),
            shard_paths,
            servers,
            derived_paths,
            journal_path: with_suffix(&coordinator_base, ".imagestore-journal"),
            lock_path: with_suffix(&coordinator_base, ".imagestore-lock"),
            publish_lock_path: with_suffix(&coordinator_base, ".imagestore-publish"),
            busy_timeout_ms: busy_timeout_ms.unwrap_or(BUSY_TIMEOUT_MS_DEFAULT),
            max_pixels: max_pixels.unwrap_or(MAX_PIXELS_DEFAULT),
            verify,
            journal_limit_bytes: journal_limit_bytes.unwrap_or(JOURNAL_LIMIT_BYTES_DEFAULT),
            logged_commit_max_bytes: match protocol {
                Protocol::TwoPhase => {
                    logged_commit_max_bytes.unwrap_or(LOGGED_COMMIT_MAX_BYTES_DEFAULT)
                }
                Protocol::ThreePhase => 0,
            },
            protocol,
            user_columns,
            restore_from: restore_from.map(|dir| resolve(&dir, &base_dir)),
            indexes,
            owner: Owner {
                database: host
                    .file
                    .map(|f| canonical(f).to_string_lossy().into_owned())
                    .unwrap_or_default(),
                table: table_name.to_string(),
            },
        })
    }

    /// How many shards the table has.
    pub fn shard_count(&self) -> usize {
        self.shard_paths.len().max(self.servers.len())
    }

    /// Every file the table owns: its shard files, the journal, and the two lock files (none
    /// for a table on servers).
    pub fn files(&self) -> Vec<PathBuf> {
        if !self.servers.is_empty() {
            return Vec::new();
        }
        let mut files = vec![
            self.journal_path.clone(),
            self.lock_path.clone(),
            self.publish_lock_path.clone(),
        ];
        files.extend(self.shard_files());
        files
    }

    /// Each shard with the files SQLite keeps beside it.
    pub fn shard_files(&self) -> Vec<PathBuf> {
        self.shard_paths
            .iter()
            .flat_map(|shard| crate::files::with_sqlite_files(shard))
            .collect()
    }

    /// The servers a quoted `shards=` list names, if its entries are `postgresql://` URLs: all
    /// of them or none (a table's shards are all files or all servers), each once.
    fn servers(shards: &str) -> Result<Vec<Address>> {
        if !shards.starts_with(['\'', '"']) {
            return Ok(Vec::new());
        }
        let list = dequote(shards);
        let entries: Vec<&str> = list.split(',').map(str::trim).collect();
        let remote = entries.iter().filter(|e| is_server(e)).count();
        if remote == 0 {
            return Ok(Vec::new());
        }
        if remote < entries.len() {
            return Err(bad(
                "shards: a table's shards are all files on this machine or all PostgreSQL servers (postgresql://...), not some of each",
            ));
        }
        let servers = entries
            .iter()
            .map(|e| Address::parse(e))
            .collect::<Result<Vec<_>>>()?;
        if servers.len() > SHARD_COUNT_MAX {
            return Err(bad(format!(
                "shards: {} servers; a table has at most {SHARD_COUNT_MAX}",
                servers.len()
            )));
        }
        if let Some(twice) = first_repeated(&servers) {
            return Err(bad(format!(
                "shards: {twice} is listed twice; each shard needs a server database of its own"
            )));
        }
        Ok(servers)
    }

    fn shard_paths(
        table_name: &str,
        shards: &str,
        host: &HostDatabase<'_>,
        base_dir: &Path,
    ) -> Result<(Vec<PathBuf>, bool)> {
        let quoted = shards.starts_with(['\'', '"']);
        if let (false, Ok(count)) = (quoted, shards.parse::<u64>()) {
            if count == 0 || count > SHARD_COUNT_MAX as u64 {
                return Err(bad(format!(
                    "shards={count}: a table has from 1 to {SHARD_COUNT_MAX} shards"
                )));
            }
            let Some(file) = host.file else {
                return Err(bad(
                    "a table in a :memory: or temporary database needs explicit shard paths: shards='a.db,b.db'",
                ));
            };
            let stem = file
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default();
            let paths = (0..count)
                .map(|i| base_dir.join(format!("{stem}.{table_name}.shard{i}.db")))
                .collect();
            return Ok((paths, true));
        }
        if !quoted {
            return Err(bad(format!(
                "shards={shards}: expected a number of shards or a quoted list of files, shards='a.db,b.db'"
            )));
        }
        let list = dequote(shards);
        if list.split(',').any(|p| p.trim().is_empty()) {
            return Err(bad(format!(
                "shards='{list}': an empty file name in the list"
            )));
        }
        let paths: Vec<PathBuf> = list
            .split(',')
            .map(|p| resolve(p.trim(), base_dir))
            .collect();
        if paths.len() > SHARD_COUNT_MAX {
            return Err(bad(format!(
                "shards: {} files; a table has at most {SHARD_COUNT_MAX}",
                paths.len()
            )));
        }
        for p in &paths {
            let name = p
                .file_name()
                .map(|n| n.to_string_lossy())
                .unwrap_or_default();
            if let Some(suffix) = COMPANION_SUFFIXES.iter().find(|s| name.ends_with(*s)) {
                return Err(bad(format!(
                    "shards: {} is named like a file that SQLite or imagestore keeps beside a shard (…{suffix}); choose another name",
                    p.display()
                )));
            }
        }
        Ok((paths, false))
    }

    /// The SQL that declares the table's columns to SQLite.
    pub fn declaration(&self) -> String {
        let mut sql = String::from(
            "CREATE TABLE x(id INTEGER, name TEXT, data BLOB, format TEXT, width INTEGER, \
             height INTEGER, bytes INTEGER, hash TEXT, shard INTEGER HIDDEN",
        );
        for c in &self.user_columns {
            sql.push_str(&format!(", \"{}\" {}", c.name, c.decl_type));
        }
        sql.push(')');
        sql
    }
}

/// The endings of the files SQLite and imagestore keep beside a shard (its journal, WAL and
/// shared memory; a new shard's staging name; the coordinator's journal, locks and journal
/// reset). No shard may be named so: it would be taken for another shard's companion file.
const COMPANION_SUFFIXES: [&str; 8] = [
    "-journal",
    "-wal",
    "-shm",
    ".creating",
    ".imagestore-journal",
    ".imagestore-lock",
    ".imagestore-publish",
    ".journal-new",
];

/// `path` with its folder's symbolic links, and its own, resolved; as given where the folder
/// does not exist (the error naming it comes when the shard is opened).
fn canonical(path: &Path) -> PathBuf {
    if let Ok(resolved) = std::fs::canonicalize(path) {
        return resolved;
    }
    match (path.parent(), path.file_name()) {
        (Some(dir), Some(name)) => std::fs::canonicalize(dir)
            .map(|dir| dir.join(name))
            .unwrap_or_else(|_| path.to_path_buf()),
        _ => path.to_path_buf(),
    }
}

/// The first path that appears twice in `paths`.
fn first_repeated<T: std::hash::Hash + Eq>(items: &[T]) -> Option<&T> {
    let mut seen = HashSet::new();
    items.iter().find(|item| !seen.insert(*item))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<TableConfig> {
        TableConfig::parse(
            "images",
            args,
            HostDatabase {
                file: Some(Path::new("/data/photos.db")),
            },
        )
    }

    #[test]
    fn shards_n_derives_paths_beside_the_database() {
        let c = parse(&["shards=2"]).unwrap();
        assert_eq!(
            c.shard_paths,
            vec![
                PathBuf::from("/data/photos.images.shard0.db"),
                PathBuf::from("/data/photos.images.shard1.db")
            ]
        );
        assert_eq!(
            c.journal_path,
            PathBuf::from("/data/photos.images.shard0.db.imagestore-journal")
        );
        assert_eq!(
            c.lock_path,
            PathBuf::from("/data/photos.images.shard0.db.imagestore-lock")
        );
    }

    #[test]
    fn named_shards_resolve_against_the_database_folder() {
        let c = parse(&["shards='a.db, /x/b.db'", "album TEXT", "year integer"]).unwrap();
        assert_eq!(
            c.shard_paths,
            vec![PathBuf::from("/data/a.db"), PathBuf::from("/x/b.db")]
        );
        assert_eq!(
            c.user_columns[1],
            UserColumn {
                name: "year".into(),
                decl_type: "INTEGER".into()
            }
        );
        assert!(c
            .declaration()
            .ends_with("\"album\" TEXT, \"year\" INTEGER)"));
    }

    #[test]
    fn bad_arguments_are_named() {
        for (args, needle) in [
            (&["shards=0"][..], "from 1 to"),
            (&["shards=abc"][..], "expected a number"),
            (&["shards='a.db,./a.db'"][..], "listed twice"),
            (&["shards=2", "colour=red"][..], "unknown option 'colour'"),
            (&["shards=2", "shards=3"][..], "given twice"),
            (&[][..], "shards option is required"),
            (&["shards=2", "width INTEGER"][..], "built in"),
            (&["shards=2", "a TEXT", "A INTEGER"][..], "declared twice"),
            (&["shards=2", "a VARCHAR"][..], "not one of"),
            (&["shards=2", "busy_timeout=-1"][..], "busy_timeout"),
            (&["shards='a.db,,b.db'"][..], "empty file name"),
        ] {
            let err = parse(args).expect_err(needle).to_string();
            assert!(err.contains(needle), "{args:?}: {err}");
        }
    }

    #[test]
    fn indexes_resolve_to_declared_names() {
        let c = parse(&[
            "shards=2",
            "index( Z, \"x\" )",
            "z INTEGER",
            "X INTEGER",
            "INDEX(width)",
        ])
        .unwrap();
        assert_eq!(
            c.indexes,
            vec![
                vec!["z".to_string(), "X".to_string()],
                vec!["width".to_string()]
            ]
        );
        assert_eq!(
            index_name(&c.indexes[0]),
            index_name(&["Z".into(), "x".into()])
        );
        assert_ne!(
            index_name(&c.indexes[0]),
            index_name(&["x".into(), "z".into()])
        );
        for (args, needle) in [
            (&["shards=2", "index(data)"][..], "'data' is not a column"),
            (&["shards=2", "index(id)"][..], "'id' is not a column"),
            (
                &["shards=2", "a INT", "index(a, A)"][..],
                "a is listed twice",
            ),
            (
                &["shards=2", "a INT", "index(a)", "index(A)"][..],
                "declared twice",
            ),
        ] {
            let message = parse(args).unwrap_err().to_string();
            assert!(message.contains(needle), "{args:?}: {message}");
        }
    }

    #[test]
    fn module_arguments_split_as_sqlite_does() {
        let sql = "CREATE VIRTUAL TABLE t USING imagestore(shards='a,b.db, it''s.db', album TEXT, n NUMERIC(10, 2))";
        assert_eq!(
            module_arguments(sql).unwrap(),
            vec![
                "shards='a,b.db, it''s.db'",
                "album TEXT",
                "n NUMERIC(10, 2)"
            ]
        );
    }

    #[test]
    fn memory_database_needs_explicit_paths() {
        let err = TableConfig::parse("t", &["shards=2"], HostDatabase { file: None }).unwrap_err();
        assert!(err.to_string().contains("explicit shard paths"));
        let c = TableConfig::parse(
            "t",
            &["shards='/tmp/a.db,/tmp/b.db'"],
            HostDatabase { file: None },
        )
        .unwrap();
        assert_eq!(
            c.journal_path,
            PathBuf::from("/tmp/a.db.imagestore-journal")
        );
    }
}

//! A server's address as a table names it, `postgresql://USER@HOST:PORT/DATABASE`, with the
//! options `?sslmode=verify-full&sslrootcert=FILE` (TLS), and the password that goes with it,
//! which is never part of the address.
//!
//! Invariant: no password is ever held in an [`Address`], so none can reach the host database
//! (which keeps the CREATE statement in its schema) or an error message. A URL that carries one
//! is refused with a message that does not repeat it and says where passwords go: the standard
//! PostgreSQL password file (`~/.pgpass`, or the file `PGPASSFILE` names) or `PGPASSWORD`,
//! looked up here as libpq looks them up.

use std::fmt;
use std::path::PathBuf;

use crate::error::{Error, Result};

/// The schemes that name a PostgreSQL server.
const SCHEMES: [&str; 2] = ["postgresql://", "postgres://"];
const DEFAULT_PORT: u16 = 5432;

/// Whether a `shards=` entry names a server rather than a file.
pub fn is_server(entry: &str) -> bool {
    without_scheme(entry).is_some()
}

/// `url` after its scheme, if it starts with one of [`SCHEMES`] (in any case).
fn without_scheme(url: &str) -> Option<&str> {
    SCHEMES.iter().find_map(|scheme| {
        let head = url.get(..scheme.len())?;
        head.eq_ignore_ascii_case(scheme)
            .then(|| &url[scheme.len()..])
    })
}

/// Where one server participant is: user, host, port and database, and how to reach it. Two
/// addresses are the same server database whatever their TLS options.
#[derive(Debug, Clone)]
pub struct Address {
    pub user: String,
    pub host: String,
    pub port: u16,
    pub database: String,
    pub tls: Tls,
}

/// How the connection to a server is made (`sslmode`, as libpq names it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Tls {
    /// Not encrypted (`sslmode=disable`, and the default).
    Off,
    /// Encrypted, and the server's certificate checked against `root_cert` (PEM; the file
    /// libpq reads, `~/.postgresql/root.crt`, if `None`) and against the host name.
    VerifyFull { root_cert: Option<PathBuf> },
}

impl Address {
    fn place(&self) -> (&str, &str, u16, &str) {
        (&self.user, &self.host, self.port, &self.database)
    }
}

impl PartialEq for Address {
    fn eq(&self, other: &Address) -> bool {
        self.place() == other.place()
    }
}

impl Eq for Address {}

impl std::hash::Hash for Address {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.place().hash(state)
    }
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let host = match self.host.contains(':') {
            true => format!("[{}]", self.host),
            false => self.host.clone(),
        };
        write!(
            f,
            "postgresql://{}@{host}:{}/{}",
            self.user, self.port, self.database
        )
    }
}

fn malformed(why: &str) -> Error {
    Error::BadArgument(format!(
        "a server entry of shards= {why}; write it as postgresql://USER@HOST:PORT/DATABASE"
    ))
}

impl Address {
    /// Parses `postgresql://USER@HOST[:PORT]/DATABASE[?OPTIONS]` (or `postgres://`). Refuses a
    /// password, without repeating it, and options other than the TLS ones ([`parse_tls`]).
    pub fn parse(url: &str) -> Result<Address> {
        let rest =
            without_scheme(url).ok_or_else(|| malformed("does not start with postgresql://"))?;
        let (rest, options) = rest.split_once('?').unwrap_or((rest, ""));
        let (authority, database) = rest
            .split_once('/')
            .ok_or_else(|| malformed("names no database"))?;
        let (user, host_port) = authority
            .rsplit_once('@')
            .ok_or_else(|| malformed("names no user (USER@ before the host)"))?;
        let password_option = options
            .split('&')
            .any(|o| o.split('=').next() == Some("password"));
        if user.contains(':') || password_option {
            return Err(Error::BadArgument(
                "a server entry of shards= carries a password, which would be kept in the \
                 database's schema: remove it from the URL and put it in the PostgreSQL password \
                 file (~/.pgpass, or the file PGPASSFILE names: HOST:PORT:DATABASE:USER:PASSWORD) \
                 or in PGPASSWORD"
                    .into(),
            ));
        }
        if url.contains('#') {
            return Err(malformed("has a '#', which a table does not take"));
        }
        let (host, port) = split_host_port(host_port)?;
        let word = |s: &str, what: &str| -> Result<String> {
            match s.is_empty() || s.contains(['/', '@', ' ', '\'', '"', '\\']) {
                true => Err(malformed(&format!("has no usable {what}"))),
                false => Ok(s.to_string()),
            }
        };
        Ok(Address {
            user: word(user, "user")?,
            host: word(host, "host")?,
            port,
            database: word(database, "database")?,
            tls: parse_tls(options)?,
        })
    }

    /// The password for this address: `PGPASSWORD`, else the first matching line of the
    /// password file; `None` where neither has one (the server may not ask).
    pub fn password(&self) -> Option<String> {
        if let Ok(password) = std::env::var("PGPASSWORD") {
            return Some(password);
        }
        let file = password_file()?;
        let text = std::fs::read_to_string(file).ok()?;
        password_in(&text, self)
    }
}

/// The TLS options after `?`: `sslmode=disable` (the default) or `sslmode=verify-full`, and
/// `sslrootcert=FILE` with it. The modes that encrypt without checking whose server answers
/// (`require`, `verify-ca`, `prefer`, `allow`) are refused: a password sent there can be read by
/// whoever stands in the middle.
fn parse_tls(options: &str) -> Result<Tls> {
    let (mut mode, mut root_cert) = (None, None);
    for option in options.split('&').filter(|o| !o.is_empty()) {
        match option.split_once('=') {
            Some(("sslmode", value)) => mode = Some(value),
            Some(("sslrootcert", value)) if !value.is_empty() => {
                root_cert = Some(PathBuf::from(value))
            }
            // Named by its key alone: an option's value is never repeated (it may be a secret).
            _ => {
                let key = option.split('=').next().unwrap_or_default();
                return Err(malformed(&format!(
                    "has the option '{key}'; the options a table takes are sslmode=verify-full (or disable) and sslrootcert=FILE"
                )));
            }
        }
    }
    match (mode, root_cert) {
        (None | Some("disable"), None) => Ok(Tls::Off),
        (Some("verify-full"), root_cert) => Ok(Tls::VerifyFull { root_cert }),
        (None | Some("disable"), Some(_)) => Err(malformed(
            "has sslrootcert without sslmode=verify-full, which it belongs to",
        )),
        (Some(other), _) => Err(malformed(&format!(
            "has sslmode={other}; a table takes sslmode=verify-full (encrypted, and the server's certificate checked, so that no one in the middle reads a password) or disable"
        ))),
    }
}

fn split_host_port(host_port: &str) -> Result<(&str, u16)> {
    let (host, port) = match host_port.strip_prefix('[') {
        // An IPv6 address in brackets.
        Some(bracketed) => {
            let (host, after) = bracketed
                .split_once(']')
                .ok_or_else(|| malformed("has an unclosed '['"))?;
            (host, after.strip_prefix(':'))
        }
        None => match host_port.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (host_port, None),
        },
    };
    let port = match port {
        None => DEFAULT_PORT,
        Some(p) => p
            .parse::<u16>()
            .ok()
            .filter(|&p| p > 0)
            .ok_or_else(|| malformed("has a port that is not a number from 1 to 65535"))?,
    };
    Ok((host, port))
}

/// The password file libpq reads: `PGPASSFILE`, else `~/.pgpass`.
fn password_file() -> Option<PathBuf> {
    if let Some(file) = std::env::var_os("PGPASSFILE") {
        return Some(PathBuf::from(file));
    }
    std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".pgpass"))
}

/// The password of the first line of a password file that matches `address`: fields
/// `HOST:PORT:DATABASE:USER:PASSWORD`, `*` matching anything, `\` escaping `:` and `\`.
fn password_in(text: &str, address: &Address) -> Option<String> {
    let port = address.port.to_string();
    let wanted = [
        address.host.as_str(),
        port.as_str(),
        address.database.as_str(),
        address.user.as_str(),
    ];
    text.lines()
        .filter(|line| !line.trim_start().starts_with('#'))
        .filter_map(|line| {
            let fields = split_fields(line);
            (fields.len() == 5).then_some(fields)
        })
        .find(|fields| {
            fields[..4]
                .iter()
                .zip(wanted)
                .all(|(field, want)| field == "*" || field == want)
        })
        .map(|mut fields| fields.remove(4))
}

fn split_fields(line: &str) -> Vec<String> {
    let mut fields = vec![String::new()];
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                if let (Some(next), Some(field)) = (chars.next(), fields.last_mut()) {
                    field.push(next);
                }
            }
            ':' if fields.len() < 5 => fields.push(String::new()),
            c => {
                if let Some(field) = fields.last_mut() {
                    field.push(c);
                }
            }
        }
    }
    fields
}

#[cfg(test)]
mod tests {
    use super::*;

    fn address(s: &str) -> Address {
        Address::parse(s).expect(s)
    }

    #[test]
    fn parses_the_forms_a_table_takes() {
        let a = address("postgresql://alice@db1.example:5433/images");
        assert_eq!(
            (
                a.user.as_str(),
                a.host.as_str(),
                a.port,
                a.database.as_str()
            ),
            ("alice", "db1.example", 5433, "images")
        );
        assert_eq!(address("postgres://bob@127.0.0.1/x").port, 5432);
        assert_eq!(address("POSTGRESQL://bob@[::1]:6000/x").host, "::1");
        assert_eq!(
            address("postgresql://bob@[::1]:6000/x").to_string(),
            "postgresql://bob@[::1]:6000/x"
        );
    }

    #[test]
    fn a_password_is_refused_and_never_repeated() {
        for url in [
            "postgresql://alice:s3cret-word@db1:5432/images",
            "postgresql://alice@db1:5432/images?password=s3cret-word",
            "postgresql://alice@db1:5432/images?sslmode=verify-full&password=s3cret-word",
        ] {
            let message = Address::parse(url).unwrap_err().to_string();
            assert!(!message.contains("s3cret"), "{message}");
            assert!(
                message.contains("~/.pgpass") && message.contains("PGPASSWORD"),
                "{message}"
            );
        }
        let message = Address::parse("postgresql://alice@db1:5432/images?passfile=s3cret-word")
            .unwrap_err()
            .to_string();
        assert!(
            !message.contains("s3cret") && message.contains("'passfile'"),
            "{message}"
        );
    }

    #[test]
    fn malformed_urls_are_refused_with_the_form_to_use() {
        for bad in [
            "postgresql://db1:5432/images",
            "postgresql://alice@db1:5432",
            "postgresql://alice@db1:notaport/images",
            "postgresql://alice@db1:0/images",
            "postgresql://alice@:5432/images",
            "postgresql://alice@db1/",
            "postgresql://alice@db1/images?sslmode=require",
            "postgresql://alice@db1/images?sslmode=verify-ca",
            "postgresql://alice@db1/images?sslrootcert=/ca.pem",
            "postgresql://alice@db1/images?application_name=x",
            "postgresql://alice@db1/images#x",
            "postgresql://alice@[::1/images",
            "mysql://alice@db1/images",
        ] {
            let message = Address::parse(bad).unwrap_err().to_string();
            assert!(
                message.contains("postgresql://USER@HOST:PORT/DATABASE"),
                "{bad}: {message}"
            );
        }
    }

    #[test]
    fn tls_options_are_read_and_do_not_make_another_server() {
        let plain = address("postgresql://alice@db1/images");
        assert_eq!(plain.tls, Tls::Off);
        let checked =
            address("postgresql://alice@db1/images?sslmode=verify-full&sslrootcert=/etc/ca.pem");
        assert_eq!(
            checked.tls,
            Tls::VerifyFull {
                root_cert: Some(PathBuf::from("/etc/ca.pem"))
            }
        );
        assert_eq!(
            address("postgresql://alice@db1/images?sslmode=verify-full").tls,
            Tls::VerifyFull { root_cert: None }
        );
        assert_eq!(
            address("postgresql://alice@db1/images?sslmode=disable").tls,
            Tls::Off
        );
        assert_eq!(plain, checked);
        assert_eq!(checked.to_string(), "postgresql://alice@db1:5432/images");
    }

    #[test]
    fn the_password_file_is_read_as_libpq_reads_it() {
        let a = address("postgresql://alice@db1:5432/images");
        let file = "# comment\n\
                    db2:5432:images:alice:wrong\n\
                    db1:5432:images:alice:p\\:a\\\\ss\n\
                    *:*:*:*:fallback\n";
        assert_eq!(password_in(file, &a).as_deref(), Some("p:a\\ss"));
        let b = address("postgresql://bob@db9:1/other");
        assert_eq!(password_in(file, &b).as_deref(), Some("fallback"));
        assert_eq!(password_in("db1:5432:images:alice\n", &a), None);
    }
}

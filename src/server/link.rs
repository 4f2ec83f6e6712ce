//! The connection to one server, with a deadline on every call.
//!
//! Invariants:
//! - Every call ends within the link's timeout; one that does not, or that breaks the
//!   connection (a FATAL error included), drops it, and the next call connects again.
//! - A link marked [`lost`](Link::lost) does not connect again until its owner says nothing of
//!   the dropped session is still needed (a transaction or a lock it held is gone with it: a call
//!   on a new session would run outside them).

use std::collections::HashMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use tokio::runtime::Runtime;
use tokio::task::JoinHandle;
use tokio_postgres::config::SslMode;
use tokio_postgres::tls::MakeTlsConnect;
use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, Config, NoTls, Row, Socket, Statement};
use tokio_postgres_rustls::MakeRustlsConnect;

use super::address::Tls;
use super::Address;
use crate::error::{Error, Result};

/// How much longer than the busy timeout a call may go unanswered before its connection is
/// dropped: lock waits end at the busy timeout on the server, with an answer.
const NETWORK_GRACE_MS: u64 = 1_000;

/// How long after a call went unanswered the server is not tried again.
const UNANSWERED_PAUSE_MS: u64 = 500;

/// SQLSTATE of "prepared transaction with identifier ... does not exist".
const UNDEFINED_OBJECT: &str = "42704";
/// SQLSTATE of "relation ... does not exist".
const UNDEFINED_TABLE: &str = "42P01";

/// Whether the server refused a statement for naming a table that does not exist.
pub fn is_undefined_table(e: &Error) -> bool {
    matches!(e, Error::Server { source, .. }
        if source.code().map(|c| c.code()) == Some(UNDEFINED_TABLE))
}

/// A parameter of a statement, in the type its column has on the server.
pub type Param = Box<dyn ToSql + Sync + Send>;

/// What a call to a server came to: its result, or the deadline passed.
type Outcome<T> =
    std::result::Result<Result<T, tokio_postgres::Error>, tokio::time::error::Elapsed>;

/// The connection to one server: a runtime of its own, so that each call can end at a deadline.
pub struct Link {
    pub address: Address,
    /// How long the server waits for a lock before it fails the statement.
    lock_timeout_ms: u64,
    /// How long a call may take before the connection is dropped.
    timeout: Duration,
    runtime: Runtime,
    client: Option<(Client, JoinHandle<()>)>,
    statements: HashMap<String, Statement>,
    /// The connection was dropped (it broke, or a call ran past the deadline). While the shard
    /// has a transaction open, no new connection is made: a call on it would run outside that
    /// transaction, which the server has rolled back. Cleared once nothing is open.
    pub lost: bool,
    /// The server did not answer: until then, a new connection is not tried (each attempt
    /// would wait the whole timeout again), so that one statement waits for a silent server
    /// once, and a server that answers again is tried again soon after.
    unanswered_until: Option<Instant>,
}

impl Link {
    /// A link to `address` for a table whose busy timeout is `busy_timeout_ms`: the server
    /// gives up a lock wait at that timeout itself (`lock_timeout`), and a call that gets no
    /// answer at all ends [`NETWORK_GRACE_MS`] later.
    pub fn new(address: Address, busy_timeout_ms: u64) -> Result<Link> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| Error::Internal(format!("starting a server connection's runtime: {e}")))?;
        Ok(Link {
            address,
            lock_timeout_ms: busy_timeout_ms.max(1),
            timeout: Duration::from_millis(busy_timeout_ms + NETWORK_GRACE_MS),
            runtime,
            client: None,
            statements: HashMap::new(),
            lost: false,
            unanswered_until: None,
        })
    }

    fn server_error(&self, what: &str) -> impl FnOnce(tokio_postgres::Error) -> Error + '_ {
        let what = what.to_string();
        move |source| Error::Server {
            server: self.address.to_string(),
            what,
            source,
        }
    }

    /// Runs `future` to its end or the deadline.
    fn run<T>(&self, future: impl Future<Output = Result<T, tokio_postgres::Error>>) -> Outcome<T> {
        // The timer is made inside the runtime, which it needs.
        self.runtime
            .block_on(async { tokio::time::timeout(self.timeout, future).await })
    }

    /// The result of a call; a call that broke the connection or ran past the deadline drops
    /// it (the next call connects again).
    fn outcome<T>(&mut self, what: &str, outcome: Outcome<T>) -> Result<T> {
        match outcome {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(e)) => {
                // A FATAL error ends the session as surely as a broken socket.
                let fatal = e
                    .as_db_error()
                    .is_some_and(|d| matches!(d.severity(), "FATAL" | "PANIC"));
                if e.is_closed() || fatal {
                    self.disconnect();
                }
                Err(self.server_error(what)(e))
            }
            Err(_) => {
                self.disconnect();
                self.unanswered_until = Some(
                    Instant::now() + self.timeout.min(Duration::from_millis(UNANSWERED_PAUSE_MS)),
                );
                Err(Error::ServerTimeout {
                    server: self.address.to_string(),
                    what: what.to_string(),
                    timeout_ms: self.timeout.as_millis() as u64,
                })
            }
        }
    }

    /// Runs `call` on the connection (made first if there is none), within the deadline.
    pub fn call<T>(
        &mut self,
        what: &str,
        call: impl AsyncFnOnce(&Client) -> Result<T, tokio_postgres::Error>,
    ) -> Result<T> {
        self.connect()?;
        let outcome = match &self.client {
            Some((client, _)) => self.run(call(client)),
            None => return Err(Error::Internal("a server connection vanished".into())),
        };
        self.outcome(what, outcome)
    }

    pub fn disconnect(&mut self) {
        if let Some((_, connection)) = self.client.take() {
            connection.abort();
            self.lost = true;
        }
        self.statements.clear();
    }

    pub fn connect(&mut self) -> Result<()> {
        if self.client.is_some() {
            return Ok(());
        }
        if self.lost {
            return Err(Error::ServerLost {
                server: self.address.to_string(),
            });
        }
        if self
            .unanswered_until
            .is_some_and(|until| Instant::now() < until)
        {
            return Err(Error::ServerTimeout {
                server: self.address.to_string(),
                what: "connecting, after it stopped answering".into(),
                timeout_ms: self.timeout.as_millis() as u64,
            });
        }
        let mut config = Config::new();
        config
            .user(&self.address.user)
            .host(&self.address.host)
            .port(self.address.port)
            .dbname(&self.address.database)
            .application_name("imagestore")
            // Every session, made again or not: decisions durable when their commit returns
            // (whatever the server's default), statements outside an explicit isolation level
            // in READ COMMITTED (a fence's UPDATE re-reads the row it waited for, see
            // `fence`), lock waits ending at the busy timeout, and a dead host noticed (its
            // session's locks freed) within about 20 s.
            .options(format!(
                "-c synchronous_commit=on -c default_transaction_isolation=read\\ committed \
                 -c lock_timeout={} -c tcp_keepalives_idle=5 \
                 -c tcp_keepalives_interval=5 -c tcp_keepalives_count=3",
                self.lock_timeout_ms
            ))
            .keepalives_idle(Duration::from_secs(5))
            .connect_timeout(self.timeout);
        if let Some(password) = self.address.password() {
            config.password(password);
        }
        self.client = Some(match &self.address.tls {
            Tls::Off => self.open(&config, NoTls)?,
            Tls::VerifyFull { root_cert } => {
                config.ssl_mode(SslMode::Require);
                let tls = verifying_tls(root_cert.as_deref(), &self.address)?;
                self.open(&config, tls)?
            }
        });
        self.unanswered_until = None;
        Ok(())
    }

    /// Connects with `tls`, and runs the connection on the link's runtime.
    fn open<T>(&mut self, config: &Config, tls: T) -> Result<(Client, JoinHandle<()>)>
    where
        T: MakeTlsConnect<Socket> + 'static,
        T::Stream: Send + 'static,
    {
        let connected = self.run(config.connect(tls));
        let (client, connection) = self.outcome("connecting", connected)?;
        let connection = self.runtime.spawn(async move {
            // Ends when the client is dropped or the connection breaks; a call then fails.
            let _ = connection.await;
        });
        Ok((client, connection))
    }

    /// Statements without parameters, in one round trip (the simple query protocol).
    /// Statements without parameters, in one round trip, and the first column of the rows
    /// they return, as text.
    pub fn batch_rows(&mut self, what: &str, sql: &str) -> Result<Vec<String>> {
        let messages = self.call(what, async |client| client.simple_query(sql).await)?;
        Ok(messages
            .iter()
            .filter_map(|m| match m {
                tokio_postgres::SimpleQueryMessage::Row(row) => row.get(0).map(str::to_string),
                _ => None,
            })
            .collect())
    }

    pub fn batch(&mut self, what: &str, sql: &str) -> Result<()> {
        self.call(what, async |client| client.batch_execute(sql).await)
    }

    fn statement(&mut self, sql: &str) -> Result<Statement> {
        if let Some(statement) = self.statements.get(sql) {
            return Ok(statement.clone());
        }
        let statement = self.call("preparing a statement", async |client| {
            client.prepare(sql).await
        })?;
        self.statements.insert(sql.to_string(), statement.clone());
        Ok(statement)
    }

    pub fn query(&mut self, what: &str, sql: &str, params: &[Param]) -> Result<Vec<Row>> {
        let statement = self.statement(sql)?;
        let params: Vec<&(dyn ToSql + Sync)> = params
            .iter()
            .map(|p| p.as_ref() as &(dyn ToSql + Sync))
            .collect();
        self.call(what, async |client| client.query(&statement, &params).await)
    }

    pub fn execute(&mut self, what: &str, sql: &str, params: &[Param]) -> Result<u64> {
        let statement = self.statement(sql)?;
        let params: Vec<&(dyn ToSql + Sync)> = params
            .iter()
            .map(|p| p.as_ref() as &(dyn ToSql + Sync))
            .collect();
        self.call(what, async |client| {
            client.execute(&statement, &params).await
        })
    }

    /// A statement that may name a prepared transaction the server no longer holds.
    pub fn settle(&mut self, what: &str, sql: &str) -> Result<()> {
        match self.batch(what, sql) {
            Err(Error::Server { source, .. })
                if source.code().map(|c| c.code()) == Some(UNDEFINED_OBJECT) =>
            {
                Ok(())
            }
            other => other,
        }
    }
}

/// TLS that accepts only a server whose certificate the authority in `root_cert` (PEM; else
/// `~/.postgresql/root.crt`, as libpq) signed, for the host name the address gives.
fn verifying_tls(root_cert: Option<&Path>, address: &Address) -> Result<MakeRustlsConnect> {
    let unusable = |detail: String| Error::ServerUnfit {
        server: address.to_string(),
        detail,
    };
    let file = match root_cert {
        Some(file) => file.to_path_buf(),
        None => std::env::var_os("HOME")
            .map(|home| PathBuf::from(home).join(".postgresql/root.crt"))
            .ok_or_else(|| {
                unusable("is to be reached with sslmode=verify-full, but no sslrootcert=FILE names the certificate authority, and there is no HOME for ~/.postgresql/root.crt".into())
            })?,
    };
    let mut roots = rustls::RootCertStore::empty();
    let certificates = CertificateDer::pem_file_iter(&file).map_err(|e| {
        unusable(format!(
            "is to be reached with sslmode=verify-full, but the certificate authority file {} cannot be read ({e}): name it with sslrootcert=FILE",
            file.display()
        ))
    })?;
    for certificate in certificates {
        let added = certificate
            .map_err(|e| e.to_string())
            .and_then(|c| roots.add(c).map_err(|e| e.to_string()));
        if let Err(e) = added {
            return Err(unusable(format!(
                "is to be reached with sslmode=verify-full, but {} holds a certificate that cannot be used ({e})",
                file.display()
            )));
        }
    }
    if roots.is_empty() {
        return Err(unusable(format!(
            "is to be reached with sslmode=verify-full, but {} holds no certificate",
            file.display()
        )));
    }
    // ring's provider, deprecated in rustls for its want of post-quantum key exchange, which
    // PostgreSQL servers (built with OpenSSL 3.0 and older) do not offer either; aws-lc-rs, which
    // has it, is a large C library to build for no gain here.
    #[allow(deprecated)]
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Internal(format!("TLS: {e}")))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(MakeRustlsConnect::new(config))
}

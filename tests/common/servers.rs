//! PostgreSQL servers for the Rust tests, started by `tests/pg_servers.py` (the one place that
//! knows how to start and stop them): on free loopback ports, stopped when this test process
//! ends, however it ends (the helper stops them when its standard input closes).

use std::io::{BufRead, BufReader};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::OnceLock;

pub struct Servers {
    /// One URL a server, of its database `postgres`.
    pub urls: Vec<String>,
    helper: Child,
    stdin: Option<ChildStdin>,
}

impl Drop for Servers {
    /// Closing the helper's input stops its servers; waits until they are gone.
    fn drop(&mut self) {
        drop(self.stdin.take());
        let _ = self.helper.wait();
    }
}

static SERVERS: OnceLock<Option<Servers>> = OnceLock::new();

/// Three servers shared by the tests of this process, or `None` where none can be started
/// (a failure instead in CI, `CI=true`).
pub fn servers() -> Option<&'static Servers> {
    SERVERS.get_or_init(|| start(3, "")).as_ref()
}

/// `count` servers of their own, with `settings` added to their configuration, stopped when
/// the value is dropped.
pub fn start(count: usize, settings: &str) -> Option<Servers> {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/pg_servers.py");
    let mut helper = Command::new("python3")
        .args([script, "serve", &count.to_string(), settings])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("start tests/pg_servers.py");
    let stdin = helper.stdin.take().expect("helper stdin");
    let stdout = helper.stdout.take().expect("helper stdout");
    let mut urls = Vec::new();
    for line in BufReader::new(stdout).lines() {
        let line = line.expect("read the helper's output");
        match line.as_str() {
            "ready" => {
                return Some(Servers {
                    urls,
                    helper,
                    stdin: Some(stdin),
                })
            }
            "unavailable" => {
                assert!(
                    std::env::var("CI").as_deref() != Ok("true"),
                    "PostgreSQL 15 server binaries are needed in CI"
                );
                eprintln!("PostgreSQL servers unavailable: skipping");
                return None;
            }
            url => urls.push(url.to_string()),
        }
    }
    panic!("tests/pg_servers.py ended before its servers were ready");
}

//! The fence of a three-phase table on servers: what keeps a pre-commit or a withdrawal from
//! landing after another host's recovery has read the servers.
//!
//! On local files a shard's pre-commit is written under the writer lock's file lock, and a dead
//! writer's steps die with it. On servers neither holds. The writer lock is an advisory lock of
//! the anchor session, which can be lost (the connection drops, the anchor restarts) while its
//! holder goes on; and a statement whose call broke off (the deadline passed) keeps running on
//! its old backend and can commit later. A two-phase decision is written on the lock's own
//! session, so it cannot outlive the lock; a pre-commit is written by each shard's own session.
//! So each server of a three-phase table keeps one row,
//!
//! ```sql
//! "imagestore_<table id>".fence(owner bigint, pre_committed bigint[])
//! ```
//!
//! and every three-phase step on a server is one UPDATE of that row:
//! - Each acquisition of the writer lock draws a *token* from the anchor's transaction-id
//!   sequence in the same round trip ([`WriterToken`]), so a later holder's token is always the
//!   greater. `owner` is the highest claim made on the row: twice a token, plus one for a
//!   withdrawal.
//! - **Take-over** (recovery, before it reads the server's states): `owner` raised to
//!   2·token, where it is not above it already.
//! - **Pre-commit**: `owner` set to 2·token and the transaction added to `pre_committed`, only
//!   where `owner` ≤ 2·token and the transaction is prepared there.
//! - **Withdrawal**: `owner` set to 2·token + 1 and the transaction removed, only where
//!   `owner` ≤ 2·token + 1; so the same holder's pre-commit that lands late (2·token) is
//!   refused after it.
//!
//! PostgreSQL runs the UPDATEs of one row one after another, and in READ COMMITTED (which every
//! session of ours is in) an UPDATE that waited for another evaluates its condition on `owner`
//! and its new values on the row as that one left it. So on each server, every step of an
//! earlier holder either committed before the take-over (and recovery reads it) or is refused
//! (and its caller reports the outcome unknown). A pre-commit's test that its transaction is
//! prepared is made once, before any wait; a ROLLBACK PREPARED it may miss meanwhile follows a
//! greater claim (a take-over, or its own writer's withdrawal), which the `owner` test refuses,
//! or ends a transaction with no pre-commit anywhere (its vote or confirmation failed).
//! Which transactions a server holds pre-committed is `pre_committed` among those it holds
//! prepared; the list is pruned of the others at each pre-commit.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use super::link::{Link, Param};
use crate::error::{Error, Result};

/// The token drawn with this connection's last acquisition of the writer lock, shared by the
/// anchor (which draws it) and the table's server shards (which claim the fence with it).
/// Zero until the lock was first taken.
#[derive(Clone, Default)]
pub struct WriterToken(Arc<AtomicU64>);

impl WriterToken {
    pub fn set(&self, token: u64) {
        self.0.store(token, Ordering::SeqCst);
    }

    /// The claim a step makes with the current token (`withdrawal`: one above a pre-commit's).
    fn claim(&self, withdrawal: bool) -> Result<i64> {
        match self.0.load(Ordering::SeqCst) {
            0 => Err(Error::Internal(
                "a three-phase step on a server without the writer lock".into(),
            )),
            token => Ok((token as i64) * 2 + i64::from(withdrawal)),
        }
    }
}

/// The fence of one table on one server.
pub struct Fence<'a> {
    /// The table's quoted schema.
    pub schema: &'a str,
    pub token: &'a WriterToken,
}

/// Statements that make the fence, with the table.
pub fn create_sql(schema: &str) -> String {
    format!(
        "CREATE TABLE {schema}.fence(owner bigint NOT NULL, pre_committed bigint[] NOT NULL);
         INSERT INTO {schema}.fence VALUES (0, '{{}}');"
    )
}

/// A statement whose rows (text) are the transactions the fence holds pre-committed, each
/// as `pre_committed <txid>`.
pub fn pre_committed_sql(schema: &str) -> String {
    format!("SELECT 'pre_committed ' || unnest(pre_committed) FROM {schema}.fence")
}

impl Fence<'_> {
    /// Recovery, before it reads the server's states: no earlier holder's step lands after this.
    pub fn take_over(&self, link: &mut Link) -> Result<()> {
        let claim = self.token.claim(false)?;
        let sql = format!(
            "UPDATE {}.fence SET owner = $1 WHERE owner <= $1 RETURNING 1",
            self.schema
        );
        let what = "taking the table over";
        if link.query(what, &sql, &[Box::new(claim)])?.is_empty() {
            return Err(self.refusal(link, claim, what, None));
        }
        Ok(())
    }

    /// Marks prepared transaction `txid` (gid `gid`; this shard's gids are `gid_prefix`, the
    /// txid, `gid_suffix`, then `:` and the participants, or nothing for an older build's)
    /// pre-committed: committed, so durable, when this returns.
    pub fn pre_commit(
        &self,
        link: &mut Link,
        txid: u64,
        gid: String,
        (gid_prefix, gid_suffix): (String, String),
    ) -> Result<()> {
        let claim = self.token.claim(false)?;
        let sql = format!(
            "UPDATE {}.fence SET owner = $1, pre_committed = array_append(ARRAY(
                 SELECT t FROM unnest(pre_committed) t WHERE t <> $2 AND EXISTS (
                     SELECT 1 FROM pg_prepared_xacts x WHERE x.gid = $3::text || t::text || $4::text
                         OR x.gid LIKE $3::text || t::text || $4::text || ':%')), $2)
             WHERE owner <= $1 AND EXISTS (SELECT 1 FROM pg_prepared_xacts WHERE gid = $5::text)
             RETURNING 1",
            self.schema
        );
        let params: [Param; 5] = [
            Box::new(claim),
            Box::new(txid as i64),
            Box::new(gid_prefix),
            Box::new(gid_suffix),
            Box::new(gid),
        ];
        let what = "pre-committing";
        if link.query(what, &sql, &params)?.is_empty() {
            let not_prepared = Error::Internal(format!(
                "server {}: transaction {txid} is not prepared there, so it cannot be pre-committed",
                link.address
            ));
            return Err(self.refusal(link, claim, what, Some(not_prepared)));
        }
        Ok(())
    }

    /// Takes the pre-commit of `txid` back (nothing to take if there is none), so that the
    /// transaction is only prepared there again; a late pre-commit of the same holder is
    /// refused from then on.
    pub fn withdraw(&self, link: &mut Link, txid: u64) -> Result<()> {
        let claim = self.token.claim(true)?;
        let sql = format!(
            "UPDATE {}.fence SET owner = $1, pre_committed = array_remove(pre_committed, $2)
             WHERE owner <= $1 RETURNING 1",
            self.schema
        );
        let what = "withdrawing a pre-commit";
        if link
            .query(what, &sql, &[Box::new(claim), Box::new(txid as i64)])?
            .is_empty()
        {
            return Err(self.refusal(link, claim, what, None));
        }
        Ok(())
    }

    /// Why a step claiming `claim` changed nothing: another holder's claim is above it (the
    /// table was taken over), the row is gone, or else `otherwise`.
    fn refusal(&self, link: &mut Link, claim: i64, what: &str, otherwise: Option<Error>) -> Error {
        let sql = format!("SELECT owner FROM {}.fence", self.schema);
        let owner = match link.query("reading the fence", &sql, &[]) {
            Ok(rows) => rows.first().and_then(|r| r.try_get::<_, i64>(0).ok()),
            Err(e) => return e,
        };
        match (owner, otherwise) {
            (Some(owner), _) if owner > claim => Error::TakenOver {
                server: link.address.to_string(),
                what: what.to_string(),
            },
            (Some(_), Some(otherwise)) => otherwise,
            _ => Error::ServerForeign {
                server: link.address.to_string(),
                detail: "has lost a three-phase table's fence row (it was changed by hand)".into(),
            },
        }
    }
}

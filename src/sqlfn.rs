//! Scalar SQL functions whose errors reach the caller with their own SQLite result code.
//!
//! Every SQL function of the extension is registered here, straight through
//! `sqlite3_create_function_v2`, rather than through rusqlite's wrapper: rusqlite 0.39 sets an
//! error's code and then its message, and setting the message resets the code to SQLITE_ERROR,
//! so a decompression bomb could not answer SQLITE_TOOBIG, a wrong type SQLITE_MISMATCH, or a full
//! disk SQLITE_FULL. Here the message is set first, then the code of [`Error::sqlite_code`].
//!
//! Invariants: a function body runs inside [`catch_panic`], so no panic crosses into SQLite; the
//! arguments it sees are borrowed from SQLite for the call only; its result is copied to SQLite
//! before the call returns.

use std::ffi::{c_int, c_void, CString};

use rusqlite::types::{Value, ValueRef};
use rusqlite::{ffi, Connection};

use crate::error::{catch_panic, Error, Result};

/// One call of a function: its arguments, and the connection running it.
pub struct Call<'a> {
    pub args: Vec<ValueRef<'a>>,
    db: *mut ffi::sqlite3,
}

impl Call<'_> {
    /// Argument `index` as TEXT, or a type error saying `what`.
    pub fn text(&self, index: usize, what: &str) -> Result<String> {
        match self.args.get(index) {
            Some(ValueRef::Text(t)) => std::str::from_utf8(t)
                .map(str::to_string)
                .map_err(|_| Error::WrongType(format!("{what} (as UTF-8 text)"))),
            _ => Err(Error::WrongType(what.to_string())),
        }
    }

    /// The connection running this call (not owned: dropping it leaves the connection open).
    pub fn connection(&self) -> Result<Connection> {
        // SAFETY: `db` is the handle SQLite gave for this call; it stays open while the call
        // runs, and the Connection made from it is used and dropped within the call.
        unsafe { Connection::from_handle(self.db) }.map_err(|e| Error::Internal(e.to_string()))
    }

    /// The raw handle of the connection running this call.
    pub fn handle(&self) -> *mut ffi::sqlite3 {
        self.db
    }

    /// Refuses a call made inside an open transaction, for a function that commits on its own
    /// or copies only what is committed (`what` names it in the message).
    pub fn outside_transaction(&self, what: &str) -> Result<()> {
        if in_transaction(self.db) {
            return Err(Error::InTransaction(format!(
                "{what} commits on its own and sees only what is committed"
            )));
        }
        Ok(())
    }
}

/// Whether connection `db` has a transaction open.
fn in_transaction(db: *mut ffi::sqlite3) -> bool {
    // SAFETY: `db` is the live connection running the current call.
    unsafe { ffi::sqlite3_get_autocommit(db) == 0 }
}

/// What a function does with a call.
pub type Body = Box<dyn Fn(&Call<'_>) -> Result<Value> + Send + 'static>;

/// What kind of function is registered, for SQLite's flags.
#[derive(Clone, Copy)]
pub enum Kind {
    /// Depends on its arguments only and touches nothing: deterministic, and innocuous (usable
    /// in indexes, generated columns, views and triggers even with `trusted_schema=OFF`).
    Pure,
    /// Reads or writes files or tables: callable from top-level SQL only, never from a view or
    /// trigger that a database file could bring along.
    Operating,
}

/// Registers scalar function `name` taking `arity` arguments (-1: any number).
pub fn register(
    conn: &Connection,
    name: &str,
    arity: c_int,
    kind: Kind,
    body: Body,
) -> rusqlite::Result<()> {
    let c_name = CString::new(name).map_err(|_| {
        rusqlite::Error::InvalidFunctionParameterType(0, rusqlite::types::Type::Text)
    })?;
    let flags = ffi::SQLITE_UTF8
        | match kind {
            Kind::Pure => ffi::SQLITE_DETERMINISTIC | ffi::SQLITE_INNOCUOUS,
            Kind::Operating => ffi::SQLITE_DIRECTONLY,
        };
    let user_data = Box::into_raw(Box::new(body));
    // SAFETY: the handle is a live connection; `user_data` is a leaked Box<Body> that SQLite
    // owns from here on and hands back to `drop_body` exactly once (also when registering fails,
    // as sqlite3_create_function_v2 documents), and to `call` for every call meanwhile.
    let rc = unsafe {
        ffi::sqlite3_create_function_v2(
            conn.handle(),
            c_name.as_ptr(),
            arity,
            flags,
            user_data.cast(),
            Some(call),
            None,
            None,
            Some(drop_body),
        )
    };
    if rc == ffi::SQLITE_OK {
        Ok(())
    } else {
        Err(rusqlite::Error::SqliteFailure(
            ffi::Error::new(rc),
            Some(format!("registering SQL function {name}")),
        ))
    }
}

unsafe extern "C" fn drop_body(user_data: *mut c_void) {
    // SAFETY: `user_data` is the Box<Body> leaked in `register`; SQLite calls this once.
    drop(unsafe { Box::from_raw(user_data.cast::<Body>()) });
}

unsafe extern "C" fn call(
    ctx: *mut ffi::sqlite3_context,
    argc: c_int,
    argv: *mut *mut ffi::sqlite3_value,
) {
    // SAFETY: SQLite passes the user data given at registration (a live Box<Body>), and `argc`
    // valid argument values that live until this call returns; the borrows made here end with it.
    let (body, args, db) = unsafe {
        let body = &*ffi::sqlite3_user_data(ctx).cast::<Body>();
        let count = usize::try_from(argc).unwrap_or(0);
        let args: Option<Vec<ValueRef<'_>>> = (0..count).map(|i| value_ref(*argv.add(i))).collect();
        (body, args, ffi::sqlite3_context_db_handle(ctx))
    };
    let Some(args) = args else {
        // SAFETY: `ctx` is this call's context.
        unsafe { ffi::sqlite3_result_error_nomem(ctx) };
        return;
    };
    let outcome = catch_panic(|| body(&Call { args, db }));
    // SAFETY: `ctx` is this call's context; results are copied (SQLITE_TRANSIENT).
    unsafe {
        match outcome {
            Ok(value) => set_result(ctx, &value),
            Err(error) => set_error(ctx, &error),
        }
    }
}

/// A borrowed view of an argument; `None` when SQLite ran out of memory making its text or
/// blob (a null pointer for a non-empty value).
///
/// # Safety
/// `value` is a valid argument of the running call; the view must not outlive the call.
unsafe fn value_ref<'a>(value: *mut ffi::sqlite3_value) -> Option<ValueRef<'a>> {
    // SAFETY: as the caller guarantees. The text or blob pointer is taken before its length,
    // as SQLite requires, and is valid for that many bytes until the call returns.
    unsafe {
        Some(match ffi::sqlite3_value_type(value) {
            ffi::SQLITE_INTEGER => ValueRef::Integer(ffi::sqlite3_value_int64(value)),
            ffi::SQLITE_FLOAT => ValueRef::Real(ffi::sqlite3_value_double(value)),
            ffi::SQLITE_TEXT => {
                let text = ffi::sqlite3_value_text(value);
                let len = usize::try_from(ffi::sqlite3_value_bytes(value)).unwrap_or(0);
                ValueRef::Text(bytes(text, len)?)
            }
            ffi::SQLITE_BLOB => {
                let blob = ffi::sqlite3_value_blob(value).cast::<u8>();
                let len = usize::try_from(ffi::sqlite3_value_bytes(value)).unwrap_or(0);
                ValueRef::Blob(bytes(blob, len)?)
            }
            _ => ValueRef::Null,
        })
    }
}

/// `len` bytes at `ptr`: none for a null pointer and no bytes; `None` for a null pointer and
/// some (SQLite could not allocate them).
///
/// # Safety
/// A non-null `ptr` is valid for reads of `len` bytes for `'a`.
unsafe fn bytes<'a>(ptr: *const u8, len: usize) -> Option<&'a [u8]> {
    match (ptr.is_null(), len) {
        (true, 0) => Some(&[]),
        (true, _) => None,
        // SAFETY: as the caller guarantees.
        (false, _) => Some(unsafe { std::slice::from_raw_parts(ptr, len) }),
    }
}

/// # Safety
/// `ctx` is the running call's context.
unsafe fn set_result(ctx: *mut ffi::sqlite3_context, value: &Value) {
    // SAFETY: as the caller guarantees; SQLITE_TRANSIENT makes SQLite copy text and blobs
    // before these calls return, so the borrowed buffers may go right after.
    unsafe {
        match value {
            Value::Null => ffi::sqlite3_result_null(ctx),
            Value::Integer(i) => ffi::sqlite3_result_int64(ctx, *i),
            Value::Real(r) => ffi::sqlite3_result_double(ctx, *r),
            Value::Text(t) => ffi::sqlite3_result_text64(
                ctx,
                t.as_ptr().cast(),
                t.len() as u64,
                ffi::SQLITE_TRANSIENT(),
                ffi::SQLITE_UTF8 as u8,
            ),
            Value::Blob(b) => ffi::sqlite3_result_blob64(
                ctx,
                b.as_ptr().cast(),
                b.len() as u64,
                ffi::SQLITE_TRANSIENT(),
            ),
        }
    }
}

/// The message first, then the code: `sqlite3_result_error` resets the code to SQLITE_ERROR.
///
/// # Safety
/// `ctx` is the running call's context.
unsafe fn set_error(ctx: *mut ffi::sqlite3_context, error: &Error) {
    let message = CString::new(error.to_string().replace('\0', " ")).unwrap_or_default();
    // SAFETY: as the caller guarantees; SQLite copies the message.
    unsafe {
        let in_transaction = in_transaction(ffi::sqlite3_context_db_handle(ctx));
        ffi::sqlite3_result_error(ctx, message.as_ptr(), -1);
        ffi::sqlite3_result_error_code(ctx, reported_code(error.sqlite_code(), in_transaction));
    }
}

/// The code a function reports for an error with `code`. SQLite takes an I/O, disk-full,
/// out-of-memory or interrupt code from a statement for its own failure and rolls back the
/// caller's open transaction, and a plain SQLITE_CORRUPT for damage to the caller's database
/// (refusing its writes until the transaction ends). A shard's or a backup's trouble is
/// neither: inside a transaction those codes become SQLITE_ERROR (the message keeps the
/// cause), and SQLITE_CORRUPT always becomes SQLITE_CORRUPT_VTAB.
fn reported_code(code: c_int, in_transaction: bool) -> c_int {
    let host_failure = matches!(
        code & 0xff,
        ffi::SQLITE_IOERR | ffi::SQLITE_FULL | ffi::SQLITE_NOMEM | ffi::SQLITE_INTERRUPT
    );
    match code {
        ffi::SQLITE_CORRUPT => ffi::SQLITE_CORRUPT_VTAB,
        _ if host_failure && in_transaction => ffi::SQLITE_ERROR,
        _ => code,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_that_would_fail_the_callers_transaction_are_not_reported_inside_one() {
        assert_eq!(reported_code(ffi::SQLITE_FULL, false), ffi::SQLITE_FULL);
        assert_eq!(reported_code(ffi::SQLITE_FULL, true), ffi::SQLITE_ERROR);
        assert_eq!(
            reported_code(ffi::SQLITE_IOERR_WRITE, true),
            ffi::SQLITE_ERROR
        );
        assert_eq!(
            reported_code(ffi::SQLITE_CORRUPT, false),
            ffi::SQLITE_CORRUPT_VTAB
        );
        assert_eq!(reported_code(ffi::SQLITE_TOOBIG, true), ffi::SQLITE_TOOBIG);
        assert_eq!(
            reported_code(ffi::SQLITE_CORRUPT_VTAB, true),
            ffi::SQLITE_CORRUPT_VTAB
        );
    }
}

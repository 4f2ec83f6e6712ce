//! The module's registration, with SQLite's version 2 callbacks rusqlite does not wrap
//! (savepoints, rename), each run inside `catch_panic`.

use super::*;

// ---- savepoints: module version 2 -------------------------------------------------------

/// Runs a savepoint callback on the table behind `vtab`.
///
/// # Safety
/// `vtab` must be a pointer SQLite received from this module's xCreate/xConnect, i.e. to an
/// `ImageTable` (whose first field is the `sqlite3_vtab`, `#[repr(C)]`).
unsafe fn with_table(
    vtab: *mut sqlite3_vtab,
    body: impl FnOnce(&ImageTable) -> Result<()>,
) -> c_int {
    // SAFETY: by this function's contract; SQLite calls one method at a time per connection.
    let table = unsafe { &*(vtab as *const ImageTable) };
    match catch_panic(|| body(table)) {
        Ok(()) => ffi::SQLITE_OK,
        Err(e) => {
            // SAFETY: vtab is valid (above); set_error_message owns the SQLite allocation rules.
            unsafe { set_error_message(vtab, &e.to_string()) };
            e.sqlite_code()
        }
    }
}

/// Hands SQLite an error message for a vtab method (it frees the old one and later this one).
unsafe fn set_error_message(vtab: *mut sqlite3_vtab, message: &str) {
    let Ok(text) = CString::new(message) else {
        return;
    };
    let bytes = text.as_bytes_with_nul();
    // SAFETY: sqlite3_malloc returns memory SQLite can free; we copy `bytes.len()` bytes into a
    // block of that size; zErrMsg is freed by SQLite with sqlite3_free.
    unsafe {
        let buf = ffi::sqlite3_malloc(bytes.len() as c_int) as *mut c_char;
        if buf.is_null() {
            return;
        }
        std::ptr::copy_nonoverlapping(bytes.as_ptr() as *const c_char, buf, bytes.len());
        if !(*vtab).zErrMsg.is_null() {
            ffi::sqlite3_free((*vtab).zErrMsg as *mut std::ffi::c_void);
        }
        (*vtab).zErrMsg = buf;
    }
}

unsafe extern "C" fn x_savepoint(vtab: *mut sqlite3_vtab, level: c_int) -> c_int {
    // SAFETY: SQLite calls this with a vtab of this module.
    unsafe {
        with_table(vtab, |t| {
            let core = t.core()?;
            let mut coordinator = core.coordinator.borrow_mut();
            coordinator.savepoint(&mut core.shards.borrow_mut(), level)
        })
    }
}

unsafe extern "C" fn x_release(vtab: *mut sqlite3_vtab, level: c_int) -> c_int {
    // SAFETY: as for x_savepoint.
    unsafe {
        with_table(vtab, |t| {
            let core = t.core()?;
            let mut coordinator = core.coordinator.borrow_mut();
            coordinator.release(&mut core.shards.borrow_mut(), level)
        })
    }
}

unsafe extern "C" fn x_rollback_to(vtab: *mut sqlite3_vtab, level: c_int) -> c_int {
    // SAFETY: as for x_savepoint.
    unsafe {
        with_table(vtab, |t| {
            let core = t.core()?;
            let mut coordinator = core.coordinator.borrow_mut();
            core.row_ids.borrow_mut().forget();
            core.data_changed();
            coordinator.rollback_to(&mut core.shards.borrow_mut(), level)
        })
    }
}

unsafe extern "C" fn x_rename(vtab: *mut sqlite3_vtab, _new_name: *const c_char) -> c_int {
    // SAFETY: as for x_savepoint.
    unsafe {
        with_table(vtab, |_| {
            Err(Error::BadArgument(
                "an imagestore table cannot be renamed (its shard files are named after it); \
                 create a new table and copy the rows"
                    .into(),
            ))
        })
    }
}

/// rusqlite's module for this table, raised to version 2 with savepoint callbacks.
pub(super) struct ModuleV2(ffi::sqlite3_module);
// SAFETY: the module is an immutable table of function pointers, shared read-only by SQLite.
unsafe impl Sync for ModuleV2 {}
unsafe impl Send for ModuleV2 {}

pub(super) static MODULE: std::sync::OnceLock<ModuleV2> = std::sync::OnceLock::new();

/// Registers the `imagestore` module on a connection.
pub fn register(conn: &Connection) -> rusqlite::Result<()> {
    let module = MODULE.get_or_init(|| {
        let rusqlite_module = update_module_with_tx::<ImageTable>();
        // SAFETY: rusqlite's `Module` is `#[repr(transparent)]` over `ffi::sqlite3_module`, so a
        // pointer to it is a valid pointer to the module struct, which is plain data we copy.
        let base: ffi::sqlite3_module =
            unsafe { std::ptr::read(rusqlite_module as *const _ as *const ffi::sqlite3_module) };
        ModuleV2(ffi::sqlite3_module {
            iVersion: 2,
            xSavepoint: Some(x_savepoint),
            xRelease: Some(x_release),
            xRollbackTo: Some(x_rollback_to),
            xRename: Some(x_rename),
            ..base
        })
    });
    let name = c"imagestore";
    // SAFETY: conn.handle() is a valid connection; the module is 'static; no client data.
    let rc = unsafe {
        ffi::sqlite3_create_module_v2(
            conn.handle(),
            name.as_ptr(),
            &module.0,
            std::ptr::null_mut(),
            None,
        )
    };
    if rc == ffi::SQLITE_OK {
        Ok(())
    } else {
        Err(rusqlite::Error::SqliteFailure(
            ffi::Error::new(rc),
            Some("could not register module imagestore".into()),
        ))
    }
}

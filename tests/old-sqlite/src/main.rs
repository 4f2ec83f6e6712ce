//! `old-sqlite-loader LIBRARY`: opens an in-memory database with the SQLite this program links
//! (3.33.0), loads LIBRARY as an extension, and prints `rc=<code> <message>`.

use std::ffi::{CStr, CString};
use std::ptr;

use libsqlite3_sys as ffi;

fn main() {
    let Some(library) = std::env::args().nth(1) else {
        eprintln!("usage: old-sqlite-loader LIBRARY");
        std::process::exit(2);
    };
    let library = CString::new(library).expect("a path without NUL bytes");
    // SAFETY: plain use of the C API on a connection this function opens and closes; every
    // pointer passed is valid for the call, and the error message is freed with sqlite3_free.
    unsafe {
        let mut db = ptr::null_mut();
        assert_eq!(
            ffi::sqlite3_open(c":memory:".as_ptr(), &mut db),
            ffi::SQLITE_OK
        );
        ffi::sqlite3_enable_load_extension(db, 1);
        let mut message: *mut std::os::raw::c_char = ptr::null_mut();
        let rc = ffi::sqlite3_load_extension(db, library.as_ptr(), ptr::null(), &mut message);
        let text = if message.is_null() {
            String::new()
        } else {
            let text = CStr::from_ptr(message).to_string_lossy().into_owned();
            ffi::sqlite3_free(message.cast());
            text
        };
        let version = CStr::from_ptr(ffi::sqlite3_libversion()).to_string_lossy();
        println!("sqlite={version} rc={rc} {text}");
        ffi::sqlite3_close(db);
    }
}

"""What loading the extension registers: every SQL function with its number of arguments, and
every module, pinned here, so that a function added, dropped or renamed (or an arity changed)
is a decision this file records, not an accident. Oracle: SQLite's own `pragma_function_list`
and `pragma_module_list`."""
from harness import connect

FUNCTIONS = {
    # The operating functions.
    ("imagestore_backup", 2), ("imagestore_check", 1), ("imagestore_derive", -1),
    ("imagestore_derive_missing", -1), ("imagestore_resolve", 2), ("imagestore_transactions", 1), ("imagestore_verify", 1),
    ("imagestore_version", 0),
    # The per-image functions.
    ("image_adjust", 3), ("image_blur", 2), ("image_convert", 2), ("image_convert", 3),
    ("image_crop", 5), ("image_denoise", 2), ("image_distance", 2), ("image_equalize", 1),
    ("image_exif", 1), ("image_flip", 2), ("image_grayscale", 1), ("image_info", 1), ("image_otsu", 1),
    ("image_phash", 1), ("image_phash", 2), ("image_regions", 1), ("image_regions", 2),
    ("image_resize", 3), ("image_resize", 4), ("image_rotate", 2), ("image_sharpen", 2),
    ("image_sharpen", 3), ("image_threshold", 1), ("image_threshold", 2),
    ("image_thumbnail", 2), ("image_thumbnail", 3), ("image_thumbnail", 4),
}

MODULES = {
    "imagestore",                # the table
    "imagestore_after_commit",   # internal: work that waits for the host's commit
    "imagestore_transaction",    # internal: one snapshot for the reads of a transaction
}


def test_the_registered_functions_are_exactly_these(tmp_path):
    con = connect(tmp_path / "x.db")
    found = set(con.execute(
        "SELECT name, narg FROM pragma_function_list WHERE name LIKE 'image%'"))
    assert found == FUNCTIONS, (f"added: {sorted(found - FUNCTIONS)}, "
                                f"missing: {sorted(FUNCTIONS - found)}")


def test_the_registered_modules_are_exactly_these(tmp_path):
    con = connect(tmp_path / "x.db")
    found = {name for (name,) in con.execute(
        "SELECT name FROM pragma_module_list WHERE name LIKE 'image%'")}
    assert found == MODULES

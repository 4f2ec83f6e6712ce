"""Shared helpers for the imagestore Python tests.

Paths (repo root, extension library, corpus), the corpus manifest (the oracle
for format/width/height/bytes/hash), the shard placement function from the
spec, an apsw connection factory with the extension loaded, and the expected
error-message patterns -- kept here, in one place, so they are easy to adjust.
"""
import csv
import os
import re
from pathlib import Path

import apsw

REPO_ROOT = Path(__file__).resolve().parent.parent
CORPUS = (REPO_ROOT / ".." / "shared" / "corpus").resolve()
LIB = Path(os.environ.get("IMAGESTORE_LIB",
                          REPO_ROOT / "target" / "release" / "libimagestore.so")).resolve()

# Case-insensitive regexes for the error messages the spec describes.
# `statement error @name` in tests/sql/*.test refers to these.
ERRORS = {
    # Each pattern is the message the table gives, in part: a wrong message is a failure.
    "derived": r"column \w+ is derived from data and cannot be written; write data instead",
    "not_image": r"row id -?\d+ \('[^']*'\): data is not an image",
    "null_data": r"data is not an image but NULL; every row holds an image",
    "unique": r"UNIQUE constraint failed: \w+\.id \(id -?\d+ already exists\)",
    "unknown_option": r"unknown option '[^']+'; the options are shards, ",
    "bad_shards": r"shards=\S+: (a table has from 1 to \d+ shards|expected a number of shards or a quoted list of files)",
    "duplicate_shard": r"is listed twice; each shard needs its own file",
    "memory_needs_paths": r"a table in a :memory: or temporary database needs explicit shard paths",
    "open_shard": (r"shard file .* is missing; restore it from a backup"
                   r"|belongs to another table than"
                   r"|is shard \d+ of \d+, but the table lists it as shard \d+ of \d+"),
    # Used by test_hostile_input.py.
    "too_big": r"image of \d+x\d+ pixels exceeds the table's limit of \d+ pixels \(table argument max_pixels=\)",
    "max_pixels": r"exceeds the table's limit of \d+ pixels \(table argument max_pixels=\)",
    "data_type": r"data is not an image but (INTEGER|REAL|TEXT); store the image file's bytes as a BLOB",
    "name_blob": r"name must be TEXT, not a BLOB",
    "id_type": r"id must be an integer, not (REAL|TEXT|BLOB)",
    "readonly_column": r"column \w+ is derived from data and cannot be written",
    # CREATE naming a path that exists (a directory, a non-SQLite file).
    "existing_path": r"shard files .* already exist\. A new table never takes over files it did not make",
    "shadow_column": r"column \w+ is built in; choose another name",
    "bad_column_type": r"type '\w+' is not one of TEXT, INTEGER, REAL, BLOB, NUMERIC",
    "bad_index_column": r"index\(.*'?(nope|data)'? is not a column an index can hold",
    "index_twice": r"listed twice|declared twice",
    "index_empty": r"index\(\): '' is not a column",
    "logged_commit_max": r"logged_commit_max=.*expected a whole number from 0 to 67108864",
}


def error_re(name):
    return re.compile(ERRORS[name], re.IGNORECASE)


def splitmix64(x):
    """The spec's placement hash: shard = splitmix64(id) % shard_count."""
    mask = (1 << 64) - 1
    z = (x + 0x9E3779B97F4A7C15) & mask
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & mask
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & mask
    return z ^ (z >> 31)


def shard_of(rowid, shard_count):
    return splitmix64(rowid & ((1 << 64) - 1)) % shard_count


def manifest():
    """Rows of corpus/manifest.tsv as dicts with int width/height/frames/bytes."""
    with open(CORPUS / "manifest.tsv", newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    for r in rows:
        for k in ("width", "height", "frames", "bytes"):
            r[k] = int(r[k])
    return rows


def pillow_srgb(im):
    """`im` (a loaded Pillow image) as a colour-managed viewer shows it, the oracle for
    imagestore's colour rule: converted to sRGB from its ICC profile by LittleCMS (Pillow's
    ImageCms, perceptual intent), an RGB profile on RGB(A) or palette pixels, a gray one on gray
    pixels; left alone without a profile, or with one LittleCMS cannot read or that does not
    fit the pixels. RGB pixels are converted in place, so the EXIF orientation stays readable;
    the result holds no profile."""
    from io import BytesIO
    from PIL import ImageCms
    icc = im.info.get("icc_profile")
    if not icc:
        return im
    try:
        source = ImageCms.ImageCmsProfile(BytesIO(icc))
    except (OSError, ImageCms.PyCMSError):
        return im
    space = source.profile.xcolor_space.strip()
    srgb = ImageCms.createProfile("sRGB")
    if im.mode == "P":
        im = im.convert("RGBA" if "transparency" in im.info else "RGB")
    if space == "RGB" and im.mode in ("RGB", "RGBA"):
        ImageCms.profileToProfile(im, source, srgb, inPlace=True)
    elif space == "GRAY" and im.mode == "L":
        gray = ImageCms.profileToProfile(im, source, srgb, outputMode="RGB").getchannel("G")
        gray.info = dict(im.info)
        im = gray
    im.info.pop("icc_profile", None)
    return im


def corpus_bytes(name):
    return (CORPUS / "images" / name).read_bytes()


def require_lib():
    if not LIB.exists():
        raise AssertionError(f"extension not built: {LIB} (set IMAGESTORE_LIB or build it)")
    return str(LIB)


def _readfile(path):
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError:
        return None


def _writefile(path, data):
    if isinstance(data, str):
        data = data.encode()
    if data is None:
        data = b""
    with open(path, "wb") as f:
        return f.write(data)


def connect(path, load=True):
    """An apsw connection to `path` with the extension loaded and the shell's
    readfile()/writefile() registered so scripts behave the same in both."""
    con = apsw.Connection(str(path))
    con.set_busy_timeout(5000)
    con.create_scalar_function("readfile", _readfile, 1)
    con.create_scalar_function("writefile", _writefile, 2)
    if load:
        con.enable_load_extension(True)
        con.load_extension(require_lib())
    return con


def shard_paths(db_path, table, shards):
    """Default shard file names for `shards=N`: <dbstem>.<table>.shard<i>.db."""
    db_path = Path(db_path)
    return [db_path.parent / f"{db_path.stem}.{table}.shard{i}.db" for i in range(shards)]

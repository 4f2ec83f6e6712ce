"""Map-tile lookups by (z, x, y): imagestore with a declared index against plain SQLite's
MBTiles layout, measured in one run on one machine.

Tiles: the corpus's smallest image (4.4 KB GIF), at z = 14 on a square grid. Tables:
  - plain: MBTiles' `tiles(zoom_level, tile_column, tile_row, tile_data)` with its unique index
    on (zoom_level, tile_column, tile_row), one WAL-mode file;
  - imagestore, 8 shards, `z, x, y` columns with `index(z, x, y)`;
  - imagestore, 8 shards, the same columns without an index (the equality is still pushed down to
    the shards, which then scan);
  - imagestore, 8 shards, the tile's key as its id (`id = (z << 40) | (x << 20) | y`): a lookup by id
    reads one shard.
Each looks up the same random tiles; the times are medians over rounds, in microseconds a lookup.

Usage: python3 tests/bench/tile_lookup.py [--tiles 40000] [--lookups 2000] [--csv out.csv]
Not part of the test run.
"""
import argparse
import os
import random
import statistics
import tempfile
import time

import apsw

from report import report  # tests/bench/report.py

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
LIB = os.environ.get("IMAGESTORE_LIB", os.path.join(ROOT, "target", "release", "libimagestore.so"))
TILE = open(os.path.join(ROOT, "..", "shared", "corpus", "images", "no_time_for_that_tiny.gif"), "rb").read()
ZOOM = 14


def grid(tiles):
    side = int(tiles ** 0.5)
    return [(ZOOM, x, y) for x in range(side) for y in range(side)]


def plain(folder, cells):
    con = apsw.Connection(os.path.join(folder, "plain.mbtiles"))
    con.execute("PRAGMA journal_mode=WAL")
    con.execute("CREATE TABLE tiles(zoom_level INTEGER, tile_column INTEGER, tile_row INTEGER, tile_data BLOB)")
    con.execute("CREATE UNIQUE INDEX tile_index ON tiles(zoom_level, tile_column, tile_row)")
    with con:
        con.executemany("INSERT INTO tiles VALUES (?, ?, ?, ?)", [(z, x, y, TILE) for z, x, y in cells])
    return con, "SELECT tile_data FROM tiles WHERE zoom_level = ? AND tile_column = ? AND tile_row = ?"


def imagestore(folder, cells, layout):
    con = apsw.Connection(os.path.join(folder, f"imagestore-{layout}.db"))
    con.enable_load_extension(True)
    con.load_extension(LIB)
    index = ", index(z, x, y)" if layout == "index" else ""
    con.execute(f"CREATE VIRTUAL TABLE tiles USING imagestore(shards=8, z INTEGER, x INTEGER, y INTEGER{index})")
    with con:
        con.executemany("INSERT INTO tiles(id, data, z, x, y) VALUES (?, ?, ?, ?, ?)",
                        [(tile_id(z, x, y), TILE, z, x, y) for z, x, y in cells])
    if layout == "key":
        return con, "SELECT data FROM tiles WHERE id = (? << 40) | (? << 20) | ?"
    return con, "SELECT data FROM tiles WHERE z = ? AND x = ? AND y = ?"


def tile_id(z, x, y):
    return z << 40 | x << 20 | y


def per_lookup_us(con, query, wanted, rounds=5):
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        for cell in wanted:
            (data,) = con.execute(query, cell).fetchone()
            assert data == TILE
        times.append((time.perf_counter() - start) / len(wanted))
    return statistics.median(times) * 1e6


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--tiles", type=int, default=40000)
    parser.add_argument("--lookups", type=int, default=2000)
    parser.add_argument("--csv")
    args = parser.parse_args()
    cells = grid(args.tiles)
    wanted = random.Random(7).sample(cells, args.lookups)
    with tempfile.TemporaryDirectory(dir=os.environ.get("IMAGESTORE_BENCH_DIR", ROOT + "/target")) as folder:
        base = per_lookup_us(*plain(folder, cells), wanted)
        indexed = per_lookup_us(*imagestore(folder, cells, "index"), wanted)
        keyed = per_lookup_us(*imagestore(folder, cells, "key"), wanted)
        # Without an index every lookup scans every shard: a few lookups are enough.
        scanned = per_lookup_us(*imagestore(folder, cells, "none"), wanted[:20], rounds=3)
    rows = [("imagestore, index(z, x, y)", indexed, base, indexed / base),
            ("imagestore, id = (z << 40) | (x << 20) | y", keyed, base, keyed / base),
            ("imagestore, no index (pushed-down scan)", scanned, base, scanned / base)]
    report(f"tile lookup by (z, x, y), {len(cells)} tiles, median us a lookup",
           ("table", "imagestore us", "MBTiles us", "ratio"), rows, args.csv)

if __name__ == "__main__":
    main()

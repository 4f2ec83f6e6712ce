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
    [--against OLD.so]
With --against, another build of the extension (say the last release's) answers the same lookups
on tables of its own in the same run, the two builds' rounds interleaved, and the table gives
this build's time over that one's. Not part of the test run.
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


def imagestore(folder, cells, layout, lib=LIB):
    con = apsw.Connection(os.path.join(folder, f"imagestore-{layout}-{abs(hash(lib))}.db"))
    con.enable_load_extension(True)
    con.load_extension(lib)
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
    return per_lookup_us_together([(con, query)], wanted, rounds)[0]


def per_lookup_us_together(tables, wanted, rounds=5):
    """`per_lookup_us` of several (connection, query) pairs, their rounds interleaved (which goes
    first alternates), so that the machine's drift weighs on each alike."""
    times = [[] for _ in tables]
    for r in range(rounds):
        order = range(len(tables)) if r % 2 == 0 else reversed(range(len(tables)))
        for i in order:
            con, query = tables[i]
            start = time.perf_counter()
            for cell in wanted:
                (data,) = con.execute(query, cell).fetchone()
                assert data == TILE
            times[i].append((time.perf_counter() - start) / len(wanted))
    return [statistics.median(t) * 1e6 for t in times]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--tiles", type=int, default=40000)
    parser.add_argument("--lookups", type=int, default=2000)
    parser.add_argument("--csv")
    parser.add_argument("--against", help="another build of libimagestore.so to compare with")
    args = parser.parse_args()
    cells = grid(args.tiles)
    wanted = random.Random(7).sample(cells, args.lookups)
    layouts = [("index", "imagestore, index(z, x, y)", wanted, 5),
               ("key", "imagestore, id = (z << 40) | (x << 20) | y", wanted, 5),
               # Without an index every lookup scans every shard: a few lookups are enough.
               ("none", "imagestore, no index (pushed-down scan)", wanted[:20], 3)]
    rows = []
    with tempfile.TemporaryDirectory(dir=os.environ.get("IMAGESTORE_BENCH_DIR", ROOT + "/target")) as folder:
        base = per_lookup_us(*plain(folder, cells), wanted)
        for layout, label, lookups, rounds in layouts:
            libs = [LIB] + ([args.against] if args.against else [])
            times = per_lookup_us_together([imagestore(folder, cells, layout, lib) for lib in libs],
                                           lookups, rounds)
            row = (label, times[0], base, times[0] / base)
            rows.append(row + ((times[1], times[0] / times[1]) if args.against else ()))
    columns = ("table", "imagestore us", "MBTiles us", "ratio")
    report(f"tile lookup by (z, x, y), {len(cells)} tiles, median us a lookup",
           columns + (("other build us", "/ other build") if args.against else ()), rows, args.csv)

if __name__ == "__main__":
    main()

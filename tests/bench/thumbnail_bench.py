"""Thumbnail speed: imagestore's image_thumbnail against Pillow and libvips, in one run.

For each corpus image of at least 1 megapixel (the JPEGs and WebPs up to 4096x4096), each library
decodes, makes a thumbnail that fits 256x256, and encodes it in the input's format; best of
REPEATS runs per image, summed. Also times imagestore_derive against a row-at-a-time UPDATE doing
the same work, over the whole corpus (256-px WebP thumbnails) and over the corpus JPEGs 20 times
each (a photo library's shape: 256-px JPEG thumbnails); and image_phash over the corpus against
the imagehash package's phash.

Usage: python3 tests/bench/thumbnail_bench.py [repeats]   (needs pillow, pyvips, pyvips-binary).
Not part of the test run.
"""
import io
import os
import sys
import tempfile
import time
from pathlib import Path

import apsw
from PIL import Image

ROOT = Path(__file__).resolve().parents[2]
LIB = os.environ.get("IMAGESTORE_LIB", str(ROOT / "target" / "release" / "libimagestore.so"))
CORPUS = ROOT.parent / "shared" / "corpus" / "images"


def best(fn, repeats):
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def pillow_thumb(data):
    im = Image.open(io.BytesIO(data))
    fmt = im.format
    im.thumbnail((256, 256))
    out = io.BytesIO()
    im.save(out, fmt if fmt in ("JPEG", "PNG", "WEBP", "GIF") else "PNG")
    return out.getvalue()


def main():
    repeats = int(sys.argv[1]) if len(sys.argv) > 1 else 3
    try:
        import pyvips
    except ImportError:
        pyvips = None
    con = apsw.Connection(":memory:")
    con.enable_load_extension(True)
    con.load_extension(LIB)
    images = []
    for p in sorted(CORPUS.iterdir()):
        im = Image.open(p)
        if im.width * im.height >= 1_000_000:
            images.append((p.name, p.read_bytes(), p.suffix.lstrip(".")))
    totals = {"imagestore": 0.0, "pillow": 0.0, "libvips": 0.0}
    print(f"{'image':28} {'imagestore ms':>14} {'Pillow ms':>10} {'libvips ms':>11} {'/ Pillow':>9} {'/ libvips':>10}")
    for name, data, ext in images:
        ours = best(lambda: con.execute("SELECT image_thumbnail(?, 256)", (data,)).fetchall(), repeats)
        pil = best(lambda: pillow_thumb(data), repeats)
        vips = best(lambda: pyvips.Image.thumbnail_buffer(data, 256).write_to_buffer("." + ext), repeats) if pyvips else float("nan")
        totals["imagestore"] += ours
        totals["pillow"] += pil
        totals["libvips"] += vips
        print(f"{name:28} {ours * 1000:14.1f} {pil * 1000:10.1f} {vips * 1000:11.1f} {ours / pil:9.2f} {ours / vips:10.2f}")
    print(f"{'total':28} {totals['imagestore'] * 1000:14.1f} {totals['pillow'] * 1000:10.1f} {totals['libvips'] * 1000:11.1f}")
    print(f"ratios: imagestore / Pillow {totals['imagestore'] / totals['pillow']:.2f}, "
          f"imagestore / libvips {totals['imagestore'] / totals['libvips']:.2f}")

    corpus = [(p.name, p.read_bytes()) for p in sorted(CORPUS.iterdir())]
    perceptual_hashes(con, corpus, repeats)
    jpegs = [(f"{i}-{name}", data) for i in range(20) for name, data in corpus if name.endswith(".jpg")]
    whole_table("corpus", corpus, "'webp'", repeats)
    whole_table("corpus JPEGs x 20", jpegs, "'jpeg'", repeats)


def perceptual_hashes(con, corpus, repeats):
    """image_phash over the whole corpus against the imagehash package's phash (Pillow decode)."""
    try:
        import imagehash
    except ImportError:
        return
    ours = sum(best(lambda: con.execute("SELECT image_phash(?)", (data,)).fetchall(), repeats)
               for _, data in corpus)
    theirs = sum(best(lambda: imagehash.phash(Image.open(io.BytesIO(data))), repeats) for _, data in corpus)
    print(f"phash ({len(corpus)} images): imagestore {ours * 1000:.0f} ms, imagehash {theirs * 1000:.0f} ms, "
          f"ratio {ours / theirs:.2f}")


def whole_table(label, rows, fmt, repeats):
    """imagestore_derive against the row-at-a-time UPDATE doing the same work."""
    with tempfile.TemporaryDirectory() as d:
        db = apsw.Connection(os.path.join(d, "b.db"))
        db.enable_load_extension(True)
        db.load_extension(LIB)
        db.execute("CREATE VIRTUAL TABLE t USING imagestore(shards=4, thumb BLOB)")
        db.execute("BEGIN")
        for name, data in rows:
            db.execute("INSERT INTO t(name, data) VALUES (?, ?)", (name, data))
        db.execute("COMMIT")
        single = best(lambda: db.execute(f"UPDATE t SET thumb = image_thumbnail(data, 256, {fmt})"), repeats)
        parallel = best(lambda: db.execute(f"SELECT imagestore_derive('t', 'thumb', 'thumbnail', 256, {fmt})").fetchall(), repeats)
        print(f"whole table ({label}: {len(rows)} images, 256-px {fmt.strip(chr(39))}): row-at-a-time UPDATE "
              f"{single * 1000:.0f} ms, imagestore_derive {parallel * 1000:.0f} ms on {os.cpu_count()} cores, "
              f"ratio {parallel / single:.2f}")

if __name__ == "__main__":
    main()

"""Every variant Pillow reads in the formats README lists (README "Formats and their variants"):
modes, bit depths, compressions, orientations and layouts, written here by Pillow or, where
Pillow writes none (tiled, planar and big-endian TIFFs, signed samples, ASCII PNM, PAM, TGA
origins, run-length BMP), byte by byte from the format's specification. Each is stored in a
table and read by the functions, and checked against Pillow's reading of the same bytes: the
table's format, width and height, and the pixels of `image_convert(data, 'png')`.

Width and height follow one rule for every format: the stored pixel grid, as the header gives it
(`image_info`'s `exif_orientation` says whether a viewer turns it); the functions return the
picture as displayed. Pillow itself applies a TIFF's orientation when it opens the file (its
`size` is the displayed one) but not a JPEG's, so its TIFF sizes are compared turned back.

The variants imagestore refuses are listed in REFUSED with the reason README gives; a variant
that starts or stops being read fails this test until the list (and README) say so.
"""
import io
import random
import struct
import zlib

import numpy as np
import pytest
from PIL import Image, ImageOps

from harness import connect, require_lib

WIDTH, HEIGHT = 24, 16


def source(mode="RGBA"):
    """A picture with every channel varying, alpha included; 16-bit gray over the full range."""
    y, x = np.mgrid[0:HEIGHT, 0:WIDTH]
    rgba = np.stack([x * 10 + 5, y * 15 + 3, (x * y * 7) % 256, 255 - (x + y) * 5], axis=2)
    picture = Image.fromarray(rgba.astype(np.uint8), "RGBA")
    if mode == "I;16":
        return Image.fromarray(np.asarray(picture.convert("L")).astype(np.uint16) * 257)
    return picture.convert(mode)


def pillow(fmt, mode, **options):
    def make():
        buf = io.BytesIO()
        source(mode).save(buf, fmt, **options)
        return buf.getvalue()
    return make


# ---------- written from the specifications ----------

def tiff(samples, bits=8, photometric=2, planar=False, tiled=False, big_endian=False,
         sample_format=1, extra=()):
    """A TIFF of `samples` (height x width x channels, numpy) uncompressed, in one strip, in
    tiles of 16x16, or with each channel in its own plane."""
    order = ">" if big_endian else "<"
    height, width, channels = samples.shape
    dtype = {8: "u1", 16: "u2", 32: "u4"}[bits] if sample_format != 3 else "f4"
    if sample_format == 2:
        dtype = dtype.replace("u", "i")
    array = samples.astype(order + dtype)
    if planar:
        blocks = [array[:, :, c].tobytes() for c in range(channels)]
    elif tiled:
        tile = 16
        blocks = []
        for ty in range(0, height, tile):
            for tx in range(0, width, tile):
                block = np.zeros((tile, tile, channels), array.dtype)
                part = array[ty:ty + tile, tx:tx + tile]
                block[:part.shape[0], :part.shape[1]] = part
                blocks.append(block.tobytes())
    else:
        blocks = [array.tobytes()]
    entries = {256: (3, [width]), 257: (3, [height]), 258: (3, [bits] * channels),
               259: (3, [1]), 262: (3, [photometric]), 277: (3, [channels]),
               284: (3, [2 if planar else 1]), 339: (3, [sample_format] * channels)}
    entries.update(extra)
    offsets_tag, counts_tag = (324, 325) if tiled else (273, 279)
    if tiled:
        entries[322], entries[323] = (3, [16]), (3, [16])
    else:
        entries[278] = (3, [height])
    data_start = 8
    offsets, at = [], data_start
    for block in blocks:
        offsets.append(at)
        at += len(block)
    entries[offsets_tag] = (4, offsets)
    entries[counts_tag] = (4, [len(b) for b in blocks])
    ifd_at = at + (at % 2)
    tags = sorted(entries.items())
    ifd = struct.pack(order + "H", len(tags))
    overflow_at = ifd_at + 2 + 12 * len(tags) + 4
    overflow = b""
    for tag, (kind, values) in tags:
        fmt = {3: "H", 4: "I"}[kind]
        packed = b"".join(struct.pack(order + fmt, v) for v in values)
        if len(packed) <= 4:
            ifd += struct.pack(order + "HHI", tag, kind, len(values)) + packed.ljust(4, b"\0")
        else:
            ifd += struct.pack(order + "HHII", tag, kind, len(values), overflow_at + len(overflow))
            overflow += packed
    ifd += struct.pack(order + "I", 0)
    header = (b"MM" if big_endian else b"II") + struct.pack(order + "HI", 42, ifd_at)
    body = b"".join(blocks)
    return header + body + b"\0" * (ifd_at - at) + ifd + overflow


def rgb_array():
    return np.asarray(source("RGB"))


def pnm_ascii(kind):
    gray = np.asarray(source("L"))
    if kind == "P1":
        body = " ".join(str(int(v < 128)) for v in gray.ravel())
        return f"P1\n# a comment\n{WIDTH} {HEIGHT}\n{body}\n".encode()
    if kind == "P2":
        return f"P2\n{WIDTH} {HEIGHT}\n255\n{' '.join(map(str, gray.ravel()))}\n".encode()
    rgb = rgb_array().ravel()
    return f"P3\n{WIDTH} {HEIGHT}\n255\n{' '.join(map(str, rgb))}\n".encode()


def pam():
    rgba = np.asarray(source("RGBA"))
    return (f"P7\nWIDTH {WIDTH}\nHEIGHT {HEIGHT}\nDEPTH 4\nMAXVAL 255\nTUPLTYPE RGB_ALPHA\nENDHDR\n"
            .encode() + rgba.tobytes())


def ppm16():
    return f"P6\n{WIDTH} {HEIGHT}\n65535\n".encode() + (rgb_array().astype(">u2") * 257).tobytes()


def tga_top_left():
    """A true-colour TGA stored top row first (descriptor bit 5), as Pillow never writes one."""
    bgr = rgb_array()[:, :, ::-1]
    header = struct.pack("<BBBHHBHHHHBB", 0, 0, 2, 0, 0, 0, 0, 0, WIDTH, HEIGHT, 24, 0x20)
    return header + bgr.tobytes()


def tga_16bit():
    """A 16-bit (5-5-5) true-colour TGA, bottom row first."""
    rgb = rgb_array().astype(np.uint16) >> 3
    words = (rgb[:, :, 0] << 10) | (rgb[:, :, 1] << 5) | rgb[:, :, 2]
    header = struct.pack("<BBBHHBHHHHBB", 0, 0, 2, 0, 0, 0, 0, 0, WIDTH, HEIGHT, 16, 0)
    return header + words[::-1].astype("<u2").tobytes()


def tga_footer():
    data = pillow("TGA", "RGB")()
    return data + b"\0" * 8 + b"TRUEVISION-XFILE.\0"


def bmp(bits, compression=0, top_down=False, pixels=b"", palette=b"", masks=b""):
    header_size = 40
    offset = 14 + header_size + len(masks) + len(palette)
    info = struct.pack("<IiiHHIIiiII", header_size, WIDTH, -HEIGHT if top_down else HEIGHT, 1, bits,
                       compression, len(pixels), 2835, 2835, len(palette) // 4, 0)
    file_header = b"BM" + struct.pack("<IHHI", offset + len(pixels), 0, 0, offset)
    return file_header + info + masks + palette + pixels


def bmp_rows(rows_top_first, row_bytes, top_down):
    rows = rows_top_first if top_down else rows_top_first[::-1]
    stride = (row_bytes + 3) // 4 * 4
    return b"".join(bytes(r).ljust(stride, b"\0") for r in rows)


def bmp_top_down():
    bgr = rgb_array()[:, :, ::-1]
    return bmp(24, top_down=True, pixels=bmp_rows([r.tobytes() for r in bgr], WIDTH * 3, True))


def bmp_565():
    rgb = rgb_array().astype(np.uint16)
    words = ((rgb[:, :, 0] >> 3) << 11) | ((rgb[:, :, 1] >> 2) << 5) | (rgb[:, :, 2] >> 3)
    masks = struct.pack("<III", 0xF800, 0x07E0, 0x001F)
    return bmp(16, compression=3, masks=masks,
               pixels=bmp_rows([r.astype("<u2").tobytes() for r in words], WIDTH * 2, False))


def bmp_rle8():
    """Run-length encoded 8-bit BMP: each row a run per 4 pixels, then end of line."""
    gray = np.asarray(source("L")) & 0xF0
    palette = b"".join(bytes([v, v, v, 0]) for v in range(256))
    body = b""
    for row in gray[::-1]:
        for x in range(0, WIDTH, 4):
            body += bytes([4, int(row[x])])
        body += b"\0\0"
    body = body[:-2] + b"\0\1"
    return bmp(8, compression=1, pixels=body, palette=palette)


VARIANTS = {
    # PNG
    **{f"png {m}": pillow("PNG", m) for m in ("1", "L", "LA", "P", "RGB", "RGBA", "I;16")},
    "png P transparency": pillow("PNG", "P", transparency=3),
    # JPEG
    **{f"jpeg {m}": pillow("JPEG", m, quality=95) for m in ("L", "RGB", "CMYK")},
    "jpeg progressive": pillow("JPEG", "RGB", quality=95, progressive=True, optimize=True),
    "jpeg 4:4:4": pillow("JPEG", "RGB", quality=95, subsampling=0),
    "jpeg 4:2:2": pillow("JPEG", "RGB", quality=95, subsampling=1),
    **{f"jpeg orientation {o}": (lambda o: lambda: orientated_jpeg(o))(o) for o in range(1, 9)},
    # GIF
    "gif P": pillow("GIF", "P"),
    "gif L": pillow("GIF", "L"),
    "gif transparency": pillow("GIF", "P", transparency=0),
    "gif interlaced": pillow("GIF", "P", interlace=True),
    # WebP
    "webp lossy": pillow("WEBP", "RGB", quality=90),
    "webp lossy alpha": pillow("WEBP", "RGBA", quality=90),
    "webp lossless": pillow("WEBP", "RGBA", lossless=True),
    # TIFF, Pillow's
    **{f"tiff {m}": pillow("TIFF", m) for m in
       ("1", "L", "LA", "P", "RGB", "RGBA", "CMYK", "YCbCr", "I;16", "I;16B", "I", "F")},
    **{f"tiff {c}": pillow("TIFF", "RGB", compression=c) for c in
       ("tiff_lzw", "tiff_adobe_deflate", "packbits", "jpeg")},
    "tiff group4": pillow("TIFF", "1", compression="group4"),
    "tiff lzw predictor": pillow("TIFF", "RGB", compression="tiff_lzw", predictor=2),
    **{f"tiff orientation {o}": pillow("TIFF", "RGB", tiffinfo={274: o}) for o in range(1, 9)},
    # TIFF, from the specification
    "tiff tiled": lambda: tiff(rgb_array(), tiled=True),
    "tiff planar": lambda: tiff(rgb_array(), planar=True),
    "tiff big-endian": lambda: tiff(rgb_array(), big_endian=True),
    "tiff 16-bit rgb": lambda: tiff(rgb_array().astype(np.uint16) * 257, bits=16),
    "tiff 16-bit signed gray": lambda: tiff(
        (np.asarray(source("L")).astype(np.int16) * 100 - 12000)[:, :, None], bits=16,
        photometric=1, sample_format=2),
    "tiff 32-bit float rgb": lambda: tiff(rgb_array() / 255.0, bits=32, sample_format=3),
    # BMP
    **{f"bmp {m}": pillow("BMP", m) for m in ("1", "L", "P", "RGB", "RGBA")},
    "bmp top-down": bmp_top_down,
    "bmp 16-bit 565": bmp_565,
    "bmp rle8": bmp_rle8,
    # ICO
    "ico": pillow("ICO", "RGBA", sizes=[(16, 16)]),
    # PNM
    **{f"pnm {m}": pillow("PPM", m) for m in ("1", "L", "RGB", "I;16")},
    **{f"pnm ascii {k}": (lambda k: lambda: pnm_ascii(k))(k) for k in ("P1", "P2", "P3")},
    "pnm pam rgba": pam,
    "pnm 16-bit ppm": ppm16,
    # TGA
    **{f"tga {m}": pillow("TGA", m) for m in ("L", "LA", "P", "RGB", "RGBA")},
    **{f"tga rle {m}": pillow("TGA", m, compression="tga_rle") for m in ("L", "P", "RGB", "RGBA")},
    "tga top-left origin": tga_top_left,
    "tga 16-bit": tga_16bit,
    "tga 2.0 footer": tga_footer,
    # QOI, DDS
    "qoi rgb": pillow("QOI", "RGB"),
    "qoi rgba": pillow("QOI", "RGBA"),
    **{f"dds {m}": pillow("DDS", m) for m in ("L", "LA", "RGB", "RGBA")},
    **{f"dds {p}": pillow("DDS", "RGBA", pixel_format=p) for p in ("DXT1", "DXT3", "DXT5")},
    "dds bc5": pillow("DDS", "RGB", pixel_format="BC5"),
}

# What imagestore refuses, and why (README "Formats and their variants" says the same).
UNCOMPRESSED_DDS = "the DDS decoder reads the block-compressed BC1-BC3 (DXT1, DXT3, DXT5) only"
NO_DISPLAY_RANGE = ("signed or floating-point gray samples are measurements (elevations, "
                    "intensities) with no display range a thumbnail could honestly pick")
REFUSED = {
    **{f"dds {m}": UNCOMPRESSED_DDS for m in ("L", "LA", "RGB", "RGBA")},
    "dds bc5": "BC5 (two-channel normal maps) is no picture; the DDS decoder reads BC1-BC3",
    "tiff 16-bit signed gray": NO_DISPLAY_RANGE,
    "tiff I": NO_DISPLAY_RANGE,
    "tiff F": NO_DISPLAY_RANGE,
    "tiff LA": "the TIFF decoder reads gray with alpha only where ExtraSamples marks the alpha "
               "and passes it as two bands, which `image` does not map",
    "tiff P": "the TIFF decoder does not expand colour maps (RGBPalette)",
    "tiff YCbCr": "the TIFF decoder reads YCbCr only inside JPEG compression",
}

# Variants Pillow cannot open: the picture they were written from is the oracle.
WITHOUT_PILLOW = {"pnm pam rgba": "RGBA", "tiff 32-bit float rgb": "RGB"}

LOSSY = ("jpeg", "webp lossy", "tiff jpeg", "dds dxt", "dds bc5")


def orientated_jpeg(orientation):
    exif = Image.Exif()
    exif[0x0112] = orientation
    buf = io.BytesIO()
    source("RGB").save(buf, "JPEG", quality=95, exif=exif.tobytes())
    return buf.getvalue()


def displayed(name, data):
    """Pillow's reading of `data` as a viewer shows it (Pillow turns a TIFF by its orientation
    tag as it opens it, a JPEG only when asked)."""
    if name in WITHOUT_PILLOW:
        return source(WITHOUT_PILLOW[name])
    im = Image.open(io.BytesIO(data))
    im.load()
    return ImageOps.exif_transpose(im) if im.format == "JPEG" else im


def as_rgba(im):
    """Any Pillow mode as 8-bit RGBA in floats (16-bit and 32-bit samples scaled down)."""
    if im.mode in ("I;16", "I;16B", "I;16L", "I"):  # 16-bit samples (Pillow reads a PGM as I)
        gray = np.asarray(im, dtype=np.float64) / 257.0
        return np.dstack([gray, gray, gray, np.full_like(gray, 255)])
    return np.asarray(im.convert("RGBA"), dtype=np.float64)


def on_white(rgba):
    alpha = rgba[:, :, 3:4] / 255.0
    return np.concatenate([rgba[:, :, :3] * alpha + 255.0 * (1 - alpha), rgba[:, :, 3:4]], axis=2)


@pytest.fixture(scope="module")
def table(tmp_path_factory):
    require_lib()
    con = connect(tmp_path_factory.mktemp("variants") / "v.db")
    con.execute("CREATE VIRTUAL TABLE v USING imagestore(shards=2)")
    return con


def stored(con, name, data):
    """Stores `data` under `name`; None if the table refuses it, else (format, width, height)."""
    try:
        con.execute("INSERT INTO v(name, data) VALUES (?, ?)", (name, data))
    except Exception as e:  # noqa: BLE001 - the refusal is the outcome under test
        return str(e)
    return con.execute("SELECT format, width, height FROM v WHERE name = ?", (name,)).fetchone()


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_every_variant_is_read_as_pillow_reads_it(table, name):
    data = VARIANTS[name]()
    outcome = stored(table, name, data)
    if name in REFUSED:
        assert isinstance(outcome, str), f"{name} is read now: take it off REFUSED and README"
        assert "data is not an image" in outcome, outcome
        return
    assert not isinstance(outcome, str), f"{name} refused: {outcome}"
    expected = displayed(name, data)
    fmt, width, height = outcome
    assert fmt == name.split()[0], (name, fmt)
    # The stored grid, whatever the orientation (an icon is scaled to fit its 16x16 entry).
    grid = Image.open(io.BytesIO(data)).size if fmt == "ico" else (WIDTH, HEIGHT)
    assert (width, height) == grid, name
    ours = Image.open(io.BytesIO(table.execute("SELECT image_convert(?, 'png')", (data,))
                                 .fetchone()[0]))
    assert ours.size == expected.size, name
    a, b = on_white(as_rgba(ours)), on_white(as_rgba(expected))
    if name.startswith(LOSSY):
        mse = ((a - b) ** 2).mean()
        value = float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)
        assert value >= 35, (name, value)
    else:
        assert np.abs(a - b).max() <= 2, (name, np.abs(a - b).max())


def test_text_is_never_taken_for_a_tga(table):
    """A TGA has no magic number. A UTF-16 text whose first line is one character reads as an
    RLE TGA header with a 49-byte image ID (found by an outside attack: one in about 300 such
    texts also ended where the run-length walk ends, and was stored as a 111x44 TGA). The
    colour-map bytes of a TGA without a colour map are zero, which no text has."""
    words = ("the quick brown fox jumps over the lazy dog while notes about the meeting are "
             "being written down by everyone in the room").split()

    def walk_end(blob):
        width, height = struct.unpack("<HH", blob[12:16])
        at, covered = 18 + blob[0], 0
        while covered < width * height:
            if at >= len(blob):
                return None
            count = (blob[at] & 0x7F) + 1
            at += 1 + (4 if blob[at] & 0x80 else 4 * count)
            covered += count
        return at
    found = 0
    for seed in range(2000):
        rng = random.Random(seed)
        blob = ("1\nHello, world. " + " ".join(rng.choice(words) for _ in range(4000))
                ).encode("utf-16-le")
        end = walk_end(blob)
        if not end or end % 2:
            continue
        found += 1
        outcome = stored(table, f"notes {seed}.txt", blob[:end])
        assert isinstance(outcome, str) and "not an image" in outcome, outcome
        if found == 3:
            break
    assert found == 3

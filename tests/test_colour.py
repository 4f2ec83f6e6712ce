"""Colour: pictures with an ICC profile are converted to sRGB before any function works on them
(README "Colour"), checked against LittleCMS through Pillow's ImageCms (harness.pillow_srgb).

The profiles are written here from their published primaries, white point and tone curve
(Display P3, Adobe RGB (1998), a gamma-1.8 gray), independent of the Rust engine; LittleCMS reads
them, and the corpus adds real ones (an Adobe RGB JPEG, a laptop display's profile, a print gray
profile). Each conversion is also checked to matter: the unconverted pixels are far from the
converted ones, so a function that ignored the profile would fail. A profile that cannot be used
(damaged, or one for other pixels) is ignored: the result equals the untagged image's, never an
error. Mutated profiles are fuzzed through every function.
"""
import io
import random
import struct
import subprocess
import sys
import zlib

import numpy as np
import pytest
from PIL import Image, ImageCms

from harness import CORPUS, connect, pillow_srgb, require_lib

D50 = (0.9642, 1.0, 0.8249)
D65_XY = (0.3127, 0.3290)
SRGB_CURVE = (2.4, 1 / 1.055, 0.055 / 1.055, 1 / 12.92, 0.04045)
DISPLAY_P3 = {"primaries": ((0.680, 0.320), (0.265, 0.690), (0.150, 0.060)), "curve": SRGB_CURVE}
ADOBE_RGB = {"primaries": ((0.64, 0.33), (0.21, 0.71), (0.15, 0.06)), "curve": 563 / 256}
BRADFORD = np.array([[0.8951, 0.2664, -0.1614], [-0.7502, 1.7135, 0.0367],
                     [0.0389, -0.0685, 1.0296]])


# ---------- ICC profiles from their definitions (ICC.1:2001-04, version 2) ----------

def s15(value):
    return struct.pack(">i", round(value * 65536))


def xyz_tag(xyz):
    return b"XYZ \0\0\0\0" + b"".join(s15(v) for v in xyz)


def curve_tag(curve):
    if isinstance(curve, tuple):  # parametric, function type 3 (the sRGB curve)
        return b"para\0\0\0\0" + struct.pack(">HH", 3, 0) + b"".join(s15(v) for v in curve)
    return b"curv\0\0\0\0" + struct.pack(">IH", 1, round(curve * 256)) + b"\0\0"


def text_tags(name):
    text = name.encode() + b"\0"
    desc = (b"desc\0\0\0\0" + struct.pack(">I", len(text)) + text + struct.pack(">II", 0, 0)
            + struct.pack(">HB", 0, 0) + b"\0" * 67)
    return {b"desc": desc, b"cprt": b"text\0\0\0\0No copyright, test profile\0"}


def icc(space, tags):
    """An ICC v2 display profile of colour space `space` (b"RGB " or b"GRAY") holding `tags`."""
    table, data = [], b""
    offset = 128 + 4 + 12 * len(tags)
    for signature, body in tags.items():
        while len(data) % 4:
            data += b"\0"
        table.append(struct.pack(">4sII", signature, offset + len(data), len(body)))
        data += body
    size = offset + len(data)
    header = (struct.pack(">I4sI4s4s4s", size, b"\0\0\0\0", 0x02100000, b"mntr", space, b"XYZ ")
              + struct.pack(">6H", 2026, 12, 7, 0, 0, 0) + b"acsp" + b"\0" * 24
              + struct.pack(">I", 0) + b"".join(s15(v) for v in D50) + b"\0" * 48)
    assert len(header) == 128
    return header + struct.pack(">I", len(tags)) + b"".join(table) + data


def rgb_profile(name, primaries, curve):
    """Colorants: the RGB-to-XYZ matrix of the primaries under D65, adapted to D50 (Bradford)."""
    def xyz(x, y):
        return np.array([x / y, 1.0, (1 - x - y) / y])
    corners = np.column_stack([xyz(*p) for p in primaries])
    white = xyz(*D65_XY)
    matrix = corners * np.linalg.solve(corners, white)
    cone = np.diag((BRADFORD @ np.array(D50)) / (BRADFORD @ white))
    adapted = np.linalg.inv(BRADFORD) @ cone @ BRADFORD @ matrix
    tags = {b"wtpt": xyz_tag(D50), **text_tags(name)}
    for column, channel in enumerate((b"r", b"g", b"b")):
        tags[channel + b"XYZ"] = xyz_tag(adapted[:, column])
        tags[channel + b"TRC"] = curve_tag(curve)
    return icc(b"RGB ", tags)


P3 = rgb_profile("Display P3 (test)", **DISPLAY_P3)
ADOBE = rgb_profile("Adobe RGB (1998) (test)", **ADOBE_RGB)
GRAY_18 = icc(b"GRAY", {b"wtpt": xyz_tag(D50), b"kTRC": curve_tag(1.8),
                        **text_tags("Gray gamma 1.8 (test)")})
PROFILES = {"display-p3": P3, "adobe-rgb": ADOBE}


# ---------- pictures ----------

def scene(width=120, height=80, alpha=False):
    """Every hue across, saturation and value falling down, a gray ramp along the bottom."""
    x = np.linspace(0, 255, width, dtype=np.float64)[None, :].repeat(height, 0)
    y = np.linspace(0, 1, height)[:, None].repeat(width, 1)
    hsv = np.stack([x, 255 * (1 - 0.6 * y), 255 * (1 - 0.5 * y)], axis=2).astype(np.uint8)
    rgb = np.asarray(Image.fromarray(hsv, "HSV").convert("RGB")).copy()
    rgb[-10:, :, :] = np.linspace(0, 255, width, dtype=np.uint8)[None, :, None]
    if not alpha:
        return Image.fromarray(rgb, "RGB")
    a = np.linspace(40, 255, height, dtype=np.uint8)[:, None].repeat(width, 1)
    return Image.fromarray(np.dstack([rgb, a]), "RGBA")


def encoded(im, fmt, profile=None):
    options = {"PNG": {}, "JPEG": {"quality": 95, "subsampling": 0},
               "WEBP": {"lossless": True}, "TIFF": {}}[fmt]
    if profile is not None:
        options["icc_profile"] = profile
    buf = io.BytesIO()
    im.save(buf, fmt, **options)
    return buf.getvalue()


def opened(data):
    im = Image.open(io.BytesIO(data))
    im.load()
    return im


def pixels(im, mode=None):
    return np.asarray(im.convert(mode or im.mode), dtype=np.float64)


def psnr(a, b):
    mse = ((a - b) ** 2).mean()
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


@pytest.fixture(scope="module")
def cur():
    require_lib()
    return connect(":memory:").cursor()


def one(cur, sql, *args):
    return cur.execute(sql, args).fetchone()[0]


def test_the_profiles_written_here_are_what_littlecms_reads():
    for name, profile in PROFILES.items():
        read = ImageCms.ImageCmsProfile(io.BytesIO(profile))
        assert read.profile.xcolor_space == "RGB ", name
        assert "(test)" in ImageCms.getProfileDescription(read)
    assert ImageCms.ImageCmsProfile(io.BytesIO(GRAY_18)).profile.xcolor_space == "GRAY"
    # Display P3's pure red lies outside sRGB; its mid green is a different sRGB green.
    red = pillow_srgb(opened(encoded(Image.new("RGB", (1, 1), (255, 0, 0)), "PNG", P3)))
    assert red.getpixel((0, 0))[0] == 255 and max(red.getpixel((0, 0))[1:]) < 10
    green = pillow_srgb(opened(encoded(Image.new("RGB", (1, 1), (60, 160, 60)), "PNG", P3)))
    assert green.getpixel((0, 0)) != (60, 160, 60)


# ---------- conversions agree with LittleCMS ----------

@pytest.mark.parametrize("profile", sorted(PROFILES))
@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP", "TIFF"])
def test_every_function_sees_the_picture_converted_to_srgb(cur, fmt, profile):
    """image_convert, image_grayscale and image_thumbnail of a tagged picture agree with
    LittleCMS's conversion to sRGB (to within rounding: the two engines' fixed-point paths differ
    by a level here and there); the pictures as stored are far from it. Their results carry no
    profile."""
    for alpha in ((False, True) if fmt != "JPEG" else (False,)):
        source = scene(alpha=alpha)
        data = encoded(source, fmt, PROFILES[profile])
        expected = pillow_srgb(opened(data))
        mode = expected.mode
        stored = pixels(opened(data), mode)
        assert psnr(stored, pixels(expected)) < 32  # the conversion matters
        out = opened(one(cur, "SELECT image_convert(?, 'png')", data))
        assert "icc_profile" not in out.info
        got = pixels(out, mode)
        if fmt == "JPEG":  # two JPEG decoders before the conversion
            assert psnr(got, pixels(expected)) >= 40, (fmt, profile)
        else:
            diff = np.abs(got - pixels(expected))
            assert diff.max() <= 2 and diff.mean() < 0.3, (fmt, profile, alpha, diff.max(),
                                                           diff.mean())
        gray = pixels(opened(one(cur, "SELECT image_grayscale(?)", data)), "L")
        assert psnr(gray, pixels(expected, "L")) >= 40, (fmt, profile)
        thumb = opened(one(cur, "SELECT image_thumbnail(?, 48, 'png')", data))
        small = expected.copy()
        small.thumbnail((48, 48), Image.LANCZOS)
        assert thumb.size == small.size
        assert psnr(pixels(thumb, mode), pixels(small)) >= 35, (fmt, profile, alpha)


@pytest.mark.parametrize("fmt", ["JPEG", "WEBP"])
def test_thumbnails_decoded_shrunk_are_converted_too(cur, fmt):
    """A large JPEG (decoded at 1/8 scale) and a large WebP (shrunk by libwebp while decoding)
    take other decoders; their thumbnails are converted on the small result."""
    big = scene(1600, 1200)
    data = encoded(big, fmt, P3)
    thumb = opened(one(cur, "SELECT image_thumbnail(?, 100, 'png')", data))
    expected = pillow_srgb(opened(data))
    expected.thumbnail((100, 100), Image.LANCZOS)
    unconverted = opened(data)
    unconverted.thumbnail((100, 100), Image.LANCZOS)
    assert thumb.size == expected.size == (100, 75)
    ours = psnr(pixels(thumb, "RGB"), pixels(expected))
    assert ours >= 35, ours
    assert psnr(pixels(thumb, "RGB"), pixels(unconverted, "RGB")) < ours - 5


def test_a_gray_picture_with_a_gray_profile(cur):
    source = scene().convert("L")
    data = encoded(source, "PNG", GRAY_18)
    expected = pixels(pillow_srgb(opened(data)))
    assert psnr(pixels(source), expected) < 30
    got = pixels(opened(one(cur, "SELECT image_convert(?, 'png')", data)), "L")
    assert np.abs(got - expected).max() <= 2


def test_sixteen_bit_pixels_are_converted_at_sixteen_bits(cur):
    """A 16-bit PNG (written here: Pillow writes none in colour) with a Display P3 profile: its
    high bytes agree with LittleCMS's conversion of the 8-bit picture."""
    rgb = np.asarray(scene(), dtype=np.uint16) * 257
    height, width, _ = rgb.shape
    rows = b"".join(b"\0" + row.astype(">u2").tobytes() for row in rgb)

    def chunk(kind, body):
        return (struct.pack(">I", len(body)) + kind + body
                + struct.pack(">I", zlib.crc32(kind + body)))
    data = (b"\x89PNG\r\n\x1a\n"
            + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 16, 2, 0, 0, 0))
            + chunk(b"iCCP", b"p3\0\0" + zlib.compress(P3))
            + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))
    out = one(cur, "SELECT image_convert(?, 'png')", data)
    assert out[24] == 16  # still 16 bits a channel
    expected = pixels(pillow_srgb(opened(encoded(scene(), "PNG", P3))))
    assert psnr(pixels(opened(out), "RGB"), expected) >= 40


@pytest.mark.parametrize("name", ["rocket.jpg", "color.png", "page.png"])
def test_corpus_pictures_with_real_profiles(cur, name):
    """An Adobe RGB (1998) photograph, a picture with a laptop display's profile ("Color LCD")
    and a scan with a print gray profile ("Dot Gain 20%"): their thumbnails are LittleCMS's
    colours, not the stored ones."""
    data = (CORPUS / "images" / name).read_bytes()
    expected = pillow_srgb(opened(data))
    expected.thumbnail((256, 256), Image.LANCZOS)
    unconverted = opened(data)
    unconverted.thumbnail((256, 256), Image.LANCZOS)
    thumb = pixels(opened(one(cur, "SELECT image_thumbnail(?, 256, 'png')", data)),
                   expected.mode)
    ours = psnr(thumb, pixels(expected))
    assert ours >= 35, (name, ours)
    assert psnr(thumb, pixels(unconverted, expected.mode)) < ours - 5, name


# ---------- sRGB and unusable profiles change nothing ----------

def corpus_srgb_profile():
    return opened((CORPUS / "images" / "astronaut.png").read_bytes()).info["icc_profile"]


def test_srgb_profiles_leave_every_pixel_as_it_is(cur):
    """LittleCMS's own sRGB (v4, parametric curves) and the classic sRGB IEC61966-2.1 (v2,
    1024-entry curves, from a corpus file): results equal the untagged picture's, bit for bit."""
    lcms_srgb = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    for fmt in ("PNG", "JPEG"):
        plain = encoded(scene(), fmt)
        for profile in (lcms_srgb, corpus_srgb_profile()):
            tagged = encoded(scene(), fmt, profile)
            for function in ("image_convert(?, 'png')", "image_thumbnail(?, 50, 'png')",
                             "image_phash(?)"):
                assert (one(cur, f"SELECT {function}", tagged)
                        == one(cur, f"SELECT {function}", plain)), (fmt, function)


def damaged_profiles():
    rng = random.Random(7)
    torn_table = bytearray(P3)
    for entry in range(struct.unpack(">I", P3[128:132])[0]):  # every tag points past the end
        torn_table[132 + 12 * entry + 4:132 + 12 * entry + 8] = struct.pack(">I", 0x7FFFFF00)
    return {
        "truncated": P3[: len(P3) // 2],
        "random bytes": bytes(rng.randrange(256) for _ in range(600)),
        "text": b"this is not an ICC profile at all" * 10,
        "torn tag table": bytes(torn_table),
        "gray profile on colour pixels": GRAY_18,
    }


@pytest.mark.parametrize("kind", sorted(damaged_profiles()))
def test_an_unusable_profile_is_ignored(cur, kind):
    """A profile LittleCMS cannot read either, or one made for other pixels, is ignored: the
    pixels are taken as sRGB, as browsers do, and every result equals the untagged picture's."""
    profile = damaged_profiles()[kind]
    with pytest.raises((OSError, ImageCms.PyCMSError)):  # LittleCMS cannot use it either
        ImageCms.buildTransform(ImageCms.ImageCmsProfile(io.BytesIO(profile)),
                                ImageCms.createProfile("sRGB"), "RGB", "RGB")
    for fmt in ("PNG", "JPEG", "WEBP"):
        plain, tagged = encoded(scene(), fmt), encoded(scene(), fmt, profile)
        for function in ("image_convert(?, 'png')", "image_thumbnail(?, 50, 'png')"):
            assert (one(cur, f"SELECT {function}", tagged)
                    == one(cur, f"SELECT {function}", plain)), (kind, fmt, function)
    rgb_profile_on_gray = encoded(scene().convert("L"), "PNG", P3)
    assert (one(cur, "SELECT image_convert(?, 'png')", rgb_profile_on_gray)
            == one(cur, "SELECT image_convert(?, 'png')", encoded(scene().convert("L"), "PNG")))


def with_tag_table(profile, entries, data):
    """`profile`'s header and tags followed by more tag-table `entries` (signature, offset into
    `data`, size) and `data` itself: a profile whose table the parser has to walk."""
    count = struct.unpack(">I", profile[128:132])[0]
    table = [struct.unpack(">4sII", profile[132 + 12 * i:144 + 12 * i]) for i in range(count)]
    body = profile[132 + 12 * count:]
    start = 132 + 12 * (count + len(entries))
    shift = 12 * len(entries)
    rows = [(sig, off + shift, size) for sig, off, size in table]
    rows += [(sig, start + len(body) + off, size) for sig, off, size in entries]
    out = profile[:128] + struct.pack(">I", len(rows))
    out += b"".join(struct.pack(">4sII", *row) for row in rows) + body + data
    return struct.pack(">I", len(out)) + out[4:]


def mluc_bomb():
    """A `dmnd` text tag of 20,000 records that all point at one 40 KB string: a parser that
    builds a string per record needs 1.2 GB for a 280 KB profile (a few KB in a PNG)."""
    records, length = 20_000, 40_000
    string_at = 16 + 12 * records
    mluc = (b"mluc\0\0\0\0" + struct.pack(">II", records, 12)
            + (b"enUS" + struct.pack(">II", length, string_at)) * records + b"N\0" * (length // 2))
    return with_tag_table(P3, [(b"dmnd", 0, len(mluc))], mluc)


def tag_flood():
    """20,000 tag-table entries all naming one 650 KB colour lookup table: a parser that copies
    the table once per entry moves 13 GB."""
    grid = 60
    curves = b"curv\0\0\0\0\0\0\0\0" * 3
    clut_at = 32 + len(curves)
    a_at = clut_at + 20 + grid**3 * 3
    a_at += -a_at % 4
    lut = (b"mAB \0\0\0\0" + bytes([3, 3, 0, 0]) + struct.pack(">IIIII", 32, 0, 0, clut_at, a_at)
           + curves + bytes([grid] * 3) + bytes(13) + b"\1\0\0\0" + bytes(grid**3 * 3))
    lut += bytes(-len(lut) % 4) + curves
    return with_tag_table(P3, [(b"A2B0", 0, len(lut))] * 20_000, lut)


@pytest.mark.parametrize("kind", ["mluc records", "tag flood"])
def test_a_profile_made_to_exhaust_the_parser_is_ignored_at_once(tmp_path, kind):
    """Profiles whose parsing would take gigabytes or minutes (found by an outside attack: the
    first aborted the process) are ignored: a thumbnail of a picture carrying one takes well
    under a second and little memory, in a process capped at 1 GB, and equals the untagged
    picture's."""
    profile = mluc_bomb() if kind == "mluc records" else tag_flood()
    data = encoded(scene(16, 12), "PNG", profile)
    assert len(data) < 40_000
    (tmp_path / "in.png").write_bytes(data)
    (tmp_path / "plain.png").write_bytes(encoded(scene(16, 12), "PNG"))
    script = f"""
import resource, time, apsw
resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))
con = apsw.Connection(":memory:")
con.enable_load_extension(True)
con.load_extension({str(require_lib())!r})
thumb = lambda p: con.execute("SELECT image_thumbnail(?, 8, 'png')", (open(p, 'rb').read(),)).fetchone()[0]
start = time.monotonic()
tagged = thumb({str(tmp_path / 'in.png')!r})
print(round(time.monotonic() - start, 3), tagged == thumb({str(tmp_path / 'plain.png')!r}))
"""
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    seconds, same = run.stdout.split()
    assert float(seconds) < 1.0 and same == "True", run.stdout


def test_a_cmyk_jpeg_or_a_device_link_ignores_an_rgb_profile(cur):
    """A CMYK JPEG's pixels reach the functions as the decoder's RGB, for which its profile
    (even an RGB one) was not made; a device-link profile maps devices, not a picture's
    colours. Both are ignored."""
    cmyk = scene().convert("CMYK")
    assert (one(cur, "SELECT image_convert(?, 'png')", encoded(cmyk, "JPEG", P3))
            == one(cur, "SELECT image_convert(?, 'png')", encoded(cmyk, "JPEG")))
    link = P3[:12] + b"link" + P3[16:]
    assert (one(cur, "SELECT image_convert(?, 'png')", encoded(scene(), "PNG", link))
            == one(cur, "SELECT image_convert(?, 'png')", encoded(scene(), "PNG")))


def test_a_curve_that_meets_srgb_only_at_a_few_levels_is_converted(cur):
    """The sRGB check probes every level: a profile with sRGB's primaries whose curve equals
    sRGB's at a handful of levels and is linear between them is no sRGB profile (found by an
    outside attack)."""
    levels = [0, 16, 48, 80, 112, 144, 176, 208, 240, 255]
    x = np.arange(256) / 255
    srgb_curve = np.where(x <= 0.04045, x / 12.92, ((x + 0.055) / 1.055) ** 2.4)
    table = np.where(np.isin(np.arange(256), levels), srgb_curve, x)  # linear between
    curve = (b"curv\0\0\0\0" + struct.pack(">I", 256)
             + np.round(table * 65535).astype(">u2").tobytes())
    # LittleCMS's own sRGB colorants, exactly, with the holed curve.
    srgb = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    tags = {}
    for i in range(struct.unpack(">I", srgb[128:132])[0]):
        signature, offset, size = struct.unpack(">4sII", srgb[132 + 12 * i:144 + 12 * i])
        if signature in (b"wtpt", b"rXYZ", b"gXYZ", b"bXYZ"):
            tags[signature] = srgb[offset:offset + size]
    tags.update({b"rTRC": curve, b"gTRC": curve, b"bTRC": curve, **text_tags("Holes (test)")})
    profile = icc(b"RGB ", tags)
    data = encoded(Image.new("RGB", (4, 4), (100, 100, 100)), "PNG", profile)
    expected = pillow_srgb(opened(data)).getpixel((0, 0))
    got = opened(one(cur, "SELECT image_convert(?, 'png')", data)).convert("RGB").getpixel((0, 0))
    assert expected != (100, 100, 100), expected
    assert max(abs(a - b) for a, b in zip(got, expected)) <= 2, (got, expected)


def test_mutated_profiles_never_fail_a_function(cur):
    """300 profiles with random bytes changed, cut short or grown, embedded in a small PNG:
    every function returns a result of the right size, whatever the engine makes of them."""
    rng = random.Random(2026)
    source = scene(24, 16, alpha=True)
    for round_ in range(300):
        profile = bytearray(rng.choice([P3, ADOBE, GRAY_18]))
        for _ in range(rng.randrange(1, 12)):
            profile[rng.randrange(len(profile))] = rng.randrange(256)
        if rng.random() < 0.2:
            profile = profile[: rng.randrange(len(profile))]
        if rng.random() < 0.1:
            profile += bytes(rng.randrange(256) for _ in range(rng.randrange(1, 400)))
        data = encoded(source, "PNG", bytes(profile))
        out = opened(one(cur, "SELECT image_convert(?, 'png')", data))
        assert out.size == (24, 16), round_
        assert opened(one(cur, "SELECT image_thumbnail(?, 8, 'png')", data)).size == (8, 5)
        assert isinstance(one(cur, "SELECT image_phash(?)", data), int)
        assert one(cur, "SELECT image_otsu(?)", data) is not None

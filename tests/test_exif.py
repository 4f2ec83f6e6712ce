"""image_exif against an independent reader: pictures written here with real tags in every
container Pillow writes EXIF into (JPEG, PNG, WebP, and TIFF with its EXIF and GPS directories),
each read back by Pillow's own `getexif()`, from which the expected fields are computed; one
file checked against values worked out by hand; and damaged EXIF (random bytes changed,
directories cut short) never crashes and never invents a field out of range.
"""
import io
import json
import math
import random
import string

import apsw
import pytest
from PIL import Image, TiffImagePlugin
from PIL.TiffImagePlugin import IFDRational as R

from harness import connect, corpus_bytes, require_lib

EXIF_IFD, GPS_IFD = 0x8769, 0x8825
# Tags, by where they live: IFD0, the EXIF directory, the GPS directory.
MAKE, MODEL, ORIENTATION = 0x010F, 0x0110, 0x0112
TAKEN, DIGITIZED, OFFSET_TAKEN, OFFSET_DIGITIZED = 0x9003, 0x9004, 0x9011, 0x9012
SUBSEC_TAKEN, SUBSEC_DIGITIZED = 0x9291, 0x9292
EXPOSURE, F_NUMBER, ISO, FOCAL, LENS = 0x829A, 0x829D, 0x8827, 0x920A, 0xA434
LAT_REF, LAT, LON_REF, LON, ALT_REF, ALT = 1, 2, 3, 4, 5, 6
FORMATS = ["JPEG", "PNG", "WEBP", "TIFF"]


@pytest.fixture(scope="module")
def con(tmp_path_factory):
    require_lib()
    return connect(tmp_path_factory.mktemp("exif") / "x.db")


def exif_of(con, data):
    (value,), = con.execute("SELECT image_exif(?)", (data,))
    return None if value is None else json.loads(value)


def write(fmt, tags):
    """A small picture in `fmt` carrying `tags`: {"ifd0": {...}, "exif": {...}, "gps": {...}}."""
    im = Image.new("RGB", (40, 30), (200, 100, 50))
    buf = io.BytesIO()
    if fmt == "TIFF":
        # Pillow's TIFF writer takes the EXIF and GPS directories as nested tag dictionaries.
        info = TiffImagePlugin.ImageFileDirectory_v2()
        for tag, value in tags["ifd0"].items():
            info[tag] = value
        for pointer, key in ((EXIF_IFD, "exif"), (GPS_IFD, "gps")):
            if tags[key]:
                info[pointer] = dict(tags[key])
        im.save(buf, fmt, tiffinfo=info)
    else:
        exif = Image.Exif()
        for tag, value in tags["ifd0"].items():
            exif[tag] = value
        for pointer, key in ((EXIF_IFD, "exif"), (GPS_IFD, "gps")):
            directory = exif.get_ifd(pointer)
            for tag, value in tags[key].items():
                directory[tag] = value
        im.save(buf, fmt, exif=exif)
    return buf.getvalue()


def pillow_view(data):
    """The fields image_exif should give, computed from what Pillow reads back from `data`."""
    exif = Image.open(io.BytesIO(data)).getexif()
    sub, gps = exif.get_ifd(EXIF_IFD), exif.get_ifd(GPS_IFD)
    out = {}
    for date, subsec, offset in ((TAKEN, SUBSEC_TAKEN, OFFSET_TAKEN), (DIGITIZED, SUBSEC_DIGITIZED, OFFSET_DIGITIZED)):
        if date in sub:
            day, time = sub[date].split(" ")
            text = day.replace(":", "-") + "T" + time
            fraction = sub.get(subsec, "").strip()
            if fraction and int(fraction) > 0:
                text += "." + fraction.rstrip("0")
            text += sub.get(offset, "")
            out["date_taken"] = text
            break
    for name, directory, tag in (("make", exif, MAKE), ("model", exif, MODEL), ("lens", sub, LENS)):
        if directory.get(tag, "").strip():
            out[name] = directory[tag].strip()
    for name, tag in (("exposure_time", EXPOSURE), ("f_number", F_NUMBER), ("focal_length", FOCAL)):
        if tag in sub:
            out[name] = float(sub[tag])
    if ISO in sub:
        out["iso"] = sub[ISO] if isinstance(sub[ISO], int) else sub[ISO][0]
    for name, tag, ref, negative in (("latitude", LAT, LAT_REF, "S"), ("longitude", LON, LON_REF, "W")):
        if tag in gps:
            d, m, s = (float(v) for v in gps[tag])
            out[name] = (-1 if gps.get(ref) == negative else 1) * (d + m / 60 + s / 3600)
    if ALT in gps:
        out["altitude"] = (-1 if gps.get(ALT_REF) in (b"\x01", 1) else 1) * float(gps[ALT])
    if ORIENTATION in exif:
        out["orientation"] = exif[ORIENTATION]
    return out


def random_tags(rng):
    """A photo's tags, each present or not, with random values in range."""
    def text():
        return "".join(rng.choice(string.ascii_letters + string.digits + " -/.") for _ in range(rng.randint(1, 30))).strip() or "x"

    def maybe(p=0.8):
        return rng.random() < p

    tags = {"ifd0": {}, "exif": {}, "gps": {}}
    if maybe():
        tags["ifd0"][MAKE] = text()
    if maybe():
        tags["ifd0"][MODEL] = text()
    if maybe():
        tags["ifd0"][ORIENTATION] = rng.randint(1, 8)
    if maybe():
        date = TAKEN if maybe(0.7) else DIGITIZED
        tags["exif"][date] = (f"{rng.randint(1990, 2030):04}:{rng.randint(1, 12):02}:{rng.randint(1, 28):02} "
                              f"{rng.randint(0, 23):02}:{rng.randint(0, 59):02}:{rng.randint(0, 59):02}")
        if maybe(0.5):
            tags["exif"][SUBSEC_TAKEN if date == TAKEN else SUBSEC_DIGITIZED] = str(rng.randint(1, 999))
        if maybe(0.6):
            minutes = rng.choice([0, 30, 45]) + 60 * rng.randint(0, 13)
            sign = rng.choice("+-")
            tags["exif"][OFFSET_TAKEN if date == TAKEN else OFFSET_DIGITIZED] = f"{sign}{minutes // 60:02}:{minutes % 60:02}"
    if maybe():
        tags["exif"][EXPOSURE] = R(1, rng.choice([1, 2, 4, 15, 60, 125, 250, 1000, 8000])) if maybe() else R(rng.randint(1, 30), 1)
    if maybe():
        tags["exif"][F_NUMBER] = R(rng.randint(10, 220), 10)
    if maybe():
        tags["exif"][ISO] = rng.choice([50, 100, 200, 400, 1600, 6400, 25600])
    if maybe():
        tags["exif"][FOCAL] = R(rng.randint(80, 6000), 10)
    if maybe():
        tags["exif"][LENS] = text()
    if maybe():
        tags["gps"][LAT_REF] = rng.choice("NS")
        tags["gps"][LAT] = (R(rng.randint(0, 89)), R(rng.randint(0, 59)), R(rng.randint(0, 5999), 100))
        tags["gps"][LON_REF] = rng.choice("EW")
        tags["gps"][LON] = (R(rng.randint(0, 179)), R(rng.randint(0, 59)), R(rng.randint(0, 5999), 100))
    if maybe(0.5):
        tags["gps"][ALT_REF] = rng.choice([b"\x00", b"\x01"])
        tags["gps"][ALT] = R(rng.randint(0, 90000), 10)
    return tags


def assert_same(ours, expected):
    assert ours.keys() == expected.keys(), (ours, expected)
    for key, value in expected.items():
        if isinstance(value, float):
            assert math.isclose(ours[key], value, rel_tol=1e-9, abs_tol=1e-12), (key, ours[key], value)
        else:
            assert ours[key] == value, (key, ours[key], value)


@pytest.mark.parametrize("fmt", FORMATS)
def test_a_photo_reads_as_worked_out_by_hand(con, fmt):
    tags = {"ifd0": {MAKE: "Canon", MODEL: "EOS R5", ORIENTATION: 6},
            "exif": {TAKEN: "2024:05:01 14:03:22", SUBSEC_TAKEN: "120", OFFSET_TAKEN: "+02:00",
                     EXPOSURE: R(1, 250), F_NUMBER: R(28, 10), ISO: 200, FOCAL: R(35, 1),
                     LENS: "RF24-105mm F4 L IS USM"},
            "gps": {LAT_REF: "S", LAT: (R(48), R(51), R(2960, 100)), LON_REF: "W",
                    LON: (R(2), R(17), R(4012, 100)), ALT_REF: b"\x01", ALT: R(355, 10)}}
    ours = exif_of(con, write(fmt, tags))
    assert_same(ours, {
        "date_taken": "2024-05-01T14:03:22.12+02:00", "make": "Canon", "model": "EOS R5",
        "lens": "RF24-105mm F4 L IS USM", "exposure_time": 0.004, "f_number": 2.8, "iso": 200,
        "focal_length": 35.0, "latitude": -(48 + 51 / 60 + 29.6 / 3600),
        "longitude": -(2 + 17 / 60 + 40.12 / 3600), "altitude": -35.5, "orientation": 6})


@pytest.mark.parametrize("fmt", FORMATS)
def test_random_tags_read_as_pillow_reads_them(con, fmt):
    rng = random.Random(FORMATS.index(fmt))
    for _ in range(40):
        data = write(fmt, random_tags(rng))
        expected = pillow_view(data)
        ours = exif_of(con, data)
        if not expected and ours is None:
            continue  # nothing written, and no EXIF block
        assert_same(ours, expected)


def test_no_exif_is_null_and_bad_input_is_an_error(con):
    assert exif_of(con, corpus_bytes("camera.png")) is None
    (value,), = con.execute("SELECT image_exif(NULL)")
    assert value is None
    with pytest.raises(apsw.Error, match="image_exif: data is not an image"):
        con.execute("SELECT image_exif(x'00112233')").fetchall()
    with pytest.raises(apsw.Error, match=r"image_exif: argument 1 \(data\) must be a BLOB"):
        con.execute("SELECT image_exif('a photo')").fetchall()


def test_values_out_of_range_are_left_out(con):
    tags = {"ifd0": {ORIENTATION: 9},
            "exif": {TAKEN: "0000:00:00 00:00:00", EXPOSURE: R(1, 0), F_NUMBER: R(28, 10)},
            "gps": {LAT_REF: "N", LAT: (R(91), R(0), R(0)), LON_REF: "E", LON: (R(10), R(75), R(0))}}
    assert exif_of(con, write("JPEG", tags)) == {"f_number": 2.8}


def jpeg_exif_span(data):
    """(start, end) of the EXIF payload (after "Exif\\0\\0") in a JPEG's APP1 segment."""
    at = data.index(b"Exif\x00\x00")
    length = int.from_bytes(data[at - 2:at], "big")
    return at + 6, at - 2 + length


@pytest.mark.parametrize("fmt", ["JPEG", "TIFF"])
def test_damaged_exif_never_crashes_and_never_invents_values(con, fmt):
    """Random bytes of the EXIF changed, or a directory cut short (its entry count raised): each
    call answers JSON, NULL or a clean error naming the function, never SQLITE_INTERNAL (a
    panic), and every field it gives is of its type and range."""
    rng = random.Random(11)
    base_tags = random_tags(random.Random(5))
    base = write(fmt, base_tags)
    start, end = jpeg_exif_span(base) if fmt == "JPEG" else (8, len(base))
    answered = 0
    for i in range(600):
        data = bytearray(base)
        for _ in range(rng.randint(1, 8)):
            data[rng.randrange(start, end)] = rng.randrange(256)
        try:
            ours = exif_of(con, bytes(data))
        except apsw.InternalError as e:
            pytest.fail(f"a damaged EXIF block crashed image_exif: {e}")
        except apsw.Error as e:
            assert "image_exif" in str(e), str(e)
            continue
        answered += 1
        if ours is None:
            continue
        assert set(ours) <= {"date_taken", "make", "model", "lens", "exposure_time", "f_number", "iso",
                             "focal_length", "latitude", "longitude", "altitude", "orientation"}
        assert 1 <= ours.get("orientation", 1) <= 8
        assert -90 <= ours.get("latitude", 0) <= 90 and -180 <= ours.get("longitude", 0) <= 180
        for key in ("exposure_time", "f_number", "focal_length", "altitude"):
            assert math.isfinite(ours.get(key, 0.0))
    assert answered > 300, answered

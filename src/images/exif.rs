//! `image_exif`: what photo tools show of a picture's EXIF (when and where it was taken, with
//! what), read by `kamadak-exif` from a JPEG, PNG, WebP or TIFF (and the HEIF family, which it
//! reads too).
//!
//! Invariants:
//! - No EXIF block is `None` (SQL NULL); a block is a JSON object of the fields below that it
//!   holds, each checked: a field that is missing, of the wrong type or out of range (a zero
//!   denominator, a latitude beyond 90 degrees, a month 13) is left out, never guessed.
//! - A damaged block gives what could be read before and around the damage (the reader goes on
//!   past a bad directory), never an error: one damaged photo must not stop a query over a
//!   library. Data that is not an image at all is an error, as for every image function.
//!
//! Fields: `date_taken` (ISO 8601 local time, `2024-05-01T14:03:22`, with `.fff` sub-seconds
//! and `+02:00` where the EXIF gives them; DateTimeOriginal, else DateTimeDigitized), `make`,
//! `model`, `lens` (LensModel), `exposure_time` (seconds), `f_number`, `iso`, `focal_length`
//! (mm), `latitude` and `longitude` (signed decimal degrees: north and east positive), `altitude`
//! (metres, negative below sea level), `orientation` (1-8).

use exif::{DateTime, Exif, Field, In, Reader, Tag, Value};
use serde_json::{Map, Number};

use crate::error::Result;

/// The EXIF of `data` as JSON, or `None` if it holds no EXIF block. `data` is an image (the
/// caller checked its header).
pub fn exif_json(data: &[u8]) -> Result<Option<String>> {
    let Some(exif) = read(data) else {
        return Ok(None);
    };
    let mut fields = Map::new();
    let mut put = |name: &str, value: Option<serde_json::Value>| {
        if let Some(value) = value {
            fields.insert(name.to_string(), value);
        }
    };
    let photo = Photo { exif: &exif };
    put("date_taken", photo.date_taken().map(Into::into));
    put("make", photo.text(Tag::Make).map(Into::into));
    put("model", photo.text(Tag::Model).map(Into::into));
    put("lens", photo.text(Tag::LensModel).map(Into::into));
    put(
        "exposure_time",
        photo.rational(Tag::ExposureTime).and_then(number),
    );
    put("f_number", photo.rational(Tag::FNumber).and_then(number));
    put(
        "iso",
        photo.uint(Tag::PhotographicSensitivity).map(Into::into),
    );
    put(
        "focal_length",
        photo.rational(Tag::FocalLength).and_then(number),
    );
    put(
        "latitude",
        photo
            .coordinate(Tag::GPSLatitude, Tag::GPSLatitudeRef, b'S', 90.0)
            .and_then(number),
    );
    put(
        "longitude",
        photo
            .coordinate(Tag::GPSLongitude, Tag::GPSLongitudeRef, b'W', 180.0)
            .and_then(number),
    );
    put("altitude", photo.altitude().and_then(number));
    put(
        "orientation",
        photo
            .uint(Tag::Orientation)
            .filter(|o| (1..=8).contains(o))
            .map(Into::into),
    );
    Ok(Some(serde_json::Value::Object(fields).to_string()))
}

/// The EXIF block of `data`, as much of it as can be read; `None` if there is none (or the
/// container cannot be walked to find one).
fn read(data: &[u8]) -> Option<Exif> {
    let mut cursor = std::io::Cursor::new(data);
    match Reader::new()
        .continue_on_error(true)
        .read_from_container(&mut cursor)
    {
        Ok(exif) => Some(exif),
        // A damaged directory: keep what was read around it.
        Err(e) => e.distill_partial_result(drop).ok(),
    }
}

/// A finite number as JSON (a NaN or infinity is not a JSON number: left out).
fn number(value: f64) -> Option<serde_json::Value> {
    Number::from_f64(value).map(serde_json::Value::Number)
}

/// The fields of one EXIF block, each read with its checks.
struct Photo<'a> {
    exif: &'a Exif,
}

impl Photo<'_> {
    fn field(&self, tag: Tag) -> Option<&Field> {
        self.exif.get_field(tag, In::PRIMARY)
    }

    /// An ASCII field's first string, trimmed of padding; `None` if empty or not text.
    fn text(&self, tag: Tag) -> Option<String> {
        let bytes = self.ascii(tag)?;
        let text = String::from_utf8_lossy(bytes);
        let text = text.trim_matches(|c: char| c == '\0' || c.is_whitespace());
        (!text.is_empty()).then(|| text.to_string())
    }

    fn ascii(&self, tag: Tag) -> Option<&[u8]> {
        match &self.field(tag)?.value {
            Value::Ascii(strings) => strings.first().map(Vec::as_slice),
            _ => None,
        }
    }

    fn uint(&self, tag: Tag) -> Option<u32> {
        self.field(tag)?.value.get_uint(0)
    }

    /// The `index`th rational of a field; `None` for a zero denominator.
    fn rational_at(&self, tag: Tag, index: usize) -> Option<f64> {
        match &self.field(tag)?.value {
            Value::Rational(values) => values
                .get(index)
                .filter(|r| r.denom != 0)
                .map(|r| r.to_f64()),
            _ => None,
        }
    }

    fn rational(&self, tag: Tag) -> Option<f64> {
        self.rational_at(tag, 0)
    }

    /// Degrees, minutes and seconds as signed decimal degrees: negative when the reference is
    /// `negative` (S or W); `None` beyond `limit` degrees or for minutes or seconds of 60 or more.
    fn coordinate(&self, tag: Tag, reference: Tag, negative: u8, limit: f64) -> Option<f64> {
        let (degrees, minutes, seconds) = (
            self.rational_at(tag, 0)?,
            self.rational_at(tag, 1)?,
            self.rational_at(tag, 2)?,
        );
        if !(0.0..60.0).contains(&minutes) || !(0.0..60.0).contains(&seconds) {
            return None;
        }
        let value = degrees + minutes / 60.0 + seconds / 3600.0;
        if !(0.0..=limit).contains(&value) {
            return None;
        }
        let sign = match self.ascii(reference).and_then(|r| r.first()) {
            Some(r) if r.eq_ignore_ascii_case(&negative) => -1.0,
            _ => 1.0,
        };
        Some(sign * value)
    }

    /// Metres above sea level; below it when GPSAltitudeRef is 1.
    fn altitude(&self) -> Option<f64> {
        let metres = self.rational(Tag::GPSAltitude)?;
        match self.uint(Tag::GPSAltitudeRef) {
            Some(1) => Some(-metres),
            _ => Some(metres),
        }
    }

    /// DateTimeOriginal (else DateTimeDigitized) with its sub-seconds and offset, as ISO 8601.
    fn date_taken(&self) -> Option<String> {
        [
            (
                Tag::DateTimeOriginal,
                Tag::SubSecTimeOriginal,
                Tag::OffsetTimeOriginal,
            ),
            (
                Tag::DateTimeDigitized,
                Tag::SubSecTimeDigitized,
                Tag::OffsetTimeDigitized,
            ),
        ]
        .into_iter()
        .find_map(|(date, subsec, offset)| {
            let mut taken = DateTime::from_ascii(self.ascii(date)?).ok()?;
            if let Some(s) = self.ascii(subsec) {
                let _ = taken.parse_subsec(s);
            }
            if let Some(o) = self.ascii(offset) {
                let _ = taken.parse_offset(o);
            }
            iso_8601(&taken)
        })
    }
}

/// `2024-05-01T14:03:22[.fff][+02:00]`; `None` for a date or time out of range (a camera's
/// "0000:00:00 00:00:00" for "not set" included).
fn iso_8601(t: &DateTime) -> Option<String> {
    let valid = (1..=9999).contains(&t.year)
        && (1..=12).contains(&t.month)
        && (1..=31).contains(&t.day)
        && t.hour < 24
        && t.minute < 60
        && t.second < 61;
    if !valid {
        return None;
    }
    let mut text = format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}",
        t.year, t.month, t.day, t.hour, t.minute, t.second
    );
    if let Some(nanos) = t.nanosecond.filter(|&n| n > 0) {
        let fraction = format!("{nanos:09}");
        text.push('.');
        text.push_str(fraction.trim_end_matches('0'));
    }
    if let Some(offset) = t.offset {
        let sign = if offset < 0 { '-' } else { '+' };
        let minutes = offset.unsigned_abs();
        text.push_str(&format!("{sign}{:02}:{:02}", minutes / 60, minutes % 60));
    }
    Some(text)
}

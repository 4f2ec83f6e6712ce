//! Images: the header probe every stored row goes through (`probe`), and the per-image SQL
//! functions: information, thumbnails and geometry, format conversion, filters, segmentation and
//! perceptual hashes, on any image BLOB.
//!
//! ```sql
//! SELECT image_info(data) FROM images;                      -- {"format":"png","width":512,...}
//! SELECT image_thumbnail(data, 256, 'webp') FROM images;     -- fits 256x256, aspect kept
//! SELECT id FROM images ORDER BY image_distance(image_phash(data), :hash) LIMIT 10;
//! ```
//!
//! Rules every function keeps (README.md, "Image functions", lists each one):
//! - A NULL argument gives NULL.
//! - `data` must be a BLOB holding an image in a format the `image` crate reads; anything else is
//!   an error saying "data is not an image". The header is read before any pixel: an image of
//!   more than 2^28 pixels (a decompression bomb announces its size there) is refused, and
//!   decoders run under `image::Limits` of 1 GiB (`decode`).
//! - Pixels are seen as displayed: the EXIF orientation is applied first, and a picture with an
//!   ICC profile is converted to sRGB (`colour`); results carry no profile. Animations give
//!   their first frame.
//! - An image result is in the input's format unless one is asked for (`encode`).
//! - Errors name the function and the argument at fault; a panic becomes SQLITE_INTERNAL.
//!
//! Files: `sniff` (the format from the content: magic numbers, and the rules that make a TGA),
//! `probe` (format, size and hash from the header, without decoding; the table's check
//! of every stored image), `decode` (bounded decode, orientation, frame count), `colour` (ICC
//! profiles to sRGB), `exif` (what
//! photo tools show of the EXIF), `transform` (resize, thumbnail,
//! crop, rotate, flip, grayscale), `encode`, `filters` (median, blur, equalize, adjust, sharpen),
//! `segment` (Otsu, mask, regions), `phash`, `pool` (the image threads). This file is the
//! SQLite glue, and the byte-level entry points other Rust code (whole-table processing) can
//! call.

pub mod colour;
pub mod decode;
pub mod encode;
pub mod exif;
pub mod filters;
pub mod phash;
pub mod pool;
pub mod probe;
pub mod segment;
pub mod sniff;
pub mod transform;

use image::DynamicImage;
use rusqlite::types::{Value, ValueRef};
use rusqlite::Connection;

use crate::error::{type_name, Error, Result};
use crate::sqlfn::{Call, Kind};
use decode::Decoded;
use encode::{OutputFormat, Quality};
use transform::Filter;

/// Makes a thumbnail of `data` that fits a `max_side` square, in `format` (default: the input's)
/// at `quality`.
pub fn thumbnail(
    data: &[u8],
    max_side: u32,
    format: Option<OutputFormat>,
    quality: Quality,
) -> Result<Vec<u8>> {
    let Decoded {
        image,
        format: input,
    } = transform::thumbnail(data, max_side)?;
    encode::encode(
        image,
        format.unwrap_or(OutputFormat::same_as(input)),
        quality,
    )
}

/// Decodes `data`, applies `operation`, encodes the result in the input's format.
fn map_image(
    data: &[u8],
    operation: impl FnOnce(DynamicImage) -> Result<DynamicImage>,
) -> Result<Vec<u8>> {
    let Decoded { image, format } = decode::decode(data)?;
    // A lossless WebP stays lossless; anything else keeps the format's default.
    let quality = match encode::is_lossless_webp(data) {
        true => Quality::Lossless,
        false => Quality::Default,
    };
    encode::encode(operation(image)?, OutputFormat::same_as(format), quality)
}

/// `image_info` as JSON.
pub fn info(data: &[u8]) -> Result<String> {
    let header = decode::header(data)?;
    let frames = decode::frame_count(data, header.format)?;
    let info = ImageInfo {
        format: crate::images::probe::format_name(header.format),
        width: header.width,
        height: header.height,
        color_type: format!("{:?}", header.color_type).to_lowercase(),
        bit_depth: header.bit_depth,
        frames,
        exif_orientation: header.orientation.to_exif(),
    };
    serde_json::to_string(&info).map_err(|e| Error::Internal(e.to_string()))
}

/// What `image_info` reports, in this order.
#[derive(serde::Serialize)]
struct ImageInfo {
    format: String,
    width: u32,
    height: u32,
    color_type: String,
    bit_depth: u16,
    frames: u32,
    exif_orientation: u8,
}

/// `image_phash`: the 64 bits as SQLite's signed INTEGER.
pub fn perceptual_hash(data: &[u8], method: phash::Method) -> Result<i64> {
    Ok(phash::phash(&decode::decode(data)?.image, method) as i64)
}

/// `image_regions` as JSON: the level used, the count, and each region's area and box.
pub fn regions_json(data: &[u8], level: Option<u8>) -> Result<String> {
    let gray = transform::luma8(&decode::decode(data)?.image);
    let level = level.unwrap_or_else(|| segment::otsu(&gray));
    let regions = segment::regions(&gray, level);
    let list: Vec<serde_json::Value> = regions
        .iter()
        .map(|r| {
            serde_json::json!({"area": r.area, "x": r.x, "y": r.y, "width": r.width, "height": r.height})
        })
        .collect();
    Ok(serde_json::json!({"level": level, "count": regions.len(), "regions": list}).to_string())
}

// ---------- SQLite glue ----------

/// The arguments of one call, read with the function's name at hand for error messages.
struct Args<'a> {
    values: &'a [ValueRef<'a>],
}

impl<'a> Args<'a> {
    fn wrong(&self, index: usize, name: &str, want: &str) -> Error {
        Error::WrongType(format!(
            "argument {} ({name}) must be {want}, not {}",
            index + 1,
            type_name(self.values[index])
        ))
    }

    fn has(&self, index: usize) -> bool {
        index < self.values.len()
    }

    /// The image BLOB. NULLs never get here (the wrapper answers NULL first).
    fn data(&self, index: usize) -> Result<&'a [u8]> {
        match self.values[index] {
            ValueRef::Blob(b) => Ok(b),
            _ => Err(self.wrong(index, "data", "a BLOB holding an image")),
        }
    }

    fn int(&self, index: usize, name: &str) -> Result<i64> {
        match self.values[index] {
            ValueRef::Integer(i) => Ok(i),
            ValueRef::Real(r) if r.fract() == 0.0 && r.abs() < 9.0e15 => Ok(r as i64),
            _ => Err(self.wrong(index, name, "an integer")),
        }
    }

    /// An integer in 0..=u32::MAX (or 1.. when `positive`).
    fn size(&self, index: usize, name: &str, positive: bool) -> Result<u32> {
        let value = self.int(index, name)?;
        u32::try_from(value)
            .ok()
            .filter(|&v| !positive || v > 0)
            .ok_or_else(|| {
                let low = if positive { 1 } else { 0 };
                Error::BadArgument(format!(
                    "argument {} ({name}) = {value} is outside {low}..{}",
                    index + 1,
                    u32::MAX
                ))
            })
    }

    fn real(&self, index: usize, name: &str) -> Result<f64> {
        match self.values[index] {
            ValueRef::Integer(i) => Ok(i as f64),
            ValueRef::Real(r) => Ok(r),
            _ => Err(self.wrong(index, name, "a number")),
        }
    }

    fn text(&self, index: usize, name: &str) -> Result<&'a str> {
        match self.values[index] {
            ValueRef::Text(t) => {
                std::str::from_utf8(t).map_err(|_| self.wrong(index, name, "UTF-8 text"))
            }
            _ => Err(self.wrong(index, name, "text")),
        }
    }

    /// A quality argument: an integer 1-100, or `'lossless'`; the format's default if absent.
    fn quality(&self, index: usize) -> Result<Quality> {
        if !self.has(index) {
            return Ok(Quality::Default);
        }
        match self.values[index] {
            ValueRef::Text(_) => Quality::named(self.text(index, "quality")?),
            ValueRef::Integer(_) | ValueRef::Real(_) => Quality::level(self.int(index, "quality")?),
            _ => Err(self.wrong(index, "quality", "an integer from 1 to 100, or 'lossless'")),
        }
    }

    fn format(&self, index: usize) -> Result<Option<OutputFormat>> {
        if self.has(index) {
            OutputFormat::parse(self.text(index, "format")?).map(Some)
        } else {
            Ok(None)
        }
    }

    fn level(&self, index: usize) -> Result<Option<u8>> {
        if !self.has(index) {
            return Ok(None);
        }
        let level = self.int(index, "level")?;
        u8::try_from(level)
            .map(Some)
            .map_err(|_| Error::BadArgument(format!("level {level} is outside 0..255")))
    }
}

type Body = fn(&Args) -> Result<Value>;

fn blob(bytes: Vec<u8>) -> Result<Value> {
    Ok(Value::Blob(bytes))
}

fn image_info(a: &Args) -> Result<Value> {
    info(a.data(0)?).map(Value::Text)
}

fn image_exif(a: &Args) -> Result<Value> {
    let data = a.data(0)?;
    decode::format(data)?;
    Ok(exif::exif_json(data)?.map_or(Value::Null, Value::Text))
}

fn image_thumbnail(a: &Args) -> Result<Value> {
    let max_side = a.size(1, "max_side", true)?;
    blob(thumbnail(
        a.data(0)?,
        max_side,
        a.format(2)?,
        a.quality(3)?,
    )?)
}

fn image_resize(a: &Args) -> Result<Value> {
    let (width, height) = (a.size(1, "width", true)?, a.size(2, "height", true)?);
    let filter = if a.has(3) {
        Filter::parse(a.text(3, "filter")?)?
    } else {
        Filter::Lanczos3
    };
    blob(map_image(a.data(0)?, |image| {
        transform::resize(&image, width, height, filter)
    })?)
}

fn image_crop(a: &Args) -> Result<Value> {
    let (x, y) = (a.size(1, "x", false)?, a.size(2, "y", false)?);
    let (width, height) = (a.size(3, "width", true)?, a.size(4, "height", true)?);
    blob(map_image(a.data(0)?, |image| {
        transform::crop(&image, x, y, width, height)
    })?)
}

fn image_rotate(a: &Args) -> Result<Value> {
    let degrees = a.int(1, "degrees")?;
    blob(map_image(a.data(0)?, |image| {
        transform::rotate(&image, degrees)
    })?)
}

fn image_flip(a: &Args) -> Result<Value> {
    let axis = a.text(1, "axis")?;
    blob(map_image(a.data(0)?, |image| {
        transform::flip(&image, axis)
    })?)
}

fn image_grayscale(a: &Args) -> Result<Value> {
    blob(map_image(a.data(0)?, |image| {
        Ok(transform::grayscale(&image))
    })?)
}

fn image_convert(a: &Args) -> Result<Value> {
    let format = OutputFormat::parse(a.text(1, "format")?)?;
    let image = decode::decode(a.data(0)?)?.image;
    blob(encode::encode(image, format, a.quality(2)?)?)
}

fn image_denoise(a: &Args) -> Result<Value> {
    let radius = a.int(1, "radius")?;
    blob(map_image(a.data(0)?, |image| {
        filters::median(image, radius)
    })?)
}

fn image_blur(a: &Args) -> Result<Value> {
    let sigma = a.real(1, "sigma")?;
    blob(map_image(a.data(0)?, |image| filters::blur(image, sigma))?)
}

fn image_equalize(a: &Args) -> Result<Value> {
    blob(map_image(a.data(0)?, |image| Ok(filters::equalize(image)))?)
}

fn image_adjust(a: &Args) -> Result<Value> {
    let (brightness, contrast) = (a.real(1, "brightness")?, a.real(2, "contrast")?);
    blob(map_image(a.data(0)?, |image| {
        filters::adjust(image, brightness, contrast)
    })?)
}

/// Standard deviation of the unsharp mask's blur when none is given.
const SHARPEN_SIGMA_DEFAULT: f64 = 1.0;

fn image_sharpen(a: &Args) -> Result<Value> {
    let amount = a.real(1, "amount")?;
    let sigma = if a.has(2) {
        a.real(2, "sigma")?
    } else {
        SHARPEN_SIGMA_DEFAULT
    };
    blob(map_image(a.data(0)?, |image| {
        filters::sharpen(image, amount, sigma)
    })?)
}

fn image_threshold(a: &Args) -> Result<Value> {
    let level = a.level(1)?;
    let gray = transform::luma8(&decode::decode(a.data(0)?)?.image);
    let level = level.unwrap_or_else(|| segment::otsu(&gray));
    let mask = DynamicImage::ImageLuma8(segment::threshold(&gray, level));
    blob(encode::encode(mask, OutputFormat::Png, Quality::Default)?)
}

fn image_otsu(a: &Args) -> Result<Value> {
    let gray = transform::luma8(&decode::decode(a.data(0)?)?.image);
    Ok(Value::Integer(i64::from(segment::otsu(&gray))))
}

fn image_regions(a: &Args) -> Result<Value> {
    regions_json(a.data(0)?, a.level(1)?).map(Value::Text)
}

fn image_phash(a: &Args) -> Result<Value> {
    let method = if a.has(1) {
        phash::Method::parse(a.text(1, "method")?)?
    } else {
        phash::Method::Projection
    };
    Ok(Value::Integer(perceptual_hash(a.data(0)?, method)?))
}

fn image_distance(a: &Args) -> Result<Value> {
    let (x, y) = (a.int(0, "a")?, a.int(1, "b")?);
    Ok(Value::Integer(phash::distance(x, y)))
}

/// Every function: name, the argument counts it takes, body.
const FUNCTIONS: &[(&str, &[i32], Body)] = &[
    ("image_info", &[1], image_info),
    ("image_exif", &[1], image_exif),
    ("image_thumbnail", &[2, 3, 4], image_thumbnail),
    ("image_resize", &[3, 4], image_resize),
    ("image_crop", &[5], image_crop),
    ("image_rotate", &[2], image_rotate),
    ("image_flip", &[2], image_flip),
    ("image_grayscale", &[1], image_grayscale),
    ("image_convert", &[2, 3], image_convert),
    ("image_denoise", &[2], image_denoise),
    ("image_blur", &[2], image_blur),
    ("image_equalize", &[1], image_equalize),
    ("image_adjust", &[3], image_adjust),
    ("image_sharpen", &[2, 3], image_sharpen),
    ("image_threshold", &[1, 2], image_threshold),
    ("image_otsu", &[1], image_otsu),
    ("image_regions", &[1, 2], image_regions),
    ("image_phash", &[1, 2], image_phash),
    ("image_distance", &[2], image_distance),
];

/// Puts the function's name in front of an error's message.
fn named(function: &str, error: Error) -> Error {
    match error {
        Error::BadArgument(m) => Error::BadArgument(format!("{function}: {m}")),
        Error::WrongType(m) => Error::WrongType(format!("{function}: {m}")),
        Error::Internal(m) => Error::Internal(format!("{function}: {m}")),
        Error::ImageTooBig(m) => Error::ImageTooBig(format!("{function}: {m}")),
        Error::CannotEncode(m) => Error::CannotEncode(format!("{function}: {m}")),
        Error::NotAnImage { at: None, reason } => Error::NotAnImage {
            at: Some(function.to_string()),
            reason,
        },
        other => other,
    }
}

/// Registers every image function on `conn`.
pub fn register(conn: &Connection) -> rusqlite::Result<()> {
    for &(name, arities, body) in FUNCTIONS {
        for &arity in arities {
            let call_body = move |call: &Call<'_>| {
                if call.args.iter().any(|v| matches!(v, ValueRef::Null)) {
                    return Ok(Value::Null);
                }
                body(&Args { values: &call.args }).map_err(|e| named(name, e))
            };
            crate::sqlfn::register(conn, name, arity, Kind::Pure, Box::new(call_body))?;
        }
    }
    Ok(())
}

//! Encoding the result: png, jpeg, webp, gif, bmp or tiff.
//!
//! The default output format is the input's; an input in a format the functions do not write
//! (ico, pnm, tga, qoi, hdr, openexr, dds, farbfeld) comes back as PNG. Each encoder gets the
//! pixel layout it accepts: JPEG drops alpha and 16-bit depth, GIF is quantized to a 256-colour
//! palette (NeuQuant), BMP and WebP are 8-bit, PNG and TIFF keep 16 bits. [`Quality`] applies to
//! JPEG (1-100, default 85) and WebP (lossy 1-100, default 80 as Pillow's, or `'lossless'`);
//! the other formats are lossless and ignore it. WebP is written by libwebp, the copy the
//! decoder already builds (`libwebp-sys`): lossy with its alpha plane kept lossless, as Pillow
//! writes it.

use std::io::Cursor;
use std::os::raw::c_int;

use image::codecs::gif::GifEncoder;
use image::{DynamicImage, ImageFormat};

use super::transform::to_8bit;
use crate::error::{Error, Result};

/// JPEG quality when none is given (Pillow's default is 75; 85 keeps thumbnails sharp).
pub const JPEG_QUALITY_DEFAULT: u8 = 85;

/// WebP quality when none is given: Pillow's, so that thumbnails weigh what users compare them
/// with.
pub const WEBP_QUALITY_DEFAULT: u8 = 80;

/// The largest side a WebP may have.
const WEBP_SIDE_MAX: u32 = 16_383;

/// What a quality argument asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Quality {
    /// The format's default: JPEG 85, WebP lossy at 80.
    Default,
    /// A level from 1 (smallest) to 100 (best), for JPEG and lossy WebP.
    Level(u8),
    /// `'lossless'`: WebP's lossless mode (JPEG has none; the other formats are lossless).
    Lossless,
}

impl Quality {
    /// An integer level (1-100).
    pub fn level(value: i64) -> Result<Quality> {
        quality(value).map(Quality::Level)
    }

    /// A text argument: only `'lossless'`.
    pub fn named(name: &str) -> Result<Quality> {
        match name.eq_ignore_ascii_case("lossless") {
            true => Ok(Quality::Lossless),
            false => Err(Error::BadArgument(format!(
                "quality '{name}': give a level from 1 to 100, or 'lossless'"
            ))),
        }
    }
}

/// NeuQuant sampling speed for GIF palettes: 1 is slowest and best, 30 fastest; 10 is the
/// quantizer's own recommendation.
const GIF_QUANTIZER_SPEED: i32 = 10;

/// An output format the functions write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputFormat {
    Png,
    Jpeg,
    WebP,
    Gif,
    Bmp,
    Tiff,
}

impl OutputFormat {
    pub const NAMES: &'static str = "png, jpeg, webp, gif, bmp, tiff";

    pub fn parse(name: &str) -> Result<OutputFormat> {
        Ok(match name.to_ascii_lowercase().as_str() {
            "png" => OutputFormat::Png,
            "jpeg" | "jpg" => OutputFormat::Jpeg,
            "webp" => OutputFormat::WebP,
            "gif" => OutputFormat::Gif,
            "bmp" => OutputFormat::Bmp,
            "tiff" | "tif" => OutputFormat::Tiff,
            _ => {
                return Err(Error::BadArgument(format!(
                    "unknown output format '{name}' (one of {})",
                    OutputFormat::NAMES
                )))
            }
        })
    }

    /// The input's own format where it is writable, else PNG.
    pub fn same_as(input: ImageFormat) -> OutputFormat {
        match input {
            ImageFormat::Jpeg => OutputFormat::Jpeg,
            ImageFormat::WebP => OutputFormat::WebP,
            ImageFormat::Gif => OutputFormat::Gif,
            ImageFormat::Bmp => OutputFormat::Bmp,
            ImageFormat::Tiff => OutputFormat::Tiff,
            _ => OutputFormat::Png,
        }
    }
}

/// Checks a quality argument: 1 to 100.
pub fn quality(value: i64) -> Result<u8> {
    match u8::try_from(value) {
        Ok(q @ 1..=100) => Ok(q),
        _ => Err(Error::BadArgument(format!(
            "quality {value} is outside 1..100"
        ))),
    }
}

fn encode_error(format: OutputFormat) -> impl Fn(image::ImageError) -> Error {
    move |e| match e {
        image::ImageError::Limits(_) => Error::ImageTooBig(format!("encoding {format:?}: {e}")),
        e => Error::CannotEncode(format!("encoding {format:?}: {e}")),
    }
}

/// JPEG with `jpeg-encoder` (AVX2 colour conversion and DCT where the CPU has it): 8-bit gray or
/// RGB, alpha dropped; chroma subsampled 4:2:0 below quality 90 and kept whole from 90 up, as
/// libjpeg and Pillow do.
fn encode_jpeg(image: DynamicImage, quality: u8) -> Result<Vec<u8>> {
    let (width, height) = (image.width(), image.height());
    let too_large = || {
        Error::ImageTooBig(format!(
            "a {width}x{height} image is too large for JPEG (at most 65535 pixels a side)"
        ))
    };
    let (w, h) = (
        u16::try_from(width).map_err(|_| too_large())?,
        u16::try_from(height).map_err(|_| too_large())?,
    );
    let (pixels, color) = match to_8bit(image) {
        DynamicImage::ImageLuma8(gray) => (gray.into_raw(), jpeg_encoder::ColorType::Luma),
        DynamicImage::ImageLumaA8(gray) => (
            DynamicImage::ImageLumaA8(gray).to_luma8().into_raw(),
            jpeg_encoder::ColorType::Luma,
        ),
        DynamicImage::ImageRgb8(rgb) => (rgb.into_raw(), jpeg_encoder::ColorType::Rgb),
        other => (other.to_rgb8().into_raw(), jpeg_encoder::ColorType::Rgb),
    };
    let mut out = Vec::new();
    jpeg_encoder::Encoder::new(&mut out, quality)
        .encode(&pixels, w, h, color)
        .map_err(|e| Error::CannotEncode(format!("encoding Jpeg: {e}")))?;
    Ok(out)
}

/// WebP by libwebp: 8-bit RGB, or RGBA where the image has alpha; lossy at `quality` (its alpha
/// plane lossless, libwebp's default, as Pillow's), or lossless. Either way, fully transparent
/// pixels keep no colour of their own (libwebp's default, and Pillow's: `exact=False`).
fn encode_webp(image: DynamicImage, quality: Quality) -> Result<Vec<u8>> {
    let (width, height) = (image.width(), image.height());
    if width > WEBP_SIDE_MAX || height > WEBP_SIDE_MAX {
        return Err(Error::ImageTooBig(format!(
            "a {width}x{height} image is too large for WebP (at most {WEBP_SIDE_MAX} pixels a side)"
        )));
    }
    let alpha = image.color().has_alpha();
    let (pixels, channels) = match alpha {
        true => (to_8bit(image).to_rgba8().into_raw(), 4),
        false => (to_8bit(image).to_rgb8().into_raw(), 3),
    };
    // Each at most 16383 (checked above), so no product overflows a c_int.
    let (w, h, stride) = (width as c_int, height as c_int, (width * channels) as c_int);
    let level = match quality {
        Quality::Level(q) => f32::from(q),
        _ => f32::from(WEBP_QUALITY_DEFAULT),
    };
    let mut output: *mut u8 = std::ptr::null_mut();
    let data = pixels.as_ptr();
    // SAFETY: `pixels` holds `h` rows of `stride` bytes (an 8-bit RGB or RGBA buffer of these
    // dimensions, as `channels` says), alive for the call; libwebp only reads it, and writes
    // into `output` the address of a buffer it allocated (null on failure).
    let size = unsafe {
        use libwebp_sys as webp;
        match (quality, alpha) {
            (Quality::Lossless, false) => {
                webp::WebPEncodeLosslessRGB(data, w, h, stride, &mut output)
            }
            (Quality::Lossless, true) => {
                webp::WebPEncodeLosslessRGBA(data, w, h, stride, &mut output)
            }
            (_, false) => webp::WebPEncodeRGB(data, w, h, stride, level, &mut output),
            (_, true) => webp::WebPEncodeRGBA(data, w, h, stride, level, &mut output),
        }
    };
    let encoded = match output.is_null() {
        true => Vec::new(),
        // SAFETY: libwebp returned a buffer of `size` bytes at `output`, which it allocated:
        // read once into our own vector, then freed once, with libwebp's own free.
        false => unsafe {
            let encoded = std::slice::from_raw_parts(output, size).to_vec();
            libwebp_sys::WebPFree(output.cast());
            encoded
        },
    };
    match encoded.is_empty() {
        true => Err(Error::CannotEncode(format!(
            "encoding WebP: libwebp could not encode a {width}x{height} image"
        ))),
        false => Ok(encoded),
    }
}

/// Whether `data` is a WebP whose image is lossless (its first image chunk is VP8L): what it
/// is written back as when an operation keeps the input's format.
pub fn is_lossless_webp(data: &[u8]) -> bool {
    if data.get(..4) != Some(b"RIFF") || data.get(8..12) != Some(b"WEBP") {
        return false;
    }
    let mut at = 12;
    while let Some(header) = data.get(at..at + 8) {
        match &header[..4] {
            b"VP8L" => return true,
            b"VP8 " => return false,
            _ => {}
        }
        let size = u32::from_le_bytes([header[4], header[5], header[6], header[7]]) as usize;
        at = match at
            .checked_add(8)
            .and_then(|a| a.checked_add(size + size % 2))
        {
            Some(next) => next,
            None => return false,
        };
    }
    false
}

/// Encodes `image` as `format`; `quality` applies to JPEG and WebP.
pub fn encode(image: DynamicImage, format: OutputFormat, quality: Quality) -> Result<Vec<u8>> {
    let mut out = Cursor::new(Vec::new());
    let error = encode_error(format);
    match format {
        OutputFormat::Jpeg => {
            let level = match quality {
                Quality::Default => JPEG_QUALITY_DEFAULT,
                Quality::Level(q) => q,
                Quality::Lossless => {
                    return Err(Error::BadArgument(
                        "JPEG has no lossless mode: use png, or webp with 'lossless'".into(),
                    ))
                }
            };
            return encode_jpeg(image, level);
        }
        OutputFormat::WebP => return encode_webp(image, quality),
        OutputFormat::Gif => {
            let frame = image::Frame::new(image.to_rgba8());
            let mut encoder = GifEncoder::new_with_speed(&mut out, GIF_QUANTIZER_SPEED);
            encoder.encode_frame(frame).map_err(error)?;
        }
        OutputFormat::Bmp => {
            let image = match to_8bit(image) {
                DynamicImage::ImageLumaA8(gray) => {
                    DynamicImage::ImageRgba8(DynamicImage::ImageLumaA8(gray).to_rgba8())
                }
                other => other,
            };
            image.write_to(&mut out, ImageFormat::Bmp).map_err(error)?;
        }
        OutputFormat::Tiff => {
            let image = match image {
                DynamicImage::ImageLumaA8(_) => DynamicImage::ImageRgba8(image.to_rgba8()),
                DynamicImage::ImageLumaA16(_) => DynamicImage::ImageRgba16(image.to_rgba16()),
                other => other,
            };
            image.write_to(&mut out, ImageFormat::Tiff).map_err(error)?;
        }
        OutputFormat::Png => {
            let image = match image {
                DynamicImage::ImageRgb32F(_) => DynamicImage::ImageRgb16(image.to_rgb16()),
                DynamicImage::ImageRgba32F(_) => DynamicImage::ImageRgba16(image.to_rgba16()),
                other => other,
            };
            image.write_to(&mut out, ImageFormat::Png).map_err(error)?;
        }
    }
    Ok(out.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_format_round_trips_its_size() {
        let image = DynamicImage::ImageRgba8(image::RgbaImage::from_fn(9, 7, |x, y| {
            image::Rgba([x as u8 * 20, y as u8 * 30, 99, 200])
        }));
        for name in ["png", "jpeg", "webp", "gif", "bmp", "tiff"] {
            let format = OutputFormat::parse(name).expect("format");
            let data = encode(image.clone(), format, Quality::Default).expect(name);
            let back = image::load_from_memory(&data).expect(name);
            assert_eq!((back.width(), back.height()), (9, 7), "{name}");
        }
    }

    #[test]
    fn jpeg_quality_changes_the_size() {
        let image = DynamicImage::ImageRgb8(image::RgbImage::from_fn(64, 64, |x, y| {
            image::Rgb([(x * y) as u8, (x ^ y) as u8, (x + y) as u8])
        }));
        let small = encode(image.clone(), OutputFormat::Jpeg, Quality::Level(10)).expect("q10");
        let large = encode(image, OutputFormat::Jpeg, Quality::Level(95)).expect("q95");
        assert!(small.len() < large.len());
        assert!(quality(0).is_err() && quality(101).is_err());
    }

    #[test]
    fn webp_is_lossy_by_default_and_lossless_on_request() {
        // Gradients with noise, as a photo has: lossy wins there.
        let image = DynamicImage::ImageRgba8(image::RgbaImage::from_fn(96, 64, |x, y| {
            let noise = (x.wrapping_mul(73_856_093) ^ y.wrapping_mul(19_349_663)) % 24;
            image::Rgba([
                (x * 2 + noise) as u8,
                (y * 3 + noise) as u8,
                (x + y + noise) as u8,
                (x * 4) as u8,
            ])
        }));
        let lossless =
            encode(image.clone(), OutputFormat::WebP, Quality::Lossless).expect("lossless");
        let back = image::load_from_memory(&lossless)
            .expect("decodes")
            .to_rgba8();
        // Every visible pixel exact; under full transparency libwebp keeps no colour (as
        // Pillow's default, `exact=False`).
        let original = image.to_rgba8();
        assert!(back
            .pixels()
            .zip(original.pixels())
            .all(|(a, b)| if b[3] == 0 { a[3] == 0 } else { a == b }));
        assert!(is_lossless_webp(&lossless));
        let lossy = encode(image.clone(), OutputFormat::WebP, Quality::Default).expect("lossy");
        assert!(!is_lossless_webp(&lossy));
        assert!(
            lossy.len() < lossless.len(),
            "{} >= {}",
            lossy.len(),
            lossless.len()
        );
        let back = image::load_from_memory(&lossy).expect("decodes").to_rgba8();
        // The alpha plane is kept lossless.
        assert!(back
            .pixels()
            .zip(original.pixels())
            .all(|(a, b)| a[3] == b[3]));
        assert!(!is_lossless_webp(b"RIFF\x04\0\0\0WEBP") && !is_lossless_webp(b"not a webp"));
        let jpeg = encode(image, OutputFormat::Jpeg, Quality::Lossless);
        assert!(matches!(jpeg, Err(Error::BadArgument(_))));
    }
}

//! Encoding the result: png, jpeg, webp, gif, bmp or tiff.
//!
//! The default output format is the input's; an input in a format the functions do not write
//! (ico, pnm, tga, qoi, hdr, openexr, dds, farbfeld) comes back as PNG. Each encoder gets the
//! pixel layout it accepts: JPEG drops alpha and 16-bit depth, GIF is quantized to a 256-colour
//! palette (NeuQuant), WebP is written lossless (the `image` crate has no lossy WebP encoder),
//! BMP and WebP are 8-bit, PNG and TIFF keep 16 bits. `quality` (1-100) applies to JPEG only;
//! the other formats are lossless and ignore it.

use std::io::Cursor;

use image::codecs::gif::GifEncoder;
use image::codecs::webp::WebPEncoder;
use image::{DynamicImage, ImageFormat};

use super::transform::to_8bit;
use crate::error::{Error, Result};

/// JPEG quality when none is given (Pillow's default is 75; 85 keeps thumbnails sharp).
pub const JPEG_QUALITY_DEFAULT: u8 = 85;

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

/// Encodes `image` as `format`; `quality` applies to JPEG.
pub fn encode(image: DynamicImage, format: OutputFormat, quality: Option<u8>) -> Result<Vec<u8>> {
    let mut out = Cursor::new(Vec::new());
    let error = encode_error(format);
    match format {
        OutputFormat::Jpeg => {
            return encode_jpeg(image, quality.unwrap_or(JPEG_QUALITY_DEFAULT));
        }
        OutputFormat::WebP => {
            let encoder = WebPEncoder::new_lossless(&mut out);
            to_8bit(image).write_with_encoder(encoder).map_err(error)?;
        }
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
            let data = encode(image.clone(), format, None).expect(name);
            let back = image::load_from_memory(&data).expect(name);
            assert_eq!((back.width(), back.height()), (9, 7), "{name}");
        }
    }

    #[test]
    fn jpeg_quality_changes_the_size() {
        let image = DynamicImage::ImageRgb8(image::RgbImage::from_fn(64, 64, |x, y| {
            image::Rgb([(x * y) as u8, (x ^ y) as u8, (x + y) as u8])
        }));
        let small = encode(image.clone(), OutputFormat::Jpeg, Some(10)).expect("q10");
        let large = encode(image, OutputFormat::Jpeg, Some(95)).expect("q95");
        assert!(small.len() < large.len());
        assert!(quality(0).is_err() && quality(101).is_err());
    }
}

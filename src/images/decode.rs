//! Bounded decoding: every image the functions read goes through here.
//!
//! A file whose container shows damage (a truncated JPEG, GIF, WebP or BMP; a PNG chunk that
//! fails its CRC) is refused before decoding, with the table's own check (`probe`). The header
//! is read first and an image over [`PIXELS_MAX`] is refused before any pixel is
//! decoded (a decompression bomb announces its size in its header); the decoder then runs under
//! `image::Limits` capped at [`DECODE_BYTES_MAX`]. The EXIF orientation is read from the header
//! and applied, and pixels tagged with an ICC profile are converted to sRGB (`colour`), so every
//! function sees the image as a viewer shows it.
//!
//! JPEG and WebP have cheaper paths for callers that want a smaller image anyway
//! ([`decode_reduced`]): `jpeg-decoder` scales in the inverse DCT (1/2, 1/4 or 1/8), as Pillow's
//! draft mode and libvips' shrink-on-load do, and libwebp shrinks a WebP while decoding it, as
//! libvips does.

use std::io::Cursor;

use image::metadata::Orientation;
use image::{DynamicImage, ImageDecoder, ImageFormat, ImageReader, Limits};

use crate::error::{Error, Result};

/// Largest `width * height` decoded: 2^28 (16384 x 16384), the virtual table's default
/// `max_pixels`.
pub const PIXELS_MAX: u64 = 1 << 28;

/// Largest buffer a decoder may allocate: 4 bytes for each of [`PIXELS_MAX`] pixels (1 GiB), so
/// any 8-bit image within the pixel limit decodes; 16-bit and float images get proportionally
/// fewer pixels.
pub const DECODE_BYTES_MAX: u64 = PIXELS_MAX * 4;

/// A decoded image, oriented for display, with the format it was stored in.
pub struct Decoded {
    pub image: DynamicImage,
    pub format: ImageFormat,
}

/// What the header says, without decoding pixels.
pub struct Header {
    pub format: ImageFormat,
    pub width: u32,
    pub height: u32,
    pub color_type: image::ColorType,
    /// Bits per channel as stored (1 for a bilevel PNG, 16 for a 16-bit one, ...).
    pub bit_depth: u16,
    /// EXIF orientation code, 1 (upright) to 8.
    pub orientation: Orientation,
}

fn not_an_image(reason: impl std::fmt::Display) -> Error {
    Error::NotAnImage {
        at: None,
        reason: reason.to_string(),
    }
}

fn limits() -> Limits {
    let mut limits = Limits::default();
    limits.max_alloc = Some(DECODE_BYTES_MAX);
    limits
}

/// Refuses images with no pixels or more than [`PIXELS_MAX`].
pub fn check_pixels(width: u32, height: u32) -> Result<()> {
    if width == 0 || height == 0 {
        return Err(not_an_image(format!(
            "{width}x{height} image has no pixels"
        )));
    }
    if u64::from(width) * u64::from(height) > PIXELS_MAX {
        return Err(Error::ImageTooBig(format!(
            "image of {width}x{height} pixels exceeds the limit of {PIXELS_MAX} pixels \
             (a decompression bomb, or an image too large to process)"
        )));
    }
    Ok(())
}

fn reader(data: &[u8]) -> Result<(ImageReader<Cursor<&[u8]>>, ImageFormat)> {
    if data.is_empty() {
        return Err(not_an_image("empty blob"));
    }
    let (mut reader, format) =
        super::sniff::reader(data).ok_or_else(|| not_an_image("unrecognized image format"))?;
    // Decoders fill in what a truncated file lacks; such a file is refused here, as the table
    // refuses to store it.
    if let Some(Err(reason)) = crate::images::probe::check_structure(data, format) {
        return Err(not_an_image(format!(
            "damaged {}: {reason}",
            crate::images::probe::format_name(format)
        )));
    }
    reader.limits(limits());
    Ok((reader, format))
}

/// The format of `data`, checked as every decode checks it first (no pixel read, no size
/// limit): an error if it is not an image.
pub fn format(data: &[u8]) -> Result<ImageFormat> {
    reader(data).map(|(_, format)| format)
}

fn damaged(format: ImageFormat) -> impl Fn(image::ImageError) -> Error {
    move |e| match e {
        image::ImageError::Limits(e) => Error::ImageTooBig(format!(
            "{} image needs more memory than the limit of {DECODE_BYTES_MAX} bytes: {e}",
            crate::images::probe::format_name(format)
        )),
        e => not_an_image(format!(
            "unreadable {}: {e}",
            crate::images::probe::format_name(format)
        )),
    }
}

/// A decoder whose header has been read and whose size is within the limits.
fn open_decoder(data: &[u8]) -> Result<(impl ImageDecoder + use<'_>, ImageFormat, Orientation)> {
    let (reader, format) = reader(data)?;
    let mut decoder = reader.into_decoder().map_err(damaged(format))?;
    let (width, height) = decoder.dimensions();
    check_pixels(width, height)?;
    if decoder.total_bytes() > DECODE_BYTES_MAX {
        return Err(Error::ImageTooBig(format!(
            "{width}x{height} {:?} image needs {} bytes, over the limit of {DECODE_BYTES_MAX}",
            decoder.color_type(),
            decoder.total_bytes()
        )));
    }
    // A damaged EXIF block only loses the orientation, as in every viewer.
    let orientation = decoder.orientation().unwrap_or(Orientation::NoTransforms);
    Ok((decoder, format, orientation))
}

/// Reads the header only.
pub fn header(data: &[u8]) -> Result<Header> {
    let (decoder, format, orientation) = open_decoder(data)?;
    let (width, height) = decoder.dimensions();
    let original = decoder.original_color_type();
    let channels = u16::from(original.channel_count().max(1));
    Ok(Header {
        format,
        width,
        height,
        color_type: decoder.color_type(),
        bit_depth: original.bits_per_pixel() / channels,
        orientation,
    })
}

/// Decodes every pixel (the first frame of an animation), converts it to sRGB and applies the
/// EXIF orientation.
pub fn decode(data: &[u8]) -> Result<Decoded> {
    let stored = decode_stored(data)?;
    let image = for_display(stored.image, stored.orientation, stored.icc.as_deref());
    Ok(Decoded {
        image,
        format: stored.format,
    })
}

/// Decodes every pixel as stored, with the ICC profile and the EXIF orientation unapplied.
fn decode_stored(data: &[u8]) -> Result<Reduced> {
    let (mut decoder, format, orientation) = open_decoder(data)?;
    let icc = icc_profile(&mut decoder, data, format);
    let image = DynamicImage::from_decoder(decoder).map_err(damaged(format))?;
    Ok(Reduced {
        extent: (f64::from(image.width()), f64::from(image.height())),
        image,
        format,
        orientation,
        icc,
    })
}

/// The ICC profile the file embeds; `None` without one, where the container's copy is
/// unreadable, or for CMYK pixels, which the decoder has already turned into RGB without it (an
/// unusable profile is ignored: `colour`).
fn icc_profile(
    decoder: &mut impl ImageDecoder,
    data: &[u8],
    format: ImageFormat,
) -> Option<Vec<u8>> {
    let icc = decoder.icc_profile().ok().flatten()?;
    let cmyk = match format {
        // `image` reports a CMYK JPEG as the RGB it decodes it to; its frame header tells.
        ImageFormat::Jpeg => {
            let mut header = jpeg_decoder::Decoder::new(Cursor::new(data));
            header.read_info().is_ok()
                && header
                    .info()
                    .is_some_and(|info| info.pixel_format == jpeg_decoder::PixelFormat::CMYK32)
        }
        _ => matches!(
            decoder.original_color_type(),
            image::ExtendedColorType::Cmyk8 | image::ExtendedColorType::Cmyk16
        ),
    };
    (!cmyk).then_some(icc)
}

/// Makes stored pixels (or pixels resampled from them) what a viewer shows: converted to sRGB
/// from the space of the file's ICC profile, then turned by its EXIF orientation.
pub fn for_display(
    mut image: DynamicImage,
    orientation: Orientation,
    icc: Option<&[u8]>,
) -> DynamicImage {
    if let Some(icc) = icc {
        super::colour::to_srgb(&mut image, icc);
    }
    image.apply_orientation(orientation);
    image
}

/// Whether `orientation` swaps width and height.
pub fn swaps_axes(orientation: Orientation) -> bool {
    matches!(
        orientation,
        Orientation::Rotate90
            | Orientation::Rotate270
            | Orientation::Rotate90FlipH
            | Orientation::Rotate270FlipH
    )
}

/// An image decoded for a caller that shrinks it ([`decode_reduced`]): the pixels as stored, with
/// the colour conversion and the EXIF orientation still to apply ([`for_display`], to the small
/// result: cheaper, and the same pixels).
pub struct Reduced {
    pub image: DynamicImage,
    pub format: ImageFormat,
    pub orientation: Orientation,
    /// The file's ICC profile.
    pub icc: Option<Vec<u8>>,
    /// Width and height of the whole source image in `image`'s pixels. A JPEG decoded at scale
    /// 1/n covers `width / n` pixels and its last column and row overhang the image (a 1411-pixel
    /// side gives 706 pixels for 705.5), so resampling must read exactly this extent, as Pillow's
    /// `thumbnail` does with the box `draft` returns; otherwise the image's own size.
    pub extent: (f64, f64),
}

/// Decodes an image for a caller that will shrink it to fit `want_width x want_height` (as
/// displayed): a JPEG is decoded at the smallest DCT scale that still covers the request, a
/// still WebP shrunk by libwebp while decoding (by the largest whole factor that still covers
/// the request); any other image, or one the scaled decoders cannot handle (a CMYK or 16-bit
/// JPEG, an animated WebP, or data they refuse), in full, so a damaged file gets the full
/// decoder's error.
pub fn decode_reduced(data: &[u8], want_width: u32, want_height: u32) -> Result<Reduced> {
    let (reader, format) = reader(data)?;
    let mut scaled = None;
    if format == ImageFormat::Jpeg || format == ImageFormat::WebP {
        let mut decoder = reader.into_decoder().map_err(damaged(format))?;
        let (width, height) = decoder.dimensions();
        check_pixels(width, height)?;
        let orientation = decoder.orientation().unwrap_or(Orientation::NoTransforms);
        let icc = icc_profile(&mut decoder, data, format);
        let (want_width, want_height) = if swaps_axes(orientation) {
            (want_height, want_width)
        } else {
            (want_width, want_height)
        };
        scaled = if format == ImageFormat::Jpeg {
            decode_jpeg_scaled(data, (width, height), (want_width, want_height))
        } else {
            // libwebp maps the whole image onto the output pixels.
            decode_webp_scaled(data, want_width, want_height).map(|image| {
                let extent = (f64::from(image.width()), f64::from(image.height()));
                (image, extent)
            })
        }
        .map(|(image, extent)| Reduced {
            image,
            format,
            orientation,
            icc,
            extent,
        });
    }
    match scaled {
        Some(reduced) => Ok(reduced),
        None => decode_stored(data),
    }
}

/// `jpeg-decoder` at the smallest scale covering the request, with the source's extent in the
/// decoded pixels; `None` where it cannot help.
fn decode_jpeg_scaled(
    data: &[u8],
    (width, height): (u32, u32),
    (want_width, want_height): (u32, u32),
) -> Option<(DynamicImage, (f64, f64))> {
    let clamp = |n: u32| u16::try_from(n.max(1)).unwrap_or(u16::MAX);
    let mut decoder = jpeg_decoder::Decoder::new(Cursor::new(data));
    decoder.set_max_decoding_buffer_size(usize::try_from(DECODE_BYTES_MAX).ok()?);
    let (out_width, out_height) = decoder.scale(clamp(want_width), clamp(want_height)).ok()?;
    // On the image threads: jpeg-decoder runs its inverse DCTs as rayon tasks there. Without
    // rayon it would start a thread per colour component for every image (1.3 ms of
    // retina.jpg's 6.2 ms thumbnail).
    let pixels = super::pool::image_pool()
        .ok()?
        .install(|| decoder.decode())
        .ok()?;
    let info = decoder.info()?;
    let (out_width, out_height) = (u32::from(out_width), u32::from(out_height));
    // The scale is k/8 (k = 1, 2, 4 or 8) and each side ceil(side * k / 8) pixels.
    let extent = [1u32, 2, 4, 8]
        .into_iter()
        .find(|&k| {
            let side = |n: u32| (u64::from(n) * u64::from(k)).div_ceil(8);
            side(width) == u64::from(out_width) && side(height) == u64::from(out_height)
        })
        .map_or((f64::from(out_width), f64::from(out_height)), |k| {
            let scale = f64::from(k) / 8.0;
            (f64::from(width) * scale, f64::from(height) * scale)
        });
    let image = match info.pixel_format {
        jpeg_decoder::PixelFormat::L8 => {
            image::GrayImage::from_raw(out_width, out_height, pixels).map(DynamicImage::ImageLuma8)
        }
        jpeg_decoder::PixelFormat::RGB24 => {
            image::RgbImage::from_raw(out_width, out_height, pixels).map(DynamicImage::ImageRgb8)
        }
        _ => None,
    }?;
    Some((image, extent))
}

/// A still WebP decoded by libwebp shrunk by the largest whole factor (at least 2) that still
/// covers the request: libwebp averages the source pixels of each output pixel while decoding
/// (as Pillow's `reduce` does before its final resampling, and libvips' shrink-on-load), so the
/// full-size image is never built. `None` where that cannot help: a factor below 2, an animated
/// or otherwise unsupported file, a lossy image with alpha, or any decoding error.
fn decode_webp_scaled(data: &[u8], want_width: u32, want_height: u32) -> Option<DynamicImage> {
    use libwebp_sys::{VP8StatusCode, WEBP_CSP_MODE};
    use std::ffi::c_int;

    let mut config = libwebp_sys::WebPDecoderConfig::new().ok()?;
    // SAFETY: `data` is a live slice and libwebp reads at most `data.len()` bytes of it;
    // `config.input` is a valid, exclusively borrowed struct libwebp only writes.
    let status =
        unsafe { libwebp_sys::WebPGetFeatures(data.as_ptr(), data.len(), &mut config.input) };
    if status != VP8StatusCode::VP8_STATUS_OK || config.input.has_animation != 0 {
        return None;
    }
    // libwebp's scaler averages a lossy image's colours without weighting them by alpha, so the
    // colour of transparent pixels bleeds into the visible ones at every edge (its lossless
    // decoder premultiplies first). Such images take the full decode, whose resize weights by
    // alpha as Pillow's does.
    const LOSSLESS: c_int = 2;
    if config.input.has_alpha != 0 && config.input.format != LOSSLESS {
        return None;
    }
    let width = u32::try_from(config.input.width).ok()?;
    let height = u32::try_from(config.input.height).ok()?;
    check_pixels(width, height).ok()?;
    let shrink = (width / want_width.max(1)).min(height / want_height.max(1));
    if shrink < 2 {
        return None;
    }
    let (out_width, out_height) = (width.div_ceil(shrink), height.div_ceil(shrink));
    let alpha = config.input.has_alpha != 0;
    let channels: u32 = if alpha { 4 } else { 3 };
    let stride = out_width.checked_mul(channels)?;
    let mut pixels = vec![0u8; usize::try_from(u64::from(stride) * u64::from(out_height)).ok()?];

    config.options.use_scaling = 1;
    config.options.scaled_width = c_int::try_from(out_width).ok()?;
    config.options.scaled_height = c_int::try_from(out_height).ok()?;
    config.options.use_threads = 1;
    config.output.colorspace = if alpha {
        WEBP_CSP_MODE::MODE_RGBA
    } else {
        WEBP_CSP_MODE::MODE_RGB
    };
    config.output.is_external_memory = 1;
    config.output.u.RGBA = libwebp_sys::WebPRGBABuffer {
        rgba: pixels.as_mut_ptr(),
        stride: c_int::try_from(stride).ok()?,
        size: pixels.len(),
    };
    // SAFETY: `data` is a live slice libwebp reads at most `data.len()` bytes of. The output is
    // external memory: `pixels`, alive and not otherwise touched until this call returns, whose
    // pointer, stride and size (`stride * out_height` bytes) are those given; libwebp checks that
    // the scaled image fits them before writing, and writes nowhere else.
    let status = unsafe { libwebp_sys::WebPDecode(data.as_ptr(), data.len(), &mut config) };
    // SAFETY: `config.output` was initialized by `WebPDecoderConfig::new` and only set up as
    // external memory since; freeing releases whatever libwebp allocated itself (nothing for
    // external memory) and never touches `pixels`.
    unsafe { libwebp_sys::WebPFreeDecBuffer(&mut config.output) };
    if status != VP8StatusCode::VP8_STATUS_OK {
        return None;
    }
    if alpha {
        image::RgbaImage::from_raw(out_width, out_height, pixels).map(DynamicImage::ImageRgba8)
    } else {
        image::RgbImage::from_raw(out_width, out_height, pixels).map(DynamicImage::ImageRgb8)
    }
}

/// How many frames the image holds (pages of a TIFF, frames of a GIF, APNG or animated WebP),
/// read from the container without decoding pixels.
pub fn frame_count(data: &[u8], format: ImageFormat) -> Result<u32> {
    let count = match format {
        ImageFormat::Gif => {
            let mut options = gif::DecodeOptions::new();
            options.set_color_output(gif::ColorOutput::Indexed);
            let mut decoder = options.read_info(Cursor::new(data)).map_err(not_an_image)?;
            let mut count = 0u32;
            while decoder.next_frame_info().map_err(not_an_image)?.is_some() {
                count = count.saturating_add(1);
            }
            count
        }
        ImageFormat::Tiff => {
            let mut decoder =
                tiff::decoder::Decoder::new(Cursor::new(data)).map_err(not_an_image)?;
            let mut count = 1u32;
            while decoder.more_images() {
                decoder.next_image().map_err(not_an_image)?;
                count = count.saturating_add(1);
            }
            count
        }
        ImageFormat::WebP => {
            let decoder = image_webp::WebPDecoder::new(Cursor::new(data)).map_err(not_an_image)?;
            decoder.num_frames().max(1)
        }
        ImageFormat::Png => {
            let reader = png::Decoder::new(Cursor::new(data))
                .read_info()
                .map_err(not_an_image)?;
            reader
                .info()
                .animation_control
                .map_or(1, |control| control.num_frames.max(1))
        }
        _ => 1,
    };
    Ok(count)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_empty_text_and_a_header_over_the_pixel_limit() {
        assert!(decode(b"").is_err());
        assert!(decode(b"hello, not an image").is_err());
        let mut data = Vec::new();
        image::RgbImage::new(1, 1)
            .write_to(&mut Cursor::new(&mut data), ImageFormat::Png)
            .expect("encode");
        data[16..20].copy_from_slice(&100_000u32.to_be_bytes());
        data[20..24].copy_from_slice(&100_000u32.to_be_bytes());
        let crc = crc32fast::hash(&data[12..29]).to_be_bytes();
        data[29..33].copy_from_slice(&crc);
        let message = decode(&data)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(message.contains("100000x100000"), "{message}");
    }

    #[test]
    fn scaled_jpeg_decode_covers_the_request() {
        let mut data = Vec::new();
        image::RgbImage::from_fn(801, 601, |x, y| image::Rgb([x as u8, y as u8, 7]))
            .write_to(&mut Cursor::new(&mut data), ImageFormat::Jpeg)
            .expect("encode");
        let reduced = decode_reduced(&data, 200, 150).expect("decode");
        assert_eq!((reduced.image.width(), reduced.image.height()), (201, 151));
        assert_eq!(reduced.extent, (200.25, 150.25));
        let reduced = decode_reduced(&data, 300, 225).expect("decode");
        assert_eq!((reduced.image.width(), reduced.image.height()), (401, 301));
        assert_eq!(reduced.extent, (400.5, 300.5));
    }
}

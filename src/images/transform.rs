//! Geometry and colour-model changes: resize, thumbnail, crop, rotate, flip, grayscale.
//!
//! Resampling is `fast_image_resize` (SIMD convolution after Pillow's own algorithm; images with
//! alpha are premultiplied for the convolution, as Pillow does). Grayscale is Pillow's
//! `convert("L")` luma (ITU-R 601-2: 299/587/114, in its 16-bit fixed point), so masks, hashes
//! and thresholds agree with what Pillow users compute.

use fast_image_resize::{FilterType, ResizeAlg, ResizeOptions, Resizer};
use image::{DynamicImage, GrayAlphaImage, GrayImage};

use super::decode::{check_pixels, decode_reduced, for_display, swaps_axes, Decoded, Reduced};
use crate::error::{Error, Result};

/// A resampling filter, named as in Pillow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Filter {
    Nearest,
    Box,
    Bilinear,
    Hamming,
    /// Catmull-Rom (Keys, a = -0.5), Pillow's BICUBIC.
    Bicubic,
    Mitchell,
    Lanczos3,
}

impl Filter {
    pub const NAMES: &'static str = "nearest, box, bilinear, hamming, bicubic, mitchell, lanczos";

    pub fn parse(name: &str) -> Result<Filter> {
        Ok(match name.to_ascii_lowercase().as_str() {
            "nearest" => Filter::Nearest,
            "box" => Filter::Box,
            "bilinear" | "linear" | "triangle" => Filter::Bilinear,
            "hamming" => Filter::Hamming,
            "bicubic" | "cubic" | "catmullrom" | "catmull-rom" => Filter::Bicubic,
            "mitchell" => Filter::Mitchell,
            "lanczos" | "lanczos3" => Filter::Lanczos3,
            _ => {
                return Err(Error::BadArgument(format!(
                    "unknown filter '{name}' (one of {})",
                    Filter::NAMES
                )))
            }
        })
    }

    fn algorithm(self) -> ResizeAlg {
        let convolution = |filter| ResizeAlg::Convolution(filter);
        match self {
            Filter::Nearest => ResizeAlg::Nearest,
            Filter::Box => convolution(FilterType::Box),
            Filter::Bilinear => convolution(FilterType::Bilinear),
            Filter::Hamming => convolution(FilterType::Hamming),
            Filter::Bicubic => convolution(FilterType::CatmullRom),
            Filter::Mitchell => convolution(FilterType::Mitchell),
            Filter::Lanczos3 => convolution(FilterType::Lanczos3),
        }
    }
}

/// Resamples `image` to exactly `width x height`.
pub fn resize(
    image: &DynamicImage,
    width: u32,
    height: u32,
    filter: Filter,
) -> Result<DynamicImage> {
    let whole = (f64::from(image.width()), f64::from(image.height()));
    resize_extent(image, whole, width, height, filter)
}

/// Resamples the `extent` (width, height) at the top left of `image` to exactly
/// `width x height`: the whole image, or for a JPEG decoded at a reduced scale, the part that
/// is the source (see [`Reduced::extent`]).
fn resize_extent(
    image: &DynamicImage,
    extent: (f64, f64),
    width: u32,
    height: u32,
    filter: Filter,
) -> Result<DynamicImage> {
    check_pixels(width, height)?;
    let whole = (f64::from(image.width()), f64::from(image.height()));
    if (width, height) == (image.width(), image.height()) && extent == whole {
        return Ok(image.clone());
    }
    let mut out = DynamicImage::new(width, height, image.color());
    let mut options = ResizeOptions::new().resize_alg(filter.algorithm());
    if extent != whole {
        options = options.crop(0.0, 0.0, extent.0, extent.1);
    }
    Resizer::new()
        .resize(image, &mut out, &options)
        .map_err(|e| Error::Internal(format!("resize to {width}x{height}: {e}")))?;
    Ok(out)
}

/// The size Pillow's `Image.thumbnail((max_side, max_side))` gives a `width x height` image:
/// aspect ratio kept, the longer side `max_side`, the other rounded to the closest aspect, never
/// enlarged.
pub fn thumbnail_size(width: u32, height: u32, max_side: u32) -> (u32, u32) {
    if width <= max_side && height <= max_side {
        return (width, height);
    }
    let aspect = f64::from(width) / f64::from(height);
    let side = f64::from(max_side);
    // Of floor and ceil, the one whose ratio is closest to the original (Pillow's round_aspect).
    let closest = |exact: f64, error: &dyn Fn(f64) -> f64| -> u32 {
        let (low, high) = (exact.floor(), exact.ceil());
        let best = if error(high) < error(low) { high } else { low };
        (best as u32).max(1)
    };
    if aspect >= 1.0 {
        let h = closest(side / aspect, &|n| {
            if n == 0.0 {
                0.0
            } else {
                (aspect - side / n).abs()
            }
        });
        (max_side, h)
    } else {
        let w = closest(side * aspect, &|n| (aspect - n / side).abs());
        (w, max_side)
    }
}

/// Fits the image in a `max_side` square (no enlargement), oriented for display. JPEGs and WebPs
/// are decoded reduced as far as still covers the target ([`decode_reduced`]: libvips'
/// shrink-on-load rule; Pillow stops at twice the target, `reducing_gap=2`, which costs a
/// JPEG about a third more time for a few dB of agreement with its own output), then resampled
/// with Lanczos3 in the stored orientation and colours; the orientation and the conversion to
/// sRGB are applied to the small result.
pub fn thumbnail(data: &[u8], max_side: u32) -> Result<Decoded> {
    if max_side == 0 {
        return Err(Error::BadArgument("max_side must be at least 1".into()));
    }
    let header = super::decode::header(data)?;
    let (width, height) = if swaps_axes(header.orientation) {
        (header.height, header.width)
    } else {
        (header.width, header.height)
    };
    let (target_width, target_height) = thumbnail_size(width, height, max_side);
    let Reduced {
        image,
        format,
        orientation,
        icc,
        extent,
    } = decode_reduced(data, target_width, target_height)?;
    let (stored_width, stored_height) = if swaps_axes(orientation) {
        (target_height, target_width)
    } else {
        (target_width, target_height)
    };
    let image = resize_extent(
        &image,
        extent,
        stored_width,
        stored_height,
        Filter::Lanczos3,
    )?;
    let image = for_display(image, orientation, icc.as_deref());
    Ok(Decoded { image, format })
}

/// The `width x height` rectangle at (`x`, `y`), which must lie inside the image.
pub fn crop(image: &DynamicImage, x: u32, y: u32, width: u32, height: u32) -> Result<DynamicImage> {
    let inside = u64::from(x) + u64::from(width) <= u64::from(image.width())
        && u64::from(y) + u64::from(height) <= u64::from(image.height());
    if width == 0 || height == 0 || !inside {
        return Err(Error::BadArgument(format!(
            "crop box {width}x{height} at ({x}, {y}) is empty or not inside the {}x{} image",
            image.width(),
            image.height()
        )));
    }
    Ok(image.crop_imm(x, y, width, height))
}

/// Rotates clockwise by a multiple of 90 degrees (negative turns counter-clockwise).
pub fn rotate(image: &DynamicImage, degrees: i64) -> Result<DynamicImage> {
    match degrees.rem_euclid(360) {
        0 if degrees % 90 == 0 => Ok(image.clone()),
        90 => Ok(image.rotate90()),
        180 => Ok(image.rotate180()),
        270 => Ok(image.rotate270()),
        _ => Err(Error::BadArgument(format!(
            "cannot rotate by {degrees} degrees: only multiples of 90 (90, 180, 270, -90, ...)"
        ))),
    }
}

/// Mirrors left-right (`h`) or top-bottom (`v`).
pub fn flip(image: &DynamicImage, axis: &str) -> Result<DynamicImage> {
    match axis.to_ascii_lowercase().as_str() {
        "h" | "horizontal" => Ok(image.fliph()),
        "v" | "vertical" => Ok(image.flipv()),
        _ => Err(Error::BadArgument(format!(
            "flip axis '{axis}' is neither 'h' (left-right) nor 'v' (top-bottom)"
        ))),
    }
}

/// The same image with 8 bits a channel and the same channels (16-bit and float images are
/// scaled down; the filters work in 8 bits).
pub fn to_8bit(image: DynamicImage) -> DynamicImage {
    match image {
        DynamicImage::ImageLuma8(_)
        | DynamicImage::ImageLumaA8(_)
        | DynamicImage::ImageRgb8(_)
        | DynamicImage::ImageRgba8(_) => image,
        DynamicImage::ImageLuma16(_) => DynamicImage::ImageLuma8(image.to_luma8()),
        DynamicImage::ImageLumaA16(_) => DynamicImage::ImageLumaA8(image.to_luma_alpha8()),
        other if other.color().has_alpha() => DynamicImage::ImageRgba8(other.to_rgba8()),
        other => DynamicImage::ImageRgb8(other.to_rgb8()),
    }
}

/// Pillow's luma of one RGB pixel: `(R*19595 + G*38470 + B*7471 + 0x8000) >> 16`.
pub fn luma_of(r: u8, g: u8, b: u8) -> u8 {
    let sum = u32::from(r) * 19595 + u32::from(g) * 38470 + u32::from(b) * 7471 + 0x8000;
    (sum >> 16) as u8
}

/// 8-bit luma, as Pillow's `convert("L")` (alpha ignored).
pub fn luma8(image: &DynamicImage) -> GrayImage {
    match image {
        DynamicImage::ImageLuma8(gray) => gray.clone(),
        DynamicImage::ImageLumaA8(_)
        | DynamicImage::ImageLuma16(_)
        | DynamicImage::ImageLumaA16(_) => image.to_luma8(),
        DynamicImage::ImageRgb8(rgb) => {
            let mut out = GrayImage::new(rgb.width(), rgb.height());
            for (o, p) in out.pixels_mut().zip(rgb.pixels()) {
                o.0[0] = luma_of(p.0[0], p.0[1], p.0[2]);
            }
            out
        }
        other => {
            let rgba = other.to_rgba8();
            let mut out = GrayImage::new(rgba.width(), rgba.height());
            for (o, p) in out.pixels_mut().zip(rgba.pixels()) {
                o.0[0] = luma_of(p.0[0], p.0[1], p.0[2]);
            }
            out
        }
    }
}

/// 8-bit grayscale, keeping alpha if the image has it.
pub fn grayscale(image: &DynamicImage) -> DynamicImage {
    let gray = luma8(image);
    if !image.color().has_alpha() {
        return DynamicImage::ImageLuma8(gray);
    }
    let alpha = image.to_luma_alpha8();
    let mut out = GrayAlphaImage::new(gray.width(), gray.height());
    for ((o, g), a) in out.pixels_mut().zip(gray.pixels()).zip(alpha.pixels()) {
        o.0 = [g.0[0], a.0[1]];
    }
    DynamicImage::ImageLumaA8(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thumbnail_size_matches_pillow() {
        // Values from Pillow 11's Image.thumbnail((256, 256)).
        assert_eq!(thumbnail_size(1000, 872, 256), (256, 223));
        assert_eq!(thumbnail_size(451, 300, 256), (256, 170));
        assert_eq!(thumbnail_size(550, 660, 256), (213, 256));
        assert_eq!(thumbnail_size(100, 80, 256), (100, 80));
    }

    #[test]
    fn rotate_accepts_multiples_of_90_only() {
        let image = DynamicImage::ImageLuma8(GrayImage::new(3, 2));
        assert_eq!(rotate(&image, 90).map(|i| i.width()).ok(), Some(2));
        assert_eq!(rotate(&image, -90).map(|i| i.width()).ok(), Some(2));
        assert_eq!(rotate(&image, 360).map(|i| i.width()).ok(), Some(3));
        assert!(rotate(&image, 45).is_err());
    }

    #[test]
    fn luma_is_pillows() {
        assert_eq!(luma_of(255, 255, 255), 255);
        assert_eq!(luma_of(255, 0, 0), 76);
        assert_eq!(luma_of(0, 255, 0), 150);
        assert_eq!(luma_of(0, 0, 255), 29);
    }
}

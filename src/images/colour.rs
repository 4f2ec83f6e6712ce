//! Colour management: a picture tagged with an ICC profile (a phone's Display P3, a camera's
//! Adobe RGB, a monitor's own profile) is converted to sRGB before any function works on it, and
//! every image a function returns is sRGB with no profile.
//!
//! Why convert rather than carry the profile into the output: the outputs are thumbnails and web
//! images, which browsers and viewers show as sRGB when untagged, and the pixel-comparing
//! functions (perceptual hashes, thresholds, regions, equalize) only mean something when every
//! image is in one space. libvips' `thumbnail` does the same (it exports sRGB by default).
//! The price is a wide-gamut picture's colours outside sRGB, which are clipped to its edge.
//!
//! Rules (README.md, "Colour"):
//! - RGB profiles apply to RGB and RGBA pixels, gray profiles to gray ones, at 8 and 16 bits.
//!   Float images (Radiance HDR, OpenEXR) carry no ICC profile in the formats read here.
//! - A profile that does not parse, that describes other pixels than the image has (a CMYK
//!   profile on the RGB pixels a CMYK JPEG is decoded to, a gray profile on colour pixels), or
//!   that no transform can be built from is ignored: the pixels are taken as sRGB, as browsers do
//!   with a profile they cannot use. A profile is never the reason a function fails.
//! - A profile that maps every probe colour to itself within one level (any sRGB profile, v2
//!   with its 1024-entry curves or v4) leaves the pixels untouched, bit for bit.
//! - The rendering intent is the profile's perceptual one (Pillow's `ImageCms` default); a
//!   matrix/TRC profile, as every display, phone and camera RGB profile is, has only the
//!   colorimetric mapping, so it is that.
//!
//! The conversion runs on the image threads in strips, and where a function shrinks the image
//! first (thumbnails) it runs on the small result. What a profile does is worked out once per
//! distinct profile and pixel layout and kept ([`TRANSFORMS_KEPT`]): building a transform costs
//! about a millisecond, a thumbnail of a tile a few microseconds.

use std::sync::{Arc, Mutex, PoisonError};

use image::DynamicImage;
use moxcms::{
    ColorProfile, DataColorSpace, Layout, Transform16BitExecutor, Transform8BitExecutor,
    TransformExecutor, TransformOptions,
};
use rayon::prelude::*;

/// Pixels per strip of the conversion handed to one image thread.
const STRIP_PIXELS: usize = 1 << 16;

/// How many (profile, layout) verdicts are kept; the oldest goes first.
const TRANSFORMS_KEPT: usize = 32;

/// A conversion to sRGB for one profile and one pixel layout.
#[derive(Clone)]
enum Transform {
    Eight(Arc<Transform8BitExecutor>),
    Sixteen(Arc<Transform16BitExecutor>),
}

/// The pixels a transform is built for: a layout, at 8 or 16 bits.
type Pixels = (Layout, bool);

/// Converts `image`, whose pixels are in the space the ICC profile `icc` describes, to sRGB in
/// place; leaves it as it is where the profile is sRGB already or cannot be used (module rules).
pub fn to_srgb(image: &mut DynamicImage, icc: &[u8]) {
    let (layout, sixteen) = match image {
        DynamicImage::ImageRgb8(_) => (Layout::Rgb, false),
        DynamicImage::ImageRgba8(_) => (Layout::Rgba, false),
        DynamicImage::ImageLuma8(_) => (Layout::Gray, false),
        DynamicImage::ImageLumaA8(_) => (Layout::GrayAlpha, false),
        DynamicImage::ImageRgb16(_) => (Layout::Rgb, true),
        DynamicImage::ImageRgba16(_) => (Layout::Rgba, true),
        DynamicImage::ImageLuma16(_) => (Layout::Gray, true),
        DynamicImage::ImageLumaA16(_) => (Layout::GrayAlpha, true),
        _ => return,
    };
    let channels = usize::from(image.color().channel_count());
    // A transform that cannot be built, or fails part way (it restores the pixels), leaves the
    // image as sRGB: the rule for an unusable profile.
    match kept_transform(icc, (layout, sixteen)) {
        Some(Transform::Eight(transform)) => {
            if let Some(samples) = samples_8bit(image) {
                apply(&*transform, samples, channels);
            }
        }
        Some(Transform::Sixteen(transform)) => {
            if let Some(samples) = samples_16bit(image) {
                apply(&*transform, samples, channels);
            }
        }
        None => {}
    }
}

/// The samples of an 8-bit gray or RGB image, alpha included.
fn samples_8bit(image: &mut DynamicImage) -> Option<&mut [u8]> {
    match image {
        DynamicImage::ImageRgb8(pixels) => Some(&mut **pixels),
        DynamicImage::ImageRgba8(pixels) => Some(&mut **pixels),
        DynamicImage::ImageLuma8(pixels) => Some(&mut **pixels),
        DynamicImage::ImageLumaA8(pixels) => Some(&mut **pixels),
        _ => None,
    }
}

/// The samples of a 16-bit gray or RGB image, alpha included.
fn samples_16bit(image: &mut DynamicImage) -> Option<&mut [u16]> {
    match image {
        DynamicImage::ImageRgb16(pixels) => Some(&mut **pixels),
        DynamicImage::ImageRgba16(pixels) => Some(&mut **pixels),
        DynamicImage::ImageLuma16(pixels) => Some(&mut **pixels),
        DynamicImage::ImageLumaA16(pixels) => Some(&mut **pixels),
        _ => None,
    }
}

/// The transform for `icc` and `pixels`, from those kept or worked out and kept; `None` where
/// the pixels are to be left as they are.
fn kept_transform(icc: &[u8], pixels: Pixels) -> Option<Transform> {
    type Kept = Vec<(([u8; 32], Pixels), Option<Transform>)>;
    static KEPT: Mutex<Kept> = Mutex::new(Vec::new());
    let key = (*blake3::hash(icc).as_bytes(), pixels);
    let kept = || KEPT.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some((_, transform)) = kept().iter().find(|(k, _)| *k == key) {
        return transform.clone();
    }
    // Worked out without the lock: two threads may both do it, and keep the same answer.
    let transform = transform_for(icc, pixels);
    let mut kept = kept();
    if kept.len() >= TRANSFORMS_KEPT {
        kept.remove(0);
    }
    kept.push((key, transform.clone()));
    transform
}

/// Works out what `icc` does to `pixels` (module rules).
fn transform_for(icc: &[u8], (layout, sixteen): Pixels) -> Option<Transform> {
    let profile = ColorProfile::new_from_slice(icc).ok()?;
    let gray = matches!(layout, Layout::Gray | Layout::GrayAlpha);
    let expected = if gray {
        DataColorSpace::Gray
    } else {
        DataColorSpace::Rgb
    };
    if profile.color_space != expected || is_srgb(&profile, gray) {
        return None;
    }
    let srgb = ColorProfile::new_srgb();
    let options = TransformOptions::default();
    if sixteen {
        let transform = profile.create_transform_16bit(layout, &srgb, layout, options);
        transform.ok().map(Transform::Sixteen)
    } else {
        let transform = profile.create_transform_8bit(layout, &srgb, layout, options);
        transform.ok().map(Transform::Eight)
    }
}

/// Whether `profile` maps a grid of probe colours (every gray level, for a gray profile) to
/// themselves within one level: sRGB in all but name.
fn is_srgb(profile: &ColorProfile, gray: bool) -> bool {
    let layout = if gray { Layout::Gray } else { Layout::Rgb };
    let srgb = ColorProfile::new_srgb();
    let Ok(transform) =
        profile.create_transform_8bit(layout, &srgb, layout, TransformOptions::default())
    else {
        // Unusable: ignored, which leaves the pixels as they are.
        return true;
    };
    let probe: Vec<u8> = if gray {
        (0..=255).collect()
    } else {
        let levels = [0u8, 16, 48, 80, 112, 144, 176, 208, 240, 255];
        let mut probe = Vec::with_capacity(levels.len().pow(3) * 3);
        for r in levels {
            for g in levels {
                for b in levels {
                    probe.extend([r, g, b]);
                }
            }
        }
        probe
    };
    let mut out = vec![0u8; probe.len()];
    transform.transform(&probe, &mut out).is_ok()
        && probe.iter().zip(&out).all(|(a, b)| a.abs_diff(*b) <= 1)
}

/// Runs `transform` over `pixels` (`channels` samples a pixel) in strips on the image threads;
/// on any failure the pixels are restored and left as they were.
fn apply<T>(transform: &(dyn TransformExecutor<T> + Send + Sync), pixels: &mut [T], channels: usize)
where
    T: Copy + Default + Send + Sync,
{
    let source = pixels.to_vec();
    let strip = STRIP_PIXELS * channels;
    let run = |pixels: &mut [T]| {
        source
            .par_chunks(strip)
            .zip(pixels.par_chunks_mut(strip))
            .try_for_each(|(from, to)| transform.transform(from, to))
    };
    let converted = match super::pool::image_pool() {
        Ok(pool) => pool.install(|| run(pixels)),
        Err(_) => run(pixels),
    };
    if converted.is_err() {
        pixels.copy_from_slice(&source);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encoded(profile: &ColorProfile) -> Vec<u8> {
        profile.encode().expect("encode profile")
    }

    #[test]
    fn display_p3_red_becomes_an_out_of_gamut_srgb_red() {
        let mut image =
            DynamicImage::ImageRgb8(image::RgbImage::from_pixel(3, 2, image::Rgb([255, 0, 0])));
        to_srgb(&mut image, &encoded(&ColorProfile::new_display_p3()));
        let pixel = image.to_rgb8().get_pixel(0, 0).0;
        // P3's red lies outside sRGB: it clips to full red, with green and blue at the floor.
        assert_eq!(pixel[0], 255);
        assert!(pixel[1] < 10 && pixel[2] < 10, "{pixel:?}");
        let mut mid = DynamicImage::ImageRgb8(image::RgbImage::from_pixel(
            1,
            1,
            image::Rgb([120, 160, 60]),
        ));
        to_srgb(&mut mid, &encoded(&ColorProfile::new_display_p3()));
        assert_ne!(mid.to_rgb8().get_pixel(0, 0).0, [120, 160, 60]);
    }

    #[test]
    fn srgb_damaged_and_mismatched_profiles_leave_pixels_alone() {
        let original = DynamicImage::ImageRgba8(image::RgbaImage::from_fn(40, 30, |x, y| {
            image::Rgba([x as u8 * 6, y as u8 * 8, 90, 200])
        }));
        let p3 = encoded(&ColorProfile::new_display_p3());
        let gray = encoded(&ColorProfile::new_gray_with_gamma(2.2));
        let untouched: [&[u8]; 5] = [
            &encoded(&ColorProfile::new_srgb()),
            &p3[..p3.len() / 2],
            b"not a profile",
            &[],
            &gray,
        ];
        for icc in untouched {
            let mut image = original.clone();
            to_srgb(&mut image, icc);
            assert_eq!(image.as_bytes(), original.as_bytes());
        }
    }

    #[test]
    fn sixteen_bit_and_gray_pixels_convert_too() {
        let mut deep = DynamicImage::ImageRgb16(image::ImageBuffer::from_pixel(
            2,
            2,
            image::Rgb([30000u16, 40000, 20000]),
        ));
        to_srgb(&mut deep, &encoded(&ColorProfile::new_adobe_rgb()));
        assert_ne!(deep.to_rgb16().get_pixel(0, 0).0, [30000, 40000, 20000]);
        let mut gray =
            DynamicImage::ImageLuma8(image::GrayImage::from_pixel(2, 2, image::Luma([100])));
        to_srgb(&mut gray, &encoded(&ColorProfile::new_gray_with_gamma(1.0)));
        // Linear 100/255 is sRGB-encoded much lighter.
        assert!(gray.to_luma8().get_pixel(0, 0).0[0] > 150);
    }
}

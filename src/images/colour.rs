//! Colour management: a picture tagged with an ICC profile (a phone's Display P3, a camera's
//! Adobe RGB, a monitor's own profile) is converted to sRGB before any function works on it, and
//! every image a function returns is sRGB with no profile.
//!
//! Why convert rather than carry the profile into the output: the outputs are thumbnails and web
//! images, which browsers and viewers show as sRGB when untagged, and the pixel-comparing
//! functions (perceptual hashes, thresholds, regions, equalize) only mean something when every
//! image is in one space; a profile carried along would leave every reader (a tile server, a
//! training pipeline) to manage colour. libvips' `thumbnail` carries the profile unless told
//! `export_profile=srgb`; here sRGB is the only behaviour.
//! The price is a wide-gamut picture's colours outside sRGB, which are clipped to its edge.
//!
//! Rules (README.md, "Colour"):
//! - RGB profiles apply to RGB and RGBA pixels, gray profiles to gray ones, at 8 and 16 bits.
//!   Float images (Radiance HDR, OpenEXR) carry no ICC profile in the formats read here.
//! - A profile that does not parse, that describes other pixels than the image has (a gray
//!   profile on colour pixels; any profile on a CMYK JPEG, whose pixels the decoder has already
//!   turned into RGB), that is no device or colour-space profile (a device link, an abstract or
//!   a named-colour profile), or that no transform can be built from is ignored: the pixels are
//!   taken as sRGB, as browsers do with a profile they cannot use. So is one whose tag table
//!   would make the parser's time or memory grow beyond the profile's size ([`plausible`]). A
//!   profile is never the reason a function fails.
//! - A profile that maps every probe colour to itself within one level (every gray, every
//!   level of each primary, and a grid of colours: any sRGB profile, v2 with its 1024-entry
//!   curves or v4) leaves the pixels untouched, bit for bit.
//! - The rendering intent is the profile's perceptual one; a matrix/TRC profile, as every
//!   display, phone and camera RGB profile is, has only the colorimetric mapping, so it is that,
//!   without black-point compensation. (LittleCMS, as Pillow's `ImageCms` calls it by default,
//!   compensates the black point under the perceptual intent: for a profile whose black is not
//!   zero, a measured display's, the two differ in the shadows.)
//!
//! The conversion runs on the image threads in strips, and where a function shrinks the image
//! first (thumbnails) it runs on the small result. What a profile does is worked out once per
//! distinct profile and pixel layout and kept ([`TRANSFORMS_KEPT`]): building a transform costs
//! about a millisecond, a thumbnail of a tile a few microseconds.

use std::sync::{Arc, Mutex, PoisonError};

use image::DynamicImage;
use moxcms::{
    ColorProfile, DataColorSpace, Layout, ProfileClass, Transform16BitExecutor,
    Transform8BitExecutor, TransformExecutor, TransformOptions,
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
    // Worked out without the lock: two threads may both do it, and keep the same answer. A
    // panic in the engine on a profile nobody fuzzed is that profile being unusable.
    let transform = std::panic::catch_unwind(|| transform_for(icc, pixels)).unwrap_or_default();
    let mut kept = kept();
    if kept.len() >= TRANSFORMS_KEPT {
        kept.remove(0);
    }
    kept.push((key, transform.clone()));
    transform
}

/// Works out what `icc` does to `pixels` (module rules).
fn transform_for(icc: &[u8], (layout, sixteen): Pixels) -> Option<Transform> {
    if !plausible(icc) {
        return None;
    }
    let profile = ColorProfile::new_from_slice(icc).ok()?;
    let device_or_space = matches!(
        profile.profile_class,
        ProfileClass::InputDevice
            | ProfileClass::DisplayDevice
            | ProfileClass::OutputDevice
            | ProfileClass::ColorSpace
    );
    if !device_or_space {
        return None;
    }
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

/// Most tags a profile may have: real ones have 10 to 30.
const TAGS_MAX: usize = 100;

/// Whether the tag table of `icc` is one the parser reads in time and memory in proportion to
/// the profile's size: at most [`TAGS_MAX`] tags, no signature twice (a table repeating one tag
/// makes the parser copy its data once per entry), and the records of every `mluc` (text) tag
/// no longer together than the tag (records all pointing at one long string make it build the
/// string once per record). Offsets outside the profile are the parser's to refuse.
fn plausible(icc: &[u8]) -> bool {
    let u32_at = |bytes: &[u8], at: usize| {
        let word = bytes.get(at..at.checked_add(4)?)?;
        Some(u32::from_be_bytes(<[u8; 4]>::try_from(word).ok()?) as usize)
    };
    let Some(count) = u32_at(icc, 128).filter(|&n| n <= TAGS_MAX) else {
        return false;
    };
    let mut signatures = Vec::with_capacity(count);
    for entry in (0..count).map(|i| 132 + 12 * i) {
        let (Some(signature), Some(offset), Some(size)) = (
            u32_at(icc, entry),
            u32_at(icc, entry + 4),
            u32_at(icc, entry + 8),
        ) else {
            return false;
        };
        if signatures.contains(&signature) {
            return false;
        }
        signatures.push(signature);
        let tag = offset
            .checked_add(size)
            .and_then(|end| icc.get(offset..end))
            .unwrap_or_default();
        if tag.starts_with(b"mluc") && !mluc_fits(tag, &u32_at) {
            return false;
        }
    }
    true
}

/// Whether the records of `mluc` tag `tag` (a count at 8, a record size at 12, records of
/// language, country, length and offset from 16) fit in it, their strings together included.
fn mluc_fits(tag: &[u8], u32_at: &dyn Fn(&[u8], usize) -> Option<usize>) -> bool {
    let (Some(records), Some(record_size)) = (u32_at(tag, 8), u32_at(tag, 12)) else {
        return false;
    };
    let table_fits = records
        .checked_mul(record_size.max(12))
        .is_some_and(|bytes| bytes <= tag.len());
    let mut text = 0usize;
    table_fits
        && (0..records).all(|r| {
            let length = u32_at(tag, 16 + r * record_size + 4).unwrap_or(usize::MAX);
            text = text.saturating_add(length);
            text <= tag.len()
        })
}

/// Whether `profile` maps probe colours (every gray level; for an RGB profile also every level
/// of each primary alone and a grid of colours) to themselves within one level: sRGB in all but
/// name.
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
        let grid = [0u8, 51, 102, 153, 204, 255];
        let mut probe = Vec::new();
        for v in 0..=255u8 {
            probe.extend([v, v, v, v, 0, 0, 0, v, 0, 0, 0, v]);
        }
        for r in grid {
            for g in grid {
                for b in grid {
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

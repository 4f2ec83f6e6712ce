//! Restoration and enhancement filters, on 8-bit images (16-bit input is scaled to 8 bits).
//!
//! - `median`: each channel's median over a (2r+1)^2 square, edges replicated (Pillow's
//!   `MedianFilter(2r+1)`), with Huang's sliding histogram: O(r) a pixel.
//! - `blur`: separable Gaussian of standard deviation sigma (the `image` crate's).
//! - `equalize`: Pillow's `ImageOps.equalize`, per colour channel; alpha untouched.
//! - `adjust`: Pillow's `ImageEnhance.Brightness` then `ImageEnhance.Contrast` (factors, 1.0 =
//!   unchanged); alpha untouched.
//! - `sharpen`: unsharp mask `v + amount * (v - gaussian(v, sigma))`; alpha untouched.

use image::DynamicImage;

use super::transform::{luma8, to_8bit};
use crate::error::{Error, Result};

/// Largest median radius (a 129 x 129 window; cost grows linearly with it).
pub const MEDIAN_RADIUS_MAX: u32 = 64;
/// Largest Gaussian sigma (kernel about 6 sigma wide).
pub const SIGMA_MAX: f64 = 100.0;
/// Largest factor for brightness, contrast and sharpening amount.
pub const FACTOR_MAX: f64 = 100.0;

/// The 8-bit image's raw samples, channel count, and how many leading channels are colour.
fn samples(image: &mut DynamicImage) -> (&mut [u8], usize, usize) {
    let (channels, colour) = match image {
        DynamicImage::ImageLuma8(_) => (1, 1),
        DynamicImage::ImageLumaA8(_) => (2, 1),
        DynamicImage::ImageRgb8(_) => (3, 3),
        _ => (4, 3),
    };
    let buffer: &mut [u8] = match image {
        DynamicImage::ImageLuma8(i) => i,
        DynamicImage::ImageLumaA8(i) => i,
        DynamicImage::ImageRgb8(i) => i,
        DynamicImage::ImageRgba8(i) => i,
        // to_8bit leaves no other variant; an empty slice leaves such an image unchanged.
        _ => &mut [],
    };
    (buffer, channels, colour)
}

fn check_range(name: &str, value: f64, low: f64, high: f64) -> Result<()> {
    if value.is_finite() && value >= low && value <= high {
        Ok(())
    } else {
        Err(Error::BadArgument(format!(
            "{name} {value} is outside {low}..{high}"
        )))
    }
}

/// Median filter of the given radius on every channel.
pub fn median(image: DynamicImage, radius: i64) -> Result<DynamicImage> {
    let radius = u32::try_from(radius)
        .ok()
        .filter(|r| (1..=MEDIAN_RADIUS_MAX).contains(r))
        .ok_or_else(|| {
            Error::BadArgument(format!("radius {radius} is outside 1..{MEDIAN_RADIUS_MAX}"))
        })?;
    let mut image = to_8bit(image);
    let (width, height) = (image.width() as usize, image.height() as usize);
    let (buffer, channels, _) = samples(&mut image);
    let source = buffer.to_vec();
    for channel in 0..channels {
        median_plane(
            &source,
            buffer,
            width,
            height,
            channels,
            channel,
            radius as usize,
        );
    }
    Ok(image)
}

/// Huang's algorithm on one interleaved channel: a histogram of the window slides along each
/// row; the median is tracked with the count of samples below it.
fn median_plane(
    source: &[u8],
    out: &mut [u8],
    width: usize,
    height: usize,
    channels: usize,
    channel: usize,
    radius: usize,
) {
    let at = |x: isize, y: isize| -> u8 {
        let x = x.clamp(0, width as isize - 1) as usize;
        let y = y.clamp(0, height as isize - 1) as usize;
        source[(y * width + x) * channels + channel]
    };
    let r = radius as isize;
    let window = (2 * radius + 1) * (2 * radius + 1);
    let rank = window / 2; // 0-based: the middle of an odd count
    for y in 0..height as isize {
        let mut histogram = [0u32; 256];
        for dy in -r..=r {
            for dx in -r..=r {
                histogram[usize::from(at(dx, y + dy))] += 1;
            }
        }
        // median value and how many samples lie below it
        let (mut median, mut below) = (0usize, 0usize);
        for x in 0..width as isize {
            if x > 0 {
                for dy in -r..=r {
                    let gone = usize::from(at(x - r - 1, y + dy));
                    let come = usize::from(at(x + r, y + dy));
                    histogram[gone] -= 1;
                    histogram[come] += 1;
                    below = below + usize::from(come < median) - usize::from(gone < median);
                }
            }
            while below > rank {
                median -= 1;
                below -= histogram[median] as usize;
            }
            while below + histogram[median] as usize <= rank {
                below += histogram[median] as usize;
                median += 1;
            }
            out[(y as usize * width + x as usize) * channels + channel] = median as u8;
        }
    }
}

/// Gaussian blur of standard deviation `sigma` pixels.
pub fn blur(image: DynamicImage, sigma: f64) -> Result<DynamicImage> {
    check_range("sigma", sigma, 0.0, SIGMA_MAX)?;
    if sigma == 0.0 {
        return Ok(image);
    }
    Ok(to_8bit(image).blur(sigma as f32))
}

/// Pillow's `ImageOps.equalize`: per colour channel, a lookup table that spreads the histogram
/// (the most frequent top value excluded, as Pillow does).
pub fn equalize(image: DynamicImage) -> DynamicImage {
    let mut image = to_8bit(image);
    let (buffer, channels, colour) = samples(&mut image);
    for channel in 0..colour {
        let mut histogram = [0u64; 256];
        for pixel in buffer.chunks_exact(channels) {
            histogram[usize::from(pixel[channel])] += 1;
        }
        let lut = equalize_lut(&histogram);
        for pixel in buffer.chunks_exact_mut(channels) {
            pixel[channel] = lut[usize::from(pixel[channel])];
        }
    }
    image
}

fn equalize_lut(histogram: &[u64; 256]) -> [u8; 256] {
    let mut lut = [0u8; 256];
    for (i, v) in lut.iter_mut().enumerate() {
        *v = i as u8;
    }
    let used: Vec<u64> = histogram.iter().copied().filter(|&n| n > 0).collect();
    let Some(&last) = used.last() else {
        return lut;
    };
    if used.len() <= 1 {
        return lut;
    }
    let step = (used.iter().sum::<u64>() - last) / 255;
    if step == 0 {
        return lut;
    }
    let mut n = step / 2;
    for (i, v) in lut.iter_mut().enumerate() {
        *v = (n / step).min(255) as u8;
        n += histogram[i];
    }
    lut
}

/// Pillow's blend of a sample with a degenerate value, truncated and clipped as its C code does.
fn blend(degenerate: f32, value: u8, factor: f32) -> u8 {
    let v = degenerate + factor * (f32::from(value) - degenerate);
    v.clamp(0.0, 255.0) as u8
}

/// Brightness then contrast, as Pillow's `ImageEnhance`: brightness scales toward black,
/// contrast toward the mean luma (rounded) of the brightened image. 1.0 leaves the image as is.
pub fn adjust(image: DynamicImage, brightness: f64, contrast: f64) -> Result<DynamicImage> {
    check_range("brightness", brightness, 0.0, FACTOR_MAX)?;
    check_range("contrast", contrast, 0.0, FACTOR_MAX)?;
    let (brightness, contrast) = (brightness as f32, contrast as f32);
    let mut image = to_8bit(image);
    {
        let (buffer, channels, colour) = samples(&mut image);
        for pixel in buffer.chunks_exact_mut(channels) {
            for v in &mut pixel[..colour] {
                *v = blend(0.0, *v, brightness);
            }
        }
    }
    let luma = luma8(&image);
    let count = luma.as_raw().len().max(1) as f64;
    let sum: u64 = luma.as_raw().iter().map(|&v| u64::from(v)).sum();
    let mean = (sum as f64 / count + 0.5).floor() as f32;
    let (buffer, channels, colour) = samples(&mut image);
    for pixel in buffer.chunks_exact_mut(channels) {
        for v in &mut pixel[..colour] {
            *v = blend(mean, *v, contrast);
        }
    }
    Ok(image)
}

/// Unsharp mask: each colour sample moves away from its Gaussian-blurred value by `amount`
/// times the difference.
pub fn sharpen(image: DynamicImage, amount: f64, sigma: f64) -> Result<DynamicImage> {
    check_range("amount", amount, 0.0, FACTOR_MAX)?;
    check_range("sigma", sigma, 0.0, SIGMA_MAX)?;
    if amount == 0.0 || sigma == 0.0 {
        return Ok(to_8bit(image));
    }
    let mut image = to_8bit(image);
    let mut blurred = image.blur(sigma as f32);
    let (smooth, _, _) = samples(&mut blurred);
    let smooth = smooth.to_vec();
    let (buffer, channels, colour) = samples(&mut image);
    for (pixel, soft) in buffer
        .chunks_exact_mut(channels)
        .zip(smooth.chunks_exact(channels))
    {
        for (v, s) in pixel[..colour].iter_mut().zip(&soft[..colour]) {
            let sharp = f64::from(*v) + amount * (f64::from(*v) - f64::from(*s));
            *v = sharp.round().clamp(0.0, 255.0) as u8;
        }
    }
    Ok(image)
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::GrayImage;

    #[test]
    fn median_removes_salt_noise_and_keeps_flat_areas() {
        let mut gray = GrayImage::from_pixel(9, 9, image::Luma([100]));
        gray.put_pixel(4, 4, image::Luma([255]));
        gray.put_pixel(0, 0, image::Luma([0]));
        let out = median(DynamicImage::ImageLuma8(gray), 1).expect("median");
        assert!(out.to_luma8().pixels().all(|p| p.0[0] == 100));
    }

    #[test]
    fn median_matches_brute_force() {
        let gray = GrayImage::from_fn(13, 11, |x, y| {
            image::Luma([((x * 37 + y * 91) % 251) as u8])
        });
        let out = median(DynamicImage::ImageLuma8(gray.clone()), 2)
            .expect("median")
            .to_luma8();
        for y in 0..11i32 {
            for x in 0..13i32 {
                let mut window = Vec::new();
                for dy in -2..=2 {
                    for dx in -2..=2 {
                        let (sx, sy) = ((x + dx).clamp(0, 12), (y + dy).clamp(0, 10));
                        window.push(gray.get_pixel(sx as u32, sy as u32).0[0]);
                    }
                }
                window.sort_unstable();
                assert_eq!(
                    out.get_pixel(x as u32, y as u32).0[0],
                    window[12],
                    "({x}, {y})"
                );
            }
        }
    }

    #[test]
    fn equalize_spreads_a_narrow_histogram() {
        let gray = GrayImage::from_fn(64, 64, |x, _| image::Luma([100 + (x % 8) as u8]));
        let out = equalize(DynamicImage::ImageLuma8(gray)).to_luma8();
        let (low, high) = out
            .pixels()
            .fold((255u8, 0u8), |(l, h), p| (l.min(p.0[0]), h.max(p.0[0])));
        assert!(low < 20 && high > 200, "{low}..{high}");
    }

    #[test]
    fn adjust_by_one_is_identity() {
        let rgb =
            image::RgbImage::from_fn(5, 5, |x, y| image::Rgb([x as u8 * 50, y as u8 * 50, 9]));
        let out = adjust(DynamicImage::ImageRgb8(rgb.clone()), 1.0, 1.0).expect("adjust");
        assert_eq!(out.to_rgb8(), rgb);
        assert!(adjust(DynamicImage::ImageRgb8(rgb), -1.0, 1.0).is_err());
    }
}

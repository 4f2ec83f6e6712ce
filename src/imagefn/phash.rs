//! Perceptual hash, as the `imagehash` package's `phash` computes it, and Hamming distance.
//!
//! Luma (Pillow's `convert("L")`), resized to 32 x 32 with Lanczos3 exactly as Pillow's
//! `resize(..., LANCZOS)` does it for 8-bit images (its coefficients, 22-bit fixed point,
//! horizontal pass first through an 8-bit intermediate: a phash is decided by the signs of
//! small differences, so near-equal is not enough), a 2-D DCT-II (rows, then columns), the top-left 8 x 8 coefficients
//! including DC, and a bit set for each coefficient above their median. Bits are in row-major
//! order, the first the most significant: the integer equals `int(str(imagehash.phash(im)), 16)`
//! (stored in SQLite as the signed 64-bit integer with the same bits).

use image::DynamicImage;

use image::GrayImage;

use super::transform::luma8;
use crate::error::Result;

const SIDE: usize = 32;
const KEEP: usize = 8;

/// The 64-bit perceptual hash of an image.
pub fn phash(image: &DynamicImage) -> Result<u64> {
    let gray = luma8(image);
    let small = pillow_lanczos(&gray, SIDE, SIDE);
    let pixels: Vec<f64> = small.iter().map(|&v| f64::from(v)).collect();
    let coefficients = dct_low(&pixels);
    let mut sorted = coefficients;
    sorted.sort_by(f64::total_cmp);
    let median = (sorted[KEEP * KEEP / 2 - 1] + sorted[KEEP * KEEP / 2]) / 2.0;
    Ok(coefficients
        .iter()
        .fold(0u64, |hash, &c| (hash << 1) | u64::from(c > median)))
}

/// Pillow's fixed-point precision for 8-bit resampling (`PRECISION_BITS` in Resample.c).
const PRECISION_BITS: u32 = 32 - 8 - 2;

fn sinc(x: f64) -> f64 {
    if x == 0.0 {
        1.0
    } else {
        let x = x * std::f64::consts::PI;
        x.sin() / x
    }
}

fn lanczos3(x: f64) -> f64 {
    if (-3.0..3.0).contains(&x) {
        sinc(x) * sinc(x / 3.0)
    } else {
        0.0
    }
}

/// One output sample's source window: first index and fixed-point weights.
struct Taps {
    first: usize,
    weights: Vec<i64>,
}

/// Pillow's `precompute_coeffs` and `normalize_coeffs_8bpc` for resizing `in_size` to `out_size`.
fn coefficients(in_size: usize, out_size: usize) -> Vec<Taps> {
    let scale = in_size as f64 / out_size as f64;
    let filter_scale = scale.max(1.0);
    let support = 3.0 * filter_scale;
    (0..out_size)
        .map(|out| {
            let center = (out as f64 + 0.5) * scale;
            // C's (int) truncation of a value clamped to >= 0 afterwards.
            let first = ((center - support + 0.5) as i64).max(0) as usize;
            let last = ((center + support + 0.5) as i64).clamp(0, in_size as i64) as usize;
            let raw: Vec<f64> = (first..last)
                .map(|x| lanczos3((x as f64 - center + 0.5) / filter_scale))
                .collect();
            let total: f64 = raw.iter().sum();
            let one = f64::from(1u32 << PRECISION_BITS);
            let weights = raw
                .iter()
                .map(|&w| {
                    let w = if total != 0.0 { w / total } else { w };
                    if w < 0.0 {
                        (-0.5 + w * one) as i64
                    } else {
                        (0.5 + w * one) as i64
                    }
                })
                .collect();
            Taps { first, weights }
        })
        .collect()
}

/// Pillow's `clip8`: back from fixed point, saturated.
fn clip8(sum: i64) -> u8 {
    (sum >> PRECISION_BITS).clamp(0, 255) as u8
}

/// Pillow's 8-bit Lanczos resize of a grayscale image (no reducing_gap), row-major output.
fn pillow_lanczos(gray: &GrayImage, out_width: usize, out_height: usize) -> Vec<u8> {
    let (width, height) = (gray.width() as usize, gray.height() as usize);
    let source = gray.as_raw();
    let half = 1i64 << (PRECISION_BITS - 1);
    let apply = |taps: &Taps, sample: &dyn Fn(usize) -> u8| -> u8 {
        let sum = taps.weights.iter().enumerate().fold(half, |sum, (i, &w)| {
            sum + i64::from(sample(taps.first + i)) * w
        });
        clip8(sum)
    };
    // Horizontal pass only when the width changes, as Pillow.
    let (rows, row_width) = if out_width != width {
        let columns = coefficients(width, out_width);
        let mut rows = vec![0u8; out_width * height];
        for y in 0..height {
            for (x, taps) in columns.iter().enumerate() {
                rows[y * out_width + x] = apply(taps, &|i| source[y * width + i]);
            }
        }
        (rows, out_width)
    } else {
        (source.clone(), width)
    };
    if out_height == height {
        return rows;
    }
    let lines = coefficients(height, out_height);
    let mut out = vec![0u8; row_width * out_height];
    for (y, taps) in lines.iter().enumerate() {
        for x in 0..row_width {
            out[y * row_width + x] = apply(taps, &|i| rows[i * row_width + x]);
        }
    }
    out
}

/// The top-left KEEP x KEEP coefficients of the unnormalized 2-D DCT-II of a SIDE x SIDE block
/// (scipy's `dct(dct(x, axis=0), axis=1)`; the factor 2 a pass does not change any comparison).
fn dct_low(pixels: &[f64]) -> [f64; KEEP * KEEP] {
    let mut cosines = [[0f64; SIDE]; KEEP];
    for (k, row) in cosines.iter_mut().enumerate() {
        for (n, c) in row.iter_mut().enumerate() {
            *c = (std::f64::consts::PI * k as f64 * (2 * n + 1) as f64 / (2 * SIDE) as f64).cos();
        }
    }
    // Along columns (axis 0): partial[k][x] = sum_y pixels[y][x] * cos_k(y).
    let mut partial = [[0f64; SIDE]; KEEP];
    for (k, out) in partial.iter_mut().enumerate() {
        for (y, row) in pixels.chunks_exact(SIDE).enumerate() {
            for (o, &p) in out.iter_mut().zip(row) {
                *o += p * cosines[k][y];
            }
        }
    }
    // Along rows (axis 1).
    let mut out = [0f64; KEEP * KEEP];
    for (k, row) in partial.iter().enumerate() {
        for l in 0..KEEP {
            out[k * KEEP + l] = row.iter().zip(&cosines[l]).map(|(p, c)| p * c).sum();
        }
    }
    out
}

/// Number of differing bits.
pub fn distance(a: i64, b: i64) -> i64 {
    i64::from((a ^ b).count_ones())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resized_copy_is_near_and_inverted_copy_is_far() {
        let pattern = |x: u32, y: u32| ((x * 7 + y * 3) % 64 + if x > y { 100 } else { 0 }) as u8;
        let image = image::GrayImage::from_fn(64, 48, |x, y| image::Luma([pattern(x, y)]));
        let larger =
            image::GrayImage::from_fn(128, 96, |x, y| image::Luma([pattern(x / 2, y / 2)]));
        let inverted = image::GrayImage::from_fn(64, 48, |x, y| image::Luma([255 - pattern(x, y)]));
        let hash = |g: image::GrayImage| phash(&DynamicImage::ImageLuma8(g)).expect("phash") as i64;
        let original = hash(image);
        assert!(distance(original, hash(larger)) <= 2);
        assert!(distance(original, hash(inverted)) > 20);
        assert_eq!(distance(0b1011, 0b0001), 2);
        assert_eq!(distance(-1, 0), 64);
    }
}

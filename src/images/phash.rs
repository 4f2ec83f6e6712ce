//! Perceptual hashes, 64 bits that stay the same when an image is re-encoded and differ in many
//! places between different pictures, and their Hamming distance.
//!
//! [`Method::Projection`], the default (`image_phash(data)`), in three steps:
//! 1. Shape: luma (Pillow's `convert("L")`), resized to 32 x 32 with Lanczos3 in floating point
//!    (Pillow's mode "F" resampling), then a 2-D DCT-II. The 63 coefficients of its lowest 8 x 8
//!    frequencies, without DC, are the vector `v`: the picture's coarse shape, without its mean
//!    brightness.
//! 2. Projection: bit `i` is set when `v · r_i > 0`, for 64 fixed directions `r_i` drawn from a
//!    standard normal distribution ([`directions`]: SplitMix64 from seed [`DIRECTIONS_SEED`],
//!    Box-Muller). This is SimHash: two vectors an angle `θ` apart differ in `64 θ / π` bits on
//!    average, so the distance measures how far apart two shapes are, and a change of brightness
//!    (DC) or contrast (a scale of `v`) changes nothing but rounding.
//! 3. Flat pictures: a picture with no shape (`v` zero up to rounding) hashes to 0.
//!
//! Why not a bit per coefficient against the median, as the `imagehash` package does: there each
//! bit hangs on one coefficient's rank, and a re-encoding's noise flips any coefficient near the
//! median. Symmetric pictures (a chessboard, a gradient) have dozens of coefficients that tie at
//! exactly zero, so half their bits are noise. A projection's bit flips only when the noise turns
//! the whole vector across that direction's hyperplane, and ties between coefficients do not
//! matter.
//!
//! [`Method::Imagehash`] (`image_phash(data, 'imagehash')`) is `imagehash.phash` bit for bit, for
//! hashes made with Python: luma resized to 32 x 32 exactly as Pillow's 8-bit Lanczos does it
//! (its coefficients in 22-bit fixed point, horizontal pass first through an 8-bit intermediate),
//! the same DCT, the 8 x 8 coefficients including DC, and a bit for each above their median.
//!
//! Both give bits in order, the first the most significant, as SQLite's signed 64-bit INTEGER.

use std::sync::OnceLock;

use image::{DynamicImage, GrayImage};

use super::transform::luma8;
use crate::error::{Error, Result};
use crate::placement::SplitMix64;

const SIDE: usize = 32;
const KEEP: usize = 8;

/// How `image_phash` computes its bits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// Signs of random projections of the DCT shape (the default): stable under re-encoding.
    Projection,
    /// The `imagehash` package's `phash`, bit for bit.
    Imagehash,
}

impl Method {
    /// The method named in SQL.
    pub fn parse(name: &str) -> Result<Method> {
        match name.to_ascii_lowercase().as_str() {
            "projection" => Ok(Method::Projection),
            "imagehash" => Ok(Method::Imagehash),
            _ => Err(Error::BadArgument(format!(
                "phash method '{name}' is not one; use 'projection' (the default) or 'imagehash'"
            ))),
        }
    }
}

/// The 64-bit perceptual hash of an image.
pub fn phash(image: &DynamicImage, method: Method) -> u64 {
    let gray = luma8(image);
    match method {
        Method::Projection => projection_hash(&gray),
        Method::Imagehash => imagehash_phash(&gray),
    }
}

/// Seed of the directions' generator. Any seed makes a hash with the same statistics; this one
/// is fixed so that hashes stay comparable, and was the first of 0, 1, 2, ... whose hashes of the
/// test corpus all survive a JPEG quality 90 re-encoding (README, "Image functions").
const DIRECTIONS_SEED: u64 = 1;

/// Coefficients in the shape vector: the 8 x 8 lowest frequencies without DC.
const SHAPE: usize = KEEP * KEEP - 1;

/// [`Method::Projection`].
fn projection_hash(gray: &GrayImage) -> u64 {
    let pixels = pillow_lanczos_float(gray, SIDE, SIDE);
    let coefficients = dct_low(&pixels);
    let (dc, shape) = (coefficients[0], &coefficients[1..]);
    // A flat picture's AC coefficients are rounding error, a million times below any real edge.
    if shape.iter().all(|c| c.abs() <= 1e-9 * dc.abs().max(1.0)) {
        return 0;
    }
    directions().iter().fold(0u64, |hash, direction| {
        let projection: f64 = direction.iter().zip(shape).map(|(r, c)| r * c).sum();
        (hash << 1) | u64::from(projection > 0.0)
    })
}

/// The 64 projection directions, standard normal entries.
fn directions() -> &'static [[f64; SHAPE]; 64] {
    static DIRECTIONS: OnceLock<Box<[[f64; SHAPE]; 64]>> = OnceLock::new();
    DIRECTIONS.get_or_init(|| {
        let mut random = SplitMix64(DIRECTIONS_SEED);
        let mut normals = Vec::with_capacity(64 * SHAPE);
        while normals.len() < 64 * SHAPE {
            // Box-Muller: two normals from two uniforms, u1 in (0, 1] so that ln is finite.
            let (u1, u2) = (1.0 - unit(&mut random), unit(&mut random));
            let radius = (-2.0 * u1.ln()).sqrt();
            let angle = 2.0 * std::f64::consts::PI * u2;
            normals.extend([radius * angle.cos(), radius * angle.sin()]);
        }
        let mut directions = Box::new([[0f64; SHAPE]; 64]);
        for (entry, normal) in directions.iter_mut().flatten().zip(normals) {
            *entry = normal;
        }
        directions
    })
}

/// Uniform in [0, 1), 53 bits of `random`.
fn unit(random: &mut SplitMix64) -> f64 {
    (random.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
}

/// [`Method::Imagehash`].
fn imagehash_phash(gray: &GrayImage) -> u64 {
    let small = pillow_lanczos(gray, SIDE, SIDE);
    let pixels: Vec<f64> = small.iter().map(|&v| f64::from(v)).collect();
    let coefficients = dct_low(&pixels);
    let mut sorted = coefficients;
    sorted.sort_by(f64::total_cmp);
    let median = (sorted[KEEP * KEEP / 2 - 1] + sorted[KEEP * KEEP / 2]) / 2.0;
    coefficients
        .iter()
        .fold(0u64, |hash, &c| (hash << 1) | u64::from(c > median))
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

/// One output sample's source window: first index and weights.
struct Taps<W> {
    first: usize,
    weights: Vec<W>,
}

/// Pillow's `precompute_coeffs`: Lanczos3 weights for resizing `in_size` to `out_size`, each
/// window's normalized to sum 1.
fn lanczos_taps(in_size: usize, out_size: usize) -> Vec<Taps<f64>> {
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
                .map(|x| lanczos3((x as f64 - center + 0.5) * (1.0 / filter_scale)))
                .collect();
            let total: f64 = raw.iter().sum();
            let weights = raw
                .iter()
                .map(|&w| if total != 0.0 { w / total } else { w })
                .collect();
            Taps { first, weights }
        })
        .collect()
}

/// Pillow's `normalize_coeffs_8bpc`: the weights in fixed point.
fn fixed_point(taps: Taps<f64>) -> Taps<i64> {
    let one = f64::from(1u32 << PRECISION_BITS);
    let weights = taps
        .weights
        .iter()
        .map(|&w| {
            if w < 0.0 {
                (-0.5 + w * one) as i64
            } else {
                (0.5 + w * one) as i64
            }
        })
        .collect();
    Taps {
        first: taps.first,
        weights,
    }
}

/// Pillow's `clip8`: back from fixed point, saturated.
fn clip8(sum: i64) -> u8 {
    (sum >> PRECISION_BITS).clamp(0, 255) as u8
}

/// Pillow's 8-bit Lanczos resize of a grayscale image (no reducing_gap), row-major output.
fn pillow_lanczos(gray: &GrayImage, out_width: usize, out_height: usize) -> Vec<u8> {
    let half = 1i64 << (PRECISION_BITS - 1);
    let taps = |in_size, out_size| {
        let taps = lanczos_taps(in_size, out_size);
        taps.into_iter().map(fixed_point).collect()
    };
    let weigh = |taps: &Taps<i64>, sample: &dyn Fn(usize) -> u8| {
        let sum = taps.weights.iter().enumerate().fold(half, |sum, (i, &w)| {
            sum + i64::from(sample(taps.first + i)) * w
        });
        clip8(sum)
    };
    let size = (gray.width() as usize, gray.height() as usize);
    let out_size = (out_width, out_height);
    resize_separable(gray.as_raw(), size, out_size, |v| v, taps, weigh)
}

/// Pillow's Lanczos resize of a mode "F" image (32-bit float samples, sums in double) made from
/// `gray`, row-major output.
fn pillow_lanczos_float(gray: &GrayImage, out_width: usize, out_height: usize) -> Vec<f64> {
    let weigh = |taps: &Taps<f64>, sample: &dyn Fn(usize) -> f32| {
        let weighted = taps.weights.iter().enumerate();
        let sum: f64 = weighted
            .map(|(i, &w)| f64::from(sample(taps.first + i)) * w)
            .sum();
        sum as f32
    };
    let size = (gray.width() as usize, gray.height() as usize);
    let out_size = (out_width, out_height);
    let out = resize_separable(
        gray.as_raw(),
        size,
        out_size,
        f32::from,
        lanczos_taps,
        weigh,
    );
    out.into_iter().map(f64::from).collect()
}

/// Pillow's separable resize of one 8-bit channel, row-major: the horizontal pass first, each
/// pass only when its side changes. Source samples are converted by `sample` as they are read;
/// `weigh` makes one output sample from its taps and the samples of the pass before.
fn resize_separable<T: Copy + Default, W>(
    source: &[u8],
    (width, height): (usize, usize),
    (out_width, out_height): (usize, usize),
    sample: impl Fn(u8) -> T,
    taps: impl Fn(usize, usize) -> Vec<Taps<W>>,
    weigh: impl Fn(&Taps<W>, &dyn Fn(usize) -> T) -> T,
) -> Vec<T> {
    let horizontal = (out_width != width).then(|| {
        let columns = taps(width, out_width);
        let mut rows = vec![T::default(); out_width * height];
        for y in 0..height {
            for (x, taps) in columns.iter().enumerate() {
                rows[y * out_width + x] = weigh(taps, &|i| sample(source[y * width + i]));
            }
        }
        rows
    });
    // Rows `out_width` samples wide: the horizontal pass's, or the source's when it had none.
    let row_sample = |i: usize| match &horizontal {
        Some(rows) => rows[i],
        None => sample(source[i]),
    };
    if out_height == height {
        return (0..out_width * height).map(row_sample).collect();
    }
    let lines = taps(height, out_height);
    let mut out = vec![T::default(); out_width * out_height];
    for (y, taps) in lines.iter().enumerate() {
        for x in 0..out_width {
            out[y * out_width + x] = weigh(taps, &|i| row_sample(i * out_width + x));
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

    fn pattern(x: u32, y: u32) -> u8 {
        ((x * 7 + y * 3) % 64 + if x > y { 100 } else { 0 }) as u8
    }

    fn hash(method: Method, pixel: impl Fn(u32, u32) -> u8, width: u32, height: u32) -> i64 {
        let image = GrayImage::from_fn(width, height, |x, y| image::Luma([pixel(x, y)]));
        phash(&DynamicImage::ImageLuma8(image), method) as i64
    }

    #[test]
    fn resized_copy_is_near_and_inverted_copy_is_far() {
        for method in [Method::Projection, Method::Imagehash] {
            let original = hash(method, pattern, 64, 48);
            let larger = hash(method, |x, y| pattern(x / 2, y / 2), 128, 96);
            let inverted = hash(method, |x, y| 255 - pattern(x, y), 64, 48);
            assert!(distance(original, larger) <= 2, "{method:?}");
            assert!(distance(original, inverted) > 20, "{method:?}");
        }
        assert_eq!(distance(0b1011, 0b0001), 2);
        assert_eq!(distance(-1, 0), 64);
    }

    #[test]
    fn projection_ignores_brightness_and_contrast_and_flat_pictures_hash_to_zero() {
        let projection = |pixel: &dyn Fn(u32, u32) -> u8| hash(Method::Projection, pixel, 64, 48);
        let original = projection(&pattern);
        // Inverting negates the shape: every projection changes sign.
        assert_eq!(
            distance(original, projection(&|x, y| 255 - pattern(x, y))),
            64
        );
        assert_eq!(original, projection(&|x, y| pattern(x, y) / 2 + 60));
        assert_eq!(projection(&|_, _| 35), 0);
        assert_eq!(projection(&|_, _| 255), 0);
        // Median ranks would split a gradient's dozens of zero coefficients by rounding noise.
        let gradient = projection(&|_, y| (y * 5) as u8);
        assert_ne!(gradient, 0);
        assert_eq!(gradient, projection(&|_, y| (y * 5 + 1) as u8));
    }

    #[test]
    fn directions_come_from_splitmix64() {
        // The generator's published test vector (seed 1234567).
        let mut random = SplitMix64(1_234_567);
        let first: Vec<u64> = (0..3).map(|_| random.next_u64()).collect();
        assert_eq!(
            first,
            [
                6457827717110365317,
                3203168211198807973,
                9817491932198370423
            ]
        );
        let entries = directions().iter().flatten();
        let (count, sum, squares) = entries.fold((0.0, 0.0, 0.0), |(n, s, q), &v: &f64| {
            (n + 1.0, s + v, q + v * v)
        });
        assert!((sum / count).abs() < 0.05 && (squares / count - 1.0).abs() < 0.1);
    }

    #[test]
    fn methods_are_named_in_sql() {
        assert_eq!(Method::parse("Imagehash").ok(), Some(Method::Imagehash));
        assert_eq!(Method::parse("projection").ok(), Some(Method::Projection));
        assert!(Method::parse("md5").is_err());
    }
}

//! Segmentation: Otsu's level, the binary mask, and the mask's connected regions.
//!
//! All three work on the image's 8-bit luma (Pillow's `convert("L")`). The foreground is every
//! pixel whose luma is strictly above the level, as in scikit-image (`image > threshold_otsu`).
//! Otsu's level is scikit-image's `threshold_otsu` on that luma: of the levels between the
//! darkest and the brightest value, the first that maximizes the between-class variance with
//! the lower class `<= level`. Regions join pixels with 8-connectivity, like
//! `skimage.measure.label`, and are numbered in raster order of their first pixel.

use image::{GrayImage, Luma};

/// Otsu's level of an 8-bit image (its only value when it has one).
pub fn otsu(gray: &GrayImage) -> u8 {
    let mut histogram = [0u64; 256];
    for &v in gray.as_raw() {
        histogram[usize::from(v)] += 1;
    }
    let low = histogram.iter().position(|&n| n > 0).unwrap_or(0);
    let high = histogram.iter().rposition(|&n| n > 0).unwrap_or(0);
    if low == high {
        return low as u8;
    }
    let bins = &histogram[low..=high];
    let total_count: f64 = bins.iter().map(|&n| n as f64).sum();
    let total_sum: f64 = bins
        .iter()
        .enumerate()
        .map(|(i, &n)| n as f64 * (low + i) as f64)
        .sum();
    // Class 1 is bins[..=i], class 2 bins[i+1..]: variance12 = w1 * w2 * (mean1 - mean2)^2.
    let (mut best, mut best_variance) = (low, f64::NEG_INFINITY);
    let (mut count1, mut sum1) = (0f64, 0f64);
    for (i, &n) in bins[..bins.len() - 1].iter().enumerate() {
        count1 += n as f64;
        sum1 += n as f64 * (low + i) as f64;
        let count2 = total_count - count1;
        if count1 == 0.0 || count2 == 0.0 {
            continue;
        }
        let difference = sum1 / count1 - (total_sum - sum1) / count2;
        let variance = count1 * count2 * difference * difference;
        if variance > best_variance {
            best_variance = variance;
            best = low + i;
        }
    }
    best as u8
}

/// 255 where the luma is above `level`, 0 elsewhere.
pub fn threshold(gray: &GrayImage, level: u8) -> GrayImage {
    let mut mask = gray.clone();
    for p in mask.pixels_mut() {
        *p = Luma([if p.0[0] > level { 255 } else { 0 }]);
    }
    mask
}

/// A connected region of the foreground.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Region {
    pub area: u64,
    /// Bounding box: left column, top row, and its size.
    pub x: u32,
    pub y: u32,
    pub width: u32,
    pub height: u32,
}

fn find(parents: &mut [u32], mut label: u32) -> u32 {
    while parents[label as usize] != label {
        let grand = parents[parents[label as usize] as usize];
        parents[label as usize] = grand;
        label = grand;
    }
    label
}

/// The 8-connected regions of the pixels above `level`, in raster order of their first pixel.
pub fn regions(gray: &GrayImage, level: u8) -> Vec<Region> {
    let (width, height) = (gray.width() as usize, gray.height() as usize);
    let pixels = gray.as_raw();
    // Label 0 is background; parents[l] links provisional labels that touch.
    let mut labels = vec![0u32; width * height];
    let mut parents: Vec<u32> = vec![0];
    for y in 0..height {
        for x in 0..width {
            let at = y * width + x;
            if pixels[at] <= level {
                continue;
            }
            // Neighbours already visited: W, NW, N, NE.
            let mut neighbours = [0u32; 4];
            if x > 0 {
                neighbours[0] = labels[at - 1];
            }
            if y > 0 {
                let up = at - width;
                neighbours[1] = if x > 0 { labels[up - 1] } else { 0 };
                neighbours[2] = labels[up];
                neighbours[3] = if x + 1 < width { labels[up + 1] } else { 0 };
            }
            let mut root = 0u32;
            for &n in neighbours.iter().filter(|&&n| n != 0) {
                let r = find(&mut parents, n);
                if root == 0 || r < root {
                    if root != 0 {
                        parents[root as usize] = r;
                    }
                    root = r;
                } else if r != root {
                    parents[r as usize] = root;
                }
            }
            if root == 0 {
                root = parents.len() as u32;
                parents.push(root);
            }
            labels[at] = root;
        }
    }
    // Final numbering in raster order of each region's first pixel, then areas and boxes.
    let mut number = vec![u32::MAX; parents.len()];
    let mut out: Vec<Region> = Vec::new();
    for y in 0..height {
        for x in 0..width {
            let label = labels[y * width + x];
            if label == 0 {
                continue;
            }
            let root = find(&mut parents, label) as usize;
            if number[root] == u32::MAX {
                number[root] = out.len() as u32;
                out.push(Region {
                    area: 0,
                    x: x as u32,
                    y: y as u32,
                    width: 0,
                    height: 0,
                });
            }
            let region = &mut out[number[root] as usize];
            region.area += 1;
            let (x, y) = (x as u32, y as u32);
            // Stored as right/bottom (exclusive) while scanning; turned into sizes below.
            if x < region.x {
                region.width += region.x - x;
                region.x = x;
            }
            region.width = region.width.max(x + 1 - region.x);
            region.height = region.height.max(y + 1 - region.y);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn otsu_splits_two_clusters() {
        let gray = GrayImage::from_fn(10, 10, |x, _| Luma([if x < 5 { 40 } else { 200 }]));
        assert_eq!(otsu(&gray), 40);
        assert_eq!(otsu(&GrayImage::from_pixel(3, 3, Luma([7]))), 7);
    }

    #[test]
    fn regions_join_diagonals_and_number_in_raster_order() {
        // Two regions: a diagonal line (8-connected) and a separate block; a U shape that
        // is joined only at its bottom.
        let rows = ["X...XX.X.X", ".X..XX.X.X", "..X....XXX", ".........."];
        let gray = GrayImage::from_fn(10, 4, |x, y| {
            let c = rows[y as usize].as_bytes()[x as usize];
            Luma([if c == b'X' { 255 } else { 0 }])
        });
        let found = regions(&gray, 127);
        assert_eq!(
            found,
            vec![
                Region {
                    area: 3,
                    x: 0,
                    y: 0,
                    width: 3,
                    height: 3
                },
                Region {
                    area: 4,
                    x: 4,
                    y: 0,
                    width: 2,
                    height: 2
                },
                Region {
                    area: 7,
                    x: 7,
                    y: 0,
                    width: 3,
                    height: 3
                },
            ]
        );
    }
}

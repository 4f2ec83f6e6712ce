//! The image header probe: what the table derives from `data` on every write.
//!
//! Only the header is read (no pixel is decoded), so a probe costs microseconds whatever the image
//! size. The probe refuses anything that is not an image in a format the `image` crate reads, and
//! any image whose pixel count exceeds the table's limit (a decompression bomb announces itself in
//! its header).

use std::io::Cursor;

use image::{ImageFormat, ImageReader};

/// What the table stores about an image besides its bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageInfo {
    /// Lowercase format name: png, jpeg, gif, webp, tiff, bmp, ...
    pub format: String,
    pub width: u32,
    pub height: u32,
    /// Lowercase hex BLAKE3 of the bytes.
    pub hash: String,
}

/// Why `data` was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProbeError {
    /// Not an image, or an image whose header cannot be read.
    NotAnImage(String),
    /// An image beyond the pixel limit.
    TooManyPixels {
        width: u32,
        height: u32,
        max_pixels: u64,
    },
}

/// Reads the header of `data` and hashes it.
pub fn probe(data: &[u8], max_pixels: u64) -> Result<ImageInfo, ProbeError> {
    if data.is_empty() {
        return Err(ProbeError::NotAnImage("empty blob".into()));
    }
    let reader = ImageReader::new(Cursor::new(data))
        .with_guessed_format()
        .map_err(|e| ProbeError::NotAnImage(e.to_string()))?;
    let format = reader
        .format()
        .ok_or_else(|| ProbeError::NotAnImage("unrecognized image format".into()))?;
    let (width, height) = reader.into_dimensions().map_err(|e| {
        ProbeError::NotAnImage(format!("unreadable {} header: {e}", format_name(format)))
    })?;
    if width == 0 || height == 0 {
        return Err(ProbeError::NotAnImage(format!(
            "{width}x{height} image has no pixels"
        )));
    }
    if u64::from(width) * u64::from(height) > max_pixels {
        return Err(ProbeError::TooManyPixels {
            width,
            height,
            max_pixels,
        });
    }
    Ok(ImageInfo {
        format: format_name(format),
        width,
        height,
        hash: blake3::hash(data).to_hex().to_string(),
    })
}

/// The lowercase name the table reports for a format (`jpeg`, not `jpg`).
pub fn format_name(format: ImageFormat) -> String {
    format!("{format:?}").to_lowercase()
}

impl std::fmt::Display for ProbeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ProbeError::NotAnImage(reason) => f.write_str(reason),
            ProbeError::TooManyPixels { width, height, max_pixels } => write!(
                f,
                "image of {width}x{height} pixels exceeds the table's limit of {max_pixels} pixels (table argument max_pixels=)"
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn png(width: u32, height: u32) -> Vec<u8> {
        let mut out = Vec::new();
        image::RgbImage::new(width, height)
            .write_to(&mut Cursor::new(&mut out), ImageFormat::Png)
            .expect("encode");
        out
    }

    #[test]
    fn reads_format_size_and_hash() {
        let data = png(3, 2);
        let info = probe(&data, 1 << 20).expect("probe");
        assert_eq!(
            (info.format.as_str(), info.width, info.height),
            ("png", 3, 2)
        );
        assert_eq!(info.hash, blake3::hash(&data).to_hex().to_string());
    }

    #[test]
    fn refuses_non_images() {
        for data in [
            &b""[..],
            b"hello",
            b"<svg xmlns='http://www.w3.org/2000/svg'/>",
            &[0u8; 64],
        ] {
            assert!(
                matches!(probe(data, 1 << 20), Err(ProbeError::NotAnImage(_))),
                "{data:?}"
            );
        }
    }

    #[test]
    fn refuses_a_header_claiming_too_many_pixels() {
        let mut data = png(1, 1);
        // IHDR width and height live at bytes 16..24; claim 100000 x 100000.
        data[16..20].copy_from_slice(&100_000u32.to_be_bytes());
        data[20..24].copy_from_slice(&100_000u32.to_be_bytes());
        let err = probe(&data, 1 << 28).expect_err("bomb");
        assert!(
            matches!(
                err,
                ProbeError::TooManyPixels { .. } | ProbeError::NotAnImage(_)
            ),
            "{err:?}"
        );
    }
}

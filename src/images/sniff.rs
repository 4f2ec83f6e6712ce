//! Which format a blob holds, from its content alone: the table stores no file name.
//!
//! Every format with a magic number is found by it (`image::guess_format`). A TGA has none, so
//! a blob that no magic number claims is taken for a TGA only when its 18-byte header is one the
//! TGA decoder reads and the rest of the blob is exactly what that header announces:
//! - an image type (colour-mapped, true-colour or gray; raw or run-length encoded) with a pixel
//!   depth, colour-map entry size and alpha-bit count that belong to it, the colour-map fields
//!   zero without a colour map, the two obsolete interleave bits clear, and a width and height
//!   above zero;
//! - raw pixels: the blob ends where the header, image ID, colour map and `width * height`
//!   pixels end; run-length pixels: the packets, walked without decoding, cover exactly
//!   `width * height` pixels inside the blob and end where it ends;
//! - except that a TGA 2.0 file may follow its pixels with extension and developer areas, and
//!   ends in the 18-byte footer `TRUEVISION-XFILE.\0`, which then counts as the proof.
//!
//! Random bytes pass all of this about once in 10^20 (the type, depth, descriptor and five zero
//! bytes, with the length on top); text does not: in ASCII or UTF-8 its second byte is not 0 or
//! 1, and in UTF-16 it has no run of five zero bytes. The header check
//! doubles as the TGA's structure check, so a truncated TGA is refused before it is decoded.

use std::io::Cursor;

use image::{ImageFormat, ImageReader};

/// The format of `data`, or `None` when it is no image this crate reads.
pub fn format(data: &[u8]) -> Option<ImageFormat> {
    image::guess_format(data)
        .ok()
        .or_else(|| is_tga(data).then_some(ImageFormat::Tga))
}

/// A reader of `data` in its [`format`]; `None` when it is no image this crate reads.
pub fn reader(data: &[u8]) -> Option<(ImageReader<Cursor<&[u8]>>, ImageFormat)> {
    let format = format(data)?;
    Some((ImageReader::with_format(Cursor::new(data), format), format))
}

/// The footer that ends a TGA 2.0 file.
const TGA_FOOTER: &[u8; 18] = b"TRUEVISION-XFILE.\0";

/// Whether `data` is a TGA by the rules above.
fn is_tga(data: &[u8]) -> bool {
    let Some(header) = TgaHeader::read(data) else {
        return false;
    };
    let footer = data.len() >= 18 + 26 && data.ends_with(TGA_FOOTER);
    match header.pixels_end(data) {
        Some(end) => end == data.len() || (footer && end <= data.len() - 26),
        None => false,
    }
}

/// The fields of a TGA header that say where its parts end.
struct TgaHeader {
    image_type: u8,
    /// Bytes from the start of the file to the first pixel.
    pixels_start: usize,
    pixels: u64,
    bytes_per_pixel: usize,
}

impl TgaHeader {
    /// The header at the start of `data`, if its fields are consistent (module rules).
    fn read(data: &[u8]) -> Option<TgaHeader> {
        let header = data.get(..18)?;
        let u16_at = |i: usize| usize::from(u16::from_le_bytes([header[i], header[i + 1]]));
        let (id_length, map_type, image_type) = (header[0], header[1], header[2]);
        let (map_length, map_entry_bits) = (u16_at(5), header[7]);
        let (width, height, depth, descriptor) = (u16_at(12), u16_at(14), header[16], header[17]);
        let alpha_bits = descriptor & 0x0f;
        let mapped = matches!(image_type, 1 | 9);
        let depth_fits = match image_type {
            1 | 9 => depth == 8 || (depth == 16 && map_entry_bits >= 16),
            2 | 10 => match depth {
                15 | 16 => alpha_bits <= 1,
                24 => alpha_bits == 0,
                32 => alpha_bits == 0 || alpha_bits == 8,
                _ => false,
            },
            3 | 11 => (depth == 8 && alpha_bits == 0) || (depth == 16 && alpha_bits == 8),
            _ => false,
        };
        let map_fits = match map_type {
            // "If Color Map Type is 0, these 5 bytes should be set to zero" (the specification).
            0 => !mapped && header[3..8].iter().all(|&b| b == 0),
            1 => matches!(map_entry_bits, 15 | 16 | 24 | 32) && (!mapped || map_length > 0),
            _ => false,
        };
        if !depth_fits || !map_fits || descriptor & 0xc0 != 0 || width == 0 || height == 0 {
            return None;
        }
        let map_bytes = if map_type == 1 {
            map_length * usize::from(map_entry_bits).div_ceil(8)
        } else {
            0
        };
        Some(TgaHeader {
            image_type,
            pixels_start: 18 + usize::from(id_length) + map_bytes,
            pixels: width as u64 * height as u64,
            bytes_per_pixel: usize::from(depth).div_ceil(8),
        })
    }

    /// Where the pixel data ends in `data`: after `width * height` raw pixels, or after the
    /// run-length packets that cover them; `None` where `data` ends first.
    fn pixels_end(&self, data: &[u8]) -> Option<usize> {
        let bpp = self.bytes_per_pixel;
        if self.image_type < 9 {
            let bytes = usize::try_from(self.pixels).ok()?.checked_mul(bpp)?;
            let end = self.pixels_start.checked_add(bytes)?;
            return (end <= data.len()).then_some(end);
        }
        // Each packet: a byte whose high bit says repeat (one pixel follows) or literal (n
        // pixels follow), and whose low 7 bits are n - 1.
        let (mut at, mut covered) = (self.pixels_start, 0u64);
        while covered < self.pixels {
            let packet = *data.get(at)?;
            let count = usize::from(packet & 0x7f) + 1;
            let pixel_bytes = if packet & 0x80 != 0 { bpp } else { count * bpp };
            at = at.checked_add(1 + pixel_bytes)?;
            covered += count as u64;
        }
        (at <= data.len()).then_some(at)
    }
}

/// The TGA structure check of `verify=structure`: the header consistent and the pixel data
/// whole (what [`format`] already required of a blob to call it a TGA).
pub fn check_tga(data: &[u8]) -> Result<(), String> {
    let header =
        TgaHeader::read(data).ok_or_else(|| "header fields do not fit together".to_string())?;
    match header.pixels_end(data) {
        Some(_) => Ok(()),
        None => Err("truncated: ends inside its pixel data".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tga(image: image::DynamicImage) -> Vec<u8> {
        let mut data = Vec::new();
        image
            .write_to(&mut Cursor::new(&mut data), ImageFormat::Tga)
            .expect("encode");
        data
    }

    #[test]
    fn tgas_are_found_and_other_blobs_are_not() {
        let rgb = tga(image::DynamicImage::ImageRgb8(image::RgbImage::from_fn(
            9,
            7,
            |x, y| image::Rgb([x as u8 * 20, y as u8 * 30, 5]),
        )));
        let flat = tga(image::DynamicImage::ImageLuma8(image::GrayImage::new(
            300, 2,
        )));
        for data in [&rgb, &flat] {
            assert_eq!(format(data), Some(ImageFormat::Tga));
            assert_eq!(check_tga(data), Ok(()));
            // Cut short or grown, it is no longer a TGA.
            assert_eq!(format(&data[..data.len() - 1]), None);
            let mut longer = data.clone();
            longer.push(0);
            assert_eq!(format(&longer), None);
            assert!(check_tga(&data[..data.len() - 1]).is_err());
        }
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut random = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        };
        for length in 0..2000 {
            let blob: Vec<u8> = (0..length).map(|_| random()).collect();
            assert_ne!(format(&blob), Some(ImageFormat::Tga), "{blob:?}");
        }
        assert_eq!(format(b"hello, not an image, just some text"), None);
    }

    #[test]
    fn a_footer_allows_areas_after_the_pixels() {
        let mut data = tga(image::DynamicImage::ImageRgba8(image::RgbaImage::new(4, 4)));
        data.extend([0u8; 40]); // an extension area
        data.extend([0u8; 8]); // extension and developer offsets
        data.extend(TGA_FOOTER);
        assert_eq!(format(&data), Some(ImageFormat::Tga));
    }
}

//! The image probe: what the table derives from `data` on every write, and how far it checks it.
//!
//! The header gives format, width and height (no pixel is decoded). Anything that is not an image
//! in a format the `image` crate reads is refused, and so is any image whose pixel count exceeds
//! the table's limit (a decompression bomb announces itself in its header). Then, by the table's
//! `verify=` level:
//! - `header`: nothing more.
//! - `structure` (default): a check of the container that costs about as much as hashing the
//!   bytes: every PNG chunk present with a correct CRC through IEND; a JPEG's markers and
//!   segments, walked to its end-of-image marker, and a GIF's blocks to its trailer (what follows
//!   either is allowed); a WebP's RIFF size and a BMP's file size fit the bytes; a TGA's pixel
//!   data, raw or run-length packets, is whole (`sniff`). It
//!   finds truncation (the commonest damage) and, in PNG, any flipped bit. Other formats are
//!   decoded in full, as for `decode`.
//! - `decode`: every pixel is decoded, with allocations bounded by the pixel limit.
//!
//! Compressed JPEG and WebP data carry no checksum: a flipped bit in their middle decodes to wrong
//! pixels and no decoder can tell. The table's BLAKE3 `hash` is what detects later damage.

use image::ImageFormat;

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

/// How thoroughly `data` is checked before it is stored (table argument `verify=`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verify {
    Header,
    Structure,
    Decode,
}

impl Verify {
    pub fn parse(s: &str) -> Option<Verify> {
        match s {
            "header" => Some(Verify::Header),
            "structure" => Some(Verify::Structure),
            "decode" => Some(Verify::Decode),
            _ => None,
        }
    }
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

/// Reads the header of `data`, checks it as far as `verify` says, and hashes it.
pub fn probe(data: &[u8], max_pixels: u64, verify: Verify) -> Result<ImageInfo, ProbeError> {
    if data.is_empty() {
        return Err(ProbeError::NotAnImage("empty blob".into()));
    }
    let (reader, format) = super::sniff::reader(data)
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
    let structure = match verify {
        Verify::Header => Ok(()),
        Verify::Structure => {
            check_structure(data, format).unwrap_or_else(|| decode(data, max_pixels))
        }
        Verify::Decode => decode(data, max_pixels),
    };
    structure.map_err(|reason| {
        ProbeError::NotAnImage(format!("damaged {}: {reason}", format_name(format)))
    })?;
    Ok(ImageInfo {
        format: format_name(format),
        width,
        height,
        hash: blake3::hash(data).to_hex().to_string(),
    })
}

/// The container check of `verify=structure` for the formats that have one; `None` for the
/// others, which only a full decode checks.
pub fn check_structure(data: &[u8], format: ImageFormat) -> Option<Result<(), String>> {
    match format {
        ImageFormat::Png => Some(check_png(data)),
        ImageFormat::Jpeg => Some(check_jpeg(data)),
        ImageFormat::Gif => Some(check_gif(data)),
        ImageFormat::WebP => Some(check_riff(data)),
        ImageFormat::Bmp => Some(check_bmp(data)),
        ImageFormat::Tga => Some(super::sniff::check_tga(data)),
        _ => None,
    }
}

/// Walks the PNG chunks through IEND, checking each CRC.
fn check_png(data: &[u8]) -> Result<(), String> {
    let mut at = 8;
    loop {
        let header = data
            .get(at..at + 8)
            .ok_or("truncated: ends before its IEND chunk")?;
        let len = u32::from_be_bytes([header[0], header[1], header[2], header[3]]) as usize;
        let end = at.checked_add(12 + len).ok_or("a chunk length overflows")?;
        let chunk = data
            .get(at + 4..end)
            .ok_or("truncated: ends inside a chunk")?;
        let (body, crc) = chunk.split_at(chunk.len() - 4);
        if crc32fast::hash(body).to_be_bytes() != crc {
            return Err(format!(
                "chunk {} at byte {at} fails its CRC",
                body[..4].escape_ascii()
            ));
        }
        if &body[..4] == b"IEND" {
            return Ok(());
        }
        at = end;
    }
}

/// Walks a JPEG's markers to its end-of-image marker: each segment's length must fit the bytes,
/// and each scan's entropy-coded data must end at a marker. What follows the EOI is not looked
/// at: cameras and phones append data there (a motion photo's video, a second picture).
fn check_jpeg(data: &[u8]) -> Result<(), String> {
    const SOS: u8 = 0xDA;
    const EOI: u8 = 0xD9;
    let truncated = |what: &str| format!("truncated: ends {what}, before its end-of-image marker");
    let mut at = 2; // after SOI, which the format guess has seen
    loop {
        // A marker: 0xFF (any number of them), then its code. Stray bytes before it are
        // skipped, as decoders do.
        let ff = at
            + data
                .get(at..)
                .and_then(|rest| rest.iter().position(|&b| b == 0xFF))
                .ok_or_else(|| truncated("between segments"))?;
        let code_at = ff
            + data[ff..]
                .iter()
                .position(|&b| b != 0xFF)
                .ok_or_else(|| truncated("in a marker"))?;
        let code = data[code_at];
        at = code_at + 1;
        match code {
            EOI => return Ok(()),
            // Markers without a segment, and 0xFF 0x00, which decoders skip as junk.
            0x00 | 0x01 | 0xD0..=0xD7 => continue,
            _ => {}
        }
        let len = data
            .get(at..at + 2)
            .map(|b| u16::from_be_bytes([b[0], b[1]]) as usize)
            .ok_or_else(|| truncated("in a segment header"))?;
        if len < 2 || at + len > data.len() {
            return Err(truncated(&format!(
                "inside the segment of marker {code:#04X} at byte {ff}"
            )));
        }
        at += len;
        if code == SOS {
            at = end_of_entropy_coded_data(data, at)
                .ok_or_else(|| truncated("inside image data"))?;
        }
    }
}

/// Where the entropy-coded data starting at `from` ends: at the first 0xFF that begins a marker
/// (not a stuffed 0xFF 0x00, not a restart marker; fill bytes, more 0xFF, may come before the
/// code). `None` if the bytes end first.
fn end_of_entropy_coded_data(data: &[u8], from: usize) -> Option<usize> {
    let mut at = from;
    loop {
        let ff = at + data.get(at..)?.iter().position(|&b| b == 0xFF)?;
        let code_at = ff + data[ff..].iter().position(|&b| b != 0xFF)?;
        match data[code_at] {
            0x00 | 0xD0..=0xD7 => at = code_at + 1,
            _ => return Some(ff),
        }
    }
}

/// Walks a GIF's blocks to its trailer: the color tables its flags announce, every extension's
/// and every image's data sub-blocks. What follows the trailer is not looked at.
fn check_gif(data: &[u8]) -> Result<(), String> {
    const EXTENSION: u8 = 0x21;
    const IMAGE: u8 = 0x2C;
    const TRAILER: u8 = 0x3B;
    let truncated = |what: &str| format!("truncated: ends {what}, before its trailer");
    // Header (6 bytes) and logical screen descriptor (7), then the global color table.
    let flags = *data.get(10).ok_or_else(|| truncated("in its header"))?;
    let mut at = 13 + color_table_bytes(flags);
    loop {
        let block = *data.get(at).ok_or_else(|| truncated("between blocks"))?;
        at = match block {
            TRAILER => return Ok(()),
            EXTENSION => {
                skip_sub_blocks(data, at + 2).ok_or_else(|| truncated("in an extension"))?
            }
            IMAGE => {
                // Image descriptor (10 bytes), its color table, the LZW code size, the data.
                let flags = *data
                    .get(at + 9)
                    .ok_or_else(|| truncated("in an image descriptor"))?;
                let code_size_at = at + 10 + color_table_bytes(flags);
                skip_sub_blocks(data, code_size_at + 1)
                    .ok_or_else(|| truncated("inside image data"))?
            }
            other => {
                return Err(format!(
                    "block type {other:#04X} at byte {at} is not a GIF block"
                ))
            }
        };
    }
}

/// The bytes of the color table that GIF `flags` announce (none unless the top bit is set).
fn color_table_bytes(flags: u8) -> usize {
    match flags & 0x80 {
        0 => 0,
        _ => 3 << ((flags & 0x07) + 1),
    }
}

/// Where the sub-blocks starting at `at` end (after their zero-length terminator); `None` if the
/// bytes end first.
fn skip_sub_blocks(data: &[u8], mut at: usize) -> Option<usize> {
    loop {
        let len = *data.get(at)? as usize;
        at += 1 + len;
        if len == 0 {
            return Some(at);
        }
    }
}

fn check_riff(data: &[u8]) -> Result<(), String> {
    let size = data
        .get(4..8)
        .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize);
    match size {
        Some(size) if size + 8 <= data.len() => Ok(()),
        _ => Err(format!("truncated: {} bytes of a longer file", data.len())),
    }
}

fn check_bmp(data: &[u8]) -> Result<(), String> {
    let size = data
        .get(2..6)
        .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize);
    match size {
        Some(size) if size <= data.len() => Ok(()),
        _ => Err(format!("truncated: {} bytes of a longer file", data.len())),
    }
}

/// Decodes every pixel, with allocations bounded by the pixel limit (16 bytes a pixel covers
/// every sample type the crate decodes to).
fn decode(data: &[u8], max_pixels: u64) -> Result<(), String> {
    let (mut reader, _) =
        super::sniff::reader(data).ok_or_else(|| "unrecognized image format".to_string())?;
    let mut limits = image::Limits::default();
    limits.max_alloc = Some(max_pixels.saturating_mul(16));
    reader.limits(limits);
    reader.decode().map(drop).map_err(|e| e.to_string())
}

/// The lowercase name the table stores and reports for a format (`jpeg`, not `jpg`). Written
/// out, not taken from the image crate's names for its formats: an upgrade that renamed one
/// must not change what is stored. A format a newer crate adds is named by its first file
/// extension until it is written out here.
pub fn format_name(format: ImageFormat) -> String {
    let name = match format {
        ImageFormat::Png => "png",
        ImageFormat::Jpeg => "jpeg",
        ImageFormat::Gif => "gif",
        ImageFormat::WebP => "webp",
        ImageFormat::Pnm => "pnm",
        ImageFormat::Tiff => "tiff",
        ImageFormat::Tga => "tga",
        ImageFormat::Dds => "dds",
        ImageFormat::Bmp => "bmp",
        ImageFormat::Ico => "ico",
        ImageFormat::Hdr => "hdr",
        ImageFormat::OpenExr => "openexr",
        ImageFormat::Farbfeld => "farbfeld",
        ImageFormat::Avif => "avif",
        ImageFormat::Qoi => "qoi",
        other => other.extensions_str().first().copied().unwrap_or("unknown"),
    };
    name.to_string()
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
    use std::io::Cursor;

    fn png(width: u32, height: u32) -> Vec<u8> {
        let mut out = Vec::new();
        image::RgbImage::new(width, height)
            .write_to(&mut Cursor::new(&mut out), ImageFormat::Png)
            .expect("encode");
        out
    }

    #[test]
    fn stored_format_names_are_what_earlier_versions_stored() {
        // 0.2 stored the image crate's variant name in lowercase: the written-out names must
        // agree with it for every format, or stored tables would change meaning.
        for format in ImageFormat::all() {
            assert_eq!(
                format_name(format),
                format!("{format:?}").to_lowercase(),
                "{format:?}"
            );
        }
    }

    #[test]
    fn reads_format_size_and_hash() {
        let data = png(3, 2);
        let info = probe(&data, 1 << 20, Verify::Structure).expect("probe");
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
                matches!(
                    probe(data, 1 << 20, Verify::Structure),
                    Err(ProbeError::NotAnImage(_))
                ),
                "{data:?}"
            );
        }
    }

    #[test]
    fn refuses_a_header_claiming_too_many_pixels() {
        let mut data = png(1, 1);
        // IHDR width and height live at bytes 16..24, its CRC at 29..33: claim 100000 x 100000.
        data[16..20].copy_from_slice(&100_000u32.to_be_bytes());
        data[20..24].copy_from_slice(&100_000u32.to_be_bytes());
        let crc = crc32fast::hash(&data[12..29]).to_be_bytes();
        data[29..33].copy_from_slice(&crc);
        let err = probe(&data, 1 << 28, Verify::Header).expect_err("bomb");
        assert!(
            matches!(err, ProbeError::TooManyPixels { width: 100_000, .. }),
            "{err:?}"
        );
    }

    /// `verify=structure` refuses `data` cut at every length from `from` on.
    fn assert_every_cut_refused(data: &[u8], from: usize) {
        for cut in from..data.len() {
            assert!(
                probe(&data[..cut], 1 << 20, Verify::Structure).is_err(),
                "cut at {cut}"
            );
        }
    }

    #[test]
    fn structure_finds_every_truncation_and_png_bit_flip() {
        let data = png(8, 8);
        assert_every_cut_refused(&data, 33);
        for bit in (33 * 8)..(data.len() * 8) {
            let mut flipped = data.clone();
            flipped[bit / 8] ^= 1 << (bit % 8);
            assert!(
                probe(&flipped, 1 << 20, Verify::Structure).is_err(),
                "bit {bit}"
            );
        }
    }

    fn jpeg_with_thumbnail_in_exif() -> Vec<u8> {
        let encode = |side: u32| {
            let mut out = Vec::new();
            image::RgbImage::from_fn(side, side, |x, y| image::Rgb([x as u8, y as u8, 7]))
                .write_to(&mut Cursor::new(&mut out), ImageFormat::Jpeg)
                .expect("jpeg");
            out
        };
        let (main, thumbnail) = (encode(64), encode(8));
        // An APP1 segment holding a whole JPEG, EOI included, as EXIF thumbnails do.
        let mut out = main[..2].to_vec();
        out.extend_from_slice(&[0xFF, 0xE1]);
        out.extend_from_slice(&((thumbnail.len() + 2) as u16).to_be_bytes());
        out.extend_from_slice(&thumbnail);
        out.extend_from_slice(&main[2..]);
        out
    }

    #[test]
    fn a_jpeg_is_walked_to_its_end_of_image_marker() {
        let data = jpeg_with_thumbnail_in_exif();
        assert!(probe(&data, 1 << 20, Verify::Decode).is_ok());
        assert!(probe(&data, 1 << 20, Verify::Structure).is_ok());
        // Every cut is found, although the thumbnail's own EOI comes early in the file.
        assert_every_cut_refused(&data, 4);
        // Data after the EOI (a motion photo's video, a second picture) is the owner's business.
        let mut trailer = data.clone();
        trailer.extend_from_slice(&vec![0x5A; 100_000]);
        assert!(probe(&trailer, 1 << 20, Verify::Structure).is_ok());
    }

    #[test]
    fn jpeg_fill_bytes_and_junk_pass_as_decoders_let_them() {
        const SOS_EMPTY: [u8; 4] = [0xFF, 0xDA, 0x00, 0x02];
        let jpeg = |body: &[u8]| [&[0xFF, 0xD8][..], body, &[0xFF, 0xD9]].concat();
        // Fill bytes before a stuffed 0xFF 0x00 and before a restart marker, in scan data.
        let scan = [
            &SOS_EMPTY[..],
            &[0x12, 0xFF, 0xFF, 0x00, 0x34, 0xFF, 0xFF, 0xD0, 0x56],
        ]
        .concat();
        assert_eq!(check_jpeg(&jpeg(&scan)), Ok(()));
        // 0xFF 0x00 between segments, which libjpeg skips with a warning.
        let junk = [&[0xFF, 0x00][..], &[0xFF, 0xFE, 0x00, 0x03, 0x41], &scan].concat();
        assert_eq!(check_jpeg(&jpeg(&junk)), Ok(()));
        // Still: the scan data must end at a marker.
        assert!(check_jpeg(&[&[0xFF, 0xD8][..], &scan].concat()).is_err());
    }

    #[test]
    fn a_gif_is_walked_to_its_trailer() {
        let frame = |shade: u8| {
            image::Frame::new(image::RgbaImage::from_pixel(
                9,
                7,
                image::Rgba([shade, 0, 0, 255]),
            ))
        };
        let mut data = Vec::new();
        {
            let mut encoder = image::codecs::gif::GifEncoder::new(&mut data);
            encoder
                .encode_frames([frame(10), frame(200), frame(90)])
                .expect("gif");
        }
        assert!(probe(&data, 1 << 20, Verify::Decode).is_ok());
        assert!(probe(&data, 1 << 20, Verify::Structure).is_ok());
        assert_every_cut_refused(&data, 13);
        // A cut inside image data whose last byte happens to be 0x3B (the trailer's value) is
        // still found.
        let mut cut_at_3b = data[..data.len() - 3].to_vec();
        cut_at_3b.push(0x3B);
        assert!(probe(&cut_at_3b, 1 << 20, Verify::Structure).is_err());
        let mut padded = data.clone();
        padded.extend_from_slice(&[0; 512]);
        assert!(probe(&padded, 1 << 20, Verify::Structure).is_ok());
    }

    #[test]
    fn decode_refuses_damage_the_header_hides() {
        let mut out = Vec::new();
        image::RgbImage::new(64, 64)
            .write_to(&mut Cursor::new(&mut out), ImageFormat::Tiff)
            .expect("tiff");
        assert!(probe(&out, 1 << 20, Verify::Decode).is_ok());
        assert!(probe(&out[..out.len() / 2], 1 << 20, Verify::Decode).is_err());
    }
}

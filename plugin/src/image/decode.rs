//! Image decoders with Spark's semantics (Java ImageIO + Spark's conversion to B G R (A)).
//!
//! The format is chosen from the file's content, never its extension. JPEG goes through
//! libjpeg-turbo (the `mozjpeg` crate: slow-integer DCT with fancy upsampling, byte-identical
//! to Spark); PNG and GIF through the `png` / `gif` crates with ImageIO's channel rules; BMP,
//! TIFF and (as an extension Spark does not have) WebP through the `image` crate.

use std::io::Cursor;
use std::panic::{AssertUnwindSafe, catch_unwind};

use super::schema::ImageRow;

/// Pillow's decompression-bomb error threshold (2 x `Image.MAX_IMAGE_PIXELS`).
pub const DEFAULT_MAX_PIXELS: u64 = 178_956_970;

/// Knobs of the decoder.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecodeOptions {
    /// Images with more pixels than this are invalid (decompression-bomb guard).
    pub max_pixels: u64,
    /// Images whose decoding needs more bytes than this are invalid (16-bit channels and
    /// alpha make a pixel up to 8 bytes).
    pub max_bytes: u64,
    /// Decode WebP (an extension: Spark reports WebP files as invalid).
    pub decode_webp: bool,
    /// `Some((width, height))`: JPEGs are decoded at the smallest DCT scale (an eighth, a
    /// quarter, a half or full) whose output is at least this wide and high. Set only on
    /// scans whose image column nothing but a model reads ([`crate::torch::scaled_decode`]);
    /// Spark-exact image columns leave it `None`. Other formats decode at full size.
    pub jpeg_cover: Option<(usize, usize)>,
}

impl Default for DecodeOptions {
    fn default() -> Self {
        Self {
            max_pixels: DEFAULT_MAX_PIXELS,
            max_bytes: crate::limits::Limits::default().max_image_bytes,
            decode_webp: true,
            jpeg_cover: None,
        }
    }
}

/// A container format recognized from the first bytes of a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImageFormat {
    /// JPEG / JFIF (`FF D8 FF`).
    Jpeg,
    /// PNG.
    Png,
    /// GIF 87a / 89a.
    Gif,
    /// Windows bitmap (`BM`).
    Bmp,
    /// TIFF, either byte order.
    Tiff,
    /// WebP (RIFF container).
    WebP,
}

/// Recognizes an image format from the first bytes of a file (at least 12 are needed for
/// WebP; fewer bytes simply fail to match).
pub fn sniff_format(head: &[u8]) -> Option<ImageFormat> {
    if head.starts_with(&[0xFF, 0xD8, 0xFF]) {
        Some(ImageFormat::Jpeg)
    } else if head.starts_with(b"\x89PNG\r\n\x1a\n") {
        Some(ImageFormat::Png)
    } else if head.starts_with(b"GIF87a") || head.starts_with(b"GIF89a") {
        Some(ImageFormat::Gif)
    } else if head.starts_with(b"BM") {
        Some(ImageFormat::Bmp)
    } else if head.starts_with(b"II*\0") || head.starts_with(b"MM\0*") {
        Some(ImageFormat::Tiff)
    } else if head.len() >= 12 && &head[0..4] == b"RIFF" && &head[8..12] == b"WEBP" {
        Some(ImageFormat::WebP)
    } else {
        None
    }
}

/// Why a file did not decode. The row is then Spark's invalid row (or dropped).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InvalidImage {
    /// The content is not a format the reader decodes.
    UnknownFormat,
    /// A WebP file while WebP decoding is off.
    WebPDisabled,
    /// More pixels than the configured limit.
    TooLarge {
        /// Width from the header.
        width: u64,
        /// Height from the header.
        height: u64,
        /// The limit in force.
        max_pixels: u64,
    },
    /// Decoding would take more memory than the configured limit.
    TooManyBytes {
        /// Width from the header.
        width: u64,
        /// Height from the header.
        height: u64,
        /// Bytes decoding needs.
        bytes: u64,
        /// The limit in force.
        max_bytes: u64,
    },
    /// The decoder failed (truncated or corrupt data).
    Corrupt(String),
    /// The file could not be read.
    Unreadable(String),
}

impl std::fmt::Display for InvalidImage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::UnknownFormat => write!(f, "not a JPEG, PNG, GIF, BMP, TIFF or WebP image"),
            Self::WebPDisabled => write!(f, "WebP decoding is disabled (decodeWebp=false)"),
            Self::TooLarge {
                width,
                height,
                max_pixels,
            } => write!(
                f,
                "{width}x{height} = {} pixels exceeds maxPixels={max_pixels}",
                width * height
            ),
            Self::TooManyBytes {
                width,
                height,
                bytes,
                max_bytes,
            } => write!(
                f,
                "{width}x{height} needs {bytes} bytes to decode, above this cluster's limit of \
                 {max_bytes} (--max-image-bytes)"
            ),
            Self::Corrupt(msg) => write!(f, "corrupt image: {msg}"),
            Self::Unreadable(msg) => write!(f, "unreadable file: {msg}"),
        }
    }
}

type DecodeResult = Result<ImageRow, InvalidImage>;

/// Decodes a whole file into Spark's image layout.
pub fn decode_image(bytes: &[u8], options: &DecodeOptions) -> DecodeResult {
    let format = sniff_format(bytes).ok_or(InvalidImage::UnknownFormat)?;
    // The process's ceilings bound whatever the client asked for.
    let limits = crate::limits::Limits::get();
    let options = &DecodeOptions {
        max_pixels: options.max_pixels.min(limits.max_pixels),
        max_bytes: options.max_bytes.min(limits.max_image_bytes),
        ..*options
    };
    // Decoders must never take an executor down: a panic (libjpeg reports fatal errors by
    // unwinding) becomes an invalid row.
    catch_unwind(AssertUnwindSafe(|| match format {
        ImageFormat::Jpeg => decode_jpeg(bytes, options),
        ImageFormat::Png => decode_png(bytes, options),
        ImageFormat::Gif => decode_gif(bytes, options),
        ImageFormat::Bmp => decode_with_image_crate(bytes, image::ImageFormat::Bmp, options),
        ImageFormat::Tiff => decode_with_image_crate(bytes, image::ImageFormat::Tiff, options),
        ImageFormat::WebP if options.decode_webp => {
            decode_with_image_crate(bytes, image::ImageFormat::WebP, options)
        }
        ImageFormat::WebP => Err(InvalidImage::WebPDisabled),
    }))
    .unwrap_or_else(|panic| Err(InvalidImage::Corrupt(panic_message(panic.as_ref()))))
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = panic.downcast_ref::<String>() {
        s.clone()
    } else if let Some(s) = panic.downcast_ref::<&str>() {
        (*s).to_string()
    } else {
        "decoder panicked".to_string()
    }
}

fn check_size(width: u64, height: u64, options: &DecodeOptions) -> Result<(), InvalidImage> {
    if width == 0 || height == 0 {
        return Err(InvalidImage::Corrupt(format!(
            "image has no pixels ({width}x{height})"
        )));
    }
    if width.saturating_mul(height) > options.max_pixels {
        return Err(InvalidImage::TooLarge {
            width,
            height,
            max_pixels: options.max_pixels,
        });
    }
    Ok(())
}

fn check_bytes(
    width: u64,
    height: u64,
    bytes: u64,
    options: &DecodeOptions,
) -> Result<(), InvalidImage> {
    if bytes > options.max_bytes {
        return Err(InvalidImage::TooManyBytes {
            width,
            height,
            bytes,
            max_bytes: options.max_bytes,
        });
    }
    Ok(())
}

fn corrupt(e: impl std::fmt::Display) -> InvalidImage {
    InvalidImage::Corrupt(e.to_string())
}

// ----------------------------------------------------------------------------------------
// JPEG

fn decode_jpeg(bytes: &[u8], options: &DecodeOptions) -> DecodeResult {
    use mozjpeg::{ColorSpace, Decompress};
    let mut decompress = Decompress::new_mem(bytes).map_err(corrupt)?;
    let (width, height) = decompress.size();
    // The limits apply to the file's own size, whatever scale it is decoded at.
    check_size(width as u64, height as u64, options)?;
    // at most 4 bytes a pixel (CMYK), and as much again for the BGR copy
    check_bytes(
        width as u64,
        height as u64,
        (width * height * 4) as u64,
        options,
    )?;
    if let Some((cover_w, cover_h)) = options.jpeg_cover {
        // libjpeg-turbo's scaled inverse DCT: the entropy decoding is the same, so a file
        // that is invalid at full size is invalid here too.
        decompress.scale(super::resize::dct_scale_numerator(
            width, height, cover_w, cover_h,
        ));
    }
    match decompress.color_space() {
        ColorSpace::JCS_GRAYSCALE => {
            let mut started = decompress.grayscale().map_err(corrupt)?;
            let (width, height) = (started.width(), started.height());
            let data: Vec<u8> = started.read_scanlines().map_err(corrupt)?;
            // libjpeg tolerates trailing garbage after the image (as ImageIO does).
            let _ = started.finish();
            Ok(ImageRow::new(height, width, 1, data))
        }
        ColorSpace::JCS_CMYK | ColorSpace::JCS_YCCK => {
            // Out of Spark parity scope (SPEC.md): Adobe-style inverted CMYK to B G R.
            let mut started = decompress
                .to_colorspace(ColorSpace::JCS_CMYK)
                .map_err(corrupt)?;
            let (width, height) = (started.width(), started.height());
            let cmyk: Vec<u8> = started.read_scanlines().map_err(corrupt)?;
            // libjpeg tolerates trailing garbage after the image (as ImageIO does).
            let _ = started.finish();
            let mut data = Vec::with_capacity(width * height * 3);
            for px in cmyk.chunks_exact(4) {
                let k = px[3] as u32;
                for c in [px[2], px[1], px[0]] {
                    data.push(((c as u32 * k + 127) / 255) as u8);
                }
            }
            Ok(ImageRow::new(height, width, 3, data))
        }
        _ => {
            let mut started = decompress
                .to_colorspace(ColorSpace::JCS_EXT_BGR)
                .map_err(corrupt)?;
            let (width, height) = (started.width(), started.height());
            let data: Vec<u8> = started.read_scanlines().map_err(corrupt)?;
            // libjpeg tolerates trailing garbage after the image (as ImageIO does).
            let _ = started.finish();
            Ok(ImageRow::new(height, width, 3, data))
        }
    }
}

// ----------------------------------------------------------------------------------------
// PNG

fn decode_png(bytes: &[u8], options: &DecodeOptions) -> DecodeResult {
    use png::{BitDepth, ColorType};
    let mut decoder = png::Decoder::new(Cursor::new(bytes));
    decoder.set_transformations(png::Transformations::IDENTITY);
    // The pixel limit is ours; the crate's own 64 MiB default would reject big photos.
    decoder.set_limits(png::Limits {
        bytes: usize::try_from(options.max_pixels.saturating_mul(8).min(options.max_bytes))
            .unwrap_or(usize::MAX),
    });
    let header = decoder.read_header_info().map_err(corrupt)?;
    check_size(header.width as u64, header.height as u64, options)?;
    let bytes_per_sample = if header.bit_depth == png::BitDepth::Sixteen {
        2
    } else {
        1
    };
    let samples = match header.color_type {
        png::ColorType::Grayscale | png::ColorType::Indexed => 1,
        png::ColorType::GrayscaleAlpha => 2,
        png::ColorType::Rgb => 3,
        png::ColorType::Rgba => 4,
    };
    // the decoded buffer, then the image row (up to 4 bytes a pixel)
    check_bytes(
        header.width as u64,
        header.height as u64,
        header.width as u64 * header.height as u64 * (samples * bytes_per_sample + 4),
        options,
    )?;
    let mut reader = decoder.read_info().map_err(corrupt)?;
    let (width, height, color_type, bit_depth, palette, trns) = {
        let info = reader.info();
        (
            info.width as usize,
            info.height as usize,
            info.color_type,
            info.bit_depth,
            info.palette.as_ref().map(|p| p.to_vec()),
            info.trns.as_ref().map(|t| t.to_vec()),
        )
    };
    check_size(width as u64, height as u64, options)?;
    let size = reader
        .output_buffer_size()
        .ok_or_else(|| corrupt("PNG output buffer size overflows"))?;
    let mut buf = vec![0u8; size];
    let frame = reader.next_frame(&mut buf).map_err(corrupt)?;
    let line = frame.line_size;
    let depth = bit_depth as usize;
    let pixels = width * height;
    let wide = bit_depth == BitDepth::Sixteen;
    // Spark maps 16-bit colour samples with round(v / 257) (ImageIO's sRGB view) but keeps
    // the low byte of 16-bit gray samples (band 0 of the raster, cast to a byte).
    let sample16 = |row: &[u8], i: usize| u16::from_be_bytes([row[2 * i], row[2 * i + 1]]);
    let scale16 = |v: u16| ((2 * v as u32 + 257) / 514) as u8;
    let rows = buf.chunks(line).take(height);
    match color_type {
        ColorType::Grayscale | ColorType::GrayscaleAlpha if depth >= 8 => {
            let channels = if color_type == ColorType::Grayscale {
                1
            } else {
                2
            };
            let mut data = Vec::with_capacity(pixels);
            for row in rows {
                for x in 0..width {
                    let i = x * channels;
                    data.push(if wide { row[2 * i + 1] } else { row[i] });
                }
            }
            Ok(ImageRow::new(height, width, 1, data))
        }
        ColorType::Grayscale | ColorType::GrayscaleAlpha => {
            // Packed 1/2/4-bit gray: ImageIO uses an indexed colour model, so Spark reports
            // three channels with the gray ramp i * 255 / (2^depth - 1).
            let max = (1u32 << depth) - 1;
            let mut data = Vec::with_capacity(pixels * 3);
            for row in rows {
                for x in 0..width {
                    let v = (packed_sample(row, x, depth) as u32 * 255 / max) as u8;
                    data.extend_from_slice(&[v, v, v]);
                }
            }
            Ok(ImageRow::new(height, width, 3, data))
        }
        ColorType::Indexed => {
            let palette = palette.ok_or_else(|| corrupt("indexed PNG without a palette"))?;
            let alpha = trns.as_deref();
            let channels = if alpha.is_some() { 4 } else { 3 };
            let mut data = Vec::with_capacity(pixels * channels);
            for row in rows {
                for x in 0..width {
                    let idx = packed_sample(row, x, depth) as usize;
                    let rgb = palette
                        .get(3 * idx..3 * idx + 3)
                        .ok_or_else(|| corrupt(format!("palette index {idx} out of range")))?;
                    data.extend_from_slice(&[rgb[2], rgb[1], rgb[0]]);
                    if let Some(a) = alpha {
                        data.push(a.get(idx).copied().unwrap_or(255));
                    }
                }
            }
            Ok(ImageRow::new(height, width, channels, data))
        }
        ColorType::Rgb | ColorType::Rgba => {
            let in_channels = if color_type == ColorType::Rgb { 3 } else { 4 };
            // Since JDK 11 ImageIO turns an RGB image with a tRNS colour into ARGB.
            let trns_rgb = match (&trns, color_type) {
                (Some(t), ColorType::Rgb) if t.len() >= 6 => Some([
                    u16::from_be_bytes([t[0], t[1]]),
                    u16::from_be_bytes([t[2], t[3]]),
                    u16::from_be_bytes([t[4], t[5]]),
                ]),
                _ => None,
            };
            let out_channels = if in_channels == 4 || trns_rgb.is_some() {
                4
            } else {
                3
            };
            let mut data = Vec::with_capacity(pixels * out_channels);
            for row in rows {
                for x in 0..width {
                    let base = x * in_channels;
                    let raw: [u16; 4] = if wide {
                        [
                            sample16(row, base),
                            sample16(row, base + 1),
                            sample16(row, base + 2),
                            if in_channels == 4 {
                                sample16(row, base + 3)
                            } else {
                                u16::MAX
                            },
                        ]
                    } else {
                        [
                            row[base] as u16,
                            row[base + 1] as u16,
                            row[base + 2] as u16,
                            if in_channels == 4 {
                                row[base + 3] as u16
                            } else {
                                255
                            },
                        ]
                    };
                    let to8 = |v: u16| if wide { scale16(v) } else { v as u8 };
                    data.extend_from_slice(&[to8(raw[2]), to8(raw[1]), to8(raw[0])]);
                    if out_channels == 4 {
                        let a = match trns_rgb {
                            Some(t) if t == [raw[0], raw[1], raw[2]] => 0,
                            Some(_) => 255,
                            None => to8(raw[3]),
                        };
                        data.push(a);
                    }
                }
            }
            Ok(ImageRow::new(height, width, out_channels, data))
        }
    }
}

/// The `x`-th sample of a row packed at `depth` bits (1, 2, 4 or 8), most significant first.
fn packed_sample(row: &[u8], x: usize, depth: usize) -> u8 {
    match depth {
        8 => row[x],
        _ => {
            let per_byte = 8 / depth;
            let byte = row[x / per_byte];
            let shift = 8 - depth * (x % per_byte + 1);
            (byte >> shift) & ((1u8 << depth) - 1)
        }
    }
}

// ----------------------------------------------------------------------------------------
// GIF

fn decode_gif(bytes: &[u8], options: &DecodeOptions) -> DecodeResult {
    let mut gif_options = gif::DecodeOptions::new();
    gif_options.set_color_output(gif::ColorOutput::Indexed);
    let mut decoder = gif_options.read_info(Cursor::new(bytes)).map_err(corrupt)?;
    let global = decoder.global_palette().map(|p| p.to_vec());
    let (width, height, transparent, local) = match decoder.next_frame_info().map_err(corrupt)? {
        Some(frame) => (
            frame.width as usize,
            frame.height as usize,
            frame.transparent,
            frame.palette.clone(),
        ),
        None => return Err(corrupt("GIF has no image")),
    };
    check_size(width as u64, height as u64, options)?;
    check_bytes(
        width as u64,
        height as u64,
        (width * height * 5) as u64,
        options,
    )?;
    let mut indices = vec![0u8; decoder.buffer_size()];
    decoder.read_into_buffer(&mut indices).map_err(corrupt)?;
    let palette = local
        .or(global)
        .ok_or_else(|| corrupt("GIF frame without a colour table"))?;
    // ImageIO: an indexed colour model, with alpha when the frame has a transparent index.
    let channels = if transparent.is_some() { 4 } else { 3 };
    let mut data = Vec::with_capacity(width * height * channels);
    for &idx in indices.iter().take(width * height) {
        let i = idx as usize;
        let rgb = palette.get(3 * i..3 * i + 3).unwrap_or(&[0, 0, 0]);
        data.extend_from_slice(&[rgb[2], rgb[1], rgb[0]]);
        if let Some(t) = transparent {
            data.push(if idx == t { 0 } else { 255 });
        }
    }
    Ok(ImageRow::new(height, width, channels, data))
}

// ----------------------------------------------------------------------------------------
// BMP, TIFF, WebP

fn decode_with_image_crate(
    bytes: &[u8],
    format: image::ImageFormat,
    options: &DecodeOptions,
) -> DecodeResult {
    use image::{DynamicImage, ImageDecoder};
    let decoder = image::ImageReader::with_format(Cursor::new(bytes), format)
        .into_decoder()
        .map_err(corrupt)?;
    let (width, height) = decoder.dimensions();
    check_size(width as u64, height as u64, options)?;
    let total = decoder
        .total_bytes()
        .saturating_add(width as u64 * height as u64 * 4);
    check_bytes(width as u64, height as u64, total, options)?;
    let img = DynamicImage::from_decoder(decoder).map_err(corrupt)?;
    let (w, h) = (width as usize, height as usize);
    let row = match img {
        DynamicImage::ImageLuma8(g) => ImageRow::new(h, w, 1, g.into_raw()),
        DynamicImage::ImageLumaA8(g) => ImageRow::new(
            h,
            w,
            1,
            g.into_raw().chunks_exact(2).map(|p| p[0]).collect(),
        ),
        DynamicImage::ImageLuma16(g) => {
            ImageRow::new(h, w, 1, g.into_raw().iter().map(|v| *v as u8).collect())
        }
        DynamicImage::ImageLumaA16(g) => ImageRow::new(
            h,
            w,
            1,
            g.into_raw().chunks_exact(2).map(|p| p[0] as u8).collect(),
        ),
        other if other.color().has_alpha() => {
            let rgba = other.into_rgba8().into_raw();
            let mut data = Vec::with_capacity(rgba.len());
            for p in rgba.chunks_exact(4) {
                data.extend_from_slice(&[p[2], p[1], p[0], p[3]]);
            }
            ImageRow::new(h, w, 4, data)
        }
        other => ImageRow::new(h, w, 3, rgb_to_bgr(other.into_rgb8().into_raw())),
    };
    Ok(row)
}

fn rgb_to_bgr(mut rgb: Vec<u8>) -> Vec<u8> {
    for p in rgb.chunks_exact_mut(3) {
        p.swap(0, 2);
    }
    rgb
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sniffs_by_content_not_extension() {
        assert_eq!(
            sniff_format(&[0xFF, 0xD8, 0xFF, 0xE0]),
            Some(ImageFormat::Jpeg)
        );
        assert_eq!(
            sniff_format(b"\x89PNG\r\n\x1a\n...."),
            Some(ImageFormat::Png)
        );
        assert_eq!(
            sniff_format(b"RIFF\0\0\0\0WEBPVP8 "),
            Some(ImageFormat::WebP)
        );
        assert_eq!(sniff_format(b"hello world"), None);
        assert_eq!(sniff_format(b""), None);
    }

    #[test]
    fn garbage_and_truncated_input_is_invalid_not_a_panic() {
        let opts = DecodeOptions::default();
        let mut garbage = vec![0xFF, 0xD8, 0xFF];
        garbage.extend((0..200u32).map(|i| (i * 7919 % 251) as u8));
        assert!(matches!(
            decode_image(&garbage, &opts),
            Err(InvalidImage::Corrupt(_))
        ));
        let png_head = b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR\0\0\0\x10";
        assert!(decode_image(png_head, &opts).is_err());
        assert_eq!(
            decode_image(b"text", &opts),
            Err(InvalidImage::UnknownFormat)
        );
    }

    #[test]
    fn packed_samples_unpack_msb_first() {
        assert_eq!(packed_sample(&[0b1010_0000], 0, 1), 1);
        assert_eq!(packed_sample(&[0b1010_0000], 1, 1), 0);
        assert_eq!(packed_sample(&[0b1110_0100], 1, 2), 2);
        assert_eq!(packed_sample(&[0xAB], 1, 4), 0xB);
    }

    #[test]
    fn pixel_limit_rejects_bombs_from_the_header() {
        // A valid 1x1 PNG header claiming 100000 x 100000 pixels, with no data behind it.
        let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
        let mut ihdr = b"IHDR".to_vec();
        ihdr.extend(100_000u32.to_be_bytes());
        ihdr.extend(100_000u32.to_be_bytes());
        ihdr.extend([8, 2, 0, 0, 0]);
        png.extend(13u32.to_be_bytes());
        png.extend(&ihdr);
        let crc = crc32(&ihdr);
        png.extend(crc.to_be_bytes());
        let opts = DecodeOptions::default();
        assert!(matches!(
            decode_image(&png, &opts),
            Err(InvalidImage::TooLarge { .. })
        ));
    }

    fn sanity_photo(path: &str) -> Vec<u8> {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        std::fs::read(root.join("../../shared/data/imagenet-sanity").join(path)).unwrap()
    }

    #[test]
    fn jpegs_decode_at_the_smallest_dct_scale_that_covers_the_target() {
        let exact = DecodeOptions::default();
        let cover = |w, h| DecodeOptions {
            jpeg_cover: Some((w, h)),
            ..exact
        };
        // 4608 x 3456: 1/8 gives 576 x 432, which covers 256 x 256.
        let big = sanity_photo("coffeepot/coffeepot2.jpg");
        let full = decode_image(&big, &exact).unwrap();
        assert_eq!((full.width, full.height, full.n_channels), (4608, 3456, 3));
        let small = decode_image(&big, &cover(256, 256)).unwrap();
        assert_eq!((small.width, small.height, small.n_channels), (576, 432, 3));
        assert_eq!(small.data.len(), 576 * 432 * 3);
        // 800 x 600: 1/4 gives 200 x 150, too small for 224; 1/2 gives 400 x 300.
        let broccoli = sanity_photo("broccoli/broccoli.jpg");
        let half = decode_image(&broccoli, &cover(224, 224)).unwrap();
        assert_eq!((half.width, half.height), (400, 300));
        // Nothing smaller covers 640 x 480 at 256: decoded at full size, byte for byte.
        let canoe = sanity_photo("canoe/canoe2.jpg");
        assert_eq!(
            decode_image(&canoe, &cover(256, 256)).unwrap(),
            decode_image(&canoe, &exact).unwrap()
        );
        // The scaled pixels are the image's: mean colour within a level or two of full size.
        let mean = |r: &ImageRow| -> Vec<f64> {
            (0..3)
                .map(|c| {
                    let n = r.data.len() / 3;
                    r.data
                        .iter()
                        .skip(c)
                        .step_by(3)
                        .map(|&v| v as f64)
                        .sum::<f64>()
                        / n as f64
                })
                .collect()
        };
        for (a, b) in mean(&full).iter().zip(mean(&small)) {
            assert!(
                (a - b).abs() < 2.0,
                "{:?} vs {:?}",
                mean(&full),
                mean(&small)
            );
        }
        // Limits apply to the file's own size, not the scaled one.
        let tight = DecodeOptions {
            max_pixels: 1_000_000,
            ..cover(256, 256)
        };
        assert!(matches!(
            decode_image(&big, &tight),
            Err(InvalidImage::TooLarge { .. })
        ));
        // A truncated file is invalid at any scale.
        assert!(decode_image(&big[..600], &cover(256, 256)).is_err());
    }

    fn crc32(data: &[u8]) -> u32 {
        let mut crc = 0xFFFF_FFFFu32;
        for &b in data {
            crc ^= b as u32;
            for _ in 0..8 {
                crc = if crc & 1 != 0 {
                    (crc >> 1) ^ 0xEDB8_8320
                } else {
                    crc >> 1
                };
            }
        }
        !crc
    }
}

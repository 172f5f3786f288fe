//! Decode-and-resize to a fixed size (model input), using libjpeg-turbo's DCT-domain
//! scaling so that JPEGs are decoded at the smallest scale that still covers the target,
//! then a SIMD bilinear resize.

use fast_image_resize::images::Image;
use fast_image_resize::{FilterType, PixelType, ResizeAlg, ResizeOptions, Resizer};

use super::decode::{DecodeOptions, ImageFormat, InvalidImage, decode_image, sniff_format};
use super::schema::ImageRow;

/// An RGB image, row-major, 3 bytes per pixel (4, R G B X, inside the JPEG fast path).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RgbImage {
    /// Width in pixels.
    pub width: usize,
    /// Height in pixels.
    pub height: usize,
    /// `width * height * 3` bytes, R G B.
    pub data: Vec<u8>,
}

/// Smallest libjpeg scale `n/8` whose output covers `target`, among 1/8, 1/4, 1/2 and 1:
/// libjpeg-turbo has SIMD inverse DCTs for those, while 3/8, 5/8, ... run in plain C and
/// are slower than a full-size SIMD decode.
pub fn dct_scale_numerator(width: usize, height: usize, tw: usize, th: usize) -> u8 {
    [1u8, 2, 4, 8]
        .into_iter()
        .find(|&n| {
            (width * n as usize).div_ceil(8) >= tw && (height * n as usize).div_ceil(8) >= th
        })
        .unwrap_or(8)
}

/// Decodes `bytes` and resizes (stretches) to `tw` x `th` RGB.
pub fn decode_resized_rgb(
    bytes: &[u8],
    tw: usize,
    th: usize,
    options: &DecodeOptions,
) -> Result<RgbImage, InvalidImage> {
    let src = if sniff_format(bytes) == Some(ImageFormat::Jpeg) {
        decode_jpeg_scaled_rgb(bytes, tw, th, options)?
    } else {
        row_to_rgb(&decode_image(bytes, options)?)
    };
    resize_owned(src, tw, th)
}

fn decode_jpeg_scaled_rgb(
    bytes: &[u8],
    tw: usize,
    th: usize,
    options: &DecodeOptions,
) -> Result<RgbImage, InvalidImage> {
    use std::panic::{AssertUnwindSafe, catch_unwind};
    let corrupt = |e: std::io::Error| InvalidImage::Corrupt(e.to_string());
    catch_unwind(AssertUnwindSafe(|| {
        let mut d = mozjpeg::Decompress::new_mem(bytes).map_err(corrupt)?;
        let (w, h) = d.size();
        if (w as u64).saturating_mul(h as u64) > options.max_pixels {
            return Err(InvalidImage::TooLarge {
                width: w as u64,
                height: h as u64,
                max_pixels: options.max_pixels,
            });
        }
        d.scale(dct_scale_numerator(w, h, tw, th));
        let mut started = d.rgb().map_err(corrupt)?;
        let (width, height) = (started.width(), started.height());
        let data: Vec<u8> = started.read_scanlines().map_err(corrupt)?;
        let _ = started.finish();
        Ok(RgbImage {
            width,
            height,
            data,
        })
    }))
    .unwrap_or_else(|_| Err(InvalidImage::Corrupt("libjpeg fatal error".into())))
}

/// Converts a Spark-layout image (gray, B G R, B G R A) to RGB.
pub fn row_to_rgb(row: &ImageRow) -> RgbImage {
    let (width, height) = (row.width.max(0) as usize, row.height.max(0) as usize);
    let data = match row.n_channels {
        1 => row.data.iter().flat_map(|&g| [g, g, g]).collect(),
        3 => row
            .data
            .chunks_exact(3)
            .flat_map(|p| [p[2], p[1], p[0]])
            .collect(),
        4 => row
            .data
            .chunks_exact(4)
            .flat_map(|p| [p[2], p[1], p[0]])
            .collect(),
        _ => Vec::new(),
    };
    RgbImage {
        width,
        height,
        data,
    }
}

/// Bilinear resize (with antialiasing when shrinking, like Pillow) to `tw` x `th`.
pub fn resize_rgb(src: &RgbImage, tw: usize, th: usize) -> Result<RgbImage, InvalidImage> {
    resize_owned(src.clone(), tw, th)
}

fn resize_owned(src: RgbImage, tw: usize, th: usize) -> Result<RgbImage, InvalidImage> {
    let bpp = if src.data.len() == src.width * src.height * 4 {
        4
    } else {
        3
    };
    if src.width == tw && src.height == th {
        return Ok(RgbImage {
            width: tw,
            height: th,
            data: to_rgb(src.data, bpp),
        });
    }
    let err = |e: &dyn std::fmt::Display| InvalidImage::Corrupt(format!("resize: {e}"));
    let from = Image::from_vec_u8(
        src.width as u32,
        src.height as u32,
        src.data,
        if bpp == 4 {
            PixelType::U8x4
        } else {
            PixelType::U8x3
        },
    )
    .map_err(|e| err(&e))?;
    let mut to = Image::new(
        tw as u32,
        th as u32,
        if bpp == 4 {
            PixelType::U8x4
        } else {
            PixelType::U8x3
        },
    );
    Resizer::new()
        .resize(
            &from,
            &mut to,
            &ResizeOptions::new().resize_alg(ResizeAlg::Convolution(FilterType::Bilinear)),
        )
        .map_err(|e| err(&e))?;
    Ok(RgbImage {
        width: tw,
        height: th,
        data: to_rgb(to.into_vec(), bpp),
    })
}

fn to_rgb(data: Vec<u8>, bpp: usize) -> Vec<u8> {
    if bpp == 3 {
        return data;
    }
    data.chunks_exact(4)
        .flat_map(|p| [p[0], p[1], p[2]])
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scale_covers_the_target() {
        assert_eq!(dct_scale_numerator(500, 375, 224, 224), 8);
        assert_eq!(dct_scale_numerator(500, 500, 224, 224), 4);
        assert_eq!(dct_scale_numerator(1600, 1600, 224, 224), 2);
        assert_eq!(dct_scale_numerator(100, 100, 224, 224), 8);
    }

    #[test]
    fn gray_and_bgra_convert_to_rgb() {
        let g = row_to_rgb(&ImageRow::new(1, 1, 1, vec![7]));
        assert_eq!(g.data, vec![7, 7, 7]);
        let c = row_to_rgb(&ImageRow::new(1, 1, 4, vec![1, 2, 3, 4]));
        assert_eq!(c.data, vec![3, 2, 1]);
        let r = resize_rgb(&row_to_rgb(&ImageRow::new(2, 2, 3, vec![9; 12])), 4, 4).unwrap();
        assert_eq!((r.width, r.height, r.data.len()), (4, 4, 48));
        assert!(r.data.iter().all(|&v| v == 9));
    }
}

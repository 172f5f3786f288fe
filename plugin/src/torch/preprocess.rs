//! A model's image preprocessing in two passes over the pixels: Spark's bytes (B G R (A) or
//! gray, row-major) -> the manifest's channel order, antialiased bilinear resize, centre
//! crop, `x * scale`, `- mean`, `/ std` -> `[3, H, W]` float.
//!
//! The same arithmetic as PyTorch's `F.interpolate(mode="bilinear", antialias=True,
//! align_corners=False)` (its weights: a triangle filter stretched by the scale when
//! shrinking, normalised per output pixel), so features agree with a PyTorch + Pillow loop
//! to float rounding. Done in libtorch it took six passes over the full-size image (channel
//! pick, to float, two resize passes, then scale, mean and std) and computed resized pixels
//! that the crop then dropped: about a tenth of a featurizing core. Here a vertical pass
//! reads the source rows once, into float, for the columns the crop keeps, and a horizontal
//! pass writes each output pixel normalised.

use datafusion::common::{Result, exec_err};

use super::manifest::ResizePolicy;

/// One axis of a resize: for each output index, the first input index and its weights.
#[derive(Debug)]
struct Taps {
    start: Vec<usize>,
    len: Vec<usize>,
    /// `len[i]` weights of output `i` at `i * stride`.
    weights: Vec<f32>,
    stride: usize,
}

impl Taps {
    /// Outputs `first..first + count` of a resize from `input` to `output` samples, with
    /// PyTorch's antialiased bilinear weights (`_compute_weights_aa`: support = the scale
    /// when shrinking, 1 when enlarging; a size kept as it is is an identity, as PyTorch
    /// skips it).
    fn new(input: usize, output: usize, first: usize, count: usize) -> Self {
        if input == output {
            return Self {
                start: (first..first + count).collect(),
                len: vec![1; count],
                weights: vec![1.0; count],
                stride: 1,
            };
        }
        let scale = input as f32 / output as f32;
        let support = if scale >= 1.0 { scale } else { 1.0 };
        let invscale = if scale >= 1.0 { 1.0 / scale } else { 1.0 };
        let stride = (support.ceil() as usize) * 2 + 1;
        let mut taps = Self {
            start: Vec::with_capacity(count),
            len: Vec::with_capacity(count),
            weights: vec![0.0; count * stride],
            stride,
        };
        for (k, i) in (first..first + count).enumerate() {
            let center = scale * (i as f32 + 0.5);
            let xmin = ((center - support + 0.5) as i64).max(0) as usize;
            let xmax = ((center + support + 0.5) as i64).min(input as i64).max(0) as usize;
            let n = xmax.saturating_sub(xmin).min(stride);
            let w = &mut taps.weights[k * stride..k * stride + n];
            let mut total = 0.0f32;
            for (j, wj) in w.iter_mut().enumerate() {
                let x = ((j + xmin) as f32 - center + 0.5) * invscale;
                *wj = (1.0 - x.abs()).max(0.0);
                total += *wj;
            }
            if total != 0.0 {
                w.iter_mut().for_each(|wj| *wj /= total);
            }
            taps.start.push(xmin);
            taps.len.push(n);
        }
        taps
    }

    fn of(&self, i: usize) -> (usize, &[f32]) {
        let at = i * self.stride;
        (self.start[i], &self.weights[at..at + self.len[i]])
    }

    /// The input range every output reads from.
    fn span(&self) -> (usize, usize) {
        let lo = self.start.iter().copied().min().unwrap_or(0);
        let hi = (0..self.start.len())
            .map(|i| self.start[i] + self.len[i])
            .max()
            .unwrap_or(0);
        (lo, hi)
    }
}

/// One image in Spark's layout, borrowed from an `image` struct row.
#[derive(Debug, Clone, Copy)]
pub struct ImageRef<'a> {
    /// Rows.
    pub height: usize,
    /// Columns.
    pub width: usize,
    /// 1 (gray), 3 (B G R) or 4 (B G R A).
    pub channels: usize,
    /// Pixel bytes.
    pub data: &'a [u8],
}

/// What a model's manifest asks of its input image.
#[derive(Debug, Clone, Copy)]
pub struct Preprocessing<'a> {
    /// Model input rows and columns.
    pub height: usize,
    pub width: usize,
    /// `true` for R G B, `false` for B G R (Spark's order).
    pub rgb: bool,
    pub resize: ResizePolicy,
    pub scale: f64,
    /// Per channel, in the model's channel order.
    pub mean: &'a [f64],
    pub std: &'a [f64],
}

/// How preprocessed values are laid out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// `[3, height, width]`, channel-major (PyTorch's default, NCHW in a batch).
    Chw,
    /// `[height, width, 3]`, channels interleaved (channels-last, NHWC in a batch).
    Hwc,
}

/// Preprocesses one image into `[3, p.height, p.width]` float values, channel-major.
pub fn preprocess(p: &Preprocessing<'_>, img: ImageRef<'_>) -> Result<Vec<f32>> {
    let mut out = vec![0.0f32; 3 * p.height * p.width];
    preprocess_into(p, img, Layout::Chw, &mut out)?;
    Ok(out)
}

/// [`preprocess`] into `out` (`3 * p.height * p.width` values, every one written) laid out
/// as `layout` says: a batch's images go straight into one buffer.
pub fn preprocess_into(
    p: &Preprocessing<'_>,
    img: ImageRef<'_>,
    layout: Layout,
    out: &mut [f32],
) -> Result<()> {
    let (h, w, c, data) = (img.height, img.width, img.channels, img.data);
    if data.len() != h * w * c || h == 0 || w == 0 {
        return exec_err!("image of {h}x{w}x{c} has {} bytes", data.len());
    }
    let pick: [usize; 3] = match c {
        1 => [0, 0, 0],
        3 | 4 if p.rgb => [2, 1, 0],
        3 | 4 => [0, 1, 2],
        _ => return exec_err!("unsupported channel count {c}"),
    };
    if p.mean.len() != 3 || p.std.len() != 3 || p.height == 0 || p.width == 0 {
        return exec_err!(
            "model input {}x{} with {} means and {} deviations: expected a size and 3 of each",
            p.height,
            p.width,
            p.mean.len(),
            p.std.len()
        );
    }
    let (th, tw) = (p.height, p.width);
    let (rw, rh, left, top) = p.resize.layout((w, h), (tw, th));
    let ys = Taps::new(h, rh, top, th);
    let xs = Taps::new(w, rw, left, tw);
    let (x_lo, x_hi) = xs.span();
    // Vertical pass: each output row's source rows, over the columns the crop reads, all
    // channels as they are interleaved, into float.
    let row_len = (x_hi - x_lo) * c;
    let mut rows = vec![0.0f32; th * row_len];
    // (Every output reads at least one column: row_len >= c.)
    for (oy, acc) in rows.chunks_exact_mut(row_len).enumerate() {
        let (y0, wy) = ys.of(oy);
        for (k, &wk) in wy.iter().enumerate() {
            let at = (y0 + k) * w * c + x_lo * c;
            let src = &data[at..at + row_len];
            for (a, &s) in acc.iter_mut().zip(src) {
                *a += wk * s as f32;
            }
        }
    }
    // Horizontal pass: each output pixel from its source columns, in the model's channel
    // order, then scaled and normalised as PyTorch does in float.
    let scale = p.scale as f32;
    let (mean, std) = (
        [p.mean[0] as f32, p.mean[1] as f32, p.mean[2] as f32],
        [p.std[0] as f32, p.std[1] as f32, p.std[2] as f32],
    );
    let plane = th * tw;
    if out.len() != 3 * plane {
        return exec_err!("output of {} values for a 3x{th}x{tw} input", out.len());
    }
    let (channel_step, pixel_step) = match layout {
        Layout::Chw => (plane, 1),
        Layout::Hwc => (1, 3),
    };
    for oy in 0..th {
        let acc = &rows[oy * row_len..(oy + 1) * row_len];
        for ox in 0..tw {
            let (x0, wx) = xs.of(ox);
            let base = (x0 - x_lo) * c;
            for (ch, &src_ch) in pick.iter().enumerate() {
                let mut v = 0.0f32;
                for (k, &wk) in wx.iter().enumerate() {
                    v += wk * acc[base + k * c + src_ch];
                }
                out[ch * channel_step + (oy * tw + ox) * pixel_step] =
                    (v * scale - mean[ch]) / std[ch];
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(height: usize, width: usize, channels: usize, data: &[u8]) -> ImageRef<'_> {
        ImageRef {
            height,
            width,
            channels,
            data,
        }
    }

    fn imagenet(height: usize, width: usize, resize: ResizePolicy) -> Preprocessing<'static> {
        Preprocessing {
            height,
            width,
            rgb: true,
            resize,
            scale: 1.0 / 255.0,
            mean: &[0.485, 0.456, 0.406],
            std: &[0.229, 0.224, 0.225],
        }
    }

    #[test]
    fn weights_cover_each_output_and_sum_to_one() {
        for (input, output) in [(500, 256), (88, 256), (4608, 256), (257, 256), (3, 7)] {
            let t = Taps::new(input, output, 0, output);
            for i in 0..output {
                let (x0, w) = t.of(i);
                assert!(x0 + w.len() <= input, "{input}->{output}: output {i}");
                let sum: f32 = w.iter().sum();
                assert!(
                    (sum - 1.0).abs() < 1e-5,
                    "{input}->{output}: output {i} sums to {sum}"
                );
            }
        }
        // Halving 0 1 2 3: PyTorch gives 0.7143 and 2.2857 (the triangle stretched to a
        // support of 2: weights 1/7, 3/7, 3/7 over samples 1..=3 for the second output).
        let t = Taps::new(4, 2, 0, 2);
        let at = |i| {
            let (x0, w) = t.of(i);
            w.iter()
                .enumerate()
                .map(|(k, wk)| wk * (x0 + k) as f32)
                .sum::<f32>()
        };
        assert!((at(0) - 0.7143).abs() < 1e-4 && (at(1) - 2.2857).abs() < 1e-4);
    }

    #[test]
    fn an_image_of_the_model_size_is_only_normalised() {
        let p = Preprocessing {
            mean: &[0.0, 0.0, 0.0],
            std: &[1.0, 1.0, 1.0],
            scale: 1.0,
            ..imagenet(2, 3, ResizePolicy::Stretch)
        };
        // B G R bytes; pixel (y, x) has blue 10y+x, green 100+that, red 200+that.
        let data: Vec<u8> = (0..2)
            .flat_map(|y| {
                (0..3).flat_map(move |x| [10 * y + x, 110 + 10 * y + x, 210 + 10 * y + x])
            })
            .map(|v| v as u8)
            .collect();
        let out = preprocess(&p, image(2, 3, 3, &data)).unwrap();
        // R plane first.
        assert_eq!(&out[..6], &[210.0, 211.0, 212.0, 220.0, 221.0, 222.0]);
        assert_eq!(&out[12..18], &[0.0, 1.0, 2.0, 10.0, 11.0, 12.0]);
        // Channels last: R G B per pixel, the same values.
        let mut hwc = vec![f32::NAN; 18];
        preprocess_into(&p, image(2, 3, 3, &data), Layout::Hwc, &mut hwc).unwrap();
        assert_eq!(&hwc[..6], &[210.0, 110.0, 0.0, 211.0, 111.0, 1.0]);
        for (i, v) in out.iter().enumerate() {
            assert_eq!(hwc[(i % 6) * 3 + i / 6], *v);
        }
        let err = preprocess_into(&p, image(2, 3, 3, &data), Layout::Hwc, &mut [0.0; 17])
            .unwrap_err()
            .to_string();
        assert!(err.contains("17 values for a 3x2x3 input"), "{err}");
    }

    #[test]
    fn gray_and_alpha_images_and_bad_sizes() {
        let p = imagenet(4, 4, ResizePolicy::ShorterSideCenterCrop);
        let gray = preprocess(&p, image(6, 5, 1, &[128; 30])).unwrap();
        let v = |ch: usize| (128.0f32 / 255.0 - p.mean[ch] as f32) / p.std[ch] as f32;
        for ch in 0..3 {
            assert!(
                gray[ch * 16..(ch + 1) * 16]
                    .iter()
                    .all(|&x| (x - v(ch)).abs() < 1e-5)
            );
        }
        let bgra = preprocess(&p, image(5, 5, 4, &[128; 100])).unwrap();
        assert!((bgra[0] - v(0)).abs() < 1e-5);
        let e = preprocess(&p, image(5, 5, 3, &[0; 10]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("5x5x3 has 10 bytes"), "{e}");
        let e = preprocess(&p, image(1, 1, 2, &[0; 2]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("unsupported channel count 2"), "{e}");
    }

    /// The same values as libtorch's antialiased resize (to float rounding: 8.3e-7 at most
    /// when written) (the op `F.interpolate(...,
    /// antialias=True)` runs), crop and normalisation, for shrinking, enlarging, a stretch
    /// and a crop, in colour and gray.
    #[cfg(feature = "torch")]
    #[test]
    fn agrees_with_libtorch() {
        use tch::{Kind, Tensor};
        fn reference(p: &Preprocessing<'_>, h: usize, w: usize, c: usize, data: &[u8]) -> Vec<f32> {
            let (h, w, c) = (h as i64, w as i64, c as i64);
            let hwc = Tensor::from_slice(data).view([h, w, c]);
            let three = match c {
                1 => hwc.expand([h, w, 3], false),
                _ => hwc.index_select(2, &Tensor::from_slice(&[2i64, 1, 0])),
            };
            let x = three.permute([2, 0, 1]).unsqueeze(0).to_kind(Kind::Float);
            let (rw, rh, left, top) = p
                .resize
                .layout((w as usize, h as usize), (p.width, p.height));
            let x = if (rh as i64, rw as i64) == (h, w) {
                x
            } else {
                x.internal_upsample_bilinear2d_aa([rh as i64, rw as i64], false, None, None)
            };
            let x = x
                .narrow(2, top as i64, p.height as i64)
                .narrow(3, left as i64, p.width as i64);
            let mean = Tensor::from_slice(p.mean)
                .view([1, 3, 1, 1])
                .to_kind(Kind::Float);
            let std = Tensor::from_slice(p.std)
                .view([1, 3, 1, 1])
                .to_kind(Kind::Float);
            let x = ((x * p.scale - mean) / std).contiguous().view([-1]);
            Vec::<f32>::try_from(&x).unwrap()
        }
        let mut seed = 7u64;
        let mut noise = |n: usize| -> Vec<u8> {
            (0..n)
                .map(|_| {
                    seed = seed
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    (seed >> 56) as u8
                })
                .collect()
        };
        let crop = imagenet(224, 224, ResizePolicy::ShorterSideCenterCrop);
        let stretch = imagenet(224, 224, ResizePolicy::Stretch);
        for (p, h, w, c) in [
            (crop, 333, 500, 3),
            (crop, 500, 375, 3),
            (crop, 88, 120, 3),
            (crop, 256, 320, 3),
            (crop, 1200, 1600, 1),
            (stretch, 240, 320, 3),
            (stretch, 100, 90, 4),
        ] {
            let data = noise(h * w * c);
            let ours = preprocess(&p, image(h, w, c, &data)).unwrap();
            let theirs = reference(&p, h, w, c, &data);
            assert_eq!(ours.len(), theirs.len());
            let worst = ours
                .iter()
                .zip(&theirs)
                .map(|(a, b)| (a - b).abs())
                .fold(0.0f32, f32::max);
            assert!(
                worst < 1e-5,
                "{h}x{w}x{c} {:?}: differs by {worst}",
                p.resize
            );
        }
    }
}

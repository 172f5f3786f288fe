//! The loop of [`super::loss::partial`]: logistic loss and gradient sums over rows of cached
//! features, fused so that the features cross the memory bus once per evaluation.
//!
//! Rows are taken four at a time. While the four rows sit in the core's L1 cache, their
//! margins (one dot product per class) and then their gradient terms (one `axpy` per class
//! into an accumulator of `classes x dim`) are computed; the coefficient and accumulator
//! rows are each loaded once for the four. The margins' dot products run in the features'
//! own type (f32 features: f32 products, as BLAS would); the margins, loss, per-row gradient
//! factors and gradient sums are f64. Summing the gradient terms straight into f64 makes
//! the sums of a set of rows the same, to f64 rounding, however the rows are split into
//! parts and chunks: a fit on two executors and one on the embedded cluster agree (with f32
//! accumulators flushed every 256 rows, the predicted probabilities of tutorial 2 differed
//! by 1.2e-4 between the two).
//!
//! On x86-64 with AVX2 and FMA (checked at run time) the loop is compiled for those
//! instructions, its four-row dot products written with AVX2 intrinsics; elsewhere it runs
//! as portable Rust. On 10,000 x 1,280 f32 rows and 5 classes (one core of the 2-core Xeon
//! of `docs/benchmarks.md`) this loop takes about 21 ms (15 ms with f32 accumulators); the
//! libtorch products it replaces (margins `X W^T`, then `g^T X`, in row blocks) took about
//! 33 ms.

/// A feature value type: `f32` or `f64`.
pub(crate) trait Feature:
    Copy + Default + Send + Sync + std::ops::Mul<Output = Self> + std::ops::Add<Output = Self>
{
    /// Accumulator lanes for one row's dot product: two AVX2 registers.
    type Lanes: Copy + Default + AsRef<[Self]>;
    /// Length of [`Feature::Lanes`].
    const LANES: usize;
    fn from_f64(v: f64) -> Self;
    fn to_f64(self) -> f64;
    /// `self * b + c`, fused when `FMA` (only inside code compiled with the FMA feature:
    /// elsewhere `mul_add` is a library call).
    fn mul_add_<const FMA: bool>(self, b: Self, c: Self) -> Self;
    /// `acc[l] += a[l] * b[l]` for each lane (`a` and `b` are [`Feature::LANES`] long).
    fn fma_lanes<const FMA: bool>(acc: &mut Self::Lanes, a: &[Self], b: &[Self]);
    /// Dot products of four rows `x` (`4 x dim`, row-major) with `w`, in AVX2 registers.
    /// (Written with intrinsics: LLVM vectorized the portable form of this loop across the
    /// four rows instead of along them, at a third of the speed.)
    ///
    /// # Safety
    /// The CPU must support AVX2 and FMA.
    #[cfg(target_arch = "x86_64")]
    unsafe fn dots4_avx2(x: &[Self], w: &[Self], dim: usize) -> [Self; 4];
}

macro_rules! feature {
    ($t:ty, $lanes:literal, $vec:ident, $width:literal, $zero:ident, $load:ident, $fmadd:ident, $add:ident, $store:ident) => {
        impl Feature for $t {
            type Lanes = [$t; $lanes];
            const LANES: usize = $lanes;
            fn from_f64(v: f64) -> Self {
                v as $t
            }
            #[inline(always)]
            fn to_f64(self) -> f64 {
                self as f64
            }
            #[inline(always)]
            fn mul_add_<const FMA: bool>(self, b: Self, c: Self) -> Self {
                if FMA {
                    self.mul_add(b, c)
                } else {
                    self * b + c
                }
            }
            #[inline(always)]
            fn fma_lanes<const FMA: bool>(acc: &mut Self::Lanes, a: &[Self], b: &[Self]) {
                // Fixed-length arrays and an index loop: the form LLVM turns into vector FMAs.
                let (a, b): (&[$t; $lanes], &[$t; $lanes]) =
                    (a.try_into().unwrap(), b.try_into().unwrap());
                for l in 0..$lanes {
                    acc[l] = a[l].mul_add_::<FMA>(b[l], acc[l]);
                }
            }
            #[cfg(target_arch = "x86_64")]
            #[target_feature(enable = "avx2,fma")]
            unsafe fn dots4_avx2(x: &[Self], w: &[Self], dim: usize) -> [Self; 4] {
                use std::arch::x86_64::*;
                assert!(x.len() >= 4 * dim && w.len() >= dim, "four rows of {dim}");
                let body = dim / $lanes * $lanes;
                let rows = [0, 1, 2, 3].map(|i| &x[i * dim..(i + 1) * dim]);
                let (p0, p1, p2, p3, q) = (
                    rows[0].as_ptr(),
                    rows[1].as_ptr(),
                    rows[2].as_ptr(),
                    rows[3].as_ptr(),
                    w.as_ptr(),
                );
                let (mut a0, mut b0, mut a1, mut b1) = ($zero(), $zero(), $zero(), $zero());
                let (mut a2, mut b2, mut a3, mut b3) = ($zero(), $zero(), $zero(), $zero());
                let mut j = 0;
                while j < body {
                    // SAFETY: j + $lanes <= body <= dim, the length of each row and of `w`.
                    unsafe {
                        let (v0, v1) = ($load(q.add(j)), $load(q.add(j + $width)));
                        a0 = $fmadd($load(p0.add(j)), v0, a0);
                        b0 = $fmadd($load(p0.add(j + $width)), v1, b0);
                        a1 = $fmadd($load(p1.add(j)), v0, a1);
                        b1 = $fmadd($load(p1.add(j + $width)), v1, b1);
                        a2 = $fmadd($load(p2.add(j)), v0, a2);
                        b2 = $fmadd($load(p2.add(j + $width)), v1, b2);
                        a3 = $fmadd($load(p3.add(j)), v0, a3);
                        b3 = $fmadd($load(p3.add(j + $width)), v1, b3);
                    }
                    j += $lanes;
                }
                let mut out = [0 as $t; 4];
                for (o, s) in
                    out.iter_mut()
                        .zip([$add(a0, b0), $add(a1, b1), $add(a2, b2), $add(a3, b3)])
                {
                    let mut lanes = [0 as $t; $width];
                    // SAFETY: `lanes` holds one register.
                    unsafe { $store(lanes.as_mut_ptr(), s) };
                    *o = lanes.iter().sum();
                }
                for (o, row) in out.iter_mut().zip(rows) {
                    for (&a, &b) in row[body..].iter().zip(&w[body..dim]) {
                        *o = a.mul_add(b, *o);
                    }
                }
                out
            }
        }
    };
}

feature!(
    f32,
    16,
    __m256,
    8,
    _mm256_setzero_ps,
    _mm256_loadu_ps,
    _mm256_fmadd_ps,
    _mm256_add_ps,
    _mm256_storeu_ps
);
feature!(
    f64,
    8,
    __m256d,
    4,
    _mm256_setzero_pd,
    _mm256_loadu_pd,
    _mm256_fmadd_pd,
    _mm256_add_pd,
    _mm256_storeu_pd
);

/// Dot products of the four rows of `x` (`4 x dim`) with `w`.
#[inline(always)]
fn dots4<T: Feature, const FMA: bool>(x: &[T], w: &[T], dim: usize) -> [T; 4] {
    #[cfg(target_arch = "x86_64")]
    if FMA {
        // SAFETY: `FMA` is true only under `sums_avx2_fma`, called once the CPU was checked.
        return unsafe { T::dots4_avx2(x, w, dim) };
    }
    [0, 1, 2, 3].map(|i| dot::<T, FMA>(&x[i * dim..(i + 1) * dim], w))
}

/// Rows taken at once.
const GROUP: usize = 4;

/// What one call sums over: rows of `dim` features.
pub(crate) struct Rows<'a, T> {
    pub dim: usize,
    /// `rows x dim`, row-major.
    pub x: &'a [T],
    /// Labels: class indices when multinomial, 0 or 1 when binomial.
    pub y: &'a [f64],
    /// Row weights.
    pub w: &'a [f64],
}

/// The model the sums are taken for.
pub(crate) struct Model<'a, T> {
    /// `classes x dim` coefficients on the features' own scale, row-major (one row when
    /// binomial).
    pub coef: &'a [T],
    /// One intercept per row of `coef` (zeros when none is fitted).
    pub intercepts: &'a [f64],
    pub multinomial: bool,
    /// Weight of each class, multiplied into the row weights.
    pub class_weights: Option<&'a [f64]>,
}

/// Weighted loss and gradient sums of `rows` under `model`: the loss is returned, the
/// gradient with respect to `coef` is added to `grad` (`classes x dim`, f64) and with
/// respect to the intercepts to `grad_intercepts`. An error names the first bad label.
pub(crate) fn loss_and_gradient<T: Feature>(
    rows: &Rows<T>,
    model: &Model<T>,
    grad: &mut [f64],
    grad_intercepts: &mut [f64],
) -> Result<f64, String> {
    let classes = model.intercepts.len();
    let (n, dim) = (rows.y.len(), rows.dim);
    assert_eq!(rows.x.len(), n * dim, "features are rows x dim");
    assert_eq!(rows.w.len(), n, "one weight per row");
    assert_eq!(
        model.coef.len(),
        classes * dim,
        "coefficients are classes x dim"
    );
    assert_eq!(grad.len(), classes * dim, "gradient is classes x dim");
    assert_eq!(
        grad_intercepts.len(),
        classes,
        "one intercept gradient per class"
    );
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
        // SAFETY: the CPU has the features the function is compiled for (checked above).
        return unsafe { sums_avx2_fma(rows, model, grad, grad_intercepts) };
    }
    sums::<T, false>(rows, model, grad, grad_intercepts)
}

/// [`sums`] compiled for AVX2 and FMA.
///
/// # Safety
/// The CPU must support AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn sums_avx2_fma<T: Feature>(
    rows: &Rows<T>,
    model: &Model<T>,
    grad: &mut [f64],
    grad_intercepts: &mut [f64],
) -> Result<f64, String> {
    sums::<T, true>(rows, model, grad, grad_intercepts)
}

#[inline(always)]
fn sums<T: Feature, const FMA: bool>(
    rows: &Rows<T>,
    model: &Model<T>,
    grad: &mut [f64],
    grad_intercepts: &mut [f64],
) -> Result<f64, String> {
    let classes = model.intercepts.len();
    let (n, dim) = (rows.y.len(), rows.dim);
    let mut margins = vec![0f64; GROUP * classes];
    let mut padded = vec![T::default(); GROUP * dim];
    let mut factors = vec![0f64; GROUP * classes];
    let mut loss = 0f64;
    let mut start = 0usize;
    while start < n {
        let len = GROUP.min(n - start);
        let x = &rows.x[start * dim..(start + len) * dim];
        // Margins of the group's rows. A last group of fewer rows is padded with zero rows,
        // so that each row's dot products are summed in the same order wherever the row
        // falls in its chunk (the margins, like the sums, do not depend on the split).
        let group = if len == GROUP {
            x
        } else {
            padded[..len * dim].copy_from_slice(x);
            padded[len * dim..].fill(T::default());
            &padded[..]
        };
        for (c, coef) in model.coef.chunks_exact(dim.max(1)).enumerate() {
            let dots = dots4::<T, FMA>(group, coef, dim);
            for (i, v) in dots.into_iter().take(len).enumerate() {
                margins[i * classes + c] = v.to_f64() + model.intercepts[c];
            }
        }
        if dim == 0 {
            for m in margins[..len * classes].chunks_exact_mut(classes.max(1)) {
                m.copy_from_slice(model.intercepts);
            }
        }
        // Loss and gradient factors, row by row, in f64.
        for i in 0..len {
            let r = start + i;
            let y = rows.y[r];
            let m = &margins[i * classes..(i + 1) * classes];
            let f = &mut factors[i * classes..(i + 1) * classes];
            let label = y as usize;
            let is_index = y >= 0.0 && y == label as f64;
            let mut w = rows.w[r];
            if let Some(cw) = model.class_weights {
                match cw.get(label).filter(|_| is_index) {
                    Some(c) => w *= c,
                    None => {
                        return Err(format!(
                            "label {y} of row {r} is not a class index below {}",
                            cw.len()
                        ));
                    }
                }
            }
            if model.multinomial {
                if !is_index || label >= classes {
                    return Err(format!(
                        "label {y} of row {r} is not a class index below {classes}"
                    ));
                }
                let max = m.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                let lse = max + m.iter().map(|v| (v - max).exp()).sum::<f64>().ln();
                loss += (lse - m[label]) * w;
                for (c, (&mc, fc)) in m.iter().zip(f.iter_mut()).enumerate() {
                    let p = (mc - lse).exp();
                    let g = (p - if c == label { 1.0 } else { 0.0 }) * w;
                    grad_intercepts[c] += g;
                    *fc = g;
                }
            } else {
                let m = m[0];
                // softplus(m) - y m, and d/dm = sigmoid(m) - y.
                let softplus = m.max(0.0) + (-m.abs()).exp().ln_1p();
                loss += (softplus - y * m) * w;
                let g = (sigmoid(m) - y) * w;
                grad_intercepts[0] += g;
                f[0] = g;
            }
        }
        // Gradient terms: grad[c] += sum_i factor[i][c] * x[i], in f64.
        for (c, grad) in grad.chunks_exact_mut(dim.max(1)).enumerate() {
            if len == GROUP {
                let f = [0, 1, 2, 3].map(|i| factors[i * classes + c]);
                axpy4::<T, FMA>(f, x, grad, dim);
            } else {
                for i in 0..len {
                    let f = factors[i * classes + c];
                    for (a, &v) in grad.iter_mut().zip(&x[i * dim..(i + 1) * dim]) {
                        *a = f.mul_add_::<FMA>(v.to_f64(), *a);
                    }
                }
            }
        }
        start += len;
    }
    Ok(loss)
}

fn sigmoid(m: f64) -> f64 {
    if m >= 0.0 {
        1.0 / (1.0 + (-m).exp())
    } else {
        let e = m.exp();
        e / (1.0 + e)
    }
}

#[inline(always)]
fn sum_lanes<T: Feature>(lanes: &T::Lanes) -> T {
    lanes.as_ref().iter().fold(T::default(), |s, &v| s + v)
}

#[inline(always)]
fn dot<T: Feature, const FMA: bool>(x: &[T], w: &[T]) -> T {
    let mut acc = T::Lanes::default();
    let body = x.len() / T::LANES * T::LANES;
    for (a, b) in x[..body]
        .chunks_exact(T::LANES)
        .zip(w[..body].chunks_exact(T::LANES))
    {
        T::fma_lanes::<FMA>(&mut acc, a, b);
    }
    let mut s = sum_lanes::<T>(&acc);
    for (&a, &b) in x[body..].iter().zip(&w[body..]) {
        s = a.mul_add_::<FMA>(b, s);
    }
    s
}

/// `acc += f[0] x[0] + f[1] x[1] + f[2] x[2] + f[3] x[3]` over the four rows of `x`, in f64.
#[inline(always)]
fn axpy4<T: Feature, const FMA: bool>(f: [f64; 4], x: &[T], acc: &mut [f64], dim: usize) {
    let (x0, rest) = x.split_at(dim);
    let (x1, rest) = rest.split_at(dim);
    let (x2, x3) = rest.split_at(dim);
    for ((((a, &v0), &v1), &v2), &v3) in acc.iter_mut().zip(x0).zip(x1).zip(x2).zip(x3) {
        let sum = f[0].mul_add_::<FMA>(v0.to_f64(), *a);
        let sum = f[1].mul_add_::<FMA>(v1.to_f64(), sum);
        let sum = f[2].mul_add_::<FMA>(v2.to_f64(), sum);
        *a = f[3].mul_add_::<FMA>(v3.to_f64(), sum);
    }
}

#[cfg(test)]
mod tests {
    // The sums against a row-by-row reference: `super::super::loss`'s tests, which go
    // through this loop (groups of four and remainders, lanes and remainders, flushes).
    use super::*;

    #[test]
    fn a_label_that_is_no_class_is_named() {
        let x = [1.0f64, 2.0];
        let rows = Rows {
            dim: 1,
            x: &x,
            y: &[0.0, 2.5],
            w: &[1.0, 1.0],
        };
        let model = Model {
            coef: &[0.1, 0.2],
            intercepts: &[0.0, 0.0],
            multinomial: true,
            class_weights: None,
        };
        let (mut g, mut gb) = (vec![0.0; 2], vec![0.0; 2]);
        let err = loss_and_gradient(&rows, &model, &mut g, &mut gb).unwrap_err();
        assert_eq!(err, "label 2.5 of row 1 is not a class index below 2");
    }
}

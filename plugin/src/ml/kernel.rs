//! The loop of [`super::loss::partial`]: logistic loss and gradient sums over rows of cached
//! features, fused so that the features cross the memory bus once per evaluation.
//!
//! The margins' dot products run in the features' own type (f32 features: f32 products, as
//! BLAS would); the margins, loss, per-row gradient factors and gradient sums are f64.
//! Summing the gradient terms straight into f64 makes the sums of a set of rows the same, to
//! f64 rounding, however the rows are split into parts and chunks: a fit on two executors
//! and one on the embedded cluster agree (with f32 accumulators flushed every 256 rows, the
//! predicted probabilities of tutorial 2 differed by 1.2e-4 between the two).
//!
//! On x86-64 with AVX2 and FMA (checked at run time) rows are taken in blocks of
//! [`ROW_BLOCK`]: each row's margins for up to [`CLASS_GROUP`] classes in one pass over the
//! row (the rows a few ahead prefetched), then the block's gradient terms eight columns at a
//! time, the `classes x 8` sums held in registers while the block's rows (still in L1/L2)
//! are added in order. Elsewhere a portable loop takes four rows at a time with the same
//! order of fused multiply-adds, so both give the same sums. Timings are in
//! `docs/benchmarks.md` (logistic regression).

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
    /// Dot products of one row `x` (`dim` long) with `N` coefficient rows (`coef`, `N x dim`,
    /// row-major), in AVX2 registers: per class two accumulators of one register each,
    /// then the lanes summed in order and the remainder of `dim` added term by term. The
    /// cache lines of `ahead` (the row a few rows on) are prefetched meanwhile.
    /// (Written with intrinsics: LLVM vectorized the portable form of such loops across
    /// the rows instead of along them, at a third of the speed.)
    ///
    /// # Safety
    /// The CPU must support AVX2 and FMA.
    #[cfg(target_arch = "x86_64")]
    unsafe fn dots_avx2<const N: usize>(
        x: &[Self],
        coef: &[Self],
        dim: usize,
        ahead: Option<&[Self]>,
    ) -> [Self; N];
    /// `grad[c] += sum_i factors[i * classes + c] * x[i]` in f64 for the `N` classes from
    /// `first`, over the `rows` rows of `x` (`rows x dim`, row-major): eight columns at a
    /// time, their `N x 8` sums held in registers while every row is added in order, so
    /// each sum takes the same fused multiply-adds, in the same order, as a row-by-row loop.
    ///
    /// # Safety
    /// The CPU must support AVX2 and FMA.
    #[cfg(target_arch = "x86_64")]
    #[allow(clippy::too_many_arguments)]
    unsafe fn axpy_avx2<const N: usize>(
        x: &[Self],
        rows: usize,
        dim: usize,
        factors: &[f64],
        classes: usize,
        first: usize,
        grad: &mut [f64],
    );
}

/// Eight values at `p` as two registers of f64 lanes (f32: one load, widened by halves).
///
/// # Safety
/// The CPU must support AVX2; `p` must be valid for eight reads.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[inline]
unsafe fn load8_f32(p: *const f32) -> [std::arch::x86_64::__m256d; 2] {
    use std::arch::x86_64::*;
    // SAFETY: the caller's.
    let v = unsafe { _mm256_loadu_ps(p) };
    [
        _mm256_cvtps_pd(_mm256_castps256_ps128(v)),
        _mm256_cvtps_pd(_mm256_extractf128_ps::<1>(v)),
    ]
}

/// Eight values at `p` as two registers of f64 lanes.
///
/// # Safety
/// The CPU must support AVX2; `p` must be valid for eight reads.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[inline]
unsafe fn load8_f64(p: *const f64) -> [std::arch::x86_64::__m256d; 2] {
    use std::arch::x86_64::*;
    // SAFETY: the caller's.
    unsafe { [_mm256_loadu_pd(p), _mm256_loadu_pd(p.wrapping_add(4))] }
}

macro_rules! feature {
    ($t:ty, $lanes:literal, $vec:ident, $width:literal, $zero:ident, $load:ident, $fmadd:ident, $add:ident, $store:ident, $load8:ident) => {
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
            unsafe fn dots_avx2<const N: usize>(
                x: &[Self],
                coef: &[Self],
                dim: usize,
                ahead: Option<&[Self]>,
            ) -> [Self; N] {
                use std::arch::x86_64::*;
                assert!(
                    x.len() >= dim && coef.len() >= N * dim,
                    "a row and {N} rows of {dim}"
                );
                let body = dim / $lanes * $lanes;
                // Pointers stepped with `wrapping_add`, the loop free of overflow and
                // precondition checks in builds with debug assertions (the tests').
                let p = x.as_ptr();
                let base = coef.as_ptr();
                let q: [*const $t; N] = std::array::from_fn(|c| base.wrapping_add(c * dim));
                let ahead = ahead.filter(|r| r.len() >= dim).map(|r| r.as_ptr());
                let (mut a, mut b) = ([$zero(); N], [$zero(); N]);
                let mut j = 0;
                while j < body {
                    // SAFETY: j + $lanes <= body <= dim, the length of `x`, of each of the N
                    // rows of `coef` and of `ahead`.
                    unsafe {
                        if let Some(r) = ahead {
                            _mm_prefetch::<_MM_HINT_T0>(r.wrapping_add(j) as *const i8);
                        }
                        let u = p.wrapping_add(j);
                        let (u0, u1) = ($load(u), $load(u.wrapping_add($width)));
                        for c in 0..N {
                            let w = q[c].wrapping_add(j);
                            a[c] = $fmadd(u0, $load(w), a[c]);
                            b[c] = $fmadd(u1, $load(w.wrapping_add($width)), b[c]);
                        }
                    }
                    j += $lanes;
                }
                let mut out = [0 as $t; N];
                for c in 0..N {
                    let mut lanes = [0 as $t; $width];
                    // SAFETY: `lanes` holds one register.
                    unsafe { $store(lanes.as_mut_ptr(), $add(a[c], b[c])) };
                    out[c] = lanes.iter().sum();
                    let w = &coef[c * dim..(c + 1) * dim];
                    for (&v, &k) in x[body..dim].iter().zip(&w[body..]) {
                        out[c] = v.mul_add(k, out[c]);
                    }
                }
                out
            }
            #[cfg(target_arch = "x86_64")]
            #[target_feature(enable = "avx2,fma")]
            unsafe fn axpy_avx2<const N: usize>(
                x: &[Self],
                rows: usize,
                dim: usize,
                factors: &[f64],
                classes: usize,
                first: usize,
                grad: &mut [f64],
            ) {
                use std::arch::x86_64::*;
                assert!(
                    x.len() >= rows * dim
                        && factors.len() >= rows * classes
                        && first + N <= classes
                        && grad.len() >= classes * dim,
                    "{rows} rows of {dim}, {N} of {classes} classes from {first}"
                );
                let body = dim / 8 * 8;
                // Pointers stepped with `wrapping_add`, as in `dots_avx2`.
                let (xp, fp) = (x.as_ptr(), factors[first..].as_ptr());
                let base = grad.as_mut_ptr();
                let g: [*mut f64; N] =
                    std::array::from_fn(|c| base.wrapping_add((first + c) * dim));
                let mut j = 0;
                while j < body {
                    // SAFETY: j + 8 <= body <= dim; `rows` rows of `x` and of `factors`,
                    // classes `first..first + N` below `classes` (asserted above).
                    unsafe {
                        let (mut lo, mut hi) = ([_mm256_setzero_pd(); N], [_mm256_setzero_pd(); N]);
                        for c in 0..N {
                            lo[c] = _mm256_loadu_pd(g[c].wrapping_add(j));
                            hi[c] = _mm256_loadu_pd(g[c].wrapping_add(j + 4));
                        }
                        let (mut p, mut f) = (xp.wrapping_add(j), fp);
                        for _ in 0..rows {
                            let [v0, v1] = $load8(p);
                            for c in 0..N {
                                let k = _mm256_broadcast_sd(&*f.wrapping_add(c));
                                lo[c] = _mm256_fmadd_pd(k, v0, lo[c]);
                                hi[c] = _mm256_fmadd_pd(k, v1, hi[c]);
                            }
                            p = p.wrapping_add(dim);
                            f = f.wrapping_add(classes);
                        }
                        for c in 0..N {
                            _mm256_storeu_pd(g[c].wrapping_add(j), lo[c]);
                            _mm256_storeu_pd(g[c].wrapping_add(j + 4), hi[c]);
                        }
                    }
                    j += 8;
                }
                for c in first..first + N {
                    let g = &mut grad[c * dim..(c + 1) * dim];
                    for (k, a) in g.iter_mut().enumerate().skip(body) {
                        for i in 0..rows {
                            *a = factors[i * classes + c].mul_add(x[i * dim + k].to_f64(), *a);
                        }
                    }
                }
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
    _mm256_storeu_ps,
    load8_f32
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
    _mm256_storeu_pd,
    load8_f64
);

/// Dot products of the four rows of `x` (`4 x dim`) with `w` (the portable loop).
#[inline(always)]
fn dots4<T: Feature, const FMA: bool>(x: &[T], w: &[T], dim: usize) -> [T; 4] {
    [0, 1, 2, 3].map(|i| dot::<T, FMA>(&x[i * dim..(i + 1) * dim], w))
}

/// Rows taken at once by the portable loop.
const GROUP: usize = 4;

/// Classes whose dot products the AVX2 loop takes in one pass over a row, and whose
/// gradient sums it holds in registers at once (10 of the 16 AVX2 registers).
#[cfg(target_arch = "x86_64")]
const CLASS_GROUP: usize = 5;

/// Rows whose margins the AVX2 loop computes before adding their gradient terms: 64 rows
/// of 1,280 f32 features (320 KB) are still in the core's L2 cache for the second pass.
#[cfg(target_arch = "x86_64")]
const ROW_BLOCK: usize = 64;

/// How many rows ahead the AVX2 loop prefetches the features while it takes a row's
/// margins (features arrive from memory; the coefficients stay in cache).
#[cfg(target_arch = "x86_64")]
const PREFETCH_ROWS: usize = 4;

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

/// The sums with AVX2 and FMA, in blocks of [`ROW_BLOCK`] rows: first the block's margins,
/// one pass over each row for up to [`CLASS_GROUP`] classes, then its gradient terms, eight
/// columns of up to [`CLASS_GROUP`] classes at a time with the block's rows added in
/// order. Each margin and each gradient sum takes the same operations in the same order
/// wherever its row falls in a block, a chunk or a part, so the sums of a set of rows do
/// not depend on how it was split (to f64 rounding of the final additions).
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
    let classes = model.intercepts.len();
    let (n, dim) = (rows.y.len(), rows.dim);
    let mut margins = vec![0f64; ROW_BLOCK * classes];
    let mut factors = vec![0f64; ROW_BLOCK * classes];
    let mut loss = 0f64;
    let mut start = 0usize;
    while start < n {
        let len = ROW_BLOCK.min(n - start);
        let x = &rows.x[start * dim..(start + len) * dim];
        for i in 0..len {
            let m = &mut margins[i * classes..(i + 1) * classes];
            m.copy_from_slice(model.intercepts);
            if dim == 0 {
                continue;
            }
            let row = &x[i * dim..(i + 1) * dim];
            let next = start + i + PREFETCH_ROWS;
            let ahead = rows.x.get(next * dim..(next + 1) * dim);
            for (coef, out) in model
                .coef
                .chunks(CLASS_GROUP * dim)
                .zip(m.chunks_mut(CLASS_GROUP))
            {
                // SAFETY: the CPU has AVX2 and FMA (the caller's contract).
                unsafe { margins_avx2(row, coef, dim, ahead, out) };
            }
        }
        block_terms(
            model,
            rows,
            start..start + len,
            &margins,
            &mut factors,
            grad_intercepts,
            &mut loss,
        )?;
        if dim > 0 {
            for first in (0..classes).step_by(CLASS_GROUP) {
                let count = CLASS_GROUP.min(classes - first);
                // SAFETY: as above.
                unsafe {
                    axpy_avx2(
                        x,
                        len,
                        dim,
                        &factors[..len * classes],
                        classes,
                        first,
                        count,
                        grad,
                    )
                };
            }
        }
        start += len;
    }
    Ok(loss)
}

/// `out[c] += x . coef[c]` for the (one to [`CLASS_GROUP`]) rows of `coef`.
///
/// # Safety
/// The CPU must support AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn margins_avx2<T: Feature>(
    x: &[T],
    coef: &[T],
    dim: usize,
    ahead: Option<&[T]>,
    out: &mut [f64],
) {
    macro_rules! group {
        ($n:literal) => {{
            // SAFETY: the caller's.
            let dots = unsafe { T::dots_avx2::<$n>(x, coef, dim, ahead) };
            for (o, v) in out.iter_mut().zip(dots) {
                // Plus the intercept `out` holds (the same sum as the portable loop's).
                *o += v.to_f64();
            }
        }};
    }
    match out.len() {
        1 => group!(1),
        2 => group!(2),
        3 => group!(3),
        4 => group!(4),
        5 => group!(5),
        n => unreachable!("class groups hold 1 to {CLASS_GROUP} classes, not {n}"),
    }
}

/// [`Feature::axpy_avx2`] for `count` (one to [`CLASS_GROUP`]) classes from `first`.
///
/// # Safety
/// The CPU must support AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[allow(clippy::too_many_arguments)]
unsafe fn axpy_avx2<T: Feature>(
    x: &[T],
    rows: usize,
    dim: usize,
    factors: &[f64],
    classes: usize,
    first: usize,
    count: usize,
    grad: &mut [f64],
) {
    macro_rules! group {
        ($n:literal) => {
            // SAFETY: the caller's.
            unsafe { T::axpy_avx2::<$n>(x, rows, dim, factors, classes, first, grad) }
        };
    }
    match count {
        1 => group!(1),
        2 => group!(2),
        3 => group!(3),
        4 => group!(4),
        5 => group!(5),
        n => unreachable!("class groups hold 1 to {CLASS_GROUP} classes, not {n}"),
    }
}

/// The losses of the rows `block` added to `loss` one by one, and their gradient factors
/// (`factors`, `classes` per row) and intercept gradient, from their margins (`margins`,
/// laid out as `factors`): [`row_terms`] for each row, in order.
#[inline(always)]
fn block_terms<T: Feature>(
    model: &Model<T>,
    rows: &Rows<T>,
    block: std::ops::Range<usize>,
    margins: &[f64],
    factors: &mut [f64],
    grad_intercepts: &mut [f64],
    loss: &mut f64,
) -> Result<(), String> {
    let classes = model.intercepts.len();
    for (i, r) in block.enumerate() {
        *loss += row_terms(
            model,
            r,
            rows.y[r],
            rows.w[r],
            &margins[i * classes..(i + 1) * classes],
            &mut factors[i * classes..(i + 1) * classes],
            grad_intercepts,
        )?;
    }
    Ok(())
}

/// Row `r`'s loss (returned), gradient factors `f` (one per class: the derivative of the
/// loss by the class's margin, weighted) and intercept gradient, from its margins `m`.
fn row_terms<T: Feature>(
    model: &Model<T>,
    r: usize,
    y: f64,
    w: f64,
    m: &[f64],
    f: &mut [f64],
    grad_intercepts: &mut [f64],
) -> Result<f64, String> {
    let classes = model.intercepts.len();
    let label = y as usize;
    let is_index = y >= 0.0 && y == label as f64;
    let mut w = w;
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
        for (c, (&mc, fc)) in m.iter().zip(f.iter_mut()).enumerate() {
            let p = (mc - lse).exp();
            let g = (p - if c == label { 1.0 } else { 0.0 }) * w;
            grad_intercepts[c] += g;
            *fc = g;
        }
        Ok((lse - m[label]) * w)
    } else {
        let m = m[0];
        // softplus(m) - y m, and d/dm = sigmoid(m) - y.
        let softplus = m.max(0.0) + (-m.abs()).exp().ln_1p();
        let g = (sigmoid(m) - y) * w;
        grad_intercepts[0] += g;
        f[0] = g;
        Ok((softplus - y * m) * w)
    }
}

/// The portable loop: rows four at a time, their margins and then their gradient terms
/// while they sit in L1.
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
        block_terms(
            model,
            rows,
            start..start + len,
            &margins,
            &mut factors,
            grad_intercepts,
            &mut loss,
        )?;
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

    /// The AVX2 loop's sums beside the portable loop's, for `T` features: 7 classes (a full
    /// group of five and a group of two), 21 features (vector lanes and a remainder), three
    /// row blocks (the last one short), class weights.
    #[cfg(target_arch = "x86_64")]
    fn avx2_matches_portable<T: Feature>(tol: f64) {
        if !(std::arch::is_x86_feature_detected!("avx2")
            && std::arch::is_x86_feature_detected!("fma"))
        {
            eprintln!("no AVX2 and FMA on this CPU: nothing to compare");
            return;
        }
        let (n, dim, classes) = (2 * ROW_BLOCK + 22, 21, 7);
        let x: Vec<T> = (0..n * dim)
            .map(|i| T::from_f64(((i * 7919 % 1000) as f64 / 250.0) - 2.0))
            .collect();
        let y: Vec<f64> = (0..n).map(|i| (i % classes) as f64).collect();
        let w: Vec<f64> = (0..n).map(|i| 0.5 + (i % 3) as f64 / 4.0).collect();
        let coef: Vec<T> = (0..classes * dim)
            .map(|i| T::from_f64(0.01 * (i % 23) as f64 - 0.1))
            .collect();
        let intercepts: Vec<f64> = (0..classes).map(|c| 0.1 * c as f64 - 0.3).collect();
        let class_weights: Vec<f64> = (0..classes).map(|c| 1.0 + c as f64 / 7.0).collect();
        for multinomial in [true, false] {
            let (y, k) = if multinomial {
                (y.clone(), classes)
            } else {
                (y.iter().map(|v| v % 2.0).collect(), 1)
            };
            let rows = Rows {
                dim,
                x: &x,
                y: &y,
                w: &w,
            };
            let model = Model {
                coef: &coef[..k * dim],
                intercepts: &intercepts[..k],
                multinomial,
                class_weights: Some(&class_weights),
            };
            let run = |avx2: bool| {
                let (mut g, mut gb) = (vec![0.0; k * dim], vec![0.0; k]);
                let loss = if avx2 {
                    // SAFETY: checked above.
                    unsafe { sums_avx2_fma(&rows, &model, &mut g, &mut gb) }
                } else {
                    sums::<T, false>(&rows, &model, &mut g, &mut gb)
                }
                .unwrap();
                (loss, g, gb)
            };
            let (fast, portable) = (run(true), run(false));
            let scale = portable.1.iter().fold(1.0f64, |m, v| m.max(v.abs()));
            assert!(
                (fast.0 - portable.0).abs() <= tol * portable.0.abs(),
                "multinomial {multinomial}: loss {} vs {}",
                fast.0,
                portable.0
            );
            for (a, b) in fast
                .1
                .iter()
                .zip(&portable.1)
                .chain(fast.2.iter().zip(&portable.2))
            {
                assert!(
                    (a - b).abs() <= tol * scale,
                    "multinomial {multinomial}: {a} vs {b}"
                );
            }
        }
    }

    #[test]
    #[cfg(target_arch = "x86_64")]
    fn the_avx2_loop_sums_as_the_portable_loop_does() {
        // f64 features: only the order of additions differs (lanes against rows of four).
        avx2_matches_portable::<f64>(1e-12);
        // f32 features: the dot products round in f32, in another order.
        avx2_matches_portable::<f32>(1e-5);
    }
}

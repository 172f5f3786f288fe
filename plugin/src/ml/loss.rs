//! The logistic loss and its gradient: partial sums over rows of a cached part on an
//! executor (the fused loop of [`super::kernel`]), and the regularized objective that the
//! driver assembles from the partial sums (MLlib's definition).
//!
//! Parameters live on the standardized scale: `coefficients[c][j] = beta[c][j] * std[j]`.
//! The features are never scaled; the coefficients are divided by `std` instead, which
//! gives the same margins without touching the cached matrix.

use base64::Engine;
use datafusion::common::{Result, exec_datafusion_err};
use serde::{Deserialize, Serialize};

use super::data::{CachedPart, Features};
use super::kernel::{self, Feature};

/// Encodes `Vec<f64>` as base64 of little-endian bytes (exact and compact in JSON).
pub mod f64_base64 {
    use super::*;

    pub fn serialize<S: serde::Serializer>(v: &[f64], s: S) -> Result<S::Ok, S::Error> {
        let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
        s.serialize_str(&base64::engine::general_purpose::STANDARD.encode(bytes))
    }

    pub fn deserialize<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<f64>, D::Error> {
        let s = String::deserialize(d)?;
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(s)
            .map_err(serde::de::Error::custom)?;
        if bytes.len() % 8 != 0 {
            return Err(serde::de::Error::custom("f64 buffer of odd length"));
        }
        Ok(bytes
            .chunks_exact(8)
            .map(|c| f64::from_le_bytes(c.try_into().unwrap()))
            .collect())
    }
}

/// Shape of the parameter vector: `sets x dim` coefficients (row-major), then `sets`
/// intercepts when fitted. `sets` is 1 for binomial, the number of classes otherwise.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Layout {
    pub multinomial: bool,
    pub sets: usize,
    pub dim: usize,
    pub fit_intercept: bool,
}

impl Layout {
    /// Length of the parameter vector.
    pub fn num_params(&self) -> usize {
        self.sets * self.dim + if self.fit_intercept { self.sets } else { 0 }
    }

    /// Index of the first intercept.
    pub fn intercepts_at(&self) -> usize {
        self.sets * self.dim
    }
}

/// Weighted sums over some rows: loss and gradient (same layout as the parameters).
#[derive(Debug, Clone, PartialEq)]
pub struct Partial {
    pub loss: f64,
    pub grad: Vec<f64>,
}

/// Loss and gradient sums of rows `range` of one part for `params` (standardized scale).
pub fn partial(
    part: &CachedPart,
    range: std::ops::Range<usize>,
    layout: &Layout,
    inv_std: &[f64],
    params: &[f64],
    class_weights: Option<&[f64]>,
) -> Result<Partial> {
    if part.dim != layout.dim {
        return Err(exec_datafusion_err!(
            "training part has {} features, the model {}",
            part.dim,
            layout.dim
        ));
    }
    if range.start > range.end || range.end > part.rows {
        return Err(exec_datafusion_err!(
            "rows {range:?} asked of a training part of {} rows",
            part.rows
        ));
    }
    match &part.x {
        Features::F32(x) => sums(x, part, range, layout, inv_std, params, class_weights),
        Features::F64(x) => sums(x, part, range, layout, inv_std, params, class_weights),
    }
}

fn sums<T: Feature>(
    x: &[T],
    part: &CachedPart,
    range: std::ops::Range<usize>,
    layout: &Layout,
    inv_std: &[f64],
    params: &[f64],
    class_weights: Option<&[f64]>,
) -> Result<Partial> {
    let (k, d) = (layout.sets, layout.dim);
    // The coefficients divided by the standard deviations: the margins of the unscaled
    // features are those of the standardized ones.
    let coef: Vec<T> = params[..layout.intercepts_at()]
        .chunks_exact(d.max(1))
        .flat_map(|row| row.iter().zip(inv_std).map(|(&b, &s)| T::from_f64(b * s)))
        .collect();
    let intercepts = if layout.fit_intercept {
        params[layout.intercepts_at()..].to_vec()
    } else {
        vec![0.0; k]
    };
    let rows = kernel::Rows {
        dim: d,
        x: &x[range.start * d..range.end * d],
        y: &part.y[range.clone()],
        w: &part.w[range.clone()],
    };
    let model = kernel::Model {
        coef: &coef,
        intercepts: &intercepts,
        multinomial: layout.multinomial,
        class_weights,
    };
    let (mut grad, mut grad_intercepts) = (vec![0.0; k * d], vec![0.0; k]);
    let loss = kernel::loss_and_gradient(&rows, &model, &mut grad, &mut grad_intercepts)
        .map_err(|e| exec_datafusion_err!("rows {range:?} of a training part: {e}"))?;
    // Gradient with respect to the standardized coefficients: (g^T X) / std.
    for row in grad.chunks_exact_mut(d.max(1)) {
        for (g, s) in row.iter_mut().zip(inv_std) {
            *g *= s;
        }
    }
    if layout.fit_intercept {
        grad.extend(grad_intercepts);
    }
    Ok(Partial { loss, grad })
}

/// The regularized objective on the driver, from the summed partials.
#[derive(Debug, Clone)]
pub struct Regularization {
    pub layout: Layout,
    /// `regParam * (1 - elasticNetParam)`.
    pub reg_l2: f64,
    /// `regParam * elasticNetParam`.
    pub reg_l1: f64,
    pub standardization: bool,
    /// 1 / std per feature (0 for constant features).
    pub inv_std: Vec<f64>,
}

impl Regularization {
    /// Penalty scale of coefficient `j` on the standardized scale: 1 when penalizing
    /// standardized coefficients, `1 / std_j` otherwise (so that the original-scale
    /// coefficient is penalized), 0 for constant features.
    fn scale(&self, j: usize) -> f64 {
        if self.inv_std[j] == 0.0 {
            0.0
        } else if self.standardization {
            1.0
        } else {
            self.inv_std[j]
        }
    }

    /// Smooth part of the objective: mean loss + L2 penalty, and its gradient.
    pub fn smooth(&self, partial: &Partial, weight_sum: f64, params: &[f64]) -> (f64, Vec<f64>) {
        let mut f = partial.loss / weight_sum;
        let mut g: Vec<f64> = partial.grad.iter().map(|v| v / weight_sum).collect();
        if self.reg_l2 > 0.0 {
            let d = self.layout.dim;
            for (i, &w) in params[..self.layout.intercepts_at()].iter().enumerate() {
                let s = self.scale(i % d);
                let s2 = s * s;
                f += 0.5 * self.reg_l2 * w * w * s2;
                g[i] += self.reg_l2 * w * s2;
            }
        }
        (f, g)
    }

    /// Per-parameter L1 weights (intercepts 0), or `None` without an L1 term.
    pub fn l1_weights(&self) -> Option<Vec<f64>> {
        if self.reg_l1 <= 0.0 {
            return None;
        }
        let d = self.layout.dim;
        let mut w = vec![0.0; self.layout.num_params()];
        for (i, v) in w[..self.layout.intercepts_at()].iter_mut().enumerate() {
            *v = self.reg_l1 * self.scale(i % d);
        }
        Some(w)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ml::data::Rows;

    fn rows() -> Rows {
        Rows {
            dim: 2,
            x: vec![1.0, 2.0, -1.0, 0.5, 3.0, -2.0, 0.0, 1.0],
            y: vec![0.0, 1.0, 2.0, 1.0],
            w: vec![1.0, 0.5, 2.0, 1.0],
            float32: false,
        }
    }

    /// Per-row reference in plain Rust.
    fn reference(r: &Rows, layout: &Layout, inv_std: &[f64], p: &[f64]) -> (f64, Vec<f64>) {
        let (k, d) = (layout.sets, layout.dim);
        let mut loss = 0.0;
        let mut grad = vec![0.0; layout.num_params()];
        for i in 0..r.len() {
            let x = &r.x[i * d..(i + 1) * d];
            let margin = |c: usize| {
                let b = if layout.fit_intercept {
                    p[k * d + c]
                } else {
                    0.0
                };
                (0..d)
                    .map(|j| p[c * d + j] * inv_std[j] * x[j])
                    .sum::<f64>()
                    + b
            };
            let (y, w) = (r.y[i], r.w[i]);
            let g: Vec<f64> = if layout.multinomial {
                let m: Vec<f64> = (0..k).map(margin).collect();
                let lse = m.iter().map(|v| v.exp()).sum::<f64>().ln();
                loss += w * (lse - m[y as usize]);
                (0..k)
                    .map(|c| w * ((m[c] - lse).exp() - f64::from(c == y as usize)))
                    .collect()
            } else {
                let m = margin(0);
                loss += w * ((1.0 + m.exp()).ln() - y * m);
                vec![w * (1.0 / (1.0 + (-m).exp()) - y)]
            };
            for c in 0..k {
                for j in 0..d {
                    grad[c * d + j] += g[c] * x[j] * inv_std[j];
                }
                if layout.fit_intercept {
                    grad[k * d + c] += g[c];
                }
            }
        }
        (loss, grad)
    }

    #[test]
    fn partials_match_a_per_row_reference() {
        let mut r = rows();
        let inv_std = [0.5, 2.0];
        for (multinomial, sets, fit_intercept) in [
            (true, 3, true),
            (true, 3, false),
            (false, 1, true),
            (false, 1, false),
        ] {
            if !multinomial {
                r.y = vec![0.0, 1.0, 1.0, 0.0];
            }
            let layout = Layout {
                multinomial,
                sets,
                dim: 2,
                fit_intercept,
            };
            let params: Vec<f64> = (0..layout.num_params())
                .map(|i| 0.3 * i as f64 - 0.7)
                .collect();
            assert_matches_reference(&r, &layout, &inv_std, &params, 1e-12);
        }
    }

    /// `n` synthetic rows of `dim` features (`value(i)` for the i-th number), labels cycling
    /// over 3 classes, weights cycling over `1/2 + i/weights` for i < `weights`; and the
    /// multinomial layout with intercepts over them.
    fn three_class_rows(
        n: usize,
        dim: usize,
        value: impl Fn(usize) -> f64,
        weights: usize,
        float32: bool,
    ) -> (Rows, Layout) {
        let rows = Rows {
            dim,
            x: (0..n * dim).map(value).collect(),
            y: (0..n).map(|i| (i % 3) as f64).collect(),
            w: (0..n)
                .map(|i| 0.5 + (i % weights) as f64 / weights as f64)
                .collect(),
            float32,
        };
        let layout = Layout {
            multinomial: true,
            sets: 3,
            dim,
            fit_intercept: true,
        };
        (rows, layout)
    }

    /// `partial` against [`reference`], within `tol` relative to each value (and absolute
    /// near 0).
    fn assert_matches_reference(r: &Rows, layout: &Layout, inv_std: &[f64], p: &[f64], tol: f64) {
        let got = partial(
            &CachedPart::from_rows(r.clone()),
            0..r.len(),
            layout,
            inv_std,
            p,
            None,
        )
        .unwrap();
        let (loss, grad) = reference(r, layout, inv_std, p);
        let close = |a: f64, b: f64| (a - b).abs() <= tol * (1.0 + b.abs());
        assert!(close(got.loss, loss), "{} vs {loss}", got.loss);
        for (a, b) in got.grad.iter().zip(&grad) {
            assert!(close(*a, *b), "{a} vs {b}");
        }
    }

    #[test]
    fn partials_over_several_row_blocks_match_the_reference() {
        // Several hundred rows, a last group of four that is not full, and features that
        // fill the vector lanes and leave a remainder.
        let (n, dim) = (2 * 256 + 37, 19);
        let value = |i: usize| ((i * 7919 % 1000) as f64 / 250.0) - 2.0;
        let (r, layout) = three_class_rows(n, dim, value, 4, false);
        let inv_std: Vec<f64> = (0..dim).map(|j| [0.5, 2.0, 1.0][j % 3]).collect();
        let params: Vec<f64> = (0..layout.num_params())
            .map(|i| 0.1 * i as f64 - 0.4)
            .collect();
        assert_matches_reference(&r, &layout, &inv_std, &params, 1e-9);
    }

    #[test]
    fn partials_of_row_ranges_are_the_reference_of_those_rows() {
        // The chunks a loss job sums: ranges that start inside a block and end anywhere.
        let (n, dim) = (356, 3);
        let value = |i: usize| ((i * 104_729 % 997) as f64 / 300.0) - 1.5;
        let (r, layout) = three_class_rows(n, dim, value, 5, false);
        let inv_std = [1.0, 0.5, 2.0];
        let params: Vec<f64> = (0..layout.num_params())
            .map(|i| 0.05 * i as f64 - 0.3)
            .collect();
        let part = CachedPart::from_rows(r.clone());
        let class_weights = [1.0, 2.0, 0.5];
        for range in [0..n, 0..1, 7..300, 256..n, 300..300] {
            let sub = Rows {
                dim,
                x: r.x[range.start * dim..range.end * dim].to_vec(),
                y: r.y[range.clone()].to_vec(),
                w: r.y[range.clone()]
                    .iter()
                    .zip(&r.w[range.clone()])
                    .map(|(&y, &w)| w * class_weights[y as usize])
                    .collect(),
                float32: false,
            };
            let got = partial(
                &part,
                range.clone(),
                &layout,
                &inv_std,
                &params,
                Some(&class_weights),
            )
            .unwrap();
            let (loss, grad) = reference(&sub, &layout, &inv_std, &params);
            let close = |a: f64, b: f64| (a - b).abs() <= 1e-9 * (1.0 + b.abs());
            assert!(close(got.loss, loss), "{range:?}: {} vs {loss}", got.loss);
            for (a, b) in got.grad.iter().zip(&grad) {
                assert!(close(*a, *b), "{range:?}: {a} vs {b}");
            }
        }
        let err = partial(&part, 0..n + 1, &layout, &inv_std, &params, None).unwrap_err();
        assert!(
            err.to_string()
                .contains("rows 0..357 asked of a training part of 356 rows"),
            "{err}"
        );
    }

    #[test]
    fn float32_sums_do_not_depend_on_how_the_rows_are_split() {
        // A cluster and the embedded default split the same rows into other parts and
        // chunks: their sums must agree to f64 rounding, or a long fit drifts apart.
        let (n, dim) = (1000, 37);
        let value = |i: usize| (((i * 7919 % 1000) as f32 / 250.0) - 2.0) as f64;
        let (r, layout) = three_class_rows(n, dim, value, 4, true);
        let inv_std: Vec<f64> = (0..dim).map(|j| 0.5 + j as f64 / 16.0).collect();
        let params: Vec<f64> = (0..layout.num_params())
            .map(|i| 0.01 * i as f64 - 0.2)
            .collect();
        let part = CachedPart::from_rows(r.clone());
        let sums = |range| partial(&part, range, &layout, &inv_std, &params, None).unwrap();
        let whole = sums(0..n);
        let scale = whole.grad.iter().fold(0.0f64, |m, v| m.max(v.abs()));
        for cut in [1, 257, 600] {
            let (a, b) = (sums(0..cut), sums(cut..n));
            let loss = a.loss + b.loss;
            assert!(
                (loss - whole.loss).abs() <= 1e-12 * whole.loss,
                "cut {cut}: {loss} vs {}",
                whole.loss
            );
            for ((ga, gb), g) in a.grad.iter().zip(&b.grad).zip(&whole.grad) {
                assert!(
                    (ga + gb - g).abs() <= 1e-12 * scale,
                    "cut {cut}: {} vs {g}",
                    ga + gb
                );
            }
        }
    }

    #[test]
    fn float32_features_give_the_reference_within_f32_rounding() {
        // Features exact in f32 (as from a float32 column): the f32 products differ from the
        // f64 reference only by the products' rounding.
        let (n, dim) = (557, 37);
        let value = |i: usize| (((i * 7919 % 1000) as f32 / 250.0) - 2.0) as f64;
        let (mut r, layout) = three_class_rows(n, dim, value, 4, true);
        let inv_std: Vec<f64> = (0..dim).map(|j| 0.5 + j as f64 / 16.0).collect();
        let params: Vec<f64> = (0..layout.num_params())
            .map(|i| 0.01 * i as f64 - 0.2)
            .collect();
        let part = CachedPart::from_rows(r.clone());
        assert!(matches!(part.x, Features::F32(_)));
        let got = partial(&part, 0..n, &layout, &inv_std, &params, None).unwrap();
        r.float32 = false;
        let (loss, grad) = reference(&r, &layout, &inv_std, &params);
        let scale = grad.iter().fold(0.0f64, |m, v| m.max(v.abs()));
        assert!(
            (got.loss - loss).abs() <= 1e-6 * loss.abs(),
            "{} vs {loss}",
            got.loss
        );
        for (a, b) in got.grad.iter().zip(&grad) {
            assert!(
                (a - b).abs() <= 1e-5 * scale,
                "{a} vs {b} (largest {scale})"
            );
        }
    }

    #[test]
    fn l2_penalty_leaves_intercepts_alone() {
        let layout = Layout {
            multinomial: false,
            sets: 1,
            dim: 2,
            fit_intercept: true,
        };
        let reg = Regularization {
            layout,
            reg_l2: 0.5,
            reg_l1: 0.2,
            standardization: false,
            inv_std: vec![0.5, 0.0],
        };
        let partial = Partial {
            loss: 2.0,
            grad: vec![0.0, 0.0, 0.0],
        };
        let (f, g) = reg.smooth(&partial, 2.0, &[2.0, 3.0, 10.0]);
        // 1 + 0.5 * 0.5 * (2 * 0.5)^2; the constant feature and the intercept are free.
        assert!((f - 1.25).abs() < 1e-12);
        assert_eq!(g, vec![0.5 * 2.0 * 0.25, 0.0, 0.0]);
        assert_eq!(reg.l1_weights().unwrap(), vec![0.1, 0.0, 0.0]);
    }

    #[test]
    fn f64_buffers_round_trip_exactly() {
        #[derive(Serialize, Deserialize)]
        struct W(#[serde(with = "f64_base64")] Vec<f64>);
        let v = vec![0.1, -1e-300, f64::MAX, 1.0 / 3.0];
        let s = serde_json::to_string(&W(v.clone())).unwrap();
        assert_eq!(serde_json::from_str::<W>(&s).unwrap().0, v);
    }
}

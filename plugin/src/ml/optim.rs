//! L-BFGS, and OWL-QN (Andrew & Gao, 2007) when there is an L1 term: one quasi-Newton
//! loop (two-loop recursion, 10 correction pairs as MLlib, Armijo backtracking), where
//! OWL-QN adds the pseudo-gradient and the orthant projection for the penalized
//! coordinates. Without L1 weights it is plain L-BFGS.
//!
//! Why not `argmin` (the maintained crate; 0.11 was tried): its OWL-QN
//! (`LBFGS::with_l1_regularization`) applies one L1 coefficient to *every* parameter,
//! while MLlib's objective leaves the intercepts unpenalized and, with
//! `standardization=false`, weights each coefficient by `1 / std_j`; neither can be
//! expressed through its API (a zero weight cannot be reached by rescaling). Using argmin
//! for the L2 case only would give the two families of fits different line searches and
//! stopping rules; one loop keeps them identical.
//!
//! Every evaluation is one distributed job: the objective is evaluated through
//! [`Evaluate`], which returns value and gradient together.

use std::collections::VecDeque;

use datafusion::common::Result;

/// Number of correction pairs kept (MLlib uses 10).
pub const MEMORY: usize = 10;

/// A smooth objective: value and gradient at a point (one distributed job).
pub trait Evaluate {
    fn evaluate(&mut self, x: &[f64]) -> Result<(f64, Vec<f64>)>;
}

/// What an optimizer run produced.
#[derive(Debug, Clone)]
pub struct Minimum {
    pub x: Vec<f64>,
    /// Objective (including the L1 term) at the start and after each iteration.
    pub history: Vec<f64>,
    pub iterations: usize,
    pub evaluations: usize,
    /// Whether it stopped on the tolerance rather than `max_iter`.
    pub converged: bool,
}

/// Minimizes `f(x) + sum_i l1[i] * |x_i|` from `x0`: L-BFGS without L1 weights, OWL-QN
/// with. Stops after `max_iter` iterations or when the objective changes by less than
/// `tol` relative to its start value in one iteration.
pub fn minimize(
    f: &mut dyn Evaluate,
    x0: Vec<f64>,
    l1: Option<&[f64]>,
    max_iter: usize,
    tol: f64,
) -> Result<Minimum> {
    let zeros;
    let l1 = match l1 {
        Some(w) => w,
        None => {
            zeros = vec![0.0; x0.len()];
            &zeros
        }
    };
    quasi_newton(f, x0, l1, max_iter, tol)
}

// ---------------------------------------------------------------------------------------
// OWL-QN

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// Pseudo-gradient of `f + sum l1_i |x_i|` (the minimum-norm subgradient).
fn pseudo_gradient(x: &[f64], g: &[f64], l1: &[f64]) -> Vec<f64> {
    x.iter()
        .zip(g)
        .zip(l1)
        .map(|((&x, &g), &l)| {
            if l == 0.0 {
                g
            } else if x > 0.0 {
                g + l
            } else if x < 0.0 {
                g - l
            } else if g + l < 0.0 {
                g + l
            } else if g - l > 0.0 {
                g - l
            } else {
                0.0
            }
        })
        .collect()
}

/// Two-loop recursion: `-H * v` with the stored pairs.
fn direction(v: &[f64], pairs: &VecDeque<(Vec<f64>, Vec<f64>)>) -> Vec<f64> {
    let mut q = v.to_vec();
    let mut alphas = Vec::with_capacity(pairs.len());
    for (s, y) in pairs.iter().rev() {
        let rho = 1.0 / dot(y, s);
        let a = rho * dot(s, &q);
        q.iter_mut().zip(y).for_each(|(q, y)| *q -= a * y);
        alphas.push((a, rho));
    }
    if let Some((s, y)) = pairs.back() {
        let gamma = dot(s, y) / dot(y, y);
        q.iter_mut().for_each(|q| *q *= gamma);
    }
    for ((s, y), (a, rho)) in pairs.iter().zip(alphas.into_iter().rev()) {
        let b = rho * dot(y, &q);
        q.iter_mut().zip(s).for_each(|(q, s)| *q += s * (a - b));
    }
    q.iter_mut().for_each(|q| *q = -*q);
    q
}

fn quasi_newton(
    f: &mut dyn Evaluate,
    mut x: Vec<f64>,
    l1: &[f64],
    max_iter: usize,
    tol: f64,
) -> Result<Minimum> {
    let l1_term = |x: &[f64]| -> f64 { x.iter().zip(l1).map(|(x, l)| l * x.abs()).sum() };
    let (f0, mut g) = f.evaluate(&x)?;
    let mut evaluations = 1;
    let mut value = f0 + l1_term(&x);
    let scale = value.abs().max(f64::MIN_POSITIVE);
    let mut history = vec![value];
    let mut pairs: VecDeque<(Vec<f64>, Vec<f64>)> = VecDeque::with_capacity(MEMORY);
    let mut iterations = 0;
    let mut converged = false;
    while iterations < max_iter {
        let pg = pseudo_gradient(&x, &g, l1);
        let pg_norm = dot(&pg, &pg).sqrt();
        if pg_norm <= 1e-12 * scale.max(1.0) {
            converged = true;
            break;
        }
        let mut d = direction(&pg, &pairs);
        // OWL-QN: penalized coordinates keep to the descent orthant of the pseudo-gradient.
        for ((d, p), &l) in d.iter_mut().zip(&pg).zip(l1) {
            if l > 0.0 && *d * -*p <= 0.0 {
                *d = 0.0;
            }
        }
        if dot(&d, &pg) >= 0.0 {
            // Not a descent direction (bad curvature pairs): restart from steepest descent.
            pairs.clear();
            d = pg.iter().map(|p| -p).collect();
        }
        // Orthant of the step: the sign of x, or of -pg where x is 0.
        let orthant: Vec<f64> = x
            .iter()
            .zip(&pg)
            .map(|(&x, &p)| {
                if x != 0.0 {
                    x.signum()
                } else if p != 0.0 {
                    -p.signum()
                } else {
                    0.0
                }
            })
            .collect();
        let mut step = if pairs.is_empty() {
            1.0 / pg_norm.max(1.0)
        } else {
            1.0
        };
        let (x_new, g_new, v_new) = loop {
            let candidate: Vec<f64> = x
                .iter()
                .zip(&d)
                .zip(&orthant)
                .zip(l1)
                .map(|(((&x, &d), &o), &l)| {
                    let v = x + step * d;
                    // Coordinates without an L1 term are not constrained.
                    if l > 0.0 && v * o <= 0.0 { 0.0 } else { v }
                })
                .collect();
            let (fc, gc) = f.evaluate(&candidate)?;
            evaluations += 1;
            let vc = fc + l1_term(&candidate);
            let decrease: f64 = candidate
                .iter()
                .zip(&x)
                .zip(&pg)
                .map(|((c, x), p)| (c - x) * p)
                .sum();
            if vc <= value + 1e-4 * decrease || step < 1e-10 {
                break (candidate, gc, vc);
            }
            step *= 0.5;
        };
        let s: Vec<f64> = x_new.iter().zip(&x).map(|(a, b)| a - b).collect();
        let y: Vec<f64> = g_new.iter().zip(&g).map(|(a, b)| a - b).collect();
        if dot(&s, &y) > 1e-16 {
            if pairs.len() == MEMORY {
                pairs.pop_front();
            }
            pairs.push_back((s, y));
        }
        iterations += 1;
        let improvement = value - v_new;
        x = x_new;
        g = g_new;
        value = v_new;
        history.push(value);
        if improvement.abs() < tol * scale {
            converged = true;
            break;
        }
    }
    Ok(Minimum {
        x,
        history,
        iterations,
        evaluations,
        converged,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Least squares `0.5 * |A x - b|^2` with a known solution.
    struct Quadratic {
        a: Vec<Vec<f64>>,
        b: Vec<f64>,
        calls: usize,
    }

    impl Evaluate for Quadratic {
        fn evaluate(&mut self, x: &[f64]) -> Result<(f64, Vec<f64>)> {
            self.calls += 1;
            let r: Vec<f64> = self
                .a
                .iter()
                .zip(&self.b)
                .map(|(row, b)| dot(row, x) - b)
                .collect();
            let mut g = vec![0.0; x.len()];
            for (row, r) in self.a.iter().zip(&r) {
                for (g, a) in g.iter_mut().zip(row) {
                    *g += a * r;
                }
            }
            Ok((0.5 * dot(&r, &r), g))
        }
    }

    fn problem() -> Quadratic {
        Quadratic {
            a: vec![
                vec![2.0, 0.0, 0.0],
                vec![0.0, 1.0, 0.5],
                vec![0.0, 0.5, 3.0],
                vec![1.0, 1.0, 1.0],
            ],
            b: vec![2.0, -1.0, 0.2, 0.3],
            calls: 0,
        }
    }

    #[test]
    fn lbfgs_finds_the_least_squares_solution() {
        let mut q = problem();
        let m = minimize(&mut q, vec![0.0; 3], None, 100, 1e-12).unwrap();
        // Normal equations solved numerically: the gradient must vanish.
        let (_, g) = q.evaluate(&m.x).unwrap();
        assert!(g.iter().all(|v| v.abs() < 1e-5), "{g:?}");
        assert_eq!(m.evaluations + 1, q.calls);
        assert!(m.history.windows(2).all(|w| w[1] <= w[0] + 1e-12));
    }

    #[test]
    fn owlqn_satisfies_the_l1_optimality_conditions() {
        let mut q = problem();
        let l1 = [0.8, 3.0, 0.0];
        let m = minimize(&mut q, vec![0.0; 3], Some(&l1), 200, 1e-14).unwrap();
        let (_, g) = q.evaluate(&m.x).unwrap();
        for i in 0..3 {
            if m.x[i] != 0.0 {
                // Stationary: g + l1 * sign(x) = 0.
                assert!(
                    (g[i] + l1[i] * m.x[i].signum()).abs() < 1e-5,
                    "{i}: {m:?} {g:?}"
                );
            } else {
                // Zero is optimal: |g| <= l1.
                assert!(g[i].abs() <= l1[i] + 1e-6, "{i}: {m:?} {g:?}");
            }
        }
        // The strong penalty zeroes the second coefficient exactly (L-BFGS alone would not).
        assert_eq!(m.x[1], 0.0, "{m:?}");
        assert!(m.x[0] != 0.0 && m.x[2] != 0.0, "{m:?}");
    }
}

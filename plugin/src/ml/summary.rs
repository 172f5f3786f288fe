//! Per-partition summaries of the training data (weights, feature means and variances,
//! class histogram), computed on the executors and merged on the driver like Spark's
//! `MultivariateOnlineSummarizer` (Chan et al.'s parallel update).

use serde::{Deserialize, Serialize};

use super::data::Rows;

/// Summary of some rows.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Summary {
    /// Rows.
    pub rows: u64,
    /// Feature dimension (0 when there are no rows).
    pub dim: usize,
    /// Sum of the weights.
    pub weight_sum: f64,
    /// Sum of the squared weights.
    pub weight_sq_sum: f64,
    /// Weighted mean of each feature.
    pub mean: Vec<f64>,
    /// Weighted sum of squared deviations from the mean, per feature.
    pub m2: Vec<f64>,
    /// Sum of weights per class (index = label).
    pub class_weights: Vec<f64>,
    /// Rows per class (index = label).
    pub class_counts: Vec<u64>,
}

impl Summary {
    /// Summarizes rows.
    pub fn of(rows: &Rows) -> Self {
        let n = rows.len();
        let d = rows.dim;
        let mut s = Summary {
            rows: n as u64,
            dim: if n == 0 { 0 } else { d },
            ..Default::default()
        };
        if n == 0 {
            return s;
        }
        s.weight_sum = rows.w.iter().sum();
        s.weight_sq_sum = rows.w.iter().map(|w| w * w).sum();
        let mut mean = vec![0.0; d];
        for (i, &w) in rows.w.iter().enumerate() {
            if w == 0.0 {
                continue;
            }
            for (m, &x) in mean.iter_mut().zip(&rows.x[i * d..(i + 1) * d]) {
                *m += w * x;
            }
        }
        if s.weight_sum > 0.0 {
            mean.iter_mut().for_each(|m| *m /= s.weight_sum);
        }
        let mut m2 = vec![0.0; d];
        for (i, &w) in rows.w.iter().enumerate() {
            if w == 0.0 {
                continue;
            }
            for ((acc, &x), &m) in m2.iter_mut().zip(&rows.x[i * d..(i + 1) * d]).zip(&mean) {
                let dx = x - m;
                *acc += w * dx * dx;
            }
        }
        s.mean = mean;
        s.m2 = m2;
        for (&y, &w) in rows.y.iter().zip(&rows.w) {
            let k = y as usize;
            if s.class_weights.len() <= k {
                s.class_weights.resize(k + 1, 0.0);
                s.class_counts.resize(k + 1, 0);
            }
            s.class_weights[k] += w;
            s.class_counts[k] += 1;
        }
        s
    }

    /// Merges another summary into this one. Fails when the feature dimensions differ.
    pub fn merge(&mut self, other: &Summary) -> Result<(), String> {
        if other.rows == 0 {
            return Ok(());
        }
        if self.rows == 0 {
            *self = other.clone();
            return Ok(());
        }
        if self.dim != other.dim {
            return Err(format!(
                "vectors of mixed length: {} in one partition, {} in another",
                self.dim, other.dim
            ));
        }
        let (wa, wb) = (self.weight_sum, other.weight_sum);
        let w = wa + wb;
        if wb > 0.0 {
            for j in 0..self.dim {
                let delta = other.mean[j] - self.mean[j];
                self.mean[j] += delta * wb / w;
                self.m2[j] += other.m2[j] + delta * delta * wa * wb / w;
            }
        }
        self.rows += other.rows;
        self.weight_sum = w;
        self.weight_sq_sum += other.weight_sq_sum;
        if self.class_weights.len() < other.class_weights.len() {
            self.class_weights.resize(other.class_weights.len(), 0.0);
            self.class_counts.resize(other.class_counts.len(), 0);
        }
        for (k, (&cw, &cc)) in other
            .class_weights
            .iter()
            .zip(&other.class_counts)
            .enumerate()
        {
            self.class_weights[k] += cw;
            self.class_counts[k] += cc;
        }
        Ok(())
    }

    /// Unbiased weighted standard deviation of each feature (Spark's definition:
    /// `M2 / (W - W2 / W)`).
    pub fn std(&self) -> Vec<f64> {
        let denom = self.weight_sum - self.weight_sq_sum / self.weight_sum;
        self.m2
            .iter()
            .map(|&m2| {
                if denom > 0.0 {
                    (m2 / denom).max(0.0).sqrt()
                } else {
                    0.0
                }
            })
            .collect()
    }

    /// Number of classes: the largest label plus one.
    pub fn num_classes(&self) -> usize {
        self.class_weights.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rows(x: &[f64], dim: usize, y: &[f64], w: &[f64]) -> Rows {
        Rows {
            dim,
            x: x.to_vec(),
            y: y.to_vec(),
            w: w.to_vec(),
            float32: false,
        }
    }

    #[test]
    fn merged_summary_equals_summary_of_all_rows() {
        let x = [1.0, 2.0, 3.0, 5.0, -1.0, 0.5, 4.0, 4.0, 2.5, -3.0];
        let y = [0.0, 1.0, 2.0, 1.0, 0.0];
        let w = [1.0, 2.0, 0.5, 1.0, 3.0];
        let all = Summary::of(&rows(&x, 2, &y, &w));
        let mut merged = Summary::of(&rows(&x[..4], 2, &y[..2], &w[..2]));
        merged
            .merge(&Summary::of(&rows(&x[4..], 2, &y[2..], &w[2..])))
            .unwrap();
        assert_eq!(merged.rows, 5);
        assert_eq!(merged.class_counts, vec![2, 2, 1]);
        for (a, b) in all.std().iter().zip(merged.std()) {
            assert!((a - b).abs() < 1e-12, "{a} vs {b}");
        }
        for (a, b) in all.mean.iter().zip(&merged.mean) {
            assert!((a - b).abs() < 1e-12);
        }
        // Unit weights: the usual n - 1 sample standard deviation.
        let s = Summary::of(&rows(&[1.0, 2.0, 3.0, 4.0], 1, &[0.0; 4], &[1.0; 4]));
        assert!((s.std()[0] - (5.0f64 / 3.0).sqrt()).abs() < 1e-12);
    }

    #[test]
    fn mixed_dimensions_are_an_error() {
        let mut a = Summary::of(&rows(&[1.0, 2.0], 2, &[0.0], &[1.0]));
        let b = Summary::of(&rows(&[1.0, 2.0, 3.0], 3, &[1.0], &[1.0]));
        assert!(a.merge(&b).unwrap_err().contains("mixed length"));
    }
}

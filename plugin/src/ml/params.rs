//! `LogisticRegression`'s parameters: Spark MLlib's names and defaults.

use std::path::PathBuf;

use datafusion::common::{Result, plan_err};
use serde::{Deserialize, Serialize};

/// Per-class weights of the loss (scikit-learn's `class_weight`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ClassWeight {
    /// `n / (k * n_c)` for class `c` with `n_c` rows, `k` classes present and `n` rows:
    /// every class weighs as much in the loss, whatever its size.
    Balanced,
}

/// Model family.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Family {
    /// Binomial for two classes (or one), multinomial otherwise.
    #[default]
    Auto,
    /// Logistic loss with one coefficient vector (labels 0/1).
    Binomial,
    /// Softmax loss with one coefficient vector per class.
    Multinomial,
}

impl std::str::FromStr for Family {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "auto" => Ok(Self::Auto),
            "binomial" => Ok(Self::Binomial),
            "multinomial" => Ok(Self::Multinomial),
            other => Err(format!(
                "family must be auto, binomial or multinomial, found '{other}'"
            )),
        }
    }
}

/// Parameters of the estimator, with MLlib's names (camelCase in JSON) and defaults.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct LogisticRegressionParams {
    /// Maximum number of optimizer iterations.
    pub max_iter: usize,
    /// Regularization strength (lambda).
    pub reg_param: f64,
    /// L1 share of the penalty (alpha): 0 is ridge, 1 is lasso.
    pub elastic_net_param: f64,
    /// Convergence tolerance (relative change of the objective).
    pub tol: f64,
    /// Whether to fit intercepts (never penalized).
    pub fit_intercept: bool,
    /// Whether to penalize coefficients on the standardized scale (the model is always
    /// reported on the original scale).
    pub standardization: bool,
    /// Model family.
    pub family: Family,
    /// Binomial decision threshold on the probability of class 1.
    pub threshold: f64,
    /// Per-class thresholds (prediction = argmax p_i / t_i); overrides `threshold`.
    pub thresholds: Option<Vec<f64>>,
    /// Instance weight column (all weights 1 when unset).
    pub weight_col: Option<String>,
    /// Class weights of the loss (`balanced`), multiplied with the instance weights, as
    /// scikit-learn's `class_weight="balanced"`. Unset: every row weighs its weight.
    pub class_weight: Option<ClassWeight>,
    /// Features column (vector of float32/float64).
    pub features_col: String,
    /// Label column (class indices 0..k-1).
    pub label_col: String,
    /// Output: predicted class (float64, as MLlib).
    pub prediction_col: String,
    /// Output: class probabilities.
    pub probability_col: String,
    /// Output: raw margins.
    pub raw_prediction_col: String,
    /// Where the training features are materialized for the iterations; must be storage
    /// every executor sees. Default: `$DLP_WORK_DIR`, else `<temp dir>/dlp-work`.
    pub work_dir: Option<PathBuf>,
}

impl Default for LogisticRegressionParams {
    fn default() -> Self {
        Self {
            max_iter: 100,
            reg_param: 0.0,
            elastic_net_param: 0.0,
            tol: 1e-6,
            fit_intercept: true,
            standardization: true,
            family: Family::Auto,
            threshold: 0.5,
            thresholds: None,
            weight_col: None,
            class_weight: None,
            features_col: "features".into(),
            label_col: "label".into(),
            prediction_col: "prediction".into(),
            probability_col: "probability".into(),
            raw_prediction_col: "rawPrediction".into(),
            work_dir: None,
        }
    }
}

impl LogisticRegressionParams {
    /// Checks the ranges of the parameters; the error names the parameter.
    pub fn validate(&self) -> Result<()> {
        if !(self.reg_param >= 0.0 && self.reg_param.is_finite()) {
            return plan_err!("regParam must be >= 0, found {}", self.reg_param);
        }
        if !(0.0..=1.0).contains(&self.elastic_net_param) {
            return plan_err!(
                "elasticNetParam must be in [0, 1], found {}",
                self.elastic_net_param
            );
        }
        if self.tol.is_nan() || self.tol < 0.0 {
            return plan_err!("tol must be >= 0, found {}", self.tol);
        }
        if !(0.0..=1.0).contains(&self.threshold) {
            return plan_err!("threshold must be in [0, 1], found {}", self.threshold);
        }
        if let Some(t) = &self.thresholds
            && (t.iter().any(|v| v.is_nan() || *v < 0.0)
                || t.iter().filter(|v| **v == 0.0).count() > 1)
        {
            return plan_err!("thresholds must be >= 0 with at most one 0, found {t:?}");
        }
        for (name, col) in [
            ("featuresCol", &self.features_col),
            ("labelCol", &self.label_col),
            ("predictionCol", &self.prediction_col),
            ("probabilityCol", &self.probability_col),
            ("rawPredictionCol", &self.raw_prediction_col),
        ] {
            if col.is_empty() {
                return plan_err!("{name} must not be empty");
            }
        }
        Ok(())
    }

    /// L1 strength: `regParam * elasticNetParam`.
    pub fn reg_l1(&self) -> f64 {
        self.reg_param * self.elastic_net_param
    }

    /// L2 strength: `regParam * (1 - elasticNetParam)`.
    pub fn reg_l2(&self) -> f64 {
        self.reg_param * (1.0 - self.elastic_net_param)
    }

    /// The work dir for materialized features (default: the process's
    /// [`work_base`](crate::access::work_base)).
    pub fn resolved_work_dir(&self) -> PathBuf {
        self.work_dir
            .clone()
            .unwrap_or_else(crate::access::work_base)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_mllibs_and_json_uses_its_names() {
        let p: LogisticRegressionParams = serde_json::from_str(
            r#"{"regParam": 0.1, "elasticNetParam": 0.5, "family": "multinomial"}"#,
        )
        .unwrap();
        assert_eq!(p.max_iter, 100);
        assert_eq!(p.tol, 1e-6);
        assert!(p.fit_intercept && p.standardization);
        assert_eq!(p.family, Family::Multinomial);
        assert!((p.reg_l1() - 0.05).abs() < 1e-15);
        let err = serde_json::from_str::<LogisticRegressionParams>(r#"{"maxIters": 3}"#)
            .unwrap_err()
            .to_string();
        assert!(err.contains("maxIters"), "{err}");
    }

    #[test]
    fn bad_values_name_the_parameter() {
        let p = LogisticRegressionParams {
            elastic_net_param: 1.5,
            ..Default::default()
        };
        assert!(
            p.validate()
                .unwrap_err()
                .to_string()
                .contains("elasticNetParam")
        );
        let p = LogisticRegressionParams {
            reg_param: -1.0,
            ..Default::default()
        };
        assert!(p.validate().unwrap_err().to_string().contains("regParam"));
    }
}

//! The fitted model: coefficients on the original feature scale, intercepts, training
//! summary; `transform` adds MLlib's prediction columns; `save` / `load` as JSON.

use std::path::Path;

use datafusion::common::{Result, exec_datafusion_err, plan_err};
use datafusion::dataframe::DataFrame;
use serde::{Deserialize, Serialize};

use super::node::{MlNode, MlStep, PredictSpec};
use super::params::LogisticRegressionParams;

/// What the fit did.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TrainingSummary {
    /// Objective (mean loss + penalty) at the start and after each iteration.
    pub objective_history: Vec<f64>,
    /// Optimizer iterations.
    pub total_iterations: usize,
    /// Loss evaluations, one distributed job each.
    pub evaluations: usize,
    /// Whether the tolerance was reached before `maxIter`.
    pub converged: bool,
    /// Training rows and their total weight.
    pub rows: u64,
    pub weight_sum: f64,
    /// Wall time of the whole fit, of the materialization job, and of all loss jobs.
    pub fit_seconds: f64,
    pub materialize_seconds: f64,
    pub evaluation_seconds: f64,
    /// Sum over loss jobs of every part's compute time on its executor (parts of one job
    /// run as many at a time as the cluster has task slots).
    pub compute_seconds: f64,
    /// Partitions (parts) of the training data.
    pub partitions: usize,
}

impl TrainingSummary {
    /// The final objective.
    pub fn objective(&self) -> f64 {
        self.objective_history.last().copied().unwrap_or(f64::NAN)
    }
}

/// A fitted logistic regression.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LogisticRegressionModel {
    /// The estimator's parameters (output column names and thresholds are used here).
    pub params: LogisticRegressionParams,
    pub num_classes: usize,
    pub num_features: usize,
    /// Multinomial (one coefficient row per class) or binomial (one row).
    pub multinomial: bool,
    /// `rows x numFeatures`, row-major, original feature scale.
    pub coefficients: Vec<f64>,
    /// One per row of `coefficients`.
    pub intercepts: Vec<f64>,
    pub summary: TrainingSummary,
}

/// File written by [`LogisticRegressionModel::save`] inside the model directory.
const MODEL_FILE: &str = "model.json";
/// `class` value in the saved file.
const CLASS: &str = "ballista.dlp.ml.LogisticRegressionModel";

#[derive(Serialize, Deserialize)]
struct Saved {
    class: String,
    version: String,
    model: LogisticRegressionModel,
}

impl LogisticRegressionModel {
    /// Coefficient row `c` (binomial: the only row).
    pub fn coefficient_row(&self, c: usize) -> &[f64] {
        &self.coefficients[c * self.num_features..(c + 1) * self.num_features]
    }

    /// Number of non-zero coefficients (intercepts excluded).
    pub fn non_zero_coefficients(&self) -> usize {
        self.coefficients.iter().filter(|v| **v != 0.0).count()
    }

    pub(crate) fn predict_spec(&self) -> PredictSpec {
        PredictSpec {
            num_classes: self.num_classes,
            multinomial: self.multinomial,
            dim: self.num_features,
            coefficients: self.coefficients.clone(),
            intercepts: self.intercepts.clone(),
            threshold: self.params.threshold,
            thresholds: self.params.thresholds.clone(),
            features_col: self.params.features_col.clone(),
            raw_prediction_col: self.params.raw_prediction_col.clone(),
            probability_col: self.params.probability_col.clone(),
            prediction_col: self.params.prediction_col.clone(),
        }
    }

    /// Adds `rawPrediction`, `probability` and `prediction` (names from the params). Rows
    /// whose feature vector is null get null outputs.
    pub fn transform(&self, df: DataFrame) -> Result<DataFrame> {
        if let Some(t) = &self.params.thresholds
            && t.len() != self.num_classes
        {
            return plan_err!(
                "thresholds has {} values, the model has {} classes",
                t.len(),
                self.num_classes
            );
        }
        let (state, plan) = df.into_parts();
        let node = MlNode::try_new(Some(plan), MlStep::Predict(self.predict_spec()))?;
        Ok(DataFrame::new(state, node.into_plan()))
    }

    /// Saves the model as `DIR/model.json` (creating `DIR`).
    pub fn save(&self, dir: impl AsRef<Path>) -> Result<()> {
        let dir = dir.as_ref();
        std::fs::create_dir_all(dir)
            .map_err(|e| exec_datafusion_err!("cannot create {}: {e}", dir.display()))?;
        let saved = Saved {
            class: CLASS.into(),
            version: env!("CARGO_PKG_VERSION").into(),
            model: self.clone(),
        };
        let text = serde_json::to_string_pretty(&saved)
            .map_err(|e| exec_datafusion_err!("cannot encode the model: {e}"))?;
        let path = dir.join(MODEL_FILE);
        std::fs::write(&path, text)
            .map_err(|e| exec_datafusion_err!("cannot write {}: {e}", path.display()))
    }

    /// Loads a model saved by [`save`](Self::save).
    pub fn load(dir: impl AsRef<Path>) -> Result<Self> {
        let path = dir.as_ref().join(MODEL_FILE);
        let text = std::fs::read_to_string(&path)
            .map_err(|e| exec_datafusion_err!("cannot read {}: {e}", path.display()))?;
        let saved: Saved = serde_json::from_str(&text)
            .map_err(|e| exec_datafusion_err!("{} is not a saved model: {e}", path.display()))?;
        if saved.class != CLASS {
            return Err(exec_datafusion_err!(
                "{} holds a {}, not a {CLASS}",
                path.display(),
                saved.class
            ));
        }
        let m = saved.model;
        let sets = if m.multinomial { m.num_classes } else { 1 };
        if m.coefficients.len() != sets * m.num_features || m.intercepts.len() != sets {
            return Err(exec_datafusion_err!(
                "{}: coefficient shape does not match numClasses / numFeatures",
                path.display()
            ));
        }
        Ok(m)
    }
}

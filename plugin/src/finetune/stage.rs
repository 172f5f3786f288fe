//! [`TorchImageClassifier`]: a fine-tuned model as a fitted pipeline stage. Its logits
//! (the model's `forward`, like any zoo model's) become MLlib's classifier columns:
//! `rawPrediction` (the logits), `probability` (their softmax) and `prediction` (the
//! arg max), so evaluators, `dlp predict` and `dlp evaluate` treat it like a logistic
//! regression.

use datafusion::common::{Result, plan_err};
use datafusion::dataframe::DataFrame;
use serde::{Deserialize, Serialize};

use crate::ml::node::{MlNode, MlStep, PredictSpec};
use crate::torch::manifest::ResizePolicy;
use crate::torch::{DeepImageFeaturizer, FeatureLayer};

/// A fine-tuned zoo model applied to an image column (see the module docs).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TorchImageClassifier {
    /// The fine-tuned model's name in the model directory.
    pub model_name: String,
    /// Image column.
    pub input_col: String,
    /// Classes of its logits.
    pub num_classes: usize,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resize: Option<ResizePolicy>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch_size: Option<usize>,
    /// The fit's loss and metrics per epoch.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub history: Vec<super::EpochRecord>,
}

const LOGITS: &str = "__dlp_logits";

impl TorchImageClassifier {
    /// Adds `rawPrediction`, `probability` and `prediction`; rows whose image is invalid get
    /// nulls.
    pub fn transform(&self, df: DataFrame) -> Result<DataFrame> {
        for c in ["rawPrediction", "probability", "prediction"] {
            if df.schema().field_with_unqualified_name(c).is_ok() {
                return plan_err!("output column '{c}' already exists in the input");
            }
        }
        let featurizer = DeepImageFeaturizer {
            input_col: self.input_col.clone(),
            output_col: LOGITS.into(),
            model_name: self.model_name.clone(),
            batch_size: self.batch_size,
            resize: self.resize,
            feature_layer: FeatureLayer::Logits,
        };
        let df = featurizer.transform(df)?;
        let k = self.num_classes;
        // The identity over the logits: MLlib's multinomial prediction columns.
        let mut identity = vec![0.0; k * k];
        (0..k).for_each(|i| identity[i * k + i] = 1.0);
        let spec = PredictSpec {
            num_classes: k,
            multinomial: true,
            dim: k,
            coefficients: identity,
            intercepts: vec![0.0; k],
            threshold: 0.5,
            thresholds: None,
            features_col: LOGITS.into(),
            raw_prediction_col: "rawPrediction".into(),
            probability_col: "probability".into(),
            prediction_col: "prediction".into(),
        };
        let (state, plan) = df.into_parts();
        let node = MlNode::try_new(Some(plan), MlStep::Predict(spec))?;
        DataFrame::new(state, node.into_plan()).drop_columns(&[LOGITS])
    }
}

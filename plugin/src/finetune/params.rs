//! [`TorchImageEstimatorParams`]: what to fine-tune and how, with the job-spec names.

use std::path::PathBuf;

use datafusion::common::{Result, plan_err};
use serde::{Deserialize, Serialize};

use super::optim::{OptimizerKind, Schedule};
use crate::torch::manifest::{InputSize, ResizePolicy, TrainingGraph};

/// Which parameters fine-tuning updates (`trainable`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Trainable {
    /// The new classifier only; everything before it is computed once.
    #[default]
    Head,
    /// The last `trainableBlocks` blocks, the stage after them and the classifier.
    Blocks,
    /// Every parameter.
    All,
}

/// sparkdl's `KerasImageFileEstimator`, for TorchScript models of the zoo: parameters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TorchImageEstimatorParams {
    /// Image column (default `image`).
    #[serde(default = "image_col")]
    pub input_col: String,
    /// Class index column, 0 .. classes-1 (default `label`).
    #[serde(default = "label_col")]
    pub label_col: String,
    /// The zoo model to start from (it needs a `training` section).
    pub model_name: String,
    /// Name of the fine-tuned model in a model directory (default `<modelName>_finetuned`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_model_name: Option<String>,
    /// What is trained: `head` (default), `blocks` (the last `trainableBlocks`), `all`.
    #[serde(default)]
    pub trainable: Trainable,
    /// Blocks trained with `trainable: blocks` (default 1).
    #[serde(default = "one")]
    pub trainable_blocks: usize,
    /// `sgd`, `adam` or `adamw` (default).
    #[serde(default)]
    pub optimizer: OptimizerKind,
    /// Learning rate (default 0.001).
    #[serde(default = "learning_rate")]
    pub learning_rate: f64,
    /// SGD's momentum (default 0.9).
    #[serde(default = "momentum")]
    pub momentum: f64,
    /// Weight decay (L2 for SGD and Adam, decoupled for AdamW; default 0).
    #[serde(default)]
    pub weight_decay: f64,
    /// Learning-rate schedule: `constant` (default), `cosine`, `step`.
    #[serde(default)]
    pub schedule: Schedule,
    /// `schedule: step`: epochs between decays (default 1).
    #[serde(default = "one")]
    pub step_epochs: usize,
    /// `schedule: step`: factor per decay (default 0.1).
    #[serde(default = "gamma")]
    pub gamma: f64,
    /// Images per optimizer step, over all executors (default 32).
    #[serde(default = "batch_size")]
    pub batch_size: usize,
    /// Passes over the training data (default 5).
    #[serde(default = "epochs")]
    pub epochs: usize,
    /// Label smoothing of the cross-entropy loss, 0 .. 1 (default 0).
    #[serde(default)]
    pub label_smoothing: f64,
    /// Random resized crops (scale 0.35-1, aspect 3/4-4/3) and horizontal flips of the
    /// model's input, seeded per image and epoch, on the executors (default off). With it,
    /// the frozen stages run at every step instead of once.
    #[serde(default)]
    pub augment: bool,
    /// With `augment`: flip half the images horizontally (default on; turn it off for
    /// digits and text, whose mirror images are other shapes).
    #[serde(default = "yes")]
    pub horizontal_flip: bool,
    /// Shuffle the training images every epoch (default on).
    #[serde(default = "yes")]
    pub shuffle: bool,
    /// Seed of the classifier's initial weights, the shuffles, the validation split and
    /// the augmentation (default 0).
    #[serde(default)]
    pub seed: u64,
    /// Fraction of the images held out to report a validation loss and accuracy per epoch
    /// (default 0: none).
    #[serde(default)]
    pub validation_fraction: f64,
    /// Resize policy override (default the model's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resize: Option<ResizePolicy>,
    /// Side of the square input the model is trained on and later applied at (default: the
    /// model's input size). The zoo's CNNs pool globally, so any size of 32 or more works;
    /// smaller images train faster, and small sources (28x28 digits) lose nothing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_size: Option<usize>,
    /// Classes of the new classifier (default: the largest label + 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub num_classes: Option<usize>,
    /// Where a checkpoint is written after every epoch (path or URL); a fit finds the last
    /// one of the same configuration there and resumes from it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checkpoint_dir: Option<String>,
    /// Work directory of the prepared images (default: the process's, `DLP_WORK_DIR`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub work_dir: Option<PathBuf>,
}

fn image_col() -> String {
    "image".into()
}
fn label_col() -> String {
    "label".into()
}
fn one() -> usize {
    1
}
fn learning_rate() -> f64 {
    1e-3
}
fn momentum() -> f64 {
    0.9
}
fn gamma() -> f64 {
    0.1
}
fn batch_size() -> usize {
    32
}
fn epochs() -> usize {
    5
}
fn yes() -> bool {
    true
}

impl TorchImageEstimatorParams {
    /// Parameters with their defaults for `model_name`.
    pub fn new(model_name: impl Into<String>) -> Self {
        serde_json::from_value(serde_json::json!({ "modelName": model_name.into() }))
            .expect("defaults deserialize")
    }

    /// Checks ranges; errors name the parameter.
    pub fn validate(&self) -> Result<()> {
        let positive = [("learningRate", self.learning_rate), ("gamma", self.gamma)];
        for (name, v) in positive {
            if !(v.is_finite() && v > 0.0) {
                return plan_err!("{name} must be a positive number, got {v}");
            }
        }
        for (name, v) in [
            ("momentum", self.momentum),
            ("weightDecay", self.weight_decay),
        ] {
            if !(v.is_finite() && v >= 0.0) {
                return plan_err!("{name} must be 0 or more, got {v}");
            }
        }
        if !(0.0..1.0).contains(&self.label_smoothing) {
            return plan_err!(
                "labelSmoothing must be in [0, 1), got {}",
                self.label_smoothing
            );
        }
        if !(0.0..0.9).contains(&self.validation_fraction) {
            return plan_err!(
                "validationFraction must be in [0, 0.9), got {}",
                self.validation_fraction
            );
        }
        for (name, v) in [
            ("batchSize", self.batch_size),
            ("epochs", self.epochs),
            ("stepEpochs", self.step_epochs),
        ] {
            if v == 0 {
                return plan_err!("{name} must be at least 1");
            }
        }
        if self.batch_size > 4096 {
            return plan_err!("batchSize must be at most 4096, got {}", self.batch_size);
        }
        if let Some(n) = self.image_size
            && !(32..=1024).contains(&n)
        {
            return plan_err!("imageSize must be in 32..=1024 pixels, got {n}");
        }
        if self.num_classes.is_some_and(|k| k < 2) {
            return plan_err!("numClasses must be at least 2");
        }
        if let Some(name) = &self.output_model_name
            && (name.is_empty()
                || !name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-'))
        {
            return plan_err!("outputModelName must be letters, digits, '_' or '-', got '{name}'");
        }
        Ok(())
    }

    /// The input size of `imageSize` (default: none, the model's).
    pub fn input_size(&self) -> Option<InputSize> {
        self.image_size.map(|n| InputSize {
            height: n,
            width: n,
        })
    }

    /// The name of the fine-tuned model.
    pub fn output_name(&self) -> String {
        self.output_model_name
            .clone()
            .unwrap_or_else(|| format!("{}_finetuned", self.model_name))
    }

    /// Index of the first trained stage of `graph`.
    pub fn first_trainable(&self, graph: &TrainingGraph) -> Result<usize> {
        let n = graph.stages.len();
        let blocks: Vec<usize> = (0..n)
            .filter(|&i| graph.stages[i].method.starts_with("block"))
            .collect();
        Ok(match self.trainable {
            Trainable::Head => n - 1,
            Trainable::All => 0,
            Trainable::Blocks => {
                if self.trainable_blocks > blocks.len() {
                    return plan_err!(
                        "trainableBlocks is {} but model {} has {} blocks",
                        self.trainable_blocks,
                        self.model_name,
                        blocks.len()
                    );
                }
                match self.trainable_blocks {
                    // No block: the stages after the blocks and the classifier.
                    0 => blocks.last().map_or(n - 1, |b| b + 1),
                    k => blocks[blocks.len() - k],
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::torch::manifest::TrainingStage;

    fn graph() -> TrainingGraph {
        let stage = |m: &str| TrainingStage {
            method: m.into(),
            params: vec![],
        };
        TrainingGraph {
            file: "m.train.pt".into(),
            sha256: String::new(),
            stages: ["stem", "block0", "block1", "block2", "top", "head"]
                .map(stage)
                .to_vec(),
        }
    }

    #[test]
    fn trainable_stages_and_errors_name_the_parameter() {
        let mut p = TorchImageEstimatorParams::new("m");
        assert_eq!(p.first_trainable(&graph()).unwrap(), 5);
        p.trainable = Trainable::Blocks;
        p.trainable_blocks = 2;
        assert_eq!(p.first_trainable(&graph()).unwrap(), 2);
        p.trainable_blocks = 0;
        assert_eq!(p.first_trainable(&graph()).unwrap(), 4);
        p.trainable_blocks = 4;
        let e = p.first_trainable(&graph()).unwrap_err().to_string();
        assert!(
            e.contains("trainableBlocks is 4") && e.contains("3 blocks"),
            "{e}"
        );
        p.trainable = Trainable::All;
        assert_eq!(p.first_trainable(&graph()).unwrap(), 0);
        p.label_smoothing = 1.5;
        assert!(
            p.validate()
                .unwrap_err()
                .to_string()
                .contains("labelSmoothing")
        );
        let e = serde_json::from_str::<TorchImageEstimatorParams>(
            r#"{"modelName": "m", "learningrate": 1}"#,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("learningrate"), "{e}");
    }
}

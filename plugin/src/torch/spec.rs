//! What a torch inference step does: model, columns, task, batching; shared by the logical
//! node, the physical operator, the codecs and the SQL functions.

use std::sync::Arc;

use datafusion::arrow::datatypes::{DataType, Field, FieldRef, Fields};
use datafusion::common::{Result, plan_err};
use serde::{Deserialize, Serialize};

use super::device::DeviceSpec;
use super::manifest::{ModelEntry, ModelZoo, ResizePolicy};

/// What to compute from the model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Serialize, Deserialize)]
pub enum TorchTask {
    /// The feature vector (`DeepImageFeaturizer`).
    Features,
    /// The top-k classes with their probabilities (`DeepImagePredictor`,
    /// `decodePredictions=true`).
    TopK(usize),
    /// The whole probability vector (`decodePredictions=false`).
    Probabilities,
    /// The class scores before the softmax, as features (`DeepImageFeaturizer` with
    /// `featureLayer=logits`).
    Logits,
    /// The model's image output as an image struct (sparkdl's `TFImageTransformer`,
    /// `outputMode="image"`).
    Image,
}

/// A torch inference step over an image column.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Serialize, Deserialize)]
pub struct TorchSpec {
    /// Model name in the model directory.
    pub model: String,
    /// Name of the image struct column.
    pub input_col: String,
    /// Name of the output column.
    pub output_col: String,
    /// What to compute.
    pub task: TorchTask,
    /// Images per forward pass; 0: the session's `dlp.torch.batch_size` (filled in when the
    /// step is planned or run, see [`crate::config::DlpOptions::apply_to`]).
    pub batch_size: usize,
    /// Resize policy override (default: the manifest's).
    pub resize: Option<ResizePolicy>,
    /// Device preference (default: the executor's `--device`).
    pub device: Option<DeviceSpec>,
    /// Length of the output vector (feature dim or class count; 0 for images), fixed at plan
    /// time.
    pub output_dim: usize,
    /// The model's sha256 when the plan was made: executors run that version or fail.
    #[serde(default)]
    pub sha256: String,
    /// The model's input (width, height) and its manifest's resize policy when the plan was
    /// made: what a decode feeding only this step must cover ([`TorchSpec::decode_cover`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model_input: Option<(usize, usize, ResizePolicy)>,
}

impl TorchSpec {
    /// Resolves `model` in `zoo` and fixes the output size, with plan-time errors for an
    /// unknown model, a missing file or a task the model cannot do.
    pub fn try_new(
        zoo: &ModelZoo,
        model: &str,
        input_col: &str,
        output_col: &str,
        task: TorchTask,
    ) -> Result<Self> {
        Self::for_entry(&zoo.get(model)?, input_col, output_col, task)
    }

    /// Like [`TorchSpec::try_new`] for a model already looked up.
    pub fn for_entry(
        entry: &ModelEntry,
        input_col: &str,
        output_col: &str,
        task: TorchTask,
    ) -> Result<Self> {
        let model = entry.manifest.name.as_str();
        let output_dim = match task {
            TorchTask::Features => {
                if entry.manifest.outputs.features.is_none() {
                    return plan_err!(
                        "model {model} has no feature output (its manifest's outputs.features \
                         is not set); use outputMode image or another model"
                    );
                }
                entry.manifest.feature_dim
            }
            TorchTask::Image => {
                if entry.manifest.outputs.image.is_none() {
                    return plan_err!(
                        "model {model} has no image output (its manifest's outputs.image is \
                         not set); use outputMode vector"
                    );
                }
                0
            }
            TorchTask::TopK(k) => {
                check_classes(entry, task)?;
                if k == 0 || k > entry.manifest.num_classes {
                    return plan_err!(
                        "topK must be in 1..={} for model {model}, got {k}",
                        entry.manifest.num_classes
                    );
                }
                k
            }
            TorchTask::Probabilities | TorchTask::Logits => {
                check_classes(entry, task)?;
                entry.manifest.num_classes
            }
        };
        Ok(Self {
            model: entry.manifest.name.clone(),
            input_col: input_col.to_string(),
            output_col: output_col.to_string(),
            task,
            batch_size: 0,
            resize: None,
            device: None,
            output_dim,
            sha256: entry.manifest.sha256.clone(),
            model_input: Some((
                entry.manifest.input.width,
                entry.manifest.input.height,
                entry.manifest.resize,
            )),
        })
    }

    /// The smallest decoded image (width, height) this step's preprocessing only shrinks:
    /// a JPEG read by nothing but this step may be decoded at a DCT scale this large
    /// ([`crate::torch::scaled_decode`]). `None` when the plan does not say the model's size.
    pub fn decode_cover(&self) -> Option<(usize, usize)> {
        let (width, height, manifest) = self.model_input?;
        Some(self.resize.unwrap_or(manifest).cover(width, height))
    }

    /// The output column's field.
    pub fn output_field(&self) -> Field {
        Field::new(
            &self.output_col,
            output_type(self.task, self.output_dim),
            true,
        )
    }
}

fn check_classes(entry: &ModelEntry, task: TorchTask) -> Result<()> {
    if entry.manifest.outputs.logits.is_none() || entry.manifest.num_classes == 0 {
        let name = &entry.manifest.name;
        return if task == TorchTask::Logits {
            plan_err!(
                "featureLayer 'logits' needs a class output, and model {name} has none (its \
                 manifest's outputs.logits and num_classes are not set); use featureLayer \
                 'penultimate'"
            )
        } else {
            plan_err!("model {name} has no class output; use it as a featurizer")
        };
    }
    Ok(())
}

/// The struct of one prediction: `{class, description, probability}` as sparkdl.
pub fn prediction_fields() -> Fields {
    Fields::from(vec![
        Field::new("class", DataType::Utf8, false),
        Field::new("description", DataType::Utf8, false),
        Field::new("probability", DataType::Float32, false),
    ])
}

/// Arrow type of a task's output.
pub fn output_type(task: TorchTask, dim: usize) -> DataType {
    let item: FieldRef = Arc::new(Field::new("item", DataType::Float32, true));
    match task {
        TorchTask::Features | TorchTask::Probabilities | TorchTask::Logits => {
            DataType::FixedSizeList(item, dim as i32)
        }
        TorchTask::TopK(_) => DataType::List(Arc::new(Field::new(
            "item",
            DataType::Struct(prediction_fields()),
            true,
        ))),
        TorchTask::Image => crate::image::schema::image_data_type(),
    }
}

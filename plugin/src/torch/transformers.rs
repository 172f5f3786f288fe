//! sparkdl-style transformers on DataFrames: `DeepImageFeaturizer`, `DeepImagePredictor`,
//! `TorchImageTransformer` (any TorchScript model of the zoo, vector or image output) and
//! `ImageFileTransformer` (file URIs). Each adds a `TorchInferenceNode`, which the scheduler
//! plans into `TorchInferenceExec`.

use std::sync::Arc;

use datafusion::common::Result;
use datafusion::dataframe::DataFrame;
use datafusion::logical_expr::{Extension, LogicalPlan};

use serde::{Deserialize, Serialize};

use super::ProcessTorchConfig;
use super::exec::TorchInferenceNode;
use super::manifest::ResizePolicy;
use super::spec::{TorchSpec, TorchTask};

fn apply(df: DataFrame, spec: TorchSpec) -> Result<DataFrame> {
    let (state, plan) = df.into_parts();
    let node = TorchInferenceNode::try_new(plan, spec)?;
    Ok(DataFrame::new(
        state,
        LogicalPlan::Extension(Extension {
            node: Arc::new(node),
        }),
    ))
}

/// Image struct column -> feature vector (`FixedSizeList<Float32, D>`), like sparkdl's
/// `DeepImageFeaturizer(inputCol, outputCol, modelName)`. Serialized (pipeline specs,
/// saved pipelines) with sparkdl's parameter names.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DeepImageFeaturizer {
    /// Image column (default `image`).
    #[serde(default = "image_col")]
    pub input_col: String,
    /// Output column (default `features`).
    #[serde(default = "features_col")]
    pub output_col: String,
    /// Model name in the model directory.
    pub model_name: String,
    /// Images per forward pass (unset: the session's `dlp.torch.batch_size`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch_size: Option<usize>,
    /// Resize policy override.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resize: Option<ResizePolicy>,
    /// Which layer gives the features: `penultimate` (default, as sparkdl) or `logits`.
    #[serde(default, skip_serializing_if = "FeatureLayer::is_default")]
    pub feature_layer: FeatureLayer,
}

/// The layer [`DeepImageFeaturizer`] outputs (`featureLayer`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum FeatureLayer {
    /// The pooled activations before the classifier (sparkdl's only choice): the manifest's
    /// `features` output (1280 values for EfficientNet-Lite).
    #[default]
    Penultimate,
    /// The ImageNet class scores before the softmax (the manifest's `logits` output, one per
    /// class). On images far from ImageNet photos (28x28 digits) these transferred better in
    /// cross-validation than the pooled features; see examples/numta.yaml.
    Logits,
}

impl FeatureLayer {
    fn is_default(&self) -> bool {
        *self == Self::default()
    }
}

fn image_col() -> String {
    "image".into()
}
fn features_col() -> String {
    "features".into()
}
fn predicted_labels_col() -> String {
    "predicted_labels".into()
}
fn yes() -> bool {
    true
}
fn five() -> usize {
    5
}

impl DeepImageFeaturizer {
    /// A featurizer with sparkdl's default columns.
    pub fn new(model_name: impl Into<String>) -> Self {
        Self {
            input_col: "image".into(),
            output_col: "features".into(),
            model_name: model_name.into(),
            batch_size: None,
            resize: None,
            feature_layer: FeatureLayer::Penultimate,
        }
    }

    /// Sets `inputCol`.
    pub fn with_input_col(mut self, c: impl Into<String>) -> Self {
        self.input_col = c.into();
        self
    }

    /// Sets `featureLayer`.
    pub fn with_feature_layer(mut self, layer: FeatureLayer) -> Self {
        self.feature_layer = layer;
        self
    }

    /// Sets `outputCol`.
    pub fn with_output_col(mut self, c: impl Into<String>) -> Self {
        self.output_col = c.into();
        self
    }

    /// Sets the images per forward pass.
    pub fn with_batch_size(mut self, n: usize) -> Self {
        self.batch_size = Some(n.max(1));
        self
    }

    /// The inference step this featurizer adds.
    pub fn spec(&self) -> Result<TorchSpec> {
        zoo_spec(
            &self.model_name,
            &self.input_col,
            &self.output_col,
            match self.feature_layer {
                FeatureLayer::Penultimate => TorchTask::Features,
                FeatureLayer::Logits => TorchTask::Logits,
            },
            self.batch_size,
            self.resize,
        )
    }

    /// Adds the feature column to `df`.
    pub fn transform(&self, df: DataFrame) -> Result<DataFrame> {
        apply(df, self.spec()?)
    }
}

/// The inference step of a zoo model as the transformers configure it (plan-time errors for
/// an unknown model or one without the output `task` needs).
fn zoo_spec(
    model_name: &str,
    input_col: &str,
    output_col: &str,
    task: TorchTask,
    batch_size: Option<usize>,
    resize: Option<ResizePolicy>,
) -> Result<TorchSpec> {
    let zoo = ProcessTorchConfig::get().zoo();
    let mut spec = TorchSpec::try_new(&zoo, model_name, input_col, output_col, task)?;
    if let Some(n) = batch_size {
        crate::limits::Limits::get()
            .check_batch_size(output_col, n)
            .map_err(|e| datafusion::common::plan_datafusion_err!("{e}"))?;
    }
    // Unset (0): the session's `dlp.torch.batch_size`, when the step is planned.
    spec.batch_size = batch_size.map_or(0, |n| n.max(1));
    spec.resize = resize;
    Ok(spec)
}

/// Image struct column -> ImageNet predictions, like sparkdl's `DeepImagePredictor`:
/// with `decode_predictions`, the top-K `{class, description, probability}`; otherwise
/// the probability vector.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DeepImagePredictor {
    /// Image column (default `image`).
    #[serde(default = "image_col")]
    pub input_col: String,
    /// Output column (default `predicted_labels`).
    #[serde(default = "predicted_labels_col")]
    pub output_col: String,
    /// Model name.
    pub model_name: String,
    /// Top-K structs (true) or the probability vector (false).
    #[serde(default = "yes")]
    pub decode_predictions: bool,
    /// K of the top-K (default 5).
    #[serde(default = "five", rename = "topK")]
    pub top_k: usize,
    /// Images per forward pass (unset: the session's `dlp.torch.batch_size`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch_size: Option<usize>,
}

impl DeepImagePredictor {
    /// A predictor with sparkdl's defaults (`decodePredictions=true`, `topK=5`).
    pub fn new(model_name: impl Into<String>) -> Self {
        Self {
            input_col: "image".into(),
            output_col: "predicted_labels".into(),
            model_name: model_name.into(),
            decode_predictions: true,
            top_k: 5,
            batch_size: None,
        }
    }

    /// Sets `topK`.
    pub fn with_top_k(mut self, k: usize) -> Self {
        self.top_k = k;
        self
    }

    /// Sets `decodePredictions`.
    pub fn with_decode_predictions(mut self, on: bool) -> Self {
        self.decode_predictions = on;
        self
    }

    /// Sets `outputCol`.
    pub fn with_output_col(mut self, c: impl Into<String>) -> Self {
        self.output_col = c.into();
        self
    }

    /// Adds the prediction column to `df`.
    pub fn transform(&self, df: DataFrame) -> Result<DataFrame> {
        let task = if self.decode_predictions {
            TorchTask::TopK(self.top_k)
        } else {
            TorchTask::Probabilities
        };
        let spec = zoo_spec(
            &self.model_name,
            &self.input_col,
            &self.output_col,
            task,
            self.batch_size,
            None,
        )?;
        apply(df, spec)
    }
}

/// What [`TorchImageTransformer`] outputs (sparkdl's `outputMode`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum ImageOutputMode {
    /// The model's feature output as a vector column (`FixedSizeList<Float32, D>`).
    #[default]
    Vector,
    /// The model's image output as an image struct column (Spark's `ImageSchema`, 8-bit),
    /// usable by the other image transformers.
    Image,
}

/// Any TorchScript model of the model directory applied to an image column, like sparkdl's
/// `TFImageTransformer(inputCol, outputCol, graph, outputMode)`: the images are prepared as
/// the model's manifest says (size, resize policy, channel order, mean / std); the output is
/// the manifest's `features` output as a vector, or its `image` output as images
/// (denormalized by the manifest's `image_output`, or the inverse of its input
/// normalization). sparkdl gave float (`CV_32FC*`) images with an empty origin; these are
/// 8-bit images keeping the input's origin, so that they can be featurized, predicted or
/// written like any image read by `read_images`. Invalid images give null outputs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TorchImageTransformer {
    /// Image column (default `image`).
    #[serde(default = "image_col")]
    pub input_col: String,
    /// Output column.
    pub output_col: String,
    /// Model name in the model directory.
    pub model_name: String,
    /// `vector` (default) or `image`.
    #[serde(default)]
    pub output_mode: ImageOutputMode,
    /// Images per forward pass (unset: the session's `dlp.torch.batch_size`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch_size: Option<usize>,
    /// Resize policy override.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resize: Option<ResizePolicy>,
}

impl TorchImageTransformer {
    /// `model_name` over the `image` column into `output_col`, in `output_mode`.
    pub fn new(
        model_name: impl Into<String>,
        output_col: impl Into<String>,
        output_mode: ImageOutputMode,
    ) -> Self {
        Self {
            input_col: "image".into(),
            output_col: output_col.into(),
            model_name: model_name.into(),
            output_mode,
            batch_size: None,
            resize: None,
        }
    }

    /// Sets `inputCol`.
    pub fn with_input_col(mut self, c: impl Into<String>) -> Self {
        self.input_col = c.into();
        self
    }

    /// Sets the images per forward pass.
    pub fn with_batch_size(mut self, n: usize) -> Self {
        self.batch_size = Some(n.max(1));
        self
    }

    /// The inference step this transformer adds (plan-time errors for an unknown model or
    /// one without the output the mode needs).
    pub fn spec(&self) -> Result<TorchSpec> {
        let task = match self.output_mode {
            ImageOutputMode::Vector => TorchTask::Features,
            ImageOutputMode::Image => TorchTask::Image,
        };
        zoo_spec(
            &self.model_name,
            &self.input_col,
            &self.output_col,
            task,
            self.batch_size,
            self.resize,
        )
    }

    /// Adds the output column to `df`.
    pub fn transform(&self, df: DataFrame) -> Result<DataFrame> {
        apply(df, self.spec()?)
    }
}

/// What [`ImageFileTransformer`] outputs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum FileOutputMode {
    /// The model's feature vector (as `DeepImageFeaturizer`).
    #[default]
    Vector,
    /// The class probability vector (as `DeepImagePredictor(decodePredictions=false)`).
    Probabilities,
}

/// A column of image file URIs (`file:///...` or local paths) -> the model's output, like
/// sparkdl's `KerasImageFileTransformer(inputCol, outputCol, modelFile, imageLoader)`: the
/// files are read and decoded by `read_image` on the executors (the image loader), then the
/// model runs as in the other transformers. Files that cannot be read or decoded give null
/// outputs and are logged, never a failed task.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ImageFileTransformer {
    /// Column of file URIs or paths (strings).
    pub input_col: String,
    /// Output column (default `features`).
    #[serde(default = "features_col")]
    pub output_col: String,
    /// Model name in the model directory.
    pub model_name: String,
    /// `vector` (features, default) or `probabilities`.
    #[serde(default)]
    pub output_mode: FileOutputMode,
    /// Images per forward pass (unset: the session's `dlp.torch.batch_size`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch_size: Option<usize>,
    /// Resize policy override.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resize: Option<ResizePolicy>,
}

impl ImageFileTransformer {
    /// A transformer of the file URIs in `input_col` with `model_name`'s feature vector.
    pub fn new(input_col: impl Into<String>, model_name: impl Into<String>) -> Self {
        Self {
            input_col: input_col.into(),
            output_col: "features".into(),
            model_name: model_name.into(),
            output_mode: FileOutputMode::Vector,
            batch_size: None,
            resize: None,
        }
    }

    /// Sets `outputMode`.
    pub fn with_output_mode(mut self, mode: FileOutputMode) -> Self {
        self.output_mode = mode;
        self
    }

    /// Sets `outputCol`.
    pub fn with_output_col(mut self, c: impl Into<String>) -> Self {
        self.output_col = c.into();
        self
    }

    /// Adds the output column to `df` (the decoded images are not kept).
    pub fn transform(&self, df: DataFrame) -> Result<DataFrame> {
        use datafusion::arrow::datatypes::DataType;
        use datafusion::common::plan_err;
        use datafusion::prelude::col;

        let field = df
            .schema()
            .field_with_unqualified_name(&self.input_col)
            .map_err(|_| {
                datafusion::common::plan_datafusion_err!(
                    "ImageFileTransformer: inputCol '{}' is not a column; columns: {}",
                    self.input_col,
                    df.schema().field_names().join(", ")
                )
            })?;
        if !matches!(
            field.data_type(),
            DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View
        ) {
            return plan_err!(
                "ImageFileTransformer: inputCol '{}' must hold file URIs (strings), found {}",
                self.input_col,
                field.data_type()
            );
        }
        let tmp = format!("__dlp_image_of_{}", self.input_col);
        let task = match self.output_mode {
            FileOutputMode::Vector => TorchTask::Features,
            FileOutputMode::Probabilities => TorchTask::Probabilities,
        };
        let spec = zoo_spec(
            &self.model_name,
            &tmp,
            &self.output_col,
            task,
            self.batch_size,
            self.resize,
        )?;
        let df = df.with_column(
            &tmp,
            crate::sql::image::read_image_udf().call(vec![col(&self.input_col)]),
        )?;
        apply(df, spec)?.drop_columns(&[tmp.as_str()])
    }
}

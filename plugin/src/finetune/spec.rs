//! The fine-tuning steps as the codec carries them and the operators that run them, in the
//! logistic regression's operator shell ([`LrExec`]):
//!
//! * [`PrepareSpec`] / [`FtPrepareExec`]: each partition of the training DataFrame is
//!   decoded, resized and normalized for the model, passed through the frozen stages once
//!   (no gradients), and written as one part file in the run's work directory (cached on
//!   the executor). One row per partition: the part's path and what it holds.
//! * [`StepSpec`] / [`FtStepExec`]: one optimizer step (or one validation pass). Over a
//!   leaf of the parts that hold rows of the step's batch, each task runs the trainable
//!   stages on those rows with the parameters the driver wrote for the step, and returns
//!   the loss and gradient sums. The driver sums them over tasks and updates the weights.

use std::fmt;
use std::sync::Arc;

use datafusion::arrow::array::{
    BinaryArray, Float64Array, RecordBatch, StringArray, UInt32Array, UInt64Array,
};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::common::{Result, exec_datafusion_err};
use datafusion::execution::SendableRecordBatchStream;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use futures::TryStreamExt;
use serde::{Deserialize, Serialize};

use crate::ml::operator::{LrExec, LrStep, StepMetrics};
use crate::torch::manifest::{InputSize, ResizePolicy};

/// Log target of the fine-tuning operators and driver.
pub const LOG_TARGET: &str = "dlp_plugin::finetune";

/// Prepares the training images (see the module docs).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PrepareSpec {
    pub run_dir: String,
    pub model: String,
    pub image_col: String,
    pub label_col: String,
    pub resize: Option<ResizePolicy>,
    /// Input size override (default the model's).
    #[serde(default)]
    pub input: Option<InputSize>,
    /// Stages applied before the images are stored (0: the model's input is stored).
    pub stored_stages: usize,
}

/// One optimizer step or validation pass (see the module docs).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StepSpec {
    pub run_id: String,
    pub step: u64,
    pub model: String,
    pub num_classes: usize,
    pub stored_stages: usize,
    pub first_trainable: usize,
    /// The trainable parameters for this step ([`NamedTensors`](super::tensors::NamedTensors)
    /// file in the run's work directory).
    pub params_path: String,
    pub label_smoothing: f64,
    /// Seed and epoch of the augmentation (absent: none).
    pub augment: Option<(u64, u64)>,
    /// With the augmentation: horizontal flips.
    pub flip: bool,
    /// Forward only (validation): no gradients.
    pub evaluate: bool,
    /// Part files, by part index.
    pub parts: Vec<String>,
    /// Rows of each part in this step (row indices within the part).
    pub rows: Vec<Vec<u32>>,
    /// Their ids in the whole training set (seed the augmentation per image).
    pub ids: Vec<Vec<u32>>,
}

/// One row per part written by [`FtPrepareExec`].
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PartSummary {
    /// Rows stored.
    pub rows: usize,
    /// Images dropped as invalid (null, undecodable, or failing to preprocess).
    pub invalid: usize,
    /// Origin of each stored row.
    pub origins: Vec<String>,
    /// Label of each stored row.
    pub labels: Vec<u32>,
}

pub(crate) fn prepare_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("path", DataType::Utf8, true),
        Field::new("summary", DataType::Utf8, false),
    ]))
}

pub(crate) fn step_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("partition", DataType::UInt32, false),
        Field::new("rows", DataType::UInt64, false),
        Field::new("loss", DataType::Float64, false),
        Field::new("correct", DataType::UInt64, false),
        Field::new("gradient", DataType::Binary, false),
        Field::new("compute_seconds", DataType::Float64, false),
    ]))
}

/// The preparation operator.
pub type FtPrepareExec = LrExec<PrepareSpec>;
/// The step operator.
pub type FtStepExec = LrExec<StepSpec>;

impl LrStep for PrepareSpec {
    const NAME: &'static str = "FtPrepareExec";

    fn output_schema(&self, _input: &SchemaRef) -> Result<SchemaRef> {
        Ok(prepare_schema())
    }

    fn describe(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(
            f,
            "model={}, stored_stages={}, dir={}",
            self.model, self.stored_stages, self.run_dir
        )
    }

    fn run(
        &self,
        partition: usize,
        input: SendableRecordBatchStream,
        schema: SchemaRef,
        metrics: Arc<StepMetrics>,
    ) -> Result<SendableRecordBatchStream> {
        let spec = self.clone();
        let out = schema.clone();
        let fut = async move {
            let batches: Vec<RecordBatch> = input.try_collect().await?;
            tokio::task::spawn_blocking(move || {
                let timer = metrics.baseline.elapsed_compute().timer();
                let (path, summary) = super::worker::prepare(partition, &spec, &batches)?;
                timer.done();
                metrics.input_rows.add(summary.rows + summary.invalid);
                metrics.baseline.record_output(1);
                let json = serde_json::to_string(&summary)
                    .map_err(|e| exec_datafusion_err!("cannot encode the summary: {e}"))?;
                Ok(RecordBatch::try_new(
                    out,
                    vec![
                        Arc::new(StringArray::from(vec![path])),
                        Arc::new(StringArray::from(vec![json])),
                    ],
                )?)
            })
            .await
            .map_err(|e| exec_datafusion_err!("fine-tuning preparation failed: {e}"))?
        };
        Ok(Box::pin(RecordBatchStreamAdapter::new(
            schema,
            futures::stream::once(fut),
        )))
    }
}

/// What one task of a step returns.
#[derive(Debug, Default)]
pub struct StepSums {
    pub rows: u64,
    pub loss: f64,
    pub correct: u64,
    pub gradient: Vec<f32>,
}

impl LrStep for StepSpec {
    const NAME: &'static str = "FtStepExec";

    fn output_schema(&self, _input: &SchemaRef) -> Result<SchemaRef> {
        Ok(step_schema())
    }

    fn describe(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(
            f,
            "run={}, step={}, {}",
            self.run_id,
            self.step,
            if self.evaluate { "validation" } else { "train" }
        )
    }

    fn run(
        &self,
        _partition: usize,
        input: SendableRecordBatchStream,
        schema: SchemaRef,
        metrics: Arc<StepMetrics>,
    ) -> Result<SendableRecordBatchStream> {
        let spec = Arc::new(self.clone());
        let out = schema.clone();
        let fut = async move {
            // Every part of the task in one pass: gradients accumulate over them.
            let batches: Vec<RecordBatch> = input.try_collect().await?;
            let mut parts = vec![];
            for b in &batches {
                let ids = b
                    .column(0)
                    .as_any()
                    .downcast_ref::<UInt32Array>()
                    .ok_or_else(|| exec_datafusion_err!("FtStepExec: bad part list"))?;
                parts.extend(ids.values().iter().copied());
            }
            tokio::task::spawn_blocking(move || {
                let started = std::time::Instant::now();
                let timer = metrics.baseline.elapsed_compute().timer();
                let sums = super::worker::step(&spec, &parts)?;
                timer.done();
                metrics.input_rows.add(sums.rows as usize);
                metrics.baseline.record_output(1);
                let first = parts.iter().copied().min().unwrap_or(0);
                Ok(RecordBatch::try_new(
                    out,
                    vec![
                        Arc::new(UInt32Array::from(vec![first])),
                        Arc::new(UInt64Array::from(vec![sums.rows])),
                        Arc::new(Float64Array::from(vec![sums.loss])),
                        Arc::new(UInt64Array::from(vec![sums.correct])),
                        Arc::new(BinaryArray::from_vec(vec![
                            super::tensors::f32_bytes(sums.gradient).as_slice(),
                        ])),
                        Arc::new(Float64Array::from(vec![started.elapsed().as_secs_f64()])),
                    ],
                )?)
            })
            .await
            .map_err(|e| exec_datafusion_err!("fine-tuning step failed: {e}"))?
        };
        Ok(Box::pin(RecordBatchStreamAdapter::new(
            schema,
            futures::stream::once(fut),
        )))
    }
}

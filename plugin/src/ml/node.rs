//! The logistic regression's steps as the codec carries them ([`MaterializeSpec`],
//! [`GradientSpec`], [`PredictSpec`], together [`MlStep`]) and as a logical plan node
//! ([`MlNode`]); the operators that run them are one per file beside this one.

use std::fmt;
use std::sync::Arc;

use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::common::{DFSchema, DFSchemaRef, Result, internal_err, plan_err};
use datafusion::logical_expr::{Expr, LogicalPlan, UserDefinedLogicalNodeCore};
use serde::{Deserialize, Serialize};

use super::data::{check_features_type, check_numeric_type};
use super::loss::{Layout, f64_base64};

/// Log target of the training operators (the cluster tests read it).
pub const LOG_TARGET: &str = "dlp_plugin::ml";

// ---------------------------------------------------------------------------------------
// Specs (what the codec carries)

/// Which columns to materialize, and where.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MaterializeSpec {
    pub run_dir: String,
    pub features_col: String,
    pub label_col: String,
    pub weight_col: Option<String>,
}

/// One evaluation of the loss: the parts and the parameters (standardized scale).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GradientSpec {
    pub run_id: String,
    pub evaluation: u64,
    pub layout: Layout,
    #[serde(with = "f64_base64")]
    pub inv_std: Vec<f64>,
    #[serde(with = "f64_base64")]
    pub params: Vec<f64>,
    /// Part file per partition (empty partitions have none).
    pub parts: Vec<String>,
    /// Rows of each part, in the order of `parts`.
    pub part_rows: Vec<u64>,
    /// Rows per chunk: the loss sums come back per chunk of a part (see [`GradientSpec::chunks`]).
    pub chunk_rows: u64,
    /// Weight of each class in the loss (`classWeight`), by class index.
    #[serde(default)]
    pub class_weights: Option<Vec<f64>>,
}

/// Rows `offset..offset + len` of part `part`: the unit of a loss job's sums.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Chunk {
    pub part: u32,
    pub offset: u64,
    pub len: u64,
}

impl GradientSpec {
    /// Every part cut into chunks of `chunk_rows` rows (the last of a part shorter). The
    /// sums come back per chunk and the driver adds them in chunk order, so the model does
    /// not depend on how the chunks were grouped into tasks: the same on one executor or
    /// several, before and after one is lost.
    pub fn chunks(&self) -> Vec<Chunk> {
        let size = self.chunk_rows.max(1);
        let mut out = vec![];
        for (part, &rows) in self.part_rows.iter().enumerate() {
            let mut offset = 0;
            while offset < rows {
                let len = size.min(rows - offset);
                out.push(Chunk {
                    part: part as u32,
                    offset,
                    len,
                });
                offset += len;
            }
        }
        out
    }
}

/// Rows per chunk for `rows` rows of training data: at least 2,048 (a chunk's gradient is
/// one parameter vector to send back), and at most about 64 chunks per job; a multiple of
/// the loss's row blocks.
pub fn chunk_rows(rows: u64) -> u64 {
    rows.div_ceil(64).max(2048).next_multiple_of(256)
}

/// A fitted model applied to a features column.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PredictSpec {
    pub num_classes: usize,
    pub multinomial: bool,
    pub dim: usize,
    /// Original-scale coefficients, `sets x dim` row-major.
    #[serde(with = "f64_base64")]
    pub coefficients: Vec<f64>,
    #[serde(with = "f64_base64")]
    pub intercepts: Vec<f64>,
    pub threshold: f64,
    pub thresholds: Option<Vec<f64>>,
    pub features_col: String,
    pub raw_prediction_col: String,
    pub probability_col: String,
    pub prediction_col: String,
}

fn key<T: Serialize>(spec: &T) -> String {
    serde_json::to_string(spec).unwrap_or_default()
}

pub(crate) fn materialize_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("order_key", DataType::UInt64, false),
        Field::new("path", DataType::Utf8, true),
        Field::new("summary", DataType::Utf8, false),
    ]))
}

pub(crate) fn gradient_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("partition", DataType::UInt32, false),
        Field::new("offset", DataType::UInt64, false),
        Field::new("rows", DataType::UInt64, false),
        Field::new("loss", DataType::Float64, false),
        Field::new("gradient", DataType::Binary, false),
        Field::new("compute_seconds", DataType::Float64, false),
    ]))
}

pub(crate) fn parts_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("partition", DataType::UInt32, false),
        Field::new("path", DataType::Utf8, false),
    ]))
}

/// The leaf of a loss job: one row per chunk.
pub(crate) fn chunks_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("partition", DataType::UInt32, false),
        Field::new("path", DataType::Utf8, false),
        Field::new("offset", DataType::UInt64, false),
        Field::new("len", DataType::UInt64, false),
    ]))
}

pub(crate) fn vector_type(n: usize) -> DataType {
    DataType::FixedSizeList(vector_field(), n as i32)
}

impl PredictSpec {
    pub(crate) fn output_fields(&self) -> Vec<Field> {
        vec![
            Field::new(
                &self.raw_prediction_col,
                vector_type(self.num_classes),
                true,
            ),
            Field::new(&self.probability_col, vector_type(self.num_classes), true),
            Field::new(&self.prediction_col, DataType::Float64, true),
        ]
    }
}

// ---------------------------------------------------------------------------------------
// Logical nodes

/// The three steps; carried by both the logical node and the operator, and written as
/// is by the plugin codec.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum MlStep {
    Materialize(MaterializeSpec),
    Gradient(GradientSpec),
    Predict(PredictSpec),
    /// Fine-tuning: the images prepared once.
    FtPrepare(crate::finetune::PrepareSpec),
    /// Fine-tuning: one optimizer step or validation pass.
    FtStep(crate::finetune::StepSpec),
}

/// A training or prediction step in a logical plan.
#[derive(Debug, Clone)]
pub struct MlNode {
    input: Option<LogicalPlan>,
    step: MlStep,
    key: String,
    schema: DFSchemaRef,
}

impl PartialEq for MlNode {
    fn eq(&self, other: &Self) -> bool {
        self.key == other.key && self.input == other.input
    }
}
impl Eq for MlNode {}
impl std::hash::Hash for MlNode {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.key.hash(state);
        self.input.hash(state);
    }
}
impl PartialOrd for MlNode {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        self.key.partial_cmp(&other.key)
    }
}

impl MlNode {
    /// Checks the step against its input and builds the node.
    pub fn try_new(input: Option<LogicalPlan>, step: MlStep) -> Result<Self> {
        let schema = match (&step, &input) {
            (MlStep::Materialize(spec), Some(input)) => {
                let s = input.schema();
                let features = input_type(s, "featuresCol", &spec.features_col)?;
                check_features_type(&spec.features_col, features)?;
                let label = input_type(s, "labelCol", &spec.label_col)?;
                check_numeric_type("label", &spec.label_col, label)?;
                if let Some(w) = &spec.weight_col {
                    check_numeric_type("weight", w, input_type(s, "weightCol", w)?)?;
                }
                DFSchema::try_from(materialize_schema())?
            }
            (MlStep::Gradient(_), None) => DFSchema::try_from(gradient_schema())?,
            (MlStep::FtPrepare(spec), Some(input)) => {
                let s = input.schema();
                let images = input_type(s, "inputCol", &spec.image_col)?;
                crate::torch::infer::check_image_column(&spec.image_col, images)?;
                let label = input_type(s, "labelCol", &spec.label_col)?;
                check_numeric_type("label", &spec.label_col, label)?;
                DFSchema::try_from(crate::finetune::spec::prepare_schema())?
            }
            (MlStep::FtStep(_), None) => DFSchema::try_from(crate::finetune::spec::step_schema())?,
            (MlStep::Predict(spec), Some(input)) => {
                let s = input.schema();
                let features = input_type(s, "featuresCol", &spec.features_col)?;
                check_features_type(&spec.features_col, features)?;
                let mut fields: Vec<_> = s.iter().map(|(q, f)| (q.cloned(), f.clone())).collect();
                for f in spec.output_fields() {
                    if s.field_with_unqualified_name(f.name()).is_ok() {
                        return plan_err!(
                            "output column '{}' already exists in the input; set another name",
                            f.name()
                        );
                    }
                    fields.push((None, Arc::new(f)));
                }
                DFSchema::new_with_metadata(fields, s.metadata().clone())?
            }
            _ => return internal_err!("ML step with the wrong number of inputs"),
        };
        Ok(Self {
            key: key(&step),
            input,
            step,
            schema: Arc::new(schema),
        })
    }

    /// The step.
    pub fn step(&self) -> &MlStep {
        &self.step
    }

    /// As a logical plan.
    pub fn into_plan(self) -> LogicalPlan {
        LogicalPlan::Extension(datafusion::logical_expr::Extension {
            node: Arc::new(self),
        })
    }
}

/// Type of input column `col`, set by parameter `param`; the error names both.
pub(crate) fn input_type<'a>(schema: &'a DFSchema, param: &str, col: &str) -> Result<&'a DataType> {
    match schema.field_with_unqualified_name(col) {
        Ok(f) => Ok(f.data_type()),
        Err(_) => {
            let names: Vec<_> = schema.fields().iter().map(|f| f.name().as_str()).collect();
            plan_err!(
                "{param}: no column '{col}' in the input (columns: {})",
                names.join(", ")
            )
        }
    }
}

impl UserDefinedLogicalNodeCore for MlNode {
    fn name(&self) -> &str {
        match self.step {
            MlStep::Materialize(_) => "LrMaterialize",
            MlStep::Gradient(_) => "LrGradient",
            MlStep::Predict(_) => "LrPredict",
            MlStep::FtPrepare(_) => "FtPrepare",
            MlStep::FtStep(_) => "FtStep",
        }
    }

    fn inputs(&self) -> Vec<&LogicalPlan> {
        self.input.iter().collect()
    }

    fn schema(&self) -> &DFSchemaRef {
        &self.schema
    }

    fn expressions(&self) -> Vec<Expr> {
        vec![]
    }

    fn fmt_for_explain(&self, f: &mut fmt::Formatter) -> fmt::Result {
        match &self.step {
            MlStep::Materialize(s) => write!(f, "LrMaterialize: dir={}", s.run_dir),
            MlStep::Gradient(s) => write!(
                f,
                "LrGradient: run={}, evaluation={}, parts={}",
                s.run_id,
                s.evaluation,
                s.parts.len()
            ),
            MlStep::Predict(s) => write!(
                f,
                "LrPredict: classes={}, {} -> {}",
                s.num_classes, s.features_col, s.prediction_col
            ),
            MlStep::FtPrepare(s) => write!(f, "FtPrepare: model={}, dir={}", s.model, s.run_dir),
            MlStep::FtStep(s) => write!(
                f,
                "FtStep: run={}, step={}, parts={}",
                s.run_id,
                s.step,
                s.parts.len()
            ),
        }
    }

    fn with_exprs_and_inputs(&self, _exprs: Vec<Expr>, inputs: Vec<LogicalPlan>) -> Result<Self> {
        Self::try_new(inputs.into_iter().next(), self.step.clone())
    }
}

/// The item field of the output vectors.
pub(crate) fn vector_field() -> Arc<Field> {
    Arc::new(Field::new("item", DataType::Float64, true))
}

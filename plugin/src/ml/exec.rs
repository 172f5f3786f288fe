//! The logistic regression's distributed steps as logical nodes and physical operators:
//!
//! * [`MaterializeExec`] (unary, over the training DataFrame): checks and writes each
//!   partition once as an Arrow IPC part file in the run's work dir, caches it on the
//!   executor, and returns one row per partition with its path and [`Summary`].
//! * [`GradientExec`] (unary, over a built-in `DataSourceExec` of part paths, one part per
//!   partition so Ballista slices it per task): the loss and gradient sums of each part for
//!   the parameters carried by the plan. One such job per optimizer evaluation.
//! * [`PredictExec`] (unary): MLlib's `rawPrediction`, `probability` and `prediction`.

use std::fmt;
use std::path::Path;
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::array::{
    Array, AsArray, BinaryArray, FixedSizeListBuilder, Float64Array, Float64Builder, RecordBatch,
    StringArray, UInt32Array, UInt64Array,
};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::catalog::Session;
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::common::{
    DFSchema, DFSchemaRef, Result, exec_datafusion_err, internal_err, plan_err,
};
use datafusion::datasource::memory::MemorySourceConfig;
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::logical_expr::physical_planning_context::PhysicalPlanningContext;
use datafusion::logical_expr::{
    Expr, LogicalPlan, UserDefinedLogicalNode, UserDefinedLogicalNodeCore,
};
use datafusion::physical_expr::{EquivalenceProperties, Partitioning, PhysicalExpr};
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, ExecutionPlanProperties, PlanProperties,
};
use datafusion::physical_planner::{ExtensionPlanner, PhysicalPlanner};
use futures::{StreamExt, TryStreamExt};
use serde::{Deserialize, Serialize};

use super::data::{
    Columns, PartTensors, Rows, cache_get_or_load, cache_put, check_features_type,
    check_numeric_type, extend_f64, vector_rows,
};
use super::loss::{Layout, f64_base64, partial};
use super::summary::Summary;

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
    /// Weight of each class in the loss (`classWeight`), by class index.
    #[serde(default)]
    pub class_weights: Option<Vec<f64>>,
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

fn materialize_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("order_key", DataType::UInt64, false),
        Field::new("path", DataType::Utf8, true),
        Field::new("summary", DataType::Utf8, false),
    ]))
}

fn gradient_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("partition", DataType::UInt32, false),
        Field::new("rows", DataType::UInt64, false),
        Field::new("loss", DataType::Float64, false),
        Field::new("gradient", DataType::Binary, false),
        Field::new("compute_seconds", DataType::Float64, false),
    ]))
}

fn parts_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("partition", DataType::UInt32, false),
        Field::new("path", DataType::Utf8, false),
    ]))
}

fn vector_type(n: usize) -> DataType {
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
        }
    }

    fn with_exprs_and_inputs(&self, _exprs: Vec<Expr>, inputs: Vec<LogicalPlan>) -> Result<Self> {
        Self::try_new(inputs.into_iter().next(), self.step.clone())
    }
}

/// Plans [`MlNode`]s.
#[derive(Debug, Default)]
pub struct MlExtensionPlanner;

#[async_trait]
impl ExtensionPlanner for MlExtensionPlanner {
    async fn plan_extension(
        &self,
        _planner: &dyn PhysicalPlanner,
        node: &dyn UserDefinedLogicalNode,
        _logical_inputs: &[&LogicalPlan],
        physical_inputs: &[Arc<dyn ExecutionPlan>],
        session: &dyn Session,
        _planning_ctx: &PhysicalPlanningContext,
    ) -> Result<Option<Arc<dyn ExecutionPlan>>> {
        let Some(node) = node.as_any().downcast_ref::<MlNode>() else {
            return Ok(None);
        };
        let plan: Arc<dyn ExecutionPlan> = match &node.step {
            MlStep::Materialize(_) | MlStep::Predict(_) => Arc::new(MlExec::try_new(
                physical_inputs[0].clone(),
                node.step.clone(),
            )?),
            MlStep::Gradient(s) => {
                // Parts grouped into at most `target_partitions` tasks (inputs with many
                // small partitions would otherwise cost a task per part in every job),
                // one row per part, in a built-in leaf that Ballista slices.
                let schema = parts_schema();
                let tasks = session.config().target_partitions().max(1);
                let per_task = s.parts.len().div_ceil(tasks).max(1);
                let partitions = s
                    .parts
                    .chunks(per_task)
                    .enumerate()
                    .map(|(t, paths)| {
                        let first = (t * per_task) as u32;
                        Ok(vec![RecordBatch::try_new(
                            schema.clone(),
                            vec![
                                Arc::new(UInt32Array::from_iter_values(
                                    (0..paths.len() as u32).map(|i| first + i),
                                )),
                                Arc::new(StringArray::from_iter_values(paths)),
                            ],
                        )?])
                    })
                    .collect::<Result<Vec<_>>>()?;
                let leaf = MemorySourceConfig::try_new_exec(&partitions, schema, None)?;
                Arc::new(MlExec::try_new(leaf, node.step.clone())?)
            }
        };
        Ok(Some(plan))
    }
}

// ---------------------------------------------------------------------------------------
// Physical operator

/// The unary operator of every step (see the module docs).
#[derive(Debug, Clone)]
pub struct MlExec {
    input: Arc<dyn ExecutionPlan>,
    step: MlStep,
    schema: SchemaRef,
    properties: Arc<PlanProperties>,
}

impl MlExec {
    /// Builds the operator over `input`.
    pub fn try_new(input: Arc<dyn ExecutionPlan>, step: MlStep) -> Result<Self> {
        let schema = match &step {
            MlStep::Materialize(_) => materialize_schema(),
            MlStep::Gradient(_) => gradient_schema(),
            MlStep::Predict(spec) => {
                let in_schema = input.schema();
                in_schema.index_of(&spec.features_col)?;
                let mut fields: Vec<_> = in_schema.fields().iter().cloned().collect();
                fields.extend(spec.output_fields().into_iter().map(Arc::new));
                Arc::new(Schema::new_with_metadata(
                    fields,
                    in_schema.metadata().clone(),
                ))
            }
        };
        let properties = Arc::new(PlanProperties::new(
            EquivalenceProperties::new(schema.clone()),
            Partitioning::UnknownPartitioning(input.output_partitioning().partition_count()),
            EmissionType::Incremental,
            Boundedness::Bounded,
        ));
        Ok(Self {
            input,
            step,
            schema,
            properties,
        })
    }

    /// The step.
    pub fn step(&self) -> &MlStep {
        &self.step
    }
}

impl DisplayAs for MlExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        match &self.step {
            MlStep::Materialize(s) => write!(f, "LrMaterializeExec: dir={}", s.run_dir),
            MlStep::Gradient(s) => write!(
                f,
                "LrGradientExec: run={}, evaluation={}",
                s.run_id, s.evaluation
            ),
            MlStep::Predict(s) => write!(f, "LrPredictExec: classes={}", s.num_classes),
        }
    }
}

impl ExecutionPlan for MlExec {
    fn name(&self) -> &str {
        "MlExec"
    }

    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.properties
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![&self.input]
    }

    fn apply_expressions(
        &self,
        _f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> Result<TreeNodeRecursion>,
    ) -> Result<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }

    fn with_new_children(
        self: Arc<Self>,
        mut children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        if children.len() != 1 {
            return internal_err!("MlExec takes one child");
        }
        Ok(Arc::new(Self::try_new(
            children.swap_remove(0),
            self.step.clone(),
        )?))
    }

    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> Result<SendableRecordBatchStream> {
        let input = self.input.execute(partition, context)?;
        let schema = self.schema.clone();
        match &self.step {
            MlStep::Materialize(spec) => {
                let spec = spec.clone();
                let out = schema.clone();
                let fut = async move {
                    let batches: Vec<RecordBatch> = input.try_collect().await?;
                    tokio::task::spawn_blocking(move || materialize(partition, &spec, batches, out))
                        .await
                        .map_err(|e| exec_datafusion_err!("materialize task failed: {e}"))?
                };
                Ok(Box::pin(RecordBatchStreamAdapter::new(
                    schema,
                    futures::stream::once(fut),
                )))
            }
            MlStep::Gradient(spec) => {
                let spec = Arc::new(spec.clone());
                let out = schema.clone();
                let stream = input.and_then(move |batch| {
                    let (spec, out) = (spec.clone(), out.clone());
                    async move {
                        tokio::task::spawn_blocking(move || gradient(&spec, &batch, out))
                            .await
                            .map_err(|e| exec_datafusion_err!("gradient task failed: {e}"))?
                    }
                });
                Ok(Box::pin(RecordBatchStreamAdapter::new(schema, stream)))
            }
            MlStep::Predict(spec) => {
                let spec = Arc::new(spec.clone());
                let out = schema.clone();
                let stream = input
                    .map(move |batch| {
                        let (spec, out) = (spec.clone(), out.clone());
                        async move {
                            let batch = batch?;
                            tokio::task::spawn_blocking(move || predict(&spec, &batch, out))
                                .await
                                .map_err(|e| exec_datafusion_err!("predict task failed: {e}"))?
                        }
                    })
                    .buffered(2);
                Ok(Box::pin(RecordBatchStreamAdapter::new(schema, stream)))
            }
        }
    }
}

fn materialize(
    partition: usize,
    spec: &MaterializeSpec,
    batches: Vec<RecordBatch>,
    schema: SchemaRef,
) -> Result<RecordBatch> {
    let started = std::time::Instant::now();
    let mut rows = Rows::default();
    let cols = Columns {
        features: &spec.features_col,
        label: &spec.label_col,
        weight: spec.weight_col.as_deref(),
    };
    let where_ = format!("input partition {partition}");
    for b in &batches {
        rows.push_batch(b, cols, &where_)?;
    }
    drop(batches);
    let summary = Summary::of(&rows);
    let path = if rows.is_empty() {
        None
    } else {
        crate::access::check_work_path(Path::new(&spec.run_dir))
            .map_err(|e| exec_datafusion_err!("{e}"))?;
        std::fs::create_dir_all(&spec.run_dir).map_err(|e| {
            exec_datafusion_err!("cannot create the work dir {}: {e}", spec.run_dir)
        })?;
        // The partition index is local to the task's slice of the input (Ballista
        // renumbers sliced leaves), so it cannot name the file: a random name can.
        let path =
            Path::new(&spec.run_dir).join(format!("part-{:016x}.arrow", rand::random::<u64>()));
        rows.write_ipc(&path)?;
        let path = path.to_string_lossy().into_owned();
        cache_put(&path, PartTensors::from_rows(&rows));
        Some(path)
    };
    tracing::info!(
        target: LOG_TARGET,
        partition,
        rows = rows.len(),
        ms = started.elapsed().as_millis() as u64,
        "training partition materialized"
    );
    let summary = serde_json::to_string(&summary)
        .map_err(|e| exec_datafusion_err!("cannot encode the summary: {e}"))?;
    Ok(RecordBatch::try_new(
        schema,
        vec![
            Arc::new(UInt64Array::from(vec![order_key(&rows)])),
            Arc::new(StringArray::from(vec![path])),
            Arc::new(StringArray::from(vec![summary])),
        ],
    )?)
}

/// A key that orders parts the same way whatever task layout produced them (the driver
/// sums partial results in this order): a hash of the row count and the first row.
fn order_key(rows: &Rows) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    rows.len().hash(&mut h);
    for v in rows.x.iter().take(rows.dim).chain(rows.y.first()) {
        v.to_bits().hash(&mut h);
    }
    h.finish()
}

fn gradient(spec: &GradientSpec, batch: &RecordBatch, schema: SchemaRef) -> Result<RecordBatch> {
    let parts = batch
        .column(0)
        .as_primitive::<datafusion::arrow::datatypes::UInt32Type>();
    let paths = batch.column(1).as_string::<i32>();
    let (mut ids, mut rows, mut losses, mut grads, mut secs) =
        (vec![], vec![], vec![], vec![], vec![]);
    for i in 0..batch.num_rows() {
        let started = std::time::Instant::now();
        let part = parts.value(i);
        // Parts are only listed when they hold rows: the path is never null.
        let (tensors, hit) = cache_get_or_load(paths.value(i))?;
        let tensors = tensors.lock().unwrap_or_else(|e| e.into_inner());
        let p = partial(
            &tensors,
            &spec.layout,
            &spec.inv_std,
            &spec.params,
            spec.class_weights.as_deref(),
        )?;
        tracing::info!(
            target: LOG_TARGET,
            run = %spec.run_id,
            evaluation = spec.evaluation,
            part,
            rows = tensors.rows,
            cache_hit = hit,
            ms = started.elapsed().as_millis() as u64,
            "partial gradient"
        );
        ids.push(part);
        rows.push(tensors.rows as u64);
        losses.push(p.loss);
        grads.push(
            p.grad
                .iter()
                .flat_map(|v| v.to_le_bytes())
                .collect::<Vec<u8>>(),
        );
        secs.push(started.elapsed().as_secs_f64());
    }
    Ok(RecordBatch::try_new(
        schema,
        vec![
            Arc::new(UInt32Array::from(ids)),
            Arc::new(UInt64Array::from(rows)),
            Arc::new(Float64Array::from(losses)),
            Arc::new(BinaryArray::from_iter_values(grads.iter())),
            Arc::new(Float64Array::from(secs)),
        ],
    )?)
}

/// MLlib's outputs for one row of margins.
fn outputs(spec: &PredictSpec, margins: &[f64]) -> (Vec<f64>, Vec<f64>, f64) {
    if !spec.multinomial {
        let m = margins[0];
        let p1 = 1.0 / (1.0 + (-m).exp());
        let prediction = if p1 > spec.threshold { 1.0 } else { 0.0 };
        return (vec![-m, m], vec![1.0 - p1, p1], prediction);
    }
    let max = margins.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    let exps: Vec<f64> = margins.iter().map(|m| (m - max).exp()).collect();
    let sum: f64 = exps.iter().sum();
    let probs: Vec<f64> = exps.iter().map(|e| e / sum).collect();
    let score = |i: usize| match &spec.thresholds {
        Some(t) if t[i] == 0.0 => f64::INFINITY,
        Some(t) => probs[i] / t[i],
        None => margins[i],
    };
    let mut best = 0;
    for i in 1..margins.len() {
        if score(i) > score(best) {
            best = i;
        }
    }
    (margins.to_vec(), probs, best as f64)
}

pub(crate) fn predict(
    spec: &PredictSpec,
    batch: &RecordBatch,
    schema: SchemaRef,
) -> Result<RecordBatch> {
    let idx = batch.schema().index_of(&spec.features_col)?;
    let col = batch.column(idx);
    let k = spec.num_classes;
    let sets = if spec.multinomial { k } else { 1 };
    let d = spec.dim;
    let mut raw =
        FixedSizeListBuilder::new(Float64Builder::new(), k as i32).with_field(vector_field());
    let mut prob =
        FixedSizeListBuilder::new(Float64Builder::new(), k as i32).with_field(vector_field());
    let mut pred = Float64Builder::new();
    let (values, offsets) = vector_rows(col, &spec.features_col)?;
    let mut x = Vec::with_capacity(d);
    let mut margins = vec![0.0f64; sets];
    for (row, &(start, len)) in offsets.iter().enumerate() {
        if col.is_null(row) {
            for b in [&mut raw, &mut prob] {
                b.values().append_nulls(k);
                b.append(false);
            }
            pred.append_null();
            continue;
        }
        if len != d {
            return Err(exec_datafusion_err!(
                "features column '{}' has a vector of length {len} at row {row}; the model expects {d}",
                spec.features_col
            ));
        }
        x.clear();
        extend_f64(values, start, len, &mut x, &spec.features_col)?;
        for (c, m) in margins.iter_mut().enumerate() {
            let w = &spec.coefficients[c * d..(c + 1) * d];
            *m = spec.intercepts[c] + w.iter().zip(&x).map(|(w, x)| w * x).sum::<f64>();
        }
        let (r, p, y) = outputs(spec, &margins);
        raw.values().append_slice(&r);
        raw.append(true);
        prob.values().append_slice(&p);
        prob.append(true);
        pred.append_value(y);
    }
    let mut columns = batch.columns().to_vec();
    columns.push(Arc::new(raw.finish()));
    columns.push(Arc::new(prob.finish()));
    columns.push(Arc::new(pred.finish()));
    Ok(RecordBatch::try_new(schema, columns)?)
}

fn vector_field() -> Arc<Field> {
    Arc::new(Field::new("item", DataType::Float64, true))
}

//! `TorchInferenceExec` (physical operator), `TorchInferenceNode` (logical node) and the
//! extension planner that turns one into the other on the scheduler.

use std::cmp::Ordering;
use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::{Schema, SchemaRef};
use datafusion::catalog::Session;
use datafusion::common::runtime::SpawnedTask;
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::common::{DFSchema, DFSchemaRef, Result, exec_datafusion_err, internal_err};
use datafusion::execution::context::QueryPlanner;
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::logical_expr::physical_planning_context::PhysicalPlanningContext;
use datafusion::logical_expr::{
    Expr, LogicalPlan, UserDefinedLogicalNode, UserDefinedLogicalNodeCore,
};
use datafusion::physical_expr::{EquivalenceProperties, PhysicalExpr};
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::metrics::{
    BaselineMetrics, Count, ExecutionPlanMetricsSet, MetricBuilder, MetricsSet, Time,
};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, ExecutionPlanProperties, PlanProperties,
};
use datafusion::physical_planner::{DefaultPhysicalPlanner, ExtensionPlanner, PhysicalPlanner};
use futures::StreamExt;

use super::infer::{Runner, check_image_column};
use super::spec::TorchSpec;
use crate::config::DlpOptions;

// ---------------------------------------------------------------------------------------
// Logical node

/// A torch inference step in a logical plan: the input's columns plus `spec.output_col`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TorchInferenceNode {
    input: LogicalPlan,
    spec: TorchSpec,
    schema: DFSchemaRef,
}

impl TorchInferenceNode {
    /// Appends the step to `input`, checking the image column.
    pub fn try_new(input: LogicalPlan, spec: TorchSpec) -> Result<Self> {
        let in_schema = input.schema();
        let image_type = crate::ml::node::input_type(in_schema, "inputCol", &spec.input_col)?;
        check_image_column(&spec.input_col, image_type)?;
        if in_schema
            .field_with_unqualified_name(&spec.output_col)
            .is_ok()
        {
            return datafusion::common::plan_err!(
                "output column '{}' already exists; choose another outputCol",
                spec.output_col
            );
        }
        let mut fields: Vec<_> = in_schema
            .iter()
            .map(|(q, f)| (q.cloned(), f.clone()))
            .collect();
        fields.push((None, Arc::new(spec.output_field())));
        let schema = Arc::new(DFSchema::new_with_metadata(
            fields,
            in_schema.metadata().clone(),
        )?);
        Ok(Self {
            input,
            spec,
            schema,
        })
    }

    /// The step.
    pub fn spec(&self) -> &TorchSpec {
        &self.spec
    }
}

impl PartialOrd for TorchInferenceNode {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        self.spec.partial_cmp(&other.spec)
    }
}

impl UserDefinedLogicalNodeCore for TorchInferenceNode {
    fn name(&self) -> &str {
        "TorchInference"
    }

    fn inputs(&self) -> Vec<&LogicalPlan> {
        vec![&self.input]
    }

    fn schema(&self) -> &DFSchemaRef {
        &self.schema
    }

    fn expressions(&self) -> Vec<Expr> {
        vec![]
    }

    fn fmt_for_explain(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(
            f,
            "TorchInference: model={}, {:?}, {} -> {}",
            self.spec.model, self.spec.task, self.spec.input_col, self.spec.output_col
        )
    }

    fn with_exprs_and_inputs(
        &self,
        _exprs: Vec<Expr>,
        mut inputs: Vec<LogicalPlan>,
    ) -> Result<Self> {
        if inputs.len() != 1 {
            return internal_err!("TorchInference takes one input");
        }
        Self::try_new(inputs.swap_remove(0), self.spec.clone())
    }
}

// ---------------------------------------------------------------------------------------
// Planner

/// Plans [`TorchInferenceNode`] into [`TorchInferenceExec`].
#[derive(Debug, Default)]
pub struct TorchExtensionPlanner;

#[async_trait]
impl ExtensionPlanner for TorchExtensionPlanner {
    async fn plan_extension(
        &self,
        _planner: &dyn PhysicalPlanner,
        node: &dyn UserDefinedLogicalNode,
        _logical_inputs: &[&LogicalPlan],
        physical_inputs: &[Arc<dyn ExecutionPlan>],
        session: &dyn Session,
        _planning_ctx: &PhysicalPlanningContext,
    ) -> Result<Option<Arc<dyn ExecutionPlan>>> {
        let Some(node) = node.as_any().downcast_ref::<TorchInferenceNode>() else {
            return Ok(None);
        };
        // What the step leaves open (batch size, device) comes from the session's `dlp.*`
        // settings, fixed here so that the plan the executors get says it.
        let mut spec = node.spec.clone();
        DlpOptions::of(session.config_options()).apply_to(&mut spec);
        Ok(Some(Arc::new(TorchInferenceExec::try_new(
            physical_inputs[0].clone(),
            spec,
        )?)))
    }
}

/// The plugin's query planner: DataFusion's, plus the plugin's extension planners.
#[derive(Debug, Default)]
pub struct PluginQueryPlanner;

#[async_trait]
impl QueryPlanner for PluginQueryPlanner {
    async fn create_physical_plan(
        &self,
        logical_plan: &LogicalPlan,
        session_state: &dyn Session,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        // Where the plan writes, checked against the writable roots (processes with roots).
        crate::access::check_plan_writes(logical_plan)?;
        let plan = DefaultPhysicalPlanner::with_extension_planners(vec![
            Arc::new(TorchExtensionPlanner),
            Arc::new(crate::ml::MlExtensionPlanner),
        ])
        .create_physical_plan(logical_plan, session_state)
        .await?;
        if DlpOptions::of(session_state.config_options()).exact_decode {
            return Ok(plan);
        }
        super::scaled_decode::decode_for_models(plan)
    }
}

// ---------------------------------------------------------------------------------------
// Physical operator

/// Runs a TorchScript model over an image column, batch by batch: preprocessing of the
/// next batch (blocking thread) overlaps inference of the current one (another blocking
/// thread); the model is loaded once per executor process and device.
#[derive(Debug, Clone)]
pub struct TorchInferenceExec {
    input: Arc<dyn ExecutionPlan>,
    spec: TorchSpec,
    input_index: usize,
    schema: SchemaRef,
    properties: Arc<PlanProperties>,
    metrics: ExecutionPlanMetricsSet,
}

impl TorchInferenceExec {
    /// Creates the operator over `input`.
    pub fn try_new(input: Arc<dyn ExecutionPlan>, spec: TorchSpec) -> Result<Self> {
        let in_schema = input.schema();
        let input_index = in_schema.index_of(&spec.input_col)?;
        check_image_column(&spec.input_col, in_schema.field(input_index).data_type())?;
        let mut fields: Vec<_> = in_schema.fields().iter().cloned().collect();
        fields.push(Arc::new(spec.output_field()));
        let schema = Arc::new(Schema::new_with_metadata(
            fields,
            in_schema.metadata().clone(),
        ));
        let properties = Arc::new(PlanProperties::new(
            EquivalenceProperties::new(schema.clone()),
            input.output_partitioning().clone(),
            EmissionType::Incremental,
            Boundedness::Bounded,
        ));
        Ok(Self {
            input,
            spec,
            input_index,
            schema,
            properties,
            metrics: ExecutionPlanMetricsSet::new(),
        })
    }

    /// The step.
    pub fn spec(&self) -> &TorchSpec {
        &self.spec
    }

    /// Index of the image column in the input.
    pub fn input_index(&self) -> usize {
        self.input_index
    }
}

impl DisplayAs for TorchInferenceExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        write!(
            f,
            "TorchInferenceExec: model={}, task={:?}, batch_size={}, {} -> {}",
            self.spec.model,
            self.spec.task,
            match self.spec.batch_size {
                0 => "auto".to_string(),
                n => n.to_string(),
            },
            self.spec.input_col,
            self.spec.output_col
        )
    }
}

/// Per-partition metrics of [`TorchInferenceExec`].
#[derive(Debug)]
struct InferenceMetrics {
    baseline: BaselineMetrics,
    images: Count,
    null_outputs: Count,
    batches: Count,
    preprocess_time: Time,
    inference_time: Time,
}

impl ExecutionPlan for TorchInferenceExec {
    fn name(&self) -> &str {
        "TorchInferenceExec"
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
            return internal_err!("TorchInferenceExec takes one child");
        }
        Ok(Arc::new(Self::try_new(
            children.swap_remove(0),
            self.spec.clone(),
        )?))
    }

    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> Result<SendableRecordBatchStream> {
        let mut spec = self.spec.clone();
        // A plan made without the planner (by hand, or decoded from an older client) still
        // gets the session's settings.
        DlpOptions::of(context.session_config().options()).apply_to(&mut spec);
        // The runner fills a batch size left to the executor by its device, and refuses one
        // above the executor's ceiling before anything is loaded or formed.
        let runner = Arc::new(Runner::new(spec)?);
        let spec = runner.spec();
        let batch_size = spec.batch_size.max(1);
        let input = self.input.execute(partition, context)?;
        let m = &self.metrics;
        let metrics = Arc::new(InferenceMetrics {
            baseline: BaselineMetrics::new(m, partition),
            images: MetricBuilder::new(m).counter("images", partition),
            null_outputs: MetricBuilder::new(m).counter("null_outputs", partition),
            batches: MetricBuilder::new(m).counter("inference_batches", partition),
            preprocess_time: MetricBuilder::new(m).subset_time("preprocess_time", partition),
            inference_time: MetricBuilder::new(m).subset_time("inference_time", partition),
        });
        MetricBuilder::new(m)
            .gauge("batch_size", partition)
            .set(batch_size);
        let schema = self.schema.clone();
        let idx = self.input_index;
        let chunks = crate::batches::rechunk(input, batch_size);
        let (m1, r1) = (metrics.clone(), runner.clone());
        let prepared = chunks
            .map(move |batch| {
                let (metrics, runner) = (m1.clone(), r1.clone());
                async move {
                    let batch = batch?;
                    tokio::task::spawn_blocking(move || {
                        let _t = metrics.preprocess_time.timer();
                        let p = runner.prepare(batch.column(idx).as_ref())?;
                        Ok::<_, datafusion::error::DataFusionError>((batch, p))
                    })
                    .await
                    .map_err(|e| exec_datafusion_err!("preprocess task failed: {e}"))?
                }
            })
            // Preprocess up to two batches ahead of the model: bounded memory, overlap.
            .buffered(2);
        // Driven by a task of its own, so preprocessing (and the decoding upstream of it)
        // goes on while the model runs a batch: a stream pulled only between forward passes
        // left the model waiting for batches that could have been ready.
        let prepared = crate::batches::drive_ahead(prepared, 2, SpawnedTask::spawn);
        let out_schema = schema.clone();
        let outputs = prepared
            .map(move |item| {
                let (metrics, runner, schema) =
                    (metrics.clone(), runner.clone(), out_schema.clone());
                async move {
                    let (batch, prepared) = item?;
                    tokio::task::spawn_blocking(move || {
                        let timer = metrics.inference_time.timer();
                        let out = runner.run(&prepared)?;
                        timer.done();
                        metrics.images.add(prepared.valid.len());
                        metrics
                            .null_outputs
                            .add(prepared.rows - prepared.valid.len());
                        metrics.batches.add(1);
                        tracing::debug!(
                            target: "dlp_plugin::torch",
                            model = %runner.spec().model,
                            images = prepared.valid.len(),
                            "inference batch done"
                        );
                        let mut columns = batch.columns().to_vec();
                        columns.push(out);
                        let b = RecordBatch::try_new(schema, columns)?;
                        metrics.baseline.record_output(b.num_rows());
                        Ok(b)
                    })
                    .await
                    .map_err(|e| exec_datafusion_err!("inference task failed: {e}"))?
                }
            })
            .buffered(1);
        Ok(Box::pin(RecordBatchStreamAdapter::new(schema, outputs)))
    }

    fn metrics(&self) -> Option<MetricsSet> {
        Some(self.metrics.clone_inner())
    }
}

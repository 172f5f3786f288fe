//! The one operator shell of the logistic regression's steps: [`LrExec<S>`] runs the step
//! `S` over its input, partition by partition, with DataFusion metrics (input and output
//! rows, feature bytes, compute time). Each step is its own operator type and file:
//! [`MaterializeExec`](super::materialize::MaterializeExec),
//! [`GradientExec`](super::gradient::GradientExec),
//! [`PredictExec`](super::predict::PredictExec).

use std::fmt;
use std::sync::Arc;

use datafusion::arrow::datatypes::SchemaRef;
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::common::{Result, internal_err};
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::physical_expr::{EquivalenceProperties, Partitioning, PhysicalExpr};
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::metrics::{
    BaselineMetrics, Count, ExecutionPlanMetricsSet, MetricBuilder, MetricsSet,
};
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, ExecutionPlanProperties, PlanProperties,
};

/// One step of the logistic regression, as an operator runs it.
pub trait LrStep: fmt::Debug + Clone + Send + Sync + 'static {
    /// The operator's name.
    const NAME: &'static str;
    /// The output schema over `input`.
    fn output_schema(&self, input: &SchemaRef) -> Result<SchemaRef>;
    /// EXPLAIN's line after the name.
    fn describe(&self, f: &mut fmt::Formatter) -> fmt::Result;
    /// Runs over one partition of the input.
    fn run(
        &self,
        partition: usize,
        input: SendableRecordBatchStream,
        schema: SchemaRef,
        metrics: Arc<StepMetrics>,
    ) -> Result<SendableRecordBatchStream>;
}

/// Per-partition metrics of a step.
#[derive(Debug)]
pub struct StepMetrics {
    /// Output rows and compute time.
    pub baseline: BaselineMetrics,
    /// Training or prediction rows read.
    pub input_rows: Count,
    /// Bytes of (f64) features processed.
    pub feature_bytes: Count,
}

impl StepMetrics {
    /// The metrics of `partition` in `set`.
    pub fn new(set: &ExecutionPlanMetricsSet, partition: usize) -> Self {
        Self {
            baseline: BaselineMetrics::new(set, partition),
            input_rows: MetricBuilder::new(set).counter("input_rows", partition),
            feature_bytes: MetricBuilder::new(set).counter("feature_bytes", partition),
        }
    }
}

/// The operator of step `S` (see the module docs).
#[derive(Debug, Clone)]
pub struct LrExec<S: LrStep> {
    input: Arc<dyn ExecutionPlan>,
    spec: S,
    schema: SchemaRef,
    properties: Arc<PlanProperties>,
    metrics: ExecutionPlanMetricsSet,
}

impl<S: LrStep> LrExec<S> {
    /// Builds the operator over `input`.
    pub fn try_new(input: Arc<dyn ExecutionPlan>, spec: S) -> Result<Self> {
        let schema = spec.output_schema(&input.schema())?;
        let properties = Arc::new(PlanProperties::new(
            EquivalenceProperties::new(schema.clone()),
            Partitioning::UnknownPartitioning(input.output_partitioning().partition_count()),
            EmissionType::Incremental,
            Boundedness::Bounded,
        ));
        Ok(Self {
            input,
            spec,
            schema,
            properties,
            metrics: ExecutionPlanMetricsSet::new(),
        })
    }

    /// The step.
    pub fn spec(&self) -> &S {
        &self.spec
    }
}

impl<S: LrStep> DisplayAs for LrExec<S> {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "{}: ", S::NAME)?;
        self.spec.describe(f)
    }
}

impl<S: LrStep> ExecutionPlan for LrExec<S> {
    fn name(&self) -> &str {
        S::NAME
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
            return internal_err!("{} takes one child", S::NAME);
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
        let input = self.input.execute(partition, context)?;
        let metrics = Arc::new(StepMetrics::new(&self.metrics, partition));
        self.spec
            .run(partition, input, self.schema.clone(), metrics)
    }

    fn metrics(&self) -> Option<MetricsSet> {
        Some(self.metrics.clone_inner())
    }
}

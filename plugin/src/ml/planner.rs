//! The logistic regression's query planner: [`MlNode`]s become their operators, and the
//! codec's two directions between an operator and its [`MlStep`].

use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::array::{RecordBatch, StringArray, UInt32Array, UInt64Array};
use datafusion::catalog::Session;
use datafusion::common::Result;
use datafusion::datasource::memory::MemorySourceConfig;
use datafusion::logical_expr::physical_planning_context::PhysicalPlanningContext;
use datafusion::logical_expr::{LogicalPlan, UserDefinedLogicalNode};
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_planner::{ExtensionPlanner, PhysicalPlanner};

use super::gradient::GradientExec;
use super::materialize::MaterializeExec;
use super::node::{Chunk, MlNode, MlStep, chunks_schema, parts_schema};
use super::predict::PredictExec;
use crate::finetune::{FtPrepareExec, FtStepExec};

/// The operator of `step` over `input`.
pub fn operator(input: Arc<dyn ExecutionPlan>, step: MlStep) -> Result<Arc<dyn ExecutionPlan>> {
    Ok(match step {
        MlStep::Materialize(s) => Arc::new(MaterializeExec::try_new(input, s)?),
        MlStep::Gradient(s) => Arc::new(GradientExec::try_new(input, s)?),
        MlStep::Predict(s) => Arc::new(PredictExec::try_new(input, s)?),
        MlStep::FtPrepare(s) => Arc::new(FtPrepareExec::try_new(input, s)?),
        MlStep::FtStep(s) => Arc::new(FtStepExec::try_new(input, s)?),
    })
}

/// The step of a logistic regression operator (`None` for any other plan).
pub fn step_of(plan: &dyn ExecutionPlan) -> Option<MlStep> {
    if let Some(e) = plan.downcast_ref::<MaterializeExec>() {
        return Some(MlStep::Materialize(e.spec().clone()));
    }
    if let Some(e) = plan.downcast_ref::<GradientExec>() {
        return Some(MlStep::Gradient(e.spec().clone()));
    }
    if let Some(e) = plan.downcast_ref::<FtPrepareExec>() {
        return Some(MlStep::FtPrepare(e.spec().clone()));
    }
    if let Some(e) = plan.downcast_ref::<FtStepExec>() {
        return Some(MlStep::FtStep(e.spec().clone()));
    }
    plan.downcast_ref::<PredictExec>()
        .map(|e| MlStep::Predict(e.spec().clone()))
}

/// Rows of a fine-tuning step per task.
pub const FT_ROWS_PER_TASK: usize = 16;

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
        let plan: Arc<dyn ExecutionPlan> = match node.step() {
            MlStep::Materialize(_) | MlStep::Predict(_) | MlStep::FtPrepare(_) => {
                operator(physical_inputs[0].clone(), node.step().clone())?
            }
            MlStep::Gradient(s) => {
                // The chunks in one task per slot of the cluster (one wave: Ballista runs up
                // to an executor's vcores of partitions side by side in one task), split by
                // rows, contiguous, in a built-in leaf that Ballista slices.
                let chunks = s.chunks();
                let tasks = super::slots::tasks_for(
                    chunks.len(),
                    session.config().target_partitions().max(1),
                );
                let total: u64 = chunks.iter().map(|c| c.len).sum();
                let mut groups: Vec<Vec<Chunk>> = vec![vec![]; tasks];
                let mut before = 0u64;
                for c in chunks {
                    // The task whose share of the rows this chunk's middle row falls in.
                    let middle = before + c.len / 2;
                    let t = ((middle as u128 * tasks as u128) / total.max(1) as u128) as usize;
                    groups[t.min(tasks - 1)].push(c);
                    before += c.len;
                }
                groups.retain(|g| !g.is_empty());
                let schema = chunks_schema();
                let partitions = groups
                    .iter()
                    .map(|g| {
                        Ok(vec![RecordBatch::try_new(
                            schema.clone(),
                            vec![
                                Arc::new(UInt32Array::from_iter_values(g.iter().map(|c| c.part))),
                                Arc::new(StringArray::from_iter_values(
                                    g.iter().map(|c| &s.parts[c.part as usize]),
                                )),
                                Arc::new(UInt64Array::from_iter_values(g.iter().map(|c| c.offset))),
                                Arc::new(UInt64Array::from_iter_values(g.iter().map(|c| c.len))),
                            ],
                        )?])
                    })
                    .collect::<Result<Vec<_>>>()?;
                let leaf = MemorySourceConfig::try_new_exec(&partitions, schema, None)?;
                operator(leaf, node.step().clone())?
            }
            MlStep::FtStep(s) => {
                // The parts holding rows of the step, grouped into tasks of about
                // FT_ROWS_PER_TASK rows (at most `target_partitions` tasks): a step's batch
                // is small, and every task costs a scheduling round and a gradient to send.
                let used: Vec<(u32, &String, usize)> = s
                    .parts
                    .iter()
                    .enumerate()
                    .filter_map(|(i, p)| {
                        let n = s.rows.get(i).map_or(0, Vec::len);
                        (n > 0).then_some((i as u32, p, n))
                    })
                    .collect();
                let total: usize = used.iter().map(|u| u.2).sum();
                let tasks = total
                    .div_ceil(FT_ROWS_PER_TASK)
                    .clamp(1, session.config().target_partitions().max(1));
                let per_task = total.div_ceil(tasks).max(1);
                let mut groups: Vec<Vec<(u32, &String)>> = vec![vec![]];
                let mut in_group = 0;
                for (i, p, n) in used {
                    if in_group >= per_task {
                        groups.push(vec![]);
                        in_group = 0;
                    }
                    groups.last_mut().expect("one group").push((i, p));
                    in_group += n;
                }
                let schema = parts_schema();
                let partitions = groups
                    .iter()
                    .map(|chunk| {
                        Ok(vec![RecordBatch::try_new(
                            schema.clone(),
                            vec![
                                Arc::new(UInt32Array::from_iter_values(chunk.iter().map(|c| c.0))),
                                Arc::new(StringArray::from_iter_values(chunk.iter().map(|c| c.1))),
                            ],
                        )?])
                    })
                    .collect::<Result<Vec<_>>>()?;
                let leaf = MemorySourceConfig::try_new_exec(&partitions, schema, None)?;
                operator(leaf, node.step().clone())?
            }
        };
        Ok(Some(plan))
    }
}

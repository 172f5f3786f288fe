//! Which physical plans run libtorch. The scheduler's device-aware placement asks this of
//! every stage: stages that answer yes go to GPU executors when any are registered.

use std::sync::Arc;

use datafusion::common::tree_node::{TreeNode, TreeNodeRecursion};
use datafusion::physical_expr::ScalarFunctionExpr;
use datafusion::physical_plan::filter::FilterExec;
use datafusion::physical_plan::projection::ProjectionExec;
use datafusion::physical_plan::{ExecutionPlan, PhysicalExpr};

use super::TorchInferenceExec;
use crate::sql::runs_model;

/// True when `plan` (one stage's plan, or any sub-plan) runs a torch model: a
/// [`TorchInferenceExec`] (featurizer, predictor, user model, file-URI transformer), a
/// fine-tuning step ([`crate::finetune::FtStepExec`], [`crate::finetune::FtPrepareExec`]), or a
/// projection or filter calling a model SQL function ([`crate::sql::runs_model`]).
pub fn plan_runs_torch(plan: &Arc<dyn ExecutionPlan>) -> bool {
    let node = plan.as_ref();
    if node.is::<TorchInferenceExec>()
        || node.is::<crate::finetune::FtPrepareExec>()
        || node.is::<crate::finetune::FtStepExec>()
    {
        return true;
    }
    let exprs: Vec<&Arc<dyn PhysicalExpr>> = if let Some(p) = node.downcast_ref::<ProjectionExec>()
    {
        p.expr().iter().map(|e| &e.expr).collect()
    } else if let Some(f) = node.downcast_ref::<FilterExec>() {
        vec![f.predicate()]
    } else {
        vec![]
    };
    exprs.into_iter().any(expr_runs_torch) || plan.children().into_iter().any(plan_runs_torch)
}

fn expr_runs_torch(expr: &Arc<dyn PhysicalExpr>) -> bool {
    let mut found = false;
    // The closure never fails; `apply` only reports its own errors.
    let _ = expr.apply(|e| {
        found = e
            .downcast_ref::<ScalarFunctionExpr>()
            .is_some_and(|f| runs_model(f.fun().inner().as_ref()));
        Ok(if found {
            TreeNodeRecursion::Stop
        } else {
            TreeNodeRecursion::Continue
        })
    });
    found
}

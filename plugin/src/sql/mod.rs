//! The plugin's SQL functions, in one home: what they are, and the one place that registers
//! them on every session (client, scheduler and executors build their sessions with
//! [`crate::session`], which calls [`register`]).
//!
//! | function | module |
//! |---|---|
//! | `featurize(model, image[, featureLayer])`, `predict_topk(model, image, k)` | [`model`] |
//! | functions made with `CREATE FUNCTION f() AS 'pipeline:<dir>' \| 'model:<name>[:k]'` or `dlp.yaml` | [`functions`] |
//! | `read_image(uri)` | [`image`] |
//! | `dlp_hash_unit(key, seed)` (randomSplit) | [`crate::pipeline::split`] |
//! | `vector_assemble(...)`, `vector_assemble_keep(...)` (VectorAssembler) | [`crate::pipeline::assembler`] |
//! | `read_images(path, 'key=value', ...)` (a table function) | [`crate::image::provider`] |
//!
//! Every function that runs a model computes through one entry point,
//! [`crate::torch::infer::Runner`], and [`runs_model`] tells GPU placement (and the
//! autoscaler's demand) which ones do.

pub mod functions;
pub mod image;
pub mod model;

use std::sync::Arc;

use datafusion::execution::FunctionRegistry;
use datafusion::execution::context::SessionState;
use datafusion::logical_expr::{ScalarUDF, ScalarUDFImpl};

/// The plugin's built-in scalar functions.
pub fn udfs() -> Vec<ScalarUDF> {
    vec![
        model::featurize_udf(),
        model::predict_topk_udf(),
        crate::pipeline::split::hash_unit_udf(),
        crate::pipeline::assembler::vector_assemble_udf(),
        crate::pipeline::assembler::vector_assemble_keep_udf(),
        image::read_image_udf(),
    ]
}

/// Registers the built-in functions and the model functions registered in this process
/// (the scheduler's config at start-up, `CREATE FUNCTION`) on `state`.
pub fn register(state: &mut SessionState) {
    for udf in udfs() {
        // Registering replaces nothing of DataFusion's: the names are the plugin's own.
        let _ = state.register_udf(Arc::new(udf));
    }
    for udf in functions::registered() {
        let _ = state.register_udf(udf);
    }
}

/// True for the SQL functions that run a model: `featurize` / `predict_topk` and the
/// registered model functions. Placement sends the stages that call them to GPU executors.
pub fn runs_model(udf: &dyn ScalarUDFImpl) -> bool {
    udf.is::<model::ModelFunction>() || udf.is::<functions::ModelUdf>()
}

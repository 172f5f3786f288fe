//! What a sparkdl user does start to finish: `Pipeline` -> `PipelineModel`, `randomSplit`,
//! `MulticlassClassificationEvaluator`, saved pipelines, `CrossValidator` /
//! `TrainValidationSplit`, and YAML job specs that run all of it.

pub mod assembler;
pub mod evaluation;
pub mod job;
pub mod split;
pub mod stages;
pub mod tuning;

pub use assembler::{HandleInvalid, VectorAssembler};
pub use evaluation::{MulticlassClassificationEvaluator, MulticlassMetrics, Predictions};
pub use job::{JobReport, JobSpec};
pub use split::random_split;
pub use stages::{FittedStage, Pipeline, PipelineModel, PipelineStage};
pub use tuning::{ParamGridBuilder, ParamMap, Tuner, TuningEvent, TuningModel, Validation};

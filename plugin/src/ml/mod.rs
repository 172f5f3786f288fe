//! Distributed logistic regression (Spark MLlib's `LogisticRegression`): loss and gradient
//! partial sums on the executors, L-BFGS / OWL-QN on the driver.
//!
//! ```text
//! prepare(df) ── job 1: LrMaterializeExec ── per partition: check, write part-N.arrow, cache, summary
//! fit_prepared ── per optimizer evaluation: job: LrGradientExec(chunks of parts), one task per
//!                 slot ── per chunk: loss, gradient
//! fit(df) = prepare(df), then fit_prepared (prepare once for several fits: Spark's cache())
//! model.transform(df) ── LrPredictExec ── rawPrediction, probability, prediction
//! ```
//!
//! The steps' specs and logical node are in [`node`], the operators one per file
//! ([`materialize`], [`gradient`], [`predict`], sharing the shell in [`operator`]), and the
//! query planner in [`planner`].

pub mod data;
pub mod fit;
pub mod gradient;
mod kernel;
pub mod loss;
pub mod materialize;
pub mod model;
pub mod node;
pub mod operator;
pub mod optim;
pub mod params;
pub mod planner;
pub mod predict;
pub mod slots;
pub mod summary;

pub use fit::{LogisticRegression, TrainingData};
pub use gradient::GradientExec;
pub use materialize::MaterializeExec;
pub use model::{LogisticRegressionModel, TrainingSummary};
pub use node::{MlNode, MlStep};
pub use params::{ClassWeight, Family, LogisticRegressionParams};
pub use planner::MlExtensionPlanner;
pub use predict::PredictExec;

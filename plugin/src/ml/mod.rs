//! Distributed logistic regression (Spark MLlib's `LogisticRegression`): loss and gradient
//! partial sums on the executors, L-BFGS / OWL-QN on the driver.
//!
//! ```text
//! prepare(df) ── job 1: LrMaterializeExec ── per partition: check, write part-N.arrow, cache, summary
//! fit_prepared ── per optimizer evaluation: job: LrGradientExec(parts) ── per part: loss, gradient
//! fit(df) = prepare(df), then fit_prepared (prepare once for several fits: Spark's cache())
//! ```

pub mod data;
pub mod exec;
pub mod fit;
pub mod loss;
pub mod model;
pub mod optim;
pub mod params;
pub mod summary;

pub use exec::{MlExec, MlExtensionPlanner, MlNode};
pub use fit::{LogisticRegression, TrainingData};
pub use model::{LogisticRegressionModel, TrainingSummary};
pub use params::{ClassWeight, Family, LogisticRegressionParams};

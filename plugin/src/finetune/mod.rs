//! Fine-tuning pretrained zoo models on the cluster (sparkdl's `KerasImageFileEstimator`,
//! in libtorch): [`TorchImageEstimator`] starts from a model's trainable form (manifest
//! `training` section), replaces its classifier for the label column's classes and trains
//! the head, the last blocks or everything by synchronous data-parallel SGD over Ballista
//! executors.
//!
//! ```text
//! fit(df) ── job 1: FtPrepareExec ── per partition: decode, resize, frozen stages once, part file
//!         ── per step: job FtStepExec(parts, rows of the batch, parameter file)
//!                      ── per task: trainable stages forward + backward -> loss, gradient sums
//!                   driver: mean gradient -> SGD / Adam / AdamW update -> next parameter file
//!         ── per epoch: validation pass (optional), checkpoint (optional)
//! TorchImageModel::save(dir) ── <name>.pt (TorchScript) + <name>.yaml: an ordinary zoo model
//! ```
//!
//! BatchNorm layers keep the pretrained statistics (the trainable form is traced in eval
//! mode, the usual choice when fine-tuning with small batches), so a sample's gradient does
//! not depend on the other samples of its batch: splitting a batch over executors gives the
//! gradient of the whole batch, and one executor or two give the same weights.

pub mod fit;
pub mod optim;
pub mod params;
pub mod spec;
pub mod stage;
pub mod tensors;
#[cfg(feature = "torch")]
pub mod worker;
/// A process built without libtorch (the scheduler image) plans fine-tuning but cannot run
/// its tasks: the operators answer with this error (executors run them).
#[cfg(not(feature = "torch"))]
mod worker {
    use super::spec::{PartSummary, PrepareSpec, StepSpec, StepSums};
    use datafusion::arrow::array::RecordBatch;
    use datafusion::common::{Result, exec_err};

    const NO_TORCH: &str = "fine-tuning needs libtorch, and this process was built without it \
                            (dlp-plugin's `torch` feature); executors run it";

    pub fn prepare(
        _partition: usize,
        _spec: &PrepareSpec,
        _batches: &[RecordBatch],
    ) -> Result<(Option<String>, PartSummary)> {
        exec_err!("{NO_TORCH}")
    }

    pub fn step(_spec: &StepSpec, _parts: &[u32]) -> Result<StepSums> {
        exec_err!("{NO_TORCH}")
    }
}

pub use fit::{EpochRecord, TorchImageEstimator, TorchImageModel};
pub use optim::{OptimizerKind, Schedule};
pub use params::{TorchImageEstimatorParams, Trainable};
pub use spec::{FtPrepareExec, FtStepExec, PrepareSpec, StepSpec};
pub use stage::TorchImageClassifier;
pub use tensors::NamedTensors;

/// Runs blocking file work off the async workers.
pub(crate) fn io<T>(f: impl FnOnce() -> T) -> T {
    crate::torch::infer::blocking(f)
}

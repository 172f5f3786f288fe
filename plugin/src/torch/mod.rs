//! Models on the executors: model zoo and manifests, device choice, the model cache and the
//! one inference entry point ([`infer::Runner`]), `TorchInferenceExec`, and the
//! sparkdl-style transformers. The SQL functions that run models are in [`crate::sql`].
//! libtorch itself is behind the crate's `torch` feature ([`model`], [`infer::Runner`]'s
//! work); without it everything here still plans.

pub mod device;
pub mod exec;
pub mod infer;
pub mod manifest;
#[cfg(feature = "torch")]
pub mod model;
pub mod placement;
pub mod preprocess;
pub mod scaled_decode;
pub mod spec;
pub mod transformers;

use std::path::PathBuf;
use std::sync::OnceLock;

pub use device::DeviceSpec;
pub use exec::{PluginQueryPlanner, TorchInferenceExec, TorchInferenceNode};
pub use manifest::{ModelManifest, ModelZoo, ResizePolicy};
pub use placement::plan_runs_torch;
pub use spec::{TorchSpec, TorchTask};
pub use transformers::{
    DeepImageFeaturizer, DeepImagePredictor, FeatureLayer, FileOutputMode, ImageFileTransformer,
    ImageOutputMode, TorchImageTransformer,
};

/// Per-process torch settings (executor flags; environment or defaults elsewhere).
#[derive(Debug, Clone)]
pub struct ProcessTorchConfig {
    /// Model directory.
    pub model_dir: PathBuf,
    /// Device preference.
    pub device: DeviceSpec,
    /// Cores for inference: libtorch intra-op threads are `threads / streams`.
    pub threads: usize,
    /// Forward passes that may run at once per model and device (`DLP_TORCH_STREAMS`; 0:
    /// automatic, see [`Self::streams`]). On a CPU, several passes with fewer threads each keep
    /// the cores busier than one pass over all of them (small depthwise convolutions scale
    /// poorly across threads); tasks beyond that wait for a turn.
    pub streams: usize,
}

static PROCESS: OnceLock<ProcessTorchConfig> = OnceLock::new();

impl ProcessTorchConfig {
    /// Settings from `DLP_MODEL_DIR`, `DLP_DEVICE` and the machine's cores.
    pub fn from_env() -> Self {
        Self {
            model_dir: manifest::default_model_dir(),
            device: std::env::var("DLP_DEVICE")
                .ok()
                .and_then(|d| d.parse().ok())
                .unwrap_or_default(),
            threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
            streams: match std::env::var("DLP_TORCH_STREAMS") {
                Err(_) => 0,
                Ok(s) => s.trim().parse().unwrap_or_else(|_| {
                    tracing::warn!(
                        "DLP_TORCH_STREAMS={s:?} is not a number of forward passes (0 = automatic); using automatic"
                    );
                    0
                }),
            },
        }
    }

    /// Forward passes at once: the configured number, or automatically one on a GPU and one
    /// per core (at most 4, which bounds the activations held at once) on a CPU. Measured on
    /// 2 cores with EfficientNet-Lite0: 2 passes of 1 thread featurize 1.7x faster than one
    /// pass of 2 threads.
    pub fn streams(&self) -> usize {
        if self.streams > 0 {
            return self.streams;
        }
        #[cfg(feature = "torch")]
        let cpu = matches!(self.device.resolve(), Ok(tch::Device::Cpu));
        #[cfg(not(feature = "torch"))]
        let cpu = true;
        if cpu { self.threads.clamp(1, 4) } else { 1 }
    }

    /// libtorch intra-op threads of one forward pass.
    pub fn intra_threads(&self) -> usize {
        (self.threads / self.streams()).max(1)
    }

    /// Sets this process's settings (once, before the first query; later calls are ignored
    /// and return false).
    pub fn install(self) -> bool {
        PROCESS.set(self).is_ok()
    }

    /// This process's settings.
    pub fn get() -> &'static Self {
        PROCESS.get_or_init(Self::from_env)
    }

    /// The model zoo of this process.
    pub fn zoo(&self) -> ModelZoo {
        ModelZoo::new(self.model_dir.clone())
    }
}

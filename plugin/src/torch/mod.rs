//! libtorch on the executors: model zoo and manifests, device choice, the model cache,
//! preprocessing, `TorchInferenceExec`, the sparkdl-style transformers and SQL functions.

pub mod device;
pub mod exec;
pub mod infer;
pub mod manifest;
pub mod model;
pub mod placement;
pub mod spec;
pub mod transformers;
pub mod udf;

use std::path::PathBuf;
use std::sync::OnceLock;

pub use device::DeviceSpec;
pub use exec::{PluginQueryPlanner, TorchInferenceExec, TorchInferenceNode};
pub use manifest::{ModelManifest, ModelZoo, ResizePolicy};
pub use placement::plan_runs_torch;
pub use spec::{TorchSpec, TorchTask};
pub use transformers::{
    DeepImageFeaturizer, DeepImagePredictor, FileOutputMode, ImageFileTransformer,
};

/// Per-process torch settings (executor flags; environment or defaults elsewhere).
#[derive(Debug, Clone)]
pub struct ProcessTorchConfig {
    /// Model directory.
    pub model_dir: PathBuf,
    /// Device preference.
    pub device: DeviceSpec,
    /// libtorch intra-op threads.
    pub threads: usize,
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
        }
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

//! Device choice in one place: `auto` (CUDA when present), `cpu`, or `cuda:N`.

use std::str::FromStr;

use datafusion::common::{DataFusionError, Result, plan_err};
use serde::{Deserialize, Serialize};

/// A device as configured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Default, Serialize, Deserialize)]
pub enum DeviceSpec {
    /// CUDA device 0 when CUDA is available, else the CPU.
    #[default]
    Auto,
    /// The CPU.
    Cpu,
    /// A CUDA device by ordinal.
    Cuda(usize),
}

impl FromStr for DeviceSpec {
    type Err = DataFusionError;

    fn from_str(s: &str) -> Result<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "auto" => Ok(Self::Auto),
            "cpu" => Ok(Self::Cpu),
            "cuda" => Ok(Self::Cuda(0)),
            other => match other.strip_prefix("cuda:").map(str::parse::<usize>) {
                Some(Ok(n)) => Ok(Self::Cuda(n)),
                _ => plan_err!("device: expected auto, cpu or cuda:N, got '{s}'"),
            },
        }
    }
}

impl std::fmt::Display for DeviceSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Auto => write!(f, "auto"),
            Self::Cpu => write!(f, "cpu"),
            Self::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

impl DeviceSpec {
    /// The libtorch device; `cuda:N` without such a GPU is an error naming what was found.
    #[cfg(feature = "torch")]
    pub fn resolve(self) -> Result<tch::Device> {
        let gpus = if tch::Cuda::is_available() {
            tch::Cuda::device_count() as usize
        } else {
            0
        };
        let device = match self {
            Self::Auto if gpus > 0 => tch::Device::Cuda(0),
            Self::Auto | Self::Cpu => tch::Device::Cpu,
            Self::Cuda(n) if n < gpus => tch::Device::Cuda(n),
            Self::Cuda(n) => {
                return plan_err!(
                    "device cuda:{n} requested but {gpus} CUDA device(s) are available; use \
                     --device cpu or auto"
                );
            }
        };
        tracing::debug!(requested = %self, chosen = ?device, "torch device");
        Ok(device)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_device_names() {
        assert_eq!("auto".parse::<DeviceSpec>().unwrap(), DeviceSpec::Auto);
        assert_eq!("CPU".parse::<DeviceSpec>().unwrap(), DeviceSpec::Cpu);
        assert_eq!("cuda:1".parse::<DeviceSpec>().unwrap(), DeviceSpec::Cuda(1));
        assert!("gpu".parse::<DeviceSpec>().is_err());
        assert!("cuda:x".parse::<DeviceSpec>().is_err());
    }

    #[cfg(feature = "torch")]
    #[test]
    fn cuda_without_a_gpu_is_a_clear_error() {
        if tch::Cuda::is_available() {
            return; // only meaningful on CPU-only machines; CI has no GPU
        }
        let e = DeviceSpec::Cuda(0).resolve().unwrap_err();
        assert!(
            e.to_string().contains("cuda:0 requested but 0 CUDA device"),
            "{e}"
        );
        assert_eq!(DeviceSpec::Auto.resolve().unwrap(), tch::Device::Cpu);
    }
}

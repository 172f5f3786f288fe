//! Per-query settings: the `dlp.*` DataFusion config extension. `SET dlp.torch.batch_size =
//! 32` in SQL (or `SessionConfig::set_str`) changes them for one session; Ballista sends them
//! with every job, and the scheduler and the executors read them from the task's config, so
//! they reach the operators in the plan. `SHOW ALL` and `information_schema.df_settings` list
//! them. Per-process settings (model directory, device of an executor, ceilings) are the
//! binaries' flags instead; see [`SETTINGS`] for both.

use datafusion::common::{DataFusionError, Result};
use datafusion::config::{ConfigEntry, ConfigExtension, ConfigOptions, ExtensionOptions};

use crate::torch::{DeviceSpec, TorchSpec};

/// Images per forward pass on a CPU when neither the step nor the session sets them. Measured
/// with EfficientNet-Lite0 on 2 cores (two single-threaded passes at once, the 1,428 flowers,
/// release build, 2026-12-03): a peak RSS of about 480 MB with batches of 4 against 860-1,000
/// MB with 16, at the same speed within the machine's noise (65-70 against 59-61 images/s in
/// one pair of runs, 50 against 54 in a slower one).
pub const CPU_BATCH_SIZE: usize = 4;

/// Images per forward pass on a GPU when neither the step nor the session sets them.
pub const GPU_BATCH_SIZE: usize = 16;

/// The default images per forward pass of a step on `gpu` or not (`dlp.torch.batch_size =
/// auto`).
pub fn default_batch_size(gpu: bool) -> usize {
    if gpu { GPU_BATCH_SIZE } else { CPU_BATCH_SIZE }
}

/// The `dlp.*` settings of a session.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct DlpOptions {
    /// `dlp.torch.batch_size`: images per forward pass of steps that set no `batchSize`
    /// themselves, and of the model SQL functions; `None` (`auto`): [`default_batch_size`]
    /// for the device each executor runs the step on.
    pub torch_batch_size: Option<usize>,
    /// `dlp.torch.device`: device preference of this session's inference (`auto`, `cpu`,
    /// `cuda:N`); unset: each executor's `--device`.
    pub torch_device: Option<DeviceSpec>,
    /// `dlp.image.decode = exact`: image scans always decode at full size. Default
    /// (`scaled`): a scan whose pixels only models read decodes JPEGs at the smallest DCT
    /// scale covering the models' input ([`crate::torch::scaled_decode`]).
    pub exact_decode: bool,
}

/// One setting: key, default, what it does, and whether it is per query (`SET`) or per
/// process (a flag of the binaries, with its environment override).
#[derive(Debug, Clone, Copy)]
pub struct Setting {
    /// The key (`SET` name or flag).
    pub key: &'static str,
    /// The default, as text.
    pub default: &'static str,
    /// What it does.
    pub description: &'static str,
}

/// Every setting of the plugin, in one table (the docs' settings table is this one).
pub const SETTINGS: &[Setting] = &[
    Setting {
        key: "dlp.torch.batch_size",
        default: "auto",
        description: "Images per forward pass of inference steps that set no batchSize and of \
                      the model SQL functions (SET per session; at most the executors' \
                      --max-batch-size); auto: 4 on a CPU, 16 on a GPU",
    },
    Setting {
        key: "dlp.torch.device",
        default: "",
        description: "Device of this session's inference: auto, cpu or cuda:N (SET per \
                      session; empty: each executor's --device)",
    },
    Setting {
        key: "dlp.image.decode",
        default: "scaled",
        description: "scaled: where only models read an image scan's pixels (the image column \
                      is not in the result), JPEGs decode at the smallest DCT scale (1/8, 1/4, \
                      1/2) that covers the model input, as in a featurization or prediction \
                      that keeps no image; exact: always Spark-exact full-size decoding \
                      (SET per session)",
    },
];

const BATCH_SIZE: &str = "torch.batch_size";
const DEVICE: &str = "torch.device";
const DECODE: &str = "image.decode";

impl ConfigExtension for DlpOptions {
    const PREFIX: &'static str = "dlp";
}

fn describe(key: &str) -> &'static str {
    SETTINGS
        .iter()
        .find(|s| s.key.strip_prefix("dlp.") == Some(key))
        .map_or("", |s| s.description)
}

impl ExtensionOptions for DlpOptions {
    fn as_any(&self) -> &dyn std::any::Any {
        self
    }

    fn as_any_mut(&mut self) -> &mut dyn std::any::Any {
        self
    }

    fn cloned(&self) -> Box<dyn ExtensionOptions> {
        Box::new(self.clone())
    }

    fn set(&mut self, key: &str, value: &str) -> Result<()> {
        let bad = |expected: &str| {
            DataFusionError::Configuration(format!("dlp.{key}: expected {expected}, got '{value}'"))
        };
        match key {
            BATCH_SIZE => {
                self.torch_batch_size = match value.trim() {
                    "auto" => None,
                    v => match v.parse::<usize>() {
                        Ok(n) if n > 0 => Some(n),
                        _ => return Err(bad("a positive integer or auto")),
                    },
                };
            }
            DEVICE => {
                self.torch_device = match value.trim() {
                    "" => None,
                    d => Some(d.parse().map_err(|_| bad("auto, cpu or cuda:N"))?),
                };
            }
            DECODE => {
                self.exact_decode = match value.trim().to_ascii_lowercase().as_str() {
                    "scaled" => false,
                    "exact" => true,
                    _ => return Err(bad("scaled or exact")),
                };
            }
            _ => {
                return Err(DataFusionError::Configuration(format!(
                    "unknown setting dlp.{key}; the dlp settings are {}",
                    SETTINGS
                        .iter()
                        .map(|s| s.key)
                        .collect::<Vec<_>>()
                        .join(", ")
                )));
            }
        }
        Ok(())
    }

    fn entries(&self) -> Vec<ConfigEntry> {
        // Full keys: Ballista sends these entries with each job and the scheduler and the
        // executors set them back by key.
        vec![
            ConfigEntry {
                key: format!("dlp.{BATCH_SIZE}"),
                value: Some(
                    self.torch_batch_size
                        .map_or_else(|| "auto".to_string(), |n| n.to_string()),
                ),
                description: describe(BATCH_SIZE),
            },
            ConfigEntry {
                key: format!("dlp.{DEVICE}"),
                value: self.torch_device.map(|d| d.to_string()),
                description: describe(DEVICE),
            },
            ConfigEntry {
                key: format!("dlp.{DECODE}"),
                value: Some(if self.exact_decode { "exact" } else { "scaled" }.to_string()),
                description: describe(DECODE),
            },
        ]
    }
}

impl DlpOptions {
    /// Fills what `spec` leaves to the session: the batch size (0 in the spec; it stays 0
    /// under `auto`, for the executor to fill by its device) and the device.
    pub fn apply_to(&self, spec: &mut TorchSpec) {
        if spec.batch_size == 0
            && let Some(n) = self.torch_batch_size
        {
            spec.batch_size = n;
        }
        if spec.device.is_none() {
            spec.device = self.torch_device;
        }
    }

    /// The session's settings in `options` (defaults where the extension is absent, as in a
    /// plain DataFusion session).
    pub fn of(options: &ConfigOptions) -> Self {
        options
            .extensions
            .get::<DlpOptions>()
            .cloned()
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::prelude::SessionConfig;

    /// The value of `dlp.torch.batch_size` among the entries Ballista sends.
    fn batch_entry(config: &SessionConfig) -> Option<String> {
        config
            .options()
            .entries()
            .into_iter()
            .find(|e| e.key == "dlp.torch.batch_size")
            .and_then(|e| e.value)
    }

    #[test]
    fn set_and_list_with_full_keys() {
        let mut config = SessionConfig::new().with_option_extension(DlpOptions::default());
        config
            .options_mut()
            .set("dlp.torch.batch_size", "7")
            .unwrap();
        config.options_mut().set("dlp.torch.device", "cpu").unwrap();
        let o = DlpOptions::of(config.options());
        assert_eq!(o.torch_batch_size, Some(7));
        assert_eq!(o.torch_device, Some(DeviceSpec::Cpu));
        let entries = config.options().entries();
        assert_eq!(batch_entry(&config).as_deref(), Some("7"));
        // What Ballista sends is what the other side sets back.
        let mut other = SessionConfig::new().with_option_extension(DlpOptions::default());
        for e in entries.iter().filter(|e| e.key.starts_with("dlp.")) {
            if let Some(v) = &e.value {
                other.options_mut().set(&e.key, v).unwrap();
            }
        }
        assert_eq!(DlpOptions::of(other.options()), o);
        // `auto` goes back to the device's default, and travels as such.
        config
            .options_mut()
            .set("dlp.torch.batch_size", "auto")
            .unwrap();
        let o = DlpOptions::of(config.options());
        assert_eq!(o.torch_batch_size, None);
        assert_eq!(batch_entry(&config).as_deref(), Some("auto"));
        let mut spec = TorchSpec {
            model: "m".into(),
            input_col: "image".into(),
            output_col: "features".into(),
            task: crate::torch::TorchTask::Features,
            batch_size: 0,
            resize: None,
            device: None,
            output_dim: 1,
            sha256: String::new(),
            model_input: None,
        };
        o.apply_to(&mut spec);
        assert_eq!(
            spec.batch_size, 0,
            "auto leaves the batch size to the executor"
        );
        assert_eq!(default_batch_size(false), CPU_BATCH_SIZE);
        assert_eq!(default_batch_size(true), GPU_BATCH_SIZE);
    }

    #[test]
    fn bad_values_name_the_key() {
        let mut config = SessionConfig::new().with_option_extension(DlpOptions::default());
        let e = config
            .options_mut()
            .set("dlp.torch.batch_size", "0")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("dlp.torch.batch_size") && e.contains("positive integer or auto"),
            "{e}"
        );
        let e = config
            .options_mut()
            .set("dlp.torch.device", "gpu")
            .unwrap_err()
            .to_string();
        assert!(e.contains("cuda:N"), "{e}");
        let e = config
            .options_mut()
            .set("dlp.torch.batchsize", "3")
            .unwrap_err()
            .to_string();
        assert!(e.contains("dlp.torch.batch_size"), "{e}");
        let e = config
            .options_mut()
            .set("dlp.image.decode", "fast")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("dlp.image.decode") && e.contains("scaled or exact"),
            "{e}"
        );
        assert!(!DlpOptions::of(config.options()).exact_decode);
        config
            .options_mut()
            .set("dlp.image.decode", "EXACT")
            .unwrap();
        assert!(DlpOptions::of(config.options()).exact_decode);
        let sent = config
            .options()
            .entries()
            .into_iter()
            .find(|e| e.key == "dlp.image.decode")
            .and_then(|e| e.value);
        assert_eq!(sent.as_deref(), Some("exact"));
    }
}

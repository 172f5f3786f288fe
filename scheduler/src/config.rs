//! The plugin's configuration file (`--config`, a `dlp.yaml` from a ConfigMap in
//! Kubernetes). Unknown keys are errors, so a typo never silently keeps a default.

use std::path::Path;

use anyhow::Context;
use serde::{Deserialize, Serialize};

/// `dlp.yaml`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct DlpConfig {
    /// The executor autoscaler.
    pub autoscaler: AutoscalerConfig,
    /// Model SQL functions registered at start-up, by name: `{kind: pipeline, dir: ...}`
    /// (a saved PipelineModel) or `{kind: model, model: ..., topK: 5}`.
    pub functions: std::collections::BTreeMap<String, dlp_plugin::sql::functions::FunctionSource>,
    /// Object storage (`s3://`, `gs://`, `az://`): concurrency, timeouts, retries and
    /// per-bucket settings. The executors read the same section of the same file.
    pub storage: dlp_plugin::storage::StorageConfig,
}

/// `autoscaler:`: scales the CPU and GPU executor Deployments from the scheduler's own
/// pending and running work.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct AutoscalerConfig {
    /// Off unless enabled.
    pub enabled: bool,
    /// Namespace of the Deployments; empty: `POD_NAMESPACE`, then the service account's
    /// namespace, then the kubeconfig's.
    pub namespace: String,
    /// A kubeconfig file; empty: in-cluster service account, then `KUBECONFIG` /
    /// `~/.kube/config`.
    pub kubeconfig: String,
    /// Seconds between two looks at the work.
    pub interval_seconds: u64,
    /// Minimum seconds between two changes of one pool's replicas (against flapping).
    pub cooldown_seconds: u64,
    /// The CPU executor pool.
    pub cpu: PoolConfig,
    /// The GPU executor pool.
    pub gpu: PoolConfig,
}

impl Default for AutoscalerConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            namespace: String::new(),
            kubeconfig: String::new(),
            interval_seconds: 5,
            cooldown_seconds: 30,
            cpu: PoolConfig {
                deployment: "dlp-executor-cpu".into(),
                min_replicas: 1,
                max_replicas: 4,
                tasks_per_executor: 4,
                idle_seconds: 120,
            },
            gpu: PoolConfig {
                deployment: "dlp-executor-gpu".into(),
                min_replicas: 0,
                max_replicas: 2,
                tasks_per_executor: 1,
                idle_seconds: 300,
            },
        }
    }
}

/// One executor pool (a Deployment).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PoolConfig {
    /// Deployment name.
    pub deployment: String,
    /// Never fewer replicas.
    #[serde(default)]
    pub min_replicas: u32,
    /// Never more replicas; 0 disables the pool.
    pub max_replicas: u32,
    /// Tasks one executor runs at once (its `--vcores`).
    #[serde(default = "one")]
    pub tasks_per_executor: u32,
    /// Seconds without work of this pool's class before scaling down.
    #[serde(default)]
    pub idle_seconds: u64,
}

fn one() -> u32 {
    1
}

impl DlpConfig {
    /// Reads and checks a config file.
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read the config file {}", path.display()))?;
        Self::parse(&text).with_context(|| format!("invalid config file {}", path.display()))
    }

    /// Parses and checks YAML.
    pub fn parse(text: &str) -> anyhow::Result<Self> {
        let config: Self = if text.trim().is_empty() {
            Self::default()
        } else {
            serde_yaml::from_str(text)?
        };
        config.autoscaler.validate()?;
        config
            .storage
            .validate()
            .map_err(|e| anyhow::anyhow!("storage: {e}"))?;
        Ok(config)
    }
}

impl AutoscalerConfig {
    fn validate(&self) -> anyhow::Result<()> {
        if self.interval_seconds == 0 {
            anyhow::bail!("autoscaler.intervalSeconds must be at least 1");
        }
        for (name, pool) in [("cpu", &self.cpu), ("gpu", &self.gpu)] {
            if pool.min_replicas > pool.max_replicas {
                anyhow::bail!(
                    "autoscaler.{name}.minReplicas ({}) is above maxReplicas ({})",
                    pool.min_replicas,
                    pool.max_replicas
                );
            }
            if pool.tasks_per_executor == 0 {
                anyhow::bail!("autoscaler.{name}.tasksPerExecutor must be at least 1");
            }
            if pool.max_replicas > 0 && pool.deployment.is_empty() {
                anyhow::bail!("autoscaler.{name}.deployment is empty");
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_partial_files() {
        assert_eq!(DlpConfig::parse("").unwrap(), DlpConfig::default());
        let c = DlpConfig::parse(
            "autoscaler:\n  enabled: true\n  gpu:\n    deployment: gpus\n    maxReplicas: 3\n",
        )
        .unwrap();
        assert!(c.autoscaler.enabled);
        assert_eq!(c.autoscaler.gpu.deployment, "gpus");
        assert_eq!(c.autoscaler.gpu.max_replicas, 3);
        assert_eq!(c.autoscaler.gpu.min_replicas, 0);
        assert_eq!(c.autoscaler.gpu.tasks_per_executor, 1);
        assert_eq!(c.autoscaler.cpu, AutoscalerConfig::default().cpu);
        let c = DlpConfig::parse(
            "functions:\n  top3: {kind: model, model: efficientnet_lite0, topK: 3}\n  flowers: {kind: pipeline, dir: /data/m}\n",
        )
        .unwrap();
        assert_eq!(c.functions.len(), 2);
    }

    #[test]
    fn bad_files_name_the_key() {
        let e = DlpConfig::parse("autoscaler:\n  enabeld: true\n").unwrap_err();
        assert!(format!("{e:#}").contains("enabeld"), "{e:#}");
        let e = DlpConfig::parse(
            "autoscaler:\n  cpu:\n    deployment: c\n    minReplicas: 3\n    maxReplicas: 1\n",
        )
        .unwrap_err();
        assert!(
            e.to_string().contains("autoscaler.cpu.minReplicas (3)"),
            "{e}"
        );
    }
}

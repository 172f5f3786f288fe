//! The executor autoscaler: watches the scheduler's own pending and running work per
//! device class and sets the replicas of the CPU and GPU executor Deployments through
//! their scale subresource (server-side apply, field manager `dlp-autoscaler`).
//!
//! The Kubernetes side never stops the scheduler: a missing Deployment, missing RBAC or an
//! unreachable API server is logged with what to fix, and retried with backoff.

pub mod decision;

use std::sync::Arc;
use std::time::{Duration, Instant};

use ballista_core::serde::protobuf::{job_status, task_status};
use ballista_scheduler::state::SchedulerState;
use ballista_scheduler::state::execution_stage::ExecutionStage;
use datafusion_proto::protobuf::{LogicalPlanNode, PhysicalPlanNode};
use k8s_openapi::api::apps::v1::Deployment;
use kube::api::{Api, Patch, PatchParams};

use crate::config::{AutoscalerConfig, PoolConfig};
use crate::placement::DeviceClass;
pub use decision::{Action, Clock, Observation, decide};

/// The scheduler state the autoscaler reads.
pub type State = SchedulerState<LogicalPlanNode, PhysicalPlanNode>;

/// Field manager of the replica changes.
pub const FIELD_MANAGER: &str = "dlp-autoscaler";

/// Work per class: `[cpu, gpu]`.
pub async fn observe(state: &State) -> [Observation; 2] {
    let mut obs = [Observation::default(); 2];
    let jobs = state.task_manager.get_running_job_cache();
    for job in jobs.values() {
        if !matches!(
            job.status,
            Some(job_status::Status::Running(_) | job_status::Status::Queued(_))
        ) {
            continue;
        }
        let graph = job.execution_graph.read().await;
        for stage in graph.stages().values() {
            let (plan, pending, upcoming) = match stage {
                ExecutionStage::UnResolved(s) => (&s.plan, 0, 1),
                ExecutionStage::Resolved(s) => (&s.plan, s.partitions, 0),
                ExecutionStage::Running(s) => (&s.plan, s.pending.remaining(), 0),
                _ => continue,
            };
            let class = DeviceClass::of_plan(plan) as usize;
            obs[class].pending += pending;
            obs[class].upcoming += upcoming;
            if let ExecutionStage::Running(s) = stage {
                for info in &s.task_infos {
                    if let task_status::Status::Running(t) = &info.task_status {
                        obs[class].running += info.vcores_consumed.max(1) as usize;
                        obs[DeviceClass::of_executor(&t.executor_id) as usize].running_on_pool += 1;
                    }
                }
            }
        }
    }
    obs
}

/// Bookkeeping of one pool between two looks.
#[derive(Debug)]
struct PoolTrack {
    class: DeviceClass,
    config: PoolConfig,
    last_change: Option<Instant>,
    last_busy: Instant,
    /// Backoff after Kubernetes errors.
    retry_at: Option<Instant>,
    failures: u32,
}

/// Starts the autoscaler on the current runtime. Returns at once; errors are logged.
pub fn spawn(config: AutoscalerConfig, state: Arc<State>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move { run(config, state).await })
}

async fn client_and_namespace(config: &AutoscalerConfig) -> anyhow::Result<(kube::Client, String)> {
    let client = if config.kubeconfig.is_empty() {
        kube::Client::try_default().await.map_err(|e| {
            anyhow::anyhow!(
                "no Kubernetes API client ({e}); the autoscaler needs an in-cluster service \
                 account, KUBECONFIG or autoscaler.kubeconfig"
            )
        })?
    } else {
        let file = kube::config::Kubeconfig::read_from(&config.kubeconfig).map_err(|e| {
            anyhow::anyhow!(
                "cannot read autoscaler.kubeconfig {}: {e}",
                config.kubeconfig
            )
        })?;
        let options = kube::config::KubeConfigOptions::default();
        let kc = kube::Config::from_custom_kubeconfig(file, &options)
            .await
            .map_err(|e| anyhow::anyhow!("invalid kubeconfig {}: {e}", config.kubeconfig))?;
        kube::Client::try_from(kc)?
    };
    let namespace = if !config.namespace.is_empty() {
        config.namespace.clone()
    } else if let Ok(ns) = std::env::var("POD_NAMESPACE")
        && !ns.is_empty()
    {
        ns
    } else {
        client.default_namespace().to_string()
    };
    Ok((client, namespace))
}

async fn run(config: AutoscalerConfig, state: Arc<State>) {
    let interval = Duration::from_secs(config.interval_seconds);
    let cooldown = Duration::from_secs(config.cooldown_seconds);
    let mut backoff = Duration::from_secs(1);
    let (client, namespace) = loop {
        match client_and_namespace(&config).await {
            Ok(c) => break c,
            Err(e) => {
                tracing::error!(error = %e, retry_in_s = backoff.as_secs(), "autoscaler: cannot start");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(60));
            }
        }
    };
    let api: Api<Deployment> = Api::namespaced(client, &namespace);
    let now = Instant::now();
    let mut pools: Vec<PoolTrack> = [
        (DeviceClass::Cpu, &config.cpu),
        (DeviceClass::Gpu, &config.gpu),
    ]
    .into_iter()
    .filter(|(_, p)| p.max_replicas > 0)
    .map(|(class, p)| PoolTrack {
        class,
        config: p.clone(),
        last_change: None,
        last_busy: now,
        retry_at: None,
        failures: 0,
    })
    .collect();
    tracing::info!(
        %namespace,
        pools = ?pools.iter().map(|p| format!("{}={} [{}, {}]", p.class, p.config.deployment,
            p.config.min_replicas, p.config.max_replicas)).collect::<Vec<_>>(),
        "autoscaler started"
    );
    let mut last_obs = [Observation::default(); 2];
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let obs = observe(&state).await;
        if obs != last_obs {
            tracing::debug!(cpu = ?obs[0], gpu = ?obs[1], "autoscaler: work");
            last_obs = obs;
        }
        let now = Instant::now();
        for pool in &mut pools {
            let o = obs[pool.class as usize];
            if o.busy() {
                pool.last_busy = now;
            }
            if pool.retry_at.is_some_and(|t| now < t) {
                continue;
            }
            match step(&api, &namespace, pool, &o, cooldown, now).await {
                Ok(()) => {
                    pool.failures = 0;
                    pool.retry_at = None;
                }
                Err(e) => {
                    pool.failures += 1;
                    let wait = Duration::from_secs(1 << pool.failures.min(6)).max(interval);
                    pool.retry_at = Some(now + wait);
                    tracing::error!(
                        pool = %pool.class, deployment = %pool.config.deployment, %namespace,
                        retry_in_s = wait.as_secs(), "autoscaler: {e:#}"
                    );
                }
            }
        }
    }
}

/// One look at one pool: read its replicas, decide, apply.
async fn step(
    api: &Api<Deployment>,
    namespace: &str,
    pool: &mut PoolTrack,
    obs: &Observation,
    cooldown: Duration,
    now: Instant,
) -> anyhow::Result<()> {
    let name = &pool.config.deployment;
    let scale = api
        .get_scale(name)
        .await
        .map_err(|e| explain(e, namespace, name, "get"))?;
    let current = scale.spec.and_then(|s| s.replicas).unwrap_or(0).max(0) as u32;
    let clock = Clock {
        since_change: pool.last_change.map(|t| now - t),
        idle_for: now - pool.last_busy,
    };
    if let Action::Scale { to, reason } = decide(&pool.config, cooldown, obs, current, clock) {
        set_replicas(api, name, to)
            .await
            .map_err(|e| explain(e, namespace, name, "patch"))?;
        pool.last_change = Some(now);
        tracing::info!(
            pool = %pool.class, deployment = %name, from = current, to, %reason,
            "autoscaler: scaled executors"
        );
    }
    Ok(())
}

/// Sets `spec.replicas` through the scale subresource with server-side apply.
pub async fn set_replicas(api: &Api<Deployment>, name: &str, replicas: u32) -> kube::Result<()> {
    let patch = serde_json::json!({
        "apiVersion": "autoscaling/v1",
        "kind": "Scale",
        "metadata": { "name": name },
        "spec": { "replicas": replicas },
    });
    api.patch_scale(
        name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&patch),
    )
    .await
    .map(|_| ())
}

/// A Kubernetes error with what to check.
fn explain(e: kube::Error, namespace: &str, name: &str, verb: &str) -> anyhow::Error {
    let hint = match &e {
        kube::Error::Api(s) if s.code == 404 => format!(
            "Deployment {namespace}/{name} not found: check autoscaler.*.deployment in the \
             config and that the executor Deployment is installed"
        ),
        kube::Error::Api(s) if s.code == 403 => format!(
            "forbidden to {verb} deployments/scale {namespace}/{name}: the scheduler's \
             service account needs a Role with get/patch on deployments/scale (see deploy/)"
        ),
        kube::Error::Api(s) if s.code == 401 => {
            "the API server rejected the scheduler's credentials".to_string()
        }
        _ => format!("cannot {verb} the scale of Deployment {namespace}/{name}"),
    };
    anyhow::Error::new(e).context(hint)
}

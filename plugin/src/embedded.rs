//! The embedded cluster behind `dlp`'s default mode: a push-staged Ballista scheduler and
//! one executor, in this process, on loopback ports.
//!
//! Ballista's own `standalone` mode is pull-staged (the executor polls for work every
//! 50 ms), which costs 300-500 ms per job; iterative jobs such as a logistic regression fit
//! (one job per L-BFGS evaluation) need the push-staged path that the cluster binaries use
//! (about 50 ms per job). The same entry points as `dlp-scheduler` / `dlp-executor` are used,
//! so the embedded cluster plans and executes exactly like a real one.

use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ballista::prelude::SessionContextExt;
use ballista_core::config::TaskSchedulingPolicy;
use ballista_executor::executor_process::{ExecutorProcessConfig, start_executor_process};
use ballista_scheduler::cluster::BallistaCluster;
use ballista_scheduler::config::SchedulerConfig;
use ballista_scheduler::scheduler_process::{create_scheduler, start_grpc_service_with_listener};
use datafusion::common::{DataFusionError, Result, exec_datafusion_err};
use datafusion::prelude::SessionContext;
use datafusion_proto::protobuf::{LogicalPlanNode, PhysicalPlanNode};

/// A running embedded cluster; it lives as long as the process's tokio runtime.
#[derive(Debug, Clone)]
pub struct EmbeddedCluster {
    scheduler: SocketAddr,
    vcores: usize,
}

fn free_port() -> Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0")
        .map_err(|e| exec_datafusion_err!("embedded cluster: no free loopback port: {e}"))?;
    Ok(listener.local_addr()?.port())
}

const WORK_DIR_PREFIX: &str = "dlp-embedded-";

/// Removes embedded work dirs (shuffle files) left by processes that have exited: the
/// embedded cluster runs until its process ends, so nothing else deletes them.
fn remove_stale_work_dirs() {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(rest) = name.to_str().and_then(|n| n.strip_prefix(WORK_DIR_PREFIX)) else {
            continue;
        };
        let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

fn ballista_err(what: &str, e: impl std::fmt::Display) -> DataFusionError {
    exec_datafusion_err!("embedded cluster: {what}: {e}")
}

impl EmbeddedCluster {
    /// Starts the scheduler and one executor with `vcores` task slots (default: the
    /// machine's cores) and waits until the executor has registered.
    pub async fn start(vcores: Option<usize>) -> Result<Self> {
        crate::memory::cap_malloc_arenas();
        let vcores = vcores
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
            .max(1);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(|e| ballista_err("cannot bind the scheduler port", e))?;
        let scheduler_addr = listener.local_addr()?;

        let config = crate::session::scheduler_config(
            SchedulerConfig::default()
                .with_hostname("127.0.0.1")
                .with_port(scheduler_addr.port())
                .with_scheduler_policy(TaskSchedulingPolicy::PushStaged),
        );
        let cluster = BallistaCluster::new_from_config(&config)
            .await
            .map_err(|e| ballista_err("cannot create the cluster state", e))?;
        let scheduler =
            create_scheduler::<LogicalPlanNode, PhysicalPlanNode>(cluster, Arc::new(config))
                .await
                .map_err(|e| ballista_err("cannot create the scheduler", e))?;
        let state = scheduler.state.clone();
        tokio::spawn(async move {
            if let Err(e) = start_grpc_service_with_listener(listener, scheduler).await {
                tracing::error!("embedded scheduler stopped: {e}");
            }
        });

        // One work dir per embedded cluster: several can run in one process (tests). It
        // lives as long as the process; dirs of processes that are gone are removed here.
        remove_stale_work_dirs();
        let work_dir = tempfile::Builder::new()
            .prefix(&format!("{WORK_DIR_PREFIX}{}-", std::process::id()))
            .tempdir()?
            .keep();
        let executor = crate::session::executor_config(ExecutorProcessConfig {
            bind_host: "127.0.0.1".into(),
            external_host: Some("127.0.0.1".into()),
            port: free_port()?,
            grpc_port: free_port()?,
            scheduler_host: "127.0.0.1".into(),
            scheduler_port: scheduler_addr.port(),
            vcores,
            task_scheduling_policy: TaskSchedulingPolicy::PushStaged,
            work_dir: Some(work_dir.to_string_lossy().into_owned()),
            ..Default::default()
        })?;
        tokio::spawn(async move {
            if let Err(e) = start_executor_process(Arc::new(executor)).await {
                tracing::error!("embedded executor stopped: {e}");
            }
        });

        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let executors = state
                .executor_manager
                .get_executors_state()
                .await
                .map_err(|e| ballista_err("cannot read the executors", e))?;
            if !executors.is_empty() {
                break;
            }
            if Instant::now() > deadline {
                return Err(ballista_err(
                    "the executor did not register within 30 s",
                    "see the log",
                ));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        crate::ml::slots::refresh(&state).await;
        crate::ml::slots::watch(&state);
        tracing::debug!(%scheduler_addr, vcores, "embedded cluster ready");
        Ok(Self {
            scheduler: scheduler_addr,
            vcores,
        })
    }

    /// `df://` URL of the embedded scheduler.
    pub fn url(&self) -> String {
        format!("df://{}", self.scheduler)
    }

    /// Task slots of the embedded executor.
    pub fn vcores(&self) -> usize {
        self.vcores
    }
}

/// A client session on the embedded cluster (push-staged scheduler + one executor in this
/// process, see [`EmbeddedCluster`]). `parallelism` is the executor's task slots (default:
/// the machine's cores).
pub async fn standalone_context(parallelism: Option<usize>) -> Result<SessionContext> {
    let cluster = EmbeddedCluster::start(parallelism).await?;
    let state = crate::session::session_state(crate::session::session_config())?;
    let ctx = SessionContext::remote_with_state(&cluster.url(), state).await?;
    crate::session::register_client_udfs(&ctx);
    Ok(ctx)
}

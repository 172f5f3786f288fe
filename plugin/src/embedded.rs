//! The embedded cluster behind `dlp`'s default mode: a push-staged Ballista scheduler and
//! one executor, in this process, on loopback ports.
//!
//! Ballista's own `standalone` mode is pull-staged (the executor polls for work every
//! 50 ms), which costs 300-500 ms per job; iterative jobs such as a logistic regression fit
//! (one job per L-BFGS evaluation) need the push-staged path that the cluster binaries use
//! (about 50 ms per job). The same entry points as `dlp-scheduler` / `dlp-executor` are used,
//! so the embedded cluster plans and executes exactly like a real one.

use std::collections::BTreeSet;
use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::sync::{Arc, Mutex};
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

/// A loopback port that was free a moment ago and that this process has not handed out
/// before: Ballista binds its executor ports itself, so the port is released before use, and
/// several embedded clusters starting at once (tests) must not be given the same one.
fn free_port() -> Result<u16> {
    static HANDED_OUT: Mutex<BTreeSet<u16>> = Mutex::new(BTreeSet::new());
    for _ in 0..64 {
        let listener = TcpListener::bind("127.0.0.1:0")
            .map_err(|e| exec_datafusion_err!("embedded cluster: no free loopback port: {e}"))?;
        let port = listener.local_addr()?.port();
        if HANDED_OUT
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(port)
        {
            return Ok(port);
        }
    }
    Err(exec_datafusion_err!(
        "embedded cluster: no loopback port left that this process has not used"
    ))
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

/// Times the embedded executor is started again after it stopped.
const EXECUTOR_RESTARTS: usize = 5;

/// Runs the embedded executor, and starts it again on fresh ports when it stops while the
/// scheduler lives (a service that failed, such as a port taken between [`free_port`] and
/// Ballista's bind): the scheduler removes a stopped executor and reschedules its tasks on
/// the one that registers next. Ballista's executor stops on SIGINT and SIGTERM too; after
/// one of those it is not restarted. `last_error` keeps why it last stopped, for the caller.
///
/// Ballista marks the whole process as terminating when an executor stops (a static that
/// every executor's heartbeat reports), which would make the scheduler drop the new
/// executor, and the other embedded clusters of the process (tests): the flag is cleared
/// before a restart.
async fn supervise_executor(
    state: std::sync::Weak<crate::ml::slots::State>,
    scheduler_port: u16,
    vcores: usize,
    work_dir: String,
    last_error: Arc<Mutex<Option<String>>>,
) {
    use futures::FutureExt;
    use tokio::signal::unix::{SignalKind, signal};
    let mut signals = match (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) {
        (Ok(i), Ok(t)) => Some((i, t)),
        _ => None,
    };
    for attempt in 0..=EXECUTOR_RESTARTS {
        let started = free_port().and_then(|port| {
            crate::session::executor_config(ExecutorProcessConfig {
                bind_host: "127.0.0.1".into(),
                external_host: Some("127.0.0.1".into()),
                port,
                grpc_port: free_port()?,
                scheduler_host: "127.0.0.1".into(),
                scheduler_port,
                vcores,
                task_scheduling_policy: TaskSchedulingPolicy::PushStaged,
                work_dir: Some(work_dir.clone()),
                ..Default::default()
            })
        });
        let why = match started {
            Ok(config) => {
                let id = config.executor_id.clone();
                let why = match start_executor_process(Arc::new(config)).await {
                    Ok(()) => {
                        "it stopped (a service failed or the scheduler stopped it)".to_string()
                    }
                    Err(e) => e.to_string(),
                };
                // Its heartbeat loop has ended (start_executor_process waits for it), but a
                // heartbeat sent after the scheduler removed it registered it again: the
                // scheduler would list a dead executor, and offer it tasks, until its
                // heartbeat expired. Remove it for good now.
                if let Some(state) = state.upgrade() {
                    let listed = state.executor_manager.get_executor_metadata(&id).await;
                    if listed.is_ok() {
                        tracing::info!(executor = %id, "removing the stopped embedded executor from the scheduler");
                        let _ = state
                            .executor_manager
                            .remove_executor(&id, Some(why.clone()))
                            .await;
                    }
                }
                why
            }
            Err(e) => e.to_string(),
        };
        *last_error.lock().unwrap_or_else(|e| e.into_inner()) = Some(why.clone());
        let signalled = signals.as_mut().is_some_and(|(i, t)| {
            i.recv().now_or_never().is_some() || t.recv().now_or_never().is_some()
        });
        if signalled || state.upgrade().is_none() {
            tracing::info!("embedded executor stopped");
            return;
        }
        if attempt == EXECUTOR_RESTARTS {
            tracing::error!(%why, "embedded executor stopped; not restarted after {EXECUTOR_RESTARTS} restarts");
            return;
        }
        tracing::warn!(%why, "embedded executor stopped; starting it again on fresh ports");
        ballista_executor::executor_server::TERMINATING
            .store(false, std::sync::atomic::Ordering::Release);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

impl EmbeddedCluster {
    /// Starts the scheduler and one executor with `vcores` task slots (default: the
    /// machine's cores) and waits until the executor has registered.
    pub async fn start(vcores: Option<usize>) -> Result<Self> {
        Ok(Self::start_with_state(vcores).await?.0)
    }

    /// [`Self::start`], with the scheduler state (the tests stop executors through it).
    async fn start_with_state(
        vcores: Option<usize>,
    ) -> Result<(Self, Arc<crate::ml::slots::State>)> {
        crate::memory::tune_malloc();
        let vcores = vcores
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
            .max(1);
        let listener = crate::net::listen(SocketAddr::from(([127, 0, 0, 1], 0)))
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
        let last_error = Arc::new(Mutex::new(None::<String>));
        tokio::spawn(supervise_executor(
            Arc::downgrade(&state),
            scheduler_addr.port(),
            vcores,
            work_dir.to_string_lossy().into_owned(),
            last_error.clone(),
        ));

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
                let why = last_error
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .clone()
                    .unwrap_or_else(|| "it did not stop with an error".into());
                return Err(ballista_err(
                    "the executor did not register within 30 s",
                    format!("last executor error: {why}"),
                ));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        crate::ml::slots::refresh(&state).await;
        crate::ml::slots::watch(&state);
        tracing::debug!(%scheduler_addr, vcores, "embedded cluster ready");
        Ok((
            Self {
                scheduler: scheduler_addr,
                vcores,
            },
            state,
        ))
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

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::AsArray;
    use datafusion::arrow::datatypes::Int64Type;

    async fn executor_ids(state: &crate::ml::slots::State) -> Vec<String> {
        let executors = state.executor_manager.get_executors_state().await.unwrap();
        executors.into_iter().map(|(m, _, _)| m.id).collect()
    }

    #[tokio::test]
    async fn a_stopped_executor_is_started_again_and_runs_the_next_job() {
        let (cluster, state) = EmbeddedCluster::start_with_state(Some(1)).await.unwrap();
        let first = executor_ids(&state).await;
        assert_eq!(first.len(), 1, "one embedded executor: {first:?}");

        // What the scheduler does to an executor whose heartbeat expired.
        state
            .executor_manager
            .stop_executor(&first[0], "stopped by the test".into())
            .await;
        state
            .executor_manager
            .remove_executor(&first[0], None)
            .await
            .unwrap();
        // A new executor registers, and the stopped one is gone for good: its heartbeat can
        // re-register it after the removal above, so the supervisor removes it again once
        // it has stopped (before that, both were listed for 30 s and more).
        let deadline = Instant::now() + Duration::from_secs(30);
        let second = loop {
            let ids = executor_ids(&state).await;
            if ids.len() == 1 && ids[0] != first[0] {
                break ids;
            }
            assert!(
                Instant::now() < deadline,
                "want one new executor in place of {}: {ids:?}",
                first[0]
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        // And it stays gone (a late heartbeat would list it again within a second).
        tokio::time::sleep(Duration::from_millis(1500)).await;
        assert_eq!(executor_ids(&state).await, second);
        assert!(
            !ballista_executor::executor_server::TERMINATING
                .load(std::sync::atomic::Ordering::Acquire),
            "the restarted executor must not report the stopped one's terminating status"
        );

        let session = crate::session::session_state(crate::session::session_config()).unwrap();
        let ctx = SessionContext::remote_with_state(&cluster.url(), session)
            .await
            .unwrap();
        let batches = ctx
            .sql("SELECT count(*) AS n FROM (VALUES (1), (2), (3)) AS t(x)")
            .await
            .unwrap()
            .collect()
            .await
            .unwrap();
        let n = batches[0].column(0).as_primitive::<Int64Type>().value(0);
        assert_eq!(n, 3);
    }

    #[test]
    fn ports_are_handed_out_once() {
        let ports: Vec<u16> = (0..200).map(|_| free_port().unwrap()).collect();
        let distinct: BTreeSet<u16> = ports.iter().copied().collect();
        assert_eq!(distinct.len(), ports.len());
    }
}

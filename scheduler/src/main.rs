//! `dlp-scheduler`: the Ballista scheduler with the Deep Learning Pipelines plugin and
//! Arrow Flight SQL. Every upstream `ballista-scheduler` flag keeps working.

mod auth;
mod autoscaler;
mod config;
mod flight;
mod jobs;
mod placement;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use ballista_scheduler::cluster::BallistaCluster;
use ballista_scheduler::config::{Config, SchedulerConfig, TaskDistributionPolicy};
use ballista_scheduler::scheduler_process::create_scheduler;
use clap::Parser;
use datafusion_proto::protobuf::{LogicalPlanNode, PhysicalPlanNode};
use tracing_subscriber::EnvFilter;

/// Ballista scheduler with the Deep Learning Pipelines plugin.
#[derive(Parser, Debug)]
#[command(name = "dlp-scheduler", version, about)]
struct Cli {
    #[command(flatten)]
    upstream: Config,
    /// Do not serve Arrow Flight SQL on the scheduler port (it is served by default).
    #[arg(long)]
    no_flight_sql: bool,
    /// Directory of model manifests, to check model names when planning (shared with the
    /// executors).
    #[arg(long, env = "DLP_MODEL_DIR")]
    model_dir: Option<PathBuf>,
    /// The plugin's configuration file (YAML; `autoscaler:` section), e.g. from a
    /// Kubernetes ConfigMap.
    #[arg(long, env = "DLP_CONFIG")]
    config: Option<PathBuf>,
    /// Flight SQL users file: one `user:password` per line (e.g. a mounted Secret). Clients
    /// authenticate with HTTP Basic in the Flight handshake.
    #[arg(long, env = "DLP_AUTH_FILE")]
    auth_file: Option<PathBuf>,
    /// Serve Flight SQL without authentication (only on a trusted network). Without it, a
    /// scheduler serving Flight SQL needs --auth-file.
    #[arg(long, env = "DLP_ALLOW_ANONYMOUS")]
    allow_anonymous: bool,
    /// Directories clients may read data from (repeatable, or ':'-separated in
    /// DLP_DATA_ROOTS): read_images, read_image and CREATE EXTERNAL TABLE locations must
    /// resolve under one, after '..' and symlinks; relative paths are taken from the first.
    /// Unset: no restriction.
    #[arg(long = "data-root", env = "DLP_DATA_ROOTS", value_delimiter = ':')]
    data_roots: Vec<PathBuf>,
    /// Ballista's own task distribution (--task-distribution) instead of the GPU-aware
    /// placement.
    #[arg(long)]
    no_device_placement: bool,
}

fn main() -> anyhow::Result<()> {
    // Deep plans recurse deeply while planning: same stack as the upstream binary.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_stack_size(32 * 1024 * 1024)
        .build()?;
    runtime.block_on(run(Cli::parse()))
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    if let Some(dir) = &cli.model_dir {
        dlp_plugin::torch::ProcessTorchConfig {
            model_dir: dir.clone(),
            ..dlp_plugin::torch::ProcessTorchConfig::from_env()
        }
        .install();
    }
    let filter = std::env::var(EnvFilter::DEFAULT_ENV)
        .unwrap_or_else(|_| cli.upstream.log_level_setting.clone());
    let prefix = format!(
        "scheduler_{}_{}",
        cli.upstream.external_host, cli.upstream.bind_port
    );
    dlp_plugin::logging::init(
        &filter,
        cli.upstream.print_thread_info,
        cli.upstream.log_dir.as_deref(),
        &prefix,
    );

    if !cli.data_roots.is_empty() {
        dlp_plugin::access::DataRoots::new(&cli.data_roots)
            .map_err(|e| anyhow::anyhow!("--data-root: {e}"))?
            .install();
    }
    let dlp_config = match &cli.config {
        Some(path) => config::DlpConfig::load(path)?,
        None => config::DlpConfig::default(),
    };
    for (name, source) in &dlp_config.functions {
        dlp_plugin::pipeline::functions::register(name, source.clone())
            .map_err(|e| anyhow::anyhow!("config functions.{name}: {e}"))?;
    }
    let authenticator: Option<Arc<dyn ballista_flight_sql::Authenticator>> =
        match (&cli.auth_file, cli.allow_anonymous) {
            (Some(path), _) => Some(Arc::new(auth::BasicAuthenticator::from_file(path)?)),
            (None, true) => None,
            (None, false) if cli.no_flight_sql => None,
            (None, false) => anyhow::bail!(
                "Flight SQL needs credentials: pass --auth-file (user:password lines, env \
             DLP_AUTH_FILE), or --allow-anonymous on a trusted network, or --no-flight-sql"
            ),
        };
    let device_placement = !cli.no_device_placement;

    let addr: SocketAddr = format!("{}:{}", cli.upstream.bind_host, cli.upstream.bind_port)
        .parse()
        .context("invalid --bind-host/--bind-port")?;
    let mut config: SchedulerConfig = cli
        .upstream
        .try_into()
        .map_err(|e| anyhow::anyhow!("invalid scheduler configuration: {e}"))?;
    config.flight_sql = config.flight_sql || !cli.no_flight_sql;
    let mut config = dlp_plugin::session::scheduler_config(config);
    if let Some(a) = &authenticator {
        config = config.with_flight_sql_authenticator(a.clone());
    }
    let cluster = BallistaCluster::new_from_config(&config)
        .await
        .map_err(|e| anyhow::anyhow!("cannot create the cluster state: {e}"))?;
    if device_placement {
        config = config.with_task_distribution(TaskDistributionPolicy::Custom(Arc::new(
            placement::DevicePlacement::new(cluster.cluster_state()),
        )));
    }
    tracing::info!(
        %addr,
        flight_sql = config.flight_sql,
        auth = if config.override_flight_sql_authenticator.is_some() { "basic" } else { "anonymous" },
        device_placement,
        autoscaler = dlp_config.autoscaler.enabled,
        "starting dlp-scheduler"
    );
    let config = Arc::new(config);
    config
        .validate()
        .map_err(|e| anyhow::anyhow!("invalid scheduler configuration: {e}"))?;
    let scheduler = create_scheduler::<LogicalPlanNode, PhysicalPlanNode>(cluster, config)
        .await
        .map_err(|e| anyhow::anyhow!("cannot start the scheduler: {e}"))?;
    if dlp_config.autoscaler.enabled {
        autoscaler::spawn(dlp_config.autoscaler.clone(), scheduler.state.clone());
    }
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr}"))?;
    // Pipeline jobs submitted over Flight are clients of this scheduler.
    let own = if addr.ip().is_unspecified() {
        format!("df://127.0.0.1:{}", addr.port())
    } else {
        format!("df://{addr}")
    };
    flight::serve(listener, scheduler, authenticator, own)
        .await
        .context("scheduler failed")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upstream_flags_parse_and_flight_sql_is_on_by_default() {
        let cli = Cli::try_parse_from(["dlp-scheduler", "--bind-port", "50123"]).unwrap();
        assert_eq!(cli.upstream.bind_port, 50123);
        assert!(!cli.no_flight_sql);
        let cli = Cli::try_parse_from(["dlp-scheduler", "--no-flight-sql"]).unwrap();
        assert!(cli.no_flight_sql);
        let cli = Cli::try_parse_from([
            "dlp-scheduler",
            "--config",
            "/etc/dlp/dlp.yaml",
            "--auth-file",
            "/etc/dlp/auth/users",
            "--namespace",
            "ballista",
        ])
        .unwrap();
        assert_eq!(cli.config.unwrap(), PathBuf::from("/etc/dlp/dlp.yaml"));
        assert_eq!(cli.auth_file.unwrap(), PathBuf::from("/etc/dlp/auth/users"));
        assert!(!cli.allow_anonymous);
    }
}

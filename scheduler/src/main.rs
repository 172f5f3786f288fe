//! `dlp-scheduler`: the Ballista scheduler with the Deep Learning Pipelines plugin and
//! Arrow Flight SQL. Every upstream `ballista-scheduler` flag keeps working.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use ballista_scheduler::cluster::BallistaCluster;
use ballista_scheduler::config::{Config, SchedulerConfig};
use ballista_scheduler::scheduler_process::start_server;
use clap::Parser;
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
    model_dir: Option<std::path::PathBuf>,
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

    let addr: SocketAddr = format!("{}:{}", cli.upstream.bind_host, cli.upstream.bind_port)
        .parse()
        .context("invalid --bind-host/--bind-port")?;
    let mut config: SchedulerConfig = cli
        .upstream
        .try_into()
        .map_err(|e| anyhow::anyhow!("invalid scheduler configuration: {e}"))?;
    config.flight_sql = config.flight_sql || !cli.no_flight_sql;
    let config = dlp_plugin::session::scheduler_config(config);
    tracing::info!(%addr, flight_sql = config.flight_sql, "starting dlp-scheduler");
    let cluster = BallistaCluster::new_from_config(&config)
        .await
        .map_err(|e| anyhow::anyhow!("cannot create the cluster state: {e}"))?;
    start_server(cluster, addr, Arc::new(config))
        .await
        .map_err(|e| anyhow::anyhow!("scheduler failed: {e}"))
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
    }
}

//! `dlp-executor`: the Ballista executor with the Deep Learning Pipelines plugin. Every
//! upstream `ballista-executor` flag keeps working; health probes are served on
//! `--bind-health-port`.

mod gate;

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use ballista_executor::config::Config;
use ballista_executor::executor_process::{ExecutorProcessConfig, start_executor_process};
use ballista_executor::health::spawn_health_server;
use clap::Parser;
use tracing_subscriber::EnvFilter;

/// Ballista executor with the Deep Learning Pipelines plugin.
#[derive(Parser, Debug)]
#[command(name = "dlp-executor", version, about)]
struct Cli {
    #[command(flatten)]
    upstream: Config,
    /// Ceilings clients cannot raise.
    #[command(flatten)]
    limits: dlp_plugin::limits::Limits,
    /// Device for torch operators: auto (CUDA when present), cpu, or cuda:N.
    #[arg(long, default_value = "auto", env = "DLP_DEVICE")]
    device: String,
    /// Directory of TorchScript models and their manifests (shared with the scheduler).
    #[arg(long, env = "DLP_MODEL_DIR")]
    model_dir: Option<std::path::PathBuf>,
    /// Directories clients may read data from (repeatable, or ':'-separated in
    /// DLP_DATA_ROOTS): read_images, read_image and CREATE EXTERNAL TABLE locations must
    /// resolve under one, after '..' and symlinks; relative paths are taken from the first.
    /// Unset: no restriction.
    #[arg(long = "data-root", env = "DLP_DATA_ROOTS", value_delimiter = ':')]
    data_roots: Vec<PathBuf>,
    /// Directories where anything is written for a client (COPY TO, INSERT INTO, saved
    /// models, reports, logistic regression work files): repeatable, or ':'-separated in
    /// DLP_WRITABLE_ROOTS. With data roots and no writable root, nothing is written.
    #[arg(
        long = "writable-root",
        env = "DLP_WRITABLE_ROOTS",
        value_delimiter = ':'
    )]
    writable_roots: Vec<PathBuf>,
    /// Device class announced to the scheduler's placement and autoscaler (the executor id
    /// is prefixed with it): cpu or gpu. Default: gpu when the resolved device is CUDA.
    #[arg(long, env = "DLP_DEVICE_CLASS")]
    device_class: Option<DeviceClassArg>,
    /// File holding the cluster secret shared with the scheduler (at least 32 characters).
    /// With it, the executor presents the cluster token to the scheduler and to other
    /// executors, and its Flight and gRPC ports serve only requests that carry the token
    /// (Ballista's servers move to loopback behind a gate on --external-host).
    #[arg(long, env = "DLP_CLUSTER_SECRET_FILE")]
    cluster_secret_file: Option<PathBuf>,
    /// CA certificate (PEM) of a scheduler whose port speaks TLS (dlp-scheduler
    /// --tls-cert): the executor then dials it over TLS.
    #[arg(long, env = "DLP_SCHEDULER_TLS_CA")]
    scheduler_tls_ca: Option<PathBuf>,
    /// Name in the scheduler's certificate, when it is not --scheduler-host.
    #[arg(long, env = "DLP_SCHEDULER_TLS_DOMAIN")]
    scheduler_tls_domain: Option<String>,
    /// The cluster's config file (`dlp.yaml`, the scheduler's): the executor reads its
    /// `storage:` section (object-store concurrency, timeouts, retries, per-bucket
    /// settings).
    #[arg(long, env = "DLP_CONFIG")]
    config: Option<PathBuf>,
    /// Serve Prometheus metrics (images decoded, invalid images, inference batches, images
    /// and time per model, the device) at http://<bind-host>:<port>/metrics.
    #[arg(long, env = "DLP_METRICS_PORT")]
    metrics_port: Option<u16>,
}

/// Serves `/metrics` on `addr` in the background.
async fn spawn_metrics_server(
    addr: SocketAddr,
    info: Vec<(&'static str, String)>,
) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("--metrics-port: cannot listen on {addr}"))?;
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let info = info.clone();
            async move {
                let labels: Vec<(&str, &str)> =
                    info.iter().map(|(k, v)| (*k, v.as_str())).collect();
                (
                    [(
                        axum::http::header::CONTENT_TYPE,
                        "text/plain; version=0.0.4",
                    )],
                    dlp_plugin::metrics::render(&labels),
                )
            }
        }),
    );
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!("metrics server failed: {e}");
        }
    });
    tracing::info!(%addr, "serving Prometheus metrics at /metrics");
    Ok(())
}

/// `--device-class`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum DeviceClassArg {
    Cpu,
    Gpu,
}

/// The id the scheduler sees: `<class>-<id>` (the class prefix is how executors announce
/// their device class; Ballista's registration carries no labels).
fn executor_id(class: DeviceClassArg, id: Option<&str>) -> String {
    let prefix = match class {
        DeviceClassArg::Cpu => "cpu-",
        DeviceClassArg::Gpu => "gpu-",
    };
    let id = id.map_or_else(new_uuid, str::to_string);
    let id = id
        .strip_prefix("cpu-")
        .or_else(|| id.strip_prefix("gpu-"))
        .unwrap_or(&id);
    format!("{prefix}{id}")
}

fn new_uuid() -> String {
    // Ballista's own default id is a random UUID: keep its shape.
    let config: ExecutorProcessConfig = ExecutorProcessConfig::default();
    config.executor_id
}

/// The address the gate listens on: --bind-host when it is a specific address, else the
/// address --external-host resolves to.
async fn gate_ip(bind_host: &str, external_host: Option<&str>) -> anyhow::Result<IpAddr> {
    if let Ok(ip) = bind_host.parse::<IpAddr>()
        && !ip.is_unspecified()
    {
        return Ok(ip);
    }
    let host = external_host.context(
        "--cluster-secret-file with a wildcard --bind-host needs --external-host (the \
         executor's own address, e.g. the pod IP): the gate listens there",
    )?;
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok(ip);
    }
    tokio::net::lookup_host((host, 0))
        .await
        .with_context(|| format!("--external-host {host}: cannot resolve"))?
        .next()
        .map(|a| a.ip())
        .with_context(|| format!("--external-host {host}: no address"))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    cli.limits.install();
    let secret = match &cli.cluster_secret_file {
        Some(path) => {
            let secret = dlp_plugin::credentials::ClusterSecret::from_file(path)
                .map_err(|e| anyhow::anyhow!("--cluster-secret-file: {e}"))?;
            secret.clone().install();
            Some(secret)
        }
        None => None,
    };
    if let Some(roots) =
        dlp_plugin::access::DataRoots::from_flags(&cli.data_roots, &cli.writable_roots)
            .map_err(|e| anyhow::anyhow!("--data-root / --writable-root: {e}"))?
    {
        roots.install();
    }
    let device: dlp_plugin::torch::DeviceSpec = cli
        .device
        .parse()
        .map_err(|e| anyhow::anyhow!("--device: {e}"))?;
    // Fail at start-up, not in the first task, when the requested GPU is not there.
    let chosen = device
        .resolve()
        .map_err(|e| anyhow::anyhow!("--device: {e}"))?;
    let vcores = if cli.upstream.vcores > 0 {
        cli.upstream.vcores
    } else {
        std::thread::available_parallelism().map_or(1, |n| n.get())
    };
    if let Some(path) = &cli.config {
        let storage = dlp_plugin::storage::StorageConfig::from_file(path)
            .map_err(|e| anyhow::anyhow!("--config: {e}"))?;
        dlp_plugin::storage::configure(storage).map_err(|e| anyhow::anyhow!("--config: {e}"))?;
    }
    dlp_plugin::torch::ProcessTorchConfig {
        model_dir: dlp_plugin::storage::localize_path(
            cli.model_dir
                .clone()
                .unwrap_or_else(dlp_plugin::torch::manifest::default_model_dir),
        )
        .map_err(|e| anyhow::anyhow!("--model-dir: {e}"))?,
        device,
        threads: vcores,
        ..dlp_plugin::torch::ProcessTorchConfig::from_env()
    }
    .install();
    let class = cli.device_class.unwrap_or(if chosen.is_cuda() {
        DeviceClassArg::Gpu
    } else {
        DeviceClassArg::Cpu
    });
    let mut upstream = cli.upstream;
    upstream.executor_id = Some(executor_id(class, upstream.executor_id.as_deref()));
    let cli = Cli { upstream, ..cli };
    let scheduler_tls = match &cli.scheduler_tls_ca {
        Some(ca) => Some(
            dlp_plugin::credentials::TlsClient::from_file(ca)
                .map_err(|e| anyhow::anyhow!("--scheduler-tls-ca: {e}"))?
                .with_domain(cli.scheduler_tls_domain.clone()),
        ),
        None => None,
    };
    let bind_host = cli.upstream.bind_host.clone();
    let health_port = cli.upstream.bind_health_port;
    let external_host = cli.upstream.external_host.clone();
    let mut config: ExecutorProcessConfig = cli
        .upstream
        .try_into()
        .map_err(|e| anyhow::anyhow!("invalid executor configuration: {e}"))?;
    // The executor's ports behind the gate, and the cluster token on every channel it opens.
    let gate = match secret {
        Some(secret) => {
            let ip = gate_ip(&bind_host, external_host.as_deref()).await?;
            let internal = gate::internal_host(ip);
            config.bind_host = internal.to_string();
            Some((secret, ip, internal))
        }
        None => None,
    };
    // The scheduler channel: the cluster token, over TLS when the scheduler's port speaks it.
    config.override_create_grpc_client_endpoint =
        dlp_plugin::credentials::cluster_endpoint_override(
            scheduler_tls.map(dlp_plugin::credentials::tls_override),
        );
    let filter = std::env::var(EnvFilter::DEFAULT_ENV)
        .unwrap_or_else(|_| config.special_mod_log_level.clone());
    dlp_plugin::logging::init(
        &filter,
        config.print_thread_info,
        config.log_dir.as_deref(),
        &config.log_file_name_prefix(),
    );
    // After the logging, so that a bad DLP_MALLOC_ARENAS or DLP_MALLOC_KEEP_MB is reported;
    // before any task runs.
    dlp_plugin::memory::tune_malloc();
    let config = dlp_plugin::session::executor_config(config)
        .map_err(|e| anyhow::anyhow!("cannot install the plugin: {e}"))?;

    let health_addr: SocketAddr = format!("{bind_host}:{health_port}")
        .parse()
        .context("invalid --bind-host/--bind-health-port")?;
    if let Some(port) = cli.metrics_port {
        let addr: SocketAddr = format!("{bind_host}:{port}")
            .parse()
            .context("invalid --bind-host/--metrics-port")?;
        let class = match class {
            DeviceClassArg::Cpu => "cpu",
            DeviceClassArg::Gpu => "gpu",
        };
        let info = vec![
            ("executor", config.executor_id.clone()),
            ("device", format!("{chosen:?}").to_lowercase()),
            ("class", class.to_string()),
        ];
        spawn_metrics_server(addr, info).await?;
    }
    if let Some((secret, ip, internal)) = gate {
        for port in [config.port, config.grpc_port] {
            gate::spawn(
                SocketAddr::new(ip, port),
                SocketAddr::new(internal, port),
                secret.clone(),
            )
            .await?;
        }
    }
    let (stop_health, health_stopped) = tokio::sync::oneshot::channel();
    let health = spawn_health_server(health_addr, config.health.clone(), health_stopped);
    tracing::info!(
        id = %config.executor_id,
        vcores = config.vcores,
        device = ?chosen,
        class = ?class,
        model_dir = %dlp_plugin::torch::ProcessTorchConfig::get().model_dir.display(),
        "starting dlp-executor"
    );
    let result = start_executor_process(Arc::new(config)).await;
    let _ = stop_health.send(());
    let _ = health.await;
    result.map_err(|e| anyhow::anyhow!("executor failed: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upstream_flags_parse() {
        let cli =
            Cli::try_parse_from(["dlp-executor", "--scheduler-port", "50123", "--vcores", "3"])
                .unwrap();
        assert_eq!(cli.upstream.scheduler_port, 50123);
        assert_eq!(cli.upstream.vcores, 3);
        let cli =
            Cli::try_parse_from(["dlp-executor", "--device-class", "gpu", "--id", "a"]).unwrap();
        assert_eq!(cli.device_class, Some(DeviceClassArg::Gpu));
    }

    #[test]
    fn executor_ids_carry_the_device_class() {
        assert_eq!(executor_id(DeviceClassArg::Gpu, Some("pod-1")), "gpu-pod-1");
        assert_eq!(
            executor_id(DeviceClassArg::Cpu, Some("gpu-pod-1")),
            "cpu-pod-1"
        );
        let id = executor_id(DeviceClassArg::Cpu, None);
        assert!(id.starts_with("cpu-") && id.len() > 30, "{id}");
    }
}

//! `dlp-scheduler`: the Ballista scheduler with the Deep Learning Pipelines plugin and
//! Arrow Flight SQL. Every upstream `ballista-scheduler` flag keeps working.

mod auth;
mod autoscaler;
mod config;
mod flight;
mod gate;
mod jobs;
mod placement;
mod tls;

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
#[command(
    name = "dlp-scheduler",
    version,
    about,
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    upstream: Config,
    /// Ceilings clients cannot raise.
    #[command(flatten)]
    limits: dlp_plugin::limits::Limits,
    /// Ceilings of pipeline jobs.
    #[command(flatten)]
    job_limits: jobs::JobLimits,
    /// Memory (bytes) a query run inside the scheduler may use (information_schema, SHOW,
    /// DDL: Flight SQL runs them here); spilling operators spill, others fail past it.
    #[arg(long, env = "DLP_SCHEDULER_QUERY_MEMORY", default_value_t = 1 << 30)]
    scheduler_query_memory: usize,
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
    /// Users file: one `user:bcrypt-hash` per line, as `htpasswd -nB` or `dlp-scheduler
    /// hash-password` write them (e.g. a mounted Secret). Clients authenticate with HTTP
    /// Basic in the Flight handshake and present its bearer token on every call.
    #[arg(long, env = "DLP_AUTH_FILE")]
    auth_file: Option<PathBuf>,
    /// File holding the cluster secret shared with the executors (at least 32 characters):
    /// executors without it cannot register, poll for tasks or fetch shuffle data. Required
    /// with --auth-file.
    #[arg(long, env = "DLP_CLUSTER_SECRET_FILE")]
    cluster_secret_file: Option<PathBuf>,
    /// Users who may use Ballista's REST API (/api/...), which shows every user's jobs
    /// (repeatable, or comma-separated in DLP_ADMINS). With --auth-file and no admin, the
    /// REST API refuses everyone.
    #[arg(long = "admin", env = "DLP_ADMINS", value_delimiter = ',')]
    admins: Vec<String>,
    /// TLS certificate chain (PEM) of the scheduler's port, e.g. a cert-manager Secret's
    /// tls.crt; with --tls-key. Clients then use grpc+tls:// (ADBC, pyarrow) or
    /// `dlp --scheduler df+tls://...`, executors --scheduler-tls-ca.
    #[arg(long, env = "DLP_TLS_CERT", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// TLS private key (PEM) of --tls-cert.
    #[arg(long, env = "DLP_TLS_KEY", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Seconds a session token lives from the handshake on, however much it is used.
    #[arg(long, env = "DLP_TOKEN_LIFETIME_SECONDS", default_value_t = 12 * 3600)]
    token_lifetime_seconds: u64,
    /// Seconds a session token lives without use.
    #[arg(long, env = "DLP_TOKEN_IDLE_SECONDS", default_value_t = 3600)]
    token_idle_seconds: u64,
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
    /// Directories where anything is written for a client (COPY TO, INSERT INTO, saved
    /// models, reports, logistic regression work files): repeatable, or ':'-separated in
    /// DLP_WRITABLE_ROOTS. With data roots and no writable root, nothing is written.
    #[arg(
        long = "writable-root",
        env = "DLP_WRITABLE_ROOTS",
        value_delimiter = ':'
    )]
    writable_roots: Vec<PathBuf>,
    /// Directory where pipeline job records and the functions users register with CREATE
    /// FUNCTION are kept, so that a restart loses neither (a job cut by the restart is
    /// shown failed with that cause). Unset: in memory only.
    #[arg(long, env = "DLP_STATE_DIR")]
    state_dir: Option<PathBuf>,
    /// Ballista's own task distribution (--task-distribution) instead of the GPU-aware
    /// placement.
    #[arg(long)]
    no_device_placement: bool,
}

/// Subcommands (the scheduler itself runs without one).
#[derive(clap::Subcommand, Debug)]
enum Command {
    /// Prints a users-file line `USER:bcrypt-hash` for --auth-file. The password is read
    /// from DLP_PASSWORD, else from the first line of standard input (never an argument).
    HashPassword {
        /// The user name.
        #[arg(long)]
        user: String,
        /// bcrypt cost (4-31; every step doubles the work).
        #[arg(long, default_value_t = auth::DEFAULT_COST)]
        cost: u32,
    },
}

fn hash_password(user: &str, cost: u32) -> anyhow::Result<()> {
    let password = match std::env::var("DLP_PASSWORD") {
        Ok(p) => p,
        Err(_) => {
            let mut line = String::new();
            std::io::stdin()
                .read_line(&mut line)
                .context("cannot read the password from standard input")?;
            line.trim_end_matches(['\r', '\n']).to_string()
        }
    };
    println!("{}", auth::users_line(user, &password, cost)?);
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if let Some(Command::HashPassword { user, cost }) = &cli.command {
        return hash_password(user, *cost);
    }
    // Deep plans recurse deeply while planning: same stack as the upstream binary.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_stack_size(32 * 1024 * 1024)
        .build()?;
    runtime.block_on(run(cli))
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    cli.limits.install();
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

    if let Some(roots) =
        dlp_plugin::access::DataRoots::from_flags(&cli.data_roots, &cli.writable_roots)
            .map_err(|e| anyhow::anyhow!("--data-root / --writable-root: {e}"))?
    {
        roots.install();
    }
    let dlp_config = match &cli.config {
        Some(path) => config::DlpConfig::load(path)?,
        None => config::DlpConfig::default(),
    };
    dlp_plugin::storage::configure(dlp_config.storage.clone())
        .map_err(|e| anyhow::anyhow!("storage: {e}"))?;
    if let Some(dir) = &cli.model_dir {
        dlp_plugin::torch::ProcessTorchConfig {
            model_dir: dlp_plugin::storage::localize_path(dir.clone())
                .map_err(|e| anyhow::anyhow!("--model-dir: {e}"))?,
            ..dlp_plugin::torch::ProcessTorchConfig::from_env()
        }
        .install();
    }
    for (name, source) in &dlp_config.functions {
        dlp_plugin::sql::functions::register(name, source.clone())
            .map_err(|e| anyhow::anyhow!("config functions.{name}: {e}"))?;
    }
    if let Some(dir) = &cli.state_dir {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("--state-dir: cannot create {}", dir.display()))?;
        let restored = dlp_plugin::sql::functions::persist_in(&dir.join("functions.json"))
            .map_err(|e| anyhow::anyhow!("--state-dir: {}", e.strip_backtrace()))?;
        tracing::info!(restored, state_dir = %dir.display(), "registered functions restored");
    }
    let users = match (&cli.auth_file, cli.allow_anonymous) {
        (Some(path), _) => Some(Arc::new(auth::Users::from_file(path)?)),
        (None, true) => None,
        (None, false) => anyhow::bail!(
            "the scheduler needs credentials: pass --auth-file (user:bcrypt-hash lines, env \
             DLP_AUTH_FILE) with --cluster-secret-file, or --allow-anonymous on a trusted \
             network"
        ),
    };
    let cluster = match &cli.cluster_secret_file {
        Some(path) => Some(
            dlp_plugin::credentials::ClusterSecret::from_file(path)
                .map_err(|e| anyhow::anyhow!("--cluster-secret-file: {e}"))?,
        ),
        None if users.is_some() => anyhow::bail!(
            "--auth-file needs --cluster-secret-file (env DLP_CLUSTER_SECRET_FILE): without \
             a cluster secret any process could register as an executor and receive users' \
             tasks"
        ),
        None => None,
    };
    if let Some(secret) = &cluster {
        secret.clone().install();
    }
    if users.is_none() && !cli.admins.is_empty() {
        anyhow::bail!("--admin needs --auth-file");
    }
    let auth = Arc::new(auth::Auth {
        users,
        admins: cli.admins.clone(),
        tokens: auth::Tokens::new(auth::TokenPolicy {
            lifetime: std::time::Duration::from_secs(cli.token_lifetime_seconds.max(1)),
            idle: std::time::Duration::from_secs(cli.token_idle_seconds.max(1)),
        }),
        throttle: auth::Throttle::new(auth::ThrottlePolicy::default()),
        cluster,
        checks: tokio::sync::Semaphore::new(auth::CONCURRENT_CHECKS),
    });
    let device_placement = !cli.no_device_placement;
    let tls = match (&cli.tls_cert, &cli.tls_key) {
        (Some(cert), Some(key)) => Some(tls::acceptor(cert, key)?),
        _ => None,
    };

    let addr: SocketAddr = format!("{}:{}", cli.upstream.bind_host, cli.upstream.bind_port)
        .parse()
        .context("invalid --bind-host/--bind-port")?;
    let mut config: SchedulerConfig = cli
        .upstream
        .try_into()
        .map_err(|e| anyhow::anyhow!("invalid scheduler configuration: {e}"))?;
    config.flight_sql = config.flight_sql || !cli.no_flight_sql;
    if !auth.anonymous() || auth.cluster.is_some() {
        // Clients fetch results through this port (where tickets are checked), never from
        // the executors, whose ports only cluster processes may use.
        config.enable_embedded_flight_proxy = true;
        config.advertise_flight_endpoint = None;
    }
    // The cluster token on every channel the scheduler opens (to executors).
    config.override_create_grpc_client_endpoint =
        dlp_plugin::credentials::cluster_endpoint_override(None);
    let mut config = dlp_plugin::session::scheduler_config(config);
    // Queries that run inside the scheduler get a bounded memory pool.
    let memory = cli.scheduler_query_memory;
    config.override_session_builder = Some(Arc::new(move |session_config| {
        let state = dlp_plugin::session::session_state(session_config)?;
        let runtime = datafusion::execution::runtime_env::RuntimeEnvBuilder::from_runtime_env(
            state.runtime_env(),
        )
        .with_memory_limit(memory, 1.0)
        .build_arc()?;
        Ok(
            datafusion::execution::SessionStateBuilder::new_from_existing(state)
                .with_runtime_env(runtime)
                .build(),
        )
    }));
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
        auth = if auth.anonymous() { "anonymous" } else { "users" },
        cluster_secret = auth.cluster.is_some(),
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
    // Iterative jobs are planned as one task per slot of the cluster.
    dlp_plugin::ml::slots::watch(&scheduler.state);
    if dlp_config.autoscaler.enabled {
        autoscaler::spawn(dlp_config.autoscaler.clone(), scheduler.state.clone());
    }
    let listener =
        dlp_plugin::net::listen(addr).with_context(|| format!("cannot listen on {addr}"))?;
    // Pipeline jobs submitted over Flight are clients of this scheduler.
    let (own, internal) = if tls.is_some() {
        let internal = dlp_plugin::net::listen(std::net::SocketAddr::from(([127, 0, 0, 1], 0)))
            .context("cannot open the loopback port of pipeline jobs")?;
        (format!("df://{}", internal.local_addr()?), Some(internal))
    } else if addr.ip().is_unspecified() {
        (format!("df://127.0.0.1:{}", addr.port()), None)
    } else {
        (format!("df://{addr}"), None)
    };
    flight::serve(
        listener,
        internal,
        tls,
        scheduler,
        auth,
        own,
        cli.job_limits,
        cli.state_dir.clone(),
    )
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
        let cli =
            Cli::try_parse_from(["dlp-scheduler", "hash-password", "--user", "alice"]).unwrap();
        assert!(matches!(cli.command, Some(Command::HashPassword { .. })));
        let cli =
            Cli::try_parse_from(["dlp-scheduler", "--admin", "alice,bob", "--admin", "carol"])
                .unwrap();
        assert_eq!(cli.admins, ["alice", "bob", "carol"]);
    }
}

//! `dlp`: the Ballista DLP client. Runs on an embedded scheduler + executor by default, or
//! on a cluster with `--scheduler df://host:port`; `dlp submit|jobs|status|watch|cancel`
//! manage pipeline jobs on a cluster's scheduler.

mod images;
mod jobs;
mod models;
mod output;
mod pipeline;
mod plot;

use std::io::Write;

use anyhow::Context;
use clap::{Parser, Subcommand};
use datafusion::prelude::SessionContext;
use tracing_subscriber::EnvFilter;

use output::Format;

/// Deep Learning Pipelines on Apache DataFusion Ballista.
///
/// Without --scheduler, every command starts an embedded Ballista scheduler and executor in
/// this process; with --scheduler df://host:port it runs on that cluster.
///
/// Pipeline jobs on a cluster (they need --scheduler): dlp submit SPEC.yaml runs a job spec
/// on the cluster's scheduler and follows it (--detach returns at once); dlp jobs lists
/// your jobs, dlp status ID shows one, dlp watch ID follows one, dlp cancel ID stops one.
#[derive(Parser, Debug)]
#[command(name = "dlp", version, about, long_about)]
struct Cli {
    /// Scheduler of a Ballista DLP cluster, e.g. df://localhost:50050 (default: embedded).
    #[arg(long, global = true, env = "DLP_SCHEDULER")]
    scheduler: Option<String>,
    /// User to log in as on a --scheduler that requires credentials. The password comes
    /// from DLP_PASSWORD, else from --password-file (never from the command line).
    #[arg(long, global = true, env = "DLP_USER")]
    user: Option<String>,
    /// File whose first line is the password of --user.
    #[arg(long, global = true, env = "DLP_PASSWORD_FILE")]
    password_file: Option<std::path::PathBuf>,
    /// CA certificate (PEM) of a --scheduler whose port speaks TLS (`df+tls://host:port`).
    #[arg(long, global = true, env = "DLP_TLS_CA")]
    tls_ca: Option<std::path::PathBuf>,
    /// Name in the scheduler's certificate, when it is not the host of --scheduler.
    #[arg(long, global = true, env = "DLP_TLS_DOMAIN")]
    tls_domain: Option<String>,
    /// Task slots of the embedded executor (default: the number of cores).
    #[arg(long, global = true)]
    parallelism: Option<usize>,
    /// Log filter in RUST_LOG syntax, e.g. info or dlp_plugin=debug.
    #[arg(long, global = true, default_value = "warn", env = "RUST_LOG")]
    log: String,
    /// Directory of TorchScript models and manifests (default: $DLP_MODEL_DIR, else
    /// ~/.cache/dlp/models).
    #[arg(long, global = true, env = "DLP_MODEL_DIR")]
    model_dir: Option<std::path::PathBuf>,
    /// Device of the embedded executor: auto, cpu or cuda:N.
    #[arg(long, global = true, default_value = "auto", env = "DLP_DEVICE")]
    device: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run a SQL query with the plugin's functions, e.g.
    /// dlp sql "SELECT label_name, count(*) FROM read_images('data/flowers', 'withLabel=true') GROUP BY 1"
    Sql {
        /// The query (one statement; DDL such as CREATE EXTERNAL TABLE is allowed before it,
        /// separated by ';').
        query: String,
        /// Output format: table, csv or json (one array of row objects, binary as base64).
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
    },
    /// Read an image folder (labels from sub-folder names) and summarize it: images per
    /// class, invalid images (and which files), decode throughput.
    Images(images::ImagesArgs),
    /// Manage the model directory: list, verify, export pretrained models.
    #[command(subcommand)]
    Models(models::ModelsCommand),
    /// Fit the pipeline of a YAML job spec on its training split, evaluate it on the test
    /// split, save the PipelineModel and write the report (text, JSON, confusion matrix PNG
    /// and SVG). Example: dlp fit examples/flowers.yaml
    Fit(pipeline::JobArgs),
    /// Like fit, but first pick the estimator's parameters with the spec's tuning section
    /// (cross-validation or a train-validation split over a parameter grid), running
    /// `parallelism` candidate fits at once. Example: dlp tune examples/flowers-tune.yaml
    Tune(pipeline::JobArgs),
    /// Evaluate a saved PipelineModel on a labelled image folder (one sub-folder per class).
    Evaluate(pipeline::EvaluateArgs),
    /// Apply a saved PipelineModel to images: predicted class and probability per image.
    Predict(pipeline::PredictArgs),
    #[command(flatten)]
    Jobs(jobs::JobCommand),
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    match run().await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // The message and its causes, as anyhow prints them, without the backtrace that
            // RUST_BACKTRACE=1 would add to every user error.
            eprintln!("Error: {e}");
            let causes: Vec<_> = e.chain().skip(1).collect();
            if !causes.is_empty() {
                eprintln!("\nCaused by:");
                for (i, cause) in causes.iter().enumerate() {
                    eprintln!("    {i}: {cause}");
                }
            }
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run() -> anyhow::Result<()> {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(EnvFilter::new(&cli.log))
        .init();
    let device: dlp_plugin::torch::DeviceSpec = cli
        .device
        .parse()
        .map_err(|e| anyhow::anyhow!("--device: {e}"))?;
    let torch = dlp_plugin::torch::ProcessTorchConfig {
        model_dir: dlp_plugin::storage::localize_path(
            cli.model_dir
                .clone()
                .unwrap_or_else(dlp_plugin::torch::manifest::default_model_dir),
        )
        .map_err(|e| anyhow::anyhow!("--model-dir: {e}"))?,
        device,
        threads: cli
            .parallelism
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get())),
        ..dlp_plugin::torch::ProcessTorchConfig::from_env()
    };
    let zoo = torch.zoo();
    torch.install();
    if let Command::Models(cmd) = &cli.command {
        return models::run(&zoo, cmd);
    }
    // Pipeline jobs run on a cluster's scheduler: no embedded cluster here.
    if let Command::Jobs(cmd) = &cli.command {
        let Some(url) = cli.scheduler.as_deref() else {
            anyhow::bail!("{}", cmd.needs_scheduler());
        };
        let tls = tls_client(&cli)?;
        let url = scheduler_url(url, tls.is_some())?;
        let login = user_login(&cli)?;
        return jobs::run(cmd, jobs::Remote { url, login, tls }).await;
    }
    let work = async {
        let login = user_login(&cli)?;
        let tls = tls_client(&cli)?;
        let ctx = connect(cli.scheduler.as_deref(), cli.parallelism, login, tls).await?;
        match cli.command {
            Command::Models(_) | Command::Jobs(_) => unreachable!("handled above"),
            Command::Sql { query, format } => run_sql(&ctx, &query, format).await,
            Command::Images(args) => images::run(&ctx, &args, cli.scheduler.as_deref()).await,
            Command::Fit(args) => pipeline::run_job_command(&ctx, &args, false).await,
            Command::Tune(args) => pipeline::run_job_command(&ctx, &args, true).await,
            Command::Evaluate(args) => pipeline::evaluate(&ctx, &args).await,
            Command::Predict(args) => pipeline::predict(&ctx, &args).await,
        }
    };
    // The embedded executor listens for Ctrl-C to shut itself down, which takes the
    // default SIGINT action away: stop the whole command here instead.
    tokio::select! {
        result = work => result,
        _ = tokio::signal::ctrl_c() => {
            eprintln!("interrupted");
            std::process::exit(130);
        }
    }
}

/// The user and password to log in with on a --scheduler, if --user is given.
fn user_login(cli: &Cli) -> anyhow::Result<Option<(String, String)>> {
    match (&cli.user, cli.scheduler.is_some()) {
        (Some(user), true) => Ok(Some((
            user.clone(),
            password(cli.password_file.as_deref())?,
        ))),
        (Some(_), false) => {
            anyhow::bail!("--user is for a --scheduler; the embedded cluster has no users")
        }
        (None, _) => Ok(None),
    }
}

/// TLS towards the scheduler, with --tls-ca.
fn tls_client(cli: &Cli) -> anyhow::Result<Option<dlp_plugin::credentials::TlsClient>> {
    cli.tls_ca
        .as_ref()
        .map(|ca| {
            Ok(dlp_plugin::credentials::TlsClient::from_file(ca)
                .map_err(|e| anyhow::anyhow!("--tls-ca: {e}"))?
                .with_domain(cli.tls_domain.clone()))
        })
        .transpose()
}

/// `--scheduler` as the clients dial it: `df+tls://` (which needs --tls-ca) as `df://`,
/// the TLS coming from the CA certificate.
fn scheduler_url(url: &str, tls: bool) -> anyhow::Result<String> {
    match url.strip_prefix("df+tls://") {
        Some(rest) if tls => Ok(format!("df://{rest}")),
        Some(_) => anyhow::bail!(
            "--scheduler {url}: TLS needs --tls-ca (DLP_TLS_CA), the CA certificate \
             that signed the scheduler's"
        ),
        None => Ok(url.to_string()),
    }
}

/// The password of --user: DLP_PASSWORD, else the first line of --password-file.
fn password(file: Option<&std::path::Path>) -> anyhow::Result<String> {
    if let Ok(p) = std::env::var("DLP_PASSWORD") {
        return Ok(p);
    }
    let Some(file) = file else {
        anyhow::bail!("--user needs a password: set DLP_PASSWORD or pass --password-file");
    };
    let text = std::fs::read_to_string(file)
        .with_context(|| format!("--password-file {}", file.display()))?;
    Ok(text.lines().next().unwrap_or_default().to_string())
}

async fn connect(
    scheduler: Option<&str>,
    parallelism: Option<usize>,
    login: Option<(String, String)>,
    tls: Option<dlp_plugin::credentials::TlsClient>,
) -> anyhow::Result<SessionContext> {
    match scheduler {
        Some(url) => {
            let url = scheduler_url(url, tls.is_some())?;
            let token = match login {
                Some((user, password)) => Some(
                    dlp_plugin::credentials::login(&url, &user, &password, tls.as_ref())
                        .await
                        .map_err(|e| anyhow::anyhow!(e))?,
                ),
                None => None,
            };
            let access = dlp_plugin::credentials::ClientAccess { token, tls };
            let config = dlp_plugin::credentials::client_config(
                dlp_plugin::session::session_config(),
                &access,
            );
            dlp_plugin::session::remote_context_with_config(&url, config)
                .await
                .with_context(|| format!("cannot connect to the scheduler at {url}"))
        }
        None => {
            let slots = parallelism.unwrap_or_else(|| {
                std::thread::available_parallelism()
                    .map(|n| n.get())
                    .unwrap_or(2)
            });
            dlp_plugin::embedded::standalone_context(Some(slots))
                .await
                .context("cannot start the embedded scheduler and executor")
        }
    }
}

/// The statements of `sql`, split at the semicolons outside string literals ('...', with ''
/// inside), quoted identifiers ("...") and comments (-- to the line's end, /* ... */);
/// trimmed, empty ones left out.
fn split_statements(sql: &str) -> Vec<&str> {
    let bytes = sql.as_bytes();
    let (mut out, mut start, mut i) = (vec![], 0, 0);
    while i < bytes.len() {
        match bytes[i] {
            q @ (b'\'' | b'"') => {
                i += 1;
                while i < bytes.len() {
                    if bytes[i] == q {
                        // a doubled quote is one quote inside the literal
                        if bytes.get(i + 1) == Some(&q) {
                            i += 1;
                        } else {
                            break;
                        }
                    }
                    i += 1;
                }
            }
            b'-' if bytes.get(i + 1) == Some(&b'-') => {
                while i < bytes.len() && bytes[i] != b'\n' {
                    i += 1;
                }
            }
            b'/' if bytes.get(i + 1) == Some(&b'*') => {
                i += 2;
                while i < bytes.len() && !(bytes[i] == b'*' && bytes.get(i + 1) == Some(&b'/')) {
                    i += 1;
                }
                i += 1;
            }
            b';' => {
                out.push(&sql[start..i]);
                start = i + 1;
            }
            _ => {}
        }
        i += 1;
    }
    out.push(&sql[start.min(sql.len())..]);
    out.into_iter()
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect()
}

async fn run_sql(ctx: &SessionContext, query: &str, format: Format) -> anyhow::Result<()> {
    let statements = split_statements(query);
    let Some((last, setup)) = statements.split_last() else {
        anyhow::bail!("no SQL statement given");
    };
    for stmt in setup {
        ctx.sql(stmt).await?.collect().await?;
    }
    let batches = ctx.sql(last).await?.collect().await?;
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    output::write(&batches, format, &mut out)?;
    out.flush()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::split_statements;

    #[test]
    fn statements_split_at_semicolons_outside_literals_and_comments() {
        assert_eq!(
            split_statements("SET a = 1; SELECT 'a;b', \"c;d\" FROM t;"),
            ["SET a = 1", "SELECT 'a;b', \"c;d\" FROM t"]
        );
        assert_eq!(
            split_statements("SELECT 'it''s; fine' -- a; comment\n; /* x; y */ SELECT 2"),
            ["SELECT 'it''s; fine' -- a; comment", "/* x; y */ SELECT 2"]
        );
        assert_eq!(split_statements("  ;; "), Vec::<&str>::new());
        // an unterminated literal is left whole, for the parser to report
        assert_eq!(split_statements("SELECT 'a;b"), ["SELECT 'a;b"]);
    }
}

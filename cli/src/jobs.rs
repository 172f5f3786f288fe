//! `dlp submit | jobs | status | watch | cancel`: pipeline jobs on a cluster's scheduler,
//! through its Arrow Flight actions (`dlp.pipeline.*`, docs/user-guide.md, "Pipeline jobs over
//! Flight"). Nothing runs in this process: no embedded cluster, no model is loaded; the
//! spec's paths are the cluster's.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use arrow_flight::Action;
use dlp_plugin::credentials::{FlightClient, TlsClient};
use dlp_plugin::pipeline::{JobSpec, PipelineStage};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::Value;
use tonic::Code;

/// Output of the job commands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// Text for people.
    Table,
    /// The scheduler's JSON status (an array for `dlp jobs`).
    Json,
}

/// The job commands (they need --scheduler).
#[derive(clap::Subcommand, Debug)]
pub enum JobCommand {
    /// Submit a job spec (YAML, as dlp fit reads; `tuning:` makes it a tuning job) to the
    /// cluster's scheduler and follow it until it ends; the exit status is 0 only if it
    /// succeeded. Paths in the spec are the cluster's (relative ones from its first data
    /// root). Ctrl-C stops following, not the job. Example: dlp --scheduler
    /// df://scheduler:50050 --user alice submit examples/flowers-flight.yaml
    Submit(SubmitArgs),
    /// List your pipeline jobs on the cluster.
    #[command(name = "jobs")]
    List {
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
    },
    /// Show a pipeline job: state, phase, elapsed time, metric or error.
    Status {
        /// Job id (pl-N).
        id: String,
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
    },
    /// Follow a pipeline job until it ends: its events and progress on stderr, then its
    /// metric or error; the exit status is 0 only if it succeeded.
    Watch {
        /// Job id (pl-N).
        id: String,
        /// json: the final status on stdout.
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
    },
    /// Cancel a pipeline job and the Ballista jobs it runs.
    Cancel {
        /// Job id (pl-N).
        id: String,
    },
}

/// Arguments of `dlp submit`.
#[derive(clap::Args, Debug)]
pub struct SubmitArgs {
    /// The job spec (YAML). Checked here first; sent as it is.
    pub spec: PathBuf,
    /// Print the job id and return instead of following the job.
    #[arg(long, short)]
    pub detach: bool,
    /// json: the job's status on stdout (the final one unless --detach).
    #[arg(long, value_enum, default_value_t = Format::Table)]
    pub format: Format,
}

impl JobCommand {
    fn name(&self) -> &'static str {
        match self {
            Self::Submit(_) => "submit",
            Self::List { .. } => "jobs",
            Self::Status { .. } => "status",
            Self::Watch { .. } => "watch",
            Self::Cancel { .. } => "cancel",
        }
    }

    /// The message for a job command without --scheduler.
    pub fn needs_scheduler(&self) -> String {
        let name = self.name();
        match self {
            Self::Submit(_) => format!(
                "dlp {name} needs --scheduler df://host:port (or DLP_SCHEDULER): the job runs \
                 on the cluster; to run a spec on the embedded cluster use dlp fit (or dlp tune)"
            ),
            _ => format!(
                "dlp {name} needs --scheduler df://host:port (or DLP_SCHEDULER): pipeline jobs \
                 live on a cluster's scheduler"
            ),
        }
    }
}

/// How to reach the scheduler (from the global flags).
pub struct Remote {
    /// `df://host:port`.
    pub url: String,
    /// User and password to log in with.
    pub login: Option<(String, String)>,
    pub tls: Option<TlsClient>,
}

/// Runs a job command.
pub async fn run(cmd: &JobCommand, remote: Remote) -> anyhow::Result<()> {
    match cmd {
        JobCommand::Submit(args) => submit(remote, args).await,
        JobCommand::List { format } => {
            let jobs = Scheduler::connect(remote)
                .await?
                .one("dlp.pipeline.list", "")
                .await?;
            match format {
                Format::Json => print_json(&jobs),
                Format::Table => {
                    let jobs = jobs.as_array().map(Vec::as_slice).unwrap_or_default();
                    if jobs.is_empty() {
                        eprintln!("no pipeline jobs");
                    } else {
                        print!("{}", job_table(jobs));
                    }
                    Ok(())
                }
            }
        }
        JobCommand::Status { id, format } => {
            let status = Scheduler::connect(remote)
                .await?
                .one("dlp.pipeline.status", id)
                .await?;
            match format {
                Format::Json => print_json(&status),
                Format::Table => {
                    print!("{}", describe(&status));
                    Ok(())
                }
            }
        }
        JobCommand::Watch { id, format } => {
            let interrupt = interrupt()?;
            let mut scheduler = Scheduler::connect(remote).await?;
            let status = follow(&mut scheduler, id, interrupt).await?;
            outcome(&status, *format)
        }
        JobCommand::Cancel { id } => {
            let status = Scheduler::connect(remote)
                .await?
                .one("dlp.pipeline.cancel", id)
                .await?;
            match state(&status) {
                "cancelled" => println!("{id} cancelled"),
                other => println!("{id} had already ended: {other}"),
            }
            Ok(())
        }
    }
}

async fn submit(remote: Remote, args: &SubmitArgs) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(&args.spec)
        .with_context(|| format!("cannot read {}", args.spec.display()))?;
    check_spec(&text, &args.spec)?;
    let mut scheduler = Scheduler::connect(remote).await?;
    let status = scheduler.one("dlp.pipeline.submit", &text).await?;
    let id = str_field(&status, "job_id")
        .ok_or_else(|| anyhow!("the scheduler answered the submission without a job id"))?
        .to_string();
    let submitted = format!(
        "submitted {id} ({})",
        str_field(&status, "mode").unwrap_or("?")
    );
    if args.detach {
        match args.format {
            Format::Json => print_json(&status)?,
            Format::Table => println!("{submitted}"),
        }
        eprintln!("follow it with `dlp watch {id}`, stop it with `dlp cancel {id}`");
        return Ok(());
    }
    // Listening before the id is out: a Ctrl-C from here on leaves the job running.
    let interrupt = interrupt()?;
    match args.format {
        Format::Json => eprintln!("{submitted}"),
        Format::Table => println!("{submitted}"),
    }
    let status = follow(&mut scheduler, &id, interrupt).await?;
    outcome(&status, args.format)
}

/// Checks a spec before it is sent, so that a typo fails at once, naming the file and the
/// field. Model names are checked against this machine's model directory only when it has
/// the spec's models: the cluster's models are the ones that count, and the scheduler
/// checks them at submission. Data paths are the cluster's: not checked here.
fn check_spec(text: &str, path: &Path) -> anyhow::Result<()> {
    let origin = path.display().to_string();
    let spec: JobSpec = serde_yaml::from_str(text).map_err(|e| anyhow!("{origin}: {e}"))?;
    let zoo = dlp_plugin::torch::ProcessTorchConfig::get().zoo();
    let models_here = spec.stages.iter().all(|s| match s {
        PipelineStage::DeepImageFeaturizer(t) => zoo.get(&t.model_name).is_ok(),
        PipelineStage::DeepImagePredictor(t) => zoo.get(&t.model_name).is_ok(),
        _ => true,
    });
    if models_here {
        JobSpec::from_yaml(text, &origin).map_err(|e| anyhow!("{}", e.strip_backtrace()))?;
    } else {
        tracing::info!(
            "{origin}: the model names are left to the scheduler ({} does not have them all)",
            zoo.dir().display()
        );
    }
    Ok(())
}

/// A logged-in Flight client of the scheduler.
struct Scheduler {
    url: String,
    client: FlightClient,
    token: Option<String>,
}

impl Scheduler {
    async fn connect(remote: Remote) -> anyhow::Result<Self> {
        let mut client = dlp_plugin::credentials::flight_client(&remote.url, remote.tls.as_ref())
            .await
            .map_err(|e| anyhow!(e))?;
        let token = match &remote.login {
            Some((user, password)) => Some(
                dlp_plugin::credentials::login_with(&mut client, &remote.url, user, password)
                    .await
                    .map_err(|e| anyhow!(e))?,
            ),
            None => None,
        };
        Ok(Self {
            url: remote.url,
            client,
            token,
        })
    }

    /// Runs an action with the session's token: its stream of results.
    async fn action(
        &mut self,
        kind: &str,
        body: &str,
    ) -> anyhow::Result<tonic::Streaming<arrow_flight::Result>> {
        let mut request = tonic::Request::new(Action::new(kind, body.as_bytes().to_vec()));
        if let Some(token) = &self.token {
            request.metadata_mut().insert(
                "authorization",
                format!("Bearer {token}")
                    .parse()
                    .context("the session token is not valid in a header")?,
            );
        }
        match self.client.do_action(request).await {
            Ok(response) => Ok(response.into_inner()),
            Err(status) => Err(self.error(status)),
        }
    }

    /// An action with one JSON answer.
    async fn one(&mut self, kind: &str, body: &str) -> anyhow::Result<Value> {
        let mut results = self.action(kind, body).await?;
        let result = results
            .message()
            .await
            .map_err(|s| self.error(s))?
            .ok_or_else(|| anyhow!("the scheduler at {} answered {kind} with nothing", self.url))?;
        parse(&result)
    }

    /// The scheduler's message as it is, with where it came from when that helps.
    fn error(&self, status: tonic::Status) -> anyhow::Error {
        let message = status.message();
        match status.code() {
            Code::Unavailable | Code::Unknown | Code::Internal if message.is_empty() => {
                anyhow!("the scheduler at {} failed: {status}", self.url)
            }
            Code::Unavailable => anyhow!("the scheduler at {} is unavailable: {message}", self.url),
            Code::Unauthenticated if self.token.is_none() => anyhow!(
                "{message} (the scheduler at {} requires a login: --user, with the password in \
                 DLP_PASSWORD or --password-file)",
                self.url
            ),
            Code::Unauthenticated | Code::PermissionDenied => {
                anyhow!("{message} ({:?})", status.code())
            }
            _ => anyhow!("{message}"),
        }
    }
}

fn parse(result: &arrow_flight::Result) -> anyhow::Result<Value> {
    serde_json::from_slice(&result.body).context("the scheduler's answer is not JSON")
}

/// Ctrl-C (SIGINT), from now on.
fn interrupt() -> anyhow::Result<tokio::signal::unix::Signal> {
    tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())
        .context("cannot listen for Ctrl-C")
}

/// Follows a job's statuses until it ends: new events and the progress on stderr. Ctrl-C
/// (`interrupt`) stops following and leaves the job running.
async fn follow(
    scheduler: &mut Scheduler,
    id: &str,
    mut interrupt: tokio::signal::unix::Signal,
) -> anyhow::Result<Value> {
    let mut statuses = scheduler.action("dlp.pipeline.watch", id).await?;
    let pb = ProgressBar::new_spinner();
    pb.set_style(ProgressStyle::with_template("{spinner} {msg}").expect("template"));
    pb.enable_steady_tick(Duration::from_millis(120));
    pb.set_message(format!("{id}: waiting for the scheduler"));
    // Without a terminal there is no bar: progress is written as lines when it changes.
    let lines = !std::io::stderr().is_terminal();
    let mut last_event = f64::NEG_INFINITY;
    let mut last_progress = String::new();
    let mut last: Option<Value> = None;
    loop {
        let next = tokio::select! {
            next = statuses.message() => next,
            _ = interrupt.recv() => {
                pb.finish_and_clear();
                eprintln!(
                    "\nstopped following {id}; the job keeps running on the cluster: \
                     `dlp watch {id}` follows it again, `dlp cancel {id}` stops it"
                );
                std::process::exit(130);
            }
        };
        let Some(result) = next.map_err(|s| scheduler.error(s))? else {
            break;
        };
        let status = parse(&result)?;
        for event in status["events"].as_array().into_iter().flatten() {
            let at = event["at_s"].as_f64().unwrap_or(0.0);
            if at > last_event {
                last_event = at;
                let message = event["message"].as_str().unwrap_or_default();
                pb.suspend(|| eprintln!("[{at:7.1} s] {message}"));
            }
        }
        let progress = progress(&status);
        let running = state(&status) == "running";
        if lines && running && !progress.is_empty() && progress != last_progress {
            eprintln!("          {:.1} s: {progress}", elapsed(&status));
        }
        pb.set_message(format!(
            "{id} [{}] {}{}{progress}",
            duration(elapsed(&status)),
            str_field(&status, "phase").unwrap_or_default(),
            if progress.is_empty() { "" } else { " | " },
        ));
        last_progress = progress;
        last = Some(status);
        if !running {
            break;
        }
    }
    pb.finish_and_clear();
    match last {
        Some(status) if state(&status) != "running" => Ok(status),
        _ => bail!(
            "the scheduler at {} stopped sending {id}'s statuses before it ended; \
             `dlp watch {id}` follows it again",
            scheduler.url
        ),
    }
}

/// The end of a followed job: its metric (or status JSON), Ok only if it succeeded.
fn outcome(status: &Value, format: Format) -> anyhow::Result<()> {
    let id = str_field(status, "job_id").unwrap_or("the job");
    let after = duration(elapsed(status));
    if format == Format::Json {
        print_json(status)?;
    }
    match state(status) {
        "succeeded" => {
            let mut text = metric_line(status);
            if let Some(model) = str_field(&status["result"], "model") {
                text.push_str(&format!("; model: {model}"));
            }
            if let Some(best) = best_line(status) {
                text.push_str(&format!("\n{best}"));
            }
            match format {
                Format::Table => println!("{text}"),
                Format::Json => eprintln!("{text}"),
            }
            Ok(())
        }
        "failed" => bail!(
            "{id} failed after {after}: {}",
            str_field(status, "error").unwrap_or("(no error message)")
        ),
        "cancelled" => bail!("{id} was cancelled after {after}"),
        other => bail!("{id} is {other}"),
    }
}

fn print_json(value: &Value) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

fn str_field<'a>(v: &'a Value, key: &str) -> Option<&'a str> {
    v.get(key).and_then(Value::as_str)
}

fn state(status: &Value) -> &str {
    str_field(status, "state").unwrap_or("unknown")
}

fn elapsed(status: &Value) -> f64 {
    status["elapsed_s"].as_f64().unwrap_or(0.0)
}

/// `9.1s`, `2m05s`, `1h03m`.
fn duration(seconds: f64) -> String {
    let s = seconds.max(0.0);
    if s < 60.0 {
        format!("{s:.1}s")
    } else if s < 3600.0 {
        format!("{}m{:02}s", (s / 60.0) as u64, (s % 60.0) as u64)
    } else {
        format!(
            "{}h{:02}m",
            (s / 3600.0) as u64,
            ((s % 3600.0) / 60.0) as u64
        )
    }
}

/// Tuning fits and the running Ballista job's stages, e.g.
/// `fits 3/24, Ballista job 2: 1/3 stages done`.
fn progress(status: &Value) -> String {
    let mut parts = Vec::new();
    if let (Some(done), Some(total)) = (
        status["fits_done"].as_u64(),
        status["fits_total"].as_u64().filter(|t| *t > 0),
    ) {
        parts.push(format!("fits {done}/{total}"));
    }
    if let Some([done, total]) = status["running_stages"].as_array().map(Vec::as_slice) {
        parts.push(format!(
            "Ballista job {}: {}/{} stages done",
            status["ballista_jobs"].as_u64().unwrap_or(0),
            done.as_u64().unwrap_or(0),
            total.as_u64().unwrap_or(0)
        ));
    }
    parts.join(", ")
}

/// `accuracy = 0.9877 on the test split (81 images)`.
fn metric_line(status: &Value) -> String {
    let r = &status["result"];
    if r.get("metricName").is_none_or(Value::is_null) {
        // A `data.sql` job (the Python client's fit): no split, no evaluation.
        return "fitted on the query's rows (no test split)".into();
    }
    let name = str_field(r, "metricName").unwrap_or("metric");
    let value = r["metric"]
        .as_f64()
        .map_or("n/a".to_string(), |m| format!("{m:.4}"));
    let test: u64 = r["testCounts"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_u64)
        .sum();
    format!("{name} = {value} on the test split ({test} images)")
}

/// A tuning job's best parameters, e.g.
/// `tuning: best of 8 candidates: regParam=0.05 elasticNetParam=0.0 (accuracy 0.9500 ± 0.0200)`.
fn best_line(status: &Value) -> Option<String> {
    let t = status["result"].get("tuning").filter(|t| !t.is_null())?;
    let best = t["bestIndex"].as_u64()? as usize;
    let candidates = t["paramMaps"].as_array().map_or(0, Vec::len);
    let params: Vec<String> = t["bestParams"]
        .as_object()
        .into_iter()
        .flatten()
        .map(|(k, v)| match v.as_str() {
            Some(s) => format!("{k}={s}"),
            None => format!("{k}={v}"),
        })
        .collect();
    let avg = t["avgMetrics"].get(best).and_then(Value::as_f64);
    let std = t["stdMetrics"].get(best).and_then(Value::as_f64);
    let score = match (avg, std) {
        (Some(a), Some(s)) => format!(
            " ({} {a:.4} ± {s:.4})",
            str_field(t, "metricName").unwrap_or("metric")
        ),
        _ => String::new(),
    };
    Some(format!(
        "tuning: best of {candidates} candidates: {}{score}",
        params.join(" ")
    ))
}

/// `dlp status`: one job, a field per line.
fn describe(status: &Value) -> String {
    let mut rows: Vec<(&str, String)> = vec![
        ("job", str_field(status, "job_id").unwrap_or("?").into()),
        ("user", str_field(status, "user").unwrap_or("?").into()),
        ("mode", str_field(status, "mode").unwrap_or("?").into()),
        ("state", state(status).into()),
        (
            "phase",
            str_field(status, "phase").unwrap_or_default().into(),
        ),
        ("elapsed", duration(elapsed(status))),
    ];
    let progress = progress(status);
    if state(status) == "running" && !progress.is_empty() {
        rows.push(("progress", progress));
    }
    if let Some(e) = str_field(status, "error") {
        rows.push(("error", e.into()));
    }
    if status["result"].is_object() {
        rows.push(("metric", metric_line(status)));
        if let Some(m) = str_field(&status["result"], "model") {
            rows.push(("model", m.into()));
        }
        if let Some(best) = best_line(status) {
            rows.push(("tuning", best.trim_start_matches("tuning: ").to_string()));
        }
    }
    rows.iter()
        .map(|(k, v)| {
            let key = format!("{k}:");
            format!("{key:<9}{v}\n")
        })
        .collect()
}

/// `dlp jobs`: ID, MODE, STATE, PHASE, ELAPSED, METRIC columns.
fn job_table(jobs: &[Value]) -> String {
    const PHASE_WIDTH: usize = 40;
    let mut rows = vec![[
        "ID".to_string(),
        "MODE".into(),
        "STATE".into(),
        "PHASE".into(),
        "ELAPSED".into(),
        "METRIC".into(),
    ]];
    for j in jobs {
        let mut phase: String = str_field(j, "phase").unwrap_or_default().into();
        if phase.chars().count() > PHASE_WIDTH {
            phase = phase.chars().take(PHASE_WIDTH - 1).collect::<String>() + "…";
        }
        let metric = match (
            str_field(&j["result"], "metricName"),
            j["result"]["metric"].as_f64(),
        ) {
            (Some(name), Some(m)) => format!("{name}={m:.4}"),
            _ => "-".into(),
        };
        rows.push([
            str_field(j, "job_id").unwrap_or("?").into(),
            str_field(j, "mode").unwrap_or("?").into(),
            state(j).into(),
            phase,
            duration(elapsed(j)),
            metric,
        ]);
    }
    let widths: Vec<usize> = (0..6)
        .map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for r in &rows {
        let line: Vec<String> = r
            .iter()
            .zip(&widths)
            .map(|(cell, w)| format!("{cell:<w$}"))
            .collect();
        out.push_str(line.join("   ").trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn done() -> Value {
        json!({
            "job_id": "pl-3", "user": "alice", "mode": "tune", "state": "succeeded",
            "phase": "succeeded", "events": [], "fits_done": 24, "fits_total": 24,
            "ballista_jobs": 9, "running_stages": null, "elapsed_s": 75.25, "error": null,
            "submitted_at": 1700000000,
            "result": {
                "metricName": "accuracy", "metric": 0.98765, "testCounts": [40, 41],
                "model": "/data/models/flowers",
                "tuning": {"metricName": "accuracy", "bestIndex": 1,
                    "bestParams": {"regParam": 0.05}, "paramMaps": [{}, {}],
                    "avgMetrics": [0.9, 0.95], "stdMetrics": [0.01, 0.02]}
            }
        })
    }

    #[test]
    fn statuses_read_as_text() {
        let s = done();
        assert_eq!(
            metric_line(&s),
            "accuracy = 0.9877 on the test split (81 images)"
        );
        assert_eq!(
            best_line(&s).unwrap(),
            "tuning: best of 2 candidates: regParam=0.05 (accuracy 0.9500 ± 0.0200)"
        );
        let text = describe(&s);
        assert!(text.contains("state:   succeeded\n"), "{text}");
        assert!(text.contains("elapsed: 1m15s\n"), "{text}");
        assert!(text.contains("model:   /data/models/flowers\n"), "{text}");
        let running = json!({"state": "running", "fits_done": 3, "fits_total": 24,
            "ballista_jobs": 2, "running_stages": [1, 3]});
        assert_eq!(
            progress(&running),
            "fits 3/24, Ballista job 2: 1/3 stages done"
        );
        assert_eq!(progress(&json!({"running_stages": null})), "");
    }

    #[test]
    fn jobs_table_has_aligned_columns() {
        let failed = json!({"job_id": "pl-10", "mode": "fit", "state": "failed",
            "phase": "failed", "elapsed_s": 1.04, "error": "x", "result": null});
        let table = job_table(&[done(), failed]);
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(
            lines[0],
            "ID      MODE   STATE       PHASE       ELAPSED   METRIC"
        );
        assert_eq!(
            lines[1],
            "pl-3    tune   succeeded   succeeded   1m15s     accuracy=0.9877"
        );
        assert_eq!(
            lines[2],
            "pl-10   fit    failed      failed      1.0s      -"
        );
    }

    #[test]
    fn durations() {
        assert_eq!(duration(0.04), "0.0s");
        assert_eq!(duration(59.95), "60.0s");
        assert_eq!(duration(125.0), "2m05s");
        assert_eq!(duration(3725.0), "1h02m");
    }
}

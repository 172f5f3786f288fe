//! Pipeline jobs submitted over Flight: a YAML job spec (the file `dlp fit` / `dlp tune`
//! reads) runs inside the scheduler as a client of its own cluster, so its featurization
//! and fit run on the executors like any other job. Each pipeline job is followed through
//! its phase messages, its tuning progress and the Ballista jobs it started (all carry the
//! job name `dlp-pipeline-<id>`), and can be cancelled.

use std::collections::BTreeMap;
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ballista_core::JobId;
use ballista_core::serde::protobuf::job_status;
use ballista_scheduler::scheduler_server::SchedulerServer;
use datafusion_proto::protobuf::{LogicalPlanNode, PhysicalPlanNode};
use dlp_plugin::pipeline::TuningEvent;
use dlp_plugin::pipeline::job::{JobEvent, JobReport, JobSpec, fit_query, run_job};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::sync::watch;

/// Why a job action was refused; each kind answers with its own gRPC status.
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    /// The request cannot be accepted: a spec or body that does not parse, a field a client
    /// may not set, a path outside the roots.
    #[error("{0}")]
    Invalid(String),
    /// No such job of the caller's (another user's jobs are not found either).
    #[error("{0}")]
    NotFound(String),
    /// Above one of this scheduler's ceilings (`--max-*`).
    #[error("{0}")]
    Limit(String),
}

impl From<String> for JobError {
    fn from(message: String) -> Self {
        Self::Invalid(message)
    }
}

impl From<JobError> for tonic::Status {
    fn from(e: JobError) -> Self {
        match e {
            JobError::Invalid(m) => Self::invalid_argument(m),
            JobError::NotFound(m) => Self::not_found(m),
            JobError::Limit(m) => Self::resource_exhausted(m),
        }
    }
}

type Scheduler = SchedulerServer<LogicalPlanNode, PhysicalPlanNode>;

/// Finished jobs kept for status queries (the oldest finished ones go first).
const KEEP_FINISHED: usize = 100;
/// Phase messages kept per job.
const KEEP_EVENTS: usize = 200;

/// Where a pipeline job stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    Running,
    Succeeded,
    Failed,
    Cancelled,
}

impl State {
    pub fn is_final(self) -> bool {
        self != State::Running
    }
}

/// A phase message, seconds after submission.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Event {
    pub at_s: f64,
    pub message: String,
}

/// What a client sees of a job (`dlp.pipeline.status`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JobStatus {
    pub job_id: String,
    pub user: String,
    /// When it was submitted and when it ended (seconds since the Unix epoch).
    #[serde(default)]
    pub submitted_at: u64,
    #[serde(default)]
    pub ended_at: Option<u64>,
    /// `fit` or `tune`.
    pub mode: String,
    pub state: State,
    /// The latest phase message.
    pub phase: String,
    pub events: Vec<Event>,
    /// Tuning: candidate fits done and in all.
    pub fits_done: Option<usize>,
    pub fits_total: Option<usize>,
    /// Ballista jobs this pipeline job started so far, and the running ones' stages.
    pub ballista_jobs: usize,
    pub running_stages: Option<(usize, usize)>,
    pub elapsed_s: f64,
    pub error: Option<String>,
    /// Metrics, model location and counts once succeeded.
    pub result: Option<Value>,
}

struct Entry {
    name: String,
    started: Instant,
    status: watch::Sender<JobStatus>,
    task: Mutex<Option<tokio::task::AbortHandle>>,
}

/// The pipeline jobs of this scheduler.
pub struct PipelineJobs {
    scheduler: Arc<Scheduler>,
    /// `df://host:port` of this scheduler, for the jobs' client sessions.
    url: String,
    /// Mints the token a job's client session presents as its user.
    auth: Arc<crate::auth::Auth>,
    /// Per-user ceilings.
    limits: JobLimits,
    next: AtomicU64,
    jobs: Mutex<BTreeMap<u64, Arc<Entry>>>,
    /// Where job records are kept across restarts (`<state-dir>/jobs/pl-N.json`).
    records: Option<PathBuf>,
}

fn now_unix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl PipelineJobs {
    pub fn new(
        scheduler: Arc<Scheduler>,
        url: String,
        auth: Arc<crate::auth::Auth>,
        limits: JobLimits,
        state_dir: Option<&Path>,
    ) -> Result<Self, String> {
        let mut jobs = BTreeMap::new();
        let records = match state_dir {
            Some(dir) => {
                let dir = dir.join("jobs");
                std::fs::create_dir_all(&dir)
                    .map_err(|e| format!("--state-dir: cannot create {}: {e}", dir.display()))?;
                for (n, status) in load_records(&dir)? {
                    jobs.insert(
                        n,
                        Arc::new(Entry {
                            name: format!("dlp-pipeline-{}", status.job_id),
                            started: Instant::now(),
                            status: watch::channel(status).0,
                            task: Mutex::new(None),
                        }),
                    );
                }
                Some(dir)
            }
            None => None,
        };
        let next = jobs.keys().next_back().map_or(1, |n| n + 1);
        let me = Self {
            scheduler,
            url,
            auth,
            limits,
            next: AtomicU64::new(next),
            jobs: Mutex::new(jobs),
            records,
        };
        // Jobs cut by the restart were marked failed while loading: write that down.
        for e in me.jobs.lock().unwrap().values() {
            me.persist(&e.status.borrow());
        }
        Ok(me)
    }

    /// Writes a job's record (when the scheduler keeps state).
    fn persist(&self, status: &JobStatus) {
        persist_record(self.records.as_deref(), status);
    }

    /// Checks a spec and starts it; the new job's status.
    pub fn submit(self: &Arc<Self>, user: &str, yaml: &str) -> Result<JobStatus, JobError> {
        refuse_work_dir(yaml)?;
        let spec = JobSpec::from_yaml(yaml, "pipeline spec").map_err(|e| e.strip_backtrace())?;
        let spec = checked_outputs(spec, user)?;
        if let Some(t) = &spec.tuning
            && t.parallelism > self.limits.max_tuning_parallelism
        {
            return Err(JobError::Limit(format!(
                "pipeline spec: tuning.parallelism {} is above this scheduler's ceiling of {} \
                 (--max-tuning-parallelism)",
                t.parallelism, self.limits.max_tuning_parallelism
            )));
        }
        let running = self
            .jobs
            .lock()
            .unwrap()
            .values()
            .filter(|e| {
                let s = e.status.borrow();
                s.user == user && !s.state.is_final()
            })
            .count();
        if running >= self.limits.max_jobs_per_user {
            return Err(JobError::Limit(format!(
                "{user} has {running} pipeline jobs running, this scheduler's ceiling \
                 (--max-jobs-per-user); wait for one to end or cancel one"
            )));
        }
        let tune = spec.tuning.is_some();
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let job_id = format!("pl-{n}");
        let status = JobStatus {
            job_id: job_id.clone(),
            user: user.to_string(),
            submitted_at: now_unix(),
            ended_at: None,
            mode: if tune { "tune" } else { "fit" }.into(),
            state: State::Running,
            phase: "submitted".into(),
            events: Vec::new(),
            fits_done: None,
            fits_total: None,
            ballista_jobs: 0,
            running_stages: None,
            elapsed_s: 0.0,
            error: None,
            result: None,
        };
        let entry = Arc::new(Entry {
            name: format!("dlp-pipeline-{job_id}"),
            started: Instant::now(),
            status: watch::channel(status.clone()).0,
            task: Mutex::new(None),
        });
        let pruned = {
            let mut jobs = self.jobs.lock().unwrap();
            jobs.insert(n, entry.clone());
            prune(&mut jobs)
        };
        if let Some(dir) = &self.records {
            for id in pruned {
                let _ = std::fs::remove_file(dir.join(format!("{id}.json")));
            }
        }
        self.persist(&status);
        let data = spec
            .data
            .sql
            .as_deref()
            .map_or(spec.data.path.as_str(), |_| "a query");
        tracing::info!(%job_id, user, mode = %status.mode, data, "pipeline job submitted");
        let (me, running) = (self.clone(), entry.clone());
        let task = tokio::spawn(async move {
            let outcome = me.run(&running, &spec, tune).await;
            finish(&running, outcome);
            me.persist(&running.status.borrow());
        });
        *entry.task.lock().unwrap() = Some(task.abort_handle());
        Ok(status)
    }

    async fn run(&self, entry: &Arc<Entry>, spec: &JobSpec, tune: bool) -> Result<Value, String> {
        let config = dlp_plugin::session::session_config()
            .set_str(ballista_core::config::BALLISTA_JOB_NAME, &entry.name);
        // The job's Ballista jobs are its user's, through the gate like any client's.
        let user = entry.status.borrow().user.clone();
        let token = Revoke(self.auth.clone(), self.auth.tokens.mint(&user));
        let config = dlp_plugin::credentials::with_bearer(config, &token.1);
        let ctx = dlp_plugin::session::remote_context_with_config(&self.url, config)
            .await
            .map_err(|e| format!("cannot open a session on the cluster: {e}"))?;
        let events = entry.clone();
        let records = self.records.clone();
        let progress = Arc::new(move |e: JobEvent| {
            let phase = matches!(e, JobEvent::Phase(_));
            events.status.send_modify(|s| match e {
                JobEvent::Phase(p) => push_event(s, &events.started, p),
                JobEvent::Tuning(TuningEvent::Preparing { done, total }) => push_event(
                    s,
                    &events.started,
                    format!(
                        "tuning: featurizing once (configuration {} of {total})",
                        done + 1
                    ),
                ),
                JobEvent::Tuning(TuningEvent::FitDone { done, total, .. }) => {
                    s.fits_done = Some(done);
                    s.fits_total = Some(total);
                }
                JobEvent::Tuning(TuningEvent::Refitting) => {
                    push_event(s, &events.started, "tuning: refitting the best".into())
                }
                JobEvent::Epoch(r) => push_event(
                    s,
                    &events.started,
                    format!(
                        "fine-tuning: epoch {} loss {:.4} accuracy {:.4}",
                        r.epoch, r.train_loss, r.train_accuracy
                    ),
                ),
            });
            if phase {
                // The record knows the phase a restart would cut.
                persist_record(records.as_deref(), &events.status.borrow());
            }
        });
        if spec.data.sql.is_some() {
            let fit = fit_query(&ctx, spec, tune, Some(progress))
                .await
                .map_err(|e| e.strip_backtrace())?;
            return Ok(json!({
                "model": spec.output.model,
                "classNames": fit.model.class_names,
                "stages": fit.model.stages.iter().map(|s| s.type_name()).collect::<Vec<_>>(),
                "fitSeconds": fit.fit_seconds,
                "tuning": fit.tuning.as_ref().map(tuning_json),
            }));
        }
        let report = run_job(&ctx, spec, tune, Some(progress))
            .await
            .map_err(|e| e.strip_backtrace())?;
        Ok(result_json(spec, &report))
    }

    fn find(&self, user: &str, job_id: &str) -> Result<Arc<Entry>, JobError> {
        let unknown =
            || JobError::NotFound(format!("no pipeline job '{job_id}' (ids look like pl-1)"));
        let n: u64 = job_id
            .strip_prefix("pl-")
            .and_then(|n| n.parse().ok())
            .ok_or_else(unknown)?;
        let entry = self
            .jobs
            .lock()
            .unwrap()
            .get(&n)
            .cloned()
            .ok_or_else(unknown)?;
        // Another user's job is not found rather than forbidden: ids are not secrets, but
        // whether a job exists is not theirs to learn.
        if entry.status.borrow().user != user {
            return Err(unknown());
        }
        Ok(entry)
    }

    /// The job's status, with the Ballista jobs it started.
    pub async fn status(&self, user: &str, job_id: &str) -> Result<JobStatus, JobError> {
        let entry = self.find(user, job_id)?;
        Ok(self.refresh(&entry).await)
    }

    async fn refresh(&self, entry: &Entry) -> JobStatus {
        let mut status = entry.status.borrow().clone();
        if let Ok(all) = self.scheduler.state.task_manager.get_all_jobs().await {
            let mine: Vec<_> = all.iter().filter(|j| j.job_name == entry.name).collect();
            status.ballista_jobs = mine.len();
            status.running_stages = mine
                .iter()
                .filter(|j| {
                    matches!(
                        j.status.status,
                        Some(job_status::Status::Running(_) | job_status::Status::Queued(_))
                    )
                })
                .map(|j| (j.completed_stages, j.num_stages))
                .next();
        }
        if !status.state.is_final() {
            status.elapsed_s = entry.started.elapsed().as_secs_f64();
        }
        status
    }

    /// A stream of statuses: the current one, then one on every change (and every 2 s,
    /// with the Ballista jobs' progress), ending with the final one.
    pub fn watch(
        self: Arc<Self>,
        user: &str,
        job_id: &str,
    ) -> Result<impl futures::Stream<Item = JobStatus> + Send + 'static, JobError> {
        let entry = self.find(user, job_id)?;
        let rx = entry.status.subscribe();
        Ok(futures::stream::unfold(
            (self, entry, rx, true, false),
            |(me, entry, mut rx, first, done)| async move {
                if done {
                    return None;
                }
                if !first {
                    // A closed channel cannot happen while `entry` holds the sender.
                    let _ = tokio::time::timeout(Duration::from_secs(2), rx.changed()).await;
                }
                rx.borrow_and_update();
                let status = me.refresh(&entry).await;
                let done = status.state.is_final();
                Some((status, (me, entry, rx, false, done)))
            },
        ))
    }

    /// Stops a running job and the Ballista jobs it started.
    pub async fn cancel(&self, user: &str, job_id: &str) -> Result<JobStatus, JobError> {
        let entry = self.find(user, job_id)?;
        if let Some(task) = entry.task.lock().unwrap().take() {
            task.abort();
        }
        let cancelled = entry.status.send_if_modified(|s| {
            if s.state.is_final() {
                return false;
            }
            s.state = State::Cancelled;
            s.ended_at = Some(now_unix());
            s.elapsed_s = entry.started.elapsed().as_secs_f64();
            push_event(s, &entry.started, "cancelled by the client".into());
            true
        });
        if cancelled {
            cancel_named(&self.scheduler, &entry.name).await;
            // A Ballista job the aborted task was submitting as it stopped lands a moment
            // later: sweep again for a few seconds.
            let (scheduler, name) = (self.scheduler.clone(), entry.name.clone());
            tokio::spawn(async move {
                for _ in 0..10 {
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    cancel_named(&scheduler, &name).await;
                }
            });
            tracing::info!(job_id, user, "pipeline job cancelled");
            self.persist(&entry.status.borrow());
        }
        Ok(self.refresh(&entry).await)
    }

    /// The user's jobs, oldest first.
    pub async fn list(&self, user: &str) -> Vec<JobStatus> {
        let entries: Vec<_> = self.jobs.lock().unwrap().values().cloned().collect();
        let mut out = Vec::new();
        for e in entries {
            if e.status.borrow().user == user {
                out.push(self.refresh(&e).await);
            }
        }
        out
    }
}

fn push_event(s: &mut JobStatus, started: &Instant, message: String) {
    s.phase = message.clone();
    s.events.push(Event {
        at_s: started.elapsed().as_secs_f64(),
        message,
    });
    if s.events.len() > KEEP_EVENTS {
        s.events.remove(0);
    }
}

fn finish(entry: &Entry, outcome: Result<Value, String>) {
    entry.status.send_modify(|s| {
        if s.state.is_final() {
            return; // cancelled meanwhile
        }
        s.elapsed_s = entry.started.elapsed().as_secs_f64();
        s.ended_at = Some(now_unix());
        match outcome {
            Ok(result) => {
                s.state = State::Succeeded;
                push_event(s, &entry.started, "succeeded".into());
                s.result = Some(result);
            }
            Err(e) => {
                s.state = State::Failed;
                push_event(s, &entry.started, "failed".into());
                s.error = Some(e);
            }
        }
        tracing::info!(job_id = %s.job_id, state = ?s.state, elapsed_s = s.elapsed_s, "pipeline job ended");
    });
}

/// Cancels the queued and running Ballista jobs named `name` (a pipeline job's).
async fn cancel_named(scheduler: &Scheduler, name: &str) {
    let Ok(all) = scheduler.state.task_manager.get_all_jobs().await else {
        return;
    };
    for j in all.into_iter().filter(|j| {
        j.job_name == name
            && matches!(
                j.status.status,
                Some(job_status::Status::Running(_) | job_status::Status::Queued(_))
            )
    }) {
        let id: JobId = j.job_id.clone();
        if let Err(e) = scheduler.cancel_job(id).await {
            tracing::warn!(job_id = %j.job_id, "cannot cancel: {e}");
        }
    }
}

/// Writes a job's record into `dir` (if the scheduler keeps state), replacing the old one
/// at once; a failure is logged and the job goes on.
fn persist_record(dir: Option<&Path>, status: &JobStatus) {
    let Some(dir) = dir else { return };
    let file = dir.join(format!("{}.json", status.job_id));
    let tmp = dir.join(format!(".{}.json.tmp", status.job_id));
    let written = serde_json::to_vec_pretty(status)
        .map_err(std::io::Error::other)
        .and_then(|text| std::fs::write(&tmp, text))
        .and_then(|_| std::fs::rename(&tmp, &file));
    if let Err(e) = written {
        tracing::warn!(job_id = %status.job_id, "cannot write the job record {}: {e}", file.display());
    }
}

/// Drops the oldest finished jobs beyond [`KEEP_FINISHED`]; their ids.
fn prune(jobs: &mut BTreeMap<u64, Arc<Entry>>) -> Vec<String> {
    let finished: Vec<u64> = jobs
        .iter()
        .filter(|(_, e)| e.status.borrow().state.is_final())
        .map(|(n, _)| *n)
        .collect();
    let drop = finished.len().saturating_sub(KEEP_FINISHED);
    finished[..drop]
        .iter()
        .map(|n| {
            jobs.remove(n);
            format!("pl-{n}")
        })
        .collect()
}

/// The job records in `dir`, by number. A job that was running when the scheduler stopped
/// is marked failed with that cause: it is never silently gone. An unreadable record is
/// logged and skipped.
fn load_records(dir: &Path) -> Result<Vec<(u64, JobStatus)>, String> {
    let entries =
        std::fs::read_dir(dir).map_err(|e| format!("cannot read {}: {e}", dir.display()))?;
    let mut out = vec![];
    for entry in entries.flatten() {
        let path = entry.path();
        let Some(n) = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_prefix("pl-")?.strip_suffix(".json"))
            .and_then(|n| n.parse::<u64>().ok())
        else {
            continue;
        };
        let status = std::fs::read(&path)
            .map_err(|e| e.to_string())
            .and_then(|b| serde_json::from_slice::<JobStatus>(&b).map_err(|e| e.to_string()));
        let mut status = match status {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!("skipping the job record {}: {e}", path.display());
                continue;
            }
        };
        if !status.state.is_final() {
            status.state = State::Failed;
            status.error = Some(format!(
                "the scheduler stopped while this job was running (phase: {}); it was not \
                 finished and its model was not saved. Submit it again.",
                status.phase
            ));
            status.ended_at = Some(now_unix());
            status.events.push(Event {
                at_s: status.elapsed_s,
                message: "failed: the scheduler restarted".into(),
            });
            status.phase = "failed: the scheduler restarted".into();
            status.running_stages = None;
        }
        out.push((n, status));
    }
    out.sort_by_key(|(n, _)| *n);
    Ok(out)
}

/// The spec with its output paths resolved like `read_images` paths (relative ones from
/// the first data root) and checked against the data roots: a client must not make the
/// scheduler write outside them. The report directory is a CLI feature: over Flight the
/// report comes back in the job's status.
/// Ceilings of pipeline jobs per user (flags of `dlp-scheduler`).
#[derive(Debug, Clone, Copy, clap::Args)]
pub struct JobLimits {
    /// Pipeline jobs one user may have running at once.
    #[arg(long, env = "DLP_MAX_JOBS_PER_USER", default_value_t = 4)]
    pub max_jobs_per_user: usize,
    /// Most candidate fits a tuning job may run at once (its tuning.parallelism).
    #[arg(long, env = "DLP_MAX_TUNING_PARALLELISM", default_value_t = 4)]
    pub max_tuning_parallelism: usize,
}

/// Revokes a minted token when the job is done with it.
struct Revoke(Arc<crate::auth::Auth>, String);

impl Drop for Revoke {
    fn drop(&mut self) {
        self.0.tokens.revoke(&self.1);
    }
}

/// `workDir` is the server's (DLP_WORK_DIR): a spec may not set it, anywhere.
fn refuse_work_dir(yaml: &str) -> Result<(), String> {
    fn has(v: &serde_yaml::Value) -> bool {
        match v {
            serde_yaml::Value::Mapping(m) => m.iter().any(|(k, v)| {
                k.as_str().is_some_and(|k| {
                    k.eq_ignore_ascii_case("workdir") || k.eq_ignore_ascii_case("work_dir")
                }) || has(v)
            }),
            serde_yaml::Value::Sequence(s) => s.iter().any(has),
            serde_yaml::Value::Tagged(t) => has(&t.value),
            _ => false,
        }
    }
    let value: serde_yaml::Value =
        serde_yaml::from_str(yaml).map_err(|e| format!("pipeline spec: {e}"))?;
    if has(&value) {
        return Err(
            "pipeline spec: workDir is set by the scheduler (DLP_WORK_DIR), not by a job spec"
                .into(),
        );
    }
    Ok(())
}

fn checked_outputs(mut spec: JobSpec, user: &str) -> Result<JobSpec, String> {
    if spec.output.report.is_some() {
        return Err(
            "pipeline spec: output.report is not written for jobs submitted over Flight; \
             the metrics come back in the job's status (dlp.pipeline.status)"
                .into(),
        );
    }
    if let Some(dir) = &spec.output.model {
        spec.output.model = Some(resolve_output(dir).map_err(|e| format!("output.model: {e}"))?);
    }
    if let Some(dir) = &spec.output.model {
        dlp_plugin::pipeline::stages::may_save(dir, user, spec.output.overwrite)
            .map_err(|e| e.strip_backtrace())?;
    }
    spec.output.owner = Some(user.to_string());
    Ok(spec)
}

fn resolve_output(path: &Path) -> Result<PathBuf, String> {
    if let Some(url) = dlp_plugin::storage::url_of_path(path) {
        dlp_plugin::access::check_write_url(&url).map_err(|e| e.to_string())?;
        return Ok(PathBuf::from(url.to_string()));
    }
    if path.components().any(|c| c == Component::ParentDir) {
        return Err(format!("'{}': '..' is not allowed", path.display()));
    }
    let path = match dlp_plugin::access::DataRoots::get() {
        Some(r) if path.is_relative() => r.write_base().unwrap_or(r.base()).join(path),
        _ => path.to_path_buf(),
    };
    let path = std::path::absolute(&path).map_err(|e| format!("'{}': {e}", path.display()))?;
    dlp_plugin::access::check_write_path(&path).map_err(|e| e.to_string())?;
    Ok(path)
}

/// A path a client names for reading ([`dlp_plugin::access::resolve_input`]).
fn resolve_input(path: &str) -> Result<PathBuf, String> {
    dlp_plugin::access::resolve_input(path).map_err(|e| e.to_string())
}

/// `dlp.model.describe`: the saved PipelineModel at `path` (checked as a load checks it:
/// format, weights, the torch models' sha256) and its manifest as JSON, with `path`
/// resolved.
pub fn describe_model(path: &str) -> Result<Value, JobError> {
    let dir = resolve_input(path)?;
    let model = dlp_plugin::pipeline::PipelineModel::load(&dir).map_err(|e| e.strip_backtrace())?;
    let manifest = match dlp_plugin::storage::url_of_path(&dir) {
        Some(url) => {
            let file = url.join("pipeline.yaml");
            let bytes = dlp_plugin::storage::io_blocking(async move {
                dlp_plugin::storage::get(&file, 1 << 20).await
            })
            .map_err(|e| e.to_string())?;
            String::from_utf8_lossy(&bytes).into_owned()
        }
        None => std::fs::read_to_string(dir.join("pipeline.yaml"))
            .map_err(|e| format!("{}: {e}", dir.display()))?,
    };
    let manifest: Value = serde_yaml::from_str(&manifest)
        .map_err(|e| format!("{}/pipeline.yaml: {e}", dir.display()))?;
    Ok(json!({
        "path": dir,
        "classNames": model.class_names,
        "stages": model.stages.iter().map(|s| s.type_name()).collect::<Vec<_>>(),
        "manifest": manifest,
    }))
}

/// What `dlp.model.save` takes.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SaveModel {
    pub from: String,
    pub to: String,
    #[serde(default)]
    pub overwrite: bool,
}

/// `dlp.model.save`: the PipelineModel at `from` saved again at `to` (under a writable
/// root, owned by `user`; a model there that someone else saved is never replaced).
pub fn save_model(user: &str, body: &str) -> Result<Value, JobError> {
    let req: SaveModel = serde_json::from_str(body).map_err(|e| {
        format!("dlp.model.save: expected {{\"from\", \"to\", \"overwrite\"}}: {e}")
    })?;
    let from = resolve_input(&req.from).map_err(|e| format!("from: {e}"))?;
    let to = resolve_output(Path::new(&req.to)).map_err(|e| format!("to: {e}"))?;
    let model =
        dlp_plugin::pipeline::PipelineModel::load(&from).map_err(|e| e.strip_backtrace())?;
    model
        .save_owned(&to, user, req.overwrite)
        .map_err(|e| e.strip_backtrace())?;
    tracing::info!(user, from = %from.display(), to = %to.display(), "model saved");
    describe_model(&to.to_string_lossy())
}

fn tuning_json(t: &dlp_plugin::pipeline::TuningModel) -> Value {
    json!({
        "metricName": t.metric_name,
        "bestIndex": t.best_index,
        "bestParams": t.best_params(),
        "paramMaps": t.param_maps,
        "avgMetrics": t.avg_metrics,
        "stdMetrics": t.std_metrics,
        "seconds": t.seconds,
    })
}

fn result_json(spec: &JobSpec, r: &JobReport) -> Value {
    let metric = r
        .metrics
        .metric(
            &spec.evaluation.metric_name,
            spec.evaluation.metric_label,
            spec.evaluation.beta,
        )
        .ok();
    let tuning = r.tuning.as_ref().map(tuning_json);
    json!({
        "metricName": spec.evaluation.metric_name,
        "metric": metric,
        "metrics": r.metrics.to_json(&r.class_names),
        "model": spec.output.model,
        "classNames": r.class_names,
        "trainCounts": r.train_counts,
        "testCounts": r.test_counts,
        "invalidImages": r.invalid.len(),
        "otherFiles": r.other_files,
        "fitSeconds": r.fit_seconds,
        "evaluateSeconds": r.evaluate_seconds,
        "tuning": tuning,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_paths_must_stay_under_the_roots() {
        let e = resolve_output(Path::new("models/../../etc")).unwrap_err();
        assert!(e.contains("'..' is not allowed"), "{e}");
        // Without data roots (this test process installs none) any other path resolves.
        assert!(
            resolve_output(Path::new("models/flowers"))
                .unwrap()
                .is_absolute()
        );
    }

    #[test]
    fn only_finished_jobs_are_pruned() {
        let entry = |state| {
            let s = JobStatus {
                job_id: String::new(),
                user: String::new(),
                submitted_at: 0,
                ended_at: None,
                mode: "fit".into(),
                state,
                phase: String::new(),
                events: vec![],
                fits_done: None,
                fits_total: None,
                ballista_jobs: 0,
                running_stages: None,
                elapsed_s: 0.0,
                error: None,
                result: None,
            };
            Arc::new(Entry {
                name: String::new(),
                started: Instant::now(),
                status: watch::channel(s).0,
                task: Mutex::new(None),
            })
        };
        let mut jobs = BTreeMap::new();
        jobs.insert(0, entry(State::Running));
        for n in 1..=KEEP_FINISHED as u64 + 5 {
            jobs.insert(n, entry(State::Succeeded));
        }
        prune(&mut jobs);
        assert_eq!(jobs.len(), KEEP_FINISHED + 1);
        assert!(jobs.contains_key(&0), "the running job stays");
        assert!(!jobs.contains_key(&1) && jobs.contains_key(&6));
    }
}

//! `dlp submit | jobs | status | watch | cancel`: the `dlp` binary as a client of
//! `dlp-scheduler`'s pipeline-job actions (two `dlp-executor` processes on loopback, a users
//! file, a small flowers subset): a followed job, a detached one watched afterwards, the job
//! list and statuses, cancellation, Ctrl-C while following (the job keeps running), and bad
//! input (a misspelt field caught before anything is sent, a wrong password, an unknown job,
//! no --scheduler, no scheduler listening). Every command runs under a timeout.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use dlp_tests::{Cluster, binary};
use serde_json::Value;

const PASSWORD: &str = "wonder land";

/// One finished `dlp` run.
struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl Run {
    fn ok(&self) -> bool {
        self.code == Some(0)
    }

    fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("not JSON ({e}):\n{}\n{}", self.stdout, self.stderr))
    }
}

impl std::fmt::Display for Run {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exit {:?}\n--- stdout\n{}--- stderr\n{}",
            self.code, self.stdout, self.stderr
        )
    }
}

/// `dlp` as alice (DLP_PASSWORD = `password`) on `--scheduler <url>` when given, with
/// nothing from this process's environment that would change that.
struct Dlp {
    dir: PathBuf,
    runs: std::cell::Cell<usize>,
}

impl Dlp {
    fn start(&self, scheduler: Option<&str>, password: &str, args: &[&str]) -> (Child, PathBuf) {
        let n = self.runs.get();
        self.runs.set(n + 1);
        let base = self.dir.join(format!("run-{n}"));
        std::fs::write(base.with_extension("args"), args.join(" ")).unwrap();
        let mut cmd = Command::new(binary("dlp").unwrap());
        if let Some(url) = scheduler {
            cmd.args(["--scheduler", url, "--user", "alice"]);
        }
        let child = cmd
            .args(args)
            .env_remove("DLP_SCHEDULER")
            .env_remove("DLP_USER")
            .env_remove("DLP_PASSWORD_FILE")
            .env_remove("DLP_TLS_CA")
            .env_remove("RUST_LOG")
            .env("RUST_BACKTRACE", "0")
            .env("DLP_PASSWORD", password)
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(base.with_extension("out")).unwrap())
            .stderr(std::fs::File::create(base.with_extension("err")).unwrap())
            .spawn()
            .unwrap();
        (child, base)
    }

    /// Waits for a started run; kills it after `timeout`.
    fn wait(&self, (mut child, base): (Child, PathBuf), timeout: Duration) -> Run {
        let deadline = Instant::now() + timeout;
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break Some(status);
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        let run = Run {
            code: status.and_then(|s| s.code()),
            stdout: std::fs::read_to_string(base.with_extension("out")).unwrap(),
            stderr: std::fs::read_to_string(base.with_extension("err")).unwrap(),
        };
        let args = std::fs::read_to_string(base.with_extension("args")).unwrap();
        // Shown with --nocapture, and when the test fails.
        println!("$ dlp {args}\n{run}");
        assert!(status.is_some(), "dlp hung for {timeout:?}:\n{run}");
        run
    }

    fn run(&self, scheduler: Option<&str>, password: &str, args: &[&str], timeout: u64) -> Run {
        self.wait(
            self.start(scheduler, password, args),
            Duration::from_secs(timeout),
        )
    }
}

fn spec(output: &str, tuning: &str) -> String {
    format!(
        "data: {{path: small, classes: [daisy, tulips]}}
split: {{weights: [0.75, 0.25], seed: 42}}
stages:
  - {{type: DeepImageFeaturizer, modelName: efficientnet_lite0, resize: stretch}}
  - {{type: LogisticRegression, maxIter: 5, regParam: 0.05}}
evaluation: {{metricName: accuracy}}
{output}{tuning}"
    )
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path.to_string_lossy().into_owned()
}

/// The `pl-N` of `submitted pl-N (mode)`.
fn submitted_id(run: &Run) -> String {
    let line = run
        .stdout
        .lines()
        .find(|l| l.starts_with("submitted pl-"))
        .unwrap_or_else(|| panic!("no job id:\n{run}"));
    line.split_whitespace().nth(1).unwrap().to_string()
}

#[test]
fn the_dlp_cli_submits_follows_lists_and_cancels_pipeline_jobs() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("data");
    dlp_tests::copy_flowers(&root.join("small"), &["daisy", "tulips"], 12);
    let users = dir.path().join("users");
    dlp_tests::users_file(&users, &[("alice", PASSWORD)]).unwrap();
    let out_dir = dir.path().join("out");
    std::fs::create_dir_all(&out_dir).unwrap();
    let (root_arg, users_arg, out_arg) = (
        root.to_string_lossy().into_owned(),
        users.to_string_lossy().into_owned(),
        out_dir.to_string_lossy().into_owned(),
    );
    let runs = dir.path().join("runs");
    std::fs::create_dir_all(&runs).unwrap();
    let dlp = Dlp {
        dir: runs,
        runs: Default::default(),
    };
    let specs = dir.path().join("specs");
    std::fs::create_dir_all(&specs).unwrap();
    let first = write(
        &specs,
        "first.yaml",
        &spec("output: {model: models/a}\n", ""),
    );
    let second = write(
        &specs,
        "second.yaml",
        &spec("output: {model: models/b}\n", ""),
    );
    // A slow job: a Ballista job per optimizer iteration, and no convergence.
    let slow = write(
        &specs,
        "slow.yaml",
        &spec("", "").replace("maxIter: 5,", "maxIter: 1000, tol: 0.0,"),
    );
    let bad = write(
        &specs,
        "bad.yaml",
        &spec("", "").replace("regParam", "regparam"),
    );

    // Bad input that needs no cluster, and fails at once.
    let started = Instant::now();
    let nowhere = format!("df://127.0.0.1:{}", dlp_tests::free_port());
    let r = dlp.run(Some(&nowhere), PASSWORD, &["submit", &bad], 60);
    assert!(
        !r.ok() && r.stderr.contains("regparam") && r.stderr.contains("bad.yaml"),
        "a misspelt field fails here, naming the file and the field:\n{r}"
    );
    assert!(!r.stderr.contains("connect"), "nothing was sent:\n{r}");
    for args in [
        &["submit", first.as_str()][..],
        &["jobs"],
        &["cancel", "pl-1"],
    ] {
        let r = dlp.run(None, PASSWORD, args, 60);
        assert!(
            !r.ok()
                && r.stderr
                    .contains(&format!("dlp {} needs --scheduler", args[0])),
            "{args:?} without --scheduler:\n{r}"
        );
    }
    let r = dlp.run(None, PASSWORD, &["submit", &first], 60);
    assert!(r.stderr.contains("use dlp fit"), "{r}");
    let r = dlp.run(Some(&nowhere), PASSWORD, &["jobs"], 60);
    assert!(
        !r.ok()
            && r.stderr
                .contains(&format!("cannot connect to the scheduler at {nowhere}"))
            && r.stderr.to_lowercase().contains("refused"),
        "{r}"
    );
    println!("bad input without a cluster: {:?}", started.elapsed());

    let executor: &[&str] = &["--data-root", &root_arg, "--writable-root", &out_arg];
    let cluster = Cluster::start_each(
        2,
        &[
            "--data-root",
            &root_arg,
            "--writable-root",
            &out_arg,
            "--auth-file",
            &users_arg,
        ],
        &[executor, executor],
    )
    .expect("cluster");
    let url = cluster.url();
    let on = Some(url.as_str());
    let log = || cluster.scheduler.output();

    // 1. A followed job: events on stderr, the metric on stdout, exit 0.
    let started = Instant::now();
    let r = dlp.run(on, PASSWORD, &["submit", &first], 300);
    assert!(r.ok(), "{r}\n{}", log());
    println!("submit (followed): {:?}", started.elapsed());
    let first_id = submitted_id(&r);
    assert!(
        r.stdout.contains(&format!("submitted {first_id} (fit)")),
        "{r}"
    );
    let model_a = std::fs::canonicalize(&out_dir).unwrap().join("models/a");
    assert!(
        r.stdout
            .contains(&format!("; model: {}", model_a.to_string_lossy()))
            && r.stdout.contains("accuracy = ")
            && r.stdout.contains("on the test split ("),
        "{r}"
    );
    for event in ["s] reading", "s] fitting", "s] evaluating", "s] succeeded"] {
        assert!(r.stderr.contains(event), "stderr shows '{event}':\n{r}");
    }

    // 2. Detached: back at once with the id; then watched to the end.
    let started = Instant::now();
    let r = dlp.run(on, PASSWORD, &["submit", "--detach", &second], 60);
    let detached = started.elapsed();
    assert!(r.ok(), "{r}");
    assert!(
        detached < Duration::from_secs(10),
        "--detach took {detached:?}"
    );
    let second_id = submitted_id(&r);
    assert_ne!(second_id, first_id);
    assert!(r.stderr.contains(&format!("dlp watch {second_id}")), "{r}");
    let r = dlp.run(on, PASSWORD, &["watch", &second_id], 300);
    assert!(r.ok(), "{r}\n{}", log());
    assert!(r.stdout.contains("accuracy = "), "{r}");
    assert!(r.stderr.contains("s] succeeded"), "{r}");

    let r = dlp.run(on, PASSWORD, &["jobs", "--format", "json"], 60);
    assert!(r.ok(), "{r}");
    let jobs = r.json();
    let listed: Vec<(&str, &str)> = jobs
        .as_array()
        .unwrap()
        .iter()
        .map(|j| (j["job_id"].as_str().unwrap(), j["state"].as_str().unwrap()))
        .collect();
    assert_eq!(
        listed,
        [(&*first_id, "succeeded"), (&*second_id, "succeeded")]
    );
    let r = dlp.run(on, PASSWORD, &["jobs"], 60);
    assert!(r.ok(), "{r}");
    let table: Vec<&str> = r.stdout.lines().collect();
    assert!(
        table[0].starts_with("ID") && table[0].contains("ELAPSED") && table[0].ends_with("METRIC"),
        "{r}"
    );
    assert!(
        table[1].starts_with(&first_id) && table[1].contains("accuracy="),
        "{r}"
    );
    let status = |id: &str| {
        let r = dlp.run(on, PASSWORD, &["status", id, "--format", "json"], 60);
        assert!(r.ok(), "{r}");
        r.json()
    };
    let (a, b) = (status(&first_id), status(&second_id));
    assert_eq!(b["state"], "succeeded", "{b}");
    assert!(a["result"]["metric"].is_number(), "{a}");
    assert_eq!(
        b["result"]["metric"], a["result"]["metric"],
        "same spec, same split"
    );
    let r = dlp.run(on, PASSWORD, &["status", &first_id], 60);
    assert!(
        r.ok()
            && r.stdout.contains("state:   succeeded")
            && r.stdout.contains("metric:  accuracy = "),
        "{r}"
    );

    // 3. A slow job, detached, cancelled while its Ballista jobs run.
    let r = dlp.run(on, PASSWORD, &["submit", "-d", &slow], 60);
    assert!(r.ok(), "{r}");
    let slow_id = submitted_id(&r);
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let s = status(&slow_id);
        if s["running_stages"].is_array() {
            break;
        }
        assert!(
            s["state"] == "running" && Instant::now() < deadline,
            "{slow_id} never ran a stage: {s}\n{}",
            log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let r = dlp.run(on, PASSWORD, &["cancel", &slow_id], 60);
    assert!(r.ok(), "{r}");
    assert_eq!(r.stdout.trim(), format!("{slow_id} cancelled"));
    let cancelled_at = Instant::now();
    loop {
        let s = status(&slow_id);
        if s["state"] == "cancelled" && s["running_stages"].is_null() {
            break;
        }
        assert!(
            cancelled_at.elapsed() < Duration::from_secs(10),
            "still running 10 s after the cancel: {s}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let r = dlp.run(on, PASSWORD, &["cancel", &first_id], 60);
    assert!(r.ok(), "{r}");
    assert_eq!(
        r.stdout.trim(),
        format!("{first_id} had already ended: succeeded")
    );
    // A cancelled job, watched, is not a success.
    let r = dlp.run(on, PASSWORD, &["watch", &slow_id], 60);
    assert!(
        !r.ok() && r.stderr.contains(&format!("{slow_id} was cancelled")),
        "{r}"
    );

    // Ctrl-C while following stops following, not the job.
    let following = dlp.start(on, PASSWORD, &["submit", &slow]);
    let out = following.1.with_extension("out");
    let deadline = Instant::now() + Duration::from_secs(60);
    while !std::fs::read_to_string(&out)
        .unwrap()
        .contains("submitted pl-")
    {
        assert!(Instant::now() < deadline, "no submission");
        std::thread::sleep(Duration::from_millis(50));
    }
    let pid = following.0.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-INT", &pid])
            .status()
            .unwrap()
            .success()
    );
    let r = dlp.wait(following, Duration::from_secs(30));
    assert_eq!(r.code, Some(130), "{r}");
    let id = submitted_id(&r);
    assert!(
        r.stderr.contains("keeps running") && r.stderr.contains(&format!("dlp cancel {id}")),
        "{r}"
    );
    assert_eq!(status(&id)["state"], "running");
    let r = dlp.run(on, PASSWORD, &["cancel", &id], 60);
    assert_eq!(r.stdout.trim(), format!("{id} cancelled"), "{r}");

    // 4. Bad input on a cluster: the server's messages as they are.
    let r = dlp.run(on, "looking glass", &["jobs"], 60);
    assert!(
        !r.ok() && r.stderr.contains("invalid user or password"),
        "{r}"
    );
    for args in [
        &["status", "pl-999"][..],
        &["watch", "pl-999"],
        &["cancel", "pl-999"],
    ] {
        let r = dlp.run(on, PASSWORD, args, 60);
        assert!(
            !r.ok() && r.stderr.contains("no pipeline job 'pl-999'"),
            "{args:?}:\n{r}"
        );
    }
    let outside = write(
        &specs,
        "outside.yaml",
        &spec("output: {model: /etc/dlp}\n", ""),
    );
    let r = dlp.run(on, PASSWORD, &["submit", &outside], 60);
    assert!(
        !r.ok() && r.stderr.contains("output.model") && r.stderr.contains("writable root"),
        "{r}"
    );
    let r = dlp.run(on, PASSWORD, &["jobs", "--format", "json"], 60);
    let jobs = r.json();
    let states: Vec<&str> = jobs
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["state"].as_str().unwrap())
        .collect();
    assert_eq!(
        states,
        ["succeeded", "succeeded", "cancelled", "cancelled"],
        "{r}"
    );
}

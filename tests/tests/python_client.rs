//! The Python package (`python/`, import name `dlp`) against a live cluster: a
//! `dlp-scheduler` with authentication and two `dlp-executor` processes on loopback, the
//! shared data as the data root. The tests themselves are pytest files in
//! `python/tests` (the seed tutorials in Python beside `dlp fit`, bad input, Ctrl-C); this
//! file starts the cluster and runs them. Also here: a scheduler restart keeps finished
//! jobs and registered functions, and shows a job it cut as failed.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use dlp_tests::{Cluster, binary, python, shared_data};
use serde_json::Value;

const ALICE: (&str, &str) = ("alice", "wonder land");

/// Runs one of `tests/python/`'s client scripts as alice: its stdout as JSON, or its stderr.
fn client(script: &str, port: u16, args: &[&str]) -> Result<Value, String> {
    let out = Command::new(python().unwrap())
        .arg(
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("python")
                .join(script),
        )
        .arg(format!("grpc://127.0.0.1:{port}"))
        .args(args)
        .env("DLP_FLIGHT_USER", ALICE.0)
        .env("DLP_FLIGHT_PASSWORD", ALICE.1)
        .output()
        .unwrap();
    if out.status.success() {
        Ok(serde_json::from_slice(&out.stdout).unwrap())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// One Flight action (`flight_action.py`): its results.
fn action(port: u16, kind: &str, body: &str) -> Result<Vec<Value>, String> {
    let v = client("flight_action.py", port, &[kind, body])?;
    Ok(v.as_array().cloned().unwrap_or_default())
}

/// SQL over ADBC (`flight_sql_query.py`): the rows.
fn sql(port: u16, query: &str) -> Result<Vec<Value>, String> {
    let v = client("flight_sql_query.py", port, &[query])?;
    Ok(v["rows"].as_array().cloned().unwrap_or_default())
}

fn secured_cluster(dir: &Path, data_root: &Path, extra: &[&str]) -> Cluster {
    let users = dir.join("users");
    dlp_tests::users_file(&users, &[ALICE, ("bob", "builder")]).unwrap();
    let out = dir.join("out");
    std::fs::create_dir_all(&out).unwrap();
    let (data, users, out) = (
        data_root.to_string_lossy().into_owned(),
        users.to_string_lossy().into_owned(),
        out.to_string_lossy().into_owned(),
    );
    let executor: &[&str] = &[
        "--data-root",
        &data,
        "--data-root",
        &out,
        "--writable-root",
        &out,
    ];
    // The scheduler: the executors' roots, plus the users and the test's own flags.
    let mut args = executor.to_vec();
    args.extend_from_slice(&["--auth-file", &users]);
    args.extend_from_slice(extra);
    Cluster::start_each(2, &args, &[executor, executor]).expect("cluster")
}

#[test]
fn the_python_package_passes_its_tests_on_a_secured_cluster() {
    let dir = tempfile::tempdir().unwrap();
    let data = shared_data();
    let cluster = secured_cluster(dir.path(), &data, &[]);
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let started = Instant::now();
    let mut cmd = Command::new(python().unwrap());
    cmd.args([
        "-m",
        "pytest",
        "-q",
        "-rA",
        "--durations=0",
        "-p",
        "no:cacheprovider",
    ])
    // DLP_PYTEST_ARGS: other pytest arguments instead of the whole directory, e.g.
    // python/tests/test_client.py::test_sigint_cancels_the_job_on_the_cluster.
    .args(match std::env::var("DLP_PYTEST_ARGS") {
        Ok(args) => args.split_whitespace().map(String::from).collect(),
        Err(_) => vec!["python/tests".to_string()],
    })
    .current_dir(&root)
    .env("DLP_TEST_URI", format!("grpc://127.0.0.1:{}", cluster.port))
    .env("DLP_TEST_USER", ALICE.0)
    .env("DLP_PASSWORD", ALICE.1)
    .env("DLP_TEST_DATA", &data)
    .env("DLP_TEST_OUT", dir.path().join("out"))
    .env("DLP_TEST_DLP", binary("dlp").unwrap())
    // The embedded `dlp fit` reference runs share the 2 cores with the cluster.
    .env("DLP_DEVICE", "cpu");
    let out = cmd.output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    println!(
        "{text}\npytest took {:.0} s",
        started.elapsed().as_secs_f64()
    );
    if !out.status.success() {
        let tail = |p: &dlp_tests::Process| {
            let log = p.output();
            let lines: Vec<&str> = log.lines().collect();
            lines[lines.len().saturating_sub(60)..].join("\n")
        };
        for e in &cluster.executors {
            println!("--- {} (last lines):\n{}", e.name, tail(e));
        }
        panic!(
            "pytest python/tests failed:\n{text}\nscheduler log (last lines):\n{}",
            tail(&cluster.scheduler)
        );
    }
    assert!(
        !text.contains(" skipped") && text.contains("passed"),
        "no test may be skipped here:\n{text}"
    );
}

/// Polls a job until `done` says so (or 5 minutes pass).
fn wait(port: u16, job: &str, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let status = action(port, "dlp.pipeline.status", job).unwrap().remove(0);
        if done(&status) {
            return status;
        }
        assert!(Instant::now() < deadline, "job {job} stuck: {status}");
        std::thread::sleep(Duration::from_millis(300));
    }
}

#[test]
fn a_scheduler_restart_keeps_jobs_and_functions_and_fails_the_cut_job() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("data");
    dlp_tests::copy_flowers(&root.join("small"), &["daisy", "tulips"], 12);
    dlp_tests::copy_flowers(&root.join("more"), &["daisy", "tulips"], 60);
    let state = dir.path().join("state");
    let state_arg = state.to_string_lossy().into_owned();
    let mut cluster = secured_cluster(dir.path(), &root, &["--state-dir", &state_arg]);
    let port = cluster.port;
    let spec = |data: &str, model: &str| {
        format!(
            "data: {{path: {data}, classes: [daisy, tulips]}}
split: {{weights: [0.75, 0.25], seed: 42}}
stages:
  - {{type: DeepImageFeaturizer, modelName: efficientnet_lite0, resize: stretch}}
  - {{type: LogisticRegression, maxIter: 10, regParam: 0.05}}
evaluation: {{metricName: accuracy}}
output: {{model: {model}}}"
        )
    };
    // A finished job and a function registered from its model.
    let done = action(port, "dlp.pipeline.submit", &spec("small", "models/small")).unwrap();
    let done_id = done[0]["job_id"].as_str().unwrap().to_string();
    let finished = wait(port, &done_id, |s| s["state"] != "running");
    assert_eq!(finished["state"], "succeeded", "{finished}");
    let model = finished["result"]["model"].as_str().unwrap().to_string();
    sql(
        port,
        &format!("CREATE FUNCTION small_predict() AS 'pipeline:{model}'"),
    )
    .unwrap();
    let before = sql(
        port,
        "SELECT small_predict(image)['prediction'] AS p FROM read_images('small/tulips') ORDER BY image['origin']",
    )
    .unwrap();
    assert_eq!(before.len(), 12);

    // A job cut by the restart.
    let cut = action(port, "dlp.pipeline.submit", &spec("more", "models/more")).unwrap();
    let cut_id = cut[0]["job_id"].as_str().unwrap().to_string();
    wait(port, &cut_id, |s| {
        s["ballista_jobs"].as_u64().unwrap_or(0) > 0 || s["state"] != "running"
    });
    cluster.restart_scheduler().unwrap();

    let jobs = action(port, "dlp.pipeline.list", "").unwrap().remove(0);
    let jobs = jobs.as_array().unwrap();
    let find = |id: &str| jobs.iter().find(|j| j["job_id"] == id).cloned();
    let old = find(&done_id).expect("the finished job is still listed");
    assert_eq!(old["state"], "succeeded");
    assert_eq!(old["result"]["model"], model.as_str());
    let cut = find(&cut_id).expect("the cut job is listed");
    assert_eq!(cut["state"], "failed", "{cut}");
    assert!(
        cut["error"]
            .as_str()
            .unwrap()
            .contains("scheduler stopped while this job was running"),
        "{cut}"
    );
    assert!(
        !dir.path().join("out/models/more").exists(),
        "no model of the cut job"
    );
    // The function is still registered, and a new job gets a new id.
    let functions = action(port, "dlp.function.list", "").unwrap().remove(0);
    assert!(
        functions
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f["name"] == "small_predict" && f["owner"] == "alice"),
        "{functions}"
    );
    let next = action(port, "dlp.pipeline.submit", &spec("small", "models/again")).unwrap();
    let next_id = next[0]["job_id"].as_str().unwrap().to_string();
    assert_ne!(next_id, done_id);
    assert_ne!(next_id, cut_id);
    let again = wait(port, &next_id, |s| s["state"] != "running");
    assert_eq!(again["state"], "succeeded", "{again}");
    // The executors came back to the new scheduler: the restored function runs.
    let after = sql(
        port,
        "SELECT small_predict(image)['prediction'] AS p FROM read_images('small/tulips') ORDER BY image['origin']",
    )
    .unwrap();
    assert_eq!(after, before);
}

//! Pipeline jobs over Arrow Flight, from Python clients that use only `pyarrow.flight`: the
//! shipped example submits a flowers job as YAML to `dlp-scheduler` (two `dlp-executor`
//! processes on loopback), follows its progress and receives the metrics, which equal those
//! of the same job run by the pipeline API on the embedded cluster. Also: credentials,
//! per-user visibility, bad specs, paths outside the data roots, and cancellation.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use dlp_plugin::pipeline::PipelineModel;
use dlp_plugin::pipeline::job::{JobSpec, run_job};
use dlp_tests::{Cluster, python};
use serde_json::Value;

const USERS: &[(&str, &str)] = &[("alice", "wonder land"), ("bob", "builder")];

/// `small/{daisy,tulips}` with 12 photos each under `root`.
fn small_flowers(root: &Path) {
    dlp_tests::copy_flowers(&root.join("small"), &["daisy", "tulips"], 12);
}

fn spec(data: &str, output: &str) -> String {
    format!(
        "data: {{path: {data}, classes: [daisy, tulips]}}
split: {{weights: [0.75, 0.25], seed: 42}}
stages:
  - {{type: DeepImageFeaturizer, modelName: efficientnet_lite0, resize: stretch}}
  - {{type: LogisticRegression, maxIter: 20, regParam: 0.05}}
evaluation: {{metricName: accuracy}}
{output}"
    )
}

/// One Flight action through `tests/python/flight_action.py`: its results, or the error.
fn action(
    port: u16,
    user: Option<(&str, &str)>,
    kind: &str,
    body: &str,
) -> Result<Vec<Value>, String> {
    let mut cmd = Command::new(python().unwrap());
    cmd.arg(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/python/flight_action.py"
    ))
    .arg(format!("grpc://127.0.0.1:{port}"))
    .arg(kind)
    .arg(body);
    if let Some((u, p)) = user {
        cmd.env("DLP_FLIGHT_USER", u).env("DLP_FLIGHT_PASSWORD", p);
    }
    let out = cmd.output().unwrap();
    if out.status.success() {
        Ok(serde_json::from_slice(&out.stdout).unwrap())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

const ALICE: Option<(&str, &str)> = Some(("alice", "wonder land"));

/// Polls a job's status until `done` says so (or 5 minutes pass).
fn wait(port: u16, job: &str, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let status = action(port, ALICE, "dlp.pipeline.status", job)
            .unwrap()
            .remove(0);
        if done(&status) {
            return status;
        }
        assert!(Instant::now() < deadline, "job {job} stuck: {status}");
        std::thread::sleep(Duration::from_millis(300));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_python_flight_client_runs_the_flowers_pipeline() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("data");
    small_flowers(&root);
    let users = dir.path().join("users");
    dlp_tests::users_file(&users, USERS).unwrap();
    let out_dir = dir.path().join("out");
    std::fs::create_dir_all(&out_dir).unwrap();
    let (root_arg, users_arg, out_arg) = (
        root.to_string_lossy().into_owned(),
        users.to_string_lossy().into_owned(),
        out_dir.to_string_lossy().into_owned(),
    );
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
    let port = cluster.port;

    // The example client, as a user runs it.
    let spec_file = dir.path().join("flowers.yaml");
    std::fs::write(
        &spec_file,
        spec("small", "output: {model: models/flowers}\n"),
    )
    .unwrap();
    let out = Command::new(python().unwrap())
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../examples/pipeline_over_flight.py"
        ))
        .args([
            "--uri",
            &format!("grpc://127.0.0.1:{port}"),
            "--user",
            "alice",
        ])
        .arg(&spec_file)
        .env("DLP_FLIGHT_PASSWORD", "wonder land")
        .output()
        .unwrap();
    let progress = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "example failed:\n{progress}\n{}",
        cluster.scheduler.output()
    );
    println!("{progress}");
    for phase in ["reading", "fitting", "evaluating", "succeeded"] {
        assert!(
            progress.contains(phase),
            "progress shows '{phase}':\n{progress}"
        );
    }
    let status: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(status["state"], "succeeded", "{status}");
    assert_eq!(status["user"], "alice");
    assert!(status["ballista_jobs"].as_u64().unwrap() >= 2, "{status}");
    let result = &status["result"];
    let model_dir = std::fs::canonicalize(&out_dir)
        .unwrap()
        .join("models/flowers");
    assert_eq!(
        result["model"].as_str(),
        Some(&*model_dir.to_string_lossy())
    );
    let on_cluster = PipelineModel::load(&model_dir).expect("the model was saved");

    // The same job through the pipeline API on the embedded cluster.
    let local_spec =
        JobSpec::from_yaml(&spec(&root.join("small").to_string_lossy(), ""), "local").unwrap();
    let ctx = dlp_plugin::embedded::standalone_context(Some(2))
        .await
        .unwrap();
    let local = run_job(&ctx, &local_spec, false, None).await.unwrap();
    let metrics = local.metrics.to_json(&local.class_names);
    println!(
        "over Flight: accuracy {} (test counts {}); pipeline API: accuracy {}",
        result["metric"], result["testCounts"], local.metrics.accuracy
    );
    for key in ["accuracy", "f1", "confusionMatrix", "classNames", "rows"] {
        assert_eq!(
            result["metrics"][key], metrics[key],
            "{key} as the pipeline API's"
        );
    }
    let log_loss = (result["metrics"]["logLoss"].as_f64().unwrap()
        - metrics["logLoss"].as_f64().unwrap())
    .abs();
    assert!(log_loss < 1e-6, "log loss differs by {log_loss}");
    assert_eq!(result["metric"].as_f64(), Some(local.metrics.accuracy));
    assert_eq!(
        result["testCounts"],
        serde_json::json!(local.test_counts),
        "same split"
    );
    let (a, b) = (on_cluster.stages.len(), local.model.stages.len());
    assert_eq!(a, b);

    // Credentials: none, or wrong, are refused before anything runs.
    let err = action(port, None, "dlp.pipeline.list", "").unwrap_err();
    assert!(err.contains("bearer token"), "{err}");
    let err = action(
        port,
        Some(("alice", "looking glass")),
        "dlp.pipeline.list",
        "",
    )
    .unwrap_err();
    assert!(
        err.contains("Unauthenticated") || err.contains("invalid user or password"),
        "{err}"
    );
    // Jobs are private to their user.
    let job = status["job_id"].as_str().unwrap();
    let err = action(port, Some(("bob", "builder")), "dlp.pipeline.status", job).unwrap_err();
    assert!(err.contains(&format!("no pipeline job '{job}'")), "{err}");
    // Bad specs are refused at submission with what was wrong.
    let bad = spec("small", "").replace("regParam", "regparam");
    let err = action(port, ALICE, "dlp.pipeline.submit", &bad).unwrap_err();
    assert!(err.contains("regparam"), "{err}");
    for model in ["/etc/dlp", "../data/models", &root_arg] {
        let outside = spec("small", &format!("output: {{model: '{model}'}}\n"));
        let err = action(port, ALICE, "dlp.pipeline.submit", &outside).unwrap_err();
        assert!(
            err.contains("output.model")
                && (err.contains("writable root") || err.contains("'..' is not allowed")),
            "{model}: {err}"
        );
    }
    // workDir is the server's; models belong to who saved them.
    let work = spec("small", "").replace("regParam: 0.05", "regParam: 0.05, workDir: /tmp/x");
    let err = action(port, ALICE, "dlp.pipeline.submit", &work).unwrap_err();
    assert!(err.contains("workDir"), "{err}");
    let theirs = spec(
        "small",
        "output: {model: models/flowers, overwrite: true}\n",
    );
    let err = action(
        port,
        Some(("bob", "builder")),
        "dlp.pipeline.submit",
        &theirs,
    )
    .unwrap_err();
    assert!(err.contains("holds no model of yours"), "{err}");
    let again = spec("small", "output: {model: models/flowers}\n");
    let err = action(port, ALICE, "dlp.pipeline.submit", &again).unwrap_err();
    assert!(err.contains("overwrite"), "{err}");
    assert_eq!(
        std::fs::read_to_string(model_dir.join(".dlp-owner"))
            .unwrap()
            .trim(),
        "alice"
    );
    // Data outside the roots: the job fails and says why.
    let escape = action(port, ALICE, "dlp.pipeline.submit", &spec("../../etc", "")).unwrap();
    let failed = wait(port, escape[0]["job_id"].as_str().unwrap(), |s| {
        s["state"] != "running"
    });
    assert_eq!(failed["state"], "failed", "{failed}");
    assert!(
        failed["error"]
            .as_str()
            .unwrap()
            .contains("outside the data roots"),
        "{failed}"
    );

    // A tuning job, cancelled while its Ballista jobs run.
    let tune = spec(
        "small",
        "tuning: {numFolds: 3, grid: {regParam: [0.01, 0.05, 0.1, 0.2], elasticNetParam: [0.0, 0.5]}}\n",
    );
    let submitted = action(port, ALICE, "dlp.pipeline.submit", &tune).unwrap();
    assert_eq!(submitted[0]["mode"], "tune");
    let id = submitted[0]["job_id"].as_str().unwrap().to_string();
    wait(port, &id, |s| s["running_stages"].is_array());
    let cancelled = action(port, ALICE, "dlp.pipeline.cancel", &id)
        .unwrap()
        .remove(0);
    assert_eq!(cancelled["state"], "cancelled", "{cancelled}");
    // Its Ballista jobs stop too.
    let idle = wait(port, &id, |s| s["running_stages"].is_null());
    assert_eq!(idle["state"], "cancelled");
    let all = action(port, ALICE, "dlp.pipeline.list", "")
        .unwrap()
        .remove(0);
    let states: Vec<&str> = all
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["state"].as_str().unwrap())
        .collect();
    assert_eq!(states, ["succeeded", "failed", "cancelled"], "{all}");
}

//! Logistic regression on a real cluster: `dlp-scheduler` and two `dlp-executor` processes
//! on loopback. Both executors compute partial gradients in every evaluation, the model
//! equals the embedded cluster's, and a fit survives the loss of an executor.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, Instant};

use datafusion::prelude::SessionContext;
use dlp_plugin::ml::{LogisticRegressionModel, LogisticRegressionParams};
use dlp_tests::{Cluster, fit_parquet, lr_reference};
use serde_json::json;

/// Four-file training set (four scan partitions, so the work spreads over executors).
fn data(dir: &Path, rows: usize, dim: usize) -> String {
    let (rows, dim) = (rows.to_string(), dim.to_string());
    lr_reference(&[
        "data",
        "--out",
        dir.to_str().unwrap(),
        "--rows",
        &rows,
        "--dim",
        &dim,
        "--classes",
        "5",
        "--center-std",
        "0.1",
        "--files",
        "4",
        "--test-rows",
        "10",
    ]);
    dir.join("train.parquet").to_string_lossy().into_owned()
}

fn params(max_iter: usize) -> LogisticRegressionParams {
    serde_json::from_value(json!({
        "regParam": 0.01, "elasticNetParam": 0.2, "maxIter": max_iter, "tol": 0.0
    }))
    .unwrap()
}

async fn fit(
    ctx: &SessionContext,
    train: &str,
    p: LogisticRegressionParams,
) -> LogisticRegressionModel {
    fit_parquet(ctx, train, p).await.unwrap()
}

fn max_diff(a: &LogisticRegressionModel, b: &LogisticRegressionModel) -> f64 {
    a.coefficients
        .iter()
        .chain(&a.intercepts)
        .zip(b.coefficients.iter().chain(&b.intercepts))
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f64::max)
}

/// Evaluation numbers for which an executor's log has a "partial gradient" line.
fn evaluations_in(log: &str) -> BTreeSet<u64> {
    log.lines()
        .filter(|l| l.contains("partial gradient"))
        .filter_map(|l| {
            let at = l.find("evaluation=")? + "evaluation=".len();
            l[at..]
                .split(|c: char| !c.is_ascii_digit())
                .next()?
                .parse()
                .ok()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn both_executors_compute_every_evaluation_and_match_standalone() {
    let dir = tempfile::tempdir().unwrap();
    let train = data(dir.path(), 4000, 32);
    let cluster = Cluster::start(2, 1).expect("cluster");
    let remote = dlp_plugin::session::remote_context(&cluster.url())
        .await
        .unwrap();
    let model = fit(&remote, &train, params(25)).await;
    assert_eq!(model.summary.partitions, 4);
    let evaluations = model.summary.evaluations as u64;
    assert!(evaluations >= 25, "{:?}", model.summary);
    for e in &cluster.executors {
        let seen = evaluations_in(&e.output());
        let missing: Vec<u64> = (1..=evaluations).filter(|n| !seen.contains(n)).collect();
        assert!(
            missing.is_empty(),
            "{} computed no partial gradient in evaluations {missing:?}",
            e.name
        );
    }
    let standalone = dlp_plugin::embedded::standalone_context(Some(2))
        .await
        .unwrap();
    let local = fit(&standalone, &train, params(25)).await;
    let diff = max_diff(&model, &local);
    eprintln!(
        "cluster vs standalone: max |diff| {diff:e}, {} iterations, {} jobs, objective {}",
        model.summary.total_iterations,
        evaluations,
        model.summary.objective()
    );
    assert!(
        diff <= 1e-6,
        "cluster and standalone models differ by {diff}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_fit_survives_a_lost_executor() {
    let dir = tempfile::tempdir().unwrap();
    let train = data(dir.path(), 4000, 32);
    // Executors are declared dead after 4 s without heartbeat (default 180 s).
    let mut cluster = Cluster::start_with(
        2,
        1,
        &[
            "--executor-timeout-seconds",
            "4",
            "--expire-dead-executor-interval-seconds",
            "1",
        ],
        &["--executor-heartbeat-interval-seconds", "1"],
    )
    .expect("cluster");
    let url = cluster.url();
    let train2 = train.clone();
    let fitting = tokio::spawn(async move {
        let remote = dlp_plugin::session::remote_context(&url).await.unwrap();
        fit(&remote, &train2, params(40)).await
    });
    // Kill executor 1 once the fit is well under way.
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let seen = evaluations_in(&cluster.executors[1].output());
        if seen.iter().any(|&n| n >= 5) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the fit never reached evaluation 5"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    cluster.executors[1].kill();
    let killed_at = evaluations_in(&cluster.executors[1].output())
        .last()
        .copied()
        .unwrap();
    let model = tokio::time::timeout(Duration::from_secs(300), fitting)
        .await
        .expect("fit finished")
        .unwrap();
    let after: Vec<u64> = evaluations_in(&cluster.executors[0].output())
        .into_iter()
        .filter(|&n| n > killed_at)
        .collect();
    assert!(!after.is_empty(), "executor 0 did no work after the kill");

    let standalone = dlp_plugin::embedded::standalone_context(Some(2))
        .await
        .unwrap();
    let local = fit(&standalone, &train, params(40)).await;
    let diff = max_diff(&model, &local);
    eprintln!(
        "executor 1 killed after evaluation {killed_at}; fit finished with {} jobs; max |diff| vs standalone {diff:e}",
        model.summary.evaluations
    );
    assert!(
        diff <= 1e-6,
        "model after the executor loss differs by {diff}"
    );
}

//! Faults on a real cluster (`dlp-scheduler` and `dlp-executor` processes on loopback):
//! an executor killed with SIGKILL in the middle of a featurization job, a restarted
//! executor rejoining, and a job that fails on the executors reporting its cause to the
//! client. (A fit that loses an executor is in `lr_cluster.rs`.)

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use datafusion::arrow::array::AsArray;
use datafusion::prelude::{SessionContext, col};
use dlp_plugin::ImageContextExt;
use dlp_plugin::image::ImageReadOptions;
use dlp_plugin::torch::DeepImageFeaturizer;
use dlp_tests::{Cluster, max_abs_diff, shared_data, vectors};

/// Executors are declared dead after 4 s without a heartbeat (Ballista's default is 180 s).
const SCHEDULER: &[&str] = &[
    "--executor-timeout-seconds",
    "4",
    "--expire-dead-executor-interval-seconds",
    "1",
];
const EXECUTOR: &[&str] = &["--executor-heartbeat-interval-seconds", "1"];

fn inference_batches(log: &str) -> usize {
    log.lines()
        .filter(|l| l.contains("inference batch done"))
        .count()
}

/// Features of a 10% sample of the flowers (about 140 photos in 8 partitions), by file.
async fn features(ctx: &SessionContext) -> datafusion::error::Result<BTreeMap<String, Vec<f32>>> {
    let flowers = shared_data().join("flowers").to_string_lossy().into_owned();
    let opts = ImageReadOptions::from_pairs([
        ("dropInvalid", "true"),
        ("withLabel", "true"),
        ("sampleRatio", "0.1"),
        ("seed", "5"),
        ("numPartitions", "8"),
    ])?;
    let df = ctx.read_images(&flowers, opts).await?;
    let df = DeepImageFeaturizer::new("efficientnet_lite0")
        .transform(df)?
        .select(vec![
            datafusion::functions::core::expr_fn::get_field(col("image"), "origin").alias("origin"),
            col("features"),
        ])?;
    let mut out = BTreeMap::new();
    for b in df.collect().await? {
        let origin = b.column(0).as_string::<i32>();
        for (i, v) in vectors(b.column(1)).into_iter().enumerate() {
            out.insert(origin.value(i).to_string(), v.expect("features"));
        }
    }
    Ok(out)
}

fn max_diff(a: &BTreeMap<String, Vec<f32>>, b: &BTreeMap<String, Vec<f32>>) -> f32 {
    assert_eq!(
        a.keys().collect::<Vec<_>>(),
        b.keys().collect::<Vec<_>>(),
        "the same photos"
    );
    a.values()
        .zip(b.values())
        .map(|(x, y)| max_abs_diff(x, y))
        .fold(0.0, f32::max)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn featurization_survives_a_killed_executor_and_a_restarted_one_rejoins() {
    let mut cluster = Cluster::start_with(2, 1, SCHEDULER, EXECUTOR).expect("cluster");
    let url = cluster.url();
    let job = tokio::spawn(async move {
        let remote = dlp_plugin::session::remote_context(&url).await.unwrap();
        features(&remote).await
    });
    // SIGKILL executor 1 as soon as it has featurized its first batch.
    let deadline = Instant::now() + Duration::from_secs(180);
    while inference_batches(&cluster.executors[1].output()) == 0 {
        if job.is_finished() {
            let result = job.await.unwrap().map(|f| f.len());
            panic!(
                "the job ended ({result:?}) before executor 1 ran inference:\n{}",
                cluster.executors[1].output()
            );
        }
        assert!(
            Instant::now() < deadline,
            "executor 1 never ran inference:\n{}",
            cluster.executors[1].output()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    cluster.executors[1].kill();
    assert!(!job.is_finished(), "the kill came before the job ended");
    let before = inference_batches(&cluster.executors[0].output());
    let disturbed = tokio::time::timeout(Duration::from_secs(300), job)
        .await
        .expect("the job finished after the kill")
        .unwrap()
        .expect("the job succeeded after the kill");
    assert!(
        inference_batches(&cluster.executors[0].output()) > before,
        "executor 0 took over work after the kill"
    );
    assert!(
        disturbed.len() > 100,
        "{} photos featurized",
        disturbed.len()
    );

    // A restarted executor rejoins and takes tasks; the undisturbed run gives the same
    // features.
    cluster
        .add_executor(1, EXECUTOR)
        .expect("executor restarted");
    let remote = dlp_plugin::session::remote_context(&cluster.url())
        .await
        .unwrap();
    let undisturbed = features(&remote).await.expect("undisturbed run");
    let rejoined = inference_batches(&cluster.executors[2].output());
    let diff = max_diff(&disturbed, &undisturbed);
    eprintln!(
        "{} photos; executor 1 killed after its first batch; restarted executor ran {rejoined} batches; max |diff| {diff:e}",
        disturbed.len()
    );
    assert!(rejoined > 0, "the restarted executor ran inference");
    assert!(diff <= 1e-5, "features after the kill differ by {diff}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_failing_on_the_executors_reports_its_cause() {
    // The executors lack the model files the client planned with (a misbuilt image): every
    // attempt fails there, and the client gets the executor's error instead of waiting.
    let empty = tempfile::tempdir().unwrap();
    let model_dir = empty.path().to_string_lossy().into_owned();
    let executor: Vec<&str> = EXECUTOR
        .iter()
        .copied()
        .chain(["--model-dir", model_dir.as_str()])
        .collect();
    let cluster = Cluster::start_with(1, 1, SCHEDULER, &executor).expect("cluster");
    let remote = dlp_plugin::session::remote_context(&cluster.url())
        .await
        .unwrap();
    let started = Instant::now();
    let err = tokio::time::timeout(Duration::from_secs(180), features(&remote))
        .await
        .expect("the failure reached the client")
        .expect_err("no executor can load the model");
    let msg = err.to_string();
    eprintln!("failed after {:.1?}: {msg}", started.elapsed());
    assert!(
        msg.contains("efficientnet_lite0") && msg.contains(&model_dir),
        "the error names the model and the directory: {msg}"
    );
}

//! Object storage against a real S3-compatible server on loopback (moto's server mode,
//! `dlp_tests::s3`: real HTTP, SigV4 signatures checked, paginated listing): Spark parity
//! from a bucket, the flowers by class with only the standard AWS variables (the `dlp`
//! binary embedded, and a scheduler with two executors), a fit on two executors that
//! share no file system (parts, model and report in buckets) that survives a SIGKILLed
//! executor, and the failures: wrong credentials, missing bucket and prefix, a server
//! that is down, one that stalls, one that answers 503 for a while, a save that fails.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Output};
use std::sync::OnceLock;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use datafusion::arrow::array::{AsArray, RecordBatch};
use datafusion::arrow::datatypes::Int64Type;
use datafusion::prelude::SessionContext;
use dlp_plugin::storage::StorageConfig;
use dlp_tests::parity::{check_load_scenarios, check_spark_images};
use dlp_tests::s3::{FlakyProxy, S3Server, aws_env, stalling_server};
use dlp_tests::{Cluster, binary, free_port, shared_data};
use serde_json::Value;

/// Per-class counts of `../shared/data/flowers`.
const FLOWERS: [(&str, i64); 5] = [
    ("daisy", 289),
    ("dandelion", 487),
    ("roses", 263),
    ("sunflowers", 290),
    ("tulips", 99),
];

/// One server for the whole test binary (its Python process exits with this process):
/// bucket `spark` holds Spark's test images under `images/`, `flowers` the flowers under
/// `flowers/`, `work` and `out` start empty. This process reaches the buckets through
/// per-bucket settings (`storage.buckets`), the processes it starts through the AWS
/// variables.
fn server() -> &'static S3Server {
    static SERVER: OnceLock<S3Server> = OnceLock::new();
    SERVER.get_or_init(|| {
        let data = shared_data();
        let images = data.join("spark-images/images");
        let flowers = data.join("flowers");
        let server = S3Server::start(&[
            ("spark", Some(images.as_path()), "images"),
            ("flowers", Some(flowers.as_path()), "flowers"),
            ("work", None, ""),
            ("out", None, ""),
            ("flaky", None, ""),
        ])
        .expect("S3 server");
        let mut config = StorageConfig::default();
        for bucket in ["spark", "flowers", "work", "out"] {
            config
                .buckets
                .insert(format!("s3://{bucket}"), server.bucket_settings());
        }
        // Bucket `flaky` through a proxy that refuses manifests under doomed/.
        let proxy = FlakyProxy::start_with(server.port, |request, _| {
            request.starts_with("PUT /flaky/doomed/") && request.contains("pipeline.yaml")
        })
        .expect("proxy");
        let mut flaky = server.bucket_settings();
        flaky.insert(
            "endpoint".into(),
            format!("http://127.0.0.1:{}", proxy.port),
        );
        config.buckets.insert("s3://flaky".into(), flaky);
        config.max_retries = 2;
        config.retry_timeout_seconds = 20;
        dlp_plugin::storage::configure(config).expect("storage settings");
        server
    })
}

/// `dlp ARGS` with `env` added (`RUST_LOG` shows object_store's retries).
fn dlp(args: &[&str], env: &[(String, String)]) -> Output {
    Command::new(binary("dlp").unwrap())
        .args(["--parallelism", "2"])
        .args(args)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .env("RUST_LOG", "warn,object_store=info")
        .output()
        .unwrap()
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// `label_name -> count` of a batch set with those two columns.
fn counts(batches: &[RecordBatch]) -> BTreeMap<String, i64> {
    let mut out = BTreeMap::new();
    for b in batches {
        let names = b.column(0).as_string::<i32>();
        let n = b.column(1).as_primitive::<Int64Type>();
        for r in 0..b.num_rows() {
            out.insert(names.value(r).to_string(), n.value(r));
        }
    }
    out
}

fn expected_counts() -> BTreeMap<String, i64> {
    FLOWERS.iter().map(|(k, v)| (k.to_string(), *v)).collect()
}

const COUNT_QUERY: &str = "SELECT label_name, count(*) AS n FROM \
     read_images('s3://flowers/flowers', 'withLabel=true', 'dropInvalid=true') GROUP BY label_name";

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn spark_parity_holds_from_a_bucket() {
    server();
    let ctx = dlp_plugin::embedded::standalone_context(Some(2))
        .await
        .unwrap();
    let root = "s3://spark/images";
    check_spark_images(&ctx, root, root).await;
    // A scenario's `load` is relative to the images folder ("." is the folder itself).
    let root_of = |load: &str| match load.trim_start_matches("./").trim_end_matches('/') {
        "" | "." => root.to_string(),
        rel => format!("{root}/{rel}"),
    };
    check_load_scenarios(&ctx, root_of, root).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn flowers_by_class_with_only_the_aws_variables() {
    let s3 = server();
    // The `dlp` binary on its embedded cluster, as a user runs it.
    let out = dlp(&["sql", "--format", "json", COUNT_QUERY], &s3.env());
    assert!(out.status.success(), "{}", text(&out));
    let rows: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
    let got: BTreeMap<String, i64> = rows
        .iter()
        .map(|r| {
            (
                r["label_name"].as_str().unwrap().to_string(),
                r["n"].as_i64().unwrap(),
            )
        })
        .collect();
    assert_eq!(got, expected_counts(), "embedded");

    // A scheduler and two executors that have only the AWS variables.
    let cluster = Cluster::start_each_with_env(2, &[], &[&[], &[]], &s3.env()).expect("cluster");
    let remote = dlp_plugin::session::remote_context(&cluster.url())
        .await
        .unwrap();
    let batches = remote
        .sql(COUNT_QUERY)
        .await
        .unwrap()
        .collect()
        .await
        .unwrap();
    assert_eq!(counts(&batches), expected_counts(), "cluster");
    // Both executors read objects; no secret reached a log.
    for e in &cluster.executors {
        let log = e.output();
        assert!(log.contains("image partition done"), "{}: {log}", e.name);
        assert!(
            !log.contains(&s3.secret_access_key),
            "{} logged the secret",
            e.name
        );
    }
    assert!(!cluster.scheduler.output().contains(&s3.secret_access_key));
}

/// `dlp predict --format json` as `file name -> (prediction, probability)`.
fn predictions(model: &str, data: &str, env: &[(String, String)]) -> BTreeMap<String, (f64, f64)> {
    let out = dlp(
        &["predict", "--format", "json", "--model", model, data],
        env,
    );
    assert!(out.status.success(), "{}", text(&out));
    let rows: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
    rows.iter()
        .map(|r| {
            let origin = r["origin"].as_str().unwrap();
            (
                origin.rsplit('/').next().unwrap().to_string(),
                (
                    r["prediction"].as_f64().unwrap(),
                    r["probability"].as_f64().unwrap(),
                ),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_fit_on_executors_that_share_nothing_survives_a_lost_executor() {
    let s3 = server();
    let dir = tempfile::tempdir().unwrap();
    let spec = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/flowers.yaml");
    let spec = spec.to_string_lossy().into_owned();
    let flowers = shared_data().join("flowers");

    // The same job on local files, on the embedded cluster.
    let local_model = dir.path().join("local-model");
    let out = dlp(
        &[
            "fit",
            &spec,
            "--data",
            &flowers.to_string_lossy(),
            "--model",
            &local_model.to_string_lossy(),
            "--report",
            &dir.path().join("local-report").to_string_lossy(),
        ],
        &[],
    );
    assert!(out.status.success(), "{}", text(&out));

    // Two executors, each with its own work dir and nothing in common but the bucket
    // (DLP_WORK_DIR in object storage, on the client that drives the fit too).
    let mut env = s3.env();
    env.push(("DLP_WORK_DIR".into(), "s3://work/dlp".into()));
    let mut cluster = Cluster::start_each_with_env(
        2,
        &[
            "--executor-timeout-seconds",
            "4",
            "--expire-dead-executor-interval-seconds",
            "1",
        ],
        &[
            &["--executor-heartbeat-interval-seconds", "1"],
            &["--executor-heartbeat-interval-seconds", "1"],
        ],
        &env,
    )
    .expect("cluster");
    let url = cluster.url();
    let args: Vec<String> = [
        "--scheduler",
        &url,
        "fit",
        &spec,
        "--data",
        "s3://flowers/flowers",
        "--model",
        "s3://out/flowers/model",
        "--report",
        "s3://out/flowers/report",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let env2 = env.clone();
    let fitting = std::thread::spawn(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        dlp(&args, &env2)
    });
    // SIGKILL executor 1 once the logistic regression is under way.
    let deadline = Instant::now() + Duration::from_secs(600);
    while !cluster.executors[1].output().contains("partial gradient") {
        assert!(
            Instant::now() < deadline && !fitting.is_finished(),
            "executor 1 computed no gradient:\n{}",
            cluster.executors[1].output()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    cluster.executors[1].kill();
    let out = fitting.join().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let after_kill = cluster.executors[0]
        .output()
        .matches("partial gradient")
        .count();
    assert!(after_kill > 0, "executor 0 computed nothing");

    // The model and the report are in the bucket, the work parts are gone.
    let objects = |prefix: &str| {
        let u = dlp_plugin::storage::ObjectUrl::parse(prefix).unwrap();
        dlp_plugin::storage::io_blocking(async move { dlp_plugin::storage::list(&u).await })
            .unwrap()
            .into_iter()
            .map(|(o, _)| o.to_string())
            .collect::<Vec<_>>()
    };
    let model_objects = objects("s3://out/flowers/model");
    assert!(
        model_objects.iter().any(|o| o.ends_with("pipeline.yaml")),
        "{model_objects:?}"
    );
    let report = objects("s3://out/flowers/report");
    for f in ["report.txt", "metrics.json", "confusion_matrix.png"] {
        assert!(report.iter().any(|o| o.ends_with(f)), "{f}: {report:?}");
    }
    assert!(
        objects("s3://work/dlp").is_empty(),
        "work parts left behind"
    );

    // The saved model from the bucket predicts what the local run's model predicts.
    let tulips = flowers.join("tulips").to_string_lossy().into_owned();
    let from_bucket = predictions("s3://out/flowers/model", &tulips, &s3.env());
    let from_local = predictions(&local_model.to_string_lossy(), &tulips, &[]);
    assert_eq!(from_bucket.len(), 99);
    let mut worst: f64 = 0.0;
    for (file, (p, prob)) in &from_local {
        let (q, qprob) = from_bucket[file];
        assert_eq!(*p, q, "{file}: prediction");
        worst = worst.max((prob - qprob).abs());
    }
    // Other batch compositions change the CNN's float sums in the last bits (features
    // within 1e-4): the same classes, probabilities within 1e-4.
    eprintln!(
        "executor 1 killed mid-fit; executor 0 computed {after_kill} partial gradients; \
         99 predictions from the bucket's model, probabilities within {worst:e} of the local run's"
    );
    assert!(worst <= 1e-4, "probabilities differ by {worst}");
}

/// Runs the count query with `env` and storage settings that give up fast; returns the
/// output and how long it took.
fn failing_query(query: &str, env: &[(String, String)]) -> (Output, Duration) {
    let mut env = env.to_vec();
    env.extend(
        [
            ("DLP_STORAGE_MAX_RETRIES", "2"),
            ("DLP_STORAGE_RETRY_TIMEOUT", "10"),
            ("DLP_STORAGE_REQUEST_TIMEOUT", "2"),
            ("DLP_STORAGE_CONNECT_TIMEOUT", "2"),
        ]
        .map(|(k, v)| (k.to_string(), v.to_string())),
    );
    let started = Instant::now();
    let out = dlp(&["sql", query], &env);
    (out, started.elapsed())
}

#[test]
fn storage_failures_are_clear_and_bounded() {
    let s3 = server();
    let secret = &s3.secret_access_key;
    let check = |what: &str, out: &Output, took: Duration, needle: &str| {
        let t = text(out);
        eprintln!("{what} ({:.1} s): {}", took.as_secs_f64(), t.trim());
        assert!(!out.status.success(), "{what} succeeded");
        assert!(t.contains(needle), "{what}: no '{needle}' in:\n{t}");
        assert!(!t.contains(secret.as_str()), "{what}: the secret is shown");
        assert!(
            !t.contains("wrong-secret-value"),
            "{what}: the secret is shown"
        );
        assert!(took < Duration::from_secs(60), "{what} took {took:?}");
    };

    // Wrong credentials: refused, the URL named.
    let (out, took) = failing_query(COUNT_QUERY, &s3.env_with_secret("wrong-secret-value"));
    check("wrong secret", &out, took, "s3://flowers/flowers");
    assert!(text(&out).contains("access denied") || text(&out).contains("SignatureDoesNotMatch"));

    // A bucket that does not exist, a prefix with nothing under it.
    let (out, took) = failing_query(
        "SELECT count(*) FROM read_images('s3://no-such-bucket/x')",
        &s3.env(),
    );
    check("missing bucket", &out, took, "s3://no-such-bucket/x");
    let (out, took) = failing_query(
        "SELECT count(*) FROM read_images('s3://flowers/nothing-here')",
        &s3.env(),
    );
    check(
        "missing prefix",
        &out,
        took,
        "path does not exist: s3://flowers/nothing-here",
    );

    // A server that is down: connection refused, retried, then a clear error.
    let down = format!("http://127.0.0.1:{}", free_port());
    let (out, took) = failing_query(COUNT_QUERY, &aws_env(&down, &s3.access_key_id, secret));
    check("server down", &out, took, "s3://flowers/flowers");
    assert!(
        text(&out).contains("retr"),
        "no retry in the logs:\n{}",
        text(&out)
    );

    // A server that accepts connections and never answers: bounded by the request timeout.
    let stall = format!("http://127.0.0.1:{}", stalling_server().unwrap());
    let (out, took) = failing_query(COUNT_QUERY, &aws_env(&stall, &s3.access_key_id, secret));
    check("stalling server", &out, took, "s3://flowers/flowers");

    // 503 Slow Down for the first requests: retried with backoff, then the right answer.
    let proxy = FlakyProxy::start(s3.port, 3).unwrap();
    let flaky = format!("http://127.0.0.1:{}", proxy.port);
    let (out, _) = {
        let mut env = aws_env(&flaky, &s3.access_key_id, secret);
        env.push(("DLP_STORAGE_MAX_RETRIES".into(), "5".into()));
        let started = Instant::now();
        let out = dlp(&["sql", "--format", "json", COUNT_QUERY], &env);
        (out, started.elapsed())
    };
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("retr"),
        "no retry in the logs:\n{}",
        text(&out)
    );
    assert!(proxy.requests.load(Ordering::SeqCst) > 3);
    let rows: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(rows.len(), 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_failed_save_leaves_no_partial_model() {
    let s3 = server();
    let ctx: SessionContext = dlp_plugin::embedded::standalone_context(Some(2))
        .await
        .unwrap();
    // A small fitted pipeline: a logistic regression on 40 rows of two features.
    let rows: Vec<String> = (0..40)
        .map(|i| {
            let (a, b) = ((i % 7) as f64 / 7.0, (i % 5) as f64 / 5.0);
            format!("({a}, {b}, {})", u8::from(a + b > 0.8))
        })
        .collect();
    let df = ctx
        .sql(&format!(
            "SELECT make_array(a, b) AS features, CAST(l AS DOUBLE) AS label \
             FROM (VALUES {}) AS t(a, b, l)",
            rows.join(", ")
        ))
        .await
        .unwrap();
    let lr: dlp_plugin::ml::LogisticRegressionParams =
        serde_json::from_value(serde_json::json!({"maxIter": 20})).unwrap();
    let model = dlp_plugin::pipeline::Pipeline::new(vec![
        dlp_plugin::pipeline::PipelineStage::LogisticRegression(lr),
    ])
    .fit(df)
    .await
    .unwrap();
    let objects = |prefix: &str| {
        let u = dlp_plugin::storage::ObjectUrl::parse(prefix).unwrap();
        dlp_plugin::storage::io_blocking(async move { dlp_plugin::storage::list(&u).await })
            .unwrap()
    };
    // Saved to a bucket and loaded back: the same model.
    model.save("s3://out/small/model").unwrap();
    let loaded = dlp_plugin::pipeline::PipelineModel::load("s3://out/small/model").unwrap();
    assert_eq!(loaded, model);
    // Saving again over it leaves the one model.
    model.save("s3://out/small/model").unwrap();
    assert_eq!(
        dlp_plugin::pipeline::PipelineModel::load("s3://out/small/model").unwrap(),
        model
    );
    // A bucket that does not exist: an error naming it, and nothing written.
    let e = model
        .save("s3://no-such-bucket/model")
        .unwrap_err()
        .to_string();
    assert!(e.contains("s3://no-such-bucket/model"), "{e}");
    assert!(!e.contains(&s3.secret_access_key));
    // The server refuses the manifest, the last object of a save (bucket `flaky` goes
    // through a proxy that answers 503 to every PUT of a pipeline.yaml under doomed/):
    // the save fails after its retries, and what it had written is removed.
    let e = model
        .save("s3://flaky/doomed/model")
        .unwrap_err()
        .to_string();
    eprintln!("refused manifest: {e}");
    assert!(e.contains("s3://flaky/doomed/model"), "{e}");
    assert!(e.contains("503"), "not the manifest's refusal: {e}");
    assert!(
        objects("s3://flaky/doomed").is_empty(),
        "a partial model is left: {:?}",
        objects("s3://flaky/doomed")
    );
    // A save beside it that the proxy lets through works.
    model.save("s3://flaky/fine/model").unwrap();
    assert!(!objects("s3://flaky/fine/model").is_empty());
    // Loading what is not there names the URL.
    let e = dlp_plugin::pipeline::PipelineModel::load("s3://out/small/nothing")
        .unwrap_err()
        .to_string();
    assert!(e.contains("s3://out/small/nothing"), "{e}");
}

/// A folder cached from a bucket (a model directory): an object replaced there by one of
/// the same size (a manifest whose new sha256 has the same length) is fetched again, into
/// the same local copy; an unchanged one is not.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_replaced_object_of_the_same_size_is_fetched_again() {
    let _s3 = server();
    let url = dlp_plugin::storage::ObjectUrl::parse("s3://out/sync").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (u, d) = (url.clone(), dir.path().to_path_buf());
    let put = |text: &'static str| {
        let u = u.join("m.yaml");
        dlp_plugin::storage::io_blocking(
            async move { dlp_plugin::storage::put(&u, text.into()).await },
        )
        .unwrap()
    };
    let fetch = || {
        let (u, d) = (u.clone(), d.clone());
        dlp_plugin::storage::io_blocking(async move {
            dlp_plugin::storage::download_prefix(&u, &d).await
        })
        .unwrap()
    };
    let second = || std::thread::sleep(std::time::Duration::from_millis(1100));
    put("sha256: aaaa\n");
    second();
    assert_eq!(fetch(), 1);
    second();
    assert_eq!(fetch(), 0, "unchanged: kept");
    put("sha256: bbbb\n");
    second();
    assert_eq!(
        fetch(),
        1,
        "replaced by one of the same size: fetched again"
    );
    let text = std::fs::read_to_string(dir.path().join("m.yaml")).unwrap();
    assert_eq!(text, "sha256: bbbb\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tables_read_image_and_the_model_directory_in_buckets() {
    let s3 = server();
    let ctx = dlp_plugin::embedded::standalone_context(Some(2))
        .await
        .unwrap();
    let sql = |q: String| {
        let ctx = ctx.clone();
        async move { ctx.sql(&q).await?.collect().await }
    };
    let first_i64 = |b: &[RecordBatch]| b[0].column(0).as_primitive::<Int64Type>().value(0);
    // read_image(uri) of one object.
    let b = sql(
        "SELECT read_image('s3://flowers/flowers/daisy/100080576_f52e8ee070_n.jpg')['nChannels'] AS c"
            .into(),
    )
    .await
    .unwrap();
    assert_eq!(
        b[0].column(0)
            .as_primitive::<datafusion::arrow::datatypes::Int32Type>()
            .value(0),
        3
    );
    // CREATE EXTERNAL TABLE ... STORED AS IMAGE on a prefix: 4 photos and a text file
    // (an invalid row).
    sql(
        "CREATE EXTERNAL TABLE kittens STORED AS IMAGE LOCATION 's3://spark/images/origin/kittens'"
            .into(),
    )
    .await
    .unwrap();
    let b = sql("SELECT count(*) AS n, sum(CASE WHEN image['nChannels'] > 0 THEN 1 ELSE 0 END) AS ok FROM kittens".into())
        .await
        .unwrap();
    assert_eq!(first_i64(&b), 5);
    // COPY TO a bucket, then a Parquet table on it (DataFusion's own reader and writer).
    sql("COPY (SELECT image['origin'] AS origin, image['width'] AS w FROM kittens) TO 's3://out/tables/kittens/' STORED AS PARQUET".into())
        .await
        .unwrap();
    sql("CREATE EXTERNAL TABLE k STORED AS PARQUET LOCATION 's3://out/tables/kittens/'".into())
        .await
        .unwrap();
    let b = sql("SELECT count(*) FROM k".into()).await.unwrap();
    assert_eq!(first_i64(&b), 5);

    // The model directory in a bucket: fetched once into the process's cache, sha256
    // checked (`dlp models verify` loads every model).
    let models = dlp_plugin::torch::manifest::default_model_dir();
    let zoo = dlp_plugin::storage::ObjectUrl::parse("s3://out/zoo").unwrap();
    dlp_plugin::storage::io(
        async move { dlp_plugin::storage::upload_dir(&models, &zoo, None).await },
    )
    .await
    .unwrap();
    let out = dlp(
        &["--model-dir", "s3://out/zoo", "models", "verify"],
        &s3.env(),
    );
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("efficientnet_lite0"), "{}", text(&out));
    let out = dlp(
        &[
            "--model-dir",
            "s3://out/zoo",
            "sql",
            "SELECT predict_topk('efficientnet_lite0', image, 1) AS top FROM read_images('s3://flowers/flowers/daisy', 'pathGlobFilter=100080576*')",
        ],
        &s3.env(),
    );
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("daisy"),
        "{}",
        text(&out)
    );
}

/// A model fine-tuned through a cluster whose model directory is a bucket: the client
/// saves it into its copy of that folder and publishes it to the bucket, and the executors
/// (which copied the folder when they started, into their own temporary folders) fetch it
/// when the evaluation and `dlp predict` ask for it by name. Nothing shares a file system
/// but the images.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_fine_tuned_model_reaches_executors_through_a_model_bucket() {
    let s3 = server();
    let dir = tempfile::tempdir().unwrap();
    // The base model only (its inference and trainable forms, its classes).
    let zoo = dlp_plugin::torch::manifest::default_model_dir();
    let base = dir.path().join("base-zoo");
    std::fs::create_dir_all(&base).unwrap();
    for f in [
        "efficientnet_lite0.yaml",
        "efficientnet_lite0.pt",
        "efficientnet_lite0.train.pt",
        "imagenet_classes.txt",
    ] {
        std::fs::copy(zoo.join(f), base.join(f)).unwrap();
    }
    let url = dlp_plugin::storage::ObjectUrl::parse("s3://out/ft-zoo").unwrap();
    let b = base.clone();
    dlp_plugin::storage::io(async move { dlp_plugin::storage::upload_dir(&b, &url, None).await })
        .await
        .unwrap();
    // Ten digits of two classes.
    let digits = dir.path().join("digits");
    dlp_tests::copy_classes("numta-50", &digits, &["3", "7"], 10);
    let spec = dir.path().join("ft.yaml");
    std::fs::write(
        &spec,
        format!(
            "data: {{path: '{}'}}\n\
             stages:\n  - {{type: TorchImageEstimator, modelName: efficientnet_lite0, resize: stretch, \
             outputModelName: lite0_ft_bucket, imageSize: 96, learningRate: 0.01, epochs: 2, batchSize: 8}}\n\
             evaluation: {{metricName: accuracy}}\n\
             output: {{model: 's3://out/ft/model', report: 's3://out/ft/report'}}\n",
            digits.display()
        ),
    )
    .unwrap();
    let mut env = s3.env();
    env.push(("DLP_MODEL_DIR".into(), "s3://out/ft-zoo".into()));
    // Separate temporary folders: the cluster's copies of the bucket are not the client's.
    let cluster_tmp = dir.path().join("cluster-tmp");
    std::fs::create_dir_all(&cluster_tmp).unwrap();
    let mut cluster_env = env.clone();
    cluster_env.push(("TMPDIR".into(), cluster_tmp.to_string_lossy().into_owned()));
    let cluster = Cluster::start_each_with_env(2, &[], &[&[]], &cluster_env).expect("cluster");
    let client_tmp = dir.path().join("client-tmp");
    std::fs::create_dir_all(&client_tmp).unwrap();
    let mut client_env = env.clone();
    client_env.push(("TMPDIR".into(), client_tmp.to_string_lossy().into_owned()));
    let out = dlp(
        &[
            "--scheduler",
            &cluster.url(),
            "fit",
            &spec.to_string_lossy(),
        ],
        &client_env,
    );
    assert!(out.status.success(), "{}", text(&out));

    // The model is in the bucket, the manifest beside its TorchScript and classes.
    let u = dlp_plugin::storage::ObjectUrl::parse("s3://out/ft-zoo").unwrap();
    let objects: Vec<String> =
        dlp_plugin::storage::io(async move { dlp_plugin::storage::list(&u).await })
            .await
            .unwrap()
            .into_iter()
            .map(|(o, _)| o.to_string())
            .collect();
    for f in [
        "lite0_ft_bucket.pt",
        "lite0_ft_bucket.yaml",
        "lite0_ft_bucket.classes.txt",
    ] {
        assert!(objects.iter().any(|o| o.ends_with(f)), "{f}: {objects:?}");
    }
    // Trained and applied at 96x96, as its manifest says.
    let u = dlp_plugin::storage::ObjectUrl::parse("s3://out/ft-zoo/lite0_ft_bucket.yaml").unwrap();
    let manifest =
        dlp_plugin::storage::io(async move { dlp_plugin::storage::get(&u, 1 << 20).await })
            .await
            .unwrap();
    let manifest: dlp_plugin::torch::ModelManifest = serde_yaml::from_slice(&manifest).unwrap();
    assert_eq!((manifest.input.height, manifest.input.width), (96, 96));
    // The executor fetched it (it started before the model existed).
    assert!(
        cluster.executors[0]
            .output()
            .contains("refreshed a folder cached from object storage"),
        "{}",
        cluster.executors[0].output()
    );

    // `dlp predict` of the saved pipeline on the cluster, from a client with a fresh
    // temporary folder, and embedded with a model directory that lacks the model (the
    // pipeline carries a copy): the same predictions.
    let fresh_tmp = dir.path().join("fresh-tmp");
    std::fs::create_dir_all(&fresh_tmp).unwrap();
    let mut fresh_env = env.clone();
    fresh_env.push(("TMPDIR".into(), fresh_tmp.to_string_lossy().into_owned()));
    let sevens = digits.join("7").to_string_lossy().into_owned();
    let out = dlp(
        &[
            "--scheduler",
            &cluster.url(),
            "predict",
            "--format",
            "json",
            "--model",
            "s3://out/ft/model",
            &sevens,
        ],
        &fresh_env,
    );
    assert!(out.status.success(), "{}", text(&out));
    let rows: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(rows.len(), 10);
    let mut embedded_env = s3.env();
    let empty_zoo = dir.path().join("empty-zoo");
    std::fs::create_dir_all(&empty_zoo).unwrap();
    std::fs::copy(
        base.join("efficientnet_lite0.yaml"),
        empty_zoo.join("efficientnet_lite0.yaml"),
    )
    .unwrap();
    std::fs::copy(
        base.join("efficientnet_lite0.pt"),
        empty_zoo.join("efficientnet_lite0.pt"),
    )
    .unwrap();
    std::fs::copy(
        base.join("imagenet_classes.txt"),
        empty_zoo.join("imagenet_classes.txt"),
    )
    .unwrap();
    embedded_env.push((
        "DLP_MODEL_DIR".into(),
        empty_zoo.to_string_lossy().into_owned(),
    ));
    let embedded = predictions("s3://out/ft/model", &sevens, &embedded_env);
    assert!(empty_zoo.join("lite0_ft_bucket.pt").exists());
    assert_eq!(embedded.len(), 10);
    for r in &rows {
        let file = r["origin"].as_str().unwrap().rsplit('/').next().unwrap();
        let (p, prob) = embedded[file];
        assert_eq!(r["prediction"].as_f64().unwrap(), p, "{file}");
        assert!(
            (r["probability"].as_f64().unwrap() - prob).abs() <= 1e-4,
            "{file}"
        );
    }
}

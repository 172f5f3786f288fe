//! The cluster as a service: Flight SQL authentication (real ADBC client) and GPU-aware
//! placement (one executor registered as GPU class, a CPU machine pretending, and one CPU
//! executor), with real `dlp-scheduler` / `dlp-executor` processes on loopback.

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;

use datafusion::arrow::array::AsArray;
use datafusion::arrow::datatypes::{Int32Type, Int64Type};
use datafusion::functions_aggregate::expr_fn::count;
use datafusion::prelude::{SessionContext, col};
use dlp_plugin::ImageContextExt;
use dlp_plugin::image::ImageReadOptions;
use dlp_plugin::torch::DeepImageFeaturizer;
use dlp_tests::{Cluster, binary, free_port, python, shared_data};

fn flowers() -> String {
    shared_data().join("flowers").to_string_lossy().into_owned()
}

/// Runs the ADBC Flight SQL client; Ok(stdout) or Err(stderr).
fn adbc(port: u16, query: &str, user: Option<(&str, &str)>) -> Result<String, String> {
    let mut cmd = Command::new(python().unwrap());
    cmd.arg(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/python/flight_sql_query.py"
    ))
    .arg(format!("grpc://127.0.0.1:{port}"))
    .arg(query);
    if let Some((u, p)) = user {
        cmd.env("DLP_FLIGHT_USER", u).env("DLP_FLIGHT_PASSWORD", p);
    }
    let out = cmd.output().unwrap();
    if out.status.success() {
        Ok(String::from_utf8(out.stdout).unwrap())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

#[test]
fn scheduler_needs_credentials_or_explicit_anonymous_access() {
    let out = Command::new(binary("dlp-scheduler").unwrap())
        .args(["--bind-host", "127.0.0.1", "--bind-port"])
        .arg(free_port().to_string())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--auth-file") && err.contains("--allow-anonymous"),
        "{err}"
    );
    let dir = tempfile::tempdir().unwrap();
    let users = dir.path().join("users");
    std::fs::write(&users, "# nobody yet\n").unwrap();
    let out = Command::new(binary("dlp-scheduler").unwrap())
        .args(["--bind-host", "127.0.0.1", "--auth-file"])
        .arg(&users)
        .args(["--bind-port", &free_port().to_string()])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&*users.to_string_lossy()) && err.contains("no users"),
        "{err}"
    );
}

#[test]
fn flight_sql_requires_authentication() {
    let dir = tempfile::tempdir().unwrap();
    let users = dir.path().join("users");
    dlp_tests::users_file(
        &users,
        &[("alice", "correct horse"), ("bob", "battery staple")],
    )
    .unwrap();
    let users = users.to_string_lossy().into_owned();
    let cluster = Cluster::start_with(1, 2, &["--auth-file", &users], &[]).expect("cluster");
    let query = format!(
        "SELECT label_name, count(*) AS n FROM read_images('{}', 'withLabel=true') \
         WHERE label_name IS NOT NULL GROUP BY label_name ORDER BY label_name",
        flowers()
    );

    let ok = adbc(cluster.port, &query, Some(("alice", "correct horse"))).unwrap_or_else(|e| {
        panic!(
            "authenticated query failed: {e}\n{}",
            cluster.scheduler.output()
        )
    });
    let json: serde_json::Value = serde_json::from_str(&ok).unwrap();
    let counts: BTreeMap<String, i64> = json["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["label_name"].as_str().unwrap().to_string(),
                r["n"].as_i64().unwrap(),
            )
        })
        .collect();
    assert_eq!(counts.values().sum::<i64>(), 1428, "{counts:?}");
    assert_eq!(counts.len(), 5, "{counts:?}");

    let no_token = adbc(cluster.port, &query, None).unwrap_err();
    assert!(
        no_token.contains("UNAUTHENTICATED") || no_token.contains("Unauthenticated"),
        "{no_token}"
    );
    let wrong = adbc(cluster.port, &query, Some(("alice", "Tr0ub4dor&3"))).unwrap_err();
    assert!(
        wrong.contains("UNAUTHENTICATED") || wrong.contains("Unauthenticated"),
        "{wrong}"
    );
    assert!(wrong.contains("invalid user or password"), "{wrong}");
    let unknown = adbc(cluster.port, &query, Some(("mallory", "correct horse"))).unwrap_err();
    assert!(unknown.contains("invalid user or password"), "{unknown}");
}

/// Stages each executor ran, from Ballista's "Execute task  : [TID job/stage.attempt/…]".
fn stages_run(log: &str) -> BTreeSet<usize> {
    log.lines()
        .filter_map(|l| l.split("Execute task  : [TID ").nth(1))
        .filter_map(|t| t.split('/').nth(1))
        .filter_map(|s| s.split('.').next())
        .filter_map(|s| s.parse().ok())
        .collect()
}

fn inference_batches(log: &str) -> usize {
    log.lines()
        .filter(|l| l.contains("inference batch done"))
        .count()
}

/// Features of a 10% sample of the flowers, counted per label: a torch stage (read,
/// featurize, partial count) and a CPU stage (final count).
async fn featurized_counts(ctx: &SessionContext) -> BTreeMap<i32, i64> {
    let opts = ImageReadOptions::from_pairs([
        ("dropInvalid", "true"),
        ("withLabel", "true"),
        ("sampleRatio", "0.1"),
        ("seed", "11"),
    ])
    .unwrap();
    let df = ctx.read_images(&flowers(), opts).await.unwrap();
    let df = DeepImageFeaturizer::new("efficientnet_lite0")
        .transform(df)
        .unwrap()
        .aggregate(vec![col("label")], vec![count(col("features")).alias("n")])
        .unwrap();
    let mut out = BTreeMap::new();
    for b in df.collect().await.unwrap() {
        let label = b.column(0).as_primitive::<Int32Type>();
        let n = b.column(1).as_primitive::<Int64Type>();
        for i in 0..b.num_rows() {
            out.insert(label.value(i), n.value(i));
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn torch_stages_go_to_the_gpu_class_executor() {
    // executor-0 announces a GPU (it has none: the class is what placement reads);
    // executor-1 is a CPU executor with room for every CPU task (CPU stages spill onto
    // GPU-class executors only when the CPU executors are full).
    let cluster = Cluster::start_each(2, &[], &[&["--device-class", "gpu"], &["--vcores", "32"]])
        .expect("cluster");
    let remote = dlp_plugin::session::remote_context(&cluster.url())
        .await
        .unwrap();
    let on_cluster = featurized_counts(&remote).await;
    let (gpu, cpu) = (cluster.executors[0].output(), cluster.executors[1].output());
    assert!(gpu.contains("gpu-executor-0"), "the id carries the class");
    let (gpu_stages, cpu_stages) = (stages_run(&gpu), stages_run(&cpu));
    println!(
        "GPU-class executor ran stages {gpu_stages:?} ({} inference batches); CPU executor ran stages {cpu_stages:?} ({} inference batches)",
        inference_batches(&gpu),
        inference_batches(&cpu)
    );
    assert!(
        inference_batches(&gpu) > 0,
        "torch ran on the GPU-class executor"
    );
    assert_eq!(
        inference_batches(&cpu),
        0,
        "no torch on the CPU executor:\n{cpu}"
    );
    assert!(
        !cpu_stages.is_empty(),
        "the CPU stage ran on the CPU executor"
    );
    assert!(
        gpu_stages.is_disjoint(&cpu_stages),
        "each stage on its class: GPU {gpu_stages:?}, CPU {cpu_stages:?}"
    );
    drop(cluster);

    // No GPU executor registered: the torch stage runs on the CPU executor.
    let cluster = Cluster::start(1, 2).expect("cluster");
    let remote = dlp_plugin::session::remote_context(&cluster.url())
        .await
        .unwrap();
    let cpu_only = featurized_counts(&remote).await;
    assert!(inference_batches(&cluster.executors[0].output()) > 0);
    assert_eq!(on_cluster, cpu_only);
    assert!(
        on_cluster.values().sum::<i64>() > 100,
        "{on_cluster:?} sampled flowers"
    );
}

#[test]
fn paths_outside_the_data_roots_are_rejected() {
    // root/flowers: three real photos; root/escape -> secret (outside); secret: a photo.
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    let secret = dir.path().join("secret");
    let daisy = shared_data().join("flowers/daisy");
    let mut photos: Vec<_> = std::fs::read_dir(&daisy)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    photos.sort();
    std::fs::create_dir_all(root.join("flowers/daisy")).unwrap();
    std::fs::create_dir_all(&secret).unwrap();
    for p in &photos[..3] {
        std::fs::copy(p, root.join("flowers/daisy").join(p.file_name().unwrap())).unwrap();
    }
    std::fs::copy(&photos[3], secret.join("private.jpg")).unwrap();
    std::os::unix::fs::symlink(&secret, root.join("escape")).unwrap();
    std::fs::create_dir_all(root.join("flowers/planted")).unwrap();
    std::os::unix::fs::symlink(
        secret.join("private.jpg"),
        root.join("flowers/planted/link.jpg"),
    )
    .unwrap();
    let root_arg = root.to_string_lossy().into_owned();
    let flags = ["--data-root", root_arg.as_str()];
    let cluster = Cluster::start_each(2, &flags, &[&flags]).expect("cluster");

    // Inside the root, relative to it: fine.
    let ok = adbc(
        cluster.port,
        "SELECT image['origin'] AS origin FROM read_images('flowers/daisy')",
        None,
    );
    let ok = ok.unwrap_or_else(|e| panic!("{e}\n{}", cluster.scheduler.output()));
    let json: serde_json::Value = serde_json::from_str(&ok).unwrap();
    assert_eq!(json["rows"].as_array().unwrap().len(), 3, "{json}");

    let secret_path = secret.to_string_lossy();
    let cases = [
        (
            "read_images('../secret')".to_string(),
            "outside the data roots",
        ),
        ("read_images('/etc')".to_string(), "outside the data roots"),
        (
            format!("read_images('{secret_path}')"),
            "outside the data roots",
        ),
        (
            "read_images('file:///etc/ssl')".to_string(),
            "outside the data roots",
        ),
        ("read_images('escape')".to_string(), "through a symlink"),
        (
            "read_images('flowers', 'recursiveFileLookup=true')".to_string(),
            "through a symlink",
        ),
        // A URL is refused unless under a bucket root: no request leaves the cluster for
        // a client (SSRF), and none reaches the instance metadata service.
        (
            "read_images('http://127.0.0.1/x')".to_string(),
            "outside the data roots",
        ),
        (
            "read_images('http://169.254.169.254/latest/meta-data/')".to_string(),
            "outside the data roots",
        ),
        (
            "read_images('s3://another-bucket/x')".to_string(),
            "outside the data roots",
        ),
    ];
    for (from, expected) in cases {
        let query = format!("SELECT count(*) FROM {from}");
        let err = adbc(cluster.port, &query, None).expect_err(&query);
        assert!(
            err.contains(expected),
            "{query}: expected '{expected}' in:\n{err}"
        );
        assert!(
            !err.contains("private.jpg"),
            "{query}: leaks a file name:\n{err}"
        );
    }
    for location in [
        "/etc/passwd",
        "file:///etc/passwd",
        "escape/private.jpg",
        "../secret",
        "s3://another-bucket/x.csv",
    ] {
        let ddl = format!("CREATE EXTERNAL TABLE t STORED AS CSV LOCATION '{location}'");
        let err = adbc(cluster.port, &ddl, None).expect_err(&ddl);
        assert!(
            err.contains("outside the data roots")
                || err.contains("through a symlink")
                || err.contains("'..' is not allowed"),
            "{ddl}:\n{err}"
        );
    }
}

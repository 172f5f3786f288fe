//! Load on the service: 8 concurrent ADBC Flight SQL clients (one process and one
//! authenticated connection each, `tests/python/flight_sql_load.py`) run 20 queries each,
//! a mix of counts, featurization and top-K prediction through a model registered as a SQL
//! function, against `dlp-scheduler` and two `dlp-executor` processes on loopback. Every
//! answer must equal the one a single client got alone before; the throughput and p50 /
//! p95 latency report is printed (figures are reported, not asserted).

use std::collections::BTreeMap;
use std::process::Command;

use dlp_tests::{Cluster, free_port, http_get, prometheus_value, python};
use serde_json::Value;

const CLASSES: [&str; 5] = ["daisy", "dandelion", "roses", "sunflowers", "tulips"];
const PER_CLASS: usize = 4;

/// Runs the load script; its JSON report, or its error output.
fn load(port: u16, clients: usize, mix: &str, queries: &[(&str, String)]) -> Value {
    let mut cmd = Command::new(python().unwrap());
    cmd.arg(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/python/flight_sql_load.py"
    ))
    .arg(format!("grpc://127.0.0.1:{port}"))
    .args(["--clients", &clients.to_string(), "--mix", mix])
    .env("DLP_FLIGHT_USER", "loader")
    .env("DLP_FLIGHT_PASSWORD", "s3cret load");
    for (name, sql) in queries {
        cmd.arg("--query").arg(format!("{name}={sql}"));
    }
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "load script failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Rows keyed by their first column (`origin` or `label_name`), so that answers can be
/// compared whatever order the partitions arrive in.
fn keyed(rows: &Value) -> BTreeMap<String, Value> {
    rows.as_array()
        .unwrap()
        .iter()
        .map(|r| {
            let key = r
                .get("origin")
                .or_else(|| r.get("label_name"))
                .unwrap_or_else(|| panic!("row without a key: {r}"));
            (key.as_str().unwrap().to_string(), r.clone())
        })
        .collect()
}

/// Largest difference between two JSON values of the same shape (numbers compared with
/// their difference, anything else must be equal).
fn diff(a: &Value, b: &Value) -> f64 {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => (x.as_f64().unwrap() - y.as_f64().unwrap()).abs(),
        (Value::Array(x), Value::Array(y)) if x.len() == y.len() => {
            x.iter().zip(y).map(|(p, q)| diff(p, q)).fold(0.0, f64::max)
        }
        (Value::Object(x), Value::Object(y)) if x.len() == y.len() => x
            .iter()
            .map(|(k, v)| y.get(k).map_or(f64::INFINITY, |w| diff(v, w)))
            .fold(0.0, f64::max),
        _ if a == b => 0.0,
        _ => f64::INFINITY,
    }
}

#[test]
fn eight_clients_twenty_queries_each() {
    // A data root with 4 photos of each class; a user; a zoo model registered as `top3`.
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("data");
    dlp_tests::copy_flowers(&root.join("small"), &CLASSES, PER_CLASS);
    let users = dir.path().join("users");
    dlp_tests::users_file(&users, &[("loader", "s3cret load")]).unwrap();
    let config = dir.path().join("dlp.yaml");
    std::fs::write(
        &config,
        "functions:\n  top3: {kind: model, model: efficientnet_lite0, topK: 3}\n",
    )
    .unwrap();
    let (root, users, config) = (
        root.to_string_lossy().into_owned(),
        users.to_string_lossy().into_owned(),
        config.to_string_lossy().into_owned(),
    );
    let metrics_ports = [free_port(), free_port()];
    let ports: Vec<String> = metrics_ports.iter().map(u16::to_string).collect();
    let executor =
        |i: usize| -> Vec<&str> { vec!["--data-root", &root, "--metrics-port", &ports[i]] };
    let (e0, e1) = (executor(0), executor(1));
    let cluster = Cluster::start_each(
        2,
        &[
            "--data-root",
            &root,
            "--auth-file",
            &users,
            "--admin",
            "loader",
            "--config",
            &config,
        ],
        &[&e0, &e1],
    )
    .expect("cluster");

    let queries = [
        (
            "count",
            "SELECT label_name, count(*) AS n FROM read_images('small', 'withLabel=true') \
             GROUP BY label_name"
                .to_string(),
        ),
        (
            "featurize",
            "SELECT image['origin'] AS origin, featurize('efficientnet_lite0', image) AS f \
             FROM read_images('small/tulips')"
                .to_string(),
        ),
        (
            "predict",
            "SELECT image['origin'] AS origin, top3(image) AS top FROM read_images('small/roses')"
                .to_string(),
        ),
    ];

    // One client alone: the reference answers.
    let alone = load(cluster.port, 1, "count=1,featurize=1,predict=1", &queries);
    let mut reference = BTreeMap::new();
    for q in alone["queries"].as_array().unwrap() {
        assert!(
            q["error"].is_null(),
            "{}: {}\n{}",
            q["kind"],
            q["error"],
            cluster.scheduler.output()
        );
        reference.insert(q["kind"].as_str().unwrap().to_string(), keyed(&q["rows"]));
    }
    // The counts are those of the files; the others have a row per photo.
    let counts = &reference["count"];
    assert_eq!(counts.len(), CLASSES.len(), "{counts:?}");
    for (class, row) in counts {
        assert_eq!(row["n"].as_u64(), Some(PER_CLASS as u64), "{class}");
    }
    for kind in ["featurize", "predict"] {
        assert_eq!(reference[kind].len(), PER_CLASS, "{kind}");
    }
    for row in reference["featurize"].values() {
        assert_eq!(row["f"].as_array().map(Vec::len), Some(1280), "{row}");
    }
    for row in reference["predict"].values() {
        assert_eq!(row["top"].as_array().map(Vec::len), Some(3), "{row}");
    }

    // 8 clients x 20 queries.
    let report = load(cluster.port, 8, "count=8,featurize=6,predict=6", &queries);
    let records = report["queries"].as_array().unwrap();
    assert_eq!(records.len(), 160, "every query answered");
    let mut worst: BTreeMap<String, f64> = BTreeMap::new();
    for q in records {
        let kind = q["kind"].as_str().unwrap();
        assert!(
            q["error"].is_null(),
            "client {} query {} ({kind}) failed: {}\n{}",
            q["client"],
            q["seq"],
            q["error"],
            cluster.scheduler.output()
        );
        let got = keyed(&q["rows"]);
        let expected = &reference[kind];
        assert_eq!(
            got.keys().collect::<Vec<_>>(),
            expected.keys().collect::<Vec<_>>(),
            "client {} query {} ({kind})",
            q["client"],
            q["seq"]
        );
        let d = got
            .iter()
            .map(|(k, v)| diff(v, &expected[k]))
            .fold(0.0, f64::max);
        let w = worst.entry(kind.to_string()).or_default();
        *w = w.max(d);
    }
    let summary = &report["summary"];
    println!(
        "load: {} clients, {} queries in {:.2} s, {:.2} queries/s",
        report["clients"],
        records.len(),
        report["wall_s"].as_f64().unwrap(),
        report["throughput_qps"].as_f64().unwrap()
    );
    for kind in ["count", "featurize", "predict", "all"] {
        let s = &summary[kind];
        println!(
            "  {kind:<9} n={:<3} p50 {:.3} s  p95 {:.3} s  max {:.3} s  (max |diff| vs alone: {:e})",
            s["n"],
            s["p50_s"].as_f64().unwrap(),
            s["p95_s"].as_f64().unwrap(),
            s["max_s"].as_f64().unwrap(),
            worst.get(kind).copied().unwrap_or(0.0)
        );
    }
    for (kind, d) in &worst {
        assert!(*d <= 1e-5, "{kind}: answers under load differ by {d}");
    }

    // The executors' Prometheus counters add up to the work done: 49 featurize and 49
    // predict queries (the lone client's and 48 under load) of 4 photos each.
    let mut images = 0.0;
    let mut decoded = 0.0;
    for port in metrics_ports {
        let text = http_get(port, "/metrics").expect("executor /metrics");
        assert!(text.contains("dlp_info{executor=\""), "{text}");
        images += prometheus_value(
            &text,
            "dlp_inference_images_total{model=\"efficientnet_lite0\"}",
        )
        .unwrap_or(0.0);
        decoded += prometheus_value(&text, "dlp_images_decoded_total").unwrap();
        assert_eq!(
            prometheus_value(&text, "dlp_invalid_images_total"),
            Some(0.0)
        );
    }
    println!("executors' metrics: {images} images through the model, {decoded} decoded");
    assert_eq!(images, (2 * 49 * PER_CLASS) as f64);
    assert!(decoded >= images, "{decoded} decoded");
    // The scheduler's (Ballista's) job metrics.
    let (status, scheduler) = dlp_tests::http_request(
        cluster.port,
        "GET",
        "/api/metrics",
        Some(("loader", "s3cret load")),
    )
    .expect("scheduler /api/metrics");
    assert_eq!(
        status, 200,
        "the admin reads the scheduler's metrics: {scheduler}"
    );
    let completed = prometheus_value(&scheduler, "job_completed_total").unwrap_or(0.0);
    assert!(
        completed >= 163.0,
        "{completed} jobs completed:\n{scheduler}"
    );
}

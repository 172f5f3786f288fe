//! A real cluster on loopback: `dlp-scheduler` and two `dlp-executor` processes. The
//! flowers are read with labels by the Rust client and by a Python ADBC Flight SQL client.

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;

use datafusion::arrow::array::{Array, AsArray, RecordBatch};
use datafusion::arrow::datatypes::{Int32Type, Int64Type};
use dlp_tests::{Cluster, hex, python, shared_data};
use serde_json::Value;

fn flowers() -> String {
    shared_data().join("flowers").to_string_lossy().into_owned()
}

fn decoded_by(log: &str) -> u64 {
    // Lines like: ... image partition done partition=3 images_decoded=89 invalid_images=0 ...
    log.lines()
        .filter(|l| l.contains("image partition done"))
        .filter_map(|l| {
            l.split_whitespace()
                .find_map(|w| w.strip_prefix("images_decoded="))
                .and_then(|v| v.parse::<u64>().ok())
        })
        .sum()
}

/// The same query for both clients: one row per file, pixels summarized by their hash.
fn rows_query() -> String {
    format!(
        "SELECT image['origin'] AS origin, label, label_name, image['height'] AS height, \
         image['width'] AS width, image['nChannels'] AS channels, \
         sha256(image['data']) AS digest \
         FROM read_images('{}', 'withLabel=true')",
        flowers()
    )
}

type RowKey = (String, Option<i32>, Option<String>, i32, i32, i32, String);

fn rust_rows(batches: &[RecordBatch]) -> BTreeSet<RowKey> {
    let mut out = BTreeSet::new();
    for b in batches {
        let s = |i: usize| b.column(i).as_string::<i32>().clone();
        let n = |i: usize| b.column(i).as_primitive::<Int32Type>().clone();
        let (origin, label, name, h, w, c) = (s(0), n(1), s(2), n(3), n(4), n(5));
        let digest = b.column(6).as_binary::<i32>();
        for r in 0..b.num_rows() {
            out.insert((
                origin.value(r).to_string(),
                label.is_valid(r).then(|| label.value(r)),
                name.is_valid(r).then(|| name.value(r).to_string()),
                h.value(r),
                w.value(r),
                c.value(r),
                hex(digest.value(r)),
            ));
        }
    }
    out
}

fn python_rows(json: &Value) -> BTreeSet<RowKey> {
    json["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["origin"].as_str().unwrap().to_string(),
                r["label"].as_i64().map(|v| v as i32),
                r["label_name"].as_str().map(str::to_string),
                r["height"].as_i64().unwrap() as i32,
                r["width"].as_i64().unwrap() as i32,
                r["channels"].as_i64().unwrap() as i32,
                r["digest"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flowers_on_two_executors_and_over_flight_sql() {
    let cluster = Cluster::start(2, 2).expect("cluster");
    let ctx = dlp_plugin::session::remote_context(&cluster.url())
        .await
        .unwrap();

    // 1. Per-class counts, decoded on the executors (dropInvalid forces every decode).
    let counts = ctx
        .sql(&format!(
            "SELECT label_name, count(*) AS n FROM read_images('{}', 'withLabel=true', \
             'dropInvalid=true') GROUP BY label_name",
            flowers()
        ))
        .await
        .unwrap()
        .collect()
        .await
        .unwrap();
    let mut per_class = BTreeMap::new();
    for b in &counts {
        let names = b.column(0).as_string::<i32>();
        let n = b.column(1).as_primitive::<Int64Type>();
        for r in 0..b.num_rows() {
            per_class.insert(names.value(r).to_string(), n.value(r));
        }
    }
    let expected: BTreeMap<String, i64> = [
        ("daisy", 289),
        ("dandelion", 487),
        ("roses", 263),
        ("sunflowers", 290),
        ("tulips", 99),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    assert_eq!(per_class, expected);
    let decoded: Vec<u64> = cluster
        .executors
        .iter()
        .map(|e| decoded_by(&e.output()))
        .collect();
    assert!(
        decoded.iter().all(|&d| d > 0),
        "both executors must decode images, got {decoded:?}"
    );
    assert_eq!(
        decoded.iter().sum::<u64>(),
        1428,
        "every flower decoded once: {decoded:?}"
    );

    // 2. The same SELECT through the Ballista client and through Flight SQL (ADBC).
    let batches = ctx
        .sql(&rows_query())
        .await
        .unwrap()
        .collect()
        .await
        .unwrap();
    let ours = rust_rows(&batches);
    assert_eq!(
        ours.len(),
        1429,
        "1,428 flowers and LICENSE.txt as an invalid row"
    );
    let invalid: Vec<_> = ours.iter().filter(|r| r.5 < 0).collect();
    assert_eq!(invalid.len(), 1);
    assert!(
        invalid[0].0.ends_with("/flowers/LICENSE.txt"),
        "{invalid:?}"
    );

    let out = Command::new(python().unwrap())
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/python/flight_sql_query.py"
        ))
        .arg(format!("grpc://127.0.0.1:{}", cluster.port))
        .arg(rows_query())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "ADBC client failed: {}\nscheduler log:\n{}",
        String::from_utf8_lossy(&out.stderr),
        cluster.scheduler.output()
    );
    let json: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        json["columns"],
        serde_json::json!([
            "origin",
            "label",
            "label_name",
            "height",
            "width",
            "channels",
            "digest"
        ])
    );
    assert_eq!(python_rows(&json), ours);
}

fn model_loads(log: &str) -> usize {
    log.lines().filter(|l| l.contains("model loaded")).count()
}

fn inferred_images(log: &str) -> usize {
    log.lines()
        .filter(|l| l.contains("inference batch done"))
        .count()
}

/// Featurizes a deterministic ~30% sample of the flowers (to keep CI short) on the cluster
/// and in the embedded mode; both executors run the model and the vectors agree.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn featurization_on_two_executors_equals_standalone() {
    use datafusion::prelude::col;
    use dlp_plugin::ImageContextExt;
    use dlp_plugin::image::ImageReadOptions;
    use dlp_plugin::torch::DeepImageFeaturizer;

    async fn featurize(ctx: &datafusion::prelude::SessionContext) -> BTreeMap<String, Vec<f32>> {
        let opts = ImageReadOptions::from_pairs([
            ("dropInvalid", "true"),
            ("recursiveFileLookup", "true"),
            ("sampleRatio", "0.3"),
            ("seed", "7"),
        ])
        .unwrap();
        let df = ctx.read_images(&flowers(), opts).await.unwrap();
        let df = DeepImageFeaturizer::new("efficientnet_lite0")
            .transform(df)
            .unwrap();
        let df = df
            .select(vec![
                datafusion::functions::core::expr_fn::get_field(col("image"), "origin")
                    .alias("origin"),
                col("features"),
            ])
            .unwrap();
        let mut out = BTreeMap::new();
        for b in df.collect().await.unwrap() {
            let origin = b.column(0).as_string::<i32>().clone();
            for (i, v) in dlp_tests::vectors(b.column(1).as_ref())
                .into_iter()
                .enumerate()
            {
                out.insert(origin.value(i).to_string(), v.expect("features"));
            }
        }
        out
    }

    let cluster = Cluster::start(2, 2).expect("cluster");
    let remote = dlp_plugin::session::remote_context(&cluster.url())
        .await
        .unwrap();
    let on_cluster = featurize(&remote).await;
    let loads: Vec<usize> = cluster
        .executors
        .iter()
        .map(|e| model_loads(&e.output()))
        .collect();
    let batches: Vec<usize> = cluster
        .executors
        .iter()
        .map(|e| inferred_images(&e.output()))
        .collect();
    assert!(
        loads.iter().all(|&n| n == 1) && batches.iter().all(|&n| n > 0),
        "both executors load the model once and run inference: loads {loads:?}, batches {batches:?}"
    );
    let standalone = dlp_plugin::embedded::standalone_context(Some(2))
        .await
        .unwrap();
    let local = featurize(&standalone).await;
    assert!(
        on_cluster.len() > 350,
        "{} sampled flowers",
        on_cluster.len()
    );
    assert_eq!(
        on_cluster.keys().collect::<Vec<_>>(),
        local.keys().collect::<Vec<_>>()
    );
    let worst = on_cluster
        .iter()
        .map(|(k, v)| dlp_tests::max_abs_diff(v, &local[k]))
        .fold(0f32, f32::max);
    println!(
        "max |cluster - standalone| = {worst:e} over {} images",
        on_cluster.len()
    );
    assert!(worst <= 1e-4, "{worst}");
}

/// `SET dlp.torch.batch_size` on a client session travels with the job: on two executors the
/// featurizer (a `TorchInferenceExec` whose stage sets no batchSize) and the `featurize` SQL
/// function run forward passes of that many images, as the executors' metrics show; `auto`
/// gives the CPU default on these CPU executors; a bad value is refused by name.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_batch_size_reaches_the_executors() {
    use dlp_plugin::ImageContextExt;
    use dlp_plugin::image::ImageReadOptions;
    use dlp_plugin::torch::DeepImageFeaturizer;

    let dir = tempfile::tempdir().unwrap();
    dlp_tests::copy_flowers(dir.path(), &["daisy", "tulips"], 12);
    let images = 24usize;
    let path = dir.path().to_string_lossy().into_owned();
    let ports = [dlp_tests::free_port(), dlp_tests::free_port()];
    let (p0, p1) = (ports[0].to_string(), ports[1].to_string());
    let cluster = Cluster::start_each(
        2,
        &[],
        &[&["--metrics-port", &p0], &["--metrics-port", &p1]],
    )
    .expect("cluster");
    let ctx = dlp_plugin::session::remote_context(&cluster.url())
        .await
        .unwrap();
    let metric = |port: u16, name: &str| {
        dlp_tests::http_get(port, "/metrics").and_then(|t| {
            dlp_tests::prometheus_value(&t, &format!("{name}{{model=\"efficientnet_lite0\"}}"))
        })
    };
    let passes = || -> f64 {
        ports
            .iter()
            .filter_map(|&p| metric(p, "dlp_inference_batches_total"))
            .sum()
    };

    let err = match ctx.sql("SET dlp.torch.batch_size = 0").await {
        Ok(_) => panic!("batch size 0 is refused"),
        Err(e) => e.to_string(),
    };
    assert!(err.contains("dlp.torch.batch_size"), "{err}");

    let auto = dlp_plugin::config::CPU_BATCH_SIZE;
    for (setting, size, through) in [
        ("3", 3usize, "featurizer"),
        ("5", 5, "featurize()"),
        ("auto", auto, "featurizer"),
    ] {
        ctx.sql(&format!("SET dlp.torch.batch_size = {setting}"))
            .await
            .unwrap()
            .collect()
            .await
            .unwrap();
        let before = passes();
        let batches = if through == "featurizer" {
            let options = ImageReadOptions::from_pairs([("recursiveFileLookup", "true")]).unwrap();
            let df = ctx.read_images(&path, options).await.unwrap();
            DeepImageFeaturizer::new("efficientnet_lite0")
                .transform(df)
                .unwrap()
                .collect()
                .await
                .unwrap()
        } else {
            ctx.sql(&format!(
                "SELECT featurize('efficientnet_lite0', image) AS f \
                 FROM read_images('{path}', 'recursiveFileLookup=true')"
            ))
            .await
            .unwrap()
            .collect()
            .await
            .unwrap()
        };
        let rows: usize = batches.iter().map(|b| b.num_rows()).sum();
        assert_eq!(rows, images, "{through}");
        let seen: Vec<Option<f64>> = ports
            .iter()
            .map(|&p| metric(p, "dlp_inference_batch_size"))
            .collect();
        let ran = passes() - before;
        println!(
            "{through}: dlp.torch.batch_size = {setting}: batch size on the executors {seen:?}, \
             {ran} forward passes for {images} images"
        );
        assert!(
            seen.contains(&Some(size as f64)),
            "{through}: no executor ran forward passes of {size}: {seen:?}"
        );
        assert!(
            ran >= images.div_ceil(size) as f64,
            "{through}: {ran} forward passes of at most {size} images cannot hold {images}"
        );
    }
}

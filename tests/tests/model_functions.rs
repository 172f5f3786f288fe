//! Models as SQL functions on a cluster, from a real Flight SQL client (ADBC): a saved
//! PipelineModel registered by the scheduler's config at start-up and another by
//! `CREATE FUNCTION` at run time predict the flowers exactly as the pipeline API does.

use std::collections::BTreeMap;
use std::process::Command;

use datafusion::arrow::array::{Array, AsArray, FixedSizeListArray};
use datafusion::arrow::datatypes::Float64Type;
use datafusion::functions::core::expr_fn::get_field;
use datafusion::prelude::col;
use dlp_plugin::image::{ImageReadOptions, ImageTableProvider};
use dlp_plugin::pipeline::PipelineModel;
use dlp_plugin::pipeline::job::{JobSpec, run_job};
use dlp_tests::{Cluster, python};
use serde_json::Value;

/// Runs the ADBC client; the parsed JSON or the client's error output.
fn adbc(port: u16, query: &str) -> Result<Value, String> {
    let out = Command::new(python().unwrap())
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/python/flight_sql_query.py"
        ))
        .arg(format!("grpc://127.0.0.1:{port}"))
        .arg(query)
        .output()
        .unwrap();
    if out.status.success() {
        Ok(serde_json::from_slice(&out.stdout).unwrap())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

type Predictions = BTreeMap<String, (f64, Vec<f64>)>;

fn from_json(json: &Value) -> Predictions {
    json["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            let p: Vec<f64> = r["probability"]
                .as_array()
                .unwrap_or_else(|| panic!("{r}"))
                .iter()
                .map(|v| v.as_f64().unwrap())
                .collect();
            (
                r["origin"].as_str().unwrap().to_string(),
                (r["prediction"].as_f64().unwrap(), p),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registered_pipeline_functions_predict_as_the_pipeline_api() {
    // A small tulips-vs-daisy pipeline (20 photos each), fitted and saved under a data root.
    // The split hashes each photo's path, which lies under a random temp dir: with 40 photos
    // and 30% held out, an empty test split has odds of 6e-7 (it happened once with 24
    // photos and 25%, odds 1e-3).
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("data");
    dlp_tests::copy_flowers(&root.join("small"), &["daisy", "tulips"], 20);
    let model_dir = root.join("models/flowers");
    let yaml = format!(
        "data: {{path: {}, classes: [daisy, tulips]}}
split: {{weights: [0.7, 0.3], seed: 42}}
stages:
  - {{type: DeepImageFeaturizer, modelName: efficientnet_lite0, resize: stretch}}
  - {{type: LogisticRegression, maxIter: 20, regParam: 0.05}}
output: {{model: {}}}
",
        root.join("small").display(),
        model_dir.display()
    );
    let spec = JobSpec::from_yaml(&yaml, "test spec").unwrap();
    let local = dlp_plugin::embedded::standalone_context(Some(2))
        .await
        .unwrap();
    run_job(&local, &spec, false, None).await.unwrap();
    let model = PipelineModel::load(&model_dir).unwrap();

    // The pipeline API's predictions for the tulips.
    let tulips = root.join("small/tulips").to_string_lossy().into_owned();
    let df = local
        .read_table(std::sync::Arc::new(
            ImageTableProvider::try_new(&tulips, ImageReadOptions::default()).unwrap(),
        ))
        .unwrap()
        .with_column("origin", get_field(col("image"), "origin"))
        .unwrap();
    let out = model
        .transform(df)
        .unwrap()
        .select(vec![col("origin"), col("prediction"), col("probability")])
        .unwrap();
    let mut expected = Predictions::new();
    for b in out.collect().await.unwrap() {
        let o = b.column(0).as_string::<i32>();
        let p = b.column(1).as_primitive::<Float64Type>();
        let prob = b
            .column(2)
            .as_any()
            .downcast_ref::<FixedSizeListArray>()
            .unwrap();
        for i in 0..b.num_rows() {
            let v = prob
                .value(i)
                .as_primitive::<Float64Type>()
                .values()
                .to_vec();
            expected.insert(o.value(i).to_string(), (p.value(i), v));
        }
    }
    assert_eq!(expected.len(), 20);

    // The cluster: flowers_predict from the config; the data root holds data and model.
    let config = dir.path().join("dlp.yaml");
    std::fs::write(
        &config,
        format!(
            "functions:\n  flowers_predict: {{kind: pipeline, dir: {}}}\n",
            model_dir.display()
        ),
    )
    .unwrap();
    let root_arg = root.to_string_lossy().into_owned();
    let config_arg = config.to_string_lossy().into_owned();
    // executor-0 announces a GPU (the class is what placement reads); executor-1 is a CPU
    // executor with room for every CPU task: the stages calling the model functions must
    // go to executor-0, as featurize does.
    let metrics = [dlp_tests::free_port(), dlp_tests::free_port()];
    let (m0, m1) = (metrics[0].to_string(), metrics[1].to_string());
    let cluster = Cluster::start_each(
        2,
        &["--data-root", &root_arg, "--config", &config_arg],
        &[
            &[
                "--data-root",
                &root_arg,
                "--device-class",
                "gpu",
                "--metrics-port",
                &m0,
            ],
            &[
                "--data-root",
                &root_arg,
                "--vcores",
                "32",
                "--metrics-port",
                &m1,
            ],
        ],
    )
    .expect("cluster");
    let query = |f: &str| {
        format!(
            "SELECT origin, p['prediction'] AS prediction, p['label'] AS label, \
             p['probability'] AS probability FROM \
             (SELECT image['origin'] AS origin, {f}(image) AS p FROM read_images('small/tulips'))"
        )
    };
    let json = adbc(cluster.port, &query("flowers_predict"))
        .unwrap_or_else(|e| panic!("{e}\n{}", cluster.scheduler.output()));
    let from_config = from_json(&json);
    for r in json["rows"].as_array().unwrap() {
        let label = r["label"].as_str().unwrap();
        let class = ["daisy", "tulips"][r["prediction"].as_f64().unwrap() as usize];
        assert_eq!(label, class, "{r}");
    }

    // Registered at run time by SQL from a client; visible to a new client afterwards.
    let ddl = format!(
        "CREATE FUNCTION tulip_or_daisy() AS 'pipeline:{}'",
        model_dir.display()
    );
    adbc(cluster.port, &ddl).unwrap_or_else(|e| panic!("{ddl}: {e}"));
    let from_sql = from_json(
        &adbc(cluster.port, &query("tulip_or_daisy"))
            .unwrap_or_else(|e| panic!("{e}\n{}", cluster.scheduler.output())),
    );

    // A relative directory is taken from the first data root, as read_images paths are.
    let rel = model_dir
        .strip_prefix(&root)
        .expect("the model is under the data root");
    let ddl = format!(
        "CREATE FUNCTION tulip_or_daisy_rel() AS 'pipeline:{}'",
        rel.display()
    );
    adbc(cluster.port, &ddl).unwrap_or_else(|e| panic!("{ddl}: {e}"));
    let from_rel = from_json(
        &adbc(cluster.port, &query("tulip_or_daisy_rel"))
            .unwrap_or_else(|e| panic!("{e}\n{}", cluster.scheduler.output())),
    );
    assert_eq!(
        from_rel
            .iter()
            .map(|(o, (p, _))| (o, p))
            .collect::<Vec<_>>(),
        from_sql
            .iter()
            .map(|(o, (p, _))| (o, p))
            .collect::<Vec<_>>()
    );
    let err = adbc(
        cluster.port,
        &format!("CREATE FUNCTION up() AS 'pipeline:{}/../x'", rel.display()),
    )
    .unwrap_err();
    assert!(err.contains("'..' is not allowed"), "{err}");

    for (name, got) in [("config", &from_config), ("CREATE FUNCTION", &from_sql)] {
        assert_eq!(
            got.keys().collect::<Vec<_>>(),
            expected.keys().collect::<Vec<_>>(),
            "{name}"
        );
        let mut worst = 0f64;
        for (origin, (p, probs)) in got {
            let (ep, eprobs) = &expected[origin];
            assert_eq!(p, ep, "{name}: prediction of {origin}");
            for (a, b) in probs.iter().zip(eprobs) {
                worst = worst.max((a - b).abs());
            }
        }
        println!(
            "{name}: {} tulips, max |probability - pipeline API| = {worst:e}",
            got.len()
        );
        assert!(worst <= 1e-4, "{name}: {worst}");
    }

    // Both functions ran their model on the GPU-class executor only.
    let through_model = |port: u16| {
        let text = dlp_tests::http_get(port, "/metrics").expect("executor /metrics");
        dlp_tests::prometheus_value(
            &text,
            "dlp_inference_images_total{model=\"efficientnet_lite0\"}",
        )
        .unwrap_or(0.0)
    };
    let (gpu, cpu) = (through_model(metrics[0]), through_model(metrics[1]));
    println!("images through the model: {gpu} on the GPU-class executor, {cpu} on the CPU one");
    assert!(
        gpu > 0.0,
        "the model functions ran on the GPU-class executor"
    );
    assert_eq!(cpu, 0.0, "no model function ran on the CPU executor");

    // Bad definitions are refused with what was expected.
    let err = adbc(cluster.port, "CREATE FUNCTION nope() AS 'onnx:/x'").unwrap_err();
    assert!(err.contains("must be 'pipeline:"), "{err}");
    let err = adbc(cluster.port, "CREATE FUNCTION escape() AS 'pipeline:/etc'").unwrap_err();
    assert!(err.contains("outside the data roots"), "{err}");
}

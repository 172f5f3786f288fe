//! Pipelines end to end: sparkdl's two tutorials reproduced, the evaluator against
//! scikit-learn, saved pipelines in a new process and on a cluster, and cross-validation
//! on a two-executor cluster.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use datafusion::arrow::array::{Array, AsArray, FixedSizeListArray};
use datafusion::arrow::datatypes::{DataType, Float64Type};
use datafusion::dataframe::DataFrameWriteOptions;
use datafusion::functions::core::expr_fn::get_field;
use datafusion::prelude::{DataFrame, ParquetReadOptions, SessionContext, cast, col};
use dlp_plugin::image::{ImageReadOptions, ImageTableProvider};
use dlp_plugin::ml::{LogisticRegression, LogisticRegressionParams};
use dlp_plugin::pipeline::job::run_job;
use dlp_plugin::pipeline::{
    FittedStage, JobSpec, MulticlassClassificationEvaluator, ParamGridBuilder, Pipeline,
    PipelineModel, PipelineStage, Tuner, random_split,
};
use dlp_plugin::torch::DeepImageFeaturizer;
use dlp_tests::{Cluster, binary, lr_reference, python, shared_data};
use serde_json::{Value, json};

async fn context() -> SessionContext {
    dlp_plugin::embedded::standalone_context(Some(2))
        .await
        .expect("embedded cluster")
}

fn example(name: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../examples")
        .join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Runs a command that must succeed and parses its standard output as JSON.
fn json_stdout(cmd: &mut Command) -> Value {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{:?}: {}",
        cmd,
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The images of `folder` with their `origin` as a top-level column.
fn images_with_origin(ctx: &SessionContext, folder: &str, options: ImageReadOptions) -> DataFrame {
    ctx.read_table(std::sync::Arc::new(
        ImageTableProvider::try_new(folder, options).unwrap(),
    ))
    .unwrap()
    .with_column("origin", get_field(col("image"), "origin"))
    .unwrap()
}

/// `(origin, class, probability of the class)` per image of `folder`.
async fn predictions(
    ctx: &SessionContext,
    model: &PipelineModel,
    folder: &str,
) -> BTreeMap<String, (f64, f64)> {
    let options = ImageReadOptions::from_pairs([("recursiveFileLookup", "true")]).unwrap();
    let df = images_with_origin(ctx, folder, options);
    scored_rows(model.transform(df).unwrap(), "origin").await
}

/// `(class, probability of the class)` of scored rows by the text of their `key` column.
async fn scored_rows(df: DataFrame, key: &str) -> BTreeMap<String, (f64, f64)> {
    let out = df
        .select(vec![
            cast(col(key), DataType::Utf8),
            col("prediction"),
            col("probability"),
        ])
        .unwrap();
    let mut rows = BTreeMap::new();
    for b in out.collect().await.unwrap() {
        let o = b.column(0).as_string::<i32>();
        let p = b.column(1).as_primitive::<Float64Type>();
        let prob = b
            .column(2)
            .as_any()
            .downcast_ref::<FixedSizeListArray>()
            .unwrap();
        for i in 0..b.num_rows() {
            let c = p.value(i);
            let pc = prob
                .value(i)
                .as_primitive::<Float64Type>()
                .value(c as usize);
            rows.insert(o.value(i).to_string(), (c, pc));
        }
    }
    rows
}

fn assert_same_predictions(
    what: &str,
    a: &BTreeMap<String, (f64, f64)>,
    b: &BTreeMap<String, (f64, f64)>,
    tol: f64,
) {
    assert_eq!(a.len(), b.len(), "{what}: row counts");
    for (origin, (class, p)) in a {
        let (c2, p2) = b
            .get(origin)
            .unwrap_or_else(|| panic!("{what}: {origin} missing"));
        assert_eq!(class, c2, "{what}: class of {origin}");
        assert!(
            (p - p2).abs() <= tol,
            "{what}: probability of {origin}: {p} vs {p2}"
        );
    }
}

/// sparkdl tutorial 2: tulips vs daisy, EfficientNet-Lite0 features, logistic regression
/// (examples/flowers.yaml: maxIter 100, regParam 0.001, elasticNetParam 0.3, balanced class
/// weights, chosen by cross-validation on the training split) on an 80/20 split with a
/// fixed seed.
/// The saved pipeline then predicts the same in a new process (`dlp predict`) and on a
/// two-executor cluster.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tutorial_2_flowers_and_saved_pipeline() {
    let flowers = shared_data().join("flowers");
    let out = tempfile::tempdir().unwrap();
    let model_dir = out.path().join("model");
    let mut spec = JobSpec::from_yaml(&example("flowers.yaml"), "examples/flowers.yaml").unwrap();
    spec.data.path = flowers.to_string_lossy().into_owned();
    spec.output.model = Some(model_dir.clone());
    let ctx = context().await;
    let report = run_job(&ctx, &spec, false, None).await.unwrap();
    let m = &report.metrics;
    println!(
        "tutorial 2: train {:?} test {:?}, accuracy {:.4}, f1 {:.4}, rocAuc {:?}\n{}",
        report.train_counts,
        report.test_counts,
        m.accuracy,
        m.weighted_f1,
        m.roc_auc,
        m.report(&report.class_names)
    );
    assert_eq!(report.class_names, ["daisy", "tulips"]);
    assert_eq!(
        report.train_counts.iter().sum::<u64>() + report.test_counts.iter().sum::<u64>(),
        289 + 99
    );
    let test_share = report.test_counts.iter().sum::<u64>() as f64 / 388.0;
    assert!(
        (0.12..0.28).contains(&test_share),
        "test share {test_share}"
    );
    assert!(m.accuracy >= 0.97, "accuracy {} < 0.97", m.accuracy);

    // Saved and loaded: identical predictions in this process.
    let loaded = PipelineModel::load(&model_dir).unwrap();
    assert_eq!(loaded, report.model);
    let tulips = flowers.join("tulips").to_string_lossy().into_owned();
    let here = predictions(&ctx, &report.model, &tulips).await;
    assert_eq!(here.len(), 99);

    // A new process: `dlp predict --model DIR` as JSON.
    let mut predict = Command::new(binary("dlp").unwrap());
    predict
        .args(["predict", "--format", "json", "--model"])
        .arg(&model_dir)
        .arg(&tulips);
    let rows: Vec<Value> = serde_json::from_value(json_stdout(&mut predict)).unwrap();
    let other: BTreeMap<String, (f64, f64)> = rows
        .iter()
        .map(|r| {
            (
                r["origin"].as_str().unwrap().to_string(),
                (
                    r["prediction"].as_f64().unwrap(),
                    r["probability"].as_f64().unwrap(),
                ),
            )
        })
        .collect();
    assert!(
        rows.iter()
            .all(|r| r["class"] == "tulips" || r["class"] == "daisy")
    );
    // Same host, same libtorch: the features are bit-identical, so are the predictions.
    assert_same_predictions("dlp predict", &here, &other, 1e-12);

    // A cluster: scheduler + two executors load the saved pipeline's model by name.
    let cluster = Cluster::start(2, 2).unwrap();
    let remote = dlp_plugin::session::remote_context(&cluster.url())
        .await
        .unwrap();
    let on_cluster = predictions(&remote, &loaded, &tulips).await;
    // Other batch compositions change the CNN's float sums in the last bits (features
    // within 1e-4, see torch_models): same classes, probabilities within 1e-4.
    assert_same_predictions("cluster", &here, &on_cluster, 1e-4);

    // A saved pipeline with a weights file missing fails, naming the file.
    std::fs::remove_file(model_dir.join("stages/1-LogisticRegressionModel/model.json")).unwrap();
    let err = PipelineModel::load(&model_dir).unwrap_err().to_string();
    assert!(err.contains("model.json"), "{err}");
    // And one saved by another format version.
    std::fs::write(
        out.path().join("pipeline.yaml"),
        "format: ballista-dlp/pipeline-model\nformatVersion: 99\ndlpVersion: 9.9.9\nstages: []\n",
    )
    .unwrap();
    let err = PipelineModel::load(out.path()).unwrap_err().to_string();
    assert!(
        err.contains("format version 99") && err.contains("9.9.9"),
        "{err}"
    );
}

/// MLlib's `VectorAssembler` before the logistic regression: null inputs by `handleInvalid`,
/// the fitted pipeline saved and loaded, then applied on a scheduler + executor cluster
/// with the same predictions; and `vector_assemble` / `vector_assemble_keep` as SQL
/// functions on that cluster.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn vector_assembler_in_a_saved_pipeline_and_in_sql() {
    let ctx = context().await;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let data = data.to_str().unwrap();
    // Two classes told apart by a 2-vector column `a` and a number `b` together; row 7's `b`
    // is null. Written by a plain DataFusion context: `generate_series` is a table function
    // Ballista does not ship to its scheduler.
    SessionContext::new()
        .sql(
            "SELECT value AS id, CAST(value % 2 AS DOUBLE) AS label, \
         make_array(CAST(value % 2 AS DOUBLE) * 0.5 + sin(value), cos(value)) AS a, \
         CASE WHEN value = 7 THEN NULL \
              ELSE CAST(value % 2 AS DOUBLE) - 0.5 + sin(value * 7.0) * 0.4 END AS b \
         FROM generate_series(1, 300)",
        )
        .await
        .unwrap()
        .write_parquet(data, DataFrameWriteOptions::new(), None)
        .await
        .unwrap();
    let read = |ctx: SessionContext| async move {
        ctx.read_parquet(data, ParquetReadOptions::default())
            .await
            .unwrap()
    };
    let pipeline = |handle_invalid: &str| {
        Pipeline::new(vec![
            serde_json::from_value(json!({
                "type": "VectorAssembler", "inputCols": ["a", "b"], "handleInvalid": handle_invalid
            }))
            .unwrap(),
            serde_json::from_value(json!({"type": "LogisticRegression", "maxIter": 30})).unwrap(),
        ])
    };

    // Spark's default, `error`: the null fails the fit, naming the column.
    let err = pipeline("error")
        .fit(read(ctx.clone()).await)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("column 'b' is null") && err.contains("handleInvalid"),
        "{err}"
    );
    // A transformer's missing input column is named with its stage, as an estimator's is.
    let err = Pipeline::new(vec![
        serde_json::from_value(json!({"type": "VectorAssembler", "inputCols": ["a", "nope"]}))
            .unwrap(),
        serde_json::from_value(json!({"type": "LogisticRegression"})).unwrap(),
    ])
    .fit(read(ctx.clone()).await)
    .await
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("stage 0 (VectorAssembler)") && err.contains("nope"),
        "{err}"
    );
    // `skip`: the row is dropped, and counted out of the training rows.
    let model = pipeline("skip").fit(read(ctx.clone()).await).await.unwrap();
    assert_eq!(model.classifier().unwrap().summary.rows, 299);
    let scored = model.transform(read(ctx.clone()).await).unwrap();
    let features = scored
        .clone()
        .filter(col("id").eq(datafusion::prelude::lit(6i64)))
        .unwrap()
        .select(vec![col("a"), col("b"), col("features")])
        .unwrap()
        .collect()
        .await
        .unwrap();
    let row = &features[0];
    let a = row.column(0).as_list::<i32>().value(0);
    let a = a.as_primitive::<Float64Type>();
    let b = row.column(1).as_primitive::<Float64Type>().value(0);
    let f = row.column(2).as_list::<i32>().value(0);
    assert_eq!(
        f.as_primitive::<Float64Type>().values().to_vec(),
        vec![a.value(0), a.value(1), b],
        "features of row 6 are a then b"
    );
    let accuracy = MulticlassClassificationEvaluator::new("accuracy")
        .evaluate(scored.clone())
        .await
        .unwrap();
    assert!(accuracy >= 0.95, "accuracy {accuracy}");
    let here = scored_rows(scored, "id").await;
    assert_eq!(here.len(), 299);

    // Saved and loaded: the assembler is a stage of pipeline.yaml.
    let model_dir = dir.path().join("model");
    model.save(&model_dir).unwrap();
    let yaml = std::fs::read_to_string(model_dir.join("pipeline.yaml")).unwrap();
    assert!(yaml.contains("type: VectorAssembler"), "{yaml}");
    let loaded = PipelineModel::load(&model_dir).unwrap();
    assert_eq!(loaded, model);

    // On a scheduler and an executor in their own processes: the same predictions.
    let cluster = Cluster::start(1, 2).unwrap();
    let remote = dlp_plugin::session::remote_context(&cluster.url())
        .await
        .unwrap();
    let there = scored_rows(loaded.transform(read(remote.clone()).await).unwrap(), "id").await;
    assert_same_predictions("cluster", &here, &there, 1e-12);

    // As SQL functions on the cluster.
    remote
        .register_parquet("t", data, ParquetReadOptions::default())
        .await
        .unwrap();
    let rows = remote
        .sql("SELECT id, vector_assemble_keep(a, b) AS f FROM t WHERE id IN (6, 7) ORDER BY id")
        .await
        .unwrap()
        .collect()
        .await
        .unwrap();
    let f = rows[0].column(1).as_list::<i32>();
    assert_eq!(rows[0].num_rows(), 2);
    let six = f.value(0);
    assert_eq!(
        six.as_primitive::<Float64Type>().values().to_vec(),
        vec![a.value(0), a.value(1), b]
    );
    let seven = f.value(1);
    let seven = seven.as_primitive::<Float64Type>();
    assert_eq!(seven.len(), 3);
    assert!(
        seven.value(2).is_nan() && !seven.value(0).is_nan(),
        "{seven:?}"
    );
    let err = remote
        .sql("SELECT vector_assemble(a, b) FROM t")
        .await
        .unwrap()
        .collect()
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("column 'b' is null"), "{err}");
}

/// Features of a labelled folder written once to Parquet (origin, label, features): the
/// transformer stages of a pipeline (every stage before its estimator) applied to the images.
async fn featurized(
    ctx: &SessionContext,
    transformers: &[PipelineStage],
    folder: &Path,
    dir: &Path,
) -> DataFrame {
    assert!(
        transformers.iter().all(|s| !s.is_estimator()),
        "featurized() takes transformers only"
    );
    let options =
        ImageReadOptions::from_pairs([("withLabel", "true"), ("dropInvalid", "true")]).unwrap();
    let df = images_with_origin(ctx, folder.to_str().unwrap(), options);
    let prefix = Pipeline::new(transformers.to_vec())
        .fit(df.clone())
        .await
        .unwrap();
    let df = prefix
        .transform(df)
        .unwrap()
        .select(vec![col("origin"), col("label"), col("features")])
        .unwrap();
    let path = dir.to_str().unwrap();
    df.write_parquet(path, DataFrameWriteOptions::new(), None)
        .await
        .unwrap();
    ctx.read_parquet(path, ParquetReadOptions::default())
        .await
        .unwrap()
}

/// sparkdl tutorial 1: Bengali digits (numta-50, 10 classes), 8:2 split, logistic
/// regression with maxIter 5 and 100 (regParam 0.03, elasticNetParam 0.5) on features
/// computed once; weighted F1 reported for both.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tutorial_1_numta_digits() {
    let ctx = context().await;
    let dir = tempfile::tempdir().unwrap();
    // The stages, split and LR parameters of examples/numta.yaml (what `dlp fit` runs):
    // featurizers and a VectorAssembler, then the logistic regression.
    let spec = JobSpec::from_yaml(&example("numta.yaml"), "examples/numta.yaml").unwrap();
    let (lr, transformers) = spec
        .stages
        .split_last()
        .expect("examples/numta.yaml has stages");
    let PipelineStage::LogisticRegression(lr) = lr else {
        panic!("examples/numta.yaml: the last stage is not a LogisticRegression");
    };
    assert!(
        transformers
            .iter()
            .any(|s| matches!(s, PipelineStage::DeepImageFeaturizer(_))),
        "examples/numta.yaml: no DeepImageFeaturizer before the logistic regression"
    );
    assert_eq!(
        (lr.max_iter, lr.reg_param, lr.elastic_net_param),
        (100, 0.03, 0.5)
    );
    let features = featurized(
        &ctx,
        transformers,
        &shared_data().join("numta-50"),
        dir.path(),
    )
    .await;
    // Keyed as `dlp fit` keys it: on the folder and file name of `origin`, so the split is
    // the same wherever ../shared/data lies.
    let split = random_split(&features, &spec.split.weights, spec.split.seed, None).unwrap();
    let evaluator = MulticlassClassificationEvaluator::new("f1");
    let mut f1 = vec![];
    for max_iter in [5, 100] {
        let params = LogisticRegressionParams {
            max_iter,
            ..lr.clone()
        };
        let model = LogisticRegression::new(params)
            .fit(split[0].clone())
            .await
            .unwrap();
        let m = evaluator
            .metrics(model.transform(split[1].clone()).unwrap())
            .await
            .unwrap();
        println!(
            "tutorial 1, maxIter {max_iter}: weighted F1 {:.4}, accuracy {:.4} on {} test images \
             ({} iterations, {} training rows, objective {:.6})",
            m.weighted_f1,
            m.accuracy,
            m.total,
            model.summary.total_iterations,
            model.summary.rows,
            model.summary.objective()
        );
        assert_eq!(m.labels.len(), 10);
        f1.push(m.weighted_f1);
    }
    // The issue asks for 0.85 at maxIter 100 (the seed reported 0.81 with InceptionV3).
    // Logits over pooled features was chosen by cross-validation on the training split
    // (examples/numta-featurizers.yaml), the three Lite models' logits assembled for
    // robustness to the split: over 20 random 80/20 splits (converged scikit-learn fits)
    // they give mean 0.913, min 0.878; Lite2's alone mean 0.873, min 0.814
    // (examples/numta.yaml).
    assert!(f1[1] >= 0.85, "weighted F1 with maxIter 100: {}", f1[1]);
    assert!(f1[1] > f1[0], "more iterations should help: {f1:?}");
}

/// The evaluator's metrics equal scikit-learn's on the same predictions (within 1e-9).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn evaluator_matches_scikit_learn() {
    let dir = tempfile::tempdir().unwrap();
    lr_reference(&[
        "data",
        "--out",
        dir.path().to_str().unwrap(),
        "--rows",
        "1500",
        "--test-rows",
        "600",
        "--dim",
        "20",
        "--classes",
        "4",
        "--center-std",
        "0.35",
    ]);
    let ctx = context().await;
    let read = |name: &str| {
        let p = dir.path().join(name).to_string_lossy().into_owned();
        let ctx = ctx.clone();
        async move {
            ctx.read_parquet(&p, ParquetReadOptions::default())
                .await
                .unwrap()
        }
    };
    let params: LogisticRegressionParams =
        serde_json::from_value(json!({"maxIter": 30, "regParam": 0.01})).unwrap();
    let model = LogisticRegression::new(params)
        .fit(read("train.parquet").await)
        .await
        .unwrap();
    let evaluator = MulticlassClassificationEvaluator::default();
    let scored = model.transform(read("test.parquet").await).unwrap();
    let m = evaluator.metrics(scored.clone()).await.unwrap();
    let p = m.predictions();
    assert!(
        (0.5..0.98).contains(&m.accuracy),
        "accuracy {}: pick harder data",
        m.accuracy
    );
    let file = dir.path().join("predictions.json");
    std::fs::write(
        &file,
        serde_json::to_string(&json!({
            "labels": p.labels, "predictions": p.predictions, "probabilities": p.probabilities
        }))
        .unwrap(),
    )
    .unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("python/metrics_reference.py");
    let sk = json_stdout(Command::new(python().unwrap()).arg(script).arg(&file));
    let close = |name: &str, ours: f64| {
        let theirs = sk[name].as_f64().unwrap();
        assert!(
            (ours - theirs).abs() <= 1e-9,
            "{name}: ours {ours}, scikit-learn {theirs}"
        );
    };
    close("accuracy", m.accuracy);
    close("f1", m.weighted_f1);
    close("weightedPrecision", m.weighted_precision);
    close("weightedRecall", m.weighted_recall);
    close("macroF1", m.macro_f1);
    close("rocAuc", m.roc_auc.unwrap());
    close("logLoss", m.log_loss.unwrap());
    // The report's 95% interval of the accuracy: scipy's Wilson interval.
    let ci = &sk["accuracyCi95"];
    for (ours, theirs) in [m.accuracy_ci95.0, m.accuracy_ci95.1]
        .iter()
        .zip([&ci[0], &ci[1]])
    {
        let theirs = theirs.as_f64().unwrap();
        assert!(
            (ours - theirs).abs() <= 1e-6,
            "Wilson interval: ours {:?}, scipy {ci}",
            m.accuracy_ci95
        );
    }
    // The bootstrap interval of F1 holds the estimate and is narrower than [0, 1].
    let (lo, hi) = m.f1_ci95;
    assert!(
        lo <= m.weighted_f1 && m.weighted_f1 <= hi && hi - lo < 0.2,
        "{:?}",
        m.f1_ci95
    );
    let confusion: Vec<Vec<f64>> = serde_json::from_value(sk["confusion"].clone()).unwrap();
    assert_eq!(m.confusion, confusion);
    for (i, c) in m.classes.iter().enumerate() {
        assert!((c.precision - sk["precision"][i].as_f64().unwrap()).abs() <= 1e-9);
        assert!((c.recall - sk["recall"][i].as_f64().unwrap()).abs() <= 1e-9);
        assert!((c.f1 - sk["f1ByLabel"][i].as_f64().unwrap()).abs() <= 1e-9);
    }
    // The evaluator's own entry point and MLlib metric names.
    for name in [
        "accuracy",
        "f1",
        "weightedPrecision",
        "weightedRecall",
        "rocAuc",
    ] {
        let v = MulticlassClassificationEvaluator::new(name)
            .evaluate(scored.clone())
            .await
            .unwrap();
        assert_eq!(v, m.metric(name, 0.0, 1.0).unwrap(), "{name}");
    }
    let err = MulticlassClassificationEvaluator::new("auc")
        .evaluate(scored)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("metricName: 'auc'"), "{err}");
}

/// CrossValidator over a 2 x 3 grid with 3 folds on a two-executor cluster: 2 candidate
/// fits at a time pick the same parameters, with the same metrics, as one at a time.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cross_validator_parallel_on_cluster() {
    let dir = tempfile::tempdir().unwrap();
    lr_reference(&[
        "data",
        "--out",
        dir.path().to_str().unwrap(),
        "--rows",
        "1200",
        "--test-rows",
        "10",
        "--dim",
        "30",
        "--classes",
        "3",
        "--center-std",
        "0.3",
        "--files",
        "4",
    ]);
    let train = dir
        .path()
        .join("train.parquet")
        .to_string_lossy()
        .into_owned();
    let cluster = Cluster::start(2, 2).unwrap();
    let ctx = dlp_plugin::session::remote_context(&cluster.url())
        .await
        .unwrap();
    let lr: LogisticRegressionParams = serde_json::from_value(json!({"maxIter": 15})).unwrap();
    let grid = ParamGridBuilder::new()
        .add_grid("regParam", vec![0.001, 0.3])
        .add_grid("elasticNetParam", vec![0.0, 0.5, 1.0])
        .build();
    assert_eq!(grid.len(), 6);
    let mut runs = vec![];
    for parallelism in [2, 1] {
        let mut cv = Tuner::cross_validator(
            Pipeline::new(vec![PipelineStage::LogisticRegression(lr.clone())]),
            grid.clone(),
            MulticlassClassificationEvaluator::new("f1"),
            3,
        );
        cv.seed = 11;
        cv.parallelism = parallelism;
        cv.key_col = Some("id".into());
        let df = ctx
            .read_parquet(&train, ParquetReadOptions::default())
            .await
            .unwrap();
        let started = std::time::Instant::now();
        let t = cv.fit(&ctx, df).await.unwrap();
        println!(
            "parallelism {parallelism}: best {:?}, metrics {:?} ({:.1} s)",
            t.best_params(),
            t.avg_metrics,
            started.elapsed().as_secs_f64()
        );
        assert!(t.fold_metrics.iter().flatten().all(|v| v.is_finite()));
        runs.push(t);
    }
    assert_eq!(runs[0].best_index, runs[1].best_index);
    assert_eq!(runs[0].best_params(), runs[1].best_params());
    // Fits do not depend on task layout: the same metrics, fold by fold.
    assert_eq!(runs[0].fold_metrics, runs[1].fold_metrics);
    // The best candidate is the one with the largest mean metric, and the refit best model
    // carries its parameters.
    let t = &runs[0];
    let argmax = (0..t.avg_metrics.len())
        .max_by(|&a, &b| t.avg_metrics[a].total_cmp(&t.avg_metrics[b]))
        .unwrap();
    assert_eq!(t.best_index, argmax);
    let best = t.best_model.classifier().unwrap();
    assert_eq!(json!(best.params.reg_param), t.best_params()["regParam"]);
    assert_eq!(
        json!(best.params.elastic_net_param),
        t.best_params()["elasticNetParam"]
    );
    // The grid matters: strong pure L1 (regParam 0.3, elasticNetParam 1) zeroes most
    // coefficients and is clearly worse than the weakly regularized candidates.
    let worst = t.avg_metrics.iter().cloned().fold(f64::INFINITY, f64::min);
    assert!(t.avg_metrics[argmax] - worst > 0.2, "{:?}", t.avg_metrics);
}

/// Featurizer parameters in the grid: each featurizer configuration runs once, and its
/// candidates get the metrics a CrossValidator with that featurizer fixed gives; the best
/// model carries the winning featurizer.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cross_validator_tunes_the_featurizer() {
    let ctx = context().await;
    let options = ImageReadOptions::from_pairs([("withLabel", "true")]).unwrap();
    let folder = shared_data().join("numta-50");
    // Three digits (150 images) keep the four featurizations short.
    let df = images_with_origin(&ctx, folder.to_str().unwrap(), options)
        .filter(col("label").lt(datafusion::prelude::lit(3)))
        .unwrap();
    let featurizer = DeepImageFeaturizer::new("efficientnet_lite0");
    let lr: LogisticRegressionParams =
        serde_json::from_value(json!({"maxIter": 30, "regParam": 0.03})).unwrap();
    let pipeline = |f: DeepImageFeaturizer| {
        Pipeline::new(vec![
            PipelineStage::DeepImageFeaturizer(f),
            PipelineStage::LogisticRegression(lr.clone()),
        ])
    };
    let tuner = |pipeline: Pipeline, grid: Vec<_>| {
        let mut cv = Tuner::cross_validator(
            pipeline,
            grid,
            MulticlassClassificationEvaluator::new("f1"),
            3,
        );
        cv.seed = 5;
        cv.parallelism = 2;
        cv
    };
    let grid = ParamGridBuilder::new()
        .add_grid("featureLayer", vec!["penultimate", "logits"])
        .add_grid("regParam", vec![0.03, 0.3])
        .build();
    let prepared = std::sync::Arc::new(std::sync::Mutex::new(vec![]));
    let seen = prepared.clone();
    let mut cv = tuner(pipeline(featurizer), grid);
    cv.progress = Some(std::sync::Arc::new(move |e| {
        if let dlp_plugin::pipeline::TuningEvent::Preparing { done, total } = e {
            seen.lock().unwrap().push((done, total));
        }
    }));
    let t = cv.fit(&ctx, df.clone()).await.unwrap();
    println!("featurizer grid: {:?} -> {:?}", t.param_maps, t.avg_metrics);
    assert_eq!(*prepared.lock().unwrap(), vec![(0, 2), (1, 2)]);
    // Each layer alone, its features computed in a separate run.
    for (layer, first) in [("penultimate", 0), ("logits", 2)] {
        let fixed: DeepImageFeaturizer = serde_json::from_value(
            json!({"modelName": "efficientnet_lite0", "featureLayer": layer}),
        )
        .unwrap();
        let alone = tuner(
            pipeline(fixed),
            ParamGridBuilder::new()
                .add_grid("regParam", vec![0.03, 0.3])
                .build(),
        )
        .fit(&ctx, df.clone())
        .await
        .unwrap();
        for k in 0..2 {
            for (a, b) in alone.fold_metrics[k].iter().zip(&t.fold_metrics[first + k]) {
                assert!(
                    (a - b).abs() < 1e-9,
                    "{layer}: {:?} vs {:?}",
                    alone.fold_metrics,
                    t.fold_metrics
                );
            }
        }
    }
    let FittedStage::DeepImageFeaturizer(best) = &t.best_model.stages[0] else {
        panic!("the best model starts with the featurizer");
    };
    assert_eq!(
        json!(best.feature_layer),
        t.best_params()["featureLayer"],
        "the refit model has the best featurizer"
    );
}

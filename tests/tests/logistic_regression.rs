//! Distributed logistic regression on the embedded cluster, checked against Spark MLlib and
//! scikit-learn run here from the venv (`tests/python/lr_reference.py`), plus bad input and
//! persistence.

use std::path::{Path, PathBuf};

use datafusion::arrow::array::AsArray;
use datafusion::arrow::datatypes::Float64Type;
use datafusion::prelude::{ParquetReadOptions, SessionContext};
use dlp_plugin::ml::{
    Family, LogisticRegression, LogisticRegressionModel, LogisticRegressionParams,
};
use dlp_tests::{fit_parquet, lr_reference};
use serde_json::{Value, json};

async fn context() -> SessionContext {
    dlp_plugin::embedded::standalone_context(Some(2))
        .await
        .expect("embedded cluster")
}

/// Gaussian blobs as train / test Parquet files under `dir`.
fn blobs(dir: &Path, rows: usize, dim: usize, classes: usize, center_std: f64) -> (String, String) {
    let out = dir.to_str().unwrap();
    lr_reference(&[
        "data",
        "--out",
        out,
        "--rows",
        &rows.to_string(),
        "--test-rows",
        "1000",
        "--dim",
        &dim.to_string(),
        "--classes",
        &classes.to_string(),
        "--center-std",
        &center_std.to_string(),
    ]);
    (
        dir.join("train.parquet").to_string_lossy().into_owned(),
        dir.join("test.parquet").to_string_lossy().into_owned(),
    )
}

async fn fit(
    ctx: &SessionContext,
    train: &str,
    p: LogisticRegressionParams,
) -> LogisticRegressionModel {
    fit_parquet(ctx, train, p).await.unwrap()
}

async fn accuracy(ctx: &SessionContext, model: &LogisticRegressionModel, path: &str) -> f64 {
    dlp_tests::accuracy(ctx, model, path).await.unwrap()
}

fn params(v: Value) -> LogisticRegressionParams {
    serde_json::from_value(v).unwrap()
}

fn rel(a: f64, b: f64) -> f64 {
    (a - b).abs() / b.abs().max(1e-300)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn matches_spark_mllib_objective_accuracy_and_sparsity() {
    let dir = tempfile::tempdir().unwrap();
    let (btrain, btest) = blobs(&dir.path().join("binary"), 3000, 60, 2, 0.15);
    let (mtrain, mtest) = blobs(&dir.path().join("multi"), 3000, 60, 4, 0.2);
    let configs = [
        (
            &btrain,
            &btest,
            json!({"family": "binomial", "regParam": 0.02, "elasticNetParam": 0.0}),
        ),
        (
            &btrain,
            &btest,
            json!({"family": "binomial", "regParam": 0.02, "elasticNetParam": 0.5}),
        ),
        (
            &mtrain,
            &mtest,
            json!({"family": "multinomial", "regParam": 0.02, "elasticNetParam": 0.0}),
        ),
        (
            &mtrain,
            &mtest,
            json!({"family": "multinomial", "regParam": 0.02, "elasticNetParam": 0.5}),
        ),
    ];
    let jobs: Vec<Value> = configs
        .iter()
        .map(|(train, test, p)| json!({"train": train, "test": test, "params": p}))
        .collect();
    let spark = lr_reference(&["spark", "--jobs", &serde_json::to_string(&jobs).unwrap()]);
    let ctx = context().await;
    for ((train, test, p), expected) in configs.iter().zip(spark["fits"].as_array().unwrap()) {
        let model = fit(&ctx, train, params(p.clone())).await;
        let objective = model.summary.objective();
        let spark_objective = expected["objective"].as_f64().unwrap();
        let acc = accuracy(&ctx, &model, train).await;
        let test_acc = accuracy(&ctx, &model, test).await;
        let nnz = model.non_zero_coefficients() as f64;
        let spark_nnz = expected["non_zeros"].as_f64().unwrap();
        eprintln!(
            "{p}: objective {objective:.8} vs Spark {spark_objective:.8}; accuracy {acc:.4}/{test_acc:.4} vs {}/{}; \
             non-zeros {nnz} vs {spark_nnz}; iterations {} vs {}",
            expected["train_accuracy"],
            expected["test_accuracy"],
            model.summary.total_iterations,
            expected["iterations"]
        );
        assert!(
            rel(objective, spark_objective) <= 1e-4,
            "{p}: objective {objective} vs Spark {spark_objective}"
        );
        assert!(
            (acc - expected["train_accuracy"].as_f64().unwrap()).abs() <= 0.005,
            "{p}"
        );
        assert!(
            (test_acc - expected["test_accuracy"].as_f64().unwrap()).abs() <= 0.005,
            "{p}"
        );
        if p["elasticNetParam"].as_f64().unwrap() > 0.0 {
            assert!(
                nnz < model.coefficients.len() as f64,
                "{p}: L1 zeroed nothing"
            );
            assert!(
                rel(nnz, spark_nnz) <= 0.02,
                "{p}: non-zeros {nnz} vs Spark {spark_nnz}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn matches_scikit_learn_l2_optimum() {
    let dir = tempfile::tempdir().unwrap();
    let ctx = context().await;
    for classes in [2usize, 5] {
        let (train, test) = blobs(
            &dir.path().join(format!("k{classes}")),
            2000,
            40,
            classes,
            0.2,
        );
        let sk = lr_reference(&[
            "sklearn",
            "--train",
            &train,
            "--test",
            &test,
            "--reg-param",
            "0.01",
        ]);
        // scikit-learn penalizes original-scale coefficients: standardization=false.
        let model = fit(
            &ctx,
            &train,
            params(json!({"regParam": 0.01, "standardization": false})),
        )
        .await;
        let ours = model.summary.objective();
        let theirs = sk["objective"].as_f64().unwrap();
        eprintln!("k={classes}: objective {ours:.10} vs scikit-learn {theirs:.10}");
        assert!(rel(ours, theirs) <= 1e-5, "k={classes}: {ours} vs {theirs}");
        assert_eq!(model.multinomial, classes > 2);
    }
}

/// Predictions of `model` on a Parquet file, in row order.
async fn predictions(
    ctx: &SessionContext,
    model: &LogisticRegressionModel,
    path: &str,
) -> Vec<f64> {
    let df = ctx
        .read_parquet(path, ParquetReadOptions::default())
        .await
        .unwrap();
    let mut out = vec![];
    for b in model.transform(df).unwrap().collect().await.unwrap() {
        let p = b
            .column_by_name("prediction")
            .unwrap()
            .as_primitive::<Float64Type>();
        out.extend(p.values().iter().copied());
    }
    out
}

/// classWeight=balanced on imbalanced classes: the same optimum and predictions as
/// scikit-learn's `class_weight="balanced"`, and the minority class found more often than
/// without class weights.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn balanced_class_weights_match_scikit_learn() {
    let dir = tempfile::tempdir().unwrap();
    let ctx = context().await;
    for (name, classes, probs) in [("binary", 2usize, "0.9,0.1"), ("multi", 3, "0.75,0.2,0.05")] {
        let out = dir.path().join(name);
        lr_reference(&[
            "data",
            "--out",
            out.to_str().unwrap(),
            "--rows",
            "2000",
            "--test-rows",
            "1000",
            "--dim",
            "20",
            "--classes",
            &classes.to_string(),
            "--center-std",
            "0.3",
            "--class-probs",
            probs,
        ]);
        let train = out.join("train.parquet").to_string_lossy().into_owned();
        let test = out.join("test.parquet").to_string_lossy().into_owned();
        let sk = lr_reference(&[
            "sklearn",
            "--train",
            &train,
            "--test",
            &test,
            "--reg-param",
            "0.01",
            "--class-weight",
            "balanced",
        ]);
        let plain = lr_reference(&[
            "sklearn",
            "--train",
            &train,
            "--test",
            &test,
            "--reg-param",
            "0.01",
        ]);
        let balanced = fit(
            &ctx,
            &train,
            params(json!({"regParam": 0.01, "standardization": false, "classWeight": "balanced"})),
        )
        .await;
        let unweighted = fit(
            &ctx,
            &train,
            params(json!({"regParam": 0.01, "standardization": false})),
        )
        .await;
        let ours = balanced.summary.objective();
        let theirs = sk["objective"].as_f64().unwrap();
        eprintln!("{name}: balanced objective {ours:.10} vs scikit-learn {theirs:.10}");
        assert!(rel(ours, theirs) <= 1e-5, "{name}: {ours} vs {theirs}");
        // the class weights change the fit as they change scikit-learn's
        assert!(
            rel(ours, unweighted.summary.objective()) > 1e-3,
            "{name}: class weights changed nothing"
        );
        let p_ours = predictions(&ctx, &balanced, &test).await;
        let p_sk: Vec<f64> = sk["test_predictions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap())
            .collect();
        let same = p_ours.iter().zip(&p_sk).filter(|(a, b)| a == b).count();
        assert!(
            same as f64 >= 0.995 * p_sk.len() as f64,
            "{name}: {same} of {} test predictions as scikit-learn's",
            p_sk.len()
        );
        // and the minority class is found more often, as in scikit-learn
        let minority = (classes - 1) as f64;
        let recall = |pred: &[f64]| {
            let truth = predictions_labels(&test);
            let hits = truth
                .iter()
                .zip(pred)
                .filter(|(t, p)| **t == minority && **p == minority)
                .count();
            hits as f64 / truth.iter().filter(|t| **t == minority).count() as f64
        };
        let p_plain = predictions(&ctx, &unweighted, &test).await;
        eprintln!(
            "{name}: minority recall {:.3} balanced, {:.3} unweighted (scikit-learn {:.3} / {:.3} on train)",
            recall(&p_ours),
            recall(&p_plain),
            sk["minority_recall"].as_f64().unwrap(),
            plain["minority_recall"].as_f64().unwrap()
        );
        assert!(recall(&p_ours) > recall(&p_plain), "{name}");
    }
}

/// The labels of a Parquet file written by `lr_reference.py data`, in row order.
fn predictions_labels(path: &str) -> Vec<f64> {
    let file = std::fs::File::open(path).unwrap();
    let reader =
        datafusion::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file)
            .unwrap()
            .build()
            .unwrap();
    let mut out = vec![];
    for b in reader {
        let b = b.unwrap();
        let l = b
            .column_by_name("label")
            .unwrap()
            .as_primitive::<Float64Type>();
        out.extend(l.values().iter().copied());
    }
    out
}

async fn fit_sql(ctx: &SessionContext, sql: &str, p: LogisticRegressionParams) -> String {
    let df = ctx.sql(sql).await.unwrap();
    match LogisticRegression::new(p).fit(df).await {
        Ok(_) => panic!("fit of `{sql}` should fail"),
        Err(e) => e.to_string(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_input_names_the_column_and_the_problem() {
    let ctx = context().await;
    let p = LogisticRegressionParams::default;
    let cases: Vec<(&str, LogisticRegressionParams, &str)> = vec![
        (
            "SELECT make_array(1.0, 2.0) AS features, 1.5 AS label",
            p(),
            "label column 'label' must hold class indices",
        ),
        (
            "SELECT * FROM (VALUES (make_array(1.0, 2.0), 0.0), (make_array(1.0), 1.0)) AS t(features, label)",
            p(),
            "mixed length",
        ),
        (
            "SELECT * FROM (VALUES (make_array(1.0, 2.0), 0.0), (make_array(1.0, 'NaN'::double), 1.0)) AS t(features, label)",
            p(),
            "non-finite value",
        ),
        (
            "SELECT * FROM (VALUES (make_array(1.0, 2.0), 0.0), (NULL, 1.0)) AS t(features, label)",
            p(),
            "null vector",
        ),
        (
            "SELECT * FROM (VALUES (make_array(1.0, 2.0), 1.0), (make_array(3.0, 1.0), 1.0)) AS t(features, label)",
            p(),
            "one class only",
        ),
        (
            // random() keeps the filter from being planned away into an empty relation.
            "SELECT * FROM (VALUES (make_array(1.0, 2.0), 0.0)) AS t(features, label) WHERE random() > 2",
            p(),
            "empty",
        ),
        (
            "SELECT make_array(1.0, 2.0) AS features, 0.0 AS label",
            LogisticRegressionParams {
                label_col: "target".into(),
                ..p()
            },
            "labelCol: no column 'target'",
        ),
        (
            "SELECT 'x' AS features, 0.0 AS label",
            p(),
            "features column 'features' must be a vector",
        ),
        (
            "SELECT * FROM (VALUES (make_array(1.0, 2.0), 0.0), (make_array(1.0, 3.0), 2.0)) AS t(features, label)",
            LogisticRegressionParams {
                family: Family::Binomial,
                ..p()
            },
            "family=binomial",
        ),
        (
            "SELECT make_array(1.0, 2.0) AS features, 0.0 AS label",
            LogisticRegressionParams {
                elastic_net_param: 2.0,
                ..p()
            },
            "elasticNetParam",
        ),
    ];
    for (sql, params, expected) in cases {
        let err = fit_sql(&ctx, sql, params).await;
        assert!(err.contains(expected), "`{sql}`: {err}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn model_transforms_saves_and_loads() {
    let dir = tempfile::tempdir().unwrap();
    let (train, _) = blobs(&dir.path().join("data"), 500, 8, 3, 1.0);
    let ctx = context().await;
    let model = fit(&ctx, &train, params(json!({"regParam": 0.01}))).await;
    assert_eq!((model.num_classes, model.num_features), (3, 8));
    assert!(model.summary.total_iterations > 0 && model.summary.converged);
    let history = &model.summary.objective_history;
    assert!(
        history.windows(2).all(|w| w[1] <= w[0] + 1e-12),
        "{history:?}"
    );

    let saved: PathBuf = dir.path().join("model");
    model.save(&saved).unwrap();
    let loaded = LogisticRegressionModel::load(&saved).unwrap();
    assert_eq!(loaded.params, model.params);
    assert_eq!(
        loaded.summary.total_iterations,
        model.summary.total_iterations
    );
    for (a, b) in loaded
        .coefficients
        .iter()
        .chain(&loaded.intercepts)
        .zip(model.coefficients.iter().chain(&model.intercepts))
    {
        // JSON numbers: shortest round-trip text, parsed back within an ulp.
        assert!((a - b).abs() <= 1e-15 * b.abs().max(1e-300), "{a} vs {b}");
    }

    let df = ctx
        .read_parquet(&train, ParquetReadOptions::default())
        .await
        .unwrap();
    let out = loaded.transform(df).unwrap().collect().await.unwrap();
    let b = &out[0];
    let prob = b
        .column_by_name("probability")
        .unwrap()
        .as_fixed_size_list();
    let raw = b
        .column_by_name("rawPrediction")
        .unwrap()
        .as_fixed_size_list();
    let pred = b
        .column_by_name("prediction")
        .unwrap()
        .as_primitive::<Float64Type>();
    for i in 0..b.num_rows() {
        let p = prob.value(i);
        let p = p.as_primitive::<Float64Type>();
        assert!((p.values().iter().sum::<f64>() - 1.0).abs() < 1e-12);
        let r = raw.value(i);
        let r = r.as_primitive::<Float64Type>();
        let argmax = (0..3)
            .max_by(|&a, &c| r.value(a).partial_cmp(&r.value(c)).unwrap())
            .unwrap();
        assert_eq!(pred.value(i), argmax as f64);
    }
    assert!(
        LogisticRegressionModel::load(dir.path())
            .unwrap_err()
            .to_string()
            .contains("model.json")
    );
    // Fitting twice gives the same model (deterministic sums in partition order).
    let again = fit(&ctx, &train, params(json!({"regParam": 0.01}))).await;
    assert_eq!(again.coefficients, model.coefficients);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn prepared_data_serve_several_fits_like_fit() {
    let dir = tempfile::tempdir().unwrap();
    let work = dir.path().join("work");
    let (train, _) = blobs(&dir.path().join("data"), 600, 6, 3, 1.0);
    let ctx = context().await;
    let read = || async {
        ctx.read_parquet(&train, ParquetReadOptions::default())
            .await
            .unwrap()
    };
    let p = |reg: f64| {
        params(json!({"regParam": reg, "elasticNetParam": 0.5, "workDir": work.to_str().unwrap()}))
    };
    let lr = LogisticRegression::new(p(0.01));
    let data = lr.prepare(read().await).await.unwrap();
    assert_eq!((data.rows(), data.num_features()), (600, 6));
    assert!(data.num_parts() >= 1 && data.materialize_seconds() > 0.0);

    // Same model as a plain fit, without materializing again.
    let plain = LogisticRegression::new(p(0.01))
        .fit(read().await)
        .await
        .unwrap();
    let prepared = lr.fit_prepared(&data).await.unwrap();
    assert_eq!(prepared.summary.materialize_seconds, 0.0);
    assert!(plain.summary.materialize_seconds > 0.0);
    assert_eq!(prepared.coefficients, plain.coefficients);
    assert_eq!(prepared.intercepts, plain.intercepts);

    // Other parameters on the same data: a different, sparser model.
    let strong = LogisticRegression::new(p(1.0))
        .fit_prepared(&data)
        .await
        .unwrap();
    let nz = |m: &LogisticRegressionModel| m.non_zero_coefficients();
    assert!(
        nz(&strong) < nz(&prepared),
        "{} vs {}",
        nz(&strong),
        nz(&prepared)
    );

    // Other columns than the data were prepared with: an error naming the parameter.
    let mut other = p(0.01);
    other.label_col = "y".into();
    let err = LogisticRegression::new(other)
        .fit_prepared(&data)
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("labelCol") && err.contains("\"y\""), "{err}");

    // The parts live while the data do, and go with them.
    let run_dirs = || std::fs::read_dir(&work).map(|d| d.count()).unwrap_or(0);
    assert_eq!(run_dirs(), 1);
    drop(data);
    assert_eq!(run_dirs(), 0);
}

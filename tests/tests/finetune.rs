//! Fine-tuning (`TorchImageEstimator`): one epoch equals a PyTorch loop over the same
//! TorchScript file, initial weights, images and optimizer; the result is an ordinary zoo
//! model that the featurizer runs; a fit resumes from its checkpoints with the weights of
//! an uninterrupted one; and on a real cluster (scheduler and two executors on loopback)
//! the weights equal the embedded cluster's, also when an executor is killed mid-fit.

use std::path::Path;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use datafusion::arrow::array::Array;
use datafusion::prelude::SessionContext;
use dlp_plugin::finetune::{
    NamedTensors, TorchImageEstimator, TorchImageEstimatorParams, TorchImageModel,
};
use dlp_tests::{Cluster, local_path, python_script};
use serde_json::json;

/// A model directory of this test binary: the zoo's files linked, so that fine-tuned
/// models can be saved beside them. Set as `DLP_MODEL_DIR` before any model is looked up.
fn zoo() -> &'static Path {
    static ZOO: OnceLock<tempfile::TempDir> = OnceLock::new();
    ZOO.get_or_init(|| {
        let real = dlp_plugin::torch::manifest::default_model_dir();
        let dir = tempfile::tempdir().unwrap();
        for f in std::fs::read_dir(&real).unwrap() {
            let f = f.unwrap();
            std::os::unix::fs::symlink(f.path(), dir.path().join(f.file_name())).unwrap();
        }
        // SAFETY: set once, before the test threads look up any model.
        unsafe { std::env::set_var("DLP_MODEL_DIR", dir.path()) };
        dir
    })
    .path()
}

/// `per_class` digits of each of `classes` from numta-50, in class folders.
fn digits(to: &Path, classes: &[&str], per_class: usize) -> String {
    dlp_tests::copy_classes("numta-50", to, classes, per_class);
    to.to_string_lossy().into_owned()
}

fn params(v: serde_json::Value) -> TorchImageEstimatorParams {
    let mut p = json!({"modelName": "efficientnet_lite0", "resize": "stretch"});
    p.as_object_mut()
        .unwrap()
        .extend(v.as_object().unwrap().clone());
    serde_json::from_value(p).unwrap()
}

async fn fit(
    ctx: &SessionContext,
    data: &str,
    partitions: usize,
    p: TorchImageEstimatorParams,
) -> TorchImageModel {
    let df = ctx
        .sql(&format!(
            "SELECT image, label FROM read_images('{data}', 'withLabel=true', 'numPartitions={partitions}')"
        ))
        .await
        .unwrap();
    TorchImageEstimator::new(p).fit(df).await.unwrap()
}

fn max_diff(a: &NamedTensors, b: &NamedTensors) -> (f32, f32) {
    assert_eq!(a.names, b.names);
    let mut diff = 0f32;
    let mut scale = 0f32;
    for (x, y) in a.values.iter().zip(&b.values) {
        for (u, v) in x.iter().zip(y) {
            diff = diff.max((u - v).abs());
            scale = scale.max(u.abs());
        }
    }
    (diff, scale)
}

fn read_tensors(path: &Path) -> NamedTensors {
    NamedTensors::from_bytes(&std::fs::read(path).unwrap(), &path.to_string_lossy()).unwrap()
}

/// The trainable parameters in a checkpoint (without the optimizer's state).
fn checkpoint_weights(path: &Path) -> NamedTensors {
    let mut t = read_tensors(path);
    let keep: Vec<usize> = (0..t.names.len())
        .filter(|&i| !t.names[i].starts_with("first.") && !t.names[i].starts_with("second."))
        .collect();
    t.names = keep.iter().map(|&i| t.names[i].clone()).collect();
    t.shapes = keep.iter().map(|&i| t.shapes[i].clone()).collect();
    t.values = keep.iter().map(|&i| t.values[i].clone()).collect();
    t.metadata.clear();
    t
}

/// Tolerance of the equivalence with PyTorch, on weights of magnitude up to ~10: the same
/// libtorch kernels, but the gradient is summed over parts and divided on the driver, and
/// the optimizer runs in Rust.
const TOLERANCE: f32 = 1e-4;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_epoch_matches_pytorch_and_saves_an_ordinary_model() {
    let zoo = zoo();
    let dir = tempfile::tempdir().unwrap();
    let data = digits(&dir.path().join("data"), &["0", "1", "2"], 4);
    let ckpt = dir.path().join("ckpt");
    let name = "lite0_ft_equivalence";
    let p = params(json!({
        "trainable": "blocks", "trainableBlocks": 1, "optimizer": "sgd", "learningRate": 0.01,
        "momentum": 0.9, "weightDecay": 0.0001, "batchSize": 4, "epochs": 1, "shuffle": false,
        "checkpointDir": ckpt, "outputModelName": name,
    }));
    let ctx = dlp_plugin::embedded::standalone_context(Some(2))
        .await
        .unwrap();
    let model = fit(&ctx, &data, 3, p.clone()).await;
    assert_eq!(
        (model.train_images, model.history.len(), model.num_classes),
        (12, 1, 3)
    );

    // The same epoch in PyTorch.
    let mut files: Vec<(String, i64)> = vec![];
    for c in ["0", "1", "2"] {
        for f in std::fs::read_dir(Path::new(&data).join(c)).unwrap() {
            files.push((
                f.unwrap().path().to_string_lossy().into_owned(),
                c.parse().unwrap(),
            ));
        }
    }
    files.sort();
    let entry = dlp_plugin::torch::ModelZoo::new(zoo)
        .get("efficientnet_lite0")
        .unwrap();
    let (graph, train_file) = entry.training().unwrap();
    let first = p.first_trainable(graph).unwrap();
    let out = dir.path().join("reference.safetensors");
    let m = &entry.manifest;
    let args = json!({
        "model": train_file, "initial": ckpt.join("epoch-0000.safetensors"),
        "files": files.iter().map(|f| &f.0).collect::<Vec<_>>(),
        "labels": files.iter().map(|f| f.1).collect::<Vec<_>>(),
        "height": m.input.height, "width": m.input.width, "resize": "stretch", "scale": m.scale,
        "mean": m.mean, "std": m.std,
        "stages": graph.stages.iter().map(|s| &s.method).collect::<Vec<_>>(),
        "first_trainable": first, "batch": 4, "epochs": 1, "optimizer": "sgd", "lr": 0.01,
        "momentum": 0.9, "weight_decay": 0.0001, "label_smoothing": 0.0, "out": out,
    });
    let printed = python_script("finetune_reference.py", &[args.to_string()]);
    eprintln!("reference: {}", String::from_utf8_lossy(&printed));
    let reference = read_tensors(&out);
    let (diff, scale) = max_diff(&model.weights, &reference);
    let initial = checkpoint_weights(&ckpt.join("epoch-0000.safetensors"));
    let (moved, _) = max_diff(&model.weights, &initial);
    eprintln!(
        "{} trainable arrays ({} values): max |rust - pytorch| {diff:e} (weights up to {scale}), moved up to {moved}",
        model.weights.names.len(),
        model.weights.len()
    );
    assert!(
        model
            .weights
            .names
            .iter()
            .any(|n| n.contains("_blocks.15."))
    );
    assert!(model.weights.names.iter().any(|n| n.contains("_fc.")));
    assert!(moved > 1e-3, "the weights did not move ({moved})");
    assert!(diff <= TOLERANCE, "weights differ from PyTorch's by {diff}");
    // The checkpoint of epoch 1 holds the final weights.
    let (d, _) = max_diff(
        &model.weights,
        &checkpoint_weights(&ckpt.join("epoch-0001.safetensors")),
    );
    assert_eq!(d, 0.0);

    // An ordinary zoo model: the featurizer runs it by name (logits for 3 classes), and its
    // logits equal PyTorch's on the saved TorchScript file.
    let saved = model.save(zoo).unwrap();
    assert_eq!(saved.manifest.num_classes, 3);
    assert_eq!(saved.classes().unwrap(), vec!["0", "1", "2"]);
    // Its file is the trainable form: none of the base file's extra methods.
    assert!(entry.manifest.methods.is_some());
    assert_eq!(saved.manifest.methods, None);
    let df = ctx
        .sql(&format!(
            "SELECT image FROM read_images('{data}', 'recursiveFileLookup=true')"
        ))
        .await
        .unwrap();
    let featurizer: dlp_plugin::torch::DeepImageFeaturizer = serde_json::from_value(json!({
        "modelName": name, "featureLayer": "logits", "resize": "stretch", "outputCol": "logits"
    }))
    .unwrap();
    let batches = featurizer
        .transform(df)
        .unwrap()
        .select_columns(&["image", "logits"])
        .unwrap()
        .collect()
        .await
        .unwrap();
    let mut rust: Vec<(String, Vec<f32>)> = vec![];
    for b in &batches {
        let img = b
            .column(0)
            .as_any()
            .downcast_ref::<datafusion::arrow::array::StructArray>()
            .unwrap();
        let origin = img
            .column(0)
            .as_any()
            .downcast_ref::<datafusion::arrow::array::StringArray>()
            .unwrap();
        for (i, v) in dlp_tests::vectors(b.column(1).as_ref())
            .into_iter()
            .enumerate()
        {
            rust.push((local_path(origin.value(i)), v.unwrap()));
        }
    }
    rust.sort_by(|a, b| a.0.cmp(&b.0));
    let paths: Vec<String> = rust.iter().map(|r| r.0.clone()).collect();
    let mut entry = saved.clone();
    entry.manifest.resize = dlp_plugin::torch::ResizePolicy::Stretch;
    let reference = dlp_tests::torch_reference(
        &entry,
        &paths,
        json!({"output": "logits", "index": 0, "batch": 4}),
    );
    let reference: Vec<f32> = reference
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect();
    let ours: Vec<f32> = rust.iter().flat_map(|r| r.1.clone()).collect();
    assert_eq!(ours.len(), 12 * 3);
    let d = dlp_tests::max_abs_diff(&ours, &reference);
    assert!(
        d <= 1e-3,
        "the saved model's logits differ from PyTorch's by {d}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_fit_resumes_from_its_last_checkpoint() {
    zoo();
    let dir = tempfile::tempdir().unwrap();
    let data = digits(&dir.path().join("data"), &["3", "4"], 6);
    let ctx = dlp_plugin::embedded::standalone_context(Some(2))
        .await
        .unwrap();
    let base = json!({
        "optimizer": "adamw", "learningRate": 0.01, "weightDecay": 0.01, "batchSize": 3,
        "validationFraction": 0.25, "seed": 7, "labelSmoothing": 0.1,
    });
    let with = |extra: serde_json::Value| {
        let mut v = base.clone();
        v.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        params(v)
    };
    let whole = fit(&ctx, &data, 2, with(json!({"epochs": 3}))).await;
    assert_eq!((whole.train_images, whole.validation_images), (9, 3));
    assert_eq!(whole.history.len(), 3);
    assert!(
        whole
            .history
            .iter()
            .all(|h| h.validation_accuracy.is_some())
    );

    let ckpt = dir.path().join("ckpt");
    // "Stopped" after one epoch, then run to three.
    let first = fit(
        &ctx,
        &data,
        2,
        with(json!({"epochs": 1, "checkpointDir": ckpt})),
    )
    .await;
    assert_eq!(first.resumed_from, 0);
    let resumed = fit(
        &ctx,
        &data,
        3,
        with(json!({"epochs": 3, "checkpointDir": ckpt})),
    )
    .await;
    assert_eq!(resumed.resumed_from, 1);
    assert_eq!(resumed.history.len(), 3);
    let (diff, _) = max_diff(&whole.weights, &resumed.weights);
    eprintln!("resumed vs uninterrupted: max |diff| {diff:e}");
    assert!(diff <= 1e-6, "resumed weights differ by {diff}");
    // Another configuration does not resume from these checkpoints.
    let other = fit(
        &ctx,
        &data,
        2,
        with(json!({"epochs": 1, "seed": 8, "checkpointDir": ckpt})),
    )
    .await;
    assert_eq!(other.resumed_from, 0);
}

/// Executor-log steps of the fine-tuning operator.
fn steps_in(log: &str) -> Vec<u64> {
    log.lines()
        .filter(|l| l.contains("fine-tuning step"))
        .filter_map(|l| {
            let at = l.find("step=")? + "step=".len();
            l[at..]
                .split(|c: char| !c.is_ascii_digit())
                .next()?
                .parse()
                .ok()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_executors_give_the_embedded_weights_even_when_one_is_killed() {
    let zoo = zoo();
    let dir = tempfile::tempdir().unwrap();
    // 24 images, all in every step: two tasks of 16 and 8 rows per step.
    let data = digits(&dir.path().join("data"), &["5", "6", "7"], 8);
    let p = params(json!({
        "trainable": "blocks", "trainableBlocks": 1, "optimizer": "sgd", "learningRate": 0.02,
        "batchSize": 24, "epochs": 16, "seed": 3,
    }));
    let env = [(
        "DLP_MODEL_DIR".to_string(),
        zoo.to_string_lossy().into_owned(),
    )];
    let mut cluster = Cluster::start_each_with_env(
        1,
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
    let (data2, p2) = (data.clone(), p.clone());
    let fitting = tokio::spawn(async move {
        let remote = dlp_plugin::session::remote_context(&url).await.unwrap();
        fit(&remote, &data2, 4, p2).await
    });
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let both = cluster
            .executors
            .iter()
            .all(|e| !steps_in(&e.output()).is_empty());
        if both
            && steps_in(&cluster.executors[1].output())
                .iter()
                .any(|&s| s >= 8)
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the fit never reached step 8 on both executors"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    cluster.executors[1].kill();
    let killed_at = steps_in(&cluster.executors[1].output())
        .into_iter()
        .max()
        .unwrap();
    let model = tokio::time::timeout(Duration::from_secs(600), fitting)
        .await
        .expect("fit finished")
        .unwrap();
    let after = steps_in(&cluster.executors[0].output())
        .into_iter()
        .filter(|&s| s > killed_at)
        .count();
    assert!(after > 0, "executor 0 did no step after the kill");

    let ctx = dlp_plugin::embedded::standalone_context(Some(2))
        .await
        .unwrap();
    let local = fit(&ctx, &data, 4, p).await;
    let (diff, scale) = max_diff(&model.weights, &local.weights);
    eprintln!(
        "executor 1 killed after step {killed_at}; cluster vs embedded: max |diff| {diff:e} (weights up to {scale})"
    );
    assert!(
        diff <= 1e-5,
        "cluster and embedded weights differ by {diff}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_pipeline_stage_fits_saves_loads_and_predicts() {
    zoo();
    let dir = tempfile::tempdir().unwrap();
    let data = digits(&dir.path().join("data"), &["8", "9"], 10);
    let ctx = dlp_plugin::embedded::standalone_context(Some(2))
        .await
        .unwrap();
    let spec = format!(
        "stages:\n  - {{type: TorchImageEstimator, modelName: efficientnet_lite0, resize: stretch, \
         outputModelName: lite0_ft_pipeline, learningRate: 0.01, epochs: 4, batchSize: 8}}\n\
         data: {{path: '{data}'}}\n"
    );
    let spec: dlp_plugin::pipeline::JobSpec = serde_yaml::from_str(&spec).unwrap();
    let pipeline = dlp_plugin::pipeline::Pipeline::new(spec.stages);
    let df = ctx
        .sql(&format!(
            "SELECT image, label FROM read_images('{data}', 'withLabel=true')"
        ))
        .await
        .unwrap();
    let epochs = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let seen = epochs.clone();
    let model = pipeline
        .fit_observed(
            df.clone(),
            Some(std::sync::Arc::new(
                move |_: &dlp_plugin::finetune::EpochRecord| {
                    seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                },
            )),
        )
        .await
        .unwrap();
    assert_eq!(epochs.load(std::sync::atomic::Ordering::SeqCst), 4);
    let saved = dir.path().join("pipeline");
    model.save(&saved).unwrap();
    // The saved pipeline carries its model: loaded where the model directory lacks it,
    // the model is installed there (sha256 checked).
    let in_zoo = |f: &str| zoo().join(format!("lite0_ft_pipeline.{f}"));
    let sha = std::fs::read(in_zoo("pt")).unwrap();
    for f in ["pt", "yaml", "classes.txt"] {
        std::fs::remove_file(in_zoo(f)).unwrap();
    }
    let loaded = dlp_plugin::pipeline::PipelineModel::load(&saved).unwrap();
    assert_eq!(loaded, model);
    assert_eq!(std::fs::read(in_zoo("pt")).unwrap(), sha);
    // A damaged copy is refused, naming the model, and not installed.
    let copy = saved.join("stages/0-TorchImageClassifier/lite0_ft_pipeline.pt");
    assert!(copy.exists(), "the pipeline holds no copy of its model");
    for f in ["pt", "yaml", "classes.txt"] {
        std::fs::remove_file(in_zoo(f)).unwrap();
    }
    let mut bytes = std::fs::read(&copy).unwrap();
    let n = bytes.len();
    bytes[n / 2] ^= 1;
    std::fs::write(&copy, &bytes).unwrap();
    let err = dlp_plugin::pipeline::PipelineModel::load(&saved)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("lite0_ft_pipeline") && err.contains("sha256"),
        "{err}"
    );
    assert!(!in_zoo("yaml").exists(), "a damaged model was installed");
    bytes[n / 2] ^= 1;
    std::fs::write(&copy, &bytes).unwrap();
    let loaded = dlp_plugin::pipeline::PipelineModel::load(&saved).unwrap();
    let accuracy = dlp_plugin::pipeline::MulticlassClassificationEvaluator::new("accuracy")
        .evaluate(loaded.transform(df).unwrap())
        .await
        .unwrap();
    eprintln!("training accuracy after 4 epochs of the head: {accuracy}");
    assert!(accuracy >= 0.8, "training accuracy {accuracy}");
    // Unknown parameters are named.
    let err = serde_yaml::from_str::<dlp_plugin::pipeline::JobSpec>(
        "stages:\n  - {type: TorchImageEstimator, modelName: m, learningrate: 1}\n",
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("learningrate"), "{err}");
}

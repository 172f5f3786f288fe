//! User TorchScript models on the image column (`TorchImageTransformer`, sparkdl's
//! `TFImageTransformer`): image and vector outputs equal a PyTorch reference running the same
//! TorchScript file, gray output, invalid images, chaining into the featurizer, pipeline
//! specs and plan-time errors.
//!
//! The models are written by `tests/python/image_models.py` into a model directory of this
//! test binary (with the exported EfficientNet-Lite0 linked in), which the binary installs
//! as its process's model directory before the first query.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use datafusion::arrow::array::{Array, AsArray, RecordBatch, StructArray};
use datafusion::arrow::datatypes::Int32Type;
use datafusion::prelude::{DataFrame, SessionContext, col};
use dlp_plugin::ImageContextExt;
use dlp_plugin::image::ImageReadOptions;
use dlp_plugin::pipeline::PipelineStage;
use dlp_plugin::torch::{
    DeepImageFeaturizer, FeatureLayer, ImageOutputMode, ModelZoo, ProcessTorchConfig,
    TorchImageTransformer,
};
use dlp_tests::{local_path, max_abs_diff, python_script, shared_data, torch_reference, vectors};
use serde_json::json;

/// The test model directory, written once per test binary and installed as the process's.
fn model_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap().keep();
        python_script("image_models.py", &[&dir]);
        // The exported zoo model, for chaining (its files linked, not copied).
        let zoo = ProcessTorchConfig::from_env().zoo();
        let lite = zoo.get("efficientnet_lite0").unwrap();
        for f in std::fs::read_dir(&lite.dir).unwrap().flatten() {
            let name = f.file_name().to_string_lossy().into_owned();
            if name.starts_with("efficientnet_lite0.") || name == "imagenet_classes.txt" {
                std::os::unix::fs::symlink(f.path(), dir.join(&name)).unwrap();
            }
        }
        let mut config = ProcessTorchConfig::from_env();
        config.model_dir = dir.clone();
        assert!(config.install(), "the model directory was set before");
        dir
    })
}

async fn context() -> SessionContext {
    model_dir();
    dlp_plugin::embedded::standalone_context(Some(2))
        .await
        .expect("embedded cluster")
}

fn zoo() -> ModelZoo {
    ModelZoo::new(model_dir())
}

fn origin_field() -> datafusion::prelude::Expr {
    datafusion::functions::core::expr_fn::get_field(col("image"), "origin").alias("origin")
}

/// One decoded output image.
#[derive(Debug, Clone, PartialEq)]
struct Picture {
    origin: String,
    height: i32,
    width: i32,
    channels: i32,
    mode: i32,
    data: Vec<u8>,
}

/// Rows of an image struct column: `None` for nulls.
fn pictures(array: &dyn Array) -> Vec<Option<Picture>> {
    let s: &StructArray = array.as_struct();
    let int = |i: usize| s.column(i).as_primitive::<Int32Type>().clone();
    let (h, w, c, m) = (int(1), int(2), int(3), int(4));
    let origin = s.column(0).as_string::<i32>();
    let data = s.column(5).as_binary::<i32>();
    (0..s.len())
        .map(|i| {
            s.is_valid(i).then(|| Picture {
                origin: origin.value(i).to_string(),
                height: h.value(i),
                width: w.value(i),
                channels: c.value(i),
                mode: m.value(i),
                data: data.value(i).to_vec(),
            })
        })
        .collect()
}

/// (input origin -> output column rows) of `df`, which has `origin` and `column`.
async fn by_origin(df: DataFrame, column: &str) -> BTreeMap<String, Vec<RecordBatch>> {
    let mut out: BTreeMap<String, Vec<RecordBatch>> = BTreeMap::new();
    for b in df.collect().await.unwrap() {
        let origin = b
            .column_by_name("origin")
            .unwrap()
            .as_string::<i32>()
            .clone();
        for i in 0..b.num_rows() {
            let one = b
                .slice(i, 1)
                .project(&[b.schema().index_of(column).unwrap()]);
            out.entry(origin.value(i).to_string())
                .or_default()
                .push(one.unwrap());
        }
    }
    out
}

/// Runs `torch_reference.py` for `model` over `files`; returns the raw output file.
fn reference(model: &str, files: &[String], output: &str, index: usize) -> Vec<u8> {
    let entry = zoo().get(model).unwrap();
    torch_reference(
        &entry,
        files,
        json!({"batch": 4, "output": output, "index": index}),
    )
}

/// Runs `transformer` over the photos of `dir`; (origin, output image) pairs in origin order.
async fn images_out(
    ctx: &SessionContext,
    dir: &Path,
    t: &TorchImageTransformer,
) -> Vec<(String, Option<Picture>)> {
    // One folder per class (and two text files beside them, dropped).
    let opts =
        ImageReadOptions::from_pairs([("withLabel", "true"), ("dropInvalid", "true")]).unwrap();
    let df = ctx.read_images(&dir.to_string_lossy(), opts).await.unwrap();
    let df = t
        .transform(df)
        .unwrap()
        .select(vec![origin_field(), col(&t.output_col)])
        .unwrap();
    let mut out = vec![];
    for (origin, rows) in by_origin(df, &t.output_col).await {
        for b in rows {
            out.push((origin.clone(), pictures(b.column(0).as_ref()).remove(0)));
        }
    }
    out
}

/// Compares output images with the reference's bytes: same shape and origin, every byte
/// within 1 (float rounding of the resize and the model may move a pixel across .5).
fn assert_images_match(
    got: &[(String, Option<Picture>)],
    reference: &[u8],
    h: i32,
    w: i32,
    c: i32,
) {
    let per = (h * w * c) as usize;
    assert_eq!(reference.len(), per * got.len(), "reference size");
    let mut off_by_one = 0usize;
    for ((origin, p), want) in got.iter().zip(reference.chunks(per)) {
        let p = p
            .as_ref()
            .unwrap_or_else(|| panic!("{origin}: null output"));
        assert_eq!(
            &p.origin, origin,
            "the output image keeps the input's origin"
        );
        assert_eq!(
            (p.height, p.width, p.channels),
            (h, w, c),
            "{origin}: shape"
        );
        assert_eq!(p.mode, if c == 3 { 16 } else { 0 }, "{origin}: OpenCV mode");
        let worst = p
            .data
            .iter()
            .zip(want)
            .map(|(a, b)| a.abs_diff(*b))
            .max()
            .unwrap();
        assert!(
            worst <= 1,
            "{origin}: pixel differs by {worst} from PyTorch's"
        );
        off_by_one += p.data.iter().zip(want).filter(|(a, b)| a != b).count();
    }
    let total = per * got.len();
    println!(
        "{} images of {h}x{w}x{c}: {off_by_one} of {total} bytes off by one",
        got.len()
    );
    assert!(
        (off_by_one as f64) < 0.01 * total as f64,
        "{off_by_one} of {total} bytes differ"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn image_and_vector_outputs_match_pytorch() {
    let ctx = context().await;
    // The reference decodes every photo at full size (Pillow); so does the exact path, where
    // the default would decode the larger photos at a DCT scale (tests/torch_models.rs).
    ctx.sql("SET dlp.image.decode = 'exact'")
        .await
        .unwrap()
        .collect()
        .await
        .unwrap();
    let dir = std::fs::canonicalize(shared_data().join("imagenet-sanity")).unwrap();
    // Color model: 2x2 average pooling in ImageNet-normalized RGB, back to B G R bytes.
    let t = TorchImageTransformer::new("half_smooth", "smoothed", ImageOutputMode::Image);
    let got = images_out(&ctx, &dir, &t).await;
    assert_eq!(got.len(), 18, "the 18 photos");
    let files: Vec<String> = got.iter().map(|(o, _)| local_path(o)).collect();
    assert_images_match(
        &got,
        &reference("half_smooth", &files, "image", 0),
        48,
        64,
        3,
    );

    // Gray model (BGR input, shorter side + centre crop, one output channel).
    let t = TorchImageTransformer::new("gray_lines", "lines", ImageOutputMode::Image)
        .with_batch_size(5);
    let got = images_out(&ctx, &dir, &t).await;
    assert_images_match(
        &got,
        &reference("gray_lines", &files, "image", 0),
        64,
        64,
        1,
    );

    // Vector mode reads the manifest's feature output of the same module.
    let got = vectors_by_origin(&ctx, &dir, "half_smooth", 16).await;
    let want: Vec<f32> = reference("half_smooth", &files, "features", 1)
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect();
    assert_eq!(want.len(), 3 * got.len());
    for (g, w) in got.iter().zip(want.chunks(3)) {
        assert!(max_abs_diff(g, w) < 1e-4, "{g:?} vs {w:?}");
    }

    // A model that needs its input in NCHW memory (`view`s over it) refuses the
    // channels-last batch CPU inference hands models, and is then run on NCHW batches:
    // the same means, no error, no image lost.
    let flat = vectors_by_origin(&ctx, &dir, "flat_means", 4).await;
    assert_eq!(flat.len(), got.len(), "every image through flat_means");
    for (g, w) in flat.iter().zip(want.chunks(3)) {
        assert!(max_abs_diff(g, w) < 1e-4, "flat_means {g:?} vs {w:?}");
    }

    // The manifest's `methods`: `prepack` ran once on loading with the batch size and the
    // input height (its scale is 4 * 1000 + 96), and the vectors came from `features`
    // (`forward` returns the means unscaled).
    let scaled = vectors_by_origin(&ctx, &dir, "scaled_means", 4).await;
    assert_eq!(scaled.len(), got.len(), "every image through scaled_means");
    for (g, w) in scaled.iter().zip(want.chunks(3)) {
        let w: Vec<f32> = w.iter().map(|v| v * 4096.0).collect();
        assert!(max_abs_diff(g, &w) < 0.5, "scaled_means {g:?} vs {w:?}");
    }
    // A manifest naming a method the file lacks: an error naming the model and the method.
    let opts =
        ImageReadOptions::from_pairs([("withLabel", "true"), ("dropInvalid", "true")]).unwrap();
    let df = ctx.read_images(&dir.to_string_lossy(), opts).await.unwrap();
    let err = TorchImageTransformer::new("broken_methods", "out", ImageOutputMode::Vector)
        .transform(df)
        .unwrap()
        .select(vec![col("out")])
        .unwrap()
        .collect()
        .await
        .unwrap_err()
        .to_string();
    println!("a manifest naming a missing method: {err}");
    assert!(
        err.contains("broken_methods") && err.contains("'nope'"),
        "{err}"
    );
}

/// The vector output of `model` for each valid image of `dir`, in origin order.
async fn vectors_by_origin(
    ctx: &SessionContext,
    dir: &Path,
    model: &str,
    batch: usize,
) -> Vec<Vec<f32>> {
    let opts =
        ImageReadOptions::from_pairs([("withLabel", "true"), ("dropInvalid", "true")]).unwrap();
    let df = ctx.read_images(&dir.to_string_lossy(), opts).await.unwrap();
    let df = TorchImageTransformer::new(model, "out", ImageOutputMode::Vector)
        .with_batch_size(batch)
        .transform(df)
        .unwrap()
        .select(vec![origin_field(), col("out")])
        .unwrap();
    let mut out = vec![];
    for (_, rows) in by_origin(df, "out").await {
        for b in rows {
            out.push(vectors(b.column(0).as_ref()).remove(0).unwrap());
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn odd_and_invalid_images_and_chaining_into_the_featurizer() {
    let ctx = context().await;
    // Spark's own test tree: BGRA and gray images, kittens, and two text files (invalid
    // rows, kept by dropInvalid=false).
    let dir = shared_data().join("spark-images/images/origin");
    let opts = ImageReadOptions::from_pairs([("recursiveFileLookup", "true")]).unwrap();
    let df = ctx.read_images(&dir.to_string_lossy(), opts).await.unwrap();
    let df = TorchImageTransformer::new("half_smooth", "smoothed", ImageOutputMode::Image)
        .transform(df)
        .unwrap();
    // The output images are images: the featurizer reads them like read_images' own.
    let df = DeepImageFeaturizer::new("efficientnet_lite0")
        .with_input_col("smoothed")
        .with_output_col("f_smoothed")
        .transform(df)
        .unwrap();
    let df = DeepImageFeaturizer::new("efficientnet_lite0")
        .with_output_col("f_original")
        .transform(df)
        .unwrap()
        .select(vec![
            origin_field(),
            datafusion::functions::core::expr_fn::get_field(col("image"), "nChannels")
                .alias("in_channels"),
            col("smoothed"),
            col("f_smoothed"),
            col("f_original"),
        ])
        .unwrap();
    let batches = df.collect().await.unwrap();
    let (mut valid, mut invalid) = (0, 0);
    // (name, features of the smoothed image, features of the original)
    let mut pairs: Vec<(String, Vec<f32>, Vec<f32>)> = vec![];
    for b in &batches {
        let origin = b.column(0).as_string::<i32>();
        let in_channels = b.column(1).as_primitive::<Int32Type>();
        let out = pictures(b.column(2).as_ref());
        let smoothed = vectors(b.column(3).as_ref());
        let original = vectors(b.column(4).as_ref());
        for i in 0..b.num_rows() {
            let name = origin.value(i);
            if in_channels.value(i) < 1 {
                // Invalid input: null image and null features, row kept.
                invalid += 1;
                assert!(
                    out[i].is_none(),
                    "{name}: invalid input must give a null image"
                );
                assert!(smoothed[i].is_none(), "{name}");
                continue;
            }
            valid += 1;
            let p = out[i]
                .as_ref()
                .unwrap_or_else(|| panic!("{name}: null output"));
            // Gray and BGRA inputs are brought to the model's three channels.
            assert_eq!((p.height, p.width, p.channels), (48, 64, 3), "{name}");
            assert_eq!(p.origin, name);
            let (s, o) = (smoothed[i].clone().unwrap(), original[i].clone().unwrap());
            assert_eq!(s.len(), 1280);
            pairs.push((name.to_string(), s, o));
        }
    }
    // A blurred thumbnail is still the same picture to the CNN: its features are closer to
    // its own original's than to the other images' on average.
    let cosine = |a: &[f32], b: &[f32]| {
        let dot: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
        let norm = |v: &[f32]| v.iter().map(|x| x * x).sum::<f32>().sqrt();
        dot / (norm(a) * norm(b))
    };
    for (i, (name, s, o)) in pairs.iter().enumerate() {
        let own = cosine(s, o);
        let others: Vec<f32> = (pairs.iter().enumerate())
            .filter(|(j, _)| *j != i)
            .map(|(_, (_, _, other))| cosine(s, other))
            .collect();
        let mean_other = others.iter().sum::<f32>() / others.len() as f32;
        println!("{name}: cosine to its original {own:.3}, to the others {mean_other:.3}");
        assert!(own > mean_other + 0.1, "{name}: {own} vs {mean_other}");
    }
    assert_eq!(
        (valid, invalid),
        (8, 2),
        "8 images and 2 text files in Spark's tree"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn image_transformer_is_a_pipeline_stage_with_plan_time_errors() {
    let ctx = context().await;
    let stage: PipelineStage = serde_yaml::from_str(
        "{type: TorchImageTransformer, modelName: gray_lines, outputCol: lines, outputMode: image, batchSize: 3}",
    )
    .unwrap();
    let PipelineStage::TorchImageTransformer(t) = &stage else {
        panic!("{stage:?}")
    };
    assert_eq!(t.output_mode, ImageOutputMode::Image);
    assert_eq!((t.input_col.as_str(), t.batch_size), ("image", Some(3)));
    let pipeline = dlp_plugin::pipeline::Pipeline::new(vec![stage.clone()]);
    pipeline.validate().unwrap();
    let df = ctx
        .read_images(
            &shared_data()
                .join("imagenet-sanity/toaster")
                .to_string_lossy(),
            ImageReadOptions::default(),
        )
        .await
        .unwrap();
    let model = pipeline.fit(df.clone()).await.unwrap();
    let saved = tempfile::tempdir().unwrap();
    model.save(saved.path()).unwrap();
    let loaded = dlp_plugin::pipeline::PipelineModel::load(saved.path()).unwrap();
    let a = loaded
        .transform(df.clone())
        .unwrap()
        .collect()
        .await
        .unwrap();
    let b = t.transform(df.clone()).unwrap().collect().await.unwrap();
    let lines = |bs: &[RecordBatch]| -> usize {
        bs.iter()
            .map(|b| {
                b.column_by_name("lines").unwrap().len()
                    - b.column_by_name("lines").unwrap().null_count()
            })
            .sum()
    };
    assert_eq!((lines(&a), lines(&b)), (2, 2));

    let err = |r: datafusion::common::Result<DataFrame>| r.unwrap_err().strip_backtrace();
    // No feature output for vector mode, no image output for image mode.
    let e = err(
        TorchImageTransformer::new("gray_lines", "v", ImageOutputMode::Vector)
            .transform(df.clone()),
    );
    assert!(e.contains("gray_lines has no feature output"), "{e}");
    let e = err(
        TorchImageTransformer::new("efficientnet_lite0", "v", ImageOutputMode::Image)
            .transform(df.clone()),
    );
    assert!(e.contains("efficientnet_lite0 has no image output"), "{e}");
    let e = err(
        TorchImageTransformer::new("gray_lines", "v", ImageOutputMode::Image)
            .with_input_col("label")
            .transform(df.clone()),
    );
    assert!(e.contains("label"), "{e}");
    // featureLayer logits on a model without a class output points at the other layer.
    let mut logits = DeepImageFeaturizer::new("gray_lines");
    logits.feature_layer = FeatureLayer::Logits;
    let e = err(logits.transform(df.clone()));
    assert!(
        e.contains("featureLayer 'logits'")
            && e.contains("gray_lines has none")
            && e.contains("'penultimate'"),
        "{e}"
    );
    let e = err(TorchImageTransformer::new("no_such", "v", ImageOutputMode::Image).transform(df));
    assert!(
        e.contains("unknown model 'no_such'") && e.contains("half_smooth"),
        "{e}"
    );
    // An unknown outputMode names the accepted ones.
    let e = serde_yaml::from_str::<PipelineStage>(
        "{type: TorchImageTransformer, modelName: gray_lines, outputCol: x, outputMode: picture}",
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("vector") && e.contains("image"), "{e}");
}

/// `SET dlp.torch.batch_size` reaches the operator when the stage sets no batchSize: the
/// plan says it, and so do `TorchInferenceExec`'s `batch_size` and `inference_batches`
/// metrics.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_batch_size_shows_in_the_operator_metrics() {
    use datafusion::physical_plan::ExecutionPlan;
    use dlp_plugin::torch::TorchInferenceExec;

    model_dir();
    let dir = tempfile::tempdir().unwrap();
    dlp_tests::copy_flowers(dir.path(), &["daisy"], 9);
    let ctx = dlp_plugin::session::local_context().unwrap();
    ctx.sql("SET dlp.torch.batch_size = 4")
        .await
        .unwrap()
        .collect()
        .await
        .unwrap();
    let daisy = dir.path().join("daisy").to_string_lossy().into_owned();
    let df = ctx
        .read_images(&daisy, ImageReadOptions::default())
        .await
        .unwrap();
    let df = DeepImageFeaturizer::new("efficientnet_lite0")
        .transform(df)
        .unwrap();
    let plan = df.create_physical_plan().await.unwrap();
    let out = datafusion::physical_plan::collect(plan.clone(), ctx.task_ctx())
        .await
        .unwrap();
    assert_eq!(out.iter().map(|b| b.num_rows()).sum::<usize>(), 9);
    fn find(plan: &std::sync::Arc<dyn ExecutionPlan>) -> Option<std::sync::Arc<dyn ExecutionPlan>> {
        if plan.is::<TorchInferenceExec>() {
            return Some(plan.clone());
        }
        plan.children().into_iter().find_map(find)
    }
    let exec = find(&plan).expect("a TorchInferenceExec in the plan");
    let spec = exec
        .downcast_ref::<TorchInferenceExec>()
        .unwrap()
        .spec()
        .clone();
    assert_eq!(spec.batch_size, 4, "the planned step");
    let metrics = exec.metrics().expect("metrics");
    let sizes: Vec<usize> = metrics
        .iter()
        .filter(|m| m.value().name() == "batch_size")
        .map(|m| m.value().as_usize())
        .collect();
    let passes = metrics.sum_by_name("inference_batches").unwrap().as_usize();
    println!("batch_size metric per partition {sizes:?}, {passes} forward passes for 9 images");
    assert!(
        !sizes.is_empty() && sizes.iter().all(|&s| s == 4),
        "{sizes:?}"
    );
    assert!(
        passes >= 3,
        "{passes} passes of at most 4 images cannot hold 9"
    );

    // A stage's own batchSize wins over the session's.
    let df = ctx
        .read_images(&daisy, ImageReadOptions::default())
        .await
        .unwrap();
    let plan = DeepImageFeaturizer::new("efficientnet_lite0")
        .with_batch_size(2)
        .transform(df)
        .unwrap()
        .create_physical_plan()
        .await
        .unwrap();
    let exec = find(&plan).unwrap();
    let planned = exec.downcast_ref::<TorchInferenceExec>().unwrap();
    assert_eq!(planned.spec().batch_size, 2);
}

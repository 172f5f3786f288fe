//! libtorch operators on the embedded cluster: features equal a PyTorch reference, ImageNet
//! predictions on real photos, models as SQL functions, and plan-time errors.

use std::collections::BTreeMap;

use datafusion::arrow::array::{Array, AsArray, RecordBatch};
use datafusion::arrow::datatypes::Float32Type;
use datafusion::prelude::{SessionContext, col};
use dlp_plugin::ImageContextExt;
use dlp_plugin::image::ImageReadOptions;
use dlp_plugin::torch::{
    DeepImageFeaturizer, DeepImagePredictor, FeatureLayer, ModelZoo, ProcessTorchConfig,
};
use dlp_tests::{local_path, max_abs_diff, shared_data, torch_reference, vectors};
use serde_json::json;

const MODEL: &str = "efficientnet_lite0";

async fn context() -> SessionContext {
    dlp_plugin::embedded::standalone_context(Some(2))
        .await
        .expect("embedded cluster")
}

fn zoo() -> ModelZoo {
    ProcessTorchConfig::get().zoo()
}

/// (origin, vector) pairs of a featurized / predicted DataFrame's `col`.
fn origin_vectors(batches: &[RecordBatch], column: &str) -> Vec<(String, Option<Vec<f32>>)> {
    let mut out = Vec::new();
    for b in batches {
        let origin = b
            .column_by_name("origin")
            .unwrap()
            .as_string::<i32>()
            .clone();
        let v = vectors(b.column_by_name(column).unwrap().as_ref());
        for (i, v) in v.into_iter().enumerate() {
            out.push((origin.value(i).to_string(), v));
        }
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

/// `(origin, features)` of a folder through `read_images` and `DeepImageFeaturizer`.
async fn operator_features(
    ctx: &SessionContext,
    dir: &std::path::Path,
) -> Vec<(String, Option<Vec<f32>>)> {
    featurized_rows(
        ctx,
        dir,
        ImageReadOptions::default(),
        DeepImageFeaturizer::new(MODEL),
    )
    .await
}

/// `(origin, vector)` of a folder read with `options` through `featurizer`.
async fn featurized_rows(
    ctx: &SessionContext,
    dir: &std::path::Path,
    options: ImageReadOptions,
    featurizer: DeepImageFeaturizer,
) -> Vec<(String, Option<Vec<f32>>)> {
    let df = ctx
        .read_images(&dir.to_string_lossy(), options)
        .await
        .unwrap();
    let df = featurizer
        .with_output_col("f")
        .transform(df)
        .unwrap()
        .select(vec![
            datafusion::functions::core::expr_fn::get_field(col("image"), "origin").alias("origin"),
            col("f"),
        ])
        .unwrap();
    origin_vectors(&df.collect().await.unwrap(), "f")
}

/// Largest |ours - reference| over rows of `dim` values (no row may be null).
fn worst_diff(rows: &[(String, Option<Vec<f32>>)], expected: &[Vec<f32>], dim: usize) -> f32 {
    let mut worst = 0f32;
    for ((origin, ours), theirs) in rows.iter().zip(expected) {
        let ours = ours
            .as_ref()
            .unwrap_or_else(|| panic!("null output for {origin}"));
        assert_eq!(ours.len(), dim, "{origin}");
        worst = worst.max(max_abs_diff(ours, theirs));
    }
    worst
}

fn reference(files: &[String], output: &str, batch: usize) -> Vec<Vec<f32>> {
    let entry = zoo().get(MODEL).unwrap();
    let bytes = torch_reference(&entry, files, json!({"output": output, "batch": batch}));
    let floats: Vec<f32> = bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect();
    let dim = floats.len() / files.len();
    floats.chunks(dim).map(<[f32]>::to_vec).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn features_match_the_pytorch_reference_on_the_flowers() {
    let ctx = context().await;
    let opts =
        ImageReadOptions::from_pairs([("withLabel", "true"), ("dropInvalid", "true")]).unwrap();
    let rows = featurized_rows(
        &ctx,
        &shared_data().join("flowers"),
        opts,
        DeepImageFeaturizer::new(MODEL),
    )
    .await;
    assert_eq!(rows.len(), 1428);
    let files: Vec<String> = rows.iter().map(|(o, _)| local_path(o)).collect();
    let worst = worst_diff(&rows, &reference(&files, "features", 16), 1280);
    println!(
        "max |rust - pytorch| over {} flowers: {worst:e}",
        rows.len()
    );
    assert!(worst <= 1e-4, "max abs diff {worst}");
}

/// Runs `SET key = value` on a session (it travels with the session's jobs).
async fn set(ctx: &SessionContext, key: &str, value: &str) {
    ctx.sql(&format!("SET {key} = '{value}'"))
        .await
        .unwrap()
        .collect()
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logits_layer_matches_the_pytorch_reference() {
    let ctx = context().await;
    // The reference decodes every photo at full size (Pillow): so does the exact path. Five
    // of these photos are large enough for a scaled decode (see the test below).
    set(&ctx, "dlp.image.decode", "exact").await;
    let opts =
        ImageReadOptions::from_pairs([("withLabel", "true"), ("dropInvalid", "true")]).unwrap();
    let featurizer = DeepImageFeaturizer::new(MODEL).with_feature_layer(FeatureLayer::Logits);
    let rows = featurized_rows(
        &ctx,
        &shared_data().join("imagenet-sanity"),
        opts,
        featurizer.clone(),
    )
    .await;
    assert_eq!(rows.len(), 18);
    let files: Vec<String> = rows.iter().map(|(o, _)| local_path(o)).collect();
    let worst = worst_diff(&rows, &reference(&files, "logits", 16), 1000);
    println!("max |rust - pytorch| of the logits over 18 photos: {worst:e}");
    assert!(worst <= 1e-3, "max abs diff {worst}");
    // Saved and read back with the parameter's sparkdl-style name; the default is not written.
    let yaml = serde_yaml::to_string(&featurizer).unwrap();
    assert!(yaml.contains("featureLayer: logits"), "{yaml}");
    let back: DeepImageFeaturizer = serde_yaml::from_str(&yaml).unwrap();
    assert_eq!(back, featurizer);
    let plain = serde_yaml::to_string(&DeepImageFeaturizer::new(MODEL)).unwrap();
    assert!(!plain.contains("featureLayer"), "{plain}");
    let e = serde_yaml::from_str::<DeepImageFeaturizer>("modelName: m\nfeatureLayer: conv5\n")
        .unwrap_err();
    assert!(e.to_string().contains("penultimate"), "{e}");
}

/// The scans' decode covers in the physical plan of `df`.
async fn scan_covers(df: datafusion::prelude::DataFrame) -> Vec<Option<(usize, usize)>> {
    use datafusion::common::tree_node::{TreeNode, TreeNodeRecursion};
    let plan = df.create_physical_plan().await.unwrap();
    let mut covers = vec![];
    plan.apply(|n| {
        if let Some(scan) = n.downcast_ref::<dlp_plugin::image::ImageDecodeExec>() {
            covers.push(scan.spec().decode_cover);
        }
        Ok(TreeNodeRecursion::Continue)
    })
    .unwrap();
    covers
}

/// A featurization that keeps no image decodes JPEGs at the DCT scale covering the model's
/// input (Lite0: 224, cropped from a shorter side of 256), on the executors of the embedded
/// cluster; one that keeps the image, or a session with `dlp.image.decode = exact`, decodes
/// at full size. Five of the 18 sanity photos have a shorter side of 512 or more (one of
/// 3456, decoded at 1/8): their logits move by a bounded amount and their top-1 class does
/// not; the other thirteen are decoded at full size either way and do not move.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn photos_only_a_model_reads_decode_at_the_dct_scale() {
    use datafusion::functions::core::expr_fn::get_field;
    let root = shared_data().join("imagenet-sanity");
    let root = root.to_string_lossy();
    let featurizer = DeepImageFeaturizer::new(MODEL)
        .with_feature_layer(FeatureLayer::Logits)
        .with_output_col("f");

    // The plan, from the planner the scheduler runs.
    let local = dlp_plugin::session::local_context().unwrap();
    let featurized = featurizer
        .transform(
            local
                .read_images(&root, ImageReadOptions::default())
                .await
                .unwrap(),
        )
        .unwrap();
    let origin = get_field(col("image"), "origin").alias("origin");
    assert_eq!(
        scan_covers(
            featurized
                .clone()
                .select(vec![origin.clone(), col("f")])
                .unwrap()
        )
        .await,
        vec![Some((256, 256))]
    );
    assert_eq!(
        scan_covers(
            featurized
                .clone()
                .select(vec![col("image"), col("f")])
                .unwrap()
        )
        .await,
        vec![None],
        "the image column is in the result: Spark-exact"
    );
    set(&local, "dlp.image.decode", "exact").await;
    let exact_plan = featurizer
        .transform(
            local
                .read_images(&root, ImageReadOptions::default())
                .await
                .unwrap(),
        )
        .unwrap()
        .select(vec![origin.clone(), col("f")])
        .unwrap();
    assert_eq!(scan_covers(exact_plan).await, vec![None]);

    // The values, on the embedded cluster's executors.
    let ctx = context().await;
    let opts = || {
        ImageReadOptions::from_pairs([("recursiveFileLookup", "true"), ("dropInvalid", "true")])
            .unwrap()
    };
    let scaled = featurized_rows(
        &ctx,
        &shared_data().join("imagenet-sanity"),
        opts(),
        featurizer.clone(),
    )
    .await;
    set(&ctx, "dlp.image.decode", "exact").await;
    let exact = featurized_rows(
        &ctx,
        &shared_data().join("imagenet-sanity"),
        opts(),
        featurizer.clone(),
    )
    .await;
    assert_eq!(scaled.len(), 18);
    assert_eq!(exact.len(), 18);
    let argmax = |v: &[f32]| (0..v.len()).max_by(|&a, &b| v[a].total_cmp(&v[b])).unwrap();
    let large = [
        "broccoli.jpg",
        "coffeepot2.jpg",
        "coffeepot3.jpg",
        "pizza3.jpg",
        "teddy1.jpg",
    ];
    let mut worst_large = 0f32;
    for ((o, s), (o2, e)) in scaled.iter().zip(&exact) {
        assert_eq!(o, o2);
        let (s, e) = (s.as_ref().unwrap(), e.as_ref().unwrap());
        let d = max_abs_diff(s, e);
        let scale = e.iter().fold(0f32, |m, v| m.max(v.abs()));
        println!("{o}: max |scaled - exact| {d:.4} (largest |logit| {scale:.2})");
        if large.iter().any(|f| o.ends_with(f)) {
            assert!(d > 1e-4, "{o} was not decoded at a smaller scale");
            assert!(d <= 0.1 * scale, "{o}: {d} against logits up to {scale}");
            assert_eq!(argmax(s), argmax(e), "{o}: top-1 class");
            worst_large = worst_large.max(d / scale);
        } else {
            assert!(d <= 1e-5, "{o}: decoded at full size both ways, yet {d}");
        }
    }
    println!("largest change relative to the largest logit: {worst_large:.4}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn predictor_recognizes_the_imagenet_sanity_photos() {
    let ctx = context().await;
    let root = shared_data().join("imagenet-sanity");
    let opts = ImageReadOptions::from_pairs([("withLabel", "true")]).unwrap();
    let df = ctx
        .read_images(&root.to_string_lossy(), opts)
        .await
        .unwrap();
    let df = DeepImagePredictor::new(MODEL)
        .with_top_k(5)
        .transform(df)
        .unwrap();
    let df = df
        .select(vec![col("label_name"), col("predicted_labels")])
        .unwrap();
    let batches = df.collect().await.unwrap();
    // Folder names -> torchvision's ImageNet descriptions.
    let alias: BTreeMap<&str, &str> = [("teddy_bear", "teddy")].into_iter().collect();
    let (mut top1, mut top5, mut n) = (0, 0, 0);
    for b in &batches {
        let label = b.column_by_name("label_name").unwrap().as_string::<i32>();
        let preds = b
            .column_by_name("predicted_labels")
            .unwrap()
            .as_list::<i32>();
        for i in 0..b.num_rows() {
            if label.is_null(i) {
                continue; // tags.tsv / wikimedia.md at the root
            }
            let want = label.value(i);
            let want = alias.get(want).copied().unwrap_or(want).replace('_', " ");
            let p = preds.value(i);
            let p = p.as_struct();
            let desc = p.column(1).as_string::<i32>();
            let prob = p.column(2).as_primitive::<Float32Type>();
            let names: Vec<&str> = (0..desc.len()).map(|k| desc.value(k)).collect();
            assert_eq!(names.len(), 5);
            assert!(
                prob.values().windows(2).all(|w| w[0] >= w[1]),
                "sorted by probability"
            );
            n += 1;
            top1 += usize::from(names[0] == want);
            top5 += usize::from(names.contains(&want.as_str()));
            println!("{want:>12}: {names:?}");
        }
    }
    assert_eq!(n, 18);
    assert_eq!(top5, 18, "tagged class in the top 5 for every photo");
    assert!(top1 >= 17, "top-1 {top1}/18");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn models_are_sql_functions_with_the_operators_results() {
    let ctx = context().await;
    let dir = shared_data().join("imagenet-sanity/toaster");
    let q = format!(
        "SELECT image['origin'] AS origin, featurize('{MODEL}', image) AS f, \
         predict_topk('{MODEL}', image, 3) AS top FROM read_images('{}')",
        dir.display()
    );
    let batches = ctx.sql(&q).await.unwrap().collect().await.unwrap();
    let sql = origin_vectors(&batches, "f");
    assert_eq!(sql.len(), 2);
    let mut top1 = Vec::new();
    for b in &batches {
        let top = b.column_by_name("top").unwrap().as_list::<i32>();
        for i in 0..b.num_rows() {
            let t = top.value(i);
            assert_eq!(t.len(), 3);
            top1.push(
                t.as_struct()
                    .column(1)
                    .as_string::<i32>()
                    .value(0)
                    .to_string(),
            );
        }
    }
    assert!(top1.iter().any(|d| d == "toaster"), "{top1:?}");

    let op = operator_features(&ctx, &dir).await;
    for ((o1, a), (o2, b)) in sql.iter().zip(&op) {
        assert_eq!(o1, o2);
        assert!(max_abs_diff(a.as_ref().unwrap(), b.as_ref().unwrap()) < 1e-4);
    }

    // The optional third argument is the featurizer's featureLayer.
    let q = format!(
        "SELECT image['origin'] AS origin, featurize('{MODEL}', image, 'logits') AS l, \
         featurize('{MODEL}', image, 'penultimate') AS p FROM read_images('{}')",
        dir.display()
    );
    let batches = ctx.sql(&q).await.unwrap().collect().await.unwrap();
    let logits = origin_vectors(&batches, "l");
    let op = featurized_rows(
        &ctx,
        &dir,
        ImageReadOptions::default(),
        DeepImageFeaturizer::new(MODEL).with_feature_layer(FeatureLayer::Logits),
    )
    .await;
    assert_eq!(logits.len(), 2);
    for ((o1, a), (o2, b)) in logits.iter().zip(&op) {
        assert_eq!(o1, o2);
        let (a, b) = (a.as_ref().unwrap(), b.as_ref().unwrap());
        assert_eq!(a.len(), 1000);
        assert!(max_abs_diff(a, b) < 1e-3, "logits of {o1}");
    }
    for ((_, a), (_, b)) in origin_vectors(&batches, "p").iter().zip(&sql) {
        assert!(max_abs_diff(a.as_ref().unwrap(), b.as_ref().unwrap()) < 1e-4);
    }
    let e = ctx
        .sql(&format!(
            "SELECT featurize('{MODEL}', image, 'conv5') FROM read_images('{}')",
            dir.display()
        ))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("argument 3 (featureLayer)") && e.contains("'logits'") && e.contains("conv5"),
        "{e}"
    );
}

/// sparkdl's `KerasImageFileTransformer`: a column of file URIs through a model. The same
/// vectors as reading the folder with `read_images` and `DeepImageFeaturizer`; unreadable,
/// non-image and null URIs give null outputs; a non-string column is a plan-time error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_uri_transformer_matches_the_featurizer() {
    use datafusion::arrow::array::StringArray;
    use datafusion::arrow::datatypes::{DataType, Field, Schema};
    use dlp_plugin::image::origin_uri;
    use dlp_plugin::torch::ImageFileTransformer;
    use std::sync::Arc;

    let ctx = context().await;
    let dir = shared_data().join("imagenet-sanity/toaster");
    let dir = std::fs::canonicalize(dir).unwrap();
    let mut files: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path().to_string_lossy().into_owned())
        .collect();
    files.sort();
    assert_eq!(files.len(), 2);
    let license = std::fs::canonicalize(shared_data().join("flowers/LICENSE.txt")).unwrap();
    // A file URI, a plain path, a text file, a missing file, a remote URI and a null.
    let uris = StringArray::from(vec![
        Some(origin_uri(&files[0])),
        Some(files[1].clone()),
        Some(license.to_string_lossy().into_owned()),
        Some("/no/such/file.jpg".to_string()),
        Some("s3://bucket/x.jpg".to_string()),
        None,
    ]);
    let schema = Arc::new(Schema::new(vec![Field::new("uri", DataType::Utf8, true)]));
    let batch = RecordBatch::try_new(schema, vec![Arc::new(uris)]).unwrap();
    // Tables reach the executors as files (an in-memory table cannot be shipped).
    let tmp = tempfile::tempdir().unwrap();
    let parquet = tmp.path().join("files.parquet");
    let local = SessionContext::new();
    local
        .read_batch(batch)
        .unwrap()
        .write_parquet(
            parquet.to_str().unwrap(),
            datafusion::dataframe::DataFrameWriteOptions::new(),
            None,
        )
        .await
        .unwrap();
    ctx.register_parquet("files", parquet.to_str().unwrap(), Default::default())
        .await
        .unwrap();

    let df = ctx.table("files").await.unwrap();
    let out = ImageFileTransformer::new("uri", MODEL)
        .with_output_col("f")
        .transform(df)
        .unwrap();
    let names: Vec<&str> = out
        .schema()
        .fields()
        .iter()
        .map(|f| f.name().as_str())
        .collect();
    assert_eq!(names, vec!["uri", "f"]);
    let batches = out.collect().await.unwrap();
    let mut got = BTreeMap::new();
    for b in &batches {
        let uri = b.column_by_name("uri").unwrap().as_string::<i32>().clone();
        for (i, v) in vectors(b.column_by_name("f").unwrap().as_ref())
            .into_iter()
            .enumerate()
        {
            let key = if uri.is_null(i) {
                "<null>".to_string()
            } else {
                uri.value(i).to_string()
            };
            got.insert(key, v);
        }
    }
    assert_eq!(got.len(), 6);
    for bad in [
        license.to_str().unwrap(),
        "/no/such/file.jpg",
        "s3://bucket/x.jpg",
        "<null>",
    ] {
        assert!(got[bad].is_none(), "{bad} should give a null output");
    }

    let op = operator_features(&ctx, &dir).await;
    let expected = [(origin_uri(&files[0]), &op[0]), (files[1].clone(), &op[1])];
    for (key, (origin, v)) in expected {
        assert_eq!(local_path(origin), local_path(&key));
        let d = max_abs_diff(got[&key].as_ref().unwrap(), v.as_ref().unwrap());
        assert!(d < 1e-5, "{key}: max abs diff {d}");
    }

    // The same through SQL: read_image(uri) feeds any model function.
    let q = format!(
        "SELECT uri, featurize('{MODEL}', read_image(uri)) AS f FROM files WHERE uri LIKE '%toaster%'"
    );
    let sql = ctx.sql(&q).await.unwrap().collect().await.unwrap();
    let n: usize = sql.iter().map(|b| b.num_rows()).sum();
    assert_eq!(n, 2);
    for b in &sql {
        let uri = b.column_by_name("uri").unwrap().as_string::<i32>().clone();
        for (i, v) in vectors(b.column_by_name("f").unwrap().as_ref())
            .into_iter()
            .enumerate()
        {
            let d = max_abs_diff(v.as_ref().unwrap(), got[uri.value(i)].as_ref().unwrap());
            assert!(d < 1e-4, "{}: {d}", uri.value(i));
        }
    }

    let err = ImageFileTransformer::new("missing", MODEL)
        .transform(ctx.table("files").await.unwrap())
        .unwrap_err()
        .to_string();
    assert!(err.contains("inputCol 'missing' is not a column"), "{err}");
    let ints = ctx.sql("SELECT 1 AS uri").await.unwrap();
    let err = ImageFileTransformer::new("uri", MODEL)
        .transform(ints)
        .unwrap_err()
        .to_string();
    assert!(err.contains("must hold file URIs"), "{err}");
}

#[tokio::test]
async fn bad_model_parameters_fail_at_plan_time() {
    let ctx = context().await;
    let dir = shared_data().join("imagenet-sanity/toaster");
    let df = ctx
        .read_images(&dir.to_string_lossy(), ImageReadOptions::default())
        .await
        .unwrap();
    let e = DeepImageFeaturizer::new("resnet9000")
        .transform(df.clone())
        .unwrap_err();
    assert!(e.to_string().contains("unknown model 'resnet9000'"), "{e}");
    assert!(e.to_string().contains(MODEL), "lists the known models: {e}");
    let e = DeepImageFeaturizer::new(MODEL)
        .with_input_col("origin_missing")
        .transform(df.clone())
        .unwrap_err();
    assert!(e.to_string().contains("origin_missing"), "{e}");
    let e = ctx
        .sql(&format!(
            "SELECT featurize('{MODEL}', 'not an image') FROM read_images('{}')",
            dir.display()
        ))
        .await
        .unwrap_err();
    assert!(e.to_string().contains("must be an image struct"), "{e}");
    let e = DeepImagePredictor::new(MODEL)
        .with_top_k(0)
        .transform(df)
        .unwrap_err();
    assert!(e.to_string().contains("topK must be in 1..=1000"), "{e}");
}

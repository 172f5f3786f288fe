//! Spark parity of the image source, run through the embedded Ballista cluster (client
//! codec -> scheduler -> executor -> ImageDecodeExec): per-file rows of Spark's own test
//! images and of the synthetic edge cases, and the 19 load scenarios of `loads.json`
//! (the checks are in `dlp_tests::parity`, shared with the object-storage tests).

use std::collections::BTreeMap;

use datafusion::prelude::SessionContext;
use dlp_plugin::image::origin_uri;
use dlp_tests::parity::{check_expected, check_load_scenarios, check_spark_images, read};
use dlp_tests::shared_data;
use serde_json::Value;

async fn context() -> SessionContext {
    dlp_plugin::embedded::standalone_context(Some(2))
        .await
        .expect("embedded cluster")
}

#[tokio::test]
async fn spark_test_images_decode_byte_identical() {
    let ctx = context().await;
    let images = shared_data().join("spark-images/images");
    let prefix = origin_uri(&images.to_string_lossy());
    check_spark_images(&ctx, &images.to_string_lossy(), &prefix).await;
}

#[tokio::test]
async fn synthetic_edge_cases_match_spark() {
    let ctx = context().await;
    let dir = shared_data().join("spark-images/synthetic");
    let base = shared_data().join("spark-images");
    let expected: Vec<Value> = serde_json::from_str(
        &std::fs::read_to_string(shared_data().join("spark-images/synthetic_expected.json"))
            .unwrap(),
    )
    .unwrap();
    for decode_webp in ["false", "true"] {
        let (_, rows) = read(
            &ctx,
            &dir.to_string_lossy(),
            &origin_uri(&base.to_string_lossy()),
            &[("decodeWebp", decode_webp)],
        )
        .await
        .unwrap();
        let by_path: BTreeMap<_, _> = rows.iter().map(|r| (r.path.clone(), r)).collect();
        let with_rows: Vec<&Value> = expected.iter().filter(|e| e.get("row").is_none()).collect();
        assert_eq!(rows.len(), with_rows.len(), "zero-byte files give no row");
        for e in &expected {
            let path = e["path"].as_str().unwrap();
            if e.get("row").is_some() {
                assert!(!by_path.contains_key(path), "{path} must give no row");
                continue;
            }
            let row = by_path[path];
            if path.ends_with(".webp") && decode_webp == "true" {
                // Documented extension: WebP decodes (Spark reports it invalid).
                assert_eq!((row.height, row.width, row.n_channels), (4, 5, 3), "{path}");
                continue;
            }
            // SPEC.md: bare CMYK JPEG colours are out of scope; shape must still match.
            let pixels = !path.ends_with("cmyk.jpg");
            check_expected(row, e, pixels);
        }
    }
}

#[tokio::test]
async fn load_scenarios_match_spark() {
    let ctx = context().await;
    let images = shared_data().join("spark-images/images");
    let prefix = origin_uri(&images.to_string_lossy());
    let root_of = |load: &str| {
        std::path::absolute(images.join(load))
            .unwrap()
            .to_string_lossy()
            .into_owned()
    };
    check_load_scenarios(&ctx, root_of, &prefix).await;
}

//! Spark parity of the image source, shared by the local tests (`spark_parity.rs`) and
//! the object-storage ones (`s3.rs`): the rows a read gives, checked against Spark's
//! `expected.json` and its 19 load scenarios (`loads.json`).

use std::collections::{BTreeMap, BTreeSet};

use datafusion::arrow::array::{Array, AsArray, RecordBatch};
use datafusion::arrow::datatypes::Int32Type;
use datafusion::prelude::SessionContext;
use dlp_plugin::ImageContextExt;
use dlp_plugin::image::ImageReadOptions;
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::{hex, shared_data};

/// One row as the checks compare it.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    pub path: String,
    pub height: i32,
    pub width: i32,
    pub n_channels: i32,
    pub mode: i32,
    pub data_len: usize,
    pub sha256: String,
    pub partitions: BTreeMap<String, Option<String>>,
}

/// Reads `root` (a path or URL) with `opts`: the columns and the rows, each row's path
/// relative to `prefix` (the origin of the folder the expectations are relative to).
pub async fn read(
    ctx: &SessionContext,
    root: &str,
    prefix: &str,
    opts: &[(&str, &str)],
) -> datafusion::common::Result<(Vec<String>, Vec<Row>)> {
    let options = ImageReadOptions::from_pairs(opts.iter().copied())?;
    let df = ctx.read_images(root, options).await?;
    let columns: Vec<String> = df
        .schema()
        .fields()
        .iter()
        .map(|f| f.name().clone())
        .collect();
    let batches: Vec<RecordBatch> = df.collect().await?;
    let prefix = format!("{}/", prefix.trim_end_matches('/'));
    let mut rows = Vec::new();
    for b in &batches {
        let image = b.column(0).as_struct();
        let origin = image.column(0).as_string::<i32>();
        let int = |i: usize| image.column(i).as_primitive::<Int32Type>().clone();
        let (h, w, c, m) = (int(1), int(2), int(3), int(4));
        let data = image.column(5).as_binary::<i32>();
        for r in 0..b.num_rows() {
            let mut partitions = BTreeMap::new();
            for (f, col) in b.schema().fields().iter().zip(b.columns()).skip(1) {
                let s = col.as_string::<i32>();
                partitions.insert(
                    f.name().clone(),
                    s.is_valid(r).then(|| s.value(r).to_string()),
                );
            }
            let o = origin.value(r);
            rows.push(Row {
                path: o.strip_prefix(&prefix).unwrap_or(o).to_string(),
                height: h.value(r),
                width: w.value(r),
                n_channels: c.value(r),
                mode: m.value(r),
                data_len: data.value(r).len(),
                sha256: hex(&Sha256::digest(data.value(r))),
                partitions,
            });
        }
    }
    Ok((columns, rows))
}

/// Checks a row against one entry of Spark's expectations.
pub fn check_expected(row: &Row, e: &Value, compare_pixels: bool) {
    let int = |k: &str| e[k].as_i64().unwrap_or_else(|| panic!("{k} in {e}")) as i32;
    let what = &row.path;
    assert_eq!(
        row.n_channels > 0,
        e["valid"].as_bool().unwrap(),
        "valid: {what}"
    );
    assert_eq!(row.height, int("height"), "height: {what}");
    assert_eq!(row.width, int("width"), "width: {what}");
    assert_eq!(row.n_channels, int("nChannels"), "nChannels: {what}");
    assert_eq!(row.mode, int("mode"), "mode: {what}");
    assert_eq!(
        row.data_len as i64,
        e["data_len"].as_i64().unwrap(),
        "data_len: {what}"
    );
    if compare_pixels {
        assert_eq!(
            row.sha256,
            e["data_sha256"].as_str().unwrap(),
            "data_sha256: {what}"
        );
    }
}

/// Spark's own test images under `root` (a copy of `spark-images/images`, whose origin is
/// `prefix`), read recursively: byte-identical rows.
pub async fn check_spark_images(ctx: &SessionContext, root: &str, prefix: &str) {
    let expected: Vec<Value> = serde_json::from_str(
        &std::fs::read_to_string(shared_data().join("spark-images/expected.json")).unwrap(),
    )
    .unwrap();
    let (_, rows) = read(ctx, root, prefix, &[("recursiveFileLookup", "true")])
        .await
        .unwrap();
    assert_eq!(rows.len(), expected.len());
    let by_path: BTreeMap<_, _> = rows.iter().map(|r| (r.path.clone(), r)).collect();
    for e in &expected {
        let path = e["path"].as_str().unwrap();
        let row = by_path
            .get(path)
            .unwrap_or_else(|| panic!("no row for {path}"));
        // JPEGs included: libjpeg-turbo gives Spark's exact bytes.
        check_expected(row, e, true);
    }
}

/// The 19 load scenarios of `loads.json`: `root_of` gives the path or URL of a scenario's
/// `load` (relative to a copy of `spark-images/images`, whose origin is `prefix`).
pub async fn check_load_scenarios(
    ctx: &SessionContext,
    root_of: impl Fn(&str) -> String,
    prefix: &str,
) {
    let loads: Value = serde_json::from_str(
        &std::fs::read_to_string(shared_data().join("spark-images/loads.json")).unwrap(),
    )
    .unwrap();
    let scenarios = loads["loads"].as_array().unwrap();
    assert_eq!(scenarios.len(), 19);
    for s in scenarios {
        let name = s["name"].as_str().unwrap();
        let root = root_of(s["load"].as_str().unwrap());
        let opts: Vec<(String, String)> = s["options"]
            .as_object()
            .unwrap()
            .iter()
            .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_string()))
            .collect();
        let opts: Vec<(&str, &str)> = opts.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let result = read(ctx, &root, prefix, &opts).await;
        if let Some(err) = s.get("error") {
            let e = result.expect_err(name).to_string();
            assert!(
                e.contains(err.as_str().unwrap().trim_matches(['[', ']'])),
                "{name}: {e}"
            );
            continue;
        }
        let (columns, rows) = result.unwrap_or_else(|e| panic!("{name}: {e}"));
        let expected_columns: Vec<String> = s["columns"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c.as_str().unwrap().to_string())
            .collect();
        assert_eq!(columns, expected_columns, "{name}: columns");
        assert_eq!(
            rows.len() as u64,
            s["count"].as_u64().unwrap(),
            "{name}: count"
        );
        let got: BTreeSet<(String, BTreeMap<String, Option<String>>)> = rows
            .iter()
            .map(|r| (r.path.clone(), r.partitions.clone()))
            .collect();
        let want: BTreeSet<(String, BTreeMap<String, Option<String>>)> = s["rows"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| {
                let obj = r.as_object().unwrap();
                let parts = obj
                    .iter()
                    .filter(|(k, _)| *k != "path")
                    .map(|(k, v)| (k.clone(), v.as_str().map(str::to_string)))
                    .collect();
                (obj["path"].as_str().unwrap().to_string(), parts)
            })
            .collect();
        assert_eq!(got, want, "{name}: rows");
    }
}

//! Deterministic row assignment for `randomSplit` and k-fold cross-validation.
//!
//! Spark's `randomSplit` draws a random number per row from a per-partition generator, so
//! the split depends on how rows are partitioned. Here each row's draw is a hash of a key
//! and the seed: the same row lands in the same split on the embedded cluster and on any
//! cluster, whatever the partitioning. The default key is the last two components of the
//! image's `origin` (`daisy/5547758_eea9edfd54_n.jpg`: the label folder and the file), so
//! the same image folder splits the same wherever it is mounted.

use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, AsArray, Float64Builder};
use datafusion::arrow::datatypes::DataType;
use datafusion::common::{DFSchema, Result, ScalarValue, exec_err, plan_err};
use datafusion::dataframe::DataFrame;
use datafusion::logical_expr::{
    ColumnarValue, Expr, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, Volatility, lit,
};
use datafusion::prelude::{cast, col};

/// Name of the SQL function `dlp_hash_unit(key, seed)`: a uniform draw in [0, 1) that is a
/// pure function of the key's text and the seed.
pub const HASH_UNIT: &str = "dlp_hash_unit";

/// The draw of one key: FNV-1a + SplitMix64 (the hash of the image source's `sampleRatio`).
pub fn hash_unit(key: &[u8], seed: u64) -> f64 {
    crate::image::listing::unit_hash(seed, key)
}

#[derive(Debug, PartialEq, Eq, Hash)]
struct HashUnit {
    signature: Signature,
}

impl ScalarUDFImpl for HashUnit {
    fn name(&self) -> &str {
        HASH_UNIT
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn return_type(&self, _: &[DataType]) -> Result<DataType> {
        Ok(DataType::Float64)
    }
    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let seed = match &args.args[1] {
            ColumnarValue::Scalar(ScalarValue::Int64(Some(s))) => *s as u64,
            other => {
                return exec_err!("{HASH_UNIT}: seed must be a BIGINT literal, found {other:?}");
            }
        };
        let keys: ArrayRef = args.args[0].to_array(args.number_rows)?;
        let keys = datafusion::arrow::compute::cast(&keys, &DataType::Utf8)?;
        let keys = keys.as_string::<i32>();
        let mut out = Float64Builder::with_capacity(keys.len());
        for i in 0..keys.len() {
            if keys.is_null(i) {
                out.append_null();
            } else {
                out.append_value(hash_unit(keys.value(i).as_bytes(), seed));
            }
        }
        Ok(ColumnarValue::Array(Arc::new(out.finish())))
    }
}

/// The `dlp_hash_unit(key, seed)` function (registered on clients, schedulers, executors).
pub fn hash_unit_udf() -> ScalarUDF {
    ScalarUDF::new_from_impl(HashUnit {
        signature: Signature::any(2, Volatility::Immutable),
    })
}

/// The key expression of a DataFrame: `key_col` when given (its whole text), else the last
/// two path components of the image's `origin` (column `image`), else of a column named
/// `origin` or `path`. Two files whose folder and name are equal (in different subtrees)
/// share a draw, and so a split: nothing is lost, the split is only less random for them.
pub fn key_expr(schema: &DFSchema, key_col: Option<&str>) -> Result<Expr> {
    let has = |name: &str| schema.field_with_unqualified_name(name).ok();
    if let Some(k) = key_col {
        return match has(k) {
            Some(_) => Ok(col(k)),
            None => plan_err!(
                "keyCol: no column '{k}' in the input (columns: {})",
                column_names(schema)
            ),
        };
    }
    if let Some(f) = has(crate::image::schema::IMAGE_COLUMN)
        && crate::image::schema::is_image_type(f.data_type())
    {
        return Ok(path_tail(datafusion::functions::core::expr_fn::get_field(
            col(crate::image::schema::IMAGE_COLUMN),
            "origin",
        )));
    }
    for name in ["origin", "path"] {
        if has(name).is_some() {
            return Ok(path_tail(col(name)));
        }
    }
    plan_err!(
        "randomSplit needs a column that identifies each row (an image column, 'origin' or \
         'path', or keyCol); columns: {}",
        column_names(schema)
    )
}

/// The default key of an origin: `file:///data/flowers/daisy/1.jpg` -> `daisy/1.jpg` (a
/// path without two non-empty components is kept whole). [`key_expr`] computes the same.
pub fn origin_key(origin: &str) -> &str {
    let mut parts = origin.rsplitn(3, '/');
    match (parts.next(), parts.next(), parts.next()) {
        (Some(file), Some(dir), Some(_)) if !file.is_empty() && !dir.is_empty() => {
            &origin[origin.len() - file.len() - dir.len() - 1..]
        }
        _ => origin,
    }
}

/// [`origin_key`] as an expression.
fn path_tail(path: Expr) -> Expr {
    datafusion::functions::regex::expr_fn::regexp_replace(
        cast(path, DataType::Utf8),
        lit(r"^.*/([^/]+/[^/]+)$"),
        lit("${1}"),
        None,
    )
}

fn column_names(schema: &DFSchema) -> String {
    schema
        .fields()
        .iter()
        .map(|f| f.name().as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

/// The uniform draw of each row, as an expression.
pub fn unit_expr(key: Expr, seed: u64) -> Expr {
    hash_unit_udf().call(vec![cast(key, DataType::Utf8), lit(seed as i64)])
}

/// Spark's `randomSplit(weights, seed)`: one DataFrame per weight (weights are normalized),
/// each row in exactly one of them, decided by the hash of its key and the seed.
pub fn random_split(
    df: &DataFrame,
    weights: &[f64],
    seed: u64,
    key_col: Option<&str>,
) -> Result<Vec<DataFrame>> {
    if weights.is_empty() || weights.iter().any(|w| !w.is_finite() || *w < 0.0) {
        return plan_err!("randomSplit: weights must be non-negative numbers, found {weights:?}");
    }
    let total: f64 = weights.iter().sum();
    if total <= 0.0 {
        return plan_err!("randomSplit: the weights sum to 0 ({weights:?})");
    }
    let u = unit_expr(key_expr(df.schema(), key_col)?, seed);
    let mut lo = 0.0;
    let mut out = Vec::with_capacity(weights.len());
    for (i, w) in weights.iter().enumerate() {
        let hi = if i + 1 == weights.len() {
            f64::INFINITY
        } else {
            lo + w / total
        };
        let pred = u.clone().gt_eq(lit(lo)).and(u.clone().lt(lit(hi)));
        out.push(df.clone().filter(pred)?);
        lo = hi;
    }
    Ok(out)
}

/// Rows of fold `fold` of `num_folds` (`holdout = true`) or all the others.
pub fn fold_filter(
    df: &DataFrame,
    key: Expr,
    seed: u64,
    num_folds: usize,
    fold: usize,
    holdout: bool,
) -> Result<DataFrame> {
    let u = unit_expr(key, seed);
    let lo = fold as f64 / num_folds as f64;
    let hi = if fold + 1 == num_folds {
        f64::INFINITY
    } else {
        (fold + 1) as f64 / num_folds as f64
    };
    let inside = u.clone().gt_eq(lit(lo)).and(u.lt(lit(hi)));
    df.clone().filter(if holdout { inside } else { !inside })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origin_key_is_the_folder_and_the_file() {
        assert_eq!(
            origin_key("file:///data/flowers/daisy/1.jpg"),
            "daisy/1.jpg"
        );
        assert_eq!(origin_key("file:///elsewhere/daisy/1.jpg"), "daisy/1.jpg");
        assert_eq!(origin_key("/a/b"), "a/b");
        assert_eq!(origin_key("a/b"), "a/b");
        assert_eq!(origin_key("x//b"), "x//b");
        assert_eq!(origin_key("b"), "b");
    }

    #[tokio::test]
    async fn the_key_expression_is_origin_key() {
        use datafusion::arrow::array::{RecordBatch, StringArray};
        use datafusion::arrow::datatypes::{Field, Schema};
        let origins = [
            "file:///data/flowers/daisy/1.jpg",
            "file:///elsewhere/daisy/1.jpg",
            "/a/b",
            "a/b",
            "x//b",
            "b",
        ];
        let schema = Arc::new(Schema::new(vec![Field::new(
            "origin",
            DataType::Utf8,
            false,
        )]));
        let batch = RecordBatch::try_new(
            schema,
            vec![Arc::new(StringArray::from(origins.to_vec())) as ArrayRef],
        )
        .unwrap();
        let ctx = datafusion::prelude::SessionContext::new();
        let df = ctx.read_batch(batch).unwrap();
        let key = key_expr(df.schema(), None).unwrap();
        let out = df
            .select(vec![key.alias("k")])
            .unwrap()
            .collect()
            .await
            .unwrap();
        let got: Vec<String> = out[0]
            .column(0)
            .as_string::<i32>()
            .iter()
            .map(|v| v.unwrap().to_string())
            .collect();
        let want: Vec<String> = origins.iter().map(|o| origin_key(o).to_string()).collect();
        assert_eq!(got, want);
    }

    #[test]
    fn hash_unit_is_uniform_and_seeded() {
        let n = 20_000;
        let draws: Vec<f64> = (0..n)
            .map(|i| hash_unit(format!("file:///d/{i}.jpg").as_bytes(), 7))
            .collect();
        assert!(draws.iter().all(|u| (0.0..1.0).contains(u)));
        let below: usize = draws.iter().filter(|u| **u < 0.8).count();
        let share = below as f64 / n as f64;
        assert!((share - 0.8).abs() < 0.015, "share below 0.8: {share}");
        assert_ne!(hash_unit(b"a", 1), hash_unit(b"a", 2));
        assert_eq!(hash_unit(b"a", 1), hash_unit(b"a", 1));
    }
}

//! [`MaterializeExec`]: the training data's one pass. Each partition of the training
//! DataFrame is checked (features, label, weight), written once as an Arrow IPC part file in
//! the run's work dir, cached in the executor's memory, and summarized; the operator
//! returns one row per partition with the part's path and [`Summary`].

use std::fmt;
use std::path::Path;
use std::sync::Arc;

use datafusion::arrow::array::{RecordBatch, StringArray, UInt64Array};
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::common::{Result, exec_datafusion_err};
use datafusion::execution::SendableRecordBatchStream;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use futures::TryStreamExt;

use super::data::{CachedPart, cache_put};
use super::data::{Columns, Rows};
use super::node::{LOG_TARGET, MaterializeSpec, materialize_schema};
use super::operator::{LrExec, LrStep, StepMetrics};
use super::summary::Summary;

/// Writes the training data's parts (see the module docs).
pub type MaterializeExec = LrExec<MaterializeSpec>;

impl LrStep for MaterializeSpec {
    const NAME: &'static str = "LrMaterializeExec";

    fn output_schema(&self, _input: &SchemaRef) -> Result<SchemaRef> {
        Ok(materialize_schema())
    }

    fn describe(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "dir={}", self.run_dir)
    }

    fn run(
        &self,
        partition: usize,
        input: SendableRecordBatchStream,
        schema: SchemaRef,
        metrics: Arc<StepMetrics>,
    ) -> Result<SendableRecordBatchStream> {
        let spec = self.clone();
        let out = schema.clone();
        let fut = async move {
            let batches: Vec<RecordBatch> = input.try_collect().await?;
            tokio::task::spawn_blocking(move || {
                let timer = metrics.baseline.elapsed_compute().timer();
                let batch = materialize(partition, &spec, batches, out, &metrics)?;
                timer.done();
                metrics.baseline.record_output(batch.num_rows());
                Ok(batch)
            })
            .await
            .map_err(|e| exec_datafusion_err!("materialize task failed: {e}"))?
        };
        Ok(Box::pin(RecordBatchStreamAdapter::new(
            schema,
            futures::stream::once(fut),
        )))
    }
}

fn materialize(
    partition: usize,
    spec: &MaterializeSpec,
    batches: Vec<RecordBatch>,
    schema: SchemaRef,
    metrics: &StepMetrics,
) -> Result<RecordBatch> {
    let started = std::time::Instant::now();
    let mut rows = Rows::default();
    let cols = Columns {
        features: &spec.features_col,
        label: &spec.label_col,
        weight: spec.weight_col.as_deref(),
    };
    let where_ = format!("input partition {partition}");
    for b in &batches {
        rows.push_batch(b, cols, &where_)?;
    }
    drop(batches);
    metrics.input_rows.add(rows.len());
    metrics
        .feature_bytes
        .add(rows.x.len() * if rows.float32 { 4 } else { 8 });
    let summary = Summary::of(&rows);
    let (row_count, key) = (rows.len(), order_key(&rows));
    let path = if rows.is_empty() {
        None
    } else {
        // The partition index is local to the task's slice of the input (Ballista
        // renumbers sliced leaves), so it cannot name the file: a random name can.
        let name = format!("part-{:016x}.arrow", rand::random::<u64>());
        let path = match crate::storage::url_of_path(Path::new(&spec.run_dir)) {
            // The work dir in object storage: executors that share no file system.
            Some(dir) => {
                crate::access::check_work_url(&dir).map_err(|e| exec_datafusion_err!("{e}"))?;
                let url = dir.join(&name);
                let bytes = bytes::Bytes::from(rows.to_ipc_bytes()?);
                let target = url.clone();
                crate::storage::io_blocking(
                    async move { crate::storage::put(&target, bytes).await },
                )
                .map_err(|e| e.context("writing a training part"))?;
                url.to_string()
            }
            None => {
                crate::access::check_work_path(Path::new(&spec.run_dir))
                    .map_err(|e| exec_datafusion_err!("{e}"))?;
                std::fs::create_dir_all(&spec.run_dir).map_err(|e| {
                    exec_datafusion_err!("cannot create the work dir {}: {e}", spec.run_dir)
                })?;
                let path = Path::new(&spec.run_dir).join(name);
                rows.write_ipc(&path)?;
                path.to_string_lossy().into_owned()
            }
        };
        cache_put(&path, CachedPart::from_rows(rows));
        Some(path)
    };
    tracing::info!(
        target: LOG_TARGET,
        partition,
        rows = row_count,
        ms = started.elapsed().as_millis() as u64,
        "training partition materialized"
    );
    let summary = serde_json::to_string(&summary)
        .map_err(|e| exec_datafusion_err!("cannot encode the summary: {e}"))?;
    Ok(RecordBatch::try_new(
        schema,
        vec![
            Arc::new(UInt64Array::from(vec![key])),
            Arc::new(StringArray::from(vec![path])),
            Arc::new(StringArray::from(vec![summary])),
        ],
    )?)
}

/// A key that orders parts the same way whatever task layout produced them (the driver
/// sums partial results in this order): a hash of the row count and the first row.
fn order_key(rows: &Rows) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    rows.len().hash(&mut h);
    for v in rows.x.iter().take(rows.dim).chain(rows.y.first()) {
        v.to_bits().hash(&mut h);
    }
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::{Array, AsArray, FixedSizeListArray, Float64Array};
    use datafusion::physical_plan::metrics::ExecutionPlanMetricsSet;

    use crate::ml::node::vector_field;

    #[test]
    fn writes_one_part_per_partition_with_its_summary_and_metrics() {
        let dir = tempfile::tempdir().unwrap();
        let features = FixedSizeListArray::try_new(
            vector_field(),
            2,
            Arc::new(Float64Array::from(vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0])),
            None,
        )
        .unwrap();
        let input = Arc::new(datafusion::arrow::datatypes::Schema::new(vec![
            datafusion::arrow::datatypes::Field::new(
                "features",
                features.data_type().clone(),
                true,
            ),
            datafusion::arrow::datatypes::Field::new(
                "label",
                datafusion::arrow::datatypes::DataType::Float64,
                true,
            ),
        ]));
        let batch = RecordBatch::try_new(
            input,
            vec![
                Arc::new(features),
                Arc::new(Float64Array::from(vec![0.0, 1.0, 1.0])),
            ],
        )
        .unwrap();
        let spec = MaterializeSpec {
            run_dir: dir.path().join("run").to_string_lossy().into_owned(),
            features_col: "features".into(),
            label_col: "label".into(),
            weight_col: None,
        };
        let set = ExecutionPlanMetricsSet::new();
        let metrics = StepMetrics::new(&set, 0);
        let out = materialize(0, &spec, vec![batch], materialize_schema(), &metrics).unwrap();
        assert_eq!(out.num_rows(), 1);
        let path = out.column(1).as_string::<i32>().value(0).to_string();
        assert!(Path::new(&path).is_file(), "{path}");
        let summary = out.column(2).as_string::<i32>().value(0);
        assert!(summary.contains('3'), "{summary}");
        assert_eq!(metrics.input_rows.value(), 3);
        assert_eq!(metrics.feature_bytes.value(), 6 * 8);
    }
}

//! [`GradientExec`]: one evaluation of the loss. Over a built-in `DataSourceExec` of chunks
//! (rows of a part file; one partition per task, so Ballista slices it per task), the loss
//! and gradient sums of each chunk for the parameters the plan carries, from the executor's
//! cached parts (read from the part file on a miss). One such job per optimizer evaluation.

use std::fmt;
use std::sync::Arc;

use datafusion::arrow::array::{
    AsArray, BinaryArray, Float64Array, RecordBatch, UInt32Array, UInt64Array,
};
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::common::{Result, exec_datafusion_err};
use datafusion::execution::SendableRecordBatchStream;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use futures::TryStreamExt;

use super::data::cache_get_or_load;
use super::loss::partial;
use super::node::{GradientSpec, LOG_TARGET, gradient_schema};
use super::operator::{LrExec, LrStep, StepMetrics};

/// Loss and gradient sums of the parts (see the module docs).
pub type GradientExec = LrExec<GradientSpec>;

impl LrStep for GradientSpec {
    const NAME: &'static str = "LrGradientExec";

    fn output_schema(&self, _input: &SchemaRef) -> Result<SchemaRef> {
        Ok(gradient_schema())
    }

    fn describe(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "run={}, evaluation={}", self.run_id, self.evaluation)
    }

    fn run(
        &self,
        _partition: usize,
        input: SendableRecordBatchStream,
        schema: SchemaRef,
        metrics: Arc<StepMetrics>,
    ) -> Result<SendableRecordBatchStream> {
        let spec = Arc::new(self.clone());
        let out = schema.clone();
        let stream = input.and_then(move |batch| {
            let (spec, out, metrics) = (spec.clone(), out.clone(), metrics.clone());
            async move {
                tokio::task::spawn_blocking(move || {
                    let timer = metrics.baseline.elapsed_compute().timer();
                    let b = gradient(&spec, &batch, out, &metrics)?;
                    timer.done();
                    metrics.baseline.record_output(b.num_rows());
                    Ok(b)
                })
                .await
                .map_err(|e| exec_datafusion_err!("gradient task failed: {e}"))?
            }
        });
        Ok(Box::pin(RecordBatchStreamAdapter::new(schema, stream)))
    }
}

fn gradient(
    spec: &GradientSpec,
    batch: &RecordBatch,
    schema: SchemaRef,
    metrics: &StepMetrics,
) -> Result<RecordBatch> {
    use datafusion::arrow::datatypes::{UInt32Type, UInt64Type};
    let parts = batch.column(0).as_primitive::<UInt32Type>();
    let paths = batch.column(1).as_string::<i32>();
    let offsets = batch.column(2).as_primitive::<UInt64Type>();
    let lens = batch.column(3).as_primitive::<UInt64Type>();
    let (mut ids, mut starts, mut rows, mut losses, mut grads, mut secs) =
        (vec![], vec![], vec![], vec![], vec![], vec![]);
    for i in 0..batch.num_rows() {
        let started = std::time::Instant::now();
        let (part, offset, len) = (parts.value(i), offsets.value(i), lens.value(i));
        let range = offset as usize..(offset + len) as usize;
        let (part_data, hit) = cache_get_or_load(paths.value(i))?;
        let p = partial(
            &part_data,
            range,
            &spec.layout,
            &spec.inv_std,
            &spec.params,
            spec.class_weights.as_deref(),
        )
        .map_err(|e| exec_datafusion_err!("training part {}: {e}", paths.value(i)))?;
        tracing::info!(
            target: LOG_TARGET,
            run = %spec.run_id,
            evaluation = spec.evaluation,
            part,
            offset,
            rows = len,
            cache_hit = hit,
            ms = started.elapsed().as_millis() as u64,
            "partial gradient"
        );
        metrics.input_rows.add(len as usize);
        metrics
            .feature_bytes
            .add(len as usize * part_data.dim * part_data.x.value_bytes());
        ids.push(part);
        starts.push(offset);
        rows.push(len);
        losses.push(p.loss);
        grads.push(
            p.grad
                .iter()
                .flat_map(|v| v.to_le_bytes())
                .collect::<Vec<u8>>(),
        );
        secs.push(started.elapsed().as_secs_f64());
    }
    Ok(RecordBatch::try_new(
        schema,
        vec![
            Arc::new(UInt32Array::from(ids)),
            Arc::new(UInt64Array::from(starts)),
            Arc::new(UInt64Array::from(rows)),
            Arc::new(Float64Array::from(losses)),
            Arc::new(BinaryArray::from_iter_values(grads.iter())),
            Arc::new(Float64Array::from(secs)),
        ],
    )?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ml::data::{CachedPart, Rows, cache_put};
    use crate::ml::loss::Layout;
    use crate::ml::node::chunks_schema;
    use datafusion::arrow::array::StringArray;
    use datafusion::physical_plan::metrics::ExecutionPlanMetricsSet;

    #[test]
    fn sums_of_a_cached_part_equal_the_loss_module() {
        let rows = Rows {
            dim: 2,
            x: vec![1.0, 2.0, -1.0, 0.5, 3.0, -2.0],
            y: vec![0.0, 1.0, 1.0],
            w: vec![1.0, 1.0, 2.0],
            float32: false,
        };
        let path = "/nonexistent/dlp-gradient-test/part-0.arrow";
        cache_put(path, CachedPart::from_rows(rows.clone()));
        let layout = Layout {
            multinomial: false,
            sets: 1,
            dim: 2,
            fit_intercept: true,
        };
        let spec = GradientSpec {
            run_id: "t".into(),
            evaluation: 0,
            layout,
            inv_std: vec![1.0, 1.0],
            params: vec![0.5, -0.25, 0.1],
            parts: vec![path.into()],
            part_rows: vec![3],
            chunk_rows: 2048,
            class_weights: None,
        };
        // The whole part, and its last two rows as a chunk of their own.
        let batch = RecordBatch::try_new(
            chunks_schema(),
            vec![
                Arc::new(UInt32Array::from(vec![0u32, 0])),
                Arc::new(StringArray::from(vec![path, path])),
                Arc::new(UInt64Array::from(vec![0u64, 1])),
                Arc::new(UInt64Array::from(vec![3u64, 2])),
            ],
        )
        .unwrap();
        let set = ExecutionPlanMetricsSet::new();
        let metrics = StepMetrics::new(&set, 0);
        let out = gradient(&spec, &batch, gradient_schema(), &metrics).unwrap();
        let part_data = CachedPart::from_rows(rows.clone());
        let losses = out
            .column(3)
            .as_primitive::<datafusion::arrow::datatypes::Float64Type>();
        for (i, range) in [0..3, 1..3].into_iter().enumerate() {
            let want = partial(
                &part_data,
                range,
                &layout,
                &spec.inv_std,
                &spec.params,
                None,
            )
            .unwrap()
            .loss;
            let loss = losses.value(i);
            assert!((loss - want).abs() < 1e-12, "chunk {i}: {loss} vs {want}");
        }
        let offsets = out
            .column(1)
            .as_primitive::<datafusion::arrow::datatypes::UInt64Type>();
        assert_eq!(offsets.values().to_vec(), vec![0, 1]);
        assert_eq!(metrics.input_rows.value(), 5);
        crate::ml::data::cache_evict_dir("/nonexistent/dlp-gradient-test");
    }
}

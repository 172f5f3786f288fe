//! [`PredictExec`]: a fitted model over a features column, MLlib's `rawPrediction`,
//! `probability` and `prediction` columns appended; the model SQL functions call
//! [`predict`] directly.

use std::fmt;
use std::sync::Arc;

use datafusion::arrow::array::{Array, FixedSizeListBuilder, Float64Builder, RecordBatch};
use datafusion::arrow::datatypes::{Schema, SchemaRef};
use datafusion::common::{Result, exec_datafusion_err};
use datafusion::execution::SendableRecordBatchStream;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use futures::StreamExt;

use super::data::{extend_f64, vector_rows};
use super::node::{PredictSpec, vector_field};
use super::operator::{LrExec, LrStep, StepMetrics};

/// Applies a fitted model (see the module docs).
pub type PredictExec = LrExec<PredictSpec>;

impl LrStep for PredictSpec {
    const NAME: &'static str = "LrPredictExec";

    fn output_schema(&self, input: &SchemaRef) -> Result<SchemaRef> {
        input.index_of(&self.features_col)?;
        let mut fields: Vec<_> = input.fields().iter().cloned().collect();
        fields.extend(self.output_fields().into_iter().map(Arc::new));
        Ok(Arc::new(Schema::new_with_metadata(
            fields,
            input.metadata().clone(),
        )))
    }

    fn describe(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "classes={}", self.num_classes)
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
        let stream = input
            .map(move |batch| {
                let (spec, out, metrics) = (spec.clone(), out.clone(), metrics.clone());
                async move {
                    let batch = batch?;
                    tokio::task::spawn_blocking(move || {
                        let timer = metrics.baseline.elapsed_compute().timer();
                        let b = predict(&spec, &batch, out)?;
                        timer.done();
                        metrics.input_rows.add(batch.num_rows());
                        metrics.feature_bytes.add(batch.num_rows() * spec.dim * 8);
                        metrics.baseline.record_output(b.num_rows());
                        Ok(b)
                    })
                    .await
                    .map_err(|e| exec_datafusion_err!("predict task failed: {e}"))?
                }
            })
            .buffered(2);
        Ok(Box::pin(RecordBatchStreamAdapter::new(schema, stream)))
    }
}

/// MLlib's outputs for one row of margins.
fn outputs(spec: &PredictSpec, margins: &[f64]) -> (Vec<f64>, Vec<f64>, f64) {
    if !spec.multinomial {
        let m = margins[0];
        let p1 = 1.0 / (1.0 + (-m).exp());
        let prediction = if p1 > spec.threshold { 1.0 } else { 0.0 };
        return (vec![-m, m], vec![1.0 - p1, p1], prediction);
    }
    let max = margins.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    let exps: Vec<f64> = margins.iter().map(|m| (m - max).exp()).collect();
    let sum: f64 = exps.iter().sum();
    let probs: Vec<f64> = exps.iter().map(|e| e / sum).collect();
    let score = |i: usize| match &spec.thresholds {
        Some(t) if t[i] == 0.0 => f64::INFINITY,
        Some(t) => probs[i] / t[i],
        None => margins[i],
    };
    let mut best = 0;
    for i in 1..margins.len() {
        if score(i) > score(best) {
            best = i;
        }
    }
    (margins.to_vec(), probs, best as f64)
}

pub(crate) fn predict(
    spec: &PredictSpec,
    batch: &RecordBatch,
    schema: SchemaRef,
) -> Result<RecordBatch> {
    let idx = batch.schema().index_of(&spec.features_col)?;
    let col = batch.column(idx);
    let k = spec.num_classes;
    let sets = if spec.multinomial { k } else { 1 };
    let d = spec.dim;
    let mut raw =
        FixedSizeListBuilder::new(Float64Builder::new(), k as i32).with_field(vector_field());
    let mut prob =
        FixedSizeListBuilder::new(Float64Builder::new(), k as i32).with_field(vector_field());
    let mut pred = Float64Builder::new();
    let (values, offsets) = vector_rows(col, &spec.features_col)?;
    let mut x = Vec::with_capacity(d);
    let mut margins = vec![0.0f64; sets];
    for (row, &(start, len)) in offsets.iter().enumerate() {
        if col.is_null(row) {
            for b in [&mut raw, &mut prob] {
                b.values().append_nulls(k);
                b.append(false);
            }
            pred.append_null();
            continue;
        }
        if len != d {
            return Err(exec_datafusion_err!(
                "features column '{}' has a vector of length {len} at row {row}; the model expects {d}",
                spec.features_col
            ));
        }
        x.clear();
        extend_f64(values, start, len, &mut x, &spec.features_col)?;
        for (c, m) in margins.iter_mut().enumerate() {
            let w = &spec.coefficients[c * d..(c + 1) * d];
            *m = spec.intercepts[c] + w.iter().zip(&x).map(|(w, x)| w * x).sum::<f64>();
        }
        let (r, p, y) = outputs(spec, &margins);
        raw.values().append_slice(&r);
        raw.append(true);
        prob.values().append_slice(&p);
        prob.append(true);
        pred.append_value(y);
    }
    let mut columns = batch.columns().to_vec();
    columns.push(Arc::new(raw.finish()));
    columns.push(Arc::new(prob.finish()));
    columns.push(Arc::new(pred.finish()));
    Ok(RecordBatch::try_new(schema, columns)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::{AsArray, FixedSizeListArray, Float64Array};
    use datafusion::arrow::buffer::NullBuffer;
    use datafusion::arrow::datatypes::{Field, Float64Type};

    fn spec(
        multinomial: bool,
        classes: usize,
        coefficients: Vec<f64>,
        intercepts: Vec<f64>,
    ) -> PredictSpec {
        PredictSpec {
            num_classes: classes,
            multinomial,
            dim: 2,
            coefficients,
            intercepts,
            threshold: 0.5,
            thresholds: None,
            features_col: "features".into(),
            raw_prediction_col: "rawPrediction".into(),
            probability_col: "probability".into(),
            prediction_col: "prediction".into(),
        }
    }

    fn batch() -> RecordBatch {
        let features = FixedSizeListArray::try_new(
            vector_field(),
            2,
            Arc::new(Float64Array::from(vec![2.0, 1.0, 0.0, 0.0, -3.0, 1.0])),
            Some(NullBuffer::from(vec![true, false, true])),
        )
        .unwrap();
        let schema = Arc::new(Schema::new(vec![Field::new(
            "features",
            features.data_type().clone(),
            true,
        )]));
        RecordBatch::try_new(schema, vec![Arc::new(features)]).unwrap()
    }

    #[test]
    fn binomial_predictions_follow_mllib_and_keep_nulls() {
        let spec = spec(false, 2, vec![1.0, -1.0], vec![0.0]);
        let input = batch();
        let out = predict(&spec, &input, spec.output_schema(&input.schema()).unwrap()).unwrap();
        let prediction = out.column(3).as_primitive::<Float64Type>();
        // margins: 2 - 1 = 1 (p1 = 0.73 > 0.5), null, -3 - 1 = -4.
        assert_eq!(prediction.value(0), 1.0);
        assert!(prediction.is_null(1));
        assert_eq!(prediction.value(2), 0.0);
        let probability = out.column(2).as_fixed_size_list();
        let p = probability.value(0);
        let p = p.as_primitive::<Float64Type>();
        assert!((p.value(1) - 1.0 / (1.0 + (-1.0f64).exp())).abs() < 1e-12);
        assert!((p.value(0) + p.value(1) - 1.0).abs() < 1e-12);
    }

    #[test]
    fn multinomial_takes_the_largest_margin_and_checks_the_length() {
        let spec = spec(
            true,
            3,
            vec![1.0, 0.0, 0.0, 1.0, -1.0, -1.0],
            vec![0.0, 0.0, 0.5],
        );
        let input = batch();
        let out = predict(&spec, &input, spec.output_schema(&input.schema()).unwrap()).unwrap();
        let prediction = out.column(3).as_primitive::<Float64Type>();
        // row 0 margins (2, 1, -2.5) -> class 0; row 2 (-3, 1, 2.5) -> class 2.
        assert_eq!((prediction.value(0), prediction.value(2)), (0.0, 2.0));
        let mut wrong = spec.clone();
        wrong.dim = 3;
        let e = predict(&wrong, &input, spec.output_schema(&input.schema()).unwrap()).unwrap_err();
        assert!(e.to_string().contains("the model expects 3"), "{e}");
    }
}

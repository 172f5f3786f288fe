//! The estimator's driver loop. Materializes the training columns once (one job), then
//! runs the optimizer; every evaluation of the loss is one Ballista job whose tasks compute
//! partial sums on the executors, one task per slot of the cluster. Only those sums (one row
//! per chunk of at least 2,048 rows) come back.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use datafusion::arrow::array::{Array, AsArray, RecordBatch};
use datafusion::arrow::datatypes::{Float64Type, UInt32Type, UInt64Type};
use datafusion::common::{Result, exec_datafusion_err, plan_err};
use datafusion::dataframe::DataFrame;
use datafusion::execution::context::SessionState;
use datafusion::prelude::col;

use super::data::cache_evict_dir;
use super::loss::{Layout, Partial, Regularization};
use super::model::{LogisticRegressionModel, TrainingSummary};
use super::node::{GradientSpec, MaterializeSpec, MlNode, MlStep, chunk_rows, input_type};
use super::optim::{Evaluate, minimize};
use super::params::{Family, LogisticRegressionParams};
use super::summary::Summary;

/// Spark MLlib's `LogisticRegression`, trained by gradient aggregation across executors.
#[derive(Debug, Clone, Default)]
pub struct LogisticRegression {
    pub params: LogisticRegressionParams,
}

/// Removes the run's work dir when the fit ends, however it ends.
struct RunDir(PathBuf);

impl Drop for RunDir {
    fn drop(&mut self) {
        cache_evict_dir(&self.0.to_string_lossy());
        if !crate::access::keep_work() {
            crate::storage::remove_work(&self.0);
        }
    }
}

/// Training data materialized on the executors, ready for any number of fits: Spark's
/// `df.cache()` before `fit`. The training columns are checked and written once as Arrow
/// IPC parts (one job); every loss job of every fit on it reads them, from the executors'
/// memory after the first. The parts are removed when the last clone is dropped.
#[derive(Clone)]
pub struct TrainingData {
    inner: Arc<Prepared>,
}

struct Prepared {
    _dir: RunDir,
    state: SessionState,
    parts: Vec<String>,
    /// Rows of each part.
    part_rows: Vec<u64>,
    summary: Summary,
    features_col: String,
    label_col: String,
    weight_col: Option<String>,
    seconds: f64,
}

impl std::fmt::Debug for TrainingData {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let p = &self.inner;
        f.debug_struct("TrainingData")
            .field("rows", &p.summary.rows)
            .field("features", &p.summary.dim)
            .field("parts", &p.parts.len())
            .field("featuresCol", &p.features_col)
            .field("labelCol", &p.label_col)
            .field("weightCol", &p.weight_col)
            .finish()
    }
}

impl TrainingData {
    /// Rows of the training data.
    pub fn rows(&self) -> u64 {
        self.inner.summary.rows
    }

    /// Length of the feature vectors.
    pub fn num_features(&self) -> usize {
        self.inner.summary.dim
    }

    /// Parts written on the executors (one per non-empty input partition).
    pub fn num_parts(&self) -> usize {
        self.inner.parts.len()
    }

    /// Seconds the materialization job took.
    pub fn materialize_seconds(&self) -> f64 {
        self.inner.seconds
    }
}

impl LogisticRegression {
    /// An estimator with these parameters.
    pub fn new(params: LogisticRegressionParams) -> Self {
        Self { params }
    }

    /// Fits the model on `df` (features and label columns, optional weight column).
    pub async fn fit(&self, df: DataFrame) -> Result<LogisticRegressionModel> {
        let data = self.prepare(df).await?;
        self.fit_data(&data, data.inner.seconds).await
    }

    /// Fits the model on data prepared by [`LogisticRegression::prepare`] (with the same
    /// `featuresCol`, `labelCol` and `weightCol`); the scan of the input is not repeated.
    pub async fn fit_prepared(&self, data: &TrainingData) -> Result<LogisticRegressionModel> {
        let p = &self.params;
        let d = &data.inner;
        for (param, wanted, prepared) in [
            ("featuresCol", Some(&p.features_col), Some(&d.features_col)),
            ("labelCol", Some(&p.label_col), Some(&d.label_col)),
            ("weightCol", p.weight_col.as_ref(), d.weight_col.as_ref()),
        ] {
            if wanted != prepared {
                return plan_err!(
                    "{param} is {:?} but the training data were prepared with {:?}; prepare them with the same columns",
                    wanted.map(String::as_str).unwrap_or("(none)"),
                    prepared.map(String::as_str).unwrap_or("(none)")
                );
            }
        }
        self.fit_data(data, 0.0).await
    }

    /// Materializes the training columns of `df` on the executors (one job) for
    /// [`LogisticRegression::fit_prepared`]: what Spark users do with `df.cache()` before
    /// fitting several models on the same data.
    pub async fn prepare(&self, df: DataFrame) -> Result<TrainingData> {
        let p = &self.params;
        p.validate()?;
        let started = Instant::now();
        let run_id = format!("{:016x}", rand::random::<u64>());
        let run_dir = p.resolved_work_dir().join(format!("lr-{run_id}"));
        let cleanup = RunDir(run_dir.clone());

        // Checked before the projection, so that the error names the parameter.
        input_type(df.schema(), "featuresCol", &p.features_col)?;
        input_type(df.schema(), "labelCol", &p.label_col)?;
        if let Some(w) = &p.weight_col {
            input_type(df.schema(), "weightCol", w)?;
        }
        let mut columns = vec![col(&p.features_col), col(&p.label_col)];
        if let Some(w) = &p.weight_col {
            columns.push(col(w));
        }
        // Project first so that only the needed columns travel.
        let (state, plan) = df.select(columns)?.into_parts();
        let node = MlNode::try_new(
            Some(plan),
            MlStep::Materialize(MaterializeSpec {
                run_dir: run_dir.to_string_lossy().into_owned(),
                features_col: p.features_col.clone(),
                label_col: p.label_col.clone(),
                weight_col: p.weight_col.clone(),
            }),
        )?;
        let input = DataFrame::new(state.clone(), node.into_plan());
        let (parts, summary) = self.materialize(input).await?;
        let (parts, part_rows) = parts.into_iter().unzip();
        Ok(TrainingData {
            inner: Arc::new(Prepared {
                _dir: cleanup,
                state,
                parts,
                part_rows,
                summary,
                features_col: p.features_col.clone(),
                label_col: p.label_col.clone(),
                weight_col: p.weight_col.clone(),
                seconds: started.elapsed().as_secs_f64(),
            }),
        })
    }

    async fn fit_data(
        &self,
        data: &TrainingData,
        materialize_seconds: f64,
    ) -> Result<LogisticRegressionModel> {
        let p = &self.params;
        p.validate()?;
        let started = Instant::now();
        let run_id = format!("{:016x}", rand::random::<u64>());
        let d = &data.inner;
        let s = &d.summary;
        let state = d.state.clone();

        if s.rows == 0 {
            return plan_err!("the training data is empty (no rows in the input DataFrame)");
        }
        if s.weight_sum <= 0.0 {
            return plan_err!(
                "weightCol '{}': the weights sum to 0",
                p.weight_col.as_deref().unwrap_or("")
            );
        }
        let present: Vec<usize> = (0..s.num_classes())
            .filter(|&k| s.class_counts[k] > 0)
            .collect();
        if present.len() < 2 {
            return plan_err!(
                "labelCol '{}' holds one class only ({:?}); logistic regression needs at least two",
                p.label_col,
                present
            );
        }
        let k = s.num_classes();
        let multinomial = match p.family {
            Family::Auto => k > 2,
            Family::Binomial if k > 2 => {
                return plan_err!(
                    "family=binomial needs labels 0 and 1, but labelCol '{}' has {k} classes; use family=multinomial",
                    p.label_col
                );
            }
            Family::Binomial => false,
            Family::Multinomial => true,
        };
        if let Some(t) = &p.thresholds
            && t.len() != k
        {
            return plan_err!("thresholds has {} values for {k} classes", t.len());
        }
        let dim = s.dim;
        let std = s.std();
        let inv_std: Vec<f64> = std
            .iter()
            .map(|&v| if v > 0.0 { 1.0 / v } else { 0.0 })
            .collect();
        let layout = Layout {
            multinomial,
            sets: if multinomial { k } else { 1 },
            dim,
            fit_intercept: p.fit_intercept,
        };
        let mut x0 = vec![0.0; layout.num_params()];
        if p.fit_intercept {
            let at = layout.intercepts_at();
            if multinomial {
                // MLlib: log(count + 1), centered.
                let raw: Vec<f64> = s.class_weights.iter().map(|c| (c + 1.0).ln()).collect();
                let mean = raw.iter().sum::<f64>() / raw.len() as f64;
                for (c, r) in raw.iter().enumerate() {
                    x0[at + c] = r - mean;
                }
            } else {
                x0[at] = (s.class_weights[1] / s.class_weights[0]).ln();
            }
        }
        let reg = Regularization {
            layout,
            reg_l2: p.reg_l2(),
            reg_l1: p.reg_l1(),
            standardization: p.standardization,
            inv_std: inv_std.clone(),
        };
        let l1 = reg.l1_weights();
        // classWeight=balanced: n / (k * n_c) per class (scikit-learn's), and the loss is
        // normalized by the class-weighted total.
        let class_weights: Option<Vec<f64>> = p.class_weight.map(|_| {
            let counts: Vec<f64> = s.class_counts.iter().map(|&c| c as f64).collect();
            let n: f64 = counts.iter().sum();
            let present = counts.iter().filter(|&&c| c > 0.0).count() as f64;
            counts
                .iter()
                .map(|&c| if c > 0.0 { n / (present * c) } else { 0.0 })
                .collect()
        });
        let weight_sum = match &class_weights {
            Some(cw) => cw.iter().zip(&s.class_weights).map(|(a, b)| a * b).sum(),
            None => s.weight_sum,
        };
        let objective = JobObjective {
            state,
            handle: tokio::runtime::Handle::current(),
            run_id,
            parts: d.parts.clone(),
            part_rows: d.part_rows.clone(),
            chunk_rows: chunk_rows(s.rows),
            rows: s.rows,
            weight_sum,
            class_weights,
            reg,
            evaluations: 0,
            seconds: 0.0,
            compute_seconds: 0.0,
        };
        let (max_iter, tol) = (p.max_iter, p.tol);
        let (minimum, objective) = tokio::task::spawn_blocking(move || {
            let mut objective = objective;
            let m = minimize(&mut objective, x0, l1.as_deref(), max_iter, tol);
            (m, objective)
        })
        .await
        .map_err(|e| exec_datafusion_err!("optimizer task failed: {e}"))?;
        let minimum = minimum?;

        // Back to the original scale; MLlib's centering for the multinomial family.
        let sets = layout.sets;
        let mut coefficients: Vec<f64> = minimum.x[..layout.intercepts_at()]
            .iter()
            .enumerate()
            .map(|(i, w)| w * inv_std[i % dim])
            .collect();
        let mut intercepts = if p.fit_intercept {
            minimum.x[layout.intercepts_at()..].to_vec()
        } else {
            vec![0.0; sets]
        };
        if multinomial {
            if p.reg_param == 0.0 {
                for j in 0..dim {
                    let mean =
                        (0..sets).map(|c| coefficients[c * dim + j]).sum::<f64>() / sets as f64;
                    (0..sets).for_each(|c| coefficients[c * dim + j] -= mean);
                }
            }
            if p.fit_intercept {
                let mean = intercepts.iter().sum::<f64>() / sets as f64;
                intercepts.iter_mut().for_each(|b| *b -= mean);
            }
        }
        let history = minimum.history.clone();
        tracing::info!(
            target: super::node::LOG_TARGET,
            iterations = minimum.iterations,
            evaluations = minimum.evaluations,
            objective = history.last().copied().unwrap_or(f64::NAN),
            seconds = started.elapsed().as_secs_f64(),
            "logistic regression fitted"
        );
        Ok(LogisticRegressionModel {
            params: self.params.clone(),
            num_classes: k,
            num_features: dim,
            multinomial,
            coefficients,
            intercepts,
            summary: TrainingSummary {
                objective_history: history,
                total_iterations: minimum.iterations,
                evaluations: minimum.evaluations,
                converged: minimum.converged,
                rows: s.rows,
                weight_sum: s.weight_sum,
                fit_seconds: materialize_seconds + started.elapsed().as_secs_f64(),
                materialize_seconds,
                evaluation_seconds: objective.seconds,
                compute_seconds: objective.compute_seconds,
                partitions: d.parts.len(),
            },
        })
    }

    /// The parts written (path and rows of each) and the summary of all of them.
    async fn materialize(&self, df: DataFrame) -> Result<(Vec<(String, u64)>, Summary)> {
        let batches = df.collect().await?;
        let mut rows: Vec<(u64, Option<String>, Summary)> = vec![];
        for b in &batches {
            let parts = b.column(0).as_primitive::<UInt64Type>();
            let paths = b.column(1).as_string::<i32>();
            let summaries = b.column(2).as_string::<i32>();
            for i in 0..b.num_rows() {
                let summary: Summary = serde_json::from_str(summaries.value(i))
                    .map_err(|e| exec_datafusion_err!("bad partition summary: {e}"))?;
                let path = (!paths.is_null(i)).then(|| paths.value(i).to_string());
                rows.push((parts.value(i), path, summary));
            }
        }
        // Parts in a fixed order (by content), so that sums do not depend on the task layout.
        rows.sort_by(|a, b| (a.0, &a.1).cmp(&(b.0, &b.1)));
        let mut summary = Summary::default();
        for (_, _, s) in &rows {
            summary.merge(s).map_err(|e| {
                exec_datafusion_err!("featuresCol '{}': {e}", self.params.features_col)
            })?;
        }
        Ok((
            rows.into_iter()
                .filter_map(|r| r.1.map(|path| (path, r.2.rows)))
                .collect(),
            summary,
        ))
    }
}

/// The objective as seen by the optimizer: each evaluation is one job.
struct JobObjective {
    state: SessionState,
    handle: tokio::runtime::Handle,
    run_id: String,
    parts: Vec<String>,
    part_rows: Vec<u64>,
    chunk_rows: u64,
    rows: u64,
    weight_sum: f64,
    class_weights: Option<Vec<f64>>,
    reg: Regularization,
    evaluations: u64,
    seconds: f64,
    compute_seconds: f64,
}

/// One chunk's row of a loss job: (part, offset), rows, loss, gradient.
type ChunkSums = ((u32, u64), u64, f64, Vec<f64>);

/// How many times one loss job is submitted before the fit fails.
const JOB_ATTEMPTS: usize = 3;

impl JobObjective {
    /// Sums of one loss job, and the compute time of all its chunks.
    async fn partial_sums(&self, spec: GradientSpec) -> Result<(Partial, f64)> {
        let expected = spec.chunks();
        let node = MlNode::try_new(None, MlStep::Gradient(spec))?;
        let batches: Vec<RecordBatch> = DataFrame::new(self.state.clone(), node.into_plan())
            .collect()
            .await?;
        // Sum in chunk order: the same model whatever executor ran what, in whatever tasks.
        let mut rows: Vec<ChunkSums> = vec![];
        let mut compute: f64 = 0.0;
        for b in &batches {
            let part = b.column(0).as_primitive::<UInt32Type>();
            let offset = b.column(1).as_primitive::<UInt64Type>();
            let n = b.column(2).as_primitive::<UInt64Type>();
            let loss = b.column(3).as_primitive::<Float64Type>();
            let grad = b.column(4).as_binary::<i32>();
            let secs = b.column(5).as_primitive::<Float64Type>();
            for i in 0..b.num_rows() {
                compute += secs.value(i);
                let g = grad
                    .value(i)
                    .chunks_exact(8)
                    .map(|c| f64::from_le_bytes(c.try_into().unwrap()))
                    .collect();
                rows.push((
                    (part.value(i), offset.value(i)),
                    n.value(i),
                    loss.value(i),
                    g,
                ));
            }
        }
        rows.sort_by_key(|r| r.0);
        let total: u64 = rows.iter().map(|r| r.1).sum();
        let covered = rows.len() == expected.len()
            && rows
                .iter()
                .zip(&expected)
                .all(|(r, c)| r.0 == (c.part, c.offset) && r.1 == c.len);
        if total != self.rows || !covered {
            return Err(exec_datafusion_err!(
                "loss job covered {total} rows in {} chunks; expected {} rows in {} chunks of {} parts",
                rows.len(),
                self.rows,
                expected.len(),
                self.parts.len()
            ));
        }
        let mut sum = Partial {
            loss: 0.0,
            grad: vec![0.0; self.reg.layout.num_params()],
        };
        for (_, _, loss, g) in rows {
            sum.loss += loss;
            sum.grad.iter_mut().zip(&g).for_each(|(a, b)| *a += b);
        }
        Ok((sum, compute))
    }
}

impl Evaluate for JobObjective {
    fn evaluate(&mut self, x: &[f64]) -> Result<(f64, Vec<f64>)> {
        self.evaluations += 1;
        let spec = GradientSpec {
            run_id: self.run_id.clone(),
            evaluation: self.evaluations,
            layout: self.reg.layout,
            inv_std: self.reg.inv_std.clone(),
            params: x.to_vec(),
            parts: self.parts.clone(),
            part_rows: self.part_rows.clone(),
            chunk_rows: self.chunk_rows,
            class_weights: self.class_weights.clone(),
        };
        let handle = self.handle.clone();
        // A loss job only reads the materialized parts: it is safe to run again when it
        // fails for a reason outside it (an executor lost between Ballista's retries).
        let mut attempt = 1;
        let (sums, compute) = loop {
            let started = Instant::now();
            match handle.block_on(self.partial_sums(spec.clone())) {
                Ok(r) => {
                    self.seconds += started.elapsed().as_secs_f64();
                    break r;
                }
                Err(e) if attempt < JOB_ATTEMPTS => {
                    tracing::warn!(
                        target: super::node::LOG_TARGET,
                        evaluation = self.evaluations,
                        attempt,
                        "loss job failed, running it again: {e}"
                    );
                    attempt += 1;
                    std::thread::sleep(std::time::Duration::from_millis(500 * attempt as u64));
                }
                Err(e) => return Err(e),
            }
        };
        self.compute_seconds += compute;
        Ok(self.reg.smooth(&sums, self.weight_sum, x))
    }
}

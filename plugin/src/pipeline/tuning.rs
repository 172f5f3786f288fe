//! Hyperparameter tuning (what sparkdl only planned): `ParamGridBuilder`, `CrossValidator`
//! and `TrainValidationSplit`, with candidate fits running `parallelism` at a time on the
//! cluster.
//!
//! The stages before the first estimator (the featurizer: the expensive part) run once per
//! distinct configuration in the grid (once when only estimator parameters vary): their
//! output is written to Parquet under the work dir by the executors and every fold and
//! candidate reads it from there. Folds come from the hash of each row's key and the
//! seed, so they do not depend on partitioning or on where tasks ran.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use datafusion::common::{Result, exec_datafusion_err, plan_err};
use datafusion::dataframe::{DataFrame, DataFrameWriteOptions};
use datafusion::logical_expr::Expr;
use datafusion::prelude::{ParquetReadOptions, SessionContext, col};
use futures::StreamExt;
use serde_json::Value;

use super::evaluation::MulticlassClassificationEvaluator;
use super::split::{fold_filter, key_expr, unit_expr};
use super::stages::{FittedStage, Pipeline, PipelineModel, PipelineStage};
use crate::ml::{LogisticRegression, LogisticRegressionParams};

/// Values for named estimator parameters (MLlib names, e.g. `regParam`).
pub type ParamMap = BTreeMap<String, Value>;

/// Spark's `ParamGridBuilder`: the cartesian product of the values given per parameter.
#[derive(Debug, Clone, Default)]
pub struct ParamGridBuilder {
    grid: Vec<(String, Vec<Value>)>,
}

impl ParamGridBuilder {
    /// An empty grid (one empty parameter map).
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds the values of one parameter.
    pub fn add_grid<V: Into<Value>>(mut self, param: impl Into<String>, values: Vec<V>) -> Self {
        self.grid
            .push((param.into(), values.into_iter().map(Into::into).collect()));
        self
    }

    /// The parameter maps, the first parameter varying slowest.
    pub fn build(&self) -> Vec<ParamMap> {
        let mut maps = vec![ParamMap::new()];
        for (name, values) in &self.grid {
            maps = maps
                .into_iter()
                .flat_map(|m| {
                    values.iter().map(move |v| {
                        let mut m = m.clone();
                        m.insert(name.clone(), v.clone());
                        m
                    })
                })
                .collect();
        }
        maps
    }
}

/// `pipeline` with `params` set on its stages. A name is a parameter of a stage with Spark ML
/// / sparkdl's names (`regParam` of LogisticRegression, `modelName` or `featureLayer` of
/// DeepImageFeaturizer), or `Stage.param` (`DeepImageFeaturizer.outputCol`) where several
/// stages have it. An unknown or ambiguous name is an error that lists the valid ones.
pub fn with_params(pipeline: &Pipeline, params: &ParamMap) -> Result<Pipeline> {
    let mut out = pipeline.clone();
    for (name, value) in params {
        let (only_type, param) = match name.split_once('.') {
            Some((t, p)) => (Some(t), p),
            None => (None, name.as_str()),
        };
        if param == "type" {
            return plan_err!("param grid: '{name}': a stage's type is not a parameter");
        }
        let mut hits = vec![];
        for (i, stage) in out.stages.iter().enumerate() {
            if only_type.is_some_and(|t| t != stage.type_name()) {
                continue;
            }
            if let Some(s) = set_param(stage, param, value)
                .map_err(|e| exec_datafusion_err!("param grid: {name} = {value}: {e}"))?
            {
                hits.push((i, s));
            }
        }
        match hits.len() {
            0 => {
                let valid: Vec<String> = out
                    .stages
                    .iter()
                    .map(|s| format!("{}: {}", s.type_name(), s.param_names().join(", ")))
                    .collect();
                return plan_err!(
                    "param grid: '{name}' is not a parameter of the pipeline's stages ({})",
                    valid.join("; ")
                );
            }
            1 => {
                let (i, s) = hits.pop().expect("one hit");
                out.stages[i] = s;
            }
            _ => {
                let stages: Vec<&str> = hits
                    .iter()
                    .map(|(i, _)| out.stages[*i].type_name())
                    .collect();
                return plan_err!(
                    "param grid: '{name}' is a parameter of several stages ({}); write it as \
                     Stage.{param}",
                    stages.join(", ")
                );
            }
        }
    }
    for stage in &out.stages {
        if let PipelineStage::LogisticRegression(p) = stage {
            p.validate()?;
        }
    }
    Ok(out)
}

/// `stage` with `param` set to `value`; `None` when the stage has no such parameter.
fn set_param(
    stage: &PipelineStage,
    param: &str,
    value: &Value,
) -> std::result::Result<Option<PipelineStage>, String> {
    if !stage.param_names().contains(&param) {
        return Ok(None);
    }
    let mut v = serde_json::to_value(stage).map_err(|e| e.to_string())?;
    v.as_object_mut()
        .expect("a stage is an object")
        .insert(param.to_string(), value.clone());
    serde_json::from_value::<PipelineStage>(v)
        .map(Some)
        .map_err(|e| e.to_string())
}

/// The parameters of the logistic regression every pipeline of `rests` consists of, when
/// all read the same columns (so that one prepared training set serves them all).
fn shared_logistic_regression(rests: &[Pipeline]) -> Option<&LogisticRegressionParams> {
    let mut first: Option<&LogisticRegressionParams> = None;
    for rest in rests {
        let [PipelineStage::LogisticRegression(p)] = rest.stages.as_slice() else {
            return None;
        };
        match first {
            None => first = Some(p),
            Some(f)
                if (&f.features_col, &f.label_col, &f.weight_col)
                    != (&p.features_col, &p.label_col, &p.weight_col) =>
            {
                return None;
            }
            Some(_) => {}
        }
    }
    first
}

/// Progress of a tuning run, for progress bars.
#[derive(Debug, Clone)]
pub enum TuningEvent {
    /// The stages before the estimator (featurization) are being computed once for the
    /// `done + 1`-th of `total` distinct configurations in the grid.
    Preparing { done: usize, total: usize },
    /// `done` of `total` candidate fits (parameter map x fold) finished.
    FitDone {
        done: usize,
        total: usize,
        candidate: usize,
        metric: f64,
    },
    /// The best parameters are refitted on all the data.
    Refitting,
}

/// Callback receiving [`TuningEvent`]s.
pub type TuningProgress = Arc<dyn Fn(TuningEvent) + Send + Sync>;

/// How the candidates are validated.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Validation {
    /// `numFolds`-fold cross-validation (Spark's `CrossValidator`).
    CrossValidator { num_folds: usize },
    /// One split (Spark's `TrainValidationSplit`).
    TrainValidationSplit { train_ratio: f64 },
}

/// Spark's `CrossValidator` / `TrainValidationSplit` over a [`Pipeline`].
#[derive(Clone)]
pub struct Tuner {
    pub estimator: Pipeline,
    pub estimator_param_maps: Vec<ParamMap>,
    pub evaluator: MulticlassClassificationEvaluator,
    pub validation: Validation,
    pub seed: u64,
    /// Candidate fits running at once.
    pub parallelism: usize,
    /// Row key of the folds (default: the image origin, see `randomSplit`).
    pub key_col: Option<String>,
    /// Where the shared stages' output is written (storage every executor sees); default
    /// Default: [`crate::access::plan_work_base`] (the first writable root's `.dlp-work`
    /// on a process with roots, else `$DLP_WORK_DIR` or `<temp dir>/dlp-work`).
    pub work_dir: Option<PathBuf>,
    pub progress: Option<TuningProgress>,
}

/// The outcome of tuning.
#[derive(Debug, Clone)]
pub struct TuningModel {
    /// The best parameters refitted on all the data.
    pub best_model: PipelineModel,
    pub best_index: usize,
    pub param_maps: Vec<ParamMap>,
    /// Mean (cross-validation) or only (train-validation) metric per parameter map.
    pub avg_metrics: Vec<f64>,
    /// Standard deviation over folds per parameter map (0 for one split).
    pub std_metrics: Vec<f64>,
    /// `fold_metrics[map][fold]`.
    pub fold_metrics: Vec<Vec<f64>>,
    pub metric_name: String,
    pub seconds: f64,
}

impl TuningModel {
    /// The best parameter map.
    pub fn best_params(&self) -> &ParamMap {
        &self.param_maps[self.best_index]
    }
}

/// Removes the run's work dir when tuning ends.
struct Cleanup(PathBuf);
impl Drop for Cleanup {
    fn drop(&mut self) {
        if !crate::access::keep_work() {
            crate::storage::remove_work(&self.0);
        }
    }
}

const KEY: &str = "__dlp_key";

impl Tuner {
    /// 3-fold cross-validation of `estimator` over `param_maps`, judged by `evaluator`.
    pub fn cross_validator(
        estimator: Pipeline,
        param_maps: Vec<ParamMap>,
        evaluator: MulticlassClassificationEvaluator,
        num_folds: usize,
    ) -> Self {
        Self {
            estimator,
            estimator_param_maps: param_maps,
            evaluator,
            validation: Validation::CrossValidator { num_folds },
            seed: 0,
            parallelism: 1,
            key_col: None,
            work_dir: None,
            progress: None,
        }
    }

    fn emit(&self, e: TuningEvent) {
        if let Some(p) = &self.progress {
            p(e);
        }
    }

    /// Runs every candidate, picks the best by the evaluator's metric (ties: the first) and
    /// refits it on all of `df`.
    pub async fn fit(&self, ctx: &SessionContext, df: DataFrame) -> Result<TuningModel> {
        let started = Instant::now();
        self.evaluator.validate()?;
        self.estimator.validate()?;
        if self.estimator_param_maps.is_empty() {
            return plan_err!("estimatorParamMaps is empty");
        }
        let folds = match self.validation {
            Validation::CrossValidator { num_folds } if num_folds < 2 => {
                return plan_err!("numFolds must be at least 2, found {num_folds}");
            }
            Validation::CrossValidator { num_folds } => num_folds,
            Validation::TrainValidationSplit { train_ratio }
                if !(train_ratio > 0.0 && train_ratio < 1.0) =>
            {
                return plan_err!("trainRatio must be in (0, 1), found {train_ratio}");
            }
            Validation::TrainValidationSplit { .. } => 1,
        };
        let candidates: Vec<Pipeline> = self
            .estimator_param_maps
            .iter()
            .map(|m| with_params(&self.estimator, m))
            .collect::<Result<_>>()?;
        let parallelism = self.parallelism.max(1);

        // The prefix (the transformers before the first estimator: the featurizer) runs once
        // per distinct prefix among the candidates (once when the grid only holds estimator
        // parameters), written to Parquet and read by every fold and candidate.
        let first_est = self
            .estimator
            .stages
            .iter()
            .position(PipelineStage::is_estimator)
            .unwrap_or(self.estimator.stages.len());
        let key = key_expr(df.schema(), self.key_col.as_deref())?;
        let keyed = df.with_column(KEY, key)?;
        // Where this job's own plans may write (a writable root, on a cluster with roots).
        let run_dir = self
            .work_dir
            .clone()
            .unwrap_or_else(crate::access::plan_work_base)
            .join(format!("tune-{:016x}", rand::random::<u64>()));
        let _cleanup = Cleanup(run_dir.clone());
        let mut prefixes: Vec<Vec<PipelineStage>> = vec![];
        let mut prefix_of = vec![];
        for cand in &candidates {
            let stages = cand.stages[..first_est].to_vec();
            let i = match prefixes.iter().position(|p| *p == stages) {
                Some(i) => i,
                None => {
                    prefixes.push(stages);
                    prefixes.len() - 1
                }
            };
            prefix_of.push(i);
        }
        let mut prepared_sets = Vec::with_capacity(prefixes.len());
        for (i, stages) in prefixes.iter().enumerate() {
            if stages.is_empty() {
                prepared_sets.push(keyed.clone());
                continue;
            }
            self.emit(TuningEvent::Preparing {
                done: i,
                total: prefixes.len(),
            });
            let prefix_model = Pipeline::new(stages.clone()).fit(keyed.clone()).await?;
            let out = prefix_model.transform(keyed.clone())?;
            // Image bytes are not needed after featurization.
            let keep: Vec<Expr> = out
                .schema()
                .fields()
                .iter()
                .filter(|f| !crate::image::schema::is_image_type(f.data_type()))
                .map(|f| col(datafusion::common::Column::from_name(f.name())))
                .collect();
            let dir = run_dir.join(format!("features-{i}"));
            crate::storage::ensure_dir(&dir)?;
            let dir_s = dir.to_string_lossy().into_owned();
            out.select(keep)?
                .write_parquet(&dir_s, DataFrameWriteOptions::new(), None)
                .await?;
            prepared_sets.push(
                ctx.read_parquet(&dir_s, ParquetReadOptions::default())
                    .await?,
            );
        }
        let key = col(KEY);
        let seed = self.seed;
        let validation = self.validation;
        let split = |prepared: &DataFrame, fold: usize| -> Result<(DataFrame, DataFrame)> {
            Ok(match validation {
                Validation::CrossValidator { num_folds } => (
                    fold_filter(prepared, key.clone(), seed, num_folds, fold, false)?,
                    fold_filter(prepared, key.clone(), seed, num_folds, fold, true)?,
                ),
                Validation::TrainValidationSplit { train_ratio } => {
                    let u = unit_expr(key.clone(), seed);
                    (
                        prepared
                            .clone()
                            .filter(u.clone().lt(datafusion::prelude::lit(train_ratio)))?,
                        prepared
                            .clone()
                            .filter(u.gt_eq(datafusion::prelude::lit(train_ratio)))?,
                    )
                }
            })
        };
        // Fold by fold, as Spark's CrossValidator (which caches each fold's training set
        // for all its candidates): where every candidate of a featurizer configuration ends
        // in one logistic regression reading the same columns, the fold's training set is
        // materialized once (`LogisticRegression::prepare`) and each candidate fits from it;
        // `parallelism` candidates of the fold run at once.
        let total = candidates.len() * folds;
        let evaluator = &self.evaluator;
        let mut measured = Vec::with_capacity(total);
        for (g, prepared) in prepared_sets.iter().enumerate() {
            let members: Vec<usize> = (0..candidates.len())
                .filter(|&m| prefix_of[m] == g)
                .collect();
            let rests: Vec<Pipeline> = members
                .iter()
                .map(|&m| Pipeline::new(candidates[m].stages[first_est..].to_vec()))
                .collect();
            let shared_lr = shared_logistic_regression(&rests);
            for fold in 0..folds {
                let (train, valid) = split(prepared, fold)?;
                let data = match shared_lr {
                    Some(p) => Some(
                        LogisticRegression::new(p.clone())
                            .prepare(train.clone())
                            .await?,
                    ),
                    None => None,
                };
                let data = &data;
                // Owned futures, not a lazy map over borrowed iterators: the tuner runs in
                // spawned tasks, whose futures must be Send for any lifetime.
                let fits: Vec<_> = members
                    .iter()
                    .copied()
                    .zip(rests.iter().cloned())
                    .map(|(m, rest)| {
                        let (train, valid) = (train.clone(), valid.clone());
                        async move {
                            let model = match (data, rest.stages.as_slice()) {
                                (Some(data), [PipelineStage::LogisticRegression(p)]) => {
                                    let lr = LogisticRegression::new(p.clone())
                                        .fit_prepared(data)
                                        .await?;
                                    PipelineModel {
                                        stages: vec![FittedStage::LogisticRegressionModel(
                                            Box::new(lr),
                                        )],
                                        class_names: vec![],
                                    }
                                }
                                _ => rest.fit(train).await?,
                            };
                            let metric = evaluator.evaluate(model.transform(valid)?).await?;
                            Ok::<_, datafusion::error::DataFusionError>((m, metric))
                        }
                    })
                    .collect();
                let mut results = futures::stream::iter(fits).buffer_unordered(parallelism);
                while let Some(r) = results.next().await {
                    let (m, metric) = r?;
                    measured.push((m, fold, metric));
                    self.emit(TuningEvent::FitDone {
                        done: measured.len(),
                        total,
                        candidate: m,
                        metric,
                    });
                }
            }
        }
        let mut fold_metrics = vec![vec![f64::NAN; folds]; candidates.len()];
        for (m, fold, metric) in measured {
            fold_metrics[m][fold] = metric;
        }
        let avg_metrics: Vec<f64> = fold_metrics
            .iter()
            .map(|v| v.iter().sum::<f64>() / v.len() as f64)
            .collect();
        let std_metrics: Vec<f64> = fold_metrics
            .iter()
            .zip(&avg_metrics)
            .map(|(v, a)| {
                if v.len() < 2 {
                    0.0
                } else {
                    (v.iter().map(|x| (x - a).powi(2)).sum::<f64>() / (v.len() - 1) as f64).sqrt()
                }
            })
            .collect();
        let larger = self.evaluator.is_larger_better();
        let mut best = 0;
        for (i, a) in avg_metrics.iter().enumerate() {
            let better = if larger {
                *a > avg_metrics[best]
            } else {
                *a < avg_metrics[best]
            };
            if better {
                best = i;
            }
        }
        self.emit(TuningEvent::Refitting);
        let best_rest = Pipeline::new(candidates[best].stages[first_est..].to_vec());
        let fitted_rest = best_rest
            .fit(prepared_sets[prefix_of[best]].clone())
            .await?;
        let mut stages: Vec<FittedStage> = candidates[best].stages[..first_est]
            .iter()
            .map(|s| {
                s.as_fitted_transformer()
                    .expect("the prefix has no estimator")
            })
            .collect();
        stages.extend(fitted_rest.stages);
        Ok(TuningModel {
            best_model: PipelineModel {
                stages,
                class_names: vec![],
            },
            best_index: best,
            param_maps: self.estimator_param_maps.clone(),
            avg_metrics,
            std_metrics,
            fold_metrics,
            metric_name: self.evaluator.metric_name.clone(),
            seconds: started.elapsed().as_secs_f64(),
        })
    }
}

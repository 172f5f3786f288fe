//! YAML job specs: data, split, stages, evaluation, tuning and output written once and run
//! by `dlp fit` / `dlp tune` on the embedded cluster or a real one.
//!
//! ```yaml
//! data:
//!   path: ../shared/data/flowers
//!   classes: [daisy, tulips]        # optional: these folders only, labels in this order
//! split: {weights: [0.8, 0.2], seed: 42}
//! stages:
//!   - {type: DeepImageFeaturizer, modelName: efficientnet_lite0}
//!   - {type: LogisticRegression, maxIter: 20, regParam: 0.05, elasticNetParam: 0.3}
//! evaluation: {metricName: f1}
//! tuning:                           # used by `dlp tune`
//!   method: crossValidator          # or trainValidationSplit (trainRatio)
//!   numFolds: 3
//!   parallelism: 2
//!   grid: {regParam: [0.01, 0.05], elasticNetParam: [0.0, 0.3, 1.0]}
//! output: {model: out/flowers-model, report: out/flowers-report}
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use datafusion::arrow::array::{Array, AsArray};
use datafusion::common::{Result, exec_datafusion_err, plan_err};
use datafusion::dataframe::DataFrame;
use datafusion::functions::core::expr_fn::get_field;
use datafusion::logical_expr::lit;
use datafusion::prelude::{SessionContext, col};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::evaluation::{MulticlassClassificationEvaluator, MulticlassMetrics};
use super::split::random_split;
use super::stages::{Pipeline, PipelineModel, PipelineStage};
use super::tuning::{ParamGridBuilder, Tuner, TuningEvent, TuningModel, Validation};
use crate::image::scan::{LABEL_COLUMN, LABEL_NAME_COLUMN};
use crate::image::schema::IMAGE_COLUMN;
use crate::image::{ImageReadOptions, ImageTableProvider, list_images, origin_uri};

/// A job: what to read, how to split, the pipeline, how to judge it, optional tuning.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct JobSpec {
    pub data: DataSpec,
    #[serde(default)]
    pub split: SplitSpec,
    pub stages: Vec<PipelineStage>,
    #[serde(default)]
    pub evaluation: MulticlassClassificationEvaluator,
    #[serde(default)]
    pub tuning: Option<TuningSpec>,
    #[serde(default)]
    pub output: OutputSpec,
}

/// The data: a labelled image folder (one sub-folder per class), or a query.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DataSpec {
    /// Folder (or `file:` URI) with one sub-folder per class.
    #[serde(default)]
    pub path: String,
    /// Instead of `path`: a query whose rows are the training data, as they are (the
    /// clients' `Pipeline.fit(df)`: no split, no evaluation; the pipeline's columns
    /// must be in it, the label column included). `classes` then names the labels
    /// 0..n-1 (optional). One SELECT; DDL, DML and statements are refused.
    #[serde(default)]
    pub sql: Option<String>,
    /// Only these class folders, labelled 0..n-1 in this order (default: every folder, in
    /// sorted order).
    #[serde(default)]
    pub classes: Option<Vec<String>>,
    /// More `read_images` options (e.g. `sampleRatio`, `pathGlobFilter`).
    #[serde(default)]
    pub options: BTreeMap<String, String>,
}

/// Train / test split (Spark's `randomSplit`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct SplitSpec {
    /// Train and test weights.
    pub weights: Vec<f64>,
    pub seed: u64,
}

impl Default for SplitSpec {
    fn default() -> Self {
        Self {
            weights: vec![0.8, 0.2],
            seed: 42,
        }
    }
}

/// Tuning of the estimator's parameters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct TuningSpec {
    /// `crossValidator` or `trainValidationSplit`.
    pub method: String,
    pub num_folds: usize,
    pub train_ratio: f64,
    /// Candidate fits at once.
    pub parallelism: usize,
    pub seed: u64,
    /// Values per parameter (MLlib names of the estimator's parameters).
    pub grid: BTreeMap<String, Vec<Value>>,
}

impl Default for TuningSpec {
    fn default() -> Self {
        Self {
            method: "crossValidator".into(),
            num_folds: 3,
            train_ratio: 0.75,
            parallelism: 1,
            seed: 0,
            grid: BTreeMap::new(),
        }
    }
}

impl TuningSpec {
    /// The validation scheme.
    pub fn validation(&self) -> Result<Validation> {
        match self.method.as_str() {
            "crossValidator" | "CrossValidator" => Ok(Validation::CrossValidator {
                num_folds: self.num_folds,
            }),
            "trainValidationSplit" | "TrainValidationSplit" => {
                Ok(Validation::TrainValidationSplit {
                    train_ratio: self.train_ratio,
                })
            }
            other => {
                plan_err!("tuning.method: '{other}' is not crossValidator or trainValidationSplit")
            }
        }
    }
}

/// Where results go.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct OutputSpec {
    /// Directory of the saved PipelineModel.
    pub model: Option<PathBuf>,
    /// Directory of the report (text, JSON, confusion matrix plots).
    pub report: Option<PathBuf>,
    /// Replace a model already at `model` (Spark's `write().overwrite()`); on a shared
    /// scheduler only the user who saved it may replace it.
    pub overwrite: bool,
    /// The user saving the model, set by a shared scheduler (never by the spec).
    #[serde(skip)]
    pub owner: Option<String>,
}

impl JobSpec {
    /// Parses a spec; `origin` (the file name) prefixes errors.
    pub fn from_yaml(text: &str, origin: &str) -> Result<Self> {
        let spec: Self =
            serde_yaml::from_str(text).map_err(|e| exec_datafusion_err!("{origin}: {e}"))?;
        match (&spec.data.sql, spec.data.path.is_empty()) {
            (None, true) => return plan_err!("{origin}: data: set path (an image folder) or sql"),
            (Some(_), false) => {
                return plan_err!("{origin}: data: set path or sql, not both");
            }
            (Some(q), true) => {
                if q.trim().is_empty() {
                    return plan_err!("{origin}: data.sql is empty");
                }
                if !spec.data.options.is_empty() {
                    return plan_err!(
                        "{origin}: data.options are read_images options; with data.sql put \
                         them in the query's read_images call"
                    );
                }
                let raw: serde_yaml::Value = serde_yaml::from_str(text)
                    .map_err(|e| exec_datafusion_err!("{origin}: {e}"))?;
                if raw.get("split").is_some() {
                    return plan_err!(
                        "{origin}: split does not apply to data.sql: the query's rows are the \
                         training data (split them in the query, e.g. with dlp_hash_unit)"
                    );
                }
                if spec.output.model.is_none() {
                    return plan_err!(
                        "{origin}: output.model is required with data.sql: the fitted model \
                         is saved there"
                    );
                }
            }
            (None, false) => {}
        }
        let w = &spec.split.weights;
        if w.len() != 2 || w.iter().any(|x| !x.is_finite() || *x < 0.0) || w[0] + w[1] <= 0.0 {
            return plan_err!(
                "{origin}: split.weights must be [train, test], two non-negative numbers with a \
                 positive sum, found {w:?}"
            );
        }
        Pipeline::new(spec.stages.clone())
            .validate()
            .map_err(|e| exec_datafusion_err!("{origin}: {}", e.strip_backtrace()))?;
        spec.evaluation
            .validate()
            .map_err(|e| exec_datafusion_err!("{origin}: evaluation: {}", e.strip_backtrace()))?;
        Ok(spec)
    }

    /// Reads and parses a spec file.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| exec_datafusion_err!("cannot read {}: {e}", path.display()))?;
        Self::from_yaml(&text, &path.display().to_string())
    }
}

/// `~/x` as `$HOME/x`, as a shell would.
pub fn expand_home(path: &str) -> String {
    match (path.strip_prefix("~/"), std::env::var_os("HOME")) {
        (Some(rest), Some(home)) => Path::new(&home).join(rest).to_string_lossy().into_owned(),
        _ => path.to_string(),
    }
}

/// A labelled image DataFrame and what was left out of it.
pub struct LabelledImages {
    /// Valid images of the chosen classes: `image`, `label` (0..n-1), `label_name`.
    pub df: DataFrame,
    /// Class names by label.
    pub class_names: Vec<String>,
    /// `(origin, label)` of every valid image in `df`, from the listing.
    pub members: Vec<(String, usize)>,
    /// Files of the folder listing that are in none of the classes.
    pub other_files: usize,
    /// Files of the chosen classes that do not decode (left out of training and
    /// evaluation), by origin.
    pub invalid: Vec<String>,
}

/// Reads a class-per-folder image directory. Invalid images are left out and counted
/// (their origins are listed); `classes` fixes which folders and their label order.
pub async fn read_labelled(
    ctx: &SessionContext,
    data: &DataSpec,
    classes: Option<&[String]>,
) -> Result<LabelledImages> {
    let mut pairs: Vec<(&str, &str)> = data
        .options
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .filter(|(k, _)| {
            !k.eq_ignore_ascii_case("withLabel") && !k.eq_ignore_ascii_case("dropInvalid")
        })
        .collect();
    pairs.push(("withLabel", "true"));
    let options = ImageReadOptions::from_pairs(pairs)?;
    let path = expand_home(&data.path);
    let listing = list_images(&path, &options)?;
    let class_names: Vec<String> = match classes.or(data.classes.as_deref()) {
        Some(c) => {
            for name in c {
                if !listing.classes.contains(name) {
                    return plan_err!(
                        "data.classes: no folder '{name}' under {} (folders: {})",
                        data.path,
                        listing.classes.join(", ")
                    );
                }
            }
            c.to_vec()
        }
        None => listing.classes.clone(),
    };
    if class_names.len() < 2 {
        return plan_err!(
            "{}: found {} class folder(s) ({}); a classifier needs at least two",
            data.path,
            class_names.len(),
            class_names.join(", ")
        );
    }
    // One read per class folder, labelled by position in `class_names`, then a union (as
    // sparkdl's tutorials did): folders of other classes are never read.
    // Partitions are shared out by file count (unless numPartitions is given), so that the
    // union has about `target_partitions` of them, not that many per class.
    let mut class_options = options.clone();
    class_options.with_label = false;
    let target = ctx.state().config().target_partitions().max(1);
    let mut parts: Vec<DataFrame> = vec![];
    let mut member_files: Vec<(String, usize)> = vec![];
    let mut listings = vec![];
    for name in &class_names {
        let folder = Path::new(&path).join(name).to_string_lossy().into_owned();
        let files = list_images(&folder, &class_options)?;
        member_files.extend(
            files
                .files
                .iter()
                .map(|f| (origin_uri(&f.path), listings.len())),
        );
        listings.push((folder, files));
    }
    let total_files = member_files.len().max(1);
    for (i, (name, (folder, files))) in class_names.iter().zip(listings).enumerate() {
        let mut class_options = class_options.clone();
        if options.num_partitions.is_none() {
            let n = files.files.len();
            class_options.num_partitions = Some((target * n).div_ceil(total_files).max(1));
        }
        // The table scans the files just listed: each folder is listed once.
        let provider = ImageTableProvider::from_listing(&folder, class_options, files);
        parts.push(
            ctx.read_table(Arc::new(provider))?
                .with_column(LABEL_COLUMN, lit(i as i32))?
                .with_column(LABEL_NAME_COLUMN, lit(name.as_str()))?,
        );
    }
    let other_files = listing.files.len().saturating_sub(member_files.len());
    let mut df = parts.remove(0);
    for p in parts {
        df = df.union(p)?;
    }
    let valid = get_field(col(IMAGE_COLUMN), "nChannels").gt(lit(0i32));

    // One pass over the files counts the invalid ones, so that none vanishes unreported.
    let mut invalid = vec![];
    let bad = df
        .clone()
        .filter(!valid.clone())?
        .select(vec![get_field(col(IMAGE_COLUMN), "origin").alias("origin")])?
        .collect()
        .await?;
    for b in &bad {
        let o = b.column(0).as_string::<i32>();
        invalid.extend(
            (0..o.len())
                .filter(|&i| o.is_valid(i))
                .map(|i| o.value(i).to_string()),
        );
    }
    invalid.sort();
    let members = member_files
        .into_iter()
        .filter(|(origin, _)| invalid.binary_search(origin).is_err())
        .collect();
    Ok(LabelledImages {
        df: df.filter(valid)?,
        class_names,
        members,
        other_files,
        invalid,
    })
}

/// What a job did.
pub struct JobReport {
    pub class_names: Vec<String>,
    /// Images per class (valid ones) in the train and test splits.
    pub train_counts: Vec<u64>,
    pub test_counts: Vec<u64>,
    pub other_files: usize,
    pub invalid: Vec<String>,
    pub model: PipelineModel,
    /// Metrics on the test split.
    pub metrics: MulticlassMetrics,
    pub tuning: Option<TuningModel>,
    pub fit_seconds: f64,
    pub evaluate_seconds: f64,
}

/// Phase messages and tuning progress of a job.
pub type JobProgress = Arc<dyn Fn(JobEvent) + Send + Sync>;

/// A progress event.
#[derive(Debug, Clone)]
pub enum JobEvent {
    Phase(String),
    Tuning(TuningEvent),
    /// An epoch of a fine-tuning stage ended.
    Epoch(crate::finetune::EpochRecord),
}

/// Images per class in split `which` of `weights` (the same rule as `random_split`).
fn split_counts(
    members: &[(String, usize)],
    k: usize,
    weights: &[f64],
    seed: u64,
) -> [Vec<u64>; 2] {
    let cut = weights[0] / weights.iter().sum::<f64>();
    let mut counts = [vec![0u64; k], vec![0u64; k]];
    for (origin, label) in members {
        let side = usize::from(
            super::split::hash_unit(super::split::origin_key(origin).as_bytes(), seed) >= cut,
        );
        counts[side][*label] += 1;
    }
    counts
}

/// Runs a job: read, split, fit (or tune, when `tune` and the spec has `tuning`), evaluate
/// on the test split, save the model if the spec says where.
pub async fn run_job(
    ctx: &SessionContext,
    spec: &JobSpec,
    tune: bool,
    progress: Option<JobProgress>,
) -> Result<JobReport> {
    let say = |e: JobEvent| {
        if let Some(p) = &progress {
            p(e);
        }
    };
    if spec.data.sql.is_some() {
        return plan_err!("data.sql: this spec fits on a query's rows; run it with fit_query");
    }
    say(JobEvent::Phase(format!("reading {}", spec.data.path)));
    let data = read_labelled(ctx, &spec.data, None).await?;
    let k = data.class_names.len();
    let split = random_split(&data.df, &spec.split.weights, spec.split.seed, None)?;
    let (train, test) = (split[0].clone(), split[1].clone());
    let [train_counts, test_counts] =
        split_counts(&data.members, k, &spec.split.weights, spec.split.seed);
    if test_counts.iter().sum::<u64>() == 0 {
        return plan_err!("the test split is empty; raise split.weights[1]");
    }
    let started = Instant::now();
    let (mut model, tuning) = fit_or_tune(ctx, spec, tune, train, progress.as_ref()).await?;
    let fit_seconds = started.elapsed().as_secs_f64();
    model.class_names = data.class_names.clone();
    say(JobEvent::Phase("evaluating on the test split".into()));
    let started = Instant::now();
    let metrics = spec.evaluation.metrics(model.transform(test)?).await?;
    let evaluate_seconds = started.elapsed().as_secs_f64();
    if let Some(dir) = &spec.output.model {
        save(&model, spec, dir)?;
    }
    Ok(JobReport {
        class_names: data.class_names,
        train_counts,
        test_counts,
        other_files: data.other_files,
        invalid: data.invalid,
        model,
        metrics,
        tuning,
        fit_seconds,
        evaluate_seconds,
    })
}

/// Fits the spec's pipeline on `train`, or tunes it first (`tune` and a tuning section).
async fn fit_or_tune(
    ctx: &SessionContext,
    spec: &JobSpec,
    tune: bool,
    train: DataFrame,
    progress: Option<&JobProgress>,
) -> Result<(PipelineModel, Option<TuningModel>)> {
    let say = |e: JobEvent| {
        if let Some(p) = progress {
            p(e);
        }
    };
    let pipeline = Pipeline::new(spec.stages.clone());
    match (&spec.tuning, tune) {
        (Some(t), true) => {
            let tuner = tuner(spec, t, pipeline, progress.cloned())?;
            say(JobEvent::Phase("tuning".into()));
            let tuned = tuner.fit(ctx, train).await?;
            Ok((tuned.best_model.clone(), Some(tuned)))
        }
        (None, true) => plan_err!("the spec has no tuning section; use fit, or add one"),
        (_, false) => {
            say(JobEvent::Phase("fitting (featurize, then optimize)".into()));
            let observer: Option<super::stages::EpochObserver> = progress.cloned().map(|p| {
                Arc::new(move |r: &crate::finetune::EpochRecord| p(JobEvent::Epoch(r.clone())))
                    as super::stages::EpochObserver
            });
            Ok((pipeline.fit_observed(train, observer).await?, None))
        }
    }
}

/// Saves a job's model at `dir`, owned by the spec's owner when a shared scheduler set one.
fn save(model: &PipelineModel, spec: &JobSpec, dir: &Path) -> Result<()> {
    match &spec.output.owner {
        Some(owner) => model.save_owned(dir, owner, spec.output.overwrite),
        None => model.save(dir),
    }
}

/// The spec's tuner of `pipeline`.
fn tuner(
    spec: &JobSpec,
    t: &TuningSpec,
    pipeline: Pipeline,
    progress: Option<JobProgress>,
) -> Result<Tuner> {
    let mut grid = ParamGridBuilder::new();
    for (name, values) in &t.grid {
        grid = grid.add_grid(name.clone(), values.clone());
    }
    Ok(Tuner {
        estimator: pipeline,
        estimator_param_maps: grid.build(),
        evaluator: spec.evaluation.clone(),
        validation: t.validation()?,
        seed: t.seed,
        parallelism: t.parallelism,
        key_col: None,
        work_dir: None,
        progress: progress.map(|p| Arc::new(move |e: TuningEvent| p(JobEvent::Tuning(e))) as _),
    })
}

/// What a `data.sql` job did.
pub struct QueryFit {
    pub model: PipelineModel,
    pub tuning: Option<TuningModel>,
    pub fit_seconds: f64,
}

/// Runs a `data.sql` spec: fits (or tunes, when `tune`) the pipeline on the query's rows
/// and saves the model to `output.model`. The query runs with this session's rights; it
/// may only read (`SELECT`).
pub async fn fit_query(
    ctx: &SessionContext,
    spec: &JobSpec,
    tune: bool,
    progress: Option<JobProgress>,
) -> Result<QueryFit> {
    let say = |e: JobEvent| {
        if let Some(p) = &progress {
            p(e);
        }
    };
    let Some(query) = &spec.data.sql else {
        return plan_err!("fit_query: the spec has no data.sql");
    };
    let Some(dir) = &spec.output.model else {
        return plan_err!("output.model is required with data.sql");
    };
    say(JobEvent::Phase("planning the data query".into()));
    let options = datafusion::execution::context::SQLOptions::new()
        .with_allow_ddl(false)
        .with_allow_dml(false)
        .with_allow_statements(false);
    let df = ctx
        .sql_with_options(query, options)
        .await
        .map_err(|e| exec_datafusion_err!("data.sql: {}", e.strip_backtrace()))?;
    let started = Instant::now();
    let (mut model, tuning) = fit_or_tune(ctx, spec, tune, df, progress.as_ref()).await?;
    let fit_seconds = started.elapsed().as_secs_f64();
    model.class_names = spec.data.classes.clone().unwrap_or_default();
    say(JobEvent::Phase("saving the model".into()));
    save(&model, spec, dir)?;
    Ok(QueryFit {
        model,
        tuning,
        fit_seconds,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const SPEC: &str = "
data:
  path: flowers
  classes: [daisy, tulips]
split: {weights: [0.8, 0.2], seed: 7}
stages:
  - {type: DeepImageFeaturizer, modelName: efficientnet_lite0}
  - {type: LogisticRegression, maxIter: 20, regParam: 0.05, elasticNetParam: 0.3}
tuning:
  numFolds: 3
  grid: {regParam: [0.01, 0.1], elasticNetParam: [0.0, 0.5, 1.0]}
";

    #[test]
    fn a_query_spec_needs_a_model_and_no_split() {
        let stages = "stages:\n  - {type: DeepImageFeaturizer, modelName: efficientnet_lite0}\n  - {type: LogisticRegression}\n";
        let ok = format!("data: {{sql: 'SELECT * FROM t'}}\n{stages}output: {{model: m}}\n");
        let spec: JobSpec = serde_yaml::from_str(&ok).unwrap();
        assert_eq!(spec.data.sql.as_deref(), Some("SELECT * FROM t"));
        let err = |text: &str| {
            // Stage validation needs the model zoo; the data checks come first.
            JobSpec::from_yaml(text, "spec.yaml")
                .unwrap_err()
                .strip_backtrace()
        };
        assert!(
            err(&format!("data: {{sql: 'SELECT 1'}}\n{stages}"))
                .contains("output.model is required")
        );
        assert!(
            err(&format!("data: {{sql: 'SELECT 1'}}\nsplit: {{weights: [0.5, 0.5]}}\n{stages}output: {{model: m}}\n"))
                .contains("split does not apply to data.sql")
        );
        assert!(err(&format!("data: {{sql: 'SELECT 1', path: x}}\n{stages}")).contains("not both"));
        assert!(err(&format!("data: {{}}\n{stages}")).contains("set path"));
        assert!(
            err(&format!(
                "data: {{sql: 'SELECT 1', options: {{a: b}}}}\n{stages}output: {{model: m}}\n"
            ))
            .contains("read_images options")
        );
        // Bad split weights name the spec file and the key.
        for weights in ["[0.8, -0.2]", "[0, 0]", "[0.8]", "[.nan, 1]"] {
            let e = err(&format!(
                "data: {{path: x}}\nsplit: {{weights: {weights}}}\n{stages}"
            ));
            assert!(
                e.contains("spec.yaml") && e.contains("split.weights"),
                "{weights}: {e}"
            );
        }
    }

    #[test]
    fn spec_parses_with_spark_names() {
        let spec: JobSpec = serde_yaml::from_str(SPEC).unwrap();
        assert_eq!(spec.split.seed, 7);
        let PipelineStage::LogisticRegression(p) = &spec.stages[1] else {
            panic!("{:?}", spec.stages[1]);
        };
        assert_eq!(
            (p.max_iter, p.reg_param, p.elastic_net_param),
            (20, 0.05, 0.3)
        );
        assert_eq!(spec.evaluation.metric_name, "f1");
        let t = spec.tuning.unwrap();
        assert_eq!(
            t.validation().unwrap(),
            Validation::CrossValidator { num_folds: 3 }
        );
        let mut grid = ParamGridBuilder::new();
        for (name, values) in &t.grid {
            grid = grid.add_grid(name.clone(), values.clone());
        }
        assert_eq!(grid.build().len(), 6);
    }

    #[test]
    fn unknown_parameters_are_named() {
        let bad = SPEC.replace("regParam: 0.05", "regparam: 0.05");
        let err = serde_yaml::from_str::<JobSpec>(&bad)
            .unwrap_err()
            .to_string();
        assert!(err.contains("regparam"), "{err}");
        let bad = SPEC.replace("DeepImageFeaturizer", "DeepImageFeaturiser");
        let err = serde_yaml::from_str::<JobSpec>(&bad)
            .unwrap_err()
            .to_string();
        assert!(err.contains("DeepImageFeaturiser"), "{err}");
    }

    #[test]
    fn grid_names_must_be_parameters() {
        let spec: JobSpec = serde_yaml::from_str(SPEC).unwrap();
        let pipeline = Pipeline::new(spec.stages);
        let err_of = |p: &Pipeline, m: &super::super::ParamMap| {
            super::super::tuning::with_params(p, m)
                .unwrap_err()
                .to_string()
        };
        let mut m = super::super::ParamMap::new();
        m.insert("regParm".into(), Value::from(0.1));
        let err = err_of(&pipeline, &m);
        assert!(err.contains("'regParm' is not a parameter"), "{err}");
        m.clear();
        m.insert("regParam".into(), Value::from(0.1));
        let p = super::super::tuning::with_params(&pipeline, &m).unwrap();
        let PipelineStage::LogisticRegression(lr) = &p.stages[1] else {
            panic!()
        };
        assert_eq!(lr.reg_param, 0.1);
        // Featurizer parameters are grid parameters too.
        m.insert("featureLayer".into(), Value::from("logits"));
        m.insert("modelName".into(), Value::from("efficientnet_lite2"));
        let p = super::super::tuning::with_params(&pipeline, &m).unwrap();
        let PipelineStage::DeepImageFeaturizer(f) = &p.stages[0] else {
            panic!()
        };
        assert_eq!(f.model_name, "efficientnet_lite2");
        assert_eq!(f.feature_layer, crate::torch::FeatureLayer::Logits);
        m.insert("featureLayer".into(), Value::from("conv5"));
        let err = err_of(&pipeline, &m);
        assert!(
            err.contains("featureLayer = \"conv5\"") && err.contains("penultimate"),
            "{err}"
        );
        m.clear();
        m.insert("type".into(), Value::from("LogisticRegression"));
        let err = err_of(&pipeline, &m);
        assert!(err.contains("not a parameter"), "{err}");
        // A name two stages have must say which stage.
        let mut stages = pipeline.stages.clone();
        stages.insert(0, stages[0].clone());
        let two = Pipeline::new(stages);
        m.clear();
        m.insert("modelName".into(), Value::from("efficientnet_lite1"));
        let err = err_of(&two, &m);
        assert!(err.contains("several stages"), "{err}");
        m.clear();
        m.insert("LogisticRegression.maxIter".into(), Value::from(7));
        let p = super::super::tuning::with_params(&two, &m).unwrap();
        let PipelineStage::LogisticRegression(lr) = &p.stages[2] else {
            panic!()
        };
        assert_eq!(lr.max_iter, 7);
    }
}

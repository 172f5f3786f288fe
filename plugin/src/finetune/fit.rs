//! The fine-tuning driver: [`TorchImageEstimator::fit`] prepares the images on the
//! executors (one job), then runs synchronous data-parallel SGD: every optimizer step is
//! one Ballista job whose tasks return the loss and gradient sums of their share of the
//! step's batch; the driver averages them and updates the weights with the optimizer of
//! [`super::optim`]. The batches are drawn from the images in the order of their origins,
//! so the weights do not depend on how the data is partitioned or on which executor ran
//! what (up to the order floating-point sums are taken in).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use datafusion::arrow::array::{Array, AsArray, RecordBatch};
use datafusion::arrow::datatypes::{Float64Type, UInt32Type, UInt64Type};
use datafusion::common::{Result, exec_datafusion_err, exec_err, plan_err};
use datafusion::dataframe::DataFrame;
use datafusion::execution::context::SessionState;
use datafusion::prelude::col;
use rand::SeedableRng;
use rand::seq::SliceRandom;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::optim::Optimizer;
use super::params::TorchImageEstimatorParams;
use super::spec::{LOG_TARGET, PartSummary, PrepareSpec, StepSpec};
use super::tensors::NamedTensors;
use crate::ml::node::{MlNode, MlStep, input_type};
use crate::torch::ProcessTorchConfig;
use crate::torch::manifest::ModelEntry;

/// Fine-tunes a zoo model on labelled images (sparkdl's `KerasImageFileEstimator`).
#[derive(Debug, Clone)]
pub struct TorchImageEstimator {
    pub params: TorchImageEstimatorParams,
}

/// One epoch of a fit.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EpochRecord {
    /// 1-based.
    pub epoch: usize,
    pub steps: usize,
    pub learning_rate: f64,
    /// Mean cross-entropy (with label smoothing) over the epoch's training images.
    pub train_loss: f64,
    pub train_accuracy: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub validation_loss: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub validation_accuracy: Option<f64>,
    /// Training images per second of the epoch (steps and validation).
    pub images_per_second: f64,
    pub seconds: f64,
}

/// A fine-tuned model: the trained parameters over the base model, ready to be saved as an
/// ordinary zoo model (TorchScript plus manifest).
#[derive(Debug, Clone)]
pub struct TorchImageModel {
    pub params: TorchImageEstimatorParams,
    /// The model fine-tuning started from.
    pub base: ModelEntry,
    pub num_classes: usize,
    /// Name of each class index (default "0", "1", ...).
    pub class_names: Vec<String>,
    /// The trained parameters.
    pub weights: NamedTensors,
    pub history: Vec<EpochRecord>,
    /// Training and validation images, and images left out as invalid.
    pub train_images: usize,
    pub validation_images: usize,
    pub invalid_images: usize,
    /// Seconds of the preparation job and of the whole fit.
    pub prepare_seconds: f64,
    pub seconds: f64,
    /// The epoch the fit resumed after (0: from the start).
    pub resumed_from: usize,
}

/// Removes the run's work files when the fit ends, however it ends.
struct RunDir(PathBuf);

impl Drop for RunDir {
    fn drop(&mut self) {
        #[cfg(feature = "torch")]
        super::worker::evict_dir(&self.0.to_string_lossy());
        if !crate::access::keep_work() {
            crate::storage::remove_work(&self.0);
        }
    }
}

/// How many times one step job is submitted before the fit fails (a step only reads the
/// prepared parts and the step's parameters: running it again gives the same sums).
const JOB_ATTEMPTS: usize = 3;

/// One image of the training set.
#[derive(Debug, Clone)]
struct Row {
    origin: String,
    part: usize,
    row: u32,
    label: u32,
}

/// What the driver knows of the prepared data.
struct Data {
    parts: Vec<String>,
    rows: Vec<Row>,
    invalid: usize,
}

/// The sums of one step job.
#[derive(Debug, Default)]
struct Sums {
    rows: u64,
    loss: f64,
    correct: u64,
    gradient: Vec<f64>,
    compute_seconds: f64,
}

impl TorchImageEstimator {
    /// An estimator with these parameters.
    pub fn new(params: TorchImageEstimatorParams) -> Self {
        Self { params }
    }

    /// Fine-tunes on `df` (an image column and a class-index column).
    pub async fn fit(&self, df: DataFrame) -> Result<TorchImageModel> {
        self.fit_with_progress(df, |_| {}).await
    }

    /// [`fit`](Self::fit), calling `progress` after every epoch.
    pub async fn fit_with_progress(
        &self,
        df: DataFrame,
        mut progress: impl FnMut(&EpochRecord) + Send,
    ) -> Result<TorchImageModel> {
        let started = Instant::now();
        let p = &self.params;
        p.validate()?;
        if !cfg!(feature = "torch") {
            return plan_err!(
                "fine-tuning {}: the driver reads and writes the model's parameters with \
                 libtorch, and this process was built without it (dlp-plugin's `torch` \
                 feature); fit from the dlp CLI or a Rust client built with it",
                p.model_name
            );
        }
        let entry = ProcessTorchConfig::get().zoo().get(&p.model_name)?;
        let (graph, _) = entry.training()?;
        let stages = graph.stages.len();
        let first = p.first_trainable(graph)?;
        let stored = if p.augment { 0 } else { first };
        let image_type = input_type(df.schema(), "inputCol", &p.input_col)?;
        crate::torch::infer::check_image_column(&p.input_col, image_type)?;
        let label_type = input_type(df.schema(), "labelCol", &p.label_col)?;
        crate::ml::data::check_numeric_type("label", &p.label_col, label_type)?;

        let run_id = format!("{:016x}", rand::random::<u64>());
        let run_dir = p
            .work_dir
            .clone()
            .unwrap_or_else(crate::access::work_base)
            .join(format!("ft-{run_id}"));
        let _cleanup = RunDir(run_dir.clone());
        let run_dir_s = run_dir.to_string_lossy().into_owned();

        // Job 1: prepare the images.
        let (state, plan) = df
            .select(vec![col(&p.input_col), col(&p.label_col)])?
            .into_parts();
        let node = MlNode::try_new(
            Some(plan),
            MlStep::FtPrepare(PrepareSpec {
                run_dir: run_dir_s.clone(),
                model: p.model_name.clone(),
                image_col: p.input_col.clone(),
                label_col: p.label_col.clone(),
                resize: p.resize,
                input: p.input_size(),
                stored_stages: stored,
            }),
        )?;
        let prepared = DataFrame::new(state.clone(), node.into_plan())
            .collect()
            .await?;
        let data = gather(&prepared)?;
        let prepare_seconds = started.elapsed().as_secs_f64();
        if data.rows.is_empty() {
            return plan_err!(
                "no valid image to fine-tune on ({} left out as invalid)",
                data.invalid
            );
        }
        let max_label = data.rows.iter().map(|r| r.label).max().unwrap_or(0) as usize;
        let k = p.num_classes.unwrap_or(max_label + 1);
        if max_label >= k {
            return plan_err!(
                "labelCol '{}' holds label {max_label} but numClasses is {k}",
                p.label_col
            );
        }
        let present: std::collections::BTreeSet<u32> = data.rows.iter().map(|r| r.label).collect();
        if present.len() < 2 {
            return plan_err!(
                "labelCol '{}' holds one class only ({present:?}); fine-tuning a classifier needs at least two",
                p.label_col
            );
        }

        // The split: a seeded shuffle of the images (in origin order) gives the validation
        // images first.
        let n = data.rows.len();
        let mut order: Vec<usize> = (0..n).collect();
        let mut rng = rand::rngs::StdRng::seed_from_u64(p.seed ^ 0x5EED_5EED);
        order.shuffle(&mut rng);
        let n_val = if p.validation_fraction > 0.0 {
            ((n as f64 * p.validation_fraction).round() as usize).clamp(1, n - 1)
        } else {
            0
        };
        let mut validation: Vec<usize> = order[..n_val].to_vec();
        validation.sort_unstable();
        let mut train: Vec<usize> = order[n_val..].to_vec();
        train.sort_unstable();

        let fingerprint = fingerprint(p, k, &data, &train);
        let ckpt = p.checkpoint_dir.clone();
        let mut weights = super::io(|| initial_weights(&entry, k, first, stages, p.seed))?;
        let sizes: Vec<usize> = weights.values.iter().map(Vec::len).collect();
        let mut optimizer = Optimizer::new(p.optimizer, p.momentum, p.weight_decay, &sizes);
        let mut history: Vec<EpochRecord> = vec![];
        let mut start_epoch = 0;
        if let Some(dir) = &ckpt {
            match super::io(|| latest_checkpoint(dir, &fingerprint))? {
                Some((epoch, saved)) => {
                    let mut w = saved.clone();
                    w.names.truncate(weights.names.len());
                    w.shapes.truncate(weights.names.len());
                    w.values.truncate(weights.names.len());
                    w.metadata.clear();
                    weights.check_same_layout(&w, &format!("checkpoint in {dir}"))?;
                    if !optimizer.restore(&weights, &saved) {
                        return exec_err!(
                            "checkpoint epoch {epoch} in {dir} lacks the optimizer state"
                        );
                    }
                    history = saved
                        .metadata
                        .get("history")
                        .and_then(|h| serde_json::from_str(h).ok())
                        .unwrap_or_default();
                    weights = w;
                    start_epoch = epoch;
                    tracing::info!(target: LOG_TARGET, epoch, dir = %dir, "fine-tuning resumes from a checkpoint");
                }
                None => super::io(|| {
                    write_checkpoint(dir, 0, &fingerprint, &weights, &optimizer, &history)
                })?,
            }
        }

        let steps_per_epoch = train.len().div_ceil(p.batch_size);
        let total_steps = (steps_per_epoch * p.epochs) as u64;
        let job = StepJob {
            state: state.clone(),
            run_id: run_id.clone(),
            run_dir: run_dir_s.clone(),
            model: p.model_name.clone(),
            num_classes: k,
            stored,
            first,
            label_smoothing: p.label_smoothing,
            flip: p.horizontal_flip,
            parts: data.parts.clone(),
        };
        let mut step_no = optimizer.steps;
        for epoch in start_epoch..p.epochs {
            let epoch_started = Instant::now();
            let mut ids = train.clone();
            if p.shuffle {
                let mut rng =
                    rand::rngs::StdRng::seed_from_u64(p.seed.wrapping_add(epoch as u64 + 1));
                ids.shuffle(&mut rng);
            }
            let (mut loss, mut correct, mut seen) = (0.0, 0u64, 0u64);
            let mut lr = p.learning_rate;
            for batch in ids.chunks(p.batch_size) {
                lr = p.schedule.rate(
                    p.learning_rate,
                    step_no,
                    total_steps,
                    epoch,
                    p.step_epochs,
                    p.gamma,
                );
                let params_path = job.write_params(step_no, &weights)?;
                let augment = p.augment.then_some((p.seed, epoch as u64));
                let sums = job
                    .run(step_no, &params_path, &data.rows, batch, augment, false)
                    .await?;
                let b = batch.len() as f64;
                let mut grads = Vec::with_capacity(sizes.len());
                let mut at = 0;
                for &s in &sizes {
                    grads.push(
                        sums.gradient[at..at + s]
                            .iter()
                            .map(|g| (g / b) as f32)
                            .collect::<Vec<f32>>(),
                    );
                    at += s;
                }
                optimizer.step(&mut weights.values, &grads, lr);
                loss += sums.loss;
                correct += sums.correct;
                seen += sums.rows;
                step_no += 1;
                job.remove_params(&params_path);
            }
            let (mut validation_loss, mut validation_accuracy) = (None, None);
            if !validation.is_empty() {
                let params_path = job.write_params(step_no, &weights)?;
                let sums = job
                    .run(step_no, &params_path, &data.rows, &validation, None, true)
                    .await?;
                job.remove_params(&params_path);
                validation_loss = Some(sums.loss / sums.rows.max(1) as f64);
                validation_accuracy = Some(sums.correct as f64 / sums.rows.max(1) as f64);
            }
            let seconds = epoch_started.elapsed().as_secs_f64();
            let record = EpochRecord {
                epoch: epoch + 1,
                steps: steps_per_epoch,
                learning_rate: lr,
                train_loss: loss / seen.max(1) as f64,
                train_accuracy: correct as f64 / seen.max(1) as f64,
                validation_loss,
                validation_accuracy,
                images_per_second: (seen as f64) / seconds.max(1e-9),
                seconds,
            };
            tracing::info!(
                target: LOG_TARGET,
                epoch = record.epoch,
                loss = record.train_loss,
                accuracy = record.train_accuracy,
                validation_accuracy = ?record.validation_accuracy,
                images_per_second = record.images_per_second,
                "fine-tuning epoch"
            );
            progress(&record);
            history.push(record);
            if let Some(dir) = &ckpt {
                super::io(|| {
                    write_checkpoint(dir, epoch + 1, &fingerprint, &weights, &optimizer, &history)
                })?;
            }
        }
        Ok(TorchImageModel {
            params: p.clone(),
            base: entry,
            num_classes: k,
            class_names: (0..k).map(|i| i.to_string()).collect(),
            weights,
            history,
            train_images: train.len(),
            validation_images: validation.len(),
            invalid_images: data.invalid,
            prepare_seconds,
            seconds: started.elapsed().as_secs_f64(),
            resumed_from: start_epoch,
        })
    }
}

/// The parts and rows the preparation job reported.
fn gather(batches: &[RecordBatch]) -> Result<Data> {
    let mut parts: Vec<(String, PartSummary)> = vec![];
    let mut invalid = 0;
    for b in batches {
        let paths = b.column(0).as_string::<i32>();
        let summaries = b.column(1).as_string::<i32>();
        for i in 0..b.num_rows() {
            let s: PartSummary = serde_json::from_str(summaries.value(i))
                .map_err(|e| exec_datafusion_err!("bad preparation summary: {e}"))?;
            invalid += s.invalid;
            if !paths.is_null(i) && s.rows > 0 {
                if s.origins.len() != s.rows || s.labels.len() != s.rows {
                    return exec_err!("preparation summary of {} is inconsistent", paths.value(i));
                }
                parts.push((paths.value(i).to_string(), s));
            }
        }
    }
    // Parts in the order of their first image: the same whatever the task layout.
    parts.sort_by(|a, b| a.1.origins.first().cmp(&b.1.origins.first()));
    let mut rows = vec![];
    for (p, (_, s)) in parts.iter().enumerate() {
        for (r, (origin, label)) in s.origins.iter().zip(&s.labels).enumerate() {
            rows.push(Row {
                origin: origin.clone(),
                part: p,
                row: r as u32,
                label: *label,
            });
        }
    }
    rows.sort_by(|a, b| {
        a.origin
            .cmp(&b.origin)
            .then(a.part.cmp(&b.part))
            .then(a.row.cmp(&b.row))
    });
    Ok(Data {
        parts: parts.into_iter().map(|(p, _)| p).collect(),
        rows,
        invalid,
    })
}

/// Identifies a fit's configuration and data, so that a checkpoint is resumed only by the
/// same fit.
fn fingerprint(p: &TorchImageEstimatorParams, k: usize, data: &Data, train: &[usize]) -> String {
    let mut q = p.clone();
    q.checkpoint_dir = None;
    q.work_dir = None;
    q.output_model_name = None;
    // More epochs continue a fit, except under a cosine schedule (spread over all steps).
    if q.schedule != super::optim::Schedule::Cosine {
        q.epochs = 0;
    }
    let mut h = Sha256::new();
    h.update(serde_json::to_vec(&q).unwrap_or_default());
    h.update(k.to_le_bytes());
    for &i in train {
        let r = &data.rows[i];
        h.update(r.origin.as_bytes());
        h.update(r.label.to_le_bytes());
    }
    h.finalize()
        .iter()
        .take(16)
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[cfg(feature = "torch")]
fn initial_weights(
    entry: &ModelEntry,
    k: usize,
    first: usize,
    stages: usize,
    seed: u64,
) -> Result<NamedTensors> {
    use rand::Rng;
    let trainer = super::worker::Trainer::load(entry, Some(k), first)?;
    let mut w = trainer.trainable_values()?;
    let (graph, _) = entry.training()?;
    let head = &graph.stages[stages - 1];
    // The new classifier: PyTorch's nn.Linear initialization, U(-1/sqrt(in), 1/sqrt(in)),
    // weights then biases, seeded.
    let fan_in = w
        .names
        .iter()
        .zip(&w.shapes)
        .find(|(n, s)| s.len() == 2 && head.params.iter().any(|p| n.starts_with(p.as_str())))
        .map(|(_, s)| s[1])
        .unwrap_or(1);
    let bound = 1.0 / (fan_in as f64).sqrt();
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    for (name, values) in w.names.iter().zip(w.values.iter_mut()) {
        if head.params.iter().any(|p| name.starts_with(p.as_str())) {
            for v in values.iter_mut() {
                *v = rng.random_range(-bound..bound) as f32;
            }
        }
    }
    Ok(w)
}

#[cfg(not(feature = "torch"))]
fn initial_weights(
    entry: &ModelEntry,
    _k: usize,
    _first: usize,
    _stages: usize,
    _seed: u64,
) -> Result<NamedTensors> {
    exec_err!(
        "fine-tuning model {}: the driver reads the model's parameters with libtorch, and this \
         process was built without it (dlp-plugin's `torch` feature)",
        entry.manifest.name
    )
}

/// What every step job of a fit shares.
struct StepJob {
    state: SessionState,
    run_id: String,
    run_dir: String,
    model: String,
    num_classes: usize,
    stored: usize,
    first: usize,
    label_smoothing: f64,
    flip: bool,
    parts: Vec<String>,
}

impl StepJob {
    fn write_params(&self, step: u64, weights: &NamedTensors) -> Result<String> {
        let bytes = weights.to_bytes();
        let name = format!("params-{step:06}.safetensors");
        super::io(|| write_file(&self.run_dir, &name, bytes))
    }

    fn remove_params(&self, path: &str) {
        if crate::storage::url_of_path(Path::new(path)).is_none() {
            let _ = std::fs::remove_file(path);
        }
    }

    /// Runs one step (or validation pass) over the images `ids` and sums what its tasks
    /// return, in part order.
    async fn run(
        &self,
        step: u64,
        params_path: &str,
        rows: &[Row],
        ids: &[usize],
        augment: Option<(u64, u64)>,
        evaluate: bool,
    ) -> Result<Sums> {
        let mut per_part: Vec<Vec<u32>> = vec![vec![]; self.parts.len()];
        let mut per_part_ids: Vec<Vec<u32>> = vec![vec![]; self.parts.len()];
        for &i in ids {
            per_part[rows[i].part].push(rows[i].row);
            per_part_ids[rows[i].part].push(i as u32);
        }
        let spec = StepSpec {
            run_id: self.run_id.clone(),
            step,
            model: self.model.clone(),
            num_classes: self.num_classes,
            stored_stages: self.stored,
            first_trainable: self.first,
            params_path: params_path.to_string(),
            label_smoothing: self.label_smoothing,
            augment,
            flip: self.flip,
            evaluate,
            parts: self.parts.clone(),
            rows: per_part,
            ids: if augment.is_some() {
                per_part_ids
            } else {
                vec![]
            },
        };
        let mut attempt = 1;
        loop {
            match self.collect(spec.clone(), ids.len() as u64).await {
                Ok(s) => return Ok(s),
                Err(e) if attempt < JOB_ATTEMPTS => {
                    tracing::warn!(target: LOG_TARGET, step, attempt, "step job failed, running it again: {e}");
                    attempt += 1;
                    tokio::time::sleep(std::time::Duration::from_millis(500 * attempt as u64))
                        .await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    async fn collect(&self, spec: StepSpec, expected: u64) -> Result<Sums> {
        let node = MlNode::try_new(None, MlStep::FtStep(spec))?;
        let batches: Vec<RecordBatch> = DataFrame::new(self.state.clone(), node.into_plan())
            .collect()
            .await?;
        let mut rows: Vec<(u32, u64, f64, u64, Vec<f64>)> = vec![];
        let mut out = Sums::default();
        for b in &batches {
            let part = b.column(0).as_primitive::<UInt32Type>();
            let n = b.column(1).as_primitive::<UInt64Type>();
            let loss = b.column(2).as_primitive::<Float64Type>();
            let correct = b.column(3).as_primitive::<UInt64Type>();
            let grad = b.column(4).as_binary::<i32>();
            let secs = b.column(5).as_primitive::<Float64Type>();
            for i in 0..b.num_rows() {
                out.compute_seconds += secs.value(i);
                let g = grad
                    .value(i)
                    .chunks_exact(4)
                    .map(|c| f32::from_le_bytes(c.try_into().unwrap()) as f64)
                    .collect();
                rows.push((
                    part.value(i),
                    n.value(i),
                    loss.value(i),
                    correct.value(i),
                    g,
                ));
            }
        }
        // Summed in part order: the same result whatever executor ran what.
        rows.sort_by_key(|r| r.0);
        for (_, n, loss, correct, g) in rows {
            out.rows += n;
            out.loss += loss;
            out.correct += correct;
            if out.gradient.is_empty() {
                out.gradient = g;
            } else if !g.is_empty() {
                if g.len() != out.gradient.len() {
                    return exec_err!("step tasks returned gradients of different lengths");
                }
                out.gradient.iter_mut().zip(&g).for_each(|(a, b)| *a += b);
            }
        }
        if out.rows != expected {
            return exec_err!("step job covered {} images, expected {expected}", out.rows);
        }
        Ok(out)
    }
}

/// Writes `name` under `dir` (local path, written beside and renamed so that a reader never
/// sees half a file; or object URL); returns its path.
pub(crate) fn write_file(dir: &str, name: &str, bytes: Vec<u8>) -> Result<String> {
    match crate::storage::url_of_path(Path::new(dir)) {
        Some(url) => {
            let target = url.join(name);
            let t = target.clone();
            crate::storage::io_blocking(async move {
                crate::storage::put(&t, bytes::Bytes::from(bytes)).await
            })
            .map_err(|e| exec_datafusion_err!("{e}"))?;
            Ok(target.to_string())
        }
        None => {
            std::fs::create_dir_all(dir)
                .map_err(|e| exec_datafusion_err!("cannot create {dir}: {e}"))?;
            let path = Path::new(dir).join(name);
            let tmp = path.with_extension("partial");
            std::fs::write(&tmp, &bytes)
                .and_then(|_| std::fs::rename(&tmp, &path))
                .map_err(|e| exec_datafusion_err!("cannot write {}: {e}", path.display()))?;
            Ok(path.to_string_lossy().into_owned())
        }
    }
}

/// The bytes of a local file or object (`None`: it does not exist).
pub(crate) fn read_file(path: &str) -> Result<Option<Vec<u8>>> {
    match crate::storage::url_of_path(Path::new(path)) {
        Some(url) => crate::storage::io_blocking(async move {
            match crate::storage::head(&url).await? {
                Some(_) => crate::storage::get(&url, u64::MAX)
                    .await
                    .map(|b| Some(b.to_vec())),
                None => Ok(None),
            }
        })
        .map_err(|e| exec_datafusion_err!("{e}")),
        None => match std::fs::read(path) {
            Ok(b) => Ok(Some(b)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => exec_err!("cannot read {path}: {e}"),
        },
    }
}

fn checkpoint_name(epoch: usize) -> String {
    format!("epoch-{epoch:04}.safetensors")
}

fn join(dir: &str, name: &str) -> String {
    format!("{}/{name}", dir.trim_end_matches('/'))
}

/// Writes the checkpoint after `epoch` (0: the initial weights), then `latest` naming it.
fn write_checkpoint(
    dir: &str,
    epoch: usize,
    fingerprint: &str,
    weights: &NamedTensors,
    optimizer: &Optimizer,
    history: &[EpochRecord],
) -> Result<()> {
    let mut out = weights.clone();
    optimizer.save_into(weights, &mut out);
    out.metadata
        .insert("fingerprint".into(), fingerprint.into());
    out.metadata.insert("epoch".into(), epoch.to_string());
    out.metadata.insert(
        "history".into(),
        serde_json::to_string(history).unwrap_or_default(),
    );
    write_dir_checked(dir)?;
    write_file(dir, &checkpoint_name(epoch), out.to_bytes())
        .map_err(|e| e.context("checkpointDir"))?;
    let latest = serde_json::json!({"epoch": epoch, "fingerprint": fingerprint}).to_string();
    write_file(dir, "latest.json", latest.into_bytes()).map_err(|e| e.context("checkpointDir"))?;
    Ok(())
}

fn write_dir_checked(dir: &str) -> Result<()> {
    match crate::storage::url_of_path(Path::new(dir)) {
        Some(url) => crate::access::check_write_url(&url),
        None => crate::access::check_write_path(Path::new(dir)),
    }
    .map_err(|e| exec_datafusion_err!("checkpointDir: {e}"))
}

/// The last checkpoint in `dir` of the fit with `fingerprint`: its epoch and contents.
fn latest_checkpoint(dir: &str, fingerprint: &str) -> Result<Option<(usize, NamedTensors)>> {
    let Some(latest) = read_file(&join(dir, "latest.json"))? else {
        return Ok(None);
    };
    let v: serde_json::Value = serde_json::from_slice(&latest)
        .map_err(|e| exec_datafusion_err!("checkpointDir {dir}: bad latest.json: {e}"))?;
    if v["fingerprint"].as_str() != Some(fingerprint) {
        tracing::info!(target: LOG_TARGET, dir, "checkpoints there are of another fit; starting afresh");
        return Ok(None);
    }
    let epoch = v["epoch"].as_u64().unwrap_or(0) as usize;
    let path = join(dir, &checkpoint_name(epoch));
    let Some(bytes) = read_file(&path)? else {
        return exec_err!("checkpointDir: latest.json names {path}, which is missing");
    };
    let saved = NamedTensors::from_bytes(&bytes, &path)?;
    if saved.metadata.get("fingerprint").map(String::as_str) != Some(fingerprint) {
        return exec_err!("checkpointDir: {path} is not of this fit");
    }
    Ok(Some((epoch, saved)))
}

impl TorchImageModel {
    /// The fine-tuned model's name.
    pub fn name(&self) -> String {
        self.params.output_name()
    }

    /// Saves the model into the model directory `dir` as `<name>.pt` (TorchScript: the
    /// base model's trainable form with the trained parameters, whose `forward` gives
    /// logits and features like every zoo model), `<name>.yaml` (manifest with sha256 and
    /// a `training` section, so it can be fine-tuned again) and `<name>.classes.txt`.
    /// Returns the new entry.
    #[cfg(feature = "torch")]
    pub fn save(&self, dir: &Path) -> Result<ModelEntry> {
        crate::access::check_write_path(dir).map_err(|e| exec_datafusion_err!("{e}"))?;
        let name = self.name();
        let (graph, _) = self.base.training()?;
        let first = self.params.first_trainable(graph)?;
        let mut trainer = super::worker::Trainer::load(&self.base, Some(self.num_classes), first)?;
        trainer.set_trainable(&self.weights, "the fine-tuned weights")?;
        std::fs::create_dir_all(dir)
            .map_err(|e| exec_datafusion_err!("cannot create {}: {e}", dir.display()))?;
        let file = format!("{name}.pt");
        let tmp = dir.join(format!(".{file}.partial"));
        trainer.save(&tmp)?;
        let bytes = std::fs::read(&tmp)
            .map_err(|e| exec_datafusion_err!("cannot read {}: {e}", tmp.display()))?;
        let sha: String = Sha256::digest(&bytes)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        std::fs::rename(&tmp, dir.join(&file))
            .map_err(|e| exec_datafusion_err!("cannot write {}: {e}", dir.join(&file).display()))?;
        let classes_file = format!("{name}.classes.txt");
        std::fs::write(dir.join(&classes_file), self.class_names.join("\n") + "\n")
            .map_err(|e| exec_datafusion_err!("cannot write {classes_file}: {e}"))?;
        let mut m = self.base.manifest.clone();
        m.name = name.clone();
        m.description = format!(
            "{} fine-tuned ({:?}, {} epochs) on {} images",
            self.base.manifest.name,
            self.params.trainable,
            self.history.len(),
            self.train_images
        );
        m.file = file.clone();
        m.sha256 = sha.clone();
        // The file is the trainable form: `forward` only, none of the base file's methods.
        m.methods = None;
        m.num_classes = self.num_classes;
        m.classes_file = Some(classes_file);
        if let Some(r) = self.params.resize {
            m.resize = r;
        }
        if let Some(input) = self.params.input_size() {
            m.input = input;
        }
        let mut training = graph.clone();
        training.file = file;
        training.sha256 = sha;
        m.training = Some(training);
        m.validate()?;
        let yaml = serde_yaml::to_string(&m)
            .map_err(|e| exec_datafusion_err!("cannot encode the manifest: {e}"))?;
        std::fs::write(dir.join(format!("{name}.yaml")), yaml)
            .map_err(|e| exec_datafusion_err!("cannot write the manifest of {name}: {e}"))?;
        let entry = ModelEntry {
            manifest: m,
            dir: dir.to_path_buf(),
        };
        entry.verify()?;
        // A model directory fetched from object storage: the model goes there too (the
        // manifest last), where the executors' copies of that folder find it.
        let files = [
            entry.manifest.file.clone(),
            entry.manifest.classes_file.clone().unwrap_or_default(),
            format!("{name}.yaml"),
        ];
        crate::storage::publish_local(dir, &files)
            .map_err(|e| exec_datafusion_err!("publishing model {name}: {e}"))?;
        Ok(entry)
    }

    /// The history as a JSON value (the report's `history`).
    pub fn history_json(&self) -> serde_json::Value {
        serde_json::to_value(&self.history).unwrap_or_default()
    }

    /// The fit's parameters and outcome, for reports.
    pub fn summary(&self) -> BTreeMap<String, serde_json::Value> {
        let mut m = BTreeMap::new();
        m.insert("model".into(), serde_json::json!(self.name()));
        m.insert("base".into(), serde_json::json!(self.base.manifest.name));
        m.insert("classes".into(), serde_json::json!(self.class_names));
        m.insert("trainImages".into(), serde_json::json!(self.train_images));
        m.insert(
            "validationImages".into(),
            serde_json::json!(self.validation_images),
        );
        m.insert(
            "invalidImages".into(),
            serde_json::json!(self.invalid_images),
        );
        m.insert("resumedFrom".into(), serde_json::json!(self.resumed_from));
        m.insert("seconds".into(), serde_json::json!(self.seconds));
        m.insert("history".into(), self.history_json());
        m
    }
}

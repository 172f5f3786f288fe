//! The executors' side of fine-tuning (libtorch): the trainable module of a run (loaded once
//! per process and run, classifier resized for the run's classes), the prepared parts
//! (cached in memory), a step's forward and backward passes, and the augmentation.

use std::collections::HashMap;
use std::io::Cursor;
use std::path::Path;
use std::sync::{Arc, LazyLock, Mutex};

use datafusion::arrow::array::{Array, AsArray, RecordBatch, StructArray};
use datafusion::arrow::datatypes::{DataType, Float64Type, Int32Type};
use datafusion::common::{DataFusionError, Result, exec_datafusion_err, exec_err};
use tch::{Device, Kind, Reduction, Tensor};

use super::spec::{LOG_TARGET, PartSummary, PrepareSpec, StepSpec, StepSums};
use super::tensors::NamedTensors;
use crate::torch::ProcessTorchConfig;
use crate::torch::manifest::ModelEntry;
use crate::torch::model::{ImageRef, preprocess};

fn tch_err(what: &'static str) -> impl Fn(tch::TchError) -> DataFusionError {
    move |e| exec_datafusion_err!("{what}: libtorch: {e}")
}

/// A model's trainable module in this process.
pub struct Trainer {
    module: tch::CModule,
    device: Device,
    stages: Vec<String>,
    /// Every parameter, by name.
    params: Vec<(String, Tensor)>,
    /// Indices (into `params`) of the trained ones, in the module's order.
    trainable: Vec<usize>,
    /// The parameter file last loaded.
    loaded: Option<String>,
}

// The module and its tensors are only used under the trainer's mutex.
unsafe impl Send for Trainer {}

impl Trainer {
    /// Loads the trainable form of `entry`; with `num_classes`, the classifier's parameters
    /// whose first dimension is the model's class count are resized to it (zeros until a
    /// parameter file sets them); the parameters of stages from `first_trainable` on are
    /// trained.
    pub fn load(
        entry: &ModelEntry,
        num_classes: Option<usize>,
        first_trainable: usize,
    ) -> Result<Self> {
        entry.verify_training()?;
        let (graph, path) = entry.training()?;
        let process = ProcessTorchConfig::get();
        let device = process.device.resolve()?;
        crate::torch::model::init_threads(process.intra_threads());
        let mut module = tch::CModule::load_on_device(&path, device).map_err(|e| {
            exec_datafusion_err!(
                "cannot load the trainable form of model {} ({}): {e}",
                entry.manifest.name,
                path.display()
            )
        })?;
        module.set_eval();
        let mut params = module
            .named_parameters()
            .map_err(tch_err("reading the model's parameters"))?;
        let owned_by = |name: &str, stages: &[crate::torch::manifest::TrainingStage]| {
            stages
                .iter()
                .any(|s| s.params.iter().any(|p| name.starts_with(p.as_str())))
        };
        let head = &graph.stages[graph.stages.len() - 1..];
        if let Some(k) = num_classes {
            let old = entry.manifest.num_classes as i64;
            for (name, p) in params.iter_mut() {
                if owned_by(name, head) {
                    let mut size = p.size();
                    if size.first() == Some(&old) {
                        size[0] = k as i64;
                        let zeros = Tensor::zeros(&size, (Kind::Float, device));
                        p.set_data(&zeros);
                    }
                }
            }
        }
        let trained = &graph.stages[first_trainable.min(graph.stages.len())..];
        let mut trainable = vec![];
        for (i, (name, p)) in params.iter_mut().enumerate() {
            let train = owned_by(name, trained);
            let _ = p.set_requires_grad(train);
            if train {
                trainable.push(i);
            }
        }
        Ok(Self {
            module,
            device,
            stages: graph.stages.iter().map(|s| s.method.clone()).collect(),
            params,
            trainable,
            loaded: None,
        })
    }

    /// Names, shapes and values of the trained parameters.
    pub fn trainable_values(&self) -> Result<NamedTensors> {
        let mut out = NamedTensors::default();
        for &i in &self.trainable {
            let (name, p) = &self.params[i];
            let shape = p.size().iter().map(|&d| d as usize).collect();
            let values = Vec::<f32>::try_from(p.detach().to_device(Device::Cpu).flatten(0, -1))
                .map_err(tch_err("reading a parameter"))?;
            out.push(name.clone(), shape, values);
        }
        Ok(out)
    }

    /// Sets the trained parameters.
    pub fn set_trainable(&mut self, values: &NamedTensors, what: &str) -> Result<()> {
        if values.names.len() != self.trainable.len() {
            return exec_err!(
                "{what}: {} arrays for {} trainable parameters",
                values.names.len(),
                self.trainable.len()
            );
        }
        tch::no_grad(|| -> Result<()> {
            for (j, &i) in self.trainable.iter().enumerate() {
                let (name, p) = &mut self.params[i];
                let size: Vec<i64> = values.shapes[j].iter().map(|&d| d as i64).collect();
                if *name != values.names[j] || p.size() != size {
                    return exec_err!(
                        "{what}: array {} ({:?}) does not match parameter {name} ({:?})",
                        values.names[j],
                        values.shapes[j],
                        p.size()
                    );
                }
                let src = Tensor::from_slice(&values.values[j])
                    .view(size.as_slice())
                    .to_device(self.device);
                p.f_copy_(&src).map_err(tch_err("setting a parameter"))?;
            }
            Ok(())
        })
    }

    /// Applies stages `from..to` to `x`.
    fn stages(&self, x: Tensor, from: usize, to: usize) -> Result<Tensor> {
        let mut h = x;
        for method in &self.stages[from..to] {
            h = self
                .module
                .method_ts(method, &[h])
                .map_err(|e| exec_datafusion_err!("stage {method}: {e}"))?;
        }
        Ok(h)
    }

    /// Saves the module (with its current parameters) as TorchScript.
    pub fn save(&self, path: &Path) -> Result<()> {
        self.module
            .save(path)
            .map_err(|e| exec_datafusion_err!("cannot write {}: {e}", path.display()))
    }

    fn zero_grads(&mut self) {
        for &i in &self.trainable {
            self.params[i].1.zero_grad();
        }
    }

    fn gradients(&self) -> Result<Vec<f32>> {
        let mut out = vec![];
        for &i in &self.trainable {
            let p = &self.params[i].1;
            let g = p.grad();
            if g.defined() {
                out.extend(
                    Vec::<f32>::try_from(g.to_device(Device::Cpu).flatten(0, -1))
                        .map_err(tch_err("reading a gradient"))?,
                );
            } else {
                out.extend(std::iter::repeat_n(0f32, p.numel()));
            }
        }
        Ok(out)
    }
}

type Shared = Arc<Mutex<Trainer>>;

/// Trainers of the last few runs (and the preparation's), by key.
static TRAINERS: LazyLock<Mutex<Vec<(String, Shared)>>> = LazyLock::new(Default::default);
const KEPT_TRAINERS: usize = 3;

fn trainer(key: &str, load: impl FnOnce() -> Result<Trainer>) -> Result<Shared> {
    let mut all = TRAINERS.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(i) = all.iter().position(|(k, _)| k == key) {
        let t = all.remove(i);
        let shared = t.1.clone();
        all.push(t);
        return Ok(shared);
    }
    let t = Arc::new(Mutex::new(load()?));
    all.push((key.to_string(), t.clone()));
    if all.len() > KEPT_TRAINERS {
        all.remove(0);
    }
    Ok(t)
}

// ---------------------------------------------------------------------------------------
// Parts

struct CachedPart {
    x: Tensor,
    y: Tensor,
    bytes: usize,
    last_used: u64,
}

#[derive(Default)]
struct PartCache {
    parts: HashMap<String, CachedPart>,
    bytes: usize,
    clock: u64,
}

static PARTS: LazyLock<Mutex<PartCache>> = LazyLock::new(Default::default);

fn cache_capacity() -> usize {
    std::env::var("DLP_ML_CACHE_BYTES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(4 << 30)
}

fn cache_put(path: &str, x: &Tensor, y: &Tensor) {
    let bytes = x.numel() * 4 + y.numel() * 8;
    let cap = cache_capacity();
    if bytes > cap {
        return;
    }
    let mut c = PARTS.lock().unwrap_or_else(|e| e.into_inner());
    c.clock += 1;
    let clock = c.clock;
    if let Some(old) = c.parts.insert(
        path.to_string(),
        CachedPart {
            x: x.shallow_clone(),
            y: y.shallow_clone(),
            bytes,
            last_used: clock,
        },
    ) {
        c.bytes -= old.bytes;
    }
    c.bytes += bytes;
    while c.bytes > cap {
        let Some(victim) = c
            .parts
            .iter()
            .min_by_key(|(_, p)| p.last_used)
            .map(|(k, _)| k.clone())
        else {
            break;
        };
        if let Some(p) = c.parts.remove(&victim) {
            c.bytes -= p.bytes;
        }
    }
}

/// Drops the cached parts under `dir` (end of a fit).
pub fn evict_dir(dir: &str) {
    let mut c = PARTS.lock().unwrap_or_else(|e| e.into_inner());
    let victims: Vec<String> = c
        .parts
        .keys()
        .filter(|k| k.starts_with(dir))
        .cloned()
        .collect();
    for k in victims {
        if let Some(p) = c.parts.remove(&k) {
            c.bytes -= p.bytes;
        }
    }
}

/// Checks that a work file or directory a plan names lies where work files may be.
fn check_work(path: &str) -> Result<()> {
    match crate::storage::url_of_path(Path::new(path)) {
        Some(url) => crate::access::check_work_url(&url),
        None => crate::access::check_work_path(Path::new(path)),
    }
    .map_err(|e| exec_datafusion_err!("{e}"))
}

/// Reads a work file (local path or object URL), after checking where it is.
pub fn read_work_file(path: &str) -> Result<Vec<u8>> {
    check_work(path)?;
    super::fit::read_file(path)?.ok_or_else(|| exec_datafusion_err!("{path} is missing"))
}

/// Writes a work file under `dir` (local path or object URL), after checking where it is;
/// returns its path.
pub fn write_work_file(dir: &str, name: &str, bytes: Vec<u8>) -> Result<String> {
    check_work(dir)?;
    super::fit::write_file(dir, name, bytes)
}

fn part(path: &str) -> Result<(Tensor, Tensor)> {
    {
        let mut c = PARTS.lock().unwrap_or_else(|e| e.into_inner());
        c.clock += 1;
        let clock = c.clock;
        if let Some(p) = c.parts.get_mut(path) {
            p.last_used = clock;
            return Ok((p.x.shallow_clone(), p.y.shallow_clone()));
        }
    }
    let bytes = read_work_file(path)?;
    let tensors = Tensor::load_multi_from_stream(Cursor::new(bytes))
        .map_err(|e| exec_datafusion_err!("cannot read the prepared part {path}: {e}"))?;
    let get = |n: &str| {
        tensors
            .iter()
            .find(|(k, _)| k == n)
            .map(|(_, t)| t.shallow_clone())
            .ok_or_else(|| exec_datafusion_err!("prepared part {path} has no '{n}'"))
    };
    let (x, y) = (get("x")?, get("y")?);
    cache_put(path, &x, &y);
    Ok((x, y))
}

// ---------------------------------------------------------------------------------------
// Preparation

/// Labels of a batch as class indices; the error names the column and the image.
fn labels(
    batch: &RecordBatch,
    col: &str,
    origins: &dyn Fn(usize) -> String,
) -> Result<Vec<Option<u32>>> {
    let idx = batch
        .schema()
        .index_of(col)
        .map_err(|_| exec_datafusion_err!("labelCol: no column '{col}'"))?;
    let cast = datafusion::arrow::compute::cast(batch.column(idx), &DataType::Float64)?;
    let values = cast.as_primitive::<Float64Type>();
    let mut out = Vec::with_capacity(values.len());
    for i in 0..values.len() {
        if values.is_null(i) {
            return exec_err!("labelCol '{col}': null label for image {}", origins(i));
        }
        let v = values.value(i);
        if !(v >= 0.0 && v.fract() == 0.0 && v < u32::MAX as f64) {
            return exec_err!(
                "labelCol '{col}': label {v} of image {} is not a class index (0, 1, 2, ...)",
                origins(i)
            );
        }
        out.push(Some(v as u32));
    }
    Ok(out)
}

/// Prepares one partition (see [`PrepareSpec`]).
pub fn prepare(
    partition: usize,
    spec: &PrepareSpec,
    batches: &[RecordBatch],
) -> Result<(Option<String>, PartSummary)> {
    let started = std::time::Instant::now();
    let mut entry = ProcessTorchConfig::get().zoo().get(&spec.model)?;
    let resize = spec.resize.unwrap_or(entry.manifest.resize);
    if let Some(input) = spec.input {
        entry.manifest.input = input;
    }
    let t = trainer(&format!("prepare:{}", spec.model), || {
        Trainer::load(&entry, None, usize::MAX)
    })?;
    let mut summary = PartSummary::default();
    let mut inputs = vec![];
    for b in batches {
        let idx = b
            .schema()
            .index_of(&spec.image_col)
            .map_err(|_| exec_datafusion_err!("inputCol: no column '{}'", spec.image_col))?;
        let images: &StructArray = b.column(idx).as_struct_opt().ok_or_else(|| {
            exec_datafusion_err!("inputCol '{}' is not an image struct", spec.image_col)
        })?;
        let origin = images.column(0).as_string::<i32>();
        let height = images.column(1).as_primitive::<Int32Type>();
        let width = images.column(2).as_primitive::<Int32Type>();
        let channels = images.column(3).as_primitive::<Int32Type>();
        let data = images.column(5).as_binary::<i32>();
        let name = |i: usize| {
            if images.is_null(i) || origin.is_null(i) {
                format!("(row {i} of input partition {partition})")
            } else {
                origin.value(i).to_string()
            }
        };
        let labels = labels(b, &spec.label_col, &name)?;
        for (i, label) in labels.into_iter().enumerate() {
            if images.is_null(i) || channels.value(i) < 1 {
                summary.invalid += 1;
                tracing::warn!(target: LOG_TARGET, image = %name(i), "invalid image left out of fine-tuning");
                continue;
            }
            let img = ImageRef {
                height: height.value(i).max(0) as usize,
                width: width.value(i).max(0) as usize,
                channels: channels.value(i) as usize,
                data: data.value(i),
            };
            match preprocess(&entry, img, resize) {
                Ok(x) => {
                    inputs.push(x);
                    summary.origins.push(name(i));
                    summary.labels.push(label.unwrap_or_default());
                }
                Err(e) => {
                    summary.invalid += 1;
                    tracing::warn!(target: LOG_TARGET, image = %name(i), error = %e, "image left out of fine-tuning");
                }
            }
        }
    }
    summary.rows = inputs.len();
    if inputs.is_empty() {
        return Ok((None, summary));
    }
    let trainer = t.lock().unwrap_or_else(|e| e.into_inner());
    let stored = spec.stored_stages.min(trainer.stages.len() - 1);
    let mut out = vec![];
    for chunk in inputs.chunks(32) {
        let x = Tensor::f_stack(chunk, 0)
            .map_err(tch_err("stacking images"))?
            .to_device(trainer.device);
        let h = tch::no_grad(|| trainer.stages(x, 0, stored))?;
        out.push(h.to_device(Device::Cpu));
    }
    drop(trainer);
    let x = Tensor::f_cat(&out, 0).map_err(tch_err("joining a part"))?;
    let y = Tensor::from_slice(&summary.labels.iter().map(|&l| l as i64).collect::<Vec<_>>());
    let mut bytes = vec![];
    Tensor::save_multi_to_stream(&[("x", &x), ("y", &y)], &mut bytes)
        .map_err(tch_err("encoding a part"))?;
    let name = format!("part-{:016x}.pt", rand::random::<u64>());
    let path = write_work_file(&spec.run_dir, &name, bytes)?;
    cache_put(&path, &x, &y);
    tracing::info!(
        target: LOG_TARGET,
        partition,
        rows = summary.rows,
        invalid = summary.invalid,
        stored_stages = stored,
        shape = ?x.size(),
        ms = started.elapsed().as_millis() as u64,
        "fine-tuning partition prepared"
    );
    Ok((Some(path), summary))
}

// ---------------------------------------------------------------------------------------
// Steps

/// Runs one step over `parts` (indices into the spec's parts); see [`StepSpec`].
pub fn step(spec: &StepSpec, parts: &[u32]) -> Result<StepSums> {
    let started = std::time::Instant::now();
    let shared = trainer(&spec.run_id, || {
        let entry = ProcessTorchConfig::get().zoo().get(&spec.model)?;
        Trainer::load(&entry, Some(spec.num_classes), spec.first_trainable)
    })?;
    let mut t = shared.lock().unwrap_or_else(|e| e.into_inner());
    if t.loaded.as_deref() != Some(spec.params_path.as_str()) {
        let bytes = read_work_file(&spec.params_path)?;
        let values = NamedTensors::from_bytes(&bytes, &spec.params_path)?;
        t.set_trainable(&values, &spec.params_path)?;
        t.loaded = Some(spec.params_path.clone());
    }
    t.zero_grads();
    let n_stages = t.stages.len();
    let mut sums = StepSums::default();
    for &p in parts {
        let p = p as usize;
        let (Some(path), Some(rows)) = (spec.parts.get(p), spec.rows.get(p)) else {
            return exec_err!("FtStepExec: no part {p} in the step");
        };
        if rows.is_empty() {
            continue;
        }
        let (x, y) = part(path)?;
        let idx = Tensor::from_slice(&rows.iter().map(|&r| r as i64).collect::<Vec<_>>());
        let n = x.size()[0];
        if rows.iter().any(|&r| r as i64 >= n) {
            return exec_err!("FtStepExec: part {path} has {n} rows; the step names more");
        }
        let mut xb = x.index_select(0, &idx).to_device(t.device);
        let yb = y.index_select(0, &idx).to_device(t.device);
        if let (Some((seed, epoch)), Some(ids)) = (spec.augment, spec.ids.get(p))
            && spec.stored_stages == 0
        {
            xb = augment(&xb, seed, epoch, ids, spec.flip)?;
        }
        let run = |t: &Trainer| -> Result<(Tensor, Tensor)> {
            let h = tch::no_grad(|| {
                t.stages(
                    xb.shallow_clone(),
                    spec.stored_stages,
                    spec.first_trainable.max(spec.stored_stages),
                )
            })?;
            let logits = t.stages(h, spec.first_trainable.max(spec.stored_stages), n_stages)?;
            let loss = logits
                .f_cross_entropy_loss::<Tensor>(
                    &yb,
                    None,
                    Reduction::Sum,
                    -100,
                    spec.label_smoothing,
                )
                .map_err(tch_err("loss"))?;
            let correct = logits.argmax(1, false).eq_tensor(&yb).sum(Kind::Int64);
            Ok((loss, correct))
        };
        let (loss, correct) = if spec.evaluate {
            tch::no_grad(|| run(&t))?
        } else {
            let (loss, correct) = run(&t)?;
            loss.f_backward().map_err(tch_err("backward"))?;
            (loss, correct)
        };
        sums.rows += rows.len() as u64;
        sums.loss += loss.double_value(&[]);
        sums.correct += correct.int64_value(&[]) as u64;
    }
    if !spec.evaluate {
        sums.gradient = t.gradients()?;
        t.zero_grads();
    }
    tracing::info!(
        target: LOG_TARGET,
        run = %spec.run_id,
        step = spec.step,
        evaluate = spec.evaluate,
        parts = parts.len(),
        rows = sums.rows,
        ms = started.elapsed().as_millis() as u64,
        "fine-tuning step"
    );
    Ok(sums)
}

/// A splitmix64 stream: the augmentation's random numbers, one stream per image and epoch,
/// so an image gets the same crop whichever executor runs it.
struct Rng(u64);

impl Rng {
    fn new(seed: u64, epoch: u64, id: u64) -> Self {
        Self(
            seed ^ epoch.wrapping_mul(0x9E37_79B9_7F4A_7C15)
                ^ id.wrapping_mul(0xD1B5_4A32_D192_ED03),
        )
    }

    fn next(&mut self) -> f64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        (z >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Random resized crop (area 0.35-1, aspect 3/4-4/3, back to the input size, bilinear) and
/// horizontal flip (probability 1/2, when `flip`) of each image of `x` `[n, C, H, W]`.
pub fn augment(x: &Tensor, seed: u64, epoch: u64, ids: &[u32], flip: bool) -> Result<Tensor> {
    let size = x.size();
    let (h, w) = (size[2], size[3]);
    let mut out = Vec::with_capacity(ids.len());
    for (i, &id) in ids.iter().enumerate() {
        let mut rng = Rng::new(seed, epoch, id as u64);
        let area = 0.35 + 0.65 * rng.next();
        let log_ratio = (0.75f64).ln() + ((4.0f64 / 3.0).ln() - (0.75f64).ln()) * rng.next();
        let ratio = log_ratio.exp();
        let cw = (((area * ratio).sqrt() * w as f64).round() as i64).clamp(1, w);
        let ch = (((area / ratio).sqrt() * h as f64).round() as i64).clamp(1, h);
        let x0 = ((w - cw + 1) as f64 * rng.next()) as i64;
        let y0 = ((h - ch + 1) as f64 * rng.next()) as i64;
        let mut img = x
            .get(i as i64)
            .narrow(1, y0.min(h - ch), ch)
            .narrow(2, x0.min(w - cw), cw)
            .unsqueeze(0)
            .f_upsample_bilinear2d([h, w], false, None, None)
            .map_err(tch_err("augmentation"))?;
        if rng.next() < 0.5 && flip {
            img = img.flip([3]);
        }
        out.push(img);
    }
    Tensor::f_cat(&out, 0).map_err(tch_err("augmentation"))
}

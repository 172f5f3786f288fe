//! Inference over an `image` column, written once for every caller: [`Runner`] holds a
//! model step ready to run in this process (manifest entry, device, threads) and does
//! preprocessing (CPU) and forward passes (device) as two steps, so that an operator can
//! overlap them ([`TorchInferenceExec`](super::TorchInferenceExec)), or both at once
//! ([`Runner::apply`], the model SQL functions); outputs are Arrow arrays with nulls for
//! invalid images.
//!
//! Without the crate's `torch` feature (the scheduler) a runner cannot be made: plans with
//! model steps are built and shipped, and only processes with libtorch run them.
#![cfg_attr(
    not(feature = "torch"),
    allow(unused_imports, dead_code, clippy::needless_return)
)]

use std::sync::Arc;

use datafusion::arrow::array::{
    Array, ArrayRef, AsArray, FixedSizeListArray, Float32Array, ListArray, StringBuilder,
    StructArray,
};
use datafusion::arrow::buffer::{NullBuffer, OffsetBuffer};
use datafusion::arrow::datatypes::{DataType, Field, Int32Type};
use datafusion::common::{Result, exec_datafusion_err, exec_err};
#[cfg(feature = "torch")]
use tch::{Kind, Tensor};

use super::ProcessTorchConfig;
use super::manifest::{ModelEntry, ResizePolicy};
#[cfg(feature = "torch")]
use super::model::{ImageRef, LoadedModel};
use super::spec::{TorchSpec, TorchTask, prediction_fields};
use crate::image::schema::{ImageColumnBuilder, ImageRow, is_image_type};

/// Preprocessed images of one record batch.
#[derive(Debug)]
pub struct Prepared {
    /// Rows of the batch.
    pub rows: usize,
    /// Row index of each valid image, in order.
    pub valid: Vec<usize>,
    /// `[valid.len(), 3, H, W]` (absent when no image is valid).
    #[cfg(feature = "torch")]
    pub tensor: Option<Tensor>,
    /// Origin of each valid image (kept only for image outputs, which carry it on).
    pub origins: Vec<String>,
}

/// Checks that `data_type` is an image struct, naming the column otherwise.
pub fn check_image_column(name: &str, data_type: &DataType) -> Result<()> {
    if !is_image_type(data_type) {
        return datafusion::common::plan_err!(
            "column '{name}' must be an image struct<origin, height, width, nChannels, mode, \
             data> (from read_images), got {data_type}"
        );
    }
    Ok(())
}

/// A model step ready to run in this process: the manifest entry, the device and libtorch's
/// threads. The model itself is loaded (file read, sha256 checked, deserialized) by the
/// first call that needs it, once per process and device.
#[derive(Debug, Clone)]
pub struct Runner {
    spec: TorchSpec,
    entry: ModelEntry,
    #[cfg(feature = "torch")]
    device: tch::Device,
    threads: usize,
    /// The model once a call has needed it: later batches skip the process cache's lock and
    /// its comparison of manifests.
    #[cfg(feature = "torch")]
    loaded: std::sync::OnceLock<Arc<LoadedModel>>,
}

/// What a process without libtorch says when asked to run a model.
#[cfg(not(feature = "torch"))]
const NO_TORCH: &str = "this process was built without libtorch (dlp-plugin's `torch` feature) \
                        and cannot run models; executors run them";

impl Runner {
    /// The step `spec` on this process's model directory and device (the spec's device
    /// first, then the process's).
    pub fn new(spec: TorchSpec) -> Result<Self> {
        let entry = ProcessTorchConfig::get()
            .zoo()
            .get_version(&spec.model, &spec.sha256)?;
        Self::for_entry(entry, spec)
    }

    /// [`Runner::new`] for a model already looked up.
    pub fn for_entry(entry: ModelEntry, spec: TorchSpec) -> Result<Self> {
        let process = ProcessTorchConfig::get();
        #[cfg(not(feature = "torch"))]
        return {
            let _ = (entry, process);
            exec_err!("model {}: {NO_TORCH}", spec.model)
        };
        #[cfg(feature = "torch")]
        {
            let device = spec.device.unwrap_or(process.device).resolve()?;
            let mut spec = spec;
            if spec.batch_size == 0 {
                // Left to the executor (`dlp.torch.batch_size = auto`, or a plan made outside
                // a session): the default for the device the step runs on.
                spec.batch_size = crate::config::default_batch_size(device.is_cuda());
            }
            // A batch size above the process's ceiling fails here, before the model is
            // loaded (its `prepack` and first pass are sized by it) or any batch is formed.
            crate::limits::Limits::get()
                .check_batch_size(&spec.output_col, spec.batch_size)
                .map_err(|e| exec_datafusion_err!("{e}"))?;
            Ok(Self {
                spec,
                entry,
                device,
                threads: process.intra_threads(),
                loaded: std::sync::OnceLock::new(),
            })
        }
    }

    /// The step.
    pub fn spec(&self) -> &TorchSpec {
        &self.spec
    }

    /// The loaded model (cached per process and device).
    #[cfg(feature = "torch")]
    fn model(&self) -> Result<Arc<LoadedModel>> {
        if let Some(m) = self.loaded.get() {
            return Ok(m.clone());
        }
        super::model::init_threads(self.threads);
        let m = super::model::load_model(&self.entry, self.device, self.spec.batch_size)?;
        Ok(self.loaded.get_or_init(|| m).clone())
    }

    /// Decodes the image structs of `images` into model input; invalid images (nChannels < 1,
    /// or null) are skipped and later give null outputs. Blocking.
    pub fn prepare(&self, images: &dyn Array) -> Result<Prepared> {
        #[cfg(not(feature = "torch"))]
        return {
            let _ = (images, self.threads);
            exec_err!("{NO_TORCH}")
        };
        #[cfg(feature = "torch")]
        prepare(self.model()?.as_ref(), &self.spec, images)
    }

    /// Runs the model on prepared images (in chunks of the spec's batch size) and builds the
    /// output column. Blocking.
    pub fn run(&self, prepared: &Prepared) -> Result<ArrayRef> {
        #[cfg(not(feature = "torch"))]
        return {
            let _ = prepared;
            exec_err!("{NO_TORCH}")
        };
        #[cfg(feature = "torch")]
        run(self.model()?.as_ref(), &self.spec, prepared)
    }

    /// [`prepare`](Self::prepare) then [`run`](Self::run), without stalling the async
    /// runtime's other tasks (the SQL functions' path).
    pub fn apply(&self, images: &dyn Array) -> Result<ArrayRef> {
        blocking(|| {
            let prepared = self.prepare(images)?;
            self.run(&prepared)
        })
    }
}

/// Runs CPU-heavy work without stalling the async runtime's other tasks.
pub(crate) fn blocking<T>(f: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current() {
        Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(f)
        }
        _ => f(),
    }
}

#[cfg(feature = "torch")]
fn prepare(model: &LoadedModel, spec: &TorchSpec, images: &dyn Array) -> Result<Prepared> {
    let images: &StructArray = images
        .as_struct_opt()
        .ok_or_else(|| exec_datafusion_err!("column {} is not a struct", spec.input_col))?;
    let height = images.column(1).as_primitive::<Int32Type>();
    let width = images.column(2).as_primitive::<Int32Type>();
    let channels = images.column(3).as_primitive::<Int32Type>();
    let data = images.column(5).as_binary::<i32>();
    let origin = images.column(0).as_string::<i32>();
    let keep_origin = spec.task == TorchTask::Image;
    let mut origins = Vec::new();
    let resize: ResizePolicy = spec.resize.unwrap_or(model.entry.manifest.resize);
    let rows: Vec<usize> = (0..images.len())
        .filter(|&i| !images.is_null(i) && channels.value(i) >= 1)
        .collect();
    // One buffer for the batch, in the layout the model takes: no copy per image or batch.
    let (tensor, results) = model.preprocess_batch(
        rows.iter().map(|&i| ImageRef {
            height: height.value(i).max(0) as usize,
            width: width.value(i).max(0) as usize,
            channels: channels.value(i) as usize,
            data: data.value(i),
        }),
        resize,
        model.input_layout(),
    )?;
    let mut valid = Vec::new();
    for (&i, r) in rows.iter().zip(results) {
        match r {
            Ok(()) => {
                valid.push(i);
                if keep_origin {
                    origins.push(origin.value(i).to_string());
                }
            }
            Err(e) => {
                tracing::warn!(row = i, error = %e, "image cannot be preprocessed; output is null")
            }
        }
    }
    Ok(Prepared {
        rows: images.len(),
        valid,
        tensor,
        origins,
    })
}

#[cfg(feature = "torch")]
fn run(model: &LoadedModel, spec: &TorchSpec, prepared: &Prepared) -> Result<ArrayRef> {
    let started = std::time::Instant::now();
    let out = run_uncounted(model, spec, prepared)?;
    let n_valid = prepared.valid.len();
    crate::metrics::record_inference(
        &spec.model,
        spec.batch_size,
        n_valid.div_ceil(spec.batch_size.max(1)),
        n_valid,
        prepared.rows - n_valid,
        started.elapsed().as_secs_f64(),
    );
    Ok(out)
}

#[cfg(feature = "torch")]
fn run_uncounted(model: &LoadedModel, spec: &TorchSpec, prepared: &Prepared) -> Result<ArrayRef> {
    let dim = spec.output_dim;
    let n_valid = prepared.valid.len();
    // Rows of `dim` floats for the valid images, in order.
    let mut values: Vec<f32> = Vec::with_capacity(n_valid * dim);
    let mut top: Vec<Vec<(usize, f32)>> = Vec::new();
    let mut pictures: Vec<ImageRow> = Vec::new();
    if let Some(t) = &prepared.tensor {
        for chunk in t.split(spec.batch_size.max(1) as i64, 0) {
            let out = model.forward(&chunk, spec.task)?;
            match spec.task {
                TorchTask::Image => {
                    let images = out.image.ok_or_else(|| {
                        exec_datafusion_err!("model {} has no image output", spec.model)
                    })?;
                    pictures.extend(to_image_rows(model, &images)?);
                }
                TorchTask::Features => {
                    let f = out.features.ok_or_else(|| {
                        exec_datafusion_err!("model {} has no feature output", spec.model)
                    })?;
                    if f.size().last().copied() != Some(dim as i64) {
                        return exec_err!(
                            "model {} gives {:?} features, manifest says {dim}",
                            spec.model,
                            f.size()
                        );
                    }
                    values.extend(to_vec(&f)?);
                }
                TorchTask::Probabilities | TorchTask::TopK(_) | TorchTask::Logits => {
                    let logits = out.logits.ok_or_else(|| {
                        exec_datafusion_err!("model {} has no logits", spec.model)
                    })?;
                    if spec.task == TorchTask::Logits {
                        values.extend(to_vec(&logits)?);
                        continue;
                    }
                    let probs = logits.softmax(-1, Kind::Float);
                    if let TorchTask::TopK(k) = spec.task {
                        let (p, idx) = probs.topk(k as i64, -1, true, true);
                        let p = to_vec(&p)?;
                        let idx: Vec<i64> = Vec::<i64>::try_from(idx.flatten(0, -1))
                            .map_err(|e| exec_datafusion_err!("topk: {e}"))?;
                        for (ps, is) in p.chunks(k).zip(idx.chunks(k)) {
                            top.push(
                                is.iter()
                                    .map(|&c| c as usize)
                                    .zip(ps.iter().copied())
                                    .collect(),
                            );
                        }
                    } else {
                        values.extend(to_vec(&probs)?);
                    }
                }
            }
        }
    }
    let mut is_valid = vec![false; prepared.rows];
    for &i in &prepared.valid {
        is_valid[i] = true;
    }
    let nulls = NullBuffer::from(is_valid.clone());
    match spec.task {
        TorchTask::Image => {
            let bytes = pictures.iter().map(|p| p.data.len()).sum();
            let mut builder = ImageColumnBuilder::with_capacity(prepared.rows, bytes);
            let mut made = pictures.iter().zip(&prepared.origins).peekable();
            let placeholder = ImageRow::invalid();
            for &valid in &is_valid {
                match made.next_if(|_| valid) {
                    Some((row, origin)) => builder.append(origin, row),
                    // Null rows (invalid input) carry the invalid row under the null bit.
                    None => builder.append("", &placeholder),
                }
            }
            Ok(builder.finish_with_nulls(Some(nulls)))
        }
        TorchTask::Features | TorchTask::Probabilities | TorchTask::Logits => {
            let mut full = vec![0f32; prepared.rows * dim];
            for (k, &row) in prepared.valid.iter().enumerate() {
                full[row * dim..(row + 1) * dim].copy_from_slice(&values[k * dim..(k + 1) * dim]);
            }
            let item = Arc::new(Field::new("item", DataType::Float32, true));
            Ok(Arc::new(FixedSizeListArray::try_new(
                item,
                dim as i32,
                Arc::new(Float32Array::from(full)),
                Some(nulls),
            )?))
        }
        TorchTask::TopK(_) => {
            let mut class = StringBuilder::new();
            let mut description = StringBuilder::new();
            let mut probability = Vec::new();
            let mut offsets = vec![0i32];
            let mut preds = top.into_iter();
            for valid in is_valid {
                if valid {
                    let p = preds.next().unwrap_or_default();
                    for (c, prob) in p {
                        class.append_value(c.to_string());
                        description.append_value(model.classes.get(c).map_or("", String::as_str));
                        probability.push(prob);
                    }
                }
                offsets.push(probability.len() as i32);
            }
            let items = StructArray::try_new(
                prediction_fields(),
                vec![
                    Arc::new(class.finish()),
                    Arc::new(description.finish()),
                    Arc::new(Float32Array::from(probability)),
                ],
                None,
            )?;
            let item = Arc::new(Field::new(
                "item",
                DataType::Struct(prediction_fields()),
                true,
            ));
            Ok(Arc::new(ListArray::try_new(
                item,
                OffsetBuffer::new(offsets.into()),
                Arc::new(items),
                Some(nulls),
            )?))
        }
    }
}

/// `[N, C, H, W]` model output -> 8-bit images in Spark's layout (HWC, B G R for three
/// channels): `pixel = (v * std + mean) / scale` with the manifest's `image_output` (or the
/// inverse of its input normalization), rounded half to even and clamped to 0..=255.
#[cfg(feature = "torch")]
fn to_image_rows(model: &LoadedModel, images: &Tensor) -> Result<Vec<ImageRow>> {
    let m = &model.entry.manifest;
    let size = images.size();
    let [n, c, h, w] = size[..] else {
        return exec_err!(
            "model {}: image output must be [N, C, H, W], got {size:?}",
            m.name
        );
    };
    if !matches!(c, 1 | 3) {
        return exec_err!(
            "model {}: image output has {c} channels; 1 (gray) or 3 are supported",
            m.name
        );
    }
    let (scale, mean, std) = match &m.image_output {
        Some(o) => (o.scale, o.mean.clone(), o.std.clone()),
        None => (m.scale, m.mean.clone(), m.std.clone()),
    };
    if mean.len() != c as usize {
        return exec_err!(
            "model {}: image output has {c} channel(s) but the denormalization has {} mean \
             values; set image_output {{scale, mean, std}} in the manifest with {c} value(s)",
            m.name,
            mean.len()
        );
    }
    let err = |e: tch::TchError| exec_datafusion_err!("model {} image output: {e}", m.name);
    let shape = [1, c, 1, 1];
    let mean = Tensor::from_slice(&mean).f_view(shape).map_err(err)?;
    let std = Tensor::from_slice(&std).f_view(shape).map_err(err)?;
    let pixels = ((images.to_kind(Kind::Double) * std + mean) / scale)
        .round()
        .clamp(0.0, 255.0)
        .to_kind(Kind::Uint8);
    // Spark's order is B G R; the model's is `channel_order`.
    let pixels = if c == 3 && m.channel_order == "RGB" {
        pixels
            .f_index_select(1, &Tensor::from_slice(&[2i64, 1, 0]))
            .map_err(err)?
    } else {
        pixels
    };
    let hwc = pixels
        .f_permute([0, 2, 3, 1])
        .map_err(err)?
        .contiguous()
        .flatten(0, -1);
    let bytes = Vec::<u8>::try_from(hwc).map_err(err)?;
    let per = (h * w * c) as usize;
    debug_assert_eq!(bytes.len(), n as usize * per);
    Ok(bytes
        .chunks(per.max(1))
        .map(|d| ImageRow::new(h as usize, w as usize, c as usize, d.to_vec()))
        .collect())
}

#[cfg(feature = "torch")]
fn to_vec(t: &Tensor) -> Result<Vec<f32>> {
    Vec::<f32>::try_from(t.to_kind(Kind::Float).contiguous().flatten(0, -1))
        .map_err(|e| exec_datafusion_err!("tensor to vec: {e}"))
}

//! Loaded models (once per process and device), image preprocessing as the manifest says,
//! and batched forward passes.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock};

use datafusion::common::{DataFusionError, Result, exec_datafusion_err, exec_err};
use tch::{Device, IValue, Kind, Tensor};

use super::manifest::{ModelEntry, ResizePolicy};
use super::spec::TorchTask;

/// A TorchScript model on a device, ready for inference.
#[derive(Debug)]
pub struct LoadedModel {
    /// Where it came from.
    pub entry: ModelEntry,
    /// The device it runs on.
    pub device: Device,
    /// Class names (may be empty).
    pub classes: Vec<String>,
    module: tch::CModule,
    /// Turns at the model: `streams` forward passes at a time per model and device, each
    /// with its share of libtorch's threads (or the whole GPU); other tasks overlap their
    /// preprocessing meanwhile.
    turns: Turns,
    /// Whether inputs go in channels-last (NHWC) memory: on a CPU where
    /// `DLP_TORCH_CHANNELS_LAST` allows it, until the model refuses such an input once.
    channels_last: AtomicBool,
}

/// Channels-last inputs on a CPU, unless `DLP_TORCH_CHANNELS_LAST` is `0` or `false`:
/// oneDNN runs the zoo's convolutions in NHWC without reordering them per layer, which
/// made EfficientNet-Lite0's forward pass about 1.4x faster on one thread (batch 16,
/// 2026-12-02; outputs within 1.1e-5 of NCHW).
fn channels_last_enabled() -> bool {
    static ON: OnceLock<bool> = OnceLock::new();
    *ON.get_or_init(|| {
        !matches!(
            std::env::var("DLP_TORCH_CHANNELS_LAST")
                .as_deref()
                .map(str::trim),
            Ok("0" | "false")
        )
    })
}

/// A counting semaphore for blocking threads.
#[derive(Debug)]
struct Turns {
    free: Mutex<usize>,
    freed: Condvar,
}

struct Turn<'a>(&'a Turns);

impl Turns {
    fn new(n: usize) -> Self {
        Self {
            free: Mutex::new(n.max(1)),
            freed: Condvar::new(),
        }
    }

    fn take(&self) -> Result<Turn<'_>> {
        let poisoned = |_| exec_datafusion_err!("model lock poisoned");
        let mut free = self.free.lock().map_err(poisoned)?;
        while *free == 0 {
            free = self.freed.wait(free).map_err(poisoned)?;
        }
        *free -= 1;
        Ok(Turn(self))
    }
}

impl Drop for Turn<'_> {
    fn drop(&mut self) {
        if let Ok(mut free) = self.0.free.lock() {
            *free += 1;
        }
        self.0.freed.notify_one();
    }
}

/// File, its sha256 (a model saved again under the same name is another model), the
/// manifest's name (two manifests may share a file and read it differently: their own
/// outputs and methods) and device.
type CacheKey = (PathBuf, String, String, Device);

/// One slot per model: the map's lock is held only to find a slot; a slot's lock is held
/// while its model loads, so tasks wanting the same model wait for that one load, and tasks
/// wanting another model do not wait at all.
type Slot = Arc<Mutex<Option<Arc<LoadedModel>>>>;

fn cache() -> &'static Mutex<HashMap<CacheKey, Slot>> {
    static CACHE: OnceLock<Mutex<HashMap<CacheKey, Slot>>> = OnceLock::new();
    CACHE.get_or_init(Default::default)
}

fn torch_err(what: &str) -> impl Fn(tch::TchError) -> DataFusionError + '_ {
    move |e| exec_datafusion_err!("{what}: {e}")
}

/// Sets libtorch's intra-op threads once per process (the executor's cores per stream).
pub fn init_threads(threads: usize) {
    static ONCE: OnceLock<()> = OnceLock::new();
    ONCE.get_or_init(|| {
        tch::set_num_threads(threads.max(1) as i32);
        tracing::info!(threads, "libtorch intra-op threads");
    });
}

/// The model on `device`, loaded (and its sha256 verified) on first use in this process.
/// On a CPU, the manifest's `methods.prepack` is called once with `batch` (the batch size
/// the first task that loads it runs, at most `--max-batch-size`) and the input size.
pub fn load_model(entry: &ModelEntry, device: Device, batch: usize) -> Result<Arc<LoadedModel>> {
    let m = &entry.manifest;
    let key = (entry.file_path(), m.sha256.clone(), m.name.clone(), device);
    let poisoned = || exec_datafusion_err!("model cache lock poisoned");
    let slot = cache()
        .lock()
        .map_err(|_| poisoned())?
        .entry(key)
        .or_default()
        .clone();
    let mut slot = slot.lock().map_err(|_| poisoned())?;
    // (A manifest edited since, with the same file, is loaded again.)
    if let Some(loaded) = slot.as_ref()
        && loaded.entry.manifest == *m
    {
        return Ok(loaded.clone());
    }
    entry.verify()?;
    let started = std::time::Instant::now();
    let mut module = tch::CModule::load_on_device(entry.file_path(), device).map_err(torch_err(
        &format!("cannot load model {}", entry.manifest.name),
    ))?;
    module.set_eval();
    if let (Device::Cpu, Some(prepack)) =
        (device, m.methods.as_ref().and_then(|x| x.prepack.as_ref()))
    {
        let _no_grad = tch::no_grad_guard();
        let size = |n: usize| IValue::Int(n as i64);
        // (Callers refuse a batch above the ceiling first; the clamp keeps any other caller's
        // allocation within it too.)
        let batch = batch.clamp(1, crate::limits::Limits::get().max_batch_size.max(1));
        module
            .method_is(prepack, &[size(batch), size(m.input.height), size(m.input.width)])
            .map_err(torch_err(&format!(
                "model {}: its methods.prepack ('{prepack}', called with batch size, height, width)",
                m.name
            )))?;
    }
    let model = Arc::new(LoadedModel {
        classes: entry.classes()?,
        entry: entry.clone(),
        device,
        module,
        turns: Turns::new(super::ProcessTorchConfig::get().streams()),
        channels_last: AtomicBool::new(device == Device::Cpu && channels_last_enabled()),
    });
    tracing::info!(
        model = %entry.manifest.name,
        ?device,
        ms = started.elapsed().as_millis() as u64,
        "model loaded"
    );
    *slot = Some(model.clone());
    Ok(model)
}

use super::preprocess::Preprocessing;
pub use super::preprocess::{ImageRef, Layout};

/// Output of a forward pass: the outputs the manifest names that the task reads, on the CPU
/// as float.
#[derive(Debug)]
pub struct ModelOutput {
    /// `[N, classes]` logits, when the model has them.
    pub logits: Option<Tensor>,
    /// `[N, feature_dim]` features, when the model has them.
    pub features: Option<Tensor>,
    /// `[N, C, H, W]` images, when the model has them.
    pub image: Option<Tensor>,
}

impl LoadedModel {
    /// Preprocesses one image into a `[3, H, W]` float tensor on the CPU: channel order,
    /// resize (bilinear with antialiasing, as PIL / `F.interpolate(antialias=True)`), scale,
    /// mean / std.
    pub fn preprocess(&self, img: ImageRef<'_>, resize: ResizePolicy) -> Result<Tensor> {
        preprocess(&self.entry, img, resize)
    }

    /// The layout inputs are best prepared in: channels-last while the model takes
    /// channels-last inputs on a CPU (a batch then goes to the model without a copy).
    pub fn input_layout(&self) -> Layout {
        match self.channels_last.load(Ordering::Relaxed) {
            true => Layout::Hwc,
            false => Layout::Chw,
        }
    }

    /// Preprocesses images into one `[N, 3, H, W]` batch in `layout` (with NHWC strides for
    /// [`Layout::Hwc`]); an image that cannot be preprocessed is left out, with its error.
    pub fn preprocess_batch<'a>(
        &self,
        images: impl IntoIterator<Item = ImageRef<'a>>,
        resize: ResizePolicy,
        layout: Layout,
    ) -> Result<(Option<Tensor>, Vec<Result<()>>)> {
        let p = preprocessing(&self.entry, resize);
        let one = 3 * p.height * p.width;
        let images = images.into_iter();
        let mut values: Vec<f32> = Vec::with_capacity(images.size_hint().0 * one);
        let mut results = Vec::new();
        for img in images {
            let at = values.len();
            values.resize(at + one, 0.0);
            let r = super::preprocess::preprocess_into(&p, img, layout, &mut values[at..]);
            if r.is_err() {
                values.truncate(at);
            }
            results.push(r);
        }
        if values.is_empty() {
            return Ok((None, results));
        }
        let (n, h, w) = ((values.len() / one) as i64, p.height as i64, p.width as i64);
        let t = Tensor::from_slice(&values);
        let batch = match layout {
            Layout::Chw => t.f_view([n, 3, h, w]),
            Layout::Hwc => t
                .f_view([n, h, w, 3])
                .and_then(|t| t.f_permute([0, 3, 1, 2])),
        }
        .map_err(torch_err("preprocess"))?;
        Ok((Some(batch), results))
    }

    /// Runs a `[N, 3, H, W]` batch; returns, as CPU tensors, only the output `task` reads
    /// (the others stay on the device and are dropped).
    pub fn forward(&self, batch: &Tensor, task: TorchTask) -> Result<ModelOutput> {
        let _no_grad = tch::no_grad_guard();
        let _turn = self.turns.take()?;
        let input = batch.to_device(self.device);
        let name = &self.entry.manifest.name;
        let nhwc = || {
            input
                .f_permute([0, 2, 3, 1])
                .and_then(|t| t.f_contiguous())
                .and_then(|t| t.f_permute([0, 3, 1, 2]))
        };
        let outputs = self.entry.manifest.outputs;
        // Features alone come from the manifest's `methods.features` where it has one (no
        // classifier run for nothing).
        let features_method = match task {
            TorchTask::Features if outputs.features.is_some() => self
                .entry
                .manifest
                .methods
                .as_ref()
                .and_then(|m| m.features.as_deref()),
            _ => None,
        };
        let call = |x: Tensor| match features_method {
            Some(method) => self.module.method_is(method, &[IValue::Tensor(x)]),
            None => self.module.forward_is(&[IValue::Tensor(x)]),
        };
        let out = match self.channels_last.load(Ordering::Relaxed) && input.dim() == 4 {
            // The same values in NHWC memory. A model that needs NCHW memory (a `view`
            // over its input, say) fails on it; it is then run as it is, from now on.
            // (A model that fails on NCHW memory too keeps channels-last: its error is
            // reported, not taken for a layout it cannot read.)
            true => match nhwc().and_then(call) {
                Ok(out) => Ok(out),
                Err(e) => call(input.contiguous()).inspect(|_| {
                    self.channels_last.store(false, Ordering::Relaxed);
                    tracing::info!(model = %name, error = %e, "model refused a channels-last input; running it on NCHW inputs");
                }),
            },
            false => call(input.contiguous()),
        }
        .map_err(torch_err(&format!(
            "model {name} {}",
            features_method.map_or("forward".to_string(), |m| format!("method '{m}' (methods.features)"))
        )))?;
        if features_method.is_some() {
            let IValue::Tensor(t) = out else {
                return exec_err!(
                    "model {name}: methods.features must return one tensor [N, feature_dim], got {out:?}"
                );
            };
            return Ok(ModelOutput {
                logits: None,
                features: Some(t.to_device(Device::Cpu).to_kind(Kind::Float)),
                image: None,
            });
        }
        // A module returning one tensor is read as a tuple of one.
        let items = match out {
            IValue::Tuple(items) => items,
            t @ IValue::Tensor(_) => vec![t],
            other => return exec_err!("unexpected model output {other:?}"),
        };
        let pick = |i: Option<usize>| -> Result<Option<Tensor>> {
            let Some(i) = i else { return Ok(None) };
            match items.get(i) {
                Some(IValue::Tensor(t)) => Ok(Some(t.to_device(Device::Cpu).to_kind(Kind::Float))),
                other => exec_err!(
                    "model {}: output {i} is not a tensor: {other:?} ({} outputs)",
                    name,
                    items.len()
                ),
            }
        };
        let wanted = |i: Option<usize>, used: bool| if used { i } else { None };
        let logits = matches!(
            task,
            TorchTask::Probabilities | TorchTask::TopK(_) | TorchTask::Logits
        );
        Ok(ModelOutput {
            logits: pick(wanted(outputs.logits, logits))?,
            features: pick(wanted(outputs.features, task == TorchTask::Features))?,
            image: pick(wanted(outputs.image, task == TorchTask::Image))?,
        })
    }
}

/// What the model's manifest asks of its input, with `resize`.
fn preprocessing(entry: &ModelEntry, resize: ResizePolicy) -> Preprocessing<'_> {
    let m = &entry.manifest;
    Preprocessing {
        height: m.input.height,
        width: m.input.width,
        rgb: m.channel_order == "RGB",
        resize,
        scale: m.scale,
        mean: &m.mean,
        std: &m.std,
    }
}

/// See [`LoadedModel::preprocess`] ([`super::preprocess`] does the work).
pub fn preprocess(entry: &ModelEntry, img: ImageRef<'_>, resize: ResizePolicy) -> Result<Tensor> {
    let p = preprocessing(entry, resize);
    let values = super::preprocess::preprocess(&p, img)?;
    Tensor::from_slice(&values)
        .f_view([3, p.height as i64, p.width as i64])
        .map_err(torch_err("preprocess"))
}

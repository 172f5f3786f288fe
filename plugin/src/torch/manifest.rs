//! Model manifests (YAML beside each TorchScript file) and the model directory ("zoo").

use std::path::{Path, PathBuf};

use datafusion::common::{Result, plan_datafusion_err, plan_err};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// How an image is brought to the model's input size.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ResizePolicy {
    /// Stretch to the input size (sparkdl's behaviour).
    Stretch,
    /// Resize the shorter side to input / 0.875, then crop the centre (ImageNet evaluation).
    ShorterSideCenterCrop,
}

impl ResizePolicy {
    /// The shorter side [`ResizePolicy::ShorterSideCenterCrop`] resizes to before cropping
    /// an input of `width` x `height` (256 for 224: ImageNet's 0.875 crop).
    pub fn crop_short_side(width: usize, height: usize) -> usize {
        (width.min(height) as f64 / 0.875).round() as usize
    }

    /// How an `image` (width, height) becomes a `model` input (width, height): the size it
    /// is resized to, then the top-left corner of the model input cropped from it, as
    /// (resized width, resized height, left, top).
    pub fn layout(
        self,
        (w, h): (usize, usize),
        (tw, th): (usize, usize),
    ) -> (usize, usize, usize, usize) {
        match self {
            Self::Stretch => (tw, th, 0, 0),
            Self::ShorterSideCenterCrop => {
                let short = Self::crop_short_side(tw, th);
                let (rw, rh) = if h <= w {
                    (w * short / h, short)
                } else {
                    (short, h * short / w)
                };
                let (rw, rh) = (rw.max(tw), rh.max(th));
                (rw, rh, (rw - tw) / 2, (rh - th) / 2)
            }
        }
    }

    /// The smallest image (width, height) that this policy only shrinks, never enlarges, to
    /// a `width` x `height` model input: a decode at least this large loses nothing the
    /// model would see.
    pub fn cover(self, width: usize, height: usize) -> (usize, usize) {
        match self {
            Self::Stretch => (width, height),
            Self::ShorterSideCenterCrop => {
                let short = Self::crop_short_side(width, height);
                (short, short)
            }
        }
    }
}

/// Input size of a model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct InputSize {
    /// Rows.
    pub height: usize,
    /// Columns.
    pub width: usize,
}

/// Which element of the module's output tuple is what (a module returning one tensor has
/// a tuple of one: index 0).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Outputs {
    /// Index of the class logits `[N, classes]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logits: Option<usize>,
    /// Index of the feature vector `[N, feature_dim]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub features: Option<usize>,
    /// Index of an image output `[N, C, H, W]` (C = 1 or 3, in the model's normalized
    /// space; see [`ImageOutput`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<usize>,
}

/// How an image output is turned back into 8-bit pixels: `pixel = (v * std + mean) / scale`,
/// rounded and clamped to 0..=255, channels in the manifest's `channel_order`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImageOutput {
    /// Pixel scale (1/255 when the model works on [0, 1]).
    pub scale: f64,
    /// Per-channel mean (one value per output channel).
    pub mean: Vec<f64>,
    /// Per-channel standard deviation (one value per output channel).
    pub std: Vec<f64>,
}

/// Optional entry points of the TorchScript module besides `forward` (the manifest's
/// `methods` section; `models/export.py` writes both for the zoo's Lite files).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Methods {
    /// A method taking the same batch as `forward` and returning only the features
    /// `[N, feature_dim]` (what `outputs.features` names): used when a task reads nothing
    /// else, so a classifier it does not need is not run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub features: Option<String>,
    /// A method `(batch: int, height: int, width: int)` called once after the model is
    /// loaded on a CPU, with the batch size and input size it will see: the zoo's files
    /// reorder their convolution weights into oneDNN's layout there instead of on every
    /// forward pass.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prepack: Option<String>,
}

/// A model: a TorchScript file plus what is needed to feed it and read it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelManifest {
    /// Name used in SQL and the API (`efficientnet_lite0`).
    pub name: String,
    /// Free text: architecture and where the weights come from.
    #[serde(default)]
    pub description: String,
    /// TorchScript file, relative to the manifest.
    pub file: String,
    /// sha256 of `file`, checked before loading.
    pub sha256: String,
    /// Input size.
    pub input: InputSize,
    /// Resize policy.
    pub resize: ResizePolicy,
    /// `RGB` or `BGR`.
    pub channel_order: String,
    /// Pixel scale applied before mean / std (1/255 maps bytes to [0, 1]).
    pub scale: f64,
    /// Per-channel mean, in `channel_order`.
    pub mean: Vec<f64>,
    /// Per-channel standard deviation, in `channel_order`.
    pub std: Vec<f64>,
    /// Output indices.
    pub outputs: Outputs,
    /// Optional entry points besides `forward`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub methods: Option<Methods>,
    /// Length of the feature vector (0 when the model has no feature output).
    #[serde(default)]
    pub feature_dim: usize,
    /// Number of classes of the logits (0 if none).
    #[serde(default)]
    pub num_classes: usize,
    /// File with one class name per line, relative to the manifest.
    #[serde(default)]
    pub classes_file: Option<String>,
    /// Denormalization of the image output (default: the inverse of the input's `scale`,
    /// `mean` and `std`, which suits image-to-image models working in the input's space).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_output: Option<ImageOutput>,
    /// The trainable form of the model, for fine-tuning (absent: the model cannot be
    /// fine-tuned).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub training: Option<TrainingGraph>,
}

/// A model's trainable form (the manifest's `training` section, written by
/// `models/export.py`): a TorchScript file whose parameters are not frozen, with one traced
/// method per stage. Applied in order, the stages give the logits; the last one is the
/// classifier (`features -> logits`), which fine-tuning replaces for its classes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainingGraph {
    /// TorchScript file, relative to the manifest.
    pub file: String,
    /// sha256 of `file`, checked before loading.
    pub sha256: String,
    /// The stages, input to logits.
    pub stages: Vec<TrainingStage>,
}

/// One stage of a [`TrainingGraph`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainingStage {
    /// The module's method that applies the stage.
    pub method: String,
    /// Prefixes of the names of the parameters the stage owns.
    #[serde(default)]
    pub params: Vec<String>,
}

impl ModelManifest {
    /// The smallest decoded image this model's preprocessing only shrinks, under its own
    /// resize policy ([`ResizePolicy::cover`]).
    pub fn decode_cover(&self) -> (usize, usize) {
        self.resize.cover(self.input.width, self.input.height)
    }

    /// Checks internal consistency.
    pub fn validate(&self) -> Result<()> {
        if self.mean.len() != 3 || self.std.len() != 3 {
            return plan_err!("model {}: mean and std need 3 values each", self.name);
        }
        if self.std.contains(&0.0) {
            return plan_err!("model {}: std must not be 0", self.name);
        }
        if !matches!(self.channel_order.as_str(), "RGB" | "BGR") {
            return plan_err!(
                "model {}: channel_order must be RGB or BGR, got {}",
                self.name,
                self.channel_order
            );
        }
        // Files named by a manifest stay in the model directory.
        let training_file = self.training.as_ref().map(|t| &t.file);
        for f in std::iter::once(&self.file)
            .chain(&self.classes_file)
            .chain(training_file)
        {
            if !std::path::Path::new(f)
                .components()
                .all(|c| matches!(c, std::path::Component::Normal(_)))
            {
                return plan_err!(
                    "model {}: file '{f}' must be a relative path inside the model directory",
                    self.name
                );
            }
        }
        if let Some(t) = &self.training
            && (t.stages.len() < 2 || t.stages.iter().any(|s| s.method.is_empty()))
        {
            return plan_err!(
                "model {}: training.stages needs at least two named stages (the last one is \
                 the classifier)",
                self.name
            );
        }
        if self.input.height == 0 || self.input.width == 0 {
            return plan_err!("model {}: input size must be positive", self.name);
        }
        if let Some(m) = &self.methods {
            for (key, name) in [("features", &m.features), ("prepack", &m.prepack)] {
                let Some(name) = name else { continue };
                let ident = name
                    .chars()
                    .next()
                    .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
                    && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
                if !ident {
                    return plan_err!(
                        "model {}: methods.{key} must be the name of a TorchScript method \
                         (letters, digits and '_'), got '{name}'",
                        self.name
                    );
                }
            }
            if m.features.is_some() && self.outputs.features.is_none() {
                return plan_err!(
                    "model {}: methods.features needs outputs.features (the tensor it returns)",
                    self.name
                );
            }
        }
        let o = &self.outputs;
        if o.logits.is_none() && o.features.is_none() && o.image.is_none() {
            return plan_err!(
                "model {}: outputs must name at least one of logits, features, image",
                self.name
            );
        }
        if o.features.is_some() != (self.feature_dim > 0) {
            return plan_err!(
                "model {}: feature_dim must be positive exactly when outputs.features is set \
                 (feature_dim {}, outputs.features {:?})",
                self.name,
                self.feature_dim,
                o.features
            );
        }
        if let Some(out) = &self.image_output {
            if out.mean.len() != out.std.len() || !matches!(out.mean.len(), 1 | 3) {
                return plan_err!(
                    "model {}: image_output needs mean and std of 1 or 3 values each \
                     (one per output channel), got {} and {}",
                    self.name,
                    out.mean.len(),
                    out.std.len()
                );
            }
            if out.scale == 0.0 {
                return plan_err!("model {}: image_output.scale must not be 0", self.name);
            }
        }
        Ok(())
    }
}

/// A model found in the model directory.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelEntry {
    /// The manifest.
    pub manifest: ModelManifest,
    /// The manifest's directory.
    pub dir: PathBuf,
}

impl ModelEntry {
    /// Absolute path of the TorchScript file.
    pub fn file_path(&self) -> PathBuf {
        self.dir.join(&self.manifest.file)
    }

    /// Class names (empty if the manifest names no file).
    pub fn classes(&self) -> Result<Vec<String>> {
        let Some(f) = &self.manifest.classes_file else {
            return Ok(Vec::new());
        };
        let path = self.dir.join(f);
        let text = std::fs::read_to_string(&path).map_err(|e| {
            plan_datafusion_err!(
                "model {}: cannot read {}: {e}",
                self.manifest.name,
                path.display()
            )
        })?;
        let classes: Vec<String> = text.lines().map(str::to_string).collect();
        if classes.len() != self.manifest.num_classes {
            return plan_err!(
                "model {}: {} lists {} classes, manifest says {}",
                self.manifest.name,
                path.display(),
                classes.len(),
                self.manifest.num_classes
            );
        }
        Ok(classes)
    }

    /// Recomputes the file's sha256 and compares it with the manifest.
    pub fn verify(&self) -> Result<()> {
        verify_file(
            &self.manifest.name,
            &self.file_path(),
            &self.manifest.sha256,
        )
    }

    /// The trainable form (its section and absolute file path), or an error saying the
    /// model cannot be fine-tuned.
    pub fn training(&self) -> Result<(&TrainingGraph, PathBuf)> {
        match &self.manifest.training {
            Some(t) => Ok((t, self.dir.join(&t.file))),
            None => plan_err!(
                "model {} has no trainable form (no `training` section in its manifest); \
                 export it again with models/export.py to fine-tune it",
                self.manifest.name
            ),
        }
    }

    /// [`verify`](Self::verify) for the trainable form's file.
    pub fn verify_training(&self) -> Result<()> {
        let (t, path) = self.training()?;
        verify_file(&self.manifest.name, &path, &t.sha256)
    }
}

/// Checks that `path` has the sha256 `want` (hex), naming the model and file otherwise.
pub fn verify_file(model: &str, path: &Path, want: &str) -> Result<()> {
    {
        let bytes = std::fs::read(path).map_err(|e| {
            plan_datafusion_err!("model {model}: missing file {}: {e}", path.display())
        })?;
        let got: String = Sha256::digest(&bytes)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        if got != want {
            return plan_err!(
                "model {model}: sha256 mismatch for {}: manifest says {want}, file has {got}",
                path.display()
            );
        }
        Ok(())
    }
}

/// Environment variable naming the model directory.
pub const MODEL_DIR_ENV: &str = "DLP_MODEL_DIR";

/// The model directory: `DLP_MODEL_DIR`, else `~/.cache/dlp/models`.
pub fn default_model_dir() -> PathBuf {
    if let Ok(dir) = std::env::var(MODEL_DIR_ENV) {
        return PathBuf::from(dir);
    }
    let home = std::env::var("HOME").unwrap_or_else(|_| ".".into());
    Path::new(&home).join(".cache/dlp/models")
}

/// The models of a directory (`*.yaml` manifests).
#[derive(Debug, Clone)]
pub struct ModelZoo {
    dir: PathBuf,
}

impl ModelZoo {
    /// A zoo over `dir`.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    /// The zoo of [`default_model_dir`].
    pub fn default_dir() -> Self {
        Self::new(default_model_dir())
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// All models, sorted by name.
    pub fn list(&self) -> Result<Vec<ModelEntry>> {
        let entries = std::fs::read_dir(&self.dir).map_err(|e| {
            plan_datafusion_err!(
                "model directory {} cannot be read ({e}); export models with `dlp models export` \
                 or set {MODEL_DIR_ENV}",
                self.dir.display()
            )
        })?;
        let mut out = Vec::new();
        for entry in entries.flatten() {
            let path = entry.path();
            if path.extension().is_some_and(|e| e == "yaml" || e == "yml") {
                match self.read_manifest(&path) {
                    Ok(m) => out.push(m),
                    // Removed since the directory was listed (a model deleted or replaced
                    // while this query looks up another one): it is not in the zoo.
                    Err(_) if !path.exists() => {}
                    Err(e) => return Err(e),
                }
            }
        }
        out.sort_by(|a, b| a.manifest.name.cmp(&b.manifest.name));
        Ok(out)
    }

    fn read_manifest(&self, path: &Path) -> Result<ModelEntry> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            plan_datafusion_err!("cannot read model manifest {}: {e}", path.display())
        })?;
        let manifest: ModelManifest = serde_yaml::from_str(&text)
            .map_err(|e| plan_datafusion_err!("invalid model manifest {}: {e}", path.display()))?;
        manifest.validate()?;
        Ok(ModelEntry {
            manifest,
            dir: path.parent().map(Path::to_path_buf).unwrap_or_default(),
        })
    }

    /// The model called `name` (case-insensitive), with a clear error listing the known ones.
    /// When the directory is this process's copy of an object-store folder (`--model-dir
    /// s3://...`) and the model is not in it, the folder is fetched again first: a model
    /// fine-tuned and published there after this process started is found.
    pub fn get(&self, name: &str) -> Result<ModelEntry> {
        match self.get_here(name) {
            Err(e) if crate::storage::source_of_local(&self.dir).is_some() => {
                let fetched = crate::storage::refresh_local(&self.dir)
                    .map_err(|r| plan_datafusion_err!("model {name}: {r}"))?;
                if fetched == 0 {
                    return Err(e);
                }
                self.get_here(name)
            }
            other => other,
        }
    }

    /// [`get`](Self::get) of the version with `sha256` (what the plan was made with; empty:
    /// any). A copy of an object-store folder whose model differs fetches the model's files
    /// again; otherwise a different version is an error naming both digests, never a
    /// silent run of another model.
    pub fn get_version(&self, name: &str, sha256: &str) -> Result<ModelEntry> {
        let entry = self.get(name)?;
        if sha256.is_empty() || entry.manifest.sha256 == sha256 {
            return Ok(entry);
        }
        let stem = entry.manifest.file.strip_suffix(".pt").unwrap_or(name);
        let renewed = crate::storage::renew_local(&self.dir, stem)
            .map_err(|e| plan_datafusion_err!("model {name}: {e}"))?;
        let entry = if renewed > 0 {
            self.get_here(name)?
        } else {
            entry
        };
        if entry.manifest.sha256 == sha256 {
            return Ok(entry);
        }
        plan_err!(
            "model {name}: the plan was made with sha256 {sha256}, but {} holds sha256 {} (the \
             model was replaced since, or this process's model directory is not the planner's)",
            self.dir.display(),
            entry.manifest.sha256
        )
    }

    fn get_here(&self, name: &str) -> Result<ModelEntry> {
        let models = self.list()?;
        let wanted = name.to_ascii_lowercase();
        match models
            .iter()
            .find(|m| m.manifest.name.to_ascii_lowercase() == wanted)
        {
            Some(m) => {
                let file = m.file_path();
                if !file.exists() {
                    return plan_err!(
                        "model {name}: missing file {} (named by its manifest)",
                        file.display()
                    );
                }
                Ok(m.clone())
            }
            None => {
                let known: Vec<_> = models.iter().map(|m| m.manifest.name.as_str()).collect();
                plan_err!(
                    "unknown model '{name}' in {}; known models: {}",
                    self.dir.display(),
                    if known.is_empty() {
                        "none".to_string()
                    } else {
                        known.join(", ")
                    }
                )
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A manifest that is gone by the time it is read (here a link whose target was
    /// removed, as when a model is deleted while another query lists the directory) is not
    /// a model and fails no lookup; an unreadable one that is there still fails.
    #[test]
    fn a_vanished_manifest_is_not_listed() {
        let dir = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(dir.path().join("gone.yaml"), dir.path().join("m.yaml"))
            .unwrap();
        let zoo = ModelZoo::new(dir.path());
        assert!(zoo.list().unwrap().is_empty());
        let err = zoo.get("m").unwrap_err().to_string();
        assert!(err.contains("unknown model 'm'"), "{err}");
        std::fs::write(dir.path().join("bad.yaml"), "name: [").unwrap();
        let err = zoo.list().unwrap_err().to_string();
        assert!(err.contains("bad.yaml"), "{err}");
    }

    /// The `methods` section: read when there, optional, and refused with the key and what
    /// was expected when it names no method or a features method without a features output.
    #[test]
    fn methods_are_optional_and_checked() {
        let base = "name: m\nfile: m.pt\nsha256: x\ninput: {height: 8, width: 8}\n\
                    resize: stretch\nchannel_order: RGB\nscale: 1.0\nmean: [0, 0, 0]\n\
                    std: [1, 1, 1]\nfeature_dim: 4\n";
        let parse = |extra: &str| -> ModelManifest {
            serde_yaml::from_str(&format!("{base}{extra}")).unwrap()
        };
        let m = parse("outputs: {features: 0}\n");
        assert_eq!(m.methods, None);
        m.validate().unwrap();
        let m = parse("outputs: {features: 0}\nmethods: {features: feats, prepack: prepack}\n");
        m.validate().unwrap();
        let methods = m.methods.unwrap();
        assert_eq!(methods.features.as_deref(), Some("feats"));
        assert_eq!(methods.prepack.as_deref(), Some("prepack"));
        let err = parse("outputs: {features: 0}\nmethods: {prepack: \"pre pack\"}\n")
            .validate()
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("methods.prepack") && err.contains("'pre pack'"),
            "{err}"
        );
        let m: ModelManifest = serde_yaml::from_str(&format!(
            "{}outputs: {{logits: 0}}\nmethods: {{features: f}}\nnum_classes: 3\n",
            base.replace("feature_dim: 4\n", "")
        ))
        .unwrap();
        let err = m.validate().unwrap_err().to_string();
        assert!(
            err.contains("methods.features needs outputs.features"),
            "{err}"
        );
        let err = serde_yaml::from_str::<ModelManifest>(&format!(
            "{base}outputs: {{features: 0}}\nmethods: {{forward2: f}}\n"
        ))
        .unwrap_err()
        .to_string();
        assert!(err.contains("forward2"), "{err}");
    }
}

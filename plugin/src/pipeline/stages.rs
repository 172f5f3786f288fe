//! Spark ML's `Pipeline` / `PipelineModel` over the plugin's stages, and the saved form of
//! a fitted pipeline: a directory with `pipeline.yaml` (format version, stages, class
//! names) and one sub-directory of weights per fitted estimator.

use std::path::{Component, Path, PathBuf};

use datafusion::common::{Result, exec_datafusion_err, plan_err};
use datafusion::dataframe::DataFrame;
use serde::{Deserialize, Serialize};

use super::assembler::VectorAssembler;
use crate::finetune::stage::TorchImageClassifier;
use crate::finetune::{EpochRecord, TorchImageEstimator, TorchImageEstimatorParams};
use crate::ml::{LogisticRegression, LogisticRegressionModel, LogisticRegressionParams};
use crate::torch::{
    DeepImageFeaturizer, DeepImagePredictor, ModelZoo, ProcessTorchConfig, TorchImageTransformer,
};

/// The field names of a struct's `Deserialize` implementation: serde hands them to
/// `deserialize_struct`, which this deserializer records before refusing to go on.
fn fields_of<T: serde::de::DeserializeOwned>() -> &'static [&'static str] {
    use serde::de::{self, Visitor};
    struct Fields<'a>(&'a mut &'static [&'static str]);
    impl<'de> de::Deserializer<'de> for Fields<'_> {
        type Error = de::value::Error;
        fn deserialize_any<V: Visitor<'de>>(
            self,
            _: V,
        ) -> std::result::Result<V::Value, Self::Error> {
            Err(de::Error::custom("not a struct"))
        }
        fn deserialize_struct<V: Visitor<'de>>(
            self,
            _name: &'static str,
            fields: &'static [&'static str],
            _: V,
        ) -> std::result::Result<V::Value, Self::Error> {
            *self.0 = fields;
            Err(de::Error::custom("fields recorded"))
        }
        serde::forward_to_deserialize_any! {
            bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes
            byte_buf option unit unit_struct newtype_struct seq tuple tuple_struct map enum
            identifier ignored_any
        }
    }
    let mut fields: &'static [&'static str] = &[];
    let _ = T::deserialize(Fields(&mut fields));
    fields
}

/// A stage of a [`Pipeline`], written in specs as `{type: <Stage>, <param>: <value>, ...}`
/// with Spark ML / sparkdl parameter names.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type")]
pub enum PipelineStage {
    /// sparkdl's `DeepImageFeaturizer` (a transformer).
    DeepImageFeaturizer(DeepImageFeaturizer),
    /// sparkdl's `DeepImagePredictor` (a transformer).
    DeepImagePredictor(DeepImagePredictor),
    /// A user TorchScript model, vector or image output (sparkdl's `TFImageTransformer`).
    TorchImageTransformer(TorchImageTransformer),
    /// MLlib's `VectorAssembler` (a transformer): columns concatenated into one vector.
    VectorAssembler(VectorAssembler),
    /// MLlib's `LogisticRegression` (an estimator).
    LogisticRegression(LogisticRegressionParams),
    /// Fine-tuning of a zoo model (an estimator; sparkdl's `KerasImageFileEstimator`).
    TorchImageEstimator(TorchImageEstimatorParams),
}

impl PipelineStage {
    /// Whether fitting the stage learns something (an estimator).
    pub fn is_estimator(&self) -> bool {
        matches!(
            self,
            Self::LogisticRegression(_) | Self::TorchImageEstimator(_)
        )
    }

    /// The parameters the stage's type accepts (its job-spec and saved names), as its
    /// `Deserialize` implementation lists them.
    pub fn param_names(&self) -> &'static [&'static str] {
        match self {
            Self::DeepImageFeaturizer(_) => fields_of::<DeepImageFeaturizer>(),
            Self::DeepImagePredictor(_) => fields_of::<DeepImagePredictor>(),
            Self::TorchImageTransformer(_) => fields_of::<TorchImageTransformer>(),
            Self::VectorAssembler(_) => fields_of::<VectorAssembler>(),
            Self::LogisticRegression(_) => fields_of::<LogisticRegressionParams>(),
            Self::TorchImageEstimator(_) => fields_of::<TorchImageEstimatorParams>(),
        }
    }

    /// The stage's type name.
    pub fn type_name(&self) -> &'static str {
        match self {
            Self::DeepImageFeaturizer(_) => "DeepImageFeaturizer",
            Self::DeepImagePredictor(_) => "DeepImagePredictor",
            Self::TorchImageTransformer(_) => "TorchImageTransformer",
            Self::VectorAssembler(_) => "VectorAssembler",
            Self::LogisticRegression(_) => "LogisticRegression",
            Self::TorchImageEstimator(_) => "TorchImageEstimator",
        }
    }

    /// A transformer stage as it stands in a fitted pipeline (fitting leaves it as it is);
    /// `None` for an estimator.
    pub fn as_fitted_transformer(&self) -> Option<FittedStage> {
        Some(match self {
            Self::DeepImageFeaturizer(t) => FittedStage::DeepImageFeaturizer(t.clone()),
            Self::DeepImagePredictor(t) => FittedStage::DeepImagePredictor(t.clone()),
            Self::TorchImageTransformer(t) => FittedStage::TorchImageTransformer(t.clone()),
            Self::VectorAssembler(t) => FittedStage::VectorAssembler(t.clone()),
            Self::LogisticRegression(_) | Self::TorchImageEstimator(_) => return None,
        })
    }
}

/// A fitted stage of a [`PipelineModel`].
#[derive(Debug, Clone, PartialEq)]
pub enum FittedStage {
    DeepImageFeaturizer(DeepImageFeaturizer),
    DeepImagePredictor(DeepImagePredictor),
    TorchImageTransformer(TorchImageTransformer),
    VectorAssembler(VectorAssembler),
    LogisticRegressionModel(Box<LogisticRegressionModel>),
    /// A fine-tuned model (from [`PipelineStage::TorchImageEstimator`]).
    TorchImageClassifier(Box<TorchImageClassifier>),
}

impl FittedStage {
    /// Applies the stage.
    pub fn transform(&self, df: DataFrame) -> Result<DataFrame> {
        match self {
            Self::DeepImageFeaturizer(t) => t.transform(df),
            Self::DeepImagePredictor(t) => t.transform(df),
            Self::TorchImageTransformer(t) => t.transform(df),
            Self::VectorAssembler(t) => t.transform(df),
            Self::LogisticRegressionModel(m) => m.transform(df),
            Self::TorchImageClassifier(m) => m.transform(df),
        }
    }

    /// The stage's type name.
    pub fn type_name(&self) -> &'static str {
        match self {
            Self::DeepImageFeaturizer(_) => "DeepImageFeaturizer",
            Self::DeepImagePredictor(_) => "DeepImagePredictor",
            Self::TorchImageTransformer(_) => "TorchImageTransformer",
            Self::VectorAssembler(_) => "VectorAssembler",
            Self::LogisticRegressionModel(_) => "LogisticRegressionModel",
            Self::TorchImageClassifier(_) => "TorchImageClassifier",
        }
    }
}

/// Spark ML's `Pipeline`: stages applied in order; `fit` fits each estimator on the output
/// of the stages before it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Pipeline {
    pub stages: Vec<PipelineStage>,
}

impl Pipeline {
    /// A pipeline of these stages.
    pub fn new(stages: Vec<PipelineStage>) -> Self {
        Self { stages }
    }

    /// Checks each stage's parameters (model names against the model directory).
    pub fn validate(&self) -> Result<()> {
        if self.stages.is_empty() {
            return plan_err!("the pipeline has no stages");
        }
        let zoo = ProcessTorchConfig::get().zoo();
        for (i, s) in self.stages.iter().enumerate() {
            let checked = match s {
                PipelineStage::DeepImageFeaturizer(t) => zoo.get(&t.model_name).map(|_| ()),
                PipelineStage::DeepImagePredictor(t) => zoo.get(&t.model_name).map(|_| ()),
                PipelineStage::TorchImageTransformer(t) => t.spec().map(|_| ()),
                PipelineStage::VectorAssembler(t) => t.validate(),
                PipelineStage::LogisticRegression(p) => p.validate(),
                PipelineStage::TorchImageEstimator(p) => p.validate().and_then(|_| {
                    let entry = zoo.get(&p.model_name)?;
                    p.first_trainable(entry.training()?.0).map(|_| ())
                }),
            };
            checked.map_err(|e| {
                exec_datafusion_err!("stage {i} ({}): {}", s.type_name(), e.strip_backtrace())
            })?;
        }
        Ok(())
    }

    /// Fits the pipeline on `df`: transformers are kept as they are, each estimator is fitted
    /// on what the stages before it produce (Spark's `Pipeline.fit`).
    pub async fn fit(&self, df: DataFrame) -> Result<PipelineModel> {
        self.fit_observed(df, None).await
    }

    /// [`fit`](Self::fit), telling `on_epoch` about every epoch of a fine-tuning stage.
    pub async fn fit_observed(
        &self,
        df: DataFrame,
        on_epoch: Option<EpochObserver>,
    ) -> Result<PipelineModel> {
        self.validate()?;
        let last_estimator = self.stages.iter().rposition(PipelineStage::is_estimator);
        let mut df = df;
        let mut fitted = Vec::with_capacity(self.stages.len());
        for (i, stage) in self.stages.iter().enumerate() {
            let f = match stage {
                PipelineStage::LogisticRegression(p) => {
                    let m = LogisticRegression::new(p.clone())
                        .fit(df.clone())
                        .await
                        .map_err(|e| {
                            exec_datafusion_err!(
                                "stage {i} (LogisticRegression): {}",
                                e.strip_backtrace()
                            )
                        })?;
                    FittedStage::LogisticRegressionModel(Box::new(m))
                }
                PipelineStage::TorchImageEstimator(p) => {
                    let observer = on_epoch.clone();
                    fine_tune(p, df.clone(), move |r| {
                        if let Some(o) = &observer {
                            o(r)
                        }
                    })
                    .await
                    .map_err(|e| {
                        exec_datafusion_err!(
                            "stage {i} (TorchImageEstimator): {}",
                            e.strip_backtrace()
                        )
                    })?
                }
                transformer => transformer
                    .as_fitted_transformer()
                    .expect("every stage but the estimators is a transformer"),
            };
            if last_estimator.is_some_and(|l| i < l) {
                // (A transformer's missing input column is named with its stage, as an
                // estimator's is.)
                df = f.transform(df).map_err(|e| {
                    exec_datafusion_err!(
                        "stage {i} ({}): {}",
                        stage.type_name(),
                        e.strip_backtrace()
                    )
                })?;
            }
            fitted.push(f);
        }
        Ok(PipelineModel {
            stages: fitted,
            class_names: vec![],
        })
    }
}

/// Told about every epoch of a fine-tuning stage.
pub type EpochObserver = std::sync::Arc<dyn Fn(&EpochRecord) + Send + Sync>;

/// Fine-tunes, then saves the model into the process's model directory (where executors
/// look models up by name) and returns the stage that applies it.
async fn fine_tune(
    p: &TorchImageEstimatorParams,
    df: DataFrame,
    progress: impl FnMut(&EpochRecord) + Send,
) -> Result<FittedStage> {
    let model = TorchImageEstimator::new(p.clone())
        .fit_with_progress(df, progress)
        .await?;
    #[cfg(feature = "torch")]
    {
        let zoo = ProcessTorchConfig::get().zoo();
        let entry = model.save(zoo.dir())?;
        Ok(FittedStage::TorchImageClassifier(Box::new(
            TorchImageClassifier {
                model_name: entry.manifest.name,
                input_col: p.input_col.clone(),
                num_classes: model.num_classes,
                resize: p.resize,
                batch_size: None,
                history: model.history,
            },
        )))
    }
    #[cfg(not(feature = "torch"))]
    {
        let _ = model;
        plan_err!("saving a fine-tuned model needs libtorch (dlp-plugin's `torch` feature)")
    }
}

/// A fitted pipeline.
#[derive(Debug, Clone, PartialEq)]
pub struct PipelineModel {
    pub stages: Vec<FittedStage>,
    /// Name of each class index (from the training folders), saved with the model so that
    /// predictions can be reported by name.
    pub class_names: Vec<String>,
}

/// Version of the saved layout that this build writes and reads.
pub const FORMAT_VERSION: u32 = 1;
/// Name of the manifest in a saved pipeline directory.
pub const MANIFEST_FILE: &str = "pipeline.yaml";
const FORMAT: &str = "ballista-dlp/pipeline-model";

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Manifest {
    format: String,
    format_version: u32,
    dlp_version: String,
    #[serde(default)]
    class_names: Vec<String>,
    stages: Vec<SavedStage>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "type")]
enum SavedStage {
    DeepImageFeaturizer {
        #[serde(flatten)]
        params: DeepImageFeaturizer,
        /// sha256 of the TorchScript file the pipeline was fitted with.
        #[serde(rename = "modelSha256")]
        model_sha256: String,
    },
    DeepImagePredictor {
        #[serde(flatten)]
        params: DeepImagePredictor,
        #[serde(rename = "modelSha256")]
        model_sha256: String,
    },
    TorchImageTransformer {
        #[serde(flatten)]
        params: TorchImageTransformer,
        #[serde(rename = "modelSha256")]
        model_sha256: String,
    },
    VectorAssembler {
        #[serde(flatten)]
        params: VectorAssembler,
    },
    LogisticRegressionModel {
        /// Directory of the weights, relative to the pipeline directory.
        path: String,
    },
    TorchImageClassifier {
        #[serde(flatten)]
        params: TorchImageClassifier,
        #[serde(rename = "modelSha256")]
        model_sha256: String,
        /// Directory of a copy of the fine-tuned model (TorchScript, manifest, classes),
        /// relative to the pipeline directory: loading installs it into a model directory
        /// that lacks it.
        #[serde(rename = "modelPath", default, skip_serializing_if = "Option::is_none")]
        model_path: Option<String>,
    },
}

impl PipelineModel {
    /// Applies every stage in order.
    pub fn transform(&self, df: DataFrame) -> Result<DataFrame> {
        let mut df = df;
        for s in &self.stages {
            df = s.transform(df)?;
        }
        Ok(df)
    }

    /// The last logistic regression model, if any.
    pub fn classifier(&self) -> Option<&LogisticRegressionModel> {
        self.stages.iter().rev().find_map(|s| match s {
            FittedStage::LogisticRegressionModel(m) => Some(m.as_ref()),
            _ => None,
        })
    }

    /// The prediction and probability columns of the last classifier stage (a logistic
    /// regression or a fine-tuned model), if there is one.
    pub fn prediction_columns(&self) -> Option<(String, String)> {
        self.stages.iter().rev().find_map(|s| match s {
            FittedStage::LogisticRegressionModel(m) => Some((
                m.params.prediction_col.clone(),
                m.params.probability_col.clone(),
            )),
            FittedStage::TorchImageClassifier(_) => {
                Some(("prediction".to_string(), "probability".to_string()))
            }
            _ => None,
        })
    }

    /// Saves to `dir`, atomically: the model is written beside it and renamed into place,
    /// replacing an earlier save there; a failed save leaves what was there untouched.
    pub fn save(&self, dir: impl AsRef<Path>) -> Result<()> {
        if let Some(url) = crate::storage::url_of_path(dir.as_ref()) {
            return self.save_remote(&url, None);
        }
        save_atomically(dir.as_ref(), |tmp| self.save_files(tmp))
    }

    /// Saves to object storage: written in a local temporary folder, then uploaded with
    /// the manifest last (a reader that finds the manifest finds the rest), after the
    /// objects of an earlier model there are removed. A failed upload removes what it
    /// wrote, so no partial model is left behind (an earlier model there is gone too).
    fn save_remote(&self, url: &crate::storage::ObjectUrl, owner: Option<&str>) -> Result<()> {
        crate::access::check_write_url(url).map_err(|e| e.context("output.model"))?;
        let tmp = tempfile::tempdir()
            .map_err(|e| exec_datafusion_err!("cannot make a temporary folder: {e}"))?;
        self.save_files(tmp.path())?;
        if let Some(owner) = owner {
            let path = tmp.path().join(OWNER_FILE);
            std::fs::write(&path, format!("{owner}\n"))
                .map_err(|e| exec_datafusion_err!("cannot write {}: {e}", path.display()))?;
        }
        let (u, local) = (url.clone(), tmp.path().to_path_buf());
        crate::storage::io_blocking(async move {
            crate::storage::delete_prefix(&u).await?;
            crate::storage::upload_dir(&local, &u, Some(MANIFEST_FILE)).await
        })
        .map_err(|e| e.context("saving the model"))
    }

    /// Saves for `owner` on a shared scheduler: a model already at `dir` is replaced only
    /// when `owner` saved it and `overwrite` is set; any other existing directory is left
    /// alone. The owner is recorded beside the manifest.
    pub fn save_owned(&self, dir: impl AsRef<Path>, owner: &str, overwrite: bool) -> Result<()> {
        let dir = dir.as_ref();
        may_save(dir, owner, overwrite)?;
        if let Some(url) = crate::storage::url_of_path(dir) {
            return self.save_remote(&url, Some(owner));
        }
        save_atomically(dir, |tmp| {
            self.save_files(tmp)?;
            let path = tmp.join(OWNER_FILE);
            std::fs::write(&path, format!("{owner}\n"))
                .map_err(|e| exec_datafusion_err!("cannot write {}: {e}", path.display()))
        })
    }

    fn save_files(&self, dir: &Path) -> Result<()> {
        let zoo = ProcessTorchConfig::get().zoo();
        let mut stages = vec![];
        for (i, s) in self.stages.iter().enumerate() {
            stages.push(match s {
                FittedStage::DeepImageFeaturizer(t) => SavedStage::DeepImageFeaturizer {
                    params: t.clone(),
                    model_sha256: zoo.get(&t.model_name)?.manifest.sha256,
                },
                FittedStage::DeepImagePredictor(t) => SavedStage::DeepImagePredictor {
                    params: t.clone(),
                    model_sha256: zoo.get(&t.model_name)?.manifest.sha256,
                },
                FittedStage::TorchImageTransformer(t) => SavedStage::TorchImageTransformer {
                    params: t.clone(),
                    model_sha256: zoo.get(&t.model_name)?.manifest.sha256,
                },
                FittedStage::VectorAssembler(t) => {
                    SavedStage::VectorAssembler { params: t.clone() }
                }
                FittedStage::LogisticRegressionModel(m) => {
                    let rel = format!("stages/{i}-LogisticRegressionModel");
                    m.save(dir.join(&rel))?;
                    SavedStage::LogisticRegressionModel { path: rel }
                }
                FittedStage::TorchImageClassifier(t) => {
                    let entry = zoo.get(&t.model_name)?;
                    let rel = format!("stages/{i}-TorchImageClassifier");
                    copy_model(&entry, &dir.join(&rel))?;
                    SavedStage::TorchImageClassifier {
                        params: t.as_ref().clone(),
                        model_sha256: entry.manifest.sha256,
                        model_path: Some(rel),
                    }
                }
            });
        }
        let manifest = Manifest {
            format: FORMAT.into(),
            format_version: FORMAT_VERSION,
            dlp_version: env!("CARGO_PKG_VERSION").into(),
            class_names: self.class_names.clone(),
            stages,
        };
        let text = serde_yaml::to_string(&manifest)
            .map_err(|e| exec_datafusion_err!("cannot encode the pipeline manifest: {e}"))?;
        let path = dir.join(MANIFEST_FILE);
        std::fs::write(&path, text)
            .map_err(|e| exec_datafusion_err!("cannot write {}: {e}", path.display()))
    }

    /// Loads a pipeline saved by [`save`](Self::save). Fails, naming the file, when the
    /// manifest or a weights file is missing, when the format version differs from this
    /// build's, or when a model in the model directory is not the one the pipeline was
    /// fitted with.
    pub fn load(dir: impl AsRef<Path>) -> Result<Self> {
        let dir = dir.as_ref();
        if let Some(url) = crate::storage::url_of_path(dir) {
            // A saved pipeline in object storage is fetched whole into a temporary
            // folder, every time (it may have been replaced), and loaded from there.
            crate::access::check_url(&url).map_err(|e| e.context("model"))?;
            let tmp = tempfile::tempdir()
                .map_err(|e| exec_datafusion_err!("cannot make a temporary folder: {e}"))?;
            let (u, local) = (url.clone(), tmp.path().to_path_buf());
            crate::storage::io_blocking(async move {
                crate::storage::download_prefix(&u, &local).await
            })
            .map_err(|e| e.context(format!("{url} is not a saved pipeline")))?;
            return Self::load(tmp.path()).map_err(|e| {
                exec_datafusion_err!(
                    "{url}: {}",
                    e.strip_backtrace()
                        .replace(&tmp.path().display().to_string(), url.as_str())
                )
            });
        }
        let path = dir.join(MANIFEST_FILE);
        let text = std::fs::read_to_string(&path).map_err(|e| {
            exec_datafusion_err!(
                "{} is not a saved pipeline: cannot read {}: {e}",
                dir.display(),
                path.display()
            )
        })?;
        let head: serde_yaml::Value = serde_yaml::from_str(&text)
            .map_err(|e| exec_datafusion_err!("{}: not YAML: {e}", path.display()))?;
        let format = head.get("format").and_then(|v| v.as_str()).unwrap_or("");
        if format != FORMAT {
            return plan_err!(
                "{}: format is '{format}', expected '{FORMAT}'",
                path.display()
            );
        }
        let version = head.get("formatVersion").and_then(|v| v.as_u64());
        if version != Some(u64::from(FORMAT_VERSION)) {
            let by = head
                .get("dlpVersion")
                .and_then(|v| v.as_str())
                .unwrap_or("?");
            return plan_err!(
                "{}: saved with pipeline format version {} (dlp {by}); this dlp {} reads version {FORMAT_VERSION}",
                path.display(),
                version.map_or("?".to_string(), |v| v.to_string()),
                env!("CARGO_PKG_VERSION")
            );
        }
        let manifest: Manifest = serde_yaml::from_str(&text)
            .map_err(|e| exec_datafusion_err!("{}: {e}", path.display()))?;
        let zoo = ProcessTorchConfig::get().zoo();
        let check_model = |name: &str, sha: &str| -> Result<()> {
            let entry = zoo.get(name)?;
            if entry.manifest.sha256 != sha {
                return plan_err!(
                    "{}: the pipeline was fitted with model '{name}' of sha256 {sha}, but {} holds sha256 {}",
                    path.display(),
                    entry.dir.display(),
                    entry.manifest.sha256
                );
            }
            Ok(())
        };
        let mut stages = vec![];
        for s in manifest.stages {
            stages.push(match s {
                SavedStage::DeepImageFeaturizer {
                    params,
                    model_sha256,
                } => {
                    check_model(&params.model_name, &model_sha256)?;
                    FittedStage::DeepImageFeaturizer(params)
                }
                SavedStage::DeepImagePredictor {
                    params,
                    model_sha256,
                } => {
                    check_model(&params.model_name, &model_sha256)?;
                    FittedStage::DeepImagePredictor(params)
                }
                SavedStage::TorchImageTransformer {
                    params,
                    model_sha256,
                } => {
                    check_model(&params.model_name, &model_sha256)?;
                    FittedStage::TorchImageTransformer(params)
                }
                SavedStage::VectorAssembler { params } => FittedStage::VectorAssembler(params),
                SavedStage::TorchImageClassifier {
                    params,
                    model_sha256,
                    model_path,
                } => {
                    if let Some(rel) = model_path
                        && zoo.get(&params.model_name).is_err()
                    {
                        install_model(&stage_dir(dir, &rel, &path)?, &params.model_name, &zoo)
                            .map_err(|e| {
                                exec_datafusion_err!("{}: {}", path.display(), e.strip_backtrace())
                            })?;
                    }
                    check_model(&params.model_name, &model_sha256)?;
                    FittedStage::TorchImageClassifier(Box::new(params))
                }
                SavedStage::LogisticRegressionModel { path: rel } => {
                    let sub = stage_dir(dir, &rel, &path)?;
                    FittedStage::LogisticRegressionModel(Box::new(
                        LogisticRegressionModel::load(&sub).map_err(|e| {
                            exec_datafusion_err!(
                                "{}: stage weights missing or unreadable: {}",
                                path.display(),
                                e.strip_backtrace()
                            )
                        })?,
                    ))
                }
            });
        }
        Ok(Self {
            stages,
            class_names: manifest.class_names,
        })
    }
}

/// A stage's folder as a saved pipeline's manifest (`manifest`) names it: a relative path of
/// plain names inside the pipeline's folder `dir`, also after symlinks, so that a manifest
/// cannot make the loader open files anywhere else.
fn stage_dir(dir: &Path, rel: &str, manifest: &Path) -> Result<PathBuf> {
    let rel_path = Path::new(rel);
    if rel.is_empty()
        || !rel_path
            .components()
            .all(|c| matches!(c, Component::Normal(_)))
    {
        return plan_err!(
            "{}: stage path '{rel}' must be a relative path inside the pipeline's folder \
             (plain names, no '..')",
            manifest.display()
        );
    }
    let sub = dir.join(rel_path);
    if let (Ok(real), Ok(base)) = (std::fs::canonicalize(&sub), std::fs::canonicalize(dir))
        && !real.starts_with(&base)
    {
        return plan_err!(
            "{}: stage path '{rel}' leads (through a symlink) outside the pipeline's folder",
            manifest.display()
        );
    }
    Ok(sub)
}

/// The files of a zoo model: its TorchScript, its classes (if any), its manifest last.
fn model_files(m: &crate::torch::ModelManifest) -> Vec<String> {
    let mut files = vec![m.file.clone()];
    files.extend(m.classes_file.clone());
    files.push(format!("{}.yaml", m.name));
    files
}

/// Copies a zoo model's files into `to` (a saved pipeline's stage folder).
fn copy_model(entry: &crate::torch::manifest::ModelEntry, to: &Path) -> Result<()> {
    std::fs::create_dir_all(to)
        .map_err(|e| exec_datafusion_err!("cannot create {}: {e}", to.display()))?;
    let mut files = model_files(&entry.manifest);
    // The manifest is read from the model directory under whatever name it has there.
    files.pop();
    for f in files {
        let from = entry.dir.join(&f);
        std::fs::copy(&from, to.join(&f))
            .map_err(|e| exec_datafusion_err!("cannot copy {}: {e}", from.display()))?;
    }
    let yaml = serde_yaml::to_string(&entry.manifest)
        .map_err(|e| exec_datafusion_err!("cannot encode the manifest: {e}"))?;
    let target = to.join(format!("{}.yaml", entry.manifest.name));
    std::fs::write(&target, yaml)
        .map_err(|e| exec_datafusion_err!("cannot write {}: {e}", target.display()))
}

/// Installs the model `name` saved with a pipeline (in `from`) into the process's model
/// directory, which lacks it: its sha256 checked, the manifest written last, and published
/// to the object-store folder the directory is a copy of, if it is one.
fn install_model(from: &Path, name: &str, zoo: &ModelZoo) -> Result<()> {
    // The name becomes a file name in the model directory: nothing that leads out of it.
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    {
        return plan_err!(
            "model name '{name}' must be letters, digits, '_' or '-' to be installed from a pipeline"
        );
    }
    let source = ModelZoo::new(from).get(name).map_err(|e| {
        exec_datafusion_err!(
            "the pipeline's copy of model '{name}' is unreadable: {}",
            e.strip_backtrace()
        )
    })?;
    source.verify()?;
    let dir = zoo.dir();
    std::fs::create_dir_all(dir)
        .map_err(|e| exec_datafusion_err!("cannot create {}: {e}", dir.display()))?;
    crate::access::check_write_path(dir).map_err(|e| exec_datafusion_err!("{e}"))?;
    let files = model_files(&source.manifest);
    for f in &files {
        let tmp = dir.join(format!(".{f}.partial"));
        std::fs::copy(from.join(f), &tmp)
            .and_then(|_| std::fs::rename(&tmp, dir.join(f)))
            .map_err(|e| exec_datafusion_err!("cannot install {f} into {}: {e}", dir.display()))?;
    }
    crate::storage::publish_local(dir, &files)
        .map_err(|e| exec_datafusion_err!("publishing model {name}: {e}"))?;
    tracing::info!(model = name, dir = %dir.display(), "installed a fine-tuned model saved with a pipeline");
    Ok(())
}

/// Whether `owner` may save a model at `dir`: a new directory, or a model `owner` saved
/// there with `overwrite` set. Checked at submission and again when saving.
pub fn may_save(dir: &Path, owner: &str, overwrite: bool) -> Result<()> {
    let saved_by = match crate::storage::url_of_path(dir) {
        Some(url) => {
            let u = url.clone();
            let (objects, owner_file) = crate::storage::io_blocking(async move {
                let objects = crate::storage::list(&u).await?;
                let owner_file = match crate::storage::get(&u.join(OWNER_FILE), 4096).await {
                    Ok(b) => Some(String::from_utf8_lossy(&b).into_owned()),
                    Err(crate::error::DlpError::NotFound(_)) => None,
                    Err(e) => return Err(e),
                };
                Ok((objects, owner_file))
            })
            .map_err(|e| e.context("output.model"))?;
            if objects.is_empty() {
                return Ok(());
            }
            owner_file
        }
        None => {
            if !dir.exists() {
                return Ok(());
            }
            std::fs::read_to_string(dir.join(OWNER_FILE)).ok()
        }
    };
    match saved_by.as_deref().map(str::trim) {
        Some(o) if o == owner && overwrite => Ok(()),
        Some(o) if o == owner => plan_err!(
            "output.model {}: a model is already saved there; to replace it, set overwrite \
             (output.overwrite: true in a job spec, save(path, overwrite=True) in Python, \
             \"overwrite\": true in dlp.model.save)",
            dir.display()
        ),
        _ => plan_err!(
            "output.model {}: the directory exists and holds no model of yours; choose \
             another directory",
            dir.display()
        ),
    }
}

/// Who saved a model on a shared scheduler (a file beside the manifest).
pub const OWNER_FILE: &str = ".dlp-owner";

/// Writes a directory with `write` into a temporary sibling of `dir`, then renames it into
/// place (replacing what was at `dir`). A failure removes the temporary directory and
/// leaves `dir` as it was.
fn save_atomically(dir: &Path, write: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    let parent = match dir.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => std::path::PathBuf::from("."),
    };
    let name = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .ok_or_else(|| exec_datafusion_err!("{}: not a directory name", dir.display()))?;
    std::fs::create_dir_all(&parent)
        .map_err(|e| exec_datafusion_err!("cannot create {}: {e}", parent.display()))?;
    let tmp = tempfile::Builder::new()
        .prefix(&format!(".{name}.saving-"))
        .tempdir_in(&parent)
        .map_err(|e| exec_datafusion_err!("cannot write in {}: {e}", parent.display()))?;
    write(tmp.path())?;
    let tmp = tmp.keep();
    let old = if dir.exists() {
        let old = parent.join(format!(".{name}.replaced-{:016x}", rand::random::<u64>()));
        std::fs::rename(dir, &old).map_err(|e| {
            let _ = std::fs::remove_dir_all(&tmp);
            exec_datafusion_err!("cannot replace {}: {e}", dir.display())
        })?;
        Some(old)
    } else {
        None
    };
    if let Err(e) = std::fs::rename(&tmp, dir) {
        if let Some(old) = &old {
            let _ = std::fs::rename(old, dir);
        }
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(exec_datafusion_err!(
            "cannot save to {}: {e}",
            dir.display()
        ));
    }
    if let Some(old) = old {
        let _ = std::fs::remove_dir_all(old);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn param_names_come_from_each_stage_type() {
        let featurizer = PipelineStage::DeepImageFeaturizer(DeepImageFeaturizer::new("m"));
        for p in [
            "inputCol",
            "outputCol",
            "modelName",
            "batchSize",
            "featureLayer",
        ] {
            assert!(featurizer.param_names().contains(&p), "{p}");
        }
        let lr = PipelineStage::LogisticRegression(LogisticRegressionParams::default());
        for p in ["maxIter", "regParam", "elasticNetParam", "classWeight"] {
            assert!(lr.param_names().contains(&p), "{p}");
        }
        assert!(!lr.param_names().contains(&"modelName"));
    }

    /// A saved pipeline's manifest cannot make the loader open stage files outside the
    /// pipeline's folder: absolute paths, `..` and symlinks leading out are refused, naming
    /// the manifest and the path; a plain missing stage is reported as missing.
    #[test]
    fn stage_paths_stay_inside_the_pipeline_folder() {
        let base = tempfile::tempdir().unwrap();
        let (pipeline, secret) = (base.path().join("pipeline"), base.path().join("secret"));
        std::fs::create_dir_all(&pipeline).unwrap();
        std::fs::create_dir_all(secret.join("lr")).unwrap();
        std::fs::write(secret.join("lr").join("model.json"), "{}").unwrap();
        std::os::unix::fs::symlink(&secret, pipeline.join("out")).unwrap();
        let load = |stage_path: &str| {
            std::fs::write(
                pipeline.join(MANIFEST_FILE),
                format!(
                    "format: {FORMAT}\nformatVersion: {FORMAT_VERSION}\ndlpVersion: x\nstages:\n\
                     - type: LogisticRegressionModel\n  path: '{stage_path}'\n"
                ),
            )
            .unwrap();
            PipelineModel::load(&pipeline).unwrap_err().to_string()
        };
        let outside = secret.join("lr").display().to_string();
        for bad in [
            outside.as_str(),
            "../secret/lr",
            "stages/../../secret/lr",
            "",
        ] {
            let e = load(bad);
            assert!(
                e.contains("must be a relative path inside") && e.contains(MANIFEST_FILE),
                "{bad}: {e}"
            );
            assert!(!e.contains("model.json"), "{bad}: {e}");
        }
        let e = load("out/lr");
        assert!(e.contains("outside the pipeline's folder"), "{e}");
        let e = load("stages/0-lr");
        assert!(e.contains("stage weights missing"), "{e}");
    }

    #[test]
    fn installing_refuses_model_names_that_lead_out_of_the_model_directory() {
        let base = std::env::temp_dir().join(format!("dlp-install-{}", std::process::id()));
        let (from, zoo_dir) = (base.join("stage"), base.join("zoo").join("models"));
        std::fs::create_dir_all(&from).unwrap();
        // A manifest that `../x` would reach from the stage folder, were it looked up.
        std::fs::write(base.join("x.yaml"), "name: x\n").unwrap();
        let zoo = ModelZoo::new(&zoo_dir);
        for name in ["../x", "..", "a/b", "/etc/x", "x.y", "", "x\\y", "n\u{e9}"] {
            let err = install_model(&from, name, &zoo).unwrap_err().to_string();
            assert!(err.contains("must be letters, digits"), "{name:?}: {err}");
            assert!(err.contains(&format!("'{name}'")), "{name:?}: {err}");
        }
        assert!(
            !zoo_dir.exists(),
            "nothing may be written for a refused name"
        );
        // An ordinary name passes the check and fails only on the missing copy.
        let err = install_model(&from, "my_model-2", &zoo)
            .unwrap_err()
            .to_string();
        assert!(err.contains("unreadable"), "{err}");
        std::fs::remove_dir_all(&base).unwrap();
    }
}

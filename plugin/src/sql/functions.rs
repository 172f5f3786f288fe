//! Models as SQL functions (sparkdl's `registerKerasImageUDF`): a saved PipelineModel
//! (DeepImageFeaturizers, an optional VectorAssembler, LogisticRegression) or a zoo
//! model's top-K predictions,
//! registered under a name, then `SELECT path, flowers_predict(image) FROM read_images(...)`.
//!
//! Registered by the scheduler's config at start-up (`functions:` in `dlp.yaml`), or at run
//! time with SQL from any client (Flight SQL included):
//! `CREATE FUNCTION flowers_predict() AS 'pipeline:/data/models/flowers'` or
//! `CREATE FUNCTION top5() AS 'model:efficientnet_lite0:5'`. Sessions started afterwards
//! see the function too. Executors need no registry: the plugin codec ships each
//! function's definition with the plan and executors rebuild it.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};

use datafusion::arrow::array::{Array, ArrayRef, AsArray, RecordBatch, StringBuilder, StructArray};
use datafusion::arrow::datatypes::{DataType, Field, Fields, Float64Type, Schema};
use datafusion::common::{Result, ScalarValue, exec_err, plan_datafusion_err, plan_err};
use datafusion::execution::context::{FunctionFactory, RegisterFunction, SessionState};
use datafusion::logical_expr::{
    ColumnarValue, CreateFunction, Expr, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature,
    Volatility,
};
use serde::{Deserialize, Serialize};

use crate::config::DlpOptions;
use crate::ml::LogisticRegressionModel;
use crate::pipeline::{FittedStage, PipelineModel};
use crate::torch::infer::{Runner, check_image_column};
use crate::torch::{ProcessTorchConfig, TorchSpec, TorchTask};

/// What a registered function runs.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", tag = "kind")]
pub enum FunctionSource {
    /// A saved PipelineModel directory: one or more DeepImageFeaturizers, an optional
    /// VectorAssembler of their outputs, then LogisticRegression; the function returns
    /// `{prediction, label, probability}`.
    Pipeline {
        /// The saved model's directory (as every process sees it).
        dir: String,
    },
    /// A zoo model's top-K ImageNet predictions (like `predict_topk`).
    Model {
        /// Model name in the model directory.
        model: String,
        /// How many classes.
        #[serde(default = "five", rename = "topK")]
        top_k: usize,
    },
}

fn five() -> usize {
    5
}

impl FunctionSource {
    /// Parses a `CREATE FUNCTION ... AS '...'` body: `pipeline:<dir>`, `model:<name>` or
    /// `model:<name>:<k>`.
    pub fn parse(body: &str) -> Result<Self> {
        if let Some(dir) = body.strip_prefix("pipeline:") {
            return Ok(Self::Pipeline {
                dir: dir.to_string(),
            });
        }
        if let Some(rest) = body.strip_prefix("model:") {
            let (model, k) = match rest.rsplit_once(':') {
                Some((m, k)) => (
                    m,
                    k.parse::<usize>().ok().filter(|k| *k > 0).ok_or_else(|| {
                        plan_datafusion_err!(
                            "CREATE FUNCTION: top-K '{k}' is not a positive integer"
                        )
                    })?,
                ),
                None => (rest, 5),
            };
            return Ok(Self::Model {
                model: model.to_string(),
                top_k: k,
            });
        }
        plan_err!(
            "CREATE FUNCTION: body '{body}' must be 'pipeline:<saved PipelineModel directory>' \
             or 'model:<model name>[:<k>]'"
        )
    }
}

/// The loaded parts of a pipeline function: one or more featurizers (all reading the
/// function's image argument), optionally a VectorAssembler of their outputs, then the
/// logistic regression.
#[derive(Debug)]
struct PipelineParts {
    featurizers: Vec<TorchSpec>,
    /// The assembler's input columns (featurizer outputs, in order) and whether it keeps
    /// invalid values as NaN; `None`: one featurizer feeds the classifier directly.
    assemble: Option<(Vec<String>, bool)>,
    classifier: LogisticRegressionModel,
    class_names: Vec<String>,
}

impl PipelineParts {
    /// Recognizes `DeepImageFeaturizer+ [VectorAssembler] LogisticRegressionModel`.
    fn of(model: &PipelineModel) -> std::result::Result<Self, String> {
        let shape = || {
            let kinds: Vec<_> = model.stages.iter().map(|s| s.type_name()).collect();
            format!(
                "has stages {kinds:?}; a SQL function needs one or more DeepImageFeaturizer \
                 stages (on the same image column), an optional VectorAssembler of their \
                 outputs, then LogisticRegressionModel"
            )
        };
        let Some((FittedStage::LogisticRegressionModel(lr), rest)) = model.stages.split_last()
        else {
            return Err(shape());
        };
        let (rest, assemble) = match rest.split_last() {
            Some((FittedStage::VectorAssembler(a), rest)) => (
                rest,
                Some((
                    a.input_cols.clone(),
                    a.handle_invalid == crate::pipeline::assembler::HandleInvalid::Keep,
                )),
            ),
            _ => (rest, None),
        };
        let mut featurizers = vec![];
        for s in rest {
            match s {
                FittedStage::DeepImageFeaturizer(f) => {
                    featurizers.push(f.spec().map_err(|e| e.strip_backtrace())?)
                }
                _ => return Err(shape()),
            }
        }
        if featurizers.is_empty()
            || featurizers
                .iter()
                .any(|f| f.input_col != featurizers[0].input_col)
        {
            return Err(shape());
        }
        match &assemble {
            None if featurizers.len() != 1 => return Err(shape()),
            Some((cols, _)) => {
                for c in cols {
                    if !featurizers.iter().any(|f| &f.output_col == c) {
                        return Err(format!(
                            "has a VectorAssembler input '{c}' that no featurizer makes; a SQL \
                             function assembles featurizer outputs only"
                        ));
                    }
                }
            }
            None => {}
        }
        Ok(Self {
            featurizers,
            assemble,
            classifier: (**lr).clone(),
            class_names: model.class_names.clone(),
        })
    }
}

/// A registered model function.
#[derive(Debug)]
pub struct ModelUdf {
    name: String,
    source: FunctionSource,
    signature: Signature,
    pipeline: Option<PipelineParts>,
    output: DataType,
}

impl PartialEq for ModelUdf {
    fn eq(&self, other: &Self) -> bool {
        self.name == other.name && self.source == other.source
    }
}
impl Eq for ModelUdf {}
impl std::hash::Hash for ModelUdf {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.name.hash(state);
        self.source.hash(state);
    }
}

fn output_of_pipeline(classes: usize) -> DataType {
    DataType::Struct(Fields::from(vec![
        Field::new("prediction", DataType::Float64, true),
        Field::new("label", DataType::Utf8, true),
        Field::new(
            "probability",
            DataType::FixedSizeList(
                Arc::new(Field::new("item", DataType::Float64, true)),
                classes as i32,
            ),
            true,
        ),
    ]))
}

impl ModelUdf {
    /// Checks the source (the model exists, the pipeline loads and has the supported
    /// shape) and builds the function.
    pub fn try_new(name: &str, source: FunctionSource) -> Result<Self> {
        let valid_name = !name.is_empty()
            && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
            && !name.starts_with(|c: char| c.is_ascii_digit());
        if !valid_name {
            return plan_err!("function name '{name}': use letters, digits and '_'");
        }
        let zoo = ProcessTorchConfig::get().zoo();
        let (pipeline, output, source) = match source {
            FunctionSource::Model { model, top_k } => {
                let spec = TorchSpec::try_new(&zoo, &model, "image", name, TorchTask::TopK(top_k))?;
                let out = spec.output_field().data_type().clone();
                (None, out, FunctionSource::Model { model, top_k })
            }
            FunctionSource::Pipeline { dir } => {
                // Relative paths as the other clients' model paths: from the first writable
                // root when the model is there, else from the first data root.
                let path = match crate::access::resolve_input(&dir) {
                    Ok(path) => path,
                    Err(e) => return plan_err!("function {name}: {e}"),
                };
                let model = PipelineModel::load(&path)
                    .map_err(|e| plan_datafusion_err!("function {name}: {e}"))?;
                let parts = PipelineParts::of(&model).map_err(|e| {
                    plan_datafusion_err!("function {name}: the pipeline in {dir} {e}")
                })?;
                let out = output_of_pipeline(parts.classifier.num_classes);
                // The function (and the plans that carry it) names the resolved directory.
                let dir = path.to_string_lossy().into_owned();
                (Some(parts), out, FunctionSource::Pipeline { dir })
            }
        };
        Ok(Self {
            name: name.to_string(),
            source,
            signature: Signature::any(1, Volatility::Immutable),
            pipeline,
            output,
        })
    }

    /// The definition shipped with plans.
    pub fn source(&self) -> &FunctionSource {
        &self.source
    }

    fn apply_pipeline(
        &self,
        parts: &PipelineParts,
        images: &dyn Array,
        options: &DlpOptions,
    ) -> Result<ArrayRef> {
        let mut outputs = Vec::with_capacity(parts.featurizers.len());
        for spec in &parts.featurizers {
            let mut spec = spec.clone();
            options.apply_to(&mut spec);
            outputs.push(Runner::new(spec)?.apply(images)?);
        }
        let features = match &parts.assemble {
            None => outputs.remove(0),
            Some((cols, keep)) => {
                let inputs: Vec<(String, ArrayRef)> = cols
                    .iter()
                    .map(|c| {
                        let i = parts
                            .featurizers
                            .iter()
                            .position(|f| &f.output_col == c)
                            .expect("checked when loaded");
                        (c.clone(), outputs[i].clone())
                    })
                    .collect();
                crate::pipeline::assembler::assemble(&inputs, *keep)?
            }
        };
        let spec = parts.classifier.predict_spec();
        let input = Schema::new(vec![Field::new(
            &spec.features_col,
            features.data_type().clone(),
            true,
        )]);
        let mut fields = input.fields().to_vec();
        fields.extend(spec.output_fields().into_iter().map(Arc::new));
        let batch = RecordBatch::try_new(Arc::new(input), vec![features])?;
        let out = crate::ml::predict::predict(&spec, &batch, Arc::new(Schema::new(fields)))?;
        let probability = out.column(2).clone();
        let prediction = out.column(3).clone();
        let pred = prediction.as_primitive::<Float64Type>();
        let mut label = StringBuilder::new();
        for i in 0..pred.len() {
            if pred.is_null(i) {
                label.append_null();
            } else {
                match parts.class_names.get(pred.value(i) as usize) {
                    Some(n) => label.append_value(n),
                    None => label.append_null(),
                }
            }
        }
        let DataType::Struct(fields) = &self.output else {
            return exec_err!("{}: unexpected output type", self.name);
        };
        let nulls = prediction.logical_nulls();
        Ok(Arc::new(StructArray::try_new(
            fields.clone(),
            vec![prediction, Arc::new(label.finish()), probability],
            nulls,
        )?))
    }
}

impl ScalarUDFImpl for ModelUdf {
    fn name(&self) -> &str {
        &self.name
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, arg_types: &[DataType]) -> Result<DataType> {
        check_image_column(&format!("{} argument 1", self.name), &arg_types[0])?;
        Ok(self.output.clone())
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let images = args.args[0].to_array(args.number_rows)?;
        let options = DlpOptions::of(&args.config_options);
        let out = match (&self.source, &self.pipeline) {
            (FunctionSource::Pipeline { .. }, Some(parts)) => {
                self.apply_pipeline(parts, images.as_ref(), &options)?
            }
            (FunctionSource::Model { model, top_k }, _) => {
                let entry = ProcessTorchConfig::get().zoo().get(model)?;
                let mut spec =
                    TorchSpec::for_entry(&entry, "image", &self.name, TorchTask::TopK(*top_k))?;
                options.apply_to(&mut spec);
                Runner::for_entry(entry, spec)?.apply(images.as_ref())?
            }
            _ => return exec_err!("{}: pipeline not loaded", self.name),
        };
        Ok(ColumnarValue::Array(out))
    }
}

/// A registered function and who registered it (`None`: the operator, through the
/// scheduler's config, or the only user of an embedded session).
struct Registered {
    udf: Arc<ScalarUDF>,
    owner: Option<String>,
}

static REGISTRY: RwLock<BTreeMap<String, Registered>> = RwLock::new(BTreeMap::new());

tokio::task_local! {
    /// The user on whose behalf SQL runs in this task (set by a shared scheduler around
    /// each client request); `CREATE FUNCTION` records it as the function's owner.
    pub static CURRENT_USER: String;
}

/// Registers (or replaces) a function for the operator (the scheduler's config at
/// start-up), for every session started from now on in this process; returns it.
pub fn register(name: &str, source: FunctionSource) -> Result<Arc<ScalarUDF>> {
    register_owned(name, source, None, true)
}

/// Registers `name` for `owner`: a name another user or the operator registered is
/// refused, and so is replacing one's own function without `replace` (`OR REPLACE`).
fn register_owned(
    name: &str,
    source: FunctionSource,
    owner: Option<String>,
    replace: bool,
) -> Result<Arc<ScalarUDF>> {
    let udf = Arc::new(ScalarUDF::new_from_impl(ModelUdf::try_new(name, source)?));
    let mut registry = REGISTRY.write().expect("function registry");
    if let Some(existing) = registry.get(name) {
        match (&existing.owner, &owner) {
            (a, b) if a == b && replace => {}
            (a, b) if a == b => {
                return plan_err!(
                    "function {name} already exists; use CREATE OR REPLACE FUNCTION to replace it"
                );
            }
            (None, _) => {
                return plan_err!(
                    "function {name} is configured by the operator (dlp.yaml) and cannot be \
                     replaced"
                );
            }
            (Some(_), _) => {
                return plan_err!("function {name} belongs to another user; choose another name");
            }
        }
    }
    registry.insert(
        name.to_string(),
        Registered {
            udf: udf.clone(),
            owner: owner.clone(),
        },
    );
    drop(registry);
    tracing::info!(function = name, owner = ?owner, "model function registered");
    if owner.is_some() {
        store_registered()?;
    }
    Ok(udf)
}

/// Where the functions users register are kept across restarts (a shared scheduler's
/// state directory); unset: in memory only.
static STORE: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();

/// A user's function as stored.
#[derive(Debug, Serialize, Deserialize)]
struct StoredFunction {
    name: String,
    owner: String,
    source: FunctionSource,
}

/// Keeps the functions users register in `file` (JSON), first registering the ones it
/// holds (a function whose model no longer loads is logged and left out). Returns how
/// many were restored.
pub fn persist_in(file: &std::path::Path) -> Result<usize> {
    let mut restored = 0;
    match std::fs::read(file) {
        Ok(bytes) => {
            let stored: Vec<StoredFunction> = serde_json::from_slice(&bytes).map_err(|e| {
                plan_datafusion_err!("{}: not a list of functions: {e}", file.display())
            })?;
            for f in stored {
                match register_owned(&f.name, f.source, Some(f.owner), true) {
                    Ok(_) => restored += 1,
                    Err(e) => tracing::warn!(
                        function = f.name,
                        "registered function not restored: {}",
                        e.strip_backtrace()
                    ),
                }
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return plan_err!("cannot read {}: {e}", file.display()),
    }
    if STORE.set(file.to_path_buf()).is_err() {
        return plan_err!("registered functions are already kept elsewhere");
    }
    store_registered()?;
    Ok(restored)
}

/// Writes the users' functions to the store, if any (replacing the file at once).
fn store_registered() -> Result<()> {
    let Some(file) = STORE.get() else {
        return Ok(());
    };
    let stored: Vec<StoredFunction> = REGISTRY
        .read()
        .expect("function registry")
        .iter()
        .filter_map(|(name, r)| {
            let udf = r.udf.inner().downcast_ref::<ModelUdf>()?;
            Some(StoredFunction {
                name: name.clone(),
                owner: r.owner.clone()?,
                source: udf.source.clone(),
            })
        })
        .collect();
    let text = serde_json::to_vec_pretty(&stored)
        .map_err(|e| plan_datafusion_err!("registered functions: {e}"))?;
    let tmp = file.with_extension("json.tmp");
    std::fs::write(&tmp, text)
        .and_then(|_| std::fs::rename(&tmp, file))
        .map_err(|e| plan_datafusion_err!("cannot write {}: {e}", file.display()))
}

/// The registered functions and who registered each (`None`: the
/// operator), as `(name, definition, owner)`.
pub fn listed() -> Vec<(String, FunctionSource, Option<String>)> {
    REGISTRY
        .read()
        .expect("function registry")
        .iter()
        .filter_map(|(name, r)| {
            let udf = r.udf.inner().downcast_ref::<ModelUdf>()?;
            Some((name.clone(), udf.source.clone(), r.owner.clone()))
        })
        .collect()
}

/// The registered functions.
pub fn registered() -> Vec<Arc<ScalarUDF>> {
    REGISTRY
        .read()
        .expect("function registry")
        .values()
        .map(|r| r.udf.clone())
        .collect()
}

/// Rebuilds a function from the definition a plan carries (executors).
pub fn decode(name: &str, source: FunctionSource) -> Result<Arc<ScalarUDF>> {
    Ok(Arc::new(ScalarUDF::new_from_impl(ModelUdf::try_new(
        name, source,
    )?)))
}

/// `CREATE FUNCTION name() AS 'pipeline:<dir>' | 'model:<name>[:<k>]'`.
#[derive(Debug, Default)]
pub struct ModelFunctionFactory;

#[async_trait::async_trait]
impl FunctionFactory for ModelFunctionFactory {
    async fn create(
        &self,
        state: &SessionState,
        statement: CreateFunction,
    ) -> Result<RegisterFunction> {
        let body = match &statement.params.function_body {
            Some(Expr::Literal(
                ScalarValue::Utf8(Some(s))
                | ScalarValue::LargeUtf8(Some(s))
                | ScalarValue::Utf8View(Some(s)),
                _,
            )) => s.clone(),
            _ => {
                return plan_err!(
                    "CREATE FUNCTION {}: expected AS 'pipeline:<dir>' or AS 'model:<name>[:<k>]'",
                    statement.name
                );
            }
        };
        let name = statement.name.clone();
        let registered = REGISTRY
            .read()
            .expect("function registry")
            .contains_key(&name);
        let builtin = state
            .scalar_functions()
            .keys()
            .any(|k| k.eq_ignore_ascii_case(&name))
            || state
                .aggregate_functions()
                .keys()
                .any(|k| k.eq_ignore_ascii_case(&name))
            || state
                .window_functions()
                .keys()
                .any(|k| k.eq_ignore_ascii_case(&name))
            || state
                .table_functions()
                .keys()
                .any(|k| k.eq_ignore_ascii_case(&name));
        if builtin && !registered {
            return plan_err!(
                "CREATE FUNCTION {name}: a built-in function has that name; model functions \
                 cannot shadow it"
            );
        }
        let source = FunctionSource::parse(&body)?;
        let owner = CURRENT_USER.try_with(Clone::clone).ok();
        Ok(RegisterFunction::Scalar(register_owned(
            &name,
            source,
            owner,
            statement.or_replace,
        )?))
    }
}

//! Models as SQL functions: `featurize(model, image[, featureLayer])` and
//! `predict_topk(model, image, k)`.
//! The return type comes from the model's manifest at plan time.

use std::sync::Arc;

use datafusion::arrow::array::ArrayRef;
use datafusion::arrow::datatypes::{DataType, Field, FieldRef};
use datafusion::common::{Result, ScalarValue, exec_err, plan_err};
use datafusion::logical_expr::{
    ColumnarValue, ReturnFieldArgs, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature,
    TypeSignature, Volatility,
};

use crate::config::DlpOptions;
use crate::torch::ProcessTorchConfig;
use crate::torch::infer::{Runner, check_image_column};
use crate::torch::spec::{TorchSpec, TorchTask};

/// Which SQL function.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Kind {
    Featurize,
    PredictTopK,
}

/// A model as a SQL function.
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct ModelFunction {
    kind: Kind,
    signature: Signature,
}

/// `featurize(model_name, image[, feature_layer])`: the model's feature vector, from the
/// layer `'penultimate'` (default) or `'logits'` as `DeepImageFeaturizer.featureLayer`.
pub fn featurize_udf() -> ScalarUDF {
    ScalarUDF::new_from_impl(ModelFunction {
        kind: Kind::Featurize,
        signature: Signature::one_of(
            vec![TypeSignature::Any(2), TypeSignature::Any(3)],
            Volatility::Immutable,
        ),
    })
}

/// `predict_topk(model_name, image, k)`: top-k `{class, description, probability}`.
pub fn predict_topk_udf() -> ScalarUDF {
    ScalarUDF::new_from_impl(ModelFunction {
        kind: Kind::PredictTopK,
        signature: Signature::any(3, Volatility::Immutable),
    })
}

fn literal_str<'a>(v: Option<&'a ScalarValue>, what: &str) -> Result<&'a str> {
    match v {
        Some(
            ScalarValue::Utf8(Some(s))
            | ScalarValue::LargeUtf8(Some(s))
            | ScalarValue::Utf8View(Some(s)),
        ) => Ok(s),
        _ => plan_err!("{what} must be a string literal"),
    }
}

fn literal_usize(v: Option<&ScalarValue>, what: &str) -> Result<usize> {
    match v.and_then(|s| s.cast_to(&DataType::Int64).ok()) {
        Some(ScalarValue::Int64(Some(k))) if k > 0 => Ok(k as usize),
        _ => plan_err!("{what} must be a positive integer literal"),
    }
}

/// `featurize`'s optional third argument.
fn feature_layer(v: Option<&ScalarValue>) -> Result<TorchTask> {
    let Some(v) = v else {
        return Ok(TorchTask::Features);
    };
    match literal_str(Some(v), "featurize: argument 3 (featureLayer)")? {
        "penultimate" => Ok(TorchTask::Features),
        "logits" => Ok(TorchTask::Logits),
        other => plan_err!(
            "featurize: argument 3 (featureLayer) must be 'penultimate' or 'logits', got '{other}'"
        ),
    }
}

impl ModelFunction {
    /// The task from the literal arguments after the image (`k` or `featureLayer`).
    fn task(&self, third: Option<&ScalarValue>) -> Result<TorchTask> {
        match self.kind {
            Kind::Featurize => feature_layer(third),
            Kind::PredictTopK => Ok(TorchTask::TopK(literal_usize(
                third,
                "predict_topk: argument 3 (k)",
            )?)),
        }
    }
}

impl ScalarUDFImpl for ModelFunction {
    fn name(&self) -> &str {
        match self.kind {
            Kind::Featurize => "featurize",
            Kind::PredictTopK => "predict_topk",
        }
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _arg_types: &[DataType]) -> Result<DataType> {
        plan_err!(
            "{}: the return type depends on the model; use return_field_from_args",
            self.name()
        )
    }

    fn return_field_from_args(&self, args: ReturnFieldArgs) -> Result<FieldRef> {
        let name = self.name();
        let model = literal_str(
            args.scalar_arguments.first().copied().flatten(),
            &format!("{name}: argument 1 (model name)"),
        )?;
        check_image_column(
            &format!("{name} argument 2"),
            args.arg_fields[1].data_type(),
        )?;
        if args.arg_fields.len() > 2 && args.scalar_arguments.get(2).copied().flatten().is_none() {
            return plan_err!("{name}: argument 3 must be a literal");
        }
        let task = self.task(args.scalar_arguments.get(2).copied().flatten())?;
        let zoo = ProcessTorchConfig::get().zoo();
        let spec = TorchSpec::try_new(&zoo, model, "image", name, task)?;
        Ok(Arc::new(Field::new(
            name,
            spec.output_field().data_type().clone(),
            true,
        )))
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let model_name = match &args.args[0] {
            ColumnarValue::Scalar(s) => literal_str(Some(s), "model name")?.to_string(),
            _ => return exec_err!("{}: the model name must be a literal", self.name()),
        };
        let task = match args.args.get(2) {
            None => self.task(None)?,
            Some(ColumnarValue::Scalar(s)) => self.task(Some(s))?,
            Some(_) => return exec_err!("{}: argument 3 must be a literal", self.name()),
        };
        let images: ArrayRef = args.args[1].to_array(args.number_rows)?;
        // One manifest lookup per batch, shared by the spec and the model cache.
        let entry = ProcessTorchConfig::get().zoo().get(&model_name)?;
        let mut spec = TorchSpec::for_entry(&entry, "image", self.name(), task)?;
        DlpOptions::of(&args.config_options).apply_to(&mut spec);
        let out = Runner::for_entry(entry, spec)?.apply(images.as_ref())?;
        Ok(ColumnarValue::Array(out))
    }
}

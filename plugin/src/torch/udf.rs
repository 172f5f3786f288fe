//! Models as SQL functions: `featurize(model, image)` and `predict_topk(model, image, k)`.
//! The return type comes from the model's manifest at plan time.

use std::sync::Arc;

use datafusion::arrow::array::ArrayRef;
use datafusion::arrow::datatypes::{DataType, Field, FieldRef};
use datafusion::common::{Result, ScalarValue, exec_err, plan_err};
use datafusion::logical_expr::{
    ColumnarValue, ReturnFieldArgs, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature,
    Volatility,
};

use super::ProcessTorchConfig;
use super::infer::{check_image_column, prepare, run};
use super::model::load_model;
use super::spec::{TorchSpec, TorchTask};

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

/// `featurize(model_name, image)`: the model's feature vector.
pub fn featurize_udf() -> ScalarUDF {
    ScalarUDF::new_from_impl(ModelFunction {
        kind: Kind::Featurize,
        signature: Signature::any(2, Volatility::Immutable),
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

impl ModelFunction {
    fn spec(&self, model: &str, k: Option<usize>) -> Result<TorchSpec> {
        let zoo = ProcessTorchConfig::get().zoo();
        let task = match self.kind {
            Kind::Featurize => TorchTask::Features,
            Kind::PredictTopK => TorchTask::TopK(k.unwrap_or(5)),
        };
        TorchSpec::try_new(&zoo, model, "image", self.name(), task)
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
        let k = match self.kind {
            Kind::PredictTopK => Some(literal_usize(
                args.scalar_arguments.get(2).copied().flatten(),
                &format!("{name}: argument 3 (k)"),
            )?),
            Kind::Featurize => None,
        };
        let spec = self.spec(model, k)?;
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
        let k = match self.kind {
            Kind::PredictTopK => match &args.args[2] {
                ColumnarValue::Scalar(s) => Some(literal_usize(Some(s), "k")?),
                _ => return exec_err!("predict_topk: k must be a literal"),
            },
            Kind::Featurize => None,
        };
        let images: ArrayRef = args.args[1].to_array(args.number_rows)?;
        let process = ProcessTorchConfig::get();
        // One manifest lookup per batch, shared by the spec and the model cache.
        let entry = process.zoo().get(&model_name)?;
        let task = match self.kind {
            Kind::Featurize => TorchTask::Features,
            Kind::PredictTopK => TorchTask::TopK(k.unwrap_or(5)),
        };
        let spec = TorchSpec::for_entry(&entry, "image", self.name(), task)?;
        let device = process.device.resolve()?;
        let out = blocking(|| {
            super::model::init_threads(process.intra_threads());
            let model = load_model(&entry, device)?;
            let prepared = prepare(&model, &spec, images.as_ref())?;
            run(&model, &spec, &prepared)
        })?;
        Ok(ColumnarValue::Array(out))
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

//! MLlib's `VectorAssembler`: several numeric and vector columns concatenated into one
//! feature vector (float64, as Spark's vectors), so that features of several models (or a
//! model's and hand-made ones) feed one classifier. Also the SQL functions
//! `vector_assemble(c1, c2, ...)` (a null input is an error) and
//! `vector_assemble_keep(c1, c2, ...)` (a null input becomes NaNs).

use std::sync::Arc;

use datafusion::arrow::array::{
    Array, ArrayRef, AsArray, FixedSizeListArray, Float64Array, ListArray, new_null_array,
};
use datafusion::arrow::buffer::OffsetBuffer;
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, Field, FieldRef, Float64Type};
use datafusion::common::{Result, exec_err, plan_err};
use datafusion::dataframe::DataFrame;
use datafusion::logical_expr::{
    ColumnarValue, Expr, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, Volatility,
};
use datafusion::prelude::col;
use serde::{Deserialize, Serialize};

use crate::ml::data::vector_rows;

/// SQL name of the assembler that fails on a null input.
pub const VECTOR_ASSEMBLE: &str = "vector_assemble";
/// SQL name of the assembler that turns a null input into NaNs.
pub const VECTOR_ASSEMBLE_KEEP: &str = "vector_assemble_keep";

/// What [`VectorAssembler`] does with a row where an input is null (or a vector holds a
/// null): Spark's `handleInvalid`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum HandleInvalid {
    /// Fail, naming the column (Spark's default).
    #[default]
    Error,
    /// Drop the row.
    Skip,
    /// Keep the row with NaN in place of the missing values (inputs of a known size only).
    Keep,
}

/// MLlib's `VectorAssembler` (a transformer): `inputCols` (numeric or vector columns, in
/// order) -> `outputCol` (a float64 vector; fixed-size when every input has a known size).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct VectorAssembler {
    pub input_cols: Vec<String>,
    /// Output column (default `features`).
    #[serde(default = "features_col")]
    pub output_col: String,
    #[serde(default, skip_serializing_if = "is_default")]
    pub handle_invalid: HandleInvalid,
}

fn features_col() -> String {
    "features".into()
}

fn is_default(h: &HandleInvalid) -> bool {
    *h == HandleInvalid::default()
}

impl VectorAssembler {
    /// An assembler of `input_cols` into `features`.
    pub fn new(input_cols: impl IntoIterator<Item = impl Into<String>>) -> Self {
        Self {
            input_cols: input_cols.into_iter().map(Into::into).collect(),
            output_col: features_col(),
            handle_invalid: HandleInvalid::default(),
        }
    }

    /// Sets `outputCol`.
    pub fn with_output_col(mut self, c: impl Into<String>) -> Self {
        self.output_col = c.into();
        self
    }

    /// Sets `handleInvalid`.
    pub fn with_handle_invalid(mut self, h: HandleInvalid) -> Self {
        self.handle_invalid = h;
        self
    }

    /// Checks the parameters that do not depend on the input.
    pub fn validate(&self) -> Result<()> {
        if self.input_cols.is_empty() {
            return plan_err!("VectorAssembler: inputCols is empty; name the columns to assemble");
        }
        if self.output_col.is_empty() {
            return plan_err!("VectorAssembler: outputCol is empty");
        }
        Ok(())
    }

    /// Adds `outputCol` to `df` (after dropping rows with a null input for `skip`).
    pub fn transform(&self, df: DataFrame) -> Result<DataFrame> {
        self.validate()?;
        let schema = df.schema().clone();
        let names: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
        if names.contains(&self.output_col.as_str()) {
            return plan_err!(
                "VectorAssembler: output column '{}' already exists; choose another outputCol",
                self.output_col
            );
        }
        let mut args: Vec<Expr> = vec![];
        for c in &self.input_cols {
            let Ok(field) = schema.field_with_unqualified_name(c) else {
                return plan_err!(
                    "VectorAssembler: no input column '{c}' (columns: {})",
                    names.join(", ")
                );
            };
            size_of(c, field.data_type())?;
            args.push(col(datafusion::common::Column::from_name(c)));
        }
        let df = match self.handle_invalid {
            HandleInvalid::Skip => {
                let all = args
                    .iter()
                    .map(|a| a.clone().is_not_null())
                    .reduce(Expr::and)
                    .expect("inputCols is not empty");
                df.filter(all)?
            }
            _ => df,
        };
        let udf = match self.handle_invalid {
            HandleInvalid::Keep => vector_assemble_keep_udf(),
            _ => vector_assemble_udf(),
        };
        df.with_column(&self.output_col, udf.call(args))
    }
}

/// Values an input column contributes: `Some(n)` for scalars (1) and fixed-size lists,
/// `None` for lists (varies by row).
fn size_of(name: &str, t: &DataType) -> Result<Option<usize>> {
    match t {
        DataType::FixedSizeList(f, n) if f.data_type().is_numeric() => Ok(Some(*n as usize)),
        DataType::List(f) | DataType::LargeList(f) if f.data_type().is_numeric() => Ok(None),
        t if t.is_numeric() || *t == DataType::Boolean => Ok(Some(1)),
        other => plan_err!(
            "VectorAssembler: column '{name}' must be numeric, boolean or a vector of numbers, found {other}"
        ),
    }
}

fn item() -> FieldRef {
    Arc::new(Field::new("item", DataType::Float64, true))
}

#[derive(Debug, PartialEq, Eq, Hash)]
struct Assemble {
    keep: bool,
    signature: Signature,
}

impl ScalarUDFImpl for Assemble {
    fn name(&self) -> &str {
        if self.keep {
            VECTOR_ASSEMBLE_KEEP
        } else {
            VECTOR_ASSEMBLE
        }
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn return_type(&self, arg_types: &[DataType]) -> Result<DataType> {
        let mut total = Some(0usize);
        for (i, t) in arg_types.iter().enumerate() {
            let n = size_of(&format!("argument {}", i + 1), t)?;
            total = total.zip(n).map(|(a, b)| a + b);
        }
        Ok(match total {
            Some(n) => DataType::FixedSizeList(item(), n as i32),
            None => DataType::List(item()),
        })
    }
    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let rows = args.number_rows;
        let inputs: Vec<(String, ArrayRef)> = args
            .args
            .iter()
            .enumerate()
            .map(|(i, a)| {
                let name = args
                    .arg_fields
                    .get(i)
                    .map_or(format!("argument {}", i + 1), |f| f.name().clone());
                Ok((name, a.to_array(rows)?))
            })
            .collect::<Result<_>>()?;
        Ok(ColumnarValue::Array(assemble_rows(
            &inputs,
            self.keep,
            rows,
            args.return_type(),
        )?))
    }
}

/// The float64 concatenation of named input arrays (vectors or numbers), row by row, as
/// `vector_assemble` (`keep`: `vector_assemble_keep`) computes it.
pub fn assemble(inputs: &[(String, ArrayRef)], keep: bool) -> Result<ArrayRef> {
    let rows = inputs.first().map_or(0, |(_, a)| a.len());
    let mut total = Some(0usize);
    for (name, a) in inputs {
        total = total.zip(size_of(name, a.data_type())?).map(|(a, b)| a + b);
    }
    let return_type = match total {
        Some(n) => DataType::FixedSizeList(item(), n as i32),
        None => DataType::List(item()),
    };
    assemble_rows(inputs, keep, rows, &return_type)
}

fn assemble_rows(
    inputs_in: &[(String, ArrayRef)],
    keep: bool,
    rows: usize,
    return_type: &DataType,
) -> Result<ArrayRef> {
    {
        let name = |i: usize| inputs_in[i].0.clone();
        let arrays: Vec<ArrayRef> = inputs_in.iter().map(|(_, a)| a.clone()).collect();
        // Per input: the float64 values and each row's (start, len) in them.
        let mut inputs = Vec::with_capacity(arrays.len());
        for (i, a) in arrays.iter().enumerate() {
            let size = size_of(&name(i), a.data_type())?;
            let (values, spans): (ArrayRef, Vec<(usize, usize)>) = if matches!(
                a.data_type(),
                DataType::FixedSizeList(..) | DataType::List(_) | DataType::LargeList(_)
            ) {
                let (values, spans) = vector_rows(a, &name(i))?;
                (cast(values, &DataType::Float64)?, spans)
            } else {
                (
                    cast(a, &DataType::Float64)?,
                    (0..a.len()).map(|r| (r, 1)).collect(),
                )
            };
            let values = values.as_primitive::<Float64Type>().clone();
            inputs.push((a, size, values, spans));
        }
        let mut out: Vec<f64> = vec![];
        let mut offsets: Vec<i32> = vec![0];
        for r in 0..rows {
            for (i, (a, size, values, spans)) in inputs.iter().enumerate() {
                if a.is_null(r) {
                    match (keep, size) {
                        (true, Some(n)) => out.extend(std::iter::repeat_n(f64::NAN, *n)),
                        (true, None) => {
                            return exec_err!(
                                "VectorAssembler: column '{}' is null at a row and its vectors have no fixed size, so handleInvalid 'keep' cannot fill NaNs; use 'skip'",
                                name(i)
                            );
                        }
                        (false, _) => {
                            return exec_err!(
                                "VectorAssembler: column '{}' is null at a row (an invalid image?); set handleInvalid to 'skip' to drop such rows or 'keep' to fill NaNs",
                                name(i)
                            );
                        }
                    }
                    continue;
                }
                let (start, len) = spans[r];
                for j in start..start + len {
                    if values.is_null(j) {
                        if !keep {
                            return exec_err!(
                                "VectorAssembler: column '{}' holds a null value inside a vector; set handleInvalid to 'keep' to read it as NaN",
                                name(i)
                            );
                        }
                        out.push(f64::NAN);
                    } else {
                        out.push(values.value(j));
                    }
                }
            }
            offsets.push(out.len() as i32);
        }
        let values = Arc::new(Float64Array::from(out)) as ArrayRef;
        let array: ArrayRef = match return_type {
            DataType::FixedSizeList(_, n) => {
                if rows == 0 {
                    new_null_array(return_type, 0)
                } else {
                    Arc::new(FixedSizeListArray::try_new(item(), *n, values, None)?)
                }
            }
            _ => Arc::new(ListArray::try_new(
                item(),
                OffsetBuffer::new(offsets.into()),
                values,
                None,
            )?),
        };
        Ok(array)
    }
}

/// `vector_assemble(c1, c2, ...)`: the float64 concatenation; a null input is an error.
pub fn vector_assemble_udf() -> ScalarUDF {
    ScalarUDF::new_from_impl(Assemble {
        keep: false,
        signature: Signature::variadic_any(Volatility::Immutable),
    })
}

/// `vector_assemble_keep(c1, c2, ...)`: as `vector_assemble`, with NaNs for null inputs.
pub fn vector_assemble_keep_udf() -> ScalarUDF {
    ScalarUDF::new_from_impl(Assemble {
        keep: true,
        signature: Signature::variadic_any(Volatility::Immutable),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::{FixedSizeListBuilder, Float32Builder, Int32Array, RecordBatch};
    use datafusion::arrow::datatypes::Schema;
    use datafusion::prelude::SessionContext;

    fn frame(with_null: bool) -> DataFrame {
        let mut a = FixedSizeListBuilder::new(Float32Builder::new(), 2)
            .with_field(Arc::new(Field::new("item", DataType::Float32, true)));
        for r in 0..3 {
            a.values().append_value(r as f32);
            a.values().append_value(10.0 + r as f32);
            a.append(!(with_null && r == 1));
        }
        let a = a.finish();
        let b = Int32Array::from(vec![7, 8, 9]);
        let schema = Arc::new(Schema::new(vec![
            Field::new("a", a.data_type().clone(), true),
            Field::new("b", DataType::Int32, false),
        ]));
        let batch = RecordBatch::try_new(schema, vec![Arc::new(a), Arc::new(b)]).unwrap();
        SessionContext::new().read_batch(batch).unwrap()
    }

    async fn rows(df: DataFrame, col: &str) -> Vec<Vec<f64>> {
        let batches = df.select_columns(&[col]).unwrap().collect().await.unwrap();
        let mut out = vec![];
        for b in batches {
            let list = b.column(0).as_fixed_size_list();
            for r in 0..list.len() {
                let v = list.value(r);
                out.push(v.as_primitive::<Float64Type>().values().to_vec());
            }
        }
        out
    }

    #[tokio::test]
    async fn assembles_vectors_and_scalars_in_order() {
        let t = VectorAssembler::new(["b", "a"])
            .transform(frame(false))
            .unwrap();
        let field = t.schema().field_with_unqualified_name("features").unwrap();
        assert_eq!(field.data_type(), &DataType::FixedSizeList(item(), 3));
        assert_eq!(
            rows(t, "features").await,
            vec![
                vec![7.0, 0.0, 10.0],
                vec![8.0, 1.0, 11.0],
                vec![9.0, 2.0, 12.0]
            ]
        );
    }

    #[tokio::test]
    async fn null_inputs_follow_handle_invalid() {
        let err = VectorAssembler::new(["a", "b"])
            .transform(frame(true))
            .unwrap()
            .collect()
            .await
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("column 'a' is null") && err.contains("skip"),
            "{err}"
        );
        let skip = VectorAssembler::new(["a", "b"])
            .with_handle_invalid(HandleInvalid::Skip)
            .transform(frame(true))
            .unwrap();
        assert_eq!(
            rows(skip, "features").await,
            vec![vec![0.0, 10.0, 7.0], vec![2.0, 12.0, 9.0]]
        );
        let keep = VectorAssembler::new(["a", "b"])
            .with_handle_invalid(HandleInvalid::Keep)
            .transform(frame(true))
            .unwrap();
        let kept = rows(keep, "features").await;
        assert_eq!(kept.len(), 3);
        assert!(kept[1][0].is_nan() && kept[1][1].is_nan() && kept[1][2] == 8.0);
    }

    #[tokio::test]
    async fn bad_parameters_name_the_column() {
        let err = VectorAssembler::new(["a", "nope"])
            .transform(frame(false))
            .unwrap_err();
        assert!(err.to_string().contains("no input column 'nope'"), "{err}");
        let err = VectorAssembler::new(["a"])
            .with_output_col("b")
            .transform(frame(false))
            .unwrap_err();
        assert!(err.to_string().contains("'b' already exists"), "{err}");
        let err = VectorAssembler::new(Vec::<String>::new())
            .validate()
            .unwrap_err();
        assert!(err.to_string().contains("inputCols is empty"), "{err}");
    }
}

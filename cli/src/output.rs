//! Result formatting for `dlp sql`: a table, CSV (structs flattened to dotted columns) or
//! JSON (one array of row objects). Binary values are base64 in CSV and JSON, and shown as
//! a byte count in tables.

use std::io::Write;
use std::sync::Arc;

use base64::Engine;
use datafusion::arrow::array::{Array, ArrayRef, AsArray, RecordBatch, StringArray, StructArray};
use datafusion::arrow::datatypes::{DataType, Field, Fields, Schema};
use datafusion::arrow::util::display::{ArrayFormatter, FormatOptions};
use datafusion::arrow::util::pretty::pretty_format_batches;
use datafusion::common::Result;
use serde_json::{Map, Value};

/// Output format of `dlp sql`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// An aligned text table.
    Table,
    /// Comma-separated values with a header; struct fields become `column.field`.
    Csv,
    /// One JSON array of row objects.
    Json,
}

/// Writes `batches` to `out` in `format`.
pub fn write(batches: &[RecordBatch], format: Format, out: &mut dyn Write) -> anyhow::Result<()> {
    match format {
        Format::Table => {
            let shown: Vec<RecordBatch> = batches
                .iter()
                .map(summarize_binary)
                .collect::<Result<_>>()?;
            writeln!(out, "{}", pretty_format_batches(&shown)?)?;
        }
        Format::Json => {
            serde_json::to_writer_pretty(&mut *out, &to_json_rows(batches)?)?;
            writeln!(out)?;
        }
        Format::Csv => write_csv(batches, out)?,
    }
    Ok(())
}

/// All rows as a JSON array of objects.
pub fn to_json_rows(batches: &[RecordBatch]) -> Result<Value> {
    let mut rows = Vec::new();
    for batch in batches {
        let schema = batch.schema();
        for row in 0..batch.num_rows() {
            let mut obj = Map::new();
            for (field, col) in schema.fields().iter().zip(batch.columns()) {
                obj.insert(field.name().clone(), cell(col.as_ref(), row)?);
            }
            rows.push(Value::Object(obj));
        }
    }
    Ok(Value::Array(rows))
}

/// One cell as JSON.
fn cell(array: &dyn Array, row: usize) -> Result<Value> {
    if array.is_null(row) {
        return Ok(Value::Null);
    }
    let b64 = |bytes: &[u8]| Value::String(base64::engine::general_purpose::STANDARD.encode(bytes));
    Ok(match array.data_type() {
        DataType::Boolean => Value::Bool(array.as_boolean().value(row)),
        DataType::Int8 | DataType::Int16 | DataType::Int32 | DataType::Int64 => {
            let v = datafusion::arrow::compute::cast(&array.slice(row, 1), &DataType::Int64)?;
            Value::from(
                v.as_primitive::<datafusion::arrow::datatypes::Int64Type>()
                    .value(0),
            )
        }
        DataType::UInt8 | DataType::UInt16 | DataType::UInt32 | DataType::UInt64 => {
            let v = datafusion::arrow::compute::cast(&array.slice(row, 1), &DataType::UInt64)?;
            Value::from(
                v.as_primitive::<datafusion::arrow::datatypes::UInt64Type>()
                    .value(0),
            )
        }
        DataType::Float16 | DataType::Float32 | DataType::Float64 => {
            let v = datafusion::arrow::compute::cast(&array.slice(row, 1), &DataType::Float64)?;
            let f = v
                .as_primitive::<datafusion::arrow::datatypes::Float64Type>()
                .value(0);
            serde_json::Number::from_f64(f)
                .map(Value::Number)
                .unwrap_or(Value::String(f.to_string()))
        }
        DataType::Utf8 => Value::String(array.as_string::<i32>().value(row).to_string()),
        DataType::LargeUtf8 => Value::String(array.as_string::<i64>().value(row).to_string()),
        DataType::Utf8View => Value::String(array.as_string_view().value(row).to_string()),
        DataType::Binary => b64(array.as_binary::<i32>().value(row)),
        DataType::LargeBinary => b64(array.as_binary::<i64>().value(row)),
        DataType::BinaryView => b64(array.as_binary_view().value(row)),
        DataType::FixedSizeBinary(_) => b64(array.as_fixed_size_binary().value(row)),
        DataType::Struct(fields) => {
            let s = array.as_struct();
            let mut obj = Map::new();
            for (f, c) in fields.iter().zip(s.columns()) {
                obj.insert(f.name().clone(), cell(c.as_ref(), row)?);
            }
            Value::Object(obj)
        }
        DataType::List(_) => list(array.as_list::<i32>().value(row))?,
        DataType::LargeList(_) => list(array.as_list::<i64>().value(row))?,
        DataType::FixedSizeList(_, _) => list(array.as_fixed_size_list().value(row))?,
        _ => {
            let fmt = ArrayFormatter::try_new(array, &FormatOptions::default())?;
            Value::String(fmt.value(row).to_string())
        }
    })
}

fn list(values: ArrayRef) -> Result<Value> {
    (0..values.len())
        .map(|i| cell(values.as_ref(), i))
        .collect::<Result<Vec<_>>>()
        .map(Value::Array)
}

fn write_csv(batches: &[RecordBatch], out: &mut dyn Write) -> anyhow::Result<()> {
    let Some(first) = batches.first() else {
        return Ok(());
    };
    let mut header = Vec::new();
    flatten_names("", first.schema().fields(), &mut header);
    writeln!(
        out,
        "{}",
        header
            .iter()
            .map(|h| csv_escape(h))
            .collect::<Vec<_>>()
            .join(",")
    )?;
    for batch in batches {
        let rows = to_json_rows(std::slice::from_ref(batch))?;
        for row in rows.as_array().into_iter().flatten() {
            let mut cells = Vec::new();
            flatten_values(row, &mut cells);
            writeln!(
                out,
                "{}",
                cells
                    .iter()
                    .map(|c| csv_escape(c))
                    .collect::<Vec<_>>()
                    .join(",")
            )?;
        }
    }
    Ok(())
}

fn flatten_names(prefix: &str, fields: &Fields, out: &mut Vec<String>) {
    for f in fields {
        let name = format!("{prefix}{}", f.name());
        match f.data_type() {
            DataType::Struct(children) => flatten_names(&format!("{name}."), children, out),
            _ => out.push(name),
        }
    }
}

fn flatten_values(value: &Value, out: &mut Vec<String>) {
    match value {
        Value::Object(map) => map.values().for_each(|v| match v {
            Value::Object(_) => flatten_values(v, out),
            Value::Null => out.push(String::new()),
            Value::String(s) => out.push(s.clone()),
            other => out.push(other.to_string()),
        }),
        other => out.push(other.to_string()),
    }
}

fn csv_escape(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

/// Replaces binary columns (also inside structs) with `<N bytes>` for display.
fn summarize_binary(batch: &RecordBatch) -> Result<RecordBatch> {
    let (fields, columns): (Vec<Field>, Vec<ArrayRef>) = batch
        .schema()
        .fields()
        .iter()
        .zip(batch.columns())
        .map(|(f, c)| summarize_column(f, c))
        .collect::<Result<Vec<_>>>()?
        .into_iter()
        .unzip();
    Ok(RecordBatch::try_new(
        Arc::new(Schema::new(fields)),
        columns,
    )?)
}

fn summarize_column(field: &Field, col: &ArrayRef) -> Result<(Field, ArrayRef)> {
    let sizes = |len: &dyn Fn(usize) -> usize| -> ArrayRef {
        Arc::new(StringArray::from_iter((0..col.len()).map(|i| {
            (!col.is_null(i)).then(|| format!("<{} bytes>", len(i)))
        })))
    };
    let summarized: Option<ArrayRef> = match col.data_type() {
        DataType::Binary => Some(sizes(&|i| col.as_binary::<i32>().value(i).len())),
        DataType::LargeBinary => Some(sizes(&|i| col.as_binary::<i64>().value(i).len())),
        DataType::BinaryView => Some(sizes(&|i| col.as_binary_view().value(i).len())),
        DataType::Struct(children) => {
            let s = col.as_struct();
            let (fs, cs): (Vec<Field>, Vec<ArrayRef>) = children
                .iter()
                .zip(s.columns())
                .map(|(f, c)| summarize_column(f, c))
                .collect::<Result<Vec<_>>>()?
                .into_iter()
                .unzip();
            let fields = Fields::from(fs);
            let array = StructArray::try_new(fields.clone(), cs, s.nulls().cloned())?;
            return Ok((
                Field::new(field.name(), DataType::Struct(fields), field.is_nullable()),
                Arc::new(array),
            ));
        }
        _ => None,
    };
    Ok(match summarized {
        Some(array) => (Field::new(field.name(), DataType::Utf8, true), array),
        None => (field.clone(), col.clone()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::{BinaryArray, Int32Array};

    fn batch() -> RecordBatch {
        let inner = StructArray::from(vec![
            (
                Arc::new(Field::new("h", DataType::Int32, false)),
                Arc::new(Int32Array::from(vec![2])) as ArrayRef,
            ),
            (
                Arc::new(Field::new("data", DataType::Binary, false)),
                Arc::new(BinaryArray::from(vec![&b"\x00\x01\xff"[..]])) as ArrayRef,
            ),
        ]);
        RecordBatch::try_from_iter(vec![
            ("name", Arc::new(StringArray::from(vec!["a,b"])) as ArrayRef),
            ("image", Arc::new(inner) as ArrayRef),
        ])
        .unwrap()
    }

    #[test]
    fn json_is_an_array_of_objects_with_base64_binary() {
        let v = to_json_rows(&[batch()]).unwrap();
        assert_eq!(
            v,
            serde_json::json!([{"name": "a,b", "image": {"h": 2, "data": "AAH/"}}])
        );
    }

    #[test]
    fn csv_flattens_structs_and_quotes() {
        let mut out = Vec::new();
        write(&[batch()], Format::Csv, &mut out).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "name,image.h,image.data\n\"a,b\",2,AAH/\n"
        );
    }

    #[test]
    fn table_shows_byte_counts_not_bytes() {
        let mut out = Vec::new();
        write(&[batch()], Format::Table, &mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(text.contains("<3 bytes>"), "{text}");
    }
}

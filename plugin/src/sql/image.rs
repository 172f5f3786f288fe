//! `read_image(uri)`: a column of file URIs (or local paths) -> Spark's image struct, decoded
//! as `read_images` does. What sparkdl's `KerasImageFileTransformer` did with its
//! `imageLoader`, as a SQL function any model stage can follow.

use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, AsArray, StructArray};
use datafusion::arrow::buffer::NullBuffer;
use datafusion::arrow::datatypes::DataType;
use datafusion::common::{Result, plan_err};
use datafusion::logical_expr::{
    ColumnarValue, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, Volatility,
};
use percent_encoding::percent_decode_str;

use crate::image::decode::{DecodeOptions, InvalidImage};
use crate::image::exec::{read_and_decode, read_and_decode_any};
use crate::image::listing::origin_uri;
use crate::image::schema::{ImageColumnBuilder, ImageRow, image_data_type};

/// `read_image(uri)`.
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct ReadImageFunction {
    signature: Signature,
}

/// The `read_image` SQL function.
pub fn read_image_udf() -> ScalarUDF {
    ScalarUDF::new_from_impl(ReadImageFunction {
        signature: Signature::string(1, Volatility::Volatile),
    })
}

/// The local path of a `file:` URI (percent-decoded) or of a plain path.
pub fn uri_to_path(uri: &str) -> std::result::Result<String, InvalidImage> {
    let path = match uri.split_once(':') {
        Some(("file", rest)) => {
            // file:///abs, file:/abs and file://localhost/abs
            let rest = rest.strip_prefix("//localhost").unwrap_or(rest);
            let rest = match rest.strip_prefix("//") {
                Some(r) if r.starts_with('/') => r,
                Some(_) => {
                    return Err(InvalidImage::Unreadable(format!(
                        "'{uri}' names a remote host (expected file:///absolute/path)"
                    )));
                }
                None => rest,
            };
            if !rest.starts_with('/') {
                return Err(InvalidImage::Unreadable(format!(
                    "'{uri}' is not a local file URI (expected file:///absolute/path)"
                )));
            }
            percent_decode_str(rest)
                .decode_utf8()
                .map_err(|e| InvalidImage::Unreadable(format!("'{uri}': {e}")))?
                .into_owned()
        }
        Some((scheme, _)) if scheme.len() > 1 && !scheme.contains('/') => {
            return Err(InvalidImage::Unreadable(format!(
                "'{uri}': only local files (file: URIs or paths) and s3://, s3a://, gs://, az://, abfss:// or http(s):// URLs are read, not {scheme}:"
            )));
        }
        _ => uri.to_string(),
    };
    Ok(path)
}

/// Reads and decodes one file; every failure is an invalid image with its reason.
pub fn load_image(uri: &str, options: &DecodeOptions) -> (String, Result<ImageRow, InvalidImage>) {
    if crate::storage::is_url(uri) {
        // An object in object storage: its URL is its origin.
        return match read_and_decode_any(uri.trim(), options) {
            Ok((row, _)) => (uri.trim().to_string(), row),
            Err(e) => (
                uri.to_string(),
                Err(InvalidImage::Unreadable(e.to_string())),
            ),
        };
    }
    let path = match uri_to_path(uri) {
        Ok(p) => p,
        Err(e) => return (uri.to_string(), Err(e)),
    };
    let path = match crate::access::DataRoots::get() {
        Some(r) if std::path::Path::new(&path).is_relative() => r.base().join(&path),
        _ => std::path::PathBuf::from(&path),
    };
    let abs = std::path::absolute(&path).unwrap_or_else(|_| path.clone());
    let origin = origin_uri(&abs.to_string_lossy());
    let (row, _) = read_and_decode(&abs.to_string_lossy(), options);
    (origin, row)
}

impl ScalarUDFImpl for ReadImageFunction {
    fn name(&self) -> &str {
        "read_image"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, arg_types: &[DataType]) -> Result<DataType> {
        match arg_types.first() {
            Some(DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View | DataType::Null) => {
                Ok(image_data_type())
            }
            other => {
                plan_err!("read_image: the argument must be a string of file URIs, got {other:?}")
            }
        }
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let uris = args.args[0].to_array(args.number_rows)?;
        let uris = datafusion::arrow::compute::cast(&uris, &DataType::Utf8)?;
        let uris = uris.as_string::<i32>();
        let options = DecodeOptions::default();
        let column = crate::torch::infer::blocking(|| {
            let mut images = ImageColumnBuilder::with_capacity(uris.len(), 0);
            let mut valid = Vec::with_capacity(uris.len());
            for i in 0..uris.len() {
                if uris.is_null(i) {
                    images.append("", &ImageRow::invalid());
                    valid.push(false);
                    continue;
                }
                let (origin, row) = load_image(uris.value(i), &options);
                let row = row.unwrap_or_else(|e| {
                    tracing::warn!(file = %origin, reason = %e, "read_image: invalid image");
                    ImageRow::invalid()
                });
                images.append(&origin, &row);
                valid.push(true);
            }
            let column = images.finish();
            let s = column.as_struct();
            let nulls = NullBuffer::from(valid);
            StructArray::new(s.fields().clone(), s.columns().to_vec(), Some(nulls))
        });
        Ok(ColumnarValue::Array(Arc::new(column) as ArrayRef))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uris_to_paths() {
        assert_eq!(uri_to_path("file:///a/b%20c.jpg").unwrap(), "/a/b c.jpg");
        assert_eq!(uri_to_path("file:/a/b.jpg").unwrap(), "/a/b.jpg");
        assert_eq!(uri_to_path("file://localhost/a.png").unwrap(), "/a.png");
        assert_eq!(uri_to_path("rel/x.png").unwrap(), "rel/x.png");
        assert!(
            uri_to_path("s3://bucket/x.jpg")
                .unwrap_err()
                .to_string()
                .contains("s3:")
        );
        assert!(uri_to_path("file://host/x.jpg").is_err());
    }

    #[test]
    fn bad_files_are_invalid_rows_with_a_reason() {
        let dir = tempfile::tempdir().unwrap();
        let text = dir.path().join("notes.txt");
        std::fs::write(&text, "not an image").unwrap();
        let (origin, row) = load_image(text.to_str().unwrap(), &DecodeOptions::default());
        assert!(origin.starts_with("file:///") && origin.ends_with("notes.txt"));
        assert!(matches!(row, Err(InvalidImage::UnknownFormat)));
        let (_, row) = load_image("/does/not/exist.jpg", &DecodeOptions::default());
        assert!(matches!(row, Err(InvalidImage::Unreadable(_))));
    }
}

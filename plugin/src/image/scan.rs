//! What an image scan is: the root, the options and the partition columns ([`ImageScanSpec`],
//! which the codecs carry), its schemas, and the file-list batches of the sliceable leaf
//! under [`ImageDecodeExec`](super::exec::ImageDecodeExec).

use std::sync::Arc;

use datafusion::arrow::array::{ArrayRef, Int32Builder, RecordBatch, StringBuilder, UInt64Array};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::common::Result;
use serde::{Deserialize, Serialize};

use super::listing::ImageListing;
use super::options::ImageReadOptions;
use super::schema::image_field;

/// Column of the file-list leaf holding each file's absolute path.
pub const PATH_COLUMN: &str = "__dlp_path";
/// Column of the file-list leaf holding each file's size.
pub const SIZE_COLUMN: &str = "__dlp_size";
/// Class index column added by `withLabel`.
pub const LABEL_COLUMN: &str = "label";
/// Class name column added by `withLabel`.
pub const LABEL_NAME_COLUMN: &str = "label_name";

/// Everything needed to plan a scan of an image directory; what the codecs carry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ImageScanSpec {
    /// The path or `file:` URI the user gave.
    pub root: String,
    /// Source options.
    pub options: ImageReadOptions,
    /// Partition columns discovered when the table was defined.
    pub partition_columns: Vec<String>,
    /// `Some((width, height))` when only models read the pixels: JPEGs are then decoded at
    /// the smallest DCT scale covering this size ([`crate::torch::scaled_decode`] sets it on
    /// the physical plan; a table's own scan is always Spark-exact).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decode_cover: Option<(usize, usize)>,
}

impl ImageScanSpec {
    /// The table's schema: `image`, then partition columns (strings), then `label`,
    /// `label_name` when `withLabel` is on.
    pub fn table_schema(&self) -> SchemaRef {
        let mut fields = vec![image_field()];
        fields.extend(
            self.partition_columns
                .iter()
                .map(|c| Field::new(c, DataType::Utf8, true)),
        );
        if self.options.with_label {
            fields.push(Field::new(LABEL_COLUMN, DataType::Int32, true));
            fields.push(Field::new(LABEL_NAME_COLUMN, DataType::Utf8, true));
        }
        Arc::new(Schema::new(fields))
    }

    /// Schema of the file-list leaf: path, size, then the table's non-image columns.
    pub fn file_list_schema(&self) -> SchemaRef {
        let table = self.table_schema();
        let mut fields = vec![
            Field::new(PATH_COLUMN, DataType::Utf8, false),
            Field::new(SIZE_COLUMN, DataType::UInt64, false),
        ];
        fields.extend(table.fields().iter().skip(1).map(|f| f.as_ref().clone()));
        Arc::new(Schema::new(fields))
    }

    /// Builds the file-list batches, one per partition (files dealt round-robin).
    pub fn file_list_partitions(
        &self,
        listing: &ImageListing,
        num_partitions: usize,
    ) -> Result<Vec<Vec<RecordBatch>>> {
        let n = num_partitions.max(1);
        let schema = self.file_list_schema();
        let mut parts: Vec<Vec<usize>> = vec![Vec::new(); n];
        for i in 0..listing.files.len() {
            parts[i % n].push(i);
        }
        parts
            .into_iter()
            .map(|idx| {
                let mut paths = StringBuilder::new();
                let mut sizes = Vec::with_capacity(idx.len());
                let mut pvals: Vec<StringBuilder> = self
                    .partition_columns
                    .iter()
                    .map(|_| StringBuilder::new())
                    .collect();
                let mut labels = Int32Builder::new();
                let mut names = StringBuilder::new();
                for &i in &idx {
                    let f = &listing.files[i];
                    paths.append_value(&f.path);
                    sizes.push(f.size);
                    for (b, v) in pvals.iter_mut().zip(&f.partition_values) {
                        b.append_option(v.as_deref());
                    }
                    labels.append_option(f.label.as_ref().map(|(l, _)| *l));
                    names.append_option(f.label.as_ref().map(|(_, n)| n.as_str()));
                }
                let mut columns: Vec<ArrayRef> =
                    vec![Arc::new(paths.finish()), Arc::new(UInt64Array::from(sizes))];
                columns.extend(pvals.iter_mut().map(|b| Arc::new(b.finish()) as ArrayRef));
                if self.options.with_label {
                    columns.push(Arc::new(labels.finish()));
                    columns.push(Arc::new(names.finish()));
                }
                Ok(if idx.is_empty() {
                    vec![]
                } else {
                    vec![RecordBatch::try_new(schema.clone(), columns)?]
                })
            })
            .collect()
    }
}

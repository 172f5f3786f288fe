//! Spark's `ImageSchema`: the `image` struct column, OpenCV mode codes and the invalid row.

use std::sync::Arc;

use datafusion::arrow::array::{ArrayRef, BinaryBuilder, Int32Builder, StringBuilder, StructArray};
use datafusion::arrow::buffer::NullBuffer;
use datafusion::arrow::datatypes::{DataType, Field, Fields};

/// Name of the image column, as in Spark (`spark.read.format("image")`).
pub const IMAGE_COLUMN: &str = "image";

/// OpenCV type code for an undefined (invalid) image.
pub const MODE_UNDEFINED: i32 = -1;
/// OpenCV `CV_8UC1` (one 8-bit channel, gray).
pub const MODE_CV_8UC1: i32 = 0;
/// OpenCV `CV_8UC3` (three 8-bit channels, B G R).
pub const MODE_CV_8UC3: i32 = 16;
/// OpenCV `CV_8UC4` (four 8-bit channels, B G R A).
pub const MODE_CV_8UC4: i32 = 24;

/// OpenCV mode code for 8-bit images with `n_channels` channels (as Spark's `ocvTypes`).
pub fn mode_for_channels(n_channels: i32) -> i32 {
    match n_channels {
        1 => MODE_CV_8UC1,
        3 => MODE_CV_8UC3,
        4 => MODE_CV_8UC4,
        _ => MODE_UNDEFINED,
    }
}

/// Spark's name for an OpenCV mode code (`ImageSchema.ocvTypes`).
pub fn mode_name(mode: i32) -> &'static str {
    match mode {
        MODE_CV_8UC1 => "CV_8UC1",
        MODE_CV_8UC3 => "CV_8UC3",
        MODE_CV_8UC4 => "CV_8UC4",
        _ => "Undefined",
    }
}

/// The fields of the image struct, in Spark's order:
/// `origin, height, width, nChannels, mode, data`.
pub fn image_fields() -> Fields {
    Fields::from(vec![
        Field::new("origin", DataType::Utf8, true),
        Field::new("height", DataType::Int32, false),
        Field::new("width", DataType::Int32, false),
        Field::new("nChannels", DataType::Int32, false),
        Field::new("mode", DataType::Int32, false),
        Field::new("data", DataType::Binary, false),
    ])
}

/// The `image` column type: `struct<origin: string, height: int, width: int, nChannels: int,
/// mode: int, data: binary>`.
pub fn image_data_type() -> DataType {
    DataType::Struct(image_fields())
}

/// The `image` column as an Arrow field (nullable, as Spark's).
pub fn image_field() -> Field {
    Field::new(IMAGE_COLUMN, image_data_type(), true)
}

/// True if `data_type` is Spark's image struct (field names and types, in order).
pub fn is_image_type(data_type: &DataType) -> bool {
    match data_type {
        DataType::Struct(fields) => {
            let expected = image_fields();
            fields.len() == expected.len()
                && fields
                    .iter()
                    .zip(expected.iter())
                    .all(|(a, b)| a.name() == b.name() && a.data_type() == b.data_type())
        }
        _ => false,
    }
}

/// One decoded image in Spark's layout: row-major, channels interleaved, B G R (A) order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageRow {
    /// Height in pixels, -1 when invalid.
    pub height: i32,
    /// Width in pixels, -1 when invalid.
    pub width: i32,
    /// 1, 3 or 4; -1 when invalid.
    pub n_channels: i32,
    /// OpenCV mode code, -1 when invalid.
    pub mode: i32,
    /// `height * width * n_channels` bytes; empty when invalid.
    pub data: Vec<u8>,
}

impl ImageRow {
    /// A valid image from pixel bytes already in Spark's channel order.
    pub fn new(height: usize, width: usize, n_channels: usize, data: Vec<u8>) -> Self {
        debug_assert_eq!(data.len(), height * width * n_channels);
        let n_channels = n_channels as i32;
        Self {
            height: height as i32,
            width: width as i32,
            n_channels,
            mode: mode_for_channels(n_channels),
            data,
        }
    }

    /// Spark's invalid row: `(-1, -1, -1, -1, empty)`.
    pub fn invalid() -> Self {
        Self {
            height: -1,
            width: -1,
            n_channels: -1,
            mode: MODE_UNDEFINED,
            data: Vec::new(),
        }
    }

    /// True unless this is the invalid row.
    pub fn is_valid(&self) -> bool {
        self.n_channels > 0
    }
}

/// Builds an `image` struct column row by row.
#[derive(Debug)]
pub struct ImageColumnBuilder {
    origin: StringBuilder,
    height: Int32Builder,
    width: Int32Builder,
    n_channels: Int32Builder,
    mode: Int32Builder,
    data: BinaryBuilder,
}

impl ImageColumnBuilder {
    /// A builder for `capacity` rows holding about `data_bytes` pixel bytes.
    pub fn with_capacity(capacity: usize, data_bytes: usize) -> Self {
        Self {
            origin: StringBuilder::with_capacity(capacity, capacity * 64),
            height: Int32Builder::with_capacity(capacity),
            width: Int32Builder::with_capacity(capacity),
            n_channels: Int32Builder::with_capacity(capacity),
            mode: Int32Builder::with_capacity(capacity),
            data: BinaryBuilder::with_capacity(capacity, data_bytes),
        }
    }

    /// Appends one image with its origin URI.
    pub fn append(&mut self, origin: &str, row: &ImageRow) {
        self.origin.append_value(origin);
        self.height.append_value(row.height);
        self.width.append_value(row.width);
        self.n_channels.append_value(row.n_channels);
        self.mode.append_value(row.mode);
        self.data.append_value(&row.data);
    }

    /// Finishes the column.
    pub fn finish(self) -> ArrayRef {
        self.finish_with_nulls(None)
    }

    /// Finishes the column with a validity mask (null rows keep whatever was appended).
    pub fn finish_with_nulls(mut self, nulls: Option<NullBuffer>) -> ArrayRef {
        let columns: Vec<ArrayRef> = vec![
            Arc::new(self.origin.finish()),
            Arc::new(self.height.finish()),
            Arc::new(self.width.finish()),
            Arc::new(self.n_channels.finish()),
            Arc::new(self.mode.finish()),
            Arc::new(self.data.finish()),
        ];
        Arc::new(StructArray::new(image_fields(), columns, nulls))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::Array;

    #[test]
    fn schema_matches_spark_simple_string() {
        // Spark: struct<origin:string,height:int,width:int,nChannels:int,mode:int,data:binary>
        let names: Vec<_> = image_fields().iter().map(|f| f.name().clone()).collect();
        assert_eq!(
            names,
            ["origin", "height", "width", "nChannels", "mode", "data"]
        );
        assert!(is_image_type(&image_data_type()));
        assert!(!is_image_type(&DataType::Utf8));
        assert_eq!(mode_name(MODE_UNDEFINED), "Undefined");
        assert_eq!(mode_for_channels(3), 16);
    }

    #[test]
    fn builder_writes_invalid_row() {
        let mut b = ImageColumnBuilder::with_capacity(2, 12);
        b.append("file:///a.png", &ImageRow::new(1, 1, 3, vec![1, 2, 3]));
        b.append("file:///b.txt", &ImageRow::invalid());
        let col = b.finish();
        assert_eq!(col.len(), 2);
        assert_eq!(col.data_type(), &image_data_type());
    }
}

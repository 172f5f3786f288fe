//! Training data on the executors: reading the features / label / weight columns into
//! contiguous `f64` buffers (with the checks that name the column and the problem), the
//! Arrow IPC part files that every iteration reads, and the executor-local cache of those
//! parts, held as the plain buffers [`super::kernel`] sums over.

use std::collections::HashMap;
use std::fs::File;
use std::path::Path;
use std::sync::{Arc, LazyLock, Mutex};

use datafusion::arrow::array::{
    Array, ArrayRef, AsArray, FixedSizeListArray, Float32Array, Float64Array, RecordBatch,
};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, Field, Float32Type, Float64Type, Schema};
use datafusion::arrow::ipc::reader::FileReader;
use datafusion::arrow::ipc::writer::FileWriter;
use datafusion::common::{Result, exec_datafusion_err, plan_err};

/// Checks that `data_type` can be a features column (a vector of floats).
pub fn check_features_type(col: &str, data_type: &DataType) -> Result<()> {
    let item = match data_type {
        DataType::FixedSizeList(f, _) | DataType::List(f) | DataType::LargeList(f) => f.data_type(),
        other => {
            return plan_err!(
                "features column '{col}' must be a vector (list or fixed-size list of float32/float64), found {other}"
            );
        }
    };
    match item {
        DataType::Float32 | DataType::Float64 => Ok(()),
        other => plan_err!(
            "features column '{col}' must hold float32 or float64 values, found a list of {other}"
        ),
    }
}

/// Checks that `data_type` is numeric (label and weight columns).
pub fn check_numeric_type(what: &str, col: &str, data_type: &DataType) -> Result<()> {
    if data_type.is_numeric() {
        Ok(())
    } else {
        plan_err!("{what} column '{col}' must be numeric, found {data_type}")
    }
}

/// Rows of one partition as contiguous row-major `f64` buffers.
#[derive(Debug, Default, Clone)]
pub struct Rows {
    /// Feature dimension (0 before the first row).
    pub dim: usize,
    /// `rows x dim` features.
    pub x: Vec<f64>,
    /// Labels.
    pub y: Vec<f64>,
    /// Instance weights.
    pub w: Vec<f64>,
    /// The features came as float32: they are exact in `f32`, the part file stores them so
    /// (half the bytes) and the loss reads them so (half the memory traffic).
    pub float32: bool,
}

/// Which columns of a batch hold what.
#[derive(Debug, Clone, Copy)]
pub struct Columns<'a> {
    pub features: &'a str,
    pub label: &'a str,
    pub weight: Option<&'a str>,
}

impl Rows {
    /// Number of rows.
    pub fn len(&self) -> usize {
        self.y.len()
    }

    /// Whether there are no rows.
    pub fn is_empty(&self) -> bool {
        self.y.is_empty()
    }

    /// Appends a batch, checking every value. `where_` names the partition for errors.
    pub fn push_batch(&mut self, batch: &RecordBatch, cols: Columns, where_: &str) -> Result<()> {
        let first_row = self.len();
        let features = column(batch, cols.features)?;
        self.push_features(features, cols.features, first_row, where_)?;
        let labels = as_f64(column(batch, cols.label)?, "label", cols.label)?;
        for (i, v) in labels.iter().enumerate() {
            let row = first_row + i;
            match v {
                Some(l)
                    if l.is_finite()
                        && l >= 0.0
                        && l.fract() == 0.0
                        && l < crate::limits::Limits::get().max_classes as f64 =>
                {
                    self.y.push(l)
                }
                Some(l) if l.is_finite() && l >= 0.0 && l.fract() == 0.0 => {
                    return Err(exec_datafusion_err!(
                        "label column '{}': class index {l} at row {row} of {where_} is not below \
                         this cluster's limit of {} classes (--max-classes)",
                        cols.label,
                        crate::limits::Limits::get().max_classes
                    ));
                }
                Some(l) => {
                    return Err(exec_datafusion_err!(
                        "label column '{}' must hold class indices 0, 1, ..., k-1; found {l} at row {row} of {where_}",
                        cols.label
                    ));
                }
                None => {
                    return Err(exec_datafusion_err!(
                        "label column '{}' has a null at row {row} of {where_}",
                        cols.label
                    ));
                }
            }
        }
        match cols.weight {
            None => self.w.resize(self.y.len(), 1.0),
            Some(name) => {
                let weights = as_f64(column(batch, name)?, "weight", name)?;
                for (i, v) in weights.iter().enumerate() {
                    match v {
                        Some(w) if w.is_finite() && w >= 0.0 => self.w.push(w),
                        other => {
                            return Err(exec_datafusion_err!(
                                "weight column '{name}' must hold finite non-negative numbers; found {} at row {} of {where_}",
                                other.map_or("null".to_string(), |w| w.to_string()),
                                first_row + i
                            ));
                        }
                    }
                }
            }
        }
        Ok(())
    }

    fn push_features(
        &mut self,
        array: &ArrayRef,
        col: &str,
        first_row: usize,
        where_: &str,
    ) -> Result<()> {
        let (values, offsets) = vector_rows(array, col)?;
        if values.null_count() > 0 {
            return Err(exec_datafusion_err!(
                "features column '{col}' has null values inside a vector in {where_}"
            ));
        }
        for (i, &(start, len)) in offsets.iter().enumerate() {
            let row = first_row + i;
            if array.is_null(i) {
                return Err(exec_datafusion_err!(
                    "features column '{col}' has a null vector at row {row} of {where_}; drop or impute such rows first"
                ));
            }
            if self.dim == 0 && self.x.is_empty() {
                self.float32 = values.data_type() == &DataType::Float32;
                if len == 0 {
                    return Err(exec_datafusion_err!(
                        "features column '{col}' has an empty vector at row {row} of {where_}"
                    ));
                }
                self.dim = len;
            } else if len != self.dim {
                return Err(exec_datafusion_err!(
                    "features column '{col}' has vectors of mixed length: {len} at row {row} of {where_}, {} before",
                    self.dim
                ));
            }
            let before = self.x.len();
            extend_f64(values, start, len, &mut self.x, col)?;
            if let Some(bad) = self.x[before..].iter().position(|v| !v.is_finite()) {
                return Err(exec_datafusion_err!(
                    "features column '{col}' has a non-finite value ({}) at index {bad} of row {row} of {where_}",
                    self.x[before + bad]
                ));
            }
        }
        Ok(())
    }

    /// Schema of a part file.
    fn part_schema(dim: usize, item: &DataType) -> Arc<Schema> {
        Arc::new(Schema::new(vec![
            Field::new(
                "features",
                DataType::FixedSizeList(
                    Arc::new(Field::new("item", item.clone(), false)),
                    dim as i32,
                ),
                false,
            ),
            Field::new("label", DataType::Float64, false),
            Field::new("weight", DataType::Float64, false),
        ]))
    }

    /// Writes the rows as an Arrow IPC file (atomically: temp file, then rename).
    pub fn write_ipc(&self, path: &Path) -> Result<()> {
        let tmp = path.with_extension("tmp");
        let file = File::create(&tmp)
            .map_err(|e| exec_datafusion_err!("cannot create {}: {e}", tmp.display()))?;
        self.write_ipc_to(std::io::BufWriter::new(file))?;
        std::fs::rename(&tmp, path)
            .map_err(|e| exec_datafusion_err!("cannot rename {}: {e}", tmp.display()))?;
        Ok(())
    }

    /// The rows as the bytes of an Arrow IPC file (a part in object storage).
    pub fn to_ipc_bytes(&self) -> Result<Vec<u8>> {
        let item_bytes = if self.float32 { 4 } else { 8 };
        let mut out = Vec::with_capacity(self.x.len() * item_bytes + self.y.len() * 16 + 4096);
        self.write_ipc_to(&mut out)?;
        Ok(out)
    }

    fn write_ipc_to(&self, sink: impl std::io::Write) -> Result<()> {
        let item = if self.float32 {
            DataType::Float32
        } else {
            DataType::Float64
        };
        let schema = Self::part_schema(self.dim.max(1), &item);
        let mut writer = FileWriter::try_new(sink, &schema)?;
        const CHUNK: usize = 4096;
        let dim = self.dim.max(1);
        let mut start = 0;
        while start < self.len() {
            let end = (start + CHUNK).min(self.len());
            let x = &self.x[start * dim..end * dim];
            let values: ArrayRef = if self.float32 {
                Arc::new(Float32Array::from_iter_values(x.iter().map(|&v| v as f32)))
            } else {
                Arc::new(Float64Array::from(x.to_vec()))
            };
            let features = FixedSizeListArray::try_new(
                Arc::new(Field::new("item", item.clone(), false)),
                dim as i32,
                values,
                None,
            )?;
            let batch = RecordBatch::try_new(
                schema.clone(),
                vec![
                    Arc::new(features),
                    Arc::new(Float64Array::from(self.y[start..end].to_vec())),
                    Arc::new(Float64Array::from(self.w[start..end].to_vec())),
                ],
            )?;
            writer.write(&batch)?;
            start = end;
        }
        writer.finish()?;
        Ok(())
    }

    /// Reads a part written by [`Rows::write_ipc`] or [`Rows::to_ipc_bytes`]: a local
    /// file, or an object in object storage.
    pub fn read_ipc(path: &Path) -> Result<Self> {
        if let Some(url) = crate::storage::url_of_path(path) {
            let target = url.clone();
            let bytes =
                crate::storage::io_blocking(
                    async move { crate::storage::get(&target, u64::MAX).await },
                )
                .map_err(|e| e.context("reading a training part"))?;
            return Self::read_ipc_from(std::io::Cursor::new(bytes), url.as_str());
        }
        let file = File::open(path).map_err(|e| {
            exec_datafusion_err!(
                "cannot open training part {} (the work dir must be storage every executor \
                 sees: a shared volume, or DLP_WORK_DIR=s3://bucket/prefix): {e}",
                path.display()
            )
        })?;
        Self::read_ipc_from(std::io::BufReader::new(file), &path.display().to_string())
    }

    fn read_ipc_from(source: impl std::io::Read + std::io::Seek, where_: &str) -> Result<Self> {
        let reader = FileReader::try_new(source, None)?;
        let mut rows = Rows::default();
        let where_ = where_.to_string();
        for batch in reader {
            rows.push_batch(
                &batch?,
                Columns {
                    features: "features",
                    label: "label",
                    weight: Some("weight"),
                },
                &where_,
            )?;
        }
        Ok(rows)
    }
}

/// The flat values of a vector column (fixed-size list, list or large list) and each row's
/// `(start, len)` in them.
pub(crate) fn vector_rows<'a>(
    array: &'a ArrayRef,
    col: &str,
) -> Result<(&'a ArrayRef, Vec<(usize, usize)>)> {
    Ok(match array.data_type() {
        DataType::FixedSizeList(_, n) => {
            let list = array.as_fixed_size_list();
            let n = *n as usize;
            let base = list.offset() * n;
            (
                list.values(),
                (0..list.len()).map(|i| (base + i * n, n)).collect(),
            )
        }
        DataType::List(_) => {
            let list = array.as_list::<i32>();
            let o = list.value_offsets();
            (
                list.values(),
                (0..list.len())
                    .map(|i| (o[i] as usize, (o[i + 1] - o[i]) as usize))
                    .collect(),
            )
        }
        DataType::LargeList(_) => {
            let list = array.as_list::<i64>();
            let o = list.value_offsets();
            (
                list.values(),
                (0..list.len())
                    .map(|i| (o[i] as usize, (o[i + 1] - o[i]) as usize))
                    .collect(),
            )
        }
        other => {
            return Err(exec_datafusion_err!(
                "features column '{col}' must be a vector, found {other}"
            ));
        }
    })
}

/// Appends `values[start..start + len]` (float32 or float64) to `out` as `f64`.
pub(crate) fn extend_f64(
    values: &ArrayRef,
    start: usize,
    len: usize,
    out: &mut Vec<f64>,
    col: &str,
) -> Result<()> {
    match values.data_type() {
        DataType::Float64 => out
            .extend_from_slice(&values.as_primitive::<Float64Type>().values()[start..start + len]),
        DataType::Float32 => out.extend(
            values.as_primitive::<Float32Type>().values()[start..start + len]
                .iter()
                .map(|&v| v as f64),
        ),
        other => {
            return Err(exec_datafusion_err!(
                "features column '{col}' must hold float32 or float64 values, found {other}"
            ));
        }
    }
    Ok(())
}

fn column<'a>(batch: &'a RecordBatch, name: &str) -> Result<&'a ArrayRef> {
    batch
        .column_by_name(name)
        .ok_or_else(|| exec_datafusion_err!("column '{name}' is missing from the input"))
}

fn as_f64(array: &ArrayRef, what: &str, col: &str) -> Result<Float64Array> {
    let cast = cast(array, &DataType::Float64).map_err(|e| {
        exec_datafusion_err!("{what} column '{col}' cannot be read as numbers: {e}")
    })?;
    Ok(cast.as_primitive::<Float64Type>().clone())
}

// ---------------------------------------------------------------------------------------
// Executor-local cache

pub use cache::*;

mod cache {
    use super::*;

    /// Features of a cached part, in the type they came in.
    #[derive(Debug)]
    pub enum Features {
        F32(Vec<f32>),
        F64(Vec<f64>),
    }

    impl Features {
        /// Bytes per value.
        pub fn value_bytes(&self) -> usize {
            match self {
                Features::F32(_) => 4,
                Features::F64(_) => 8,
            }
        }
    }

    /// One part in memory, ready for the gradient computation.
    #[derive(Debug)]
    pub struct CachedPart {
        /// `rows x dim` features (f32 when they came as float32, else f64).
        pub x: Features,
        /// Labels.
        pub y: Vec<f64>,
        /// Weights.
        pub w: Vec<f64>,
        /// Rows.
        pub rows: usize,
        /// Feature dimension.
        pub dim: usize,
    }

    impl CachedPart {
        /// The part of `rows` (their buffers moved, float32 features narrowed).
        pub fn from_rows(rows: Rows) -> Self {
            let n = rows.len();
            let dim = rows.dim.max(1);
            let x = if rows.float32 {
                Features::F32(rows.x.iter().map(|&v| v as f32).collect())
            } else {
                Features::F64(rows.x)
            };
            Self {
                x,
                y: rows.y,
                w: rows.w,
                rows: n,
                dim,
            }
        }

        fn bytes(&self) -> usize {
            self.rows * (self.dim * self.x.value_bytes() + 2 * 8)
        }
    }

    type Shared = Arc<CachedPart>;

    struct Entry {
        part: Shared,
        bytes: usize,
        last_used: u64,
    }

    #[derive(Default)]
    struct Cache {
        entries: HashMap<String, Entry>,
        clock: u64,
        bytes: usize,
    }

    static CACHE: LazyLock<Mutex<Cache>> = LazyLock::new(Default::default);

    /// Capacity of the part cache of this process: `DLP_ML_CACHE_BYTES`, default 4 GiB.
    fn capacity() -> usize {
        std::env::var("DLP_ML_CACHE_BYTES")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(4 << 30)
    }

    fn lock() -> std::sync::MutexGuard<'static, Cache> {
        CACHE.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Puts a part in the cache (evicting the least recently used ones over capacity).
    pub fn cache_put(path: &str, part: CachedPart) -> Shared {
        let bytes = part.bytes();
        let part = Arc::new(part);
        let cap = capacity();
        if bytes > cap {
            return part;
        }
        let mut cache = lock();
        cache.clock += 1;
        let clock = cache.clock;
        if let Some(old) = cache.entries.insert(
            path.to_string(),
            Entry {
                part: part.clone(),
                bytes,
                last_used: clock,
            },
        ) {
            cache.bytes -= old.bytes;
        }
        cache.bytes += bytes;
        while cache.bytes > cap {
            let Some(victim) = cache
                .entries
                .iter()
                .min_by_key(|(_, e)| e.last_used)
                .map(|(k, _)| k.clone())
            else {
                break;
            };
            if let Some(e) = cache.entries.remove(&victim) {
                cache.bytes -= e.bytes;
            }
        }
        part
    }

    /// A cached part, or the part read from its file (and cached). The flag says whether it
    /// was a cache hit.
    pub fn cache_get_or_load(path: &str) -> Result<(Shared, bool)> {
        {
            let mut cache = lock();
            cache.clock += 1;
            let clock = cache.clock;
            if let Some(e) = cache.entries.get_mut(path) {
                e.last_used = clock;
                return Ok((e.part.clone(), true));
            }
        }
        match crate::storage::url_of_path(Path::new(path)) {
            Some(url) => crate::access::check_work_url(&url),
            None => crate::access::check_work_path(Path::new(path)),
        }
        .map_err(|e| datafusion::common::exec_datafusion_err!("{e}"))?;
        let rows = Rows::read_ipc(Path::new(path))?;
        Ok((cache_put(path, CachedPart::from_rows(rows)), false))
    }

    /// Drops every cached part under `dir` (end of a fit).
    pub fn cache_evict_dir(dir: &str) {
        let mut cache = lock();
        let victims: Vec<String> = cache
            .entries
            .keys()
            .filter(|k| k.starts_with(dir))
            .cloned()
            .collect();
        for k in victims {
            if let Some(e) = cache.entries.remove(&k) {
                cache.bytes -= e.bytes;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::Float32Array;

    fn batch(values: ArrayRef, dim: i32) -> RecordBatch {
        let item = values.data_type().clone();
        let rows = values.len() / dim as usize;
        let features = FixedSizeListArray::try_new(
            Arc::new(Field::new("item", item, false)),
            dim,
            values,
            None,
        )
        .unwrap();
        let schema = Arc::new(Schema::new(vec![
            Field::new("f", features.data_type().clone(), false),
            Field::new("y", DataType::Float64, false),
        ]));
        let labels = Float64Array::from_iter_values((0..rows).map(|i| (i % 2) as f64));
        RecordBatch::try_new(schema, vec![Arc::new(features), Arc::new(labels)]).unwrap()
    }

    #[test]
    fn float32_features_stay_float32_in_the_part_file_and_float64_stay_float64() {
        let cols = Columns {
            features: "f",
            label: "y",
            weight: None,
        };
        let dir = tempfile::tempdir().unwrap();
        let single = [0.1f32, -2.5, 3.25, 1e-7, 7.0, -0.3];
        for (values, float32) in [
            (
                Arc::new(Float32Array::from(single.to_vec())) as ArrayRef,
                true,
            ),
            (
                Arc::new(Float64Array::from(vec![0.1, -2.5, 3.25, 1e-300, 7.0, -0.3])) as ArrayRef,
                false,
            ),
        ] {
            let mut rows = Rows::default();
            rows.push_batch(&batch(values, 3), cols, "test").unwrap();
            assert_eq!(rows.float32, float32);
            let path = dir.path().join(format!("part-{float32}.arrow"));
            rows.write_ipc(&path).unwrap();
            let back = Rows::read_ipc(&path).unwrap();
            assert_eq!(back.float32, float32);
            assert_eq!(back.x, rows.x, "values exact through the part file");
            assert_eq!((back.y, back.w), (rows.y.clone(), rows.w.clone()));
            let schema = FileReader::try_new(File::open(&path).unwrap(), None)
                .unwrap()
                .schema();
            let stored = match schema.field(0).data_type() {
                DataType::FixedSizeList(f, 3) => f.data_type().clone(),
                other => panic!("{other}"),
            };
            let want = if float32 {
                DataType::Float32
            } else {
                DataType::Float64
            };
            assert_eq!(stored, want);
        }
    }
}

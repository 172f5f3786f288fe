//! `ImageDecodeExec`: reads and decodes the files named by its input (a file-list leaf)
//! into Spark's `image` column, on blocking threads, with invalid-image accounting.

use std::fmt;
use std::io::Read;
use std::os::unix::fs::OpenOptionsExt;
use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, AsArray, RecordBatch, UInt32Array};
use datafusion::arrow::compute::take;
use datafusion::arrow::datatypes::{SchemaRef, UInt64Type};
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::common::{Result, exec_datafusion_err, exec_err, internal_err, plan_err};
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::physical_expr::{EquivalenceProperties, PhysicalExpr};
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::metrics::{
    BaselineMetrics, Count, ExecutionPlanMetricsSet, MetricBuilder, MetricsSet, Time,
};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, ExecutionPlanProperties, PlanProperties,
};
use futures::{StreamExt, TryStreamExt};

use super::decode::{DecodeOptions, InvalidImage, decode_image, sniff_format};
use super::listing::origin_uri;
use super::scan::ImageScanSpec;
use super::schema::{ImageColumnBuilder, ImageRow};

/// Decodes images named by a file-list input. Output columns are `projection` over the
/// table schema of `spec`; column 0 of the table is the `image` struct.
#[derive(Debug, Clone)]
pub struct ImageDecodeExec {
    input: Arc<dyn ExecutionPlan>,
    spec: ImageScanSpec,
    projection: Vec<usize>,
    schema: SchemaRef,
    properties: Arc<PlanProperties>,
    metrics: ExecutionPlanMetricsSet,
}

impl ImageDecodeExec {
    /// Creates the operator. `input` must produce `spec.file_list_schema()`.
    pub fn try_new(
        input: Arc<dyn ExecutionPlan>,
        spec: ImageScanSpec,
        projection: Vec<usize>,
    ) -> Result<Self> {
        let expected = spec.file_list_schema();
        if input.schema().fields() != expected.fields() {
            return plan_err!(
                "ImageDecodeExec: input schema {:?} is not the file list {:?}",
                input.schema(),
                expected
            );
        }
        let table = spec.table_schema();
        if let Some(bad) = projection.iter().find(|&&i| i >= table.fields().len()) {
            return plan_err!("ImageDecodeExec: projection index {bad} out of range");
        }
        let schema = Arc::new(table.project(&projection)?);
        let properties = Arc::new(PlanProperties::new(
            EquivalenceProperties::new(schema.clone()),
            input.output_partitioning().clone(),
            EmissionType::Incremental,
            Boundedness::Bounded,
        ));
        Ok(Self {
            input,
            spec,
            projection,
            schema,
            properties,
            metrics: ExecutionPlanMetricsSet::new(),
        })
    }

    /// The scan spec (what the codec serializes).
    pub fn spec(&self) -> &ImageScanSpec {
        &self.spec
    }

    /// Output columns as indices into the table schema.
    pub fn projection(&self) -> &[usize] {
        &self.projection
    }

    /// The same scan with JPEGs decoded at the smallest DCT scale that covers `cover`
    /// (width, height): for plans in which only models read its pixels.
    pub fn with_decode_cover(&self, cover: (usize, usize)) -> Result<Self> {
        let spec = ImageScanSpec {
            decode_cover: Some(cover),
            ..self.spec.clone()
        };
        Self::try_new(self.input.clone(), spec, self.projection.clone())
    }

    fn decodes_pixels(&self) -> bool {
        self.projection.contains(&0) || self.spec.options.drop_invalid
    }
}

impl DisplayAs for ImageDecodeExec {
    fn fmt_as(&self, t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        match t {
            DisplayFormatType::Default | DisplayFormatType::Verbose => {
                write!(
                    f,
                    "ImageDecodeExec: root={}, dropInvalid={}, projection={:?}",
                    self.spec.root, self.spec.options.drop_invalid, self.projection
                )?;
                match self.spec.decode_cover {
                    Some((w, h)) => write!(f, ", decode=scaled to cover {w}x{h}"),
                    None => write!(f, ", decode=exact"),
                }
            }
            DisplayFormatType::TreeRender => write!(f, "root={}", self.spec.root),
        }
    }
}

impl ExecutionPlan for ImageDecodeExec {
    fn name(&self) -> &str {
        "ImageDecodeExec"
    }

    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.properties
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![&self.input]
    }

    fn apply_expressions(
        &self,
        _f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> Result<TreeNodeRecursion>,
    ) -> Result<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }

    fn with_new_children(
        self: Arc<Self>,
        mut children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        if children.len() != 1 {
            return internal_err!("ImageDecodeExec takes one child, got {}", children.len());
        }
        Ok(Arc::new(Self::try_new(
            children.swap_remove(0),
            self.spec.clone(),
            self.projection.clone(),
        )?))
    }

    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> Result<SendableRecordBatchStream> {
        let input = self.input.execute(partition, context)?;
        let metrics = Arc::new(DecodeMetrics::new(&self.metrics, partition));
        let job = Arc::new(DecodeJob {
            options: DecodeOptions {
                jpeg_cover: self.spec.decode_cover,
                ..self.spec.options.decode_options()
            },
            drop_invalid: self.spec.options.drop_invalid,
            decode: self.decodes_pixels(),
            projection: self.projection.clone(),
            schema: self.schema.clone(),
        });
        let chunk = self.spec.options.batch_size;
        let chunks = crate::batches::rechunk(input, chunk);
        let fetch = job.decode;
        let decode_metrics = metrics.clone();
        // Objects in object storage are fetched ahead, by a task of their own, one GET per
        // row with `read_gets_in_flight` (2 x storage.maxConcurrentGets) in flight across chunk boundaries
        // (on the storage I/O runtime), whether or not decoding is ready for them. A chunk goes
        // to decoding once the rows before it are fetched, and its decoding thread takes each
        // row's object as it arrives: decoding starts with the first object of a partition,
        // not after a whole chunk's GETs (with chunks fetched whole, a partition of three
        // chunks spent about a third of its time waiting for its first one). Local files are
        // read by the decoding thread itself. Dropping the stream aborts the task, and a
        // decoding thread waiting for an object that will never come stops (`Arrivals::take`).
        let in_flight = crate::storage::config().read_gets_in_flight();
        let fetch_stage = chunks
            .map_ok(move |files| {
                let remote = fetch && {
                    let paths = files.column(0).as_string::<i32>();
                    (0..paths.len()).any(|i| crate::storage::is_url(paths.value(i)))
                };
                let arrivals = remote.then(|| Arc::new(Arrivals::new(files.num_rows())));
                let rows: Vec<Stage> = match &arrivals {
                    Some(a) => (0..files.num_rows())
                        .map(|i| Stage::Row(files.clone(), i, a.clone()))
                        .collect(),
                    None => Vec::new(),
                };
                futures::stream::iter(std::iter::once(Stage::Chunk(files, arrivals)).chain(rows))
                    .map(Ok::<_, datafusion::error::DataFusionError>)
            })
            .try_flatten()
            .map(|stage: Result<Stage>| async move {
                match stage? {
                    Stage::Chunk(files, arrivals) => Ok(Some((files, arrivals))),
                    Stage::Row(files, i, arrivals) => {
                        let object = fetch_row(&files, i).await;
                        let failed = object.as_ref().err().cloned();
                        arrivals.put(i, object);
                        match failed {
                            Some(e) => Err(e.context("read_images")),
                            None => Ok(None),
                        }
                    }
                }
            })
            .buffered(in_flight + 1)
            .try_filter_map(|x| async move { Ok(x) });
        // On the storage I/O runtime, where the GETs run: no hop between runtimes per object.
        let fetched =
            crate::batches::drive_ahead(fetch_stage, FETCH_AHEAD, crate::storage::spawn_io);
        let decoded = fetched
            .map(move |fetched| {
                let job = job.clone();
                let metrics = decode_metrics.clone();
                async move {
                    let (files, arrivals) = fetched?;
                    // Decoding is CPU work: keep it off the async poll threads.
                    tokio::task::spawn_blocking(move || {
                        job.decode_batch(&files, arrivals.as_ref(), &metrics)
                    })
                    .await
                    .map_err(|e| exec_datafusion_err!("image decode task failed: {e}"))?
                }
            })
            // One chunk decodes while the previous one is consumed: bounded read-ahead.
            .buffered(2)
            .map_ok(|batches| futures::stream::iter(batches.into_iter().map(Ok)))
            .try_flatten();
        let done = futures::stream::once(async move {
            metrics.log_partition_summary(partition);
            None
        })
        .filter_map(|x: Option<Result<RecordBatch>>| async move { x });
        Ok(Box::pin(RecordBatchStreamAdapter::new(
            self.schema.clone(),
            decoded.chain(done),
        )))
    }

    fn metrics(&self) -> Option<MetricsSet> {
        Some(self.metrics.clone_inner())
    }
}

/// Per-partition counters and timers of `ImageDecodeExec`.
#[derive(Debug)]
struct DecodeMetrics {
    baseline: BaselineMetrics,
    images_decoded: Count,
    invalid_images: Count,
    invalid_dropped: Count,
    bytes_read: Count,
    decode_time: Time,
    /// Time decoding threads waited for objects from object storage to arrive.
    fetch_wait_time: Time,
}

impl DecodeMetrics {
    fn new(set: &ExecutionPlanMetricsSet, partition: usize) -> Self {
        Self {
            baseline: BaselineMetrics::new(set, partition),
            images_decoded: MetricBuilder::new(set).counter("images_decoded", partition),
            invalid_images: MetricBuilder::new(set).counter("invalid_images", partition),
            invalid_dropped: MetricBuilder::new(set).counter("invalid_dropped", partition),
            bytes_read: MetricBuilder::new(set).counter("bytes_read", partition),
            decode_time: MetricBuilder::new(set).subset_time("decode_time", partition),
            fetch_wait_time: MetricBuilder::new(set).subset_time("fetch_wait_time", partition),
        }
    }

    fn log_partition_summary(&self, partition: usize) {
        tracing::info!(
            target: "dlp_plugin::image",
            partition,
            images_decoded = self.images_decoded.value(),
            invalid_images = self.invalid_images.value(),
            invalid_dropped = self.invalid_dropped.value(),
            bytes_read = self.bytes_read.value(),
            decode_ms = self.decode_time.value() / 1_000_000,
            fetch_wait_ms = self.fetch_wait_time.value() / 1_000_000,
            "image partition done"
        );
    }
}

/// What one partition's decoding needs, shared by its blocking tasks.
#[derive(Debug)]
struct DecodeJob {
    options: DecodeOptions,
    drop_invalid: bool,
    /// False when neither pixels nor validity are needed (no file is read).
    decode: bool,
    projection: Vec<usize>,
    schema: SchemaRef,
}

impl DecodeJob {
    fn decode_batch(
        &self,
        files: &RecordBatch,
        arrivals: Option<&Arc<Arrivals>>,
        metrics: &DecodeMetrics,
    ) -> Result<Vec<RecordBatch>> {
        let _timer = metrics.baseline.elapsed_compute().timer();
        let paths = files.column(0).as_string::<i32>();
        let sizes = files.column(1).as_primitive::<UInt64Type>();
        let n = files.num_rows();
        let mut keep: Vec<u32> = Vec::with_capacity(n);
        let emit_image = self.projection.contains(&0);
        let data_hint = if emit_image {
            sizes
                .values()
                .iter()
                .map(|s| (*s as usize) * 8)
                .sum::<usize>()
                .min(1 << 28)
        } else {
            0
        };
        let mut images = ImageColumnBuilder::with_capacity(n, data_hint);
        let mut pixel_bytes: Vec<usize> = Vec::with_capacity(n);
        for i in 0..n {
            let path = paths.value(i);
            if !self.decode {
                // Neither pixels nor validity are needed: the file is not even opened.
                keep.push(i as u32);
                continue;
            }
            let object = match arrivals {
                Some(a) => {
                    let started = std::time::Instant::now();
                    let object = a.take(i)?;
                    let waited = started.elapsed();
                    metrics.fetch_wait_time.add_duration(waited);
                    crate::metrics::record_fetch_wait(waited.as_nanos() as u64);
                    object
                }
                None => None,
            };
            let timer = metrics.decode_time.timer();
            let (row, bytes) = match object {
                Some(object) => decode_fetched(object, &self.options),
                None => read_and_decode(path, &self.options),
            };
            metrics.bytes_read.add(bytes);
            timer.done();
            let row = match row {
                Ok(r) => {
                    metrics.images_decoded.add(1);
                    r
                }
                Err(reason) => {
                    metrics.invalid_images.add(1);
                    tracing::warn!(
                        target: "dlp_plugin::image",
                        file = %path,
                        reason = %reason,
                        dropped = self.drop_invalid,
                        "invalid image"
                    );
                    if self.drop_invalid {
                        metrics.invalid_dropped.add(1);
                        continue;
                    }
                    ImageRow::invalid()
                }
            };
            keep.push(i as u32);
            if emit_image {
                pixel_bytes.push(row.data.len());
                images.append(&origin_uri(path), &row);
            }
        }
        let keep_idx = UInt32Array::from(keep);
        let mut image_col = Some(images.finish());
        let columns = self
            .projection
            .iter()
            .map(|&c| {
                if c == 0 {
                    image_col
                        .take()
                        .ok_or_else(|| exec_datafusion_err!("image column projected twice"))
                } else {
                    // Table column c (c >= 1) is file-list column c + 1.
                    let col: &ArrayRef = files.column(c + 1);
                    if keep_idx.len() == col.len() {
                        Ok(col.clone())
                    } else {
                        Ok(take(col.as_ref(), &keep_idx, None)?)
                    }
                }
            })
            .collect::<Result<Vec<_>>>()?;
        let batch = RecordBatch::try_new_with_options(
            self.schema.clone(),
            columns,
            &datafusion::arrow::array::RecordBatchOptions::new()
                .with_row_count(Some(keep_idx.len())),
        )?;
        metrics.baseline.record_output(batch.num_rows());
        Ok(split_by_bytes(batch, &pixel_bytes))
    }
}

/// What was fetched of one object: its bytes, or why it is an invalid row.
type Fetched = std::result::Result<bytes::Bytes, InvalidImage>;

/// One row's object: `None` for a local file, else what was fetched; `Err` when the store
/// failed.
type FetchedRow = std::result::Result<Option<Fetched>, crate::error::DlpError>;

/// What the fetching task's stream carries: a chunk to hand to decoding (with where its
/// rows' objects arrive, when it names any), or one row whose object to fetch.
enum Stage {
    Chunk(RecordBatch, Option<Arc<Arrivals>>),
    Row(RecordBatch, usize, Arc<Arrivals>),
}

/// The objects of one chunk's rows, put by the fetching task as their GETs finish and taken
/// in row order by the chunk's decoding thread.
#[derive(Debug)]
struct Arrivals {
    rows: std::sync::Mutex<Vec<Option<FetchedRow>>>,
    arrived: std::sync::Condvar,
}

impl Arrivals {
    fn new(n: usize) -> Self {
        Self {
            rows: std::sync::Mutex::new((0..n).map(|_| None).collect()),
            arrived: std::sync::Condvar::new(),
        }
    }

    fn put(&self, i: usize, object: FetchedRow) {
        let mut rows = self.rows.lock().unwrap_or_else(|e| e.into_inner());
        rows[i] = Some(object);
        self.arrived.notify_all();
    }

    /// Row `i`'s object, waiting until it has arrived. The fetching side holds a reference
    /// to these arrivals until it has put every row; once none is left (the query was
    /// cancelled, or its fetching stopped on an error) with row `i` missing, this fails
    /// instead of waiting for ever.
    fn take(self: &Arc<Self>, i: usize) -> Result<Option<Fetched>> {
        let mut rows = self.rows.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if let Some(object) = rows[i].take() {
                return object.map_err(|e| e.context("read_images"));
            }
            if Arc::strong_count(self) <= 1 {
                return exec_err!(
                    "read_images: the object of a row was never fetched (the query was \
                     cancelled or its fetching stopped)"
                );
            }
            let (guard, _) = self
                .arrived
                .wait_timeout(rows, std::time::Duration::from_millis(50))
                .unwrap_or_else(|e| e.into_inner());
            rows = guard;
        }
    }
}

/// Fetches row `i` of `files` when it names an object-store URL: `None` for a local file,
/// the object's bytes, or why the row is invalid (gone, too large, outside this executor's
/// roots). A store that fails (down, refusing credentials, past its retries) is an `Err`
/// with the URL in it: the task fails, so no image is lost silently.
async fn fetch_row(files: &RecordBatch, i: usize) -> FetchedRow {
    use crate::error::DlpError;
    use crate::storage::{ObjectUrl, is_url};
    let path = files.column(0).as_string::<i32>().value(i);
    if !is_url(path) {
        return Ok(None);
    }
    let size = files.column(1).as_primitive::<UInt64Type>().value(i);
    let limit = crate::limits::Limits::get().max_file_bytes;
    let url = match ObjectUrl::parse(path) {
        Ok(u) => u,
        Err(e) => return Ok(Some(Err(InvalidImage::Unreadable(e.to_string())))),
    };
    if let Err(e) = crate::access::check_url(&url) {
        return Ok(Some(Err(InvalidImage::Unreadable(e.to_string()))));
    }
    if size > limit {
        return Ok(Some(Err(InvalidImage::Unreadable(format!(
            "{size} bytes, above this cluster's limit of {limit} (--max-file-bytes)"
        )))));
    }
    match crate::storage::get_here(url, limit).await {
        Ok(b) => Ok(Some(Ok(b))),
        Err(DlpError::NotFound(m) | DlpError::Limit(m) | DlpError::Access(m)) => {
            Ok(Some(Err(InvalidImage::Unreadable(m))))
        }
        Err(e) => Err(e),
    }
}

/// Decodes a fetched object (counted in the process's metrics like a local file).
fn decode_fetched(
    object: Fetched,
    options: &DecodeOptions,
) -> (std::result::Result<ImageRow, InvalidImage>, usize) {
    let started = std::time::Instant::now();
    let (row, n) = match object {
        Err(e) => (Err(e), 0),
        Ok(bytes) => {
            let n = bytes.len();
            if sniff_format(&bytes[..n.min(16)]).is_none() {
                (Err(InvalidImage::UnknownFormat), n)
            } else {
                (decode_image(&bytes, options), n)
            }
        }
    };
    let (ok, bad) = if row.is_ok() { (1, 0) } else { (0, 1) };
    crate::metrics::record_decoded(ok, bad, n, started.elapsed().as_nanos() as usize);
    (row, n)
}

/// Reads one image from a local path or an object-store URL and decodes it (the
/// `read_image` SQL function).
pub(crate) fn read_and_decode_any(
    path: &str,
    options: &DecodeOptions,
) -> std::result::Result<(std::result::Result<ImageRow, InvalidImage>, usize), crate::error::DlpError>
{
    use crate::storage::{ObjectUrl, is_url};
    if !is_url(path) {
        return Ok(read_and_decode(path, options));
    }
    let url = ObjectUrl::parse(path)?;
    crate::access::check_url(&url)?;
    let limit = crate::limits::Limits::get().max_file_bytes;
    let fetched =
        crate::storage::io_blocking(async move { crate::storage::get(&url, limit).await });
    let object = match fetched {
        Ok(b) => Ok(b),
        Err(crate::error::DlpError::NotFound(m) | crate::error::DlpError::Limit(m)) => {
            Err(InvalidImage::Unreadable(m))
        }
        Err(e) => return Err(e),
    };
    Ok(decode_fetched(object, options))
}

/// Chunks handed to decoding ahead of it (queued while two decode), their objects fetched
/// or arriving.
const FETCH_AHEAD: usize = 2;

/// Largest pixel payload of one output batch: batches travel as single gRPC / Flight
/// messages (16 MiB by default), so big photos are spread over several batches.
pub const MAX_BATCH_PIXEL_BYTES: usize = 8 * 1024 * 1024;

/// Splits `batch` into row ranges of at most [`MAX_BATCH_PIXEL_BYTES`] of pixels (at least
/// one row each). `row_bytes` is empty when the image column is not produced.
fn split_by_bytes(batch: RecordBatch, row_bytes: &[usize]) -> Vec<RecordBatch> {
    if row_bytes.iter().sum::<usize>() <= MAX_BATCH_PIXEL_BYTES {
        return vec![batch];
    }
    let mut out = Vec::new();
    let (mut start, mut acc) = (0, 0);
    for (i, &b) in row_bytes.iter().enumerate() {
        if i > start && acc + b > MAX_BATCH_PIXEL_BYTES {
            out.push(batch.slice(start, i - start));
            (start, acc) = (i, 0);
        }
        acc += b;
    }
    out.push(batch.slice(start, row_bytes.len() - start));
    out
}

/// Reads a file and decodes it; also gives the bytes read. Unknown formats are recognized
/// from the first bytes without reading the rest of the file. Counted in the process's
/// [`metrics`](crate::metrics).
pub(crate) fn read_and_decode(
    path: &str,
    options: &DecodeOptions,
) -> (std::result::Result<ImageRow, InvalidImage>, usize) {
    let started = std::time::Instant::now();
    let (row, bytes) = read_and_decode_uncounted(path, options);
    let (ok, bad) = if row.is_ok() { (1, 0) } else { (0, 1) };
    crate::metrics::record_decoded(ok, bad, bytes, started.elapsed().as_nanos() as usize);
    (row, bytes)
}

/// `O_NONBLOCK`: opening a FIFO that appeared after the type check returns at once.
fn libc_nonblock() -> i32 {
    0o4000
}

fn read_and_decode_uncounted(
    path: &str,
    options: &DecodeOptions,
) -> (std::result::Result<ImageRow, InvalidImage>, usize) {
    let unreadable = |e: std::io::Error| InvalidImage::Unreadable(e.to_string());
    // Executors enforce the data roots too: a plan can name any file.
    if let Err(e) = crate::access::check_path(std::path::Path::new(path)) {
        return (Err(InvalidImage::Unreadable(e.to_string())), 0);
    }
    // Only regular files, of a bounded size: opening a FIFO would block the task forever,
    // and a huge file would be read into memory whole.
    let limit = crate::limits::Limits::get().max_file_bytes;
    match std::fs::metadata(path) {
        Ok(m) if !m.is_file() => {
            return (
                Err(InvalidImage::Unreadable("not a regular file".into())),
                0,
            );
        }
        Ok(m) if m.len() > limit => {
            return (
                Err(InvalidImage::Unreadable(format!(
                    "{} bytes, above this cluster's limit of {limit} (--max-file-bytes)",
                    m.len()
                ))),
                0,
            );
        }
        Ok(_) => {}
        Err(e) => return (Err(unreadable(e)), 0),
    }
    let file = match std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc_nonblock())
        .open(path)
    {
        Ok(f) => f,
        Err(e) => return (Err(unreadable(e)), 0),
    };
    // A file that grew past the limit since it was looked at is cut there, and invalid.
    let mut file = std::io::Read::take(file, limit + 1);
    let mut head = [0u8; 16];
    let mut got = 0;
    while got < head.len() {
        match file.read(&mut head[got..]) {
            Ok(0) => break,
            Ok(k) => got += k,
            Err(e) => return (Err(unreadable(e)), 0),
        }
    }
    if sniff_format(&head[..got]).is_none() {
        return (Err(InvalidImage::UnknownFormat), got);
    }
    let mut bytes = head[..got].to_vec();
    if let Err(e) = file.read_to_end(&mut bytes) {
        return (Err(unreadable(e)), 0);
    }
    let n = bytes.len();
    if n as u64 > limit {
        return (
            Err(InvalidImage::Unreadable(format!(
                "more than this cluster's limit of {limit} bytes (--max-file-bytes)"
            ))),
            n,
        );
    }
    (decode_image(&bytes, options), n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_decoding_thread_takes_each_object_when_it_arrives() {
        let arrivals = Arc::new(Arrivals::new(2));
        let producer = arrivals.clone();
        let put = std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_millis(30));
            producer.put(1, Ok(Some(Ok(bytes::Bytes::from_static(b"second")))));
            producer.put(0, Ok(None));
        });
        // Row 0 is a local file (nothing fetched); row 1's object comes after a wait.
        assert!(arrivals.take(0).unwrap().is_none());
        let second = arrivals.take(1).unwrap().unwrap().unwrap();
        assert_eq!(&second[..], b"second");
        put.join().unwrap();
    }

    #[test]
    fn a_store_failure_reaches_the_decoding_thread_with_its_message() {
        let arrivals = Arc::new(Arrivals::new(1));
        arrivals.put(
            0,
            Err(crate::error::DlpError::Storage(
                "GET s3://b/k.jpg: connection refused".into(),
            )),
        );
        let e = arrivals.take(0).unwrap_err().to_string();
        assert!(e.contains("read_images: GET s3://b/k.jpg"), "{e}");
    }

    #[test]
    fn a_decoding_thread_stops_waiting_when_nothing_is_left_to_fetch_its_row() {
        let arrivals = Arc::new(Arrivals::new(2));
        let producer = arrivals.clone();
        // The fetching side puts row 0 and is then dropped (a cancelled query).
        let gone = std::thread::spawn(move || {
            producer.put(0, Ok(None));
            std::thread::sleep(std::time::Duration::from_millis(20));
            drop(producer);
        });
        assert!(arrivals.take(0).unwrap().is_none());
        let started = std::time::Instant::now();
        let e = arrivals.take(1).unwrap_err().to_string();
        assert!(e.contains("never fetched"), "{e}");
        assert!(
            started.elapsed() < std::time::Duration::from_secs(5),
            "waited {:?}",
            started.elapsed()
        );
        gone.join().unwrap();
    }
}

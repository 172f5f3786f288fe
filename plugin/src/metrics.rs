//! Process-wide counters of the plugin's operators, rendered in Prometheus' text format
//! (`dlp-executor --metrics-port` serves them at `/metrics`). DataFusion's per-operator
//! metrics stay the per-query view; these add up over the life of the process.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

/// The process' counters.
static PROCESS: Counters = Counters::new();

/// A set of counters; the process has one ([`PROCESS`]), tests make their own.
struct Counters {
    images_decoded: AtomicU64,
    invalid_images: AtomicU64,
    image_bytes_read: AtomicU64,
    decode_nanos: AtomicU64,
    listings: AtomicU64,
    listed_files: AtomicU64,
    listing_nanos: AtomicU64,
    fetch_wait_nanos: AtomicU64,
    inference: Mutex<BTreeMap<String, Inference>>,
}

#[derive(Debug, Default, Clone, Copy)]
struct Inference {
    /// Images per forward pass of the latest call (the step's batch size).
    batch_size: u64,
    batches: u64,
    images: u64,
    null_outputs: u64,
    seconds: f64,
}

/// One finished image partition: images decoded, invalid ones, bytes read, decode time.
pub fn record_decoded(decoded: usize, invalid: usize, bytes: usize, decode_nanos: usize) {
    PROCESS.record_decoded(decoded, invalid, bytes, decode_nanos)
}

/// One listing of an image folder or prefix (`read_images`, a table scan, a job's data):
/// the files it kept and how long it took.
pub fn record_listing(files: usize, nanos: u64) {
    PROCESS.record_listing(files, nanos)
}

/// Listings so far in this process and the seconds they took (e.g. to tell a read's
/// listing from its decoding).
pub fn listing_totals() -> (u64, f64) {
    (
        PROCESS.listings.load(Ordering::Relaxed),
        PROCESS.listing_nanos.load(Ordering::Relaxed) as f64 / 1e9,
    )
}

/// Time a decoding thread waited for an object from object storage to arrive (local files
/// are read by the decoding thread itself).
pub fn record_fetch_wait(nanos: u64) {
    PROCESS.fetch_wait_nanos.fetch_add(nanos, Ordering::Relaxed);
}

/// Seconds image decoding has waited for object-store GETs so far in this process.
pub fn fetch_wait_seconds() -> f64 {
    PROCESS.fetch_wait_nanos.load(Ordering::Relaxed) as f64 / 1e9
}

/// Forward passes of `model` with `batch_size` images each at most: `batches` of them over
/// `images` valid images (and `null_outputs` rows without an image) in `seconds`.
pub fn record_inference(
    model: &str,
    batch_size: usize,
    batches: usize,
    images: usize,
    null_outputs: usize,
    seconds: f64,
) {
    PROCESS.record_inference(model, batch_size, batches, images, null_outputs, seconds)
}

/// The process' counters in Prometheus' text exposition format; `info` labels (e.g.
/// executor id, device) go on a `dlp_info` gauge.
pub fn render(info: &[(&str, &str)]) -> String {
    PROCESS.render(info)
}

/// Escapes a label value.
fn label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

impl Counters {
    const fn new() -> Self {
        Self {
            images_decoded: AtomicU64::new(0),
            invalid_images: AtomicU64::new(0),
            image_bytes_read: AtomicU64::new(0),
            decode_nanos: AtomicU64::new(0),
            listings: AtomicU64::new(0),
            listed_files: AtomicU64::new(0),
            listing_nanos: AtomicU64::new(0),
            fetch_wait_nanos: AtomicU64::new(0),
            inference: Mutex::new(BTreeMap::new()),
        }
    }

    fn record_decoded(&self, decoded: usize, invalid: usize, bytes: usize, decode_nanos: usize) {
        self.images_decoded
            .fetch_add(decoded as u64, Ordering::Relaxed);
        self.invalid_images
            .fetch_add(invalid as u64, Ordering::Relaxed);
        self.image_bytes_read
            .fetch_add(bytes as u64, Ordering::Relaxed);
        self.decode_nanos
            .fetch_add(decode_nanos as u64, Ordering::Relaxed);
    }

    fn record_listing(&self, files: usize, nanos: u64) {
        self.listings.fetch_add(1, Ordering::Relaxed);
        self.listed_files.fetch_add(files as u64, Ordering::Relaxed);
        self.listing_nanos.fetch_add(nanos, Ordering::Relaxed);
    }

    fn record_inference(
        &self,
        model: &str,
        batch_size: usize,
        batches: usize,
        images: usize,
        null_outputs: usize,
        seconds: f64,
    ) {
        let mut all = self.inference.lock().unwrap_or_else(|e| e.into_inner());
        let m = all.entry(model.to_string()).or_default();
        m.batch_size = batch_size as u64;
        m.batches += batches as u64;
        m.images += images as u64;
        m.null_outputs += null_outputs as u64;
        m.seconds += seconds;
    }

    fn render(&self, info: &[(&str, &str)]) -> String {
        let mut out = String::new();
        let labels: Vec<String> = info
            .iter()
            .map(|(k, v)| format!("{k}=\"{}\"", label(v)))
            .collect();
        let _ = writeln!(out, "# HELP dlp_info The process and its device.");
        let _ = writeln!(out, "# TYPE dlp_info gauge");
        let _ = writeln!(out, "dlp_info{{{}}} 1", labels.join(","));
        let counters = [
            (
                "dlp_images_decoded_total",
                "Image files decoded.",
                self.images_decoded.load(Ordering::Relaxed) as f64,
            ),
            (
                "dlp_invalid_images_total",
                "Image files that could not be read or decoded (kept as invalid rows or dropped, by policy).",
                self.invalid_images.load(Ordering::Relaxed) as f64,
            ),
            (
                "dlp_image_bytes_read_total",
                "Bytes read from image files.",
                self.image_bytes_read.load(Ordering::Relaxed) as f64,
            ),
            (
                "dlp_decode_seconds_total",
                "Time spent decoding images.",
                self.decode_nanos.load(Ordering::Relaxed) as f64 / 1e9,
            ),
            (
                "dlp_listings_total",
                "Listings of image folders or object-store prefixes.",
                self.listings.load(Ordering::Relaxed) as f64,
            ),
            (
                "dlp_listed_files_total",
                "Files those listings kept (after hidden names, globs and sampling).",
                self.listed_files.load(Ordering::Relaxed) as f64,
            ),
            (
                "dlp_listing_seconds_total",
                "Time spent listing image folders and prefixes.",
                self.listing_nanos.load(Ordering::Relaxed) as f64 / 1e9,
            ),
            (
                "dlp_object_fetch_wait_seconds_total",
                "Time image decoding threads waited for objects from object storage to arrive.",
                self.fetch_wait_nanos.load(Ordering::Relaxed) as f64 / 1e9,
            ),
        ];
        for (name, help, value) in counters {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {value}"
            );
        }
        let inference = self
            .inference
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        type Series = (
            &'static str,
            &'static str,
            &'static str,
            fn(&Inference) -> f64,
        );
        let series: [Series; 5] = [
            (
                "dlp_inference_batch_size",
                "Images per forward pass of the latest inference step (dlp.torch.batch_size or the stage's batchSize).",
                "gauge",
                |m| m.batch_size as f64,
            ),
            (
                "dlp_inference_batches_total",
                "Model forward passes.",
                "counter",
                |m| m.batches as f64,
            ),
            (
                "dlp_inference_images_total",
                "Images through a model.",
                "counter",
                |m| m.images as f64,
            ),
            (
                "dlp_inference_null_outputs_total",
                "Rows given a null output (no valid image).",
                "counter",
                |m| m.null_outputs as f64,
            ),
            (
                "dlp_inference_seconds_total",
                "Time in model forward passes.",
                "counter",
                |m| m.seconds,
            ),
        ];
        for (name, help, kind, get) in series {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
            for (model, m) in &inference {
                let _ = writeln!(out, "{name}{{model=\"{}\"}} {}", label(model), get(m));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_render_in_prometheus_text_format() {
        // Counters of the test's own: the process' are shared with the other tests.
        let counters = Counters::new();
        counters.record_decoded(3, 1, 1000, 2_000_000_000);
        counters.record_inference("m\"1", 4, 2, 5, 1, 0.5);
        counters.record_listing(1428, 250_000_000);
        counters.record_listing(2, 250_000_000);
        counters.record_inference("m\"1", 3, 1, 3, 0, 0.25);
        counters
            .fetch_wait_nanos
            .fetch_add(1_500_000_000, Ordering::Relaxed);
        let text = counters.render(&[("id", "cpu-x"), ("device", "cpu")]);
        assert!(
            text.contains("dlp_info{id=\"cpu-x\",device=\"cpu\"} 1"),
            "{text}"
        );
        assert!(text.contains("dlp_invalid_images_total 1"), "{text}");
        assert!(text.contains("dlp_decode_seconds_total 2"), "{text}");
        assert!(text.contains("dlp_listings_total 2"), "{text}");
        assert!(text.contains("dlp_listed_files_total 1430"), "{text}");
        assert!(text.contains("dlp_listing_seconds_total 0.5"), "{text}");
        assert!(
            text.contains("dlp_object_fetch_wait_seconds_total 1.5"),
            "{text}"
        );
        assert!(
            text.contains("dlp_inference_images_total{model=\"m\\\"1\"} 8"),
            "{text}"
        );
        assert!(
            text.contains("dlp_inference_seconds_total{model=\"m\\\"1\"} 0.75"),
            "{text}"
        );
        assert!(
            text.contains("dlp_inference_batch_size{model=\"m\\\"1\"} 3"),
            "{text}"
        );
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let value = line.rsplit(' ').next().unwrap();
            assert!(value.parse::<f64>().is_ok(), "{line}");
        }
    }
}

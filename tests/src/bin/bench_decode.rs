//! Image decoding throughput of the plugin's decoders (the code `ImageDecodeExec` runs):
//! full decode to Spark's layout, decode + resize to a model input size, or the product's
//! read for a model (`model`: the scan's decode at the DCT scale covering
//! EfficientNet-Lite0's input, then the featurizer's own preprocessing (`torch::preprocess`); and
//! `model-exact`: the same after a full-size decode). Prints one JSON line;
//! `scripts/bench.sh` runs it beside Pillow and prints the ratios.

use std::path::{Path, PathBuf};
use std::time::Instant;

use clap::Parser;
use dlp_plugin::image::DecodeOptions;

#[derive(Parser, Debug)]
struct Args {
    /// Folder of images (read recursively).
    #[arg(long)]
    dir: PathBuf,
    /// Decoding threads.
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// `decode` (full size, Spark layout), `resize` (decode + resize to --size), `model`
    /// (the featurizer's read: DCT-scaled decode + preprocessing for efficientnet_lite0) or
    /// `model-exact` (full-size decode + the same preprocessing).
    #[arg(long, default_value = "decode")]
    mode: String,
    /// Target edge for `resize`.
    #[arg(long, default_value_t = 224)]
    size: usize,
    /// Passes over the files (the first one is a warm-up and not timed).
    #[arg(long, default_value_t = 2)]
    passes: usize,
}

fn files(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            files(&p, out);
        } else if p.extension().is_some_and(|e| e.eq_ignore_ascii_case("jpg")) {
            out.push(p);
        }
    }
}

fn main() {
    let args = Args::parse();
    let mut paths = Vec::new();
    files(&args.dir, &mut paths);
    let blobs: Vec<Vec<u8>> = paths.iter().map(|p| std::fs::read(p).unwrap()).collect();
    let opts = DecodeOptions::default();
    let model = args.mode.starts_with("model").then(|| {
        // One libtorch thread per decoding thread, as the executors run preprocessing.
        dlp_plugin::torch::model::init_threads(1);
        dlp_plugin::torch::ProcessTorchConfig::get()
            .zoo()
            .get("efficientnet_lite0")
            .expect("efficientnet_lite0 in the model directory (make setup)")
    });
    let for_model = model.as_ref().map(|entry| DecodeOptions {
        jpeg_cover: (args.mode == "model").then(|| entry.manifest.decode_cover()),
        ..opts
    });
    let run = |blob: &Vec<u8>| -> usize {
        match (args.mode.as_str(), &model, &for_model) {
            ("decode", _, _) => dlp_plugin::image::decode_image(blob, &opts)
                .map(|r| r.data.len())
                .unwrap_or(0),
            (_, Some(entry), Some(o)) => {
                let Ok(row) = dlp_plugin::image::decode_image(blob, o) else {
                    return 0;
                };
                let img = dlp_plugin::torch::model::ImageRef {
                    height: row.height as usize,
                    width: row.width as usize,
                    channels: row.n_channels as usize,
                    data: &row.data,
                };
                dlp_plugin::torch::model::preprocess(entry, img, entry.manifest.resize)
                    .map(|t| t.numel())
                    .unwrap_or(0)
            }
            _ => dlp_plugin::image::resize::decode_resized_rgb(blob, args.size, args.size, &opts)
                .map(|r| r.data.len())
                .unwrap_or(0),
        }
    };
    let mut seconds = 0.0;
    let mut bytes = 0usize;
    for pass in 0..args.passes.max(2) {
        let start = Instant::now();
        let chunk = blobs.len().div_ceil(args.threads.max(1));
        bytes = std::thread::scope(|s| {
            let handles: Vec<_> = blobs
                .chunks(chunk)
                .map(|part| s.spawn(move || part.iter().map(run).sum::<usize>()))
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).sum()
        });
        if pass > 0 {
            seconds += start.elapsed().as_secs_f64();
        }
    }
    let timed = (args.passes.max(2) - 1) as f64;
    let per_pass = seconds / timed;
    println!(
        "{{\"impl\": \"dlp\", \"mode\": \"{}\", \"threads\": {}, \"images\": {}, \"seconds\": {:.4}, \"images_per_s\": {:.1}, \"output_bytes\": {}}}",
        args.mode,
        args.threads,
        blobs.len(),
        per_pass,
        blobs.len() as f64 / per_pass,
        bytes
    );
}

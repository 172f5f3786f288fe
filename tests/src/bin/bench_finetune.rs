//! Fine-tuning throughput on the embedded cluster beside the PyTorch reference loop
//! (tests/python/finetune_reference.py): the same images, TorchScript file, initial weights,
//! batch, optimizer and threads, for the trainable choices given (`head`, `blocks:N`,
//! `all`). Epoch images/s exclude the one-off preparation on both sides (ours: the prepare
//! job; PyTorch: the frozen stages run once before the loop); a second PyTorch figure runs
//! the frozen stages in every step, as a plain training loop does. Prints a table and one
//! JSON line per mode.

use std::path::{Path, PathBuf};
use std::time::Instant;

use clap::Parser;
use dlp_plugin::finetune::{TorchImageEstimator, TorchImageEstimatorParams};
use serde_json::json;

#[derive(Parser, Debug)]
struct Args {
    /// Folder of class folders.
    #[arg(long)]
    dir: PathBuf,
    /// Classes (folder names) to use.
    #[arg(long, value_delimiter = ',', default_value = "daisy,tulips")]
    classes: Vec<String>,
    /// Images per class (the first in name order).
    #[arg(long, default_value_t = 64)]
    per_class: usize,
    /// Modes: head, blocks:N, all; each with its epochs as mode=epochs.
    #[arg(long, value_delimiter = ',', default_value = "head=5,blocks:1=3,all=2")]
    modes: Vec<String>,
    #[arg(long, default_value_t = 32)]
    batch: usize,
    /// Task slots of the embedded executor (= libtorch threads), and PyTorch's threads.
    #[arg(long, default_value_t = 2)]
    threads: usize,
    /// Skip the PyTorch side.
    #[arg(long)]
    no_peer: bool,
}

fn subset(dir: &Path, classes: &[String], per_class: usize, to: &Path) -> Vec<(String, i64)> {
    let mut files = vec![];
    for (label, c) in classes.iter().enumerate() {
        let mut names: Vec<PathBuf> = std::fs::read_dir(dir.join(c))
            .unwrap_or_else(|e| panic!("{}: {e}", dir.join(c).display()))
            .map(|e| e.unwrap().path())
            .collect();
        names.sort();
        std::fs::create_dir_all(to.join(c)).unwrap();
        for f in names.into_iter().take(per_class) {
            let target = to.join(c).join(f.file_name().unwrap());
            std::fs::copy(&f, &target).unwrap();
            files.push((target.to_string_lossy().into_owned(), label as i64));
        }
    }
    files.sort();
    files
}

#[tokio::main]
async fn main() -> datafusion::common::Result<()> {
    let args = Args::parse();
    let torch = dlp_plugin::torch::ProcessTorchConfig {
        threads: args.threads,
        ..dlp_plugin::torch::ProcessTorchConfig::from_env()
    };
    torch.install();
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let files = subset(&args.dir, &args.classes, args.per_class, &data);
    let ctx = dlp_plugin::embedded::standalone_context(Some(args.threads)).await?;
    let entry = dlp_plugin::torch::ProcessTorchConfig::get()
        .zoo()
        .get("efficientnet_lite0")?;
    println!(
        "fine-tuning benchmark: efficientnet_lite0, {} images ({} classes), batch {}, {} threads, SGD",
        files.len(),
        args.classes.len(),
        args.batch,
        args.threads
    );
    println!(
        "{:<10} {:>6} {:>14} {:>10} {:>16} {:>16} {:>8} {:>8}",
        "mode",
        "epochs",
        "dlp images/s",
        "prepare s",
        "PyTorch cached",
        "PyTorch plain",
        "ratio",
        "ratio"
    );
    for mode in &args.modes {
        let (m, epochs) = mode.split_once('=').unwrap_or((mode, "2"));
        let epochs: usize = epochs.parse().expect("epochs");
        let (trainable, blocks) = match m.split_once(':') {
            Some((t, n)) => (t, n.parse::<usize>().expect("blocks")),
            None => (m, 1),
        };
        let ckpt = tmp.path().join(format!("ckpt-{m}"));
        let p: TorchImageEstimatorParams = serde_json::from_value(json!({
            "modelName": "efficientnet_lite0", "resize": "stretch", "trainable": trainable,
            "trainableBlocks": blocks, "optimizer": "sgd", "learningRate": 0.001,
            "batchSize": args.batch, "epochs": epochs, "shuffle": false,
            "checkpointDir": ckpt,
        }))
        .expect("params");
        let df = ctx
            .sql(&format!(
                "SELECT image, label FROM read_images('{}', 'withLabel=true')",
                data.display()
            ))
            .await?;
        let started = Instant::now();
        let model = TorchImageEstimator::new(p.clone()).fit(df).await?;
        let total = started.elapsed().as_secs_f64();
        let images: f64 = model
            .history
            .iter()
            .map(|h| h.images_per_second * h.seconds)
            .sum();
        let seconds: f64 = model.history.iter().map(|h| h.seconds).sum();
        let ours = images / seconds;
        let (graph, train_file) = entry.training()?;
        let first = p.first_trainable(graph)?;
        let peer = |cache: bool| -> Option<serde_json::Value> {
            if args.no_peer {
                return None;
            }
            let m = &entry.manifest;
            let a = json!({
                "model": train_file, "initial": ckpt.join("epoch-0000.safetensors"),
                "files": files.iter().map(|f| &f.0).collect::<Vec<_>>(),
                "labels": files.iter().map(|f| f.1).collect::<Vec<_>>(),
                "height": m.input.height, "width": m.input.width, "resize": "stretch",
                "scale": m.scale, "mean": m.mean, "std": m.std,
                "stages": graph.stages.iter().map(|s| &s.method).collect::<Vec<_>>(),
                "first_trainable": first, "batch": args.batch, "epochs": epochs,
                "optimizer": "sgd", "lr": 0.001, "momentum": 0.9, "weight_decay": 0.0,
                "label_smoothing": 0.0, "out": tmp.path().join("ref.safetensors"),
                "threads": args.threads, "cache_frozen": cache,
            });
            let out = dlp_tests::python_script("finetune_reference.py", &[a.to_string()]);
            serde_json::from_slice(String::from_utf8_lossy(&out).lines().last()?.as_bytes()).ok()
        };
        let (cached, plain) = (peer(true), if first > 0 { peer(false) } else { None });
        let rate =
            |v: &Option<serde_json::Value>| v.as_ref().and_then(|v| v["images_per_s"].as_f64());
        let plain_rate = rate(&plain).or(rate(&cached));
        println!(
            "{:<10} {:>6} {:>14.2} {:>10.1} {:>16} {:>16} {:>8} {:>8}",
            m,
            epochs,
            ours,
            model.prepare_seconds,
            rate(&cached).map_or("-".into(), |r| format!("{r:.2}")),
            plain_rate.map_or("-".into(), |r| format!("{r:.2}")),
            rate(&cached).map_or("-".into(), |r| format!("{:.2}x", ours / r)),
            plain_rate.map_or("-".into(), |r| format!("{:.2}x", ours / r)),
        );
        println!(
            "{}",
            json!({
                "mode": m, "epochs": epochs, "images_per_s": ours, "prepare_seconds": model.prepare_seconds,
                "fit_seconds": total, "peak_rss_mb": dlp_tests::peak_rss_mb(),
                "pytorch_cached": cached, "pytorch_plain": plain,
            })
        );
    }
    println!(
        "dlp peak RSS {:.0} MB (the whole run)",
        dlp_tests::peak_rss_mb()
    );
    Ok(())
}

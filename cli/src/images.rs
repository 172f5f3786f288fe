//! `dlp images`: read an image folder on the cluster and summarize it.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::Context;
use datafusion::arrow::array::{Array, AsArray};
use datafusion::arrow::datatypes::Int32Type;
use datafusion::prelude::SessionContext;
use futures::StreamExt;
use indicatif::{ProgressBar, ProgressStyle};

/// Arguments of `dlp images`.
#[derive(clap::Args, Debug)]
pub struct ImagesArgs {
    /// Folder of images (one sub-folder per class), a single file, or a file: URI.
    pub path: String,
    /// Do not derive labels from sub-folder names.
    #[arg(long)]
    pub no_labels: bool,
    /// Drop files that do not decode instead of keeping them as invalid rows.
    #[arg(long)]
    pub drop_invalid: bool,
    /// More source options as key=value (e.g. -o pathGlobFilter=*.jpg -o sampleRatio=0.1).
    #[arg(short = 'o', long = "option")]
    pub options: Vec<String>,
}

#[derive(Default)]
struct ClassStats {
    images: u64,
    invalid: u64,
    pixels: u64,
}

/// Runs the summary.
pub async fn run(
    ctx: &SessionContext,
    args: &ImagesArgs,
    scheduler: Option<&str>,
) -> anyhow::Result<()> {
    let mut opts = vec![format!("withLabel={}", !args.no_labels)];
    opts.push(format!("dropInvalid={}", args.drop_invalid));
    opts.extend(args.options.iter().cloned());
    let quoted = |s: &str| format!("'{}'", s.replace('\'', "''"));
    let opt_args: String = opts.iter().map(|o| format!(", {}", quoted(o))).collect();
    let label_cols = if args.no_labels {
        "CAST(NULL AS INT) AS label, CAST(NULL AS VARCHAR) AS label_name"
    } else {
        "label, label_name"
    };
    let sql = format!(
        "SELECT {label_cols}, image['origin'] AS origin, image['nChannels'] AS channels, \
         image['height'] AS height, image['width'] AS width \
         FROM read_images({}{opt_args})",
        quoted(&args.path)
    );
    let where_ = scheduler.map_or("the embedded cluster".to_string(), |s| {
        format!("cluster {s}")
    });
    let spinner = ProgressBar::new_spinner().with_style(
        ProgressStyle::with_template("{spinner} {msg} [{elapsed}]").context("progress style")?,
    );
    spinner.set_message(format!("decoding images under {} on {where_}", args.path));
    spinner.enable_steady_tick(Duration::from_millis(120));
    let start = Instant::now();
    let df = ctx.sql(&sql).await?;
    let mut stream = df.execute_stream().await?;
    let mut classes: BTreeMap<(Option<i32>, String), ClassStats> = BTreeMap::new();
    let mut invalid_files = Vec::new();
    let mut rows = 0u64;
    while let Some(batch) = stream.next().await {
        let batch = batch?;
        let label = batch.column(0).as_primitive::<Int32Type>();
        let name = batch.column(1).as_string::<i32>();
        let origin = batch.column(2).as_string::<i32>();
        let channels = batch.column(3).as_primitive::<Int32Type>();
        let height = batch.column(4).as_primitive::<Int32Type>();
        let width = batch.column(5).as_primitive::<Int32Type>();
        for i in 0..batch.num_rows() {
            let key = (
                label.is_valid(i).then(|| label.value(i)),
                if name.is_valid(i) {
                    name.value(i).to_string()
                } else {
                    "(no class folder)".into()
                },
            );
            let stats = classes.entry(key).or_default();
            stats.images += 1;
            if channels.value(i) < 0 {
                stats.invalid += 1;
                invalid_files.push(origin.value(i).to_string());
            } else {
                stats.pixels += (height.value(i) as u64) * (width.value(i) as u64);
            }
        }
        rows += batch.num_rows() as u64;
        spinner.set_message(format!("{rows} images read"));
    }
    spinner.finish_and_clear();
    let secs = start.elapsed().as_secs_f64();
    let invalid: u64 = classes.values().map(|c| c.invalid).sum();
    println!(
        "{}: {rows} files read on {where_} in {secs:.1} s ({:.0} files/s), {invalid} invalid",
        args.path,
        rows as f64 / secs.max(1e-9)
    );
    println!();
    println!(
        "{:>5}  {:<20} {:>8} {:>8} {:>12}",
        "label", "class", "images", "invalid", "mean pixels"
    );
    for ((label, name), s) in &classes {
        let valid = s.images - s.invalid;
        println!(
            "{:>5}  {:<20} {:>8} {:>8} {:>12}",
            label.map_or("-".to_string(), |l| l.to_string()),
            name,
            s.images,
            s.invalid,
            s.pixels
                .checked_div(valid)
                .map_or("-".into(), |p| p.to_string())
        );
    }
    println!("{:>5}  {:<20} {:>8} {:>8}", "", "total", rows, invalid);
    if !invalid_files.is_empty() {
        println!();
        println!("invalid images (kept as Spark's invalid rows; --drop-invalid drops them):");
        for f in invalid_files.iter().take(20) {
            println!("  {f}");
        }
        if invalid_files.len() > 20 {
            println!("  ... and {} more", invalid_files.len() - 20);
        }
    }
    Ok(())
}

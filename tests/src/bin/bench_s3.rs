//! Object storage beside local disk, on the product's path (the embedded cluster's
//! `read_images`: listing, GETs, Spark-exact decoding): the flowers read from a local
//! S3-compatible server (moto on loopback, `dlp_tests::s3`) and from `../shared/data`,
//! with one task slot and with all cores, and the listing of 10,000 objects beside the
//! same 10,000 files on disk. Prints a table and the ratios; `scripts/bench-s3.sh` runs it.

use std::time::Instant;

use clap::Parser;
use datafusion::prelude::SessionContext;
use dlp_plugin::image::{ImageReadOptions, list_images};
use dlp_plugin::storage::StorageConfig;
use dlp_tests::s3::S3Server;
use dlp_tests::shared_data;

#[derive(Parser, Debug)]
struct Args {
    /// Objects of the listing benchmark.
    #[arg(long, default_value_t = 10_000)]
    objects: usize,
    /// Timed repetitions of each read (after one warm-up); the best is reported.
    #[arg(long, default_value_t = 2)]
    runs: usize,
}

/// Images per second of `SELECT count(*) ... FROM read_images(root)` (every image
/// decoded: dropInvalid needs validity), best of `runs` after a warm-up.
async fn read_rate(ctx: &SessionContext, root: &str, runs: usize) -> anyhow::Result<(f64, u64)> {
    let q = format!(
        "SELECT count(*) AS n FROM read_images('{root}', 'recursiveFileLookup=true', 'dropInvalid=true')"
    );
    let mut best = f64::MAX;
    let mut n = 0u64;
    for i in 0..=runs {
        let start = Instant::now();
        let batches = ctx.sql(&q).await?.collect().await?;
        let secs = start.elapsed().as_secs_f64();
        n = batches[0]
            .column(0)
            .as_any()
            .downcast_ref::<datafusion::arrow::array::Int64Array>()
            .map_or(0, |a| a.value(0) as u64);
        if i > 0 {
            best = best.min(secs);
        }
    }
    Ok((n as f64 / best, n))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let flowers = shared_data().join("flowers");
    // 10,000 small files for the listing benchmark (each a copy of a tiny PNG).
    let many = tempfile::tempdir()?;
    let png = std::fs::read(shared_data().join("spark-images/images/origin/kittens/not-image.txt"))
        .unwrap_or_else(|_| b"x".to_vec());
    for i in 0..args.objects {
        let sub = many.path().join(format!("d{:02}", i % 100));
        std::fs::create_dir_all(&sub)?;
        std::fs::write(sub.join(format!("f{i:05}.png")), &png)?;
    }
    let started = Instant::now();
    let server = S3Server::start(&[
        ("flowers", Some(flowers.as_path()), "flowers"),
        ("many", Some(many.path()), "many"),
    ])?;
    eprintln!(
        "S3 server (moto) on 127.0.0.1:{} with {} objects, uploaded in {:.1} s",
        server.port,
        server.objects,
        started.elapsed().as_secs_f64()
    );
    let mut config = StorageConfig::default();
    for b in ["flowers", "many"] {
        config
            .buckets
            .insert(format!("s3://{b}"), server.bucket_settings());
    }
    dlp_plugin::storage::configure(config)?;
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!(
        "object storage benchmark, {} ({} cores): the flowers read and decoded by read_images on the embedded cluster",
        chrono_date(),
        cores
    );
    println!(
        "{:<8} {:>14} {:>14} {:>8}",
        "slots", "disk img/s", "S3 img/s", "ratio"
    );
    for slots in [1, cores] {
        let ctx = dlp_plugin::embedded::standalone_context(Some(slots)).await?;
        let (disk, n1) = read_rate(&ctx, &flowers.to_string_lossy(), args.runs).await?;
        let (s3, n2) = read_rate(&ctx, "s3://flowers/flowers", args.runs).await?;
        anyhow::ensure!(n1 == n2, "disk read {n1} images, S3 {n2}");
        println!("{slots:<8} {disk:>14.1} {s3:>14.1} {:>7.2}x", s3 / disk);
    }
    // Listing: the product's listing (Spark's rules) of 10,000 objects vs files.
    let opts = ImageReadOptions::from_pairs([("recursiveFileLookup", "true")])?;
    let many_root = many.path().to_string_lossy().into_owned();
    let o = opts.clone();
    let (disk_s, disk_n) =
        tokio::task::spawn_blocking(move || time_listing(&many_root, &o)).await??;
    let (s3_s, s3_n) =
        tokio::task::spawn_blocking(move || time_listing("s3://many/many", &opts)).await??;
    anyhow::ensure!(
        disk_n == s3_n && s3_n == args.objects,
        "listed {disk_n} / {s3_n}"
    );
    println!(
        "listing {} objects: disk {:.3} s, S3 {:.3} s ({} LIST pages of 1,000)",
        args.objects,
        disk_s,
        s3_s,
        args.objects.div_ceil(1000)
    );
    Ok(())
}

/// Best of three listings of `root`: seconds and files.
fn time_listing(root: &str, opts: &ImageReadOptions) -> anyhow::Result<(f64, usize)> {
    let mut best = f64::MAX;
    let mut n = 0;
    for _ in 0..3 {
        let start = Instant::now();
        n = list_images(root, opts)?.files.len();
        best = best.min(start.elapsed().as_secs_f64());
    }
    Ok((best, n))
}

fn chrono_date() -> String {
    std::process::Command::new("date")
        .args(["-u", "+%F"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

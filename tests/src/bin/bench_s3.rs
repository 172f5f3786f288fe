//! Object storage beside local disk, on the product's path (the embedded cluster's
//! `read_images`: listing, GETs, Spark-exact decoding): the flowers read from a local
//! S3-compatible server and from `../shared/data`, with one task slot and with all cores,
//! and the listing of 10,000 objects beside the same 10,000 files on disk. Two servers on
//! loopback: `s3s-fs` (Rust, from crates.io: fast enough that the client is what is
//! measured) and moto (Python, the tests' server: it serves about 150 requests a second on
//! this machine and bounds whatever reads from it). Prints tables and the ratios;
//! `scripts/bench-s3.sh` runs it.

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
    /// The s3s-fs binary (`scripts/bench-s3.sh` installs it).
    #[arg(long)]
    s3s_fs: Option<std::path::PathBuf>,
    /// Also measure against moto (slow: it uploads the objects through boto3 first).
    #[arg(long)]
    moto: bool,
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
    // 10,000 small files for the listing benchmark (listing reads no content).
    let many = tempfile::tempdir()?;
    let png = std::fs::read(shared_data().join("spark-images/images/origin/kittens/not-image.txt"))
        .unwrap_or_else(|_| b"x".to_vec());
    for i in 0..args.objects {
        let sub = many.path().join(format!("d{:02}", i % 100));
        std::fs::create_dir_all(&sub)?;
        std::fs::write(sub.join(format!("f{i:05}.png")), &png)?;
    }
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!(
        "object storage benchmark, {} ({cores} cores; dev profile, the build make run and make test use): \
         the flowers read and decoded by read_images on the embedded cluster",
        chrono_date(),
    );
    // (label, server, bucket of the flowers, bucket of the 10,000 objects)
    let mut servers: Vec<(&str, S3Server, &str, &str)> = Vec::new();
    let fs_root = tempfile::tempdir()?;
    if let Some(bin) = &args.s3s_fs {
        // s3s-fs serves a folder: its sub-folders are the buckets.
        copy_dir(&flowers, &fs_root.path().join("fsflowers/flowers"))?;
        copy_dir(many.path(), &fs_root.path().join("fsmany/many"))?;
        let server = S3Server::start_fs(bin, fs_root.path())?;
        servers.push(("s3s-fs", server, "fsflowers", "fsmany"));
    }
    if args.moto {
        let started = Instant::now();
        let server = S3Server::start(&[
            ("flowers", Some(flowers.as_path()), "flowers"),
            ("many", Some(many.path()), "many"),
        ])?;
        eprintln!(
            "moto on 127.0.0.1:{}: {} objects uploaded in {:.1} s",
            server.port,
            server.objects,
            started.elapsed().as_secs_f64()
        );
        servers.push(("moto", server, "flowers", "many"));
    }
    anyhow::ensure!(!servers.is_empty(), "give --s3s-fs PATH and/or --moto");
    let mut config = StorageConfig::default();
    for (_, server, a, b) in &servers {
        for bucket in [a, b] {
            config
                .buckets
                .insert(format!("s3://{bucket}"), server.bucket_settings());
        }
    }
    dlp_plugin::storage::configure(config)?;

    println!(
        "{:<8} {:<7} {:>12} {:>12} {:>8}",
        "server", "slots", "disk img/s", "S3 img/s", "ratio"
    );
    for slots in [1, cores] {
        let ctx = dlp_plugin::embedded::standalone_context(Some(slots)).await?;
        let (disk, n1) = read_rate(&ctx, &flowers.to_string_lossy(), args.runs).await?;
        for (name, _, bucket, _) in &servers {
            let (s3, n2) = read_rate(&ctx, &format!("s3://{bucket}/flowers"), args.runs).await?;
            anyhow::ensure!(n1 == n2, "disk read {n1} images, {name} {n2}");
            println!(
                "{name:<8} {slots:<7} {disk:>12.1} {s3:>12.1} {:>7.2}x",
                s3 / disk
            );
        }
    }
    // Listing: the product's listing (Spark's rules) of 10,000 objects vs files.
    let opts = ImageReadOptions::from_pairs([("recursiveFileLookup", "true")])?;
    let many_root = many.path().to_string_lossy().into_owned();
    let o = opts.clone();
    let (disk_s, disk_n) =
        tokio::task::spawn_blocking(move || time_listing(&many_root, &o)).await??;
    for (name, _, _, bucket) in &servers {
        let (root, o) = (format!("s3://{bucket}/many"), opts.clone());
        let (s3_s, s3_n) = tokio::task::spawn_blocking(move || time_listing(&root, &o)).await??;
        anyhow::ensure!(
            disk_n == s3_n && s3_n == args.objects,
            "listed {disk_n} files, {s3_n} objects"
        );
        println!(
            "listing {} objects ({} pages of 1,000): disk {:.3} s, {name} {:.3} s",
            args.objects,
            args.objects.div_ceil(1000),
            disk_s,
            s3_s
        );
    }
    Ok(())
}

/// Copies a folder tree (the s3s-fs buckets).
fn copy_dir(from: &std::path::Path, to: &std::path::Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let target = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_dir(&entry.path(), &target)?;
        } else {
            std::fs::copy(entry.path(), target)?;
        }
    }
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

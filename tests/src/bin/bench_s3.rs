//! Object storage beside local disk, on the product's path (the embedded cluster's
//! `read_images`: listing, GETs, Spark-exact decoding): the flowers read from a local
//! S3-compatible server and from `../shared/data`, with one task slot and with all cores,
//! and the listing of 10,000 objects beside the same 10,000 files on disk. Two servers on
//! loopback: `s3s-fs` (Rust, from crates.io, served by `bench/s3-server` the way
//! production servers answer: fast enough that the client is what is measured) and moto
//! (Python, the tests' server: it serves about 150 requests a second on this machine and
//! bounds whatever reads from it). Prints tables and the ratios; `scripts/bench-s3.sh` runs
//! it.

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
    /// storage.maxConcurrentGets (a read keeps twice this many GETs in flight; default: its
    /// default).
    #[arg(long)]
    gets: Option<usize>,
    /// Also measure against moto (slow: it uploads the objects through boto3 first).
    #[arg(long)]
    moto: bool,
}

/// One read's figures: images per second (best run), images, and the CPU time per image
/// (milliseconds, averaged over the timed runs) of this process (the reader: listing,
/// GETs, decoding) and of the server.
struct Rate {
    rate: f64,
    /// Images per second of the same best run without its listing: the decoding rate.
    decode_rate: f64,
    /// Seconds the best run spent listing (once per query).
    listing_s: f64,
    /// Seconds the best run's decoding waited for GETs (object storage only).
    wait_s: f64,
    images: u64,
    reader_ms: f64,
    server_ms: f64,
}

/// CPU seconds (user + system, all threads) of process `pid` so far.
fn cpu_seconds(pid: u32) -> f64 {
    static TICK: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    let tick = *TICK.get_or_init(|| {
        std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
            .unwrap_or(100.0)
    });
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces): utime is the 12th, stime 13th.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<f64> = rest
        .split_whitespace()
        .map(|x| x.parse().unwrap_or(0.0))
        .collect();
    (f.get(11).copied().unwrap_or(0.0) + f.get(12).copied().unwrap_or(0.0)) / tick
}

/// `SELECT count(*) ... FROM read_images(root)` (every image decoded: dropInvalid needs
/// validity): the best of `runs` after a warm-up, and the CPU the timed runs took in this
/// process and in the server `server` (when there is one).
async fn read_rate(
    ctx: &SessionContext,
    root: &str,
    runs: usize,
    server: Option<u32>,
) -> anyhow::Result<Rate> {
    let q = format!(
        "SELECT count(*) AS n FROM read_images('{root}', 'recursiveFileLookup=true', 'dropInvalid=true')"
    );
    let me = std::process::id();
    let mut best = f64::MAX;
    let mut best_listing = 0.0;
    let mut best_wait = 0.0;
    let mut n = 0u64;
    let (mut reader, mut served) = (0.0, 0.0);
    for i in 0..=runs {
        let (r0, s0) = (cpu_seconds(me), server.map_or(0.0, cpu_seconds));
        let (listings0, listing0) = dlp_plugin::metrics::listing_totals();
        let wait0 = dlp_plugin::metrics::fetch_wait_seconds();
        let start = Instant::now();
        let batches = ctx.sql(&q).await?.collect().await?;
        let secs = start.elapsed().as_secs_f64();
        // The embedded cluster runs in this process: its listings are counted here.
        let (listings1, listing1) = dlp_plugin::metrics::listing_totals();
        anyhow::ensure!(
            listings1 - listings0 == 1,
            "one query listed {root} {} times",
            listings1 - listings0
        );
        n = batches[0]
            .column(0)
            .as_any()
            .downcast_ref::<datafusion::arrow::array::Int64Array>()
            .map_or(0, |a| a.value(0) as u64);
        if i > 0 {
            if secs < best {
                best = secs;
                best_listing = listing1 - listing0;
                best_wait = dlp_plugin::metrics::fetch_wait_seconds() - wait0;
            }
            reader += cpu_seconds(me) - r0;
            served += server.map_or(0.0, cpu_seconds) - s0;
        }
    }
    let per_image = |s: f64| 1000.0 * s / (n.max(1) as f64 * runs.max(1) as f64);
    Ok(Rate {
        rate: n as f64 / best,
        decode_rate: n as f64 / (best - best_listing),
        listing_s: best_listing,
        wait_s: best_wait,
        images: n,
        reader_ms: per_image(reader),
        server_ms: per_image(served),
    })
}

/// GETs alone (no decoding): every object under `root` fetched with `in_flight` GETs at
/// once, the best of `runs` after a warm-up: objects per second, and the CPU per GET of this
/// process and of the server.
async fn get_rate(
    root: &str,
    in_flight: usize,
    runs: usize,
    server: u32,
) -> anyhow::Result<(f64, f64, f64)> {
    let prefix = dlp_plugin::storage::ObjectUrl::parse(root)?;
    let urls: Vec<_> = dlp_plugin::storage::list(&prefix)
        .await?
        .into_iter()
        .map(|(u, _)| u)
        .collect();
    let me = std::process::id();
    let (mut best, mut reader, mut served) = (f64::MAX, 0.0, 0.0);
    for i in 0..=runs {
        let (r0, s0) = (cpu_seconds(me), cpu_seconds(server));
        let start = Instant::now();
        let got = dlp_plugin::storage::get_many(urls.clone(), u64::MAX, in_flight).await;
        let secs = start.elapsed().as_secs_f64();
        anyhow::ensure!(got.iter().all(|r| r.is_ok()), "a GET under {root} failed");
        if i > 0 {
            best = best.min(secs);
            reader += cpu_seconds(me) - r0;
            served += cpu_seconds(server) - s0;
        }
    }
    let per_get = |s: f64| 1000.0 * s / (urls.len().max(1) * runs.max(1)) as f64;
    Ok((urls.len() as f64 / best, per_get(reader), per_get(served)))
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
        "object storage benchmark, {} ({cores} cores; {}): \
         the flowers read and decoded by read_images on the embedded cluster",
        chrono_date(),
        dlp_tests::BUILD_PROFILE,
    );
    // (label, server, bucket of the flowers, bucket of the 10,000 objects)
    let mut servers: Vec<(&str, S3Server, &str, &str)> = Vec::new();
    let fs_root = tempfile::tempdir()?;
    if let Some(bin) = &args.s3s_fs {
        // s3s-fs serves a folder: its sub-folders are the buckets. The flowers are uploaded
        // through PUT below, as objects get into any bucket (s3s-fs then keeps their ETag;
        // files copied under its folder would be re-read for an MD5 at every GET). The
        // listing's 10,000 objects are only listed, never read: copied.
        std::fs::create_dir_all(fs_root.path().join("fsflowers"))?;
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
    if let Some(n) = args.gets {
        config.max_concurrent_gets = n;
    }
    for (_, server, a, b) in &servers {
        for bucket in [a, b] {
            config
                .buckets
                .insert(format!("s3://{bucket}"), server.bucket_settings());
        }
    }
    dlp_plugin::storage::configure(config)?;
    if args.s3s_fs.is_some() {
        let started = Instant::now();
        let url = dlp_plugin::storage::ObjectUrl::parse("s3://fsflowers/flowers")?;
        dlp_plugin::storage::upload_dir(&flowers, &url, None).await?;
        eprintln!(
            "s3s-fs: the flowers uploaded in {:.1} s",
            started.elapsed().as_secs_f64()
        );
    }

    println!(
        "{:<8} {:<22} {:>11} {:>10} {:>7}   {:>11} {:>10} {:>7} {:>8} {:>8}   {:>9} {:>9} {:>9}   {:>7}",
        "server",
        "reader",
        "disk img/s",
        "S3 img/s",
        "ratio",
        "disk decode",
        "S3 decode",
        "ratio",
        "S3 list",
        "S3 wait",
        "disk cpu",
        "S3 reader",
        "S3 server",
        "ceiling"
    );
    let me = std::process::id();
    let all = format!("0-{}", cores - 1);
    let mut ceilings = Vec::new();
    let mut get_rows = Vec::new();
    for slots in [1, cores] {
        // One core: the reader (this process, every thread, one task slot) on core 0 for
        // both reads, the servers on the other cores, as a server on another machine would
        // be. All cores: everything on every core, the server included.
        let one_core = slots == 1 && cores > 1;
        let last = format!("1-{}", cores - 1);
        pin(me, if one_core { "0" } else { &all })?;
        for (_, server, _, _) in &servers {
            pin(server.pid(), if one_core { &last } else { &all })?;
        }
        let label = if one_core {
            "1 core, server apart".to_string()
        } else {
            format!("{cores} cores, with server")
        };
        let ctx = dlp_plugin::embedded::standalone_context(Some(slots)).await?;
        let disk = read_rate(&ctx, &flowers.to_string_lossy(), args.runs, None).await?;
        for (name, server, bucket, _) in &servers {
            let root = format!("s3://{bucket}/flowers");
            let s3 = read_rate(&ctx, &root, args.runs, Some(server.pid())).await?;
            anyhow::ensure!(
                disk.images == s3.images,
                "disk read {} images, {name} {}",
                disk.images,
                s3.images
            );
            // The same objects fetched alone, as many GETs in flight as a read keeps: what
            // the server and the client's HTTP side can do without decoding.
            let in_flight = dlp_plugin::storage::config().read_gets_in_flight();
            let (gets, get_reader, get_server) =
                get_rate(&root, in_flight, args.runs, server.pid()).await?;
            get_rows.push(format!(
                "{name:<8} {label:<22} GETs alone ({in_flight} in flight): {gets:.1} objects/s \
                 ({:.2}x the disk read's images/s); CPU per GET: reader {get_reader:.2} ms, \
                 server {get_server:.2} ms",
                gets / disk.rate
            ));
            // With every core busy, a rate is at most cores / (CPU per image): the S3 read
            // can reach at most disk cpu / (reader + server) of the disk rate while the
            // server shares these cores.
            let ceiling = disk.reader_ms / (s3.reader_ms + s3.server_ms);
            let shown = if slots == cores {
                ceilings.push((name.to_string(), disk.reader_ms, s3.reader_ms, s3.server_ms));
                format!("{ceiling:>6.2}x")
            } else {
                format!("{:>7}", "-")
            };
            println!(
                "{name:<8} {label:<22} {:>11.1} {:>10.1} {:>6.2}x   {:>11.1} {:>10.1} {:>6.2}x {:>6.3} s {:>6.3} s   {:>6.2} ms {:>6.2} ms {:>6.2} ms   {shown}",
                disk.rate,
                s3.rate,
                s3.rate / disk.rate,
                disk.decode_rate,
                s3.decode_rate,
                s3.decode_rate / disk.decode_rate,
                s3.listing_s,
                s3.wait_s,
                disk.reader_ms,
                s3.reader_ms,
                s3.server_ms,
            );
        }
    }
    println!(
        "img/s: a whole query (one listing, GETs, decoding) in its best run; decode: the same \
         run without its listing (the embedded cluster's listing time, from its metrics); \
         S3 list: that listing's seconds; S3 wait: the seconds that run's decoding threads waited \
         for objects to arrive (summed over the threads)"
    );
    println!(
        "cpu: CPU time per image (user + system, every thread) of the reader (this process: \
         listing, GETs, decoding) and of the S3 server; ceiling: the most an S3 read can reach \
         of the disk rate with all {cores} cores busy and the server on them, disk cpu / \
         (reader + server)"
    );
    for row in &get_rows {
        println!("{row}");
    }
    for (name, disk, reader, server) in &ceilings {
        println!(
            "{name}: the reader spends {:.2} ms per image more from the bucket than from disk \
             ({:.2}x disk's CPU per image); the server {server:.2} ms",
            reader - disk,
            disk / reader,
        );
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

/// Confines every thread of process `pid` (threads it starts later inherit it) to `cpus`
/// (a `taskset` list).
fn pin(pid: u32, cpus: &str) -> anyhow::Result<()> {
    let out = std::process::Command::new("taskset")
        .args(["-a", "-p", "-c", cpus, &pid.to_string()])
        .output()?;
    anyhow::ensure!(
        out.status.success(),
        "taskset -a -p -c {cpus} {pid}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
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

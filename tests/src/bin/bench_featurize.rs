//! End-to-end featurization throughput on the embedded cluster: JPEG files -> image source
//! -> `DeepImageFeaturizer` -> feature vectors, with the process's peak RSS. Prints one JSON
//! line; `scripts/bench.sh` runs it beside the PyTorch reference.

use std::time::Instant;

use clap::Parser;
use datafusion::functions_aggregate::expr_fn::count;
use datafusion::prelude::col;
use dlp_plugin::ImageContextExt;
use dlp_plugin::image::ImageReadOptions;
use dlp_plugin::torch::DeepImageFeaturizer;

#[derive(Parser, Debug)]
struct Args {
    /// Folder of images.
    #[arg(long)]
    dir: String,
    /// Model name.
    #[arg(long, default_value = "efficientnet_lite0")]
    model: String,
    /// Images per forward pass (unset: the product's default, `dlp.torch.batch_size = auto`).
    #[arg(long)]
    batch: Option<usize>,
    /// Task slots of the embedded executor (= libtorch threads).
    #[arg(long, default_value_t = 2)]
    threads: usize,
}

#[tokio::main]
async fn main() -> datafusion::common::Result<()> {
    let args = Args::parse();
    let torch = dlp_plugin::torch::ProcessTorchConfig {
        threads: args.threads,
        ..dlp_plugin::torch::ProcessTorchConfig::from_env()
    };
    torch.install();
    let ctx = dlp_plugin::embedded::standalone_context(Some(args.threads)).await?;
    let opts = ImageReadOptions::from_pairs([("withLabel", "true"), ("dropInvalid", "true")])?;
    let start = Instant::now();
    let df = ctx.read_images(&args.dir, opts).await?;
    let featurizer = DeepImageFeaturizer::new(&args.model);
    let featurizer = match args.batch {
        Some(n) => featurizer.with_batch_size(n),
        None => featurizer,
    };
    let df = featurizer
        .transform(df)?
        .aggregate(vec![], vec![count(col("features")).alias("n")])?;
    let batches = df.collect().await?;
    let secs = start.elapsed().as_secs_f64();
    let n = datafusion::arrow::array::AsArray::as_primitive::<
        datafusion::arrow::datatypes::Int64Type,
    >(batches[0].column(0))
    .value(0);
    println!(
        "{{\"impl\": \"dlp\", \"images\": {n}, \"seconds\": {secs:.3}, \"images_per_s\": {:.2}, \"peak_rss_mb\": {:.0}, \"batch\": \"{}\", \"threads\": {}}}",
        n as f64 / secs,
        dlp_tests::peak_rss_mb(),
        args.batch
            .map_or_else(|| "auto".to_string(), |n| n.to_string()),
        args.threads
    );
    Ok(())
}

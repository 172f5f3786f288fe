//! `dlp fit | tune | evaluate | predict`: YAML pipeline jobs, saved pipelines applied to
//! image folders, with progress on stderr and a summary, report and plots at the end.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use datafusion::arrow::array::{
    Array, ArrayRef, AsArray, FixedSizeListArray, Float64Array, RecordBatch, StringArray,
};
use datafusion::arrow::datatypes::{DataType, Field, Float64Type, Schema};
use datafusion::functions::core::expr_fn::get_field;
use datafusion::prelude::{SessionContext, col};
use dlp_plugin::image::{ImageReadOptions, ImageTableProvider};
use dlp_plugin::pipeline::job::{DataSpec, JobEvent, JobReport, read_labelled, run_job};
use dlp_plugin::pipeline::{
    FittedStage, JobSpec, MulticlassClassificationEvaluator, MulticlassMetrics, PipelineModel,
    TuningEvent,
};
use indicatif::{ProgressBar, ProgressStyle};

use crate::output::{self, Format};
use crate::plot;

/// Arguments of `dlp fit` and `dlp tune`.
#[derive(clap::Args, Debug)]
pub struct JobArgs {
    /// The job spec (YAML): data, split, stages, evaluation, tuning, output. See
    /// examples/*.yaml.
    pub spec: PathBuf,
    /// Where to save the fitted PipelineModel (overrides output.model; default
    /// dlp-out/<spec name>/model).
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// Where to write report.txt, metrics.json and the confusion matrix plots (overrides
    /// output.report; default dlp-out/<spec name>/report).
    #[arg(long)]
    pub report: Option<PathBuf>,
    /// Override the data folder of the spec.
    #[arg(long)]
    pub data: Option<String>,
}

/// Arguments of `dlp evaluate`.
#[derive(clap::Args, Debug)]
pub struct EvaluateArgs {
    /// A saved PipelineModel directory (written by dlp fit / dlp tune).
    #[arg(long)]
    pub model: PathBuf,
    /// Image folder with one sub-folder per class (the model's class names).
    pub data: String,
    /// Where to write the report and plots (default dlp-out/evaluate).
    #[arg(long)]
    pub report: Option<PathBuf>,
}

/// Arguments of `dlp predict`.
#[derive(clap::Args, Debug)]
pub struct PredictArgs {
    /// A saved PipelineModel directory.
    #[arg(long)]
    pub model: PathBuf,
    /// Images: a folder (read recursively), a file or a file: URI.
    pub data: String,
    /// Output format: table, csv or json.
    #[arg(long, value_enum, default_value_t = Format::Table)]
    pub format: Format,
}

fn spinner(msg: &str) -> ProgressBar {
    let pb = ProgressBar::new_spinner();
    pb.set_style(ProgressStyle::with_template("{spinner} [{elapsed}] {msg}").expect("template"));
    pb.enable_steady_tick(Duration::from_millis(120));
    pb.set_message(msg.to_string());
    pb
}

fn default_out(spec: &Path, what: &str) -> PathBuf {
    let stem = spec
        .file_stem()
        .map_or("job".into(), |s| s.to_string_lossy().into_owned());
    PathBuf::from("dlp-out").join(stem).join(what)
}

/// Runs `dlp fit` (`tune = false`) or `dlp tune`.
pub async fn run_job_command(
    ctx: &SessionContext,
    args: &JobArgs,
    tune: bool,
) -> anyhow::Result<()> {
    let mut spec = JobSpec::from_file(&args.spec)?;
    if let Some(d) = &args.data {
        spec.data.path = d.clone();
    }
    if tune && spec.tuning.is_none() {
        anyhow::bail!(
            "{}: no tuning section (method, numFolds or trainRatio, parallelism, grid); dlp fit runs the spec without tuning",
            args.spec.display()
        );
    }
    let model_dir = args
        .model
        .clone()
        .or(spec.output.model.clone())
        .unwrap_or_else(|| default_out(&args.spec, "model"));
    let report_dir = args
        .report
        .clone()
        .or(spec.output.report.clone())
        .unwrap_or_else(|| default_out(&args.spec, "report"));
    spec.output.model = Some(model_dir.clone());

    let pb = spinner("starting");
    let bar = pb.clone();
    let progress = Arc::new(move |e: JobEvent| match e {
        JobEvent::Phase(p) => bar.set_message(p),
        JobEvent::Tuning(TuningEvent::Preparing { done, total }) => bar.set_message(format!(
            "featurizing once for all folds and candidates (configuration {} of {total})",
            done + 1
        )),
        JobEvent::Tuning(TuningEvent::FitDone {
            done,
            total,
            candidate,
            metric,
        }) => bar.set_message(format!(
            "candidate fits {done}/{total} (last: candidate {candidate}, metric {metric:.4})"
        )),
        JobEvent::Tuning(TuningEvent::Refitting) => {
            bar.set_message("refitting the best candidate on the whole training split".to_string())
        }
        JobEvent::Epoch(r) if bar.is_hidden() => println!("{}", epoch_line(&r)),
        JobEvent::Epoch(r) => bar.println(epoch_line(&r)),
    });
    let report = run_job(ctx, &spec, tune, Some(progress)).await;
    pb.finish_and_clear();
    let report = report?;
    print_job(&spec, &report);
    write_report(&report_dir, &report.class_names, &report.metrics)?;
    write_history(&report_dir, &report.model)?;
    println!(
        "\nmodel:  {} (dlp predict --model {} <images>)\nreport: {}/report.txt, metrics.json, confusion_matrix.png, confusion_matrix.svg",
        model_dir.display(),
        model_dir.display(),
        report_dir.display()
    );
    Ok(())
}

/// One line per fine-tuning epoch.
fn epoch_line(r: &dlp_plugin::finetune::EpochRecord) -> String {
    let mut line = format!(
        "epoch {:>3}: loss {:.4}, train accuracy {:.4}",
        r.epoch, r.train_loss, r.train_accuracy
    );
    if let (Some(l), Some(a)) = (r.validation_loss, r.validation_accuracy) {
        line += &format!(", validation loss {l:.4}, accuracy {a:.4}");
    }
    line += &format!(
        ", {:.1} images/s, {:.1} s (lr {:.2e})",
        r.images_per_second, r.seconds, r.learning_rate
    );
    line
}

/// The fine-tuning stage's history, if the model has one.
fn history(model: &PipelineModel) -> Option<&[dlp_plugin::finetune::EpochRecord]> {
    model.stages.iter().rev().find_map(|s| match s {
        FittedStage::TorchImageClassifier(t) if !t.history.is_empty() => Some(t.history.as_slice()),
        _ => None,
    })
}

/// `training_history.json`, `.svg` and `.png` in the report folder (local reports; for an
/// object-store report they are written locally beside it is not possible, so skipped).
fn write_history(dir: &Path, model: &PipelineModel) -> anyhow::Result<()> {
    let Some(h) = history(model) else {
        return Ok(());
    };
    if dlp_plugin::storage::url_of_path(dir).is_some() {
        return Ok(());
    }
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    std::fs::write(
        dir.join("training_history.json"),
        serde_json::to_string_pretty(h)?,
    )?;
    let series = |f: &dyn Fn(&dlp_plugin::finetune::EpochRecord) -> Option<f64>| {
        h.iter()
            .map(|r| f(r).unwrap_or(f64::NAN))
            .collect::<Vec<f64>>()
    };
    let mut loss = vec![plot::Curve {
        name: "train",
        color: [214, 39, 40],
        values: series(&|r| Some(r.train_loss)),
    }];
    let mut accuracy = vec![plot::Curve {
        name: "train",
        color: [214, 39, 40],
        values: series(&|r| Some(r.train_accuracy)),
    }];
    if h.iter().any(|r| r.validation_loss.is_some()) {
        loss.push(plot::Curve {
            name: "validation",
            color: [31, 119, 180],
            values: series(&|r| r.validation_loss),
        });
        accuracy.push(plot::Curve {
            name: "validation",
            color: [31, 119, 180],
            values: series(&|r| r.validation_accuracy),
        });
    }
    plot::write_history(dir, &[("loss", loss), ("accuracy", accuracy)])
}

fn print_job(spec: &JobSpec, r: &JobReport) {
    let train: u64 = r.train_counts.iter().sum();
    let test: u64 = r.test_counts.iter().sum();
    println!(
        "{}: {} classes, {} images ({} invalid left out, {} other files)",
        spec.data.path,
        r.class_names.len(),
        train + test,
        r.invalid.len(),
        r.other_files
    );
    println!(
        "split (weights {:?}, seed {}): train {train}, test {test}",
        spec.split.weights, spec.split.seed
    );
    for (i, name) in r.class_names.iter().enumerate() {
        println!(
            "  {name:<16} train {:>5}  test {:>5}",
            r.train_counts[i], r.test_counts[i]
        );
    }
    for o in r.invalid.iter().take(10) {
        println!("  invalid: {o}");
    }
    if let Some(t) = &r.tuning {
        println!(
            "\ntuning: {} candidates, {} in {:.1} s",
            t.param_maps.len(),
            t.metric_name,
            t.seconds
        );
        for (i, m) in t.param_maps.iter().enumerate() {
            let params: Vec<String> = m
                .iter()
                .map(|(k, v)| match v.as_str() {
                    Some(s) => format!("{k}={s}"),
                    None => format!("{k}={v}"),
                })
                .collect();
            println!(
                "  {} {:<40} {:.4} ± {:.4}",
                if i == t.best_index { "*" } else { " " },
                params.join(" "),
                t.avg_metrics[i],
                t.std_metrics[i]
            );
        }
    }
    if let Some(lr) = r.model.classifier() {
        let s = &lr.summary;
        println!(
            "\nfitted in {:.1} s: LogisticRegression {} iterations ({}), objective {:.6}, {} non-zero coefficients",
            r.fit_seconds,
            s.total_iterations,
            if s.converged {
                "converged"
            } else {
                "maxIter reached"
            },
            s.objective(),
            lr.non_zero_coefficients()
        );
    }
    if let Some(h) = history(&r.model) {
        let images: f64 = h.iter().map(|e| e.images_per_second * e.seconds).sum();
        let seconds: f64 = h.iter().map(|e| e.seconds).sum();
        // Under `dlp tune` the fit time covers every candidate: the final fit's own time is
        // the sum of its epochs.
        println!(
            "\nfine-tuned: {} epochs in {:.1} s, {:.1} images/s (report: training_history.png)",
            h.len(),
            seconds,
            images / seconds.max(1e-9)
        );
    }
    println!("evaluated the test split in {:.1} s\n", r.evaluate_seconds);
    print_metrics(&r.class_names, &r.metrics);
}

fn print_metrics(names: &[String], m: &MulticlassMetrics) {
    print!("{}", m.report(names));
    println!("\nconfusion matrix (rows: true, columns: predicted)");
    let shown = m.class_names(names);
    let w = shown.iter().map(String::len).max().unwrap_or(4).max(6);
    print!("{:>w$}", "");
    for n in &shown {
        print!(" {n:>w$}");
    }
    println!();
    for (i, row) in m.confusion.iter().enumerate() {
        print!("{:>w$}", shown[i]);
        for v in row {
            print!(" {v:>w$}");
        }
        println!();
    }
}

/// Writes the report to a local folder, or to object storage (`s3://...`: written
/// locally, then uploaded with metrics.json last; a failed upload removes what it wrote).
fn write_report(dir: &Path, names: &[String], m: &MulticlassMetrics) -> anyhow::Result<()> {
    let Some(url) = dlp_plugin::storage::url_of_path(dir) else {
        return write_report_files(dir, names, m);
    };
    dlp_plugin::access::check_write_url(&url).map_err(|e| anyhow::anyhow!("report: {e}"))?;
    let tmp = tempfile::tempdir().context("cannot make a temporary folder")?;
    write_report_files(tmp.path(), names, m)?;
    let local = tmp.path().to_path_buf();
    dlp_plugin::storage::io_blocking(async move {
        dlp_plugin::storage::upload_dir(&local, &url, Some("metrics.json")).await
    })
    .map_err(|e| anyhow::anyhow!("report: {e}"))
}

fn write_report_files(dir: &Path, names: &[String], m: &MulticlassMetrics) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    std::fs::write(dir.join("report.txt"), m.report(names))?;
    std::fs::write(
        dir.join("metrics.json"),
        serde_json::to_string_pretty(&m.to_json(names))?,
    )?;
    plot::write_confusion(dir, &m.class_names(names), &m.confusion)
}

/// `dlp evaluate`.
pub async fn evaluate(ctx: &SessionContext, args: &EvaluateArgs) -> anyhow::Result<()> {
    let model = PipelineModel::load(&args.model)?;
    if model.class_names.is_empty() {
        anyhow::bail!(
            "{}: the saved pipeline has no class names",
            args.model.display()
        );
    }
    let pb = spinner(&format!("evaluating on {}", args.data));
    let result = async {
        let data = read_labelled(
            ctx,
            &DataSpec {
                path: args.data.clone(),
                sql: None,
                classes: None,
                options: Default::default(),
            },
            Some(&model.class_names),
        )
        .await?;
        let metrics = MulticlassClassificationEvaluator::default()
            .metrics(model.transform(data.df)?)
            .await?;
        Ok::<_, anyhow::Error>((data.invalid, metrics))
    }
    .await;
    pb.finish_and_clear();
    let (invalid, metrics) = result?;
    println!(
        "{}: {} images of {} classes, {} invalid left out\n",
        args.data,
        metrics.total,
        model.class_names.len(),
        invalid.len()
    );
    print_metrics(&model.class_names, &metrics);
    let dir = args
        .report
        .clone()
        .unwrap_or_else(|| PathBuf::from("dlp-out/evaluate"));
    write_report(&dir, &model.class_names, &metrics)?;
    println!("\nreport: {}", dir.display());
    Ok(())
}

/// `dlp predict`: one row per image: origin, predicted class, its probability. Invalid
/// images get null predictions.
pub async fn predict(ctx: &SessionContext, args: &PredictArgs) -> anyhow::Result<()> {
    let model = PipelineModel::load(&args.model)?;
    let Some((prediction_col, probability_col)) = model.prediction_columns() else {
        anyhow::bail!(
            "{}: the pipeline has no classifier stage",
            args.model.display()
        );
    };
    let options = ImageReadOptions::from_pairs([("recursiveFileLookup", "true")])?;
    let path = dlp_plugin::pipeline::job::expand_home(&args.data);
    let df = ctx.read_table(Arc::new(ImageTableProvider::try_new(&path, options)?))?;
    let df = df.with_column("origin", get_field(col("image"), "origin"))?;
    let out = model.transform(df)?.select(vec![
        col("origin"),
        col(&prediction_col),
        col(&probability_col),
    ])?;
    let pb = spinner(&format!("predicting {}", args.data));
    let batches = out.collect().await;
    pb.finish_and_clear();
    let mut rows: Vec<(String, Option<usize>, Option<f64>)> = vec![];
    for b in batches? {
        let o = b.column(0).as_string::<i32>();
        let p = b.column(1).as_primitive::<Float64Type>();
        let prob = b.column(2).as_any().downcast_ref::<FixedSizeListArray>();
        for i in 0..b.num_rows() {
            if p.is_null(i) {
                rows.push((o.value(i).to_string(), None, None));
                continue;
            }
            let c = p.value(i) as usize;
            let pr = prob.map(|a| a.value(i).as_primitive::<Float64Type>().value(c));
            rows.push((o.value(i).to_string(), Some(c), pr));
        }
    }
    rows.sort_by(|a, b| a.0.cmp(&b.0));
    let name = |c: usize| {
        model
            .class_names
            .get(c)
            .cloned()
            .unwrap_or_else(|| c.to_string())
    };
    let schema = Arc::new(Schema::new(vec![
        Field::new("origin", DataType::Utf8, false),
        Field::new("prediction", DataType::Float64, true),
        Field::new("class", DataType::Utf8, true),
        Field::new("probability", DataType::Float64, true),
    ]));
    let columns: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from_iter_values(
            rows.iter().map(|r| r.0.as_str()),
        )),
        Arc::new(Float64Array::from_iter(
            rows.iter().map(|r| r.1.map(|c| c as f64)),
        )),
        Arc::new(StringArray::from_iter(rows.iter().map(|r| r.1.map(name)))),
        Arc::new(Float64Array::from_iter(rows.iter().map(|r| r.2))),
    ];
    let batch = RecordBatch::try_new(schema, columns)?;
    let stdout = std::io::stdout();
    let mut w = stdout.lock();
    output::write(&[batch], args.format, &mut w)?;
    let invalid = rows.iter().filter(|r| r.1.is_none()).count();
    if invalid > 0 {
        eprintln!("{invalid} image(s) did not decode: no prediction (null)");
    }
    w.flush()?;
    Ok(())
}

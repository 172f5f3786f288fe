//! Ceilings a client cannot raise. Each process (scheduler, executor, embedded client)
//! installs its limits at start-up; a client's own options (`maxPixels`, `batchSize`) are
//! taken only up to them, and the checks sit where the work is done (the decoder, the
//! inference operator, the training-data reader), so a plan made elsewhere is held to them
//! too. Hitting one gives an invalid row (images) or an error naming the limit and its flag.

use std::sync::OnceLock;

use crate::image::decode::DEFAULT_MAX_PIXELS;

/// Server-side ceilings (flags of `dlp-scheduler` and `dlp-executor`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::Args)]
pub struct Limits {
    /// Most pixels an image may have (a client's `maxPixels` is taken up to this).
    #[arg(long = "max-pixels", env = "DLP_MAX_PIXELS", default_value_t = DEFAULT_MAX_PIXELS)]
    pub max_pixels: u64,
    /// Most bytes one image may take while it is decoded (the decoder's buffer, e.g. 16-bit
    /// channels); a larger image is an invalid row.
    #[arg(long = "max-image-bytes", env = "DLP_MAX_IMAGE_BYTES", default_value_t = 512 << 20)]
    pub max_image_bytes: u64,
    /// Most bytes of one file read into memory; a larger file is an invalid row.
    #[arg(long = "max-file-bytes", env = "DLP_MAX_FILE_BYTES", default_value_t = 256 << 20)]
    pub max_file_bytes: u64,
    /// Most images per inference batch (a client's `batchSize` above it is an error).
    #[arg(
        long = "max-batch-size",
        env = "DLP_MAX_BATCH_SIZE",
        default_value_t = 1024
    )]
    pub max_batch_size: usize,
    /// Most classes a classifier may be trained for (labels are indices below it).
    #[arg(
        long = "max-classes",
        env = "DLP_MAX_CLASSES",
        default_value_t = 10_000
    )]
    pub max_classes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_pixels: DEFAULT_MAX_PIXELS,
            max_image_bytes: 512 << 20,
            max_file_bytes: 256 << 20,
            max_batch_size: 1024,
            max_classes: 10_000,
        }
    }
}

static LIMITS: OnceLock<Limits> = OnceLock::new();

impl Limits {
    /// Installs the process's limits (once, at start-up); false if already installed.
    pub fn install(self) -> bool {
        LIMITS.set(self).is_ok()
    }

    /// The process's limits (the defaults unless installed).
    pub fn get() -> Limits {
        LIMITS.get().copied().unwrap_or_default()
    }

    /// Checks a client's `batchSize`.
    pub fn check_batch_size(
        &self,
        what: &str,
        batch_size: usize,
    ) -> Result<(), crate::error::DlpError> {
        if batch_size > self.max_batch_size {
            return Err(crate::error::DlpError::Limit(format!(
                "{what}: batchSize {batch_size} is above this cluster's ceiling of {} \
                 (--max-batch-size)",
                self.max_batch_size
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_messages() {
        let l = Limits::default();
        assert_eq!(Limits::get(), l);
        assert!(l.check_batch_size("featurizer", 1024).is_ok());
        let e = l
            .check_batch_size("featurizer", 1 << 30)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("--max-batch-size") && e.contains("1073741824"),
            "{e}"
        );
    }
}

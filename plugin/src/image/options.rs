//! Options of the image source (`read_images(path, 'key=value', ...)`, `OPTIONS (...)`).

use datafusion::common::{Result, plan_err};
use serde::{Deserialize, Serialize};

use super::decode::{DEFAULT_MAX_PIXELS, DecodeOptions};

/// Options of the image data source. Names follow Spark's (`dropInvalid`,
/// `recursiveFileLookup`, `pathGlobFilter`) and are matched without regard to case.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ImageReadOptions {
    /// Drop rows of files that do not decode (Spark's `dropInvalid`, default false: keep them
    /// as invalid rows).
    pub drop_invalid: bool,
    /// Read every file below the root and discover no partitions (Spark's
    /// `recursiveFileLookup`). `None` means "not set": false, or true when `with_label` is on.
    pub recursive_file_lookup: Option<bool>,
    /// Only read files whose name matches this glob (Spark's `pathGlobFilter`).
    pub path_glob_filter: Option<String>,
    /// Keep each file with this probability (deterministic for a `seed`), like the
    /// `sampleRatio` of Spark's `ImageSchema.readImages`.
    pub sample_ratio: f64,
    /// Seed of `sample_ratio`.
    pub seed: u64,
    /// Add `label` (class index in sorted folder-name order) and `label_name` (the parent
    /// folder's name) columns.
    pub with_label: bool,
    /// Number of partitions; by default the session's target partitions (at most one per file).
    pub num_partitions: Option<usize>,
    /// Images per output record batch.
    pub batch_size: usize,
    /// Decompression-bomb guard: images with more pixels are invalid.
    pub max_pixels: u64,
    /// Decode WebP files (an extension; Spark reports them as invalid).
    pub decode_webp: bool,
}

impl Default for ImageReadOptions {
    fn default() -> Self {
        Self {
            drop_invalid: false,
            recursive_file_lookup: None,
            path_glob_filter: None,
            sample_ratio: 1.0,
            seed: 0,
            with_label: false,
            num_partitions: None,
            batch_size: 32,
            max_pixels: DEFAULT_MAX_PIXELS,
            decode_webp: true,
        }
    }
}

/// The option names, as documented (matching ignores case).
pub const OPTION_NAMES: &[&str] = &[
    "dropInvalid",
    "recursiveFileLookup",
    "pathGlobFilter",
    "sampleRatio",
    "seed",
    "withLabel",
    "numPartitions",
    "batchSize",
    "maxPixels",
    "decodeWebp",
];

impl ImageReadOptions {
    /// Parses `key`/`value` pairs. Unknown keys and malformed values are errors that name
    /// the option and what was expected.
    pub fn from_pairs<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> Result<Self> {
        let mut options = Self::default();
        for (key, value) in pairs {
            options.set(key, value)?;
        }
        options.validate()?;
        Ok(options)
    }

    /// Sets one option by name (case-insensitive; a `format.` prefix is ignored).
    pub fn set(&mut self, key: &str, value: &str) -> Result<()> {
        let key = key.trim();
        let name = key
            .strip_prefix("format.")
            .unwrap_or(key)
            .to_ascii_lowercase();
        let value = value.trim();
        match name.as_str() {
            "dropinvalid" => self.drop_invalid = parse_bool(key, value)?,
            "recursivefilelookup" => self.recursive_file_lookup = Some(parse_bool(key, value)?),
            "pathglobfilter" => self.path_glob_filter = Some(value.to_string()),
            "sampleratio" => self.sample_ratio = parse_num(key, value, "a number in (0, 1]")?,
            "seed" => self.seed = parse_num(key, value, "a non-negative integer")?,
            "withlabel" => self.with_label = parse_bool(key, value)?,
            "numpartitions" => {
                self.num_partitions = Some(parse_num(key, value, "a positive integer")?)
            }
            "batchsize" => self.batch_size = parse_num(key, value, "a positive integer")?,
            "maxpixels" => self.max_pixels = parse_num(key, value, "a positive integer")?,
            "decodewebp" => self.decode_webp = parse_bool(key, value)?,
            _ => {
                return plan_err!(
                    "image source: unknown option '{key}'; expected one of {}",
                    OPTION_NAMES.join(", ")
                );
            }
        }
        Ok(())
    }

    /// Checks ranges.
    pub fn validate(&self) -> Result<()> {
        if !(self.sample_ratio > 0.0 && self.sample_ratio <= 1.0) {
            return plan_err!(
                "image source: option 'sampleRatio' must be in (0, 1], got {}",
                self.sample_ratio
            );
        }
        if self.batch_size == 0 {
            return plan_err!("image source: option 'batchSize' must be positive, got 0");
        }
        if self.num_partitions == Some(0) {
            return plan_err!("image source: option 'numPartitions' must be positive, got 0");
        }
        if self.max_pixels == 0 {
            return plan_err!("image source: option 'maxPixels' must be positive, got 0");
        }
        if let Some(glob) = &self.path_glob_filter
            && let Err(e) = globset::Glob::new(glob)
        {
            return plan_err!("image source: option 'pathGlobFilter' is not a valid glob: {e}");
        }
        Ok(())
    }

    /// Whether files below sub-folders are read without partition discovery.
    pub fn recursive(&self) -> bool {
        self.recursive_file_lookup.unwrap_or(self.with_label)
    }

    /// The decoder settings these options imply.
    pub fn decode_options(&self) -> DecodeOptions {
        DecodeOptions {
            max_pixels: self.max_pixels,
            decode_webp: self.decode_webp,
            ..DecodeOptions::default()
        }
    }
}

fn parse_bool(key: &str, value: &str) -> Result<bool> {
    match value.to_ascii_lowercase().as_str() {
        "true" => Ok(true),
        "false" => Ok(false),
        _ => plan_err!("image source: option '{key}' expects true or false, got '{value}'"),
    }
}

fn parse_num<T: std::str::FromStr>(key: &str, value: &str, expected: &str) -> Result<T> {
    match value.parse::<T>() {
        Ok(v) => Ok(v),
        Err(_) => plan_err!("image source: option '{key}' expects {expected}, got '{value}'"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_values_ignore_case() {
        let o =
            ImageReadOptions::from_pairs([("DROPINVALID", "TRUE"), ("format.withLabel", "true")])
                .unwrap();
        assert!(o.drop_invalid);
        assert!(o.with_label);
        assert!(
            o.recursive(),
            "withLabel implies recursive lookup unless set"
        );
        let o =
            ImageReadOptions::from_pairs([("withLabel", "true"), ("recursiveFileLookup", "false")])
                .unwrap();
        assert!(!o.recursive());
    }

    #[test]
    fn defaults_are_sparks() {
        let o = ImageReadOptions::default();
        assert!(!o.drop_invalid);
        assert!(!o.recursive());
        assert_eq!(o.sample_ratio, 1.0);
        assert_eq!(o.max_pixels, DEFAULT_MAX_PIXELS);
    }

    #[test]
    fn errors_name_the_option() {
        let e = ImageReadOptions::from_pairs([("dropInvalid", "yes")]).unwrap_err();
        assert!(
            e.to_string()
                .contains("'dropInvalid' expects true or false, got 'yes'"),
            "{e}"
        );
        let e = ImageReadOptions::from_pairs([("sampleRatio", "1.5")]).unwrap_err();
        assert!(e.to_string().contains("sampleRatio"), "{e}");
        let e = ImageReadOptions::from_pairs([("inferSchema", "true")]).unwrap_err();
        assert!(
            e.to_string().contains("unknown option 'inferSchema'"),
            "{e}"
        );
    }
}

//! File discovery with Spark's file-source rules: hidden files, zero-byte files,
//! `recursiveFileLookup`, `pathGlobFilter`, `key=value` partition discovery and its
//! conflict error, plus folder-name labels and seeded sampling.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::path::{Path, PathBuf};

use datafusion::common::{Result, plan_datafusion_err, plan_err};
use percent_encoding::{AsciiSet, CONTROLS, utf8_percent_encode};
use serde::{Deserialize, Serialize};

use super::options::ImageReadOptions;

/// One file to read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageFile {
    /// Absolute path, or the object's URL.
    pub path: String,
    /// Size in bytes at listing time (never 0: empty files are skipped, as Spark does).
    pub size: u64,
    /// Values of the discovered partition columns, in column order (`None` = null).
    pub partition_values: Vec<Option<String>>,
    /// Class index and name from the parent folder (with `withLabel`).
    pub label: Option<(i32, String)>,
}

/// What a listing found.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageListing {
    /// The root as an absolute path, or its URL.
    pub root: String,
    /// Discovered `key=value` partition columns, outermost first.
    pub partition_columns: Vec<String>,
    /// Class names in label order (with `withLabel`).
    pub classes: Vec<String>,
    /// Files to read, sorted by path.
    pub files: Vec<ImageFile>,
    /// Zero-byte files that were skipped (Spark yields no row for them).
    pub empty_files: usize,
}

/// Resolves a user path or `file:` URI to an absolute local path.
pub fn resolve_root(root: &str) -> Result<PathBuf> {
    let trimmed = root.trim();
    if trimmed.is_empty() {
        return plan_err!("read_images: the path is empty; expected a file or directory");
    }
    let local = if let Some(rest) = trimmed.strip_prefix("file://") {
        percent_decode(rest)
    } else if let Some(rest) = trimmed.strip_prefix("file:") {
        percent_decode(rest)
    } else if trimmed.contains("://") {
        return plan_err!(
            "read_images: unsupported path '{trimmed}': only local paths and file: URIs are read"
        );
    } else {
        trimmed.to_string()
    };
    let roots = crate::access::DataRoots::get();
    let local = match roots {
        // With data roots, relative paths are taken from the first one.
        Some(r) if Path::new(&local).is_relative() => r.base().join(&local),
        _ => PathBuf::from(local),
    };
    let absolute = std::path::absolute(&local)
        .map_err(|e| plan_datafusion_err!("read_images: cannot resolve path '{trimmed}': {e}"))?;
    let path = normalize(&absolute);
    crate::access::check_path(&path).map_err(|e| plan_datafusion_err!("read_images: {e}"))?;
    Ok(path)
}

/// Removes `.` and `..` segments without touching the file system (as `java.net.URI`
/// normalizes Hadoop paths), so `origin` never contains them.
fn normalize(path: &Path) -> PathBuf {
    use std::path::Component;
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                out.pop();
            }
            other => out.push(other.as_os_str()),
        }
    }
    out
}

fn percent_decode(s: &str) -> String {
    percent_encoding::percent_decode_str(s)
        .decode_utf8_lossy()
        .into_owned()
}

/// Characters `java.net.URI` quotes in a path (Hadoop `Path.toUri`): everything outside
/// unreserved, punct (`,;:$&+=`), `/` and `@`. Non-ASCII characters are kept as they are.
pub(crate) const URI_PATH: &AsciiSet = &CONTROLS
    .add(b' ')
    .add(b'"')
    .add(b'#')
    .add(b'%')
    .add(b'<')
    .add(b'>')
    .add(b'?')
    .add(b'[')
    .add(b'\\')
    .add(b']')
    .add(b'^')
    .add(b'`')
    .add(b'{')
    .add(b'|')
    .add(b'}');

/// Spark's `origin` for an absolute path: `file://` + the URI-encoded path. An
/// object-store URL is its own origin.
pub fn origin_uri(path: &str) -> String {
    if crate::storage::is_url(path) {
        return path.to_string();
    }
    format!("file://{}", utf8_percent_encode(path, URI_PATH))
}

/// Spark's (Hadoop's) rule for names that listing skips.
fn is_hidden(name: &str) -> bool {
    (name.starts_with('_') && !name.contains('='))
        || name.starts_with('.')
        || name.ends_with("._COPYING_")
}

/// Lists the files to read under `root` (a local path, a `file:` URI or an object-store
/// URL such as `s3://bucket/prefix`) according to `options`.
pub fn list_images(root: &str, options: &ImageReadOptions) -> Result<ImageListing> {
    let started = std::time::Instant::now();
    let listing = if crate::storage::is_url(root) {
        list_remote(root, options)?
    } else {
        list_local(root, options)?
    };
    crate::metrics::record_listing(listing.files.len(), started.elapsed().as_nanos() as u64);
    Ok(listing)
}

fn list_local(root: &str, options: &ImageReadOptions) -> Result<ImageListing> {
    let root_path = resolve_root(root)?;
    let meta = std::fs::metadata(&root_path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            plan_datafusion_err!(
                "read_images: path does not exist: {}",
                origin_uri(&root_path.to_string_lossy())
            )
        } else {
            plan_datafusion_err!("read_images: cannot read '{}': {e}", root_path.display())
        }
    })?;
    // (path, size) of every non-hidden leaf file; base path for partition discovery.
    let mut leaves: Vec<(PathBuf, u64)> = Vec::new();
    let base = if meta.is_file() {
        leaves.push((root_path.clone(), meta.len()));
        root_path
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_default()
    } else {
        let mut seen = HashSet::new();
        walk(&root_path, &mut leaves, &mut seen)?;
        root_path.clone()
    };
    assemble(
        root_path.to_string_lossy().into_owned(),
        &root_path,
        &base,
        leaves,
        options,
        |p| p.to_string_lossy().into_owned(),
        // A symlink under the root may point elsewhere: every file is checked.
        |p| crate::access::check_path(p).map_err(|e| plan_datafusion_err!("read_images: {e}")),
    )
}

/// Checks every file of a listing against this process's data roots, as its own listing
/// would have: a scan over files listed elsewhere (a client's, carried by the codec) may
/// name no file this process could not list itself.
pub fn check_listing(listing: &ImageListing) -> Result<()> {
    if crate::access::DataRoots::get().is_none() {
        return Ok(());
    }
    for f in &listing.files {
        if crate::storage::is_url(&f.path) {
            let url =
                crate::storage::ObjectUrl::parse(&f.path).map_err(|e| e.context("read_images"))?;
            crate::access::check_url(&url).map_err(|e| e.context("read_images"))?;
        } else {
            crate::access::check_path(Path::new(&f.path))
                .map_err(|e| plan_datafusion_err!("read_images: {e}"))?;
        }
    }
    Ok(())
}

/// [`list_images`] of an object-store prefix: one paginated LIST of every object under
/// it (or the single object it names), then the same rules as a local folder (hidden
/// names, globs, partitions, labels, sampling) over the keys as paths.
fn list_remote(root: &str, options: &ImageReadOptions) -> Result<ImageListing> {
    use crate::storage::ObjectUrl;
    let url = ObjectUrl::parse(root).map_err(|e| e.context("read_images"))?;
    crate::access::check_url(&url).map_err(|e| e.context("read_images"))?;
    let key = url.key_str();
    // Keys as absolute paths below '/', so that the folder rules apply unchanged.
    let root_path = PathBuf::from(format!("/{key}"));
    // A prefix with objects under it is a folder; else the key may name one object (a
    // single file). Listing first also spares the HEAD in the common case.
    let objects = {
        let u = url.clone();
        crate::storage::io_blocking(async move { crate::storage::list(&u).await })
            .map_err(|e| e.context("read_images"))?
    };
    let mut leaves: Vec<(PathBuf, u64)> = Vec::new();
    let base = if objects.is_empty() {
        let single = if key.is_empty() {
            None
        } else {
            let u = url.clone();
            crate::storage::io_blocking(async move { crate::storage::head(&u).await })
                .map_err(|e| e.context("read_images"))?
        };
        let Some(size) = single else {
            return plan_err!("read_images: path does not exist: {url} (no object under it)");
        };
        leaves.push((root_path.clone(), size));
        root_path
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_default()
    } else {
        for (object, size) in objects {
            let k = object.key_str();
            let rel = k.strip_prefix(&key).unwrap_or(&k).trim_start_matches('/');
            // Hidden names are skipped at every level below the root, as the walk of a
            // local folder skips hidden folders.
            if rel.is_empty() || rel.split('/').any(is_hidden) {
                continue;
            }
            leaves.push((PathBuf::from(format!("/{k}")), size));
        }
        root_path.clone()
    };
    let to_url = |p: &Path| {
        url.with_key(p.to_string_lossy().trim_start_matches('/'))
            .to_string()
    };
    assemble(
        url.to_string(),
        &root_path,
        &base,
        leaves,
        options,
        to_url,
        |_| Ok(()),
    )
}

/// The folder rules over `leaves` (every non-hidden file under the root, with its size):
/// glob filter, zero-byte files, partition discovery, labels, sampling. `name_of` gives a
/// file's path or URL as rows carry it; `check` is the access check of each file.
fn assemble(
    root: String,
    root_path: &Path,
    base: &Path,
    mut leaves: Vec<(PathBuf, u64)>,
    options: &ImageReadOptions,
    name_of: impl Fn(&Path) -> String,
    check: impl Fn(&Path) -> Result<()>,
) -> Result<ImageListing> {
    let glob = match &options.path_glob_filter {
        Some(g) => Some(
            globset::Glob::new(g)
                .map_err(|e| plan_datafusion_err!("read_images: bad pathGlobFilter: {e}"))?
                .compile_matcher(),
        ),
        None => None,
    };
    let mut empty_files = 0usize;
    leaves.retain(|(path, size)| {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy())
            .unwrap_or_default();
        if let Some(g) = &glob
            && !g.is_match(name.as_ref())
        {
            return false;
        }
        if *size == 0 {
            empty_files += 1;
            tracing::debug!(file = %path.display(), "skipping zero-byte file (no row, as Spark)");
            return false;
        }
        true
    });
    leaves.sort();

    let recursive = options.recursive();
    let (partition_columns, per_dir) = if recursive {
        (Vec::new(), BTreeMap::new())
    } else {
        discover_partitions(base, &leaves)?
    };
    if !recursive && partition_columns.is_empty() {
        // Spark: an unpartitioned directory read without recursion yields only its own files.
        let listed = leaves.len();
        leaves.retain(|(p, _)| p.parent() == Some(base) || p == root_path);
        let skipped = listed - leaves.len();
        if skipped > 0 {
            // As in Spark, but said: a folder of class folders read without options gives
            // no rows at all.
            tracing::warn!(
                path = %root,
                skipped,
                kept = leaves.len(),
                "read_images: files in sub-folders are not read without \
                 recursiveFileLookup=true (or withLabel=true for class folders), as in Spark"
            );
        }
    }

    let labels: Vec<Option<String>> = leaves
        .iter()
        .map(|(p, _)| {
            if !options.with_label {
                return None;
            }
            match p.parent() {
                Some(parent) if parent != base => {
                    parent.file_name().map(|n| n.to_string_lossy().into_owned())
                }
                _ => None,
            }
        })
        .collect();
    let classes: Vec<String> = labels
        .iter()
        .flatten()
        .cloned()
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();

    let mut files = Vec::with_capacity(leaves.len());
    for ((path, size), label) in leaves.into_iter().zip(labels) {
        if options.sample_ratio < 1.0 {
            let rel = path.strip_prefix(base).unwrap_or(&path).to_string_lossy();
            if unit_hash(options.seed, rel.as_bytes()) >= options.sample_ratio {
                continue;
            }
        }
        let partition_values = match path.parent().and_then(|d| per_dir.get(d)) {
            Some(values) => values.clone(),
            None => vec![None; partition_columns.len()],
        };
        let label = label.map(|name| {
            let idx = classes.binary_search(&name).unwrap_or(0) as i32;
            (idx, name)
        });
        check(&path)?;
        files.push(ImageFile {
            path: name_of(&path),
            size,
            partition_values,
            label,
        });
    }
    Ok(ImageListing {
        root,
        partition_columns,
        classes,
        files,
        empty_files,
    })
}

fn walk(dir: &Path, out: &mut Vec<(PathBuf, u64)>, seen: &mut HashSet<PathBuf>) -> Result<()> {
    // Follow symbolic links as Hadoop's local file system does, but never loop.
    let canonical = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
    if !seen.insert(canonical) {
        return Ok(());
    }
    let entries = std::fs::read_dir(dir)
        .map_err(|e| plan_datafusion_err!("read_images: cannot list '{}': {e}", dir.display()))?;
    for entry in entries {
        let entry = entry.map_err(|e| {
            plan_datafusion_err!("read_images: cannot list '{}': {e}", dir.display())
        })?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if is_hidden(&name) {
            continue;
        }
        let path = entry.path();
        match std::fs::metadata(&path) {
            Ok(m) if m.is_dir() => walk(&path, out, seen)?,
            // A FIFO, socket or device is no image and is never opened: listed with size 1
            // so that it becomes an invalid row ("not a regular file"), not a hang.
            Ok(m) if !m.is_file() => out.push((path, 1)),
            Ok(m) => out.push((path, m.len())),
            // A dangling link or a file that vanished: listed with size 1 so that reading it
            // reports it as an unreadable (invalid) row instead of losing it silently.
            Err(e) => {
                tracing::warn!(file = %path.display(), error = %e, "cannot stat file");
                out.push((path, 1));
            }
        }
    }
    Ok(())
}

type PartitionValues = Vec<Option<String>>;

/// Spark's `PartitioningUtils.parsePartitions` over the leaf directories.
fn discover_partitions(
    base: &Path,
    leaves: &[(PathBuf, u64)],
) -> Result<(Vec<String>, BTreeMap<PathBuf, PartitionValues>)> {
    let leaf_dirs: BTreeSet<&Path> = leaves.iter().filter_map(|(p, _)| p.parent()).collect();
    // (leaf dir, its key=value columns, the base path its walk stopped at)
    type Parsed<'a> = (&'a Path, Vec<(String, Option<String>)>, PathBuf);
    let mut parsed: Vec<Parsed<'_>> = Vec::new();
    for dir in leaf_dirs {
        let mut columns = Vec::new();
        let mut current = dir;
        loop {
            if current == base {
                break;
            }
            let name = current
                .file_name()
                .map(|n| n.to_string_lossy())
                .unwrap_or_default();
            let column = parse_partition_dir(&name);
            let stop = column.is_none() && !columns.is_empty();
            if let Some(c) = column {
                columns.push(c);
            }
            if stop {
                break;
            }
            match current.parent() {
                Some(parent) => current = parent,
                None => break,
            }
        }
        columns.reverse();
        let discovered_base = if columns.is_empty() {
            dir.to_path_buf()
        } else {
            current.to_path_buf()
        };
        parsed.push((dir, columns, discovered_base));
    }
    if parsed.iter().all(|(_, cols, _)| cols.is_empty()) {
        return Ok((Vec::new(), BTreeMap::new()));
    }
    let bases: BTreeSet<String> = parsed
        .iter()
        .map(|(_, _, b)| b.to_string_lossy().to_lowercase())
        .collect();
    if bases.len() > 1 {
        let suspicious: Vec<_> = bases.iter().map(|b| format!("  {b}")).collect();
        return plan_err!(
            "[CONFLICTING_DIRECTORY_STRUCTURES] read_images: conflicting directory structures \
             under '{}': files sit both in key=value partition directories and in plain ones. \
             Read a partitioned sub-directory, or set recursiveFileLookup=true. Suspicious \
             paths:\n{}",
            base.display(),
            suspicious.join("\n")
        );
    }
    let mut names: Option<Vec<String>> = None;
    let mut per_dir = BTreeMap::new();
    for (dir, cols, _) in parsed {
        if cols.is_empty() {
            continue;
        }
        let these: Vec<String> = cols.iter().map(|(k, _)| k.clone()).collect();
        match &names {
            None => names = Some(these),
            Some(n)
                if n.iter()
                    .map(|s| s.to_lowercase())
                    .eq(these.iter().map(|s| s.to_lowercase())) => {}
            Some(n) => {
                return plan_err!(
                    "[CONFLICTING_PARTITION_COLUMN_NAMES] read_images: partition directories \
                     under '{}' disagree: {:?} vs {:?} (at '{}')",
                    base.display(),
                    n,
                    these,
                    dir.display()
                );
            }
        }
        per_dir.insert(
            dir.to_path_buf(),
            cols.into_iter().map(|(_, v)| v).collect(),
        );
    }
    Ok((names.unwrap_or_default(), per_dir))
}

/// `key=value` with Hive unescaping and `__HIVE_DEFAULT_PARTITION__` as null.
fn parse_partition_dir(name: &str) -> Option<(String, Option<String>)> {
    let (key, value) = name.split_once('=')?;
    if key.is_empty() || value.is_empty() {
        return None;
    }
    let value = percent_decode(value);
    let value = (value != "__HIVE_DEFAULT_PARTITION__").then_some(value);
    Some((percent_decode(key), value))
}

/// A deterministic hash of `(seed, bytes)` mapped to `[0, 1)` (SplitMix64 over FNV-1a):
/// `sampleRatio` here, `randomSplit` and folds in `pipeline::split`.
pub fn unit_hash(seed: u64, bytes: &[u8]) -> f64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325 ^ seed;
    for &b in bytes {
        h ^= b as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    let mut z = h.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^= z >> 31;
    (z >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origin_encodes_like_java_uri() {
        assert_eq!(
            origin_uri("/tmp/sub dir/a b%c#.png"),
            "file:///tmp/sub%20dir/a%20b%25c%23.png"
        );
        assert_eq!(
            origin_uri("/d/cls=kittens/x.jpg"),
            "file:///d/cls=kittens/x.jpg"
        );
    }

    #[test]
    fn roots_are_absolute_and_normalized() {
        assert_eq!(
            resolve_root("/a/b/../c/./d").unwrap(),
            PathBuf::from("/a/c/d")
        );
        assert_eq!(
            resolve_root("file:///x%20y/z").unwrap(),
            PathBuf::from("/x y/z")
        );
        assert!(resolve_root("s3://bucket/key").is_err());
        assert!(resolve_root("  ").is_err());
    }

    #[test]
    fn hidden_names_follow_hadoop() {
        assert!(is_hidden(".DS_Store"));
        assert!(is_hidden("_SUCCESS"));
        assert!(!is_hidden("_a=1"));
        assert!(!is_hidden("photo.jpg"));
    }

    #[test]
    fn partition_dirs_parse() {
        assert_eq!(
            parse_partition_dir("date=2018-01"),
            Some(("date".into(), Some("2018-01".into())))
        );
        assert_eq!(
            parse_partition_dir("a=b%20c"),
            Some(("a".into(), Some("b c".into())))
        );
        assert_eq!(
            parse_partition_dir("x=__HIVE_DEFAULT_PARTITION__"),
            Some(("x".into(), None))
        );
        assert_eq!(parse_partition_dir("kittens"), None);
    }

    #[test]
    fn sampling_is_deterministic_and_near_ratio() {
        let kept = (0..10_000)
            .filter(|i| unit_hash(7, format!("f{i}.jpg").as_bytes()) < 0.3)
            .count();
        assert!((2_800..3_200).contains(&kept), "{kept}");
        assert_eq!(unit_hash(1, b"a"), unit_hash(1, b"a"));
        assert_ne!(unit_hash(1, b"a"), unit_hash(2, b"a"));
    }

    #[test]
    fn missing_root_is_a_clear_error() {
        let e = list_images("/definitely/not/here", &ImageReadOptions::default()).unwrap_err();
        assert!(
            e.to_string()
                .contains("path does not exist: file:///definitely/not/here"),
            "{e}"
        );
    }
}

//! Data access control: with data roots configured (`--data-root` on the scheduler and the
//! executors), every file read for a client must resolve, after `..` and symlinks, under
//! one of them (or under a writable root), and every file written under a writable root
//! (`--writable-root`). Relative paths are taken from the first data root. Without roots
//! (the embedded default, a developer's machine) nothing is restricted.
//!
//! The checks sit where files are opened: the plugin's own readers call [`check_path`],
//! and DataFusion's readers and writers go through [`store::RootedFileSystem`], the
//! `file://` object store of every process with roots. Any error while checking refuses
//! the path.

pub mod store;

use crate::error::DlpError;
use crate::storage::ObjectUrl;
use std::path::{Component, Path, PathBuf};
use std::sync::OnceLock;

/// The configured roots: local directories (canonical) and object-store prefixes
/// (`s3://bucket/prefix/`, checked lexically: object keys have no `..` or links).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataRoots {
    roots: Vec<PathBuf>,
    writable: Vec<PathBuf>,
    urls: Vec<ObjectUrl>,
    writable_urls: Vec<ObjectUrl>,
}

/// Splits roots into local directories and object-store URLs (refusing a bad URL).
fn split_roots(all: &[PathBuf], what: &str) -> Result<(Vec<PathBuf>, Vec<ObjectUrl>), DlpError> {
    let (mut local, mut urls) = (Vec::new(), Vec::new());
    for r in join_split_urls(all) {
        match r.to_str().filter(|s| crate::storage::is_url(s)) {
            Some(s) => {
                urls.push(ObjectUrl::parse(s).map_err(|e| DlpError::Config(format!("{what} {e}")))?)
            }
            None => local.push(r),
        }
    }
    Ok((local, urls))
}

/// Roots from a ':'-separated list (`DLP_DATA_ROOTS`) arrive with their URLs cut at the
/// scheme (`s3`, `//bucket/prefix`): this joins them again.
pub fn join_split_urls(parts: &[PathBuf]) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = Vec::new();
    let mut i = 0;
    while i < parts.len() {
        let here = parts[i].to_string_lossy();
        let next = parts.get(i + 1).map(|p| p.to_string_lossy().into_owned());
        match next {
            Some(n)
                if n.starts_with("//")
                    && !here.is_empty()
                    && here.chars().all(|c| c.is_ascii_alphanumeric())
                    && crate::storage::is_url(&format!("{here}:{n}")) =>
            {
                out.push(PathBuf::from(format!("{here}:{n}")));
                i += 2;
            }
            _ => {
                out.push(parts[i].clone());
                i += 1;
            }
        }
    }
    out
}

static ROOTS: OnceLock<DataRoots> = OnceLock::new();

impl DataRoots {
    /// Roots from existing directories (canonicalized: symlinked roots are followed once,
    /// here).
    pub fn new(roots: &[PathBuf]) -> Result<Self, DlpError> {
        if roots.is_empty() {
            return Err(DlpError::Config("no data roots given".into()));
        }
        let (local, urls) = split_roots(roots, "data root")?;
        Ok(Self {
            roots: canonical_dirs(&local, "data root").map_err(DlpError::Config)?,
            writable: Vec::new(),
            urls,
            writable_urls: Vec::new(),
        })
    }

    /// The roots with writable roots (`--writable-root`): the only places where anything
    /// is written for a client; they may be read too.
    pub fn with_writable(self, writable: &[PathBuf]) -> Result<Self, DlpError> {
        let (writable, writable_urls) = split_roots(writable, "writable root")?;
        // A fresh volume has no output folder yet: make it.
        for dir in &writable {
            std::fs::create_dir_all(dir)
                .map_err(|e| DlpError::Config(format!("writable root {}: {e}", dir.display())))?;
        }
        Ok(Self {
            writable: canonical_dirs(&writable, "writable root").map_err(DlpError::Config)?,
            writable_urls,
            ..self
        })
    }

    /// Roots from the flags of a binary: `None` when neither is given. Writable roots alone
    /// restrict reads to themselves.
    pub fn from_flags(data: &[PathBuf], writable: &[PathBuf]) -> Result<Option<Self>, DlpError> {
        match (data.is_empty(), writable.is_empty()) {
            (true, true) => Ok(None),
            (false, _) => Ok(Some(Self::new(data)?.with_writable(writable)?)),
            (true, false) => Ok(Some(Self::new(writable)?.with_writable(writable)?)),
        }
    }

    /// Installs the process's roots (once, at start-up).
    pub fn install(self) -> bool {
        ROOTS.set(self).is_ok()
    }

    /// The process's roots, if restricted.
    pub fn get() -> Option<&'static Self> {
        ROOTS.get()
    }

    /// The roots, for messages.
    pub fn describe(&self) -> String {
        self.roots
            .iter()
            .map(|r| r.display().to_string())
            .chain(self.urls.iter().map(ObjectUrl::to_string))
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// Where a relative path is taken from: the first local root (with object-store roots
    /// only, a relative path resolves nowhere and is refused).
    pub fn base(&self) -> &Path {
        self.roots
            .first()
            .map(PathBuf::as_path)
            .unwrap_or(Path::new("/nonexistent/no-local-data-root"))
    }

    /// Checks an object-store URL to be read: under an object-store data root or writable
    /// root (whole path segments).
    pub fn check_url(&self, url: &ObjectUrl) -> Result<(), DlpError> {
        if self
            .urls
            .iter()
            .chain(&self.writable_urls)
            .any(|r| url.starts_with(r))
        {
            Ok(())
        } else {
            Err(DlpError::Access(format!(
                "'{url}' is outside the data roots ({}); paths must be under a configured \
                 --data-root",
                self.describe()
            )))
        }
    }

    /// Checks an object-store URL to be written: under an object-store writable root.
    pub fn check_write_url(&self, url: &ObjectUrl) -> Result<(), DlpError> {
        if self.writable_urls.iter().any(|r| url.starts_with(r)) {
            Ok(())
        } else {
            Err(DlpError::Access(format!(
                "'{url}' is not under a writable root ({}); writes go only there",
                self.describe_writable()
            )))
        }
    }

    /// Whether any root is in the bucket of `url` (DataFusion's own readers may use only
    /// such buckets).
    pub fn allows_bucket(&self, url: &ObjectUrl) -> bool {
        self.urls
            .iter()
            .chain(&self.writable_urls)
            .any(|r| r.store_key() == url.store_key())
    }

    /// Where a relative output path is taken from: the first writable root.
    pub fn write_base(&self) -> Option<&Path> {
        self.writable.first().map(PathBuf::as_path)
    }

    fn contains(&self, path: &Path) -> bool {
        self.roots
            .iter()
            .chain(&self.writable)
            .any(|r| path.starts_with(r))
    }

    fn contains_writable(&self, path: &Path) -> bool {
        self.writable.iter().any(|r| path.starts_with(r))
    }

    /// The writable roots, for messages.
    pub fn describe_writable(&self) -> String {
        if self.writable.is_empty() && self.writable_urls.is_empty() {
            return "none configured: start the scheduler and executors with --writable-root"
                .into();
        }
        self.writable
            .iter()
            .map(|r| r.display().to_string())
            .chain(self.writable_urls.iter().map(ObjectUrl::to_string))
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// Checks a path to be written: absolute, without `..`, under a writable root as
    /// written, and so is its nearest existing ancestor after following symlinks (a
    /// symlinked directory cannot lead a write out). An existing symlink at the path itself
    /// must resolve under a writable root too.
    pub fn check_write(&self, path: &Path) -> Result<(), DlpError> {
        self.write_refusal(path).map_err(DlpError::Access)
    }

    fn write_refusal(&self, path: &Path) -> Result<(), String> {
        let outside = || {
            format!(
                "'{}' is not under a writable root ({}); writes go only there",
                path.display(),
                self.describe_writable()
            )
        };
        if !path.is_absolute()
            || path.components().any(|c| c == Component::ParentDir)
            || !self.contains_writable(path)
        {
            return Err(outside());
        }
        let mut existing = path;
        loop {
            match std::fs::symlink_metadata(existing) {
                Ok(_) => break,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    existing = existing.parent().ok_or_else(outside)?;
                }
                Err(e) => return Err(format!("'{}': {e}", path.display())),
            }
        }
        match std::fs::canonicalize(existing) {
            Ok(real) if self.contains_writable(&real) => Ok(()),
            Ok(_) => Err(format!(
                "'{}' resolves (through a symlink) outside the writable roots ({})",
                path.display(),
                self.describe_writable()
            )),
            Err(e) => Err(format!("'{}': {e}", path.display())),
        }
    }

    /// Checks an absolute, lexically normalized path: it must lie under a root as written
    /// and, when it exists, after following symlinks. The message never says whether a
    /// path outside the roots exists.
    pub fn check(&self, path: &Path) -> Result<(), DlpError> {
        self.read_refusal(path).map_err(DlpError::Access)
    }

    fn read_refusal(&self, path: &Path) -> Result<(), String> {
        let outside = || {
            format!(
                "'{}' is outside the data roots ({}); paths must be under a configured \
                 --data-root",
                path.display(),
                self.describe()
            )
        };
        if !path.is_absolute() || path.components().any(|c| c == Component::ParentDir) {
            return Err(outside());
        }
        if !self.contains(path) {
            return Err(outside());
        }
        match std::fs::canonicalize(path) {
            Ok(real) if self.contains(&real) => Ok(()),
            Ok(_) => Err(format!(
                "'{}' resolves (through a symlink) outside the data roots ({})",
                path.display(),
                self.describe()
            )),
            // Not there: the caller reports a missing path under the root. Any other
            // failure refuses the path.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                // A dangling symlink is not "missing": where it points is what counts.
                match std::fs::symlink_metadata(path) {
                    Ok(m) if m.file_type().is_symlink() => Err(format!(
                        "'{}' is a symlink to a missing target",
                        path.display()
                    )),
                    _ => Ok(()),
                }
            }
            Err(e) => Err(format!("'{}' cannot be checked: {e}", path.display())),
        }
    }
}

fn canonical_dirs(dirs: &[PathBuf], what: &str) -> Result<Vec<PathBuf>, String> {
    dirs.iter()
        .map(|r| {
            std::fs::canonicalize(r)
                .map_err(|e| format!("{what} {}: {e}", r.display()))
                .and_then(|c| {
                    if c.is_dir() {
                        Ok(c)
                    } else {
                        Err(format!("{what} {} is not a directory", r.display()))
                    }
                })
        })
        .collect()
}

/// Checks where a plan writes (`COPY TO`) against the writable roots, at planning, so the
/// error names the rule (the `file://` store refuses the write itself too).
pub fn check_plan_writes(
    plan: &datafusion::logical_expr::LogicalPlan,
) -> datafusion::common::Result<()> {
    use datafusion::common::tree_node::{TreeNode, TreeNodeRecursion};
    let Some(roots) = DataRoots::get() else {
        return Ok(());
    };
    plan.apply(|node| {
        if let datafusion::logical_expr::LogicalPlan::Copy(copy) = node {
            let refuse = |e: String| {
                datafusion::common::DataFusionError::Plan(format!(
                    "COPY TO '{}': {e}",
                    copy.output_url
                ))
            };
            if crate::storage::is_url(&copy.output_url) {
                ObjectUrl::parse(&copy.output_url)
                    .and_then(|u| check_write_url(&u))
                    .map_err(|e| refuse(e.to_string()))?;
                return Ok(TreeNodeRecursion::Continue);
            }
            let base = roots.write_base().unwrap_or(roots.base());
            let (_, path) = local_location(roots, base, &copy.output_url).map_err(refuse)?;
            roots
                .check_write(&path)
                .map_err(|e| refuse(e.to_string()))?;
        }
        Ok(TreeNodeRecursion::Continue)
    })?;
    Ok(())
}

/// The work directory of this process's logistic regression parts and tuner features:
/// `DLP_WORK_DIR`, else `<temp dir>/dlp-work`.
pub fn work_base() -> PathBuf {
    std::env::var_os("DLP_WORK_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| std::env::temp_dir().join("dlp-work"))
}

/// Whether runs keep their work files when they end (`DLP_KEEP_WORK` set, for debugging);
/// by default a fit's parts and a tuner's features are removed however the run ends.
pub fn keep_work() -> bool {
    std::env::var_os("DLP_KEEP_WORK").is_some()
}

/// Where a job writes files through its own plans (the tuner's features, written with
/// COPY TO): on a process with a writable root, `<first writable root>/.dlp-work`, the
/// only place such plans may write; else [`work_base`].
pub fn plan_work_base() -> PathBuf {
    match DataRoots::get().and_then(DataRoots::write_base) {
        Some(w) => w.join(".dlp-work"),
        None => work_base(),
    }
}

/// Checks a work file or directory a plan names (logistic regression parts): on a process
/// with roots it must lie under this process's work directory ([`work_base`]) or a
/// writable root, as written and after symlinks, so a hand-made plan can neither write nor
/// read files elsewhere.
pub fn check_work_path(path: &Path) -> Result<(), DlpError> {
    match DataRoots::get() {
        Some(roots) => roots.check_work(path),
        None => Ok(()),
    }
}

impl DataRoots {
    /// [`check_work_path`] against these roots.
    pub fn check_work(&self, path: &Path) -> Result<(), DlpError> {
        self.work_refusal(path)
            .map(|_| ())
            .map_err(DlpError::Access)
    }

    /// A work path reached through DataFusion's readers and writers (the `file://` store:
    /// tables, listings, `INSERT INTO`, `COPY TO`): [`DataRoots::check_work`], and inside a
    /// run's own directory of the work directory, named by the run's random id (`lr-`,
    /// `tune-` or `ft-` and 16 hex digits). Only a plan that was given that name reaches the
    /// files (the plugin's own plans); the work directory itself is never listed, read or
    /// written by a query, so a user cannot find or touch another user's runs.
    pub fn check_work_store(&self, path: &Path) -> Result<(), DlpError> {
        let base = self.work_refusal(path).map_err(DlpError::Access)?;
        let run = path
            .strip_prefix(&base)
            .ok()
            .and_then(|rel| rel.components().next())
            .and_then(|c| c.as_os_str().to_str());
        match run {
            Some(name) if is_run_dir_name(name) => Ok(()),
            _ => Err(DlpError::Access(format!(
                "'{}' is in the work directory ({}) but not inside a run's own directory: \
                 queries cannot list, read or write the work directory",
                path.display(),
                base.display()
            ))),
        }
    }

    /// [`DataRoots::check_work`]'s check; `Ok`: the work directory, after symlinks (the
    /// prefix a path under it was checked against).
    fn work_refusal(&self, path: &Path) -> Result<PathBuf, String> {
        let roots = self;
        let refuse = || {
            format!(
                "work path '{}' is outside this executor's work directory ({}) and the writable \
             roots ({})",
                path.display(),
                work_base().display(),
                roots.describe_writable()
            )
        };
        if !path.is_absolute() || path.components().any(|c| c == Component::ParentDir) {
            return Err(refuse());
        }
        let base = work_base();
        // A work directory in object storage leaves only the writable roots for local
        // work paths.
        let local_base = crate::storage::url_of_path(&base).is_none();
        // This process's own work directory: made here if it does not exist yet, so that a
        // first work path under it resolves (its nearest existing ancestor would otherwise
        // be the temp dir, outside it).
        if local_base {
            let _ = std::fs::create_dir_all(&base);
        }
        let base = std::fs::canonicalize(&base).unwrap_or(base);
        let under = |p: &Path| (local_base && p.starts_with(&base)) || roots.contains_writable(p);
        if !under(path) {
            return Err(refuse());
        }
        // the nearest existing ancestor, after symlinks
        let mut existing = path;
        while std::fs::symlink_metadata(existing).is_err() {
            existing = existing.parent().ok_or_else(refuse)?;
        }
        match std::fs::canonicalize(existing) {
            Ok(real) if under(&real) => Ok(base),
            _ => Err(refuse()),
        }
    }
}

/// Whether `name` is a run directory's name: `lr-`, `tune-` or `ft-` and at least 16 hex
/// digits (the runs' random ids).
fn is_run_dir_name(name: &str) -> bool {
    name.split_once('-').is_some_and(|(kind, id)| {
        matches!(kind, "lr" | "tune" | "ft")
            && id.len() >= 16
            && id.bytes().all(|b| b.is_ascii_hexdigit())
    })
}

/// A saved model's location as a client names it (`dlp.model.describe`, `dlp.model.save`,
/// `CREATE FUNCTION ... AS 'pipeline:...'`), resolved and checked for reading: a URL against
/// the roots; a local path without `..`, a relative one from the first writable root when it
/// names something there (a model this cluster saved for a client), else from the first
/// data root, as `read_images` takes relative paths.
pub fn resolve_input(path: &str) -> Result<PathBuf, DlpError> {
    if crate::storage::is_url(path) {
        let url = ObjectUrl::parse(path).map_err(|e| DlpError::Access(e.to_string()))?;
        check_url(&url)?;
        return Ok(PathBuf::from(url.to_string()));
    }
    let path = Path::new(path);
    if path.components().any(|c| c == Component::ParentDir) {
        return Err(DlpError::Access(format!(
            "'{}': '..' is not allowed",
            path.display()
        )));
    }
    let path = match DataRoots::get() {
        Some(r) if path.is_relative() => match r.write_base() {
            Some(w) if w.join(path).exists() => w.join(path),
            _ => r.base().join(path),
        },
        _ => path.to_path_buf(),
    };
    let path = std::path::absolute(&path)
        .map_err(|e| DlpError::Access(format!("'{}': {e}", path.display())))?;
    check_path(&path)?;
    Ok(path)
}

/// Checks an object-store URL to be read against the process's roots (nothing when
/// unrestricted).
pub fn check_url(url: &ObjectUrl) -> Result<(), DlpError> {
    match DataRoots::get() {
        Some(roots) => roots.check_url(url),
        None => Ok(()),
    }
}

/// Checks an object-store URL to be written against the process's roots (nothing when
/// unrestricted; never over http(s)).
pub fn check_write_url(url: &ObjectUrl) -> Result<(), DlpError> {
    if !url.writable() {
        return Err(DlpError::Access(format!(
            "'{url}': http(s) URLs are read-only"
        )));
    }
    match DataRoots::get() {
        Some(roots) => roots.check_write_url(url),
        None => Ok(()),
    }
}

/// Checks a work URL a plan names (logistic regression parts in object storage): under
/// this process's work directory (`DLP_WORK_DIR` as a URL) or an object-store writable
/// root; unrestricted without roots.
pub fn check_work_url(url: &ObjectUrl) -> Result<(), DlpError> {
    let Some(roots) = DataRoots::get() else {
        return Ok(());
    };
    let base = work_base();
    let in_work = crate::storage::url_of_path(&base).is_some_and(|b| url.starts_with(&b));
    if in_work || roots.check_write_url(url).is_ok() {
        Ok(())
    } else {
        Err(DlpError::Access(format!(
            "work path '{url}' is outside this executor's work directory ({}) and the \
             writable roots ({})",
            base.display(),
            roots.describe_writable()
        )))
    }
}

/// Checks a path to be written against the process's roots (nothing when unrestricted).
pub fn check_write_path(path: &Path) -> Result<(), DlpError> {
    match DataRoots::get() {
        Some(roots) => roots.check_write(path),
        None => Ok(()),
    }
}

/// Registers the process's `file://` store on `runtime` when it has roots.
pub fn register_store(runtime: &datafusion::execution::runtime_env::RuntimeEnv) {
    if let Some(store) = store::RootedFileSystem::for_process() {
        let url = url::Url::parse("file://").expect("file:// is a URL");
        runtime.register_object_store(&url, store);
    }
}

/// Checks `path` against the process's roots (nothing when unrestricted).
pub fn check_path(path: &Path) -> Result<(), DlpError> {
    match DataRoots::get() {
        Some(roots) => roots.check(path),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_must_stay_under_the_roots() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("data");
        let outside = dir.path().join("secret");
        std::fs::create_dir_all(root.join("flowers")).unwrap();
        std::fs::create_dir_all(&outside).unwrap();
        std::fs::write(outside.join("key.jpg"), b"x").unwrap();
        std::os::unix::fs::symlink(&outside, root.join("escape")).unwrap();
        std::os::unix::fs::symlink(root.join("flowers"), root.join("inside")).unwrap();
        let roots = DataRoots::new(std::slice::from_ref(&root)).unwrap();
        let root = std::fs::canonicalize(&root).unwrap();
        assert!(roots.check(&root.join("flowers")).is_ok());
        assert!(
            roots.check(&root.join("inside")).is_ok(),
            "symlink within the root"
        );
        assert!(roots.check(&root.join("not-yet-there")).is_ok());
        let e = roots
            .check(&root.join("escape/key.jpg"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("through a symlink"), "{e}");
        let e = roots
            .check(Path::new("/etc/passwd"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("outside the data roots"), "{e}");
        assert!(
            roots.check(&root.join("../secret")).is_err(),
            "unnormalized .."
        );
        assert!(roots.check(Path::new("flowers")).is_err(), "relative");
        // a sibling whose name starts like the root
        let e = roots
            .check(&PathBuf::from(format!("{}-other/x", root.display())))
            .unwrap_err()
            .to_string();
        assert!(e.contains("outside"), "{e}");
        assert!(DataRoots::new(&[dir.path().join("missing")]).is_err());

        // table locations, as DataFusion parses them
        let paths = location_paths(&roots, "flowers/*.parquet").unwrap();
        assert_eq!(paths, vec![root.join("flowers")]);
        assert!(location_paths(&roots, "s3://bucket/x").is_err());
        assert!(location_paths(&roots, "http://127.0.0.1/x").is_err());
        let escape = location_paths(&roots, "escape/*.csv").unwrap();
        assert!(escape.iter().any(|p| roots.check(p).is_err()), "{escape:?}");
        // every spelling of /etc lands on /etc and is refused
        for spelling in [
            "/etc/passwd",
            "File:/etc/passwd",
            "FILE:///etc/passwd",
            " file:/etc/passwd",
            "file://localhost/etc/passwd",
            "file:///%65tc/passwd",
            "flowers/../../../../../../etc/passwd",
            "file:///tmp/../etc/passwd",
        ] {
            let refused = match location_paths(&roots, spelling) {
                Err(_) => true,
                Ok(paths) => paths.iter().any(|p| roots.check(p).is_err()),
            };
            assert!(refused, "{spelling:?} is let through");
        }
        assert!(location_paths(&roots, "file://attacker.example/etc/passwd").is_err());
    }

    #[test]
    fn writes_need_a_writable_root() {
        let dir = tempfile::tempdir().unwrap();
        let base = std::fs::canonicalize(dir.path()).unwrap();
        let (data, out) = (base.join("data"), base.join("out"));
        std::fs::create_dir_all(&data).unwrap();
        std::fs::create_dir_all(&out).unwrap();
        std::os::unix::fs::symlink(&data, out.join("back")).unwrap();
        let roots = DataRoots::new(std::slice::from_ref(&data)).unwrap();
        let e = roots
            .check_write(&data.join("x.csv"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("--writable-root"), "{e}");
        let roots = roots.with_writable(std::slice::from_ref(&out)).unwrap();
        assert!(roots.check_write(&out.join("new/dir/x.csv")).is_ok());
        assert!(roots.check_write(&out.join("back/x.csv")).is_err());
        assert!(roots.check_write(&out.join("../data/x.csv")).is_err());
        assert!(
            roots.check(&out.join("x.csv")).is_ok(),
            "writable roots are readable"
        );
        assert!(DataRoots::from_flags(&[], &[]).unwrap().is_none());
    }
}

/// `CREATE EXTERNAL TABLE` under data roots: the location must be a local path (or
/// `file:` URI) under a root; the real factory does the rest.
#[derive(Debug)]
pub struct CheckedTableFactory {
    inner: std::sync::Arc<dyn datafusion::catalog::TableProviderFactory>,
}

impl CheckedTableFactory {
    /// Wraps a factory.
    pub fn new(inner: std::sync::Arc<dyn datafusion::catalog::TableProviderFactory>) -> Self {
        Self { inner }
    }
}

/// A location as DataFusion will read it (table locations, `COPY TO` outputs), made
/// absolute: relative locations are taken from `base` (DataFusion would take them from the
/// process's working directory). Returns the location to hand on and the local path it
/// names (its prefix before any glob), parsed once with DataFusion's `ListingTableUrl`.
/// `Err` for anything that is not a local path, or that DataFusion would not parse.
fn local_location(
    roots: &DataRoots,
    base: &Path,
    location: &str,
) -> Result<(String, PathBuf), String> {
    use datafusion::datasource::listing::ListingTableUrl;
    let refuse = |why: &str| {
        format!(
            "location '{location}': {why}; only local paths under the data roots ({}) are \
             allowed",
            roots.describe()
        )
    };
    let is_url = match url::Url::parse(location) {
        Ok(u) => u.scheme().len() > 1,
        Err(e) if location.contains("://") => {
            return Err(refuse(&format!("not a valid URL ({e})")));
        }
        Err(_) => false,
    };
    let candidate = if is_url || Path::new(location).is_absolute() {
        location.to_string()
    } else {
        // Relative (or a bare Windows-like drive): under the base.
        if location.trim_start().starts_with('/') {
            return Err(refuse("leading whitespace before an absolute path"));
        }
        base.join(location).to_string_lossy().into_owned()
    };
    let url = ListingTableUrl::parse(&candidate).map_err(|e| refuse(&e.to_string()))?;
    if url.scheme() != "file" {
        return Err(refuse(&format!("scheme '{}'", url.scheme())));
    }
    let parsed: &url::Url = url.as_ref();
    if let Some(host) = parsed.host_str()
        && !host.is_empty()
        && host != "localhost"
    {
        return Err(refuse(&format!("host '{host}'")));
    }
    let prefix = parsed
        .to_file_path()
        .map_err(|_| refuse("not a local path"))?;
    // `to_file_path` percent-decodes; `..` is resolved by the URL parser already, which
    // is what DataFusion reads; a lexical check is kept for paths that bypass it.
    if prefix.components().any(|c| c == Component::ParentDir) {
        return Err(refuse("'..' is not allowed"));
    }
    Ok((candidate, prefix))
}

/// The paths a table location reads (its prefix: a glob's matches are checked where they
/// are opened).
#[cfg(test)]
fn location_paths(roots: &DataRoots, location: &str) -> Result<Vec<PathBuf>, String> {
    local_location(roots, roots.base(), location).map(|(_, prefix)| vec![prefix])
}

#[async_trait::async_trait]
impl datafusion::catalog::TableProviderFactory for CheckedTableFactory {
    async fn create(
        &self,
        state: &dyn datafusion::catalog::Session,
        cmd: &datafusion::logical_expr::CreateExternalTable,
    ) -> datafusion::common::Result<std::sync::Arc<dyn datafusion::catalog::TableProvider>> {
        let Some(roots) = DataRoots::get() else {
            return self.inner.create(state, cmd).await;
        };
        let mut checked = cmd.clone();
        checked.locations.clear();
        for location in &cmd.locations {
            if crate::storage::is_url(location) {
                let url = ObjectUrl::parse(location)
                    .and_then(|u| roots.check_url(&u).map(|_| u))
                    .map_err(|e| e.context(format!("table {}", cmd.name)))?;
                checked.locations.push(url.to_string());
                continue;
            }
            let (resolved, path) = local_location(roots, roots.base(), location)
                .map_err(|e| datafusion::common::DataFusionError::Plan(format!("table {e}")))?;
            roots.check(&path).map_err(|e| {
                datafusion::common::DataFusionError::Plan(format!("table {}: {e}", cmd.name))
            })?;
            checked.locations.push(resolved);
        }
        self.inner.create(state, &checked).await
    }
}

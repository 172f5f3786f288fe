//! Data access control: with data roots configured (`--data-root` on the scheduler and the
//! executors), every file the plugin reads for a client must resolve, after `..` and
//! symlinks, under one of them. Relative paths are taken from the first root. Without
//! roots (the embedded default, a developer's machine) nothing is restricted.

use std::path::{Component, Path, PathBuf};
use std::sync::OnceLock;

/// The configured roots, canonical.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataRoots {
    roots: Vec<PathBuf>,
}

static ROOTS: OnceLock<DataRoots> = OnceLock::new();

impl DataRoots {
    /// Roots from existing directories (canonicalized: symlinked roots are followed once,
    /// here).
    pub fn new(roots: &[PathBuf]) -> Result<Self, String> {
        if roots.is_empty() {
            return Err("no data roots given".into());
        }
        let roots = roots
            .iter()
            .map(|r| {
                std::fs::canonicalize(r)
                    .map_err(|e| format!("data root {}: {e}", r.display()))
                    .and_then(|c| {
                        if c.is_dir() {
                            Ok(c)
                        } else {
                            Err(format!("data root {} is not a directory", r.display()))
                        }
                    })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self { roots })
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
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// Where a relative path is taken from.
    pub fn base(&self) -> &Path {
        &self.roots[0]
    }

    fn contains(&self, path: &Path) -> bool {
        self.roots.iter().any(|r| path.starts_with(r))
    }

    /// Checks an absolute, lexically normalized path: it must lie under a root as written
    /// and, when it exists, after following symlinks. The message never says whether a
    /// path outside the roots exists.
    pub fn check(&self, path: &Path) -> Result<(), String> {
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
            // Not there: the caller reports a missing path under the root.
            Err(_) => Ok(()),
        }
    }
}

/// Checks `path` against the process's roots (nothing when unrestricted).
pub fn check_path(path: &Path) -> Result<(), String> {
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
        let e = roots.check(&root.join("escape/key.jpg")).unwrap_err();
        assert!(e.contains("through a symlink"), "{e}");
        let e = roots.check(Path::new("/etc/passwd")).unwrap_err();
        assert!(e.contains("outside the data roots"), "{e}");
        assert!(
            roots.check(&root.join("../secret")).is_err(),
            "unnormalized .."
        );
        assert!(roots.check(Path::new("flowers")).is_err(), "relative");
        // a sibling whose name starts like the root
        let e = roots
            .check(&PathBuf::from(format!("{}-other/x", root.display())))
            .unwrap_err();
        assert!(e.contains("outside"), "{e}");
        assert!(DataRoots::new(&[dir.path().join("missing")]).is_err());

        // table locations
        let paths = location_paths(&roots, "flowers/*.parquet").unwrap();
        assert_eq!(
            paths,
            vec![root.join("flowers/*.parquet"), root.join("flowers")]
        );
        assert!(location_paths(&roots, "s3://bucket/x").is_err());
        assert!(location_paths(&roots, "flowers/../../etc").is_err());
        let escape = location_paths(&roots, "escape/*.csv").unwrap();
        assert!(escape.iter().any(|p| roots.check(p).is_err()), "{escape:?}");
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

/// The directories a table location reads: the location itself and, for a glob, the
/// directory before its first wildcard.
fn location_paths(roots: &DataRoots, location: &str) -> Result<Vec<PathBuf>, String> {
    let local = if let Some(rest) = location.strip_prefix("file://") {
        rest.to_string()
    } else if let Some(rest) = location.strip_prefix("file:") {
        rest.to_string()
    } else if location.contains("://") {
        return Err(format!(
            "table location '{location}': only local paths under the data roots ({}) are \
             allowed",
            roots.describe()
        ));
    } else {
        location.to_string()
    };
    let local = percent_encoding::percent_decode_str(&local)
        .decode_utf8_lossy()
        .into_owned();
    let path = roots.base().join(&local);
    if path.components().any(|c| c == Component::ParentDir) {
        return Err(format!(
            "table location '{location}': '..' is not allowed under data roots ({})",
            roots.describe()
        ));
    }
    let mut out = vec![path.clone()];
    let s = path.to_string_lossy();
    if let Some(i) = s.find(['*', '?', '[', '{']) {
        let prefix = Path::new(&s[..i]);
        let dir = if s[..i].ends_with('/') {
            prefix.to_path_buf()
        } else {
            prefix.parent().map(Path::to_path_buf).unwrap_or_default()
        };
        out.push(dir);
    }
    Ok(out)
}

#[async_trait::async_trait]
impl datafusion::catalog::TableProviderFactory for CheckedTableFactory {
    async fn create(
        &self,
        state: &dyn datafusion::catalog::Session,
        cmd: &datafusion::logical_expr::CreateExternalTable,
    ) -> datafusion::common::Result<std::sync::Arc<dyn datafusion::catalog::TableProvider>> {
        if let Some(roots) = DataRoots::get() {
            for location in &cmd.locations {
                for path in location_paths(roots, location)
                    .map_err(datafusion::common::DataFusionError::Plan)?
                {
                    roots.check(&path).map_err(|e| {
                        datafusion::common::DataFusionError::Plan(format!(
                            "table {}: {e}",
                            cmd.name
                        ))
                    })?;
                }
            }
        }
        self.inner.create(state, cmd).await
    }
}

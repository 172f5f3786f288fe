//! The `file://` object store of a process with data roots: DataFusion's own local file
//! system, with every read checked against the data (and writable) roots and every write
//! against the writable roots, where the file is opened. Every reader and writer that goes
//! through DataFusion's object stores (Parquet, CSV, JSON and Arrow tables, `COPY TO`,
//! `INSERT INTO`, listings) is covered on the scheduler and on every executor, whatever the
//! plan's origin: a Flight SQL query, a Ballista client's own plan, a pipeline job.
//!
//! Listings follow symlinks (as `LocalFileSystem` does), so each listed file is checked
//! after resolving them: a symlink inside a root that leads out of it is an error, never a
//! silently skipped or silently read file.

use std::fmt;
use std::ops::Range;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::{BoxStream, StreamExt};
use object_store::local::LocalFileSystem;
use object_store::path::Path as StorePath;
use object_store::{
    CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore,
    PutMultipartOptions, PutOptions, PutPayload, PutResult, RenameOptions, Result,
};

use super::DataRoots;

/// `LocalFileSystem` confined to the roots.
#[derive(Debug)]
pub struct RootedFileSystem {
    inner: LocalFileSystem,
    roots: DataRoots,
}

impl fmt::Display for RootedFileSystem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RootedFileSystem({})", self.roots.describe())
    }
}

fn local(location: &StorePath) -> std::path::PathBuf {
    // LocalFileSystem without a prefix maps `a/b` to `/a/b` (percent-decoded).
    std::path::PathBuf::from(format!("/{}", location.as_ref()))
}

fn denied(location: &StorePath, message: crate::error::DlpError) -> object_store::Error {
    object_store::Error::PermissionDenied {
        path: location.to_string(),
        source: message.into(),
    }
}

impl RootedFileSystem {
    /// The store for `roots`.
    pub fn new(roots: DataRoots) -> Self {
        Self {
            inner: LocalFileSystem::new(),
            roots,
        }
    }

    /// The process's store, when it has roots.
    pub fn for_process() -> Option<Arc<dyn ObjectStore>> {
        DataRoots::get().map(|r| Arc::new(Self::new(r.clone())) as Arc<dyn ObjectStore>)
    }

    /// Reads go under a data or writable root, or inside a run's own directory of the
    /// process's work directory ([`DataRoots::check_work_store`]).
    fn read(&self, location: &StorePath) -> Result<()> {
        let path = local(location);
        self.roots
            .check(&path)
            .or_else(|e| self.roots.check_work_store(&path).map_err(|_| e))
            .map_err(|e| denied(location, e))
    }

    /// Writes go under a writable root, or inside a run's own directory of the process's
    /// work directory (the tuner's features; random names).
    fn write(&self, location: &StorePath) -> Result<()> {
        let path = local(location);
        self.roots
            .check_write(&path)
            .or_else(|e| self.roots.check_work_store(&path).map_err(|_| e))
            .map_err(|e| denied(location, e))
    }

    fn listed(&self, meta: Result<ObjectMeta>) -> Result<ObjectMeta> {
        let meta = meta?;
        self.read(&meta.location)?;
        Ok(meta)
    }
}

#[async_trait]
impl ObjectStore for RootedFileSystem {
    async fn put_opts(
        &self,
        location: &StorePath,
        payload: PutPayload,
        opts: PutOptions,
    ) -> Result<PutResult> {
        self.write(location)?;
        self.inner.put_opts(location, payload, opts).await
    }

    async fn put_multipart_opts(
        &self,
        location: &StorePath,
        opts: PutMultipartOptions,
    ) -> Result<Box<dyn MultipartUpload>> {
        self.write(location)?;
        self.inner.put_multipart_opts(location, opts).await
    }

    async fn get_opts(&self, location: &StorePath, options: GetOptions) -> Result<GetResult> {
        self.read(location)?;
        self.inner.get_opts(location, options).await
    }

    async fn get_ranges(&self, location: &StorePath, ranges: &[Range<u64>]) -> Result<Vec<Bytes>> {
        self.read(location)?;
        self.inner.get_ranges(location, ranges).await
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, Result<StorePath>>,
    ) -> BoxStream<'static, Result<StorePath>> {
        let roots = self.roots.clone();
        let checked = locations
            .map(move |l| {
                let l = l?;
                roots.check_write(&local(&l)).map_err(|e| denied(&l, e))?;
                Ok(l)
            })
            .boxed();
        self.inner.delete_stream(checked)
    }

    fn list(&self, prefix: Option<&StorePath>) -> BoxStream<'static, Result<ObjectMeta>> {
        let root = StorePath::default();
        let dir = prefix.unwrap_or(&root);
        if let Err(e) = self.read(dir) {
            return futures::stream::once(async { Err(e) }).boxed();
        }
        let me = Self::new(self.roots.clone());
        self.inner.list(prefix).map(move |m| me.listed(m)).boxed()
    }

    async fn list_with_delimiter(&self, prefix: Option<&StorePath>) -> Result<ListResult> {
        let root = StorePath::default();
        self.read(prefix.unwrap_or(&root))?;
        let result = self.inner.list_with_delimiter(prefix).await?;
        for meta in &result.objects {
            self.read(&meta.location)?;
        }
        for dir in &result.common_prefixes {
            self.read(dir)?;
        }
        Ok(result)
    }

    async fn copy_opts(
        &self,
        from: &StorePath,
        to: &StorePath,
        options: CopyOptions,
    ) -> Result<()> {
        self.read(from)?;
        self.write(to)?;
        self.inner.copy_opts(from, to, options).await
    }

    async fn rename_opts(
        &self,
        from: &StorePath,
        to: &StorePath,
        options: RenameOptions,
    ) -> Result<()> {
        self.write(from)?;
        self.write(to)?;
        self.inner.rename_opts(from, to, options).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use object_store::ObjectStoreExt;

    #[tokio::test]
    async fn reads_and_writes_stay_in_their_roots() {
        let dir = tempfile::tempdir().unwrap();
        let base = std::fs::canonicalize(dir.path()).unwrap();
        let (data, out, secret) = (base.join("data"), base.join("out"), base.join("secret"));
        for d in [&data, &out, &secret] {
            std::fs::create_dir_all(d).unwrap();
        }
        std::fs::write(data.join("a.csv"), "x\n1\n").unwrap();
        std::fs::write(secret.join("key.csv"), "k\n42\n").unwrap();
        std::os::unix::fs::symlink(&secret, data.join("escape")).unwrap();
        std::os::unix::fs::symlink(&secret, out.join("escape")).unwrap();
        let roots = DataRoots::new(std::slice::from_ref(&data))
            .unwrap()
            .with_writable(std::slice::from_ref(&out))
            .unwrap();
        let store = RootedFileSystem::new(roots);
        // as DataFusion names local files: the absolute path, symlinks not resolved
        let p = |path: &std::path::Path| {
            StorePath::parse(path.to_string_lossy().trim_start_matches('/')).unwrap()
        };

        assert!(store.get(&p(&data.join("a.csv"))).await.is_ok());
        let e = store.get(&p(&secret.join("key.csv"))).await.unwrap_err();
        assert!(
            matches!(e, object_store::Error::PermissionDenied { .. }),
            "{e}"
        );
        assert!(e.to_string().contains("outside the data roots"), "{e}");
        let e = store
            .get(&p(&data.join("escape/key.csv")))
            .await
            .unwrap_err();
        assert!(e.to_string().contains("symlink"), "{e}");
        // a listing that meets a symlink leading out fails, naming no secret file
        let listed: Vec<_> = store.list(Some(&p(&data))).collect().await;
        assert!(listed.iter().any(|m| m.is_err()), "{listed:?}");
        let e = store
            .list(Some(&p(&base)))
            .next()
            .await
            .unwrap()
            .unwrap_err();
        assert!(e.to_string().contains("outside"), "{e}");

        // writes: only under the writable root, never through a symlink out of it
        assert!(
            store
                .put(&p(&out.join("r.csv")), "y\n".into())
                .await
                .is_ok()
        );
        for target in [
            data.join("w.csv"),
            secret.join("w.csv"),
            out.join("escape/w.csv"),
        ] {
            let e = store.put(&p(&target), "y\n".into()).await.unwrap_err();
            assert!(
                matches!(e, object_store::Error::PermissionDenied { .. }),
                "{e}"
            );
        }
        assert!(!secret.join("w.csv").exists() && !data.join("w.csv").exists());
        assert!(store.delete(&p(&data.join("a.csv"))).await.is_err());
        assert!(data.join("a.csv").exists());
        // reading what was written is allowed
        assert!(store.get(&p(&out.join("r.csv"))).await.is_ok());
    }

    /// The work directory (outside every root) is reached only inside a run's own
    /// directory, by its random name: never listed, and nothing outside run directories is
    /// read or written.
    #[tokio::test]
    async fn the_work_directory_only_by_a_runs_name() {
        let dir = tempfile::tempdir().unwrap();
        let data = std::fs::canonicalize(dir.path()).unwrap();
        let roots = DataRoots::new(std::slice::from_ref(&data)).unwrap();
        let store = RootedFileSystem::new(roots);
        let base = crate::access::work_base();
        std::fs::create_dir_all(&base).unwrap();
        let base = std::fs::canonicalize(&base).unwrap();
        let id = format!("{:016x}", rand::random::<u64>());
        let run = base.join(format!("lr-{id}"));
        let other = base.join(format!("victim-{id}"));
        for d in [&run, &other] {
            std::fs::create_dir_all(d).unwrap();
            std::fs::write(d.join("part-0.csv"), "x\n1\n").unwrap();
        }
        let p = |path: &std::path::Path| {
            StorePath::parse(path.to_string_lossy().trim_start_matches('/')).unwrap()
        };
        let result = async {
            assert!(store.get(&p(&run.join("part-0.csv"))).await.is_ok());
            let listed: Vec<_> = store.list(Some(&p(&run))).collect().await;
            assert_eq!(listed.len(), 1, "{listed:?}");
            assert!(listed[0].is_ok(), "{listed:?}");
            assert!(
                store
                    .put(&p(&run.join("part-1.csv")), "x\n2\n".into())
                    .await
                    .is_ok()
            );
            let e = store.get(&p(&other.join("part-0.csv"))).await.unwrap_err();
            assert!(
                matches!(e, object_store::Error::PermissionDenied { .. }),
                "{e}"
            );
            let e = store
                .list(Some(&p(&base)))
                .next()
                .await
                .unwrap()
                .unwrap_err();
            assert!(
                matches!(e, object_store::Error::PermissionDenied { .. }),
                "{e}"
            );
            assert!(store.list_with_delimiter(Some(&p(&base))).await.is_err());
            for target in [other.join("planted.csv"), base.join("planted.csv")] {
                let e = store.put(&p(&target), "y\n".into()).await.unwrap_err();
                assert!(
                    matches!(e, object_store::Error::PermissionDenied { .. }),
                    "{e}"
                );
                assert!(!target.exists());
            }
        }
        .await;
        for d in [&run, &other] {
            let _ = std::fs::remove_dir_all(d);
        }
        result
    }
}

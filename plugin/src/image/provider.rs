//! The image table: `read_images(...)` table function, `STORED AS IMAGE` factory and the
//! `TableProvider` whose scan is `ImageDecodeExec` over a built-in, sliceable leaf.

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::catalog::{Session, TableFunctionImpl, TableProviderFactory};
use datafusion::common::{Result, ScalarValue, exec_datafusion_err, plan_err};
use datafusion::datasource::TableProvider;
use datafusion::datasource::memory::MemorySourceConfig;
use datafusion::logical_expr::{CreateExternalTable, Expr, TableType};
use datafusion::physical_plan::ExecutionPlan;

use super::exec::ImageDecodeExec;
use super::listing::{ImageListing, check_listing, list_images};
use super::options::ImageReadOptions;
pub use super::scan::{ImageScanSpec, LABEL_COLUMN, LABEL_NAME_COLUMN, PATH_COLUMN, SIZE_COLUMN};

/// A table of images under a directory (or one file), with Spark's `ImageSchema`.
///
/// A table made by `read_images(...)` or [`ImageContextExt::read_images`](crate::session::ImageContextExt)
/// keeps the files its definition listed and scans exactly those (as a Spark DataFrame
/// keeps its file index): a query lists its folder or prefix once, not once to plan and
/// again to scan, and every run of one DataFrame reads the same files. The logical codec
/// carries that listing to the scheduler (up to [`MAX_CARRIED_LISTING_BYTES`]); executors
/// still check every file against the data roots. A `STORED AS IMAGE` table lists again
/// at every scan, so it sees files added since it was created.
#[derive(Debug, Clone)]
pub struct ImageTableProvider {
    spec: ImageScanSpec,
    schema: SchemaRef,
    listing: Option<Arc<ImageListing>>,
}

/// Largest encoded listing the logical codec carries to the scheduler (about 25,000
/// files); a bigger one is listed again by the scheduler's scan. Plans travel as gRPC
/// messages of at most 16 MiB.
pub const MAX_CARRIED_LISTING_BYTES: usize = 4 * 1024 * 1024;

impl ImageTableProvider {
    /// Lists `root` (discovering partition columns) and builds the table over those files.
    pub fn try_new(root: &str, options: ImageReadOptions) -> Result<Self> {
        options.validate()?;
        let listing = list_images(root, &options)?;
        Ok(Self::from_listing(root, options, listing))
    }

    /// Builds the table over the files of `listing` (which [`list_images`] made of `root`
    /// with `options`).
    pub fn from_listing(root: &str, options: ImageReadOptions, listing: ImageListing) -> Self {
        let mut table = Self::from_spec(ImageScanSpec {
            root: root.to_string(),
            options,
            partition_columns: listing.partition_columns.clone(),
            decode_cover: None,
        });
        table.listing = Some(Arc::new(listing));
        table
    }

    /// Builds the table from a spec without listing; its scans list.
    pub fn from_spec(spec: ImageScanSpec) -> Self {
        let schema = spec.table_schema();
        Self {
            spec,
            schema,
            listing: None,
        }
    }

    /// The same table over the files of `listing` (one the codec carried).
    pub fn with_listing(mut self, listing: ImageListing) -> Result<Self> {
        if listing.partition_columns != self.spec.partition_columns {
            return plan_err!(
                "read_images: the listing of '{}' has partition columns {:?}, the table {:?}",
                self.spec.root,
                listing.partition_columns,
                self.spec.partition_columns
            );
        }
        self.listing = Some(Arc::new(listing));
        Ok(self)
    }

    /// The same table, listing again at every scan (a catalog table that sees new files).
    pub fn listing_at_scan(mut self) -> Self {
        self.listing = None;
        self
    }

    /// The scan spec.
    pub fn spec(&self) -> &ImageScanSpec {
        &self.spec
    }

    /// The files this table scans, when it keeps them (see the type's documentation).
    pub fn listing(&self) -> Option<&Arc<ImageListing>> {
        self.listing.as_ref()
    }
}

#[async_trait]
impl TableProvider for ImageTableProvider {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        _filters: &[Expr],
        limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let mut listing = match &self.listing {
            Some(kept) => {
                check_listing(kept)?;
                ImageListing::clone(kept)
            }
            None => {
                let spec = self.spec.clone();
                tokio::task::spawn_blocking(move || list_images(&spec.root, &spec.options))
                    .await
                    .map_err(|e| exec_datafusion_err!("read_images: listing task failed: {e}"))??
            }
        };
        if listing.partition_columns != self.spec.partition_columns {
            return plan_err!(
                "read_images: the partition directories under '{}' changed since the table was \
                 defined (now {:?}, was {:?}); define the table again",
                self.spec.root,
                listing.partition_columns,
                self.spec.partition_columns
            );
        }
        if listing.empty_files > 0 {
            tracing::info!(
                root = %self.spec.root,
                empty_files = listing.empty_files,
                "skipped zero-byte files (no row, as Spark)"
            );
        }
        // Every file gives exactly one row unless invalid rows are dropped.
        if let (Some(n), false) = (limit, self.spec.options.drop_invalid) {
            listing.files.truncate(n);
        }
        let target = self
            .spec
            .options
            .num_partitions
            .unwrap_or_else(|| state.config().target_partitions());
        let num_partitions = target.min(listing.files.len()).max(1);
        let partitions = self.spec.file_list_partitions(&listing, num_partitions)?;
        let leaf =
            MemorySourceConfig::try_new_exec(&partitions, self.spec.file_list_schema(), None)?;
        let projection = projection
            .cloned()
            .unwrap_or_else(|| (0..self.schema.fields().len()).collect());
        Ok(Arc::new(ImageDecodeExec::try_new(
            leaf,
            self.spec.clone(),
            projection,
        )?))
    }
}

/// `read_images(path [, 'option=value' ...])`: the image source as a SQL table function.
#[derive(Debug, Default)]
pub struct ReadImagesFunction;

impl TableFunctionImpl for ReadImagesFunction {
    fn call_with_args(
        &self,
        args: datafusion::catalog::TableFunctionArgs,
    ) -> Result<Arc<dyn TableProvider>> {
        let exprs = args.exprs();
        let Some(first) = exprs.first() else {
            return plan_err!(
                "read_images: expected a path as the first argument, e.g. \
                 read_images('/data/flowers', 'withLabel=true')"
            );
        };
        let root = string_literal(first).ok_or_else(|| {
            datafusion::common::plan_datafusion_err!(
                "read_images: argument 1 (path) must be a string literal, got {first}"
            )
        })?;
        let mut options = ImageReadOptions::default();
        for (i, expr) in exprs.iter().enumerate().skip(1) {
            let text = string_literal(expr).ok_or_else(|| {
                datafusion::common::plan_datafusion_err!(
                    "read_images: argument {} must be a string literal 'option=value', got {expr}",
                    i + 1
                )
            })?;
            let Some((key, value)) = text.split_once('=') else {
                return plan_err!(
                    "read_images: argument {} must look like 'option=value' (e.g. \
                     'dropInvalid=true'), got '{text}'",
                    i + 1
                );
            };
            options.set(key, value)?;
        }
        options.validate()?;
        Ok(Arc::new(ImageTableProvider::try_new(&root, options)?))
    }
}

fn string_literal(expr: &Expr) -> Option<String> {
    match expr {
        Expr::Literal(ScalarValue::Utf8(Some(s)), _)
        | Expr::Literal(ScalarValue::LargeUtf8(Some(s)), _)
        | Expr::Literal(ScalarValue::Utf8View(Some(s)), _) => Some(s.clone()),
        _ => None,
    }
}

/// `CREATE EXTERNAL TABLE t STORED AS IMAGE LOCATION '...' OPTIONS (...)`.
#[derive(Debug, Default)]
pub struct ImageTableFactory;

#[async_trait]
impl TableProviderFactory for ImageTableFactory {
    async fn create(
        &self,
        _state: &dyn Session,
        cmd: &CreateExternalTable,
    ) -> Result<Arc<dyn TableProvider>> {
        let pairs: HashMap<&str, &str> = cmd
            .options
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let options = ImageReadOptions::from_pairs(pairs)?;
        let location = match cmd.locations.as_slice() {
            [one] => one.clone(),
            other => {
                return plan_err!(
                    "STORED AS IMAGE takes one LOCATION (a folder or file), got {}",
                    other.len()
                );
            }
        };
        let provider =
            tokio::task::spawn_blocking(move || ImageTableProvider::try_new(&location, options))
                .await
                .map_err(|e| exec_datafusion_err!("read_images: listing task failed: {e}"))??;
        Ok(Arc::new(provider.listing_at_scan()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::physical_plan::collect;
    use datafusion::prelude::SessionContext;

    fn tulips() -> std::path::PathBuf {
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/data/flowers/tulips")
    }

    async fn rows(table: &ImageTableProvider) -> usize {
        let ctx = SessionContext::new();
        let plan = table.scan(&ctx.state(), None, &[], None).await.unwrap();
        collect(plan, ctx.task_ctx())
            .await
            .unwrap()
            .iter()
            .map(|b| b.num_rows())
            .sum()
    }

    #[tokio::test]
    async fn a_defined_table_scans_the_files_it_listed_a_catalog_table_lists_again() {
        let dir = tempfile::tempdir().unwrap();
        let mut jpegs = std::fs::read_dir(tulips())
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|x| x == "jpg"));
        for _ in 0..2 {
            let p = jpegs.next().unwrap();
            std::fs::copy(&p, dir.path().join(p.file_name().unwrap())).unwrap();
        }
        let root = dir.path().to_string_lossy().into_owned();
        let kept = ImageTableProvider::try_new(&root, ImageReadOptions::default()).unwrap();
        let relists = kept.clone().listing_at_scan();
        assert_eq!(kept.listing().unwrap().files.len(), 2);
        // A file added after the definition: only the catalog table's scan sees it.
        let p = jpegs.next().unwrap();
        std::fs::copy(&p, dir.path().join(p.file_name().unwrap())).unwrap();
        assert_eq!(rows(&kept).await, 2);
        assert_eq!(rows(&relists).await, 3);
        // A file removed: the kept listing still names it, and its row says why it is
        // invalid instead of vanishing.
        let first = kept.listing().unwrap().files[0].path.clone();
        std::fs::remove_file(&first).unwrap();
        assert_eq!(rows(&kept).await, 2);
        assert_eq!(rows(&relists).await, 2);
    }

    #[test]
    fn a_carried_listing_must_match_the_partition_columns() {
        let root = tulips().to_string_lossy().into_owned();
        let table = ImageTableProvider::try_new(&root, ImageReadOptions::default()).unwrap();
        let mut listing = ImageListing::clone(table.listing().unwrap());
        listing.partition_columns = vec!["year".into()];
        let err = table
            .clone()
            .listing_at_scan()
            .with_listing(listing)
            .unwrap_err()
            .to_string();
        assert!(err.contains("partition columns"), "{err}");
    }
}

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
use super::listing::list_images;
use super::options::ImageReadOptions;
pub use super::scan::{ImageScanSpec, LABEL_COLUMN, LABEL_NAME_COLUMN, PATH_COLUMN, SIZE_COLUMN};

/// A table of images under a directory (or one file), with Spark's `ImageSchema`.
#[derive(Debug, Clone)]
pub struct ImageTableProvider {
    spec: ImageScanSpec,
    schema: SchemaRef,
}

impl ImageTableProvider {
    /// Lists `root` once to discover partition columns, and builds the table.
    pub fn try_new(root: &str, options: ImageReadOptions) -> Result<Self> {
        options.validate()?;
        let listing = list_images(root, &options)?;
        Ok(Self::from_spec(ImageScanSpec {
            root: root.to_string(),
            options,
            partition_columns: listing.partition_columns,
        }))
    }

    /// Builds the table from a spec (what the codec decodes) without listing.
    pub fn from_spec(spec: ImageScanSpec) -> Self {
        let schema = spec.table_schema();
        Self { spec, schema }
    }

    /// The scan spec.
    pub fn spec(&self) -> &ImageScanSpec {
        &self.spec
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
        let spec = self.spec.clone();
        let mut listing =
            tokio::task::spawn_blocking(move || list_images(&spec.root, &spec.options))
                .await
                .map_err(|e| exec_datafusion_err!("read_images: listing task failed: {e}"))??;
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
        Ok(Arc::new(provider))
    }
}

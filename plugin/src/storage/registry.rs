//! DataFusion's object-store registry with the plugin's stores: `file://` (rooted when the
//! process has data roots) and registered stores as DataFusion's default registry keeps
//! them, and every `s3://`, `gs://`, `az://`, `http(s)://` bucket made on first use from
//! the process's storage settings ([`super::store`]), so Parquet / CSV tables and `COPY TO`
//! reach the same buckets as `read_images` on the client, the scheduler and every executor.

use std::sync::Arc;

use datafusion::common::{DataFusionError, Result};
use datafusion::execution::object_store::{DefaultObjectStoreRegistry, ObjectStoreRegistry};
use datafusion::execution::runtime_env::{RuntimeEnv, RuntimeEnvBuilder};
use object_store::ObjectStore;
use url::Url;

use super::ObjectUrl;

/// See the module documentation.
#[derive(Debug, Default)]
pub struct DlpObjectStoreRegistry {
    inner: DefaultObjectStoreRegistry,
}

impl ObjectStoreRegistry for DlpObjectStoreRegistry {
    fn register_store(
        &self,
        url: &Url,
        store: Arc<dyn ObjectStore>,
    ) -> Option<Arc<dyn ObjectStore>> {
        self.inner.register_store(url, store)
    }

    fn deregister_store(&self, url: &Url) -> Result<Arc<dyn ObjectStore>> {
        self.inner.deregister_store(url)
    }

    fn get_store(&self, url: &Url) -> Result<Arc<dyn ObjectStore>> {
        if let Ok(store) = self.inner.get_store(url) {
            return Ok(store);
        }
        if !super::is_url(url.as_str()) {
            return self.inner.get_store(url);
        }
        let parsed = ObjectUrl::parse(url.as_str()).map_err(DataFusionError::from)?;
        // With data roots, DataFusion's own readers and writers reach only the buckets
        // that hold a root (the plugin's readers check the whole prefix).
        if let Some(roots) = crate::access::DataRoots::get()
            && !roots.allows_bucket(&parsed)
        {
            return Err(DataFusionError::Plan(format!(
                "'{}' is outside the data roots ({})",
                parsed.store_key(),
                roots.describe()
            )));
        }
        let store = super::store(&parsed).map_err(DataFusionError::from)?;
        self.inner.register_store(url, store.clone());
        Ok(store)
    }
}

/// `runtime` with [`DlpObjectStoreRegistry`] in place of its registry (the `file://` store
/// registered again, rooted when the process has data roots).
pub fn with_plugin_stores(runtime: &RuntimeEnv) -> Result<Arc<RuntimeEnv>> {
    let runtime = RuntimeEnvBuilder::from_runtime_env(runtime)
        .with_object_store_registry(Arc::new(DlpObjectStoreRegistry::default()))
        .build()?;
    crate::access::register_store(&runtime);
    Ok(Arc::new(runtime))
}

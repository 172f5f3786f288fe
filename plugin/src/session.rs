//! The one place that builds sessions: config, state, function registry and codecs for the
//! client, the scheduler and the executors (standalone and cluster alike).

use std::sync::Arc;

use ballista::prelude::{SessionConfigExt, SessionContextExt};
use ballista_core::registry::BallistaFunctionRegistry;
use ballista_executor::executor_process::ExecutorProcessConfig;
use ballista_scheduler::config::SchedulerConfig;
use datafusion::common::Result;
use datafusion::dataframe::DataFrame;
use datafusion::execution::SessionStateBuilder;
use datafusion::execution::context::SessionState;
use datafusion::prelude::{SessionConfig, SessionContext};
use datafusion_proto::logical_plan::LogicalExtensionCodec;
use datafusion_proto::physical_plan::PhysicalExtensionCodec;

use crate::codec::{PluginLogicalCodec, PluginPhysicalCodec};
use crate::image::{ImageReadOptions, ImageTableFactory, ImageTableProvider, ReadImagesFunction};
use crate::torch::PluginQueryPlanner;

/// Name of the image table function.
pub const READ_IMAGES: &str = "read_images";
/// `STORED AS` name of the image table factory.
pub const IMAGE_FORMAT: &str = "IMAGE";

/// The plugin's logical codec.
pub fn logical_codec() -> Arc<dyn LogicalExtensionCodec> {
    Arc::new(PluginLogicalCodec::default())
}

/// The plugin's physical codec.
pub fn physical_codec() -> Arc<dyn PhysicalExtensionCodec> {
    Arc::new(PluginPhysicalCodec::default())
}

/// Session config for every process: Ballista's defaults plus the plugin codecs and the
/// `dlp.*` settings ([`crate::config::DlpOptions`]).
pub fn session_config() -> SessionConfig {
    SessionConfig::new_with_ballista()
        .with_option_extension(crate::config::DlpOptions::default())
        .with_information_schema(true)
        .with_ballista_logical_extension_codec(logical_codec())
        .with_ballista_physical_extension_codec(physical_codec())
}

/// Session state for a config: Ballista's default functions and optimizer rules plus the
/// plugin's table functions and table factories. Used as the scheduler's session builder
/// and as the client's state before it is upgraded for Ballista.
pub fn session_state(config: SessionConfig) -> Result<SessionState> {
    let state = ballista_core::utils::default_session_builder(config)?;
    let state = SessionStateBuilder::new_from_existing(state)
        .with_query_planner(Arc::new(PluginQueryPlanner))
        .with_function_factory(Some(Arc::new(crate::sql::functions::ModelFunctionFactory)))
        .build();
    with_plugin(state)
}

fn with_plugin(state: SessionState) -> Result<SessionState> {
    // The plugin's object stores (s3://, gs://, ...; with data roots, the rooted file://
    // store that confines DataFusion's own readers and writers to them).
    let runtime = crate::storage::registry::with_plugin_stores(state.runtime_env())?;
    let mut state = SessionStateBuilder::new_from_existing(state)
        .with_runtime_env(runtime)
        .build();
    state.register_udtf(READ_IMAGES, Arc::new(ReadImagesFunction));
    state
        .table_factories_mut()
        .insert(IMAGE_FORMAT.to_string(), Arc::new(ImageTableFactory));
    if crate::access::DataRoots::get().is_some() {
        // CREATE EXTERNAL TABLE reads only under the data roots.
        for factory in state.table_factories_mut().values_mut() {
            *factory = Arc::new(crate::access::CheckedTableFactory::new(factory.clone()));
        }
    }
    crate::sql::register(&mut state);
    Ok(state)
}

/// The plugin's scalar functions ([`crate::sql::udfs`]).
pub fn plugin_udfs() -> Vec<datafusion::logical_expr::ScalarUDF> {
    crate::sql::udfs()
}

/// Re-registers the plugin's scalar functions on a client context:
/// `upgrade_for_ballista` drops functions registered in the state before it.
pub(crate) fn register_client_udfs(ctx: &SessionContext) {
    for udf in plugin_udfs() {
        ctx.register_udf(udf);
    }
}

/// Functions the executors resolve by name (DataFusion's incl. nested ones, and the plugin's).
pub fn function_registry() -> Result<BallistaFunctionRegistry> {
    Ok(BallistaFunctionRegistry::from(&session_state(
        session_config(),
    )?))
}

/// Applies the plugin to a scheduler config parsed from the upstream flags.
pub fn scheduler_config(base: SchedulerConfig) -> SchedulerConfig {
    SchedulerConfig {
        override_logical_codec: Some(logical_codec()),
        override_physical_codec: Some(physical_codec()),
        override_session_builder: Some(Arc::new(session_state)),
        override_config_producer: Some(Arc::new(session_config)),
        ..base
    }
}

/// Applies the plugin to an executor config parsed from the upstream flags.
pub fn executor_config(base: ExecutorProcessConfig) -> Result<ExecutorProcessConfig> {
    // Ballista's default runtime (spill files in the work dir), with the plugin's object
    // stores (the rooted `file://` store when the process has data roots).
    let temp = base
        .work_dir
        .clone()
        .map(std::path::PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    let runtime_producer: ballista_core::RuntimeProducer = Arc::new(move |_| {
        let runtime = datafusion::execution::runtime_env::RuntimeEnvBuilder::new()
            .with_temp_file_path(temp.clone())
            .build()?;
        crate::storage::registry::with_plugin_stores(&runtime)
    });
    Ok(ExecutorProcessConfig {
        override_runtime_producer: Some(runtime_producer),
        override_logical_codec: Some(logical_codec()),
        override_physical_codec: Some(physical_codec()),
        override_function_registry: Some(Arc::new(function_registry()?)),
        override_config_producer: Some(Arc::new(executor_session_config)),
        ..base
    })
}

/// An executor's task config: [`session_config`], with the cluster token on the channels
/// its shuffle reads open to other executors when the cluster has a secret.
fn executor_session_config() -> SessionConfig {
    match crate::credentials::cluster_endpoint_override(None) {
        Some(f) => session_config().with_ballista_override_create_grpc_client_endpoint(f),
        None => session_config(),
    }
}

/// A client session on a remote scheduler (`df://host:port`).
pub async fn remote_context(url: &str) -> Result<SessionContext> {
    remote_context_with_config(url, session_config()).await
}

/// [`remote_context`] with a config built on [`session_config`] (e.g. with
/// `ballista.job.name` set).
pub async fn remote_context_with_config(
    url: &str,
    config: SessionConfig,
) -> Result<SessionContext> {
    let state = session_state(config)?;
    let ctx = SessionContext::remote_with_state(url, state).await?;
    register_client_udfs(&ctx);
    Ok(ctx)
}

/// A plain local DataFusion session with the plugin (no Ballista), for unit tests.
pub fn local_context() -> Result<SessionContext> {
    let config = SessionConfig::new()
        .with_information_schema(true)
        .with_option_extension(crate::config::DlpOptions::default());
    let state = SessionStateBuilder::new()
        .with_default_features()
        .with_config(config)
        .with_query_planner(Arc::new(PluginQueryPlanner))
        .with_function_factory(Some(Arc::new(crate::sql::functions::ModelFunctionFactory)))
        .build();
    Ok(SessionContext::new_with_state(with_plugin(state)?))
}

/// DataFrame entry point for the image source.
#[async_trait::async_trait]
pub trait ImageContextExt {
    /// Reads images under `path` into a DataFrame with Spark's `ImageSchema`.
    async fn read_images(&self, path: &str, options: ImageReadOptions) -> Result<DataFrame>;
}

#[async_trait::async_trait]
impl ImageContextExt for SessionContext {
    async fn read_images(&self, path: &str, options: ImageReadOptions) -> Result<DataFrame> {
        let path = path.to_string();
        let provider =
            tokio::task::spawn_blocking(move || ImageTableProvider::try_new(&path, options))
                .await
                .map_err(|e| datafusion::common::exec_datafusion_err!("listing failed: {e}"))??;
        self.read_table(Arc::new(provider))
    }
}

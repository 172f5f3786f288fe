//! Object storage: `s3://` (and `s3a://`), `gs://`, `az://` / `abfss://` and read-only
//! `http(s)://` through the `object_store` crate that DataFusion uses.
//!
//! * [`ObjectUrl`]: a checked URL (no user info, no query, no `.` / `..` segments), which
//!   is also what every message shows: it never holds a secret.
//! * [`store`]: one client per bucket and process, built from the standard environment
//!   (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`, `AWS_REGION`,
//!   `AWS_ENDPOINT_URL`, `AWS_ALLOW_HTTP`, web identity and instance credentials as
//!   `object_store` supports them; `GOOGLE_*`, `AZURE_*` likewise), then the bucket's own
//!   settings from the process's config file ([`StorageConfig::buckets`]), with bounded
//!   retries (backoff on throttling, 5xx and connection errors), and request and connect
//!   timeouts.
//! * [`registry::DlpObjectStoreRegistry`]: the same stores for DataFusion's own readers and
//!   writers (Parquet / CSV tables, `COPY TO`), on the client, the scheduler and every
//!   executor.
//! * Every call runs on one I/O runtime of the process ([`io`], [`io_blocking`]), so the
//!   HTTP connections of a store never outlive the runtime that made them, and blocking
//!   code (decoding threads, model loading) can wait on them.

pub mod registry;

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::{Arc, LazyLock, Mutex, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use object_store::path::Path as ObjPath;
use object_store::{
    ClientOptions, GetOptions, ObjectStore, PutOptions, PutPayload, RetryConfig,
    aws::AmazonS3Builder, azure::MicrosoftAzureBuilder, gcp::GoogleCloudStorageBuilder,
    http::HttpBuilder,
};
use serde::{Deserialize, Serialize};
use url::Url;

use crate::error::DlpError;

/// Tracing target of storage messages.
pub const LOG_TARGET: &str = "dlp_plugin::storage";

/// The `storage:` section of a process's config file (`dlp.yaml`), and the defaults of the
/// embedded cluster.
#[derive(Clone, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct StorageConfig {
    /// The GET concurrency unit: an image-reading task keeps
    /// [`StorageConfig::read_gets_in_flight`] GETs in flight (one object each); folder
    /// downloads and uploads run this many at once.
    pub max_concurrent_gets: usize,
    /// Seconds one request may take before it is abandoned (and retried).
    pub request_timeout_seconds: u64,
    /// Seconds to establish a connection.
    pub connect_timeout_seconds: u64,
    /// Retries of one request (throttling, 5xx, connection errors), with exponential
    /// backoff.
    pub max_retries: usize,
    /// Seconds after the first attempt past which a request is no longer retried.
    pub retry_timeout_seconds: u64,
    /// Settings per bucket, keyed by `s3://bucket` (or `gs://bucket`, `az://container`):
    /// `object_store` option names, e.g. `endpoint`, `region`, `allow_http`,
    /// `virtual_hosted_style_request`, `access_key_id`, `secret_access_key`. They override
    /// the environment for that bucket. Values are never logged.
    pub buckets: BTreeMap<String, BTreeMap<String, String>>,
}

impl Default for StorageConfig {
    fn default() -> Self {
        Self {
            max_concurrent_gets: 16,
            request_timeout_seconds: 30,
            connect_timeout_seconds: 5,
            max_retries: 10,
            retry_timeout_seconds: 120,
            buckets: BTreeMap::new(),
        }
    }
}

impl std::fmt::Debug for StorageConfig {
    // Bucket settings may hold keys: only their names are shown.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let buckets: BTreeMap<&String, Vec<&String>> = self
            .buckets
            .iter()
            .map(|(b, kv)| (b, kv.keys().collect()))
            .collect();
        f.debug_struct("StorageConfig")
            .field("max_concurrent_gets", &self.max_concurrent_gets)
            .field("request_timeout_seconds", &self.request_timeout_seconds)
            .field("connect_timeout_seconds", &self.connect_timeout_seconds)
            .field("max_retries", &self.max_retries)
            .field("retry_timeout_seconds", &self.retry_timeout_seconds)
            .field("buckets", &buckets)
            .finish()
    }
}

impl StorageConfig {
    /// The defaults with `DLP_STORAGE_MAX_CONCURRENT_GETS`, `DLP_STORAGE_REQUEST_TIMEOUT`,
    /// `DLP_STORAGE_CONNECT_TIMEOUT`, `DLP_STORAGE_MAX_RETRIES` and
    /// `DLP_STORAGE_RETRY_TIMEOUT` (seconds) applied: what a process without a config file
    /// (the embedded cluster of `dlp`) uses.
    pub fn from_env() -> Result<Self, DlpError> {
        let mut c = Self::default();
        let num = |key: &str| -> Result<Option<u64>, DlpError> {
            match std::env::var(key) {
                Ok(v) => v.trim().parse().map(Some).map_err(|_| {
                    DlpError::Config(format!("{key}: expected a whole number, found '{v}'"))
                }),
                Err(_) => Ok(None),
            }
        };
        if let Some(v) = num("DLP_STORAGE_MAX_CONCURRENT_GETS")? {
            c.max_concurrent_gets = v as usize;
        }
        if let Some(v) = num("DLP_STORAGE_REQUEST_TIMEOUT")? {
            c.request_timeout_seconds = v;
        }
        if let Some(v) = num("DLP_STORAGE_CONNECT_TIMEOUT")? {
            c.connect_timeout_seconds = v;
        }
        if let Some(v) = num("DLP_STORAGE_MAX_RETRIES")? {
            c.max_retries = v as usize;
        }
        if let Some(v) = num("DLP_STORAGE_RETRY_TIMEOUT")? {
            c.retry_timeout_seconds = v;
        }
        c.validate()?;
        Ok(c)
    }

    /// Checks the numbers and every bucket's keys (named in the error, never the values).
    pub fn validate(&self) -> Result<(), DlpError> {
        if self.max_concurrent_gets == 0 {
            return Err(DlpError::Config(
                "storage.maxConcurrentGets must be at least 1".into(),
            ));
        }
        if self.request_timeout_seconds == 0 || self.connect_timeout_seconds == 0 {
            return Err(DlpError::Config(
                "storage.requestTimeoutSeconds and connectTimeoutSeconds must be at least 1".into(),
            ));
        }
        for (bucket, settings) in &self.buckets {
            let url = ObjectUrl::parse(bucket)
                .map_err(|e| DlpError::Config(format!("storage.buckets: '{bucket}': {e}")))?;
            for key in settings.keys() {
                if !url.kind.accepts_key(key) {
                    return Err(DlpError::Config(format!(
                        "storage.buckets.'{bucket}': unknown setting '{key}' for {}:// (see \
                         object_store's {} config keys)",
                        url.url.scheme(),
                        url.kind.builder_name()
                    )));
                }
            }
        }
        Ok(())
    }
}

impl StorageConfig {
    /// GETs an image-reading task keeps in flight, one object each, across its chunks.
    pub fn read_gets_in_flight(&self) -> usize {
        2 * self.max_concurrent_gets.max(1)
    }

    /// The `storage:` section of a config file (`dlp.yaml`; other sections are the
    /// scheduler's business), [`StorageConfig::from_env`] when it has none.
    pub fn from_file(path: &Path) -> Result<Self, DlpError> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            DlpError::Config(format!(
                "cannot read the config file {}: {e}",
                path.display()
            ))
        })?;
        let value: serde_yaml::Value = if text.trim().is_empty() {
            serde_yaml::Value::Null
        } else {
            serde_yaml::from_str(&text).map_err(|e| {
                DlpError::Config(format!("invalid config file {}: {e}", path.display()))
            })?
        };
        match value.get("storage") {
            None => Self::from_env(),
            Some(section) => {
                let c: Self = serde_yaml::from_value(section.clone())
                    .map_err(|e| DlpError::Config(format!("{}: storage: {e}", path.display())))?;
                c.validate()
                    .map_err(|e| DlpError::Config(format!("{}: {e}", path.display())))?;
                Ok(c)
            }
        }
    }
}

/// A local folder for `dir`: itself, or for an object-store URL (`--model-dir
/// s3://bucket/models`) its copy in this process's cache ([`localize_dir`]).
pub fn localize_path(dir: PathBuf) -> Result<PathBuf, DlpError> {
    match url_of_path(&dir) {
        // The operator's own setting (a flag), not a client's path: no root applies.
        Some(url) => io_blocking(async move { localize_dir(&url).await }),
        None => Ok(dir),
    }
}

static CONFIG: OnceLock<StorageConfig> = OnceLock::new();

/// Sets the process's storage settings (once, at start-up, from the config file). Later
/// calls are refused.
pub fn configure(config: StorageConfig) -> Result<(), DlpError> {
    config.validate()?;
    CONFIG
        .set(config)
        .map_err(|_| DlpError::Config("the storage settings are already set".into()))
}

/// The process's storage settings: the config file's, else [`StorageConfig::from_env`],
/// else the defaults.
pub fn config() -> &'static StorageConfig {
    CONFIG.get_or_init(|| {
        StorageConfig::from_env().unwrap_or_else(|e| {
            tracing::warn!(target: LOG_TARGET, error = %e, "storage settings: using defaults");
            StorageConfig::default()
        })
    })
}

/// Which object store a URL needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Kind {
    S3,
    Gcs,
    Azure,
    Http,
}

impl Kind {
    fn of(scheme: &str) -> Option<Self> {
        match scheme {
            "s3" | "s3a" => Some(Self::S3),
            "gs" => Some(Self::Gcs),
            "az" | "abfs" | "abfss" | "azure" | "adl" => Some(Self::Azure),
            "http" | "https" => Some(Self::Http),
            _ => None,
        }
    }

    fn builder_name(self) -> &'static str {
        match self {
            Self::S3 => "AmazonS3ConfigKey",
            Self::Gcs => "GoogleConfigKey",
            Self::Azure => "AzureConfigKey",
            Self::Http => "ClientConfigKey",
        }
    }

    fn accepts_key(self, key: &str) -> bool {
        use std::str::FromStr;
        let k = key.to_ascii_lowercase();
        match self {
            Self::S3 => object_store::aws::AmazonS3ConfigKey::from_str(&k).is_ok(),
            Self::Gcs => object_store::gcp::GoogleConfigKey::from_str(&k).is_ok(),
            Self::Azure => object_store::azure::AzureConfigKey::from_str(&k).is_ok(),
            Self::Http => object_store::ClientConfigKey::from_str(&k).is_ok(),
        }
    }
}

/// Whether `s` is an object-store URL (`s3://`, `gs://`, ...), not a local path or
/// `file:` URI.
pub fn is_url(s: &str) -> bool {
    let s = s.trim();
    match s.split_once("://") {
        Some((scheme, _)) => Kind::of(&scheme.to_ascii_lowercase()).is_some(),
        None => false,
    }
}

/// [`is_url`] for a path that may carry a URL (`output.model: s3://...`).
pub fn url_of_path(path: &Path) -> Option<ObjectUrl> {
    let s = path.to_str()?;
    if is_url(s) {
        ObjectUrl::parse(s).ok()
    } else {
        None
    }
}

/// A checked object-store URL: a known scheme, a bucket, no user info, query or fragment
/// (credentials never travel in URLs, so none reaches a plan, a log or a message), and no
/// empty, `.` or `..` segment. Its text is safe to show.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct ObjectUrl {
    url: Url,
    kind: Kind,
}

impl std::fmt::Debug for ObjectUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.url)
    }
}

impl std::fmt::Display for ObjectUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.url.as_str())
    }
}

/// A URL with anything after the host that could be a secret cut off, for messages about
/// URLs that failed to parse.
fn redacted(s: &str) -> String {
    match s.split_once("://") {
        Some((scheme, rest)) => {
            let host = rest.split(['/', '?', '#']).next().unwrap_or("");
            let host = host.rsplit('@').next().unwrap_or(host);
            format!("{scheme}://{host}/...")
        }
        None => "<not a URL>".into(),
    }
}

impl ObjectUrl {
    /// Parses and checks a URL.
    pub fn parse(s: &str) -> Result<Self, DlpError> {
        let s = s.trim();
        let url = Url::parse(s)
            .map_err(|e| DlpError::Config(format!("'{}' is not a valid URL: {e}", redacted(s))))?;
        let kind = Kind::of(url.scheme()).ok_or_else(|| {
            DlpError::Config(format!(
                "'{}': unsupported scheme '{}'; expected s3://, s3a://, gs://, az://, abfss://, \
                 http:// or https://",
                redacted(s),
                url.scheme()
            ))
        })?;
        if !url.username().is_empty() || url.password().is_some() {
            return Err(DlpError::Config(format!(
                "'{}': credentials in a URL are refused (they would travel in plans and \
                 logs); use the AWS_* variables or the config file's storage.buckets",
                redacted(s)
            )));
        }
        if url.query().is_some() || url.fragment().is_some() {
            return Err(DlpError::Config(format!(
                "'{}': a query or fragment is refused in a storage URL (a signature or SAS \
                 token would travel in plans and logs); use the config file's storage.buckets",
                redacted(s)
            )));
        }
        let host = url.host_str().unwrap_or("");
        if host.is_empty() {
            return Err(DlpError::Config(format!(
                "'{}': no bucket; expected {}://bucket/prefix",
                redacted(s),
                url.scheme()
            )));
        }
        // The URL parser resolves `.` and `..` (also percent-encoded) itself: the raw text
        // is checked, so that a traversal is refused rather than silently resolved.
        let raw_path = s
            .split_once("://")
            .map(|(_, rest)| rest.split(['?', '#']).next().unwrap_or(""))
            .and_then(|rest| rest.split_once('/').map(|(_, p)| format!("/{p}")))
            .unwrap_or_default();
        let segments: Vec<&str> = raw_path.split('/').skip(1).collect();
        let last = segments.len().saturating_sub(1);
        for (i, seg) in segments.iter().enumerate() {
            let decoded = percent_encoding::percent_decode_str(seg).decode_utf8_lossy();
            // A trailing '/' (an empty last segment) marks a prefix; an empty segment
            // elsewhere, '.' and '..' are refused (object keys are taken literally).
            if (decoded.is_empty() && i != last) || decoded == "." || decoded == ".." {
                return Err(DlpError::Config(format!(
                    "'{s}': empty, '.' and '..' path segments are refused in a storage URL"
                )));
            }
        }
        Ok(Self { url, kind })
    }

    /// The URL text.
    pub fn as_str(&self) -> &str {
        self.url.as_str()
    }

    /// `scheme://bucket`: which store serves it.
    pub fn store_key(&self) -> String {
        let scheme = match self.url.scheme() {
            "s3a" => "s3",
            s => s,
        };
        match self.url.port() {
            Some(p) => format!("{scheme}://{}:{p}", self.host()),
            None => format!("{scheme}://{}", self.host()),
        }
    }

    /// The bucket (or container, or HTTP host).
    pub fn host(&self) -> &str {
        self.url.host_str().unwrap_or("")
    }

    /// Whether objects may be written here (not over plain `http(s)://`).
    pub fn writable(&self) -> bool {
        self.kind != Kind::Http
    }

    /// The object key (percent-decoded, without the leading '/' and a trailing one).
    pub fn key(&self) -> ObjPath {
        ObjPath::from_url_path(self.url.path()).unwrap_or_default()
    }

    /// The key as text ("" at the bucket's root).
    pub fn key_str(&self) -> String {
        self.key().to_string()
    }

    /// The URL of `key` in the same bucket.
    pub fn with_key(&self, key: &str) -> Self {
        let mut url = self.url.clone();
        let encoded: Vec<String> = key
            .split('/')
            .filter(|s| !s.is_empty())
            .map(|s| percent_encoding::utf8_percent_encode(s, SEGMENT).to_string())
            .collect();
        url.set_path(&format!("/{}", encoded.join("/")));
        Self {
            url,
            kind: self.kind,
        }
    }

    /// The URL of `name` (one or more '/'-separated segments) below this one.
    pub fn join(&self, name: &str) -> Self {
        let base = self.key_str();
        let name = name.trim_matches('/');
        if base.is_empty() {
            self.with_key(name)
        } else {
            self.with_key(&format!("{base}/{name}"))
        }
    }

    /// Whether this URL is `prefix` or lies below it (same store, whole segments).
    pub fn starts_with(&self, prefix: &ObjectUrl) -> bool {
        if self.store_key() != prefix.store_key() {
            return false;
        }
        let (k, p) = (self.key_str(), prefix.key_str());
        p.is_empty() || k == p || k.starts_with(&format!("{p}/"))
    }
}

/// Characters escaped in one path segment of a storage URL: those `java.net.URI` quotes
/// in a path (as `origin` has them for local files), and `/`.
const SEGMENT: &percent_encoding::AsciiSet = &crate::image::listing::URI_PATH.add(b'/');

static STORES: LazyLock<Mutex<HashMap<String, Arc<dyn ObjectStore>>>> =
    LazyLock::new(Default::default);

/// The store of `url`'s bucket (made once per process).
pub fn store(url: &ObjectUrl) -> Result<Arc<dyn ObjectStore>, DlpError> {
    let key = url.store_key();
    let mut stores = STORES.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(s) = stores.get(&key) {
        return Ok(s.clone());
    }
    let store = build_store(url, config())?;
    stores.insert(key, store.clone());
    Ok(store)
}

fn build_store(url: &ObjectUrl, c: &StorageConfig) -> Result<Arc<dyn ObjectStore>, DlpError> {
    use std::str::FromStr;
    let retry = RetryConfig {
        max_retries: c.max_retries,
        retry_timeout: Duration::from_secs(c.retry_timeout_seconds),
        ..Default::default()
    };
    // Timeouts as config keys (after the environment's settings, which a whole
    // `ClientOptions` would replace, `AWS_ALLOW_HTTP` among them).
    let timeouts = [
        (
            object_store::ClientConfigKey::Timeout,
            format!("{}s", c.request_timeout_seconds),
        ),
        (
            object_store::ClientConfigKey::ConnectTimeout,
            format!("{}s", c.connect_timeout_seconds),
        ),
    ];
    let client = ClientOptions::new()
        .with_timeout(Duration::from_secs(c.request_timeout_seconds))
        .with_connect_timeout(Duration::from_secs(c.connect_timeout_seconds));
    let bucket_url = url.store_key();
    let settings = c
        .buckets
        .iter()
        .find(|(b, _)| {
            ObjectUrl::parse(b)
                .map(|u| u.store_key() == bucket_url)
                .unwrap_or(false)
        })
        .map(|(_, s)| s.clone())
        .unwrap_or_default();
    let failed = |e: object_store::Error| {
        DlpError::Config(format!("cannot set up storage for {bucket_url}: {e}"))
    };
    let bad_key = |k: &str| {
        DlpError::Config(format!(
            "storage.buckets.'{bucket_url}': unknown setting '{k}'"
        ))
    };
    let store: Arc<dyn ObjectStore> = match url.kind {
        Kind::S3 => {
            let mut b = AmazonS3Builder::from_env()
                .with_url(format!("s3://{}", url.host()))
                .with_retry(retry);
            for (k, v) in &timeouts {
                b = b.with_config(object_store::aws::AmazonS3ConfigKey::Client(*k), v);
            }
            for (k, v) in &settings {
                let key = object_store::aws::AmazonS3ConfigKey::from_str(&k.to_ascii_lowercase())
                    .map_err(|_| bad_key(k))?;
                b = b.with_config(key, v);
            }
            Arc::new(b.build().map_err(failed)?)
        }
        Kind::Gcs => {
            let mut b = GoogleCloudStorageBuilder::from_env()
                .with_url(format!("gs://{}", url.host()))
                .with_retry(retry);
            for (k, v) in &timeouts {
                b = b.with_config(object_store::gcp::GoogleConfigKey::Client(*k), v);
            }
            for (k, v) in &settings {
                let key = object_store::gcp::GoogleConfigKey::from_str(&k.to_ascii_lowercase())
                    .map_err(|_| bad_key(k))?;
                b = b.with_config(key, v);
            }
            Arc::new(b.build().map_err(failed)?)
        }
        Kind::Azure => {
            let mut b = MicrosoftAzureBuilder::from_env()
                .with_url(bucket_url.clone())
                .with_retry(retry);
            for (k, v) in &timeouts {
                b = b.with_config(object_store::azure::AzureConfigKey::Client(*k), v);
            }
            for (k, v) in &settings {
                let key = object_store::azure::AzureConfigKey::from_str(&k.to_ascii_lowercase())
                    .map_err(|_| bad_key(k))?;
                b = b.with_config(key, v);
            }
            Arc::new(b.build().map_err(failed)?)
        }
        Kind::Http => {
            let mut client = client;
            for (k, v) in &settings {
                let key = object_store::ClientConfigKey::from_str(&k.to_ascii_lowercase())
                    .map_err(|_| bad_key(k))?;
                client = client.with_config(key, v);
            }
            Arc::new(
                HttpBuilder::new()
                    .with_url(bucket_url.clone())
                    .with_retry(retry)
                    .with_client_options(client.with_allow_http(true))
                    .build()
                    .map_err(failed)?,
            )
        }
    };
    tracing::debug!(target: LOG_TARGET, store = %bucket_url, settings = ?settings.keys().collect::<Vec<_>>(), "object store ready");
    Ok(store)
}

static IO: LazyLock<tokio::runtime::Runtime> = LazyLock::new(|| {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("dlp-io")
        .enable_all()
        .build()
        .expect("the storage I/O runtime starts")
});

/// Starts `f` on the process's storage I/O runtime; the task is aborted when the returned
/// guard is dropped.
pub(crate) fn spawn_io<F>(f: F) -> AbortOnDrop
where
    F: Future<Output = ()> + Send + 'static,
{
    AbortOnDrop(IO.spawn(f))
}

/// A task on the I/O runtime, aborted when this is dropped.
#[derive(Debug)]
pub(crate) struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Runs `f` on the process's storage I/O runtime and waits for it (from async code).
pub async fn io<F>(f: F) -> F::Output
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    match IO.spawn(f).await {
        Ok(v) => v,
        Err(e) => std::panic::resume_unwind(e.into_panic()),
    }
}

/// Runs `f` on the storage I/O runtime and blocks the calling thread until it is done:
/// for blocking code (decoding threads, model loading, file writers). Never call it from
/// an async task.
pub fn io_blocking<F>(f: F) -> F::Output
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    match futures::executor::block_on(IO.spawn(f)) {
        Ok(v) => v,
        Err(e) => std::panic::resume_unwind(e.into_panic()),
    }
}

/// A storage failure as a message that names the URL and what was expected (never a
/// secret: the URL is checked, and object_store's errors name only the request URL).
pub fn describe(op: &str, url: &ObjectUrl, e: &object_store::Error) -> String {
    let text = e.to_string();
    let refused = [
        "403 Forbidden",
        "SignatureDoesNotMatch",
        "InvalidAccessKeyId",
        "AccessDenied",
    ]
    .iter()
    .any(|s| text.contains(s));
    match e {
        object_store::Error::NotFound { .. } => format!("{op} {url}: no such object or prefix"),
        _ if text.contains("NoSuchBucket") => format!(
            "{op} {url}: the bucket '{}' does not exist (or is not visible with these \
             credentials)",
            url.host()
        ),
        _ if refused => format!(
            "{op} {url}: access denied; check the credentials (AWS_ACCESS_KEY_ID / \
             AWS_SECRET_ACCESS_KEY, the service account, or storage.buckets) and the \
             bucket's policy: {e}"
        ),
        object_store::Error::PermissionDenied { .. }
        | object_store::Error::Unauthenticated { .. } => format!(
            "{op} {url}: access denied; check the credentials (AWS_ACCESS_KEY_ID / \
             AWS_SECRET_ACCESS_KEY, the service account, or storage.buckets) and the \
             bucket's policy: {e}"
        ),
        other => format!("{op} {url}: {other}"),
    }
}

/// [`describe`] as a typed error: `NotFound` for a missing object, else `Storage`.
pub fn storage_error(op: &str, url: &ObjectUrl, e: &object_store::Error) -> DlpError {
    match e {
        object_store::Error::NotFound { .. } => DlpError::NotFound(describe(op, url, e)),
        _ => DlpError::Storage(describe(op, url, e)),
    }
}

/// Size of the object at `url`, `None` when there is none.
pub async fn head(url: &ObjectUrl) -> Result<Option<u64>, DlpError> {
    let (store, key, u) = (store(url)?, url.key(), url.clone());
    io(async move {
        let head = GetOptions {
            head: true,
            ..Default::default()
        };
        match store.get_opts(&key, head).await {
            Ok(r) => Ok(Some(r.meta.size)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(DlpError::Storage(describe("HEAD", &u, &e))),
        }
    })
    .await
}

/// The whole object at `url`, refused (before its body is read) when it is larger than
/// `limit` bytes.
pub async fn get(url: &ObjectUrl, limit: u64) -> Result<Bytes, DlpError> {
    io(get_here(url.clone(), limit)).await
}

/// [`get`] on the calling runtime, which must be the I/O runtime (a task started by
/// [`spawn_io`]).
pub(crate) async fn get_here(u: ObjectUrl, limit: u64) -> Result<Bytes, DlpError> {
    let (store, key) = (store(&u)?, u.key());
    let r = store
        .get_opts(&key, GetOptions::default())
        .await
        .map_err(|e| storage_error("GET", &u, &e))?;
    if r.meta.size > limit {
        return Err(DlpError::Limit(format!(
            "{u}: {} bytes, above the limit of {limit} bytes",
            r.meta.size
        )));
    }
    r.bytes()
        .await
        .map_err(|e| DlpError::Storage(describe("GET", &u, &e)))
}

/// Many objects at once, at most `concurrency` in flight; results in input order. The
/// whole batch runs as one task on the I/O runtime: it goes on while the caller is busy
/// elsewhere. (The image reader fetches row by row instead, on a task of its own.)
pub async fn get_many(
    urls: Vec<ObjectUrl>,
    limit: u64,
    concurrency: usize,
) -> Vec<Result<Bytes, DlpError>> {
    io(async move {
        futures::stream::iter(urls)
            .map(|u| get_here(u, limit))
            .buffered(concurrency.max(1))
            .collect()
            .await
    })
    .await
}

/// Writes `bytes` to `url` (one PUT; object stores make it visible whole or not at all).
pub async fn put(url: &ObjectUrl, bytes: Bytes) -> Result<(), DlpError> {
    if !url.writable() {
        return Err(DlpError::Access(format!(
            "{url}: http(s) URLs are read-only"
        )));
    }
    let (store, key, u) = (store(url)?, url.key(), url.clone());
    io(async move {
        store
            .put_opts(&key, PutPayload::from(bytes), PutOptions::default())
            .await
            .map(|_| ())
            .map_err(|e| DlpError::Storage(describe("PUT", &u, &e)))
    })
    .await
}

/// Every object under `prefix` (the prefix as a folder: `prefix/...`), with its size,
/// sorted by key. Listing pages through any number of objects.
pub async fn list(prefix: &ObjectUrl) -> Result<Vec<(ObjectUrl, u64)>, DlpError> {
    Ok(list_modified(prefix)
        .await?
        .into_iter()
        .map(|(u, size, _)| (u, size))
        .collect())
}

/// [`list`] with each object's last modification time.
async fn list_modified(
    prefix: &ObjectUrl,
) -> Result<Vec<(ObjectUrl, u64, std::time::SystemTime)>, DlpError> {
    let (store, u) = (store(prefix)?, prefix.clone());
    let key = prefix.key();
    let found: Vec<(String, u64, std::time::SystemTime)> = io(async move {
        let key = (!key.as_ref().is_empty()).then_some(key);
        store
            .list(key.as_ref())
            .map_ok(|m| (m.location.to_string(), m.size, m.last_modified.into()))
            .try_collect()
            .await
            .map_err(|e| DlpError::Storage(describe("LIST", &u, &e)))
    })
    .await?;
    let mut out: Vec<_> = found
        .into_iter()
        .map(|(k, size, modified)| (prefix.with_key(&k), size, modified))
        .collect();
    out.sort_by(|a, b| a.0.as_str().cmp(b.0.as_str()));
    Ok(out)
}

/// Removes one object (no error when it is already gone).
pub async fn delete(url: &ObjectUrl) -> Result<(), DlpError> {
    let (store, key, u) = (store(url)?, url.key(), url.clone());
    io(async move {
        match object_store::ObjectStoreExt::delete(&store, &key).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(DlpError::Storage(describe("DELETE", &u, &e))),
        }
    })
    .await
}

/// Removes every object under `prefix`.
pub async fn delete_prefix(prefix: &ObjectUrl) -> Result<usize, DlpError> {
    let objects = list(prefix).await?;
    let n = objects.len();
    let store = store(prefix)?;
    let u = prefix.clone();
    io(async move {
        let keys = futures::stream::iter(objects.into_iter().map(|(o, _)| Ok(o.key()))).boxed();
        store
            .delete_stream(keys)
            .try_collect::<Vec<_>>()
            .await
            .map(|_| n)
            .map_err(|e| DlpError::Storage(describe("DELETE", &u, &e)))
    })
    .await
}

/// Uploads every file under the local directory `dir` to `url` (keys relative to `dir`),
/// `last` (a manifest) after all the others, so that a reader that finds it finds the
/// rest. On failure, what was uploaded is removed and the error returned.
pub async fn upload_dir(dir: &Path, url: &ObjectUrl, last: Option<&str>) -> Result<(), DlpError> {
    let mut files = Vec::new();
    collect_files(dir, dir, &mut files)?;
    files.sort();
    let (first, rest): (Vec<_>, Vec<_>) = files
        .into_iter()
        .partition(|rel| Some(rel.as_str()) != last);
    let result = async {
        for batch in [first, rest] {
            futures::stream::iter(batch)
                .map(|rel| {
                    let target = url.join(&rel);
                    let path = dir.join(&rel);
                    async move {
                        let bytes = tokio::fs::read(&path).await.map_err(|e| {
                            DlpError::Storage(format!("cannot read {}: {e}", path.display()))
                        })?;
                        put(&target, Bytes::from(bytes)).await
                    }
                })
                .buffer_unordered(config().max_concurrent_gets)
                .try_collect::<Vec<_>>()
                .await?;
        }
        Ok(())
    }
    .await;
    if let Err(e) = &result {
        tracing::warn!(target: LOG_TARGET, url = %url, error = %e, "upload failed; removing what was written");
        let _ = delete_prefix(url).await;
    }
    result
}

fn collect_files(root: &Path, dir: &Path, out: &mut Vec<String>) -> Result<(), DlpError> {
    let entries = std::fs::read_dir(dir)
        .map_err(|e| DlpError::Storage(format!("cannot list {}: {e}", dir.display())))?;
    for entry in entries {
        let entry =
            entry.map_err(|e| DlpError::Storage(format!("cannot list {}: {e}", dir.display())))?;
        let path = entry.path();
        if path.is_dir() {
            collect_files(root, &path, out)?;
        } else if let Ok(rel) = path.strip_prefix(root) {
            out.push(rel.to_string_lossy().into_owned());
        }
    }
    Ok(())
}

/// Downloads every object under `url` into the local directory `dir` (made if needed);
/// a file already there is kept when it has the object's size and was written more than a
/// second after the object was (as `aws s3 sync` compares size and time: a manifest
/// replaced by one of the same size, its sha256 another of the same length, is fetched
/// again, even into a copy an earlier process left). Returns how many were fetched.
pub async fn download_prefix(url: &ObjectUrl, dir: &Path) -> Result<usize, DlpError> {
    download(url, dir, None).await
}

/// [`download_prefix`], or with `renew` set, only the objects whose names start with
/// `<renew>.` (one model's files), fetched whatever is there already (none there: `Ok(0)`).
async fn download(url: &ObjectUrl, dir: &Path, renew: Option<&str>) -> Result<usize, DlpError> {
    let mut objects = list_modified(url).await?;
    let base = url.key_str();
    if let Some(stem) = renew {
        let stem = format!("{stem}.");
        objects.retain(|(o, _, _)| {
            o.key_str()
                .strip_prefix(&base)
                .is_some_and(|rel| rel.trim_start_matches('/').starts_with(&stem))
        });
    }
    if objects.is_empty() {
        if renew.is_some() {
            return Ok(0);
        }
        return Err(DlpError::Storage(format!(
            "{url}: no such object or prefix"
        )));
    }
    // Models and saved pipelines: a bound well above any zoo model, against a runaway
    // prefix filling the disk.
    let limit: u64 = 8 << 30;
    let fetched = futures::stream::iter(objects)
        .map(|(o, size, modified)| {
            let key = o.key_str();
            let rel = key
                .strip_prefix(&base)
                .unwrap_or(&key)
                .trim_start_matches('/')
                .to_string();
            let target = if rel.is_empty() {
                dir.join(key.rsplit('/').next().unwrap_or("object"))
            } else {
                dir.join(&rel)
            };
            // A key never leads out of the folder (a `..` segment in an object's name).
            let inside = Path::new(&rel)
                .components()
                .all(|c| matches!(c, std::path::Component::Normal(_)));
            async move {
                if !inside {
                    return Err(DlpError::Access(format!(
                        "{o}: the object's name leads outside the folder it is fetched into"
                    )));
                }
                // (A second of slack: stores may give the time in whole seconds.)
                let fresh = |m: std::fs::Metadata| {
                    m.len() == size
                        && m.modified()
                            .is_ok_and(|local| local > modified + std::time::Duration::from_secs(1))
                };
                if renew.is_none() && std::fs::metadata(&target).is_ok_and(fresh) {
                    return Ok(0usize);
                }
                let bytes = get(&o, limit).await?;
                if let Some(parent) = target.parent() {
                    tokio::fs::create_dir_all(parent).await.map_err(|e| {
                        DlpError::Storage(format!("cannot create {}: {e}", parent.display()))
                    })?;
                }
                let tmp = target.with_extension(format!("part-{:08x}", rand::random::<u32>()));
                tokio::fs::write(&tmp, &bytes).await.map_err(|e| {
                    DlpError::Storage(format!("cannot write {}: {e}", tmp.display()))
                })?;
                tokio::fs::rename(&tmp, &target).await.map_err(|e| {
                    DlpError::Storage(format!("cannot write {}: {e}", target.display()))
                })?;
                Ok(1)
            }
        })
        .buffer_unordered(config().max_concurrent_gets)
        .try_collect::<Vec<usize>>()
        .await?;
    Ok(fetched.iter().sum())
}

/// A local copy of the folder at `url` in this process's cache (`<temp
/// dir>/dlp-cache/<hash of the URL>`), fetched once per process: the model directory and
/// saved pipelines are read from there.
pub async fn localize_dir(url: &ObjectUrl) -> Result<PathBuf, DlpError> {
    use sha2::Digest;
    let hash = sha2::Sha256::digest(url.as_str().trim_end_matches('/').as_bytes());
    let name: String = hash.iter().take(12).map(|b| format!("{b:02x}")).collect();
    let dir = std::env::temp_dir().join("dlp-cache").join(name);
    if source_of_local(&dir).is_some() {
        return Ok(dir);
    }
    let n = download_prefix(url, &dir).await?;
    tracing::info!(target: LOG_TARGET, url = %url, dir = %dir.display(), fetched = n, "cached a folder from object storage");
    LOCALIZED
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(dir.clone(), url.clone());
    Ok(dir)
}

/// Local copies made by [`localize_dir`] (each named by a hash of its URL), with the URL
/// each was fetched from.
static LOCALIZED: LazyLock<Mutex<HashMap<PathBuf, ObjectUrl>>> = LazyLock::new(Default::default);

/// The object-store folder that the local folder `dir` is this process's copy of (a
/// `--model-dir s3://...`), if it is one.
pub fn source_of_local(dir: &Path) -> Option<ObjectUrl> {
    LOCALIZED
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get(dir)
        .cloned()
}

/// Fetches again what is new in the folder that `dir` is a local copy of (objects written
/// there since, such as a model fine-tuned by another process). Returns how many files
/// were fetched; `Ok(0)` when `dir` is no such copy.
pub fn refresh_local(dir: &Path) -> Result<usize, DlpError> {
    let Some(url) = source_of_local(dir) else {
        return Ok(0);
    };
    let dir = dir.to_path_buf();
    let n = io_blocking(async move { download_prefix(&url, &dir).await })?;
    tracing::info!(target: LOG_TARGET, fetched = n, "refreshed a folder cached from object storage");
    Ok(n)
}

/// Fetches again, whatever is there already, the files `<stem>.*` of the folder that `dir`
/// is a local copy of (a model replaced there under the same name). Returns how many were
/// fetched; `Ok(0)` when `dir` is no such copy or the folder holds no such files.
pub fn renew_local(dir: &Path, stem: &str) -> Result<usize, DlpError> {
    let Some(url) = source_of_local(dir) else {
        return Ok(0);
    };
    let (dir, stem) = (dir.to_path_buf(), stem.to_string());
    io_blocking(async move { download(&url, &dir, Some(&stem)).await })
}

/// Copies `files` (names in `dir`, in order: the last one is what makes the others
/// visible, such as a model's manifest) to the folder that `dir` is a local copy of, so
/// that every process using that folder finds them. Does nothing when `dir` is no such
/// copy. On failure what was written is removed.
pub fn publish_local(dir: &Path, files: &[String]) -> Result<(), DlpError> {
    let Some(url) = source_of_local(dir) else {
        return Ok(());
    };
    let dir = dir.to_path_buf();
    let files = files.to_vec();
    io_blocking(async move {
        let mut written = Vec::new();
        for name in &files {
            let path = dir.join(name);
            let target = url.join(name);
            let result = match tokio::fs::read(&path).await {
                Ok(bytes) => put(&target, Bytes::from(bytes)).await,
                Err(e) => Err(DlpError::Storage(format!(
                    "cannot read {}: {e}",
                    path.display()
                ))),
            };
            if let Err(e) = result {
                for w in &written {
                    let _ = delete(w).await;
                }
                return Err(e);
            }
            written.push(target);
        }
        Ok(())
    })
}

/// Removes a work folder, local or in object storage (`DLP_WORK_DIR=s3://...`): the end
/// of a fit or a tuning run. Failures are logged, never raised (it runs in `Drop`).
pub fn remove_work(path: &Path) {
    match url_of_path(path) {
        Some(url) => {
            if let Err(e) = io_blocking(async move { delete_prefix(&url).await }) {
                tracing::warn!(target: LOG_TARGET, error = %e, "cannot remove a work folder");
            }
        }
        None => {
            let _ = std::fs::remove_dir_all(path);
        }
    }
}

/// Makes a work folder (nothing to make in object storage, where folders are prefixes).
pub fn ensure_dir(path: &Path) -> Result<(), DlpError> {
    if url_of_path(path).is_some() {
        return Ok(());
    }
    std::fs::create_dir_all(path)
        .map_err(|e| DlpError::Config(format!("cannot create {}: {e}", path.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_checked_and_never_carry_secrets() {
        let u = ObjectUrl::parse("s3://bucket/flowers/daisy").unwrap();
        assert_eq!(u.store_key(), "s3://bucket");
        assert_eq!(u.key_str(), "flowers/daisy");
        assert_eq!(
            u.join("a b.jpg").as_str(),
            "s3://bucket/flowers/daisy/a%20b.jpg"
        );
        assert_eq!(u.join("a b.jpg").key_str(), "flowers/daisy/a b.jpg");
        assert!(u.join("x").starts_with(&u));
        assert!(
            !ObjectUrl::parse("s3://bucket/flowers/daisy2")
                .unwrap()
                .starts_with(&u)
        );
        assert!(
            !ObjectUrl::parse("s3://other/flowers/daisy/x")
                .unwrap()
                .starts_with(&u)
        );
        assert_eq!(
            ObjectUrl::parse("s3a://bucket/x").unwrap().store_key(),
            "s3://bucket"
        );
        assert!(
            ObjectUrl::parse("s3://bucket/")
                .unwrap()
                .key_str()
                .is_empty()
        );
        for bad in [
            "s3://AKIAXXX:secretvalue@bucket/x",
            "s3://bucket/x?X-Amz-Signature=secretvalue",
            "az://container/x?sig=secretvalue",
        ] {
            let e = ObjectUrl::parse(bad).unwrap_err().to_string();
            assert!(!e.contains("secretvalue"), "{e}");
        }
        for bad in [
            "s3://bucket/a/../b",
            "s3://bucket/a/%2e%2e/b",
            "s3://bucket/a//b",
            "s3:///x",
            "ftp://h/x",
        ] {
            assert!(ObjectUrl::parse(bad).is_err(), "{bad}");
        }
        assert!(is_url("s3://b/x") && is_url("GS://b/x") && is_url("https://h/x.jpg"));
        assert!(!is_url("/tmp/x") && !is_url("file:///tmp/x") && !is_url("flowers"));
        assert!(!ObjectUrl::parse("https://h/x.jpg").unwrap().writable());
    }

    #[test]
    fn bucket_settings_are_checked_and_not_shown() {
        let mut c = StorageConfig::default();
        c.buckets.insert(
            "s3://data".into(),
            [
                ("endpoint".to_string(), "http://127.0.0.1:9".to_string()),
                ("secret_access_key".to_string(), "hush-hush".to_string()),
            ]
            .into(),
        );
        c.validate().unwrap();
        assert!(!format!("{c:?}").contains("hush-hush"));
        c.buckets
            .get_mut("s3://data")
            .unwrap()
            .insert("endpont".into(), "x".into());
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("endpont") && !e.contains("hush-hush"), "{e}");
    }
}

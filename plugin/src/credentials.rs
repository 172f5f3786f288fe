//! Credentials on Ballista's own channels.
//!
//! Ballista's internal clients (an executor's scheduler client, shuffle reads between
//! executors, the scheduler's proxy to an executor, a Rust client's partition fetches) take
//! no gRPC interceptor: the only hook is the endpoint override
//! (`override_create_grpc_client_endpoint`), and the one header an endpoint sets on every
//! request is `user-agent`. So the credential of those channels travels there:
//! - `dlp-cluster/<token>`: a cluster process (scheduler or executor). The token is derived
//!   from the cluster secret (`--cluster-secret-file`), never the secret itself.
//! - `dlp-bearer/<token>`: a client session's bearer token (from the Flight handshake), on a
//!   client's partition fetches through the scheduler's port.
//!
//! The servers ([`dlp-scheduler`'s gate, the executors' Flight service]) accept them in
//! `user-agent` as well as in the usual headers (`authorization: Bearer`,
//! `x-dlp-cluster-token`).

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, OnceLock};

use ballista::prelude::SessionConfigExt;
use ballista_core::extension::EndpointOverrideFn;
use datafusion::prelude::SessionConfig;
use sha2::{Digest, Sha256};
use tonic::transport::Endpoint;

/// `user-agent` prefix of a cluster process's token.
pub const CLUSTER_AGENT: &str = "dlp-cluster/";
/// `user-agent` prefix of a client session's bearer token.
pub const BEARER_AGENT: &str = "dlp-bearer/";
/// Header that may carry the cluster token instead of `user-agent`.
pub const CLUSTER_HEADER: &str = "x-dlp-cluster-token";

/// Shortest cluster secret accepted.
pub const MIN_SECRET_LEN: usize = 32;

/// The cluster secret shared by the scheduler and the executors.
#[derive(Clone)]
pub struct ClusterSecret {
    token: String,
}

impl std::fmt::Debug for ClusterSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClusterSecret(..)")
    }
}

static CLUSTER: OnceLock<ClusterSecret> = OnceLock::new();

fn derive(label: &str, secret: &str) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(label.as_bytes());
    h.update([0u8]);
    h.update(secret.as_bytes());
    h.finalize().into()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Equality that takes the same time wherever the first difference is.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl ClusterSecret {
    /// A secret from its text (surrounding whitespace ignored).
    pub fn new(secret: &str) -> Result<Self, String> {
        let secret = secret.trim();
        if secret.chars().count() < MIN_SECRET_LEN {
            return Err(format!(
                "the cluster secret must be at least {MIN_SECRET_LEN} characters (it has {}); \
                 make one with `head -c 36 /dev/urandom | base64`",
                secret.chars().count()
            ));
        }
        Ok(Self {
            token: hex(&derive("dlp-cluster-token-v1", secret)),
        })
    }

    /// Reads `--cluster-secret-file`.
    pub fn from_file(path: &Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            format!(
                "cannot read the cluster secret file {}: {e}",
                path.display()
            )
        })?;
        Self::new(&text).map_err(|e| format!("cluster secret file {}: {e}", path.display()))
    }

    /// Installs the process's secret (once, at start-up).
    pub fn install(self) -> bool {
        CLUSTER.set(self).is_ok()
    }

    /// The process's secret, if the cluster is secured.
    pub fn get() -> Option<&'static Self> {
        CLUSTER.get()
    }

    /// The token cluster processes present (derived from the secret).
    pub fn token(&self) -> &str {
        &self.token
    }

    /// Whether `presented` is this cluster's token.
    pub fn verify(&self, presented: &str) -> bool {
        constant_time_eq(presented.trim().as_bytes(), self.token.as_bytes())
    }
}

/// What a request's `user-agent` carries, if anything of ours.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AgentCredential {
    /// `dlp-cluster/<token>`.
    Cluster(String),
    /// `dlp-bearer/<token>`.
    Bearer(String),
}

/// Finds our credential in a `user-agent` value (tonic appends its own product token).
pub fn agent_credential(user_agent: &str) -> Option<AgentCredential> {
    user_agent.split_whitespace().find_map(|part| {
        if let Some(t) = part.strip_prefix(CLUSTER_AGENT) {
            Some(AgentCredential::Cluster(t.to_string()))
        } else {
            part.strip_prefix(BEARER_AGENT)
                .map(|t| AgentCredential::Bearer(t.to_string()))
        }
    })
}

/// An endpoint override that adds `agent` as the channel's `user-agent`, after `then`
/// (e.g. a TLS configuration).
pub fn agent_override(agent: String, then: Option<EndpointOverrideFn>) -> EndpointOverrideFn {
    Arc::new(move |endpoint: Endpoint| {
        let endpoint = match &then {
            Some(f) => f(endpoint)?,
            None => endpoint,
        };
        Ok(endpoint.user_agent(agent.clone())?)
    })
}

/// The endpoint override of a cluster process: its cluster token on every channel it opens,
/// after `then` (e.g. TLS towards the scheduler); `then` alone when the cluster has no
/// secret.
pub fn cluster_endpoint_override(then: Option<EndpointOverrideFn>) -> Option<EndpointOverrideFn> {
    match ClusterSecret::get() {
        Some(s) => Some(agent_override(
            format!("{CLUSTER_AGENT}{}", s.token()),
            then,
        )),
        None => then,
    }
}

/// TLS towards a scheduler whose port speaks TLS: the CA certificate(s) to trust (PEM) and,
/// optionally, the name the certificate carries when it is not the host dialled.
#[derive(Clone)]
pub struct TlsClient {
    ca_pem: Arc<Vec<u8>>,
    domain: Option<String>,
}

impl std::fmt::Debug for TlsClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsClient")
            .field("domain", &self.domain)
            .finish()
    }
}

impl TlsClient {
    /// Trusts the CA certificate(s) of a PEM file.
    pub fn from_file(path: &Path) -> Result<Self, String> {
        let pem = std::fs::read(path)
            .map_err(|e| format!("cannot read the CA certificate {}: {e}", path.display()))?;
        if !String::from_utf8_lossy(&pem).contains("-----BEGIN CERTIFICATE-----") {
            return Err(format!(
                "{}: expected a PEM certificate (-----BEGIN CERTIFICATE-----)",
                path.display()
            ));
        }
        Ok(Self {
            ca_pem: Arc::new(pem),
            domain: None,
        })
    }

    /// Checks the certificate against `domain` instead of the host dialled.
    pub fn with_domain(self, domain: Option<String>) -> Self {
        Self { domain, ..self }
    }

    fn config(&self) -> tonic::transport::ClientTlsConfig {
        let mut tls = tonic::transport::ClientTlsConfig::new().ca_certificate(
            tonic::transport::Certificate::from_pem(self.ca_pem.as_slice()),
        );
        if let Some(d) = &self.domain {
            tls = tls.domain_name(d.clone());
        }
        tls
    }

    /// An endpoint for `uri` (any scheme) over TLS.
    pub fn endpoint(&self, uri: &tonic::codegen::http::Uri) -> Result<Endpoint, String> {
        let authority = uri
            .authority()
            .map(|a| a.as_str().to_string())
            .ok_or_else(|| format!("{uri}: no host"))?;
        Endpoint::from_shared(format!("https://{authority}"))
            .and_then(|e| e.tls_config(self.config()))
            .map(|e| {
                e.connect_timeout(std::time::Duration::from_secs(20))
                    .tcp_nodelay(true)
                    .http2_keep_alive_interval(std::time::Duration::from_secs(30))
                    .keep_alive_while_idle(true)
            })
            .map_err(|e| format!("TLS endpoint for {uri}: {e}"))
    }
}

/// An endpoint override that speaks TLS to whatever it dials.
pub fn tls_override(tls: TlsClient) -> EndpointOverrideFn {
    Arc::new(move |endpoint: Endpoint| Ok(tls.endpoint(endpoint.uri())?))
}

/// How a client reaches a secured scheduler: a session token and TLS, each optional.
#[derive(Debug, Clone, Default)]
pub struct ClientAccess {
    /// The bearer token of a Flight handshake.
    pub token: Option<String>,
    /// TLS towards the scheduler.
    pub tls: Option<TlsClient>,
}

/// A client config that presents `access.token` on every call (as `authorization: Bearer`
/// on the scheduler RPCs, in `user-agent` on partition fetches) and speaks TLS when
/// `access.tls` says so.
pub fn client_config(config: SessionConfig, access: &ClientAccess) -> SessionConfig {
    let tls = access.tls.clone().map(tls_override);
    let config = match &access.token {
        Some(token) => config.with_ballista_grpc_metadata(HashMap::from([(
            "authorization".to_string(),
            format!("Bearer {token}"),
        )])),
        None => config,
    };
    let endpoint = match (&access.token, tls) {
        (Some(token), tls) => Some(agent_override(format!("{BEARER_AGENT}{token}"), tls)),
        (None, tls) => tls,
    };
    // Not `with_ballista_use_tls`: that setting travels with the job to the executors and
    // would make their shuffle reads speak TLS to each other; the override above makes
    // this client's own channels TLS.
    match endpoint {
        Some(f) => config.with_ballista_override_create_grpc_client_endpoint(f),
        None => config,
    }
}

/// [`client_config`] with a token and no TLS.
pub fn with_bearer(config: SessionConfig, token: &str) -> SessionConfig {
    client_config(
        config,
        &ClientAccess {
            token: Some(token.to_string()),
            tls: None,
        },
    )
}

/// An Arrow Flight client of a scheduler's port.
pub type FlightClient =
    arrow_flight::flight_service_client::FlightServiceClient<tonic::transport::Channel>;

/// A Flight client of the scheduler at `url` (`df://host:port`), connected; over TLS with
/// `tls`. Errors name the URL and say why the connection failed (e.g. connection refused).
pub async fn flight_client(url: &str, tls: Option<&TlsClient>) -> Result<FlightClient, String> {
    let http = match url.split_once("://") {
        Some(("df", rest)) | Some(("grpc", rest)) | Some(("http", rest)) => {
            format!("http://{rest}")
        }
        _ => return Err(format!("scheduler URL {url}: expected df://host:port")),
    };
    let endpoint = match tls {
        Some(tls) => tls.endpoint(
            &http
                .parse()
                .map_err(|e| format!("scheduler URL {url}: {e}"))?,
        )?,
        None => Endpoint::from_shared(http)
            .map_err(|e| format!("scheduler URL {url}: {e}"))?
            .connect_timeout(std::time::Duration::from_secs(20))
            .tcp_nodelay(true)
            .http2_keep_alive_interval(std::time::Duration::from_secs(30))
            .keep_alive_while_idle(true),
    };
    let channel = endpoint.connect().await.map_err(|e| {
        // tonic's own message is "transport error": the cause (e.g. connection refused) is
        // in its sources, some of which repeat the one before.
        let mut why: Vec<String> = vec![];
        let mut source: Option<&dyn std::error::Error> = Some(&e);
        while let Some(s) = source {
            let text = s.to_string();
            if why.last().is_none_or(|last| !last.contains(&text)) {
                why.push(text);
            }
            source = s.source();
        }
        format!(
            "cannot connect to the scheduler at {url}: {}",
            why.join(": ")
        )
    })?;
    Ok(FlightClient::new(channel))
}

/// Logs in to a scheduler (`df://host:port`) with the Flight handshake (HTTP Basic) and
/// returns the session's bearer token; over TLS with `tls`.
pub async fn login(
    url: &str,
    user: &str,
    password: &str,
    tls: Option<&TlsClient>,
) -> Result<String, String> {
    let mut client = flight_client(url, tls).await?;
    login_with(&mut client, url, user, password).await
}

/// [`login`] on a connected [`flight_client`] (`url` for messages), which may then make
/// calls with the token.
pub async fn login_with(
    client: &mut FlightClient,
    url: &str,
    user: &str,
    password: &str,
) -> Result<String, String> {
    use arrow_flight::HandshakeRequest;
    use base64::Engine;
    if user.is_empty() {
        return Err(format!(
            "login to {url}: no user name (--user or DLP_USER); this scheduler needs one"
        ));
    }
    let basic = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    let mut request = tonic::Request::new(futures::stream::iter([HandshakeRequest::default()]));
    request.metadata_mut().insert(
        "authorization",
        format!("Basic {basic}")
            .parse()
            .map_err(|_| "the user name or password is not valid in a header".to_string())?,
    );
    let response = client.handshake(request).await.map_err(|s| {
        // A plain connection to a TLS port (or the reverse) ends in a cancelled or unknown
        // status that names neither: say what to check.
        let hint = match s.code() {
            tonic::Code::Cancelled | tonic::Code::Unknown | tonic::Code::Internal => {
                if url.starts_with("df://") {
                    " (if the scheduler uses TLS: df+tls:// with --tls-ca)"
                } else {
                    " (check that the scheduler uses TLS and --tls-ca signs its certificate)"
                }
            }
            _ => "",
        };
        format!(
            "login to {url} as {user:?} failed: {} ({:?}){hint}",
            s.message(),
            s.code()
        )
    })?;
    response
        .metadata()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::to_string)
        .ok_or_else(|| format!("the scheduler at {url} answered the login without a token"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_long_and_tokens_derived() {
        let e = ClusterSecret::new("short").unwrap_err();
        assert!(e.contains("at least 32"), "{e}");
        let s = ClusterSecret::new(&"x".repeat(40)).unwrap();
        assert_eq!(s.token().len(), 64);
        assert!(!s.token().contains("xxxx"), "the token is not the secret");
        assert!(s.verify(s.token()));
        assert!(!s.verify(&"x".repeat(40)));
        assert!(format!("{s:?}").ends_with("(..)"));
    }

    #[test]
    fn agent_credentials_are_found_beside_tonic() {
        assert_eq!(
            agent_credential("dlp-cluster/abc tonic/0.14.9"),
            Some(AgentCredential::Cluster("abc".into()))
        );
        assert_eq!(
            agent_credential("grpc-go/1.0 dlp-bearer/t-1"),
            Some(AgentCredential::Bearer("t-1".into()))
        );
        assert_eq!(agent_credential("tonic/0.14.9"), None);
    }
}

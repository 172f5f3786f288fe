//! The executor's front door on a cluster with a secret: Ballista's executor servers (Flight
//! for shuffle data, gRPC for task launch) listen on loopback only, and this gate listens on
//! the executor's address with the same ports, forwarding to them only the requests that
//! carry the cluster token (the scheduler's task launches and result proxying, other
//! executors' shuffle reads). Anything else is answered `UNAUTHENTICATED` without reaching
//! Ballista.
//!
//! Ballista 55 builds the executor's gRPC server itself, with no hook for an interceptor,
//! so the check sits in front of it rather than inside.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;

use anyhow::Context;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, Uri, header};
use axum::response::Response;
use dlp_plugin::credentials::{AgentCredential, CLUSTER_HEADER, ClusterSecret, agent_credential};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tonic::Status;

/// Where Ballista's servers listen when the gate is in front of them: loopback, on another
/// address than the gate's when the gate itself is on loopback (tests).
pub fn internal_host(gate: IpAddr) -> IpAddr {
    if gate == IpAddr::V4(Ipv4Addr::LOCALHOST) {
        IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2))
    } else {
        IpAddr::V4(Ipv4Addr::LOCALHOST)
    }
}

/// Whether a request carries the cluster token.
pub fn authorized(secret: &ClusterSecret, headers: &HeaderMap) -> bool {
    if let Some(t) = headers.get(CLUSTER_HEADER).and_then(|v| v.to_str().ok()) {
        return secret.verify(t);
    }
    match headers
        .get(header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
        .and_then(agent_credential)
    {
        Some(AgentCredential::Cluster(t)) => secret.verify(&t),
        _ => false,
    }
}

struct Forward {
    secret: ClusterSecret,
    backend: SocketAddr,
    client: Client<HttpConnector, Body>,
}

async fn forward(State(f): State<Arc<Forward>>, request: Request) -> Response {
    if !authorized(&f.secret, request.headers()) {
        tracing::warn!(
            path = %request.uri().path(),
            "executor request without the cluster token refused"
        );
        return Status::unauthenticated(
            "executor ports are for cluster processes: the cluster token is missing or wrong",
        )
        .into_http();
    }
    let (mut parts, body) = request.into_parts();
    let path = parts
        .uri
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_string();
    parts.uri = match Uri::builder()
        .scheme("http")
        .authority(f.backend.to_string())
        .path_and_query(path)
        .build()
    {
        Ok(u) => u,
        Err(e) => return Status::invalid_argument(format!("bad request path: {e}")).into_http(),
    };
    match f.client.request(Request::from_parts(parts, body)).await {
        Ok(response) => response.map(Body::new),
        Err(e) => Status::unavailable(format!("executor server unreachable: {e}")).into_http(),
    }
}

/// Serves the gate on `listen`, forwarding to `backend`.
pub async fn spawn(
    listen: SocketAddr,
    backend: SocketAddr,
    secret: ClusterSecret,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let listener =
        dlp_plugin::net::listen(listen).with_context(|| format!("cannot listen on {listen}"))?;
    // The executor's own port is on loopback: no waiting on ACKs for small frames.
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    let client = Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build(connector);
    let app = axum::Router::new()
        .fallback(forward)
        .with_state(Arc::new(Forward {
            secret,
            backend,
            client,
        }));
    tracing::info!(%listen, %backend, "executor gate: cluster token required");
    Ok(tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(%listen, "executor gate failed: {e}");
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_checked_in_either_header() {
        let secret = ClusterSecret::new(&"s".repeat(40)).unwrap();
        let mut h = HeaderMap::new();
        assert!(!authorized(&secret, &h));
        h.insert(
            header::USER_AGENT,
            format!("dlp-cluster/{} tonic/0.14", secret.token())
                .parse()
                .unwrap(),
        );
        assert!(authorized(&secret, &h));
        h.insert(header::USER_AGENT, "dlp-cluster/forged".parse().unwrap());
        assert!(!authorized(&secret, &h));
        h.insert(CLUSTER_HEADER, secret.token().parse().unwrap());
        assert!(authorized(&secret, &h));
        assert_eq!(
            internal_host("127.0.0.1".parse().unwrap()),
            "127.0.0.2".parse::<IpAddr>().unwrap()
        );
        assert_eq!(
            internal_host("10.1.2.3".parse().unwrap()),
            "127.0.0.1".parse::<IpAddr>().unwrap()
        );
    }
}

//! The scheduler port's front door: every request passes [`gate`] before any service sees
//! it, and Ballista's scheduler gRPC is served through [`GuardedScheduler`].
//!
//! | route | who may call it |
//! |---|---|
//! | `/healthz`, `/readyz` | anyone (probes) |
//! | Flight `Handshake` | anyone; it checks Basic credentials itself, throttled |
//! | executor RPCs (`PollWork`, `RegisterExecutor`, `HeartBeatFromExecutor`, `UpdateTaskStatus`, `ExecutorStopped`) | cluster processes (the cluster token) |
//! | every other gRPC method (Flight, Flight SQL, Ballista's client RPCs) | a user's bearer token (or anyone, with `--allow-anonymous`) |
//! | REST `/api/...` | an admin user (`--admin`), with Basic credentials or a bearer token |
//!
//! Jobs belong to the user who submitted them: status, metrics, cancellation and result
//! partitions of another user's job are refused as if the job did not exist.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use ballista_core::serde::protobuf::scheduler_grpc_server::SchedulerGrpc;
use ballista_core::serde::protobuf::{
    CancelJobParams, CancelJobResult, CleanJobDataParams, CleanJobDataResult,
    CreateUpdateSessionParams, CreateUpdateSessionResult, ExecuteQueryParams, ExecuteQueryResult,
    ExecutorStoppedParams, ExecutorStoppedResult, GetJobMetricsParams, GetJobMetricsResult,
    GetJobStatusParams, GetJobStatusResult, HeartBeatParams, HeartBeatResult, KeyValuePair,
    PollWorkParams, PollWorkResult, RegisterExecutorParams, RegisterExecutorResult,
    RemoveSessionParams, RemoveSessionResult, UpdateTaskStatusParams, UpdateTaskStatusResult,
    execute_query_result,
};
use ballista_scheduler::scheduler_server::SchedulerServer;
use datafusion_proto::protobuf::{LogicalPlanNode, PhysicalPlanNode};
use dlp_plugin::credentials::{AgentCredential, CLUSTER_HEADER, agent_credential};
use futures::StreamExt;
use futures::stream::BoxStream;
use tonic::{Request as GrpcRequest, Response as GrpcResponse, Status};

use crate::auth::{Auth, IDENTITY_HEADER, basic_from_header};

type Scheduler = SchedulerServer<LogicalPlanNode, PhysicalPlanNode>;

/// Who is calling, as established by the gate (a request extension).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    /// A user with a valid bearer token.
    User(String),
    /// Anyone, on a scheduler that allows anonymous access.
    Anonymous,
    /// A cluster process (executor) with the cluster token.
    Cluster,
}

impl Caller {
    /// The name jobs are owned under.
    pub fn owner(&self) -> &str {
        match self {
            Caller::User(u) => u,
            Caller::Anonymous => "anonymous",
            Caller::Cluster => "cluster",
        }
    }
}

/// What a path is, for the gate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// Health probes.
    Open,
    /// The Flight handshake (authenticates itself).
    Handshake,
    /// Executor-to-scheduler RPCs.
    Internal,
    /// Client gRPC (Flight, Flight SQL, Ballista's client RPCs, anything unknown).
    Client,
    /// Ballista's REST API.
    Rest,
}

const INTERNAL: [&str; 5] = [
    "PollWork",
    "RegisterExecutor",
    "HeartBeatFromExecutor",
    "UpdateTaskStatus",
    "ExecutorStopped",
];

/// Classifies a request path.
pub fn classify(path: &str) -> Route {
    if path == "/healthz" || path == "/readyz" {
        return Route::Open;
    }
    if path == "/arrow.flight.protocol.FlightService/Handshake" {
        return Route::Handshake;
    }
    if let Some(method) = path.strip_prefix("/ballista.protobuf.SchedulerGrpc/")
        && INTERNAL.contains(&method)
    {
        return Route::Internal;
    }
    if path == "/api" || path.starts_with("/api/") {
        return Route::Rest;
    }
    Route::Client
}

/// The state of the gate.
pub struct Gate {
    /// Credentials.
    pub auth: Arc<Auth>,
}

fn header(headers: &HeaderMap, name: impl header::AsHeaderName) -> Option<&str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

fn bearer(headers: &HeaderMap) -> Option<String> {
    if let Some(v) = header(headers, header::AUTHORIZATION)
        && let Some(t) = v
            .strip_prefix("Bearer ")
            .or_else(|| v.strip_prefix("bearer "))
    {
        return Some(t.trim().to_string());
    }
    match agent_credential(header(headers, header::USER_AGENT)?) {
        Some(AgentCredential::Bearer(t)) => Some(t),
        _ => None,
    }
}

fn cluster_token(headers: &HeaderMap) -> Option<String> {
    if let Some(t) = header(headers, CLUSTER_HEADER) {
        return Some(t.to_string());
    }
    match agent_credential(header(headers, header::USER_AGENT)?) {
        Some(AgentCredential::Cluster(t)) => Some(t),
        _ => None,
    }
}

/// Why a request is turned away.
#[derive(Debug)]
pub struct Refusal(Status);

impl Refusal {
    fn into_response(self, route: Route) -> Response {
        if route == Route::Rest {
            let code = match self.0.code() {
                tonic::Code::PermissionDenied => StatusCode::FORBIDDEN,
                tonic::Code::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
                _ => StatusCode::UNAUTHORIZED,
            };
            let mut r = (code, format!("{}\n", self.0.message())).into_response();
            if code == StatusCode::UNAUTHORIZED {
                r.headers_mut().insert(
                    header::WWW_AUTHENTICATE,
                    header::HeaderValue::from_static("Basic realm=\"dlp\""),
                );
            }
            r
        } else {
            self.0.into_http()
        }
    }
}

impl Gate {
    /// The caller of a request on `route`, or why it is refused.
    pub async fn decide(
        &self,
        route: Route,
        headers: &HeaderMap,
        peer: Option<SocketAddr>,
    ) -> Result<Option<Caller>, Refusal> {
        let auth = &self.auth;
        match route {
            Route::Open | Route::Handshake => Ok(None),
            Route::Internal => match &auth.cluster {
                Some(secret) => match cluster_token(headers) {
                    Some(t) if secret.verify(&t) => Ok(Some(Caller::Cluster)),
                    Some(_) => {
                        tracing::warn!(?peer, "executor RPC with a wrong cluster token refused");
                        Err(Refusal(Status::unauthenticated(
                            "wrong cluster token: executors need the scheduler's cluster \
                             secret (--cluster-secret-file)",
                        )))
                    }
                    None => {
                        tracing::warn!(?peer, "executor RPC without the cluster token refused");
                        Err(Refusal(Status::unauthenticated(
                            "executor RPCs need the cluster secret (--cluster-secret-file)",
                        )))
                    }
                },
                // No secret: only a scheduler that lets everyone in starts without one.
                None => Ok(Some(Caller::Cluster)),
            },
            Route::Client => match bearer(headers) {
                Some(token) => match auth.tokens.user(&token) {
                    Some(user) => Ok(Some(Caller::User(user))),
                    None => Err(Refusal(Status::unauthenticated(
                        "unknown or expired session token; authenticate again with the \
                         Flight handshake",
                    ))),
                },
                None if auth.anonymous() => Ok(Some(Caller::Anonymous)),
                None => Err(Refusal(Status::unauthenticated(
                    "credentials required: authenticate with the Flight handshake (HTTP Basic) \
                     and send its bearer token",
                ))),
            },
            Route::Rest => {
                if auth.anonymous() {
                    return Ok(Some(Caller::Anonymous));
                }
                let user = match header(headers, header::AUTHORIZATION) {
                    Some(v) if v.starts_with("Basic ") || v.starts_with("basic ") => {
                        let (user, password) = basic_from_header(v).map_err(Refusal)?;
                        auth.login(peer.map(|p| p.ip()), &user, &password)
                            .await
                            .map_err(Refusal)?
                    }
                    _ => match bearer(headers) {
                        Some(token) => auth.tokens.user(&token).ok_or_else(|| {
                            Refusal(Status::unauthenticated("unknown or expired session token"))
                        })?,
                        None => {
                            return Err(Refusal(Status::unauthenticated(
                                "the REST API needs an admin user's credentials (HTTP Basic \
                                 or a bearer token)",
                            )));
                        }
                    },
                };
                if auth.admins.iter().any(|a| a == &user) {
                    Ok(Some(Caller::User(user)))
                } else {
                    Err(Refusal(Status::permission_denied(format!(
                        "user {user:?} is not an admin (--admin): the REST API shows every \
                         user's jobs"
                    ))))
                }
            }
        }
    }
}

/// The middleware: strips the internal identity header, decides, and hands the caller on.
pub async fn gate(State(gate): State<Arc<Gate>>, mut request: Request, next: Next) -> Response {
    request.headers_mut().remove(IDENTITY_HEADER);
    let route = classify(request.uri().path());
    let peer = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0);
    match gate.decide(route, request.headers(), peer).await {
        Ok(caller) => {
            if let Some(caller) = caller {
                request.extensions_mut().insert(caller);
            }
            next.run(request).await
        }
        Err(refusal) => refusal.into_response(route),
    }
}

/// Job id -> owner, for the jobs this scheduler ran (the most recent 100,000).
#[derive(Default)]
pub struct JobOwners {
    inner: Mutex<(HashMap<String, String>, VecDeque<String>)>,
}

const OWNED_JOBS: usize = 100_000;

impl JobOwners {
    /// Records that `owner` submitted `job_id`.
    pub fn record(&self, job_id: &str, owner: &str) {
        let mut g = self.inner.lock().unwrap();
        let (map, order) = &mut *g;
        if map.insert(job_id.to_string(), owner.to_string()).is_none() {
            order.push_back(job_id.to_string());
            while order.len() > OWNED_JOBS {
                if let Some(old) = order.pop_front() {
                    map.remove(&old);
                }
            }
        }
    }

    /// Refuses `caller` another user's (or an unknown) job, as NOT_FOUND.
    pub fn check(&self, job_id: &str, caller: &Caller) -> Result<(), Status> {
        if *caller == Caller::Anonymous {
            // Everyone is the same anonymous user on an open scheduler.
            return Ok(());
        }
        let g = self.inner.lock().unwrap();
        match g.0.get(job_id) {
            Some(owner) if owner == caller.owner() => Ok(()),
            _ => Err(Status::not_found(format!("job {job_id} not found"))),
        }
    }
}

/// Ballista's scheduler gRPC behind role and ownership checks.
#[derive(Clone)]
pub struct GuardedScheduler {
    inner: Scheduler,
    owners: Arc<JobOwners>,
}

impl GuardedScheduler {
    /// Guards `inner`, recording job owners in `owners`.
    pub fn new(inner: Scheduler, owners: Arc<JobOwners>) -> Self {
        Self { inner, owners }
    }
}

/// The caller the gate established for a request.
pub fn caller<T>(request: &GrpcRequest<T>) -> Result<Caller, Status> {
    request
        .extensions()
        .get::<Caller>()
        .cloned()
        .ok_or_else(|| Status::unauthenticated("no caller identity"))
}

fn cluster_only<T>(request: &GrpcRequest<T>) -> Result<(), Status> {
    match caller(request)? {
        Caller::Cluster => Ok(()),
        _ => Err(Status::permission_denied(
            "executor RPCs are for cluster processes",
        )),
    }
}

/// Users submit logical plans only: a physical (or Substrait) plan could read another job's
/// shuffle output by naming its partitions, which the scheduler's planning never would.
fn logical_plans_only(caller: &Caller, params: &ExecuteQueryParams) -> Result<(), Status> {
    use ballista_core::serde::protobuf::execute_query_params::Query;
    match (&params.query, caller) {
        (Some(Query::LogicalPlan(_)), _) | (_, Caller::Anonymous) => Ok(()),
        _ => Err(Status::permission_denied(
            "this scheduler accepts logical plans only from users (a physical plan could \
             name another job's shuffle data)",
        )),
    }
}

/// Ballista's fault injection (`ballista.testing.chaos_execution.enabled`) is for the
/// project's own tests: a user could make executors panic or hold task slots with it.
/// Refused from users; an anonymous scheduler (a trusted network) takes it.
fn no_fault_injection(caller: &Caller, settings: &[KeyValuePair]) -> Result<(), Status> {
    if matches!(caller, Caller::Anonymous) {
        return Ok(());
    }
    refuse_fault_injection(
        settings
            .iter()
            .map(|kv| (kv.key.as_str(), kv.value.as_deref())),
    )
}

/// The check of [`no_fault_injection`] over `(key, value)` settings, as Ballista's client
/// RPCs carry them.
fn refuse_fault_injection<'a>(
    settings: impl IntoIterator<Item = (&'a str, Option<&'a str>)>,
) -> Result<(), Status> {
    for (key, value) in settings {
        if key.eq_ignore_ascii_case(ballista_core::config::BALLISTA_CHAOS_EXECUTION_ENABLED)
            && value.is_some_and(|v| v.trim().eq_ignore_ascii_case("true"))
        {
            return Err(fault_injection_refused());
        }
    }
    Ok(())
}

/// The refusal of [`refuse_fault_injection`].
pub fn fault_injection_refused() -> Status {
    Status::permission_denied(format!(
        "{}: Ballista's fault injection is for tests and is refused for users",
        ballista_core::config::BALLISTA_CHAOS_EXECUTION_ENABLED
    ))
}

fn user_only<T>(request: &GrpcRequest<T>) -> Result<Caller, Status> {
    match caller(request)? {
        Caller::Cluster => Err(Status::permission_denied(
            "client RPCs need a user's session token",
        )),
        c => Ok(c),
    }
}

#[tonic::async_trait]
impl SchedulerGrpc for GuardedScheduler {
    async fn poll_work(
        &self,
        request: GrpcRequest<PollWorkParams>,
    ) -> Result<GrpcResponse<PollWorkResult>, Status> {
        cluster_only(&request)?;
        SchedulerGrpc::poll_work(&self.inner, request).await
    }

    async fn register_executor(
        &self,
        request: GrpcRequest<RegisterExecutorParams>,
    ) -> Result<GrpcResponse<RegisterExecutorResult>, Status> {
        cluster_only(&request)?;
        SchedulerGrpc::register_executor(&self.inner, request).await
    }

    async fn heart_beat_from_executor(
        &self,
        request: GrpcRequest<HeartBeatParams>,
    ) -> Result<GrpcResponse<HeartBeatResult>, Status> {
        cluster_only(&request)?;
        SchedulerGrpc::heart_beat_from_executor(&self.inner, request).await
    }

    async fn update_task_status(
        &self,
        request: GrpcRequest<UpdateTaskStatusParams>,
    ) -> Result<GrpcResponse<UpdateTaskStatusResult>, Status> {
        cluster_only(&request)?;
        SchedulerGrpc::update_task_status(&self.inner, request).await
    }

    async fn executor_stopped(
        &self,
        request: GrpcRequest<ExecutorStoppedParams>,
    ) -> Result<GrpcResponse<ExecutorStoppedResult>, Status> {
        cluster_only(&request)?;
        SchedulerGrpc::executor_stopped(&self.inner, request).await
    }

    async fn create_update_session(
        &self,
        request: GrpcRequest<CreateUpdateSessionParams>,
    ) -> Result<GrpcResponse<CreateUpdateSessionResult>, Status> {
        let caller = user_only(&request)?;
        no_fault_injection(&caller, &request.get_ref().settings)?;
        SchedulerGrpc::create_update_session(&self.inner, request).await
    }

    async fn remove_session(
        &self,
        request: GrpcRequest<RemoveSessionParams>,
    ) -> Result<GrpcResponse<RemoveSessionResult>, Status> {
        user_only(&request)?;
        SchedulerGrpc::remove_session(&self.inner, request).await
    }

    type ExecuteQueryPushStream = BoxStream<'static, Result<GetJobStatusResult, Status>>;

    async fn execute_query_push(
        &self,
        request: GrpcRequest<ExecuteQueryParams>,
    ) -> Result<GrpcResponse<Self::ExecuteQueryPushStream>, Status> {
        let caller = user_only(&request)?;
        logical_plans_only(&caller, request.get_ref())?;
        no_fault_injection(&caller, &request.get_ref().settings)?;
        let owners = self.owners.clone();
        let response = SchedulerGrpc::execute_query_push(&self.inner, request).await?;
        Ok(response.map(move |stream| {
            stream
                .map(move |item| {
                    if let Ok(r) = &item
                        && let Some(s) = &r.status
                    {
                        owners.record(&s.job_id, caller.owner());
                    }
                    item
                })
                .boxed()
        }))
    }

    async fn execute_query(
        &self,
        request: GrpcRequest<ExecuteQueryParams>,
    ) -> Result<GrpcResponse<ExecuteQueryResult>, Status> {
        let caller = user_only(&request)?;
        logical_plans_only(&caller, request.get_ref())?;
        no_fault_injection(&caller, &request.get_ref().settings)?;
        let response = SchedulerGrpc::execute_query(&self.inner, request).await?;
        if let Some(execute_query_result::Result::Success(s)) = &response.get_ref().result {
            self.owners.record(&s.job_id, caller.owner());
            tracing::info!(job_id = %s.job_id, user = caller.owner(), "job submitted");
        }
        Ok(response)
    }

    async fn get_job_status(
        &self,
        request: GrpcRequest<GetJobStatusParams>,
    ) -> Result<GrpcResponse<GetJobStatusResult>, Status> {
        let caller = user_only(&request)?;
        self.owners.check(&request.get_ref().job_id, &caller)?;
        SchedulerGrpc::get_job_status(&self.inner, request).await
    }

    async fn get_job_metrics(
        &self,
        request: GrpcRequest<GetJobMetricsParams>,
    ) -> Result<GrpcResponse<GetJobMetricsResult>, Status> {
        let caller = user_only(&request)?;
        self.owners.check(&request.get_ref().job_id, &caller)?;
        SchedulerGrpc::get_job_metrics(&self.inner, request).await
    }

    async fn cancel_job(
        &self,
        request: GrpcRequest<CancelJobParams>,
    ) -> Result<GrpcResponse<CancelJobResult>, Status> {
        let caller = user_only(&request)?;
        self.owners.check(&request.get_ref().job_id, &caller)?;
        SchedulerGrpc::cancel_job(&self.inner, request).await
    }

    async fn clean_job_data(
        &self,
        request: GrpcRequest<CleanJobDataParams>,
    ) -> Result<GrpcResponse<CleanJobDataResult>, Status> {
        let caller = user_only(&request)?;
        self.owners.check(&request.get_ref().job_id, &caller)?;
        SchedulerGrpc::clean_job_data(&self.inner, request).await
    }
}

/// The Ballista partition a Flight ticket fetches, if it names one: a raw
/// `ballista.protobuf.Action` (Ballista's client), or a Flight SQL `TicketStatementQuery`
/// wrapping one. `Err` for bytes that are neither.
pub fn ticket_partition(
    ticket: &[u8],
) -> Result<Option<ballista_core::serde::protobuf::FetchPartition>, Status> {
    use arrow_flight::sql::{Any, ProstMessageExt, TicketStatementQuery};
    use ballista_core::serde::protobuf::{Action, action::ActionType};
    use prost::Message;
    let action = match Any::decode(ticket) {
        Ok(any)
            if any
                .type_url
                .starts_with("type.googleapis.com/arrow.flight.protocol.sql.") =>
        {
            if any.type_url != TicketStatementQuery::type_url() {
                // metadata commands: session-checked by the Flight SQL service
                return Ok(None);
            }
            let q = TicketStatementQuery::decode(any.value.as_ref())
                .map_err(|e| Status::invalid_argument(format!("invalid ticket: {e}")))?;
            match q.statement_handle.split_first() {
                // Ballista's Flight SQL handle: tag 0 = a partition action, 1 = a local result
                Some((0, action)) => action.to_vec(),
                Some((1, _)) => return Ok(None),
                _ => return Err(Status::invalid_argument("invalid ticket")),
            }
        }
        _ => ticket.to_vec(),
    };
    let action = Action::decode(action.as_slice())
        .map_err(|_| Status::invalid_argument("invalid ticket"))?;
    match action.action_type {
        Some(ActionType::FetchPartition(p)) => Ok(Some(p)),
        None => Err(Status::invalid_argument("invalid ticket")),
    }
}

/// Checks a `DoGet` ticket before the scheduler redeems it: the partition's job must be
/// the caller's, and the host it names one of the registered executors' Flight endpoints
/// (no connection is made otherwise).
pub async fn check_ticket(
    scheduler: &Scheduler,
    owners: &JobOwners,
    caller: &Caller,
    ticket: &[u8],
) -> Result<(), Status> {
    let Some(p) = ticket_partition(ticket)? else {
        return Ok(());
    };
    owners.check(&p.job_id, caller)?;
    let executors = scheduler
        .state
        .executor_manager
        .get_executors_state()
        .await
        .map_err(|e| Status::internal(format!("cannot read the executors: {e}")))?;
    let known = executors
        .iter()
        .any(|(m, _, _)| m.host == p.host && u32::from(m.port) == p.port);
    if !known {
        tracing::warn!(
            user = caller.owner(),
            host = %p.host,
            port = p.port,
            "ticket naming an address that is not a registered executor refused"
        );
        return Err(Status::permission_denied(
            "the ticket names an address that is not a registered executor",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes() {
        assert_eq!(classify("/healthz"), Route::Open);
        assert_eq!(
            classify("/arrow.flight.protocol.FlightService/Handshake"),
            Route::Handshake
        );
        assert_eq!(
            classify("/arrow.flight.protocol.FlightService/DoGet"),
            Route::Client
        );
        assert_eq!(
            classify("/ballista.protobuf.SchedulerGrpc/RegisterExecutor"),
            Route::Internal
        );
        assert_eq!(
            classify("/ballista.protobuf.SchedulerGrpc/ExecuteQuery"),
            Route::Client
        );
        assert_eq!(classify("/api/jobs"), Route::Rest);
        assert_eq!(classify("/apix"), Route::Client);
        assert_eq!(classify("/anything"), Route::Client);
    }

    #[test]
    fn jobs_belong_to_their_user() {
        let owners = JobOwners::default();
        owners.record("j1", "alice");
        assert!(owners.check("j1", &Caller::User("alice".into())).is_ok());
        let e = owners.check("j1", &Caller::User("bob".into())).unwrap_err();
        assert_eq!(e.code(), tonic::Code::NotFound);
        assert!(owners.check("j2", &Caller::User("alice".into())).is_err());
        assert!(owners.check("j1", &Caller::Cluster).is_err());
        assert!(owners.check("j9", &Caller::Anonymous).is_ok());
    }

    #[test]
    fn tickets_name_their_partition() {
        use arrow_flight::sql::{ProstMessageExt, TicketStatementQuery};
        use ballista_core::serde::protobuf::{Action, FetchPartition, action::ActionType};
        use prost::Message;
        let fetch = FetchPartition {
            job_id: "j1".into(),
            host: "10.0.0.9".into(),
            port: 50051,
            ..Default::default()
        };
        let action = Action {
            action_type: Some(ActionType::FetchPartition(fetch.clone())),
            settings: vec![],
        }
        .encode_to_vec();
        assert_eq!(ticket_partition(&action).unwrap(), Some(fetch.clone()));
        let mut handle = vec![0u8];
        handle.extend_from_slice(&action);
        let sql = TicketStatementQuery {
            statement_handle: handle.into(),
        }
        .as_any()
        .encode_to_vec();
        assert_eq!(ticket_partition(&sql).unwrap(), Some(fetch));
        assert!(ticket_partition(b"\xff\xffgarbage").is_err());
    }
}

//! The scheduler's port, assembled here rather than by Ballista's `start_grpc_service` so
//! that its Arrow Flight service can be extended: Ballista's scheduler gRPC, Flight SQL
//! (Ballista's frontend over a backend that fixes the result schema, see [`DlpBackend`])
//! with the pipeline-job actions in front of it ([`DlpFlightService`]), Ballista's REST
//! API, and the `/healthz` / `/readyz` probes.
//!
//! Pipeline actions (`Action.body` is UTF-8; every answer is one JSON document per
//! `Result`):
//! - `dlp.pipeline.submit`: a YAML job spec (as `dlp fit` reads; `tuning:` makes it a
//!   tuning job) -> the new job's status, with its `job_id`;
//! - `dlp.pipeline.status` / `dlp.pipeline.cancel`: a job id -> its status;
//! - `dlp.pipeline.watch`: a job id -> a stream of statuses until it ends;
//! - `dlp.pipeline.list`: -> the caller's jobs.
//!
//! They need the bearer token of a Flight handshake (Basic credentials, as for Flight
//! SQL) unless the scheduler allows anonymous access; a user sees only their own jobs.
//!
//! Every request passes the [gate](crate::gate) first; `DoGet` tickets are checked
//! against the caller's jobs and the registered executors before they are redeemed.

use std::net::SocketAddr;
use std::sync::Arc;

use arrow_flight::flight_service_server::{FlightService, FlightServiceServer};
use arrow_flight::{
    Action, ActionType, Criteria, Empty, FlightData, FlightDescriptor, FlightInfo,
    HandshakeRequest, PollInfo, SchemaResult, Ticket,
};
use axum::Router;
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response as HttpResponse};
use axum::routing::get;
use ballista_core::extension::BallistaConfigGrpcEndpoint;
use ballista_core::extension::SessionConfigExt;
use ballista_core::flight_proxy_service::BallistaFlightProxyService;
use ballista_core::serde::protobuf::scheduler_grpc_server::SchedulerGrpcServer;
use ballista_flight_sql::{BallistaFlightSqlService, QueryBackend, QueryResult};
use ballista_scheduler::scheduler_server::SchedulerServer;
use datafusion::logical_expr::LogicalPlan;
use datafusion::prelude::SessionContext;
use datafusion_proto::protobuf::{LogicalPlanNode, PhysicalPlanNode};
use futures::stream::{BoxStream, StreamExt};
use tonic::metadata::MetadataMap;
use tonic::service::RoutesBuilder;
use tonic::{Request, Response, Status, Streaming};

use crate::auth::{Auth, GateAuthenticator, IDENTITY_HEADER, basic_credentials};
use crate::gate::{Caller, Gate, GuardedScheduler, JobOwners, check_ticket, ticket_partition};
use crate::jobs::{JobStatus, PipelineJobs};

type Scheduler = SchedulerServer<LogicalPlanNode, PhysicalPlanNode>;
type SqlService = BallistaFlightSqlService<DlpBackend>;

/// Ballista's scheduler as the Flight SQL backend, with the result schema checked.
///
/// Ballista 55 takes the schema it promises the client from the execution graph's stage
/// without output links. With adaptive planning that can be an input stage (for
/// `SELECT k, count(*) AS n ... GROUP BY k`, the partial aggregate's
/// `count(Int64(1))[count]`), and ADBC then rejects the result ("endpoint returned
/// inconsistent schema"). When the names disagree with the query's, the schema comes from
/// the physical plan instead (the plan the final stage was cut from).
///
/// With users (no `--allow-anonymous`), a session that turned on Ballista's fault injection
/// is refused ([`crate::gate::fault_injection_refused`]).
pub struct DlpBackend(Arc<Scheduler>, bool);

#[async_trait::async_trait]
impl QueryBackend for DlpBackend {
    async fn session(&self, session_id: &str) -> ballista_core::error::Result<Arc<SessionContext>> {
        QueryBackend::session(self.0.as_ref(), session_id).await
    }

    async fn close_session(&self, session_id: &str) -> ballista_core::error::Result<()> {
        QueryBackend::close_session(self.0.as_ref(), session_id).await
    }

    async fn execute(
        &self,
        job_name: &str,
        ctx: Arc<SessionContext>,
        plan: LogicalPlan,
    ) -> ballista_core::error::Result<QueryResult> {
        if self.1
            && ctx
                .state()
                .config()
                .ballista_config()
                .chaos_execution_enabled()
        {
            let refused = crate::gate::fault_injection_refused();
            return Err(ballista_core::error::BallistaError::General(
                refused.message().to_string(),
            ));
        }
        let mut result =
            QueryBackend::execute(self.0.as_ref(), job_name, ctx.clone(), plan.clone()).await?;
        let wanted = plan.schema().fields();
        let names_agree = result.schema.fields().len() == wanted.len()
            && result
                .schema
                .fields()
                .iter()
                .zip(wanted.iter())
                .all(|(a, b)| a.name() == b.name());
        if !names_agree {
            let physical = ctx.state().create_physical_plan(&plan).await?.schema();
            tracing::debug!(
                job_id = %result.job_id,
                reported = ?result.schema.fields().iter().map(|f| f.name()).collect::<Vec<_>>(),
                "result schema taken from the physical plan"
            );
            result.schema = physical;
        }
        Ok(result)
    }
}

/// Flight SQL plus the pipeline-job actions.
pub struct DlpFlightService {
    sql: SqlService,
    auth: Arc<Auth>,
    owners: Arc<JobOwners>,
    scheduler: Arc<Scheduler>,
    jobs: Arc<PipelineJobs>,
}

const ACTIONS: [(&str, &str); 8] = [
    (
        "dlp.pipeline.submit",
        "Starts a pipeline job. Body: a YAML job spec (data, split, stages, evaluation, \
         tuning, output.model). Result: the job's status as JSON, with job_id.",
    ),
    (
        "dlp.pipeline.status",
        "Body: a job id. Result: its status as JSON (state, phase, events, progress, error, \
         result with the metrics and model location).",
    ),
    (
        "dlp.pipeline.watch",
        "Body: a job id. Results: its status as JSON on every change (and every 2 s), \
         until it ends.",
    ),
    (
        "dlp.pipeline.cancel",
        "Body: a job id. Cancels the job and its Ballista jobs. Result: its status.",
    ),
    (
        "dlp.pipeline.list",
        "Result: the caller's pipeline jobs, as a JSON array of statuses.",
    ),
    (
        "dlp.model.describe",
        "Body: a saved PipelineModel's directory. Checks that it loads and answers its \
         path, classNames, stages and manifest (pipeline.yaml) as JSON.",
    ),
    (
        "dlp.function.list",
        "Result: the registered model functions as a JSON array of {name, kind, ..., owner} \
         (owner null: configured by the operator).",
    ),
    (
        "dlp.model.save",
        "Body: JSON {from, to, overwrite}. Saves the PipelineModel at `from` again at `to` \
         (under a writable root, owned by the caller). Result: as dlp.model.describe.",
    ),
];

fn bearer(metadata: &MetadataMap) -> Option<&str> {
    let value = metadata.get("authorization")?.to_str().ok()?;
    value
        .strip_prefix("Bearer ")
        .or_else(|| value.strip_prefix("bearer "))
        .map(str::trim)
}

fn json_result(value: &impl serde::Serialize) -> Result<arrow_flight::Result, Status> {
    let body = serde_json::to_vec(value)
        .map_err(|e| Status::internal(format!("cannot encode the answer: {e}")))?;
    Ok(arrow_flight::Result { body: body.into() })
}

impl DlpFlightService {
    /// The caller, as the gate established it.
    fn caller<T>(request: &Request<T>) -> Result<Caller, Status> {
        crate::gate::caller(request)
    }

    async fn pipeline_action(
        &self,
        user: &str,
        action: &Action,
    ) -> Result<BoxStream<'static, Result<arrow_flight::Result, Status>>, Status> {
        let body = std::str::from_utf8(&action.body)
            .map_err(|_| {
                Status::invalid_argument(format!("{}: the body must be UTF-8 text", action.r#type))
            })?
            .trim();
        let one =
            |r: Result<arrow_flight::Result, Status>| futures::stream::once(async { r }).boxed();
        match action.r#type.as_str() {
            "dlp.pipeline.submit" => {
                let status = self.jobs.submit(user, body).map_err(Status::from)?;
                Ok(one(json_result(&status)))
            }
            "dlp.pipeline.status" => {
                let status = self.jobs.status(user, body).await.map_err(Status::from)?;
                Ok(one(json_result(&status)))
            }
            "dlp.pipeline.cancel" => {
                let status = self.jobs.cancel(user, body).await.map_err(Status::from)?;
                Ok(one(json_result(&status)))
            }
            "dlp.pipeline.list" => Ok(one(json_result(&self.jobs.list(user).await))),
            "dlp.function.list" => {
                let list: Vec<serde_json::Value> = dlp_plugin::sql::functions::listed()
                    .into_iter()
                    .map(|(name, source, owner)| {
                        let mut v = serde_json::to_value(&source).unwrap_or_default();
                        v["name"] = name.into();
                        v["owner"] = owner.into();
                        v
                    })
                    .collect();
                Ok(one(json_result(&list)))
            }
            "dlp.model.describe" => {
                let model = crate::jobs::describe_model(body).map_err(Status::from)?;
                Ok(one(json_result(&model)))
            }
            "dlp.model.save" => {
                let model = crate::jobs::save_model(user, body).map_err(Status::from)?;
                Ok(one(json_result(&model)))
            }
            "dlp.pipeline.watch" => {
                let statuses = self.jobs.clone().watch(user, body).map_err(Status::from)?;
                Ok(statuses.map(|s: JobStatus| json_result(&s)).boxed())
            }
            other => Err(Status::invalid_argument(format!(
                "unknown action '{other}'; the pipeline actions are {}",
                ACTIONS.map(|(a, _)| a).join(", ")
            ))),
        }
    }
}

#[tonic::async_trait]
impl FlightService for DlpFlightService {
    type HandshakeStream = <SqlService as FlightService>::HandshakeStream;
    type ListFlightsStream = <SqlService as FlightService>::ListFlightsStream;
    type DoGetStream = <SqlService as FlightService>::DoGetStream;
    type DoPutStream = <SqlService as FlightService>::DoPutStream;
    type DoExchangeStream = <SqlService as FlightService>::DoExchangeStream;
    type DoActionStream = BoxStream<'static, Result<arrow_flight::Result, Status>>;
    type ListActionsStream = BoxStream<'static, Result<ActionType, Status>>;

    async fn handshake(
        &self,
        mut request: Request<Streaming<HandshakeRequest>>,
    ) -> Result<Response<Self::HandshakeStream>, Status> {
        let peer = request
            .extensions()
            .get::<ConnectInfo<SocketAddr>>()
            .map(|c| c.0.ip());
        let user = match basic_credentials(request.metadata()) {
            Ok((user, password)) => Some(self.auth.login(peer, &user, &password).await?),
            Err(_) if self.auth.anonymous() => None,
            Err(e) => return Err(e),
        };
        // The inner service's authenticator takes the identity checked here.
        let metadata = request.metadata_mut();
        metadata.remove(IDENTITY_HEADER);
        if let Some(user) = &user {
            let value = user
                .parse()
                .map_err(|_| Status::invalid_argument("the user name is not a valid header"))?;
            metadata.insert(IDENTITY_HEADER, value);
        }
        let response = FlightService::handshake(&self.sql, request).await?;
        if let Some(token) = bearer(response.metadata()) {
            let user = user.unwrap_or_else(|| "anonymous".into());
            self.auth.tokens.insert(token, &user);
        }
        Ok(response)
    }

    async fn list_flights(
        &self,
        request: Request<Criteria>,
    ) -> Result<Response<Self::ListFlightsStream>, Status> {
        FlightService::list_flights(&self.sql, request).await
    }

    async fn get_flight_info(
        &self,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let caller = Self::caller(&request)?;
        // SQL runs as the caller: CREATE FUNCTION records them as the function's owner.
        let response = dlp_plugin::sql::functions::CURRENT_USER
            .scope(
                caller.owner().to_string(),
                FlightService::get_flight_info(&self.sql, request),
            )
            .await?;
        // The job behind the result partitions is the caller's.
        for endpoint in &response.get_ref().endpoint {
            if let Some(ticket) = &endpoint.ticket
                && let Ok(Some(p)) = ticket_partition(&ticket.ticket)
            {
                self.owners.record(&p.job_id, caller.owner());
            }
        }
        Ok(response)
    }

    async fn poll_flight_info(
        &self,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<PollInfo>, Status> {
        FlightService::poll_flight_info(&self.sql, request).await
    }

    async fn get_schema(
        &self,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<SchemaResult>, Status> {
        FlightService::get_schema(&self.sql, request).await
    }

    async fn do_get(
        &self,
        request: Request<Ticket>,
    ) -> Result<Response<Self::DoGetStream>, Status> {
        let caller = Self::caller(&request)?;
        check_ticket(
            &self.scheduler,
            &self.owners,
            &caller,
            &request.get_ref().ticket,
        )
        .await?;
        FlightService::do_get(&self.sql, request).await
    }

    async fn do_put(
        &self,
        request: Request<Streaming<FlightData>>,
    ) -> Result<Response<Self::DoPutStream>, Status> {
        FlightService::do_put(&self.sql, request).await
    }

    async fn do_exchange(
        &self,
        request: Request<Streaming<FlightData>>,
    ) -> Result<Response<Self::DoExchangeStream>, Status> {
        FlightService::do_exchange(&self.sql, request).await
    }

    async fn do_action(
        &self,
        request: Request<Action>,
    ) -> Result<Response<Self::DoActionStream>, Status> {
        if !request.get_ref().r#type.starts_with("dlp.") {
            let user = Self::caller(&request)?.owner().to_string();
            let response = dlp_plugin::sql::functions::CURRENT_USER
                .scope(user, FlightService::do_action(&self.sql, request))
                .await?;
            return Ok(response.map(|s| s.boxed()));
        }
        let user = Self::caller(&request)?.owner().to_string();
        let stream = self.pipeline_action(&user, request.get_ref()).await?;
        Ok(Response::new(stream))
    }

    async fn list_actions(
        &self,
        request: Request<Empty>,
    ) -> Result<Response<Self::ListActionsStream>, Status> {
        let ours = futures::stream::iter(ACTIONS.map(|(t, d)| {
            Ok(ActionType {
                r#type: t.into(),
                description: d.into(),
            })
        }));
        match FlightService::list_actions(&self.sql, request).await {
            Ok(sql) => Ok(Response::new(sql.into_inner().chain(ours).boxed())),
            Err(_) => Ok(Response::new(ours.boxed())),
        }
    }
}

/// Serves the scheduler on `listener` (over TLS with `tls`) until it fails. `auth`: who may
/// do what; `url`: how the pipeline jobs reach this scheduler (`internal`: a loopback
/// listener for them when the port speaks TLS).
#[allow(clippy::too_many_arguments)]
pub async fn serve(
    listener: tokio::net::TcpListener,
    internal: Option<tokio::net::TcpListener>,
    tls: Option<tokio_rustls::TlsAcceptor>,
    scheduler: Scheduler,
    auth: Arc<Auth>,
    url: String,
    job_limits: crate::jobs::JobLimits,
    state_dir: Option<std::path::PathBuf>,
) -> anyhow::Result<()> {
    let config = scheduler.state.config.clone();
    let (max_decoding, max_encoding) = (
        config.grpc_server_max_decoding_message_size as usize,
        config.grpc_server_max_encoding_message_size as usize,
    );
    let owners = Arc::new(JobOwners::default());
    let mut routes = RoutesBuilder::default();
    routes.add_service(
        SchedulerGrpcServer::new(GuardedScheduler::new(scheduler.clone(), owners.clone()))
            .max_encoding_message_size(max_encoding)
            .max_decoding_message_size(max_decoding),
    );
    let endpoint = config
        .override_create_grpc_client_endpoint
        .clone()
        .map(|f| Arc::new(BallistaConfigGrpcEndpoint::new(f)));
    let proxy =
        BallistaFlightProxyService::new(max_decoding, max_encoding, config.use_tls, endpoint);
    let scheduler = Arc::new(scheduler);
    if config.flight_sql_enabled() {
        let sql = BallistaFlightSqlService::new(
            Arc::new(DlpBackend(scheduler.clone(), !auth.anonymous())),
            proxy,
        )
        .with_authenticator(Arc::new(GateAuthenticator {
            anonymous: auth.anonymous(),
        }));
        if auth.anonymous() {
            tracing::warn!(
                "Flight SQL and pipeline jobs are served without authentication \
                 (--allow-anonymous): anyone who can reach this port can run queries and jobs"
            );
        }
        let service = DlpFlightService {
            sql,
            auth: auth.clone(),
            owners: owners.clone(),
            scheduler: scheduler.clone(),
            jobs: Arc::new(
                PipelineJobs::new(
                    scheduler.clone(),
                    url,
                    auth.clone(),
                    job_limits,
                    state_dir.as_deref(),
                )
                .map_err(|e| anyhow::anyhow!(e))?,
            ),
        };
        routes.add_service(
            FlightServiceServer::new(service)
                .max_decoding_message_size(max_decoding)
                .max_encoding_message_size(max_encoding),
        );
    } else if config.enable_embedded_flight_proxy {
        if !auth.anonymous() || auth.cluster.is_some() {
            // Ballista's bare proxy checks no ticket and would carry the cluster token to
            // any address a ticket names.
            anyhow::bail!(
                "with authentication or a cluster secret, results are fetched through the \
                 Flight SQL service, which checks tickets: drop --no-flight-sql"
            );
        }
        routes.add_service(
            FlightServiceServer::new(proxy)
                .max_decoding_message_size(max_decoding)
                .max_encoding_message_size(max_encoding),
        );
    }
    let grpc = routes
        .routes()
        .into_axum_router()
        .fallback(|| async { StatusCode::NOT_FOUND });
    let health = Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .with_state(scheduler.clone());
    let app = if config.disable_rest_api {
        grpc.merge(health)
    } else {
        ballista_scheduler::api::get_routes(scheduler.clone())
            .merge(grpc)
            .merge(health)
    };
    let app = app.layer(axum::middleware::from_fn_with_state(
        Arc::new(Gate { auth }),
        crate::gate::gate,
    ));
    let server = HeaderValue::from_str(&format!("ballista/{}", ballista_core::BALLISTA_VERSION))?;
    let app = app.layer(axum::middleware::map_response(
        move |mut r: HttpResponse| {
            let server = server.clone();
            async move {
                r.headers_mut().insert(header::SERVER, server);
                r
            }
        },
    ));
    if let Some(internal) = internal {
        // The scheduler's own pipeline jobs, in plain text on loopback (same gate).
        let app = app.clone();
        tokio::spawn(async move {
            if let Err(e) = crate::tls::serve_plain(internal, app).await {
                tracing::error!("the loopback port of pipeline jobs failed: {e}");
            }
        });
    }
    match tls {
        Some(acceptor) => crate::tls::serve(listener, app, acceptor).await,
        None => crate::tls::serve_plain(listener, app).await,
    }
}

/// 200 once the scheduler has its minimum of live executors, else 503 (as Ballista's).
async fn readyz(State(scheduler): State<Arc<Scheduler>>) -> HttpResponse {
    if scheduler.is_ready() {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        let required = scheduler.state.config.min_ready_executors;
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: fewer than {required} executors registered\n"),
        )
            .into_response()
    }
}

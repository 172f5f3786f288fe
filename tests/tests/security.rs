//! The service behind one authenticated front door: each attack is made against a live
//! cluster (a `dlp-scheduler` with a users file of bcrypt hashes, an admin, a cluster
//! secret and a data root; two `dlp-executor`s behind their gates) and must be refused
//! without reading, writing or connecting anything.

use std::collections::HashMap;
use std::net::{IpAddr, TcpListener};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use arrow_flight::flight_service_client::FlightServiceClient;
use arrow_flight::{HandshakeRequest, Ticket};
use ballista_core::serde::protobuf::scheduler_grpc_client::SchedulerGrpcClient;
use ballista_core::serde::protobuf::{
    Action, CancelJobParams, FetchPartition, GetJobStatusParams, RegisterExecutorParams,
    action::ActionType,
};
use base64::Engine;
use dlp_tests::{Cluster, binary, free_port, http_request, shared_data, users_file};
use prost::Message;
use tonic::transport::{Channel, Endpoint};

const USERS: &[(&str, &str)] = &[
    ("alice", "correct horse"),
    ("bob", "battery staple"),
    ("root", "admin pass"),
];

struct Secured {
    cluster: Cluster,
    /// The data root (Ballista's Rust client plans `read_images` itself: absolute paths).
    root: String,
    _dir: tempfile::TempDir,
}

impl Secured {
    fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        dlp_tests::copy_flowers(&root.join("flowers"), &["daisy"], 6);
        let users = dir.path().join("users");
        users_file(&users, USERS).unwrap();
        let (root, users) = (
            root.to_string_lossy().into_owned(),
            users.to_string_lossy().into_owned(),
        );
        let scheduler = [
            "--auth-file",
            &users,
            "--admin",
            "root",
            "--data-root",
            &root,
        ];
        let executor = ["--data-root", root.as_str()];
        let cluster = Cluster::start_each(2, &scheduler, &[&executor, &executor]).expect("cluster");
        let root = std::fs::canonicalize(&root)
            .unwrap()
            .to_string_lossy()
            .into_owned();
        Self {
            cluster,
            root,
            _dir: dir,
        }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.cluster.port)
    }

    async fn channel(&self) -> Channel {
        Endpoint::from_shared(self.url())
            .unwrap()
            .connect()
            .await
            .unwrap()
    }

    async fn token(&self, user: &str) -> String {
        let password = USERS.iter().find(|(u, _)| *u == user).unwrap().1;
        dlp_plugin::credentials::login(&self.cluster.url(), user, password, None)
            .await
            .unwrap()
    }

    /// A client session of `user` on the cluster.
    async fn session(&self, user: &str) -> datafusion::prelude::SessionContext {
        Self::session_for(self.cluster.port, user).await
    }

    /// A client session of `user` on the cluster at `port`.
    async fn session_for(port: u16, user: &str) -> datafusion::prelude::SessionContext {
        let url = format!("df://127.0.0.1:{port}");
        let password = USERS.iter().find(|(u, _)| *u == user).unwrap().1;
        let token = dlp_plugin::credentials::login(&url, user, password, None)
            .await
            .unwrap();
        let config =
            dlp_plugin::credentials::with_bearer(dlp_plugin::session::session_config(), &token);
        dlp_plugin::session::remote_context_with_config(&url, config)
            .await
            .unwrap()
    }

    fn rest(&self, method: &str, path: &str, user: Option<&str>) -> (u16, String) {
        let basic = user.map(|u| (u, USERS.iter().find(|(n, _)| *n == u).unwrap().1));
        http_request(self.cluster.port, method, path, basic).expect("REST answer")
    }

    /// Job ids and executor Flight addresses, as the admin sees them.
    fn jobs(&self) -> Vec<String> {
        let (status, body) = self.rest("GET", "/api/jobs", Some("root"));
        assert_eq!(status, 200, "{body}");
        let json: serde_json::Value =
            serde_json::from_str(body.trim()).unwrap_or_else(|e| panic!("{e}: {body}"));
        json.as_array()
            .unwrap()
            .iter()
            .map(|j| j["job_id"].as_str().unwrap().to_string())
            .collect()
    }

    fn executors(&self) -> Vec<(String, u16)> {
        let (status, body) = self.rest("GET", "/api/executors", Some("root"));
        assert_eq!(status, 200, "{body}");
        let json: serde_json::Value = serde_json::from_str(body.trim()).unwrap();
        json.as_array()
            .unwrap()
            .iter()
            .map(|e| {
                (
                    e["host"].as_str().unwrap().to_string(),
                    e["port"].as_u64().unwrap() as u16,
                )
            })
            .collect()
    }
}

fn with_bearer<T>(message: T, token: &str) -> tonic::Request<T> {
    let mut r = tonic::Request::new(message);
    r.metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    r
}

/// `GetJobStatus` (or `CancelJob`) of `job` presenting `token` (none: no credentials); the
/// refusal's code.
async fn job_call(
    grpc: &mut SchedulerGrpcClient<Channel>,
    job: &str,
    token: Option<&str>,
    cancel: bool,
) -> Result<(), tonic::Code> {
    fn request<T>(message: T, token: Option<&str>) -> tonic::Request<T> {
        match token {
            Some(t) => with_bearer(message, t),
            None => tonic::Request::new(message),
        }
    }
    let job_id = job.to_string();
    let result = if cancel {
        grpc.cancel_job(request(CancelJobParams { job_id }, token))
            .await
            .map(|_| ())
    } else {
        grpc.get_job_status(request(GetJobStatusParams { job_id }, token))
            .await
            .map(|_| ())
    };
    result.map_err(|e| e.code())
}

fn fetch_ticket(job_id: &str, host: &str, port: u16) -> Ticket {
    let action = Action {
        action_type: Some(ActionType::FetchPartition(FetchPartition {
            job_id: job_id.into(),
            stage_id: 1,
            partition_id: 0,
            host: host.into(),
            port: port.into(),
            ..Default::default()
        })),
        settings: vec![],
    };
    Ticket {
        ticket: action.encode_to_vec().into(),
    }
}

fn is_unauthenticated(e: &impl std::fmt::Display) -> bool {
    let s = e.to_string();
    s.contains("Unauthenticated") || s.contains("UNAUTHENTICATED") || s.contains("credentials")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ballista_rpcs_rest_and_tickets_need_their_owner() {
    let s = Secured::start();
    let query = &format!(
        "SELECT count(*) AS n FROM read_images('{}/flowers/daisy')",
        s.root
    );

    // Ballista's own client without credentials: refused.
    let anonymous = dlp_plugin::session::remote_context(&s.cluster.url())
        .await
        .unwrap();
    let err = match anonymous.sql(query).await {
        Ok(df) => df.collect().await.unwrap_err().to_string(),
        Err(e) => e.to_string(),
    };
    assert!(is_unauthenticated(&err), "{err}");

    // alice, logged in: her query runs (through her gate-checked partition fetches too).
    let alice = s.session("alice").await;
    let batches = alice.sql(query).await.unwrap().collect().await.unwrap();
    let n: i64 = datafusion::arrow::array::AsArray::as_primitive::<
        datafusion::arrow::datatypes::Int64Type,
    >(batches[0].column(0))
    .value(0);
    assert_eq!(
        n,
        6,
        "{batches:?}\n{}\n{}",
        s.cluster.scheduler.output(),
        s.cluster.executors[0].output()
    );

    // REST: nobody, a user, the admin.
    let (status, _) = s.rest("GET", "/api/jobs", None);
    assert_eq!(status, 401, "REST without credentials");
    let (status, body) = s.rest("GET", "/api/jobs", Some("bob"));
    assert_eq!(status, 403, "REST for a user who is not an admin: {body}");
    let jobs = s.jobs();
    assert!(!jobs.is_empty());
    let job = jobs.last().unwrap().clone();
    let (status, _) = s.rest("PATCH", &format!("/api/job/{job}"), Some("bob"));
    assert_eq!(status, 403, "bob cannot cancel through REST");

    // Ballista gRPC: bob cannot see or cancel alice's job; alice can see it.
    let (alice_token, bob_token) = (s.token("alice").await, s.token("bob").await);
    let mut grpc = SchedulerGrpcClient::new(s.channel().await);
    use tonic::Code::{NotFound, Unauthenticated};
    for (token, cancel, refused) in [
        (None, false, Unauthenticated),
        (Some(bob_token.as_str()), false, NotFound),
        (Some(bob_token.as_str()), true, NotFound),
        (Some("forged-token"), false, Unauthenticated),
    ] {
        let got = job_call(&mut grpc, &job, token, cancel).await;
        assert_eq!(got, Err(refused), "token {token:?}, cancel {cancel}");
    }
    job_call(&mut grpc, &job, Some(&alice_token), false)
        .await
        .expect("alice sees her job");
    // A hand-made physical plan (it could name another job's shuffle partitions): refused.
    let e = grpc
        .execute_query(with_bearer(
            ballista_core::serde::protobuf::ExecuteQueryParams {
                query: Some(
                    ballista_core::serde::protobuf::execute_query_params::Query::PhysicalPlan(
                        vec![0; 16],
                    ),
                ),
                ..Default::default()
            },
            &alice_token,
        ))
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e}");

    // DoGet: no token; bob with alice's job; alice with an address that is no executor
    // (nothing may connect to it).
    let executors = s.executors();
    assert_eq!(executors.len(), 2, "{executors:?}");
    let (host, port) = executors[0].clone();
    let mut flight = FlightServiceClient::new(s.channel().await);
    let e = flight
        .do_get(fetch_ticket(&job, &host, port))
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unauthenticated, "{e}");
    let e = flight
        .do_get(with_bearer(fetch_ticket(&job, &host, port), &bob_token))
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::NotFound, "{e}");
    let trap = TcpListener::bind("127.0.0.1:0").unwrap();
    trap.set_nonblocking(true).unwrap();
    let trap_port = trap.local_addr().unwrap().port();
    let e = flight
        .do_get(with_bearer(
            fetch_ticket(&job, "127.0.0.1", trap_port),
            &alice_token,
        ))
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e}");
    assert!(e.message().contains("not a registered executor"), "{e}");
    assert!(
        trap.accept().is_err(),
        "the scheduler connected to the address in a forged ticket"
    );

    // The executor's own Flight port, straight, without the cluster token.
    let direct = Endpoint::from_shared(format!("http://{host}:{port}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let e = FlightServiceClient::new(direct)
        .do_get(with_bearer(fetch_ticket(&job, &host, port), &alice_token))
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unauthenticated, "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn executors_need_the_cluster_secret() {
    let mut s = Secured::start();
    // A raw registration without, and with a wrong, cluster token.
    let mut grpc = SchedulerGrpcClient::new(s.channel().await);
    let params = RegisterExecutorParams {
        metadata: Some(ballista_core::serde::protobuf::ExecutorRegistration {
            id: "intruder".into(),
            port: 9,
            grpc_port: 9,
            ..Default::default()
        }),
    };
    let e = grpc.register_executor(params.clone()).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unauthenticated, "{e}");
    let mut r = tonic::Request::new(params);
    r.metadata_mut()
        .insert("x-dlp-cluster-token", "0".repeat(64).parse().unwrap());
    let e = grpc.register_executor(r).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unauthenticated, "{e}");

    // Real executors: one without the secret, one with another secret.
    let dir = tempfile::tempdir().unwrap();
    let wrong = dir.path().join("wrong");
    std::fs::write(&wrong, "w".repeat(40)).unwrap();
    for secret in [None, Some(wrong.as_path())] {
        let mut cmd = Command::new(binary("dlp-executor").unwrap());
        cmd.args([
            "--bind-host",
            "127.0.0.1",
            "--external-host",
            "127.0.0.1",
            "--scheduler-host",
            "127.0.0.1",
        ])
        .args(["--scheduler-port", &s.cluster.port.to_string()])
        .args(["--bind-port", &free_port().to_string()])
        .args(["--bind-grpc-port", &free_port().to_string()])
        .args(["--bind-health-port", &free_port().to_string()])
        .args(["--work-dir", &dir.path().to_string_lossy()]);
        if let Some(path) = secret {
            cmd.arg(format!("--cluster-secret-file={}", path.display()));
        }
        cmd.stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        let mut child = cmd.spawn().unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline && child.try_wait().unwrap().is_none() {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let _ = child.kill();
        let _ = child.wait();
        assert_eq!(
            s.executors().len(),
            2,
            "an executor with secret {secret:?} registered"
        );
    }
    assert!(
        s.cluster
            .scheduler
            .output()
            .contains("cluster token refused"),
        "the refusals are logged"
    );
    // The real executors are still serving.
    let alice = s.session("alice").await;
    alice
        .sql(&format!(
            "SELECT count(*) FROM read_images('{}/flowers/daisy')",
            s.root
        ))
        .await
        .unwrap()
        .collect()
        .await
        .unwrap();
    s.cluster.executors[1].kill();
}

/// Tries `alice`'s login from `source` with `password`; Ok or the status.
async fn login_from(port: u16, source: IpAddr, password: &str) -> Result<(), tonic::Status> {
    let channel = Endpoint::from_shared(format!("http://127.0.0.1:{port}"))
        .unwrap()
        .local_address(Some(source))
        .connect()
        .await
        .unwrap();
    let mut request = tonic::Request::new(futures::stream::iter([HandshakeRequest::default()]));
    let basic = base64::engine::general_purpose::STANDARD.encode(format!("alice:{password}"));
    request
        .metadata_mut()
        .insert("authorization", format!("Basic {basic}").parse().unwrap());
    FlightServiceClient::new(channel)
        .handshake(request)
        .await
        .map(|_| ())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_logins_are_slowed_per_client() {
    let s = Secured::start();
    let port = s.cluster.port;
    // Not 127.0.0.2: executors behind their gates listen there, and the thousands of
    // ports these attempts take (then hold in TIME_WAIT) once took an executor's port.
    let attacker: IpAddr = "127.0.0.3".parse().unwrap();
    let start = Instant::now();
    let mut outcomes: HashMap<&str, usize> = HashMap::new();
    while start.elapsed() < Duration::from_secs(10) {
        let e = login_from(port, attacker, "guess").await.unwrap_err();
        let kind = match e.code() {
            tonic::Code::Unauthenticated => "checked",
            tonic::Code::ResourceExhausted => "throttled",
            other => panic!("unexpected {other:?}: {e}"),
        };
        *outcomes.entry(kind).or_default() += 1;
    }
    let checked = outcomes.get("checked").copied().unwrap_or(0);
    let throttled = outcomes.get("throttled").copied().unwrap_or(0);
    println!(
        "10 s of wrong passwords from one client: {checked} checked, {throttled} refused unchecked"
    );
    // 5 at once, then one per 2 s: at most 5 + 10 / 2 (+1 for the clock's edges).
    assert!((5..=11).contains(&checked), "{outcomes:?}");
    assert!(throttled > checked, "{outcomes:?}");
    // Refused attempts say why; alice on another client logs in at once.
    let e = login_from(port, attacker, "guess").await.unwrap_err();
    if e.code() == tonic::Code::ResourceExhausted {
        assert!(e.message().contains("too many failed logins"), "{e}");
    }
    let t = Instant::now();
    login_from(port, "127.0.0.4".parse().unwrap(), "correct horse")
        .await
        .expect("alice from another client");
    assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
    assert!(
        !s.cluster.scheduler.output().contains("guess"),
        "no password in the log"
    );
}

#[test]
fn users_files_hold_hashes() {
    let dir = tempfile::tempdir().unwrap();
    let plain = dir.path().join("users");
    std::fs::write(&plain, "alice:correct horse\n").unwrap();
    let secret = dir.path().join("secret");
    std::fs::write(&secret, "s".repeat(40)).unwrap();
    let out = Command::new(binary("dlp-scheduler").unwrap())
        .args([
            "--bind-host",
            "127.0.0.1",
            "--bind-port",
            &free_port().to_string(),
        ])
        .arg(format!("--auth-file={}", plain.display()))
        .arg(format!("--cluster-secret-file={}", secret.display()))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("line 1") && err.contains("bcrypt"), "{err}");
    assert!(
        !err.contains("correct horse"),
        "the password is echoed: {err}"
    );

    // Users without a cluster secret: refused too.
    let hashed = dir.path().join("hashed");
    users_file(&hashed, &[("alice", "pw")]).unwrap();
    let text = std::fs::read_to_string(&hashed).unwrap();
    assert!(text.starts_with("alice:$2b$04$"), "{text}");
    let out = Command::new(binary("dlp-scheduler").unwrap())
        .args([
            "--bind-host",
            "127.0.0.1",
            "--bind-port",
            &free_port().to_string(),
        ])
        .arg(format!("--auth-file={}", hashed.display()))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--cluster-secret-file"), "{err}");
}

/// Runs SQL with the ADBC Flight SQL client as `user`; Ok(stdout) or Err(stderr).
fn adbc(port: u16, user: &str, sql: &str) -> Result<String, String> {
    let password = USERS.iter().find(|(u, _)| *u == user).unwrap().1;
    let out = Command::new(dlp_tests::python().unwrap())
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/python/flight_sql_query.py"
        ))
        .arg(format!("grpc://127.0.0.1:{port}"))
        .arg(sql)
        .env("DLP_FLIGHT_USER", user)
        .env("DLP_FLIGHT_PASSWORD", password)
        .output()
        .unwrap();
    if out.status.success() {
        Ok(String::from_utf8(out.stdout).unwrap())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_outside_the_roots_are_neither_read_nor_written() {
    // root: t.csv, escape -> secret (a directory), link.csv -> secret/private.csv,
    // mixed/{a.csv, b.csv -> secret/private.csv}; out: the writable root.
    let dir = tempfile::tempdir().unwrap();
    let base = std::fs::canonicalize(dir.path()).unwrap();
    let (root, secret, out) = (base.join("root"), base.join("secret"), base.join("out"));
    for d in [&root, &secret, &out, &root.join("mixed")] {
        std::fs::create_dir_all(d).unwrap();
    }
    std::fs::write(root.join("t.csv"), "x\n1\n2\n").unwrap();
    std::fs::write(root.join("mixed/a.csv"), "x\n1\n").unwrap();
    std::fs::write(secret.join("private.csv"), "x\n424242\n").unwrap();
    std::os::unix::fs::symlink(&secret, root.join("escape")).unwrap();
    std::os::unix::fs::symlink(secret.join("private.csv"), root.join("link.csv")).unwrap();
    std::os::unix::fs::symlink(secret.join("private.csv"), root.join("mixed/b.csv")).unwrap();
    let users = base.join("users");
    users_file(&users, USERS).unwrap();
    let config = base.join("dlp.yaml");
    std::fs::write(
        &config,
        "functions:\n  top3: {kind: model, model: efficientnet_lite0, topK: 3}\n",
    )
    .unwrap();
    let (root_s, out_s, users_s, config_s) = (
        root.to_string_lossy().into_owned(),
        out.to_string_lossy().into_owned(),
        users.to_string_lossy().into_owned(),
        config.to_string_lossy().into_owned(),
    );
    let executor = [
        "--data-root",
        root_s.as_str(),
        "--writable-root",
        out_s.as_str(),
    ];
    let cluster = Cluster::start_each(
        2,
        &[
            "--auth-file",
            &users_s,
            "--data-root",
            &root_s,
            "--writable-root",
            &out_s,
            "--config",
            &config_s,
        ],
        &[&executor, &executor],
    )
    .expect("cluster");
    let port = cluster.port;

    // Inside: fine.
    let ok = adbc(
        port,
        "alice",
        "CREATE EXTERNAL TABLE t STORED AS CSV LOCATION 't.csv' OPTIONS ('format.has_header' 'true'); SELECT sum(x) AS s FROM t",
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", cluster.scheduler.output()));
    assert!(ok.contains("\"s\": 3"), "{ok}");

    // Every spelling of a place outside: refused, and the secret never shows.
    let secret_file = secret.join("private.csv");
    let spellings = [
        "/etc/passwd".to_string(),
        "File:/etc/passwd".into(),
        "FILE:///etc/passwd".into(),
        " file:/etc/passwd".into(),
        "file://localhost/etc/passwd".into(),
        "file://evil.example/etc/passwd".into(),
        "file:///%65tc/passwd".into(),
        "../secret/private.csv".into(),
        "t.csv/../../secret/private.csv".into(),
        format!("{}", secret_file.display()),
        format!("file://{}/../secret/private.csv", root.display()),
        format!(
            "file://{}",
            secret_file.display().to_string().replace('/', "%2F")
        ),
        "escape/private.csv".into(),
        "escape/".into(),
        "link.csv".into(),
        "mixed/".into(),
        "s3://bucket/key.csv".into(),
    ];
    // Ballista's fault injection is refused from Flight SQL users as from Ballista clients.
    let err = adbc(
        port,
        "alice",
        "SET ballista.testing.chaos_execution.enabled = true; SELECT 1",
    )
    .unwrap_err();
    assert!(err.contains("fault injection"), "{err}");
    for location in &spellings {
        let sql = format!(
            "CREATE EXTERNAL TABLE s STORED AS CSV LOCATION '{location}' OPTIONS ('format.has_header' 'true'); SELECT * FROM s"
        );
        let err = adbc(port, "alice", &sql).expect_err(&sql);
        assert!(
            !err.contains("424242"),
            "{location}: the secret leaked:\n{err}"
        );
        assert!(
            [
                "outside the data roots",
                "symlink",
                "not allowed",
                "only local paths",
                "'..'",
                "privileges"
            ]
            .iter()
            .any(|m| err.contains(m)),
            "{location}: no rule named in:\n{err}"
        );
    }

    // Ballista's own client: the table is made on the client, the plan is checked on the
    // cluster; COPY TO writes only under the writable root.
    let alice = Secured::session_for(port, "alice").await;
    alice
        .sql(&format!(
            "CREATE EXTERNAL TABLE p STORED AS CSV LOCATION '{}' OPTIONS ('format.has_header' 'true')",
            secret_file.display()
        ))
        .await
        .unwrap()
        .collect()
        .await
        .unwrap();
    let err = match alice.sql("SELECT * FROM p").await {
        Ok(df) => df.collect().await.unwrap_err().to_string(),
        Err(e) => e.to_string(),
    };
    assert!(
        err.contains("outside the data roots") || err.contains("privileges"),
        "{err}"
    );
    assert!(!err.contains("424242"), "{err}");
    let evil = base.join("evil.csv");
    let copy = format!("COPY (SELECT 1 AS x) TO '{}' STORED AS CSV", evil.display());
    let err = match alice.sql(&copy).await {
        Ok(df) => df.collect().await.unwrap_err().to_string(),
        Err(e) => e.to_string(),
    };
    assert!(err.contains("writable root"), "{err}");
    assert!(!evil.exists(), "COPY TO wrote outside the writable roots");
    let into_root = root.join("planted.csv");
    let copy = format!(
        "COPY (SELECT 1 AS x) TO '{}' STORED AS CSV",
        into_root.display()
    );
    assert!(alice.sql(&copy).await.unwrap().collect().await.is_err());
    assert!(
        !into_root.exists(),
        "COPY TO wrote into a read-only data root"
    );
    let good = out.join("ok.csv");
    let copy = format!("COPY (SELECT 7 AS x) TO '{}' STORED AS CSV", good.display());
    alice.sql(&copy).await.unwrap().collect().await.unwrap();
    assert!(
        std::fs::read_to_string(&good).unwrap().contains('7'),
        "COPY TO under the writable root"
    );

    // Functions: no shadowing of built-ins, of the operator's or of another user's.
    for (user, sql, expected) in [
        (
            "alice",
            "CREATE FUNCTION lower() AS 'model:efficientnet_lite0'",
            "built-in",
        ),
        (
            "alice",
            "CREATE FUNCTION read_images() AS 'model:efficientnet_lite0'",
            "built-in",
        ),
        (
            "alice",
            "CREATE FUNCTION featurize() AS 'model:efficientnet_lite0'",
            "built-in",
        ),
        (
            "alice",
            "CREATE OR REPLACE FUNCTION top3() AS 'model:efficientnet_lite0:5'",
            "operator",
        ),
    ] {
        let err = adbc(port, user, sql).expect_err(sql);
        assert!(err.contains(expected), "{sql}: {err}");
    }
    adbc(
        port,
        "alice",
        "CREATE FUNCTION alice_top() AS 'model:efficientnet_lite0:3'",
    )
    .expect("alice's own function");
    let err = adbc(
        port,
        "bob",
        "CREATE OR REPLACE FUNCTION alice_top() AS 'model:efficientnet_lite0:5'",
    )
    .unwrap_err();
    assert!(err.contains("another user"), "{err}");
    adbc(
        port,
        "alice",
        "CREATE OR REPLACE FUNCTION alice_top() AS 'model:efficientnet_lite0:2'",
    )
    .expect("alice replaces her own function");
}

/// A PNG of `width` x `height` (16-bit RGB, all black), written by Python's zlib.
fn black_png16(path: &Path, width: u32, height: u32) {
    let script = r#"
import struct, sys, zlib
path, w, h = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
def chunk(kind, data):
    c = struct.pack(">I", len(data)) + kind + data
    return c + struct.pack(">I", zlib.crc32(kind + data) & 0xffffffff)
z = zlib.compressobj(1)
row = b"\0" + b"\0" * (w * 6)
parts = []
for _ in range(h):
    parts.append(z.compress(row))
parts.append(z.flush())
with open(path, "wb") as f:
    f.write(b"\x89PNG\r\n\x1a\n")
    f.write(chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0)))
    f.write(chunk(b"IDAT", b"".join(parts)))
    f.write(chunk(b"IEND", b""))
"#;
    let out = Command::new(dlp_tests::python().unwrap())
        .args(["-c", script])
        .arg(path)
        .args([width.to_string(), height.to_string()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A PNG whose header claims `width` x `height` (8-bit RGB), with no pixel data.
fn png_header(width: u32, height: u32) -> Vec<u8> {
    fn chunk(kind: &[u8], data: &[u8]) -> Vec<u8> {
        let mut c = (data.len() as u32).to_be_bytes().to_vec();
        c.extend_from_slice(kind);
        c.extend_from_slice(data);
        let mut crc_input = kind.to_vec();
        crc_input.extend_from_slice(data);
        c.extend_from_slice(&crc32(&crc_input).to_be_bytes());
        c
    }
    fn crc32(bytes: &[u8]) -> u32 {
        let mut crc = 0xffff_ffffu32;
        for &b in bytes {
            crc ^= b as u32;
            for _ in 0..8 {
                crc = if crc & 1 == 1 {
                    (crc >> 1) ^ 0xedb8_8320
                } else {
                    crc >> 1
                };
            }
        }
        !crc
    }
    let mut ihdr = width.to_be_bytes().to_vec();
    ihdr.extend_from_slice(&height.to_be_bytes());
    ihdr.extend_from_slice(&[8, 2, 0, 0, 0]);
    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    png.extend(chunk(b"IHDR", &ihdr));
    png.extend(chunk(b"IEND", b""));
    png
}

/// `(origin, invalid?)` of each row of `read_images(dir<options>)` on the cluster
/// (`options`: `, 'key=value'...`).
async fn reasons(
    ctx: &datafusion::prelude::SessionContext,
    dir: &str,
    options: &str,
) -> Vec<(String, Option<String>)> {
    use datafusion::arrow::array::AsArray;
    let sql = format!(
        "SELECT image['origin'] AS origin, image['height'] AS h FROM read_images('{dir}'{options})"
    );
    let batches = ctx.sql(&sql).await.unwrap().collect().await.unwrap();
    let mut out = vec![];
    for b in &batches {
        let origin = b.column(0).as_string::<i32>();
        let h = b
            .column(1)
            .as_primitive::<datafusion::arrow::datatypes::Int32Type>();
        for i in 0..b.num_rows() {
            out.push((
                origin.value(i).to_string(),
                (h.value(i) == -1).then(|| "invalid".into()),
            ));
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_input_never_takes_an_executor_down() {
    let dir = tempfile::tempdir().unwrap();
    let root = std::fs::canonicalize(dir.path()).unwrap();
    let bombs = root.join("bombs/x");
    std::fs::create_dir_all(&bombs).unwrap();
    // headers claiming 10^6 x 10^6, a FIFO, and real 13000 x 13000 16-bit PNGs
    std::fs::write(bombs.join("claims.png"), png_header(1_000_000, 1_000_000)).unwrap();
    let fifo = bombs.join("pipe.jpg");
    let ok = Command::new("mkfifo").arg(&fifo).status().unwrap();
    assert!(ok.success());
    let big = root.join("big/x");
    std::fs::create_dir_all(&big).unwrap();
    black_png16(&big.join("a.png"), 13_000, 13_000);
    for name in ["b.png", "c.png"] {
        std::fs::copy(big.join("a.png"), big.join(name)).unwrap();
    }
    let daisy = shared_data().join("flowers/daisy");
    let photo = std::fs::read_dir(&daisy)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    std::fs::copy(&photo, bombs.join("real.jpg")).unwrap();

    let users = root.join("users");
    users_file(&users, USERS).unwrap();
    let (root_s, users_s) = (
        root.to_string_lossy().into_owned(),
        users.to_string_lossy().into_owned(),
    );
    let executor = ["--data-root", root_s.as_str(), "--max-batch-size", "16"];
    let mut cluster = Cluster::start_each(
        2,
        &["--auth-file", &users_s, "--data-root", &root_s],
        &[&executor],
    )
    .expect("cluster");
    let pid = cluster.executors[0].pid();
    let ctx = Secured::session_for(cluster.port, "alice").await;

    // The client raises maxPixels; the executor's ceiling holds. The FIFO is an invalid row
    // (not a hang), the real photo decodes.
    let rows = reasons(
        &ctx,
        &format!("{root_s}/bombs"),
        ", 'recursiveFileLookup=true', 'maxPixels=1000000000000'",
    )
    .await;
    assert_eq!(rows.len(), 3, "{rows:?}");
    let invalid: Vec<_> = rows
        .iter()
        .filter(|r| r.1.is_some())
        .map(|r| r.0.clone())
        .collect();
    assert_eq!(invalid.len(), 2, "{rows:?}");
    assert!(
        invalid.iter().any(|o| o.ends_with("claims.png")),
        "{rows:?}"
    );
    assert!(invalid.iter().any(|o| o.ends_with("pipe.jpg")), "{rows:?}");

    // 13000 x 13000 16-bit PNGs: above the decoding-memory ceiling, invalid rows.
    let rows = reasons(
        &ctx,
        &format!("{root_s}/big"),
        ", 'recursiveFileLookup=true'",
    )
    .await;
    assert_eq!(rows.len(), 3);
    assert!(rows.iter().all(|r| r.1.is_some()), "{rows:?}");

    // A batch size above the executor's ceiling: an error naming it.
    let df = ctx
        .sql(&format!("SELECT image FROM read_images('{root_s}/bombs', 'recursiveFileLookup=true', 'dropInvalid=true')"))
        .await
        .unwrap();
    let df = dlp_plugin::torch::DeepImageFeaturizer::new("efficientnet_lite0")
        .with_batch_size(64)
        .transform(df)
        .unwrap();
    let err = df.collect().await.unwrap_err().to_string();
    assert!(err.contains("--max-batch-size"), "{err}");
    // The same through the session's setting and a model SQL function: refused before the
    // model is loaded (its prepack and first pass would be sized by 512 images, about 3 GB:
    // the peak RSS bound below fails if it ran).
    set(&ctx, "dlp.torch.batch_size = 512").await;
    let err = ctx
        .sql(&format!("SELECT featurize('efficientnet_lite0', image) FROM read_images('{root_s}/bombs', 'recursiveFileLookup=true', 'dropInvalid=true')"))
        .await
        .unwrap()
        .collect()
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("--max-batch-size") && err.contains("512"),
        "{err}"
    );
    set(&ctx, "dlp.torch.batch_size = auto").await;

    // Ballista's fault injection (panics, delays in tasks) is for tests: refused from users.
    set(&ctx, "ballista.testing.chaos_execution.enabled = true").await;
    let err = match ctx.sql("SELECT 1").await {
        Ok(df) => df.collect().await.unwrap_err().to_string(),
        Err(e) => e.to_string(),
    };
    assert!(err.contains("fault injection"), "{err}");
    set(&ctx, "ballista.testing.chaos_execution.enabled = false").await;

    // A training label of 1e15: an error naming the column and the ceiling.
    let df = ctx
        .sql("SELECT make_array(CAST(1.0 AS DOUBLE), CAST(2.0 AS DOUBLE)) AS features, CAST(1e15 AS DOUBLE) AS label")
        .await
        .unwrap();
    let err = dlp_plugin::ml::LogisticRegression::new(Default::default())
        .fit(df)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("label") && err.contains("--max-classes"),
        "{err}"
    );

    let executor = &mut cluster.executors[0];
    assert!(
        executor.running(),
        "the executor died:\n{}",
        executor.output()
    );
    assert_eq!(executor.pid(), pid);
    let peak = executor.peak_rss().unwrap();
    println!(
        "executor peak RSS through the hostile inputs: {} MiB",
        peak >> 20
    );
    assert!(peak < 1536 << 20, "peak RSS {} MiB", peak >> 20);
}

/// `SET <setting>` in `ctx`, which must succeed.
async fn set(ctx: &datafusion::prelude::SessionContext, setting: &str) {
    let sql = format!("SET {setting}");
    let df = ctx.sql(&sql).await.unwrap_or_else(|e| panic!("{sql}: {e}"));
    df.collect().await.unwrap_or_else(|e| panic!("{sql}: {e}"));
}

/// A CA and a server certificate for 127.0.0.1 / localhost, made with openssl:
/// `(ca.pem, server.pem, server.key)`.
fn test_pki(dir: &Path) -> (std::path::PathBuf, std::path::PathBuf, std::path::PathBuf) {
    let run = |args: &[&str]| {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .expect("openssl");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    run(&[
        &["req", "-x509"],
        &ec[..],
        &[
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "2",
            "-subj",
            "/CN=dlp test CA",
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ],
    ]
    .concat());
    run(&[
        &["req"],
        &ec[..],
        &[
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
            "-subj",
            "/CN=localhost",
        ],
    ]
    .concat());
    std::fs::write(
        dir.join("ext.cnf"),
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    run(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "server.pem",
        "-days",
        "2",
        "-extfile",
        "ext.cnf",
    ]);
    (
        dir.join("ca.pem"),
        dir.join("server.pem"),
        dir.join("server.key"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn everything_works_over_tls() {
    let dir = tempfile::tempdir().unwrap();
    let base = std::fs::canonicalize(dir.path()).unwrap();
    let (ca, cert, key) = test_pki(&base);
    let root = base.join("data");
    dlp_tests::copy_flowers(&root.join("small"), &["daisy", "tulips"], 8);
    let out = base.join("out");
    std::fs::create_dir_all(&out).unwrap();
    let users = base.join("users");
    users_file(&users, USERS).unwrap();
    let s = |p: &Path| p.to_string_lossy().into_owned();
    let (root_s, out_s, users_s, ca_s, cert_s, key_s) =
        (s(&root), s(&out), s(&users), s(&ca), s(&cert), s(&key));
    let executor = [
        "--data-root",
        root_s.as_str(),
        "--writable-root",
        out_s.as_str(),
        "--scheduler-tls-ca",
        ca_s.as_str(),
    ];
    let cluster = Cluster::start_each(
        2,
        &[
            "--auth-file",
            &users_s,
            "--data-root",
            &root_s,
            "--writable-root",
            &out_s,
            "--tls-cert",
            &cert_s,
            "--tls-key",
            &key_s,
        ],
        &[&executor, &executor],
    )
    .expect("cluster over TLS");
    let port = cluster.port;
    let count = "SELECT count(*) AS n FROM read_images('small', 'withLabel=true')";

    // ADBC over grpc+tls with the test's CA; plain text is refused by the TLS port.
    let adbc_tls = |uri: String, roots: Option<&str>| {
        let mut cmd = Command::new(dlp_tests::python().unwrap());
        cmd.arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/python/flight_sql_query.py"
        ))
        .arg(uri)
        .arg(count)
        .env("DLP_FLIGHT_USER", "alice")
        .env("DLP_FLIGHT_PASSWORD", "correct horse");
        if let Some(r) = roots {
            cmd.env("DLP_TLS_ROOT_CERTS", r);
        }
        cmd.output().unwrap()
    };
    let ok = adbc_tls(format!("grpc+tls://127.0.0.1:{port}"), Some(&ca_s));
    assert!(
        ok.status.success(),
        "ADBC over TLS: {}\n{}",
        String::from_utf8_lossy(&ok.stderr),
        cluster.scheduler.output()
    );
    assert!(String::from_utf8_lossy(&ok.stdout).contains("\"n\": 16"));
    let plain = adbc_tls(format!("grpc://127.0.0.1:{port}"), None);
    assert!(!plain.status.success(), "plain text on the TLS port");
    let untrusted = adbc_tls(format!("grpc+tls://127.0.0.1:{port}"), None);
    assert!(
        !untrusted.status.success(),
        "a certificate from an unknown CA"
    );

    // dlp --scheduler df+tls:// with the CA and a user.
    let out_cli = Command::new(binary("dlp").unwrap())
        .args([
            "--scheduler",
            &format!("df+tls://127.0.0.1:{port}"),
            "--tls-ca",
            &ca_s,
            "--user",
            "alice",
            "sql",
            &format!("SELECT count(*) AS n FROM read_images('{root_s}/small', 'withLabel=true')"),
        ])
        .env("DLP_PASSWORD", "correct horse")
        .output()
        .unwrap();
    assert!(
        out_cli.status.success(),
        "dlp over TLS: {}",
        String::from_utf8_lossy(&out_cli.stderr)
    );
    assert!(String::from_utf8_lossy(&out_cli.stdout).contains("16"));

    // A pipeline job from pyarrow Flight over TLS (the example client).
    let spec_file = base.join("job.yaml");
    std::fs::write(
        &spec_file,
        "data: {path: small, classes: [daisy, tulips]}\n\
         split: {weights: [0.75, 0.25], seed: 42}\n\
         stages:\n\
         \x20 - {type: DeepImageFeaturizer, modelName: efficientnet_lite0, resize: stretch}\n\
         \x20 - {type: LogisticRegression, maxIter: 10, regParam: 0.05}\n\
         evaluation: {metricName: accuracy}\n\
         output: {model: models/tls}\n",
    )
    .unwrap();
    let job = Command::new(dlp_tests::python().unwrap())
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../examples/pipeline_over_flight.py"
        ))
        .args([
            "--uri",
            &format!("grpc+tls://127.0.0.1:{port}"),
            "--user",
            "alice",
            "--tls-root-certs",
            &ca_s,
        ])
        .arg(&spec_file)
        .env("DLP_FLIGHT_PASSWORD", "correct horse")
        .output()
        .unwrap();
    assert!(
        job.status.success(),
        "pipeline job over TLS: {}\n{}",
        String::from_utf8_lossy(&job.stderr),
        cluster.scheduler.output()
    );
    let status: serde_json::Value = serde_json::from_slice(&job.stdout).unwrap();
    assert_eq!(status["state"], "succeeded", "{status}");
    assert!(out.join("models/tls/pipeline.yaml").exists() || out.join("models/tls").is_dir());
}

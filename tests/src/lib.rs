//! Helpers shared by the integration tests: paths to the shared data and the built
//! binaries, and a real Ballista DLP cluster (scheduler + executors as separate processes)
//! on loopback.

pub mod k8s;
pub mod parity;
pub mod s3;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

/// The build the benchmarks measure, as they print it.
pub const BUILD_PROFILE: &str = if cfg!(debug_assertions) {
    "dev profile, make test's build"
} else {
    "release profile, the container images' build"
};

/// `../shared/data` of the checkout, without `..` segments (as `origin` URIs have none).
pub fn shared_data() -> PathBuf {
    let mut out = PathBuf::new();
    for c in Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../shared/data")
        .components()
    {
        match c {
            std::path::Component::ParentDir => {
                out.pop();
            }
            std::path::Component::CurDir => {}
            other => out.push(other.as_os_str()),
        }
    }
    out
}

/// A built binary of the workspace (`cargo build --bins` puts them next to `deps/`).
pub fn binary(name: &str) -> anyhow::Result<PathBuf> {
    if let Ok(dir) = std::env::var("DLP_BIN_DIR") {
        return Ok(Path::new(&dir).join(name));
    }
    let exe = std::env::current_exe()?;
    let mut dir = exe
        .parent()
        .context("test binary has no directory")?
        .to_path_buf();
    if dir.ends_with("deps") {
        dir.pop();
    }
    let path = dir.join(name);
    if !path.exists() {
        bail!(
            "{} is not built: run `cargo build --bins` (make test does)",
            path.display()
        );
    }
    Ok(path)
}

/// The Python interpreter of the project's virtual environment (set up by `scripts/setup.sh`).
pub fn python() -> anyhow::Result<PathBuf> {
    let path = match std::env::var("DLP_PYTHON") {
        Ok(p) => PathBuf::from(p),
        Err(_) => PathBuf::from(std::env::var("HOME")?).join(".cache/dlp/venv/bin/python"),
    };
    if !path.exists() {
        bail!(
            "{} is missing: run scripts/setup.sh (make test does)",
            path.display()
        );
    }
    Ok(path)
}

/// A free TCP port on 127.0.0.1, never one this process handed out before: the kernel may
/// give a just-released port again, and two servers of one process (an executor's gRPC and
/// Flight ports) were once handed the same one.
pub fn free_port() -> u16 {
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    let mut given = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
    loop {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("free port");
        // Executors behind their gates bind Ballista's servers on 127.0.0.2 with the same
        // port: it must be free there too.
        let free_on_gate_backend = TcpListener::bind(("127.0.0.2", port)).is_ok();
        if free_on_gate_backend && !given.contains(&port) {
            given.push(port);
            return port;
        }
    }
}

/// A `GET` on loopback returning the status code (no HTTP client dependency needed).
pub fn http_status(port: u16, path: &str) -> Option<u16> {
    let mut s =
        TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_secs(1)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut buf = [0u8; 64];
    let n = s.read(&mut buf).ok()?;
    let head = String::from_utf8_lossy(&buf[..n]);
    head.split_whitespace().nth(1)?.parse().ok()
}

/// The body of `GET path` on 127.0.0.1:`port`, when the answer is 200.
pub fn http_get(port: u16, path: &str) -> Option<String> {
    let mut s =
        TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_secs(1)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    let (head, body) = text.split_once("\r\n\r\n")?;
    (head.split_whitespace().nth(1)? == "200").then(|| body.to_string())
}

/// `METHOD path` on 127.0.0.1:`port` with HTTP Basic credentials when given: the status
/// code and the body.
pub fn http_request(
    port: u16,
    method: &str,
    path: &str,
    basic: Option<(&str, &str)>,
) -> Option<(u16, String)> {
    use base64::Engine;
    let mut s =
        TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_secs(1)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    let auth = basic
        .map(|(u, p)| {
            format!(
                "Authorization: Basic {}\r\n",
                base64::engine::general_purpose::STANDARD.encode(format!("{u}:{p}"))
            )
        })
        .unwrap_or_default();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{auth}Content-Length: 0\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    let (head, body) = text.split_once("\r\n\r\n")?;
    Some((
        head.split_whitespace().nth(1)?.parse().ok()?,
        body.to_string(),
    ))
}

/// The value of a Prometheus sample (`name` or `name{labels}`) in a text exposition.
pub fn prometheus_value(text: &str, sample: &str) -> Option<f64> {
    text.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        l.strip_prefix(sample)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}

/// One process of the cluster, killed on drop; its output goes to a log file.
pub struct Process {
    /// Name used in messages.
    pub name: String,
    child: Child,
    /// stdout + stderr of the process.
    pub log: PathBuf,
    /// Stopped on purpose ([`kill`](Self::kill) or [`terminate`](Self::terminate)).
    stopped: bool,
}

impl Process {
    fn spawn(
        name: &str,
        bin: &Path,
        args: &[String],
        env: &[(String, String)],
        log: PathBuf,
    ) -> anyhow::Result<Self> {
        let out = std::fs::File::create(&log)?;
        let child = Command::new(bin)
            .args(args)
            .envs(env.iter().map(|(k, v)| (k, v)))
            .env(
                "RUST_LOG",
                std::env::var("DLP_TEST_RUST_LOG")
                    .unwrap_or_else(|_| "info,dlp_plugin::torch=debug".into()),
            )
            .stdout(Stdio::from(out.try_clone()?))
            .stderr(Stdio::from(out))
            .spawn()
            .with_context(|| format!("cannot start {}", bin.display()))?;
        Ok(Self {
            name: name.to_string(),
            child,
            log,
            stopped: false,
        })
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether the process is still running.
    pub fn running(&mut self) -> bool {
        self.exited().is_none()
    }

    /// Peak resident memory so far (`VmHWM`), in bytes.
    pub fn peak_rss(&self) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).ok()?;
        let kb: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))?
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse()
            .ok()?;
        Some(kb * 1024)
    }

    /// The process's output so far.
    pub fn output(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Stops the process with SIGTERM (an executor deregisters and drains) and waits.
    pub fn terminate(&mut self) {
        self.stopped = true;
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.exited().is_none() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
        }
        self.kill();
    }

    /// Kills the process (SIGKILL).
    pub fn kill(&mut self) {
        self.stopped = true;
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A users file for `dlp-scheduler --auth-file`, made with `dlp-scheduler hash-password`
/// (bcrypt at the lowest cost, 4, to keep tests fast).
pub fn users_file(path: &Path, users: &[(&str, &str)]) -> anyhow::Result<()> {
    let mut text = String::new();
    for (user, password) in users {
        let out = Command::new(binary("dlp-scheduler")?)
            .args(["hash-password", "--user", user, "--cost", "4"])
            .env("DLP_PASSWORD", password)
            .output()?;
        if !out.status.success() {
            bail!(
                "hash-password failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        text.push_str(&String::from_utf8(out.stdout)?);
    }
    std::fs::write(path, text)?;
    Ok(())
}

/// `dlp-scheduler` and `n` `dlp-executor` processes on 127.0.0.1, sharing a cluster secret
/// (`--cluster-secret-file`): the executors' ports are behind their gates, as in a Helm
/// install.
pub struct Cluster {
    /// Scheduler gRPC / Flight SQL port.
    pub port: u16,
    /// The cluster secret file the scheduler and the executors were given.
    pub secret_file: PathBuf,
    /// The scheduler process.
    pub scheduler: Process,
    /// Executor processes.
    pub executors: Vec<Process>,
    scheduler_args: Vec<String>,
    /// Extra environment of every process (e.g. the AWS_* variables of a test's S3
    /// server).
    env: Vec<(String, String)>,
    restarts: usize,
    _dir: tempfile::TempDir,
}

impl Cluster {
    /// Starts a scheduler and `executors` executors with `vcores` task slots each, and waits
    /// until every executor reports a successful heartbeat.
    pub fn start(executors: usize, vcores: usize) -> anyhow::Result<Self> {
        Self::start_with(executors, vcores, &[], &[])
    }

    /// [`start`](Self::start) with extra flags for the scheduler and the executors.
    pub fn start_with(
        executors: usize,
        vcores: usize,
        scheduler_args: &[&str],
        executor_args: &[&str],
    ) -> anyhow::Result<Self> {
        Self::start_each(vcores, scheduler_args, &vec![executor_args; executors])
    }

    /// A scheduler and one executor per entry of `executors`, each with its own extra
    /// flags (`--vcores` there overrides `vcores`). Flight SQL is anonymous unless `scheduler_args` has `--auth-file`.
    pub fn start_each(
        vcores: usize,
        scheduler_args: &[&str],
        executors: &[&[&str]],
    ) -> anyhow::Result<Self> {
        Self::start_each_with_env(vcores, scheduler_args, executors, &[])
    }

    /// [`start_each`](Self::start_each) with `env` added to every process's environment.
    pub fn start_each_with_env(
        vcores: usize,
        scheduler_args: &[&str],
        executors: &[&[&str]],
        env: &[(String, String)],
    ) -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let port = free_port();
        let anonymous = (!scheduler_args.contains(&"--auth-file")).then_some("--allow-anonymous");
        let secret_file = dir.path().join("cluster-secret");
        let mut secret = [0u8; 24];
        std::fs::File::open("/dev/urandom")?.read_exact(&mut secret)?;
        std::fs::write(&secret_file, hex(&secret))?;
        let secret_arg = format!("--cluster-secret-file={}", secret_file.display());
        let tls = scheduler_args.iter().any(|a| a.starts_with("--tls-cert"));
        let scheduler_args: Vec<String> = [
            "--bind-host".into(),
            "127.0.0.1".into(),
            "--external-host".into(),
            "127.0.0.1".into(),
            "--bind-port".into(),
            port.to_string(),
        ]
        .into_iter()
        .chain(
            scheduler_args
                .iter()
                .chain(&anonymous)
                .map(|s| s.to_string()),
        )
        .chain([secret_arg])
        .collect::<Vec<String>>();
        let scheduler = Process::spawn(
            "scheduler",
            &binary("dlp-scheduler")?,
            &scheduler_args,
            env,
            dir.path().join("scheduler.log"),
        )?;
        let mut cluster = Self {
            port,
            secret_file,
            scheduler,
            scheduler_args,
            env: env.to_vec(),
            restarts: 0,
            executors: Vec::new(),
            _dir: dir,
        };
        // A TLS port answers no plain HTTP: wait until it accepts connections.
        cluster.wait_for(
            |c| {
                if tls {
                    TcpStream::connect(("127.0.0.1", c.port)).is_ok()
                } else {
                    http_status(c.port, "/healthz") == Some(200)
                }
            },
            "scheduler /healthz",
        )?;
        let mut health_ports = Vec::new();
        for executor_args in executors {
            health_ports.push(cluster.spawn_executor(vcores, executor_args)?);
        }
        for port in health_ports {
            cluster.wait_for(
                |_| http_status(port, "/readyz") == Some(200),
                "executor /readyz",
            )?;
        }
        Ok(cluster)
    }

    /// Kills the scheduler (SIGKILL) and starts it again with the same flags on the same
    /// port; waits until it answers /healthz.
    pub fn restart_scheduler(&mut self) -> anyhow::Result<()> {
        self.scheduler.kill();
        self.restarts += 1;
        let log = self
            ._dir
            .path()
            .join(format!("scheduler-{}.log", self.restarts));
        self.scheduler = Process::spawn(
            "scheduler",
            &binary("dlp-scheduler")?,
            &self.scheduler_args,
            &self.env,
            log,
        )?;
        self.wait_for(
            |c| http_status(c.port, "/healthz") == Some(200),
            "scheduler /healthz after a restart",
        )
    }

    /// Starts one more executor (`executor-<n>`) and waits until it is ready.
    pub fn add_executor(&mut self, vcores: usize, args: &[&str]) -> anyhow::Result<()> {
        let health = self.spawn_executor(vcores, args)?;
        self.wait_for(
            |_| http_status(health, "/readyz") == Some(200),
            "executor /readyz",
        )
    }

    /// Spawns an executor; returns its health port.
    fn spawn_executor(&mut self, vcores: usize, executor_args: &[&str]) -> anyhow::Result<u16> {
        let i = self.executors.len();
        let health = free_port();
        let work = self._dir.path().join(format!("executor-{i}"));
        std::fs::create_dir_all(&work)?;
        let args: Vec<String> = [
            "--bind-host",
            "127.0.0.1",
            "--external-host",
            "127.0.0.1",
            "--scheduler-host",
            "127.0.0.1",
        ]
        .iter()
        .map(|s| s.to_string())
        .chain([
            "--scheduler-port".into(),
            self.port.to_string(),
            "--bind-port".into(),
            free_port().to_string(),
            "--bind-grpc-port".into(),
            free_port().to_string(),
            "--bind-health-port".into(),
            health.to_string(),
            "--id".into(),
            format!("executor-{i}"),
            "--work-dir".into(),
            work.to_string_lossy().into_owned(),
            format!("--cluster-secret-file={}", self.secret_file.display()),
        ])
        .chain(
            // --vcores in an executor's own flags wins
            (!executor_args.contains(&"--vcores"))
                .then(|| ["--vcores".to_string(), vcores.to_string()])
                .into_iter()
                .flatten(),
        )
        .chain(executor_args.iter().map(|s| s.to_string()))
        .collect();
        let log = self._dir.path().join(format!("executor-{i}.log"));
        self.executors.push(Process::spawn(
            &format!("executor-{i}"),
            &binary("dlp-executor")?,
            &args,
            &self.env,
            log,
        )?);
        Ok(health)
    }

    /// `df://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("df://127.0.0.1:{}", self.port)
    }

    fn wait_for(&mut self, mut ready: impl FnMut(&Self) -> bool, what: &str) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if ready(self) {
                return Ok(());
            }
            if let Some(status) = self.scheduler.exited() {
                bail!("scheduler exited ({status}):\n{}", self.scheduler.output());
            }
            for e in self.executors.iter_mut().filter(|e| !e.stopped) {
                if let Some(status) = e.exited() {
                    bail!("{} exited ({status}):\n{}", e.name, e.output());
                }
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        bail!(
            "timed out waiting for {what}; scheduler log:\n{}",
            self.scheduler.output()
        )
    }
}

/// Copies the first `per_class` photos (by name) of each of `classes` of
/// `../shared/data/flowers` to `to/<class>/`.
pub fn copy_flowers(to: &Path, classes: &[&str], per_class: usize) {
    copy_classes("flowers", to, classes, per_class);
}

/// Copies the first `per_class` images (by name) of each of `classes` of the data set
/// `../shared/data/<set>` (class folders) to `to/<class>/`.
pub fn copy_classes(set: &str, to: &Path, classes: &[&str], per_class: usize) {
    for class in classes {
        let from = shared_data().join(set).join(class);
        let mut images: Vec<_> = std::fs::read_dir(&from)
            .unwrap_or_else(|e| panic!("{}: {e}", from.display()))
            .map(|e| e.expect("directory entry").path())
            .collect();
        images.sort();
        assert!(
            images.len() >= per_class,
            "{} has under {per_class} images",
            from.display()
        );
        let dir = to.join(class);
        std::fs::create_dir_all(&dir).expect("class folder");
        for p in &images[..per_class] {
            std::fs::copy(p, dir.join(p.file_name().expect("file name"))).expect("copy");
        }
    }
}

/// Lower-case hex of bytes.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Rows of a `FixedSizeList<Float32>` column as vectors (`None` for nulls).
pub fn vectors(array: &dyn datafusion::arrow::array::Array) -> Vec<Option<Vec<f32>>> {
    use datafusion::arrow::array::{Array, AsArray};
    use datafusion::arrow::datatypes::Float32Type;
    let list = array.as_fixed_size_list();
    (0..list.len())
        .map(|i| {
            list.is_valid(i).then(|| {
                list.value(i)
                    .as_primitive::<Float32Type>()
                    .values()
                    .to_vec()
            })
        })
        .collect()
}

/// Largest absolute difference between two equally long vectors.
pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "vector lengths differ");
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// Runs `tests/python/lr_reference.py ARGS` (data, Spark MLlib, scikit-learn) and parses the
/// JSON of its last output line.
pub fn lr_reference(args: &[&str]) -> serde_json::Value {
    let stdout = String::from_utf8(python_script("lr_reference.py", args)).expect("utf-8 output");
    serde_json::from_str(stdout.lines().last().expect("output")).expect("JSON output")
}

/// Runs `tests/python/<script>` with the venv's Python; its stdout. Panics with the script's
/// stderr when it fails.
pub fn python_script(script: &str, args: &[impl AsRef<std::ffi::OsStr>]) -> Vec<u8> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("python")
        .join(script);
    let out = Command::new(python().expect("venv python"))
        .arg(path)
        .args(args)
        .env("SPARK_LOCAL_IP", "127.0.0.1")
        .output()
        .expect("python");
    assert!(
        out.status.success(),
        "{script} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// Runs `tests/python/torch_reference.py` (PyTorch with Pillow decoding) for the zoo model
/// `entry` over `files`, prepared as its manifest says, 2 threads; `extra` adds or overrides
/// arguments (`output`, `batch`, `index`). Returns the script's output file.
pub fn torch_reference(
    entry: &dlp_plugin::torch::manifest::ModelEntry,
    files: &[String],
    extra: serde_json::Value,
) -> Vec<u8> {
    let m = &entry.manifest;
    let out = tempfile::NamedTempFile::new().unwrap();
    let mut args = serde_json::json!({
        "model": entry.file_path(), "height": m.input.height, "width": m.input.width,
        "resize": m.resize, "scale": m.scale, "mean": m.mean, "std": m.std,
        "channel_order": m.channel_order, "files": files, "out": out.path(), "threads": 2,
        "image_output": m.image_output.as_ref().map(|o| serde_json::json!({
            "scale": o.scale, "mean": o.mean, "std": o.std})),
    });
    if let (Some(args), serde_json::Value::Object(extra)) = (args.as_object_mut(), extra) {
        args.extend(extra);
    }
    python_script("torch_reference.py", &[args.to_string()]);
    std::fs::read(out.path()).unwrap()
}

/// The local path of a `file://` origin URI (spaces decoded).
pub fn local_path(origin: &str) -> String {
    origin
        .strip_prefix("file://")
        .unwrap_or(origin)
        .replace("%20", " ")
}

/// Fits a logistic regression on a Parquet file or directory.
pub async fn fit_parquet(
    ctx: &datafusion::prelude::SessionContext,
    path: &str,
    params: dlp_plugin::ml::LogisticRegressionParams,
) -> datafusion::common::Result<dlp_plugin::ml::LogisticRegressionModel> {
    let df = ctx
        .read_parquet(path, datafusion::prelude::ParquetReadOptions::default())
        .await?;
    dlp_plugin::ml::LogisticRegression::new(params)
        .fit(df)
        .await
}

/// Share of rows of a Parquet file whose `prediction` equals `label`.
pub async fn accuracy(
    ctx: &datafusion::prelude::SessionContext,
    model: &dlp_plugin::ml::LogisticRegressionModel,
    path: &str,
) -> datafusion::common::Result<f64> {
    use datafusion::arrow::array::AsArray;
    use datafusion::arrow::datatypes::Float64Type;
    let df = ctx
        .read_parquet(path, datafusion::prelude::ParquetReadOptions::default())
        .await?;
    let (mut right, mut all) = (0usize, 0usize);
    for b in model.transform(df)?.collect().await? {
        let label = b
            .column_by_name("label")
            .unwrap()
            .as_primitive::<Float64Type>();
        let pred = b
            .column_by_name("prediction")
            .unwrap()
            .as_primitive::<Float64Type>();
        all += b.num_rows();
        right += (0..b.num_rows())
            .filter(|&i| label.value(i) == pred.value(i))
            .count();
    }
    Ok(right as f64 / all as f64)
}

/// This process's peak resident set size in MB (`VmHWM`), 0 where unknown.
pub fn peak_rss_mb() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

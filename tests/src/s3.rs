//! An S3-compatible server on loopback for the object-storage tests: moto's server mode
//! from PyPI (`tests/python/s3_server.py`: real HTTP, SigV4 signatures checked against an
//! IAM user's key, paginated listing). Nothing is mocked inside the processes under test:
//! they talk HTTP to it with the standard AWS variables or per-bucket settings.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::{Context, bail};

use crate::{free_port, python};

/// A running S3 server, stopped on drop.
pub struct S3Server {
    /// Its port on 127.0.0.1.
    pub port: u16,
    /// The access key every request must be signed with.
    pub access_key_id: String,
    /// Its secret.
    pub secret_access_key: String,
    /// Objects uploaded at start.
    pub objects: u64,
    child: Child,
}

impl S3Server {
    /// Starts the server, makes the buckets and uploads folders:
    /// `uploads` are `(bucket, local dir or None, key prefix)`.
    pub fn start(uploads: &[(&str, Option<&Path>, &str)]) -> anyhow::Result<Self> {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("python/s3_server.py");
        let port = free_port();
        let log = std::env::temp_dir().join(format!("dlp-s3-server-{port}.log"));
        let mut args = vec![port.to_string()];
        for (bucket, dir, prefix) in uploads {
            args.push(match dir {
                Some(d) => format!("{bucket}={}:{prefix}", d.display()),
                None => format!("{bucket}="),
            });
        }
        let mut child = Command::new(python()?)
            .arg(&script)
            .args(&args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(std::fs::File::create(&log)?))
            .spawn()
            .context("cannot start the S3 server (moto; run scripts/setup.sh)")?;
        let mut line = String::new();
        BufReader::new(child.stdout.take().context("server stdout")?).read_line(&mut line)?;
        let v: serde_json::Value = serde_json::from_str(line.trim()).with_context(|| {
            format!(
                "the S3 server did not start: {line:?}\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            )
        })?;
        let s = |k: &str| v[k].as_str().unwrap_or_default().to_string();
        Ok(Self {
            port,
            access_key_id: s("access_key_id"),
            secret_access_key: s("secret_access_key"),
            objects: v["objects"].as_u64().unwrap_or(0),
            child,
        })
    }

    /// An S3 server written in Rust (`s3s-fs` from crates.io, installed by
    /// `scripts/bench-s3.sh`) serving the folder `root` (its sub-folders are the buckets),
    /// with SigV4 authentication: the fast server of the throughput benchmark.
    pub fn start_fs(bin: &Path, root: &Path) -> anyhow::Result<Self> {
        let port = free_port();
        let key = format!("DLPBENCH{port}");
        let secret = format!("bench-secret-{port}-{}", std::process::id());
        let log = std::env::temp_dir().join(format!("dlp-s3s-fs-{port}.log"));
        let child = Command::new(bin)
            .args(["--host", "127.0.0.1", "--port", &port.to_string()])
            .args(["--access-key", &key, "--secret-key", &secret])
            .arg(root)
            .stdin(Stdio::null())
            .stdout(Stdio::from(std::fs::File::create(&log)?))
            .stderr(Stdio::from(std::fs::File::create(&log)?))
            .spawn()
            .with_context(|| format!("cannot start {}", bin.display()))?;
        let server = Self {
            port,
            access_key_id: key,
            secret_access_key: secret,
            objects: 0,
            child,
        };
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            if std::time::Instant::now() > deadline {
                bail!(
                    "s3s-fs did not start: {}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(server)
    }

    /// The server's process id (the benchmark reads its CPU time).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `http://127.0.0.1:<port>`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The standard AWS variables for this server (and nothing else).
    pub fn env(&self) -> Vec<(String, String)> {
        aws_env(
            &self.endpoint(),
            &self.access_key_id,
            &self.secret_access_key,
        )
    }

    /// The same with another secret (requests are then refused).
    pub fn env_with_secret(&self, secret: &str) -> Vec<(String, String)> {
        aws_env(&self.endpoint(), &self.access_key_id, secret)
    }

    /// `storage.buckets` settings for `bucket` on this server (object_store key names).
    pub fn bucket_settings(&self) -> std::collections::BTreeMap<String, String> {
        [
            ("endpoint", self.endpoint()),
            ("region", "us-east-1".to_string()),
            ("allow_http", "true".to_string()),
            ("access_key_id", self.access_key_id.clone()),
            ("secret_access_key", self.secret_access_key.clone()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `AWS_*` variables for an endpoint and key.
pub fn aws_env(endpoint: &str, key: &str, secret: &str) -> Vec<(String, String)> {
    [
        ("AWS_ACCESS_KEY_ID", key),
        ("AWS_SECRET_ACCESS_KEY", secret),
        ("AWS_REGION", "us-east-1"),
        ("AWS_ENDPOINT_URL", endpoint),
        ("AWS_ALLOW_HTTP", "true"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

/// A TCP proxy on loopback in front of `upstream` that answers the first `failures`
/// requests with `503 Slow Down` (as S3 does when it throttles) and forwards the rest:
/// fault injection for the retry tests. Also counts the requests it saw.
pub struct FlakyProxy {
    /// Its port on 127.0.0.1.
    pub port: u16,
    /// Requests seen so far.
    pub requests: Arc<AtomicUsize>,
}

impl FlakyProxy {
    /// Starts the proxy in background threads (they end with the test process): the
    /// first `failures` requests get 503.
    pub fn start(upstream: u16, failures: usize) -> anyhow::Result<Self> {
        Self::start_with(upstream, move |_, n| n < failures)
    }

    /// A proxy that answers 503 to the requests for which `fail(request line, index)`
    /// holds.
    pub fn start_with(
        upstream: u16,
        fail: impl Fn(&str, usize) -> bool + Send + Sync + 'static,
    ) -> anyhow::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let port = listener.local_addr()?.port();
        let requests = Arc::new(AtomicUsize::new(0));
        let seen = requests.clone();
        let fail = Arc::new(fail);
        std::thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                let (seen, fail) = (seen.clone(), fail.clone());
                std::thread::spawn(move || {
                    let _ = serve(conn, upstream, fail.as_ref(), &seen);
                });
            }
        });
        Ok(Self { port, requests })
    }
}

/// One client connection: each request (headers, then a body of Content-Length bytes) is
/// answered 503 when `fail` says so, else forwarded over a fresh upstream connection.
fn serve(
    mut conn: TcpStream,
    upstream: u16,
    fail: &(dyn Fn(&str, usize) -> bool + Send + Sync),
    seen: &AtomicUsize,
) -> anyhow::Result<()> {
    conn.set_read_timeout(Some(Duration::from_secs(30)))?;
    loop {
        let Some(request) = read_request(&mut conn)? else {
            return Ok(());
        };
        let n = seen.fetch_add(1, Ordering::SeqCst);
        let line = String::from_utf8_lossy(&request);
        let line = line.lines().next().unwrap_or("");
        if fail(line, n) {
            let body = "<Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message></Error>";
            write!(
                conn,
                "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/xml\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            )?;
            continue;
        }
        let mut up = TcpStream::connect(("127.0.0.1", upstream))?;
        // One request per upstream connection: the response ends when upstream closes.
        let request = force_close(&request);
        up.write_all(&request)?;
        let mut response = Vec::new();
        up.read_to_end(&mut response)?;
        conn.write_all(&response)?;
    }
}

/// Reads one HTTP/1.1 request (headers and a Content-Length body); `None` at EOF.
fn read_request(conn: &mut TcpStream) -> anyhow::Result<Option<Vec<u8>>> {
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        match conn.read(&mut byte)? {
            0 if buf.is_empty() => return Ok(None),
            0 => bail!("connection closed inside a request"),
            _ => buf.push(byte[0]),
        }
    }
    let head = String::from_utf8_lossy(&buf).to_ascii_lowercase();
    let len: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    let mut body = vec![0u8; len];
    conn.read_exact(&mut body)?;
    buf.extend(body);
    Ok(Some(buf))
}

/// The request with `Connection: close` (replacing a keep-alive header).
fn force_close(request: &[u8]) -> Vec<u8> {
    let end = request
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map_or(request.len(), |p| p + 4);
    let head = String::from_utf8_lossy(&request[..end]);
    let mut out = String::new();
    for line in head.split("\r\n").filter(|l| !l.is_empty()) {
        if line.to_ascii_lowercase().starts_with("connection:") {
            continue;
        }
        out.push_str(line);
        out.push_str("\r\n");
    }
    out.push_str("Connection: close\r\n\r\n");
    let mut bytes = out.into_bytes();
    bytes.extend_from_slice(&request[end..]);
    bytes
}

/// A server on loopback that accepts connections and never answers: the stall test.
pub fn stalling_server() -> anyhow::Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let port = listener.local_addr()?.port();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for conn in listener.incoming().flatten() {
            held.push(conn);
        }
    });
    Ok(port)
}

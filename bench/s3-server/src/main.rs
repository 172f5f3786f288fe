//! `dlp-bench-s3-server --host H --port P --access-key K --secret-key S ROOT`: the same
//! options and behaviour as the `s3s-fs` binary, plus TCP_NODELAY on accepted connections.

use std::path::PathBuf;

use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder as ConnBuilder;
use s3s::auth::SimpleAuth;
use s3s::service::S3ServiceBuilder;
use s3s_fs::FileSystem;
use tokio::net::TcpListener;

struct Opt {
    host: String,
    port: u16,
    access_key: String,
    secret_key: String,
    root: PathBuf,
}

fn parse() -> Result<Opt, String> {
    let mut args = std::env::args().skip(1);
    let (mut host, mut port, mut ak, mut sk, mut root) = (None, None, None, None, None);
    while let Some(a) = args.next() {
        let mut value = || args.next().ok_or(format!("{a} needs a value"));
        match a.as_str() {
            "--host" => host = Some(value()?),
            "--port" => {
                let v = value()?;
                port = Some(v.parse().map_err(|_| format!("--port: not a port: {v}"))?)
            }
            "--access-key" => ak = Some(value()?),
            "--secret-key" => sk = Some(value()?),
            s if !s.starts_with('-') && root.is_none() => root = Some(PathBuf::from(s)),
            other => return Err(format!("unknown argument {other}")),
        }
    }
    Ok(Opt {
        host: host.unwrap_or_else(|| "127.0.0.1".into()),
        port: port.ok_or("--port is required")?,
        access_key: ak.ok_or("--access-key is required")?,
        secret_key: sk.ok_or("--secret-key is required")?,
        root: root.ok_or("the root folder is required")?,
    })
}

#[tokio::main]
async fn main() {
    let opt = match parse() {
        Ok(o) => o,
        Err(e) => {
            eprintln!(
                "dlp-bench-s3-server: {e}\nusage: dlp-bench-s3-server --port P --access-key K --secret-key S [--host H] ROOT"
            );
            std::process::exit(2);
        }
    };
    let fs = FileSystem::new(&opt.root).unwrap_or_else(|e| {
        eprintln!("dlp-bench-s3-server: {}: {e:?}", opt.root.display());
        std::process::exit(1)
    });
    let mut builder = S3ServiceBuilder::new(fs);
    builder.set_auth(SimpleAuth::from_single(opt.access_key, opt.secret_key));
    let service = builder.build();
    let listener = TcpListener::bind((opt.host.as_str(), opt.port))
        .await
        .unwrap_or_else(|e| {
            eprintln!(
                "dlp-bench-s3-server: cannot listen on {}:{}: {e}",
                opt.host, opt.port
            );
            std::process::exit(1)
        });
    eprintln!(
        "dlp-bench-s3-server: serving {} on {}",
        opt.root.display(),
        listener.local_addr().unwrap()
    );
    let http = ConnBuilder::new(TokioExecutor::new());
    loop {
        let (socket, _) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                eprintln!("dlp-bench-s3-server: accept: {e}");
                continue;
            }
        };
        // The one difference from the s3s-fs binary (see Cargo.toml).
        let _ = socket.set_nodelay(true);
        let conn = http
            .serve_connection(TokioIo::new(socket), service.clone())
            .into_owned();
        tokio::spawn(async move {
            let _ = conn.await;
        });
    }
}

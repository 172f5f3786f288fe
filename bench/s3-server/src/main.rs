//! `dlp-bench-s3-server --host H --port P --access-key K --secret-key S ROOT`: the same
//! options and behaviour as the `s3s-fs` binary, with two changes that make it answer like a
//! production server (see Cargo.toml): TCP_NODELAY on accepted connections, and a whole-object
//! GET's body read from the file in one read and sent as one buffer.

use std::path::{Component, Path, PathBuf};

use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder as ConnBuilder;
use s3s::auth::SimpleAuth;
use s3s::dto::*;
use s3s::service::S3ServiceBuilder;
use s3s::{Body, S3, S3Request, S3Response, S3Result, s3_error};
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

/// s3s-fs with whole-object GETs read in one trip through tokio's blocking pool and sent as
/// one buffer. s3s-fs streams a body in 4 KiB reads, each a trip through the blocking pool
/// (and five more for the file's metadata and the object's stored attributes), so each
/// object went out as a dozen small writes; AWS S3 and MinIO send bodies in large buffers.
/// Ranged GETs, objects with user metadata or an expiry date, and every other request are
/// s3s-fs's own.
struct Lean {
    fs: FileSystem,
    root: PathBuf,
}

/// The object's file under `root`, for a bucket and key made only of plain path components
/// (`None` for any other, which s3s-fs then answers or refuses).
fn object_file(root: &Path, bucket: &str, key: &str) -> Option<PathBuf> {
    let plain = |p: &str| {
        !p.is_empty()
            && Path::new(p)
                .components()
                .all(|c| matches!(c, Component::Normal(_)))
    };
    (plain(bucket) && plain(key)).then(|| root.join(bucket).join(key))
}

/// `impl S3 for Lean`: the given methods, and the listed ones passed to s3s-fs. (The whole
/// impl comes from the macro because `async_trait` rewrites an impl before macros in it
/// expand.)
macro_rules! lean_s3 {
    ($own:item; $($name:ident: $input:ident -> $output:ident;)*) => {
        #[async_trait::async_trait]
        impl S3 for Lean {
            $own
            $(
                async fn $name(&self, req: S3Request<$input>) -> S3Result<S3Response<$output>> {
                    self.fs.$name(req).await
                }
            )*
        }
    };
}

/// A whole object as s3s-fs keeps it: the body, and what a GET answers with, all read from
/// disk in one trip through the blocking pool (s3s-fs makes six). `None` where s3s-fs must
/// answer: an object with user metadata or an expiry date, or one this cannot read.
fn read_whole(root: &Path, bucket: &str, key: &str) -> Option<GetObjectOutput> {
    use std::io::Read;
    let b64 = |s: &str| base64_simd::URL_SAFE_NO_PAD.encode_to_string(s);
    let stem = format!(".bucket-{}.object-{}", b64(bucket), b64(key));
    let json = |ext: &str| -> Option<serde_json::Map<String, serde_json::Value>> {
        serde_json::from_slice(&std::fs::read(root.join(format!("{stem}.{ext}.json"))).ok()?).ok()
    };
    let (attrs, info) = (json("metadata")?, json("internal")?);
    if attrs.contains_key("user_metadata") || attrs.contains_key("expires") {
        return None;
    }
    let attr = |k: &str| attrs.get(k).and_then(|v| v.as_str()).map(str::to_owned);
    let text = |k: &str| info.get(k).and_then(|v| v.as_str()).map(str::to_owned);
    let e_tag = text("e_tag")?;
    let mut file = std::fs::File::open(object_file(root, bucket, key)?).ok()?;
    let meta = file.metadata().ok()?;
    let mut body = Vec::with_capacity(meta.len() as usize);
    file.read_to_end(&mut body).ok()?;
    Some(GetObjectOutput {
        content_length: Some(body.len() as i64),
        last_modified: meta.modified().ok().map(Timestamp::from),
        e_tag: Some(ETag::Strong(e_tag)),
        content_type: attr("content_type"),
        content_encoding: attr("content_encoding"),
        content_disposition: attr("content_disposition"),
        content_language: attr("content_language"),
        cache_control: attr("cache_control"),
        website_redirect_location: attr("website_redirect_location"),
        checksum_crc32: text("checksum_crc32"),
        checksum_crc32c: text("checksum_crc32c"),
        checksum_sha1: text("checksum_sha1"),
        checksum_sha256: text("checksum_sha256"),
        checksum_crc64nvme: text("checksum_crc64nvme"),
        body: Some(StreamingBlob::from(Body::from(body))),
        ..Default::default()
    })
}

lean_s3! {
    async fn get_object(
        &self,
        req: S3Request<GetObjectInput>,
    ) -> S3Result<S3Response<GetObjectOutput>> {
        let input = &req.input;
        if input.range.is_none() && input.part_number.is_none() {
            let (root, bucket, key) = (self.root.clone(), input.bucket.clone(), input.key.clone());
            let whole = tokio::task::spawn_blocking(move || read_whole(&root, &bucket, &key))
                .await
                .map_err(|e| s3_error!(e, InternalError))?;
            if let Some(output) = whole {
                return Ok(S3Response::new(output));
            }
        }
        self.fs.get_object(req).await
    };
        create_bucket: CreateBucketInput -> CreateBucketOutput;
        copy_object: CopyObjectInput -> CopyObjectOutput;
        delete_bucket: DeleteBucketInput -> DeleteBucketOutput;
        delete_object: DeleteObjectInput -> DeleteObjectOutput;
        delete_objects: DeleteObjectsInput -> DeleteObjectsOutput;
        get_bucket_location: GetBucketLocationInput -> GetBucketLocationOutput;
        head_bucket: HeadBucketInput -> HeadBucketOutput;
        head_object: HeadObjectInput -> HeadObjectOutput;
        list_buckets: ListBucketsInput -> ListBucketsOutput;
        list_objects: ListObjectsInput -> ListObjectsOutput;
        list_objects_v2: ListObjectsV2Input -> ListObjectsV2Output;
        put_object: PutObjectInput -> PutObjectOutput;
        create_multipart_upload: CreateMultipartUploadInput -> CreateMultipartUploadOutput;
        upload_part: UploadPartInput -> UploadPartOutput;
        upload_part_copy: UploadPartCopyInput -> UploadPartCopyOutput;
        list_parts: ListPartsInput -> ListPartsOutput;
        complete_multipart_upload: CompleteMultipartUploadInput -> CompleteMultipartUploadOutput;
        abort_multipart_upload: AbortMultipartUploadInput -> AbortMultipartUploadOutput;
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
    let root = match opt.root.canonicalize() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("dlp-bench-s3-server: {}: {e}", opt.root.display());
            std::process::exit(1)
        }
    };
    let mut builder = S3ServiceBuilder::new(Lean { fs, root });
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
        // Answer without waiting on the client's delayed ACK (see Cargo.toml).
        let _ = socket.set_nodelay(true);
        let conn = http
            .serve_connection(TokioIo::new(socket), service.clone())
            .into_owned();
        tokio::spawn(async move {
            let _ = conn.await;
        });
    }
}

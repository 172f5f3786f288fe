//! Log set-up shared by the binaries: a `RUST_LOG`-style filter, to stdout or (with the
//! upstream `--log-dir` flag) to a file in that directory.

use tracing_subscriber::EnvFilter;

/// Installs the global subscriber. `log_dir` writes to `<log_dir>/<prefix>.log` instead
/// of stdout.
pub fn init(filter: &str, thread_info: bool, log_dir: Option<&str>, prefix: &str) {
    let builder = tracing_subscriber::fmt()
        .with_ansi(false)
        .with_thread_names(thread_info)
        .with_thread_ids(thread_info)
        .with_env_filter(EnvFilter::new(filter));
    match log_dir {
        Some(dir) => builder
            .with_writer(tracing_appender::rolling::never(
                dir,
                format!("{prefix}.log"),
            ))
            .init(),
        None => builder.init(),
    }
}

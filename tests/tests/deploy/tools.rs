//! The tools (kubectl, helm, kubernetes-validate, hadolint) and rendering.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// Schemas of kubernetes-validate to check against.
pub const KUBERNETES_VERSION: &str = "1.33.0";

pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

pub fn cache() -> PathBuf {
    match std::env::var_os("DLP_CACHE") {
        Some(dir) => PathBuf::from(dir),
        None => PathBuf::from(std::env::var_os("HOME").expect("HOME is set")).join(".cache/dlp"),
    }
}

pub fn venv() -> PathBuf {
    std::env::var_os("DLP_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| cache().join("venv"))
}

/// A tool's path: helm from `$DLP_CACHE/bin`, kubernetes-validate and hadolint from the
/// venv, kubectl from PATH.
pub fn tool(name: &str) -> PathBuf {
    let installed = match name {
        "helm" => Some(cache().join("bin/helm")),
        "kubernetes-validate" | "hadolint" => Some(venv().join("bin").join(name)),
        _ => None,
    };
    if let Some(path) = installed.filter(|p| p.is_file()) {
        return path;
    }
    if let Some(paths) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&paths) {
            if dir.join(name).is_file() {
                return dir.join(name);
            }
        }
    }
    let hint = if name == "kubectl" {
        "kubectl 1.32 (with kustomize) comes with the machine image"
    } else {
        "run scripts/setup.sh (make test does)"
    };
    panic!("{name} is missing: {hint}");
}

/// Runs a command in the repository root; returns (success, stdout, stderr).
pub fn run_with(
    program: &Path,
    args: &[&str],
    stdin: Option<&str>,
    env: &[(&str, &Path)],
) -> (bool, String, String) {
    let mut cmd = Command::new(program);
    cmd.args(args)
        .current_dir(repo())
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {}: {e}", program.display()));
    if let Some(text) = stdin {
        let mut pipe = child.stdin.take().expect("stdin is piped");
        pipe.write_all(text.as_bytes()).expect("write stdin");
    }
    let out = child.wait_with_output().expect("wait for the command");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Runs a command that must succeed; returns its stdout.
pub fn run_ok(program: &Path, args: &[&str], stdin: Option<&str>, env: &[(&str, &Path)]) -> String {
    let (ok, out, err) = run_with(program, args, stdin, env);
    assert!(
        ok,
        "`{} {}` failed:\n{err}\n{out}",
        program.display(),
        args.join(" ")
    );
    out
}

/// `kubectl kustomize deploy/overlays/<overlay>`.
pub fn kustomize(overlay: &str) -> String {
    let dir = format!("deploy/overlays/{overlay}");
    run_ok(&tool("kubectl"), &["kustomize", &dir], None, &[])
}

/// `helm template <release> helm/dlp --namespace dlp` with values files and --set pairs.
pub fn helm_template(release: &str, values: &[&str], sets: &[&str]) -> String {
    let mut args = vec!["template", release, "helm/dlp", "--namespace", "dlp"];
    for v in values {
        args.extend(["-f", v]);
    }
    for s in sets {
        args.extend(["--set", s]);
    }
    run_ok(&tool("helm"), &args, None, &[])
}

/// `helm template` that must fail; returns its error output.
pub fn helm_template_err(sets: &[&str]) -> String {
    let mut args = vec!["template", "dlp", "helm/dlp", "--namespace", "dlp"];
    for s in sets {
        args.extend(["--set", s]);
    }
    let (ok, _, err) = run_with(&tool("helm"), &args, None, &[]);
    assert!(!ok, "helm template {sets:?} should fail");
    err
}

/// kubernetes-validate --strict against Kubernetes 1.33 (unknown fields are errors).
pub fn validate_strictly(label: &str, yaml: &str) {
    let v = tool("kubernetes-validate");
    let (ok, out, err) = run_with(
        &v,
        &["-k", KUBERNETES_VERSION, "--strict", "--quiet", "-"],
        Some(yaml),
        &[],
    );
    assert!(
        ok && !out.contains("ERROR") && !err.contains("ERROR"),
        "{label}: strict validation against Kubernetes {KUBERNETES_VERSION} failed:\n{out}{err}"
    );
}

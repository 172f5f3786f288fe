//! A real kube-apiserver + etcd on loopback for tests (`scripts/kube-apiserver.sh`, built
//! once from Debian's source package and cached), and kubectl against it.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context, bail};

/// A running API server; stopped on drop.
pub struct KubeApiServer {
    dir: tempfile::TempDir,
}

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/kube-apiserver.sh")
}

impl KubeApiServer {
    /// Starts one (`authz`: `AlwaysAllow` or `RBAC`).
    pub fn start(authz: &str) -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let out = Command::new("bash")
            .arg(script())
            .arg("start")
            .arg(dir.path())
            .arg(authz)
            .output()
            .context("cannot run scripts/kube-apiserver.sh")?;
        if !out.status.success() {
            bail!(
                "kube-apiserver did not start (run scripts/setup.sh to build it):\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(Self { dir })
    }

    /// The admin kubeconfig.
    pub fn kubeconfig(&self) -> PathBuf {
        self.dir.path().join("kubeconfig")
    }

    /// Runs kubectl with the admin kubeconfig (and `stdin`); Ok(stdout) or Err(stderr).
    pub fn kubectl(&self, args: &[&str], stdin: Option<&str>) -> anyhow::Result<String> {
        self.kubectl_as(&self.kubeconfig(), args, stdin)
    }

    /// Runs kubectl with `kubeconfig`.
    pub fn kubectl_as(
        &self,
        kubeconfig: &Path,
        args: &[&str],
        stdin: Option<&str>,
    ) -> anyhow::Result<String> {
        let mut child = Command::new("kubectl")
            .arg("--kubeconfig")
            .arg(kubeconfig)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("kubectl")?;
        let mut input = child.stdin.take().expect("stdin");
        input.write_all(stdin.unwrap_or("").as_bytes())?;
        drop(input);
        let out = child.wait_with_output()?;
        if !out.status.success() {
            bail!(
                "kubectl {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8(out.stdout)?)
    }

    /// A kubeconfig for service account `namespace/name` (a TokenRequest token), to act
    /// with only what its Roles grant.
    pub fn service_account_kubeconfig(
        &self,
        namespace: &str,
        name: &str,
    ) -> anyhow::Result<PathBuf> {
        let token = self.kubectl(&["-n", namespace, "create", "token", name], None)?;
        let path = self
            .dir
            .path()
            .join(format!("kubeconfig-{namespace}-{name}"));
        std::fs::copy(self.kubeconfig(), &path)?;
        let user = format!("{namespace}-{name}");
        self.kubectl_as(
            &path,
            &["config", "set-credentials", &user, "--token", token.trim()],
            None,
        )?;
        self.kubectl_as(
            &path,
            &["config", "set-context", "--current", "--user", &user],
            None,
        )?;
        Ok(path)
    }

    /// `spec.replicas` of a Deployment.
    pub fn replicas(&self, namespace: &str, deployment: &str) -> anyhow::Result<u32> {
        let out = self.kubectl(
            &[
                "-n",
                namespace,
                "get",
                "deployment",
                deployment,
                "-o",
                "jsonpath={.spec.replicas}",
            ],
            None,
        )?;
        out.trim()
            .parse()
            .with_context(|| format!("replicas of {deployment}: {out:?}"))
    }
}

impl Drop for KubeApiServer {
    fn drop(&mut self) {
        let _ = Command::new("bash")
            .arg(script())
            .arg("stop")
            .arg(self.dir.path())
            .status();
    }
}

/// `kubectl kustomize DIR` (relative to the repository root).
pub fn kustomize(dir: &str) -> anyhow::Result<String> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let out = Command::new("kubectl")
        .arg("kustomize")
        .arg(root.join(dir))
        .output()
        .context("kubectl kustomize")?;
    if !out.status.success() {
        bail!(
            "kubectl kustomize {dir}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8(out.stdout)?)
}

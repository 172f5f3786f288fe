//! A real Kubernetes API server (etcd + kube-apiserver v1.20 from
//! `scripts/kube-apiserver.sh`) for one test, stopped on drop.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::tools::{cache, repo, run_with, tool};

/// etcd + kube-apiserver from `scripts/kube-apiserver.sh`, stopped on drop.
pub struct ApiServer {
    dir: tempfile::TempDir,
    kubeconfig: PathBuf,
}

impl ApiServer {
    pub fn start(authz: &str) -> Self {
        let stamp = cache().join("k8s/.built");
        assert!(
            stamp.is_file(),
            "{} is missing: build the API server with scripts/setup.sh (scripts/kube-apiserver.sh build)",
            stamp.display()
        );
        let dir = tempfile::tempdir().expect("temp dir");
        let dir_arg = dir.path().to_string_lossy().into_owned();
        let script = repo().join("scripts/kube-apiserver.sh");
        let (ok, out, err) = run_with(
            Path::new("bash"),
            &[&script.to_string_lossy(), "start", &dir_arg, authz],
            None,
            &[],
        );
        let server = Self {
            kubeconfig: dir.path().join("kubeconfig"),
            dir,
        };
        assert!(ok, "kube-apiserver did not start:\n{err}\n{out}");
        server
    }

    pub fn env(&self) -> Vec<(&'static str, PathBuf)> {
        let d = self.dir.path();
        vec![
            ("KUBECONFIG", self.kubeconfig.clone()),
            ("KUBECACHEDIR", d.join("kube-cache")),
            ("HELM_CACHE_HOME", d.join("helm/cache")),
            ("HELM_CONFIG_HOME", d.join("helm/config")),
            ("HELM_DATA_HOME", d.join("helm/data")),
        ]
    }

    /// Runs kubectl or helm against this server; returns (success, stdout, stderr).
    pub fn try_run(
        &self,
        program: &str,
        args: &[&str],
        stdin: Option<&str>,
    ) -> (bool, String, String) {
        let env = self.env();
        let env: Vec<(&str, &Path)> = env.iter().map(|(k, v)| (*k, v.as_path())).collect();
        run_with(&tool(program), args, stdin, &env)
    }

    pub fn run(&self, program: &str, args: &[&str], stdin: Option<&str>) -> String {
        let (ok, out, err) = self.try_run(program, args, stdin);
        assert!(ok, "`{program} {}` failed:\n{err}\n{out}", args.join(" "));
        out
    }

    pub fn replicas(&self, ns: &str, deployment: &str) -> String {
        self.run(
            "kubectl",
            &[
                "-n",
                ns,
                "get",
                "deployment",
                deployment,
                "-o",
                "jsonpath={.spec.replicas}",
            ],
            None,
        )
    }

    pub fn deployments(&self, ns: &str) -> BTreeSet<String> {
        self.run(
            "kubectl",
            &["-n", ns, "get", "deployments", "-o", "name"],
            None,
        )
        .lines()
        .map(|l| l.trim_start_matches("deployment.apps/").to_string())
        .collect()
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        let script = repo().join("scripts/kube-apiserver.sh");
        let _ = Command::new("bash")
            .arg(script)
            .arg("stop")
            .arg(self.dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

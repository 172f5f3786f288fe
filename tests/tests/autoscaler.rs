//! The executor autoscaler against a real kube-apiserver (v1.20 built from Debian's source
//! package, RBAC on) and a live `dlp-scheduler`: the gpu overlay of deploy/ is applied, the
//! scheduler acts with its own service account's token (the overlay's least-privilege
//! Role), and the test reads the Deployments' replicas while work comes and goes.
//!
//! No kubelet runs here, so no Pod ever starts: where Kubernetes would start an executor
//! Pod, the test starts a `dlp-executor` process on loopback of the same class.

use std::time::{Duration, Instant};

use datafusion::functions_aggregate::expr_fn::count;
use datafusion::prelude::{SessionContext, col};
use dlp_plugin::ImageContextExt;
use dlp_plugin::image::ImageReadOptions;
use dlp_plugin::torch::DeepImageFeaturizer;
use dlp_tests::k8s::{KubeApiServer, kustomize};
use dlp_tests::{Cluster, http_status, shared_data};

const NS: &str = "dlp";
const CPU: &str = "dlp-executor-cpu";
const GPU: &str = "dlp-executor-gpu";

fn flowers() -> String {
    shared_data().join("flowers").to_string_lossy().into_owned()
}

/// Polls until `(cpu, gpu)` replicas satisfy `ok`; returns them, or fails with the
/// scheduler's log.
fn wait_replicas(
    api: &KubeApiServer,
    cluster: &Cluster,
    what: &str,
    ok: impl Fn(u32, u32) -> bool,
) -> (u32, u32) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let now = (
            api.replicas(NS, CPU).unwrap(),
            api.replicas(NS, GPU).unwrap(),
        );
        if ok(now.0, now.1) {
            return now;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}: (cpu, gpu) replicas = {now:?}\nscheduler log:\n{}",
            cluster.scheduler.output()
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

fn config(dir: &std::path::Path, kubeconfig: &std::path::Path) -> String {
    config_with(dir, kubeconfig, GPU)
}

fn config_with(dir: &std::path::Path, kubeconfig: &std::path::Path, gpu: &str) -> String {
    let path = dir.join("dlp.yaml");
    std::fs::write(
        &path,
        format!(
            "autoscaler:
  enabled: true
  namespace: {NS}
  kubeconfig: {}
  intervalSeconds: 1
  cooldownSeconds: 2
  cpu: {{deployment: {CPU}, minReplicas: 1, maxReplicas: 3, tasksPerExecutor: 2, idleSeconds: 3}}
  gpu: {{deployment: {gpu}, minReplicas: 0, maxReplicas: 2, tasksPerExecutor: 2, idleSeconds: 3}}
",
            kubeconfig.display()
        ),
    )
    .unwrap();
    path.to_string_lossy().into_owned()
}

async fn featurize_job(ctx: SessionContext) -> usize {
    let opts = ImageReadOptions::from_pairs([
        ("dropInvalid", "true"),
        ("recursiveFileLookup", "true"),
        ("sampleRatio", "0.05"),
        ("seed", "3"),
    ])
    .unwrap();
    let df = ctx.read_images(&flowers(), opts).await.unwrap();
    let df = DeepImageFeaturizer::new("efficientnet_lite0")
        .transform(df)
        .unwrap();
    df.collect()
        .await
        .unwrap()
        .iter()
        .map(|b| b.num_rows())
        .sum()
}

async fn count_job(ctx: SessionContext) -> usize {
    let opts =
        ImageReadOptions::from_pairs([("withLabel", "true"), ("numPartitions", "8")]).unwrap();
    let df = ctx
        .read_images(&flowers(), opts)
        .await
        .unwrap()
        .aggregate(vec![col("label")], vec![count(col("image")).alias("n")])
        .unwrap();
    df.collect()
        .await
        .unwrap()
        .iter()
        .map(|b| b.num_rows())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn autoscaler_scales_gpu_executors_from_zero_and_cpu_executors_with_cpu_work() {
    let api = KubeApiServer::start("RBAC").expect("kube-apiserver");
    let manifests = kustomize("deploy/overlays/gpu").unwrap();
    api.kubectl(&["apply", "--server-side", "-f", "-"], Some(&manifests))
        .expect("the gpu overlay applies");
    // As installed: one CPU executor, no GPU executor (the autoscaler will decide).
    api.kubectl(
        &["-n", NS, "scale", "deployment", CPU, "--replicas=1"],
        None,
    )
    .unwrap();
    api.kubectl(
        &["-n", NS, "scale", "deployment", GPU, "--replicas=0"],
        None,
    )
    .unwrap();
    let dir = tempfile::tempdir().unwrap();

    // 1. Bad configuration: the scheduler logs what to fix, keeps serving, and retries.
    //    Missing RBAC (the executors' service account has no Role on Deployments), a wrong
    //    Deployment name, an API server that does not answer.
    let weak = api.service_account_kubeconfig(NS, "dlp-executor").unwrap();
    let unreachable = dir.path().join("unreachable-kubeconfig");
    let admin = std::fs::read_to_string(api.kubeconfig()).unwrap();
    let server = admin
        .lines()
        .find_map(|l| l.trim().strip_prefix("server: "))
        .expect("server in kubeconfig")
        .to_string();
    let closed = format!("https://127.0.0.1:{}", dlp_tests::free_port());
    std::fs::write(&unreachable, admin.replace(&server, &closed)).unwrap();
    for (kubeconfig, gpu, expected) in [
        (weak.as_path(), GPU, "forbidden to get deployments/scale"),
        (
            api.kubeconfig().as_path(),
            "dlp-executor-typo",
            "dlp/dlp-executor-typo not found",
        ),
        (
            unreachable.as_path(),
            GPU,
            "cannot get the scale of Deployment",
        ),
    ] {
        let bad_dir = tempfile::tempdir().unwrap();
        let cluster = Cluster::start_each(
            2,
            &["--config", &config_with(bad_dir.path(), kubeconfig, gpu)],
            &[],
        )
        .expect("scheduler");
        let deadline = Instant::now() + Duration::from_secs(30);
        while !cluster.scheduler.output().contains(expected) {
            assert!(
                Instant::now() < deadline,
                "'{expected}' not logged:\n{}",
                cluster.scheduler.output()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        assert_eq!(http_status(cluster.port, "/healthz"), Some(200));
        assert!(cluster.scheduler.output().contains("retry_in_s"));
    }

    // 2. The scheduler's own service account (the overlay's Role and RoleBinding).
    let own = api.service_account_kubeconfig(NS, "dlp-scheduler").unwrap();
    let mut cluster =
        Cluster::start_each(2, &["--config", &config(dir.path(), &own)], &[]).expect("scheduler");
    let started = Instant::now();
    let t = || started.elapsed().as_secs_f32();
    assert_eq!(
        wait_replicas(&api, &cluster, "the initial pools", |c, g| c == 1 && g == 0),
        (1, 0)
    );

    // A featurization job with no executor at all: its torch stage is pending.
    let remote = dlp_plugin::session::remote_context(&cluster.url())
        .await
        .unwrap();
    let job = tokio::spawn(featurize_job(remote.clone()));
    let up = wait_replicas(&api, &cluster, "GPU pool up from zero", |_, g| g >= 1);
    println!("{:6.1}s featurization pending: (cpu, gpu) = {up:?}", t());
    // Kubernetes would now start a GPU executor Pod: start one.
    cluster
        .add_executor(2, &["--device-class", "gpu"])
        .expect("GPU-class executor");
    let rows = tokio::time::timeout(Duration::from_secs(120), job)
        .await
        .expect("featurization finishes")
        .unwrap();
    assert!(rows > 40, "{rows} featurized");
    println!(
        "{:6.1}s featurized {rows} images on the GPU-class executor",
        t()
    );
    // The Pod would be deleted by the scale-down; the executor drains and leaves.
    let down = wait_replicas(&api, &cluster, "GPU pool back to zero", |_, g| g == 0);
    println!("{:6.1}s GPU pool idle: (cpu, gpu) = {down:?}", t());
    cluster.executors.pop().unwrap().terminate();

    // 3. CPU-only work: 8 partitions, 2 tasks per executor: the CPU pool grows (to its
    //    max, 3), the GPU pool stays at zero.
    let job = tokio::spawn(count_job(remote.clone()));
    let up = wait_replicas(&api, &cluster, "CPU pool up", |c, _| c == 3);
    assert_eq!(up.1, 0, "no GPU executor for CPU-only work");
    println!("{:6.1}s CPU work pending: (cpu, gpu) = {up:?}", t());
    cluster.add_executor(4, &[]).expect("CPU executor");
    let groups = tokio::time::timeout(Duration::from_secs(120), job)
        .await
        .expect("count finishes")
        .unwrap();
    assert_eq!(groups, 6, "5 flower classes and the unlabelled LICENSE.txt");
    let down = wait_replicas(&api, &cluster, "CPU pool back to its minimum", |c, _| {
        c == 1
    });
    assert_eq!(down.1, 0);
    println!("{:6.1}s CPU pool idle: (cpu, gpu) = {down:?}", t());

    // The replicas were set through the scale subresource with server-side apply (field
    // manager dlp-autoscaler). API servers before 1.22 do not record managedFields for
    // /scale writes, so that part is not checked here.
    let log = cluster.scheduler.output();
    let changes: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("autoscaler: scaled executors"))
        .collect();
    println!("{}", changes.join("\n"));
    assert!(changes.len() >= 4, "{log}");
}

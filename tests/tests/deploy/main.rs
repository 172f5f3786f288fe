//! The Kubernetes deployment (`deploy/`, `helm/dlp`, `deploy/docker`): the kustomize
//! overlays and the Helm chart render, pass strict schema validation (Kubernetes 1.33) and
//! `helm lint --strict`, describe the same objects field by field, hang together
//! (selectors, ports, volumes, the autoscaler's config and RBAC, NetworkPolicies, security
//! contexts, the shared secrets), and are accepted by a real kube-apiserver (v1.20,
//! `scripts/kube-apiserver.sh`). The Dockerfile is linted (images
//! cannot be built here). Tools come from `scripts/setup.sh` (kubectl from the machine
//! image); a missing one fails the test with that hint.

use std::collections::BTreeSet;

use serde_yaml::Value;

use apiserver::ApiServer;
use compare::compare;
use consistency::{Expect, assert_no_problems, consistency, pod_security};
use objects::{
    Objects, arg_values, args_of, at, container, decode_base64, get, ids, is_bcrypt, key, names,
    objects, selects, seq_at, show, str_at,
};
use tools::{helm_template, helm_template_err, kustomize, repo, run_ok, tool, validate_strictly};

mod apiserver;
mod compare;
mod consistency;
mod objects;
mod tools;

fn kustomize_ids(gpu: bool) -> BTreeSet<String> {
    let mut ids: BTreeSet<String> = [
        "Namespace/dlp",
        "ServiceAccount/dlp-scheduler",
        "ServiceAccount/dlp-executor",
        "Role/dlp-scheduler-autoscaler",
        "RoleBinding/dlp-scheduler-autoscaler",
        "ConfigMap/dlp-config",
        "Secret/dlp-auth",
        "Secret/dlp-cluster",
        "NetworkPolicy/dlp-scheduler",
        "NetworkPolicy/dlp-executor",
        "Service/dlp-scheduler",
        "Service/dlp-scheduler-registration",
        "PersistentVolumeClaim/dlp-data",
        "PersistentVolumeClaim/dlp-models",
        "PersistentVolumeClaim/dlp-state",
        "Deployment/dlp-scheduler",
        "Deployment/dlp-executor-cpu",
    ]
    .into_iter()
    .map(String::from)
    .collect();
    if gpu {
        ids.insert("Deployment/dlp-executor-gpu".into());
    }
    ids
}

/// The chart's objects: the overlay's, less the Namespace (Helm installs into one), plus
/// the `helm test` pod.
fn helm_ids(gpu: bool) -> BTreeSet<String> {
    let mut ids = kustomize_ids(gpu);
    ids.remove("Namespace/dlp");
    ids.insert("Pod/dlp-test-sql".into());
    ids
}

fn id_set(objs: &Objects) -> BTreeSet<String> {
    ids(objs).into_iter().collect()
}

/// Where the scheduler keeps job records and registered functions (`--state-dir`).
const STATE_DIR: &str = "/var/lib/dlp";

/// The scheduler's state volume: `--state-dir=/var/lib/dlp`, volume `state` mounted
/// read-write there, from `claim` (None: an emptyDir); the claim `<prefix>-state` is
/// rendered (ReadWriteOnce, 1Gi) exactly when it is `claim`; no executor has the flag, a
/// mount there, the volume or the claim.
fn assert_state_volume(label: &str, objs: &Objects, prefix: &str, claim: Option<&str>) {
    let scheduler = get(objs, "Deployment", &format!("{prefix}-scheduler"));
    let c = container(scheduler);
    assert_eq!(
        arg_values(c, "state-dir"),
        [STATE_DIR],
        "{label}: the scheduler's --state-dir"
    );
    let mounts: Vec<&Value> = seq_at(c, "volumeMounts")
        .iter()
        .filter(|m| str_at(m, "mountPath") == STATE_DIR)
        .collect();
    assert_eq!(
        mounts.iter().map(|m| str_at(m, "name")).collect::<Vec<_>>(),
        ["state"],
        "{label}: the scheduler's mount at {STATE_DIR}"
    );
    assert_ne!(
        at(mounts[0], "readOnly").as_bool(),
        Some(true),
        "{label}: {STATE_DIR} is read-write"
    );
    let volume = seq_at(scheduler, "spec.template.spec.volumes")
        .iter()
        .find(|v| str_at(v, "name") == "state")
        .expect("the scheduler's volume `state`");
    match claim {
        Some(claim) => {
            assert_eq!(
                str_at(volume, "persistentVolumeClaim.claimName"),
                claim,
                "{label}: {}",
                show(volume)
            );
            assert!(
                at(volume, "persistentVolumeClaim.readOnly").is_null(),
                "{label}: {}",
                show(volume)
            );
        }
        None => assert!(
            at(volume, "persistentVolumeClaim").is_null() && !at(volume, "emptyDir").is_null(),
            "{label}: an emptyDir at {STATE_DIR}: {}",
            show(volume)
        ),
    }
    let own = format!("{prefix}-state");
    let pvc = objs.get(&("PersistentVolumeClaim".to_string(), own.clone()));
    assert_eq!(
        pvc.is_some(),
        claim == Some(own.as_str()),
        "{label}: PersistentVolumeClaim/{own} rendered"
    );
    if let Some(pvc) = pvc {
        let modes: Vec<&str> = seq_at(pvc, "spec.accessModes")
            .iter()
            .filter_map(Value::as_str)
            .collect();
        assert_eq!(modes, ["ReadWriteOnce"], "{label}: {own} access modes");
        assert_eq!(
            str_at(pvc, "spec.resources.requests.storage"),
            "1Gi",
            "{label}: {own} size"
        );
    }
    let executors: Vec<String> = names(objs, "Deployment")
        .into_iter()
        .filter(|n| n.starts_with(&format!("{prefix}-executor-")))
        .collect();
    assert!(!executors.is_empty(), "{label}: no executor Deployment");
    for name in &executors {
        let d = get(objs, "Deployment", name);
        let c = container(d);
        assert!(
            arg_values(c, "state-dir").is_empty(),
            "{label}: {name} has --state-dir"
        );
        assert!(
            seq_at(c, "volumeMounts")
                .iter()
                .all(|m| str_at(m, "mountPath") != STATE_DIR && str_at(m, "name") != "state"),
            "{label}: {name} mounts the scheduler's state volume"
        );
        assert!(
            seq_at(d, "spec.template.spec.volumes").iter().all(|v| {
                str_at(v, "name") != "state"
                    && claim.is_none_or(|c| str_at(v, "persistentVolumeClaim.claimName") != c)
            }),
            "{label}: {name} has the scheduler's state volume"
        );
    }
}

#[test]
fn kustomize_overlays_render_validate_strictly_and_hang_together() {
    for (overlay, gpu) in [("cpu", false), ("gpu", true)] {
        let label = format!("deploy/overlays/{overlay}");
        let yaml = kustomize(overlay);
        validate_strictly(&label, &yaml);
        let objs = objects(&label, &yaml);
        assert_eq!(id_set(&objs), kustomize_ids(gpu), "{label}: objects");
        let expect = Expect {
            prefix: "dlp",
            external: &[],
        };
        assert_no_problems(consistency(&label, &objs, &expect));
        assert_state_volume(&label, &objs, "dlp", Some("dlp-state"));
    }
}

/// A bcrypt hash (htpasswd -nbB -C 10 alice change-me) for users files of the tests.
const ALICE_HASH: &str = "$2y$10$Copsb2jnmplDobbwaA5Zj.kNOfEYVL4rfPByYL5XTvAolg6NXkO4q";

/// A cluster secret for the tests' overlays.
const CLUSTER_SECRET: &str = "q5Zk0Xr3uVn8sLw2Ty7Hb1Jc4Md6Pf9GaEoRiNuKt";

/// Renders an overlay of yours: `kustomization` (whose `../deploy/` paths mean this
/// repository's deploy/) and `files` beside it in a temp directory `my-dlp`.
fn my_overlay(kustomization: &str, files: &[(&str, &str)]) -> String {
    let dir = tempfile::tempdir().expect("temp dir");
    let mine = dir.path().join("my-dlp");
    // kustomize wants relative paths (from my-dlp/ up to /).
    let ups = mine.components().count() - 1;
    let deploy = format!(
        "{}{}/",
        "../".repeat(ups),
        repo()
            .join("deploy")
            .to_string_lossy()
            .trim_start_matches('/')
    );
    std::fs::create_dir(&mine).expect("my-dlp");
    std::fs::write(
        mine.join("kustomization.yaml"),
        kustomization.replace("../deploy/", &deploy),
    )
    .expect("kustomization");
    for (name, text) in files {
        std::fs::write(mine.join(name), text).expect("a file of the overlay");
    }
    run_ok(
        &tool("kubectl"),
        &["kustomize", &mine.to_string_lossy()],
        None,
        &[],
    )
}

/// The README's own overlay (images from a registry, Flight SQL users with bcrypt hashes
/// and the cluster secret from files) renders over the gpu overlay: the images and the
/// `dlp-auth` and `dlp-cluster` Secrets are replaced.
#[test]
fn the_readme_overlay_sets_images_and_users() {
    let readme =
        std::fs::read_to_string(repo().join("docs/deployment.md")).expect("docs/deployment.md");
    let start = readme
        .find("```yaml\n# my-dlp/kustomization.yaml\n")
        .expect("docs/deployment.md: the my-dlp/kustomization.yaml example");
    let block = &readme[start + "```yaml\n".len()..];
    let block = &block[..block.find("```").expect("end of the example")];
    assert!(
        block.contains("resources: [../deploy/overlays/gpu]"),
        "README example: {block}"
    );
    let users = format!("alice:{ALICE_HASH}\n");
    let yaml = my_overlay(
        block,
        &[
            ("users", &users),
            ("secret", &format!("{CLUSTER_SECRET}\n")),
        ],
    );
    validate_strictly("README overlay", &yaml);
    let objs = objects("README overlay", &yaml);
    assert_eq!(
        id_set(&objs),
        kustomize_ids(true),
        "README overlay: objects"
    );
    let secret = |name: &str, key: &str| {
        decode_base64(
            "README overlay",
            str_at(get(&objs, "Secret", name), &format!("data.{key}")),
        )
    };
    assert_eq!(secret("dlp-auth", "users"), users);
    assert_eq!(
        secret("dlp-cluster", "secret"),
        format!("{CLUSTER_SECRET}\n")
    );
    for (deployment, image) in [
        (
            "dlp-scheduler",
            "registry.example.com/dlp/dlp-scheduler:0.1.0",
        ),
        (
            "dlp-executor-cpu",
            "registry.example.com/dlp/dlp-executor:0.1.0",
        ),
        (
            "dlp-executor-gpu",
            "registry.example.com/dlp/dlp-executor:0.1.0-cuda",
        ),
    ] {
        assert_eq!(
            str_at(container(get(&objs, "Deployment", deployment)), "image"),
            image
        );
    }
    let expect = Expect {
        prefix: "dlp",
        external: &[],
    };
    assert_no_problems(consistency("README overlay", &objs, &expect));
    // The README's commands make what this test wrote: a bcrypt users file, a long secret.
    assert!(
        readme.contains("htpasswd -nbB -C 12 "),
        "docs/deployment.md: how to make a users file"
    );
}

/// The TLS component (deploy/components/tls) over the gpu overlay renders what the chart
/// does with tls.enabled, field by field.
#[test]
fn the_tls_component_matches_the_chart() {
    let label = "gpu overlay + components/tls vs helm tls.enabled";
    let k = my_overlay(
        "resources: [../deploy/overlays/gpu]\ncomponents: [../deploy/components/tls]\n",
        &[],
    );
    validate_strictly(label, &k);
    let h = helm_template(
        "dlp",
        &["helm/dlp/ci/gpu-values.yaml"],
        &["tls.enabled=true", "tls.secretName=dlp-tls"],
    );
    validate_strictly(label, &h);
    let (k, h) = (objects(label, &k), objects(label, &h));
    assert_no_problems(compare(label, &k, &h));
    let expect = Expect {
        prefix: "dlp",
        external: &["dlp-tls"],
    };
    for objs in [&k, &h] {
        assert_no_problems(consistency(label, objs, &expect));
        assert_state_volume(label, objs, "dlp", Some("dlp-state"));
        let c = container(get(objs, "Deployment", "dlp-scheduler"));
        let args = args_of(c);
        assert_eq!(
            (
                args.get("tls-cert").map(String::as_str),
                args.get("tls-key").map(String::as_str)
            ),
            (Some("/etc/dlp/tls/tls.crt"), Some("/etc/dlp/tls/tls.key")),
            "{label}"
        );
        assert_eq!(str_at(c, "readinessProbe.httpGet.scheme"), "HTTPS");
    }
}

#[test]
fn helm_chart_lints_strictly() {
    for values in [None, Some("helm/dlp/ci/gpu-values.yaml")] {
        let mut args = vec!["lint", "--strict", "helm/dlp"];
        if let Some(v) = values {
            args.extend(["-f", v]);
        }
        let out = run_ok(&tool("helm"), &args, None, &[]);
        assert!(
            out.contains("0 chart(s) failed")
                && !out.contains("[WARNING]")
                && !out.contains("[ERROR]"),
            "helm {}:\n{out}",
            args.join(" ")
        );
    }
}

#[test]
fn helm_chart_renders_validates_strictly_and_hangs_together() {
    for (values, gpu) in [
        (&[][..], false),
        (&["helm/dlp/ci/gpu-values.yaml"][..], true),
    ] {
        let label = format!("helm template {values:?}");
        let yaml = helm_template("dlp", values, &[]);
        validate_strictly(&label, &yaml);
        let objs = objects(&label, &yaml);
        assert_eq!(id_set(&objs), helm_ids(gpu), "{label}: objects");
        let expect = Expect {
            prefix: "dlp",
            external: &[],
        };
        assert_no_problems(consistency(&label, &objs, &expect));
        assert_state_volume(&label, &objs, "dlp", Some("dlp-state"));
        // The test hook runs a query with the scheduler image's dlp client.
        let test = get(&objs, "Pod", "dlp-test-sql");
        assert_eq!(
            key(test, "metadata.annotations", "helm.sh/hook").as_str(),
            Some("test")
        );
        assert_no_problems(pod_security(
            &format!("{label}: Pod/dlp-test-sql"),
            at(test, "spec"),
        ));
        let c = &seq_at(test, "spec.containers")[0];
        let scheduler_image = str_at(
            container(get(&objs, "Deployment", "dlp-scheduler")),
            "image",
        );
        assert_eq!(str_at(c, "image"), scheduler_image, "{label}: test image");
        let command: Vec<&str> = seq_at(c, "command")
            .iter()
            .chain(seq_at(c, "args"))
            .filter_map(Value::as_str)
            .collect();
        assert_eq!(
            command,
            [
                "dlp",
                "--scheduler=df://dlp-scheduler:50050",
                "sql",
                "--format=csv",
                "SELECT 1 AS one"
            ],
            "{label}: test command"
        );
        // It logs in as the generated user, its password from the chart's Secret.
        let env = |name: &str| {
            seq_at(c, "env")
                .iter()
                .find(|e| str_at(e, "name") == name)
                .cloned()
                .unwrap_or(Value::Null)
        };
        assert_eq!(str_at(&env("DLP_USER"), "value"), "dlp", "{label}");
        assert_eq!(
            (
                str_at(&env("DLP_PASSWORD"), "valueFrom.secretKeyRef.name"),
                str_at(&env("DLP_PASSWORD"), "valueFrom.secretKeyRef.key")
            ),
            ("dlp-auth", "password"),
            "{label}"
        );
    }
}

#[test]
fn chart_and_overlays_describe_the_same_objects() {
    let mut problems = vec![];
    for (overlay, values) in [
        ("cpu", &[][..]),
        ("gpu", &["helm/dlp/ci/gpu-values.yaml"][..]),
    ] {
        let label = format!("deploy/overlays/{overlay} vs helm template {values:?}");
        let k = objects(&label, &kustomize(overlay));
        let h = objects(&label, &helm_template("dlp", values, &[]));
        problems.extend(compare(&label, &k, &h));
    }
    assert_no_problems(problems);
}

/// The field-by-field comparison itself finds differences (and names them).
#[test]
fn comparison_reports_field_differences() {
    let k = objects("k", &kustomize("gpu"));
    let h = objects(
        "h",
        &helm_template(
            "dlp",
            &["helm/dlp/ci/gpu-values.yaml"],
            &[
                "executors.gpu.vcores=2",
                "executors.cpu.resources.limits.memory=9Gi",
            ],
        ),
    );
    let problems = compare("x", &k, &h).join("\n");
    assert!(
        problems.contains(
            "Deployment/dlp-executor-gpu: spec.template.spec.containers[executor].args[7]: kustomize \"--vcores=1\", helm \"--vcores=2\""
        ),
        "{problems}"
    );
    assert!(
        problems.contains("ConfigMap/dlp-config: data.dlp.yaml.autoscaler.gpu.tasksPerExecutor: kustomize 1, helm 2"),
        "{problems}"
    );
    assert!(
        problems.contains(
            "containers[executor].resources.limits.memory: kustomize \"8Gi\", helm \"9Gi\""
        ),
        "{problems}"
    );
}

#[test]
fn chart_options_render_valid_manifests() {
    let render = |label: &str, sets: &[&str], release: &str| -> Objects {
        let yaml = helm_template(release, &["helm/dlp/ci/gpu-values.yaml"], sets);
        validate_strictly(label, &yaml);
        objects(label, &yaml)
    };
    let scheduler_of = |objs: &Objects, prefix: &str| -> Value {
        container(get(objs, "Deployment", &format!("{prefix}-scheduler"))).clone()
    };

    // Users from values, with bcrypt hashes: the Secret holds them; no pod annotation
    // carries a checksum of it; admins become --admin flags.
    let label = "auth.users";
    let bob_hash = "$2b$12$R9h/cIPz0gi.URNNX3kh2OPST9/PgBkqquzi.Ss7KIUgO2t0jWMUW";
    let objs = render(
        label,
        &[
            "auth.users[0].name=alice",
            &format!("auth.users[0].passwordHash={ALICE_HASH}"),
            "auth.users[1].name=bob",
            &format!("auth.users[1].passwordHash={bob_hash}"),
            "auth.admins[0]=alice",
        ],
        "dlp",
    );
    let secret = get(&objs, "Secret", "dlp-auth");
    let users = decode_base64(label, str_at(secret, "data.users"));
    assert_eq!(users, format!("alice:{ALICE_HASH}\nbob:{bob_hash}\n"));
    assert!(
        at(secret, "data.password").is_null(),
        "{label}: no generated password"
    );
    let scheduler = get(&objs, "Deployment", "dlp-scheduler");
    let annotations = at(scheduler, "spec.template.metadata.annotations");
    let checksums: Vec<&str> = annotations
        .as_mapping()
        .into_iter()
        .flatten()
        .filter_map(|(k, _)| k.as_str())
        .filter(|k| k.starts_with("checksum/"))
        .collect();
    assert_eq!(
        checksums,
        ["checksum/config"],
        "{label}: no checksum of a Secret in pod annotations"
    );
    assert_eq!(
        arg_values(container(scheduler), "admin"),
        ["alice"],
        "{label}: --admin"
    );
    let expect = Expect {
        prefix: "dlp",
        external: &[],
    };
    assert_no_problems(consistency(label, &objs, &expect));

    // The generated user: a bcrypt hash in `users`, the password apart (not mounted).
    let label = "generated user";
    let objs = render(label, &[], "dlp");
    let secret = get(&objs, "Secret", "dlp-auth");
    let users = decode_base64(label, str_at(secret, "data.users"));
    let password = decode_base64(label, str_at(secret, "data.password"));
    let hash = users
        .strip_prefix("dlp:")
        .and_then(|u| u.strip_suffix('\n'))
        .unwrap_or("");
    assert!(
        is_bcrypt(hash) && !users.contains(&password),
        "{label}: users {users:?}"
    );
    let auth = seq_at(
        get(&objs, "Deployment", "dlp-scheduler"),
        "spec.template.spec.volumes",
    )
    .iter()
    .find(|v| str_at(v, "name") == "auth")
    .expect("the auth volume");
    let items: Vec<&str> = seq_at(auth, "secret.items")
        .iter()
        .map(|i| str_at(i, "key"))
        .collect();
    assert_eq!(
        items,
        ["users"],
        "{label}: the scheduler mounts only `users`"
    );

    // Plain-text passwords, and hashes that are not bcrypt, are refused by the schema.
    let err = helm_template_err(&["auth.users[0].name=alice", "auth.users[0].password=pw1"]);
    assert!(
        err.contains("password") && err.contains("not allowed"),
        "{err}"
    );
    let err = helm_template_err(&["auth.users[0].name=alice", "auth.users[0].passwordHash=pw1"]);
    assert!(err.contains("passwordHash"), "{err}");
    let err = helm_template_err(&[
        "auth.users[0].name=alice",
        "auth.users[0].passwordHash=$1$abcdefgh$0123456789012345678901",
    ]);
    assert!(err.contains("passwordHash"), "{err}");
    let err = helm_template_err(&[
        "auth.users[0].name=alice",
        &format!("auth.users[0].passwordHash={ALICE_HASH}"),
        "auth.admins[0]=bob",
    ]);
    assert!(
        err.contains("auth.admins: bob is not one of auth.users"),
        "{err}"
    );

    // The cluster secret from a Secret of yours: the chart makes none, every pod mounts it.
    let label = "clusterSecret.existingSecret";
    let objs = render(label, &["clusterSecret.existingSecret=my-cluster"], "dlp");
    assert!(!names(&objs, "Secret").contains("dlp-cluster"), "{label}");
    for d in ["dlp-scheduler", "dlp-executor-cpu", "dlp-executor-gpu"] {
        let volumes = seq_at(get(&objs, "Deployment", d), "spec.template.spec.volumes");
        assert!(
            volumes
                .iter()
                .any(|v| str_at(v, "secret.secretName") == "my-cluster"),
            "{label}: {d}: {}",
            show(&Value::Sequence(volumes.to_vec()))
        );
    }
    let expect = Expect {
        prefix: "dlp",
        external: &["my-cluster"],
    };
    assert_no_problems(consistency(label, &objs, &expect));

    // Writable roots: the same flags on the scheduler and the executors; only under /data.
    let label = "storage.writableRoots";
    let objs = render(
        label,
        &[
            "storage.writableRoots[0]=/data/out",
            "storage.writableRoots[1]=/data/reports",
        ],
        "dlp",
    );
    for d in ["dlp-scheduler", "dlp-executor-cpu", "dlp-executor-gpu"] {
        assert_eq!(
            arg_values(container(get(&objs, "Deployment", d)), "writable-root"),
            ["/data/out", "/data/reports"],
            "{label}: {d}"
        );
    }
    let expect = Expect {
        prefix: "dlp",
        external: &[],
    };
    assert_no_problems(consistency(label, &objs, &expect));
    let err = helm_template_err(&["storage.writableRoots[0]=/etc"]);
    assert!(
        err.contains("storage.writableRoots: /etc is not under /data"),
        "{err}"
    );

    // NetworkPolicies: off; narrowed client namespaces plus Prometheus'; without the
    // Flight proxy clients reach the executors' Flight port.
    let label = "networkPolicy.enabled=false";
    let objs = render(label, &["networkPolicy.enabled=false"], "dlp");
    assert!(names(&objs, "NetworkPolicy").is_empty(), "{label}");
    assert_no_problems(consistency(label, &objs, &expect));
    let label = "networkPolicy selectors, no Flight proxy";
    let objs = render(
        label,
        &[
            "networkPolicy.clientNamespaceSelector.matchLabels.team=analytics",
            "networkPolicy.metricsNamespaceSelector.matchLabels.kubernetes\\.io/metadata\\.name=monitoring",
            "scheduler.flightProxy=false",
        ],
        "dlp",
    );
    assert_no_problems(consistency(label, &objs, &expect));
    let from = seq_at(
        &seq_at(get(&objs, "NetworkPolicy", "dlp-scheduler"), "spec.ingress")[0],
        "from",
    );
    let namespace_selectors: Vec<String> = from
        .iter()
        .map(|peer| at(peer, "namespaceSelector"))
        .filter(|s| !s.is_null())
        .map(show)
        .collect();
    assert_eq!(
        namespace_selectors,
        [
            r#"{"matchLabels":{"team":"analytics"}}"#,
            r#"{"matchLabels":{"kubernetes.io/metadata.name":"monitoring"}}"#
        ],
        "{label}"
    );
    let analytics: Value = serde_yaml::from_str("{team: analytics}").expect("labels");
    let executor_rules = seq_at(get(&objs, "NetworkPolicy", "dlp-executor"), "spec.ingress");
    assert!(
        executor_rules.iter().any(|r| seq_at(r, "from")
            .iter()
            .any(|peer| selects(at(peer, "namespaceSelector"), &analytics))),
        "{label}: clients reach the executors without the proxy"
    );
    // The default: every namespace's pods may connect to port 50050 (README: narrow it).
    let objs = render("defaults", &[], "dlp");
    let from = seq_at(
        &seq_at(get(&objs, "NetworkPolicy", "dlp-scheduler"), "spec.ingress")[0],
        "from",
    );
    assert!(
        from.iter().any(|peer| at(peer, "namespaceSelector")
            .as_mapping()
            .is_some_and(|m| m.is_empty())),
        "defaults: clientNamespaceSelector {{}}"
    );

    // TLS on the client port needs the Secret's name.
    let err = helm_template_err(&["tls.enabled=true"]);
    assert!(err.contains("tls.enabled needs tls.secretName"), "{err}");

    // An existing Secret: the chart makes none and mounts that one.
    let label = "auth.existingSecret";
    let objs = render(label, &["auth.existingSecret=my-users"], "dlp");
    assert!(!names(&objs, "Secret").contains("dlp-auth"), "{label}");
    let volumes = seq_at(
        get(&objs, "Deployment", "dlp-scheduler"),
        "spec.template.spec.volumes",
    );
    assert!(
        volumes
            .iter()
            .any(|v| str_at(v, "secret.secretName") == "my-users"),
        "{label}: {}",
        show(&Value::Sequence(volumes.to_vec()))
    );
    let expect = Expect {
        prefix: "dlp",
        external: &["my-users"],
    };
    assert_no_problems(consistency(label, &objs, &expect));

    // Anonymous Flight SQL: no users Secret, no --auth-file (the cluster secret stays).
    let label = "auth.allowAnonymous";
    let objs = render(label, &["auth.allowAnonymous=true"], "dlp");
    assert_eq!(
        names(&objs, "Secret"),
        BTreeSet::from(["dlp-cluster".to_string()]),
        "{label}"
    );
    let args = args_of(&scheduler_of(&objs, "dlp"));
    assert!(
        args.contains_key("allow-anonymous") && !args.contains_key("auth-file"),
        "{label}: {args:?}"
    );
    let expect = Expect {
        prefix: "dlp",
        external: &[],
    };
    assert_no_problems(consistency(label, &objs, &expect));

    // Without the autoscaler: fixed replicas, autoscaler off in dlp.yaml.
    let label = "autoscaling.enabled=false";
    let objs = render(
        label,
        &["autoscaling.enabled=false", "executors.cpu.replicas=3"],
        "dlp",
    );
    assert_eq!(
        at(
            get(&objs, "Deployment", "dlp-executor-cpu"),
            "spec.replicas"
        )
        .as_i64(),
        Some(3)
    );
    let config = key(get(&objs, "ConfigMap", "dlp-config"), "data", "dlp.yaml");
    let config: Value = serde_yaml::from_str(config.as_str().unwrap_or("")).expect("dlp.yaml");
    assert_eq!(at(&config, "autoscaler.enabled").as_bool(), Some(false));
    assert_no_problems(consistency(label, &objs, &expect));

    // Another release name, a registry, existing and unprovisioned claims, the
    // ServiceMonitor (which must pick the client Service only).
    let label = "release ml + options";
    let objs = render(
        label,
        &[
            "image.registry=registry.example.com/team/",
            "persistence.data.existingClaim=shared-data",
            "persistence.models.storageClass=-",
            "metrics.serviceMonitor.enabled=true",
            "metrics.serviceMonitor.labels.release=prometheus",
            "metrics.basicAuthSecret=prometheus-dlp",
            "auth.admins[0]=dlp",
            "tls.enabled=true",
            "tls.secretName=ml-dlp-tls",
            "metrics.serviceMonitor.tlsConfig.insecureSkipVerify=true",
        ],
        "ml",
    );
    let expect = Expect {
        prefix: "ml-dlp",
        external: &["shared-data", "ml-dlp-tls"],
    };
    assert_no_problems(consistency(label, &objs, &expect));
    assert_eq!(
        names(&objs, "PersistentVolumeClaim"),
        BTreeSet::from(["ml-dlp-models".to_string(), "ml-dlp-state".to_string()])
    );
    assert_state_volume(label, &objs, "ml-dlp", Some("ml-dlp-state"));
    assert_eq!(
        at(
            get(&objs, "PersistentVolumeClaim", "ml-dlp-models"),
            "spec.storageClassName"
        ),
        &Value::from("")
    );
    assert_eq!(
        str_at(&scheduler_of(&objs, "ml-dlp"), "image"),
        "registry.example.com/team/ballista-dlp/dlp-scheduler:0.1.0"
    );
    assert_eq!(
        str_at(
            container(get(&objs, "Deployment", "ml-dlp-executor-gpu")),
            "image"
        ),
        "registry.example.com/team/ballista-dlp/dlp-executor:0.1.0-cuda"
    );
    let monitor = get(&objs, "ServiceMonitor", "ml-dlp-scheduler");
    assert_eq!(str_at(monitor, "metadata.labels.release"), "prometheus");
    let selector = at(monitor, "spec.selector.matchLabels");
    for (svc, picked) in [
        ("ml-dlp-scheduler", true),
        ("ml-dlp-scheduler-registration", false),
    ] {
        let labels = at(get(&objs, "Service", svc), "metadata.labels");
        let matches = selector
            .as_mapping()
            .is_some_and(|m| m.iter().all(|(k, v)| labels.get(k) == Some(v)));
        assert_eq!(
            matches, picked,
            "{label}: ServiceMonitor picks Service/{svc}"
        );
    }
    let endpoint = &seq_at(monitor, "spec.endpoints")[0];
    assert_eq!(str_at(endpoint, "path"), "/api/metrics");
    // /api/metrics answers admins only: basic auth from the Secret; https with TLS.
    for part in ["username", "password"] {
        assert_eq!(
            (
                str_at(endpoint, &format!("basicAuth.{part}.name")),
                str_at(endpoint, &format!("basicAuth.{part}.key"))
            ),
            ("prometheus-dlp", part),
            "{label}: ServiceMonitor basicAuth"
        );
    }
    assert_eq!(str_at(endpoint, "scheme"), "https");
    assert_eq!(
        at(endpoint, "tlsConfig.insecureSkipVerify").as_bool(),
        Some(true)
    );
    let err = helm_template_err(&["metrics.serviceMonitor.enabled=true"]);
    assert!(
        err.contains("metrics.serviceMonitor.enabled needs metrics.basicAuthSecret"),
        "{err}"
    );

    // The scheduler's state volume: off (an emptyDir, no claim; the flag stays), a claim of
    // yours, never the data or model claim; the schema knows its keys.
    let label = "persistence.state.enabled=false";
    let objs = render(label, &["persistence.state.enabled=false"], "dlp");
    assert_state_volume(label, &objs, "dlp", None);
    assert_eq!(
        names(&objs, "PersistentVolumeClaim"),
        BTreeSet::from(["dlp-data".to_string(), "dlp-models".to_string()]),
        "{label}"
    );
    let expect = Expect {
        prefix: "dlp",
        external: &[],
    };
    assert_no_problems(consistency(label, &objs, &expect));
    let label = "persistence.state.existingClaim";
    let objs = render(label, &["persistence.state.existingClaim=my-state"], "dlp");
    assert_state_volume(label, &objs, "dlp", Some("my-state"));
    let expect = Expect {
        prefix: "dlp",
        external: &["my-state"],
    };
    assert_no_problems(consistency(label, &objs, &expect));
    for shared in ["dlp-data", "dlp-models"] {
        let err = helm_template_err(&[&format!("persistence.state.existingClaim={shared}")]);
        assert!(
            err.contains(&format!(
                "persistence.state.existingClaim: {shared} is the data or model claim"
            )),
            "{err}"
        );
    }
    let err = helm_template_err(&["persistence.state.readOnly=true"]);
    assert!(err.contains("readOnly"), "{err}");
    let err = helm_template_err(&["persistence.state.size=lots"]);
    assert!(err.contains("size"), "{err}");

    // Values that cannot work are refused with a message.
    let err = helm_template_err(&["executors.cpu.minReplicas=5"]);
    assert!(
        err.contains("executors.cpu.minReplicas (5) is above maxReplicas (4)"),
        "{err}"
    );
    let err = helm_template_err(&["executors.cpu.minReplicas=0"]);
    assert!(
        err.contains("scheduler.minReadyExecutors (1) is above"),
        "{err}"
    );
    let err = helm_template_err(&["executors.gpu.vcores=0"]);
    assert!(err.contains("executors.gpu.vcores"), "{err}");
    let err = helm_template_err(&["executors.cpu.device=tpu"]);
    assert!(err.contains("executors.cpu.device"), "{err}");
    let err = helm_template_err(&["schedulr.logLevel=debug"]);
    assert!(err.contains("schedulr"), "{err}");
}

#[test]
fn dockerfile_lints_clean_and_agrees_with_setup_and_manifests() {
    let dockerfile = "deploy/docker/Dockerfile";
    run_ok(&tool("hadolint"), &[dockerfile], None, &[]);
    let text = std::fs::read_to_string(repo().join(dockerfile)).expect("Dockerfile");
    // The same torch wheel as development (scripts/setup.sh), so libtorch matches tch.
    let setup = std::fs::read_to_string(repo().join("scripts/setup.sh")).expect("setup.sh");
    let pin = |t: &str| {
        t.match_indices("torch==")
            .filter(|(i, _)| {
                !t[..*i].ends_with(|c: char| c.is_ascii_alphanumeric() || c == '-' || c == '_')
            })
            .map(|(i, m)| {
                let version: String = t[i + m.len()..]
                    .chars()
                    .take_while(|c| c.is_ascii_digit() || *c == '.')
                    .collect();
                format!("torch=={version}")
            })
            .next()
    };
    assert_eq!(
        pin(&text),
        pin(&setup),
        "torch pin of the Dockerfile and setup.sh"
    );
    assert!(pin(&text).is_some(), "the Dockerfile pins torch");
    for target in ["AS build", "AS runtime", "AS scheduler", "AS executor"] {
        assert!(text.contains(target), "Dockerfile: no stage `{target}`");
    }
    // Ports and user of the images are those of the manifests.
    let objs = objects("gpu", &kustomize("gpu"));
    let mut ports = BTreeSet::new();
    for d in ["dlp-scheduler", "dlp-executor-cpu", "dlp-executor-gpu"] {
        let dep = get(&objs, "Deployment", d);
        for p in seq_at(container(dep), "ports") {
            ports.insert(at(p, "containerPort").as_i64().expect("port").to_string());
        }
        assert_eq!(
            at(dep, "spec.template.spec.securityContext.runAsUser").as_i64(),
            Some(10001),
            "{d}: the images' user is 10001"
        );
    }
    let exposed: BTreeSet<String> = text
        .lines()
        .filter_map(|l| l.strip_prefix("EXPOSE "))
        .flat_map(|l| l.split_whitespace().map(String::from))
        .collect();
    assert_eq!(
        exposed, ports,
        "EXPOSEd ports vs the manifests' container ports"
    );
    assert!(
        text.contains("USER 10001:10001"),
        "Dockerfile: USER 10001:10001"
    );
    let ignore = std::fs::read_to_string(repo().join(".dockerignore")).expect(".dockerignore");
    assert!(
        ignore.lines().any(|l| l.trim() == "target"),
        ".dockerignore must leave out target/"
    );
}

/// The scheduler has no libtorch: its crate graph holds neither `tch` nor `torch-sys` (nor
/// does that of the `dlp` client built without its `torch` feature, as the scheduler's image
/// carries it), and the scheduler's image is built from the libtorch-free runtime.
#[test]
fn scheduler_and_its_image_have_no_libtorch() {
    // The packages in the normal-dependency graph of `args`, one per line.
    let tree = |args: &[&str]| -> String {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let out = std::process::Command::new(cargo)
            .args(["tree", "--offline", "--locked", "-e", "normal"])
            .args(["--prefix", "none", "--format", "{p}"])
            .args(args)
            .current_dir(repo())
            .output()
            .expect("cargo tree");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let holds_torch = |tree: &str| {
        tree.lines()
            .any(|l| l.starts_with("tch ") || l.starts_with("torch-sys "))
    };
    for args in [
        &["-p", "dlp-scheduler"][..],
        &["-p", "dlp", "--no-default-features"][..],
    ] {
        let packages = tree(args);
        assert!(
            packages.lines().count() > 100,
            "cargo tree {args:?}: {packages}"
        );
        assert!(
            !holds_torch(&packages),
            "cargo tree {args:?} holds tch or torch-sys"
        );
    }
    // The executor's does (the check above can fail).
    assert!(holds_torch(&tree(&["-p", "dlp-executor"])));

    let text =
        std::fs::read_to_string(repo().join("deploy/docker/Dockerfile")).expect("Dockerfile");
    let stage = |name: &str| -> String {
        let start = text
            .lines()
            .position(|l| l.starts_with("FROM ") && l.ends_with(&format!(" AS {name}")))
            .unwrap_or_else(|| panic!("Dockerfile: no stage {name}"));
        text.lines()
            .skip(start)
            .take_while({
                let mut first = true;
                move |l| std::mem::take(&mut first) || !l.starts_with("FROM ")
            })
            .collect::<Vec<_>>()
            .join("\n")
    };
    let scheduler = stage("scheduler");
    assert!(
        scheduler.starts_with("FROM runtime-base AS scheduler"),
        "{scheduler}"
    );
    assert!(
        !stage("runtime-base").contains("/libs"),
        "runtime-base carries libtorch"
    );
    assert!(
        !scheduler.contains("/libs") && scheduler.contains("/out/plain/dlp-scheduler"),
        "{scheduler}"
    );
    assert!(
        text.contains("-p dlp-scheduler -p dlp --no-default-features"),
        "the scheduler and its dlp are built without the torch feature"
    );
}

/// The gpu overlay (kubectl, server-side apply) and the chart (helm) are accepted by a real
/// kube-apiserver (v1.20, RBAC on): server-side dry runs, then real installs into separate
/// namespaces (NetworkPolicies and Secrets included); the autoscaler's account can read and
/// scale the executor pools and nothing else; `helm upgrade` keeps the generated password,
/// the cluster secret and a scaled-up pool.
#[test]
fn kube_apiserver_accepts_the_overlay_and_the_chart() {
    let server = ApiServer::start("RBAC");
    let executors: BTreeSet<String> = ["dlp-executor-cpu", "dlp-executor-gpu", "dlp-scheduler"]
        .into_iter()
        .map(String::from)
        .collect();

    // kubectl: the namespace first (a dry run creates nothing), then everything.
    let yaml = kustomize("gpu");
    let (namespace, rest): (Vec<&str>, Vec<&str>) = yaml
        .split("\n---\n")
        .partition(|doc| doc.contains("kind: Namespace\n"));
    assert_eq!(namespace.len(), 1, "one Namespace in the overlay");
    server.run(
        "kubectl",
        &["apply", "--server-side", "-f", "-"],
        Some(namespace[0]),
    );
    let rest = rest.join("\n---\n");
    let out = server.run(
        "kubectl",
        &["apply", "--server-side", "--dry-run=server", "-f", "-"],
        Some(&rest),
    );
    assert!(
        out.contains("deployment.apps/dlp-executor-gpu serverside-applied (server dry run)"),
        "{out}"
    );
    server.run(
        "kubectl",
        &["apply", "--server-side", "-f", "-"],
        Some(&yaml),
    );
    assert_eq!(server.deployments("dlp"), executors, "Deployments in dlp");
    let registration = server.run(
        "kubectl",
        &[
            "-n",
            "dlp",
            "get",
            "service",
            "dlp-scheduler-registration",
            "-o",
            "jsonpath={.spec.publishNotReadyAddresses}",
        ],
        None,
    );
    assert_eq!(registration, "true");
    let policies = |ns: &str| -> BTreeSet<String> {
        server
            .run(
                "kubectl",
                &["-n", ns, "get", "networkpolicies", "-o", "name"],
                None,
            )
            .lines()
            .map(|l| {
                l.trim_start_matches("networkpolicy.networking.k8s.io/")
                    .to_string()
            })
            .collect()
    };
    let expected_policies: BTreeSet<String> = ["dlp-scheduler", "dlp-executor"]
        .into_iter()
        .map(String::from)
        .collect();
    assert_eq!(policies("dlp"), expected_policies, "NetworkPolicies in dlp");
    // The claims, the scheduler's own ReadWriteOnce state claim among them.
    let claims = |ns: &str| -> BTreeSet<String> {
        server
            .run(
                "kubectl",
                &[
                    "-n",
                    ns,
                    "get",
                    "persistentvolumeclaims",
                    "-o",
                    "jsonpath={range .items[*]}{.metadata.name}={.spec.accessModes}{\"\\n\"}{end}",
                ],
                None,
            )
            .lines()
            .map(String::from)
            .collect()
    };
    let expected_claims: BTreeSet<String> = [
        r#"dlp-data=["ReadWriteMany"]"#,
        r#"dlp-models=["ReadWriteMany"]"#,
        r#"dlp-state=["ReadWriteOnce"]"#,
    ]
    .into_iter()
    .map(String::from)
    .collect();
    assert_eq!(claims("dlp"), expected_claims, "claims in dlp");

    // RBAC: the scheduler's account reads and scales the executor pools, nothing else.
    let scheduler_sa = "--as=system:serviceaccount:dlp:dlp-scheduler";
    let as_scheduler = |args: &[&str]| {
        let mut all = vec![scheduler_sa, "-n", "dlp"];
        all.extend(args);
        server.try_run("kubectl", &all, None)
    };
    let (ok, _, err) = as_scheduler(&["get", "deployment", "dlp-executor-gpu"]);
    assert!(ok, "the autoscaler cannot read the GPU pool: {err}");
    let (ok, _, err) = as_scheduler(&["scale", "deployment", "dlp-executor-gpu", "--replicas=1"]);
    assert!(ok, "the autoscaler cannot scale the GPU pool: {err}");
    assert_eq!(server.replicas("dlp", "dlp-executor-gpu"), "1");
    for forbidden in [
        &["scale", "deployment", "dlp-scheduler", "--replicas=2"][..],
        &["delete", "deployment", "dlp-executor-cpu"][..],
        &["get", "secret", "dlp-auth"][..],
        &["get", "secret", "dlp-cluster"][..],
        &["-n", "default", "get", "deployments"][..],
    ] {
        let (ok, _, err) = as_scheduler(forbidden);
        assert!(
            !ok && err.contains("forbidden"),
            "the autoscaler may {forbidden:?}: {err}"
        );
    }
    let (ok, _, err) = server.try_run(
        "kubectl",
        &[
            "--as=system:serviceaccount:dlp:dlp-executor",
            "-n",
            "dlp",
            "get",
            "deployment",
            "dlp-executor-cpu",
        ],
        None,
    );
    assert!(
        !ok && err.contains("forbidden"),
        "executors may read Deployments: {err}"
    );
    // Re-applying the overlay resets the pools to their minimum (README, "Deployment").
    server.run(
        "kubectl",
        &["apply", "--server-side", "-f", "-"],
        Some(&yaml),
    );
    assert_eq!(server.replicas("dlp", "dlp-executor-gpu"), "0");

    // helm: a server-side dry run, then an install into its own namespace.
    server.run("kubectl", &["create", "namespace", "dlp-helm"], None);
    let chart = [
        "helm/dlp",
        "-n",
        "dlp-helm",
        "-f",
        "helm/dlp/ci/gpu-values.yaml",
    ];
    let mut dry = vec!["install", "dlp"];
    dry.extend(chart);
    dry.push("--dry-run=server");
    server.run("helm", &dry, None);
    assert!(
        server.deployments("dlp-helm").is_empty(),
        "a dry run installs nothing"
    );
    let mut install = vec!["install", "dlp"];
    install.extend(chart);
    let notes = server.run("helm", &install, None);
    assert!(
        notes.contains("kubectl -n dlp-helm port-forward svc/dlp-scheduler 50050:50050"),
        "NOTES: {notes}"
    );
    assert_eq!(
        server.deployments("dlp-helm"),
        executors,
        "Deployments in dlp-helm"
    );
    assert_eq!(
        policies("dlp-helm"),
        expected_policies,
        "NetworkPolicies in dlp-helm"
    );
    assert_eq!(claims("dlp-helm"), expected_claims, "claims in dlp-helm");
    // The generated password (and its hash) and the cluster secret.
    let password = || {
        ["{.data.users}", "{.data.password}"].map(|field| {
            server.run(
                "kubectl",
                &[
                    "-n",
                    "dlp-helm",
                    "get",
                    "secret",
                    "dlp-auth",
                    "-o",
                    &format!("jsonpath={field}"),
                ],
                None,
            )
        })
    };
    let cluster_secret = || {
        server.run(
            "kubectl",
            &[
                "-n",
                "dlp-helm",
                "get",
                "secret",
                "dlp-cluster",
                "-o",
                "jsonpath={.data.secret}",
            ],
            None,
        )
    };
    let first = password();
    let first_cluster = cluster_secret();
    assert!(
        first.iter().all(|f| !f.is_empty()),
        "a generated password and its hash: {first:?}"
    );
    assert_eq!(
        decode_base64("dlp-cluster", &first_cluster).len(),
        48,
        "a generated cluster secret"
    );
    // The autoscaler scaled up; an upgrade keeps that and the password.
    server.run(
        "kubectl",
        &[
            "-n",
            "dlp-helm",
            "scale",
            "deployment",
            "dlp-executor-cpu",
            "--replicas=3",
        ],
        None,
    );
    let mut upgrade = vec!["upgrade", "--install", "dlp"];
    upgrade.extend(chart);
    server.run("helm", &upgrade, None);
    assert_eq!(
        password(),
        first,
        "helm upgrade changed the generated password"
    );
    assert_eq!(
        cluster_secret(),
        first_cluster,
        "helm upgrade changed the cluster secret"
    );
    assert_eq!(server.replicas("dlp-helm", "dlp-executor-cpu"), "3");
    assert_eq!(server.replicas("dlp-helm", "dlp-executor-gpu"), "0");
    let revision = server.run(
        "helm",
        &["-n", "dlp-helm", "status", "dlp", "-o", "json"],
        None,
    );
    let status: serde_json::Value = serde_json::from_str(&revision).expect("helm status JSON");
    assert_eq!(status["info"]["status"], "deployed");
    assert_eq!(status["version"], 2);
}

/// Object-storage mode (`storage.objectStore` in the chart, `components/object-store` in
/// kustomize): valid manifests in which no pod mounts a shared claim (only the scheduler
/// its own state), every process gets the bucket roots, the work directory in the bucket,
/// the AWS variables and the credentials Secret, the executors read `storage:` from
/// dlp.yaml, and the chart refuses settings that cannot work.
#[test]
fn object_store_mode_shares_no_volume() {
    let helm = helm_template("dlp", &["helm/dlp/ci/objectstore-values.yaml"], &[]);
    let kustomized = my_overlay(
        "resources: [../deploy/overlays/gpu]\ncomponents: [../deploy/components/object-store]\n",
        &[],
    );
    for (label, yaml, gpu) in [
        ("helm template objectstore-values", &helm, false),
        ("kustomize gpu + object-store", &kustomized, true),
    ] {
        validate_strictly(label, yaml);
        let objs = objects(label, yaml);
        assert_eq!(
            names(&objs, "PersistentVolumeClaim"),
            BTreeSet::from(["dlp-state".to_string()]),
            "{label}: claims"
        );
        let mut deployments = vec!["dlp-scheduler", "dlp-executor-cpu"];
        if gpu {
            deployments.push("dlp-executor-gpu");
        }
        for name in deployments {
            let d = get(&objs, "Deployment", name);
            let c = container(d);
            for v in seq_at(d, "spec.template.spec.volumes") {
                let claim = str_at(v, "persistentVolumeClaim.claimName");
                assert!(
                    claim.is_empty() || (claim == "dlp-state" && name == "dlp-scheduler"),
                    "{label}: {name} mounts the claim {claim}"
                );
            }
            assert_eq!(
                arg_values(c, "data-root"),
                ["s3://images/"],
                "{label}: {name}"
            );
            assert_eq!(
                arg_values(c, "writable-root"),
                ["s3://dlp-out/"],
                "{label}: {name}"
            );
            assert_eq!(
                arg_values(c, "model-dir"),
                ["s3://dlp-models/zoo"],
                "{label}: {name}"
            );
            let env: Vec<(String, String)> = seq_at(c, "env")
                .iter()
                .map(|e| {
                    (
                        str_at(e, "name").to_string(),
                        str_at(e, "value").to_string(),
                    )
                })
                .collect();
            for (k, v) in [
                ("DLP_WORK_DIR", "s3://dlp-work/cluster"),
                ("AWS_ENDPOINT_URL", "http://minio.storage.svc:9000"),
                ("AWS_REGION", "us-east-1"),
                ("AWS_ALLOW_HTTP", "true"),
            ] {
                assert!(
                    env.contains(&(k.to_string(), v.to_string())),
                    "{label}: {name} has no {k}={v}: {env:?}"
                );
            }
            assert_eq!(
                str_at(&seq_at(c, "envFrom")[0], "secretRef.name"),
                "dlp-s3-credentials",
                "{label}: {name}"
            );
            assert_eq!(
                arg_values(c, "config"),
                ["/etc/dlp/dlp.yaml"],
                "{label}: {name}"
            );
            assert!(
                seq_at(c, "volumeMounts")
                    .iter()
                    .any(|m| str_at(m, "mountPath") == "/etc/dlp/dlp.yaml"),
                "{label}: {name} does not mount dlp.yaml"
            );
        }
    }
    // The chart: the storage: section reaches dlp.yaml, the annotations the accounts.
    let objs = objects("helm", &helm);
    let text = key(get(&objs, "ConfigMap", "dlp-config"), "data", "dlp.yaml")
        .as_str()
        .unwrap_or_default();
    let config: Value = serde_yaml::from_str(text).unwrap();
    assert_eq!(config["storage"]["maxConcurrentGets"].as_u64(), Some(32));
    for account in ["dlp-scheduler", "dlp-executor"] {
        assert_eq!(
            key(
                get(&objs, "ServiceAccount", account),
                "metadata.annotations",
                "eks.amazonaws.com/role-arn"
            )
            .as_str(),
            Some("arn:aws:iam::111122223333:role/dlp")
        );
    }
    let out = run_ok(
        &tool("helm"),
        &[
            "lint",
            "--strict",
            "helm/dlp",
            "-f",
            "helm/dlp/ci/objectstore-values.yaml",
        ],
        None,
        &[],
    );
    assert!(
        out.contains("0 chart(s) failed") && !out.contains("[WARNING]"),
        "{out}"
    );
    // Settings that cannot work are refused, naming the value.
    let err = helm_template_err(&["storage.objectStore.enabled=true"]);
    assert!(
        err.contains("storage.writableRoots: /data/dlp-out"),
        "{err}"
    );
    let err = helm_template_err(&[
        "storage.objectStore.enabled=true",
        "storage.writableRoots[0]=s3://out/",
        "storage.objectStore.dataRoots[0]=s3://images/",
    ]);
    assert!(
        err.contains("storage.objectStore.workDir is required"),
        "{err}"
    );
}

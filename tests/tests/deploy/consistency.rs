//! Checks that one render hangs together: selectors and labels, ports and probes,
//! volumes and what they refer to, the scheduler's flags and its private state volume, the
//! autoscaler's config against the executor Deployments, RBAC, GPU requests.

use std::collections::{BTreeMap, BTreeSet};

use serde_yaml::Value;

use crate::objects::{
    Objects, arg_values, args_of, at, container, containers, get, key, selects, seq_at, show,
    str_at,
};

/// Settings that differ between renders.
pub struct Expect<'a> {
    /// Prefix of object names ("dlp", or <release>-dlp).
    pub prefix: &'a str,
    /// Names that are referenced but not rendered (existingSecret, existingClaim).
    pub external: &'a [&'a str],
}

/// Checks that one render hangs together; returns the problems found.
pub fn consistency(label: &str, objs: &Objects, expect: &Expect) -> Vec<String> {
    let mut p = vec![];
    let prefix = expect.prefix;
    let scheduler_name = format!("{prefix}-scheduler");
    let registration_name = format!("{prefix}-scheduler-registration");
    let exists = |kind: &str, name: &str| {
        objs.contains_key(&(kind.to_string(), name.to_string())) || expect.external.contains(&name)
    };

    // Namespaces of namespaced objects.
    for ((kind, name), v) in objs {
        if kind != "Namespace" && str_at(v, "metadata.namespace") != "dlp" {
            p.push(format!(
                "{label}: {kind}/{name}: metadata.namespace is {}, not dlp",
                show(at(v, "metadata.namespace"))
            ));
        }
    }

    let deployments: Vec<(&String, &Value)> = objs
        .iter()
        .filter(|((k, _), _)| k == "Deployment")
        .map(|((_, n), v)| (n, v))
        .collect();
    let scheduler = get(objs, "Deployment", &scheduler_name);
    let executors: BTreeMap<String, &Value> = deployments
        .iter()
        .filter(|(n, _)| n.starts_with(&format!("{prefix}-executor-")))
        .map(|(n, v)| (n.to_string(), *v))
        .collect();

    for (name, d) in &deployments {
        let what = format!("{label}: Deployment/{name}");
        // Selector, pod labels.
        let pod_labels = at(d, "spec.template.metadata.labels");
        for (k, v) in at(d, "spec.selector.matchLabels")
            .as_mapping()
            .into_iter()
            .flatten()
        {
            if pod_labels.get(k) != Some(v) {
                p.push(format!(
                    "{what}: selector {}={} is not a pod label ({})",
                    show(k),
                    show(v),
                    show(pod_labels)
                ));
            }
        }
        let spec = at(d, "spec.template.spec");
        p.extend(pod_security(&what, spec));
        // A checksum of a Secret in a pod annotation would leak (to whoever may list
        // pods) a way to test guesses of its content; only dlp.yaml's is there.
        for (k, _) in at(d, "spec.template.metadata.annotations")
            .as_mapping()
            .into_iter()
            .flatten()
        {
            let k = k.as_str().unwrap_or("");
            if k.starts_with("checksum/") && k != "checksum/config" {
                p.push(format!(
                    "{what}: pod annotation {k}: no checksum other than of the ConfigMap (dlp.yaml)"
                ));
            }
        }
        let sa = str_at(spec, "serviceAccountName");
        if !exists("ServiceAccount", sa) {
            p.push(format!("{what}: service account {sa:?} is not rendered"));
        }
        // Volumes and what they refer to.
        let volumes: BTreeMap<&str, &Value> = seq_at(spec, "volumes")
            .iter()
            .map(|v| (str_at(v, "name"), v))
            .collect();
        for v in volumes.values() {
            for (kind, path) in [
                ("ConfigMap", "configMap.name"),
                ("Secret", "secret.secretName"),
                ("PersistentVolumeClaim", "persistentVolumeClaim.claimName"),
            ] {
                let target = str_at(v, path);
                if !target.is_empty() && !exists(kind, target) {
                    p.push(format!(
                        "{what}: volume {} refers to {kind}/{target}, which is not rendered",
                        str_at(v, "name")
                    ));
                }
            }
        }
        for c in containers(d) {
            let cname = str_at(c, "name");
            let ports: BTreeMap<&str, i64> = seq_at(c, "ports")
                .iter()
                .map(|port| {
                    (
                        str_at(port, "name"),
                        at(port, "containerPort").as_i64().unwrap_or(-1),
                    )
                })
                .collect();
            for m in seq_at(c, "volumeMounts") {
                if !volumes.contains_key(str_at(m, "name")) {
                    p.push(format!(
                        "{what}: container {cname} mounts {}, which is not a volume",
                        show(m)
                    ));
                }
            }
            for probe in ["startupProbe", "livenessProbe", "readinessProbe"] {
                let port = at(c, &format!("{probe}.httpGet.port"));
                match port.as_str() {
                    Some(n) if ports.contains_key(n) => {}
                    _ => p.push(format!(
                        "{what}: {probe} port {} is not a named container port ({ports:?})",
                        show(port)
                    )),
                }
            }
            if str_at(c, "livenessProbe.httpGet.path") != "/healthz" {
                p.push(format!(
                    "{what}: the liveness probe must use /healthz (/readyz waits for executors)"
                ));
            }
            // $(VAR) in args must be env of the container.
            let env: BTreeSet<&str> = seq_at(c, "env").iter().map(|e| str_at(e, "name")).collect();
            for a in seq_at(c, "args").iter().filter_map(Value::as_str) {
                if let Some(var) = a
                    .split_once("$(")
                    .and_then(|(_, rest)| rest.split_once(')'))
                    .map(|(var, _)| var)
                    && !env.contains(var)
                {
                    p.push(format!("{what}: argument {a} uses $({var}), not in env"));
                }
            }
            let mounted = |path: &str| {
                seq_at(c, "volumeMounts")
                    .iter()
                    .find(|m| str_at(m, "mountPath") == path)
            };
            let args = args_of(c);
            for flag in ["model-dir", "work-dir", "data-root", "state-dir"] {
                if let Some(dir) = args.get(flag)
                    && mounted(dir).is_none()
                {
                    p.push(format!("{what}: --{flag}={dir} is not a mount"));
                }
            }
            if executors.contains_key(name.as_str()) {
                for (flag, port) in [
                    ("bind-port", "flight"),
                    ("bind-grpc-port", "grpc"),
                    ("bind-health-port", "health"),
                ] {
                    let arg: i64 = args.get(flag).and_then(|v| v.parse().ok()).unwrap_or(-2);
                    if ports.get(port) != Some(&arg) {
                        p.push(format!(
                            "{what}: --{flag}={arg} is not container port {port} ({ports:?})"
                        ));
                    }
                }
                if args.get("scheduler-host") != Some(&registration_name) {
                    p.push(format!(
                        "{what}: --scheduler-host is {:?}, not the registration Service {registration_name}",
                        args.get("scheduler-host")
                    ));
                }
                if args.get("scheduler-port").map(String::as_str) != Some("50050") {
                    p.push(format!("{what}: --scheduler-port must be 50050"));
                }
                if mounted("/models").map(|m| at(m, "readOnly").as_bool()) != Some(Some(true)) {
                    p.push(format!("{what}: /models must be mounted read-only"));
                }
                if mounted("/data").is_none() {
                    p.push(format!("{what}: /data is not mounted"));
                }
            }
        }
    }

    // The scheduler.
    let what = format!("{label}: Deployment/{scheduler_name}");
    if at(scheduler, "spec.replicas").as_i64() != Some(1)
        || str_at(scheduler, "spec.strategy.type") != "Recreate"
    {
        p.push(format!(
            "{what}: one replica with a Recreate rollout (state in memory, and a ReadWriteOnce state volume a RollingUpdate would deadlock on)"
        ));
    }
    let sc = container(scheduler);
    let sargs = args_of(sc);
    let spec = at(scheduler, "spec.template.spec");
    let mount = |path: &str| {
        seq_at(sc, "volumeMounts")
            .iter()
            .find(|m| str_at(m, "mountPath") == path)
            .map(|m| str_at(m, "name"))
    };
    let volume = |name: &str| {
        seq_at(spec, "volumes")
            .iter()
            .find(|v| str_at(v, "name") == name)
    };
    match sargs.get("config") {
        Some(path) => {
            let v = mount(path).and_then(volume);
            if v.map(|v| str_at(v, "configMap.name")) != Some(&format!("{prefix}-config")) {
                p.push(format!(
                    "{what}: --config={path} is not the ConfigMap {prefix}-config"
                ));
            }
        }
        None => p.push(format!("{what}: no --config")),
    }
    match (
        sargs.get("auth-file"),
        sargs.contains_key("allow-anonymous"),
    ) {
        (Some(file), false) => {
            let dir = file.rsplit_once('/').map_or("", |(d, _)| d);
            let secret = mount(dir)
                .and_then(volume)
                .map(|v| str_at(v, "secret.secretName"));
            match secret {
                Some(s) if exists("Secret", s) => {
                    if let Some(obj) = objs.get(&("Secret".to_string(), s.to_string()))
                        && at(obj, "data.users").is_null()
                    {
                        p.push(format!("{label}: Secret/{s} has no key `users`"));
                    }
                }
                other => p.push(format!(
                    "{what}: --auth-file={file} is not a mounted Secret ({other:?})"
                )),
            }
        }
        (None, true) => {}
        other => p.push(format!(
            "{what}: exactly one of --auth-file and --allow-anonymous ({other:?})"
        )),
    }
    let env_ns = seq_at(sc, "env")
        .iter()
        .find(|e| str_at(e, "name") == "POD_NAMESPACE");
    if env_ns.map(|e| str_at(e, "valueFrom.fieldRef.fieldPath")) != Some("metadata.namespace") {
        p.push(format!(
            "{what}: POD_NAMESPACE must come from the downward API"
        ));
    }

    p.extend(shared_secrets_and_roots(
        label, objs, expect, scheduler, &executors,
    ));
    p.extend(scheduler_tls(label, objs, expect, scheduler));
    p.extend(scheduler_state(label, objs, scheduler, &executors));
    p.extend(network_policies(label, objs, scheduler, &executors));

    // Services: both select the scheduler pods; only registration publishes not-ready ones.
    let scheduler_labels = at(scheduler, "spec.template.metadata.labels");
    for (svc, publish) in [(&registration_name, true), (&scheduler_name, false)] {
        let s = get(objs, "Service", svc);
        let what = format!("{label}: Service/{svc}");
        let selector = at(s, "spec.selector");
        let selects = selector.as_mapping().is_some_and(|m| {
            !m.is_empty() && m.iter().all(|(k, v)| scheduler_labels.get(k) == Some(v))
        });
        if !selects {
            p.push(format!(
                "{what}: selector {} does not select the scheduler pods ({})",
                show(selector),
                show(scheduler_labels)
            ));
        }
        for (name, d) in &deployments {
            let labels = at(d, "spec.template.metadata.labels");
            if name.as_str() != scheduler_name
                && selector
                    .as_mapping()
                    .is_some_and(|m| m.iter().all(|(k, v)| labels.get(k) == Some(v)))
            {
                p.push(format!("{what}: also selects the pods of {name}"));
            }
        }
        if at(s, "spec.publishNotReadyAddresses")
            .as_bool()
            .unwrap_or(false)
            != publish
        {
            p.push(format!(
                "{what}: publishNotReadyAddresses should be {publish}"
            ));
        }
        let ports = seq_at(s, "spec.ports");
        if ports.len() != 1
            || at(&ports[0], "port").as_i64() != Some(50050)
            || str_at(&ports[0], "targetPort") != "grpc"
        {
            p.push(format!(
                "{what}: one port 50050 to the scheduler's grpc port, not {}",
                show(at(s, "spec.ports"))
            ));
        }
    }

    // dlp.yaml: the autoscaler's pools are the executor Deployments.
    let config_text = key(
        get(objs, "ConfigMap", &format!("{prefix}-config")),
        "data",
        "dlp.yaml",
    )
    .as_str()
    .unwrap_or("");
    let config: Value = serde_yaml::from_str(config_text)
        .unwrap_or_else(|e| panic!("{label}: dlp.yaml is not YAML: {e}"));
    // The keys of scheduler/src/config.rs (DlpConfig), which rejects unknown ones.
    let allowed: BTreeMap<&str, &[&str]> = [
        ("", &["autoscaler"][..]),
        (
            "autoscaler",
            &[
                "enabled",
                "namespace",
                "kubeconfig",
                "intervalSeconds",
                "cooldownSeconds",
                "cpu",
                "gpu",
            ][..],
        ),
        (
            "autoscaler.cpu",
            &[
                "deployment",
                "minReplicas",
                "maxReplicas",
                "tasksPerExecutor",
                "idleSeconds",
            ][..],
        ),
        (
            "autoscaler.gpu",
            &[
                "deployment",
                "minReplicas",
                "maxReplicas",
                "tasksPerExecutor",
                "idleSeconds",
            ][..],
        ),
    ]
    .into_iter()
    .collect();
    for (path, keys) in &allowed {
        let m = if path.is_empty() {
            &config
        } else {
            at(&config, path)
        };
        for k in m.as_mapping().into_iter().flatten().map(|(k, _)| k) {
            if !k.as_str().is_some_and(|k| keys.contains(&k)) {
                p.push(format!(
                    "{label}: dlp.yaml: unknown key {} under {path:?} (the scheduler rejects it)",
                    show(k)
                ));
            }
        }
    }
    let autoscaling = at(&config, "autoscaler.enabled").as_bool() == Some(true);
    let mut pooled = BTreeSet::new();
    for pool in ["cpu", "gpu"] {
        let cfg = at(&config, &format!("autoscaler.{pool}"));
        let deployment = str_at(cfg, "deployment");
        let max = at(cfg, "maxReplicas").as_i64().unwrap_or(0);
        let min = at(cfg, "minReplicas").as_i64().unwrap_or(0);
        let what = format!("{label}: dlp.yaml autoscaler.{pool}");
        if deployment != format!("{prefix}-executor-{pool}") {
            p.push(format!("{what}.deployment is {deployment:?}"));
        }
        match executors.get(deployment) {
            None if max > 0 => p.push(format!(
                "{what}: maxReplicas {max} but no Deployment {deployment}"
            )),
            None => {}
            Some(_) if max == 0 => p.push(format!(
                "{what}: maxReplicas 0 but Deployment {deployment} is rendered"
            )),
            Some(d) => {
                pooled.insert(deployment.to_string());
                let vcores = args_of(container(d)).get("vcores").cloned();
                let tasks = at(cfg, "tasksPerExecutor").as_i64().map(|t| t.to_string());
                if vcores != tasks {
                    p.push(format!(
                        "{what}.tasksPerExecutor {tasks:?} is not the executors' --vcores {vcores:?}"
                    ));
                }
                let replicas = at(d, "spec.replicas").as_i64();
                if autoscaling && replicas != Some(min) {
                    p.push(format!(
                        "{what}: Deployment replicas {replicas:?} should start at minReplicas {min}"
                    ));
                }
            }
        }
    }
    // Every executor Deployment is a pool of the autoscaler (when it is on).
    let executor_names: BTreeSet<String> = executors.keys().cloned().collect();
    if autoscaling && pooled != executor_names {
        p.push(format!(
            "{label}: executor Deployments {executor_names:?} but autoscaler pools {pooled:?}"
        ));
    }

    // RBAC: the autoscaler's Role covers exactly the executor Deployments.
    let role_name = format!("{prefix}-scheduler-autoscaler");
    let role = get(objs, "Role", &role_name);
    let rule = |resource: &str| {
        seq_at(role, "rules").iter().find(|r| {
            seq_at(r, "resources")
                .iter()
                .any(|x| x.as_str() == Some(resource))
        })
    };
    for (resource, verbs) in [
        ("deployments", ["get", "list", "watch"]),
        ("deployments/scale", ["get", "patch", "update"]),
    ] {
        let what = format!("{label}: Role/{role_name} rule on {resource}");
        let Some(r) = rule(resource) else {
            p.push(format!("{what}: missing"));
            continue;
        };
        let strings = |key: &str| -> BTreeSet<String> {
            seq_at(r, key)
                .iter()
                .filter_map(Value::as_str)
                .map(String::from)
                .collect()
        };
        if strings("apiGroups") != BTreeSet::from(["apps".to_string()]) {
            p.push(format!("{what}: apiGroups must be [apps]"));
        }
        if strings("resources") != BTreeSet::from([resource.to_string()]) {
            p.push(format!("{what}: one resource per rule"));
        }
        if strings("verbs") != verbs.iter().map(|v| v.to_string()).collect() {
            p.push(format!(
                "{what}: verbs {:?}, not {verbs:?}",
                strings("verbs")
            ));
        }
        if strings("resourceNames") != executor_names {
            p.push(format!(
                "{what}: resourceNames {:?}, not the executor Deployments {executor_names:?}",
                strings("resourceNames")
            ));
        }
    }
    if seq_at(role, "rules").len() != 2 {
        p.push(format!(
            "{label}: Role/{role_name}: only the two autoscaler rules"
        ));
    }
    let binding = get(objs, "RoleBinding", &role_name);
    let subjects = seq_at(binding, "subjects");
    let scheduler_sa = str_at(at(scheduler, "spec.template.spec"), "serviceAccountName");
    if str_at(binding, "roleRef.name") != role_name
        || str_at(binding, "roleRef.kind") != "Role"
        || subjects.len() != 1
        || str_at(&subjects[0], "name") != scheduler_sa
        || str_at(&subjects[0], "namespace") != "dlp"
    {
        p.push(format!(
            "{label}: RoleBinding/{role_name} must bind Role/{role_name} to the scheduler's account {scheduler_sa} in dlp: {}",
            show(binding)
        ));
    }
    let executor_sa = format!("{prefix}-executor");
    if at(
        get(objs, "ServiceAccount", &executor_sa),
        "automountServiceAccountToken",
    )
    .as_bool()
        != Some(false)
    {
        p.push(format!(
            "{label}: ServiceAccount/{executor_sa} should mount no API token"
        ));
    }

    // Executor pools: rollout, grace period, devices, GPUs.
    for (name, d) in &executors {
        let what = format!("{label}: Deployment/{name}");
        let gpu = name.ends_with("-gpu");
        let c = container(d);
        let args = args_of(c);
        let strategy = at(d, "spec.strategy.rollingUpdate");
        if str_at(strategy, "maxSurge") != "25%"
            || at(strategy, "maxUnavailable").as_i64() != Some(0)
        {
            p.push(format!(
                "{what}: rollout maxSurge 25%, maxUnavailable 0, not {}",
                show(strategy)
            ));
        }
        if at(d, "spec.template.spec.terminationGracePeriodSeconds")
            .as_i64()
            .unwrap_or(0)
            < 600
        {
            p.push(format!(
                "{what}: terminationGracePeriodSeconds below 600 (running tasks must finish)"
            ));
        }
        let device = args.get("device").map(String::as_str);
        let gpus = |kind: &str| at(c, &format!("resources.{kind}")).get("nvidia.com/gpu");
        let pod = at(d, "spec.template.spec");
        if gpu {
            if device != Some("cuda") {
                p.push(format!("{what}: --device should be cuda, is {device:?}"));
            }
            for kind in ["limits", "requests"] {
                if gpus(kind).and_then(Value::as_str) != Some("1") {
                    p.push(format!(
                        "{what}: resources.{kind} nvidia.com/gpu should be \"1\" (a string: Kubernetes 1.20's server-side apply rejects numbers), is {:?}",
                        gpus(kind)
                    ));
                }
            }
            if at(pod, "nodeSelector")
                .as_mapping()
                .is_none_or(|m| m.is_empty())
            {
                p.push(format!("{what}: no nodeSelector for GPU nodes"));
            }
            if !seq_at(pod, "tolerations")
                .iter()
                .any(|t| str_at(t, "key") == "nvidia.com/gpu")
            {
                p.push(format!("{what}: no toleration of the nvidia.com/gpu taint"));
            }
            if !str_at(c, "image").ends_with("-cuda") {
                p.push(format!(
                    "{what}: image {} is not the CUDA image",
                    str_at(c, "image")
                ));
            }
        } else {
            if device != Some("cpu") {
                p.push(format!("{what}: --device should be cpu, is {device:?}"));
            }
            if gpus("limits").is_some() || gpus("requests").is_some() {
                p.push(format!("{what}: a CPU executor asks for a GPU"));
            }
        }
    }
    p
}

/// Non-root, no privilege escalation, no capabilities, RuntimeDefault seccomp, read-only
/// root filesystems with an emptyDir at /tmp: a pod spec and its containers.
pub fn pod_security(what: &str, pod: &Value) -> Vec<String> {
    let mut p = vec![];
    let sc = at(pod, "securityContext");
    if at(sc, "runAsNonRoot").as_bool() != Some(true) {
        p.push(format!("{what}: pods must run as non-root (runAsNonRoot)"));
    }
    if at(sc, "runAsUser").as_i64().unwrap_or(0) <= 0 {
        p.push(format!(
            "{what}: runAsUser must be a non-root uid, is {}",
            show(at(sc, "runAsUser"))
        ));
    }
    if str_at(sc, "seccompProfile.type") != "RuntimeDefault" {
        p.push(format!("{what}: seccompProfile must be RuntimeDefault"));
    }
    let volumes = seq_at(pod, "volumes");
    for c in seq_at(pod, "containers") {
        let what = format!("{what}: container {}", str_at(c, "name"));
        let csc = at(c, "securityContext");
        if at(csc, "allowPrivilegeEscalation").as_bool() != Some(false) {
            p.push(format!("{what}: allowPrivilegeEscalation must be false"));
        }
        if at(csc, "readOnlyRootFilesystem").as_bool() != Some(true) {
            p.push(format!("{what}: readOnlyRootFilesystem must be true"));
        }
        let drop: Vec<&str> = seq_at(csc, "capabilities.drop")
            .iter()
            .filter_map(Value::as_str)
            .collect();
        if drop != ["ALL"] || !at(csc, "capabilities.add").is_null() {
            p.push(format!(
                "{what}: capabilities must drop ALL and add none, is {}",
                show(at(csc, "capabilities"))
            ));
        }
        if at(csc, "privileged").as_bool() == Some(true) {
            p.push(format!("{what}: privileged"));
        }
        // Writable scratch on a read-only root: /tmp is an emptyDir.
        let tmp = seq_at(c, "volumeMounts")
            .iter()
            .find(|m| str_at(m, "mountPath") == "/tmp")
            .and_then(|m| {
                volumes
                    .iter()
                    .find(|v| str_at(v, "name") == str_at(m, "name"))
            });
        if tmp.is_none_or(|v| at(v, "emptyDir").is_null()) {
            p.push(format!(
                "{what}: /tmp must be an emptyDir (the root filesystem is read-only)"
            ));
        }
    }
    p
}

/// The mount (and its volume) of the directory of `file` in a Deployment's container.
fn mount_of<'a>(d: &'a Value, dir: &str) -> Option<(&'a Value, &'a Value)> {
    let c = container(d);
    let m = seq_at(c, "volumeMounts")
        .iter()
        .find(|m| str_at(m, "mountPath") == dir)?;
    let v = seq_at(d, "spec.template.spec.volumes")
        .iter()
        .find(|v| str_at(v, "name") == str_at(m, "name"))?;
    Some((m, v))
}

/// `path` is a file of a Secret volume mounted read-only: its key `key` (items, if any,
/// map it to the file's name); returns the Secret's name or the problem.
fn secret_file(d: &Value, path: &str, key: &str) -> Result<String, String> {
    let (dir, file) = path
        .rsplit_once('/')
        .ok_or_else(|| format!("{path} is not an absolute path"))?;
    let (m, v) = mount_of(d, dir).ok_or_else(|| format!("{dir} is not a mount"))?;
    if at(m, "readOnly").as_bool() != Some(true) {
        return Err(format!("{dir} must be mounted read-only"));
    }
    let secret = str_at(v, "secret.secretName");
    if secret.is_empty() {
        return Err(format!("{dir} is not a Secret volume: {}", show(v)));
    }
    let items = seq_at(v, "secret.items");
    if !items.is_empty()
        && !items
            .iter()
            .any(|i| str_at(i, "key") == key && str_at(i, "path") == file)
    {
        return Err(format!(
            "{dir}: the Secret volume's items do not map key {key} to {file}: {}",
            show(at(v, "secret.items"))
        ));
    }
    if items.is_empty() && file != key {
        return Err(format!(
            "{path}: the Secret's key would be {file}, not {key}"
        ));
    }
    Ok(secret.to_string())
}

/// The cluster secret (scheduler and every executor, one Secret with the key `secret`,
/// read-only), the auth file's mount, the writable roots (the same everywhere, under the
/// shared read-write data volume), /models read-only on the scheduler too.
fn shared_secrets_and_roots(
    label: &str,
    objs: &Objects,
    expect: &Expect,
    scheduler: &Value,
    executors: &BTreeMap<String, &Value>,
) -> Vec<String> {
    let mut p = vec![];
    let exists = |kind: &str, name: &str| {
        objs.contains_key(&(kind.to_string(), name.to_string())) || expect.external.contains(&name)
    };
    let mut secrets = BTreeSet::new();
    let scheduler_roots = arg_values(container(scheduler), "writable-root");
    if scheduler_roots.is_empty() {
        p.push(format!(
            "{label}: the scheduler has no --writable-root (COPY TO and outputs could go anywhere)"
        ));
    }
    let all = std::iter::once(scheduler).chain(executors.values().copied());
    for d in all {
        let what = format!("{label}: Deployment/{}", str_at(d, "metadata.name"));
        let c = container(d);
        let args = args_of(c);
        match args.get("cluster-secret-file") {
            None => p.push(format!("{what}: no --cluster-secret-file")),
            Some(path) => match secret_file(d, path, "secret") {
                Ok(s) => {
                    if !exists("Secret", &s) {
                        p.push(format!("{what}: the cluster secret {s} is not rendered"));
                    } else if let Some(obj) = objs.get(&("Secret".to_string(), s.clone()))
                        && at(obj, "data.secret").is_null()
                    {
                        p.push(format!("{label}: Secret/{s} has no key `secret`"));
                    }
                    secrets.insert(s);
                }
                Err(e) => p.push(format!("{what}: --cluster-secret-file: {e}")),
            },
        }
        if let Some(path) = args.get("auth-file")
            && let Err(e) = secret_file(d, path, "users")
        {
            p.push(format!("{what}: --auth-file: {e}"));
        }
        let roots = arg_values(c, "writable-root");
        if roots != scheduler_roots {
            p.push(format!(
                "{what}: --writable-root {roots:?}, not the scheduler's {scheduler_roots:?}"
            ));
        }
        for root in &roots {
            let m = seq_at(c, "volumeMounts").iter().find(|m| {
                let mp = str_at(m, "mountPath");
                root == mp || root.starts_with(&format!("{mp}/"))
            });
            let v = m.and_then(|m| {
                seq_at(d, "spec.template.spec.volumes")
                    .iter()
                    .find(|v| str_at(v, "name") == str_at(m, "name"))
            });
            match (m, v) {
                (Some(m), Some(v))
                    if at(m, "readOnly").as_bool() != Some(true)
                        && !at(v, "persistentVolumeClaim").is_null() => {}
                _ => p.push(format!(
                    "{what}: --writable-root={root} is not on a shared, writable volume"
                )),
            }
        }
        match mount_of(d, "/models") {
            Some((m, v))
                if at(m, "readOnly").as_bool() == Some(true)
                    && at(v, "persistentVolumeClaim.readOnly").as_bool() == Some(true) => {}
            _ => p.push(format!(
                "{what}: /models must be mounted read-only (mount and claim)"
            )),
        }
    }
    if secrets.len() > 1 {
        p.push(format!(
            "{label}: the scheduler and the executors use different cluster secrets {secrets:?}"
        ));
    }
    p
}

/// The scheduler's state (--state-dir: pipeline job records and registered SQL functions of
/// every user): a writable mount of a volume of its own, a claim that is neither the data
/// nor the model claim and that no executor mounts (an emptyDir only where the chart's
/// persistence.state.enabled is false), not under a data or writable root (users read
/// those with SQL); no executor has --state-dir or a mount there; an fsGroup lets the
/// non-root scheduler write it.
fn scheduler_state(
    label: &str,
    objs: &Objects,
    scheduler: &Value,
    executors: &BTreeMap<String, &Value>,
) -> Vec<String> {
    let mut p = vec![];
    let what = format!("{label}: Deployment/{}", str_at(scheduler, "metadata.name"));
    let c = container(scheduler);
    let Some(dir) = args_of(c).get("state-dir").cloned() else {
        p.push(format!(
            "{what}: no --state-dir (job records and registered functions would not survive a restart)"
        ));
        return p;
    };
    for root in arg_values(c, "data-root")
        .iter()
        .chain(&arg_values(c, "writable-root"))
    {
        if &dir == root
            || dir.starts_with(&format!("{root}/"))
            || root.starts_with(&format!("{dir}/"))
        {
            p.push(format!(
                "{what}: --state-dir={dir} overlaps the data or writable root {root} (users would read other users' job records with SQL)"
            ));
        }
    }
    let claim_of = |v: &Value| str_at(v, "persistentVolumeClaim.claimName").to_string();
    let volumes = seq_at(scheduler, "spec.template.spec.volumes");
    match mount_of(scheduler, &dir) {
        None => p.push(format!("{what}: --state-dir={dir} is not a mount")),
        Some((m, v)) => {
            if at(m, "readOnly").as_bool() == Some(true)
                || at(v, "persistentVolumeClaim.readOnly").as_bool() == Some(true)
            {
                p.push(format!(
                    "{what}: the state volume at {dir} must be writable"
                ));
            }
            let claim = claim_of(v);
            if claim.is_empty() {
                if at(v, "emptyDir").is_null() {
                    p.push(format!(
                        "{what}: the state volume at {dir} is neither a claim nor an emptyDir: {}",
                        show(v)
                    ));
                }
            } else {
                for other in volumes {
                    if str_at(other, "name") != str_at(v, "name") && claim_of(other) == claim {
                        p.push(format!(
                            "{what}: the state claim {claim} is also volume {} (it must be the scheduler's own)",
                            str_at(other, "name")
                        ));
                    }
                }
                for (name, d) in executors {
                    if seq_at(d, "spec.template.spec.volumes")
                        .iter()
                        .any(|x| claim_of(x) == claim)
                    {
                        p.push(format!(
                            "{label}: Deployment/{name} mounts the scheduler's state claim {claim}"
                        ));
                    }
                }
                if let Some(pvc) = objs.get(&("PersistentVolumeClaim".to_string(), claim.clone()))
                    && seq_at(pvc, "spec.accessModes").is_empty()
                {
                    p.push(format!(
                        "{label}: PersistentVolumeClaim/{claim}: no accessModes"
                    ));
                }
            }
        }
    }
    for (name, d) in executors {
        if args_of(container(d)).contains_key("state-dir") || mount_of(d, &dir).is_some() {
            p.push(format!(
                "{label}: Deployment/{name}: an executor with --state-dir or a mount at {dir} (the scheduler's alone)"
            ));
        }
    }
    if at(scheduler, "spec.template.spec.securityContext.fsGroup")
        .as_i64()
        .is_none_or(|g| g <= 0)
    {
        p.push(format!(
            "{what}: no fsGroup: the non-root scheduler could not write its state volume"
        ));
    }
    p
}

/// TLS on the scheduler's port: --tls-cert and --tls-key from a kubernetes.io/tls Secret
/// mounted read-only, and HTTPS probes; without them, plain HTTP probes.
fn scheduler_tls(label: &str, objs: &Objects, expect: &Expect, scheduler: &Value) -> Vec<String> {
    let mut p = vec![];
    let what = format!("{label}: Deployment/{}", str_at(scheduler, "metadata.name"));
    let c = container(scheduler);
    let args = args_of(c);
    let tls = match (args.get("tls-cert"), args.get("tls-key")) {
        (None, None) => false,
        (Some(cert), Some(key)) => {
            for (path, k) in [(cert, "tls.crt"), (key, "tls.key")] {
                match secret_file(scheduler, path, k) {
                    Ok(s) => {
                        let external = expect.external.contains(&s.as_str());
                        match objs.get(&("Secret".to_string(), s.clone())) {
                            Some(obj) if str_at(obj, "type") != "kubernetes.io/tls" => p.push(
                                format!("{what}: Secret/{s} is not of type kubernetes.io/tls"),
                            ),
                            None if !external => {
                                p.push(format!("{what}: the TLS Secret {s} is not rendered"));
                            }
                            _ => {}
                        }
                    }
                    Err(e) => p.push(format!("{what}: --tls-*: {e}")),
                }
            }
            true
        }
        other => {
            p.push(format!(
                "{what}: --tls-cert and --tls-key go together: {other:?}"
            ));
            true
        }
    };
    let (want, with) = if tls {
        ("HTTPS", "with")
    } else {
        ("HTTP", "without")
    };
    for probe in ["startupProbe", "livenessProbe", "readinessProbe"] {
        let scheme = str_at(c, &format!("{probe}.httpGet.scheme"));
        let scheme = if scheme.is_empty() { "HTTP" } else { scheme };
        if scheme != want {
            p.push(format!(
                "{what}: {probe} scheme {scheme} on a port {with} TLS"
            ));
        }
    }
    p
}

/// The NetworkPolicies, when rendered: executors accept only the scheduler and other
/// executors on their Flight and gRPC ports; the scheduler's port accepts the executors
/// and client namespaces; ingress only (egress is not restricted); the health ports have
/// no rule (kubelet probes are not subject to NetworkPolicy).
fn network_policies(
    label: &str,
    objs: &Objects,
    scheduler: &Value,
    executors: &BTreeMap<String, &Value>,
) -> Vec<String> {
    let mut p = vec![];
    let policies: BTreeMap<&str, &Value> = objs
        .iter()
        .filter(|((k, _), _)| k == "NetworkPolicy")
        .map(|((_, n), v)| (n.as_str(), v))
        .collect();
    if policies.is_empty() {
        return p;
    }
    let scheduler_name = str_at(scheduler, "metadata.name");
    let executor_policy = scheduler_name.replace("-scheduler", "-executor");
    let names: BTreeSet<&str> = policies.keys().copied().collect();
    if names != BTreeSet::from([scheduler_name, executor_policy.as_str()]) {
        p.push(format!(
            "{label}: NetworkPolicies {names:?}, not {scheduler_name} and {executor_policy}"
        ));
        return p;
    }
    let scheduler_labels = at(scheduler, "spec.template.metadata.labels").clone();
    // The executor pools' pods, also of a pool that is not rendered (enabling it later
    // must not need a new policy).
    let mut executor_labels: Vec<Value> = executors
        .values()
        .map(|d| at(d, "spec.template.metadata.labels").clone())
        .collect();
    for pool in ["executor-cpu", "executor-gpu"] {
        let mut l = scheduler_labels.clone();
        if let Some(m) = l.as_mapping_mut() {
            m.insert("app.kubernetes.io/component".into(), pool.into());
        }
        executor_labels.push(l);
    }
    let mut other = scheduler_labels.clone();
    if let Some(m) = other.as_mapping_mut() {
        m.insert("app.kubernetes.io/component".into(), "test".into());
    }
    let flight_proxy = args_of(container(scheduler)).contains_key("enable-embedded-flight-proxy");

    // (ports of a rule, its peers)
    let rules = |np: &Value| -> Vec<(BTreeSet<i64>, Vec<Value>)> {
        seq_at(np, "spec.ingress")
            .iter()
            .map(|r| {
                let ports = seq_at(r, "ports")
                    .iter()
                    .map(|port| at(port, "port").as_i64().unwrap_or(-1))
                    .collect();
                (ports, seq_at(r, "from").to_vec())
            })
            .collect()
    };
    // Whether a rule's peer admits a pod of this namespace with `labels`.
    let admits_pod = |peer: &Value, labels: &Value| {
        at(peer, "namespaceSelector").is_null()
            && at(peer, "ipBlock").is_null()
            && selects(at(peer, "podSelector"), labels)
    };
    let allowed = |np: &Value, labels: &Value, port: i64| {
        rules(np).iter().any(|(ports, peers)| {
            ports.contains(&port) && peers.iter().any(|x| admits_pod(x, labels))
        })
    };
    let clients = |np: &Value, port: i64| {
        rules(np).iter().any(|(ports, peers)| {
            ports.contains(&port)
                && peers.iter().any(|x| {
                    !at(x, "namespaceSelector").is_null() && at(x, "podSelector").is_null()
                })
        })
    };
    for (name, np) in &policies {
        let what = format!("{label}: NetworkPolicy/{name}");
        let types: Vec<&str> = seq_at(np, "spec.policyTypes")
            .iter()
            .filter_map(Value::as_str)
            .collect();
        if types != ["Ingress"] || !at(np, "spec.egress").is_null() {
            p.push(format!(
                "{what}: ingress only (egress is not restricted), policyTypes {types:?}"
            ));
        }
        for (ports, peers) in rules(np) {
            if ports.is_empty() || peers.is_empty() {
                p.push(format!(
                    "{what}: a rule without ports or peers admits everything: {}",
                    show(at(np, "spec.ingress"))
                ));
            }
            for peer in &peers {
                if !at(peer, "ipBlock").is_null() {
                    p.push(format!("{what}: an ipBlock peer {}", show(peer)));
                }
            }
            for port in &ports {
                if ![50050, 50051, 50052].contains(port) {
                    p.push(format!(
                        "{what}: a rule for port {port} (health ports need none)"
                    ));
                }
            }
        }
        for port in seq_at(np, "spec.ingress")
            .iter()
            .flat_map(|r| seq_at(r, "ports"))
        {
            if str_at(port, "protocol") != "TCP" {
                p.push(format!("{what}: port {} is not TCP", show(port)));
            }
        }
    }

    // Executors.
    let np = policies[executor_policy.as_str()];
    let what = format!("{label}: NetworkPolicy/{executor_policy}");
    let selector = at(np, "spec.podSelector");
    if !executor_labels.iter().all(|l| selects(selector, l)) {
        p.push(format!(
            "{what}: does not select every executor pod: {}",
            show(selector)
        ));
    }
    if selects(selector, &scheduler_labels) || selects(selector, &other) {
        p.push(format!(
            "{what}: selects pods other than executors: {}",
            show(selector)
        ));
    }
    for (from, labels) in std::iter::once(("the scheduler", &scheduler_labels))
        .chain(executor_labels.iter().map(|l| ("executors", l)))
    {
        for port in [50051, 50052] {
            if !allowed(np, labels, port) {
                p.push(format!("{what}: {from} cannot reach port {port}"));
            }
        }
    }
    for (ports, peers) in rules(np) {
        for peer in &peers {
            let pod_peer = at(peer, "namespaceSelector").is_null();
            if pod_peer
                && !(selects(at(peer, "podSelector"), &scheduler_labels)
                    || executor_labels
                        .iter()
                        .any(|l| selects(at(peer, "podSelector"), l)))
            {
                p.push(format!(
                    "{what}: a peer other than the scheduler and executors: {}",
                    show(peer)
                ));
            }
            if pod_peer && selects(at(peer, "podSelector"), &other) {
                p.push(format!(
                    "{what}: a peer admits any pod of the namespace: {}",
                    show(peer)
                ));
            }
            if !pod_peer && (flight_proxy || ports != BTreeSet::from([50051])) {
                p.push(format!(
                    "{what}: clients reach executors only without the scheduler's Flight proxy, and only port 50051: {}",
                    show(peer)
                ));
            }
        }
    }
    if !flight_proxy && !clients(np, 50051) {
        p.push(format!(
            "{what}: without the scheduler's Flight proxy clients must reach port 50051"
        ));
    }
    // The ports are the executors' container ports.
    for d in executors.values() {
        let ports: BTreeSet<i64> = seq_at(container(d), "ports")
            .iter()
            .filter(|port| ["flight", "grpc"].contains(&str_at(port, "name")))
            .filter_map(|port| at(port, "containerPort").as_i64())
            .collect();
        if ports != BTreeSet::from([50051, 50052]) {
            p.push(format!(
                "{what}: the executors' flight and grpc ports are {ports:?}"
            ));
        }
    }

    // The scheduler.
    let np = policies[scheduler_name];
    let what = format!("{label}: NetworkPolicy/{scheduler_name}");
    let selector = at(np, "spec.podSelector");
    if !selects(selector, &scheduler_labels)
        || executor_labels.iter().any(|l| selects(selector, l))
        || selects(selector, &other)
    {
        p.push(format!(
            "{what}: must select the scheduler pods only: {}",
            show(selector)
        ));
    }
    for (ports, _) in rules(np) {
        if ports != BTreeSet::from([50050]) {
            p.push(format!("{what}: a rule for ports {ports:?}, not 50050"));
        }
    }
    for labels in &executor_labels {
        if !allowed(np, labels, 50050) {
            p.push(format!(
                "{what}: executors cannot reach port 50050 ({})",
                show(labels)
            ));
        }
    }
    if !clients(np, 50050) {
        p.push(format!("{what}: no client namespaces may reach port 50050"));
    }
    p
}

pub fn assert_no_problems(problems: Vec<String>) {
    assert!(
        problems.is_empty(),
        "{} problem(s):\n{}",
        problems.len(),
        problems.join("\n")
    );
}

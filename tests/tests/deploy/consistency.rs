//! Checks that one render hangs together: selectors and labels, ports and probes,
//! volumes and what they refer to, the scheduler's flags, the autoscaler's config against
//! the executor Deployments, RBAC, GPU requests.

use std::collections::{BTreeMap, BTreeSet};

use serde_yaml::Value;

use crate::objects::{Objects, args_of, at, container, containers, get, key, seq_at, show, str_at};

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
        if at(spec, "securityContext.runAsNonRoot").as_bool() != Some(true) {
            p.push(format!("{what}: pods must run as non-root"));
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
            for flag in ["model-dir", "work-dir", "data-root"] {
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
            "{what}: one replica with a Recreate rollout (its state is in memory)"
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

pub fn assert_no_problems(problems: Vec<String>) {
    assert!(
        problems.is_empty(),
        "{} problem(s):\n{}",
        problems.len(),
        problems.join("\n")
    );
}

//! The field-by-field comparison of the kustomize overlays and the Helm chart.

use std::collections::BTreeSet;

use serde_yaml::{Mapping, Value};

use crate::objects::{Objects, decode_base64, key, show, str_at};

/// Labels only Helm sets; everything else must agree with kustomize.
pub const HELM_ONLY_LABELS: [&str; 3] = [
    "helm.sh/chart",
    "app.kubernetes.io/managed-by",
    "app.kubernetes.io/version",
];

/// Reports every difference between a kustomize value and a Helm value. Lists of named
/// items (containers, env, ports, volumes, mounts) are compared by name, and their order.
pub fn diff(path: &str, k: &Value, h: &Value, out: &mut Vec<String>) {
    let join = |key: &str| {
        if path.is_empty() {
            key.to_string()
        } else {
            format!("{path}.{key}")
        }
    };
    match (k, h) {
        (Value::Mapping(a), Value::Mapping(b)) => {
            let keys: BTreeSet<String> = a
                .keys()
                .chain(b.keys())
                .map(|key| key.as_str().map_or_else(|| show(key), String::from))
                .collect();
            for key in keys {
                match (a.get(key.as_str()), b.get(key.as_str())) {
                    (Some(x), Some(y)) => diff(&join(&key), x, y, out),
                    (Some(x), None) => out.push(format!(
                        "{}: kustomize {}, helm has none",
                        join(&key),
                        show(x)
                    )),
                    (None, Some(y)) => out.push(format!(
                        "{}: helm {}, kustomize has none",
                        join(&key),
                        show(y)
                    )),
                    (None, None) => {}
                }
            }
        }
        (Value::Sequence(a), Value::Sequence(b)) => {
            let named = |s: &[Value]| -> Option<Vec<String>> {
                s.iter()
                    .map(|v| v.get("name").and_then(Value::as_str).map(String::from))
                    .collect()
            };
            match (named(a), named(b)) {
                (Some(na), Some(nb)) if !na.is_empty() && !nb.is_empty() => {
                    if na != nb {
                        out.push(format!(
                            "{path}: names in order: kustomize {na:?}, helm {nb:?}"
                        ));
                    }
                    for (x, name) in a.iter().zip(&na) {
                        if let Some(i) = nb.iter().position(|n| n == name) {
                            diff(&format!("{path}[{name}]"), x, &b[i], out);
                        }
                    }
                }
                _ => {
                    if a.len() != b.len() {
                        out.push(format!(
                            "{path}: kustomize {} ({} items), helm {} ({} items)",
                            show(k),
                            a.len(),
                            show(h),
                            b.len()
                        ));
                    } else {
                        for (i, (x, y)) in a.iter().zip(b).enumerate() {
                            diff(&format!("{path}[{i}]"), x, y, out);
                        }
                    }
                }
            }
        }
        _ => {
            if k != h {
                out.push(format!("{path}: kustomize {}, helm {}", show(k), show(h)));
            }
        }
    }
}

pub fn mapping_mut<'a>(v: &'a mut Value, path: &str) -> Option<&'a mut Mapping> {
    path.split('.')
        .try_fold(v, |v, key| v.get_mut(key))
        .and_then(Value::as_mapping_mut)
}

/// Drops what may differ by design: Helm's own labels and the checksum annotations that
/// roll the scheduler when its config changes.
pub fn normalize(obj: &mut Value) {
    if let Some(labels) = mapping_mut(obj, "metadata.labels") {
        for l in HELM_ONLY_LABELS {
            labels.remove(l);
        }
    }
    let pod = "spec.template.metadata";
    if let Some(annotations) = mapping_mut(obj, &format!("{pod}.annotations")) {
        let checksums: Vec<Value> = annotations
            .keys()
            .filter(|k| k.as_str().is_some_and(|k| k.starts_with("checksum/")))
            .cloned()
            .collect();
        for k in checksums {
            annotations.remove(&k);
        }
        if annotations.is_empty()
            && let Some(m) = mapping_mut(obj, pod)
        {
            m.remove("annotations");
        }
    }
}

/// The overlay and the chart render the same objects, field by field. Explicit
/// differences: kustomize's Namespace and Helm's test pod and labels; the Secret's
/// `users` (empty in the overlay, a generated `dlp:<password>` from the chart); dlp.yaml is
/// compared parsed (comments and layout may differ).
pub fn compare(label: &str, kustomize: &Objects, helm: &Objects) -> Vec<String> {
    let mut problems = vec![];
    let k_ids: BTreeSet<_> = kustomize
        .keys()
        .filter(|(kind, _)| kind != "Namespace")
        .cloned()
        .collect();
    let h_ids: BTreeSet<_> = helm
        .iter()
        .filter(|(_, v)| key(v, "metadata.annotations", "helm.sh/hook").is_null())
        .map(|(id, _)| id.clone())
        .collect();
    for id in k_ids.symmetric_difference(&h_ids) {
        let side = if k_ids.contains(id) {
            "kustomize only"
        } else {
            "helm only"
        };
        problems.push(format!("{label}: {}/{}: {side}", id.0, id.1));
    }
    for id in k_ids.intersection(&h_ids) {
        let mut k = kustomize[id].clone();
        let mut h = helm[id].clone();
        normalize(&mut k);
        normalize(&mut h);
        let what = format!("{label}: {}/{}", id.0, id.1);
        if id.0 == "ConfigMap" {
            let parse = |v: &Value, side: &str| -> Value {
                serde_yaml::from_str(key(v, "data", "dlp.yaml").as_str().unwrap_or(""))
                    .unwrap_or_else(|e| {
                        panic!("{what}: {side}'s dlp.yaml is not YAML: {e}");
                    })
            };
            let mut out = vec![];
            diff(
                "dlp.yaml",
                &parse(&k, "kustomize"),
                &parse(&h, "helm"),
                &mut out,
            );
            problems.extend(out.into_iter().map(|d| format!("{what}: data.{d}")));
            for v in [&mut k, &mut h] {
                if let Some(d) = mapping_mut(v, "data") {
                    d.remove("dlp.yaml");
                }
            }
        }
        if id.0 == "Secret" {
            let k_users = str_at(&k, "data.users");
            let h_users = decode_base64(&what, str_at(&h, "data.users"));
            if !k_users.is_empty() {
                problems.push(format!(
                    "{what}: kustomize's data.users should be empty (no committed password), is {k_users:?}"
                ));
            }
            let line_ok = h_users.strip_suffix('\n').and_then(|l| l.split_once(':'));
            if !matches!(line_ok, Some(("dlp", p)) if p.len() == 32 && p.chars().all(|c| c.is_ascii_alphanumeric()))
            {
                problems.push(format!(
                    "{what}: helm's data.users should be one line dlp:<32 random alphanumerics>, is {h_users:?}"
                ));
            }
            for v in [&mut k, &mut h] {
                if let Some(d) = mapping_mut(v, "data") {
                    d.insert("users".into(), "<users>".into());
                }
            }
        }
        let mut out = vec![];
        diff("", &k, &h, &mut out);
        problems.extend(out.into_iter().map(|d| format!("{what}: {d}")));
    }
    problems
}

//! The field-by-field comparison of the kustomize overlays and the Helm chart.

use std::collections::BTreeSet;

use serde_yaml::{Mapping, Value};

use crate::objects::{Objects, at, decode_base64, is_bcrypt, key, show, str_at};

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

/// The Secrets' data differ by design: the overlay commits no credential (empty
/// placeholders to be replaced), the chart generates them. Checks both sides' shapes.
fn compare_secret_data(what: &str, name: &str, k: &Value, h: &Value) -> Vec<String> {
    let mut problems = vec![];
    let keys = |v: &Value| -> Vec<String> {
        at(v, "data")
            .as_mapping()
            .into_iter()
            .flatten()
            .filter_map(|(k, _)| k.as_str().map(String::from))
            .collect()
    };
    let h_value = |key: &str| {
        decode_base64(
            &format!("{what}: data.{key}"),
            str_at(h, &format!("data.{key}")),
        )
    };
    let (placeholder, helm_ok, expected) = if name.ends_with("-auth") {
        // users: one line dlp:<bcrypt hash>; password: the generated one, for the operator.
        let users = h_value("users");
        let password = h_value("password");
        let ok = users
            .strip_suffix('\n')
            .and_then(|l| l.split_once(':'))
            .is_some_and(|(u, hash)| u == "dlp" && is_bcrypt(hash))
            && password.len() == 32
            && password.chars().all(|c| c.is_ascii_alphanumeric());
        (
            "users",
            ok && keys(h) == ["users", "password"],
            "users: one line dlp:<bcrypt hash>, password: 32 random alphanumerics",
        )
    } else if name.ends_with("-cluster") {
        let secret = h_value("secret");
        (
            "secret",
            keys(h) == ["secret"]
                && secret.len() == 48
                && secret.chars().all(|c| c.is_ascii_alphanumeric()),
            "secret: 48 random alphanumerics",
        )
    } else {
        problems.push(format!("{what}: an unexpected Secret"));
        return problems;
    };
    if keys(k) != [placeholder] || !str_at(k, &format!("data.{placeholder}")).is_empty() {
        problems.push(format!(
            "{what}: kustomize's data should be one empty {placeholder} (nothing committed), is {}",
            show(at(k, "data"))
        ));
    }
    if !helm_ok {
        problems.push(format!(
            "{what}: helm's data should be {expected}, has the keys {:?}",
            keys(h)
        ));
    }
    problems
}

/// The overlay and the chart render the same objects, field by field. Explicit
/// differences: kustomize's Namespace and Helm's test pod and labels; the Secrets' data
/// (empty placeholders in the overlay, generated by the chart: `compare_secret_data`);
/// dlp.yaml is compared parsed (comments and layout may differ).
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
            problems.extend(compare_secret_data(&what, &id.1, &k, &h));
            for v in [&mut k, &mut h] {
                if let Some(m) = v.as_mapping_mut() {
                    m.insert("data".into(), "<secret data>".into());
                }
            }
        }
        let mut out = vec![];
        diff("", &k, &h, &mut out);
        problems.extend(out.into_iter().map(|d| format!("{what}: {d}")));
    }
    problems
}

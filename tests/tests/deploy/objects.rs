//! Rendered objects: parsing a multi-document stream, and reading fields.

use std::collections::{BTreeMap, BTreeSet};

use base64::Engine;
use serde_yaml::Value;

/// Objects of a multi-document YAML stream by (kind, name).
pub type Objects = BTreeMap<(String, String), Value>;

pub fn objects(label: &str, yaml: &str) -> Objects {
    let mut docs = vec![String::new()];
    for line in yaml.lines() {
        if line == "---" {
            docs.push(String::new());
        } else {
            let doc = docs.last_mut().expect("one document");
            doc.push_str(line);
            doc.push('\n');
        }
    }
    let mut out = Objects::new();
    for doc in docs {
        let value: Value = serde_yaml::from_str(&doc)
            .unwrap_or_else(|e| panic!("{label}: invalid YAML document: {e}\n{doc}"));
        if value.is_null() {
            continue;
        }
        let id = (
            str_at(&value, "kind").to_string(),
            str_at(&value, "metadata.name").to_string(),
        );
        assert!(
            out.insert(id.clone(), value).is_none(),
            "{label}: {}/{} twice",
            id.0,
            id.1
        );
    }
    out
}

/// The value at a dotted path (`spec.template.spec`); Null when absent.
pub fn at<'a>(v: &'a Value, path: &str) -> &'a Value {
    static NULL: Value = Value::Null;
    path.split('.')
        .try_fold(v, |v, key| v.get(key))
        .unwrap_or(&NULL)
}

/// A key that has dots itself (`dlp.yaml`, `helm.sh/hook`) under a dotted path.
pub fn key<'a>(v: &'a Value, path: &str, key: &str) -> &'a Value {
    static NULL: Value = Value::Null;
    at(v, path).get(key).unwrap_or(&NULL)
}

pub fn str_at<'a>(v: &'a Value, path: &str) -> &'a str {
    at(v, path).as_str().unwrap_or("")
}

pub fn seq_at<'a>(v: &'a Value, path: &str) -> &'a [Value] {
    at(v, path).as_sequence().map_or(&[], |s| s.as_slice())
}

pub fn get<'a>(objs: &'a Objects, kind: &str, name: &str) -> &'a Value {
    objs.get(&(kind.to_string(), name.to_string()))
        .unwrap_or_else(|| panic!("no {kind}/{name} (objects: {:?})", ids(objs)))
}

pub fn ids(objs: &Objects) -> Vec<String> {
    objs.keys().map(|(k, n)| format!("{k}/{n}")).collect()
}

pub fn names(objs: &Objects, kind: &str) -> BTreeSet<String> {
    objs.keys()
        .filter(|(k, _)| k == kind)
        .map(|(_, n)| n.clone())
        .collect()
}

pub fn show(v: &Value) -> String {
    serde_json::to_string(v).unwrap_or_else(|_| format!("{v:?}"))
}

/// `--key=value` arguments as a map (flags without a value map to "").
pub fn args_of(container: &Value) -> BTreeMap<String, String> {
    seq_at(container, "args")
        .iter()
        .filter_map(|a| a.as_str())
        .filter_map(|a| a.strip_prefix("--"))
        .map(|a| match a.split_once('=') {
            Some((k, v)) => (k.to_string(), v.to_string()),
            None => (a.to_string(), String::new()),
        })
        .collect()
}

pub fn containers(deployment: &Value) -> &[Value] {
    seq_at(deployment, "spec.template.spec.containers")
}

pub fn container(deployment: &Value) -> &Value {
    let c = containers(deployment);
    assert_eq!(
        c.len(),
        1,
        "{}: expected one container",
        str_at(deployment, "metadata.name")
    );
    &c[0]
}

/// Secret data as kubectl and the API server read it: base64, line breaks ignored
/// (kustomize folds long values at 70 characters).
pub fn decode_base64(label: &str, text: &str) -> String {
    let text: String = text.split_ascii_whitespace().collect();
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(text)
        .unwrap_or_else(|e| panic!("{label}: not base64: {e}"));
    String::from_utf8(bytes).unwrap_or_else(|e| panic!("{label}: not UTF-8: {e}"))
}

/// Every value of a repeatable `--key=value` argument, in order.
pub fn arg_values(container: &Value, flag: &str) -> Vec<String> {
    let prefix = format!("--{flag}=");
    seq_at(container, "args")
        .iter()
        .filter_map(Value::as_str)
        .filter_map(|a| a.strip_prefix(&prefix))
        .map(String::from)
        .collect()
}

/// Whether a Kubernetes label selector (matchLabels, matchExpressions) selects `labels`.
/// An empty selector selects everything; an unknown operator selects nothing.
pub fn selects(selector: &Value, labels: &Value) -> bool {
    let label = |k: &Value| labels.get(k).and_then(Value::as_str);
    let match_labels = at(selector, "matchLabels")
        .as_mapping()
        .into_iter()
        .flatten()
        .all(|(k, v)| label(k).is_some() && label(k) == v.as_str());
    let match_expressions = seq_at(selector, "matchExpressions").iter().all(|e| {
        let value = label(at(e, "key"));
        let values: Vec<&str> = seq_at(e, "values")
            .iter()
            .filter_map(Value::as_str)
            .collect();
        match str_at(e, "operator") {
            "In" => value.is_some_and(|v| values.contains(&v)),
            "NotIn" => value.is_none_or(|v| !values.contains(&v)),
            "Exists" => value.is_some(),
            "DoesNotExist" => value.is_none(),
            _ => false,
        }
    });
    match_labels && match_expressions
}

/// A bcrypt hash as htpasswd -B and the scheduler's users file have it:
/// `$2a$`, `$2b$` or `$2y$`, a two-digit cost, `$`, then 53 characters of [./A-Za-z0-9].
pub fn is_bcrypt(hash: &str) -> bool {
    let b = hash.as_bytes();
    b.len() == 60
        && b[0] == b'$'
        && b[1] == b'2'
        && matches!(b[2], b'a' | b'b' | b'y')
        && b[3] == b'$'
        && b[4].is_ascii_digit()
        && b[5].is_ascii_digit()
        && b[6] == b'$'
        && b[7..]
            .iter()
            .all(|c| c.is_ascii_alphanumeric() || *c == b'.' || *c == b'/')
}

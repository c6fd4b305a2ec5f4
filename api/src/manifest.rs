//! Manifest files: several YAML documents separated by `---` (or JSON values),
//! each an object, a `kind: List` with `items`, or a list of objects.
//!
//! Every object is read, defaulted and validated here, so a file with one bad
//! document is refused as a whole, with an error naming the document, the
//! object and the field. Nothing here touches the network or the disk.

use serde::Deserialize;
use serde_json::{Map, Number, Value};

use crate::object::{ManifestError, Object};

/// Parses every object in `text` (multi-document YAML, or JSON), applying
/// defaults and validating each. Empty documents are skipped. The first problem
/// is returned, naming its document (1-based), kind, name and field.
pub fn parse_manifests(text: &str) -> Result<Vec<Object>, ManifestError> {
    let mut objects = Vec::new();
    for (document, value) in read_documents(text)? {
        match value {
            Value::Array(items) => {
                for (i, item) in items.into_iter().enumerate() {
                    objects.push(read_object(item, document, &format!("[{i}]"))?);
                }
            }
            Value::Object(map) if map.get("kind").and_then(Value::as_str) == Some("List") => {
                let items = match map.get("items") {
                    Some(Value::Array(items)) => items.clone(),
                    Some(Value::Null) | None => Vec::new(),
                    Some(_) => {
                        return Err(ManifestError::new("List", "", "items", "must be a list")
                            .in_document(document))
                    }
                };
                for (i, item) in items.into_iter().enumerate() {
                    objects.push(read_object(item, document, &format!("items[{i}]"))?);
                }
            }
            other => objects.push(read_object(other, document, "")?),
        }
    }
    Ok(objects)
}

/// One object: read, default, validate. `prefix` locates it inside its document
/// (`items[2]`) and is prepended to field paths.
fn read_object(value: Value, document: usize, prefix: &str) -> Result<Object, ManifestError> {
    let with_prefix = |mut e: ManifestError| {
        if !prefix.is_empty() {
            e.field = if e.field.is_empty() {
                prefix.to_owned()
            } else {
                format!("{prefix}.{}", e.field)
            };
        }
        e.in_document(document)
    };
    let mut object = Object::from_manifest(value).map_err(with_prefix)?;
    object.apply_defaults();
    object.validate().map_err(|errs| {
        with_prefix(ManifestError::from_validation(
            object.kind().as_str(),
            &object.meta().name,
            &errs,
        ))
    })?;
    Ok(object)
}

/// The non-empty documents of `text` with their 1-based numbers.
fn read_documents(text: &str) -> Result<Vec<(usize, Value)>, ManifestError> {
    let trimmed = text.trim_start();
    if trimmed.starts_with('{') || trimmed.starts_with('[') {
        // JSON, possibly several values in a row. If it is not valid JSON it may
        // still be YAML flow style, so fall through to the YAML reader.
        let values: Result<Vec<Value>, _> = serde_json::Deserializer::from_str(text)
            .into_iter::<Value>()
            .collect();
        if let Ok(values) = values {
            return Ok(values
                .into_iter()
                .enumerate()
                .map(|(i, v)| (i + 1, v))
                .filter(|(_, v)| !v.is_null())
                .collect());
        }
    }
    let mut documents = Vec::new();
    for (i, de) in serde_yaml_ng::Deserializer::from_str(text).enumerate() {
        let document = i + 1;
        let mut yaml = serde_yaml_ng::Value::deserialize(de)
            .map_err(|e| yaml_error(&e).in_document(document))?;
        yaml.apply_merge()
            .map_err(|e| yaml_error(&e).in_document(document))?;
        let value = yaml_to_json(yaml, "").map_err(|(field, message)| {
            ManifestError::new("", "", &field, message).in_document(document)
        })?;
        if !value.is_null() {
            documents.push((document, value));
        }
    }
    Ok(documents)
}

/// `invalid YAML at line L column C: problem`.
fn yaml_error(e: &serde_yaml_ng::Error) -> ManifestError {
    let text = e.to_string();
    let message = match e.location() {
        Some(loc) => {
            let at = format!(" at line {} column {}", loc.line(), loc.column());
            format!(
                "invalid YAML at line {} column {}: {}",
                loc.line(),
                loc.column(),
                text.replacen(&at, "", 1)
            )
        }
        None => format!("invalid YAML: {text}"),
    };
    ManifestError::new("", "", "", message)
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_owned()
    } else {
        format!("{path}.{key}")
    }
}

/// Converts a YAML value to JSON: keys become strings (`1: x` → `"1"`), tags
/// and non-finite numbers are errors naming the field.
fn yaml_to_json(v: serde_yaml_ng::Value, path: &str) -> Result<Value, (String, String)> {
    use serde_yaml_ng::Value as Y;
    Ok(match v {
        Y::Null => Value::Null,
        Y::Bool(b) => Value::Bool(b),
        Y::Number(n) => {
            if let Some(u) = n.as_u64() {
                Value::Number(u.into())
            } else if let Some(i) = n.as_i64() {
                Value::Number(i.into())
            } else {
                let f = n.as_f64().unwrap_or(f64::NAN);
                Value::Number(
                    Number::from_f64(f)
                        .ok_or_else(|| (path.to_owned(), format!("{n} is not a finite number")))?,
                )
            }
        }
        Y::String(s) => Value::String(s),
        Y::Sequence(items) => Value::Array(
            items
                .into_iter()
                .enumerate()
                .map(|(i, item)| yaml_to_json(item, &format!("{path}[{i}]")))
                .collect::<Result<_, _>>()?,
        ),
        Y::Mapping(mapping) => {
            let mut map = Map::new();
            for (k, v) in mapping {
                let key = match k {
                    Y::String(s) => s,
                    Y::Number(n) => n.to_string(),
                    Y::Bool(b) => b.to_string(),
                    other => {
                        return Err((
                            path.to_owned(),
                            format!("mapping keys must be strings, found {other:?}"),
                        ))
                    }
                };
                let child = yaml_to_json(v, &join(path, &key))?;
                map.insert(key, child);
            }
            Value::Object(map)
        }
        Y::Tagged(t) => {
            return Err((
                path.to_owned(),
                format!("YAML tag {} is not supported", t.tag),
            ))
        }
    })
}

/// The manifest files in a directory (`*.yaml`, `*.yml`, `*.json`), sorted by
/// name: what `flotilla apply -f DIR` and a node's `--manifests-dir` read.
pub fn manifest_files(dir: &std::path::Path) -> std::io::Result<Vec<std::path::PathBuf>> {
    let mut files: Vec<std::path::PathBuf> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            matches!(
                p.extension().and_then(|e| e.to_str()),
                Some("yaml" | "yml" | "json")
            )
        })
        .collect();
    files.sort();
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::object::Kind;

    const GOOD: &str = r#"
# a namespace and two workloads
apiVersion: flotilla.dev/v1
kind: Namespace
metadata:
  name: team-a
---
apiVersion: flotilla.dev/v1
kind: Deployment
metadata:
  name: web
  namespace: team-a
  resourceVersion: 5
spec:
  replicas: 3
  selector:
    matchLabels: {app: web}
  strategy:
    rollingUpdate: {maxSurge: 1, maxUnavailable: "0%"}
  template:
    metadata:
      labels: {app: web}
    spec:
      module: ./hello.wasm
      world: http
      resources:
        limits: {cpu: 500m, memory: 64Mi}
---
---
apiVersion: flotilla.dev/v1
kind: Service
metadata: {name: web}
spec:
  selector: {app: web}
  ports:
  - port: 80
    targetPort: 8080
  ingress: {host: hello.local}
"#;

    #[test]
    fn parses_defaults_and_validates() {
        let objs = parse_manifests(GOOD).expect("parse");
        let kinds: Vec<Kind> = objs.iter().map(Object::kind).collect();
        assert_eq!(kinds, [Kind::Namespace, Kind::Deployment, Kind::Service]);
        let Object::Deployment(d) = &objs[1] else {
            panic!("not a deployment")
        };
        assert_eq!(d.metadata.resource_version, "5");
        assert_eq!(d.spec.replicas, 3);
        assert_eq!(d.spec.template.spec.memory_request_bytes(), 64 << 20);
        assert_eq!(objs[2].meta().namespace, "default");
        assert!(parse_manifests("").expect("empty").is_empty());
        assert!(parse_manifests("---\n# only a comment\n---\n")
            .expect("empty")
            .is_empty());
    }

    #[test]
    fn json_and_lists() {
        let json = r#"{"apiVersion":"flotilla.dev/v1","kind":"Namespace","metadata":{"name":"a"}}
{"apiVersion":"flotilla.dev/v1","kind":"Namespace","metadata":{"name":"b"}}"#;
        assert_eq!(parse_manifests(json).expect("json").len(), 2);
        let list = r#"{"kind":"List","items":[
            {"apiVersion":"flotilla.dev/v1","kind":"Namespace","metadata":{"name":"a"}},
            {"apiVersion":"flotilla.dev/v1","kind":"Namespace","metadata":{"name":"B"}}]}"#;
        let err = parse_manifests(list).expect_err("bad name");
        assert!(
            err.to_string().starts_with(
                r#"document 1 (Namespace "B"): items[1].metadata.name: "B" is not a valid name"#
            ),
            "{err}"
        );
        let yaml_list = "kind: List\nitems:\n- apiVersion: flotilla.dev/v1\n  kind: Namespace\n  metadata: {name: a}\n";
        assert_eq!(parse_manifests(yaml_list).expect("list").len(), 1);
        let flow = "{apiVersion: flotilla.dev/v1, kind: Namespace, metadata: {name: a}}";
        assert_eq!(parse_manifests(flow).expect("yaml flow").len(), 1);
    }

    fn err(text: &str) -> String {
        parse_manifests(text).expect_err("should fail").to_string()
    }

    #[test]
    fn malformed_yaml_names_document_and_line() {
        let text = "apiVersion: flotilla.dev/v1\nkind: Namespace\nmetadata: {name: a}\n---\nkind: Instance\nmetadata:\n  name: web\n   bad: indent\n";
        let e = err(text);
        assert!(
            e.starts_with("document 2: invalid YAML at line 8 column"),
            "{e}"
        );
        let e = err("a: [1, 2\n");
        assert!(e.starts_with("document 1: invalid YAML at line"), "{e}");
        let e = err("metadata:\n  name: a\n  name: b\n");
        assert!(e.contains("duplicate entry"), "{e}");
    }

    #[test]
    fn unknown_kind_names_document_and_field() {
        let text =
            format!("{GOOD}---\napiVersion: flotilla.dev/v1\nkind: Pod\nmetadata: {{name: web}}\n");
        let e = err(&text);
        assert!(
            e.starts_with(r#"document 5: kind: unknown kind "Pod" (known kinds: Namespace,"#),
            "{e}"
        );
    }

    #[test]
    fn missing_required_field_names_its_path() {
        let text = r#"apiVersion: flotilla.dev/v1
kind: Deployment
metadata: {name: web}
spec:
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      world: http
"#;
        assert_eq!(
            err(text),
            r#"document 1 (Deployment "web"): spec.template.spec.module: required"#
        );
        let e = err("apiVersion: flotilla.dev/v1\nkind: Instance\nspec: {module: ./a.wasm}\n");
        assert_eq!(e, "document 1 (Instance): metadata.name: required");
    }

    #[test]
    fn invalid_quantity_names_document_kind_name_and_field() {
        let text = r#"apiVersion: flotilla.dev/v1
kind: Namespace
metadata: {name: a}
---
apiVersion: flotilla.dev/v1
kind: Instance
metadata: {name: web}
spec:
  module: ./web.wasm
  resources:
    limits:
      memory: 64Xi
"#;
        assert_eq!(
            err(text),
            r#"document 2 (Instance "web"): spec.resources.limits.memory: "64Xi" is not a quantity (expected a number with an optional suffix: m, k, M, G, T, P, E, Ki, Mi, Gi, Ti, Pi, Ei)"#
        );
    }

    #[test]
    fn other_errors() {
        let e = err("apiVersion: flotilla.dev/v1\nkind: Instance\nmetadata: {name: web}\nspec: {module: a.wasm, restartPolicy: Sometimes}\n");
        assert!(
            e.starts_with(
                r#"document 1 (Instance "web"): spec.restartPolicy: unknown variant `Sometimes`"#
            ),
            "{e}"
        );
        let e = err("apiVersion: flotilla.dev/v1\nkind: Instance\nmetadata: {name: web}\nspec: {module: a.wasm, modul: b}\n");
        assert!(
            e.starts_with(r#"document 1 (Instance "web"): spec.modul: unknown field `modul`"#),
            "{e}"
        );
        let e = err("just some text\n");
        assert!(e.starts_with("document 1: expected a mapping"), "{e}");
        let e = err("apiVersion: flotilla.dev/v1\nkind: Instance\nmetadata: {name: web}\nspec: !custom {module: a.wasm}\n");
        assert!(e.contains("spec: YAML tag !custom is not supported"), "{e}");
        let e = err("apiVersion: flotilla.dev/v1\nkind: Service\nmetadata: {name: s}\nspec: {ports: [{port: 80, targetPort: 70000}]}\n");
        assert!(
            e.contains("spec.ports[0].targetPort: 70000 is not a port number"),
            "{e}"
        );
        let e = err("apiVersion: flotilla.dev/v1\nkind: Deployment\nmetadata: {name: d}\nspec: {strategy: {rollingUpdate: {maxSurge: '1x'}}}\n");
        assert!(
            e.contains(
                "spec.strategy.rollingUpdate.maxSurge: \"1x\" is not a count or a percentage"
            ),
            "{e}"
        );
    }

    #[test]
    fn merge_keys() {
        let text = r#"
apiVersion: flotilla.dev/v1
kind: Service
metadata:
  name: s
  labels: &common {team: a}
  annotations:
    <<: *common
    extra: "1"
spec:
  ports: [{port: 80}]
"#;
        let objs = parse_manifests(text).expect("merge");
        assert_eq!(
            objs[0].meta().annotations.get("team").map(String::as_str),
            Some("a")
        );
    }

    #[test]
    fn garbage_never_panics() {
        use rand::{Rng, SeedableRng};
        let alphabet: Vec<char> = "ab:-{}[]\"' \n\t#&*!|>%@,?0123456789.eE".chars().collect();
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        for _ in 0..2000 {
            let len = rng.gen_range(0..60);
            let text: String = (0..len)
                .map(|_| alphabet[rng.gen_range(0..alphabet.len())])
                .collect();
            let _ = parse_manifests(&text);
            let prefixed = format!("apiVersion: flotilla.dev/v1\nkind: Instance\nmetadata: {{name: a}}\nspec:\n  {text}");
            let _ = parse_manifests(&prefixed);
        }
    }
}

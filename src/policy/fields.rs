//! Raw objects into typed Kubernetes objects, with field paths in every message.
//!
//! Two things the typed decoders do not do on their own: say *where* a value has the wrong
//! type (`spec.ingress[0].ports[0].port: invalid type ...`), and notice fields they do not
//! know. An unknown field is usually a typo (`excpet`, `podselector`) whose intent is silently
//! lost, so it is reported with its path, the way kubectl's field validation reports it.

use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;

/// A typed decoding error: the field path (empty for the whole object) and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TypeError {
    pub field: String,
    pub message: String,
}

/// Decodes `value` as `T`, naming the field whose value has the wrong type.
pub fn decode<T: DeserializeOwned>(value: Value) -> Result<T, TypeError> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let field = e.path().to_string();
        let field = if field == "." { String::new() } else { field };
        TypeError {
            field,
            message: e.into_inner().to_string(),
        }
    })
}

/// Paths of the fields in `original` that `typed` (decoded from it) does not carry: the
/// fields the schema does not know. Null values are skipped (they mean "absent").
pub fn unknown_fields<T: Serialize>(original: &Value, typed: &T) -> Vec<String> {
    let known = match serde_json::to_value(typed) {
        Ok(v) => v,
        Err(_) => return vec![],
    };
    let mut out = Vec::new();
    walk(original, &known, &mut String::new(), &mut out);
    out
}

/// Unknown top-level fields of an object whose known fields are listed.
pub fn unknown_keys(original: &Value, known: &[&str]) -> Vec<String> {
    match original {
        Value::Object(map) => map
            .iter()
            .filter(|(k, v)| !v.is_null() && !known.contains(&k.as_str()))
            .map(|(k, _)| k.clone())
            .collect(),
        _ => vec![],
    }
}

fn walk(original: &Value, known: &Value, path: &mut String, out: &mut Vec<String>) {
    match (original, known) {
        (Value::Object(o), Value::Object(k)) => {
            for (key, value) in o {
                if value.is_null() {
                    continue;
                }
                let len = path.len();
                if !path.is_empty() {
                    path.push('.');
                }
                path.push_str(key);
                match k.get(key) {
                    None => out.push(path.clone()),
                    Some(kv) => walk(value, kv, path, out),
                }
                path.truncate(len);
            }
        }
        (Value::Array(o), Value::Array(k)) => {
            for (i, (ov, kv)) in o.iter().zip(k).enumerate() {
                let len = path.len();
                path.push_str(&format!("[{i}]"));
                walk(ov, kv, path, out);
                path.truncate(len);
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::Pod;
    use k8s_openapi::api::networking::v1::NetworkPolicy;
    use serde_json::json;

    #[test]
    fn type_errors_name_the_field() {
        let e = decode::<NetworkPolicy>(json!({
            "metadata": {"name": "p"},
            "spec": {"ingress": [{"ports": [{"port": {"a": 1}}]}]}
        }))
        .unwrap_err();
        assert_eq!(e.field, "spec.ingress[0].ports[0].port");
        let e = decode::<Pod>(json!({"metadata": {"name": 123}})).unwrap_err();
        assert_eq!(e.field, "metadata.name");
        assert!(e.message.contains("123"), "{}", e.message);
        let e = decode::<Pod>(json!({"spec": {"containers": [{"name": "c", "ports": [{"containerPort": 99999999999i64}]}]}}))
            .unwrap_err();
        assert_eq!(e.field, "spec.containers[0].ports[0].containerPort");
    }

    #[test]
    fn unknown_fields_are_found_with_their_path_and_known_ones_are_not() {
        let raw = json!({
            "apiVersion": "networking.k8s.io/v1",
            "kind": "NetworkPolicy",
            "metadata": {"name": "p", "labels": {"any": "label"}, "creationTimestamp": null},
            "spec": {
                "podselector": {},
                "ingress": [{"from": [{"ipBlock": {"cidr": "10.0.0.0/8", "excpet": ["10.1.0.0/16"]}}]}]
            }
        });
        let np: NetworkPolicy = decode(raw.clone()).unwrap();
        let mut found = unknown_fields(&raw, &np);
        found.sort();
        assert_eq!(
            found,
            ["spec.ingress[0].from[0].ipBlock.excpet", "spec.podselector"]
        );
    }
}

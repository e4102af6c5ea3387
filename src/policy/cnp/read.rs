//! One ClusterNetworkPolicy document (a manifest, or an object from the API) read the way
//! every CNP is: decoded with field paths, unknown fields found, validated by [`convert`].
//! The API path uses this so an object from the API server and the same manifest on disk
//! end up as the same model.

use serde_json::Value;

use super::{convert, RawCnp, Subject, KIND};
use crate::policy::fields::{decode, unknown_fields, TypeError};
use crate::policy::model::Problem;

/// What one document is.
pub struct Read {
    pub name: String,
    pub policy: Result<super::ClusterPolicy, Vec<Problem>>,
    /// For an invalid CNP: its subject when that alone is valid (None: every pod may be one).
    pub subject: Option<Subject>,
    /// Paths of fields the schema does not know (the rules carrying them fail closed).
    pub unknown: Vec<String>,
    pub warnings: Vec<String>,
}

/// Reads a whole object (`metadata`, `spec`, ...). Never panics; every failure is a problem
/// naming `ClusterNetworkPolicy <name>` and the field.
pub fn read(doc: &Value) -> Read {
    let name = doc["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let raw: RawCnp = match decode::<RawCnp>(doc.clone()) {
        Ok(r) => r,
        Err(TypeError { field, message }) => {
            // Unreadable: its subject alone may still say which pods it applies to.
            let subject = decode::<RawCnp>(serde_json::json!({
                "metadata": {"name": name},
                "spec": {"tier": "Admin", "priority": 0, "subject": doc["spec"]["subject"].clone()}
            }))
            .ok()
            .and_then(|r| convert(&r, &[]).subject);
            return Read {
                policy: Err(vec![Problem {
                    object: format!("{KIND} {name}"),
                    field,
                    message: format!("cannot be read: {message}"),
                }]),
                name,
                subject,
                unknown: vec![],
                warnings: vec![],
            };
        }
    };
    let unknown = unknown_fields(doc, &raw);
    let converted = convert(&raw, &unknown);
    Read {
        name,
        policy: converted.policy,
        subject: converted.subject,
        unknown,
        warnings: converted.warnings,
    }
}

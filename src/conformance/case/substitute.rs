//! `${ip:NS/POD}` placeholders: replaced with pod addresses in text and JSON values.

use std::net::IpAddr;

use serde_json::Value;

use super::parse_pod_name;
use crate::policy::ObjectName;

/// Replaces every `${ip:NS/POD}` in `text` with that pod's address (`ip_of` gives the current
/// address, or the last one of a deleted pod).
pub fn substitute(
    text: &str,
    ip_of: &dyn Fn(&ObjectName) -> Option<IpAddr>,
) -> Result<String, String> {
    const OPEN: &str = "${ip:";
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find(OPEN) {
        out.push_str(&rest[..start]);
        let after = &rest[start + OPEN.len()..];
        let end = after
            .find('}')
            .ok_or_else(|| format!("unterminated placeholder in {text:?}"))?;
        let name = parse_pod_name(&after[..end])?;
        let ip = ip_of(&name).ok_or_else(|| {
            format!("placeholder ${{ip:{name}}}: pod {name} has no address (it never existed)")
        })?;
        out.push_str(&ip.to_string());
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

/// [`substitute`] in every string of a JSON value (keys are left alone).
pub fn substitute_value(
    v: &Value,
    ip_of: &dyn Fn(&ObjectName) -> Option<IpAddr>,
) -> Result<Value, String> {
    Ok(match v {
        Value::String(s) => Value::String(substitute(s, ip_of)?),
        Value::Array(items) => Value::Array(
            items
                .iter()
                .map(|i| substitute_value(i, ip_of))
                .collect::<Result<_, _>>()?,
        ),
        Value::Object(map) => {
            let mut out = serde_json::Map::new();
            for (k, v) in map {
                out.insert(k.clone(), substitute_value(v, ip_of)?);
            }
            Value::Object(out)
        }
        other => other.clone(),
    })
}

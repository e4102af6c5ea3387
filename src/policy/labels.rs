//! Label selectors, validated the way the API server validates them and matched the way
//! Kubernetes matches them.
//!
//! A `matchLabels` entry `k: v` is the requirement `k In (v)`; all requirements must hold.
//! The empty selector matches everything. Explanations name the first requirement that
//! fails, because that is the one a user has to fix.

use std::collections::BTreeMap;
use std::fmt;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use serde::Serialize;

/// Labels of a pod or namespace. Sorted so output is deterministic.
pub type Labels = BTreeMap<String, String>;

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub enum Operator {
    In,
    NotIn,
    Exists,
    DoesNotExist,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct Requirement {
    pub key: String,
    pub operator: Operator,
    /// Sorted and deduplicated; empty for Exists / DoesNotExist.
    pub values: Vec<String>,
}

/// A validated label selector. Requirements are sorted so that equal selectors compare equal.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct Selector {
    pub requirements: Vec<Requirement>,
}

impl Requirement {
    pub fn matches(&self, labels: &Labels) -> bool {
        let value = labels.get(&self.key);
        match self.operator {
            Operator::In => value.is_some_and(|v| self.values.contains(v)),
            Operator::NotIn => value.is_none_or(|v| !self.values.contains(v)),
            Operator::Exists => value.is_some(),
            Operator::DoesNotExist => value.is_none(),
        }
    }

    /// Why `labels` (of `subject`, e.g. "namespace y") fail this requirement.
    pub fn explain_failure(&self, subject: &str, labels: &Labels) -> String {
        let has = match labels.get(&self.key) {
            Some(v) => format!("{subject} has {}={v}", self.key),
            None => format!("{subject} has no label {}", self.key),
        };
        format!("needs {self}, {has}")
    }
}

impl fmt::Display for Requirement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.operator {
            Operator::In if self.values.len() == 1 => write!(f, "{}={}", self.key, self.values[0]),
            Operator::In => write!(f, "{} in ({})", self.key, self.values.join(", ")),
            Operator::NotIn => write!(f, "{} notin ({})", self.key, self.values.join(", ")),
            Operator::Exists => write!(f, "label {}", self.key),
            Operator::DoesNotExist => write!(f, "no label {}", self.key),
        }
    }
}

impl Selector {
    /// The selector that matches everything (`{}`).
    pub fn everything() -> Selector {
        Selector::default()
    }

    pub fn is_everything(&self) -> bool {
        self.requirements.is_empty()
    }

    pub fn matches(&self, labels: &Labels) -> bool {
        self.requirements.iter().all(|r| r.matches(labels))
    }

    /// The first requirement `labels` fail, if any.
    pub fn first_failure(&self, labels: &Labels) -> Option<&Requirement> {
        self.requirements.iter().find(|r| !r.matches(labels))
    }

    /// Builds a selector from the Kubernetes type, reporting every problem with its field path
    /// relative to the selector (e.g. `matchExpressions[0].operator`).
    pub fn from_k8s(sel: &LabelSelector) -> Result<Selector, Vec<(String, String)>> {
        let mut errors = Vec::new();
        let mut requirements = Vec::new();
        for (k, v) in sel.match_labels.iter().flatten() {
            let field = format!("matchLabels.{k}");
            if let Err(e) = validate_label_key(k) {
                errors.push((field.clone(), e));
            }
            if let Err(e) = validate_label_value(v) {
                errors.push((field, e));
            }
            requirements.push(Requirement {
                key: k.clone(),
                operator: Operator::In,
                values: vec![v.clone()],
            });
        }
        for (i, expr) in sel.match_expressions.iter().flatten().enumerate() {
            let field = format!("matchExpressions[{i}]");
            if let Err(e) = validate_label_key(&expr.key) {
                errors.push((format!("{field}.key"), e));
            }
            let mut values: Vec<String> = expr.values.clone().unwrap_or_default();
            for (j, v) in values.iter().enumerate() {
                if let Err(e) = validate_label_value(v) {
                    errors.push((format!("{field}.values[{j}]"), e));
                }
            }
            values.sort();
            values.dedup();
            let operator = match expr.operator.as_str() {
                "In" => Operator::In,
                "NotIn" => Operator::NotIn,
                "Exists" => Operator::Exists,
                "DoesNotExist" => Operator::DoesNotExist,
                other => {
                    errors.push((
                        format!("{field}.operator"),
                        format!(
                            "unknown operator {other:?}: use In, NotIn, Exists or DoesNotExist"
                        ),
                    ));
                    continue;
                }
            };
            match operator {
                Operator::In | Operator::NotIn if values.is_empty() => errors.push((
                    format!("{field}.values"),
                    format!("operator {} needs at least one value", expr.operator),
                )),
                Operator::Exists | Operator::DoesNotExist if !values.is_empty() => errors.push((
                    format!("{field}.values"),
                    format!("operator {} takes no values: remove them", expr.operator),
                )),
                _ => {}
            }
            requirements.push(Requirement {
                key: expr.key.clone(),
                operator,
                values,
            });
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        requirements.sort();
        requirements.dedup();
        Ok(Selector { requirements })
    }
}

impl fmt::Display for Selector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.requirements.is_empty() {
            return write!(f, "{{}}");
        }
        let parts: Vec<String> = self.requirements.iter().map(|r| r.to_string()).collect();
        write!(f, "{}", parts.join(", "))
    }
}

/// A qualified name: `[prefix/]name` where prefix is a DNS subdomain and name is at most
/// 63 characters of alphanumerics, `-`, `_`, `.`, starting and ending alphanumeric.
pub fn validate_label_key(key: &str) -> Result<(), String> {
    let (prefix, name) = match key.split_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, key),
    };
    if let Some(p) = prefix {
        if p.is_empty() {
            return Err(format!("label key {key:?}: the prefix before '/' is empty"));
        }
        validate_dns_subdomain(p).map_err(|e| format!("label key {key:?}: prefix {e}"))?;
    }
    if name.is_empty() {
        return Err(format!("label key {key:?}: the name part is empty"));
    }
    validate_label_value(name).map_err(|e| format!("label key {key:?}: {e}"))
}

/// Label values: empty, or at most 63 characters of alphanumerics, `-`, `_`, `.`,
/// starting and ending alphanumeric.
pub fn validate_label_value(v: &str) -> Result<(), String> {
    if v.is_empty() {
        return Ok(());
    }
    if v.len() > 63 {
        return Err(format!("{v:?} is longer than 63 characters"));
    }
    let ok_inner = v
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    let ends = |c: Option<char>| c.is_some_and(|c| c.is_ascii_alphanumeric());
    if !ok_inner || !ends(v.chars().next()) || !ends(v.chars().last()) {
        return Err(format!(
            "{v:?} must be alphanumerics, '-', '_' or '.', starting and ending with an alphanumeric"
        ));
    }
    Ok(())
}

/// RFC 1123 subdomain: at most 253 characters, lowercase alphanumerics, `-` and `.`,
/// each dot-separated part starting and ending alphanumeric.
pub fn validate_dns_subdomain(s: &str) -> Result<(), String> {
    if s.is_empty() || s.len() > 253 {
        return Err(format!("{s:?} must be 1 to 253 characters"));
    }
    for part in s.split('.') {
        let ok = !part.is_empty()
            && part
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
            && !part.starts_with('-')
            && !part.ends_with('-');
        if !ok {
            return Err(format!(
                "{s:?} is not a DNS subdomain (lowercase alphanumerics, '-' and '.')"
            ));
        }
    }
    Ok(())
}

/// RFC 1123 label (namespace names): at most 63 lowercase alphanumerics or `-`.
pub fn validate_dns_label(s: &str) -> Result<(), String> {
    if s.is_empty() || s.len() > 63 || s.contains('.') {
        return Err(format!("{s:?} must be 1 to 63 characters without '.'"));
    }
    validate_dns_subdomain(s)
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelectorRequirement;
    use proptest::prelude::*;

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn expr(key: &str, op: &str, values: &[&str]) -> LabelSelectorRequirement {
        LabelSelectorRequirement {
            key: key.into(),
            operator: op.into(),
            values: Some(values.iter().map(|s| s.to_string()).collect()),
        }
    }

    #[test]
    fn empty_selector_matches_everything() {
        let s = Selector::from_k8s(&LabelSelector::default()).unwrap();
        assert!(s.matches(&labels(&[])));
        assert!(s.matches(&labels(&[("a", "b")])));
    }

    #[test]
    fn operators() {
        let sel = LabelSelector {
            match_expressions: Some(vec![expr("pod", "NotIn", &["a"])]),
            ..Default::default()
        };
        let s = Selector::from_k8s(&sel).unwrap();
        assert!(s.matches(&labels(&[])), "NotIn matches a missing key");
        assert!(s.matches(&labels(&[("pod", "b")])));
        assert!(!s.matches(&labels(&[("pod", "a")])));
        let sel = LabelSelector {
            match_expressions: Some(vec![expr("pod", "DoesNotExist", &[])]),
            ..Default::default()
        };
        let s = Selector::from_k8s(&sel).unwrap();
        assert!(s.matches(&labels(&[("x", "b")])));
        assert!(!s.matches(&labels(&[("pod", "")])));
    }

    #[test]
    fn rejects_bad_operators_and_labels() {
        let sel = LabelSelector {
            match_labels: Some([("bad key!".to_string(), "v".to_string())].into()),
            match_expressions: Some(vec![
                expr("pod", "Equals", &["a"]),
                expr("pod", "In", &[]),
                expr("pod", "Exists", &["a"]),
            ]),
        };
        let errs = Selector::from_k8s(&sel).unwrap_err();
        let fields: Vec<&str> = errs.iter().map(|(f, _)| f.as_str()).collect();
        assert_eq!(
            fields,
            [
                "matchLabels.bad key!",
                "matchExpressions[0].operator",
                "matchExpressions[1].values",
                "matchExpressions[2].values"
            ]
        );
    }

    #[test]
    fn explains_first_failure() {
        let sel = LabelSelector {
            match_labels: Some([("team".to_string(), "web".to_string())].into()),
            ..Default::default()
        };
        let s = Selector::from_k8s(&sel).unwrap();
        let l = labels(&[("kubernetes.io/metadata.name", "y")]);
        let r = s.first_failure(&l).unwrap();
        assert_eq!(
            r.explain_failure("namespace y", &l),
            "needs team=web, namespace y has no label team"
        );
    }

    #[test]
    fn label_key_syntax() {
        assert!(validate_label_key("kubernetes.io/metadata.name").is_ok());
        assert!(validate_label_key("app").is_ok());
        assert!(validate_label_key("-app").is_err());
        assert!(validate_label_key("Example.COM/app").is_err());
        assert!(validate_label_key(&"a".repeat(64)).is_err());
        assert!(validate_label_value("").is_ok());
        assert!(validate_label_value("a_b.c-d").is_ok());
        assert!(validate_label_value("a b").is_err());
    }

    fn small_labels() -> impl Strategy<Value = Labels> {
        prop::collection::btree_map("[abc]", "[xyz]", 0..3)
    }

    fn small_expr() -> impl Strategy<Value = LabelSelectorRequirement> {
        (
            "[abc]",
            prop::sample::select(vec!["In", "NotIn", "Exists", "DoesNotExist"]),
            prop::collection::vec("[xyz]", 1..3),
        )
            .prop_map(|(key, op, values)| {
                let values = matches!(op, "In" | "NotIn").then_some(values);
                LabelSelectorRequirement {
                    key,
                    operator: op.to_string(),
                    values,
                }
            })
    }

    proptest! {
        /// Matching is defined per requirement by the Kubernetes docs; check the whole selector
        /// against a direct reading of those definitions on the raw API object.
        #[test]
        fn selector_matches_spec(
            ml in prop::collection::btree_map("[abc]", "[xyz]", 0..2),
            exprs in prop::collection::vec(small_expr(), 0..3),
            l in small_labels(),
        ) {
            let sel = LabelSelector { match_labels: Some(ml.clone()), match_expressions: Some(exprs.clone()) };
            let s = Selector::from_k8s(&sel).unwrap();
            let by_labels = ml.iter().all(|(k, v)| l.get(k) == Some(v));
            let by_exprs = exprs.iter().all(|e| {
                let vals = e.values.clone().unwrap_or_default();
                match e.operator.as_str() {
                    "In" => l.get(&e.key).is_some_and(|v| vals.contains(v)),
                    "NotIn" => !l.get(&e.key).is_some_and(|v| vals.contains(v)),
                    "Exists" => l.contains_key(&e.key),
                    _ => !l.contains_key(&e.key),
                }
            });
            prop_assert_eq!(s.matches(&l), by_labels && by_exprs);
            prop_assert_eq!(s.first_failure(&l).is_none(), s.matches(&l));
        }
    }
}

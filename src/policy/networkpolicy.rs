//! NetworkPolicy objects in, validated and defaulted [`Policy`] out, rejecting what the API
//! server rejects, with the field path and what to do.

use k8s_openapi::api::networking::v1::{
    NetworkPolicy, NetworkPolicyEgressRule, NetworkPolicyIngressRule, NetworkPolicyPeer,
    NetworkPolicyPort,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::clause;
use super::ipblock::{check_except, parse_cidr, IpBlock};
use super::labels::{validate_dns_label, validate_dns_subdomain, Selector};
use super::model::{Direction, NamespaceScope, Peer, Policy, Problem, Rule};
use super::ports::{validate_port_name, validate_port_number, PortRef, PortRule, Protocol};

/// Collects problems with their field paths while a policy is converted (NetworkPolicy here,
/// ClusterNetworkPolicy in `cnp/validate.rs`, which adds its own checks in an `impl` of its own).
pub(super) struct Checker {
    pub(super) object: String,
    pub(super) problems: Vec<Problem>,
    pub(super) warnings: Vec<String>,
}

impl Checker {
    pub(super) fn error(&mut self, field: impl Into<String>, message: impl Into<String>) {
        self.problems.push(Problem {
            object: self.object.clone(),
            field: field.into(),
            message: message.into(),
        });
    }

    pub(super) fn selector(&mut self, field: &str, sel: &LabelSelector) -> Selector {
        match Selector::from_k8s(sel) {
            Ok(s) => s,
            Err(errs) => {
                for (f, m) in errs {
                    self.error(format!("{field}.{f}"), m);
                }
                Selector::everything()
            }
        }
    }
}

/// The result of converting one NetworkPolicy: the policy if valid, plus warnings.
pub struct Converted {
    pub policy: Result<Policy, Vec<Problem>>,
    pub warnings: Vec<String>,
    /// The podSelector when it alone is valid, so the pods an invalid policy meant to
    /// protect can fail closed; None when the selector itself is invalid.
    pub pod_selector: Option<Selector>,
}

/// Validates and defaults a NetworkPolicy. `default_namespace` applies when metadata has none.
pub fn convert(np: &NetworkPolicy, default_namespace: &str) -> Converted {
    let namespace = np
        .metadata
        .namespace
        .clone()
        .unwrap_or_else(|| default_namespace.to_string());
    let name = np.metadata.name.clone().unwrap_or_default();
    let mut c = Checker {
        object: format!("NetworkPolicy {namespace}/{name}"),
        problems: Vec::new(),
        warnings: Vec::new(),
    };
    if name.is_empty() {
        c.error("metadata.name", "is required");
    } else if let Err(e) = validate_dns_subdomain(&name) {
        c.error("metadata.name", e);
    }
    if let Err(e) = validate_dns_label(&namespace) {
        c.error("metadata.namespace", e);
    }

    let spec = np.spec.clone().unwrap_or_default();
    let selector_problems = c.problems.len();
    let pod_selector = c.selector(
        "spec.podSelector",
        &spec.pod_selector.clone().unwrap_or_default(),
    );
    let selector_ok = c.problems.len() == selector_problems;

    let ingress_rules: Vec<Rule> = spec
        .ingress
        .iter()
        .flatten()
        .enumerate()
        .map(|(i, r)| ingress_rule(&mut c, i, r))
        .collect();
    let egress_rules: Vec<Rule> = spec
        .egress
        .iter()
        .flatten()
        .enumerate()
        .map(|(i, r)| egress_rule(&mut c, i, r))
        .collect();

    // Defaulting as the API server does it: Ingress always, Egress when egress rules exist.
    for (i, t) in spec.policy_types.iter().flatten().enumerate() {
        if t != "Ingress" && t != "Egress" {
            c.error(
                format!("spec.policyTypes[{i}]"),
                format!("unknown policy type {t:?}: use Ingress or Egress"),
            );
        }
    }
    let has_egress_rules = spec.egress.as_ref().is_some_and(|e| !e.is_empty());
    let applies =
        |dir| clause::policy_types_include(spec.policy_types.as_deref(), has_egress_rules, dir);
    let (has_ingress, has_egress) = (applies(Direction::Ingress), applies(Direction::Egress));
    if !has_ingress && !ingress_rules.is_empty() {
        c.warnings.push(format!(
            "{}: has ingress rules but policyTypes leaves out Ingress, so they are ignored",
            c.object
        ));
    }
    if !has_egress && !egress_rules.is_empty() {
        c.warnings.push(format!(
            "{}: has egress rules but policyTypes leaves out Egress, so they are ignored",
            c.object
        ));
    }

    let valid_selector = selector_ok.then(|| pod_selector.clone());
    let policy = if c.problems.is_empty() {
        Ok(Policy {
            namespace,
            name,
            pod_selector,
            ingress: has_ingress.then_some(ingress_rules),
            egress: has_egress.then_some(egress_rules),
        })
    } else {
        Err(std::mem::take(&mut c.problems))
    };
    Converted {
        policy,
        warnings: c.warnings,
        pod_selector: valid_selector,
    }
}

fn ingress_rule(c: &mut Checker, i: usize, r: &NetworkPolicyIngressRule) -> Rule {
    let base = format!("spec.ingress[{i}]");
    rule(c, &base, "from", r.from.as_deref(), r.ports.as_deref())
}

fn egress_rule(c: &mut Checker, i: usize, r: &NetworkPolicyEgressRule) -> Rule {
    let base = format!("spec.egress[{i}]");
    rule(c, &base, "to", r.to.as_deref(), r.ports.as_deref())
}

fn rule(
    c: &mut Checker,
    base: &str,
    peers_field: &str,
    peers: Option<&[NetworkPolicyPeer]>,
    ports: Option<&[NetworkPolicyPort]>,
) -> Rule {
    let peers = peers
        .unwrap_or_default()
        .iter()
        .enumerate()
        .filter_map(|(j, p)| peer(c, &format!("{base}.{peers_field}[{j}]"), p))
        .collect();
    let ports = ports
        .unwrap_or_default()
        .iter()
        .enumerate()
        .filter_map(|(j, p)| port(c, &format!("{base}.ports[{j}]"), p))
        .collect();
    Rule { peers, ports }
}

fn peer(c: &mut Checker, field: &str, p: &NetworkPolicyPeer) -> Option<Peer> {
    match (&p.ip_block, &p.pod_selector, &p.namespace_selector) {
        (Some(_), Some(_), _) | (Some(_), _, Some(_)) => {
            c.error(
                field,
                "a peer with ipBlock may not also have podSelector or namespaceSelector: split it into two peers",
            );
            None
        }
        (Some(block), None, None) => {
            let cidr_field = format!("{field}.ipBlock.cidr");
            let cidr = match parse_cidr(&block.cidr) {
                Ok((net, warning)) => {
                    if let Some(w) = warning {
                        c.warnings.push(format!("{}: {cidr_field}: {w}", c.object));
                    }
                    net
                }
                Err(e) => {
                    c.error(cidr_field, e);
                    return None;
                }
            };
            let mut except = Vec::new();
            for (k, e) in block.except.iter().flatten().enumerate() {
                let ef = format!("{field}.ipBlock.except[{k}]");
                match parse_cidr(e) {
                    Ok((net, warning)) => {
                        if let Some(w) = warning {
                            c.warnings.push(format!("{}: {ef}: {w}", c.object));
                        }
                        match check_except(cidr, net) {
                            Ok(()) => except.push(net),
                            Err(m) => c.error(ef, m),
                        }
                    }
                    Err(m) => c.error(ef, m),
                }
            }
            except.sort();
            except.dedup();
            Some(Peer::IpBlock(IpBlock { cidr, except }))
        }
        (None, None, None) => {
            c.error(
                field,
                "a peer needs podSelector, namespaceSelector or ipBlock (to allow everything, leave out the whole from/to list)",
            );
            None
        }
        (None, pods, namespaces) => {
            let pods = match pods {
                Some(s) => c.selector(&format!("{field}.podSelector"), s),
                None => Selector::everything(),
            };
            let namespaces = match namespaces {
                Some(s) => {
                    NamespaceScope::Selected(c.selector(&format!("{field}.namespaceSelector"), s))
                }
                None => NamespaceScope::PolicyNamespace,
            };
            Some(Peer::Pods { namespaces, pods })
        }
    }
}

fn port(c: &mut Checker, field: &str, p: &NetworkPolicyPort) -> Option<PortRule> {
    let protocol = match p.protocol.as_deref() {
        None => Protocol::Tcp,
        Some(s) => match s.parse() {
            Ok(proto) => proto,
            Err(e) => {
                c.error(format!("{field}.protocol"), e);
                return None;
            }
        },
    };
    let port = match &p.port {
        None => None,
        Some(IntOrString::Int(n)) => match validate_port_number(i64::from(*n)) {
            Ok(n) => Some(PortRef::Number(n)),
            Err(e) => {
                c.error(format!("{field}.port"), e);
                return None;
            }
        },
        Some(IntOrString::String(s)) => match validate_port_name(s) {
            Ok(()) => Some(PortRef::Name(s.clone())),
            Err(e) => {
                c.error(format!("{field}.port"), e);
                return None;
            }
        },
    };
    let end_port = match (p.end_port, &port) {
        (None, _) => None,
        (Some(_), None) => {
            c.error(
                format!("{field}.endPort"),
                "endPort needs a numeric port: set port to the start of the range",
            );
            return None;
        }
        (Some(_), Some(PortRef::Name(_))) => {
            c.error(
                format!("{field}.endPort"),
                "endPort cannot be used with a named port: use a numeric port",
            );
            return None;
        }
        (Some(end), Some(PortRef::Number(start))) => match validate_port_number(i64::from(end)) {
            Ok(e) if e >= *start => Some(e),
            Ok(e) => {
                c.error(
                    format!("{field}.endPort"),
                    format!("endPort {e} is below port {start}: it must be >= port"),
                );
                return None;
            }
            Err(m) => {
                c.error(format!("{field}.endPort"), m);
                return None;
            }
        },
    };
    Some(PortRule {
        protocol,
        port,
        end_port,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(yaml: &str) -> Converted {
        let np: NetworkPolicy =
            serde_saphyr::from_str_with_options(yaml, crate::policy::objects::yaml_options())
                .unwrap();
        convert(&np, "default")
    }

    fn errors(yaml: &str) -> Vec<String> {
        match parse(yaml).policy {
            Ok(_) => vec![],
            Err(ps) => ps.iter().map(|p| p.to_string()).collect(),
        }
    }

    const HEAD: &str = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: p, namespace: x}\n";

    #[test]
    fn policy_types_default_to_ingress_plus_egress_when_egress_rules_exist() {
        let p = parse(&format!("{HEAD}spec:\n  podSelector: {{}}\n"))
            .policy
            .unwrap();
        assert!(p.ingress.is_some() && p.egress.is_none());
        let p = parse(&format!(
            "{HEAD}spec:\n  podSelector: {{}}\n  egress: [{{ports: [{{port: 53}}]}}]\n"
        ))
        .policy
        .unwrap();
        assert_eq!(p.ingress, Some(vec![]), "ingress isolated with no rules");
        assert!(p.egress.is_some());
        let p = parse(&format!(
            "{HEAD}spec:\n  podSelector: {{}}\n  policyTypes: [Egress]\n"
        ))
        .policy
        .unwrap();
        assert!(p.ingress.is_none());
        assert_eq!(p.egress, Some(vec![]));
    }

    #[test]
    fn protocol_defaults_to_tcp() {
        let p = parse(&format!(
            "{HEAD}spec:\n  podSelector: {{}}\n  ingress: [{{ports: [{{port: 80}}]}}]\n"
        ))
        .policy
        .unwrap();
        assert_eq!(p.ingress.unwrap()[0].ports[0].protocol, Protocol::Tcp);
    }

    #[test]
    fn rejects_what_the_api_server_rejects() {
        let cases = [
            ("ingress: [{from: [{ipBlock: {cidr: 10.0.0.0/33}}]}]", "spec.ingress[0].from[0].ipBlock.cidr"),
            ("ingress: [{from: [{ipBlock: {cidr: 10.0.0.0/8, except: [10.0.0.0/8]}}]}]", "spec.ingress[0].from[0].ipBlock.except[0]"),
            ("ingress: [{from: [{ipBlock: {cidr: 10.0.0.0/8, except: [11.0.0.0/16]}}]}]", "spec.ingress[0].from[0].ipBlock.except[0]"),
            ("ingress: [{from: [{ipBlock: {cidr: 10.0.0.0/8}, podSelector: {}}]}]", "spec.ingress[0].from[0]"),
            ("ingress: [{from: [{}]}]", "spec.ingress[0].from[0]"),
            ("egress: [{ports: [{port: 70000}]}]", "spec.egress[0].ports[0].port"),
            ("egress: [{ports: [{port: 0}]}]", "spec.egress[0].ports[0].port"),
            ("egress: [{ports: [{port: Http}]}]", "spec.egress[0].ports[0].port"),
            ("egress: [{ports: [{endPort: 90}]}]", "spec.egress[0].ports[0].endPort"),
            ("egress: [{ports: [{port: http, endPort: 90}]}]", "spec.egress[0].ports[0].endPort"),
            ("egress: [{ports: [{port: 100, endPort: 90}]}]", "spec.egress[0].ports[0].endPort"),
            ("egress: [{ports: [{port: 80, protocol: ICMP}]}]", "spec.egress[0].ports[0].protocol"),
            ("egress: [{ports: [{port: 80, protocol: tcp}]}]", "spec.egress[0].ports[0].protocol"),
            ("ingress: [{from: [{podSelector: {matchExpressions: [{key: a, operator: Equals, values: [b]}]}}]}]", "spec.ingress[0].from[0].podSelector.matchExpressions[0].operator"),
            ("ingress: [{from: [{namespaceSelector: {matchLabels: {'bad key': x}}}]}]", "spec.ingress[0].from[0].namespaceSelector.matchLabels.bad key"),
            ("policyTypes: [Inbound]", "spec.policyTypes[0]"),
        ];
        for (spec, field) in cases {
            let errs = errors(&format!("{HEAD}spec:\n  podSelector: {{}}\n  {spec}\n"));
            assert_eq!(errs.len(), 1, "{spec}: {errs:?}");
            assert!(
                errs[0].starts_with(&format!("NetworkPolicy x/p: {field}: ")),
                "{spec}: {}",
                errs[0]
            );
        }
    }

    #[test]
    fn accepts_end_port_equal_to_port_and_cidr_with_host_bits() {
        let c = parse(&format!(
            "{HEAD}spec:\n  podSelector: {{}}\n  egress: [{{to: [{{ipBlock: {{cidr: 10.1.2.3/8}}}}], ports: [{{port: 80, endPort: 80}}]}}]\n"
        ));
        assert!(c.policy.is_ok());
        assert_eq!(c.warnings.len(), 1);
    }

    #[test]
    fn both_selectors_in_one_peer_is_one_peer() {
        let p = parse(&format!(
            "{HEAD}spec:\n  podSelector: {{}}\n  ingress: [{{from: [{{podSelector: {{matchLabels: {{pod: b}}}}, namespaceSelector: {{}}}}]}}]\n"
        ))
        .policy
        .unwrap();
        let rules = p.ingress.unwrap();
        assert_eq!(rules[0].peers.len(), 1);
        assert!(matches!(
            &rules[0].peers[0],
            Peer::Pods { namespaces: NamespaceScope::Selected(s), pods } if s.is_everything() && !pods.is_everything()
        ));
    }
}

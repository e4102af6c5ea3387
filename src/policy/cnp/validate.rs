//! Validation: a decoded ClusterNetworkPolicy checked against the CRD and converted to the
//! model (rules using what sluice does not implement fail closed).

use super::{
    Action, ClusterPolicy, CnpPeer, CnpPort, CnpRule, RawCnp, RawEgressPeer, RawIngressPeer,
    RawNamespacedPod, RawProtocol, RawSpec, RawSubject, Subject, Tier, KIND, MAX_ITEMS,
};
use crate::policy::labels::{validate_dns_subdomain, Selector};
use crate::policy::model::Problem;
use crate::policy::networkpolicy::Checker;
use crate::policy::ports::{validate_port_name, Protocol};
use ipnet::IpNet;

impl Checker {
    pub(super) fn max_items(&mut self, field: &str, n: usize) {
        if n > MAX_ITEMS {
            self.error(
                field,
                format!("has {n} items; the API allows at most {MAX_ITEMS}: split it"),
            );
        }
    }

    pub(super) fn namespaced_pod(
        &mut self,
        field: &str,
        p: &RawNamespacedPod,
    ) -> (Selector, Selector) {
        let namespaces = self.selector(
            &format!("{field}.namespaceSelector"),
            &p.namespace_selector.clone().unwrap_or_default(),
        );
        let pods = match &p.pod_selector {
            Some(s) => self.selector(&format!("{field}.podSelector"), s),
            None => {
                self.error(
                    format!("{field}.podSelector"),
                    "is required (use {} to select every pod)",
                );
                Selector::everything()
            }
        };
        (namespaces, pods)
    }
}

/// The result of converting one ClusterNetworkPolicy.
pub struct Converted {
    pub policy: Result<ClusterPolicy, Vec<Problem>>,
    pub warnings: Vec<String>,
    /// The subject when it alone is valid: the pods an invalid CNP would apply to, which fail
    /// closed; None when it cannot be read (then every pod fails closed).
    pub subject: Option<Subject>,
}

/// Validates a decoded ClusterNetworkPolicy. `unknown` are the paths of fields the schema does
/// not know (from [`super::fields::unknown_fields`]): a rule carrying one fails closed.
pub fn convert(raw: &RawCnp, unknown: &[String]) -> Converted {
    let name = raw.metadata.name.clone().unwrap_or_default();
    let mut c = Checker {
        object: format!("{KIND} {name}"),
        problems: Vec::new(),
        warnings: Vec::new(),
    };
    if name.is_empty() {
        c.error("metadata.name", "is required");
    } else if let Err(e) = validate_dns_subdomain(&name) {
        c.error("metadata.name", e);
    }
    if let Some(ns) = &raw.metadata.namespace {
        c.warnings.push(format!(
            "{}: metadata.namespace {ns:?} is ignored: ClusterNetworkPolicy is cluster-scoped",
            c.object
        ));
    }
    let spec = match &raw.spec {
        Some(s) => s.clone(),
        None => {
            c.error("spec", "is required (tier, priority, subject)");
            RawSpec::default()
        }
    };
    let tier = match spec.tier.as_deref() {
        Some("Admin") => Some(Tier::Admin),
        Some("Baseline") => Some(Tier::Baseline),
        Some(other) => {
            c.error(
                "spec.tier",
                format!("unsupported value {other:?}: use Admin or Baseline"),
            );
            None
        }
        None if raw.spec.is_some() => {
            c.error("spec.tier", "is required: Admin or Baseline");
            None
        }
        None => None,
    };
    let priority = match spec.priority {
        Some(p) if (0..=1000).contains(&p) => p as u32,
        Some(p) => {
            c.error(
                "spec.priority",
                format!("{p} is out of range: use 0 to 1000 (lower is evaluated first)"),
            );
            0
        }
        None => {
            if raw.spec.is_some() {
                c.error("spec.priority", "is required: 0 to 1000");
            }
            0
        }
    };
    let before_subject = c.problems.len();
    let subject = subject(&mut c, spec.subject.as_ref(), raw.spec.is_some());
    let subject_ok = c.problems.len() == before_subject;

    let ingress_raw = spec.ingress.clone().unwrap_or_default();
    let egress_raw = spec.egress.clone().unwrap_or_default();
    c.max_items("spec.ingress", ingress_raw.len());
    c.max_items("spec.egress", egress_raw.len());
    let ingress: Vec<CnpRule> = ingress_raw
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let field = format!("spec.ingress[{i}]");
            let peers: Vec<PeerIn> = r.from.iter().flatten().map(PeerIn::Ingress).collect();
            rule(
                &mut c,
                &field,
                "from",
                r.name.as_deref(),
                r.action.as_deref(),
                r.from.is_some(),
                &peers,
                r.protocols.as_deref(),
                unknown,
            )
        })
        .collect();
    let egress: Vec<CnpRule> = egress_raw
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let field = format!("spec.egress[{i}]");
            let peers: Vec<PeerIn> = r.to.iter().flatten().map(PeerIn::Egress).collect();
            rule(
                &mut c,
                &field,
                "to",
                r.name.as_deref(),
                r.action.as_deref(),
                r.to.is_some(),
                &peers,
                r.protocols.as_deref(),
                unknown,
            )
        })
        .collect();

    for (dir, rules) in [("ingress", &ingress), ("egress", &egress)] {
        for (i, r) in rules.iter().enumerate() {
            if let Some(why) = &r.fail_closed {
                let effect = match r.action {
                    Action::Accept => "this Accept rule matches nothing",
                    Action::Deny | Action::Pass => "this rule denies everything it could match",
                };
                c.warnings.push(format!(
                    "{}: spec.{dir}[{i}]: {why}; failing closed as the API asks: {effect}",
                    c.object
                ));
            }
        }
    }

    let valid_subject = subject_ok.then(|| subject.clone()).flatten();
    let policy = match (c.problems.is_empty(), tier, subject) {
        (true, Some(tier), Some(subject)) => Ok(ClusterPolicy {
            name,
            tier,
            priority,
            subject,
            ingress,
            egress,
        }),
        _ => {
            if c.problems.is_empty() {
                c.error("spec", "is incomplete");
            }
            Err(std::mem::take(&mut c.problems))
        }
    };
    Converted {
        policy,
        warnings: c.warnings,
        subject: valid_subject,
    }
}

pub(super) fn subject(c: &mut Checker, s: Option<&RawSubject>, has_spec: bool) -> Option<Subject> {
    let Some(s) = s else {
        if has_spec {
            c.error(
                "spec.subject",
                "is required: set exactly one of namespaces or pods",
            );
        }
        return None;
    };
    match (&s.namespaces, &s.pods) {
        (Some(ns), None) => Some(Subject::Namespaces(
            c.selector("spec.subject.namespaces", ns),
        )),
        (None, Some(p)) => {
            let (namespaces, pods) = c.namespaced_pod("spec.subject.pods", p);
            Some(Subject::Pods { namespaces, pods })
        }
        (Some(_), Some(_)) => {
            c.error(
                "spec.subject",
                "sets both namespaces and pods: set exactly one",
            );
            None
        }
        (None, None) => {
            c.error(
                "spec.subject",
                "sets neither namespaces nor pods: set exactly one",
            );
            None
        }
    }
}

pub(super) enum PeerIn<'a> {
    Ingress(&'a RawIngressPeer),
    Egress(&'a RawEgressPeer),
}

#[allow(clippy::too_many_arguments)]
pub(super) fn rule(
    c: &mut Checker,
    field: &str,
    peers_key: &str,
    name: Option<&str>,
    action: Option<&str>,
    peers_given: bool,
    peers_raw: &[PeerIn],
    protocols: Option<&[RawProtocol]>,
    unknown: &[String],
) -> CnpRule {
    let mut fail_closed: Vec<String> = Vec::new();
    if let Some(n) = name {
        if n.chars().count() > 100 {
            c.error(
                format!("{field}.name"),
                format!("is {} characters long: at most 100", n.chars().count()),
            );
        }
    }
    let action = match action {
        Some("Accept") => Action::Accept,
        Some("Deny") => Action::Deny,
        Some("Pass") => Action::Pass,
        Some(other) => {
            c.error(
                format!("{field}.action"),
                format!("unsupported value {other:?}: use Accept, Deny or Pass"),
            );
            Action::Deny
        }
        None => {
            c.error(
                format!("{field}.action"),
                "is required: Accept, Deny or Pass",
            );
            Action::Deny
        }
    };
    let peers_field = format!("{field}.{peers_key}");
    if !peers_given || peers_raw.is_empty() {
        c.error(
            &peers_field,
            "must list at least one peer (the API requires it)",
        );
    }
    c.max_items(&peers_field, peers_raw.len());
    let mut peers = Vec::new();
    let mut addressed_peer = false;
    for (j, p) in peers_raw.iter().enumerate() {
        let pf = format!("{peers_field}[{j}]");
        let (namespaces, pods, nodes, networks, domains) = match p {
            PeerIn::Ingress(p) => (p.namespaces.as_ref(), p.pods.as_ref(), None, None, None),
            PeerIn::Egress(p) => (
                p.namespaces.as_ref(),
                p.pods.as_ref(),
                p.nodes.as_ref(),
                p.networks.as_ref(),
                p.domain_names.as_ref(),
            ),
        };
        let set = [
            namespaces.is_some(),
            pods.is_some(),
            nodes.is_some(),
            networks.is_some(),
            domains.is_some(),
        ]
        .iter()
        .filter(|b| **b)
        .count();
        if set > 1 {
            c.error(
                &pf,
                "sets more than one peer field: set exactly one (namespaces, pods, networks, nodes or domainNames) per peer, and list several peers instead",
            );
            continue;
        }
        if set == 0 {
            // Only unknown fields (or nothing): the API says an implementation must then fail
            // closed, because the peer may be of a newer CRD version.
            let has_unknown = unknown.iter().any(|u| u.starts_with(&format!("{pf}.")));
            if has_unknown {
                fail_closed.push(format!("{pf} has only fields sluice does not know"));
            } else {
                c.error(
                    &pf,
                    "is empty: set exactly one of namespaces, pods, networks, nodes or domainNames",
                );
            }
            continue;
        }
        if let Some(ns) = namespaces {
            peers.push(CnpPeer::Namespaces(
                c.selector(&format!("{pf}.namespaces"), ns),
            ));
        }
        if let Some(p) = pods {
            let (namespaces, pods) = c.namespaced_pod(&format!("{pf}.pods"), p);
            peers.push(CnpPeer::Pods { namespaces, pods });
        }
        if let Some(n) = nodes {
            addressed_peer = true;
            c.selector(&format!("{pf}.nodes"), n);
            fail_closed.push(format!(
                "{pf}.nodes: nodes peers (experimental) are not implemented by sluice yet"
            ));
        }
        if let Some(d) = domains {
            addressed_peer = true;
            let df = format!("{pf}.domainNames");
            if d.is_empty() {
                c.error(&df, "must list at least one domain name");
            }
            c.max_items(&df, d.len());
            for (k, name) in d.iter().enumerate() {
                if !valid_domain_name(name) {
                    c.error(
                        format!("{df}[{k}]"),
                        format!(
                            "{name:?} is not a domain name (e.g. example.com or *.example.com)"
                        ),
                    );
                }
            }
            fail_closed.push(format!(
                "{pf}.domainNames: domainNames peers (experimental) are not implemented by sluice yet"
            ));
        }
        if let Some(nets) = networks {
            addressed_peer = true;
            let nf = format!("{pf}.networks");
            if nets.is_empty() {
                c.error(&nf, "must list at least one CIDR");
            }
            c.max_items(&nf, nets.len());
            let mut parsed = Vec::new();
            for (k, s) in nets.iter().enumerate() {
                match s.parse::<IpNet>() {
                    Ok(net) if net.trunc() == net => {
                        if !parsed.contains(&net) {
                            parsed.push(net)
                        } else {
                            c.error(format!("{nf}[{k}]"), format!("{s} is listed twice"));
                        }
                    }
                    Ok(net) => c.error(
                        format!("{nf}[{k}]"),
                        format!(
                            "{s:?} has host bits set; the API accepts only the canonical form: write {}",
                            net.trunc()
                        ),
                    ),
                    Err(_) => c.error(
                        format!("{nf}[{k}]"),
                        format!("{s:?} is not a CIDR: write an address and prefix length, e.g. 10.0.0.0/16"),
                    ),
                }
            }
            peers.push(CnpPeer::Networks(parsed));
        }
    }
    let mut ports = Vec::new();
    let mut named = false;
    if let Some(protocols) = protocols {
        let prf = format!("{field}.protocols");
        if protocols.is_empty() {
            c.error(
                &prf,
                "is empty: leave it out to match every port, or list at least one protocol",
            );
        }
        c.max_items(&prf, protocols.len());
        for (k, p) in protocols.iter().enumerate() {
            let f = format!("{prf}[{k}]");
            let set = [
                p.tcp.is_some(),
                p.udp.is_some(),
                p.sctp.is_some(),
                p.destination_named_port.is_some(),
            ]
            .iter()
            .filter(|b| **b)
            .count();
            if set != 1 {
                if set == 0 && unknown.iter().any(|u| u.starts_with(&format!("{f}."))) {
                    fail_closed.push(format!("{f} has only fields sluice does not know"));
                } else {
                    c.error(
                        &f,
                        "set exactly one of tcp, udp, sctp or destinationNamedPort",
                    );
                }
                continue;
            }
            for (proto, key, pp) in [
                (Protocol::Tcp, "tcp", &p.tcp),
                (Protocol::Udp, "udp", &p.udp),
                (Protocol::Sctp, "sctp", &p.sctp),
            ] {
                let Some(pp) = pp else { continue };
                let pf = format!("{f}.{key}.destinationPort");
                let Some(port) = &pp.destination_port else {
                    if unknown
                        .iter()
                        .any(|u| u.starts_with(&format!("{f}.{key}.")))
                    {
                        fail_closed.push(format!("{f}.{key} has only fields sluice does not know"));
                    } else {
                        c.error(&pf, "is required (a number or a range)");
                    }
                    continue;
                };
                match (port.number, &port.range) {
                    (Some(n), None) => match port_number(n) {
                        Ok(n) => ports.push(CnpPort::Range {
                            protocol: proto,
                            lo: n,
                            hi: n,
                        }),
                        Err(e) => c.error(format!("{pf}.number"), e),
                    },
                    (None, Some(r)) => {
                        let start = r.start.map(port_number);
                        let end = r.end.map(port_number);
                        match (start, end) {
                            (Some(Ok(lo)), Some(Ok(hi))) if lo < hi => {
                                ports.push(CnpPort::Range {
                                    protocol: proto,
                                    lo,
                                    hi,
                                })
                            }
                            (Some(Ok(lo)), Some(Ok(hi))) => c.error(
                                format!("{pf}.range"),
                                format!("start {lo} must be less than end {hi} (for one port use number)"),
                            ),
                            (s, e) => {
                                for (key, v) in [("start", s), ("end", e)] {
                                    match v {
                                        None => c.error(
                                            format!("{pf}.range.{key}"),
                                            "is required",
                                        ),
                                        Some(Err(e)) => {
                                            c.error(format!("{pf}.range.{key}"), e)
                                        }
                                        Some(Ok(_)) => {}
                                    }
                                }
                            }
                        }
                    }
                    (Some(_), Some(_)) => {
                        c.error(&pf, "sets both number and range: set exactly one")
                    }
                    (None, None) => {
                        if unknown.iter().any(|u| u.starts_with(&format!("{pf}."))) {
                            fail_closed.push(format!("{pf} has only fields sluice does not know"));
                        } else {
                            c.error(&pf, "set exactly one of number or range")
                        }
                    }
                }
            }
            if let Some(n) = &p.destination_named_port {
                named = true;
                match validate_port_name(n) {
                    Ok(()) => ports.push(CnpPort::Named(n.clone())),
                    Err(e) => c.error(format!("{f}.destinationNamedPort"), e),
                }
            }
        }
    }
    if named && addressed_peer {
        c.error(
            field,
            "networks/nodes/domainNames peers cannot be combined with destinationNamedPort (addresses have no named ports): put them in separate rules",
        );
    }
    let prefix = format!("{field}.");
    for u in unknown.iter().filter(|u| u.starts_with(&prefix)) {
        fail_closed.push(format!("unknown field {u}"));
    }
    fail_closed.dedup();
    CnpRule {
        name: name.map(str::to_string),
        action,
        peers,
        ports,
        fail_closed: (!fail_closed.is_empty()).then(|| fail_closed.join("; ")),
    }
}

pub(super) fn port_number(n: i64) -> Result<u16, String> {
    if (1..=65535).contains(&n) {
        Ok(n as u16)
    } else {
        Err(format!("{n} is out of range: use 1 to 65535"))
    }
}

/// The CRD's DomainName pattern: labels of letters, digits, `-` and `_`, an optional `*.`
/// prefix, an optional trailing dot, at least two labels.
pub(super) fn valid_domain_name(s: &str) -> bool {
    let s = s.strip_prefix("*.").unwrap_or(s);
    let s = s.strip_suffix('.').unwrap_or(s);
    let labels: Vec<&str> = s.split('.').collect();
    labels.len() >= 2
        && labels.iter().all(|l| {
            let b = l.as_bytes();
            !b.is_empty()
                && b[0].is_ascii_alphanumeric()
                && b[b.len() - 1].is_ascii_alphanumeric()
                && b.iter()
                    .all(|c| c.is_ascii_alphanumeric() || *c == b'-' || *c == b'_')
        })
}

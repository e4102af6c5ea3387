//! Protocols, port clauses of policy rules, and the container ports pods declare.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Protocol {
    Tcp,
    Udp,
    Sctp,
}

impl Protocol {
    pub const ALL: [Protocol; 3] = [Protocol::Tcp, Protocol::Udp, Protocol::Sctp];

    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "TCP",
            Protocol::Udp => "UDP",
            Protocol::Sctp => "SCTP",
        }
    }

    /// nftables' name for the layer-4 protocol.
    pub fn nft_name(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
            Protocol::Sctp => "sctp",
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Protocol {
    type Err = String;
    /// Exact, upper-case names as the API server requires (it rejects "tcp").
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "TCP" => Ok(Protocol::Tcp),
            "UDP" => Ok(Protocol::Udp),
            "SCTP" => Ok(Protocol::Sctp),
            other => Err(format!(
                "unsupported protocol {other:?}: use TCP, UDP or SCTP (upper case)"
            )),
        }
    }
}

/// The `port` of a rule's port clause: a number or the name of a container port.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(untagged)]
pub enum PortRef {
    Number(u16),
    Name(String),
}

impl fmt::Display for PortRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PortRef::Number(n) => write!(f, "{n}"),
            PortRef::Name(n) => write!(f, "{n}"),
        }
    }
}

/// One entry of a rule's `ports`, validated and defaulted (protocol TCP).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PortRule {
    pub protocol: Protocol,
    /// None: every port of the protocol.
    pub port: Option<PortRef>,
    /// Only with a numeric port; inclusive.
    pub end_port: Option<u16>,
}

impl PortRule {
    /// The numeric range this clause covers, if it is numeric (or all ports).
    pub fn numeric_range(&self) -> Option<(u16, u16)> {
        match &self.port {
            None => Some((1, 65535)),
            Some(PortRef::Number(p)) => Some((*p, self.end_port.unwrap_or(*p))),
            Some(PortRef::Name(_)) => None,
        }
    }
}

impl fmt::Display for PortRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.port, self.end_port) {
            (None, _) => write!(f, "any/{}", self.protocol),
            (Some(p), Some(end)) => write!(f, "{p}-{end}/{}", self.protocol),
            (Some(p), None) => write!(f, "{p}/{}", self.protocol),
        }
    }
}

/// A port a pod's container declares. Named ports are how policies refer to them.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ContainerPort {
    pub name: Option<String>,
    pub port: u16,
    pub protocol: Protocol,
}

/// IANA service name, as the API server checks named ports: 1-15 characters, lowercase
/// alphanumerics and '-', at least one letter, no leading, trailing or double '-'.
pub fn validate_port_name(name: &str) -> Result<(), String> {
    let problem = if name.is_empty() || name.len() > 15 {
        Some("must be 1 to 15 characters")
    } else if !name
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
    {
        Some("may contain only lowercase letters, digits and '-'")
    } else if !name.chars().any(|c| c.is_ascii_lowercase()) {
        Some("must contain at least one letter")
    } else if name.starts_with('-') || name.ends_with('-') || name.contains("--") {
        Some("must not start or end with '-' nor contain '--'")
    } else {
        None
    };
    match problem {
        Some(p) => Err(format!("port name {name:?} {p}")),
        None => Ok(()),
    }
}

/// Numeric ports are 1..=65535.
pub fn validate_port_number(n: i64) -> Result<u16, String> {
    if (1..=65535).contains(&n) {
        Ok(n as u16)
    } else {
        Err(format!("port {n} is out of range: use 1 to 65535"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn port_names() {
        for ok in ["http", "serve-80-tcp", "a", "dns-tcp"] {
            assert!(validate_port_name(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "HTTP",
            "80",
            "-http",
            "http-",
            "ht--tp",
            "abcdefghijklmnop",
        ] {
            assert!(validate_port_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn protocol_names_are_exact() {
        assert_eq!("TCP".parse::<Protocol>(), Ok(Protocol::Tcp));
        assert!("tcp".parse::<Protocol>().is_err());
        assert!("ICMP".parse::<Protocol>().is_err());
    }

    proptest! {
        #[test]
        fn numeric_range_covers_exactly_port_to_end_port(p in 1u16.., span in 0u16..100, probe in 1u16..) {
            let end = p.saturating_add(span);
            let rule = PortRule { protocol: Protocol::Tcp, port: Some(PortRef::Number(p)), end_port: Some(end) };
            let (lo, hi) = rule.numeric_range().unwrap();
            prop_assert_eq!(lo <= probe && probe <= hi, probe >= p && probe <= end);
        }

        #[test]
        fn port_numbers_in_range(n in -10i64..70000) {
            prop_assert_eq!(validate_port_number(n).is_ok(), (1..=65535).contains(&n));
        }
    }
}

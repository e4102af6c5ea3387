//! ipBlock peers: CIDR parsing as the API server does it, membership, and the arithmetic that
//! turns `cidr` minus `except` into disjoint prefixes (nftables interval sets reject overlaps).
//!
//! We use `ipnet` rather than `ipnetwork`: it has prefix aggregation (`IpNet::aggregate`),
//! subnet iteration and `trunc`, which are exactly the operations ipBlock needs, and it is
//! the more widely used and maintained of the two.

use std::net::IpAddr;

use ipnet::IpNet;
use serde::Serialize;

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct IpBlock {
    /// Normalised (host bits cleared).
    pub cidr: IpNet,
    /// Each strictly inside `cidr`, normalised.
    pub except: Vec<IpNet>,
}

impl IpBlock {
    pub fn contains(&self, ip: IpAddr) -> bool {
        self.cidr.contains(&ip) && !self.except.iter().any(|e| e.contains(&ip))
    }

    /// `cidr` minus every `except`, as disjoint prefixes in ascending order.
    pub fn disjoint_prefixes(&self) -> Vec<IpNet> {
        let mut out = Vec::new();
        subtract(self.cidr, &self.except, &mut out);
        IpNet::aggregate(&out)
    }

    /// Human-readable reason why `ip` is not in this block.
    pub fn explain_miss(&self, ip: IpAddr) -> String {
        if !self.cidr.contains(&ip) {
            format!("ipBlock {} does not contain {ip}", self.cidr)
        } else {
            let e = self.except.iter().find(|e| e.contains(&ip));
            match e {
                Some(e) => format!("ipBlock {} excepts {e}, which contains {ip}", self.cidr),
                None => format!("ipBlock {} contains {ip}", self.cidr),
            }
        }
    }
}

/// Pushes the parts of `net` not covered by `holes` by splitting in halves around each hole.
fn subtract(net: IpNet, holes: &[IpNet], out: &mut Vec<IpNet>) {
    let relevant: Vec<IpNet> = holes
        .iter()
        .filter(|h| h.contains(&net.network()) || net.contains(&h.network()))
        .copied()
        .collect();
    if relevant.is_empty() {
        out.push(net);
        return;
    }
    if relevant
        .iter()
        .any(|h| h.prefix_len() <= net.prefix_len() && h.contains(&net.network()))
    {
        return; // a hole covers all of net
    }
    if let Ok(halves) = net.subnets(net.prefix_len() + 1) {
        for half in halves {
            subtract(half, &relevant, out);
        }
    }
}

/// Parses a CIDR the way the API server accepts it: an address and a prefix length; host bits
/// may be set (legacy validation accepts them), in which case we clear them and warn.
pub fn parse_cidr(s: &str) -> Result<(IpNet, Option<String>), String> {
    let net: IpNet = s.parse().map_err(|_| {
        format!("{s:?} is not a CIDR: write an address and prefix length, e.g. 10.0.0.0/16")
    })?;
    let normal = net.trunc();
    let warning =
        (normal != net).then(|| format!("{s:?} has host bits set; it is treated as {normal}"));
    Ok((normal, warning))
}

/// Checks that `except` lies strictly inside `cidr` (same family, longer prefix).
pub fn check_except(cidr: IpNet, except: IpNet) -> Result<(), String> {
    let same_family = matches!(
        (cidr, except),
        (IpNet::V4(_), IpNet::V4(_)) | (IpNet::V6(_), IpNet::V6(_))
    );
    if !same_family || except.prefix_len() <= cidr.prefix_len() || !cidr.contains(&except) {
        return Err(format!(
            "except {except} must be strictly inside cidr {cidr} (same family, longer prefix)"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::net::Ipv4Addr;

    fn block(cidr: &str, except: &[&str]) -> IpBlock {
        IpBlock {
            cidr: cidr.parse().unwrap(),
            except: except.iter().map(|e| e.parse().unwrap()).collect(),
        }
    }

    #[test]
    fn except_is_excluded() {
        let b = block("10.0.0.0/8", &["10.1.0.0/16"]);
        assert!(b.contains("10.2.3.4".parse().unwrap()));
        assert!(!b.contains("10.1.3.4".parse().unwrap()));
        assert!(!b.contains("11.0.0.1".parse().unwrap()));
        assert_eq!(
            b.explain_miss("10.1.3.4".parse().unwrap()),
            "ipBlock 10.0.0.0/8 excepts 10.1.0.0/16, which contains 10.1.3.4"
        );
    }

    #[test]
    fn host_bits_are_cleared_with_a_warning() {
        let (net, warn) = parse_cidr("10.244.1.7/4").unwrap();
        assert_eq!(net.to_string(), "0.0.0.0/4");
        assert!(warn.is_some());
        assert!(parse_cidr("10.0.0.1").is_err());
        assert!(parse_cidr("10.0.0.0/33").is_err());
    }

    #[test]
    fn except_must_be_strictly_inside() {
        let c: IpNet = "10.0.0.0/8".parse().unwrap();
        assert!(check_except(c, "10.1.0.0/16".parse().unwrap()).is_ok());
        assert!(check_except(c, "10.0.0.0/8".parse().unwrap()).is_err());
        assert!(check_except(c, "11.0.0.0/16".parse().unwrap()).is_err());
        assert!(check_except(c, "fd00::/64".parse().unwrap()).is_err());
    }

    #[test]
    fn disjoint_prefixes_of_a_slash_32_hole() {
        let b = block("10.0.0.0/30", &["10.0.0.1/32"]);
        let got: Vec<String> = b
            .disjoint_prefixes()
            .iter()
            .map(|n| n.to_string())
            .collect();
        assert_eq!(got, ["10.0.0.0/32", "10.0.0.2/31"]);
    }

    proptest! {
        /// Every address is in the disjoint prefixes exactly when `contains` says so, and the
        /// prefixes never overlap.
        #[test]
        fn disjoint_prefixes_match_membership(
            base in any::<u32>(), len in 20u8..28,
            holes in prop::collection::vec((any::<u32>(), 0u8..8), 0..4),
            probes in prop::collection::vec(any::<u32>(), 0..32),
        ) {
            let cidr = IpNet::new(Ipv4Addr::from(base).into(), len).unwrap().trunc();
            let size = 1u32 << (32 - len);
            let except: Vec<IpNet> = holes.iter().map(|(off, extra)| {
                let ip = u32::from(match cidr.network() { IpAddr::V4(a) => a, _ => unreachable!() }) + off % size;
                IpNet::new(Ipv4Addr::from(ip).into(), (len + 1 + extra).min(32)).unwrap().trunc()
            }).collect();
            let b = IpBlock { cidr, except };
            let parts = b.disjoint_prefixes();
            for w in parts.windows(2) {
                prop_assert!(!w[0].contains(&w[1].network()) && !w[1].contains(&w[0].network()));
            }
            let start = match cidr.network() { IpAddr::V4(a) => u32::from(a), _ => unreachable!() };
            for p in probes {
                // half the probes inside the block, half anywhere
                let ip: IpAddr = Ipv4Addr::from(if p % 2 == 0 { start.wrapping_add(p % size) } else { p }).into();
                prop_assert_eq!(parts.iter().any(|n| n.contains(&ip)), b.contains(ip));
            }
        }
    }
}

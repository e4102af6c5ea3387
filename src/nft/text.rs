//! nft text syntax for a [`NodeRuleset`]: what `sluice compile --output nft` prints, what
//! `nft -c -f -` checks, and what people read. The JSON renderer expresses the same IR.

use std::fmt::Write as _;
use std::net::IpAddr;

use ipnet::IpNet;

use crate::compile::ir::*;

pub fn render(rs: &NodeRuleset) -> String {
    let mut s = format!(
        "# sluice ruleset for node {} ({} attachment)\n",
        rs.node,
        match rs.attach {
            Attach::Routed => "routed",
            Attach::Bridged => "bridged",
        }
    );
    for w in &rs.warnings {
        let _ = writeln!(s, "# warning: {w}");
    }
    for t in &rs.tables {
        // Declare, delete and re-create: one atomic replacement when run with `nft -f`.
        let _ = writeln!(s, "table {} {}", t.family.name(), t.name);
        let _ = writeln!(s, "delete table {} {}", t.family.name(), t.name);
        s.push_str(&render_table(t));
    }
    s
}

pub fn render_table(t: &Table) -> String {
    let mut s = format!("table {} {} {{\n", t.family.name(), t.name);
    for (name, set) in &t.sets {
        render_set(&mut s, name, set);
    }
    for (name, chain) in &t.chains {
        render_chain(&mut s, t.family, name, chain);
    }
    s.push_str("}\n");
    s
}

fn quote(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "'"))
}

/// A comment as nftables stores it (clipped).
fn comment(s: &str) -> String {
    quote(&clip_comment(s))
}

fn set_type(ty: SetType) -> (&'static str, Option<&'static str>, bool) {
    // (key type, map data type, interval)
    match ty {
        SetType::Addr(Family::V4) => ("ipv4_addr", None, false),
        SetType::Addr(Family::V6) => ("ipv6_addr", None, false),
        SetType::Prefixes(Family::V4) => ("ipv4_addr", None, true),
        SetType::Prefixes(Family::V6) => ("ipv6_addr", None, true),
        SetType::NamedPort(Family::V4) => ("ipv4_addr . inet_proto . inet_service", None, false),
        SetType::NamedPort(Family::V6) => ("ipv6_addr . inet_proto . inet_service", None, false),
        SetType::IfnameVerdict => ("ifname", Some("verdict"), false),
        SetType::AddrVerdict(Family::V4) => ("ipv4_addr", Some("verdict"), false),
        SetType::AddrVerdict(Family::V6) => ("ipv6_addr", Some("verdict"), false),
    }
}

fn prefix(n: &IpNet) -> String {
    if n.prefix_len() == n.max_prefix_len() {
        n.addr().to_string()
    } else {
        n.to_string()
    }
}

pub fn element(e: &Element) -> String {
    match e {
        Element::Addr(a) => a.to_string(),
        Element::Prefix(n) => prefix(n),
        Element::NamedPort(a, p, port) => format!("{a} . {} . {port}", p.nft_name()),
        Element::IfnameJump(i, c) => format!("{} : jump {c}", quote(i)),
        Element::AddrJump(a, c) => format!("{a} : jump {c}"),
    }
}

fn render_set(s: &mut String, name: &str, set: &Set) {
    let (key, data, interval) = set_type(set.ty);
    let kind = if data.is_some() { "map" } else { "set" };
    let _ = writeln!(s, "\t{kind} {name} {{");
    match data {
        Some(d) => {
            let _ = writeln!(s, "\t\ttype {key} : {d}");
        }
        None => {
            let _ = writeln!(s, "\t\ttype {key}");
        }
    }
    if interval {
        s.push_str("\t\tflags interval\n");
    }
    if let Some(c) = &set.comment {
        let _ = writeln!(s, "\t\tcomment {}", comment(c));
    }
    if !set.elements.is_empty() {
        let items: Vec<String> = set.elements.iter().map(element).collect();
        let _ = writeln!(s, "\t\telements = {{ {} }}", items.join(",\n\t\t\t     "));
    }
    s.push_str("\t}\n\n");
}

fn render_chain(s: &mut String, family: TableFamily, name: &str, chain: &Chain) {
    let _ = writeln!(s, "\tchain {name} {{");
    if let Some(c) = &chain.comment {
        let _ = writeln!(s, "\t\t# {c}");
    }
    if let Some(b) = &chain.base {
        let prio = match b.priority {
            0 => "filter".to_string(),
            p if p < 0 => format!("filter - {}", -p),
            p => format!("filter + {p}"),
        };
        let _ = family;
        let _ = writeln!(
            s,
            "\t\ttype filter hook {} priority {prio}; policy accept;",
            b.hook.name()
        );
    }
    for r in &chain.rules {
        let _ = writeln!(s, "\t\t{}", rule(r));
    }
    s.push_str("\t}\n\n");
}

fn addr_list(addrs: &[IpNet]) -> String {
    if addrs.len() == 1 {
        prefix(&addrs[0])
    } else {
        let items: Vec<String> = addrs.iter().map(prefix).collect();
        format!("{{ {} }}", items.join(", "))
    }
}

pub fn match_text(m: &Match) -> String {
    match m {
        Match::CtState(states) => format!("ct state {}", states.join(",")),
        Match::AddrInSet { family, side, set } => {
            format!("{} {} @{set}", family.nft(), side.addr_field())
        }
        Match::AddrIs { side, addr } => {
            format!("{} {} {addr}", Family::of(addr).nft(), side.addr_field())
        }
        Match::AddrNotIn {
            family,
            side,
            addrs,
        } => {
            format!(
                "{} {} != {}",
                family.nft(),
                side.addr_field(),
                addr_list(addrs)
            )
        }
        Match::L4Proto(p) => format!("meta l4proto {}", p.nft_name()),
        Match::DportIn(ranges) => {
            let items: Vec<String> = ranges
                .iter()
                .map(|(lo, hi)| {
                    if lo == hi {
                        lo.to_string()
                    } else {
                        format!("{lo}-{hi}")
                    }
                })
                .collect();
            if items.len() == 1 {
                format!("th dport {}", items[0])
            } else {
                format!("th dport {{ {} }}", items.join(", "))
            }
        }
        Match::NamedPortInSet { family, set } => {
            format!("{} daddr . meta l4proto . th dport @{set}", family.nft())
        }
        Match::Ifname { side, name } => format!("{} {}", side.ifname_key(), quote(name)),
        Match::EtherProto(p) => format!("meta protocol {p}"),
        Match::EtherSaddrNot(mac) => format!("ether saddr != {mac}"),
        Match::ArpSaddrIpNot(ip) => format!("arp saddr ip != {ip}"),
    }
}

pub fn verdict_text(v: &Verdict) -> String {
    match v {
        Verdict::Accept => "accept".into(),
        Verdict::Drop => "drop".into(),
        Verdict::Jump(c) => format!("jump {c}"),
        Verdict::Return => "return".into(),
        Verdict::IfnameVmap { side, map } => format!("{} vmap @{map}", side.ifname_key()),
        Verdict::AddrVmap { family, side, map } => {
            format!("{} {} vmap @{map}", family.nft(), side.addr_field())
        }
    }
}

pub fn rule(r: &Rule) -> String {
    let mut parts: Vec<String> = r.matches.iter().map(match_text).collect();
    parts.push(verdict_text(&r.verdict));
    if let Some(c) = &r.comment {
        parts.push(format!("comment {}", comment(c)));
    }
    parts.join(" ")
}

/// An address as nft prints it (used by tests comparing with `nft list`).
pub fn addr(a: &IpAddr) -> String {
    a.to_string()
}

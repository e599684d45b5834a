//! The switch without an nginx reload (`[shim] switch = "nftables"`), rendered purely.
//!
//! nginx's upstream for a proxied process lists the process's stable loopback address
//! ([`crate::config::stable_address`], ports from [`crate::config::STABLE_PORT`]), written
//! once ([`render_stable_upstream`]). The kernel maps that address to the instances: table
//! `ip shim` holds a `nat` chain on the output hook that dispatches by destination address
//! (verdict map `dispatch`) to one chain per process (`svc_<service>/<process>`), whose only
//! rule DNATs by destination port: the upstream lists one *slot* per instance of the
//! process's count (`127.X.Y.Z:1`, `:2`, …), and slot N leads to the N-th instance (to one of
//! the others, in turn, when fewer run). So nginx balances across the slots and its passive
//! failure detection (`max_fails=1 fail_timeout=2s`, the site's `proxy_next_upstream` and
//! `proxy_read_timeout`) takes a hung instance's slot out of rotation on its first failed
//! request, as it does under `reload`. A switch is one `nft -f`
//! script ([`render_script`]) that flushes that chain and adds the new rule: one transaction,
//! so every new connection sees either the old rule or the new one, and conntrack keeps the
//! established flows (nginx's keep-alive connections to the old instances) where they are
//! while those drain. This is what kube-proxy's nftables mode does for Services
//! (<https://kubernetes.io/blog/2025/02/28/nftables-kube-proxy/>).
//!
//! A closed process (a stopped service, or no running instance) is its chain flushed: the
//! stable address then reaches nothing (port 1) and nginx answers 502. The rule's comment
//! names the deployment tag and revision, so that recovery reads back from the kernel what
//! nginx is pointed at.
//!
//! Rules are data: a [`Target`] becomes a [`Rule`] ([`plan_rule`]), which renders to the
//! script's text; what the kernel holds is read back from `nft -j list chain` (the JSON
//! schema of libnftables-json(5)) with serde into a [`ChainRule`] ([`parse_chain_json`]), never
//! from `nft list`'s text. (The `nftables` crate speaks the same schema, but applying its JSON
//! would change the script that is applied today and pinned by the snapshot; reading needs
//! three of its objects.)

use std::net::{IpAddr, Ipv4Addr};

use serde::Deserialize;

use super::proxy::{Pointer, Serving};
use super::Endpoint;
use crate::config::{stable_address, STABLE_PORT};

/// The nftables table shim owns (family `ip`).
pub const TABLE: &str = "shim";

/// nft comments hold at most 128 bytes.
const COMMENT_MAX: usize = 128;

/// The chain of one proxied process. Service ids and process names are lowercase letters,
/// digits, `_` and `-`, none holds `/`: so two processes never share a chain.
pub fn chain_name(service: &str, process: &str) -> String {
    format!("svc_{service}/{process}")
}

/// Where nginx sends a process's requests under nftables: `127.X.Y.Z:1` (its first slot).
pub fn stable_endpoint(service: &str, process: &str) -> String {
    format!("{}:{STABLE_PORT}", stable_address(service, process))
}

/// The upstream file under nftables: one server per slot (`slots`, the process's count, at
/// least 1) on the stable address, rewritten only when the count changes, never by a switch.
/// It starts with [`crate::plan::upstream::HEADER`] like every file shim owns, and names no
/// revision (what serves is in the kernel's rule).
pub fn render_stable_upstream(
    upstream: &str,
    service: &str,
    process: &str,
    slots: usize,
) -> String {
    let addr = stable_address(service, process);
    let servers: String = (0..slots.max(1))
        .map(|i| {
            let port = usize::from(STABLE_PORT) + i;
            format!("    server {addr}:{port} max_fails=1 fail_timeout=2s;\n")
        })
        .collect();
    format!(
        "{}{service}, process {process}, switch nftables.\n\
         # Do not edit. Requests go to the stable address's slots below; `nft list chain ip {TABLE} {}`\n\
         # shows the instance each slot leads to (shim replaces that rule at each upgrade).\n\
         upstream {upstream} {{\n{servers}}}\n",
        crate::plan::upstream::HEADER,
        chain_name(service, process),
    )
}

/// What one process's chain is to hold after a script.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub service: String,
    pub process: String,
    pub revision: String,
    /// The deployment tag of the process's instances ("" for untagged ones).
    pub deployment: String,
    /// Where the instances answer; empty: the process is closed (chain flushed).
    pub endpoints: Vec<Endpoint>,
    /// How many slots the upstream file lists (the process's count).
    pub slots: usize,
}

impl Target {
    /// The chain's target for `to` (`slots`: the process's count).
    pub fn new(service: &str, process: &str, to: &Pointer, slots: usize) -> Target {
        let (revision, deployment, endpoints) = match to {
            Pointer::Closed => (String::new(), String::new(), Vec::new()),
            Pointer::Serving(s) => (
                s.revision.clone(),
                s.deployment.clone(),
                s.endpoints.clone(),
            ),
        };
        Target {
            service: service.into(),
            process: process.into(),
            revision,
            deployment,
            endpoints,
            slots,
        }
    }

    /// What the chain points at once this target is applied.
    pub fn pointer(&self) -> Pointer {
        if self.endpoints.is_empty() {
            return Pointer::Closed;
        }
        Pointer::serving(&self.revision, &self.deployment, self.endpoints.clone())
    }
}

/// The comment of a process's rule: `deployment <tag> revision <rev>` (cut at 128 bytes).
pub fn render_comment(deployment: &str, revision: &str) -> String {
    let mut c = format!("deployment {deployment} revision {revision}");
    c.truncate(COMMENT_MAX);
    c
}

/// The DNAT rule of one process's chain, as data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    /// The process's stable address: the destination the rule matches.
    pub daddr: Ipv4Addr,
    /// Slot (destination port, from [`STABLE_PORT`]) to instance, in slot order.
    pub map: Vec<(u16, Endpoint)>,
    pub comment: String,
}

impl Rule {
    /// The rule as `nft` reads it after `add rule ip <table> <chain>`.
    pub fn render(&self) -> String {
        let map: Vec<String> = self
            .map
            .iter()
            .map(|(slot, e)| format!("{slot} : {} . {}", e.ip, e.port))
            .collect();
        format!(
            "ip daddr {} dnat to tcp dport map {{ {} }} comment \"{}\"",
            self.daddr,
            map.join(", "),
            self.comment
        )
    }

    /// What the chain says once it holds this rule (the fake nftables' listing).
    #[cfg(test)]
    pub fn read_back(&self) -> ChainRule {
        let all: Vec<Endpoint> = self.map.iter().map(|(_, e)| *e).collect();
        chain_rule(all, self.map.len(), &self.comment).unwrap_or_default()
    }
}

/// The rule of a process with instances at `t.endpoints` (None: closed, no rule): slot N
/// (destination port N, from 1) to the N-th instance, round the instances again when there
/// are more slots.
pub fn plan_rule(t: &Target) -> Option<Rule> {
    if t.endpoints.is_empty() {
        return None;
    }
    let slots = t.slots.max(t.endpoints.len()).max(1);
    let map = (0..slots)
        .map(|i| {
            // STABLE_PORT + i stays far below u16::MAX: slots is a process's count.
            let slot = STABLE_PORT.saturating_add(u16::try_from(i).unwrap_or(u16::MAX));
            (slot, t.endpoints[i % t.endpoints.len()])
        })
        .collect();
    Some(Rule {
        daddr: stable_address(&t.service, &t.process),
        map,
        comment: render_comment(&t.deployment, &t.revision),
    })
}

/// The DNAT rule of a process with instances (not none), as the script writes it.
#[cfg(test)]
pub fn render_rule(t: &Target) -> String {
    plan_rule(t).map(|r| r.render()).unwrap_or_default()
}

/// The whole `nft -f -` script that points each of `targets` at its instances, in one
/// transaction. Idempotent: the table, map and chains are declared (a no-op when they
/// exist), the base chain's one rule re-added after a flush, each process's dispatch
/// element added (a no-op when present), its chain flushed and its rule added.
pub fn render_script(targets: &[Target]) -> String {
    let mut s = format!(
        "table ip {TABLE} {{\n    map dispatch {{ type ipv4_addr : verdict; }}\n    \
         chain nat {{ type nat hook output priority -100; policy accept; }}\n"
    );
    for t in targets {
        s.push_str(&format!(
            "    chain {} {{ }}\n",
            chain_name(&t.service, &t.process)
        ));
    }
    s.push_str(&format!(
        "}}\nflush chain ip {TABLE} nat\nadd rule ip {TABLE} nat ip daddr vmap @dispatch\n"
    ));
    for t in targets {
        let chain = chain_name(&t.service, &t.process);
        s.push_str(&format!(
            "add element ip {TABLE} dispatch {{ {} : jump {chain} }}\nflush chain ip {TABLE} {chain}\n",
            stable_address(&t.service, &t.process)
        ));
        if let Some(rule) = plan_rule(t) {
            s.push_str(&format!("add rule ip {TABLE} {chain} {}\n", rule.render()));
        }
    }
    s
}

/// What a process's chain says, read back from the kernel.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ChainRule {
    /// Where the instances answer, each once, in slot order.
    pub endpoints: Vec<Endpoint>,
    /// How many slots the rule maps.
    pub slots: usize,
    pub deployment: String,
    pub revision: String,
}

impl ChainRule {
    /// What a chain points at: this rule, or closed when it holds none (`rule`: None).
    pub fn pointer(rule: Option<&ChainRule>) -> Pointer {
        match rule {
            None => Pointer::Closed,
            Some(r) => Pointer::Serving(Serving {
                revision: r.revision.clone(),
                deployment: r.deployment.clone(),
                endpoints: r.endpoints.clone(),
            }),
        }
    }
}

/// A chain's rule from its map entries (slot order) and comment.
fn chain_rule(all: Vec<Endpoint>, slots: usize, comment: &str) -> Option<ChainRule> {
    let mut endpoints = Vec::new();
    for e in all {
        if !endpoints.contains(&e) {
            endpoints.push(e);
        }
    }
    let c = comment.strip_prefix("deployment ")?;
    let (deployment, revision) = c.split_once(" revision ")?;
    Some(ChainRule {
        endpoints,
        slots,
        deployment: deployment.into(),
        revision: revision.into(),
    })
}

/// `nft -j list chain`'s output: `{"nftables": [{"metainfo": …}, {"chain": …}, {"rule": …}]}`.
#[derive(Deserialize)]
struct Listing {
    nftables: Vec<serde_json::Value>,
}

/// The part of a rule object shim reads: its comment and expressions.
#[derive(Deserialize)]
struct JsonRule {
    #[serde(default)]
    comment: String,
    #[serde(default)]
    expr: Vec<serde_json::Value>,
}

/// A `dnat` statement's `addr`: `{"map": {"key": …, "data": {"set": [[key, value], …]}}}`.
#[derive(Deserialize)]
struct DnatMap {
    map: MapExpr,
}

#[derive(Deserialize)]
struct MapExpr {
    key: serde_json::Value,
    data: SetExpr,
}

#[derive(Deserialize)]
struct SetExpr {
    set: Vec<(serde_json::Value, Concat)>,
}

/// A map element's value: `{"concat": ["127.0.0.1", 20001]}`.
#[derive(Deserialize)]
struct Concat {
    concat: (IpAddr, u16),
}

/// Parses `nft -j list chain ip shim <chain>`'s output (Ok(None): no rule, the process is
/// closed). Only what [`Rule`] writes is read: the dnat map's `addr . port` entries in key
/// order and the comment (also the single-slot `numgen` rule of shim before slots).
pub fn parse_chain_json(json: &str) -> anyhow::Result<Option<ChainRule>> {
    let listing: Listing = serde_json::from_str(json)?;
    for object in listing.nftables {
        let Some(rule) = object.get("rule") else {
            continue;
        };
        // A rule shim did not write (an operator's own `dnat to 127.0.0.1:8080`, say) is
        // passed over, as the text parser before it did: it is not a pointer shim can read,
        // and failing here would fail `shim stop` and reconcile over someone else's rule.
        let Ok(rule) = serde_json::from_value::<JsonRule>(rule.clone()) else {
            continue;
        };
        let Some(dnat) = rule.expr.iter().find_map(|e| e.get("dnat")?.get("addr")) else {
            continue;
        };
        let Ok(m) = serde_json::from_value::<DnatMap>(dnat.clone()) else {
            continue;
        };
        let slots = if m.map.key.get("numgen").is_some() {
            1
        } else {
            m.map.data.set.len()
        };
        let all = m
            .map
            .data
            .set
            .iter()
            .map(|(_, c)| Endpoint {
                ip: c.concat.0,
                port: c.concat.1,
            })
            .collect();
        return Ok(chain_rule(all, slots, &rule.comment));
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(ports: &[u16]) -> Vec<Endpoint> {
        ports.iter().copied().map(Endpoint::for_instance).collect()
    }

    fn web(ports: &[u16]) -> Target {
        Target {
            service: "billing_app".into(),
            process: "web".into(),
            revision: "279d9035886d".into(),
            deployment: "5e6f7a8b".into(),
            endpoints: at(ports),
            slots: 3,
        }
    }

    /// `nft -j list chain ip shim svc_billing_app/web` of nft 1.0.6 after the rule of
    /// `web(&[20001, 20002])` was added (captured in a network namespace).
    const LISTED: &str = r#"{"nftables": [{"metainfo": {"version": "1.0.6", "release_name": "Lester Gooch #5", "json_schema_version": 1}}, {"chain": {"family": "ip", "table": "shim", "name": "svc_billing_app/web", "handle": 2}}, {"rule": {"family": "ip", "table": "shim", "chain": "svc_billing_app/web", "handle": 6, "comment": "deployment 5e6f7a8b revision 279d9035886d", "expr": [{"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "daddr"}}, "right": "127.188.89.199"}}, {"dnat": {"family": "ip", "addr": {"map": {"key": {"payload": {"protocol": "tcp", "field": "dport"}}, "data": {"set": [[1, {"concat": ["127.0.0.1", 20001]}], [2, {"concat": ["127.0.0.1", 20002]}], [3, {"concat": ["127.0.0.1", 20001]}]]}}}}}]}}]}"#;

    #[test]
    fn script_snapshot() {
        let mut closed = web(&[]);
        closed.process = "admin".into();
        insta::assert_snapshot!(render_script(&[web(&[20001, 20002]), closed]));
    }

    #[test]
    fn stable_upstream_snapshot() {
        let t = render_stable_upstream("billing_app_web", "billing_app", "web", 3);
        assert!(t.starts_with(crate::plan::upstream::HEADER));
        assert_eq!(crate::plan::upstream::parse_upstream(&t), None);
        insta::assert_snapshot!(t);
    }

    #[test]
    fn the_kernels_listing_reads_back_as_the_rule_written() {
        let rule = render_rule(&web(&[20001, 20002]));
        assert!(
            rule.contains("1 : 127.0.0.1 . 20001, 2 : 127.0.0.1 . 20002, 3 : 127.0.0.1 . 20001"),
            "{rule}"
        );
        let p = parse_chain_json(LISTED).unwrap().unwrap();
        assert_eq!(p.endpoints, at(&[20001, 20002]));
        assert_eq!(p.slots, 3);
        assert_eq!(
            (p.deployment.as_str(), p.revision.as_str()),
            ("5e6f7a8b", "279d9035886d")
        );
        let planned = plan_rule(&web(&[20001, 20002])).unwrap();
        assert_eq!(
            planned.read_back(),
            p,
            "the fake's read-back is the kernel's"
        );
        assert_eq!(ChainRule::pointer(Some(&p)), web(&[20001, 20002]).pointer());
        let empty = r#"{"nftables": [{"metainfo": {"version": "1.0.6", "release_name": "Lester Gooch #5", "json_schema_version": 1}}, {"chain": {"family": "ip", "table": "shim", "name": "svc_billing_app/web", "handle": 2}}]}"#;
        assert_eq!(parse_chain_json(empty).unwrap(), None);
        assert_eq!(ChainRule::pointer(None), Pointer::Closed);
        assert!(parse_chain_json("table ip shim {").is_err());
    }

    #[test]
    fn the_single_slot_rule_of_shim_before_slots_reads_back() {
        // nft 1.0.6's JSON of `ip daddr 127.9.8.7 tcp dport 1 dnat to numgen inc mod 2 map
        // { 0 : 127.0.0.1 . 20001, 1 : 127.0.0.1 . 20002 } comment "deployment ab revision r1"`.
        let json = r#"{"nftables": [{"metainfo": {"version": "1.0.6", "release_name": "Lester Gooch #5", "json_schema_version": 1}}, {"chain": {"family": "ip", "table": "shim", "name": "svc_old/web", "handle": 3}}, {"rule": {"family": "ip", "table": "shim", "chain": "svc_old/web", "handle": 8, "comment": "deployment ab revision r1", "expr": [{"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "daddr"}}, "right": "127.9.8.7"}}, {"match": {"op": "==", "left": {"payload": {"protocol": "tcp", "field": "dport"}}, "right": 1}}, {"dnat": {"family": "ip", "addr": {"map": {"key": {"numgen": {"mode": "inc", "mod": 2, "offset": 0}}, "data": {"set": [[0, {"concat": ["127.0.0.1", 20001]}], [1, {"concat": ["127.0.0.1", 20002]}]]}}}}}]}}]}"#;
        let p = parse_chain_json(json).unwrap().unwrap();
        assert_eq!((p.endpoints, p.slots), (at(&[20001, 20002]), 1));
        assert_eq!((p.deployment.as_str(), p.revision.as_str()), ("ab", "r1"));
    }

    #[test]
    fn a_rule_shim_did_not_write_is_passed_over_not_an_error() {
        // nft 1.0.6's JSON of an operator's `ip daddr 127.9.8.7 dnat to 127.0.0.1:8080` in
        // a chain of shim's table, alone, then before shim's own rule.
        let foreign = r#"{"rule": {"family": "ip", "table": "shim", "chain": "svc_billing_app/web", "handle": 9, "expr": [{"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "daddr"}}, "right": "127.9.8.7"}}, {"dnat": {"family": "ip", "addr": "127.0.0.1", "port": 8080}}]}}"#;
        let head = r#"{"nftables": [{"metainfo": {"version": "1.0.6", "release_name": "Lester Gooch #5", "json_schema_version": 1}}, {"chain": {"family": "ip", "table": "shim", "name": "svc_billing_app/web", "handle": 2}}"#;
        let alone = format!("{head}, {foreign}]}}");
        assert_eq!(parse_chain_json(&alone).unwrap(), None);
        let shims = LISTED
            .split_once(r#"{"rule": "#)
            .map(|(_, r)| format!(r#"{{"rule": {r}"#))
            .unwrap();
        let both = format!("{head}, {foreign}, {shims}");
        let p = parse_chain_json(&both).unwrap().unwrap();
        assert_eq!(p.endpoints, at(&[20001, 20002]));
    }

    #[test]
    fn more_instances_than_slots_get_a_slot_each() {
        let mut t = web(&[20001, 20002, 20003, 20004]);
        t.slots = 2;
        let r = render_rule(&t);
        assert!(r.contains("4 : 127.0.0.1 . 20004"), "{r}");
    }

    #[test]
    fn a_long_revision_is_cut_to_fit_a_comment() {
        let c = render_comment("5e6f7a8b", &"a".repeat(128));
        assert_eq!(c.len(), 128);
    }
}

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
//! nginx is pointed at ([`parse_chain`], [`as_upstream_text`]).

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
    /// The instances' ports; empty: the process is closed (chain flushed).
    pub ports: Vec<u16>,
    /// How many slots the upstream file lists (the process's count).
    pub slots: usize,
}

/// The comment of a process's rule: `deployment <tag> revision <rev>` (cut at 128 bytes).
pub fn render_comment(deployment: &str, revision: &str) -> String {
    let mut c = format!("deployment {deployment} revision {revision}");
    c.truncate(COMMENT_MAX);
    c
}

/// The DNAT rule of a process with instances on `ports` (not empty): slot N (destination
/// port N, from 1) to the N-th port, round the ports again when there are more slots.
pub fn render_rule(t: &Target) -> String {
    let slots = t.slots.max(t.ports.len()).max(1);
    let map: Vec<String> = (0..slots)
        .map(|i| {
            let slot = usize::from(STABLE_PORT) + i;
            format!("{slot} : 127.0.0.1 . {}", t.ports[i % t.ports.len()])
        })
        .collect();
    format!(
        "ip daddr {} dnat to tcp dport map {{ {} }} comment \"{}\"",
        stable_address(&t.service, &t.process),
        map.join(", "),
        render_comment(&t.deployment, &t.revision)
    )
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
        if !t.ports.is_empty() {
            s.push_str(&format!("add rule ip {TABLE} {chain} {}\n", render_rule(t)));
        }
    }
    s
}

/// What a process's chain says, read back from `nft list chain`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Pointer {
    /// The instances' ports, each once, in slot order.
    pub ports: Vec<u16>,
    /// How many slots the rule maps.
    pub slots: usize,
    pub deployment: String,
    pub revision: String,
}

/// Parses `nft list chain ip shim <chain>`'s output (None: no rule, the process is closed).
/// Only what [`render_rule`] writes is read: the map's `127.0.0.1 . PORT` entries in key
/// order and the comment (also the single-slot `numgen` rule of shim before slots).
pub fn parse_chain(listing: &str) -> Option<Pointer> {
    let line = listing.lines().find(|l| l.contains(" dnat "))?;
    let (_, map) = line.split_once(" map {")?;
    let (map, rest) = map.split_once('}')?;
    let all: Vec<u16> = map
        .split(',')
        .filter_map(|e| e.rsplit_once(" . ")?.1.trim().parse().ok())
        .collect();
    let slots = if line.contains(" numgen ") {
        1
    } else {
        all.len()
    };
    let mut ports = Vec::new();
    for p in all {
        if !ports.contains(&p) {
            ports.push(p);
        }
    }
    let comment = rest.split_once("comment \"")?.1.split('"').next()?;
    let c = comment.strip_prefix("deployment ")?;
    let (deployment, revision) = c.split_once(" revision ")?;
    Some(Pointer {
        ports,
        slots,
        deployment: deployment.into(),
        revision: revision.into(),
    })
}

/// A process's chain as the upstream file it stands for under `reload`: what
/// [`crate::plan::upstream::render_upstream`] would write for the same instances (a flushed
/// chain: the closed upstream; None: no chain at all, as after a reboot). So recovery's and
/// reconcile's comparisons of "what nginx points at" work the same in both modes.
pub fn as_upstream_text(
    upstream: &str,
    service: &str,
    process: &str,
    listing: Option<&str>,
) -> Option<String> {
    let listing = listing?;
    Some(match parse_chain(listing) {
        Some(p) => crate::plan::upstream::render_upstream(
            upstream,
            service,
            process,
            &p.revision,
            &p.deployment,
            &p.ports,
        ),
        None => crate::plan::upstream::render_closed_upstream(upstream, service, process),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn web(ports: &[u16]) -> Target {
        Target {
            service: "billing_app".into(),
            process: "web".into(),
            revision: "279d9035886d".into(),
            deployment: "5e6f7a8b".into(),
            ports: ports.to_vec(),
            slots: 3,
        }
    }

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
        assert_eq!(crate::plan::upstream::file_revision(&t), None);
        insta::assert_snapshot!(t);
    }

    #[test]
    fn the_kernels_listing_reads_back_as_the_rule_written() {
        // As nft 1.0.6 prints it (`dnat ip to`, tabs, the table around the chain).
        let rule = render_rule(&web(&[20001, 20002])).replace("dnat to", "dnat ip to");
        let listing =
            format!("table ip shim {{\n\tchain svc_billing_app/web {{\n\t\t{rule}\n\t}}\n}}\n");
        let p = parse_chain(&listing).unwrap();
        assert_eq!(p.ports, [20001, 20002]);
        assert_eq!(p.slots, 3);
        assert!(
            rule.contains("1 : 127.0.0.1 . 20001, 2 : 127.0.0.1 . 20002, 3 : 127.0.0.1 . 20001"),
            "{rule}"
        );
        assert_eq!(
            (p.deployment.as_str(), p.revision.as_str()),
            ("5e6f7a8b", "279d9035886d")
        );
        let text = as_upstream_text("u", "billing_app", "web", Some(&listing)).unwrap();
        assert_eq!(
            text,
            crate::plan::upstream::render_upstream(
                "u",
                "billing_app",
                "web",
                "279d9035886d",
                "5e6f7a8b",
                &[20001, 20002]
            )
        );
        assert_eq!(
            crate::plan::upstream::file_deployment(&text),
            Some("5e6f7a8b")
        );
        let empty = "table ip shim {\n\tchain svc_billing_app/web {\n\t}\n}\n";
        assert_eq!(parse_chain(empty), None);
        let closed = as_upstream_text("u", "billing_app", "web", Some(empty)).unwrap();
        assert_eq!(
            crate::plan::upstream::file_revision(&closed),
            Some("(stopped)")
        );
        assert_eq!(as_upstream_text("u", "billing_app", "web", None), None);
    }

    #[test]
    fn the_single_slot_rule_of_shim_before_slots_reads_back() {
        let line = "ip daddr 127.9.8.7 tcp dport 1 dnat ip to numgen inc mod 2 map { 0 : 127.0.0.1 . 20001, 1 : 127.0.0.1 . 20002 } comment \"deployment ab revision r1\"";
        let p = parse_chain(line).unwrap();
        assert_eq!((p.ports, p.slots), (vec![20001, 20002], 1));
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

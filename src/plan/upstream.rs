//! The nginx upstream file shim owns for one proxied process, rendered purely from the
//! instances' ports; its header line names service, process and revision so that recovery
//! can read back which revision nginx was pointed at ([`file_revision`]).

/// How every upstream file shim writes begins: what marks a file as shim's to replace.
pub const HEADER: &str = "# Written by shim for service ";

/// The ports an upstream lists: those of the instances up to `count` (the ones beyond are
/// about to be stopped), in instance order.
pub fn upstream_ports(instances: impl IntoIterator<Item = (u32, u16)>, count: u32) -> Vec<u16> {
    let mut v: Vec<(u32, u16)> = instances.into_iter().filter(|(i, _)| *i <= count).collect();
    v.sort();
    v.into_iter().map(|(_, p)| p).collect()
}

/// The upstream block for `ports` (loopback only: instances share the host's network).
pub fn render_upstream(
    upstream: &str,
    service: &str,
    process: &str,
    revision: &str,
    deployment: &str,
    ports: &[u16],
) -> String {
    let dep = if deployment.is_empty() {
        String::new()
    } else {
        format!(", deployment {deployment}")
    };
    let mut out = format!(
        "# Written by shim for service {service}, process {process}, revision {revision}{dep}.\n\
         # Do not edit: the next `shim upgrade` replaces it.\n\
         upstream {upstream} {{\n"
    );
    for p in ports {
        // Passive failure detection: an instance that fails a request (refused, reset, timed
        // out: the site's proxy_next_upstream) is skipped for 2 s, the request retried on
        // another; the probe takes it out of the file once its check fails.
        out.push_str(&format!(
            "    server 127.0.0.1:{p} max_fails=1 fail_timeout=2s;\n"
        ));
    }
    out.push_str("}\n");
    out
}

/// The upstream block of a stopped service: one server marked `down`, so that nginx accepts
/// the block and answers 502 rather than sending requests to ports that other services may
/// be given next.
pub fn render_closed_upstream(upstream: &str, service: &str, process: &str) -> String {
    format!(
        "{HEADER}{service}, process {process}, revision (stopped).\n\
         # The service is stopped: nginx answers 502 until it is started again.\n\
         upstream {upstream} {{\n    server 127.0.0.1:1 down;\n}}\n"
    )
}

/// The deployment tag an upstream file written by shim points at (from its header's
/// `deployment <tag>`), if it names one.
pub fn file_deployment(text: &str) -> Option<&str> {
    let first = text.lines().next()?;
    first.strip_prefix(HEADER)?;
    let (_, rest) = first.split_once(", deployment ")?;
    Some(rest.split([',', '.']).next().unwrap_or(rest))
}

/// The revision an upstream file written by shim points at (from its header), if any.
pub fn file_revision(text: &str) -> Option<&str> {
    let first = text.lines().next()?;
    let rest = first.strip_prefix(HEADER)?;
    let (_, r) = rest.rsplit_once(", revision ")?;
    let r = r.split_once(", deployment ").map(|(r, _)| r).unwrap_or(r);
    Some(r.trim_end_matches('.'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_are_in_instance_order_and_stop_at_count() {
        assert_eq!(
            upstream_ports([(3, 30003), (1, 30001), (2, 30007)], 2),
            [30001, 30007]
        );
        assert!(upstream_ports([], 2).is_empty());
    }

    #[test]
    fn a_closed_upstream_is_shims_and_names_no_revision_or_port() {
        let t = render_closed_upstream("app_web", "app", "web");
        assert!(t.starts_with(HEADER), "{t}");
        assert_eq!(file_revision(&t), Some("(stopped)"));
        assert!(t.contains("upstream app_web {") && t.contains("server 127.0.0.1:1 down;"));
    }

    #[test]
    fn upstream_snapshot() {
        insta::assert_snapshot!(render_upstream(
            "billing_app_web",
            "billing_app",
            "web",
            "279d9035886d",
            "5e6f7a8b",
            &[20001, 20002]
        ));
    }

    #[test]
    fn file_revision_reads_the_header() {
        let t = render_upstream("u", "svc", "web", "279d9035886d", "", &[1]);
        assert_eq!(file_revision(&t), Some("279d9035886d"));
        assert_eq!(file_deployment(&t), None);
        let t = render_upstream("u", "svc", "web", "rel-1.2", "5e6f7a8b", &[1]);
        assert_eq!(file_revision(&t), Some("rel-1.2"));
        assert_eq!(file_deployment(&t), Some("5e6f7a8b"));
        assert_eq!(file_revision("upstream u { server 127.0.0.1:1; }"), None);
    }
}

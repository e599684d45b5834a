//! The nginx upstream file shim owns for one proxied process: the pure half of the nginx
//! switch backend (`ops::proxy::nginx`), the only code that sees this text. Rendered from a
//! [`Pointer`] ([`render_pointer`]); its header line names service, process, revision and
//! deployment so that the backend reads back what nginx was pointed at ([`parse_upstream`]),
//! also from files an older shim wrote.

use super::proxy::{Pointer, Serving};
use super::Endpoint;

/// How every upstream file shim writes begins: what marks a file as shim's to replace.
pub const HEADER: &str = "# Written by shim for service ";

/// The upstream file of `upstream` for `to` (closed or serving).
pub fn render_pointer(upstream: &str, service: &str, process: &str, to: &Pointer) -> String {
    match to {
        Pointer::Closed => render_closed_upstream(upstream, service, process),
        Pointer::Serving(s) => render_upstream(
            upstream,
            service,
            process,
            &s.revision,
            &s.deployment,
            &s.endpoints,
        ),
    }
}

/// The upstream block for `endpoints` (each a `server` line at its authority).
pub fn render_upstream(
    upstream: &str,
    service: &str,
    process: &str,
    revision: &str,
    deployment: &str,
    endpoints: &[Endpoint],
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
    for e in endpoints {
        // Passive failure detection: an instance that fails a request (refused, reset, timed
        // out: the site's proxy_next_upstream) is skipped for 2 s, the request retried on
        // another; the probe takes it out of the file once its check fails.
        out.push_str(&format!(
            "    server {} max_fails=1 fail_timeout=2s;\n",
            e.authority()
        ));
    }
    out.push_str("}\n");
    out
}

/// The server a closed upstream lists: no instance's endpoint, a placeholder (nginx refuses
/// an upstream block with no server) on port 1, where nothing listens, marked `down`.
const CLOSED_SERVER: &str = "127.0.0.1:1";

/// The upstream block of a stopped service: one server marked `down`, so that nginx accepts
/// the block and answers 502 rather than sending requests to ports that other services may
/// be given next.
pub fn render_closed_upstream(upstream: &str, service: &str, process: &str) -> String {
    format!(
        "{HEADER}{service}, process {process}, revision (stopped).\n\
         # The service is stopped: nginx answers 502 until it is started again.\n\
         upstream {upstream} {{\n    server {CLOSED_SERVER} down;\n}}\n"
    )
}

/// What an upstream file written by shim points at: its header's revision (`(stopped)`:
/// closed) and deployment tag, and its `server` lines (None: not shim's, or no revision
/// named). Lenient about the rest of the text, so that files of older shims read back too.
pub fn parse_upstream(text: &str) -> Option<Pointer> {
    let revision = file_revision(text)?;
    if revision == "(stopped)" {
        return Some(Pointer::Closed);
    }
    let endpoints = text
        .lines()
        .filter_map(|l| l.trim().strip_prefix("server "))
        .filter_map(|l| l.split([' ', ';']).next()?.parse().ok())
        .map(|a: std::net::SocketAddr| Endpoint {
            ip: a.ip(),
            port: a.port(),
        })
        .collect();
    Some(Pointer::Serving(Serving {
        revision: revision.to_string(),
        deployment: file_deployment(text).unwrap_or("").to_string(),
        endpoints,
    }))
}

/// The deployment tag an upstream file written by shim points at (from its header's
/// `deployment <tag>`), if it names one.
fn file_deployment(text: &str) -> Option<&str> {
    let first = text.lines().next()?;
    first.strip_prefix(HEADER)?;
    let (_, rest) = first.split_once(", deployment ")?;
    Some(rest.split([',', '.']).next().unwrap_or(rest))
}

/// The revision an upstream file written by shim points at (from its header), if any.
fn file_revision(text: &str) -> Option<&str> {
    let first = text.lines().next()?;
    let rest = first.strip_prefix(HEADER)?;
    let (_, r) = rest.rsplit_once(", revision ")?;
    let r = r.split_once(", deployment ").map(|(r, _)| r).unwrap_or(r);
    Some(r.trim_end_matches('.'))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(ports: &[u16]) -> Vec<Endpoint> {
        ports.iter().copied().map(Endpoint::for_instance).collect()
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
            &at(&[20001, 20002])
        ));
    }

    #[test]
    fn file_revision_reads_the_header() {
        let t = render_upstream("u", "svc", "web", "279d9035886d", "", &at(&[1]));
        assert_eq!(file_revision(&t), Some("279d9035886d"));
        assert_eq!(file_deployment(&t), None);
        let t = render_upstream("u", "svc", "web", "rel-1.2", "5e6f7a8b", &at(&[1]));
        assert_eq!(file_revision(&t), Some("rel-1.2"));
        assert_eq!(file_deployment(&t), Some("5e6f7a8b"));
        assert_eq!(file_revision("upstream u { server 127.0.0.1:1; }"), None);
    }

    #[test]
    fn a_file_reads_back_as_the_pointer_it_was_rendered_from() {
        let p = Pointer::serving("r1", "5e6f7a8b", at(&[20001, 20002]));
        let t = render_pointer("u", "app", "web", &p);
        assert_eq!(parse_upstream(&t), Some(p));
        let closed = render_pointer("u", "app", "web", &Pointer::Closed);
        assert_eq!(parse_upstream(&closed), Some(Pointer::Closed));
        assert_eq!(parse_upstream("upstream u { server 127.0.0.1:1; }"), None);
        // A file of a shim before passive failure detection and deployment tags.
        let old = "# Written by shim for service app, process web, revision r0.\nupstream u {\n    server 127.0.0.1:20005;\n}\n";
        assert_eq!(
            parse_upstream(old),
            Some(Pointer::serving("r0", "", at(&[20005])))
        );
    }
}

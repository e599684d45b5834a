//! What a proxied process's upstream points at, as a value: the [`Pointer`] every switch
//! backend reads back (`ops::proxy::ProxySwitch::pointed`) and is asked to apply (a
//! [`Target`] per process). Recovery, drift, the probe's upstream sync and stop compare these
//! values; no caller outside a backend sees an nginx file or an nft listing. Pure.

use std::collections::BTreeMap;

use super::Endpoint;

/// What one proxied process's upstream points at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pointer {
    /// At nothing: the service is stopped (or none of its instances runs), nginx answers 502.
    Closed,
    /// At instances of one deployment.
    Serving(Serving),
}

/// The instances an upstream points at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Serving {
    pub revision: String,
    /// The deployment tag of the process's instances ("" for untagged ones).
    pub deployment: String,
    /// Where the instances answer, in instance order.
    pub endpoints: Vec<Endpoint>,
}

impl Pointer {
    /// Points at `endpoints` of the deployment `deployment` of `revision`.
    pub fn serving(revision: &str, deployment: &str, endpoints: Vec<Endpoint>) -> Pointer {
        Pointer::Serving(Serving {
            revision: revision.to_string(),
            deployment: deployment.to_string(),
            endpoints,
        })
    }

    /// The instances pointed at (none when closed).
    #[cfg(test)]
    pub fn endpoints(&self) -> &[Endpoint] {
        match self {
            Pointer::Closed => &[],
            Pointer::Serving(s) => &s.endpoints,
        }
    }

    /// `[127.0.0.1:20001, …]`, or `closed`: how a switch's report line names it.
    pub fn describe(&self) -> String {
        match self {
            Pointer::Closed => "closed".into(),
            Pointer::Serving(s) => {
                let e: Vec<String> = s.endpoints.iter().map(Endpoint::authority).collect();
                format!("[{}]", e.join(", "))
            }
        }
    }
}

/// What one process's upstream is to point at after a switch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// The proxied process (its `proxy` section says where its upstream is).
    pub process: String,
    pub to: Pointer,
}

/// What each proxied process of a service points at now, by process name (None: nothing is
/// known, as for an absent upstream file or, under nftables, no chain after a reboot).
pub type Pointed = BTreeMap<String, Option<Pointer>>;

/// The endpoints an upstream lists: those of the instances up to `count` (the ones beyond are
/// about to be stopped), in instance order.
pub fn upstream_endpoints(
    instances: impl IntoIterator<Item = (u32, Endpoint)>,
    count: u32,
) -> Vec<Endpoint> {
    let mut v: Vec<(u32, Endpoint)> = instances.into_iter().filter(|(i, _)| *i <= count).collect();
    v.sort();
    v.into_iter().map(|(_, e)| e).collect()
}

/// Instances at `ports` on the host (tests).
#[cfg(test)]
pub fn at_ports(ports: &[u16]) -> Vec<Endpoint> {
    ports.iter().copied().map(Endpoint::for_instance).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_are_in_instance_order_and_stop_at_count() {
        let e = Endpoint::for_instance;
        assert_eq!(
            upstream_endpoints([(3, e(30003)), (1, e(30001)), (2, e(30007))], 2),
            [e(30001), e(30007)]
        );
        assert!(upstream_endpoints([], 2).is_empty());
    }

    #[test]
    fn a_pointer_describes_its_endpoints() {
        let p = Pointer::serving("r1", "", vec![Endpoint::for_instance(20001)]);
        assert_eq!(p.describe(), "[127.0.0.1:20001]");
        assert_eq!(Pointer::Closed.describe(), "closed");
        assert!(Pointer::Closed.endpoints().is_empty());
    }
}

//! Where an instance answers, as the host reaches it: one [`Endpoint`] per instance, made in
//! one place and read by everything that talks to an instance (HTTP and TCP health checks,
//! the proxy switch's upstreams and rules, drain counting). The port shim *gives* an instance
//! (`SHIM_PORT`, `$PORT`, the port allocator, status's PORT column) is another thing: what
//! the process is told to listen on, which a private network would fix per process.
//!
//! Today every instance shares the host's network and listens on `127.0.0.1:$PORT`, the port
//! shim gave it: [`Endpoint::host_loopback`] is the one place that address is formed. An
//! instance in a network namespace of its own (its own address, a fixed container port)
//! changes the producer ([`Endpoint::for_instance`]), not the consumers.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use serde::{Deserialize, Serialize};

/// An instance's address and port as seen from the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Endpoint {
    pub ip: IpAddr,
    pub port: u16,
}

impl Endpoint {
    /// An instance on the host's network, listening on the loopback port shim handed it
    /// (`$PORT`). The only place an instance's `127.0.0.1` is spelled.
    pub const fn host_loopback(port: u16) -> Endpoint {
        Endpoint {
            ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
            port,
        }
    }

    /// The endpoint of an instance given the port recorded for it (`SHIM_PORT`, the
    /// deployment's port map). Every instance is on the host network today.
    pub const fn for_instance(port: u16) -> Endpoint {
        Endpoint::host_loopback(port)
    }

    pub fn socket_addr(&self) -> SocketAddr {
        SocketAddr::new(self.ip, self.port)
    }

    /// `host:port` as an HTTP `Host:` header or an nginx `server` line writes it.
    pub fn authority(&self) -> String {
        self.socket_addr().to_string()
    }
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.socket_addr())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_host_network_instance_answers_on_loopback_at_its_port() {
        let e = Endpoint::for_instance(20001);
        assert_eq!(e.socket_addr(), "127.0.0.1:20001".parse().unwrap());
        assert_eq!(e.authority(), "127.0.0.1:20001");
        assert_eq!(e.to_string(), "127.0.0.1:20001");
        assert_eq!(e.port, 20001);
    }
}

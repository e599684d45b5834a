//! What shim reads from the kernel about processes and ports (`/proc`, a bind test), behind
//! [`Procfs`] so that operations can be tested with [`FakeProcfs`].

use std::collections::BTreeSet;

use crate::plan::Endpoint;

/// Kernel facts the operations need.
pub trait Procfs: Send + Sync {
    /// The pids of `pid`'s direct children (nginx's workers, for a reload to be confirmed).
    fn children(&self, pid: u32) -> BTreeSet<u32>;
    /// Whether a TCP port is free to give to a new instance.
    fn port_free(&self, port: u16) -> bool;
    /// Whether this process's capability bounding set has CAP_SYS_RESOURCE (see
    /// `PlanContext::restrict_devices`); a host without it cannot give it to systemd or crun.
    fn has_cap_sys_resource(&self) -> bool;
    /// This process's hard RLIMIT_NOFILE: what systemd can give a unit without
    /// CAP_SYS_RESOURCE.
    fn nofile_hard(&self) -> u64;
    /// How many TCP connections to the instances at `ends` are open (server side,
    /// established or being accepted), from the kernel's socket tables: what an instance
    /// still serves. Counted by local port in the host's tables: every endpoint is on the
    /// host's network today (`plan::Endpoint::for_instance`); an instance in a namespace of
    /// its own would be counted in its namespace's tables, here, not by the callers.
    fn connections(&self, ends: &BTreeSet<Endpoint>) -> usize;
}

/// The connections in a `/proc/net/tcp` or `tcp6` table whose local port is in `ports` and
/// whose state is established (01) or a handshake being completed (03). Pure.
pub fn count_connections(table: &str, ports: &BTreeSet<u16>) -> usize {
    table
        .lines()
        .skip(1)
        .filter(|l| {
            let mut f = l.split_whitespace();
            let local = f.nth(1).unwrap_or("");
            let state = f.nth(1).unwrap_or("");
            let port = local
                .rsplit_once(':')
                .and_then(|(_, p)| u16::from_str_radix(p, 16).ok());
            matches!(state, "01" | "03") && port.is_some_and(|p| ports.contains(&p))
        })
        .count()
}

/// The real kernel.
pub struct RealProcfs;

impl Procfs for RealProcfs {
    fn children(&self, pid: u32) -> BTreeSet<u32> {
        let path = format!("/proc/{pid}/task/{pid}/children");
        std::fs::read_to_string(path)
            .unwrap_or_default()
            .split_whitespace()
            .filter_map(|p| p.parse().ok())
            .collect()
    }

    fn port_free(&self, port: u16) -> bool {
        std::net::TcpListener::bind(("0.0.0.0", port)).is_ok()
    }

    fn has_cap_sys_resource(&self) -> bool {
        const CAP_SYS_RESOURCE: u32 = 24; // linux/capability.h
        let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("CapBnd:"))
            .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
            .is_some_and(|caps| caps & (1 << CAP_SYS_RESOURCE) != 0)
    }

    fn nofile_hard(&self) -> u64 {
        let text = std::fs::read_to_string("/proc/self/limits").unwrap_or_default();
        text.lines()
            .find(|l| l.starts_with("Max open files"))
            .and_then(|l| l.split_whitespace().nth(4))
            .and_then(|v| v.parse().ok())
            .unwrap_or(u64::MAX)
    }

    fn connections(&self, ends: &BTreeSet<Endpoint>) -> usize {
        let ports: BTreeSet<u16> = ends.iter().map(|e| e.port).collect();
        if ports.is_empty() {
            return 0;
        }
        // iproute2's ss asks the kernel over netlink with the state and ports as a filter:
        // /proc/net/tcp lists every socket, and under load (tens of thousands in TIME_WAIT,
        // one per proxied request) reading it took seconds.
        let filter = ports
            .iter()
            .map(|p| format!("sport = :{p}"))
            .collect::<Vec<_>>()
            .join(" or ");
        let out = std::process::Command::new("ss")
            .args(["-Htn", "state", "established", "state", "syn-recv"])
            .arg(format!("( {filter} )"))
            .stderr(std::process::Stdio::null())
            .output();
        match out {
            Ok(o) if o.status.success() => String::from_utf8_lossy(&o.stdout)
                .lines()
                .filter(|l| !l.trim().is_empty())
                .count(),
            // No ss: the tables themselves.
            _ => ["/proc/net/tcp", "/proc/net/tcp6"]
                .iter()
                .map(|p| count_connections(&std::fs::read_to_string(p).unwrap_or_default(), &ports))
                .sum(),
        }
    }
}

/// A scripted kernel for unit tests: ports in `busy` are taken; every `children` call
/// returns a new pid (as if nginx had started new workers), unless `stuck`.
#[cfg(test)]
#[derive(Default)]
pub struct FakeProcfs {
    pub busy: std::sync::Mutex<BTreeSet<u16>>,
    pub stuck: std::sync::atomic::AtomicBool,
    next: std::sync::atomic::AtomicU32,
    /// What successive `connections` calls answer (then 0), and the ports each asked about.
    pub open: std::sync::Mutex<std::collections::VecDeque<usize>>,
    pub asked: std::sync::Mutex<Vec<BTreeSet<u16>>>,
}

#[cfg(test)]
impl Procfs for FakeProcfs {
    fn children(&self, _pid: u32) -> BTreeSet<u32> {
        use std::sync::atomic::Ordering;
        if self.stuck.load(Ordering::SeqCst) {
            return [7].into();
        }
        [self.next.fetch_add(1, Ordering::SeqCst) + 100].into()
    }

    fn port_free(&self, port: u16) -> bool {
        !crate::host::systemd::fake::lock(&self.busy).contains(&port)
    }

    fn has_cap_sys_resource(&self) -> bool {
        true
    }

    fn nofile_hard(&self) -> u64 {
        1 << 20
    }

    fn connections(&self, ends: &BTreeSet<Endpoint>) -> usize {
        crate::host::systemd::fake::lock(&self.asked).push(ends.iter().map(|e| e.port).collect());
        crate::host::systemd::fake::lock(&self.open)
            .pop_front()
            .unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connections_are_counted_by_local_port_and_state() {
        // Two established to 0x4E21 (20001), one listening on it, one established to another
        // port, one established *from* 20001 (its peer's port is the local one elsewhere).
        let table = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:4E21 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1 1 0 100 0 0 10 0
   1: 0100007F:4E21 0100007F:D2F0 01 00000000:00000000 00:00000000 00000000     0        0 2 1 0 20 4 30 10 -1
   2: 0100007F:4E21 0100007F:D2F2 01 00000000:00000000 00:00000000 00000000     0        0 3 1 0 20 4 30 10 -1
   3: 0100007F:4E22 0100007F:D2F4 01 00000000:00000000 00:00000000 00000000     0        0 4 1 0 20 4 30 10 -1
   4: 0100007F:D2F6 0100007F:4E21 01 00000000:00000000 00:00000000 00000000     0        0 5 1 0 20 4 30 10 -1
   5: 0100007F:4E21 0100007F:D2F8 06 00000000:00000000 00:00000000 00000000     0        0 0 3 0 0 0 0 0 0
";
        assert_eq!(count_connections(table, &[20001].into()), 2);
        assert_eq!(count_connections(table, &[20001, 20002].into()), 3);
        assert_eq!(count_connections(table, &[9].into()), 0);
        assert_eq!(count_connections("", &[20001].into()), 0);
    }

    #[test]
    fn the_kernel_tables_show_an_accepted_connection_until_it_closes() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        assert_eq!(
            RealProcfs.connections(&[Endpoint::for_instance(port)].into()),
            0,
            "listening only"
        );
        let c = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        let (s, _) = l.accept().unwrap();
        assert_eq!(
            RealProcfs.connections(&[Endpoint::for_instance(port)].into()),
            1
        );
        drop((c, s));
        // The closing handshake is the kernel's, asynchronous: give it a moment under load.
        let t0 = std::time::Instant::now();
        while RealProcfs.connections(&[Endpoint::for_instance(port)].into()) != 0
            && t0.elapsed().as_secs() < 2
        {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        assert_eq!(
            RealProcfs.connections(&[Endpoint::for_instance(port)].into()),
            0
        );
    }
}

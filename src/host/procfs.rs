//! What shim reads from the kernel about processes and ports (`/proc`, a bind test), behind
//! [`Procfs`] so that operations can be tested with [`FakeProcfs`].

use std::collections::BTreeSet;

/// Kernel facts the operations need.
pub trait Procfs: Send + Sync {
    /// The pids of `pid`'s direct children (nginx's workers, for a reload to be confirmed).
    fn children(&self, pid: u32) -> BTreeSet<u32>;
    /// Whether a TCP port is free to give to a new instance.
    fn port_free(&self, port: u16) -> bool;
    /// Whether this process's capability bounding set has CAP_SYS_RESOURCE (see
    /// `PlanContext::restrict_devices`); a host without it cannot give it to systemd or crun.
    fn has_cap_sys_resource(&self) -> bool;
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
}

/// A scripted kernel for unit tests: ports in `busy` are taken; every `children` call
/// returns a new pid (as if nginx had started new workers), unless `stuck`.
#[cfg(test)]
#[derive(Default)]
pub struct FakeProcfs {
    pub busy: std::sync::Mutex<BTreeSet<u16>>,
    pub stuck: std::sync::atomic::AtomicBool,
    next: std::sync::atomic::AtomicU32,
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
}

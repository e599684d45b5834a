//! The proxy seam: everything that points nginx at a service's instances goes through one
//! [`ProxySwitch`], made by [`for_host`] from the host's `[shim] switch` (the one place a
//! switch mode is matched outside config parsing). The upgrade's switch, the probe's upstream
//! sync, `shim stop`, recovery and reconcile's drift speak only in typed
//! [`Pointer`](crate::plan::proxy::Pointer)s: which deployment of which revision, at which
//! endpoints. What that becomes on the machine is each backend's own:
//!
//! - [`nginx::NginxReload`] (`switch = "reload"`): each process's upstream file lists the
//!   instances; a switch rewrites it and reloads nginx. The file is the record of what
//!   serves, read back by parsing its header (also from files of older shims).
//! - [`nftables::Nftables`] (`switch = "nftables"`): the file lists the process's stable
//!   address (written once); a switch replaces the kernel's DNAT rule in one transaction. The
//!   kernel's rule, read back as JSON, is the record.
//!
//! Flow of [`ProxySwitch::apply`] in both: write (with a backup of what was there), check,
//! make it live, confirm; any failure restores the backup so the proxy serves what it
//! served. For nginx files that sequence is `host::nginx::apply_files`, used by both backends.
//!
//! The backends live in `ops`, not `host`: each drives several adapters (the nginx binary,
//! systemd for the reload, `/proc` for the new workers, `nft`) with the pure planning of
//! `plan::upstream` and `plan::nft`, and is chosen per command from the definitions' settings,
//! which the Host does not hold. The adapters stay single-tool. Tests drive the backends over
//! the Host's fakes (`FakeNginx`, `FakeNft`, `FakeSystemd`) rather than a fake switch: the
//! restore-on-failure paths are what most needs testing, and a fake switch would skip them.

pub mod nftables;
pub mod nginx;
#[cfg(test)]
mod tests;

use anyhow::Result;

use crate::config::{HostSettings, ServiceDef, SwitchMode};
use crate::host::Host;
use crate::plan::proxy::{Pointed, Target};

/// How a service's proxied processes are pointed at their instances.
pub trait ProxySwitch {
    /// Refuses (bad input, nothing changed) a proxied process whose proxy this backend could
    /// not take over: an upstream file shim did not write.
    fn preflight(&self, svc: &ServiceDef, process: &str) -> Result<()>;

    /// [`ProxySwitch::preflight`] of every proxied process of `svc`.
    fn preflight_all(&self, svc: &ServiceDef) -> Result<()> {
        svc.processes
            .values()
            .filter(|d| d.proxy.is_some())
            .try_for_each(|d| self.preflight(svc, d.name.as_str()))
    }

    /// What each proxied process of `svc` points at now, by process (None: nothing known).
    /// Unreadable state reads as None: the callers compare, and an unknown pointer is drift.
    fn pointed(&self, svc: &ServiceDef) -> Pointed;

    /// The proxied processes of `svc` whose form on the machine is not what this shim would
    /// write for the pointer [`ProxySwitch::pointed`] reads back (an upstream file of an older
    /// shim, without passive failure detection, say). Recovery still reads their pointer;
    /// the probe and reconcile rewrite them ([`compared`]). None by default.
    fn outdated(&self, _svc: &ServiceDef) -> std::collections::BTreeSet<String> {
        Default::default()
    }

    /// Points each target's process at its pointer, all or nothing: on any failure the
    /// previous pointers are restored and the error says so. One line per change goes to
    /// `details`. Targets must name proxied processes of `svc`.
    fn apply(&self, svc: &ServiceDef, targets: &[Target], details: &mut Vec<String>) -> Result<()>;

    /// Closes every proxied process of `svc` that points somewhere (stop): nginx answers
    /// 502 and never reaches the ports the service frees. Returns one line per process closed.
    /// Idempotent.
    fn close(&self, svc: &ServiceDef) -> Result<Vec<String>>;

    /// Makes the proxy serve what [`ProxySwitch::pointed`] says, in case a switch was killed
    /// between writing and applying (recovery, before old instances go). Returns a line if
    /// it did something.
    fn settle(&self, svc: &ServiceDef) -> Result<Option<String>>;
}

/// What `switch` points at, for comparing with what should be (the probe's sync, reconcile's
/// drift): a process whose form is [outdated](ProxySwitch::outdated) reads as unknown, so it
/// is rewritten even where it points at the right instances.
pub fn compared(switch: &dyn ProxySwitch, svc: &ServiceDef) -> Pointed {
    let mut pointed = switch.pointed(svc);
    for process in switch.outdated(svc) {
        pointed.insert(process, None);
    }
    pointed
}

/// The switch the host's settings name.
pub fn for_host<'h>(host: &'h Host, settings: &'h HostSettings) -> Box<dyn ProxySwitch + 'h> {
    let unit = settings.nginx_unit.as_str();
    match settings.switch {
        SwitchMode::Reload => Box::new(nginx::NginxReload { host, unit }),
        SwitchMode::Nftables => Box::new(nftables::Nftables { host, unit }),
    }
}

/// The proxy section and count of `process` in `svc` (None: not a proxied process).
fn proxied<'a>(svc: &'a ServiceDef, process: &str) -> Option<(&'a crate::config::Proxy, u32)> {
    svc.processes
        .values()
        .find(|d| d.name.as_str() == process)
        .and_then(|d| Some((d.proxy.as_ref()?, d.count)))
}

/// The upstream file of `process` is shim's (or absent): both backends write it.
fn check_file_owned(svc: &ServiceDef, process: &str) -> Result<()> {
    match proxied(svc, process) {
        Some((px, _)) => crate::host::nginx::check_owned(&px.file),
        None => Ok(()),
    }
}

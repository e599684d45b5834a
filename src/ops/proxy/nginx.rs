//! The reload switch (`[shim] switch = "reload"`): each proxied process's upstream file lists
//! its instances (`plan::upstream` renders it from the [`Pointer`]); a switch writes the
//! files and reloads nginx once, confirmed by new workers (`host::nginx::apply_files`), and
//! restores every file if any step fails. What serves is read back from the files' headers.

use anyhow::Result;

use super::{check_file_owned, proxied, ProxySwitch};
use crate::config::ServiceDef;
use crate::host::nginx::{apply_files, Reload};
use crate::host::Host;
use crate::plan::proxy::{Pointed, Pointer, Target};
use crate::plan::upstream::{parse_upstream, render_pointer};

/// nginx's upstream files, applied by a reload of `unit`.
pub struct NginxReload<'h> {
    pub host: &'h Host,
    pub unit: &'h str,
}

impl ProxySwitch for NginxReload<'_> {
    fn preflight(&self, svc: &ServiceDef, process: &str) -> Result<()> {
        check_file_owned(svc, process)
    }

    fn pointed(&self, svc: &ServiceDef) -> Pointed {
        svc.processes
            .values()
            .filter_map(|d| Some((d.name.to_string(), d.proxy.as_ref()?)))
            .map(|(name, px)| {
                let text = std::fs::read_to_string(&px.file).ok();
                (name, text.as_deref().and_then(parse_upstream))
            })
            .collect()
    }

    fn outdated(&self, svc: &ServiceDef) -> std::collections::BTreeSet<String> {
        let id = svc.id.as_str();
        svc.processes
            .values()
            .filter_map(|d| Some((d.name.as_str(), d.proxy.as_ref()?)))
            .filter(|(name, px)| {
                let Ok(text) = std::fs::read_to_string(&px.file) else {
                    return false;
                };
                parse_upstream(&text)
                    .is_some_and(|p| render_pointer(&px.upstream, id, name, &p) != text)
            })
            .map(|(name, _)| name.to_string())
            .collect()
    }

    fn apply(&self, svc: &ServiceDef, targets: &[Target], details: &mut Vec<String>) -> Result<()> {
        let id = svc.id.as_str();
        let mut files = Vec::new();
        let mut lines = Vec::new();
        for t in targets {
            let Some((px, _)) = proxied(svc, &t.process) else {
                continue;
            };
            let text = render_pointer(&px.upstream, id, &t.process, &t.to);
            files.push((px.file.as_path(), text));
            lines.push(format!(
                "{}: upstream {} → {}",
                px.file.display(),
                px.upstream,
                t.to.describe()
            ));
        }
        let changed = apply_files(self.host, self.unit, &files, Reload::Always)?;
        for ((path, _), (line, changed)) in files.iter().zip(lines.into_iter().zip(&changed)) {
            details.push(match changed {
                true => line,
                false => format!("{}: unchanged", path.display()),
            });
        }
        if changed.contains(&true) {
            details.push(format!("{} reloaded; new workers running", self.unit));
        }
        Ok(())
    }

    fn close(&self, svc: &ServiceDef) -> Result<Vec<String>> {
        let id = svc.id.as_str();
        let mut files = Vec::new();
        let mut lines = Vec::new();
        for d in svc.processes.values() {
            let Some(px) = &d.proxy else { continue };
            // An absent file was never pointed anywhere: nothing to close.
            if !px.file.exists() {
                continue;
            }
            let text = render_pointer(&px.upstream, id, d.name.as_str(), &Pointer::Closed);
            files.push((px.file.as_path(), text));
            lines.push(format!(
                "closed   {} (upstream {})",
                px.file.display(),
                px.upstream
            ));
        }
        // nginx stopped reads the closed files when it starts.
        let changed = apply_files(self.host, self.unit, &files, Reload::IfActive)
            .map_err(|e| e.context("closing the upstream failed"))?;
        Ok(lines
            .into_iter()
            .zip(changed)
            .filter_map(|(l, c)| c.then_some(l))
            .collect())
    }

    fn settle(&self, svc: &ServiceDef) -> Result<Option<String>> {
        if !svc.processes.values().any(|d| d.proxy.is_some()) {
            return Ok(None);
        }
        // Killed between writing a file and the reload, nginx may still serve the old
        // instances: make it load what the files say.
        self.host.nginx.test_config()?;
        crate::host::nginx::reload(self.host, self.unit, std::time::Duration::from_secs(30))?;
        Ok(Some(format!(
            "{} reloaded to be sure it serves the upstream files",
            self.unit
        )))
    }
}

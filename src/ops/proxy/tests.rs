//! One contract for every backend of the proxy seam, run over the Host's fakes: what `apply`
//! and `close` leave is what `pointed` reads back, as typed pointers; plus each backend's
//! restore on failure.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::for_host;
use crate::config::{Definitions, SwitchMode};
use crate::host::nginx::FakeNginx;
use crate::host::FakeHost;
use crate::plan::proxy::{at_ports, Pointer, Target};

const DEF: &str = r#"
[shim]
switch = "@MODE@"

[services.app]
image = "oci:/i:{revision}"

[services.app.processes.web]
count = 2
command = ["/app"]
health = { path = "/health" }
proxy = { upstream = "app_web", file = "@DIR@/web.conf" }

[services.app.processes.admin]
command = ["/admin"]
health = { path = "/health" }
proxy = { upstream = "app_admin", file = "@DIR@/admin.conf" }

[services.app.processes.worker]
command = ["/w"]
"#;

struct Case {
    fh: FakeHost,
    defs: Definitions,
    nginx: Arc<FakeNginx>,
}

impl Case {
    fn new(mode: &str) -> Case {
        let nginx = Arc::new(FakeNginx::default());
        let n2 = nginx.clone();
        let fh = FakeHost::with(move |h| h.nginx = Box::new(n2));
        let dir = fh.tmp.path().join("nginx");
        let defs = crate::ops::testkit::defs(
            &DEF.replace("@MODE@", mode)
                .replace("@DIR@", &dir.display().to_string()),
        );
        fh.systemd.insert(crate::host::systemd::UnitInfo {
            name: "nginx.service".into(),
            active_state: "active".into(),
            sub_state: "running".into(),
            main_pid: 100,
            ..Default::default()
        });
        Case { fh, defs, nginx }
    }

    fn apply(&self, targets: &[Target]) -> anyhow::Result<Vec<String>> {
        let svc = self.defs.service("app")?;
        let mut details = Vec::new();
        for_host(&self.fh.host, &self.defs.settings).apply(svc, targets, &mut details)?;
        Ok(details)
    }

    fn pointed(&self, process: &str) -> Option<Pointer> {
        let svc = self.defs.service("app").unwrap();
        let all = for_host(&self.fh.host, &self.defs.settings).pointed(svc);
        assert_eq!(
            all.keys().collect::<Vec<_>>(),
            ["admin", "web"],
            "one pointer per proxied process"
        );
        all[process].clone()
    }

    fn close(&self) -> Vec<String> {
        let svc = self.defs.service("app").unwrap();
        for_host(&self.fh.host, &self.defs.settings)
            .close(svc)
            .unwrap()
    }
}

fn target(process: &str, to: &Pointer) -> Target {
    Target {
        process: process.into(),
        to: to.clone(),
    }
}

fn both() -> [Case; 2] {
    let c = [Case::new("reload"), Case::new("nftables")];
    assert_eq!(c[0].defs.settings.switch, SwitchMode::Reload);
    assert_eq!(c[1].defs.settings.switch, SwitchMode::Nftables);
    c
}

#[test]
fn every_backend_reads_back_what_it_applied_and_closed() {
    for c in both() {
        let mode = c.defs.settings.switch;
        assert_eq!(c.pointed("web"), None, "{mode:?}: nothing yet");
        assert!(c.close().is_empty(), "{mode:?}: nothing to close");
        assert_eq!(
            c.pointed("web"),
            None,
            "{mode:?}: closing nothing creates nothing"
        );
        let web = Pointer::serving("r1", "5e6f7a8b", at_ports(&[20001, 20002]));
        let admin = Pointer::serving("r1", "9a8b7c6d", at_ports(&[20003]));
        c.apply(&[target("web", &web), target("admin", &admin)])
            .unwrap();
        assert_eq!(c.pointed("web"), Some(web.clone()), "{mode:?}");
        assert_eq!(c.pointed("admin"), Some(admin), "{mode:?}");
        // One process closed (the probe, with none of its instances running).
        c.apply(&[target("admin", &Pointer::Closed)]).unwrap();
        assert_eq!(c.pointed("admin"), Some(Pointer::Closed), "{mode:?}");
        assert_eq!(c.pointed("web"), Some(web), "{mode:?}: the other untouched");
        // The stop closes what still points somewhere, once.
        assert_eq!(c.close().len(), 1, "{mode:?}");
        assert_eq!(c.pointed("web"), Some(Pointer::Closed), "{mode:?}");
        assert!(c.close().is_empty(), "{mode:?}: twice is a no-op");
    }
}

#[test]
fn every_backend_keeps_what_was_pointed_when_nginx_refuses_the_first_file() {
    for c in both() {
        let mode = c.defs.settings.switch;
        c.nginx.refuse.store(true, Ordering::SeqCst);
        let web = Pointer::serving("r1", "", at_ports(&[20001]));
        let e = format!("{:#}", c.apply(&[target("web", &web)]).unwrap_err());
        assert!(e.contains("refused"), "{mode:?}: {e}");
        assert_ne!(c.pointed("web"), Some(web), "{mode:?}");
        let file = c.fh.tmp.path().join("nginx/web.conf");
        assert!(!file.exists(), "{mode:?}: the new file is removed again");
    }
}

#[test]
fn the_reload_backend_puts_back_every_file_when_a_later_one_cannot_be_written() {
    let c = Case::new("reload");
    let r1 = Pointer::serving("r1", "", at_ports(&[20001]));
    c.apply(&[target("web", &r1), target("admin", &r1)])
        .unwrap();
    // admin's file is replaced by one shim did not write: the switch to r2 writes web's file
    // first, then fails on admin's, and must put web's back.
    let admin = c.fh.tmp.path().join("nginx/admin.conf");
    std::fs::write(&admin, "upstream app_admin { server 10.0.0.1:80; }\n").unwrap();
    let r2 = Pointer::serving("r2", "", at_ports(&[20005]));
    let e = format!(
        "{:#}",
        c.apply(&[target("web", &r2), target("admin", &r2)])
            .unwrap_err()
    );
    assert!(e.contains("was not written by shim"), "{e}");
    assert_eq!(c.pointed("web"), Some(r1));
    let svc = c.defs.service("app").unwrap();
    let proxy = for_host(&c.fh.host, &c.defs.settings);
    assert!(proxy.preflight(svc, "web").is_ok());
    assert!(proxy.preflight(svc, "admin").is_err());
}

#[test]
fn the_nftables_backend_reads_the_kernel_not_the_file() {
    let c = Case::new("nftables");
    let web = Pointer::serving("r1", "", at_ports(&[20001, 20002]));
    let details = c.apply(&[target("web", &web)]).unwrap();
    assert!(
        details
            .iter()
            .any(|d| d.contains("127.0.0.1:20001, 127.0.0.1:20002")),
        "{details:?}"
    );
    // After a reboot the table is gone: nothing is known, whatever the file says.
    c.fh.nft.wipe();
    assert_eq!(c.pointed("web"), None);
    // settle has nothing to do: the kernel's rule is what serves.
    let svc = c.defs.service("app").unwrap();
    assert_eq!(
        for_host(&c.fh.host, &c.defs.settings).settle(svc).unwrap(),
        None
    );
}

#[test]
fn an_upstream_file_in_an_older_shims_form_is_read_for_recovery_and_rewritten_by_comparison() {
    let c = Case::new("reload");
    let svc = c.defs.service("app").unwrap();
    let web = Pointer::serving("r1", "5e6f7a8b", at_ports(&[20001, 20002]));
    c.apply(&[target("web", &web)]).unwrap();
    let switch = for_host(&c.fh.host, &c.defs.settings);
    assert!(
        switch.outdated(svc).is_empty(),
        "what this shim writes is current"
    );
    // As a shim from before passive failure detection wrote it: the same instances.
    let file = c.fh.tmp.path().join("nginx/web.conf");
    let text = std::fs::read_to_string(&file).unwrap();
    assert!(text.contains(" max_fails=1 fail_timeout=2s;"), "{text}");
    std::fs::write(&file, text.replace(" max_fails=1 fail_timeout=2s;", ";")).unwrap();
    assert_eq!(
        c.pointed("web"),
        Some(web.clone()),
        "recovery still reads it"
    );
    assert_eq!(switch.outdated(svc), ["web".to_string()].into());
    let compared = super::compared(switch.as_ref(), svc);
    assert_eq!(compared["web"], None, "the probe and reconcile see drift");
    assert_eq!(compared["admin"], None, "never written: unknown as before");
    c.apply(&[target("web", &web)]).unwrap();
    assert!(
        switch.outdated(svc).is_empty(),
        "rewritten in this shim's form"
    );
    assert_eq!(std::fs::read_to_string(&file).unwrap(), text);
}

//! The names of the `SHIM_*` fields shim puts on what it starts, in one place.
//!
//! The same names serve as journal fields (the unit's `LogExtraFields`, and the fields of the
//! lines shim itself sends to the journal), as the keys of [`super::InstanceMeta::fields`], and
//! (for the identity fields) as environment variables inside the container. Later shim versions
//! read them back from running units and old journal lines: never rename one, only add.
//!
//! The environment variables that configure shim itself are in [`env`].

/// The service id (`[service] id`) an instance, run or cron job belongs to.
pub const SERVICE: &str = "SHIM_SERVICE";
/// The process name within the service (`cron` for cron jobs).
pub const PROCESS: &str = "SHIM_PROCESS";
/// The full revision (unit names carry only its first [`super::REV_IN_NAME`] characters).
pub const REVISION: &str = "SHIM_REVISION";
/// The deployment tag of an instance (`plan::deployment`: 8 hex digits of what it runs and
/// its process's restart generation); instances started before deployments were recorded
/// carry none.
pub const DEPLOYMENT: &str = "SHIM_DEPLOYMENT";
/// The 1-based instance index of a long-running process.
pub const INSTANCE: &str = "SHIM_INSTANCE";
/// The host port handed to the instance (also its `$PORT`), when the process has one.
pub const PORT: &str = "SHIM_PORT";
/// The stem of a one-off `shim run` unit (`shimrun-<service>-<rev>-<id>`).
pub const RUN: &str = "SHIM_RUN";
/// The job name of a cron job run.
pub const CRON: &str = "SHIM_CRON";
/// The unit a probe journal line is about.
pub const UNIT: &str = "SHIM_UNIT";
/// What the probe did to a unit (`start`, `retry`, `kill`).
pub const ACTION: &str = "SHIM_ACTION";
/// Why the probe did it, in words.
pub const REASON: &str = "SHIM_REASON";

/// Environment variables read by shim itself (not fields of units or journal lines).
pub mod env {
    /// The definitions directory, as `--config`.
    pub const CONFIG: &str = "SHIM_CONFIG";
    /// A `tracing` filter for shim's own diagnostics.
    pub const LOG: &str = "SHIM_LOG";
    /// Overrides the state directory (default `/var/lib/shim`).
    pub const STATE_DIR: &str = "SHIM_STATE_DIR";
    /// Overrides the run directory (default `/run/shim`).
    pub const RUN_DIR: &str = "SHIM_RUN_DIR";
    /// Overrides where service units are written (default `/etc/systemd/system`).
    pub const UNIT_DIR: &str = "SHIM_UNIT_DIR";
    /// Set to `0` to make every probe run a full one (troubleshooting, benchmarks).
    pub const PROBE_FAST: &str = "SHIM_PROBE_FAST";
    /// Makes `shim upgrade` die after the named step (crash tests only).
    pub const TEST_KILL_AFTER: &str = "SHIM_TEST_KILL_AFTER";
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::super::{InstanceKey, InstanceMeta};
    use crate::config::Ident;

    fn key(service: &str, process: &str, revision: &str, index: u32) -> InstanceKey {
        InstanceKey {
            service: Ident::parse(service).unwrap(),
            process: Ident::parse(process).unwrap(),
            revision: revision.into(),
            deployment: String::new(),
            index,
        }
    }

    fn meta(k: &InstanceKey, port: Option<u16>) -> InstanceMeta {
        InstanceMeta {
            unit: k.unit_name(),
            service: k.service.to_string(),
            process: k.process.to_string(),
            deployment: k.deployment.clone(),
            revision: k.revision.clone(),
            instance: k.index,
            port,
        }
    }

    #[test]
    fn names_are_the_documented_literals() {
        assert_eq!(super::SERVICE, "SHIM_SERVICE");
        assert_eq!(super::PROCESS, "SHIM_PROCESS");
        assert_eq!(super::REVISION, "SHIM_REVISION");
        assert_eq!(super::INSTANCE, "SHIM_INSTANCE");
        assert_eq!(super::PORT, "SHIM_PORT");
        assert_eq!(super::RUN, "SHIM_RUN");
        assert_eq!(super::CRON, "SHIM_CRON");
        assert_eq!(super::UNIT, "SHIM_UNIT");
        assert_eq!(super::ACTION, "SHIM_ACTION");
        assert_eq!(super::REASON, "SHIM_REASON");
    }

    #[test]
    fn from_fields_reads_back_what_meta_writes() {
        let k = key(
            "billing_app",
            "web",
            "279d9035886d4c0427549863c4c2101e4a63e041",
            2,
        );
        for port in [None, Some(20001)] {
            assert_eq!(
                InstanceKey::from_fields(&meta(&k, port).fields()),
                Some(k.clone())
            );
        }
    }

    #[test]
    fn from_fields_reads_log_extra_fields() {
        let k = key("billing_app", "web", "rev1", 3);
        let f: BTreeMap<String, String> = super::super::unit::log_fields(&k, Some(20002))
            .iter()
            .filter_map(|kv| kv.split_once('='))
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect();
        assert_eq!(InstanceKey::from_fields(&f), Some(k));
    }

    #[test]
    fn from_fields_rejects_missing_or_invalid() {
        let k = key("app", "web", "rev1", 1);
        let good = meta(&k, None).fields();
        for name in [
            super::SERVICE,
            super::PROCESS,
            super::REVISION,
            super::INSTANCE,
        ] {
            let mut f = good.clone();
            f.remove(name);
            assert_eq!(InstanceKey::from_fields(&f), None, "without {name}");
        }
        for (name, bad) in [
            (super::SERVICE, "App"),
            (super::PROCESS, ""),
            (super::REVISION, "-x"),
            (super::INSTANCE, "0"),
            (super::INSTANCE, "one"),
        ] {
            let mut f = good.clone();
            f.insert(name.into(), bad.into());
            assert_eq!(InstanceKey::from_fields(&f), None, "{name}={bad}");
        }
        // A one-off run carries service, process and revision but no instance.
        let run: BTreeMap<String, String> = [
            (super::SERVICE, "app"),
            (super::PROCESS, "web"),
            (super::REVISION, "rev1"),
            (super::RUN, "shimrun-app-rev1-a1b2c3"),
        ]
        .into_iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect();
        assert_eq!(InstanceKey::from_fields(&run), None);
    }

    /// Unit names cannot be parsed back: ids may contain `-`, so two different keys give the
    /// same name (one set of definitions cannot hold both; units left from older definitions
    /// can). The fields keep them apart.
    #[test]
    fn unit_names_are_ambiguous_fields_are_not() {
        let a = key("a", "b-web", "279d9035886d4c04", 1);
        let b = key("a-b", "web", "279d9035886d4c04", 1);
        assert_ne!(a, b);
        assert_eq!(a.unit_name(), b.unit_name());
        assert!(
            a.unit_name().starts_with("shim-a-b-web-279d9035886d-"),
            "{}",
            a.unit_name()
        );
        assert_eq!(
            InstanceKey::from_fields(&meta(&a, None).fields()),
            Some(a.clone())
        );
        assert_eq!(
            InstanceKey::from_fields(&meta(&b, None).fields()),
            Some(b.clone())
        );
        // Revisions that share their first REV_IN_NAME characters get different names.
        let c = key("a", "b-web", "279d9035886dffff", 1);
        assert_ne!(a.unit_name(), c.unit_name());
        assert_ne!(
            InstanceKey::from_fields(&meta(&a, None).fields()),
            InstanceKey::from_fields(&meta(&c, None).fields())
        );
    }
}

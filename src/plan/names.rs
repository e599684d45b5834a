//! Every systemd unit name shim gives, every glob it lists units with, and every classifier
//! that reads a name back: the one place to look when a name changes (they must not, lightly:
//! hosts have units with these names, and a renamed unit is an unknown unit to the next shim).
//!
//! The families, all below `shim.slice`:
//! - instances `shim-<service>-<process>-<rev>-<n>.service` ([`instance_stem`]), listed with
//!   [`service_units_glob`] / [`ALL_UNITS_GLOB`];
//! - each service's own unit `shim-<id>.service` and slice `shim-<id>.slice` (the id
//!   systemd-escaped, [`escape_id`]);
//! - the probe `shim-probe-<id>.timer` / `.service`;
//! - one-off runs `shimrun-<service>-<rev>-<tag>.service` and their anchor scope;
//! - cron jobs `shimcron-<service>-<job>.timer` / `.service`.
//!
//! Names are never parsed back into an instance's identity (they are ambiguous, see
//! [`super::InstanceKey::unit_name`]); the classifiers here only answer "which service's
//! probe timer / cron job is this", which is unambiguous for the ids `config` accepts.

/// The slice of everything shim starts; each service's own slice ([`slice_name`]) is below
/// it, so the cgroup paths are known in advance.
pub const SLICE: &str = "shim.slice";

/// Every instance unit and service unit of every service (`shim-probe-*` matches too).
pub const ALL_UNITS_GLOB: &str = "shim-*";

/// The prefix of the one-off runs' units.
pub const RUN_PREFIX: &str = "shimrun-";
/// The prefix of the cron jobs' units.
pub const CRON_PREFIX: &str = "shimcron-";
/// The prefix of the probe's timer and service.
const PROBE_PREFIX: &str = "shim-probe-";

/// Unit names carry at most this much of the revision as it is; the full one is in
/// SHIM_REVISION.
pub const REV_IN_NAME: usize = 12;

/// The revision as unit names carry it: itself when it has at most [`REV_IN_NAME`]
/// characters, else its first [`REV_IN_NAME`] characters, `-` and 8 hex digits of the
/// SHA-256 of the whole revision. Different revisions give different names (a long one is
/// never as short as a short one), so `release-2024-01` and `release-2024-02`, or two git
/// SHAs with the same first 12 characters, do not collide.
pub fn rev_in_name(revision: &str) -> String {
    if revision.chars().count() <= REV_IN_NAME {
        return revision.to_string();
    }
    use sha2::Digest as _;
    let head: String = revision.chars().take(REV_IN_NAME).collect();
    let h = sha2::Sha256::digest(revision.as_bytes());
    format!("{head}-{}", hex::encode(&h[..4]))
}

/// `shim-<service>-<process>-<rev>-<index>`: an instance's unit name without `.service`, also
/// its container id and instance directory name. `rev` is [`rev_in_name`], or with a
/// deployment tag the revision's first [`REV_IN_NAME`] characters, `-` and the tag.
pub fn instance_stem(
    service: &str,
    process: &str,
    revision: &str,
    tag: &str,
    index: u32,
) -> String {
    let rev = if tag.is_empty() {
        rev_in_name(revision)
    } else {
        let head: String = revision.chars().take(REV_IN_NAME).collect();
        format!("{head}-{tag}")
    };
    format!("shim-{service}-{process}-{rev}-{index}")
}

/// `<stem>.service`.
pub fn service_of_stem(stem: &str) -> String {
    format!("{stem}.service")
}

/// The stem of an instance's unit name (its container id and directory name): `None` if the
/// name is not a `.service`'s.
pub fn stem_of_service(unit: &str) -> Option<&str> {
    unit.strip_suffix(".service")
}

/// `shim-<service>-`: what every unit name of the service's instances starts with (a service
/// `<service>-x` has units that start with it too: read `SHIM_SERVICE` to be sure).
pub fn instance_prefix(service: &str) -> String {
    format!("shim-{service}-")
}

/// `shim-<service>-*` matches every unit of one service (ids cannot contain `*`).
pub fn service_units_glob(service: &str) -> String {
    format!("{}*", instance_prefix(service))
}

/// The id as systemd-escape writes it: `-` as `\x2d` (the only character of an `Ident`
/// that needs escaping).
pub fn escape_id(id: &str) -> String {
    id.replace('-', "\\x2d")
}

/// `shim-<id>.service`, the unit that is the service.
pub fn service_unit_name(id: &str) -> String {
    format!("shim-{}.service", escape_id(id))
}

/// Whether `name` has the shape of a service unit (`shim-*.service`), for the sweep of unit
/// files in `/etc/systemd/system`.
pub fn is_service_unit_shaped(name: &str) -> bool {
    name.starts_with("shim-") && name.ends_with(".service")
}

/// `shim-<id>.slice`, below `shim.slice` (by its name: systemd slices nest on `-`).
pub fn slice_name(id: &str) -> String {
    format!("shim-{}.slice", escape_id(id))
}

/// The cgroup (v2, from the root) of the service's slice: `/shim.slice/shim-<id>.slice`.
pub fn slice_cgroup(id: &str) -> String {
    format!("/{SLICE}/{}", slice_name(id))
}

/// `shim-probe-<id>.timer`.
pub fn probe_timer_name(id: &str) -> String {
    format!("{PROBE_PREFIX}{id}.timer")
}

/// `shim-probe-<id>.service`.
pub fn probe_service_name(id: &str) -> String {
    format!("{PROBE_PREFIX}{id}.service")
}

/// The service id a probe timer belongs to.
pub fn service_of_probe_timer(name: &str) -> Option<&str> {
    name.strip_prefix(PROBE_PREFIX)?
        .strip_suffix(".timer")
        .filter(|s| !s.is_empty())
}

/// `shimrun-<service>-<rev12>-<tag>`.
pub fn run_stem(service: &str, revision: &str, tag: &str) -> String {
    format!("{RUN_PREFIX}{service}-{}-{tag}", rev_in_name(revision))
}

/// Every one-off run of a service: `shimrun-<id>-*`.
pub fn run_units_glob(id: &str) -> String {
    format!("{RUN_PREFIX}{id}-*")
}

/// The anchor scope of an attached run: holds a child of the caller; when the caller dies the
/// child exits, the scope stops and takes the run (`BindsTo=`) with it.
pub fn anchor_scope(stem: &str) -> String {
    format!("{stem}-anchor.scope")
}

/// `shimcron-<service>-<job>` (timer and service share it).
pub fn cron_stem(service: &str, job: &str) -> String {
    format!("{CRON_PREFIX}{service}-{job}")
}

/// `shimcron-<service>-<job>.timer`.
pub fn cron_timer_name(service: &str, job: &str) -> String {
    format!("{}.timer", cron_stem(service, job))
}

/// Every cron unit (timers and services) of a service: `shimcron-<id>-*`.
pub fn cron_units_glob(id: &str) -> String {
    format!("{CRON_PREFIX}{id}-*")
}

/// The cron timers of one service (`shimcron-<id>-*.timer`), or of every service.
pub fn cron_timers_glob(id: Option<&str>) -> String {
    match id {
        Some(id) => format!("{CRON_PREFIX}{id}-*.timer"),
        None => format!("{CRON_PREFIX}*.timer"),
    }
}

/// `<service>-<job>` of a cron timer's name, if it is one.
pub fn cron_timer_stem(name: &str) -> Option<&str> {
    name.strip_prefix(CRON_PREFIX)?.strip_suffix(".timer")
}

/// What follows `shimcron-<id>-` in a cron unit's name, without `.timer`/`.service`: the job
/// key if the unit is one of service `id`'s (the caller checks the key's shape, since a
/// service `id-x` has units that start with `shimcron-id-` too).
pub fn cron_key_part<'a>(id: &str, unit: &'a str) -> Option<&'a str> {
    let rest = unit.strip_prefix(CRON_PREFIX)?.strip_prefix(id)?;
    let rest = rest.strip_prefix('-')?;
    rest.strip_suffix(".timer")
        .or_else(|| rest.strip_suffix(".service"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Hosts have units with these names: each is pinned as it is on today's hosts.
    #[test]
    fn names_are_pinned() {
        assert_eq!(
            instance_stem("billing_app", "web", "279d9035886d", "", 1),
            "shim-billing_app-web-279d9035886d-1"
        );
        assert_eq!(
            instance_stem("app", "web", "279d9035886dabcdef", "5e6f7a8b", 2),
            "shim-app-web-279d9035886d-5e6f7a8b-2"
        );
        assert_eq!(
            service_of_stem("shim-a-web-r1-1"),
            "shim-a-web-r1-1.service"
        );
        assert_eq!(service_units_glob("app"), "shim-app-*");
        assert_eq!(instance_prefix("app"), "shim-app-");
        assert_eq!(ALL_UNITS_GLOB, "shim-*");
        assert_eq!(service_unit_name("a-b"), "shim-a\\x2db.service");
        assert_eq!(slice_name("a-b"), "shim-a\\x2db.slice");
        assert_eq!(slice_cgroup("app"), "/shim.slice/shim-app.slice");
        assert_eq!(probe_timer_name("app"), "shim-probe-app.timer");
        assert_eq!(probe_service_name("app"), "shim-probe-app.service");
        assert_eq!(run_stem("app", "r1", "ab12"), "shimrun-app-r1-ab12");
        assert_eq!(run_units_glob("app"), "shimrun-app-*");
        assert_eq!(
            anchor_scope("shimrun-app-r1-ab12"),
            "shimrun-app-r1-ab12-anchor.scope"
        );
        assert_eq!(cron_stem("app", "0123456789"), "shimcron-app-0123456789");
        assert_eq!(
            cron_timer_name("app", "0123456789"),
            "shimcron-app-0123456789.timer"
        );
        assert_eq!(cron_units_glob("app"), "shimcron-app-*");
        assert_eq!(cron_timers_glob(Some("app")), "shimcron-app-*.timer");
        assert_eq!(cron_timers_glob(None), "shimcron-*.timer");
    }

    #[test]
    fn long_revisions_are_cut_and_hashed() {
        assert_eq!(rev_in_name("279d9035886d"), "279d9035886d");
        let long = rev_in_name("279d9035886dabcdef");
        assert!(long.starts_with("279d9035886d-") && long.len() == REV_IN_NAME + 9);
        assert_ne!(long, rev_in_name("279d9035886dabcdee"));
    }

    #[test]
    fn classifiers_read_back_what_the_builders_give() {
        assert_eq!(
            service_of_probe_timer(&probe_timer_name("a-b")),
            Some("a-b")
        );
        assert_eq!(service_of_probe_timer("shim-probe-.timer"), None);
        assert_eq!(service_of_probe_timer("shim-probe-a.service"), None);
        assert_eq!(cron_timer_stem(&cron_timer_name("a", "k")), Some("a-k"));
        assert_eq!(cron_timer_stem("shim-a.timer"), None);
        assert_eq!(cron_key_part("app", "shimcron-app-k1.timer"), Some("k1"));
        assert_eq!(
            cron_key_part("app", "shimcron-app-k1-2.service"),
            Some("k1-2")
        );
        assert_eq!(cron_key_part("app", "shimcron-apx-k1.timer"), None);
        assert_eq!(
            stem_of_service("shim-a-w-r-1.service"),
            Some("shim-a-w-r-1")
        );
        assert_eq!(stem_of_service("shim-a.timer"), None);
        assert!(is_service_unit_shaped("shim-a.service"));
        assert!(!is_service_unit_shaped("shim-a.slice"));
    }
}

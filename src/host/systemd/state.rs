//! A unit's `ActiveState` and `SubState` as enums, parsed once where systemd's strings come
//! in (the listing in `dbus.rs`, the fake's scripting through `From<&str>`), and what shim
//! reads from them: [`Phase`], the one classification behind "running", "present" and
//! "left behind" (see docs/architecture.md, "What is running"). They serialize back to
//! systemd's own strings, so `shim status --json` shows what systemd said.
//!
//! The states are those of org.freedesktop.systemd1(5) and systemd's `unit-def.c`
//! (`service_state_table`); a state this list does not know is kept as `Other(text)`.

use std::fmt;

use serde::{Serialize, Serializer};

/// Declares a string-backed enum with an `Other(String)` fallback: parsing, `as_str`,
/// `Display`, `Serialize` (as the string) and `From<&str>`/`From<String>`.
macro_rules! string_enum {
    ($(#[$m:meta])* $name:ident { $($(#[$vm:meta])* $variant:ident = $text:literal,)* }) => {
        $(#[$m])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
        pub enum $name {
            $($(#[$vm])* $variant,)*
            /// A state this version of shim does not know, as systemd spelled it.
            #[default]
            Unknown,
            Other(String),
        }

        impl $name {
            pub fn parse(s: &str) -> $name {
                match s {
                    $($text => $name::$variant,)*
                    "" => $name::Unknown,
                    other => $name::Other(other.to_string()),
                }
            }

            pub fn as_str(&self) -> &str {
                match self {
                    $($name::$variant => $text,)*
                    $name::Unknown => "",
                    $name::Other(s) => s,
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(self.as_str())
            }
        }

        impl From<&str> for $name {
            fn from(s: &str) -> $name {
                $name::parse(s)
            }
        }

        impl From<String> for $name {
            fn from(s: String) -> $name {
                $name::parse(&s)
            }
        }
    };
}

string_enum! {
    /// A unit's `ActiveState`.
    ActiveState {
        Active = "active",
        Reloading = "reloading",
        Inactive = "inactive",
        Failed = "failed",
        Activating = "activating",
        Deactivating = "deactivating",
        Maintenance = "maintenance",
        Refreshing = "refreshing",
    }
}

string_enum! {
    /// A unit's `SubState` (for services; timers say `waiting`/`elapsed`, kept as such).
    SubState {
        Running = "running",
        Exited = "exited",
        Dead = "dead",
        Failed = "failed",
        AutoRestart = "auto-restart",
        Condition = "condition",
        Start = "start",
        StartPre = "start-pre",
        StartPost = "start-post",
        Reload = "reload",
        Stop = "stop",
        StopWatchdog = "stop-watchdog",
        StopSigterm = "stop-sigterm",
        StopSigkill = "stop-sigkill",
        StopPost = "stop-post",
        FinalWatchdog = "final-watchdog",
        FinalSigterm = "final-sigterm",
        FinalSigkill = "final-sigkill",
        Cleaning = "cleaning",
        Waiting = "waiting",
        Elapsed = "elapsed",
    }
}

impl SubState {
    /// A service on its way down: stopping its main process, running `ExecStopPost`, or
    /// killing what is left of its cgroup.
    pub fn is_stopping(&self) -> bool {
        matches!(
            self,
            SubState::Stop
                | SubState::StopWatchdog
                | SubState::StopSigterm
                | SubState::StopSigkill
                | SubState::StopPost
                | SubState::FinalWatchdog
                | SubState::FinalSigterm
                | SubState::FinalSigkill
        )
    }
}

/// Where a unit is in its life, as shim's decisions need it. The one classification of
/// [`super::UnitInfo::phase`]; every "is it running / is it there" question is answered
/// from it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Active, sub-state running, with a main process: it serves.
    Running,
    /// Present but not (yet) serving: starting, between automatic restarts, reloading, or
    /// active without a main process. A start must not start another of it.
    Starting,
    /// On its way down (deactivating, a stop sub-state): its processes may still run and hold
    /// their mounts, but it will not serve again; a start waits for it to end.
    Stopping,
    /// Failed or inactive: left behind by a stop or a crash. Never present: it is reset
    /// (unloaded) and a fresh instance started in its place.
    Left,
}

impl Phase {
    /// Classifies a unit from its states and main pid.
    pub fn of(active: &ActiveState, sub: &SubState, main_pid: u32) -> Phase {
        match active {
            ActiveState::Failed | ActiveState::Inactive => Phase::Left,
            ActiveState::Deactivating => Phase::Stopping,
            _ if sub.is_stopping() => Phase::Stopping,
            ActiveState::Active if *sub == SubState::Running && main_pid != 0 => Phase::Running,
            // Activating, reloading, refreshing, maintenance, a state not known: there, and
            // not ours to start again.
            _ => Phase::Starting,
        }
    }

    /// Present: up or coming up (running or starting), what a start counts as there.
    pub fn is_present(self) -> bool {
        matches!(self, Phase::Running | Phase::Starting)
    }

    /// Its processes may still run (present or stopping): what may hold a volume mounted.
    pub fn may_have_processes(self) -> bool {
        self != Phase::Left
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_parse_and_print_as_systemd_spells_them() {
        for s in [
            "active",
            "failed",
            "deactivating",
            "maintenance",
            "refreshing",
        ] {
            assert_eq!(ActiveState::parse(s).as_str(), s);
        }
        assert_eq!(
            ActiveState::parse("sleeping"),
            ActiveState::Other("sleeping".into())
        );
        assert_eq!(SubState::parse("auto-restart"), SubState::AutoRestart);
        assert_eq!(SubState::parse("final-sigkill"), SubState::FinalSigkill);
        assert_eq!(
            serde_json::to_string(&SubState::StopSigterm).unwrap(),
            "\"stop-sigterm\""
        );
        assert_eq!(ActiveState::default().as_str(), "");
    }

    #[test]
    fn one_classification_of_running_present_and_left() {
        use ActiveState as A;
        use SubState as S;
        let cases = [
            (A::Active, S::Running, 7, Phase::Running),
            (A::Active, S::Running, 0, Phase::Starting),
            (A::Active, S::Exited, 0, Phase::Starting),
            (A::Activating, S::AutoRestart, 0, Phase::Starting),
            (A::Activating, S::Start, 7, Phase::Starting),
            (A::Reloading, S::Reload, 7, Phase::Starting),
            (A::Deactivating, S::StopSigterm, 7, Phase::Stopping),
            (A::Activating, S::FinalSigkill, 7, Phase::Stopping),
            (A::Failed, S::Failed, 0, Phase::Left),
            (A::Inactive, S::Dead, 0, Phase::Left),
        ];
        for (a, s, pid, want) in cases {
            assert_eq!(Phase::of(&a, &s, pid), want, "{a}/{s} pid {pid}");
        }
        assert!(Phase::Starting.is_present() && !Phase::Stopping.is_present());
        assert!(Phase::Stopping.may_have_processes() && !Phase::Left.may_have_processes());
    }
}

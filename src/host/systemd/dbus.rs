//! [`Systemd`] over D-Bus with zbus: `org.freedesktop.systemd1.Manager` on the system bus.
//! See systemd's org.freedesktop.systemd1(5) for the methods and property types used here.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::os::fd::BorrowedFd;
use std::pin::pin;
use std::time::Duration;

use futures_util::future::{select, Either};
use futures_util::StreamExt;
use zbus::{Connection, OwnedObjectPath, OwnedVariant, Variant};

use super::{JobOutcome, ListedUnit, ReadError, Systemd, SystemdError, TimerInfo, UnitInfo};
use crate::plan::{Prop, UnitSpec};

#[zbus::proxy(
    interface = "org.freedesktop.systemd1.Manager",
    default_service = "org.freedesktop.systemd1",
    default_path = "/org/freedesktop/systemd1"
)]
trait Manager {
    fn subscribe(&self) -> zbus::Result<()>;

    fn start_transient_unit(
        &self,
        name: &str,
        mode: &str,
        properties: Vec<(&str, Variant<'_>)>,
        aux: Vec<(&str, Vec<(&str, Variant<'_>)>)>,
    ) -> zbus::Result<OwnedObjectPath>;

    fn stop_unit(&self, name: &str, mode: &str) -> zbus::Result<OwnedObjectPath>;

    fn start_unit(&self, name: &str, mode: &str) -> zbus::Result<OwnedObjectPath>;

    fn kill_unit(&self, name: &str, whom: &str, signal: i32) -> zbus::Result<()>;

    fn reset_failed_unit(&self, name: &str) -> zbus::Result<()>;

    fn ref_unit(&self, name: &str) -> zbus::Result<()>;

    fn unref_unit(&self, name: &str) -> zbus::Result<()>;

    fn reload_unit(&self, name: &str, mode: &str) -> zbus::Result<OwnedObjectPath>;

    fn reload(&self) -> zbus::Result<()>;

    fn enable_unit_files(
        &self,
        files: &[&str],
        runtime: bool,
        force: bool,
    ) -> zbus::Result<(bool, Vec<(String, String, String)>)>;

    fn disable_unit_files(
        &self,
        files: &[&str],
        runtime: bool,
    ) -> zbus::Result<Vec<(String, String, String)>>;

    fn get_unit_file_state(&self, file: &str) -> zbus::Result<String>;

    #[allow(clippy::type_complexity)]
    fn list_units_by_patterns(
        &self,
        states: &[&str],
        patterns: &[&str],
    ) -> zbus::Result<
        Vec<(
            String,
            String,
            String,
            String,
            String,
            String,
            OwnedObjectPath,
            u32,
            String,
            OwnedObjectPath,
        )>,
    >;

    #[zbus(signal)]
    fn job_removed(
        &self,
        id: u32,
        job: OwnedObjectPath,
        unit: String,
        result: String,
    ) -> zbus::Result<()>;
}

#[zbus::proxy(interface = "org.freedesktop.DBus.Properties")]
trait Props {
    fn get_all(&self, interface: &str) -> zbus::Result<HashMap<String, OwnedVariant>>;

    fn get(&self, interface: &str, name: &str) -> zbus::Result<OwnedVariant>;
}

/// Calls shim keeps pending on its bus connection at once. dbus-daemon refuses more than
/// `max_replies_per_connection` (128 on the system bus, see /usr/share/dbus-1/system.conf)
/// with LimitsExceeded; with all of 400 units' GetAll in flight, `shim status` silently
/// lost more than half of them.
const MAX_CALLS_IN_FLIGHT: usize = 64;

/// What [`UnitInfo`] holds of every service unit, from its Service interface.
const SERVICE_PROPS: [&str; 4] = [
    "MainPID",
    "NRestarts",
    "ExecMainStartTimestamp",
    "LogExtraFields",
];

/// How the last main process ended: read for units not running or restarted.
const EXIT_PROPS: [&str; 4] = [
    "ExecMainCode",
    "ExecMainStatus",
    "ExecMainExitTimestamp",
    // "oom-kill" when the kernel's OOM killer ended it (its memory limit).
    "Result",
];

/// Reads `names` of `interface` with one Get each, concurrently.
async fn get_props(
    props: &PropsProxy<'_>,
    interface: &str,
    names: &[&str],
) -> zbus::Result<HashMap<String, OwnedVariant>> {
    let gets = names
        .iter()
        .map(|name| async move { (*name, props.get(interface, name).await) });
    let mut out = HashMap::new();
    for (name, v) in futures_util::future::join_all(gets).await {
        out.insert(name.to_string(), v?);
    }
    Ok(out)
}

/// A connection to systemd on the system bus.
pub struct DbusSystemd {
    conn: Connection,
}

/// Resolves after `d`. zbus' default runtime has no public timer, so a short-lived thread
/// sleeps and wakes the task; shim makes a handful of these per command.
async fn sleep(d: Duration) {
    let fired: Shared = Default::default();
    let state = fired.clone();
    std::thread::spawn(move || {
        std::thread::sleep(d);
        if let Ok(mut g) = state.lock() {
            g.0 = true;
            if let Some(w) = g.1.take() {
                w.wake();
            }
        }
    });
    Fired(fired).await
}

type Shared = std::sync::Arc<std::sync::Mutex<(bool, Option<std::task::Waker>)>>;
struct Fired(Shared);

impl Future for Fired {
    type Output = ();
    fn poll(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<()> {
        match self.0.lock() {
            Ok(mut g) if !g.0 => {
                g.1 = Some(cx.waker().clone());
                std::task::Poll::Pending
            }
            _ => std::task::Poll::Ready(()),
        }
    }
}

/// Runs `fut` with a deadline.
async fn with_timeout<T>(fut: impl Future<Output = T>, d: Duration) -> Option<T> {
    match select(pin!(fut), pin!(sleep(d))).await {
        Either::Left((v, _)) => Some(v),
        Either::Right(_) => None,
    }
}

fn to_variant(p: &Prop) -> Variant<'static> {
    match p {
        Prop::Str(s) => Variant::from(s.clone()),
        Prop::Bool(b) => Variant::from(*b),
        Prop::USec(u) => Variant::from(*u),
        Prop::I32(n) => Variant::from(*n),
        Prop::U32(n) => Variant::from(*n),
        Prop::U64(n) => Variant::from(*n),
        Prop::Bytes(v) => Variant::from(
            v.iter()
                .map(|s| s.as_bytes().to_vec())
                .collect::<Vec<Vec<u8>>>(),
        ),
        Prop::Exec(cmds) => Variant::from(
            cmds.iter()
                .map(|c| (c.path.clone(), c.argv.clone(), c.ignore_failure))
                .collect::<Vec<(String, Vec<String>, bool)>>(),
        ),
        Prop::Strs(v) => Variant::from(v.clone()),
        Prop::Timers(v) => Variant::from(v.clone()),
        Prop::Calendars(v) => Variant::from(v.clone()),
        Prop::U32s(v) => Variant::from(v.clone()),
        Prop::Data(d) => Variant::from(d.clone()),
    }
}

fn to_props(spec: &UnitSpec) -> Vec<(&str, Variant<'static>)> {
    spec.properties
        .iter()
        .map(|(k, v)| (k.as_str(), to_variant(v)))
        .collect()
}

fn call_err(call: &'static str, unit: &str, e: zbus::Error) -> SystemdError {
    let message = match &e {
        zbus::Error::MethodError(name, Some(msg), _) => format!("{msg} ({name})"),
        other => other.to_string(),
    };
    SystemdError::Call {
        call,
        unit: unit.to_string(),
        message,
    }
}

/// A unit file that does not exist (GetUnitFileState, DisableUnitFiles).
fn is_no_such_file(e: &zbus::Error) -> bool {
    matches!(e, zbus::Error::MethodError(name, _, _)
        if matches!(name.as_str(), "org.freedesktop.DBus.Error.FileNotFound" | "org.freedesktop.systemd1.NoSuchUnit"))
}

/// A property read's error as [`ReadError`]: the unit gone (no such unit, or its object
/// path unknown to systemd) or any other failure, with its cause.
fn read_error(e: zbus::Error) -> ReadError {
    match &e {
        zbus::Error::MethodError(name, _, _)
            if matches!(
                name.as_str(),
                "org.freedesktop.systemd1.NoSuchUnit" | "org.freedesktop.DBus.Error.UnknownObject"
            ) =>
        {
            ReadError::Vanished
        }
        _ => match call_err("Get", "", e) {
            SystemdError::Call { message, .. } => ReadError::Failed(message),
            other => ReadError::Failed(other.to_string()),
        },
    }
}

fn is_no_such_unit(e: &zbus::Error) -> bool {
    matches!(e, zbus::Error::MethodError(name, _, _)
        if name.as_str() == "org.freedesktop.systemd1.NoSuchUnit")
}

impl DbusSystemd {
    pub fn connect() -> Result<DbusSystemd, SystemdError> {
        let conn = zbus::block_on(Connection::system())
            .map_err(|e| SystemdError::Connect(e.to_string()))?;
        Ok(DbusSystemd { conn })
    }

    async fn manager(&self) -> Result<ManagerProxy<'_>, SystemdError> {
        ManagerProxy::new(&self.conn)
            .await
            .map_err(|e| SystemdError::Connect(e.to_string()))
    }

    /// Issues one job per unit with `issue`, then waits for all of them through `JobRemoved`.
    /// `issue` returning `Ok(None)` means no job was needed (e.g. the unit is already gone).
    async fn run_jobs<'a, F, Fut>(
        &'a self,
        units: &'a [String],
        timeout: Duration,
        issue: F,
    ) -> Result<Vec<JobOutcome>, SystemdError>
    where
        F: Fn(ManagerProxy<'a>, &'a str) -> Fut,
        Fut: Future<Output = Result<Option<OwnedObjectPath>, SystemdError>> + 'a,
    {
        let manager = self.manager().await?;
        // Needed for JobRemoved to be sent; a second call on one connection says so, harmlessly.
        match manager.subscribe().await {
            Ok(()) => {}
            Err(zbus::Error::MethodError(name, _, _))
                if name.as_str() == "org.freedesktop.systemd1.AlreadySubscribed" => {}
            Err(e) => return Err(call_err("Subscribe", "", e)),
        }
        // Subscribe to JobRemoved before the calls, so that no job can finish unseen.
        let mut removed = manager
            .receive_job_removed()
            .await
            .map_err(|e| call_err("AddMatch JobRemoved", "", e))?;

        let mut pending: HashMap<OwnedObjectPath, String> = HashMap::new();
        let mut outcomes = Vec::new();
        for unit in units {
            match issue(manager.clone(), unit).await {
                Ok(Some(job)) => {
                    pending.insert(job, unit.clone());
                }
                Ok(None) => outcomes.push(JobOutcome {
                    unit: unit.clone(),
                    result: "done".into(),
                }),
                Err(e) => {
                    // Wait for what was already issued, so the caller sees a consistent state.
                    let _ = with_timeout(drain(&mut removed, &mut pending), timeout).await;
                    return Err(e);
                }
            }
        }
        let waited = with_timeout(
            async {
                let mut done = Vec::new();
                while !pending.is_empty() {
                    let Some(signal) = removed.next().await else {
                        break;
                    };
                    let Ok(args) = signal.args() else { continue };
                    if let Some(unit) = pending.remove(&args.job) {
                        done.push(JobOutcome {
                            unit,
                            result: args.result.clone(),
                        });
                    }
                }
                done
            },
            timeout,
        )
        .await;
        match waited {
            Some(done) => {
                outcomes.extend(done);
                Ok(outcomes)
            }
            None => Err(SystemdError::Timeout(
                timeout,
                pending.values().cloned().collect::<Vec<_>>().join(", "),
            )),
        }
    }
}

async fn drain(removed: &mut JobRemovedStream, pending: &mut HashMap<OwnedObjectPath, String>) {
    while !pending.is_empty() {
        let Some(signal) = removed.next().await else {
            break;
        };
        if let Ok(args) = signal.args() {
            pending.remove(&args.job);
        }
    }
}

fn variant_u32(m: &HashMap<String, OwnedVariant>, k: &str) -> u32 {
    m.get(k)
        .and_then(|v| u32::try_from(v.try_clone().ok()?).ok())
        .unwrap_or(0)
}

fn variant_i32(m: &HashMap<String, OwnedVariant>, k: &str) -> i32 {
    m.get(k)
        .and_then(|v| i32::try_from(v.try_clone().ok()?).ok())
        .unwrap_or(0)
}

fn variant_u64(m: &HashMap<String, OwnedVariant>, k: &str) -> u64 {
    m.get(k)
        .and_then(|v| u64::try_from(v.try_clone().ok()?).ok())
        .unwrap_or(0)
}

fn variant_string(m: &HashMap<String, OwnedVariant>, k: &str) -> String {
    m.get(k)
        .and_then(|v| String::try_from(v.try_clone().ok()?).ok())
        .unwrap_or_default()
}

fn extra_fields(m: &HashMap<String, OwnedVariant>) -> BTreeMap<String, String> {
    let Some(v) = m.get("LogExtraFields").and_then(|v| v.try_clone().ok()) else {
        return BTreeMap::new();
    };
    let raw: Vec<Vec<u8>> = Vec::try_from(v).unwrap_or_default();
    raw.iter()
        .filter_map(|f| {
            let s = String::from_utf8_lossy(f);
            let (k, v) = s.split_once('=')?;
            Some((k.to_string(), v.to_string()))
        })
        .collect()
}

impl DbusSystemd {
    /// A string property of systemd's Manager (`Version`, `SystemState`); `call` names it in
    /// errors.
    fn manager_string(&self, prop: &str, call: &'static str) -> Result<String, SystemdError> {
        zbus::block_on(async {
            let props = PropsProxy::builder(&self.conn)
                .destination("org.freedesktop.systemd1")
                .path("/org/freedesktop/systemd1")
                .build()
                .await
                .map_err(|e| call_err(call, "", e))?;
            let v = props
                .get("org.freedesktop.systemd1.Manager", prop)
                .await
                .map_err(|e| call_err(call, "", e))?;
            String::try_from(v).map_err(|e| SystemdError::Call {
                call,
                unit: String::new(),
                message: e.to_string(),
            })
        })
    }
}

impl Systemd for DbusSystemd {
    fn list_units(&self, patterns: &[String]) -> Result<Vec<UnitInfo>, SystemdError> {
        let listed = self.list(patterns)?;
        self.read_units(&listed)
    }

    fn start_transient(
        &self,
        units: &[UnitSpec],
        timeout: Duration,
    ) -> Result<Vec<JobOutcome>, SystemdError> {
        let names: Vec<String> = units.iter().map(|u| u.name.clone()).collect();
        let by_name: HashMap<&str, &UnitSpec> =
            units.iter().map(|u| (u.name.as_str(), u)).collect();
        zbus::block_on(self.run_jobs(&names, timeout, |m, name| {
            let spec = by_name.get(name).copied();
            async move {
                let Some(spec) = spec else { return Ok(None) };
                m.start_transient_unit(name, "fail", to_props(spec), vec![])
                    .await
                    .map(Some)
                    .map_err(|e| call_err("StartTransientUnit", name, e))
            }
        }))
    }

    fn reload_unit(&self, name: &str, timeout: Duration) -> Result<JobOutcome, SystemdError> {
        let names = [name.to_string()];
        let mut out = zbus::block_on(self.run_jobs(&names, timeout, |m, name| async move {
            m.reload_unit(name, "replace")
                .await
                .map(Some)
                .map_err(|e| call_err("ReloadUnit", name, e))
        }))?;
        out.pop().ok_or_else(|| SystemdError::Call {
            call: "ReloadUnit",
            unit: name.to_string(),
            message: "no job outcome".into(),
        })
    }

    fn stop_units(
        &self,
        names: &[String],
        timeout: Duration,
    ) -> Result<Vec<JobOutcome>, SystemdError> {
        let out = zbus::block_on(self.run_jobs(names, timeout, |m, name| async move {
            match m.stop_unit(name, "replace").await {
                Ok(job) => Ok(Some(job)),
                // Already gone is what we wanted: stopping is idempotent.
                Err(e) if is_no_such_unit(&e) => Ok(None),
                Err(e) => Err(call_err("StopUnit", name, e)),
            }
        }))?;
        // Instances use CollectMode=inactive so that a crash-looping one stays visible as
        // failed; stopping one that failed must unload it all the same.
        self.reset_failed(names)?;
        Ok(out)
    }

    fn start_units(
        &self,
        names: &[String],
        timeout: Duration,
    ) -> Result<Vec<JobOutcome>, SystemdError> {
        zbus::block_on(self.run_jobs(names, timeout, |m, name| async move {
            m.start_unit(name, "replace")
                .await
                .map(Some)
                .map_err(|e| call_err("StartUnit", name, e))
        }))
    }

    fn start_transient_with_aux(
        &self,
        unit: &UnitSpec,
        aux: &[UnitSpec],
        timeout: Duration,
    ) -> Result<JobOutcome, SystemdError> {
        self.start_with_fds(unit, aux, &[], timeout)
    }

    fn kill_main(&self, name: &str, signal: i32) -> Result<(), SystemdError> {
        zbus::block_on(async {
            self.manager()
                .await?
                .kill_unit(name, "main", signal)
                .await
                .map_err(|e| call_err("KillUnit", name, e))
        })
    }

    fn reset_failed(&self, names: &[String]) -> Result<(), SystemdError> {
        zbus::block_on(async {
            let m = self.manager().await?;
            for name in names {
                match m.reset_failed_unit(name).await {
                    Ok(()) => {}
                    Err(e) if is_no_such_unit(&e) => {}
                    Err(e) => return Err(call_err("ResetFailedUnit", name, e)),
                }
            }
            Ok(())
        })
    }

    fn restart_failed(&self, name: &str, timeout: Duration) -> Result<JobOutcome, SystemdError> {
        let names = [name.to_string()];
        zbus::block_on(async {
            let m = self.manager().await?;
            // The reference lives as long as this connection or until UnrefUnit.
            m.ref_unit(name)
                .await
                .map_err(|e| call_err("RefUnit", name, e))?;
            let r = async {
                m.reset_failed_unit(name)
                    .await
                    .map_err(|e| call_err("ResetFailedUnit", name, e))?;
                self.run_jobs(&names, timeout, |m, name| async move {
                    m.start_unit(name, "replace")
                        .await
                        .map(Some)
                        .map_err(|e| call_err("StartUnit", name, e))
                })
                .await
            }
            .await;
            let _ = m.unref_unit(name).await;
            let mut out = r?;
            out.pop().ok_or_else(|| SystemdError::Call {
                call: "StartUnit",
                unit: name.to_string(),
                message: "no job outcome".into(),
            })
        })
    }

    fn version(&self) -> Result<String, SystemdError> {
        self.manager_string("Version", "Get Version")
    }

    /// Starts `unit` (with auxiliary units created in the same call) whose properties include
    /// file descriptors, e.g. `StandardInputFileDescriptor`: systemd receives duplicates.
    fn start_with_fds(
        &self,
        unit: &UnitSpec,
        aux: &[UnitSpec],
        fds: &[(&str, BorrowedFd<'_>)],
        timeout: Duration,
    ) -> Result<JobOutcome, SystemdError> {
        let names = [unit.name.clone()];
        let mut out = zbus::block_on(self.run_jobs(&names, timeout, |m, name| async move {
            let aux: Vec<(&str, Vec<(&str, Variant<'_>)>)> =
                aux.iter().map(|a| (a.name.as_str(), to_props(a))).collect();
            let mut props = to_props(unit);
            for (k, fd) in fds {
                props.push((k, Variant::from(zbus::Fd::from(*fd))));
            }
            m.start_transient_unit(name, "fail", props, aux)
                .await
                .map(Some)
                .map_err(|e| call_err("StartTransientUnit", name, e))
        }))?;
        out.pop().ok_or_else(|| SystemdError::Call {
            call: "StartTransientUnit",
            unit: unit.name.clone(),
            message: "no job outcome".into(),
        })
    }

    /// Drops the reference `AddRef=yes` gave this client, so the unit can be unloaded.
    fn unref(&self, name: &str) -> Result<(), SystemdError> {
        zbus::block_on(async {
            match self.manager().await?.unref_unit(name).await {
                Ok(()) => Ok(()),
                Err(e) if is_no_such_unit(&e) => Ok(()),
                Err(e) => Err(call_err("UnrefUnit", name, e)),
            }
        })
    }

    fn daemon_reload(&self) -> Result<(), SystemdError> {
        zbus::block_on(async {
            self.manager()
                .await?
                .reload()
                .await
                .map_err(|e| call_err("Reload", "", e))
        })
    }

    fn enable_unit_files(&self, names: &[String]) -> Result<(), SystemdError> {
        let files: Vec<&str> = names.iter().map(|s| s.as_str()).collect();
        zbus::block_on(async {
            self.manager()
                .await?
                .enable_unit_files(&files, false, false)
                .await
                .map(|_| ())
                .map_err(|e| call_err("EnableUnitFiles", &names.join(" "), e))
        })
    }

    fn disable_unit_files(&self, names: &[String]) -> Result<(), SystemdError> {
        zbus::block_on(async {
            let m = self.manager().await?;
            for n in names {
                match m.disable_unit_files(&[n.as_str()], false).await {
                    Ok(_) => {}
                    Err(e) if is_no_such_file(&e) => {}
                    Err(e) => return Err(call_err("DisableUnitFiles", n, e)),
                }
            }
            Ok(())
        })
    }

    fn unit_file_state(&self, name: &str) -> Result<Option<String>, SystemdError> {
        zbus::block_on(async {
            match self.manager().await?.get_unit_file_state(name).await {
                Ok(s) => Ok(Some(s)),
                Err(e) if is_no_such_file(&e) => Ok(None),
                Err(e) => Err(call_err("GetUnitFileState", name, e)),
            }
        })
    }

    fn queue_stop(&self, names: &[String]) -> Result<(), SystemdError> {
        zbus::block_on(async {
            let m = self.manager().await?;
            for n in names {
                match m.stop_unit(n, "replace").await {
                    Ok(_) => {}
                    Err(e) if is_no_such_unit(&e) => {}
                    Err(e) => return Err(call_err("StopUnit", n, e)),
                }
            }
            Ok(())
        })
    }

    fn system_state(&self) -> Result<String, SystemdError> {
        self.manager_string("SystemState", "Get SystemState")
    }

    /// The units whose names match any of `patterns`: one `ListUnitsByPatterns`, no
    /// properties. [`Systemd::list_units`] is this followed by [`DbusSystemd::read_units`].
    fn list(&self, patterns: &[String]) -> Result<Vec<ListedUnit>, SystemdError> {
        zbus::block_on(async {
            let manager = self.manager().await?;
            let pats: Vec<&str> = patterns.iter().map(|s| s.as_str()).collect();
            let listed = manager
                .list_units_by_patterns(&[], &pats)
                .await
                .map_err(|e| call_err("ListUnitsByPatterns", &patterns.join(" "), e))?;
            Ok(listed
                .into_iter()
                .map(|u| ListedUnit {
                    name: u.0,
                    description: u.1,
                    load_state: u.2,
                    // Parsed once, here, where systemd's strings come in.
                    active_state: u.3.into(),
                    sub_state: u.4.into(),
                    path: u.6.to_string(),
                })
                .collect())
        })
    }

    /// The timers among `listed`, with when they elapse next and last did (two `Get`s each).
    fn read_timers(&self, listed: &[ListedUnit]) -> Result<Vec<TimerInfo>, SystemdError> {
        zbus::block_on(async {
            let mut out = Vec::new();
            for u in listed.iter().filter(|u| u.name.ends_with(".timer")) {
                let props = async {
                    PropsProxy::builder(&self.conn)
                        .destination("org.freedesktop.systemd1")
                        .path(u.path.as_str())
                        .build()
                        .await
                }
                .await
                .map_err(|e| call_err("Properties", &u.name, e))?;
                let m = get_props(
                    &props,
                    "org.freedesktop.systemd1.Timer",
                    &["NextElapseUSecRealtime", "LastTriggerUSec"],
                )
                .await
                .map_err(|e| call_err("Get", &u.name, e))?;
                out.push(TimerInfo {
                    name: u.name.clone(),
                    active_state: u.active_state.clone(),
                    next_elapse_usec: variant_u64(&m, "NextElapseUSecRealtime"),
                    last_trigger_usec: variant_u64(&m, "LastTriggerUSec"),
                });
            }
            Ok(out)
        })
    }

    /// `listed` with their properties: the few shim reads, one Get each, all in flight at
    /// once up to MAX_CALLS_IN_FLIGHT, a few round trips' latency in total. (Not GetAll: the
    /// Service interface has some 250 properties, and decoding them was most of the CPU time
    /// of a probe run.) How the last main process ended is only read where it matters: a
    /// unit that is not running, or was restarted. Units that vanished meanwhile are left
    /// out; the result is sorted by name.
    fn read_units(&self, listed: &[ListedUnit]) -> Result<Vec<UnitInfo>, SystemdError> {
        zbus::block_on(async {
            let reads = listed.iter().map(|u| {
                let is_service = u.name.ends_with(".service");
                let running = u.is_running();
                let failed = u.active_state == super::ActiveState::Failed;
                let auto_restart = u.sub_state == super::SubState::AutoRestart;
                async move {
                    // Timers and other units have no Service interface: the listing says
                    // all shim needs of them.
                    if !is_service {
                        return Ok(HashMap::new());
                    }
                    let props = PropsProxy::builder(&self.conn)
                        .destination("org.freedesktop.systemd1")
                        .path(u.path.as_str())
                        .build()
                        .await?;
                    const SERVICE: &str = "org.freedesktop.systemd1.Service";
                    let mut all = get_props(&props, SERVICE, &SERVICE_PROPS).await?;
                    if !running || variant_u32(&all, "NRestarts") > 0 {
                        all.extend(get_props(&props, SERVICE, &EXIT_PROPS).await?);
                    }
                    // When a failed unit failed, and when an automatic restart comes (≥ 254;
                    // unknown before, hence no error).
                    if failed {
                        all.extend(
                            get_props(
                                &props,
                                "org.freedesktop.systemd1.Unit",
                                &["StateChangeTimestamp"],
                            )
                            .await?,
                        );
                    }
                    if auto_restart {
                        all.extend(
                            get_props(&props, SERVICE, &["RestartUSecNext"])
                                .await
                                .unwrap_or_default(),
                        );
                    }
                    Ok::<_, zbus::Error>(all)
                }
            });
            let props: Vec<_> = futures_util::stream::iter(reads)
                .buffered((MAX_CALLS_IN_FLIGHT / SERVICE_PROPS.len()).max(1))
                .collect()
                .await;
            // A unit can vanish between the listing and the read: it is left out; any other
            // read error is an error (see `collect_reads`).
            let reads = props.into_iter().map(|p| p.map_err(read_error));
            let mut out = super::collect_reads(listed, reads, |u, p| UnitInfo {
                name: u.name.clone(),
                description: u.description.clone(),
                load_state: u.load_state.clone(),
                active_state: u.active_state.clone(),
                sub_state: u.sub_state.clone(),
                main_pid: variant_u32(&p, "MainPID"),
                n_restarts: variant_u32(&p, "NRestarts"),
                main_start_usec: variant_u64(&p, "ExecMainStartTimestamp"),
                exec_main_code: variant_i32(&p, "ExecMainCode"),
                exec_main_status: variant_i32(&p, "ExecMainStatus"),
                exec_main_exit_usec: variant_u64(&p, "ExecMainExitTimestamp"),
                failed_since_usec: variant_u64(&p, "StateChangeTimestamp"),
                restart_usec_next: variant_u64(&p, "RestartUSecNext"),
                result: variant_string(&p, "Result"),
                fields: extra_fields(&p),
            })?;
            out.sort_by(|a, b| a.name.cmp(&b.name));
            Ok(out)
        })
    }
}

//! `shim run`: one command in a container of a service's image, as a transient unit.
//!
//! Flow (attached): gather host facts ([`instances::prepare`]), write the bundle, spawn an
//! *anchor* child (`shim instance anchor`, blocked reading a pipe this process holds), then
//! start the anchor's scope and the run's service in one `StartTransientUnit` call. The
//! service is `BindsTo=` the scope: if this process dies, even by SIGKILL, the pipe closes,
//! the anchor exits, the scope stops and systemd stops the run, whose `ExecStopPost` removes
//! the runtime state and the bundle. The caller's stdin (with `-i`), a pair of pipes for
//! stdout/stderr, or (`-t`) the caller's terminal are handed to systemd as file descriptors.
//! Output from the pipes is copied to the caller and, line by line, to the journal with the
//! SHIM_* fields. Signals to shim (INT, TERM, HUP, QUIT, and WINCH with `-t`) are sent to the
//! runtime, which passes them to the container. When the unit is inactive, its
//! `ExecMainStatus` is the exit code (kept readable by `AddRef=yes` until read).
//!
//! No fork after the D-Bus connection exists (zbus runs threads): the anchor is a fresh
//! `exec` of shim, and the pseudo-terminal of `-t` is made by the runtime from its console
//! socket, not by shim.

use std::io::{IsTerminal, Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use nix::sys::signal::{SigSet, Signal};

use crate::config::{Definitions, Runtime};
use crate::error::BadInput;
use crate::host::dirs::Dirs;
use crate::host::journal;
use crate::host::state::StateStore;
use crate::host::systemd::SharedSystemd;
use crate::host::Host;
use crate::ops::instances;
use crate::plan::oneoff::{self, Attach, OneOff};
use crate::plan::Prepared;

/// How long systemd may take to start a one-off (mounting its overlay).
const START_TIMEOUT: Duration = Duration::from_secs(90);
/// How often the unit's state is read while the command runs: every 5 ms at first (short
/// commands, e.g. a migration that has nothing to do, end within a few polls), doubling up to
/// every 100 ms for long ones.
const POLL_FIRST: Duration = Duration::from_millis(5);
const POLL_MAX: Duration = Duration::from_millis(100);

/// What to run.
#[derive(Debug, Clone)]
pub struct RunRequest {
    pub id: String,
    pub revision: Option<String>,
    pub process: Option<String>,
    pub interactive: bool,
    pub tty: bool,
    pub detach: bool,
    pub argv: Vec<String>,
}

/// The signals shim passes on to the command.
fn forwarded_signals(tty: bool) -> SigSet {
    let mut set = SigSet::empty();
    for s in [
        Signal::SIGINT,
        Signal::SIGTERM,
        Signal::SIGHUP,
        Signal::SIGQUIT,
    ] {
        set.add(s);
    }
    if tty {
        set.add(Signal::SIGWINCH);
    }
    set
}

/// The revision to run: the one given, else the service's current one.
pub fn revision_to_run(dirs: &Dirs, id: &str, given: Option<&str>) -> Result<String> {
    if let Some(r) = given {
        return Ok(r.to_string());
    }
    let state = StateStore::new(&dirs.state).load(id)?;
    state.current.ok_or_else(|| {
        anyhow!(BadInput(format!(
            "service {id:?} has no current revision on this host (never started); pass --revision"
        )))
    })
}

/// A short random tag for unit names, so that runs never collide.
fn random_tag() -> String {
    let mut b = [0u8; 3];
    let read = std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut b));
    if read.is_err() {
        // Unique enough per host: the pid and the clock.
        let n = std::process::id()
            ^ std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.subsec_nanos())
                .unwrap_or(0);
        b = [n as u8, (n >> 8) as u8, (n >> 16) as u8];
    }
    hex::encode(b)
}

/// Where a run's bundle lives: `/run/shim/runs/<service>/<stem>`.
pub fn run_dir(dirs: &Dirs, service: &str, stem: &str) -> PathBuf {
    dirs.run_bundle(service, stem)
}

/// Writes `config.json` (0600; it holds the secrets) into a fresh 0700 directory.
pub fn write_config(dir: &Path, spec: &oci_spec::runtime::Spec) -> Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("creating {}", dir.display()))?;
    let text = crate::plan::render_config(spec);
    crate::host::fsutil::write_atomic(
        &crate::plan::InstanceDir(dir).config(),
        text.as_bytes(),
        0o600,
    )
}

/// The process whose settings a run borrows.
fn borrowed_process<'a>(
    p: &'a Prepared,
    name: Option<&str>,
) -> Result<Option<&'a crate::config::ProcessDef>> {
    let Some(name) = name else { return Ok(None) };
    match p.service.processes.iter().find(|(k, _)| k.as_str() == name) {
        Some((_, def)) => Ok(Some(def)),
        None => Err(anyhow!(BadInput(format!(
            "--process {name:?}: service {:?} has no such process (it has: {})",
            p.service.id.as_str(),
            p.service
                .processes
                .keys()
                .map(|k| k.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        )))),
    }
}

/// Where a run's stdout goes.
enum Sink {
    /// Copied to this process's stdout (and the journal).
    Echo,
    /// Kept in memory (and copied to the journal): `shim cron sync` reads generate-cron's
    /// crontab this way.
    Capture,
}

/// What an attached run ended with.
pub struct Finished {
    pub code: i32,
    pub stdout: Vec<u8>,
}

/// Runs a request; returns the command's exit code (or, detached, 0 once started).
pub fn run(host: &Host, defs: &Definitions, req: &RunRequest) -> Result<i32> {
    if req.argv.is_empty() {
        bail!(BadInput(
            "no command given: shim run --id ID [--revision REV] -- CMD [ARGS...]".into()
        ));
    }
    if req.tty && req.detach {
        bail!(BadInput(
            "-t and --detach do not go together: a detached run has no terminal".into()
        ));
    }
    if req.tty && !std::io::stdin().is_terminal() {
        bail!(BadInput(
            "-t needs a terminal on standard input (use -i to pipe input instead)".into()
        ));
    }
    // Before any thread exists (image pulls, D-Bus), so that every thread inherits the mask
    // and the signals wait for the forwarding thread.
    let forwarder = if req.detach {
        None
    } else {
        let set = forwarded_signals(req.tty);
        set.thread_block()
            .context("blocking signals to forward them")?;
        Some(Forwarder::start(set))
    };
    let prepared = instances::prepare_for_run(host, defs, &req.id, req.revision.as_deref())?;
    let attach = if req.detach {
        Attach::Detached
    } else if req.tty {
        Attach::Tty
    } else {
        Attach::Pipes
    };
    let mut env = Vec::new();
    if req.tty {
        let term = std::env::var("TERM").unwrap_or_else(|_| "xterm".into());
        env.push(("TERM".to_string(), term));
    }
    let sink = Sink::Echo;
    let finished = run_prepared(
        host,
        &prepared,
        req.process.as_deref(),
        &req.argv,
        env,
        attach,
        req.interactive || req.tty,
        sink,
        forwarder.as_ref(),
    )?;
    Ok(finished.code)
}

/// Runs `argv` at `prepared`'s revision with its stdout captured; stderr goes to this
/// process's stderr and the journal. For generate-cron.
pub fn run_capture(host: &Host, prepared: &Prepared, argv: &[String]) -> Result<Finished> {
    run_prepared(
        host,
        prepared,
        None,
        argv,
        Vec::new(),
        Attach::Pipes,
        false,
        Sink::Capture,
        None,
    )
}

/// One-offs run the runtime in the foreground; podman services have no such path yet.
fn refuse_podman(prepared: &Prepared) -> Result<()> {
    if prepared.service.runtime == Runtime::Podman {
        bail!(
            "shim run: service {:?} uses runtime = \"podman\"; one-off runs support runc and crun \
             (use `podman run` with the same image meanwhile)",
            prepared.service.id.as_str()
        );
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn run_prepared(
    host: &Host,
    prepared: &Prepared,
    process: Option<&str>,
    argv: &[String],
    env: Vec<(String, String)>,
    attach: Attach,
    stdin: bool,
    sink: Sink,
    signals: Option<&Forwarder>,
) -> Result<Finished> {
    refuse_podman(prepared)?;
    instances::check_device_filter(prepared)?;
    let process = borrowed_process(prepared, process)?;
    let stem = crate::plan::names::run_stem(
        prepared.service.id.as_str(),
        &prepared.revision,
        &random_tag(),
    );
    let dir = run_dir(&host.dirs, prepared.service.id.as_str(), &stem);
    let req = OneOff {
        stem: stem.clone(),
        process,
        argv: argv.to_vec(),
        env,
        fields: vec![(crate::plan::fields::RUN.into(), stem.clone())],
        attach,
        dir: dir.clone(),
    };
    let secrets = prepared.secrets.clone();
    let cx = prepared.context(&secrets);
    let plan = oneoff::plan_oneoff(&cx, &req).map_err(|m| anyhow!(BadInput(m)))?;
    write_config(&dir, &plan.config)?;
    let sd = match host.shared_systemd() {
        Ok(sd) => sd.clone(),
        Err(e) => {
            let _ = crate::host::runtime::remove_dir(&dir);
            return Err(e.into());
        }
    };

    if attach == Attach::Detached {
        return start_detached(host, sd.as_ref(), &plan.unit, &dir);
    }

    let mut anchor = Command::new(&prepared.shim_exe)
        .args(["instance", "anchor"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting the anchor process")?;
    let anchor_unit = oneoff::plan_anchor(&stem, anchor.id());

    let result = attached(
        host,
        &sd,
        &plan.unit,
        &anchor_unit,
        attach,
        stdin,
        sink,
        signals,
        prepared,
        process.map(|p| p.name.as_str()).unwrap_or("run"),
        &stem,
    );
    // Whatever happened: the run and the anchor go, and the bundle with them.
    end_anchor(&mut anchor);
    let _ = sd.stop_units(
        &[plan.unit.name.clone(), anchor_unit.name.clone()],
        START_TIMEOUT,
    );
    let _ = sd.unref(&plan.unit.name);
    if result.is_err() {
        let _ = crate::host::runtime::remove_dir(&dir);
    }
    result
}

/// `--detach`: starts the run's unit and prints its name; output goes to the journal.
fn start_detached(
    host: &Host,
    sd: &dyn crate::host::systemd::Systemd,
    unit: &crate::plan::UnitSpec,
    dir: &Path,
) -> Result<Finished> {
    match sd.start_transient(std::slice::from_ref(unit), START_TIMEOUT) {
        Ok(o) if o.iter().all(|j| j.ok()) => {
            println!("{}", unit.name);
            Ok(Finished {
                code: 0,
                stdout: Vec::new(),
            })
        }
        other => {
            let tail = host.journal.tail(&unit.name, 15);
            let _ = sd.stop_units(std::slice::from_ref(&unit.name), START_TIMEOUT);
            let _ = crate::host::runtime::remove_dir(dir);
            Err(start_error(&unit.name, other.map(|_| ()), &tail))
        }
    }
}

fn end_anchor(anchor: &mut Child) {
    drop(anchor.stdin.take());
    let _ = anchor.wait();
}

fn start_error(
    unit: &str,
    err: Result<(), crate::host::systemd::SystemdError>,
    tail: &str,
) -> anyhow::Error {
    match err {
        Err(e) => anyhow!(e).context(format!("starting {unit}")),
        Ok(()) => anyhow!("{unit} did not start; its journal:\n{tail}"),
    }
}

/// Restores the terminal's settings when dropped (the runtime sets it raw for `-t`).
struct TermGuard(Option<nix::sys::termios::Termios>);

impl TermGuard {
    fn save(tty: bool) -> TermGuard {
        TermGuard(if tty {
            nix::sys::termios::tcgetattr(std::io::stdin()).ok()
        } else {
            None
        })
    }
}

impl Drop for TermGuard {
    fn drop(&mut self) {
        if let Some(t) = &self.0 {
            let _ = nix::sys::termios::tcsetattr(
                std::io::stdin(),
                nix::sys::termios::SetArg::TCSADRAIN,
                t,
            );
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn attached(
    host: &Host,
    sd: &SharedSystemd,
    unit: &crate::plan::UnitSpec,
    anchor: &crate::plan::UnitSpec,
    attach: Attach,
    stdin: bool,
    sink: Sink,
    signals: Option<&Forwarder>,
    prepared: &Prepared,
    process: &str,
    stem: &str,
) -> Result<Finished> {
    let fields = JournalFields {
        ident: format!("{}-{process}", prepared.service.id),
        fields: vec![
            (
                crate::plan::fields::SERVICE,
                prepared.service.id.to_string(),
            ),
            (crate::plan::fields::PROCESS, process.to_string()),
            (crate::plan::fields::REVISION, prepared.revision.clone()),
            (crate::plan::fields::RUN, stem.to_string()),
        ],
    };
    let _term = TermGuard::save(attach == Attach::Tty);
    let (outcome, readers) = start_attached(sd.as_ref(), unit, anchor, attach, stdin)?;
    match outcome {
        Ok(j) if j.ok() => {}
        other => {
            let tail = host.journal.tail(&unit.name, 15);
            return Err(start_error(&unit.name, other.map(|_| ()), &tail));
        }
    }

    // Output copiers.
    let capture = matches!(sink, Sink::Capture);
    let mut threads = Vec::new();
    for (fd, is_stdout) in readers {
        let f = fields.clone();
        threads.push(std::thread::spawn(move || {
            copy_output(std::fs::File::from(fd), is_stdout, capture && is_stdout, &f)
        }));
    }
    if let Some(f) = signals {
        f.set(Target::Unit(unit.name.clone(), sd.clone()));
    }

    let info = wait_inactive(sd.as_ref(), &unit.name)?;
    if let Some(f) = signals {
        f.set(Target::Done);
    }
    let _ = sd.unref(&unit.name);
    let mut stdout = Vec::new();
    for t in threads {
        if let Ok(Some(bytes)) = t.join() {
            stdout = bytes;
        }
    }
    let code = exit_code(host, &info)?;
    Ok(Finished { code, stdout })
}

/// Starts the run's unit with its standard streams: the caller's terminal (`-t`), or pipes
/// whose read ends are returned (stdout first) for the copiers, and the caller's stdin
/// with `-i`. systemd receives duplicates of the descriptors.
#[allow(clippy::type_complexity)]
fn start_attached(
    sd: &dyn crate::host::systemd::Systemd,
    unit: &crate::plan::UnitSpec,
    anchor: &crate::plan::UnitSpec,
    attach: Attach,
    stdin: bool,
) -> Result<(
    Result<crate::host::systemd::JobOutcome, crate::host::systemd::SystemdError>,
    Vec<(OwnedFd, bool)>,
)> {
    let mut readers = Vec::new();
    let mut fds: Vec<(&str, std::os::fd::BorrowedFd<'_>)> = Vec::new();
    let stdin_fd = std::io::stdin();
    let stdout_fd = std::io::stdout();
    let stderr_fd = std::io::stderr();
    let mut writers: Vec<OwnedFd> = Vec::new();
    if attach == Attach::Tty {
        fds.push(("StandardInputFileDescriptor", stdin_fd.as_fd()));
        fds.push(("StandardOutputFileDescriptor", stdout_fd.as_fd()));
        fds.push(("StandardErrorFileDescriptor", stderr_fd.as_fd()));
        let o = sd.start_with_fds(unit, std::slice::from_ref(anchor), &fds, START_TIMEOUT);
        return Ok((o, readers));
    }
    let (out_r, out_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
    let (err_r, err_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
    readers.push((out_r, true));
    readers.push((err_r, false));
    writers.push(out_w);
    writers.push(err_w);
    if stdin {
        fds.push(("StandardInputFileDescriptor", stdin_fd.as_fd()));
    }
    fds.push(("StandardOutputFileDescriptor", writers[0].as_fd()));
    fds.push(("StandardErrorFileDescriptor", writers[1].as_fd()));
    let o = sd.start_with_fds(unit, std::slice::from_ref(anchor), &fds, START_TIMEOUT);
    // systemd holds its own copies now; ours must go for EOF to come.
    drop(fds);
    drop(writers);
    Ok((o, readers))
}

/// Waits until the run's unit is inactive or failed, reading its state every 5 ms at first,
/// doubling up to 100 ms (a short command is seen ending soon, a long one costs little).
fn wait_inactive(
    sd: &dyn crate::host::systemd::Systemd,
    name: &str,
) -> Result<crate::host::systemd::UnitInfo> {
    let mut poll = POLL_FIRST;
    loop {
        let units = sd.list_units(&[name.to_string()])?;
        match units.into_iter().find(|u| u.name == name) {
            Some(u) if matches!(u.active_state.as_str(), "inactive" | "failed") => return Ok(u),
            Some(_) => {
                std::thread::sleep(poll);
                poll = (poll * 2).min(POLL_MAX);
            }
            None => bail!("{name} disappeared before its exit status was read"),
        }
    }
}

/// The command's exit code: its status, or 128+N when killed by signal N.
fn exit_code(host: &Host, info: &crate::host::systemd::UnitInfo) -> Result<i32> {
    Ok(match info.exec_main_code {
        1 => info.exec_main_status,
        2 | 3 => 128 + info.exec_main_status,
        _ => {
            let tail = host.journal.tail(&info.name, 15);
            bail!(
                "{} did not run its command; its journal:\n{tail}",
                info.name
            );
        }
    })
}

/// Where forwarded signals go.
#[derive(Clone)]
enum Target {
    /// Nothing runs yet: a signal ends shim (as it would without forwarding); if the unit was
    /// being started, the anchor's end stops it.
    Preparing,
    /// The run's unit, and the connection to pass signals through.
    Unit(String, SharedSystemd),
    /// The command ended; shim is cleaning up and finishes on its own.
    Done,
}

/// A thread that waits for the blocked signals and passes them to the run's runtime.
pub struct Forwarder {
    target: Arc<Mutex<Target>>,
}

impl Forwarder {
    /// Starts the thread; the signals must already be blocked in every thread.
    fn start(set: SigSet) -> Forwarder {
        let target = Arc::new(Mutex::new(Target::Preparing));
        let t = target.clone();
        std::thread::spawn(move || {
            while let Ok(sig) = set.wait() {
                let now = t.lock().map(|g| g.clone()).unwrap_or(Target::Done);
                match now {
                    Target::Preparing => {
                        if sig != Signal::SIGWINCH {
                            eprintln!("shim run: {sig} before the command started; stopping");
                            std::process::exit(128 + sig as i32);
                        }
                    }
                    Target::Done => {}
                    Target::Unit(unit, sd) => {
                        if let Err(e) = sd.kill_main(&unit, sig as i32) {
                            if sig != Signal::SIGWINCH {
                                eprintln!("shim run: passing {sig} to {unit}: {e}");
                            }
                        }
                    }
                }
            }
        });
        Forwarder { target }
    }

    fn set(&self, t: Target) {
        if let Ok(mut g) = self.target.lock() {
            *g = t;
        }
    }
}

/// The journal identity of a run's output.
#[derive(Clone)]
struct JournalFields {
    ident: String,
    fields: Vec<(&'static str, String)>,
}

/// Longest line sent as one journal entry; journald's own `LineMax=` default.
const LINE_MAX: usize = 48 * 1024;

/// Splits output into journal lines: complete lines, and pieces of at most [`LINE_MAX`].
#[derive(Default)]
pub struct LineSplitter {
    buf: Vec<u8>,
}

impl LineSplitter {
    /// Adds bytes; returns the lines now complete (without their newline).
    pub fn push(&mut self, bytes: &[u8]) -> Vec<Vec<u8>> {
        self.buf.extend_from_slice(bytes);
        let mut out = Vec::new();
        loop {
            match self.buf.iter().position(|&b| b == b'\n') {
                Some(i) if i <= LINE_MAX => {
                    let mut line: Vec<u8> = self.buf.drain(..=i).collect();
                    line.pop();
                    out.push(line);
                }
                _ if self.buf.len() > LINE_MAX => {
                    out.push(self.buf.drain(..LINE_MAX).collect());
                }
                _ => return out,
            }
        }
    }

    /// What is left at the end (a last line without its newline).
    pub fn finish(self) -> Option<Vec<u8>> {
        (!self.buf.is_empty()).then_some(self.buf)
    }
}

fn journal_line(f: &JournalFields, line: &[u8], is_stdout: bool) {
    let priority: &[u8] = if is_stdout { b"6" } else { b"4" };
    let mut all: Vec<(&str, &[u8])> = vec![
        ("MESSAGE", line),
        ("PRIORITY", priority),
        ("SYSLOG_IDENTIFIER", f.ident.as_bytes()),
    ];
    all.extend(f.fields.iter().map(|(k, v)| (*k, v.as_bytes())));
    journal::send_raw(&journal::encode_fields(&all));
}

/// Copies one output pipe to this process's stdout/stderr (or into memory) and the journal,
/// until EOF. Returns the captured bytes when capturing.
fn copy_output(
    mut from: std::fs::File,
    is_stdout: bool,
    capture: bool,
    f: &JournalFields,
) -> Option<Vec<u8>> {
    let mut buf = vec![0u8; 64 * 1024];
    let mut lines = LineSplitter::default();
    let mut kept = Vec::new();
    let mut broken = false;
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => break,
        };
        let chunk = &buf[..n];
        if capture {
            kept.extend_from_slice(chunk);
        } else if !broken {
            // A closed stdout of ours (`shim run ... | head`) must not stop the command's
            // output from reaching the journal.
            let w = if is_stdout {
                let mut o = std::io::stdout().lock();
                o.write_all(chunk).and_then(|_| o.flush())
            } else {
                let mut e = std::io::stderr().lock();
                e.write_all(chunk).and_then(|_| e.flush())
            };
            broken = w.is_err();
        }
        for line in lines.push(chunk) {
            journal_line(f, &line, is_stdout);
        }
    }
    if let Some(rest) = lines.finish() {
        journal_line(f, &rest, is_stdout);
    }
    capture.then_some(kept)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_split_on_newlines_and_at_the_limit() {
        let mut s = LineSplitter::default();
        assert_eq!(s.push(b"a\nbc"), vec![b"a".to_vec()]);
        assert_eq!(s.push(b"d\n\n"), vec![b"bcd".to_vec(), b"".to_vec()]);
        let long = vec![b'x'; LINE_MAX + 10];
        let out = s.push(&long);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].len(), LINE_MAX);
        assert_eq!(s.finish(), Some(vec![b'x'; 10]));
        assert_eq!(LineSplitter::default().finish(), None);
    }

    #[test]
    fn tags_are_six_hex_digits() {
        let t = random_tag();
        assert_eq!(t.len(), 6);
        assert!(t.chars().all(|c| c.is_ascii_hexdigit()));
    }
}

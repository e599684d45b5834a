//! The journal: structured entries from the probe ([`Journal::send`]) and the tail of a
//! unit's output for error messages ([`Journal::tail`]).
//!
//! Entries are written natively: one datagram of `KEY=VALUE`
//! lines to journald's socket (`/run/systemd/journal/socket`), the protocol sd_journal_send()
//! speaks (https://systemd.io/JOURNAL_NATIVE_PROTOCOL/). No library and no child process: a
//! probe that runs every few seconds stays cheap. journald adds the unit (`_SYSTEMD_UNIT`)
//! from the sender's cgroup, so `journalctl -u shim-probe-ID` shows these lines too.
//!
//! Where there is no journal (a probe run by hand outside systemd), the message goes to stderr.

use std::io::IsTerminal;
use std::os::unix::net::UnixDatagram;

const SOCKET: &str = "/run/systemd/journal/socket";

/// syslog priorities.
pub const WARNING: u8 = 4;
pub const NOTICE: u8 = 5;

/// Encodes one entry. Values with a newline use the binary form: the name, a newline, the
/// value's length as little-endian u64, the value, a newline.
pub fn encode(priority: u8, message: &str, fields: &[(&str, String)]) -> Vec<u8> {
    let priority = priority.to_string();
    let mut all: Vec<(&str, &[u8])> = vec![
        ("MESSAGE", message.as_bytes()),
        ("PRIORITY", priority.as_bytes()),
        ("SYSLOG_IDENTIFIER", b"shim-probe"),
    ];
    all.extend(fields.iter().map(|(k, v)| (*k, v.as_bytes())));
    encode_fields(&all)
}

/// The native protocol's encoding of any fields; values may be arbitrary bytes.
pub fn encode_fields(fields: &[(&str, &[u8])]) -> Vec<u8> {
    let mut out = Vec::new();
    for (k, v) in fields {
        if v.contains(&b'\n') {
            out.extend_from_slice(k.as_bytes());
            out.push(b'\n');
            out.extend_from_slice(&(v.len() as u64).to_le_bytes());
            out.extend_from_slice(v);
            out.push(b'\n');
        } else {
            out.extend_from_slice(k.as_bytes());
            out.push(b'=');
            out.extend_from_slice(v);
            out.push(b'\n');
        }
    }
    out
}

/// Sends an encoded entry to journald; false where there is no journal.
pub fn send_raw(entry: &[u8]) -> bool {
    UnixDatagram::unbound()
        .and_then(|s| s.send_to(entry, SOCKET))
        .is_ok()
}

/// Writes one entry; falls back to stderr. When run from a terminal the line is printed too.
pub fn send(priority: u8, message: &str, fields: &[(&str, String)]) {
    let sent = send_raw(&encode(priority, message, fields));
    if !sent || std::io::stderr().is_terminal() {
        let tags: Vec<String> = fields.iter().map(|(k, v)| format!("{k}={v}")).collect();
        eprintln!("shim probe: {message} ({})", tags.join(" "));
    }
}

/// What the operations read from and write to the journal.
pub trait Journal: Send + Sync {
    /// The last `lines` lines a unit wrote, for error messages (best effort).
    fn tail(&self, unit: &str, lines: usize) -> String;
    /// Writes one structured entry (best effort), as the free [`send`] does.
    fn send(&self, priority: u8, message: &str, fields: &[(&str, String)]);
}

/// journald: entries over its native socket, tails through `journalctl`.
pub struct Journald;

impl Journal for Journald {
    fn tail(&self, unit: &str, lines: usize) -> String {
        journal_tail(unit, lines)
    }
    fn send(&self, priority: u8, message: &str, fields: &[(&str, String)]) {
        send(priority, message, fields)
    }
}

/// A journal that returns a fixed line per unit and drops entries, for unit tests.
#[cfg(test)]
pub struct FakeJournal;

#[cfg(test)]
impl Journal for FakeJournal {
    fn tail(&self, unit: &str, lines: usize) -> String {
        format!("(last {lines} lines of {unit})")
    }
    fn send(&self, _priority: u8, _message: &str, _fields: &[(&str, String)]) {}
}

/// One entry a [`RecordingJournal`] received.
#[cfg(test)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub priority: u8,
    pub message: String,
    pub fields: std::collections::BTreeMap<String, String>,
}

/// A [`FakeJournal`] that keeps every entry sent, for tests that check what was logged
/// (shared with the test through an `Arc`).
#[cfg(test)]
#[derive(Default)]
pub struct RecordingJournal {
    pub sent: std::sync::Mutex<Vec<Entry>>,
}

#[cfg(test)]
impl RecordingJournal {
    pub fn entries(&self) -> Vec<Entry> {
        crate::host::systemd::fake::lock(&self.sent).clone()
    }
}

#[cfg(test)]
impl Journal for std::sync::Arc<RecordingJournal> {
    fn tail(&self, unit: &str, lines: usize) -> String {
        FakeJournal.tail(unit, lines)
    }
    fn send(&self, priority: u8, message: &str, fields: &[(&str, String)]) {
        crate::host::systemd::fake::lock(&self.sent).push(Entry {
            priority,
            message: message.to_string(),
            fields: fields
                .iter()
                .map(|(k, v)| (k.to_string(), v.clone()))
                .collect(),
        });
    }
}

/// The last lines a unit wrote to the journal, for error messages (best effort).
pub fn journal_tail(unit: &str, lines: usize) -> String {
    let out = std::process::Command::new("journalctl")
        .args(["--no-pager", "-o", "short-precise", "-n"])
        .arg(lines.to_string())
        .arg("-u")
        .arg(unit)
        .output();
    match out {
        Ok(o) => String::from_utf8_lossy(&o.stdout).trim_end().to_string(),
        Err(e) => format!("(journalctl failed: {e})"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_plain_and_binary_fields() {
        let e = encode(
            WARNING,
            "killed",
            &[
                (crate::plan::fields::SERVICE, "app".into()),
                (crate::plan::fields::REASON, "a\nb".into()),
            ],
        );
        let mut want = b"MESSAGE=killed\nPRIORITY=4\nSYSLOG_IDENTIFIER=shim-probe\nSHIM_SERVICE=app\nSHIM_REASON\n".to_vec();
        want.extend_from_slice(&3u64.to_le_bytes());
        want.extend_from_slice(b"a\nb\n");
        assert_eq!(e, want);
    }
}

//! Pull progress. The store reports events through [`Progress`]; [`TermProgress`] draws one
//! status line on stderr (layers done, bytes, rate) when the user is watching a terminal,
//! and [`Quiet`] ignores them, which is what scripts, journald and tests get.

use std::io::{IsTerminal, Write};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::Digest;

/// Events of a pull. Called from download threads concurrently.
pub trait Progress: Send + Sync {
    /// A pull of `image` begins: `layers` layers of `total` bytes are to be downloaded.
    fn begin(&self, _image: &str, _layers: usize, _total: u64) {}
    /// A download starts, `already` bytes of it being there from an interrupted attempt.
    fn blob_started(&self, _digest: &Digest, _size: u64, _already: u64) {}
    fn blob_bytes(&self, _digest: &Digest, _n: u64) {}
    /// The server sent the whole blob again: `discarded` bytes are counted again.
    fn blob_restarted(&self, _digest: &Digest, _discarded: u64) {}
    fn blob_done(&self, _digest: &Digest) {}
    /// Layer `index` (0-based) of `total` is being applied.
    fn unpacking(&self, _index: usize, _total: usize) {}
    /// The pull is over, successfully or not.
    fn end(&self) {}
}

/// No output.
pub struct Quiet;

impl Progress for Quiet {}

/// The progress display for the current process: drawn when stdout and stderr are
/// terminals, else quiet.
pub fn auto() -> std::sync::Arc<dyn Progress> {
    if std::io::stdout().is_terminal() && std::io::stderr().is_terminal() {
        std::sync::Arc::new(TermProgress::new())
    } else {
        std::sync::Arc::new(Quiet)
    }
}

struct State {
    image: String,
    layers_total: usize,
    layers_done: usize,
    total: u64,
    done: u64,
    /// Set by `begin`: events before it (resolution fetching a config) are not drawn.
    active: bool,
    started: Instant,
    /// When the last byte arrived: the rate is over the download, not the unpacking.
    last_byte: Instant,
    last_draw: Option<Instant>,
    unpacking: Option<(usize, usize)>,
    drawn: bool,
}

/// One line on stderr, redrawn at most ten times a second.
pub struct TermProgress {
    state: Mutex<State>,
}

impl Default for TermProgress {
    fn default() -> Self {
        Self::new()
    }
}

impl TermProgress {
    pub fn new() -> TermProgress {
        TermProgress {
            state: Mutex::new(State {
                image: String::new(),
                layers_total: 0,
                layers_done: 0,
                total: 0,
                done: 0,
                active: false,
                started: Instant::now(),
                last_byte: Instant::now(),
                last_draw: None,
                unpacking: None,
                drawn: false,
            }),
        }
    }

    fn update(&self, force: bool, f: impl FnOnce(&mut State)) {
        let Ok(mut s) = self.state.lock() else {
            return;
        };
        f(&mut s);
        if !s.active {
            return;
        }
        let now = Instant::now();
        if !force
            && s.last_draw
                .is_some_and(|t| now - t < Duration::from_millis(100))
        {
            return;
        }
        s.last_draw = Some(now);
        let line = render_line(&s, s.last_byte.saturating_duration_since(s.started));
        s.drawn = true;
        let mut err = std::io::stderr().lock();
        let _ = write!(err, "\r\x1b[K{line}");
        let _ = err.flush();
    }
}

/// The status line, e.g. `registry.example.com/app:v1: layers 2/5, 34.2 MB / 58.1 MB,
/// 45.3 MB/s`.
pub(crate) fn render_line_parts(
    image: &str,
    layers_done: usize,
    layers_total: usize,
    done: u64,
    total: u64,
    elapsed: Duration,
    unpacking: Option<(usize, usize)>,
) -> String {
    let secs = elapsed.as_secs_f64();
    let rate = if secs > 0.0 { done as f64 / secs } else { 0.0 };
    let mut line = format!(
        "{image}: layers {layers_done}/{layers_total}, {} / {}, {}/s",
        human_bytes(done),
        human_bytes(total),
        human_bytes(rate as u64)
    );
    if let Some((i, n)) = unpacking {
        line.push_str(&format!(", unpacking layer {}/{n}", i + 1));
    }
    line
}

fn render_line(s: &State, elapsed: Duration) -> String {
    render_line_parts(
        &s.image,
        s.layers_done,
        s.layers_total,
        s.done,
        s.total,
        elapsed,
        s.unpacking,
    )
}

/// `1.5 MB` style sizes (decimal units, as registries and skopeo show them).
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "kB", "MB", "GB", "TB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1000.0 && u < UNITS.len() - 1 {
        v /= 1000.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

impl Progress for TermProgress {
    fn begin(&self, image: &str, layers: usize, total: u64) {
        let image = image.to_string();
        self.update(true, |s| {
            s.image = image;
            s.layers_total = layers;
            s.layers_done = 0;
            s.total = total;
            s.done = 0;
            s.active = true;
            s.started = Instant::now();
            s.last_byte = s.started;
            s.unpacking = None;
        });
    }
    fn blob_started(&self, _digest: &Digest, _size: u64, already: u64) {
        self.update(false, |s| s.done += already);
    }
    fn blob_bytes(&self, _digest: &Digest, n: u64) {
        self.update(false, |s| {
            s.done += n;
            s.last_byte = Instant::now();
        });
    }
    fn blob_restarted(&self, _digest: &Digest, discarded: u64) {
        self.update(false, |s| s.done = s.done.saturating_sub(discarded));
    }
    fn blob_done(&self, _digest: &Digest) {
        self.update(true, |s| {
            s.layers_done = (s.layers_done + 1).min(s.layers_total)
        });
    }
    fn unpacking(&self, index: usize, total: usize) {
        self.update(true, |s| s.unpacking = Some((index, total)));
    }
    fn end(&self) {
        if let Ok(mut s) = self.state.lock() {
            if s.drawn {
                let mut err = std::io::stderr().lock();
                let _ = write!(err, "\r\x1b[K");
                let _ = err.flush();
                s.drawn = false;
            }
            s.active = false;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_line() {
        assert_eq!(human_bytes(0), "0 B");
        assert_eq!(human_bytes(999), "999 B");
        assert_eq!(human_bytes(1500), "1.5 kB");
        assert_eq!(human_bytes(58_100_000), "58.1 MB");
        assert_eq!(
            render_line_parts(
                "h.io/a:v1",
                2,
                5,
                34_200_000,
                58_100_000,
                Duration::from_secs(2),
                Some((2, 5))
            ),
            "h.io/a:v1: layers 2/5, 34.2 MB / 58.1 MB, 17.1 MB/s, unpacking layer 3/5"
        );
    }
}

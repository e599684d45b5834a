//! Time, as the operations see it: a monotonic clock for deadlines and polling, the wall
//! clock for what is compared with systemd's timestamps or remembered across runs (the probe's
//! backoff), and sleeping. [`FakeClock`] moves only when something sleeps (or a test advances
//! it), both clocks together, so a test of a 5 s drain, a 30 s health deadline or a
//! crash loop's backoff takes no time.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

pub trait Clock: Send + Sync {
    fn now(&self) -> Instant;
    /// Wall-clock time in µs since the epoch, as systemd's `*Timestamp` properties are.
    fn wall_usec(&self) -> u64;
    fn sleep(&self, d: Duration);
}

pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Instant {
        Instant::now()
    }
    fn wall_usec(&self) -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
            .unwrap_or(0)
    }
    fn sleep(&self, d: Duration) {
        std::thread::sleep(d)
    }
}

/// A clock that advances only by [`Clock::sleep`] (and [`FakeClock::advance`]).
#[cfg(test)]
pub struct FakeClock {
    base: Instant,
    offset: std::sync::Mutex<Duration>,
    /// Every sleep asked for, in order.
    pub slept: std::sync::Mutex<Vec<Duration>>,
}

#[cfg(test)]
impl Default for FakeClock {
    fn default() -> Self {
        FakeClock {
            base: Instant::now(),
            offset: Default::default(),
            slept: Default::default(),
        }
    }
}

#[cfg(test)]
impl FakeClock {
    /// [`Clock::wall_usec`] before anything slept: 2023-11-14T22:13:20Z.
    pub const WALL_BASE_USEC: u64 = 1_700_000_000_000_000;

    pub fn advance(&self, d: Duration) {
        *crate::host::systemd::fake::lock(&self.offset) += d;
    }
    pub fn elapsed(&self) -> Duration {
        *crate::host::systemd::fake::lock(&self.offset)
    }
}

#[cfg(test)]
impl Clock for FakeClock {
    fn now(&self) -> Instant {
        self.base + self.elapsed()
    }
    fn wall_usec(&self) -> u64 {
        let us = u64::try_from(self.elapsed().as_micros()).unwrap_or(u64::MAX);
        Self::WALL_BASE_USEC.saturating_add(us)
    }
    fn sleep(&self, d: Duration) {
        crate::host::systemd::fake::lock(&self.slept).push(d);
        self.advance(d);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fake_wall_clock_moves_with_sleeps_only() {
        let c = FakeClock::default();
        assert_eq!(c.wall_usec(), FakeClock::WALL_BASE_USEC);
        c.sleep(Duration::from_secs(3));
        c.advance(Duration::from_millis(5));
        assert_eq!(c.wall_usec(), FakeClock::WALL_BASE_USEC + 3_005_000);
        // The real one is after the fake's base (and the fake's base is a plausible time).
        assert!(SystemClock.wall_usec() > FakeClock::WALL_BASE_USEC);
    }
}

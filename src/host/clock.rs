//! Time, as the operations see it: a monotonic clock for deadlines and polling, and sleeping.
//! [`FakeClock`] moves only when
//! something sleeps, so a test of a 5 s drain or a 30 s health deadline takes no time.

use std::time::{Duration, Instant};

pub trait Clock: Send + Sync {
    fn now(&self) -> Instant;
    fn sleep(&self, d: Duration);
}

pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Instant {
        Instant::now()
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
    fn sleep(&self, d: Duration) {
        crate::host::systemd::fake::lock(&self.slept).push(d);
        self.advance(d);
    }
}

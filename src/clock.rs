//! Where the layer reads the time.
//!
//! Expiry and cool-downs are decided against a [`Clock`] rather than the system time directly, so
//! that tests (ours and our users') can drive time forward without sleeping.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use parking_lot::Mutex;

/// A source of wall-clock time.
///
/// Wall-clock time (not a monotonic instant) because token expiry is persisted in stores and
/// compared across processes and restarts.
pub trait Clock: fmt::Debug + Send + Sync + 'static {
    /// The current time.
    fn now(&self) -> SystemTime;
}

/// The system's clock; the default.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> SystemTime {
        SystemTime::now()
    }
}

/// A clock that only moves when told to, for tests.
///
/// Clones share one time, so a test can hand one clone to the layer and keep another to drive it.
///
/// ```
/// use std::time::Duration;
/// use reqwest_token_refresh::{Clock, ManualClock};
///
/// let clock = ManualClock::new(std::time::SystemTime::UNIX_EPOCH);
/// let handle = clock.clone();
/// handle.advance(Duration::from_secs(90));
/// assert_eq!(clock.now(), std::time::SystemTime::UNIX_EPOCH + Duration::from_secs(90));
/// ```
#[derive(Debug, Clone)]
pub struct ManualClock {
    now: Arc<Mutex<SystemTime>>,
}

impl ManualClock {
    /// A clock stopped at `start`.
    pub fn new(start: SystemTime) -> Self {
        Self { now: Arc::new(Mutex::new(start)) }
    }

    /// A clock stopped at the current system time.
    pub fn starting_now() -> Self {
        Self::new(SystemTime::now())
    }

    /// Moves the clock forward by `by`, stopping at the latest time the platform can represent
    /// (so `Duration::MAX` never panics).
    pub fn advance(&self, by: Duration) {
        let mut now = self.now.lock();
        *now = saturating_add(*now, by);
    }

    /// Sets the clock to `to`, forward or backward.
    pub fn set(&self, to: SystemTime) {
        *self.now.lock() = to;
    }
}

impl Clock for ManualClock {
    fn now(&self) -> SystemTime {
        *self.now.lock()
    }
}

/// `time + by`, or the latest time within reach when that is past what `SystemTime` can hold.
/// The platform's limit is not a constant, so it is approached by halving what is added: a few
/// hundred checked additions at most, down to the nanosecond.
pub(crate) fn saturating_add(mut time: SystemTime, mut by: Duration) -> SystemTime {
    while !by.is_zero() {
        match time.checked_add(by) {
            Some(later) => return later,
            None => {
                by /= 2;
                if let Some(later) = time.checked_add(by) {
                    time = later;
                }
            }
        }
    }
    time
}

/// The clock used when none is given.
pub(crate) fn system() -> Arc<dyn Clock> {
    Arc::new(SystemClock)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manual_clock_clones_share_one_time() {
        let a = ManualClock::new(SystemTime::UNIX_EPOCH);
        let b = a.clone();
        b.advance(Duration::from_secs(5));
        assert_eq!(a.now(), SystemTime::UNIX_EPOCH + Duration::from_secs(5));
        a.set(SystemTime::UNIX_EPOCH);
        assert_eq!(b.now(), SystemTime::UNIX_EPOCH);
    }

    #[test]
    fn advancing_past_what_the_clock_can_hold_stops_at_its_end() {
        let clock = ManualClock::new(SystemTime::UNIX_EPOCH);
        clock.advance(Duration::MAX);
        let end = clock.now();
        assert!(end > SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000_000_000));
        assert_eq!(end.checked_add(Duration::from_secs(1)), None, "as far as the clock goes");
        clock.advance(Duration::MAX);
        assert_eq!(clock.now(), end);
        assert_eq!(
            saturating_add(SystemTime::UNIX_EPOCH, Duration::from_secs(5)),
            SystemTime::UNIX_EPOCH + Duration::from_secs(5)
        );
    }

    #[test]
    fn clock_is_object_safe() {
        let clocks: Vec<Arc<dyn Clock>> = vec![Arc::new(SystemClock), Arc::new(ManualClock::starting_now())];
        assert_eq!(clocks.len(), 2);
    }
}

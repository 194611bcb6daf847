//! The keyframe request throttle: many subscriber legs may ask for a publisher stream's
//! keyframe at once; one request per interval goes through.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Lets at most one keyframe request through per interval for one publisher stream.
///
/// Lock-free: many subscriber legs may ask at once; exactly one wins each interval.
#[derive(Debug)]
pub struct KeyframeThrottle {
    epoch: Instant,
    interval_ms: u64,
    /// Milliseconds since `epoch` of the last request let through, plus one (0 = never).
    last: AtomicU64,
}

impl KeyframeThrottle {
    /// A throttle allowing one request per `interval`.
    pub fn new(interval: Duration) -> Self {
        Self {
            epoch: Instant::now(),
            interval_ms: interval.as_millis() as u64,
            last: AtomicU64::new(0),
        }
    }

    /// True when a request at `now` may go to the publisher; false when it is coalesced
    /// into one sent less than an interval ago.
    pub fn try_acquire(&self, now: Instant) -> bool {
        let now_ms = now.saturating_duration_since(self.epoch).as_millis() as u64 + 1;
        let mut last = self.last.load(Ordering::Relaxed);
        loop {
            if last != 0 && now_ms < last + self.interval_ms {
                return false;
            }
            match self
                .last
                .compare_exchange_weak(last, now_ms, Ordering::AcqRel, Ordering::Relaxed)
            {
                Ok(_) => return true,
                Err(actual) => last = actual,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn throttle_lets_one_through_per_interval() {
        let t = KeyframeThrottle::new(Duration::from_millis(1000));
        let t0 = Instant::now();
        assert!(t.try_acquire(t0));
        let passed = (1..20)
            .filter(|i| t.try_acquire(t0 + Duration::from_millis(i * 5)))
            .count();
        assert_eq!(passed, 0);
        assert!(t.try_acquire(t0 + Duration::from_millis(1001)));
    }

    #[test]
    fn zero_interval_throttles_nothing() {
        let t = KeyframeThrottle::new(Duration::ZERO);
        let t0 = Instant::now();
        assert!(t.try_acquire(t0));
        assert!(t.try_acquire(t0));
    }
}

//! Retry backoff after failures, one home for every place that waits
//! before trying a cache again (session reconnects, repair copies): the
//! first failed round waits `min`, each further round twice as long, up
//! to `max`. Failures within a round (while still waiting) do not grow it:
//! many sessions failing at once against one dead cache count once.

use std::time::{Duration, Instant};

#[derive(Clone, Copy, Debug)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    /// Failed rounds in a row.
    failures: u32,
    retry_at: Option<Instant>,
}

impl Backoff {
    pub const fn new(min: Duration, max: Duration) -> Backoff {
        Backoff {
            min,
            max,
            failures: 0,
            retry_at: None,
        }
    }

    /// The wait after `rounds` failed rounds.
    pub fn delay(&self, rounds: u32) -> Duration {
        self.min
            .saturating_mul(1 << rounds.saturating_sub(1).min(6))
            .min(self.max)
    }

    /// Whether a try is due (not waiting after a failure).
    pub fn may_try(&self, now: Instant) -> bool {
        self.retry_at.is_none_or(|t| now >= t)
    }

    /// Counts a failure at `now`; a new round (false: one already waiting)
    /// waits longer than the last.
    pub fn fail(&mut self, now: Instant) -> bool {
        if self.retry_at.is_some_and(|t| now < t) {
            return false;
        }
        self.failures = self.failures.saturating_add(1);
        self.retry_at = Some(now + self.delay(self.failures));
        true
    }

    /// A success: the next failure starts over at `min`.
    pub fn reset(&mut self) {
        self.failures = 0;
        self.retry_at = None;
    }

    /// Failed rounds in a row.
    pub fn failures(&self) -> u32 {
        self.failures
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_per_round_up_to_the_cap() {
        let b = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
        let ms: Vec<u128> = (1..=8).map(|r| b.delay(r).as_millis()).collect();
        assert_eq!(ms, [100, 200, 400, 800, 1600, 3200, 5000, 5000]);
    }

    #[test]
    fn failures_within_a_round_count_once() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
        let now = Instant::now();
        assert!(b.may_try(now));
        assert!(b.fail(now));
        assert!(!b.fail(now), "same round");
        assert_eq!(b.failures(), 1);
        assert!(!b.may_try(now));
        let later = now + Duration::from_millis(100);
        assert!(b.may_try(later));
        assert!(b.fail(later));
        assert_eq!(b.failures(), 2);
        b.reset();
        assert!(b.may_try(later) && b.failures() == 0);
    }
}

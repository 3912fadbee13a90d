//! The mirror backlog: bytes of mirrored writes sent or queued but not yet
//! answered, over all sessions (`limits.mirror_backlog_bytes`). A slow or
//! stalled mirror makes it grow; past the bound, mirrored writes are not
//! sent and their keys go to the repair journal instead, so memory stays
//! bounded and the client is never held up. Each write takes its share when
//! queued and gives it back (on drop) when its reply came or was lost.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use tracing::{info, warn};

/// What one queued command is counted as beyond its bytes: its place in
/// the in-flight queue and its keys.
const OVERHEAD: usize = 128;

#[derive(Debug, Default)]
pub struct Backlog {
    bytes: AtomicUsize,
    /// Writes are being shed (logged once per episode).
    shedding: AtomicBool,
}

/// One queued command's share of the backlog.
#[derive(Debug)]
pub struct Share {
    backlog: Arc<Backlog>,
    n: usize,
}

impl Drop for Share {
    fn drop(&mut self) {
        self.backlog.bytes.fetch_sub(self.n, Ordering::Relaxed);
    }
}

impl Backlog {
    pub fn bytes(&self) -> usize {
        self.bytes.load(Ordering::Relaxed)
    }

    /// Counts `len` bytes (plus the per-command overhead) until the share
    /// is dropped. Never refuses: callers decide with [`Backlog::full`]
    /// first, for a whole batch at once.
    pub fn take(self: &Arc<Self>, len: usize) -> Share {
        let n = len + OVERHEAD;
        self.bytes.fetch_add(n, Ordering::Relaxed);
        Share {
            backlog: self.clone(),
            n,
        }
    }

    /// Whether commands of `len` bytes in all (`count` of them) would take
    /// the backlog past `limit`. Logs when shedding starts and when it
    /// ends.
    pub fn full(&self, len: usize, count: usize, limit: usize) -> bool {
        let now = self.bytes();
        let full = now + len + count * OVERHEAD > limit;
        if full {
            if !self.shedding.swap(true, Ordering::Relaxed) {
                warn!(
                    backlog_bytes = now,
                    limit,
                    "mirror backlog full: mirrored writes are journalled for repair instead of sent until the mirror catches up"
                );
            }
        } else if now < limit / 2 && self.shedding.swap(false, Ordering::Relaxed) {
            info!(
                backlog_bytes = now,
                "mirror backlog below half its bound again: mirrored writes are sent"
            );
        }
        full
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_count_until_dropped() {
        let b = Arc::new(Backlog::default());
        let s1 = b.take(1000);
        let s2 = b.take(24);
        assert_eq!(b.bytes(), 1024 + 2 * OVERHEAD);
        assert!(b.full(10_000, 1, 10_000));
        assert!(!b.full(100, 1, 10_000));
        drop(s1);
        drop(s2);
        assert_eq!(b.bytes(), 0);
    }
}

//! Shadow reads: a fraction of a route's reads is also sent to the other
//! cache, off the client's path, and the two replies compared. The
//! agreement ratio over the last [`WINDOW`] compared reads is the warmth
//! signal an operator (or auto-cutover) decides on.
//!
//! Which reads are shadowed (a decision, by command): reads of one key or a
//! few keys whose reply is a pure function of the data, so that equal data
//! gives equal replies:
//!
//! | compared as they are | `GET`, `MGET`, `GETRANGE`, `STRLEN`, `GETBIT`, `BITCOUNT`, `EXISTS`, `TYPE`, `HGET`, `HMGET`, `HLEN`, `HEXISTS`, `HSTRLEN`, `LLEN`, `LRANGE`, `LINDEX`, `SCARD`, `SISMEMBER`, `SMISMEMBER`, `ZSCORE`, `ZMSCORE`, `ZCARD`, `ZCOUNT`, `ZRANGE`, `ZRANGEBYSCORE`, `ZREVRANGE`, `ZRANK`, `ZREVRANK`, `XLEN`, `XRANGE`, `XREVRANGE` |
//! | compared as unordered | `HGETALL` (as field/value pairs), `HKEYS`, `HVALS`, `SMEMBERS` (their order depends on each cache's internal encoding) |
//! | never | `TTL`/`PTTL` (a few ms apart by nature), random reads (`SRANDMEMBER`, `HRANDFIELD`, ...), scans, blocking reads, scripts, keyless reads |
//!
//! An outcome is `agree`, `missing` (the other cache answered "nothing":
//! nil, an empty array, 0 from `EXISTS`/a length, `none` from `TYPE`, while
//! the authoritative one had something) or `differ`. A read racing a write
//! that another client mirrored may differ for an instant: the ratio is a
//! signal, not a proof (a verify pass is the proof).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use bytes::Bytes;

pub use crate::compare::Order;
use crate::compare::{empty, normal_read};
use crate::protocol::value;

/// Compared reads the agreement ratio is taken over.
pub const WINDOW: usize = 1000;

/// Whether reads of the table command `name` are shadowed, and how.
pub fn order_for(name: &str) -> Option<Order> {
    Some(match name {
        "get" | "mget" | "getrange" | "strlen" | "getbit" | "bitcount" | "exists" | "type"
        | "hget" | "hmget" | "hlen" | "hexists" | "hstrlen" | "llen" | "lrange" | "lindex"
        | "scard" | "sismember" | "smismember" | "zscore" | "zmscore" | "zcard" | "zcount"
        | "zrange" | "zrangebyscore" | "zrevrange" | "zrank" | "zrevrank" | "xlen" | "xrange"
        | "xrevrange" => Order::AsIs,
        "hgetall" => Order::Pairs,
        "hkeys" | "hvals" | "smembers" => Order::Unordered,
        _ => return None,
    })
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Agree,
    Missing,
    Differ,
}

/// Compares the authoritative reply with the other cache's.
pub fn classify(authoritative: &Bytes, other: &Bytes, order: Order, depth: usize) -> Outcome {
    if authoritative == other {
        return Outcome::Agree;
    }
    let (Some(a), Some(o)) = (
        value::decode(authoritative, depth),
        value::decode(other, depth),
    ) else {
        return Outcome::Differ;
    };
    if empty(&o) && !empty(&a) {
        return Outcome::Missing;
    }
    if normal_read(a, order) == normal_read(o, order) {
        Outcome::Agree
    } else {
        Outcome::Differ
    }
}

/// A route's shadow-read outcomes: totals, and the last [`WINDOW`].
#[derive(Debug, Default)]
pub struct ShadowStats {
    pub agree: AtomicU64,
    pub missing: AtomicU64,
    pub differ: AtomicU64,
    window: Mutex<Window>,
}

#[derive(Debug, Default)]
struct Window {
    last: VecDeque<Outcome>,
    agree: usize,
}

/// The sliding window as the status shows it.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Agreement {
    /// Compared reads in the window (at most [`WINDOW`]).
    pub samples: usize,
    /// Share of them that agreed; `None` before the first one.
    pub ratio: Option<f64>,
}

impl ShadowStats {
    pub fn record(&self, outcome: Outcome) {
        let counter = match outcome {
            Outcome::Agree => &self.agree,
            Outcome::Missing => &self.missing,
            Outcome::Differ => &self.differ,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        let mut w = self.window.lock().unwrap_or_else(|e| e.into_inner());
        if w.last.len() == WINDOW && w.last.pop_front() == Some(Outcome::Agree) {
            w.agree -= 1;
        }
        if outcome == Outcome::Agree {
            w.agree += 1;
        }
        w.last.push_back(outcome);
    }

    pub fn agreement(&self) -> Agreement {
        let w = self.window.lock().unwrap_or_else(|e| e.into_inner());
        let samples = w.last.len();
        Agreement {
            samples,
            ratio: (samples > 0).then(|| w.agree as f64 / samples as f64),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(s: &str) -> Bytes {
        Bytes::copy_from_slice(s.as_bytes())
    }

    #[test]
    fn outcomes() {
        let c = |a: &str, o: &str, order| classify(&b(a), &b(o), order, 8);
        assert_eq!(c("$1\r\nx\r\n", "$1\r\nx\r\n", Order::AsIs), Outcome::Agree);
        assert_eq!(c("$1\r\nx\r\n", "$-1\r\n", Order::AsIs), Outcome::Missing);
        assert_eq!(c("$1\r\nx\r\n", "_\r\n", Order::AsIs), Outcome::Missing);
        assert_eq!(
            c("$1\r\nx\r\n", "$1\r\ny\r\n", Order::AsIs),
            Outcome::Differ
        );
        assert_eq!(c(":1\r\n", ":0\r\n", Order::AsIs), Outcome::Missing);
        assert_eq!(c("$-1\r\n", "$-1\r\n", Order::AsIs), Outcome::Agree);
        // Nothing on the authoritative side, something on the other: differ.
        assert_eq!(c("$-1\r\n", "$1\r\nx\r\n", Order::AsIs), Outcome::Differ);
        let pairs = "*4\r\n$1\r\na\r\n$1\r\n1\r\n$1\r\nb\r\n$1\r\n2\r\n";
        let swapped = "%2\r\n$1\r\nb\r\n$1\r\n2\r\n$1\r\na\r\n$1\r\n1\r\n";
        assert_eq!(c(pairs, swapped, Order::Pairs), Outcome::Agree);
        assert_eq!(c(pairs, swapped, Order::AsIs), Outcome::Differ);
        assert_eq!(c(pairs, "*0\r\n", Order::Pairs), Outcome::Missing);
        assert_eq!(
            c(
                "*2\r\n$1\r\nx\r\n$1\r\ny\r\n",
                "~2\r\n$1\r\ny\r\n$1\r\nx\r\n",
                Order::Unordered
            ),
            Outcome::Agree
        );
        assert_eq!(order_for("ttl"), None);
        assert_eq!(order_for("hgetall"), Some(Order::Pairs));
    }

    #[test]
    fn the_window_slides() {
        let s = ShadowStats::default();
        assert_eq!(s.agreement().ratio, None);
        for _ in 0..WINDOW {
            s.record(Outcome::Missing);
        }
        assert_eq!(s.agreement().ratio, Some(0.0));
        for _ in 0..WINDOW / 2 {
            s.record(Outcome::Agree);
        }
        assert_eq!(s.agreement().ratio, Some(0.5));
        for _ in 0..WINDOW {
            s.record(Outcome::Agree);
        }
        assert_eq!(
            s.agreement(),
            Agreement {
                samples: WINDOW,
                ratio: Some(1.0)
            }
        );
        assert_eq!(s.missing.load(Ordering::Relaxed), WINDOW as u64);
    }
}

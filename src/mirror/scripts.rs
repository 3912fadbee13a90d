//! Script bodies seen passing through the proxy (EVAL, EVAL_RO, SCRIPT
//! LOAD), by SHA1, so an EVALSHA can reach the mirror as EVAL with its body
//! (a mirror that lacks the script, flushed or restarted since, runs it in
//! its place all the same).
//!
//! Bounded by bytes, not count: an application that generates scripts per
//! request keeps the cache learning, the bodies in use staying (each use
//! gives a body a second chance before it is evicted, oldest first).

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use bytes::Bytes;

/// Bytes of script bodies kept at most.
pub const MAX_SCRIPT_BYTES: usize = 32 * 1024 * 1024;

#[derive(Debug)]
struct Body {
    body: Bytes,
    /// Used since it last came round the eviction queue.
    used: bool,
}

#[derive(Debug, Default)]
struct Bodies {
    by_sha: HashMap<[u8; 40], Body>,
    /// Eviction order: oldest first.
    queue: VecDeque<[u8; 40]>,
    bytes: usize,
}

#[derive(Debug)]
pub struct ScriptCache {
    bodies: Mutex<Bodies>,
    max_bytes: usize,
}

impl Default for ScriptCache {
    fn default() -> ScriptCache {
        ScriptCache::with_max_bytes(MAX_SCRIPT_BYTES)
    }
}

/// The lowercase hex SHA1 Redis names a script by.
pub fn sha1_hex(body: &[u8]) -> [u8; 40] {
    let mut out = [0u8; 40];
    let hex = sha1_smol::Sha1::from(body).digest().to_string();
    out.copy_from_slice(hex.as_bytes());
    out
}

impl ScriptCache {
    pub fn with_max_bytes(max_bytes: usize) -> ScriptCache {
        ScriptCache {
            bodies: Mutex::new(Bodies::default()),
            max_bytes,
        }
    }

    pub fn remember(&self, body: &[u8]) {
        if body.len() > self.max_bytes {
            return;
        }
        let sha = sha1_hex(body);
        let mut b = self.bodies.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(known) = b.by_sha.get_mut(&sha) {
            known.used = true;
            return;
        }
        while b.bytes + body.len() > self.max_bytes {
            let Some(oldest) = b.queue.pop_front() else {
                break;
            };
            let Some(entry) = b.by_sha.get_mut(&oldest) else {
                continue;
            };
            if std::mem::take(&mut entry.used) {
                b.queue.push_back(oldest);
            } else if let Some(gone) = b.by_sha.remove(&oldest) {
                b.bytes -= gone.body.len();
            }
        }
        b.bytes += body.len();
        b.queue.push_back(sha);
        let body = Bytes::copy_from_slice(body);
        b.by_sha.insert(sha, Body { body, used: false });
    }

    /// The body of the script named `sha` (any case), if it passed through.
    pub fn body(&self, sha: &[u8]) -> Option<Bytes> {
        let key: [u8; 40] = sha.to_ascii_lowercase().try_into().ok()?;
        let mut b = self.bodies.lock().unwrap_or_else(|p| p.into_inner());
        let known = b.by_sha.get_mut(&key)?;
        known.used = true;
        Some(known.body.clone())
    }

    /// Bytes of bodies held.
    pub fn bytes(&self) -> usize {
        self.bodies.lock().unwrap_or_else(|p| p.into_inner()).bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_scripts_like_redis() {
        // SCRIPT LOAD "return 1" in Redis.
        assert_eq!(
            &sha1_hex(b"return 1"),
            b"e0e1f9fabfc9d4800c877a703b823ac0578ff8db"
        );
        let c = ScriptCache::default();
        c.remember(b"return 1");
        assert_eq!(
            c.body(b"E0E1F9FABFC9D4800C877A703B823AC0578FF8DB")
                .as_deref(),
            Some(&b"return 1"[..])
        );
        assert_eq!(c.body(b"nope"), None);
    }

    #[test]
    fn bounded_by_bytes_keeps_learning_and_keeps_what_is_used() {
        let body = |i: usize| format!("return {i:0>90}").into_bytes();
        let c = ScriptCache::with_max_bytes(100 * 100);
        c.remember(&body(0));
        for i in 1..10_000 {
            c.remember(&body(i));
            // Script 0 is in use all along.
            assert!(c.body(&sha1_hex(&body(0))).is_some(), "evicted at {i}");
            assert!(c.bytes() <= 100 * 100);
        }
        // The newest ones are learnt; old unused ones made room.
        assert!(c.body(&sha1_hex(&body(9_999))).is_some());
        assert!(c.body(&sha1_hex(&body(1))).is_none());
        // A body larger than the whole cache is not kept.
        let huge = vec![b'x'; 100 * 100 + 1];
        c.remember(&huge);
        assert!(c.body(&sha1_hex(&huge)).is_none());
    }
}

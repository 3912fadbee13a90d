//! Script bodies seen passing through the proxy (EVAL, EVAL_RO, SCRIPT
//! LOAD), by SHA1, so an EVALSHA the mirror answers with NOSCRIPT (a script
//! loaded before the migration, a mirror restarted since) can be retried
//! there with the body.

use std::collections::HashMap;
use std::sync::Mutex;

use bytes::Bytes;

/// Bodies kept at most; past it new ones are not remembered (an
/// application generating scripts per request would otherwise grow this
/// without bound, as it grows Redis's own script cache).
const MAX_SCRIPTS: usize = 10_000;

#[derive(Debug, Default)]
pub struct ScriptCache {
    bodies: Mutex<HashMap<[u8; 40], Bytes>>,
}

/// The lowercase hex SHA1 Redis names a script by.
pub fn sha1_hex(body: &[u8]) -> [u8; 40] {
    let mut out = [0u8; 40];
    let hex = sha1_smol::Sha1::from(body).digest().to_string();
    out.copy_from_slice(hex.as_bytes());
    out
}

impl ScriptCache {
    pub fn remember(&self, body: &[u8]) {
        let sha = sha1_hex(body);
        let mut bodies = self.bodies.lock().unwrap_or_else(|p| p.into_inner());
        if bodies.len() < MAX_SCRIPTS && !bodies.contains_key(&sha) {
            bodies.insert(sha, Bytes::copy_from_slice(body));
        }
    }

    /// The body of the script named `sha` (any case), if it passed through.
    pub fn body(&self, sha: &[u8]) -> Option<Bytes> {
        let key: [u8; 40] = sha.to_ascii_lowercase().try_into().ok()?;
        let bodies = self.bodies.lock().unwrap_or_else(|p| p.into_inner());
        bodies.get(&key).cloned()
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
}

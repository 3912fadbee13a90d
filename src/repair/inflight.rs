//! Mirrored writes sent and not yet answered, counted per key slot.
//!
//! A copy from the authoritative side must not be read while a mirrored
//! write to that key is still on its way to the mirror: that write would
//! land after the copy and apply twice. It happens across clients: client
//! A's `BLPOP` is served by client B's `RPUSH`, and A's mirrored `LPOP`
//! can reach the mirror before B's mirrored `RPUSH` does (each client has
//! its own mirror connection). The `LPOP` then pops nothing there, the
//! comparison of its reply catches it, and the copy that follows waits
//! here until B's `RPUSH` was answered.
//!
//! Counters are per hash slot (keys sharing a slot wait for each other,
//! which is only conservative) and lock-free: a mirrored write costs two
//! atomic additions per key per side.
//!
//! Sequentially consistent, with the repairer's sequence numbers: a session
//! holds a write's keys before it reports the write
//! ([`super::Repairer::note_write`]), so a copy that takes its start number
//! and then finds the slot idle knows every write reported before its start
//! was answered on both caches, and sees every later one as written since.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use smallvec::SmallVec;

use crate::routing::slot::{key_slot, SLOTS};

#[derive(Debug)]
pub struct InFlight {
    slots: Box<[AtomicU32]>,
}

impl Default for InFlight {
    fn default() -> InFlight {
        InFlight {
            slots: (0..SLOTS).map(|_| AtomicU32::new(0)).collect(),
        }
    }
}

/// The keys a write changes.
pub type Keys = SmallVec<[Bytes; 2]>;

/// Keys counted in flight until this is dropped (answered, failed, or
/// given up with its session).
#[derive(Debug)]
pub struct Entered {
    inflight: Arc<InFlight>,
    keys: Keys,
    /// Their slots, hashed once.
    slots: SmallVec<[u16; 2]>,
}

impl Entered {
    pub fn keys(&self) -> &[Bytes] {
        &self.keys
    }
}

impl Drop for Entered {
    fn drop(&mut self) {
        for &s in &self.slots {
            self.inflight.leave_slot(s);
        }
    }
}

impl InFlight {
    /// Counts `keys` in flight until the returned guard is dropped.
    pub fn hold(self: &Arc<Self>, keys: Keys) -> Entered {
        let slots: SmallVec<[u16; 2]> = keys.iter().map(|k| key_slot(k)).collect();
        for &s in &slots {
            self.slots[usize::from(s)].fetch_add(1, Ordering::SeqCst);
        }
        Entered {
            inflight: self.clone(),
            keys,
            slots,
        }
    }

    pub fn enter<K: AsRef<[u8]>>(&self, keys: &[K]) {
        for k in keys {
            self.slots[usize::from(key_slot(k.as_ref()))].fetch_add(1, Ordering::SeqCst);
        }
    }

    pub fn leave<K: AsRef<[u8]>>(&self, keys: &[K]) {
        for k in keys {
            self.leave_slot(key_slot(k.as_ref()));
        }
    }

    fn leave_slot(&self, slot: u16) {
        // Guards pair every leave with an enter; a stray one would only
        // make copies of that slot wait their bounded maximum.
        self.slots[usize::from(slot)].fetch_sub(1, Ordering::SeqCst);
    }

    /// Whether a mirrored write to `key` (or a key of its slot) is unanswered.
    pub fn busy(&self, key: &[u8]) -> bool {
        self.slots[usize::from(key_slot(key))].load(Ordering::SeqCst) > 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_per_slot() {
        let f = InFlight::default();
        assert!(!f.busy(b"a"));
        f.enter(&[&b"a"[..], b"{a}x"]);
        assert!(f.busy(b"a"));
        f.leave(&[b"a"]);
        assert!(f.busy(b"a"), "{{a}}x shares a's slot and is still out");
        f.leave(&[b"{a}x"]);
        assert!(!f.busy(b"a"));
        f.enter(&[b"a"]);
        assert!(f.busy(b"a"));
        f.leave(&[b"a"]);
        let f = Arc::new(f);
        let guard = f.hold(Keys::from_iter([Bytes::from_static(b"k")]));
        assert!(f.busy(b"k"));
        drop(guard);
        assert!(!f.busy(b"k"));
    }
}

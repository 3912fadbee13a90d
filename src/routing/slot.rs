//! Redis Cluster's key slot: CRC16 (XMODEM) of the key, or of its hash tag
//! (the part between the first `{` and the next `}` when not empty),
//! modulo 16384. Keys sharing a hash tag share a slot.
//!
//! cutover uses it wherever a key needs a stable number: the ramp of a
//! `read-new` route (`ramp_percent`) and the in-flight counters of mirrored
//! writes. It is the same on every proxy instance and every restart, and
//! `CLUSTER KEYSLOT key` on any Redis tells an operator which slot a key has.

use crc::{Crc, CRC_16_XMODEM};

pub const SLOTS: usize = 16_384;

const CRC16: Crc<u16> = Crc::<u16>::new(&CRC_16_XMODEM);

/// The key's hash slot, `0..SLOTS`.
pub fn key_slot(key: &[u8]) -> u16 {
    let hashed = match memchr::memchr(b'{', key) {
        Some(open) => match memchr::memchr(b'}', &key[open + 1..]) {
            Some(len) if len > 0 => &key[open + 1..open + 1 + len],
            _ => key,
        },
        None => key,
    };
    CRC16.checksum(hashed) % SLOTS as u16
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_match_redis_cluster() {
        // Values from CLUSTER KEYSLOT on Redis 7.
        assert_eq!(key_slot(b"foo"), 12182);
        assert_eq!(key_slot(b"bar"), 5061);
        assert_eq!(key_slot(b"123456789"), 12739);
        assert_eq!(key_slot(b"{user1000}.following"), key_slot(b"user1000"));
        assert_eq!(key_slot(b"{user1000}.followers"), key_slot(b"user1000"));
        // An empty tag does not count: the whole key is hashed.
        assert_eq!(key_slot(b"foo{}{bar}"), 8363);
        assert_eq!(key_slot(b"foo{{bar}}zap"), 4015);
        assert_eq!(key_slot(b""), 0);
    }
}

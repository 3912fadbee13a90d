//! The cursor of a cluster-wide `SCAN` ([`super::Router::scan`]), one
//! `u64` as clients expect:
//!
//! | bits | what |
//! | --- | --- |
//! | 0-13 | the first slot of the run of slots being walked |
//! | 14-23 | a tag of the node scanning it (from its address) |
//! | 24-62 | that node's own cursor |
//! | 63 | free: the session's old/new walk over two caches uses it |
//!
//! `0` starts the walk at slot 0 and ends it, as for one Redis.

use bytes::{Bytes, BytesMut};

use crate::protocol::{value, Value};
use crate::routing::slot::key_slot;

pub(super) const LAST: u16 = 16_383;
const SLOT_BITS: u32 = 14;
const TAG_BITS: u32 = 10;
const OWN_SHIFT: u32 = SLOT_BITS + TAG_BITS;
/// Node cursors at or past this cannot be carried (a node's cursor is a
/// position in its hash table: far below it).
const OWN_LIMIT: u64 = 1 << (63 - OWN_SHIFT);

/// The run a page walks: its slots, the tag of the node scanning it, and
/// the first slot of the next run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(in crate::upstream::cluster) struct Walk {
    pub(super) lo: u16,
    pub(super) hi: u16,
    pub(super) tag: u16,
    pub(super) next: Option<u16>,
}

/// `(first slot, node tag, node cursor)`.
pub(super) fn decode(cursor: u64) -> (u16, u16, u64) {
    let lo = (cursor & ((1 << SLOT_BITS) - 1)) as u16;
    let tag = ((cursor >> SLOT_BITS) & ((1 << TAG_BITS) - 1)) as u16;
    (lo, tag, (cursor >> OWN_SHIFT) & (OWN_LIMIT - 1))
}

/// A node's tag: a hash of its address.
pub(super) fn tag(addr: &str) -> u16 {
    key_slot(addr.as_bytes()) & ((1 << TAG_BITS) - 1)
}

/// The client's reply to a page of `walk`: the node's keys in the run's
/// slots, and the cursor to continue from (the node's own, or the next
/// run's start once the node is done, `0` after the last run).
pub(super) fn reply(reply: &Bytes, walk: Walk, depth: usize) -> Bytes {
    let Some(Value::Array(items)) = value::decode(reply, depth) else {
        return reply.clone();
    };
    let own = items
        .first()
        .and_then(Value::as_bytes)
        .and_then(|c| std::str::from_utf8(c).ok()?.parse::<u64>().ok());
    let (Some(own), Some(Value::Array(keys))) = (own, items.get(1)) else {
        return reply.clone();
    };
    let cursor = match own {
        0 => walk.next.map_or(0, u64::from),
        own if own >= OWN_LIMIT => {
            return Bytes::from_static(
                b"-ERR cutover: a node's SCAN cursor is too large to route\r\n",
            );
        }
        own => (own << OWN_SHIFT) | (u64::from(walk.tag) << SLOT_BITS) | u64::from(walk.lo),
    };
    let kept: Vec<&Bytes> = keys
        .iter()
        .filter_map(Value::as_bytes)
        .filter(|k| (walk.lo..=walk.hi).contains(&key_slot(k)))
        .collect();
    let c = cursor.to_string();
    let mut out = BytesMut::with_capacity(reply.len() + 16);
    out.extend_from_slice(format!("*2\r\n${}\r\n{c}\r\n*{}\r\n", c.len(), kept.len()).as_bytes());
    for k in kept {
        out.extend_from_slice(format!("${}\r\n", k.len()).as_bytes());
        out.extend_from_slice(k);
        out.extend_from_slice(b"\r\n");
    }
    out.freeze()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_node_cursor_round_trips_and_zero_starts() {
        assert_eq!(decode(0), (0, 0, 0));
        let walk = Walk {
            lo: 5461,
            hi: 10922,
            tag: 77,
            next: Some(10923),
        };
        let page = Bytes::from_static(b"*2\r\n$3\r\n123\r\n*2\r\n$3\r\nfoo\r\n$3\r\nbar\r\n");
        let out = reply(&page, walk, 8);
        let Some(Value::Array(items)) = value::decode(&out, 8) else {
            panic!()
        };
        let c: u64 = std::str::from_utf8(items[0].as_bytes().unwrap())
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(decode(c), (5461, 77, 123));
        // foo is in slot 12182 (outside the run), bar in 5061 (outside too).
        assert_eq!(items[1], Value::Array(vec![]));
        // Done on this node: the next run's first slot.
        let done = Bytes::from_static(b"*2\r\n$1\r\n0\r\n*1\r\n$3\r\nfoo\r\n");
        let walk = Walk {
            lo: 10923,
            hi: 16383,
            tag: 1,
            next: None,
        };
        let out = reply(&done, walk, 8);
        assert_eq!(&out[..], b"*2\r\n$1\r\n0\r\n*1\r\n$3\r\nfoo\r\n");
    }
}

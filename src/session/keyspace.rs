//! Reads of the whole keyspace when routes read from different caches.
//!
//! `KEYS` is asked of both caches; each one's answer keeps the keys read
//! from it (by the routing table when the answer comes), and the client
//! gets both lists as one. `SCAN` walks old's keyspace, then new's: the
//! cursor's top bit says which cache it is on, each page keeps the keys
//! read from that cache, and old's last page hands over to new's first.
//! With every route read from one cache, both go there as before.

use std::collections::HashMap;

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncWrite};

use super::side::{Outbound, Ready};
use super::{Session, Target};
use crate::protocol::{value, Command, Value};
use crate::routing::{PerSide, Side};

/// The cursor bit that says a `SCAN` is on new.
const ON_NEW: u64 = 1 << 63;

/// One cache's `KEYS` answer, for merge `id`.
#[derive(Debug)]
pub(super) struct KeysPart {
    pub(super) id: u64,
    pub(super) side: Side,
}

/// A `KEYS` asked of both caches: the answers so far, and where old's
/// waits in the client's order once it came first.
#[derive(Debug, Default)]
pub(super) struct KeysMerge {
    replies: PerSide<Option<Bytes>>,
    pos: Option<u64>,
}

/// The `KEYS` merges in flight, by id.
pub(super) type KeysMerges = HashMap<u64, KeysMerge>;

/// Bulk strings of an array reply, or `None` for anything else.
fn names(v: Value) -> Option<Vec<Bytes>> {
    match v {
        Value::Array(items) => items
            .into_iter()
            .map(|i| match i {
                Value::Str(b) => Some(b),
                _ => None,
            })
            .collect(),
        _ => None,
    }
}

fn encode_names(out: &mut Vec<u8>, names: &[Bytes]) {
    out.extend_from_slice(format!("*{}\r\n", names.len()).as_bytes());
    for n in names {
        out.extend_from_slice(format!("${}\r\n", n.len()).as_bytes());
        out.extend_from_slice(n);
        out.extend_from_slice(b"\r\n");
    }
}

impl<R, W> Session<R, W>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    /// The keys in `list` that are read from `side`.
    fn kept(&self, side: Side, list: Vec<Bytes>) -> Vec<Bytes> {
        let table = self.shared.router.load();
        list.into_iter()
            .filter(|k| table.read_side(k) == side)
            .collect()
    }

    /// `KEYS pattern` asked of both caches.
    pub(super) fn execute_keys(&mut self, cmd: &Command, out: Outbound) {
        let id = self.held.next_ticket();
        self.keys_merges.insert(id, KeysMerge::default());
        let old = KeysPart {
            id,
            side: Side::Old,
        };
        let new = KeysPart {
            id,
            side: Side::New,
        };
        let to_old = Outbound {
            target: Target::Keys(Box::new(old)),
            ..out
        };
        self.send(Side::Old, cmd, to_old);
        self.send(Side::New, cmd, Target::Keys(Box::new(new)));
    }

    /// One cache's `KEYS` answer (or the error its connection failed with;
    /// `reserved`: old's place in the client's order, already kept by the
    /// failed connection).
    pub(super) fn keys_reply(&mut self, part: KeysPart, reply: Bytes, reserved: Option<u64>) {
        let Some(m) = self.keys_merges.get_mut(&part.id) else {
            if let Some(pos) = reserved {
                self.sides[Side::Old].fill(pos, reply);
            }
            return;
        };
        m.replies[part.side] = Some(reply);
        if reserved.is_some() {
            m.pos = reserved;
        }
        let both = m.replies[Side::Old].is_some() && m.replies[Side::New].is_some();
        if !both {
            if part.side == Side::Old && m.pos.is_none() {
                // Its place in the client's order waits for new's.
                let sc = &mut self.sides[Side::Old];
                m.pos = Some(sc.ready_base + sc.ready.len() as u64);
                sc.ready.push_back(Ready::Pending(Vec::new()));
            }
            return;
        }
        let m = self.keys_merges.remove(&part.id).expect("looked up above");
        let answer = self.merge_keys(m.replies);
        match m.pos {
            Some(pos) => self.sides[Side::Old].fill(pos, answer),
            None => self.sides[Side::Old].ready.push_back(Ready::Done(answer)),
        }
    }

    fn merge_keys(&self, replies: PerSide<Option<Bytes>>) -> Bytes {
        let depth = self.shared.limits.max_reply_depth;
        let mut all = Vec::new();
        for side in Side::BOTH {
            let reply = replies[side].clone().unwrap_or_default();
            match value::decode(&reply, depth).and_then(names) {
                Some(list) => all.extend(self.kept(side, list)),
                // An error (or anything else) answers for both.
                None => return reply,
            }
        }
        let mut out = Vec::new();
        encode_names(&mut out, &all);
        Bytes::from(out)
    }

    /// `SCAN cursor ...` on the cache its cursor names.
    pub(super) fn execute_scan(&mut self, cmd: &Command, out: Outbound) {
        let cursor = cmd
            .arg(1)
            .and_then(|c| std::str::from_utf8(c).ok()?.parse::<u64>().ok());
        let Some(cursor) = cursor else {
            // Not a cursor: Redis says so.
            self.send(Side::Old, cmd, out);
            return;
        };
        let side = match cursor & ON_NEW {
            0 => Side::Old,
            _ => Side::New,
        };
        let upstream = (cursor & !ON_NEW).to_string();
        let mut args: Vec<&[u8]> = cmd.args().collect();
        args[1] = upstream.as_bytes();
        let page = Outbound {
            target: Target::ScanPage(side),
            ..out
        };
        self.send(side, &Command::from_args(&args), page);
    }

    /// A `SCAN` page from `side`: its keys read from there, and the cursor
    /// that continues the walk.
    pub(super) fn scan_page(&mut self, side: Side, reply: Bytes) {
        let depth = self.shared.limits.max_reply_depth;
        let page = match value::decode(&reply, depth) {
            Some(Value::Array(mut parts)) if parts.len() == 2 => {
                let keys = parts.pop().and_then(names);
                let next = match parts.pop() {
                    Some(Value::Str(c)) => std::str::from_utf8(&c)
                        .ok()
                        .and_then(|c| c.parse::<u64>().ok()),
                    _ => None,
                };
                next.zip(keys)
            }
            _ => None,
        };
        let Some((next, keys)) = page else {
            // An error, passed on as it came.
            self.sides[side].ready.push_back(Ready::Done(reply));
            return;
        };
        let next = match (side, next) {
            (Side::Old, 0) => ON_NEW,
            (Side::Old, n) => n,
            (Side::New, 0) => 0,
            (Side::New, n) => n | ON_NEW,
        };
        let keys = self.kept(side, keys);
        let next = next.to_string();
        let mut out = format!("*2\r\n${}\r\n{next}\r\n", next.len()).into_bytes();
        encode_names(&mut out, &keys);
        self.sides[side]
            .ready
            .push_back(Ready::Done(Bytes::from(out)));
    }
}

//! Reads of the whole keyspace when routes read from different caches.
//!
//! `KEYS` is asked of both caches; each one's answer keeps the keys read
//! from it (by the routing table when the answer comes), and the client
//! gets both lists as one. `SCAN` walks old's keyspace, then new's: the
//! cursor's top bit says which cache it is on, each page keeps the keys
//! read from that cache, and old's last page hands over to new's first.
//! With every route read from one cache, both go there as before.
//!
//! `DBSIZE` walks both keyspaces with `SCAN` (1,000 keys a page) and counts
//! the keys read from each cache: exact, but as costly as a `SCAN` of both.
//! `RANDOMKEY` asks both and answers a pick read from the cache that made
//! it, asking again when neither is.
//!
//! `PUBLISH` in a dual phase is asked of both caches the same way (its
//! subscribers may be on either), answered with the two counts added up.

use std::collections::HashMap;

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncWrite};

use super::side::{Outbound, Ready};
use super::{Session, Target};
use crate::protocol::{value, Command, Value};
use crate::routing::{PerSide, Side};

/// The cursor bit that says a `SCAN` is on new.
const ON_NEW: u64 = 1 << 63;

/// How the two caches' answers become one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Merge {
    /// `KEYS`: both lists, each kept to the keys read from its cache.
    Keys,
    /// `PUBLISH`: both receiver counts added up; otherwise this side's
    /// reply stands.
    Sum(Side),
    /// `DBSIZE`: each cache's keyspace walked with `SCAN`, counting the
    /// keys read from it.
    Count,
    /// `RANDOMKEY`: a pick read from the cache that made it; both asked
    /// again (up to [`MAX_PICKS`] times) when neither is.
    RandomKey,
}

/// `RANDOMKEY` rounds before the answer is nil (each cache's picks were
/// all copies of keys read from the other).
const MAX_PICKS: u64 = 16;
/// Keys asked per `SCAN` page of a `DBSIZE` walk.
const COUNT_PAGE: &[u8] = b"1000";

/// One cache's answer, for merge `id`. `again`: a further page or pick,
/// whose client's place is already kept.
#[derive(Debug)]
pub(super) struct KeysPart {
    pub(super) id: u64,
    pub(super) side: Side,
    pub(super) again: bool,
}

/// A command asked of both caches: the answers so far, and where old's
/// waits in the client's order once it came first.
#[derive(Debug)]
pub(super) struct KeysMerge {
    merge: Merge,
    replies: PerSide<Option<Bytes>>,
    pos: Option<u64>,
    /// `DBSIZE`: keys counted so far; `RANDOMKEY`: rounds asked.
    n: u64,
}

/// The merges in flight, by id.
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

/// A `SCAN` reply's next cursor and keys.
fn scan_reply(reply: &Bytes, depth: usize) -> Option<(u64, Vec<Bytes>)> {
    match value::decode(reply, depth)? {
        Value::Array(mut parts) if parts.len() == 2 => {
            let keys = parts.pop().and_then(names)?;
            let next = match parts.pop()? {
                Value::Str(c) => std::str::from_utf8(&c).ok()?.parse::<u64>().ok()?,
                _ => return None,
            };
            Some((next, keys))
        }
        _ => None,
    }
}

fn scan_page_cmd(cursor: u64) -> Command {
    let cursor = cursor.to_string();
    Command::from_args(&[&b"SCAN"[..], cursor.as_bytes(), b"COUNT", COUNT_PAGE])
}

/// Two integer replies added up; otherwise `side`'s reply (an error, or a
/// failed connection's, from the other is only the other's business).
fn sum_counts(replies: &PerSide<Option<Bytes>>, side: Side) -> Bytes {
    let count = |r: &Option<Bytes>| {
        let r = r.as_deref()?.strip_prefix(b":")?.strip_suffix(b"\r\n")?;
        std::str::from_utf8(r).ok()?.parse::<i64>().ok()
    };
    match (count(&replies[Side::Old]), count(&replies[Side::New])) {
        (Some(a), Some(b)) => Bytes::from(format!(":{}\r\n", a.saturating_add(b))),
        _ => replies[side].clone().unwrap_or_default(),
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

    /// `cmd` (`KEYS`, `PUBLISH`, `RANDOMKEY`; `DBSIZE` as a `SCAN` walk)
    /// asked of both caches; old's answer holds the client's place.
    pub(super) fn execute_keys(&mut self, cmd: &Command, out: Outbound, merge: Merge) {
        let id = self.held.next_ticket();
        let m = KeysMerge {
            merge,
            replies: PerSide::default(),
            pos: None,
            n: 0,
        };
        self.keys_merges.insert(id, m);
        let cmd = match merge {
            Merge::Count => scan_page_cmd(0),
            _ => cmd.clone(),
        };
        let part = |side| {
            let again = false;
            Target::Keys(Box::new(KeysPart { id, side, again }))
        };
        let to_old = Outbound {
            target: part(Side::Old),
            ..out
        };
        self.send(Side::Old, &cmd, to_old);
        self.send(Side::New, &cmd, part(Side::New));
    }

    /// One cache's answer (or the error its connection failed with;
    /// `reserved`: old's place in the client's order, already kept by the
    /// failed connection).
    pub(super) fn keys_reply(&mut self, part: KeysPart, reply: Bytes, reserved: Option<u64>) {
        let Some(mut m) = self.keys_merges.remove(&part.id) else {
            if let Some(pos) = reserved {
                self.sides[Side::Old].fill(pos, reply);
            }
            return;
        };
        if reserved.is_some() {
            m.pos = reserved;
        }
        let steps = self.keys_step(&mut m, part.side, reply);
        let finished = steps.is_empty() && m.replies.iter().all(Option::is_some);
        if part.side == Side::Old && !part.again && m.pos.is_none() && !finished {
            // Its place in the client's order waits for the rest.
            let sc = &mut self.sides[Side::Old];
            m.pos = Some(sc.ready_base + sc.ready.len() as u64);
            sc.ready.push_back(Ready::Pending(Vec::new()));
        }
        if !finished {
            self.keys_merges.insert(part.id, m);
            for (side, cmd) in steps {
                let again = KeysPart {
                    id: part.id,
                    side,
                    again: true,
                };
                self.send(side, &cmd, Target::Keys(Box::new(again)));
            }
            return;
        }
        let answer = self.merged(&m);
        match m.pos {
            Some(pos) => self.sides[Side::Old].fill(pos, answer),
            None => self.sides[Side::Old].ready.push_back(Ready::Done(answer)),
        }
    }

    /// Takes `side`'s answer into `m`: what is left to ask (a next page,
    /// another pick), and of which cache.
    fn keys_step(&self, m: &mut KeysMerge, side: Side, reply: Bytes) -> Vec<(Side, Command)> {
        let depth = self.shared.limits.max_reply_depth;
        match m.merge {
            Merge::Count => match scan_reply(&reply, depth) {
                Some((next, keys)) => {
                    m.n += self.kept(side, keys).len() as u64;
                    if next != 0 {
                        return vec![(side, scan_page_cmd(next))];
                    }
                    m.replies[side] = Some(Bytes::new());
                }
                // An error answers for both.
                None => m.replies[side] = Some(reply),
            },
            _ => m.replies[side] = Some(reply),
        }
        let both = m.replies.iter().all(Option::is_some);
        if m.merge == Merge::RandomKey && both && m.n + 1 < MAX_PICKS && self.pick(m).is_none() {
            // Neither pick is read from the cache that made it: again.
            m.n += 1;
            m.replies = PerSide::default();
            let again = Command::from_args(&[&b"RANDOMKEY"[..]]);
            return Side::BOTH.map(|s| (s, again.clone())).to_vec();
        }
        Vec::new()
    }

    /// `RANDOMKEY`'s answer from the two picks: one read from the cache
    /// that made it (alternating when both are), an error, or nil when
    /// both caches are empty; `None` when neither pick may be shown.
    fn pick(&self, m: &KeysMerge) -> Option<Bytes> {
        let depth = self.shared.limits.max_reply_depth;
        let table = self.shared.router.load();
        let mut nils = 0;
        let mut shown = Vec::new();
        for side in Side::BOTH {
            let reply = m.replies[side].clone().unwrap_or_default();
            match value::decode(&reply, depth) {
                Some(Value::Str(key)) if table.read_side(&key) == side => shown.push(reply),
                Some(Value::Str(_)) => {}
                Some(Value::Nil) => nils += 1,
                _ => return Some(reply),
            }
        }
        match shown.len() {
            0 if nils == 2 => m.replies[Side::Old].clone(),
            0 => None,
            n => Some(shown.swap_remove((m.n as usize) % n)),
        }
    }

    /// The client's answer once every part came.
    fn merged(&self, m: &KeysMerge) -> Bytes {
        match m.merge {
            Merge::Keys => self.merge_keys(&m.replies),
            Merge::Sum(side) => sum_counts(&m.replies, side),
            Merge::Count => match m.replies.iter().flatten().find(|r| !r.is_empty()) {
                Some(error) => error.clone(),
                None => Bytes::from(format!(":{}\r\n", m.n)),
            },
            // Out of rounds: nil, in the client's protocol.
            Merge::RandomKey => self.pick(m).unwrap_or_else(|| match self.resp3() {
                true => Bytes::from_static(b"_\r\n"),
                false => Bytes::from_static(b"$-1\r\n"),
            }),
        }
    }

    fn merge_keys(&self, replies: &PerSide<Option<Bytes>>) -> Bytes {
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
        let Some((next, keys)) = scan_reply(&reply, depth) else {
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

//! The client's reply order: one slot per command, in the order the client
//! sent them, whichever cache (or the proxy) answers it.
//!
//! A slot says where its reply comes from: the next client-bound reply of
//! one side (kept in that side's `ready` queue until its turn), a reply the
//! proxy made, a reply the proxy made that waits for upstream
//! confirmations (a (un)subscribe), or the point after which the connection
//! closes. [`ReplyOrder::drain`] moves every reply whose turn has come to
//! the client's output buffer.

use std::collections::{HashMap, VecDeque};

use bytes::{Bytes, BytesMut};

use super::side::{Ready, SideConn};
use crate::routing::{PerSide, Side};

/// A position in the client's reply order.
#[derive(Debug)]
enum Slot {
    /// The next client-bound reply from this side.
    Upstream(Side),
    /// A reply made by the proxy (errors, QUIT's OK).
    Local(Bytes),
    /// Close the connection once everything before this is written.
    Close,
    /// A reply made by the proxy that waits for upstream confirmations.
    Wait(u64, Bytes),
}

/// How many confirmation frames a waiting reply still needs, and the
/// upstream error that replaces it, if one came.
#[derive(Debug)]
struct Wait {
    left: usize,
    error: Option<Bytes>,
}

#[derive(Debug, Default)]
pub(super) struct ReplyOrder {
    slots: VecDeque<Slot>,
    waits: HashMap<u64, Wait>,
}

/// What [`ReplyOrder::drain`] stopped at.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Drained {
    /// Everything due was written, or the next reply has not come yet.
    Open,
    /// The close point was reached: the client gets nothing more.
    Close,
}

impl ReplyOrder {
    pub(super) fn len(&self) -> usize {
        self.slots.len()
    }

    pub(super) fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// The next reply from `side` that goes to the client takes this place.
    pub(super) fn upstream(&mut self, side: Side) {
        self.slots.push_back(Slot::Upstream(side));
    }

    /// A reply the proxy made takes this place.
    pub(super) fn local(&mut self, reply: Bytes) {
        self.slots.push_back(Slot::Local(reply));
    }

    /// The connection closes after the replies before this point.
    pub(super) fn close(&mut self) {
        self.slots.push_back(Slot::Close);
    }

    /// `reply` takes this place once `frames` confirmations (wait `id`)
    /// came, or the upstream error that answered instead.
    pub(super) fn wait(&mut self, id: u64, frames: usize, reply: Bytes) {
        self.waits.insert(
            id,
            Wait {
                left: frames,
                error: None,
            },
        );
        self.slots.push_back(Slot::Wait(id, reply));
    }

    /// One confirmation for wait `id`, or (`error`) the error that answers
    /// the whole command instead.
    pub(super) fn ack(&mut self, id: u64, error: Option<Bytes>) {
        if let Some(w) = self.waits.get_mut(&id) {
            match error {
                Some(e) => {
                    w.left = 0;
                    w.error.get_or_insert(e);
                }
                None => w.left = w.left.saturating_sub(1),
            }
        }
    }

    /// Moves replies whose turn has come to `out` (dropped instead when
    /// `client_gone`).
    pub(super) fn drain(
        &mut self,
        sides: &mut PerSide<SideConn>,
        out: &mut BytesMut,
        client_gone: bool,
    ) -> Drained {
        while let Some(slot) = self.slots.front() {
            match slot {
                Slot::Upstream(side) => {
                    let sc = &mut sides[*side];
                    // A pending fallback holds its place (and those after).
                    if !matches!(sc.ready.front(), Some(Ready::Done(_))) {
                        return Drained::Open;
                    }
                    if let Some(Ready::Done(reply)) = sc.ready.pop_front() {
                        sc.ready_base += 1;
                        if !client_gone {
                            out.extend_from_slice(&reply);
                        }
                    }
                }
                Slot::Local(reply) => {
                    if !client_gone {
                        out.extend_from_slice(reply);
                    }
                }
                Slot::Close => {
                    self.slots.clear();
                    return Drained::Close;
                }
                Slot::Wait(id, reply) => {
                    let id = *id;
                    match self.waits.get(&id) {
                        Some(Wait { left: 0, error }) => {
                            if !client_gone {
                                out.extend_from_slice(error.as_ref().unwrap_or(reply));
                            }
                            self.waits.remove(&id);
                        }
                        Some(_) => return Drained::Open,
                        None => {}
                    }
                }
            }
            self.slots.pop_front();
        }
        Drained::Open
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sides() -> PerSide<SideConn> {
        PerSide::from_fn(|s| SideConn::new(s, 8))
    }

    #[test]
    fn replies_leave_in_the_order_commands_came() {
        let mut order = ReplyOrder::default();
        let mut sides = sides();
        let mut out = BytesMut::new();
        order.upstream(Side::New);
        order.local(Bytes::from_static(b"+L\r\n"));
        order.upstream(Side::Old);
        // Old answered first: it waits for new's turn.
        sides[Side::Old]
            .ready
            .push_back(Ready::Done(Bytes::from_static(b"+O\r\n")));
        assert_eq!(order.drain(&mut sides, &mut out, false), Drained::Open);
        assert!(out.is_empty());
        sides[Side::New]
            .ready
            .push_back(Ready::Done(Bytes::from_static(b"+N\r\n")));
        order.drain(&mut sides, &mut out, false);
        assert_eq!(&out[..], b"+N\r\n+L\r\n+O\r\n");
        assert!(order.is_empty());
    }

    #[test]
    fn a_wait_holds_its_place_until_confirmed_or_failed() {
        let mut order = ReplyOrder::default();
        let mut sides = sides();
        let mut out = BytesMut::new();
        order.wait(1, 2, Bytes::from_static(b"*confirm\r\n"));
        order.local(Bytes::from_static(b"+after\r\n"));
        order.ack(1, None);
        order.drain(&mut sides, &mut out, false);
        assert!(out.is_empty(), "one confirmation still to come");
        order.ack(1, None);
        order.drain(&mut sides, &mut out, false);
        assert_eq!(&out[..], b"*confirm\r\n+after\r\n");

        out.clear();
        order.wait(2, 3, Bytes::from_static(b"*confirm\r\n"));
        order.ack(2, Some(Bytes::from_static(b"-NOPERM x\r\n")));
        order.close();
        order.local(Bytes::from_static(b"+never\r\n"));
        assert_eq!(order.drain(&mut sides, &mut out, false), Drained::Close);
        assert_eq!(&out[..], b"-NOPERM x\r\n");
        assert!(order.is_empty());
    }
}

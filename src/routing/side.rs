//! The two caches ([`Side`]), a value per cache ([`PerSide`]) and a
//! route's migration phase ([`Phase`]): the vocabulary every other module
//! speaks. Imports nothing from the crate.

use std::fmt;
use std::ops::{Index, IndexMut};

use serde::{Deserialize, Serialize};

/// One of the two caches.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Side {
    Old,
    New,
}

impl Side {
    pub const BOTH: [Side; 2] = [Side::Old, Side::New];

    pub fn name(self) -> &'static str {
        match self {
            Side::Old => "old",
            Side::New => "new",
        }
    }
    pub fn other(self) -> Side {
        match self {
            Side::Old => Side::New,
            Side::New => Side::Old,
        }
    }
}

impl fmt::Display for Side {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A route's migration phase (see DESIGN.md's table).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Phase {
    OldOnly,
    DualWrite,
    ReadNew,
    NewOnly,
}

impl Phase {
    /// In migration order.
    pub const ALL: [Phase; 4] = [
        Phase::OldOnly,
        Phase::DualWrite,
        Phase::ReadNew,
        Phase::NewOnly,
    ];

    pub fn index(self) -> usize {
        self as usize
    }

    /// Steps between two phases in migration order (1 for neighbours).
    pub fn distance(self, other: Phase) -> usize {
        self.index().abs_diff(other.index())
    }

    /// The dual phase whose mirror is `side`.
    pub fn mirroring_to(side: Side) -> Phase {
        match side {
            Side::New => Phase::DualWrite,
            Side::Old => Phase::ReadNew,
        }
    }

    pub fn parse(s: &str) -> Option<Phase> {
        Phase::ALL.into_iter().find(|p| p.name() == s)
    }
    /// Where reads go, and whose write reply the client sees.
    pub fn authoritative(self) -> Side {
        match self {
            Phase::OldOnly | Phase::DualWrite => Side::Old,
            Phase::ReadNew | Phase::NewOnly => Side::New,
        }
    }

    /// Where writes are mirrored, in the dual phases.
    pub fn mirror(self) -> Option<Side> {
        match self {
            Phase::DualWrite => Some(Side::New),
            Phase::ReadNew => Some(Side::Old),
            Phase::OldOnly | Phase::NewOnly => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Phase::OldOnly => "old-only",
            Phase::DualWrite => "dual-write",
            Phase::ReadNew => "read-new",
            Phase::NewOnly => "new-only",
        }
    }
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One value per cache, indexed by [`Side`] (never by a bare number).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PerSide<T>([T; 2]);

impl<T> PerSide<T> {
    pub const fn new(old: T, new: T) -> PerSide<T> {
        PerSide([old, new])
    }

    /// Each side's value made by `f`.
    pub fn from_fn(mut f: impl FnMut(Side) -> T) -> PerSide<T> {
        PerSide([f(Side::Old), f(Side::New)])
    }

    pub fn iter(&self) -> impl Iterator<Item = &T> {
        self.0.iter()
    }

    pub fn iter_mut(&mut self) -> impl Iterator<Item = &mut T> {
        self.0.iter_mut()
    }

    /// Both values, mutably, old first.
    pub fn both_mut(&mut self) -> (&mut T, &mut T) {
        let [old, new] = &mut self.0;
        (old, new)
    }
}

impl<T> Index<Side> for PerSide<T> {
    type Output = T;
    fn index(&self, side: Side) -> &T {
        &self.0[side as usize]
    }
}

impl<T> IndexMut<Side> for PerSide<T> {
    fn index_mut(&mut self, side: Side) -> &mut T {
        &mut self.0[side as usize]
    }
}

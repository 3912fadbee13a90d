//! What the mirror side receives besides verbatim writes: the effect of a
//! write whose outcome only the authoritative reply tells ([`effect`]).
//!
//! Nothing here does I/O; the session decides when to send.

pub mod effect;
pub mod scripts;

pub use effect::{effect_of, translate, Effect};
pub use scripts::ScriptCache;

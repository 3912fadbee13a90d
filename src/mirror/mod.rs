//! What the mirror side receives besides verbatim writes: the effect of a
//! write whose outcome only the authoritative reply tells ([`effect`]).
//!
//! Nothing here does I/O; the session decides when to send. [`backlog`]
//! bounds the bytes of mirrored writes not yet answered, over all sessions.

pub mod backlog;
pub mod effect;
pub mod scripts;

pub use backlog::Backlog;
pub use effect::{effect_of, translate, Effect};
pub use scripts::ScriptCache;

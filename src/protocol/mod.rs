//! RESP framing. Requests are parsed far enough to name the command and find
//! its keys ([`request`]); replies are only framed ([`reply`]). Neither
//! re-encodes what it frames: the proxy forwards the bytes it received.

pub mod reply;
pub mod request;
pub mod value;

pub use reply::{Reply, ReplyKind, ReplyScanner};
pub use request::{Command, RequestParser};
pub use value::Value;

/// A malformed client request. `Display` is Redis's exact error text; the
/// connection is closed after replying with it, as Redis does.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    #[error("Protocol error: invalid multibulk length")]
    InvalidMultibulkLength,
    #[error("Protocol error: expected '$', got '{}'", char::from(*.0))]
    ExpectedDollar(u8),
    #[error("Protocol error: invalid bulk length")]
    InvalidBulkLength,
    #[error("Protocol error: unbalanced quotes in request")]
    UnbalancedQuotes,
    #[error("Protocol error: too big mbulk count string")]
    TooBigMbulkCount,
    #[error("Protocol error: too big bulk count string")]
    TooBigBulkCount,
    #[error("Protocol error: too big inline request")]
    TooBigInline,
}

/// A reply (or any frame) as one line of text for a log or an error
/// message: lossy UTF-8, its line end trimmed.
pub fn text(frame: &[u8]) -> String {
    String::from_utf8_lossy(frame).trim_end().to_string()
}

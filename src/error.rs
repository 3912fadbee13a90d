//! Data-path errors. Each says which side failed; [`UpstreamError::reply`]
//! is what the client sees when it was waiting on that side.

use std::time::Duration;

use bytes::Bytes;

use crate::protocol::reply::ReplyError;
use crate::routing::Side;

/// An upstream connection that could not be opened or had to be dropped.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("upstream {side} ({addr}): connect failed: {source}")]
    Connect {
        side: Side,
        addr: String,
        source: std::io::Error,
    },
    #[error("upstream {side} ({addr}): TLS: {reason}")]
    Tls {
        side: Side,
        addr: String,
        reason: String,
    },
    #[error("upstream {side} ({addr}): connect timed out after {after:?}")]
    ConnectTimeout {
        side: Side,
        addr: String,
        after: Duration,
    },
    #[error("upstream {side} ({addr}): connection setup failed at {step}: {reply}")]
    Handshake {
        side: Side,
        addr: String,
        step: &'static str,
        reply: String,
    },
    #[error("upstream {side} ({addr}): {source}")]
    Io {
        side: Side,
        addr: String,
        source: std::io::Error,
    },
    #[error("upstream {side} ({addr}): connection closed")]
    Closed { side: Side, addr: String },
    #[error("upstream {side} ({addr}): no reply within {after:?}")]
    Timeout {
        side: Side,
        addr: String,
        after: Duration,
    },
    #[error("upstream {side} ({addr}): malformed reply: {source}")]
    Protocol {
        side: Side,
        addr: String,
        source: ReplyError,
    },
    #[error("upstream {side} ({addr}): unavailable, reconnecting")]
    Backoff { side: Side, addr: String },
    /// The client left while this connection was blocked in its command.
    #[error("upstream {side} ({addr}): abandoned, the client left while blocked")]
    Abandoned { side: Side, addr: String },
    /// A clustered cache whose topology could not be read, or a node of it
    /// that failed.
    #[error("upstream {side} ({addr}): cluster: {reason}")]
    Cluster {
        side: Side,
        addr: String,
        reason: String,
    },
}

impl UpstreamError {
    /// The same failure again, for another command it ended (I/O errors
    /// keep their kind and text).
    pub fn again(&self) -> UpstreamError {
        let io = |e: &std::io::Error| std::io::Error::new(e.kind(), e.to_string());
        match self {
            UpstreamError::Connect { side, addr, source } => UpstreamError::Connect {
                side: *side,
                addr: addr.clone(),
                source: io(source),
            },
            UpstreamError::Io { side, addr, source } => UpstreamError::Io {
                side: *side,
                addr: addr.clone(),
                source: io(source),
            },
            UpstreamError::Tls { side, addr, reason } => UpstreamError::Tls {
                side: *side,
                addr: addr.clone(),
                reason: reason.clone(),
            },
            UpstreamError::ConnectTimeout { side, addr, after } => UpstreamError::ConnectTimeout {
                side: *side,
                addr: addr.clone(),
                after: *after,
            },
            UpstreamError::Handshake {
                side,
                addr,
                step,
                reply,
            } => UpstreamError::Handshake {
                side: *side,
                addr: addr.clone(),
                step,
                reply: reply.clone(),
            },
            UpstreamError::Closed { side, addr } => UpstreamError::Closed {
                side: *side,
                addr: addr.clone(),
            },
            UpstreamError::Timeout { side, addr, after } => UpstreamError::Timeout {
                side: *side,
                addr: addr.clone(),
                after: *after,
            },
            UpstreamError::Protocol { side, addr, source } => UpstreamError::Protocol {
                side: *side,
                addr: addr.clone(),
                source: source.clone(),
            },
            UpstreamError::Backoff { side, addr } => UpstreamError::Backoff {
                side: *side,
                addr: addr.clone(),
            },
            UpstreamError::Abandoned { side, addr } => UpstreamError::Abandoned {
                side: *side,
                addr: addr.clone(),
            },
            UpstreamError::Cluster { side, addr, reason } => UpstreamError::Cluster {
                side: *side,
                addr: addr.clone(),
                reason: reason.clone(),
            },
        }
    }

    /// The cache that failed.
    pub fn side(&self) -> Side {
        match self {
            UpstreamError::Connect { side, .. }
            | UpstreamError::ConnectTimeout { side, .. }
            | UpstreamError::Tls { side, .. }
            | UpstreamError::Handshake { side, .. }
            | UpstreamError::Io { side, .. }
            | UpstreamError::Closed { side, .. }
            | UpstreamError::Timeout { side, .. }
            | UpstreamError::Protocol { side, .. }
            | UpstreamError::Backoff { side, .. }
            | UpstreamError::Abandoned { side, .. }
            | UpstreamError::Cluster { side, .. } => *side,
        }
    }

    /// The `-ERR` reply for a client command that was waiting on this side.
    pub fn reply(&self) -> Bytes {
        let text = self.to_string().replace(['\r', '\n'], " ");
        Bytes::from(format!("-ERR cutover: {text}\r\n"))
    }
}

//! The byte streams the proxy reads and writes, at either end: plain TCP or
//! TLS over TCP, split into a read half and a write half. Plain TCP keeps
//! tokio's lock-free owned halves; only TLS pays for a shared session.
//!
//! A TLS write half flushes through: a write returns once the TLS records
//! made from the bytes it accepted are on the socket. Callers write only
//! while they have bytes, so records left in the TLS session would wait
//! for a next write that may never come. The price is a contract: after a
//! `Pending`, the caller offers the same bytes again (more may follow), as
//! every buffer of the proxy does; it never advances without an `Ok(n)`.

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, DuplexStream, ReadBuf};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;

/// TLS over TCP, as a client (to an upstream) or a server (to a client).
pub type TlsStream = tokio_rustls::TlsStream<TcpStream>;

pub enum Stream {
    Tcp(TcpStream),
    Tls(Box<TlsStream>),
}

impl Stream {
    pub fn split(self) -> (ReadHalf, WriteHalf) {
        match self {
            Stream::Tcp(s) => {
                let (r, w) = s.into_split();
                (ReadHalf::Tcp(r), WriteHalf::Tcp(w))
            }
            Stream::Tls(s) => {
                let (r, w) = tokio::io::split(*s);
                (
                    ReadHalf::Tls(r),
                    WriteHalf::Tls {
                        inner: w,
                        accepted: None,
                    },
                )
            }
        }
    }
}

#[derive(Debug)]
pub enum ReadHalf {
    Tcp(OwnedReadHalf),
    Tls(tokio::io::ReadHalf<TlsStream>),
    /// An in-process pipe: a clustered upstream's router at the far end.
    Mem(tokio::io::ReadHalf<DuplexStream>),
}

#[derive(Debug)]
pub enum WriteHalf {
    Tcp(OwnedWriteHalf),
    Tls {
        inner: tokio::io::WriteHalf<TlsStream>,
        /// Bytes the TLS session took whose records are still being
        /// flushed: the answer to the write that is being retried.
        accepted: Option<usize>,
    },
    Mem(tokio::io::WriteHalf<DuplexStream>),
}

impl AsyncRead for ReadHalf {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ReadHalf::Tcp(r) => Pin::new(r).poll_read(cx, buf),
            ReadHalf::Tls(r) => Pin::new(r).poll_read(cx, buf),
            ReadHalf::Mem(r) => Pin::new(r).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for WriteHalf {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            WriteHalf::Tcp(w) => Pin::new(w).poll_write(cx, buf),
            WriteHalf::Tls { inner, accepted } => {
                let n = match *accepted {
                    Some(n) => n,
                    None => {
                        let n = ready!(Pin::new(&mut *inner).poll_write(cx, buf))?;
                        *accepted = Some(n);
                        n
                    }
                };
                let flushed = ready!(Pin::new(&mut *inner).poll_flush(cx));
                *accepted = None;
                Poll::Ready(flushed.map(|()| n.min(buf.len())))
            }
            WriteHalf::Mem(w) => Pin::new(w).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            WriteHalf::Tcp(w) => Pin::new(w).poll_flush(cx),
            WriteHalf::Tls { inner, .. } => Pin::new(inner).poll_flush(cx),
            WriteHalf::Mem(w) => Pin::new(w).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            WriteHalf::Tcp(w) => Pin::new(w).poll_shutdown(cx),
            WriteHalf::Tls { inner, .. } => Pin::new(inner).poll_shutdown(cx),
            WriteHalf::Mem(w) => Pin::new(w).poll_shutdown(cx),
        }
    }
}

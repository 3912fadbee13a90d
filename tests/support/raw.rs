//! A raw RESP client over TCP, for the byte-level edges a client library
//! hides.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A raw TCP client speaking bytes, for edges a client library hides.
pub struct RawClient {
    pub stream: TcpStream,
}

impl RawClient {
    pub async fn connect(addr: impl tokio::net::ToSocketAddrs) -> RawClient {
        RawClient {
            stream: TcpStream::connect(addr).await.unwrap(),
        }
    }

    pub async fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.unwrap();
    }

    /// Reads until `want` bytes arrived, EOF, or 5 s passed.
    pub async fn read_n(&mut self, want: usize) -> Vec<u8> {
        let mut out = Vec::new();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        let mut buf = [0u8; 65536];
        while out.len() < want {
            match tokio::time::timeout_at(deadline, self.stream.read(&mut buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) | Err(_) => break,
                Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
            }
        }
        out
    }

    /// Reads everything until the server closes the connection (or 5 s).
    /// Returns the bytes and whether EOF was seen.
    pub async fn read_to_close(&mut self) -> (Vec<u8>, bool) {
        let mut out = Vec::new();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        let mut buf = [0u8; 65536];
        loop {
            match tokio::time::timeout_at(deadline, self.stream.read(&mut buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) => return (out, true),
                Err(_) => return (out, false),
                Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
            }
        }
    }

    /// Reads until `needle` has arrived (5 s at most, then panics); returns
    /// everything read.
    pub async fn read_until(&mut self, needle: &str) -> String {
        let mut got = String::new();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while !got.contains(needle) {
            assert!(
                tokio::time::Instant::now() < deadline,
                "never got {needle:?}: {got:?}"
            );
            got.push_str(&String::from_utf8_lossy(
                &self.read_for(Duration::from_millis(50)).await,
            ));
        }
        got
    }

    /// Reads until `n` whole replies (RESP frames, push frames included)
    /// arrived: 10 s at most, then panics with what came.
    pub async fn read_replies(&mut self, n: usize) -> Vec<u8> {
        let mut scanner = cutover::protocol::ReplyScanner::new(10_000);
        let mut pending = bytes::BytesMut::new();
        let mut out = Vec::new();
        let mut frames = 0;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        let mut buf = [0u8; 65536];
        while frames < n {
            while let Ok(Some(frame)) = scanner.next(&mut pending) {
                out.extend_from_slice(&frame.bytes);
                frames += 1;
            }
            if frames >= n {
                break;
            }
            match tokio::time::timeout_at(deadline, self.stream.read(&mut buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) | Err(_) => panic!(
                    "{frames} of {n} replies came: {:?}",
                    String::from_utf8_lossy(&out)
                ),
                Ok(Ok(k)) => pending.extend_from_slice(&buf[..k]),
            }
        }
        out
    }

    /// Reads for `quiet` after the last byte, for replies of unknown length.
    pub async fn read_for(&mut self, quiet: Duration) -> Vec<u8> {
        let mut out = Vec::new();
        let mut buf = [0u8; 65536];
        while let Ok(Ok(n)) = tokio::time::timeout(quiet, self.stream.read(&mut buf)).await {
            if n == 0 {
                break;
            }
            out.extend_from_slice(&buf[..n]);
        }
        out
    }
}

/// Sends `input` to a server and returns what came back, plus whether it
/// closed the connection. The end of the replies is known, not guessed
/// from silence: a `PING <token>` sent behind the input comes back last
/// (as a bulk string, or RESP2's subscribed `pong` array), and is cut off;
/// an input that makes the server close ends at the close. Only an input
/// that leaves the connection unable to answer PING (a MULTI left open,
/// not authenticated) ends at a 10 s deadline.
pub async fn exchange(addr: impl tokio::net::ToSocketAddrs, input: &[u8]) -> (Vec<u8>, bool) {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let token = format!(
        "exchange-end-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    );
    let mut c = RawClient::connect(addr).await;
    let mut bytes = input.to_vec();
    bytes.extend_from_slice(
        format!("*2\r\n$4\r\nPING\r\n${}\r\n{token}\r\n", token.len()).as_bytes(),
    );
    // A server that closes on the input may not take the rest.
    let _ = c.stream.write_all(&bytes).await;
    let end = format!("${}\r\n{token}\r\n", token.len()).into_bytes();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let mut out = Vec::new();
    let mut buf = [0u8; 65536];
    loop {
        if out.ends_with(&end) {
            out.truncate(out.len() - end.len());
            // In the RESP2 subscribed state PING answers an array.
            let pong = b"*2\r\n$4\r\npong\r\n";
            if out.ends_with(pong) {
                out.truncate(out.len() - pong.len());
            }
            return (out, false);
        }
        match tokio::time::timeout_at(deadline, c.stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return (out, true),
            Err(_) => return (out, false),
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
        }
    }
}

/// `args` as one RESP request.
pub fn resp(args: &[&str]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for a in args {
        out.extend_from_slice(format!("${}\r\n{a}\r\n", a.len()).as_bytes());
    }
    out
}

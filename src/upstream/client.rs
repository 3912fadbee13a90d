//! A plain connection to one cache for the proxy's own work (repair
//! copies, backfill, verify): pipelined request/response calls under the
//! upstream's command timeout, dropped on any error and reopened (with the
//! upstream's setup: AUTH, its `db`) by the next call.

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::{Conn, Upstream};
use crate::error::UpstreamError;
use crate::protocol::{Command, ReplyScanner};

#[derive(Debug, Default)]
pub struct Client {
    conn: Option<(Conn, ReplyScanner, BytesMut)>,
    /// The database the open connection has selected.
    db: u32,
}

impl Client {
    pub fn new() -> Client {
        Client::default()
    }

    /// Sends `cmds` in one write and reads one reply each.
    pub async fn call(
        &mut self,
        upstream: &Upstream,
        depth: usize,
        cmds: &[Command],
    ) -> Result<Vec<Bytes>, UpstreamError> {
        if self.conn.is_none() {
            let conn = upstream.connect(upstream.base_setup(), depth).await?;
            self.db = upstream.config.db;
            self.conn = Some((conn, ReplyScanner::new(depth), BytesMut::new()));
        }
        let side = upstream.side;
        let (conn, scanner, buf) = self.conn.as_mut().expect("connected above");
        let addr = || upstream.addr().to_string();
        let io = |source| upstream.io_error(source);
        let mut out = BytesMut::new();
        for c in cmds {
            out.extend_from_slice(c.raw());
        }
        let exchange = async {
            conn.wr.write_all(&out).await.map_err(io)?;
            let mut replies = Vec::with_capacity(cmds.len());
            while replies.len() < cmds.len() {
                match scanner.next(buf) {
                    Ok(Some(r)) => replies.push(r.bytes),
                    Ok(None) => {
                        if conn.rd.read_buf(buf).await.map_err(io)? == 0 {
                            return Err(UpstreamError::Closed { side, addr: addr() });
                        }
                    }
                    Err(source) => {
                        return Err(UpstreamError::Protocol {
                            side,
                            addr: addr(),
                            source,
                        })
                    }
                }
            }
            Ok(replies)
        };
        let result =
            match upstream.config.command_timeout() {
                Some(after) => tokio::time::timeout(after, exchange).await.unwrap_or(Err(
                    UpstreamError::Timeout {
                        side,
                        addr: addr(),
                        after,
                    },
                )),
                None => exchange.await,
            };
        if result.is_err() {
            self.conn = None;
        }
        result
    }

    /// Like [`Client::call`], in database `db` (`None`: the upstream's own),
    /// selecting it first when needed. `Ok(Err(reply))` when the cache
    /// refused the `SELECT`.
    pub async fn call_in(
        &mut self,
        upstream: &Upstream,
        depth: usize,
        db: Option<u32>,
        cmds: &[Command],
    ) -> Result<Result<Vec<Bytes>, Bytes>, UpstreamError> {
        let want = db.unwrap_or(upstream.config.db);
        if self.conn.is_none() {
            // Connect first so the connection's database is known.
            self.call(upstream, depth, &[Command::from_args(&[b"PING"])])
                .await?;
        }
        if self.db != want {
            let select = Command::from_args(&[b"SELECT", want.to_string().as_bytes()]);
            let r = self.call(upstream, depth, &[select]).await?;
            if r[0].first() == Some(&b'-') {
                return Ok(Err(r[0].clone()));
            }
            self.db = want;
        }
        Ok(Ok(self.call(upstream, depth, cmds).await?))
    }
}

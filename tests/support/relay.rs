//! A delaying, stalling or freezing TCP relay in front of a real server:
//! a sick cache, made real.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A TCP relay in front of a real server that can misbehave like a sick
/// cache: `stall` keeps reading requests but holds every reply back;
/// `delay` holds each reply that long; `freeze` stops reading requests too,
/// so they back up into the sender's socket and buffers; `accept_delay`
/// makes each new connection wait before it is put through (connections
/// already open are not slowed).
pub struct StallingRelay {
    pub addr: SocketAddr,
    accept_delay_ms: std::sync::Arc<std::sync::atomic::AtomicU64>,
    stalled: std::sync::Arc<std::sync::atomic::AtomicBool>,
    frozen: std::sync::Arc<std::sync::atomic::AtomicBool>,
    delay_ms: std::sync::Arc<std::sync::atomic::AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl StallingRelay {
    pub async fn start(target: String) -> StallingRelay {
        use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
        use std::sync::Arc;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let stalled = Arc::new(AtomicBool::new(false));
        let frozen = Arc::new(AtomicBool::new(false));
        let delay_ms = Arc::new(AtomicU64::new(0));
        let accept_delay_ms = Arc::new(AtomicU64::new(0));
        let (stall_flag, freeze_flag, delay) = (stalled.clone(), frozen.clone(), delay_ms.clone());
        let accept_delay = accept_delay_ms.clone();
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                // Each connection is put through by a task of its own, so
                // an accept delay slows each one, not the ones after it.
                let (target, accept_delay) = (target.clone(), accept_delay.clone());
                let (stall_flag, freeze_flag, delay) =
                    (stall_flag.clone(), freeze_flag.clone(), delay.clone());
                tokio::spawn(async move {
                    let wait = accept_delay.load(Ordering::Relaxed);
                    if wait > 0 {
                        tokio::time::sleep(Duration::from_millis(wait)).await;
                    }
                    let Ok(server) = TcpStream::connect(&target).await else {
                        return;
                    };
                    let (mut cr, mut cw) = client.into_split();
                    let (mut sr, mut sw) = server.into_split();
                    let freeze = freeze_flag.clone();
                    tokio::spawn(async move {
                        let mut buf = vec![0u8; 65536];
                        loop {
                            while freeze.load(Ordering::Relaxed) {
                                tokio::time::sleep(Duration::from_millis(10)).await;
                            }
                            let n = match cr.read(&mut buf).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => n,
                            };
                            if sw.write_all(&buf[..n]).await.is_err() {
                                return;
                            }
                        }
                    });
                    let (stall, delay) = (stall_flag.clone(), delay.clone());
                    tokio::spawn(async move {
                        let mut buf = vec![0u8; 65536];
                        loop {
                            let n = match sr.read(&mut buf).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => n,
                            };
                            let ms = delay.load(Ordering::Relaxed);
                            if ms > 0 {
                                tokio::time::sleep(Duration::from_millis(ms)).await;
                            }
                            while stall.load(Ordering::Relaxed) {
                                tokio::time::sleep(Duration::from_millis(10)).await;
                            }
                            if cw.write_all(&buf[..n]).await.is_err() {
                                return;
                            }
                        }
                    });
                });
            }
        });
        StallingRelay {
            addr,
            accept_delay_ms,
            stalled,
            frozen,
            delay_ms,
            task,
        }
    }

    pub fn stall(&self, on: bool) {
        self.stalled.store(on, std::sync::atomic::Ordering::Relaxed);
    }

    pub fn freeze(&self, on: bool) {
        self.frozen.store(on, std::sync::atomic::Ordering::Relaxed);
    }

    /// Each new connection waits this long before it is put through.
    pub fn accept_delay(&self, by: Duration) {
        self.accept_delay_ms
            .store(by.as_millis() as u64, std::sync::atomic::Ordering::Relaxed);
    }

    /// Each reply (each chunk of reply bytes) waits this long.
    pub fn delay(&self, by: Duration) {
        self.delay_ms
            .store(by.as_millis() as u64, std::sync::atomic::Ordering::Relaxed);
    }
}

impl Drop for StallingRelay {
    fn drop(&mut self) {
        self.task.abort();
    }
}

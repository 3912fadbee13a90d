//! Client limits: the idle timeout (off by default, as in Redis; blocked
//! and subscribed clients exempt) and backpressure on a client that does
//! not read its replies (the proxy stops reading from it, so its memory
//! stays bounded, and every reply still arrives, in order, once it reads).

mod support;

use std::time::{Duration, Instant};

use cutover::routing::{Phase, Side};
use support::{RawClient, RedisServer, Served, TestProxy};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::test]
async fn idle_clients_are_closed_but_blocked_and_subscribed_ones_are_not() {
    let (old, new) = support::start_pair();
    let text = support::config_text(
        &old.addr(),
        &new.addr(),
        &[("default", None, Phase::DualWrite)],
        "[limits]\nidle_timeout_secs = 1\n",
    );
    let proxy = TestProxy::start_text(&text).await;

    let mut idle = proxy.raw().await;
    idle.send(b"PING\r\n").await;
    assert_eq!(idle.read_n(7).await, b"+PONG\r\n");
    let mut blocked = proxy.raw().await;
    blocked.send(b"BLPOP nothing 2\r\n").await;
    let mut subscribed = proxy.raw().await;
    subscribed.send(b"SUBSCRIBE news\r\n").await;
    subscribed.read_until(":1\r\n").await;
    let mut busy = proxy.raw().await;

    let started = Instant::now();
    for _ in 0..6 {
        tokio::time::sleep(Duration::from_millis(400)).await;
        busy.send(b"PING\r\n").await;
        assert_eq!(busy.read_n(7).await, b"+PONG\r\n");
    }
    // 2.4 s later: the idle one was closed (silently, as Redis does), the
    // busy one was not.
    let (rest, closed) = idle.read_to_close().await;
    assert!(closed && rest.is_empty(), "{rest:?}");
    assert!(started.elapsed() >= Duration::from_secs(2));
    // The blocked one got its timeout reply (nil), not a closed connection.
    assert_eq!(blocked.read_n(5).await, b"*-1\r\n");
    // The subscribed one still gets messages.
    let mut c = proxy.conn().await;
    let _: i64 = redis::cmd("PUBLISH")
        .arg("news")
        .arg("hi")
        .query_async(&mut c)
        .await
        .unwrap();
    let got = subscribed.read_until("hi\r\n").await;
    assert!(got.contains("message"), "{got}");
}

#[tokio::test]
async fn a_client_that_does_not_read_is_not_read_from() {
    let old = RedisServer::start();
    let new = RedisServer::start();
    // A debug build takes seconds to move a 64 MiB backlog of replies:
    // the command timeout is not what is tested here.
    let text = support::Config::new(&old.addr(), &new.addr())
        .route("default", None, Phase::OldOnly)
        .command_timeout(Side::Old, 60_000)
        .command_timeout(Side::New, 60_000)
        .text();
    let proxy = Served::start(&text, &[]).await;
    // A 64 KiB value, asked for 200,000 times in one pipeline: 12.5 GiB of
    // replies for a client that reads none of them for a while.
    let value = "x".repeat(64 * 1024);
    let _: () = redis::cmd("SET")
        .arg("big")
        .arg(&value)
        .query(&mut old.sync())
        .unwrap();
    let baseline = proxy.rss_kib();
    let n = 200_000usize;
    let stream = tokio::net::TcpStream::connect(("127.0.0.1", proxy.port))
        .await
        .unwrap();
    let (mut rd, mut wr) = stream.into_split();
    let writer = tokio::spawn(async move {
        let req = b"GET big\r\n".repeat(n);
        wr.write_all(&req).await.unwrap();
        wr
    });
    // It takes commands up to its pending-reply limit (100,000), however
    // long a loaded machine needs to get there, and then no more.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while proxy.stat("default", "reads").await < 100_000 {
        assert!(
            std::time::Instant::now() < deadline,
            "the proxy never reached its pending-reply bound: {}",
            proxy.stat("default", "reads").await
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let taken = proxy.stat("default", "reads").await;
    assert!(taken <= 102_000, "the proxy kept taking commands: {taken}");
    // Far fewer replies than those commands make (6 GiB) are held for it.
    let grew_kib = proxy.rss_kib().saturating_sub(baseline);
    assert!(
        grew_kib < 192 * 1024,
        "a client that does not read made the proxy grow by {grew_kib} KiB"
    );
    // It reads now: replies come whole and in order, and the proxy reads
    // requests again as they are taken (then the client hangs up).
    let reply = format!("$65536\r\n{value}\r\n");
    let mut buf = vec![0u8; reply.len()];
    for i in 0..n / 10 {
        if let Err(e) = rd.read_exact(&mut buf).await {
            let mut proxy = proxy;
            let logs = proxy.stop_and_logs().await;
            let tail: Vec<&str> = logs.lines().rev().take(15).collect();
            panic!("reply {i}: {e}\n{}", tail.join("\n"));
        }
        assert!(buf == reply.as_bytes(), "reply {i} differs");
    }
    let grew_kib = proxy.rss_kib().saturating_sub(baseline);
    assert!(grew_kib < 192 * 1024, "grew by {grew_kib} KiB");
    // As the client took replies, the proxy took commands again: at least
    // as many as it answered beyond what it held (less what is in flight).
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let now = proxy.stat("default", "reads").await;
        if now >= taken + (n / 10) as u64 / 2 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the proxy did not read requests again: {now} after {taken}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    writer.abort();
    drop(rd);
    // The proxy still answers others.
    let mut other = RawClient::connect(("127.0.0.1", proxy.port)).await;
    other.send(b"PING\r\n").await;
    assert_eq!(other.read_n(7).await, b"+PONG\r\n");
}

//! Hostile input: gigantic declared lengths, half a frame and a hang-up,
//! replies nested deeper than the proxy accepts, and 10,000 connections
//! opened and dropped. Each fails alone, allocates nothing it was only
//! promised, and leaves every other client served.

mod support;

use std::time::{Duration, Instant};

use cutover::routing::Phase;
use redis::AsyncCommands;
use support::{RawClient, RedisServer, Served, TestProxy};

fn dual(old: &RedisServer, new: &RedisServer, extra: &str) -> String {
    support::config_text(
        &old.addr(),
        &new.addr(),
        &[("default", None, Phase::DualWrite)],
        extra,
    )
}

#[tokio::test]
async fn gigantic_declared_lengths_are_refused_without_allocating() {
    let (old, new) = support::start_pair();
    let proxy = Served::start(&dual(&old, &new, ""), &[]).await;
    let baseline = proxy.rss_kib();
    let addr = ("127.0.0.1", proxy.port);
    // Connections and their buffers first, so the baseline has them.
    let mut warm = RawClient::connect(addr).await;
    warm.send(b"PING\r\n").await;
    assert_eq!(warm.read_n(7).await, b"+PONG\r\n");
    let virtual_baseline = proxy.virtual_kib();
    // Redis's own replies for each (checked against redis-server itself).
    for (input, want) in [
        (
            &b"*2147483648\r\n"[..],
            "-ERR Protocol error: invalid multibulk length\r\n",
        ),
        (
            b"*1\r\n$536870913\r\n",
            "-ERR Protocol error: invalid bulk length\r\n",
        ),
        (
            b"*1\r\n$-5\r\n",
            "-ERR Protocol error: invalid bulk length\r\n",
        ),
    ] {
        let (got, closed) = support::exchange(addr, input).await;
        assert_eq!(String::from_utf8_lossy(&got), want);
        assert!(closed);
        let (direct, _) = support::exchange(old.addr(), input).await;
        assert_eq!(String::from_utf8_lossy(&direct), want, "as Redis says it");
    }
    // Promised, never sent: 2^31-1 arguments, a 512 MB bulk. Held open.
    let mut promisers = Vec::new();
    for _ in 0..50 {
        let mut c = RawClient::connect(addr).await;
        c.send(b"*2147483647\r\n$3\r\nSET\r\n$536870912\r\nabc")
            .await;
        promisers.push(c);
    }
    // Over a second, so the proxy has read every promise: neither touched
    // nor reserved memory grows by anything near one promise (512 MiB; 50
    // of them would be 25 GiB of address space).
    for _ in 0..10 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let grew = proxy.rss_kib().saturating_sub(baseline);
        assert!(grew < 16 * 1024, "promises cost {grew} KiB resident");
        let reserved = proxy.virtual_kib().saturating_sub(virtual_baseline);
        assert!(reserved < 384 * 1024, "promises reserved {reserved} KiB");
    }
    let mut c = support::connect(&proxy.url()).await;
    let _: () = c.set("still", "served").await.unwrap();
    drop(promisers);
}

#[tokio::test]
async fn half_a_frame_then_a_hang_up_writes_nothing() {
    let (old, new) = support::start_pair();
    let proxy = TestProxy::start(&old, &new, &[("default", None, Phase::DualWrite)]).await;
    for cut in [3, 10, 20, 26] {
        let frame = b"*3\r\n$3\r\nSET\r\n$4\r\nhalf\r\n$5\r\nvalue\r\n";
        let mut c = proxy.raw().await;
        c.send(&frame[..cut]).await;
        drop(c);
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut c = proxy.conn().await;
    let gone: Option<String> = c.get("half").await.unwrap();
    assert_eq!(gone, None);
    assert_eq!(support::get(&mut new.sync(), "half"), None);
    let _: () = c.set("whole", "1").await.unwrap();
}

#[tokio::test]
async fn replies_nested_deeper_than_the_limit_fail_that_client_only() {
    let (old, new) = support::start_pair();
    let proxy = TestProxy::start_text(&dual(&old, &new, "[limits]\nmax_reply_depth = 50\n")).await;
    let script = |depth: usize| {
        format!(
            "local t = {{}} local c = t for i=1,{depth} do local n = {{}} c[1] = n c = n end return t"
        )
    };
    let mut c = proxy.conn().await;
    // Within the limit: passed through.
    let v: redis::Value = redis::cmd("EVAL")
        .arg(script(40))
        .arg(0)
        .query_async(&mut c)
        .await
        .unwrap();
    assert!(matches!(v, redis::Value::Array(_)));
    // Deeper: a clear error for this command, not a hang or a crash.
    let mut raw = proxy.raw().await;
    let cmd =
        cutover::protocol::Command::from_args(&[b"EVAL".as_slice(), script(200).as_bytes(), b"0"]);
    raw.send(cmd.raw()).await;
    let got = raw.read_until("\r\n").await;
    assert!(
        got.starts_with("-ERR cutover: upstream old") && got.contains("malformed reply"),
        "{got}"
    );
    // The same client goes on (its upstream connection is opened again).
    raw.send(b"PING\r\n").await;
    assert_eq!(raw.read_until("\r\n").await, "+PONG\r\n");
    let _: () = c.set("other", "fine").await.unwrap();
}

#[tokio::test]
async fn ten_thousand_connections_opened_and_dropped() {
    let (old, new) = support::start_pair();
    let proxy = Served::start(&dual(&old, &new, ""), &[]).await;
    let pid = proxy.child.id().unwrap();
    let fds = || {
        std::fs::read_dir(format!("/proc/{pid}/fd"))
            .unwrap()
            .count()
    };
    let mut c = support::connect(&proxy.url()).await;
    let _: () = c.set("k", "v").await.unwrap();
    let (fds_before, rss_before) = (fds(), proxy.rss_kib());
    let started = Instant::now();
    let port = proxy.port;
    let mut tasks = Vec::new();
    for t in 0..20 {
        tasks.push(tokio::spawn(async move {
            for i in 0..500 {
                let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
                    .await
                    .unwrap();
                // Some say something first, some send half a command.
                use tokio::io::AsyncWriteExt;
                match (t + i) % 3 {
                    0 => {}
                    1 => s.write_all(b"PING\r\n").await.unwrap(),
                    _ => s.write_all(b"*2\r\n$3\r\nGET\r\n$1").await.unwrap(),
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    // Every connection's file descriptors and memory are given back.
    let deadline = Instant::now() + Duration::from_secs(20);
    while fds() > fds_before + 8 {
        assert!(
            Instant::now() < deadline,
            "file descriptors not released: {} -> {}",
            fds_before,
            fds()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let grew = proxy.rss_kib().saturating_sub(rss_before);
    assert!(
        grew < 32 * 1024,
        "10,000 connections left {grew} KiB behind"
    );
    let v: String = c.get("k").await.unwrap();
    assert_eq!(v, "v");
    assert!(started.elapsed() < Duration::from_secs(60));
}

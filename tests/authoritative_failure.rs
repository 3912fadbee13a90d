//! A dead authoritative side gives a prompt error naming it, never a hang,
//! and routes served by the other cache keep working.

mod support;

use std::time::{Duration, Instant};

use cutover::routing::{Phase, Side};
use redis::AsyncCommands;
use support::{exchange, TestProxy};

#[tokio::test]
async fn dead_old_fails_fast_and_new_routes_keep_serving() {
    let (mut old, new) = support::start_pair();
    let proxy = TestProxy::start(
        &old,
        &new,
        &[
            ("n", Some(&["n:*"]), Phase::NewOnly),
            ("default", None, Phase::OldOnly),
        ],
    )
    .await;
    let mut c = proxy.conn().await;
    let _: () = c.set("o:1", "x").await.unwrap();
    let _: () = c.set("n:1", "y").await.unwrap();
    old.kill();

    let started = Instant::now();
    let err = c.get::<_, String>("o:1").await.unwrap_err();
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "error took {:?}",
        started.elapsed()
    );
    let text = err.to_string();
    assert!(
        text.contains("upstream old") && text.contains(&old.addr()),
        "{text}"
    );

    // Same connection: the route on new is unaffected.
    let v: String = c.get("n:1").await.unwrap();
    assert_eq!(v, "y");
    let _: () = c.set("n:2", "z").await.unwrap();

    // A pipeline mixing both sides keeps its order: error, value, error.
    let mut raw = proxy.raw().await;
    raw.send(b"GET o:1\r\nGET n:1\r\nGET o:2\r\n").await;
    let reply = raw.read_replies(3).await;
    let text = String::from_utf8_lossy(&reply);
    let lines: Vec<&str> = text.split("\r\n").collect();
    assert!(lines[0].starts_with("-ERR cutover: upstream old"), "{text}");
    assert_eq!(&lines[1..3], ["$1", "y"], "{text}");
    assert!(lines[3].starts_with("-ERR cutover: upstream old"), "{text}");
    // Still open: the next command is answered.
    raw.send(b"GET n:1\r\n").await;
    assert_eq!(raw.read_replies(1).await, b"$1\r\ny\r\n");
}

#[tokio::test]
async fn maxclients_refuses_with_redis_error() {
    let (old, new) = support::start_pair();
    let text = support::config_text(
        &old.addr(),
        &new.addr(),
        &[("default", None, Phase::OldOnly)],
        "[limits]\nmaxclients = 2\n",
    );
    let proxy = TestProxy::start_text(&text).await;
    let mut a = proxy.raw().await;
    let mut b = proxy.raw().await;
    a.send(b"PING\r\n").await;
    b.send(b"PING\r\n").await;
    assert_eq!(a.read_n(7).await, b"+PONG\r\n");
    assert_eq!(b.read_n(7).await, b"+PONG\r\n");
    let mut third = proxy.raw().await;
    let (reply, closed) = third.read_to_close().await;
    assert_eq!(
        String::from_utf8_lossy(&reply),
        "-ERR max number of clients reached\r\n"
    );
    assert!(closed);
    // A slot frees up when a client leaves.
    drop(a);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (reply, _) = exchange(proxy.addr, b"PING\r\n").await;
        if reply == b"+PONG\r\n" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "slot never freed: {:?}",
            String::from_utf8_lossy(&reply)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn shutdown_is_not_held_up_by_a_client_blocked_forever() {
    let (old, new) = support::start_pair();
    let mut proxy = TestProxy::start(&old, &new, &[("default", None, Phase::OldOnly)]).await;
    let mut blocked = proxy.raw().await;
    blocked.send(b"BLPOP never 0\r\n").await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let started = Instant::now();
    proxy.shutdown().await;
    // The session drains for at most its drain timeout (5 s), then gives up
    // on the blocked command; it must not wait forever.
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "shutdown took {:?}",
        started.elapsed()
    );
    let (reply, closed) = blocked.read_to_close().await;
    assert!(closed, "the blocked client is closed");
    assert!(
        String::from_utf8_lossy(&reply).starts_with("-ERR cutover"),
        "{}",
        String::from_utf8_lossy(&reply)
    );
}

#[tokio::test]
async fn stalled_old_times_out_promptly_but_blocking_commands_wait_their_own_time() {
    let (old, new) = support::start_pair();
    let relay = support::StallingRelay::start(old.addr()).await;
    let routes = [
        ("n", Some(&["n:*"][..]), Phase::NewOnly),
        ("default", None, Phase::OldOnly),
    ];
    let text = support::Config::new(&relay.addr.to_string(), &new.addr())
        .routes(&routes)
        .command_timeout(Side::Old, 300)
        .text();
    let proxy = TestProxy::start_text(&text).await;

    // A block longer than the command timeout is not a timeout.
    let mut raw = proxy.raw().await;
    let started = Instant::now();
    raw.send(b"BLPOP o:list 1\r\n").await;
    assert_eq!(raw.read_n(5).await, b"*-1\r\n");
    assert!(started.elapsed() >= Duration::from_millis(900));

    // old stops answering: a prompt error naming it, per command.
    relay.stall(true);
    let started = Instant::now();
    raw.send(b"GET o:1\r\n").await;
    let got = raw.read_until("\r\n").await;
    assert!(
        got.starts_with("-ERR cutover: upstream old") && got.contains("no reply within 300ms"),
        "{got}"
    );
    assert!(
        started.elapsed() < Duration::from_millis(1500),
        "{:?}",
        started.elapsed()
    );
    // The route on new is served meanwhile, on the same connection.
    raw.send(b"SET n:1 v\r\nGET n:1\r\n").await;
    assert_eq!(raw.read_n(12).await, b"+OK\r\n$1\r\nv\r\n");
    relay.stall(false);
}

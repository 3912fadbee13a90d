//! Byte-level transparency: the proxy answers exactly as Redis does, and a
//! malformed frame closes only the client that sent it.

mod support;

use cutover::routing::Phase;
use redis::AsyncCommands;
use support::{exchange, RedisServer, TestProxy};

/// Inputs whose replies (and whether the connection closes) must be
/// byte-identical through the proxy and straight to Redis.
const SAME_AS_REDIS: &[&[u8]] = &[
    b"PING\r\n*1\r\nx\r\nPING\r\n",
    b"*x\r\n",
    b"*2147483648\r\n",
    b"*1\r\n$-1\r\n",
    b"*1\r\n$abc\r\n",
    b"*1\r\n$536870913\r\n",
    b"set \"k v\r\n",
    b"set \"k\"v x\r\n",
    b"*-1\r\n*0\r\n\r\n   \r\nPING\r\n",
    b"set \"a b\" \"c\\x41\\n\"\r\nget \"a b\"\r\nget 'a b'\r\n",
    b"*3\r\n$3\r\nset\r\n$4\r\nk\r\nv\r\n$4\r\n\r\n\r\n\r\n*2\r\n$3\r\nget\r\n$4\r\nk\r\nv\r\n",
    b"GET nokey\r\nBLPOP nolist 0.01\r\nLRANGE nolist 0 -1\r\nEXISTS nokey\r\n",
    b"HELLO 3\r\nGET nokey\r\nBLPOP nolist 0.01\r\nHELLO 2\r\nGET nokey\r\n",
    b"SET\r\nGET a b\r\nINCR a\r\nXADD\r\n",
    b"MULTI\r\nSET t 1\r\nINCR t\r\nEXEC\r\nMULTI\r\nSET t\r\nEXEC\r\nDISCARD\r\nEXEC\r\n",
    b"SELECT 2\r\nSET x 1\r\nSELECT 0\r\nGET x\r\nSELECT 2\r\nGET x\r\n",
    b"QUIT\r\nPING\r\n",
];

#[tokio::test]
async fn replies_match_redis_byte_for_byte() {
    let (old, new) = support::start_pair();
    let direct = RedisServer::start();
    let proxy = TestProxy::start(&old, &new, &[("default", None, Phase::OldOnly)]).await;
    for input in SAME_AS_REDIS {
        let want = exchange(direct.addr(), input).await;
        let got = exchange(proxy.addr, input).await;
        let strip_id = |b: &[u8]| {
            let mut out = String::new();
            for c in String::from_utf8_lossy(b).chars() {
                match c {
                    '0'..='9' if out.ends_with('#') => {}
                    '0'..='9' => out.push('#'),
                    c => out.push(c),
                }
            }
            out
        };
        // HELLO's reply carries the connection id; compare it digit-blind.
        let (w, g) = if input.starts_with(b"HELLO") {
            (strip_id(&want.0), strip_id(&got.0))
        } else {
            (
                String::from_utf8_lossy(&want.0).into_owned(),
                String::from_utf8_lossy(&got.0).into_owned(),
            )
        };
        assert_eq!(g, w, "input {:?}", String::from_utf8_lossy(input));
        assert_eq!(
            got.1,
            want.1,
            "closed? for input {:?}",
            String::from_utf8_lossy(input)
        );
    }
}

#[tokio::test]
async fn same_bytes_in_dual_write() {
    // In dual-write the client must not be able to tell either: the mirror's
    // replies never leak.
    let (old, new) = support::start_pair();
    let direct = RedisServer::start();
    let proxy = TestProxy::start(&old, &new, &[("default", None, Phase::DualWrite)]).await;
    for input in [
        &b"SET a 1\r\nINCR a\r\nGET a\r\nDEL a\r\nGET a\r\n"[..],
        b"RPUSH l a b c\r\nLPOP l\r\nLRANGE l 0 -1\r\n",
    ] {
        let want = exchange(direct.addr(), input).await;
        let got = exchange(proxy.addr, input).await;
        assert_eq!(
            String::from_utf8_lossy(&got.0),
            String::from_utf8_lossy(&want.0)
        );
    }
}

#[tokio::test]
async fn malformed_frame_closes_only_that_client() {
    let (old, new) = support::start_pair();
    let proxy = TestProxy::start(
        &old,
        &new,
        &[
            ("k", Some(&["k:*"]), Phase::DualWrite),
            ("default", None, Phase::OldOnly),
        ],
    )
    .await;
    let mut good = proxy.conn().await;
    let _: () = good.set("k:1", "before").await.unwrap();

    let mut bad = proxy.raw().await;
    bad.send(b"*2\r\n$3\r\nGET\r\n$3\r\nk:1\r\n*1\r\nGARBAGE\r\n")
        .await;
    let (reply, closed) = bad.read_to_close().await;
    assert_eq!(
        String::from_utf8_lossy(&reply),
        "$6\r\nbefore\r\n-ERR Protocol error: expected '$', got 'G'\r\n"
    );
    assert!(closed, "the proxy closes a client after a protocol error");

    let _: () = good.set("k:1", "after").await.unwrap();
    let v: String = good.get("k:1").await.unwrap();
    assert_eq!(v, "after");
}

#[tokio::test]
async fn binary_keys_and_values_pass_through() {
    let (old, new) = support::start_pair();
    let proxy = TestProxy::start(
        &old,
        &new,
        &[
            ("b", Some(&["bin:*"]), Phase::DualWrite),
            ("default", None, Phase::OldOnly),
        ],
    )
    .await;
    let key: Vec<u8> = [&b"bin:\r\n\x00"[..], &(0u8..=255).collect::<Vec<_>>()].concat();
    let value: Vec<u8> = (0..10_000u32).map(|i| (i * 7 % 256) as u8).collect();
    let mut c = proxy.conn().await;
    let _: () = c.set(&key, &value).await.unwrap();
    let back: Vec<u8> = c.get(&key).await.unwrap();
    assert_eq!(back, value);
    proxy.wait_mirrors_settled().await;
    let on_new: Vec<u8> = redis::cmd("GET").arg(&key).query(&mut new.sync()).unwrap();
    assert_eq!(on_new, value);
}

#[tokio::test]
async fn unknown_commands_follow_the_policy() {
    let (old, new) = support::start_pair();
    let proxy = TestProxy::start(&old, &new, &[("default", None, Phase::DualWrite)]).await;
    let (reply, _) = exchange(proxy.addr, b"JSON.SET k $ 1\r\nPING\r\n").await;
    let text = String::from_utf8_lossy(&reply);
    assert!(
        text.starts_with("-ERR unknown command 'json.set'") && text.contains("[commands] unknown"),
        "{text}"
    );
    assert!(
        text.ends_with("+PONG\r\n"),
        "the connection goes on: {text}"
    );

    let text = support::config_text(
        &old.addr(),
        &new.addr(),
        &[("default", None, Phase::DualWrite)],
        "[commands]\nunknown = \"write\"\n",
    );
    let proxy = TestProxy::start_text(&text).await;
    // Redis 7.0 does not know it either: both sides answer with their own
    // error, and the client gets old's.
    let (reply, _) = exchange(proxy.addr, b"NOSUCHCMD a\r\n").await;
    assert!(
        String::from_utf8_lossy(&reply).starts_with("-ERR unknown command 'NOSUCHCMD'"),
        "{}",
        String::from_utf8_lossy(&reply)
    );
    assert_eq!(proxy.stat("default", "mirrored"), 1);
}

#[tokio::test]
async fn unsupported_commands_get_a_clear_error() {
    let (old, new) = support::start_pair();
    let proxy = TestProxy::start(
        &old,
        &new,
        &[
            ("k", Some(&["k:*"]), Phase::DualWrite),
            ("default", None, Phase::OldOnly),
        ],
    )
    .await;
    let (reply, closed) = exchange(
        proxy.addr,
        b"SYNC\r\nMONITOR\r\nCLIENT REPLY OFF\r\nBLPOP other 0.01\r\nPING\r\n",
    )
    .await;
    let text = String::from_utf8_lossy(&reply);
    let lines: Vec<&str> = text.split("\r\n").collect();
    assert!(
        lines[0].starts_with("-ERR cutover does not support 'sync'"),
        "{text}"
    );
    assert!(
        lines[1].starts_with("-ERR cutover does not support 'monitor'"),
        "{text}"
    );
    assert!(
        lines[2].starts_with("-ERR cutover does not support 'client reply'"),
        "{text}"
    );
    assert_eq!(
        lines[3], "*-1",
        "a blocking pop on an old-only route works: {text}"
    );
    assert_eq!(lines[4], "+PONG");
    assert!(!closed);
}

//! Pub/sub through the proxy, RESP2 and RESP3: subscriptions on the read
//! side of their route, PUBLISH fanned out in dual phases, confirmations
//! exactly as Redis writes them, messages exactly once across a phase flip.

mod support;

use std::time::Duration;

use cutover::routing::Phase;
use support::{exchange, RedisServer, TestProxy};

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

const SCRIPT: &[u8] = b"SUBSCRIBE x y x\r\nGET a\r\nPING\r\nPING hi\r\nUNSUBSCRIBE y\r\nUNSUBSCRIBE\r\nUNSUBSCRIBE\r\nPSUBSCRIBE p*\r\nSSUBSCRIBE s\r\nPUNSUBSCRIBE\r\nECHO e\r\nSUNSUBSCRIBE nope\r\nSUNSUBSCRIBE\r\nSUBSCRIBE\r\nSET a 1\r\nRESET\r\nGET a\r\n";

#[tokio::test]
async fn subscribed_state_answers_like_redis_in_resp2_and_resp3() {
    let (old, new) = support::start_pair();
    let proxy = TestProxy::start(&old, &new, &[("default", None, Phase::DualWrite)]).await;
    let reference = RedisServer::start();
    for hello in [&b""[..], b"HELLO 3\r\n"] {
        let input = [hello, SCRIPT].concat();
        let (want, _) = exchange(reference.addr(), &input).await;
        let (got, _) = exchange(proxy.addr, &input).await;
        // HELLO's reply names the server (id differs); compare the rest.
        let skip = |b: &[u8]| {
            let t = text(b);
            if hello.is_empty() {
                t
            } else {
                t[t.find("*0\r\n").expect("HELLO reply") + 4..].to_string()
            }
        };
        assert_eq!(skip(&got), skip(&want), "hello: {}", text(hello));
    }
}

#[tokio::test]
async fn subscriptions_follow_routes_and_messages_arrive_once() {
    let (old, new) = support::start_pair();
    let proxy = TestProxy::start(
        &old,
        &new,
        &[
            ("a", Some(&["a:*"]), Phase::DualWrite),
            ("b", Some(&["b:*"]), Phase::ReadNew),
            ("default", None, Phase::OldOnly),
        ],
    )
    .await;
    let mut sub = proxy.raw().await;
    sub.send(b"SUBSCRIBE a:1 b:1\r\n").await;
    let got = sub.read_until("b:1\r\n:2\r\n").await;
    assert_eq!(
        got,
        "*3\r\n$9\r\nsubscribe\r\n$3\r\na:1\r\n:1\r\n*3\r\n$9\r\nsubscribe\r\n$3\r\nb:1\r\n:2\r\n"
    );
    // Each subscription lives on its route's read side.
    let numsub = |s: &RedisServer, ch: &str| -> i64 {
        let v: Vec<redis::Value> = redis::cmd("PUBSUB")
            .arg("NUMSUB")
            .arg(ch)
            .query(&mut s.sync())
            .unwrap();
        redis::from_redis_value(&v[1]).unwrap()
    };
    assert_eq!((numsub(&old, "a:1"), numsub(&new, "a:1")), (1, 0));
    assert_eq!((numsub(&old, "b:1"), numsub(&new, "b:1")), (0, 1));
    // PUBLISH through the proxy: the reply is the authoritative side's count.
    let (r, _) = exchange(
        proxy.addr,
        b"PUBLISH a:1 m1\r\nPUBLISH b:1 m2\r\nPUBLISH c m3\r\n",
    )
    .await;
    assert_eq!(text(&r), ":1\r\n:1\r\n:0\r\n");
    let mut got = sub.read_until("m1\r\n").await;
    if !got.contains("m2\r\n") {
        got += &sub.read_until("m2\r\n").await;
    }
    // Messages from different caches have no order between them (as
    // across shards of a Redis cluster); each arrives once.
    let m1 = "*3\r\n$7\r\nmessage\r\n$3\r\na:1\r\n$2\r\nm1\r\n";
    let m2 = "*3\r\n$7\r\nmessage\r\n$3\r\nb:1\r\n$2\r\nm2\r\n";
    assert!(
        got == format!("{m1}{m2}") || got == format!("{m2}{m1}"),
        "{got}"
    );
    assert_eq!(
        text(&sub.read_for(Duration::from_millis(200)).await),
        "",
        "exactly once"
    );
}

#[tokio::test]
async fn a_subscriber_gets_every_message_once_across_a_phase_flip() {
    let (old, new) = support::start_pair();
    let routes = |phase: Phase| {
        support::config_text(
            &old.addr(),
            &new.addr(),
            &[
                ("a", Some(&["a:*"]), phase),
                ("default", None, Phase::OldOnly),
            ],
            "",
        )
    };
    let proxy = TestProxy::start_text(&routes(Phase::DualWrite)).await;
    let mut sub = proxy.raw().await;
    sub.send(b"HELLO 3\r\nSUBSCRIBE a:news\r\n").await;
    sub.read_until("a:news\r\n:1\r\n").await;
    let mut publisher = proxy.raw().await;
    for i in 0..40 {
        if i == 20 {
            proxy.rewrite_config(&routes(Phase::ReadNew));
            proxy.wait_phase("a", Phase::ReadNew).await;
        }
        publisher
            .send(format!("PUBLISH a:news n{i}\r\n").as_bytes())
            .await;
        // The subscriber stays on old, which after the flip receives the
        // mirrored publish; the reply counts it, as Redis would (both
        // caches' counts added up; it was new's 0 before issue 16).
        let reply = text(&publisher.read_n(4).await);
        assert_eq!(reply, ":1\r\n", "message {i}");
    }
    let got = sub.read_until("n39\r\n").await;
    let received: Vec<String> = got
        .split(">3\r\n$7\r\nmessage\r\n$6\r\na:news\r\n")
        .skip(1)
        .map(|m| m.split("\r\n").nth(1).unwrap().to_string())
        .collect();
    let want: Vec<String> = (0..40).map(|i| format!("n{i}")).collect();
    assert_eq!(received, want);
    assert_eq!(text(&sub.read_for(Duration::from_millis(200)).await), "");
}

#[tokio::test]
async fn resp3_pushes_are_never_taken_for_replies() {
    let (old, new) = support::start_pair();
    let proxy = TestProxy::start(&old, &new, &[("default", None, Phase::DualWrite)]).await;
    let mut c = proxy.raw().await;
    c.send(b"HELLO 3\r\nSUBSCRIBE ch\r\n").await;
    c.read_until("ch\r\n:1\r\n").await;
    // A long pipeline while another client publishes into it.
    let publisher = tokio::spawn({
        let addr = proxy.addr;
        async move {
            let mut p = support::RawClient::connect(addr).await;
            for i in 0..50 {
                p.send(format!("PUBLISH ch p{i}\r\n").as_bytes()).await;
                p.read_n(4).await;
            }
        }
    });
    let mut pipeline = Vec::new();
    for i in 0..300 {
        pipeline.extend_from_slice(format!("SET k{i} v{i}\r\nGET k{i}\r\n").as_bytes());
    }
    c.send(&pipeline).await;
    publisher.await.unwrap();
    let got = c.read_until("$4\r\nv299\r\n").await;
    let got = got + &text(&c.read_for(Duration::from_millis(200)).await);
    // Remove the pushes: what is left is exactly the replies, in order.
    let mut replies = got.clone();
    for i in 0..50 {
        let push = format!(
            ">3\r\n$7\r\nmessage\r\n$2\r\nch\r\n${}\r\np{i}\r\n",
            format!("p{i}").len()
        );
        assert_eq!(replies.matches(&push).count(), 1, "push {i} once: {got}");
        replies = replies.replacen(&push, "", 1);
    }
    let want: String = (0..300)
        .map(|i| format!("+OK\r\n${}\r\nv{i}\r\n", format!("v{i}").len()))
        .collect();
    assert_eq!(replies, want);
}

#[tokio::test]
async fn losing_the_cache_that_holds_subscriptions_closes_the_subscriber() {
    let (mut old, new) = support::start_pair();
    let proxy = TestProxy::start(&old, &new, &[("default", None, Phase::DualWrite)]).await;
    let mut sub = proxy.raw().await;
    sub.send(b"SUBSCRIBE ch\r\n").await;
    sub.read_until("ch\r\n:1\r\n").await;
    // Silently losing the subscription would be worse than a closed
    // connection: client libraries reconnect and resubscribe.
    old.kill();
    let (_, closed) = tokio::time::timeout(Duration::from_secs(5), sub.read_to_close())
        .await
        .expect("the subscriber was closed promptly");
    assert!(closed);
}

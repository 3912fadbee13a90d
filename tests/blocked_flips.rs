//! Blocking commands across a flip (issue 16 case 2): a consumer blocked
//! where its route no longer reads is moved, and until it has been, the
//! route's commands wait, so a push under the new table cannot feed it on
//! the cache it is leaving.

mod support;

use std::time::Duration;

use cutover::routing::Phase;
use redis::AsyncCommands;
use support::{resp, wait_for, RawClient, RedisServer, StallingRelay, TestProxy};

/// Flips route `session` to `phase` through the admin API (done when it
/// returns).
async fn flip(proxy: &TestProxy, phase: &str) {
    let body = format!(r#"{{"phase": "{phase}"}}"#);
    let (code, body) = proxy
        .admin("PUT", "/routes/session/phase", Some(&body))
        .await;
    assert_eq!(code, 200, "{body}");
}

/// Neither cache kept an element of the job queue.
async fn assert_no_jobs_left(old: &RedisServer, new: &RedisServer) {
    for s in [old, new] {
        let n: i64 = s.conn().await.llen("session:jobs").await.unwrap();
        assert_eq!(n, 0, "{} kept elements", s.addr());
    }
}

/// Case 2: job-queue workers blocked across a flip. Consumers blocked
/// before the flip are moved to the cache the route now reads from, so
/// with more consumers blocked after it and a producer pushing through
/// cutover, each element reaches exactly one consumer and both caches end
/// empty: both ways.
#[tokio::test]
async fn consumers_blocked_across_a_flip_get_each_element_once() {
    use cutover::routing::Side;
    for (before, after) in [
        (Phase::DualWrite, Phase::ReadNew),
        (Phase::ReadNew, Phase::DualWrite),
    ] {
        let (old, new) = support::start_pair();
        let config = |phase: Phase| {
            support::config_text(
                &old.addr(),
                &new.addr(),
                &[
                    ("session", Some(&["session:*"]), phase),
                    ("default", None, Phase::OldOnly),
                ],
                "",
            )
        };
        let proxy = TestProxy::start_text(&config(before)).await;
        let on = |side: Side| match side {
            Side::Old => &old,
            Side::New => &new,
        };
        let consumer = |mut c: RawClient| {
            tokio::spawn(async move {
                c.send(&resp(&["BLPOP", "session:jobs", "0"])).await;
                String::from_utf8(c.read_replies(1).await).unwrap()
            })
        };
        let mut consumers = Vec::new();
        for _ in 0..3 {
            consumers.push(consumer(proxy.raw().await));
        }
        let first = on(before.authoritative());
        wait_for("3 blocked before the flip", async || {
            support::blocked_clients(first) == 3
        })
        .await;
        proxy.rewrite_config(&config(after));
        proxy.wait_phase("session", after).await;
        for _ in 0..2 {
            consumers.push(consumer(proxy.raw().await));
        }
        let now = on(after.authoritative());
        wait_for("all 5 blocked where the route reads now", async || {
            support::blocked_clients(now) == 5 && support::blocked_clients(first) == 0
        })
        .await;
        let mut p = proxy.conn().await;
        let jobs: Vec<String> = (1..=5).map(|i| format!("e{i}")).collect();
        let _: i64 = p.rpush("session:jobs", &jobs).await.unwrap();
        let mut got = Vec::new();
        for c in consumers {
            let reply = tokio::time::timeout(Duration::from_secs(10), c)
                .await
                .expect("every consumer is served")
                .unwrap();
            let element = reply.rsplit("\r\n").nth(1).unwrap().to_string();
            got.push(element);
        }
        got.sort();
        assert_eq!(got, jobs, "{before} -> {after}: each element exactly once");
        proxy.wait_mirrors_settled().await;
        assert_no_jobs_left(&old, &new).await;
    }
}

/// The race the move alone leaves open: a consumer blocked on old in
/// `dual-write`; the flip to `read-new` reaches it only once its unblock
/// has gone over a new connection to old (slowed here to 300 ms by a relay
/// that delays new connections only). Meanwhile a second consumer blocks
/// on new and a producer pushes through cutover. Had the push gone ahead,
/// its copy mirrored to old would feed the first consumer while the second
/// took the same element from new; the push waits for the route to settle
/// instead, and each element reaches exactly one consumer.
#[tokio::test]
async fn a_push_right_after_a_flip_waits_for_blocked_consumers_to_move() {
    let (old, new) = support::start_pair();
    let relay = StallingRelay::start(old.addr()).await;
    let routes = [
        ("session", Some(&["session:*"][..]), Phase::DualWrite),
        ("default", None, Phase::OldOnly),
    ];
    let text = support::config_text(&relay.addr.to_string(), &new.addr(), &routes, "");
    let proxy = TestProxy::start_text(&text).await;
    let consumer = |mut c: RawClient| {
        tokio::spawn(async move {
            c.send(&resp(&["BLPOP", "session:jobs", "0"])).await;
            let reply = String::from_utf8(c.read_replies(1).await).unwrap();
            reply.rsplit("\r\n").nth(1).unwrap().to_string()
        })
    };
    let first = consumer(proxy.raw().await);
    wait_for("the first consumer blocked on old", async || {
        support::blocked_clients(&old) == 1
    })
    .await;
    // The producer's connections are open before the relay slows new ones.
    let mut producer = proxy.conn().await;
    let _: i64 = producer.llen("session:jobs").await.unwrap();
    let second = proxy.raw().await;
    relay.accept_delay(Duration::from_millis(300));

    flip(&proxy, "read-new").await;
    let second = consumer(second);
    tokio::time::sleep(Duration::from_millis(20)).await;
    let _: i64 = producer.rpush("session:jobs", "e1").await.unwrap();
    let _: i64 = producer.rpush("session:jobs", "e2").await.unwrap();

    let mut got = Vec::new();
    for c in [first, second] {
        let element = tokio::time::timeout(Duration::from_secs(10), c)
            .await
            .expect("every consumer is served")
            .unwrap();
        got.push(element);
    }
    got.sort();
    assert_eq!(
        got,
        ["e1", "e2"],
        "each element reaches exactly one consumer"
    );
    proxy.wait_mirrors_settled().await;
    assert_no_jobs_left(&old, &new).await;
}

/// `XREAD ... BLOCK` and `XREADGROUP ... BLOCK` follow a flip like the
/// pops: a reader blocked on old in `dual-write` is blocked on new once the
/// route reads there, gets the entry added after, and a group's pending
/// entries end the same on both caches.
#[tokio::test]
async fn blocked_stream_reads_move_at_a_flip() {
    let (old, new) = support::start_pair();
    let routes = [
        ("session", Some(&["session:*"][..]), Phase::DualWrite),
        ("default", None, Phase::OldOnly),
    ];
    let text = support::config_text(&old.addr(), &new.addr(), &routes, "");
    let proxy = TestProxy::start_text(&text).await;
    let mut p = proxy.conn().await;
    let _: () = redis::cmd("XGROUP")
        .arg(&["CREATE", "session:s", "g", "$", "MKSTREAM"])
        .query_async(&mut p)
        .await
        .unwrap();
    let reader = |mut c: RawClient, args: &'static [&'static str]| {
        tokio::spawn(async move {
            c.send(&resp(args)).await;
            String::from_utf8(c.read_replies(1).await).unwrap()
        })
    };
    let xread = reader(
        proxy.raw().await,
        &["XREAD", "BLOCK", "0", "STREAMS", "session:s", "$"],
    );
    let group = reader(
        proxy.raw().await,
        &[
            "XREADGROUP",
            "GROUP",
            "g",
            "c1",
            "BLOCK",
            "60000",
            "STREAMS",
            "session:s",
            ">",
        ],
    );
    wait_for("both readers blocked on old", async || {
        support::blocked_clients(&old) == 2
    })
    .await;
    flip(&proxy, "read-new").await;
    wait_for("both readers moved to new", async || {
        support::blocked_clients(&new) == 2 && support::blocked_clients(&old) == 0
    })
    .await;
    let id: String = redis::cmd("XADD")
        .arg(&["session:s", "*", "f", "v"])
        .query_async(&mut p)
        .await
        .unwrap();
    for r in [xread, group] {
        let reply = tokio::time::timeout(Duration::from_secs(10), r)
            .await
            .expect("the reader is served")
            .unwrap();
        assert!(
            reply.contains(&id) && reply.contains("\r\nv\r\n"),
            "{reply}"
        );
    }
    // The reader's effect on old (an XCLAIM of what it got) may reach old
    // before the producer's XADD does; it is then checked and the stream
    // copied, so both caches converge to the same pending entry.
    proxy.wait_mirrors_settled().await;
    let pending = |s: &support::RedisServer| -> (i64, Option<String>) {
        redis::cmd("XPENDING")
            .arg(&["session:s", "g"])
            .query::<(i64, Option<String>, Option<String>, redis::Value)>(&mut s.sync())
            .map(|p| (p.0, p.1))
            .unwrap()
    };
    let want = (1, Some(id.clone()));
    wait_for("the entry pending for c1 on both caches", async || {
        pending(&old) == want && pending(&new) == want
    })
    .await;
}

/// Case 10: subscribers made before the migration are on old (through
/// `dual-write` and `read-new`, both caches get every publish); when the
/// route goes `new-only` they follow it to new, over connections to new
/// their sessions open only then (slowed to 300 ms here by a relay). A
/// message published the moment the flip returns waits until they have
/// (the route settles), so every subscriber receives it, once.
#[tokio::test]
async fn a_publish_right_after_new_only_reaches_every_moved_subscriber() {
    const SUBSCRIBERS: usize = 5;
    let (old, new) = support::start_pair();
    let relay = StallingRelay::start(new.addr()).await;
    let routes = [
        ("session", Some(&["session:*"][..]), Phase::OldOnly),
        ("default", None, Phase::OldOnly),
    ];
    let text = support::config_text(&old.addr(), &relay.addr.to_string(), &routes, "");
    let proxy = TestProxy::start_text(&text).await;
    let mut subs = Vec::new();
    for _ in 0..SUBSCRIBERS {
        let mut s = proxy.raw().await;
        s.send(&resp(&["SUBSCRIBE", "session:ch"])).await;
        s.read_replies(1).await;
        subs.push(s);
    }
    flip(&proxy, "dual-write").await;
    flip(&proxy, "read-new").await;
    // The publisher's connection to new is open before new ones slow down.
    let mut p = proxy.conn().await;
    let _: i64 = p.publish("session:ch", "warm").await.unwrap();
    relay.accept_delay(Duration::from_millis(300));
    flip(&proxy, "new-only").await;
    let n: i64 = p.publish("session:ch", "after").await.unwrap();
    assert_eq!(n, SUBSCRIBERS as i64, "every subscriber counted, on new");
    let message = |m: &str| {
        format!(
            "*3\r\n$7\r\nmessage\r\n$10\r\nsession:ch\r\n${}\r\n{m}\r\n",
            m.len()
        )
    };
    for s in &mut subs {
        let got = String::from_utf8(s.read_replies(2).await).unwrap();
        assert_eq!(got, message("warm") + &message("after"));
        s.send(&resp(&["PING"])).await;
        let pong = String::from_utf8(s.read_replies(1).await).unwrap();
        assert!(pong.contains("pong"), "nothing else came: {pong}");
    }
}

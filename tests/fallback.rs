//! Read fallback on read-new: what new misses is answered from old, in
//! order, and new is filled from old with the remaining TTL, never over a
//! newer write.

mod support;

use cutover::routing::Phase;
use support::{RedisServer, TestProxy};

fn pttl(server: &RedisServer, key: &str) -> i64 {
    redis::cmd("PTTL")
        .arg(key)
        .query(&mut server.sync())
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn misses_on_new_are_answered_from_old_in_order_and_new_is_filled() {
    let (old, new) = support::start_pair();
    for i in 0..5 {
        old.run(&["SET", &format!("s{i}"), &format!("old{i}"), "EX", "100"]);
    }
    old.run(&["HSET", "h", "a", "1", "b", "2"]);
    old.run(&["RPUSH", "l", "x", "y"]);
    old.run(&["SET", "gone", "old"]);
    let text = support::Config::new(&old.addr(), &new.addr())
        .route_toml("default", None, Phase::ReadNew, "read_fallback = true")
        .text();
    let proxy = TestProxy::start_text(&text).await;
    let mut c = proxy.conn().await;

    // A pipeline mixing misses on new, hits on new and plain writes: every
    // reply in its place.
    type Replies = (
        String,
        String,
        String,
        String,
        Option<String>,
        std::collections::BTreeMap<String, String>,
        Vec<String>,
        i64,
        Option<String>,
    );
    let (a, set, x, b, none, h, l, del, gone): Replies = redis::pipe()
        .cmd("GET")
        .arg("s1")
        .cmd("SET")
        .arg("x")
        .arg("new")
        .cmd("GET")
        .arg("x")
        .cmd("GET")
        .arg("s2")
        .cmd("GET")
        .arg("nowhere")
        .cmd("HGETALL")
        .arg("h")
        .cmd("LRANGE")
        .arg("l")
        .arg(0)
        .arg(-1)
        // Deleted through the proxy, then read: never resurrected from old.
        .cmd("DEL")
        .arg("gone")
        .cmd("GET")
        .arg("gone")
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(
        (a.as_str(), set.as_str(), x.as_str()),
        ("old1", "OK", "new")
    );
    assert_eq!(b, "old2");
    assert_eq!(none, None);
    assert_eq!(h.get("b").map(String::as_str), Some("2"));
    assert_eq!(l, ["x", "y"]);
    assert_eq!(
        (del, gone),
        (0, None),
        "DEL answered by new (it had no copy)"
    );

    proxy.wait_mirrors_settled().await;
    assert_eq!(proxy.stat("default", "fallbacks"), 4);
    // New now holds what it missed, with old's remaining TTL.
    let v: String = redis::cmd("GET").arg("s1").query(&mut new.sync()).unwrap();
    assert_eq!(v, "old1");
    assert!(
        // Carried over (not persistent, not reset), however slow the copy.
        (90_000..=100_000).contains(&pttl(&new, "s1")),
        "{}",
        pttl(&new, "s1")
    );
    assert_eq!(pttl(&new, "h"), -1);
    let missing: i64 = redis::cmd("EXISTS")
        .arg("gone")
        .arg("nowhere")
        .query(&mut new.sync())
        .unwrap();
    assert_eq!(missing, 0);
    let on_old: i64 = redis::cmd("EXISTS")
        .arg("gone")
        .query(&mut old.sync())
        .unwrap();
    assert_eq!(on_old, 0, "the DEL was mirrored to old");

    // Filled: the next read is a hit on new.
    let v: String = redis::cmd("GET")
        .arg("s1")
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(v, "old1");
    assert_eq!(proxy.stat("default", "fallbacks"), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_option_new_answers_alone() {
    let (old, new) = support::start_pair();
    old.run(&["SET", "k", "old"]);
    let proxy = TestProxy::start(&old, &new, &[("default", None, Phase::ReadNew)]).await;
    let mut c = proxy.conn().await;
    let v: Option<String> = redis::cmd("GET")
        .arg("k")
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(v, None);
    assert_eq!(proxy.stat("default", "fallbacks"), 0);
}

/// A key whose mirrored DEL to old was lost (journalled, its copy from new
/// still pending: old is paused for writes, as a managed cache is during
/// a failover) must not come back through a read fallback: new's miss is
/// the answer, and the key is not copied back to new.
#[tokio::test]
async fn no_fallback_for_a_key_with_a_copy_pending() {
    let (old, new) = support::start_pair();
    let _: () = redis::cmd("SET")
        .arg("k")
        .arg("deleted")
        .query(&mut old.sync())
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let journal = support::journal_of_k(dir.path(), "new");
    // The copy (a DEL on old) waits while old takes no writes.
    let _: () = redis::cmd("CLIENT")
        .arg("PAUSE")
        .arg(4000)
        .arg("WRITE")
        .query(&mut old.sync())
        .unwrap();
    let text = support::Config::new(&old.addr(), &new.addr())
        .route_toml("default", None, Phase::ReadNew, "read_fallback = true")
        .with(&journal)
        .text();
    let proxy = TestProxy::start_text(&text).await;
    let mut c = proxy.raw().await;
    c.send(b"GET k\r\n").await;
    assert_eq!(c.read_replies(1).await, b"$-1\r\n", "old's copy came back");
    assert_eq!(proxy.stat("default", "fallbacks"), 0);
    // Once old takes writes again the copy deletes it there too.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let on_old: Option<String> = redis::cmd("GET").arg("k").query(&mut old.sync()).unwrap();
        let on_new: Option<String> = redis::cmd("GET").arg("k").query(&mut new.sync()).unwrap();
        if on_old.is_none() {
            assert_eq!(on_new, None);
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the DEL never reached old"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

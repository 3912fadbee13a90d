//! Write-reply comparison and repair against real redis-servers: keys that
//! predate the migration (on old only) are copied to new with their TTL
//! when a mirrored write's replies disagree; agreeing writes copy nothing.

mod support;

use std::time::{Duration, Instant};

use cutover::routing::Phase;
use support::{assert_same_keyspace, TestProxy};

async fn wait_for(proxy: &TestProxy, route: &str, counter: &str, want: u64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while proxy.stat(route, counter) < want {
        assert!(
            Instant::now() < deadline,
            "{counter} stayed at {} (wanted {want})",
            proxy.stat(route, counter)
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn keys_only_old_had_are_copied_to_new_with_their_ttl() {
    let (old, new) = support::start_pair();
    // Written before the proxy was inserted: on old only, with TTLs.
    old.run(&["SET", "counter", "5", "EX", "100"]);
    old.run(&["RPUSH", "list", "a", "b"]);
    old.run(&["EXPIRE", "list", "200"]);
    old.run(&["HSET", "hash", "f", "1"]);
    old.run(&["EXPIRE", "hash", "300"]);
    old.run(&["SET", "plain", "x"]);
    old.run(&["SET", "timed", "t"]);
    let proxy = TestProxy::start(&old, &new, &[("default", None, Phase::DualWrite)]).await;
    let mut c = proxy.conn().await;
    for args in [
        &["INCR", "counter"][..],
        &["LPUSH", "list", "z"],
        // EXPIRE answers 1 on old, 0 on new.
        &["EXPIRE", "hash", "300"],
        &["APPEND", "plain", "y"],
        &["PEXPIRE", "timed", "50000"],
    ] {
        let mut cmd = redis::cmd(args[0]);
        for a in &args[1..] {
            cmd.arg(*a);
        }
        let _: i64 = cmd.query_async(&mut c).await.unwrap();
    }
    wait_for(&proxy, "default", "repaired", 5).await;
    assert_eq!(proxy.stat("default", "compared"), 5);
    assert_eq!(proxy.stat("default", "mismatches"), 5);
    assert_eq!(proxy.stat("default", "repair_failed"), 0);
    // Value and remaining TTL (within 1 s) as on old.
    assert_same_keyspace(&old, &new, 1000);
    let pttl: i64 = redis::cmd("PTTL")
        .arg("hash")
        .query(&mut new.sync())
        .unwrap();
    // The remaining TTL, carried over (however slow a loaded machine is).
    assert!((290_000..=300_000).contains(&pttl), "{pttl}");
    let ttl: i64 = redis::cmd("TTL")
        .arg("plain")
        .query(&mut new.sync())
        .unwrap();
    assert_eq!(ttl, -1, "no TTL stays no TTL");
    let pttl: i64 = redis::cmd("PTTL")
        .arg("timed")
        .query(&mut new.sync())
        .unwrap();
    assert!((49_000..=50_000).contains(&pttl), "{pttl}");
}

#[tokio::test]
async fn agreeing_writes_copy_nothing_and_a_deleted_key_is_deleted() {
    let (old, new) = support::start_pair();
    let proxy = TestProxy::start(&old, &new, &[("default", None, Phase::DualWrite)]).await;
    let mut c = proxy.conn().await;
    for i in 0..50 {
        let _: () = redis::cmd("SET")
            .arg(format!("k{i}"))
            .arg(i)
            .query_async(&mut c)
            .await
            .unwrap();
        let _: i64 = redis::cmd("INCR")
            .arg(format!("n{i}"))
            .query_async(&mut c)
            .await
            .unwrap();
    }
    proxy.wait_mirrors_settled().await;
    wait_for(&proxy, "default", "compared", 100).await;
    assert_eq!(proxy.stat("default", "mismatches"), 0);
    assert_eq!(proxy.stat("default", "repaired"), 0);

    // A key only new has (left over) is removed when a DEL disagrees.
    new.run(&["SET", "stale", "1"]);
    let _: i64 = redis::cmd("DEL")
        .arg("stale")
        .query_async(&mut c)
        .await
        .unwrap();
    // DEL answered 0 on old and 1 on new: copied as "absent".
    let _: i64 = redis::cmd("EXPIRE")
        .arg("k1")
        .arg(100)
        .query_async(&mut c)
        .await
        .unwrap();
    proxy.wait_mirrors_settled().await;
    assert_same_keyspace(&old, &new, 1000);
}

#[tokio::test]
async fn in_place_writes_to_a_key_new_lacks_copy_it_although_replies_agree() {
    let (old, new) = support::start_pair();
    old.run(&["HSET", "hash", "a", "1", "b", "2"]);
    old.run(&["EXPIRE", "hash", "300"]);
    old.run(&["SADD", "set", "x", "y"]);
    old.run(&["EXPIRE", "set", "200"]);
    old.run(&["ZADD", "zset", "1", "m"]);
    let proxy = TestProxy::start(&old, &new, &[("default", None, Phase::DualWrite)]).await;
    let mut c = proxy.conn().await;
    // Each answers 1 on both caches: a new field or member everywhere.
    for args in [
        &["HSET", "hash", "c", "3"][..],
        &["SADD", "set", "z"],
        &["ZADD", "zset", "2", "n"],
    ] {
        let mut cmd = redis::cmd(args[0]);
        for a in &args[1..] {
            cmd.arg(*a);
        }
        let n: i64 = cmd.query_async(&mut c).await.unwrap();
        assert_eq!(n, 1);
    }
    wait_for(&proxy, "default", "repaired", 3).await;
    assert_eq!(proxy.stat("default", "mismatches"), 0);
    assert_eq!(proxy.stat("default", "mirror_missing"), 3);
    assert_same_keyspace(&old, &new, 1000);
    let pttl: i64 = redis::cmd("PTTL")
        .arg("hash")
        .query(&mut new.sync())
        .unwrap();
    // The remaining TTL, carried over (however slow a loaded machine is).
    assert!((290_000..=300_000).contains(&pttl), "{pttl}");

    // Once new has the key, further in-place writes copy nothing.
    let _: i64 = redis::cmd("HSET")
        .arg("hash")
        .arg("d")
        .arg("4")
        .query_async(&mut c)
        .await
        .unwrap();
    proxy.wait_mirrors_settled().await;
    wait_for(&proxy, "default", "compared", 4).await;
    assert_eq!(proxy.stat("default", "mirror_missing"), 3);
    assert_eq!(proxy.stat("default", "repaired"), 3);
    assert_same_keyspace(&old, &new, 1000);
}

/// A write the proxy cannot see (another fleet member's, here written to
/// both caches directly) that lands on new while a copy of its key is
/// between reading old and writing new is not erased by the copy: the
/// write is guarded by new's state before the read, finds it changed and
/// reads again. (Before the guard, new kept the copy without the write:
/// seen failing.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copy_does_not_erase_a_write_it_could_not_see() {
    let (old, new) = support::start_pair();
    let relay = support::StallingRelay::start(old.addr()).await;
    let text = support::Config::new(&relay.addr.to_string(), &new.addr())
        .route("default", None, Phase::DualWrite)
        .text();
    let proxy = TestProxy::start_text(&text).await;
    // A first repair: the copier's connections are open.
    old.run(&["SET", "warm", "1"]);
    let mut c = proxy.conn().await;
    let _: i64 = redis::cmd("INCR")
        .arg("warm")
        .query_async(&mut c)
        .await
        .unwrap();
    wait_for(&proxy, "default", "repaired", 1).await;
    // On old only: the push through the proxy disagrees and is repaired.
    old.run(&["RPUSH", "k", "a"]);
    // Old's replies (the copy's read among them) come 600 ms late.
    relay.delay(Duration::from_millis(600));
    let n: i64 = redis::cmd("RPUSH")
        .arg("k")
        .arg("b")
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(n, 2);
    // The copy has read old by now (its reply is on its way): another
    // member's push lands on both caches.
    tokio::time::sleep(Duration::from_millis(150)).await;
    old.run(&["RPUSH", "k", "c"]);
    new.run(&["RPUSH", "k", "c"]);
    relay.delay(Duration::ZERO);
    wait_for(&proxy, "default", "repaired", 2).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let list = |s: &support::RedisServer| -> Vec<String> {
        redis::cmd("LRANGE")
            .arg("k")
            .arg(0)
            .arg(-1)
            .query(&mut s.sync())
            .unwrap()
    };
    assert_eq!(list(&old), ["a", "b", "c"]);
    assert_eq!(list(&new), ["a", "b", "c"], "the copy erased the write");
    assert!(proxy.stat("default", "repair_skipped") >= 1);
}

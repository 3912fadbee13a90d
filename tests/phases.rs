//! Each phase sends reads and writes where DESIGN.md's table says.

mod support;

use cutover::routing::Phase;
use redis::AsyncCommands;
use support::{get, TestProxy};

/// Writes `k:write` through the proxy and reads `k:read`, which holds a
/// different value on each side, and reports who saw and who answered.
async fn observe(phase: Phase) -> (Option<String>, Option<String>, String) {
    let (old, new) = support::start_pair();
    let proxy = TestProxy::start(
        &old,
        &new,
        &[
            ("k", Some(&["k:*"]), phase),
            ("default", None, Phase::OldOnly),
        ],
    )
    .await;
    let (mut o, mut n) = (old.sync(), new.sync());
    let _: () = redis::cmd("SET")
        .arg("k:read")
        .arg("from-old")
        .query(&mut o)
        .unwrap();
    let _: () = redis::cmd("SET")
        .arg("k:read")
        .arg("from-new")
        .query(&mut n)
        .unwrap();

    let mut c = proxy.conn().await;
    let _: () = c.set("k:write", "v").await.unwrap();
    let read: String = c.get("k:read").await.unwrap();
    // A later read on the same connection sees the write (read-your-writes).
    let mine: String = c.get("k:write").await.unwrap();
    assert_eq!(mine, "v");
    proxy.wait_mirrors_settled().await;
    (get(&mut o, "k:write"), get(&mut n, "k:write"), read)
}

#[tokio::test]
async fn old_only_reads_and_writes_old() {
    let (on_old, on_new, read) = observe(Phase::OldOnly).await;
    assert_eq!(
        (on_old.as_deref(), on_new.as_deref(), read.as_str()),
        (Some("v"), None, "from-old")
    );
}

#[tokio::test]
async fn dual_write_reads_old_writes_both() {
    let (on_old, on_new, read) = observe(Phase::DualWrite).await;
    assert_eq!(
        (on_old.as_deref(), on_new.as_deref(), read.as_str()),
        (Some("v"), Some("v"), "from-old")
    );
}

#[tokio::test]
async fn read_new_reads_new_writes_both() {
    let (on_old, on_new, read) = observe(Phase::ReadNew).await;
    assert_eq!(
        (on_old.as_deref(), on_new.as_deref(), read.as_str()),
        (Some("v"), Some("v"), "from-new")
    );
}

#[tokio::test]
async fn new_only_reads_and_writes_new() {
    let (on_old, on_new, read) = observe(Phase::NewOnly).await;
    assert_eq!(
        (on_old.as_deref(), on_new.as_deref(), read.as_str()),
        (None, Some("v"), "from-new")
    );
}

#[tokio::test]
async fn mirror_replies_are_counted_not_returned() {
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
    // The key exists only on old, so INCR differs: the client must see old's reply.
    let _: () = redis::cmd("SET")
        .arg("k:n")
        .arg("41")
        .query(&mut old.sync())
        .unwrap();
    let mut c = proxy.conn().await;
    let v: i64 = c.incr("k:n", 1).await.unwrap();
    assert_eq!(v, 42);
    // A write new refuses (wrong type there) still succeeds for the client.
    let _: () = redis::cmd("LPUSH")
        .arg("k:list")
        .arg("x")
        .query(&mut new.sync())
        .map(|_: i64| ())
        .unwrap();
    let _: () = c.set("k:list", "s").await.unwrap();
    let _: () = redis::cmd("RPUSH")
        .arg("k:list2")
        .arg("x")
        .query(&mut new.sync())
        .map(|_: i64| ())
        .unwrap();
    let _: () = redis::cmd("SET")
        .arg("k:list2")
        .arg("x")
        .query(&mut old.sync())
        .unwrap();
    let r: redis::RedisResult<i64> = c.append("k:list2", "y").await;
    assert_eq!(r.unwrap(), 2);
    proxy.wait_mirrors_settled().await;
    assert_eq!(proxy.stat("k", "mirrored"), 3);
    assert_eq!(proxy.stat("k", "mirror_ok"), 2);
    assert_eq!(
        proxy.stat("k", "mirror_errors"),
        1,
        "APPEND on new's list is WRONGTYPE there"
    );
    assert_eq!(proxy.stat("k", "writes"), 3);
}

#[tokio::test]
async fn keyless_commands_follow_the_default_route() {
    let (old, new) = support::start_pair();
    let proxy = TestProxy::start(
        &old,
        &new,
        &[
            ("k", Some(&["k:*"]), Phase::OldOnly),
            ("default", None, Phase::ReadNew),
        ],
    )
    .await;
    let _: () = redis::cmd("SET")
        .arg("only-on-new")
        .arg("1")
        .query(&mut new.sync())
        .unwrap();
    let mut c = proxy.conn().await;
    let size: i64 = redis::cmd("DBSIZE").query_async(&mut c).await.unwrap();
    assert_eq!(
        size, 1,
        "DBSIZE is answered by the default route's read side (new)"
    );
    // FLUSHDB is a keyless write: read-new mirrors it to old too.
    let _: () = redis::cmd("SET")
        .arg("x")
        .arg("1")
        .query(&mut old.sync())
        .unwrap();
    let _: () = redis::cmd("FLUSHDB").query_async(&mut c).await.unwrap();
    proxy.wait_mirrors_settled().await;
    let old_size: i64 = redis::cmd("DBSIZE").query(&mut old.sync()).unwrap();
    assert_eq!(old_size, 0);
}

#[tokio::test]
async fn cross_route_multi_key_commands_are_refused() {
    let (old, new) = support::start_pair();
    let proxy = TestProxy::start(
        &old,
        &new,
        &[
            ("a", Some(&["a:*"]), Phase::DualWrite),
            ("b", Some(&["b:*"]), Phase::DualWrite),
            ("default", None, Phase::OldOnly),
        ],
    )
    .await;
    let mut c = proxy.conn().await;
    let err = redis::cmd("MSET")
        .arg("a:1")
        .arg("x")
        .arg("other")
        .arg("y")
        .query_async::<()>(&mut c)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some("CROSSROUTE"), "{err}");
    assert!(get(&mut old.sync(), "a:1").is_none(), "nothing executed");
    // Same phase, different routes: fine.
    let _: () = redis::cmd("MSET")
        .arg("a:1")
        .arg("x")
        .arg("b:1")
        .arg("y")
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(get(&mut old.sync(), "b:1").as_deref(), Some("y"));
}

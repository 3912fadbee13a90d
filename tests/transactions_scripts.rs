//! WATCH/MULTI/EXEC and scripts through the proxy behave as on Redis.

mod support;

use cutover::routing::Phase;
use redis::AsyncCommands;
use support::{exchange, get, TestProxy};

#[tokio::test]
async fn watch_aborts_exec_when_another_client_writes() {
    let (old, new) = support::start_pair();
    let proxy = TestProxy::start(&old, &new, &[("default", None, Phase::OldOnly)]).await;
    let mut a = proxy.raw().await;
    a.send(b"SET w 1\r\nWATCH w\r\n").await;
    assert_eq!(a.read_n(10).await, b"+OK\r\n+OK\r\n");
    // Another client changes the watched key through the proxy.
    let mut b = proxy.conn().await;
    let _: () = b.set("w", "2").await.unwrap();
    a.send(b"MULTI\r\nSET w 3\r\nEXEC\r\nGET w\r\n").await;
    let got = a
        .read_n(b"+OK\r\n+QUEUED\r\n*-1\r\n$1\r\n2\r\n".len())
        .await;
    assert_eq!(
        String::from_utf8_lossy(&got),
        "+OK\r\n+QUEUED\r\n*-1\r\n$1\r\n2\r\n"
    );
    // Unchanged: EXEC runs.
    a.send(b"WATCH w\r\nMULTI\r\nSET w 4\r\nEXEC\r\nGET w\r\n")
        .await;
    let got = a
        .read_n(b"+OK\r\n+OK\r\n+QUEUED\r\n*1\r\n+OK\r\n$1\r\n4\r\n".len())
        .await;
    assert_eq!(
        String::from_utf8_lossy(&got),
        "+OK\r\n+OK\r\n+QUEUED\r\n*1\r\n+OK\r\n$1\r\n4\r\n"
    );
}

#[tokio::test]
async fn watch_follows_the_cache_that_serves_the_keys() {
    // Keys on a new-only route: WATCH and the MULTI after it go to new.
    let (old, new) = support::start_pair();
    let proxy = TestProxy::start(
        &old,
        &new,
        &[
            ("n", Some(&["n:*"]), Phase::NewOnly),
            ("default", None, Phase::OldOnly),
        ],
    )
    .await;
    let (reply, _) = exchange(proxy.addr, b"WATCH n:1\r\nMULTI\r\nINCR n:1\r\nEXEC\r\n").await;
    assert_eq!(
        String::from_utf8_lossy(&reply),
        "+OK\r\n+OK\r\n+QUEUED\r\n*1\r\n:1\r\n"
    );
    assert_eq!(get(&mut new.sync(), "n:1").as_deref(), Some("1"));
    assert_eq!(get(&mut old.sync(), "n:1"), None);
    // Watching keys served by both caches cannot work in one transaction.
    let (reply, _) = exchange(proxy.addr, b"WATCH n:1 other\r\n").await;
    assert!(
        String::from_utf8_lossy(&reply).starts_with("-CROSSROUTE"),
        "{}",
        String::from_utf8_lossy(&reply)
    );
}

#[tokio::test]
async fn scripts_are_mirrored_verbatim_in_dual_write() {
    let (old, new) = support::start_pair();
    let proxy = TestProxy::start(
        &old,
        &new,
        &[
            ("s", Some(&["s:*"]), Phase::DualWrite),
            ("default", None, Phase::OldOnly),
        ],
    )
    .await;
    let mut c = proxy.conn().await;
    let script = "redis.call('SET', KEYS[1], ARGV[1]); return redis.call('GET', KEYS[1])";
    let v: String = redis::cmd("EVAL")
        .arg(script)
        .arg(1)
        .arg("s:1")
        .arg("hello")
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(v, "hello");
    // SCRIPT LOAD goes to both, so EVALSHA works on the mirror too.
    let sha: String = redis::cmd("SCRIPT")
        .arg("LOAD")
        .arg(script)
        .query_async(&mut c)
        .await
        .unwrap();
    let v: String = redis::cmd("EVALSHA")
        .arg(&sha)
        .arg(1)
        .arg("s:2")
        .arg("world")
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(v, "world");
    proxy.wait_mirrors_settled().await;
    assert_eq!(proxy.stat("s", "mirror_errors"), 0);
    assert_eq!(get(&mut new.sync(), "s:1").as_deref(), Some("hello"));
    assert_eq!(get(&mut new.sync(), "s:2").as_deref(), Some("world"));
    // A read-only script is a read: it is not mirrored.
    let before = proxy.stat("s", "mirrored");
    let v: String = redis::cmd("EVAL_RO")
        .arg("return redis.call('GET', KEYS[1])")
        .arg(1)
        .arg("s:1")
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(v, "hello");
    assert_eq!(proxy.stat("s", "mirrored"), before);
}

#[tokio::test]
async fn evalsha_reaches_the_mirror_as_eval_or_is_repaired() {
    let (old, new) = support::start_pair();
    let proxy = TestProxy::start(
        &old,
        &new,
        &[
            ("s", Some(&["s:*"]), Phase::DualWrite),
            ("default", None, Phase::OldOnly),
        ],
    )
    .await;
    let mut c = proxy.conn().await;
    // Loaded on old before the migration: the proxy never saw its body.
    let early = "return redis.call('SET', KEYS[1], 'early')";
    let early_sha: String = redis::cmd("SCRIPT")
        .arg("LOAD")
        .arg(early)
        .query(&mut old.sync())
        .unwrap();
    let _: () = redis::cmd("EVALSHA")
        .arg(&early_sha)
        .arg(1)
        .arg("s:e")
        .query_async(&mut c)
        .await
        .unwrap();
    proxy.wait_mirrors_settled().await;
    assert_eq!(proxy.stat("s", "script_unknown"), 1);
    // Not applied on new, so the two replies differ: the key is copied.
    assert_eq!(proxy.stat("s", "mismatches"), 1);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while get(&mut new.sync(), "s:e").is_none() {
        assert!(std::time::Instant::now() < deadline, "s:e never copied");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(get(&mut new.sync(), "s:e").as_deref(), Some("early"));

    // Loaded through the proxy while the default route is old-only: it goes
    // to new too (route s uses new). New then loses it (a restart), but the
    // proxy saw the body.
    let script = "return redis.call('INCR', KEYS[1])";
    let sha: String = redis::cmd("SCRIPT")
        .arg("LOAD")
        .arg(script)
        .query_async(&mut c)
        .await
        .unwrap();
    proxy.wait_mirrors_settled().await;
    let exists = |s: &support::RedisServer| -> Vec<i64> {
        redis::cmd("SCRIPT")
            .arg("EXISTS")
            .arg(&sha)
            .query(&mut s.sync())
            .unwrap()
    };
    assert_eq!(exists(&new), [1], "SCRIPT LOAD reaches every cache in use");
    let _: () = redis::cmd("SCRIPT")
        .arg("FLUSH")
        .query(&mut new.sync())
        .unwrap();
    for _ in 0..3 {
        let _: i64 = redis::cmd("EVALSHA")
            .arg(&sha)
            .arg(1)
            .arg("s:n")
            .query_async(&mut c)
            .await
            .unwrap();
    }
    proxy.wait_mirrors_settled().await;
    // Each went to new as EVAL with the body: none met NOSCRIPT there.
    assert_eq!(proxy.stat("s", "script_retries"), 3);
    assert_eq!(proxy.stat("s", "script_unknown"), 1);
    assert_eq!(get(&mut new.sync(), "s:n").as_deref(), Some("3"));
    assert_eq!(get(&mut old.sync(), "s:n").as_deref(), Some("3"));
}

#[tokio::test]
async fn functions_reach_every_cache_in_use_and_fcall_is_mirrored() {
    let (old, new) = support::start_pair();
    let routes = |s_phase| {
        vec![
            ("s", Some(&["s:*"][..]), s_phase),
            ("default", None, Phase::OldOnly),
        ]
    };
    let proxy = TestProxy::start(&old, &new, &routes(Phase::OldOnly)).await;
    let mut c = proxy.conn().await;
    let lib = |name: &str| {
        format!(
            "#!lua name={name}\nredis.register_function('{name}_bump', function(keys, args) return redis.call('INCR', keys[1]) end)\nredis.register_function{{function_name='{name}_peek', callback=function(keys, args) return redis.call('GET', keys[1]) end, flags={{'no-writes'}}}}"
        )
    };
    let libraries = |s: &support::RedisServer| -> usize {
        let v: Vec<redis::Value> = redis::cmd("FUNCTION")
            .arg("LIST")
            .query(&mut s.sync())
            .unwrap();
        v.len()
    };
    // No route uses new: the library goes to old only.
    let _: String = redis::cmd("FUNCTION")
        .arg("LOAD")
        .arg(lib("first"))
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!((libraries(&old), libraries(&new)), (1, 0));

    proxy.rewrite_config(&support::config_text(
        &old.addr(),
        &new.addr(),
        &routes(Phase::DualWrite),
        "",
    ));
    proxy.wait_phase("s", Phase::DualWrite).await;
    let mut c = proxy.conn().await;
    let _: String = redis::cmd("FUNCTION")
        .arg("LOAD")
        .arg(lib("second"))
        .query_async(&mut c)
        .await
        .unwrap();
    proxy.wait_mirrors_settled().await;
    assert_eq!((libraries(&old), libraries(&new)), (2, 1));
    for _ in 0..2 {
        let _: i64 = redis::cmd("FCALL")
            .arg("second_bump")
            .arg(1)
            .arg("s:f")
            .query_async(&mut c)
            .await
            .unwrap();
    }
    let peek: String = redis::cmd("FCALL_RO")
        .arg("second_peek")
        .arg(1)
        .arg("s:f")
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(peek, "2");
    proxy.wait_mirrors_settled().await;
    assert_eq!(get(&mut old.sync(), "s:f").as_deref(), Some("2"));
    assert_eq!(get(&mut new.sync(), "s:f").as_deref(), Some("2"));
    assert_eq!(proxy.stat("s", "mirror_errors"), 0);

    let _: () = redis::cmd("FUNCTION")
        .arg("DELETE")
        .arg("second")
        .query_async(&mut c)
        .await
        .unwrap();
    proxy.wait_mirrors_settled().await;
    assert_eq!((libraries(&old), libraries(&new)), (1, 0));
    let _: () = redis::cmd("FUNCTION")
        .arg("FLUSH")
        .query_async(&mut c)
        .await
        .unwrap();
    proxy.wait_mirrors_settled().await;
    assert_eq!((libraries(&old), libraries(&new)), (0, 0));
    assert_eq!(proxy.stat("default", "mirror_errors"), 0);
}

//! Writes whose outcome only the authoritative side knows (blocking pops,
//! SPOP, XADD `*`, consumer groups) reach the mirror as their effect: the
//! caches stay identical and the mirror never blocks.

mod support;

use std::time::Duration;

use cutover::routing::Phase;
use redis::AsyncCommands;
use support::{assert_same_keyspace, RedisServer, TestProxy};

async fn proxy(old: &RedisServer, new: &RedisServer, phase: Phase) -> TestProxy {
    TestProxy::start(
        old,
        new,
        &[
            ("k", Some(&["k:*"]), phase),
            ("default", None, Phase::OldOnly),
        ],
    )
    .await
}

/// Runs `block` on one client through the proxy while another client feeds
/// it with `feed` after a moment, returning what the blocked client got.
async fn blocked_then_fed(
    proxy: &TestProxy,
    block: redis::Cmd,
    feed: redis::Pipeline,
) -> redis::Value {
    let mut a = proxy.conn().await;
    let waiter =
        tokio::spawn(async move { block.query_async::<redis::Value>(&mut a).await.unwrap() });
    tokio::time::sleep(Duration::from_millis(150)).await;
    let mut b = proxy.conn().await;
    let _: redis::Value = feed.query_async(&mut b).await.unwrap();
    tokio::time::timeout(Duration::from_secs(5), waiter)
        .await
        .expect("the blocked client was served")
        .unwrap()
}

fn bulk(s: &str) -> redis::Value {
    redis::Value::BulkString(s.as_bytes().to_vec())
}

#[tokio::test]
async fn blocking_pops_reach_the_mirror_as_their_effect() {
    for phase in [Phase::DualWrite, Phase::ReadNew] {
        let (old, new) = support::start_pair();
        let proxy = proxy(&old, &new, phase).await;
        let mut feed = redis::pipe();
        feed.rpush("k:l", &["a", "b", "c"]);
        let got =
            blocked_then_fed(&proxy, redis::cmd("BLPOP").arg("k:l").arg(0).clone(), feed).await;
        assert_eq!(
            got,
            redis::Value::Array(vec![bulk("k:l"), bulk("a")]),
            "{phase}"
        );

        let mut feed = redis::pipe();
        feed.rpush("k:src", &["x", "y"]);
        let mut blmove = redis::cmd("BLMOVE");
        blmove
            .arg("k:src")
            .arg("k:dst")
            .arg("RIGHT")
            .arg("LEFT")
            .arg(0);
        assert_eq!(blocked_then_fed(&proxy, blmove, feed).await, bulk("y"));

        let mut c = proxy.conn().await;
        let v: String = redis::cmd("BRPOPLPUSH")
            .arg("k:src")
            .arg("k:dst")
            .arg(0)
            .query_async(&mut c)
            .await
            .unwrap();
        assert_eq!(v, "x");

        let mut feed = redis::pipe();
        feed.rpush("k:m", &["1", "2", "3"]);
        let mut blmpop = redis::cmd("BLMPOP");
        blmpop
            .arg(0)
            .arg(2)
            .arg("k:none")
            .arg("k:m")
            .arg("RIGHT")
            .arg("COUNT")
            .arg(2);
        let got = blocked_then_fed(&proxy, blmpop, feed).await;
        assert_eq!(
            got,
            redis::Value::Array(vec![
                bulk("k:m"),
                redis::Value::Array(vec![bulk("3"), bulk("2")])
            ])
        );

        let mut feed = redis::pipe();
        feed.zadd_multiple("k:z", &[(1, "one"), (2, "two"), (3, "three")]);
        let got = blocked_then_fed(
            &proxy,
            redis::cmd("BZPOPMIN").arg("k:z").arg(0).clone(),
            feed,
        )
        .await;
        assert_eq!(
            got,
            redis::Value::Array(vec![bulk("k:z"), bulk("one"), bulk("1")])
        );
        let mut bzmpop = redis::cmd("BZMPOP");
        bzmpop
            .arg(0)
            .arg(1)
            .arg("k:z")
            .arg("MAX")
            .arg("COUNT")
            .arg(1);
        let _: redis::Value = bzmpop.query_async(&mut c).await.unwrap();
        let _: redis::Value = redis::cmd("BZPOPMAX")
            .arg("k:z")
            .arg(0)
            .query_async(&mut c)
            .await
            .unwrap();

        // A timed-out block mirrors nothing.
        let before = proxy.stat("k", "mirrored");
        let v: redis::Value = redis::cmd("BLPOP")
            .arg("k:empty")
            .arg(0.05)
            .query_async(&mut c)
            .await
            .unwrap();
        assert_eq!(v, redis::Value::Nil);
        assert_eq!(proxy.stat("k", "mirrored"), before);

        proxy.wait_mirrors_settled().await;
        assert_eq!(proxy.stat("k", "mirror_errors"), 0, "{phase}");
        assert_same_keyspace(&old, &new, 0);
        let mut old_c = old.sync();
        let l: Vec<String> = redis::cmd("LRANGE")
            .arg("k:l")
            .arg(0)
            .arg(-1)
            .query(&mut old_c)
            .unwrap();
        assert_eq!(l, ["b", "c"], "{phase}");
    }
}

#[tokio::test]
async fn a_blocked_client_does_not_hold_up_anyone_elses_mirror() {
    let (old, new) = support::start_pair();
    let proxy = proxy(&old, &new, Phase::DualWrite).await;
    let mut a = proxy.conn().await;
    let waiter = tokio::spawn(async move {
        redis::cmd("BLPOP")
            .arg("k:q")
            .arg(0)
            .query_async::<redis::Value>(&mut a)
            .await
            .unwrap()
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    // While a blocks on old, another client's mirrored writes land on new
    // at once, and new has no blocked client at all.
    let mut b = proxy.conn().await;
    let _: () = b.set("k:other", "1").await.unwrap();
    proxy.wait_mirrors_settled().await;
    assert_eq!(
        support::get(&mut new.sync(), "k:other").as_deref(),
        Some("1")
    );
    let info: String = redis::cmd("INFO")
        .arg("clients")
        .query(&mut new.sync())
        .unwrap();
    assert!(info.contains("blocked_clients:0"), "{info}");
    let info: String = redis::cmd("INFO")
        .arg("clients")
        .query(&mut old.sync())
        .unwrap();
    assert!(info.contains("blocked_clients:1"), "{info}");
    let _: () = b.rpush("k:q", "v").await.unwrap();
    let got = tokio::time::timeout(Duration::from_secs(5), waiter)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got, redis::Value::Array(vec![bulk("k:q"), bulk("v")]));
    proxy.wait_mirrors_settled().await;
    assert_same_keyspace(&old, &new, 0);
}

#[tokio::test]
async fn random_writes_reach_the_mirror_as_their_effect() {
    let (old, new) = support::start_pair();
    let proxy = proxy(&old, &new, Phase::DualWrite).await;
    let mut c = proxy.conn().await;
    let members: Vec<String> = (0..50).map(|i| format!("m{i}")).collect();
    let _: () = c.sadd("k:s", &members).await.unwrap();
    for _ in 0..5 {
        let _: Option<String> = redis::cmd("SPOP")
            .arg("k:s")
            .query_async(&mut c)
            .await
            .unwrap();
        let _: Vec<String> = redis::cmd("SPOP")
            .arg("k:s")
            .arg(3)
            .query_async(&mut c)
            .await
            .unwrap();
    }
    // Streams: assigned IDs, partial IDs, trimming, consumer groups.
    for i in 0..5 {
        let _: String = redis::cmd("XADD")
            .arg("k:x")
            .arg("*")
            .arg("n")
            .arg(i)
            .query_async(&mut c)
            .await
            .unwrap();
    }
    let _: String = redis::cmd("XADD")
        .arg("k:x")
        .arg("MAXLEN")
        .arg("=")
        .arg(4)
        .arg("99999999999999-*")
        .arg("n")
        .arg("last")
        .query_async(&mut c)
        .await
        .unwrap();
    let _: () = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg("k:x")
        .arg("g")
        .arg("0")
        .query_async(&mut c)
        .await
        .unwrap();
    let _: redis::Value = redis::cmd("XREADGROUP")
        .arg("GROUP")
        .arg("g")
        .arg("alice")
        .arg("COUNT")
        .arg(2)
        .arg("BLOCK")
        .arg(100)
        .arg("STREAMS")
        .arg("k:x")
        .arg(">")
        .query_async(&mut c)
        .await
        .unwrap();
    let _: redis::Value = redis::cmd("XAUTOCLAIM")
        .arg("k:x")
        .arg("g")
        .arg("bob")
        .arg(0)
        .arg("0")
        .query_async(&mut c)
        .await
        .unwrap();
    proxy.wait_mirrors_settled().await;
    assert_eq!(proxy.stat("k", "mirror_errors"), 0);
    assert_same_keyspace(&old, &new, 0);
    // The consumer group state followed: same pending entries and owners.
    let pending = |s: &RedisServer| -> redis::Value {
        redis::cmd("XPENDING")
            .arg("k:x")
            .arg("g")
            .arg("-")
            .arg("+")
            .arg(10)
            .query(&mut s.sync())
            .unwrap()
    };
    let strip_idle = |v: redis::Value| match v {
        redis::Value::Array(rows) => rows
            .into_iter()
            .map(|r| match r {
                redis::Value::Array(mut f) => {
                    f.remove(2);
                    redis::Value::Array(f)
                }
                other => other,
            })
            .collect::<Vec<_>>(),
        other => panic!("{other:?}"),
    };
    let p_old = strip_idle(pending(&old));
    assert_eq!(p_old.len(), 2);
    assert_eq!(p_old, strip_idle(pending(&new)));
    let groups = |s: &RedisServer| -> redis::Value {
        redis::cmd("XINFO")
            .arg("GROUPS")
            .arg("k:x")
            .query(&mut s.sync())
            .unwrap()
    };
    let last_id = |v: redis::Value| {
        format!("{v:?}")
            .split("last-delivered-id")
            .nth(1)
            .map(|s| s[..60.min(s.len())].to_string())
    };
    assert_eq!(last_id(groups(&old)), last_id(groups(&new)));
}

/// The check behind the model run's promise: a pop the mirror cannot repeat
/// (its element was never there: another client's push had not reached it,
/// or the list predates the migration) answers differently on the mirror;
/// the mismatch is counted and the key copied from the answering side.
#[tokio::test]
async fn a_pop_the_mirror_cannot_repeat_is_caught_and_the_key_copied() {
    let (old, new) = support::start_pair();
    let proxy = proxy(&old, &new, Phase::DualWrite).await;
    // On old only, as if written before the migration (or by a push whose
    // mirrored half is still on its way).
    old.run(&["RPUSH", "k:q", "a", "b"]);
    let mut c = proxy.conn().await;
    let popped: (String, String) = redis::cmd("BLPOP")
        .arg("k:q")
        .arg(1)
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(popped, ("k:q".into(), "a".into()));
    let spopped: Option<String> = c.spop("k:none").await.unwrap();
    assert_eq!(spopped, None);
    proxy.wait_mirrors_settled().await;
    assert!(
        proxy.stat("k", "mismatches") >= 1,
        "the mirror's empty LPOP was caught"
    );
    assert!(proxy.stat("k", "repaired") >= 1, "and the key copied");
    assert_same_keyspace(&old, &new, 1000);
    let on_new: Vec<String> = redis::cmd("LRANGE")
        .arg("k:q")
        .arg(0)
        .arg(-1)
        .query(&mut new.sync())
        .unwrap();
    assert_eq!(on_new, ["b"]);
}

/// A write mirrored as its effect that the answering cache refused (SPOP of
/// a string, BLPOP of a hash) changed nothing anywhere: nothing is mirrored,
/// nothing counted as failed, nothing journalled.
#[tokio::test]
async fn an_effect_refused_by_the_answering_cache_is_no_mirror_failure() {
    let (old, new) = support::start_pair();
    let proxy = proxy(&old, &new, Phase::DualWrite).await;
    let mut c = proxy.conn().await;
    let _: () = c.set("k:str", "v").await.unwrap();
    let _: () = c.hset("k:hash", "f", "v").await.unwrap();
    let spop: redis::RedisResult<Option<String>> = c.spop("k:str").await;
    assert!(spop.unwrap_err().to_string().contains("WRONGTYPE"));
    let blpop: redis::RedisResult<redis::Value> = redis::cmd("BLPOP")
        .arg("k:hash")
        .arg(1)
        .query_async(&mut c)
        .await;
    assert!(blpop.unwrap_err().to_string().contains("WRONGTYPE"));
    proxy.wait_mirrors_settled().await;
    assert_eq!(proxy.stat("k", "mirror_failed"), 0, "not a mirror failure");
    assert_eq!(proxy.stat("k", "journalled"), 0, "nothing to repair");
    assert_same_keyspace(&old, &new, 1000);
}

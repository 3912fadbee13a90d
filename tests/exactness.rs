//! Reproduced ways a write could be lost or old and new diverge silently
//! (issue 16), each against real servers: the proxy must behave as Redis
//! does, and whatever it cannot apply on both caches must be repaired.

mod support;

use std::time::Duration;

use cutover::routing::Phase;
use redis::AsyncCommands;
use support::{resp, wait_for, RawClient, RedisServer, TestProxy};

/// Subscribers of `channel` on `server`.
fn numsub(server: &RedisServer, channel: &str) -> i64 {
    let n: Vec<(String, i64)> = redis::cmd("PUBSUB")
        .arg("NUMSUB")
        .arg(channel)
        .query(&mut server.sync())
        .unwrap();
    n[0].1
}

/// Case 1: a worker that sends `BLPOP q 0` and closes its socket must not
/// leave an upstream connection blocked on its behalf: a job pushed
/// afterwards stays in the list, as it does with Redis directly.
#[tokio::test]
async fn a_blocked_pop_is_abandoned_when_its_client_leaves() {
    for phase in [Phase::OldOnly, Phase::DualWrite, Phase::ReadNew] {
        let (old, new) = support::start_pair();
        let proxy = TestProxy::start(&old, &new, &[("default", None, phase)]).await;
        let mut worker = proxy.raw().await;
        worker.send(&resp(&["BLPOP", "q", "0"])).await;
        // It is blocked upstream before it leaves.
        let side = phase.authoritative();
        let blocked_on = match side {
            cutover::routing::Side::Old => &old,
            cutover::routing::Side::New => &new,
        };
        wait_for("the pop blocked upstream", async || {
            let info: String = redis::cmd("INFO")
                .arg("clients")
                .query(&mut blocked_on.sync())
                .unwrap();
            info.contains("blocked_clients:1")
        })
        .await;
        drop(worker);
        tokio::time::sleep(Duration::from_millis(500)).await;
        // Pushed on the cache the pop was blocked on (and, in a dual phase,
        // through the proxy, so both caches get it).
        let mut c = proxy.conn().await;
        let _: i64 = c.rpush("q", "job1").await.unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
        proxy.wait_mirrors_settled().await;
        let len: i64 = blocked_on.conn().await.llen("q").await.unwrap();
        assert_eq!(len, 1, "{phase}: the job was popped for a client that left");
        if phase.mirror().is_some() {
            let other = match side {
                cutover::routing::Side::Old => &new,
                cutover::routing::Side::New => &old,
            };
            let len: i64 = other.conn().await.llen("q").await.unwrap();
            assert_eq!(len, 1, "{phase}: the mirror lost the job");
        }
        assert_eq!(proxy.stat("default", "upstream_failed"), 0, "{phase}");
    }
}

/// Case 16: Redis answers a self-containing Lua table with an array nested
/// about 8,000 levels deep; the client gets exactly those bytes, and the
/// connection's next reply is its own.
#[tokio::test]
async fn a_reply_as_deep_as_redis_sends_passes_exactly() {
    let (old, new) = support::start_pair();
    let direct = RedisServer::start();
    let proxy = TestProxy::start(&old, &new, &[("default", None, Phase::DualWrite)]).await;
    let eval = resp(&[
        "EVAL",
        "local a = {}; local b = {a}; a[1] = b; return a",
        "0",
    ]);
    let mut d = RawClient::connect(direct.addr()).await;
    d.send(&eval).await;
    let want = d.read_replies(1).await;
    assert!(want.len() > 30_000, "Redis nests it deep");
    let mut p = proxy.raw().await;
    p.send(&eval).await;
    p.send(&resp(&["PING"])).await;
    let got = p.read_replies(2).await;
    assert_eq!(got.len(), want.len() + 7);
    assert!(got[..want.len()] == want[..], "the deep reply differs");
    assert_eq!(&got[want.len()..], b"+PONG\r\n");
}

/// Case 3: the answering cache pauses writes (a managed cache's failover)
/// and the proxy gives up on its reply, but the mirror applied the write.
/// The write's outcome is unknown: its keys are journalled and copied
/// from the authoritative side, so old and new agree again.
#[tokio::test]
async fn a_write_whose_authoritative_reply_is_lost_is_repaired() {
    let (old, new) = support::start_pair();
    for s in [&old, &new] {
        let _: () = s.conn().await.set("session:p", "old").await.unwrap();
    }
    let text = support::Config::new(&old.addr(), &new.addr())
        .routes(&[("default", None, Phase::DualWrite)])
        .command_timeout(cutover::routing::Side::Old, 500)
        .text();
    let proxy = TestProxy::start_text(&text).await;
    let _: () = redis::cmd("CLIENT")
        .arg("PAUSE")
        .arg(3000)
        .arg("WRITE")
        .query_async(&mut old.conn().await)
        .await
        .unwrap();
    let mut c = proxy.conn().await;
    let r: redis::RedisResult<()> = c.set("session:p", "new").await;
    let err = r.expect_err("old never answered");
    assert!(err.to_string().contains("no reply within"), "{err}");
    assert!(
        proxy.stat("default", "journalled") >= 1,
        "nothing journalled"
    );
    // Copied from old once it answers: new holds old's value again.
    wait_for("new repaired from old", async || {
        let v: Option<String> = new.conn().await.get("session:p").await.unwrap();
        v.as_deref() == Some("old")
    })
    .await;
    let v: Option<String> = old.conn().await.get("session:p").await.unwrap();
    assert_eq!(v.as_deref(), Some("old"));
}

/// Case 4: an `EVALSHA` the mirror does not know (its script cache was
/// flushed) must still run there before the writes pipelined after it.
#[tokio::test]
async fn a_mirrored_evalsha_keeps_its_place_when_the_mirror_lacks_the_script() {
    let (old, new) = support::start_pair();
    let proxy = TestProxy::start(&old, &new, &[("default", None, Phase::DualWrite)]).await;
    let mut c = proxy.conn().await;
    let sha: String = redis::cmd("SCRIPT")
        .arg("LOAD")
        .arg("return redis.call('SET', KEYS[1], ARGV[1])")
        .query_async(&mut c)
        .await
        .unwrap();
    proxy.wait_mirrors_settled().await;
    let _: () = redis::cmd("SCRIPT")
        .arg("FLUSH")
        .query(&mut new.sync())
        .unwrap();
    let mut raw = proxy.raw().await;
    let mut pipeline = resp(&["EVALSHA", &sha, "1", "session:e", "v1"]);
    pipeline.extend(resp(&["SET", "session:e", "v2"]));
    raw.send(&pipeline).await;
    assert_eq!(raw.read_replies(2).await, b"+OK\r\n+OK\r\n");
    proxy.wait_mirrors_settled().await;
    for s in [&old, &new] {
        let v: Option<String> = s.conn().await.get("session:e").await.unwrap();
        assert_eq!(v.as_deref(), Some("v2"), "{}", s.addr());
    }
    assert_eq!(proxy.stat("default", "mismatches"), 0);
}

/// The frames in `bytes`, split as a client would.
fn frames(bytes: &[u8]) -> Vec<Vec<u8>> {
    let mut scanner = cutover::protocol::ReplyScanner::new(64);
    let mut buf = bytes::BytesMut::from(bytes);
    let mut out = Vec::new();
    while let Ok(Some(f)) = scanner.next(&mut buf) {
        out.push(f.bytes.to_vec());
    }
    assert!(buf.is_empty(), "a partial frame: {buf:?}");
    out
}

/// Case 13: a RESP2 `RESET` while messages keep coming. Whatever messages
/// come before it, `RESET`'s reply is `+RESET`, the next command's reply is
/// its own and the connection stays up.
#[tokio::test]
async fn reset_while_subscribed_takes_no_message_as_its_reply() {
    let (old, new) = support::start_pair();
    let proxy = TestProxy::start(&old, &new, &[("default", None, Phase::OldOnly)]).await;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let publisher = {
        let stop = stop.clone();
        let mut p = old.conn().await;
        tokio::spawn(async move {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let _: i64 = p.publish("ch", "hello").await.unwrap();
            }
        })
    };
    for round in 0..20 {
        let mut c = proxy.raw().await;
        // (Nothing is read until RESET: while messages flow, reads never
        // go quiet.)
        c.send(&resp(&["SUBSCRIBE", "ch"])).await;
        // Let messages flow, then reset in the middle of them.
        tokio::time::sleep(Duration::from_millis(30)).await;
        c.send(&[resp(&["RESET"]), resp(&["PING"])].concat()).await;
        let got = c.read_until("+PONG\r\n").await;
        // Drop the tail of a message cut by the read (before the RESET).
        let at = got
            .find("+RESET\r\n")
            .unwrap_or_else(|| panic!("round {round}: no +RESET"));
        let after = frames(&got.as_bytes()[at..]);
        assert_eq!(
            after,
            [b"+RESET\r\n".to_vec(), b"+PONG\r\n".to_vec()],
            "round {round}"
        );
        c.send(&resp(&["ECHO", "still here"])).await;
        assert_eq!(
            c.read_replies(1).await,
            b"$10\r\nstill here\r\n",
            "round {round}"
        );
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    publisher.await.unwrap();
}

/// Case 14: in RESP2 a message is an array like any reply: one published
/// on new must not reach the client ahead of the reply to a `BLPOP` on old
/// it pipelined before its `SUBSCRIBE`, nor ahead of the confirmation.
#[tokio::test]
async fn a_resp2_message_waits_for_the_replies_before_its_subscription() {
    let (old, new) = support::start_pair();
    let routes = [
        ("a", Some(&["a:*"][..]), Phase::OldOnly),
        ("default", None, Phase::NewOnly),
    ];
    let proxy = TestProxy::start(&old, &new, &routes).await;
    let mut c = proxy.raw().await;
    c.send(&[resp(&["BLPOP", "a:q", "1"]), resp(&["SUBSCRIBE", "ch"])].concat())
        .await;
    // Subscribed on new (the confirmation is held behind the BLPOP).
    wait_for("subscribed on new", async || numsub(&new, "ch") == 1).await;
    let mut p = proxy.conn().await;
    let _: i64 = p.publish("ch", "hello").await.unwrap();
    let got = frames(&c.read_replies(3).await);
    assert_eq!(got[0], b"*-1\r\n", "the BLPOP's reply comes first");
    assert_eq!(got[1], b"*3\r\n$9\r\nsubscribe\r\n$2\r\nch\r\n:1\r\n");
    assert_eq!(
        got[2],
        b"*3\r\n$7\r\nmessage\r\n$2\r\nch\r\n$5\r\nhello\r\n"
    );
}

/// Case 8: a mirrored write the proxy sends to a cache where the client's
/// own MULTI is open must not be queued in it: EXEC's reply is the
/// client's alone, and a DISCARD does not drop the mirrored write.
#[tokio::test]
async fn proxy_commands_wait_for_the_clients_open_multi() {
    for end in ["EXEC", "DISCARD"] {
        let (old, new) = support::start_pair();
        for s in [&old, &new] {
            let _: i64 = s.conn().await.sadd("a:s", "m").await.unwrap();
        }
        let routes = [
            ("a", Some(&["a:*"][..]), Phase::DualWrite),
            ("b", Some(&["b:*"][..]), Phase::ReadNew),
            ("default", None, Phase::OldOnly),
        ];
        let proxy = TestProxy::start(&old, &new, &routes).await;
        let mut c = proxy.raw().await;
        c.send(
            &[
                resp(&["SPOP", "a:s"]),
                resp(&["MULTI"]),
                resp(&["SET", "b:1", "1"]),
            ]
            .concat(),
        )
        .await;
        assert_eq!(c.read_replies(3).await, b"$1\r\nm\r\n+OK\r\n+QUEUED\r\n");
        // The SPOP's effect (SREM on new) is due while the MULTI is open.
        tokio::time::sleep(Duration::from_millis(200)).await;
        c.send(&resp(&[end])).await;
        let want: &[u8] = match end {
            "EXEC" => b"*1\r\n+OK\r\n",
            _ => b"+OK\r\n",
        };
        assert_eq!(c.read_replies(1).await, want, "{end}");
        proxy.wait_mirrors_settled().await;
        for s in [&old, &new] {
            let n: i64 = s.conn().await.scard("a:s").await.unwrap();
            assert_eq!(n, 0, "{end}: SPOP's effect on {}", s.addr());
        }
        let b: Option<String> = new.conn().await.get("b:1").await.unwrap();
        assert_eq!(b.is_some(), end == "EXEC", "{end}");
    }
}

/// Writes inside MULTI are compared element by element: a counter that
/// existed on old only (redis-py pipelines use MULTI), and errors inside
/// the mirror's EXEC array (case 7), each get their keys copied.
#[tokio::test]
async fn a_mirrored_transaction_is_compared_element_by_element() {
    let (old, new) = support::start_pair();
    let _: () = old.conn().await.set("session:ctr", 10).await.unwrap();
    // On new only the list is a string: WRONGTYPE inside new's EXEC.
    let _: () = new.conn().await.set("session:l", "x").await.unwrap();
    let proxy = TestProxy::start(&old, &new, &[("default", None, Phase::DualWrite)]).await;
    let mut c = proxy.conn().await;
    let (ctr, _, pushed): (i64, bool, i64) = redis::pipe()
        .atomic()
        .incr("session:ctr", 1)
        .expire("session:ctr", 100)
        .lpush("session:l", "a")
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!((ctr, pushed), (11, 1));
    proxy.wait_mirrors_settled().await;
    assert!(proxy.stat("default", "compared") >= 3);
    assert_eq!(proxy.stat("default", "mismatches"), 2);
    wait_for("new repaired", async || {
        let mut n = new.conn().await;
        let ctr: Option<i64> = n.get("session:ctr").await.unwrap_or(None);
        let l: redis::RedisResult<Vec<String>> = n.lrange("session:l", 0, -1).await;
        ctr == Some(11) && l.is_ok_and(|l| l == ["a"])
    })
    .await;
    let ttl: i64 = new.conn().await.ttl("session:ctr").await.unwrap();
    assert!(ttl > 0, "the copy keeps the TTL: {ttl}");
}

/// Whether `server` answers commands again (no script keeps it BUSY).
async fn responsive(server: &RedisServer) -> bool {
    let r: redis::RedisResult<String> = redis::cmd("PING").query(&mut server.sync());
    r.is_ok_and(|p| p == "PONG")
}

/// Case 15: a runaway script mirrored to new must not wedge new. The
/// client's `SCRIPT KILL` through cutover reaches both caches, and a script
/// killed on the authoritative side directly is killed on the mirror by
/// cutover.
#[tokio::test]
async fn a_runaway_mirrored_script_is_killed_on_both_caches() {
    let (old, new) = support::start_pair();
    for s in [&old, &new] {
        let _: () = redis::cmd("CONFIG")
            .arg("SET")
            .arg("busy-reply-threshold")
            .arg(200)
            .query(&mut s.sync())
            .unwrap();
    }
    let proxy = TestProxy::start(&old, &new, &[("default", None, Phase::DualWrite)]).await;
    let runaway = resp(&[
        "EVAL",
        "local i=0 while true do i=i+1 end",
        "1",
        "session:k",
    ]);
    for how in ["through cutover", "directly on old"] {
        let mut a = proxy.raw().await;
        a.send(&runaway).await;
        // Both caches run it past their busy threshold.
        wait_for("old busy", async || !responsive(&old).await).await;
        wait_for("new busy", async || !responsive(&new).await).await;
        match how {
            "through cutover" => {
                let mut b = proxy.conn().await;
                let r: String = redis::cmd("SCRIPT")
                    .arg("KILL")
                    .query_async(&mut b)
                    .await
                    .unwrap();
                assert_eq!(r, "OK");
            }
            _ => {
                let _: () = redis::cmd("SCRIPT")
                    .arg("KILL")
                    .query(&mut old.sync())
                    .unwrap();
            }
        }
        let got = a.read_replies(1).await;
        assert!(
            String::from_utf8_lossy(&got).contains("killed by user"),
            "{how}: {}",
            String::from_utf8_lossy(&got)
        );
        wait_for("new answers again", async || responsive(&new).await).await;
        let mut c = proxy.conn().await;
        let _: () = c.set("session:after", how).await.unwrap();
        proxy.wait_mirrors_settled().await;
        let v: Option<String> = new.conn().await.get("session:after").await.unwrap();
        assert_eq!(v.as_deref(), Some(how), "{how}: new took the next write");
    }
}

/// Case 5: connection state reaches the other cache only as the answering
/// cache accepted it. Old refuses `HELLO 3` (it does not know it, like
/// Redis 5):
/// the client stays in RESP2, and after a flip to read-new it still gets
/// RESP2 from new. And new refuses `SELECT 1` (Azure Managed Redis has
/// database 0 only) that old accepted: the writes mirrored for that
/// database are journalled, not applied in new's database 0.
#[tokio::test]
async fn connection_state_refused_by_one_cache_is_not_applied_on_the_other() {
    let old = RedisServer::start_with(&["--rename-command", "HELLO", ""]);
    let new = RedisServer::start();
    for s in [&old, &new] {
        let _: () = s.conn().await.hset("h", "f", "v").await.unwrap();
    }
    let config = |phase: Phase| {
        support::config_text(&old.addr(), &new.addr(), &[("default", None, phase)], "")
    };
    let proxy = TestProxy::start_text(&config(Phase::DualWrite)).await;
    let mut c = proxy.raw().await;
    c.send(&[resp(&["HELLO", "3"]), resp(&["HGETALL", "h"])].concat())
        .await;
    let got = String::from_utf8(c.read_replies(2).await).unwrap();
    assert!(got.starts_with("-ERR unknown command 'HELLO'"), "{got}");
    assert!(got.ends_with("*2\r\n$1\r\nf\r\n$1\r\nv\r\n"), "{got}");
    proxy.rewrite_config(&config(Phase::ReadNew));
    proxy.wait_phase("default", Phase::ReadNew).await;
    c.send(&resp(&["HGETALL", "h"])).await;
    assert_eq!(c.read_replies(1).await, b"*2\r\n$1\r\nf\r\n$1\r\nv\r\n");

    let old = RedisServer::start();
    let new = RedisServer::start_with(&["--databases", "1"]);
    let proxy = TestProxy::start(&old, &new, &[("default", None, Phase::DualWrite)]).await;
    let mut c = proxy.raw().await;
    c.send(
        &[
            resp(&["PING"]),
            resp(&["SELECT", "1"]),
            resp(&["SET", "k", "v"]),
        ]
        .concat(),
    )
    .await;
    assert_eq!(c.read_replies(3).await, b"+PONG\r\n+OK\r\n+OK\r\n");
    proxy.wait_mirrors_settled().await;
    let n: i64 = redis::cmd("DBSIZE").query(&mut new.sync()).unwrap();
    assert_eq!(n, 0, "the write for database 1 landed in new's database 0");
    assert!(proxy.stat("default", "journalled") >= 1);
}

/// Case 10 (in part): a subscriber is not stranded when its route goes
/// `new-only`: its subscription follows the route to the cache that gets
/// the publishes, unseen by the client, which receives each message once;
/// RESP2 and RESP3.
#[tokio::test]
async fn a_subscription_follows_its_route_to_new_only() {
    for hello in ["2", "3"] {
        let (old, new) = support::start_pair();
        let config = |phase: Phase| {
            support::config_text(&old.addr(), &new.addr(), &[("default", None, phase)], "")
        };
        let proxy = TestProxy::start_text(&config(Phase::DualWrite)).await;
        let flip = async |phase: Phase| {
            proxy.rewrite_config(&config(phase));
            proxy.wait_phase("default", phase).await;
        };
        let mut sub = proxy.raw().await;
        sub.send(&[resp(&["HELLO", hello]), resp(&["SUBSCRIBE", "ch"])].concat())
            .await;
        sub.read_replies(2).await;
        let mut p = proxy.conn().await;
        let publish = async |p: &mut redis::aio::MultiplexedConnection, m: &str| {
            let _: i64 = p.publish("ch", m).await.unwrap();
        };
        publish(&mut p, "in-dual-write").await;
        flip(Phase::ReadNew).await;
        publish(&mut p, "in-read-new").await;
        flip(Phase::NewOnly).await;
        wait_for("subscribed on new", async || numsub(&new, "ch") == 1).await;
        publish(&mut p, "in-new-only").await;
        let got = frames(&sub.read_replies(3).await);
        let kind = if hello == "3" { ">" } else { "*" };
        for (frame, m) in got
            .iter()
            .zip(["in-dual-write", "in-read-new", "in-new-only"])
        {
            let want = format!(
                "{kind}3\r\n$7\r\nmessage\r\n$2\r\nch\r\n${}\r\n{m}\r\n",
                m.len()
            );
            assert_eq!(String::from_utf8_lossy(frame), want, "RESP{hello}");
        }
        // Nothing else came (no confirmation of the move, no duplicate).
        sub.send(&resp(&["PING"])).await;
        let pong = String::from_utf8(sub.read_replies(1).await).unwrap();
        assert!(
            pong.contains("pong") || pong.contains("PONG"),
            "RESP{hello}: {pong}"
        );
        assert_eq!(numsub(&old, "ch"), 0, "left old");
    }
}

/// Case 10: in `read-new` a subscriber made in `dual-write` is still on
/// old (both caches get every publish), and one made since is on new:
/// `PUBLISH` answers how many clients received the message, counting
/// both, as one Redis would. Each subscriber gets the message once.
#[tokio::test]
async fn publish_counts_subscribers_on_both_caches() {
    let (old, new) = support::start_pair();
    let config = |phase: Phase| {
        support::config_text(&old.addr(), &new.addr(), &[("default", None, phase)], "")
    };
    let proxy = TestProxy::start_text(&config(Phase::DualWrite)).await;
    let subscribe = async || {
        let mut sub = proxy.raw().await;
        sub.send(&resp(&["SUBSCRIBE", "ch"])).await;
        sub.read_replies(1).await;
        sub
    };
    let mut p = proxy.conn().await;
    let mut first = subscribe().await;
    let n: i64 = p.publish("ch", "one").await.unwrap();
    assert_eq!(n, 1, "dual-write, one subscriber");
    proxy.rewrite_config(&config(Phase::ReadNew));
    proxy.wait_phase("default", Phase::ReadNew).await;
    let mut second = subscribe().await;
    assert_eq!((numsub(&old, "ch"), numsub(&new, "ch")), (1, 1));
    let n: i64 = p.publish("ch", "two").await.unwrap();
    assert_eq!(n, 2, "read-new: one subscriber on each cache");
    let message = |m: &str| format!("*3\r\n$7\r\nmessage\r\n$2\r\nch\r\n$3\r\n{m}\r\n");
    let got = String::from_utf8(first.read_replies(2).await).unwrap();
    assert_eq!(got, message("one") + &message("two"));
    let got = String::from_utf8(second.read_replies(1).await).unwrap();
    assert_eq!(got, message("two"));
    for sub in [&mut first, &mut second] {
        sub.send(&resp(&["PING"])).await;
        let pong = String::from_utf8(sub.read_replies(1).await).unwrap();
        assert!(pong.contains("pong"), "no duplicate before: {pong}");
    }
}

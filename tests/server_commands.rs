//! Keyless and server commands: admin commands refused unless allowed,
//! allowed ones reaching both caches in dual phases, a deny list, SCAN
//! cursors pinned to one cache, and what can never run through a proxy.

mod support;

use cutover::config::Settings;
use cutover::routing::Phase;
use support::{exchange, get, TestProxy};

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn maxmemory_policy(s: &support::RedisServer) -> String {
    let v: Vec<String> = redis::cmd("CONFIG")
        .arg("GET")
        .arg("maxmemory-policy")
        .query(&mut s.sync())
        .unwrap();
    v[1].clone()
}

#[tokio::test]
async fn admin_commands_are_refused_unless_allowed() {
    let (old, new) = support::start_pair();
    let routes = [("default", None, Phase::DualWrite)];
    let proxy = TestProxy::start(&old, &new, &routes).await;
    let (got, closed) = exchange(
        proxy.addr,
        b"CONFIG SET maxmemory-policy allkeys-lru\r\nDEBUG SLEEP 0\r\nSHUTDOWN\r\nCLIENT KILL ID 1\r\nMIGRATE h 1 k 0 10\r\nCLIENT ID\r\nPING\r\n",
    )
    .await;
    let t = text(&got);
    let lines: Vec<&str> = t.split("\r\n").collect();
    assert!(
        lines[0].starts_with("-ERR cutover refuses 'config set' by default"),
        "{t}"
    );
    assert!(
        lines[0].contains("\"CONFIG SET\" or \"CONFIG\" to [commands] allow"),
        "{t}"
    );
    assert!(lines[1].starts_with("-ERR cutover refuses 'debug'"), "{t}");
    assert!(
        lines[2].starts_with("-ERR cutover refuses 'shutdown'"),
        "{t}"
    );
    assert!(
        lines[3].starts_with("-ERR cutover refuses 'client kill'"),
        "{t}"
    );
    assert!(
        lines[4].starts_with("-ERR cutover refuses 'migrate'"),
        "{t}"
    );
    assert!(lines[5].starts_with(':'), "CLIENT ID is forwarded: {t}");
    assert_eq!(lines[6], "+PONG");
    assert!(!closed);
    assert_eq!(maxmemory_policy(&old), "noeviction");

    // Allowed: a change goes to both caches in a dual phase, a look to one.
    let text_cfg = support::config_text(
        &old.addr(),
        &new.addr(),
        &routes,
        "[commands]\nallow = [\"CONFIG\"]\ndeny = [\"FLUSHALL\", \"flushdb\"]\n",
    );
    let proxy = TestProxy::start_text(&text_cfg).await;
    let (got, _) = exchange(
        proxy.addr,
        b"CONFIG SET maxmemory-policy allkeys-lru\r\nCONFIG GET maxmemory-policy\r\nSET k 1\r\nFLUSHALL\r\nFLUSHDB ASYNC\r\nGET k\r\n",
    )
    .await;
    let t = text(&got);
    let lines: Vec<&str> = t.split("\r\n").collect();
    assert_eq!(
        &lines[..7],
        [
            "+OK",
            "*2",
            "$16",
            "maxmemory-policy",
            "$11",
            "allkeys-lru",
            "+OK"
        ],
        "{t}"
    );
    assert_eq!(
        lines[7], "-ERR cutover: 'flushall' is refused by [commands] deny",
        "{t}"
    );
    assert_eq!(
        lines[8], "-ERR cutover: 'flushdb' is refused by [commands] deny",
        "{t}"
    );
    assert_eq!(&lines[9..11], ["$1", "1"], "{t}");
    proxy.wait_mirrors_settled().await;
    assert_eq!(maxmemory_policy(&old), "allkeys-lru");
    assert_eq!(maxmemory_policy(&new), "allkeys-lru");
}

#[tokio::test]
async fn flush_is_mirrored_in_dual_phases() {
    let (old, new) = support::start_pair();
    let proxy = TestProxy::start(&old, &new, &[("default", None, Phase::ReadNew)]).await;
    let (got, _) = exchange(proxy.addr, b"SET a 1\r\nFLUSHALL\r\nDBSIZE\r\n").await;
    assert_eq!(text(&got), "+OK\r\n+OK\r\n:0\r\n");
    proxy.wait_mirrors_settled().await;
    assert_eq!(get(&mut old.sync(), "a"), None);
    assert_eq!(get(&mut new.sync(), "a"), None);
}

#[test]
fn allow_and_deny_entries_are_validated() {
    for (extra, field, why) in [
        (
            "allow = [\"MONITOR\"]",
            "commands.allow[0]",
            "cannot be allowed",
        ),
        (
            "allow = [\"CONFIG\", \"NOPE\"]",
            "commands.allow[1]",
            "not a command",
        ),
        (
            "deny = [\"CONFIG NOPE\"]",
            "commands.deny[0]",
            "not a command",
        ),
    ] {
        let text = support::config_text(
            "127.0.0.1:1",
            "127.0.0.1:2",
            &[("default", None, Phase::OldOnly)],
            &format!("[commands]\n{extra}\n"),
        );
        let settings: Settings = toml::from_str(&text).unwrap();
        let (got, msg) = settings.validate().expect_err(extra);
        assert_eq!(got, field, "{extra}");
        assert!(msg.contains(why), "{extra}: {msg}");
    }
}

#[tokio::test]
async fn scan_cursor_stays_on_the_cache_that_issued_it() {
    let (old, new) = support::start_pair();
    let routes = |phase: Phase| {
        support::config_text(&old.addr(), &new.addr(), &[("default", None, phase)], "")
    };
    // Only old has the keys (written directly), so a cursor carried to new
    // would return nothing.
    let mut o = old.sync();
    for i in 0..100 {
        let _: () = redis::cmd("SET")
            .arg(format!("k{i}"))
            .arg(i)
            .query(&mut o)
            .unwrap();
    }
    let proxy = TestProxy::start_text(&routes(Phase::DualWrite)).await;
    let mut c = proxy.conn().await;
    let (cursor, mut seen): (u64, Vec<String>) = redis::cmd("SCAN")
        .arg(0)
        .arg("COUNT")
        .arg(10)
        .query_async(&mut c)
        .await
        .unwrap();
    assert_ne!(cursor, 0);
    proxy.rewrite_config(&routes(Phase::ReadNew));
    proxy.wait_phase("default", Phase::ReadNew).await;
    let mut cursor = cursor;
    while cursor != 0 {
        let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("COUNT")
            .arg(10)
            .query_async(&mut c)
            .await
            .unwrap();
        seen.extend(keys);
        cursor = next;
    }
    seen.sort();
    seen.dedup();
    assert_eq!(seen.len(), 100, "the whole scan ran on old");
    // A new scan starts on the route's current read side.
    let (_, keys): (u64, Vec<String>) = redis::cmd("SCAN")
        .arg(0)
        .arg("COUNT")
        .arg(1000)
        .query_async(&mut c)
        .await
        .unwrap();
    assert!(keys.is_empty(), "new has no keys: {keys:?}");
}

/// Case 11 of issue 16: HSCAN, SSCAN and ZSCAN cursors stay on the cache
/// that issued them too, per key, across a flip.
#[tokio::test]
async fn key_scan_cursors_stay_on_the_cache_that_issued_them() {
    let (old, new) = support::start_pair();
    let routes = |phase: Phase| {
        support::config_text(&old.addr(), &new.addr(), &[("default", None, phase)], "")
    };
    // Only old has the keys: a cursor carried to new returns nothing.
    let mut o = old.sync();
    for i in 0..3000 {
        let _: () = redis::pipe()
            .hset("h", format!("f{i}"), i)
            .ignore()
            .sadd("s", format!("m{i}"))
            .ignore()
            .zadd("z", format!("m{i}"), i)
            .ignore()
            .query(&mut o)
            .unwrap();
    }
    let proxy = TestProxy::start_text(&routes(Phase::DualWrite)).await;
    let mut c = proxy.conn().await;
    // Three iterations at once, one step each before the flip.
    let step =
        async |c: &mut redis::aio::MultiplexedConnection, cmd: &str, key: &str, cursor: u64| {
            let (next, items): (u64, Vec<String>) = redis::cmd(cmd)
                .arg(key)
                .arg(cursor)
                .arg("COUNT")
                .arg(100)
                .query_async(c)
                .await
                .unwrap();
            (next, items)
        };
    let scans = [("HSCAN", "h", 2), ("SSCAN", "s", 1), ("ZSCAN", "z", 2)];
    let mut state = Vec::new();
    for (cmd, key, per) in scans {
        let (cursor, items) = step(&mut c, cmd, key, 0).await;
        assert_ne!(cursor, 0, "{cmd}");
        let mut seen: Vec<String> = items.chunks(per).map(|x| x[0].clone()).collect();
        seen.sort();
        state.push((cmd, key, per, cursor, seen));
    }
    proxy.rewrite_config(&routes(Phase::ReadNew));
    proxy.wait_phase("default", Phase::ReadNew).await;
    for (cmd, key, per, mut cursor, mut seen) in state {
        while cursor != 0 {
            let (next, items) = step(&mut c, cmd, key, cursor).await;
            seen.extend(items.chunks(per).map(|x| x[0].clone()));
            cursor = next;
        }
        seen.sort();
        seen.dedup();
        assert_eq!(seen.len(), 3000, "{cmd}: the whole scan ran on old");
        // A new iteration starts on the route's read side: new is empty.
        let (next, items) = step(&mut c, cmd, key, 0).await;
        assert_eq!((next, items.len()), (0, 0), "{cmd}");
    }
}

/// Case 9 of issue 16: FLUSHALL, FLUSHDB and SWAPDB reach every cache some
/// route writes to, not only the default route's: flushed keys of a route
/// on new must not come back after a flip.
#[tokio::test]
async fn keyless_writes_reach_every_cache_a_route_writes() {
    for cmd in ["FLUSHALL", "FLUSHDB", "SWAPDB"] {
        let (old, new) = support::start_pair();
        let routes = [
            ("a", Some(&["a:*"][..]), Phase::NewOnly),
            ("default", None, Phase::OldOnly),
        ];
        let proxy = TestProxy::start(&old, &new, &routes).await;
        let mut c = proxy.conn().await;
        let _: () = redis::cmd("SET")
            .arg("a:1")
            .arg("x")
            .query_async(&mut c)
            .await
            .unwrap();
        let _: () = redis::cmd("SET")
            .arg("d")
            .arg("y")
            .query_async(&mut c)
            .await
            .unwrap();
        let mut flush = redis::cmd(cmd);
        if cmd == "SWAPDB" {
            flush.arg(0).arg(1);
        }
        let _: () = flush.query_async(&mut c).await.unwrap();
        proxy.wait_mirrors_settled().await;
        for s in [&old, &new] {
            let n: i64 = redis::cmd("DBSIZE").query(&mut s.sync()).unwrap();
            assert_eq!(n, 0, "{cmd}: {} kept keys in db 0", s.addr());
        }
    }
}

/// Case 9 of issue 16, its second half: with routes read from different
/// caches, KEYS and SCAN answer for the keyspace the client sees: each
/// key from the cache it is read from (a stale copy on the other hidden),
/// a SCAN walking old then new under one cursor.
#[tokio::test]
async fn keys_and_scan_see_the_keyspace_across_both_caches() {
    let (old, new) = support::start_pair();
    for (server, keys) in [
        (&old, ["d1", "d2", "a:stale"]),
        (&new, ["a:1", "a:2", "d-stale"]),
    ] {
        for k in keys {
            let _: () = redis::cmd("SET")
                .arg(k)
                .arg(1)
                .query(&mut server.sync())
                .unwrap();
        }
    }
    // d-stale is not in route a: read from old, where it does not exist.
    let routes = [
        ("a", Some(&["a:*"][..]), Phase::NewOnly),
        ("default", None, Phase::OldOnly),
    ];
    let proxy = TestProxy::start(&old, &new, &routes).await;
    let mut c = proxy.conn().await;
    let want = ["a:1", "a:2", "d1", "d2"];
    let mut keys: Vec<String> = redis::cmd("KEYS")
        .arg("*")
        .query_async(&mut c)
        .await
        .unwrap();
    keys.sort();
    assert_eq!(keys, want);
    let mut seen = Vec::new();
    let mut cursor = 0u64;
    let mut pages = 0;
    loop {
        let (next, page): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("COUNT")
            .arg(1)
            .query_async(&mut c)
            .await
            .unwrap();
        seen.extend(page);
        pages += 1;
        assert!(pages < 100, "the walk never ended");
        if next == 0 {
            break;
        }
        cursor = next;
    }
    seen.sort();
    assert_eq!(seen, want);
    // A MATCH is passed on to both.
    let (_, m): (u64, Vec<String>) = redis::cmd("SCAN")
        .arg(1u64 << 63)
        .arg("MATCH")
        .arg("a:*")
        .arg("COUNT")
        .arg(100)
        .query_async(&mut c)
        .await
        .unwrap();
    let mut m = m;
    m.sort();
    assert_eq!(m, ["a:1", "a:2"]);
    // d-stale on new matches, but its keys are read from old: hidden.
    let mut raw = proxy.raw().await;
    raw.send(b"KEYS d*\r\n").await;
    let got = String::from_utf8(raw.read_replies(1).await).unwrap();
    assert!(got.starts_with("*2\r\n"), "{got}");
}

/// Case 9, its last part: with routes read from different caches, `DBSIZE`
/// counts the keys the client sees (each cache's keys read from it, over
/// several SCAN pages) and `RANDOMKEY` never shows a stale copy, in the
/// client's order within a pipeline.
#[tokio::test]
async fn dbsize_and_randomkey_answer_for_the_keyspace_the_client_sees() {
    let (old, new) = support::start_pair();
    let fill = |server: &support::RedisServer, keys: &[(&str, usize)]| {
        let mut pipe = redis::pipe();
        for (prefix, n) in keys {
            for i in 0..*n {
                pipe.cmd("SET").arg(format!("{prefix}{i}")).arg(1).ignore();
            }
        }
        let _: () = pipe.query(&mut server.sync()).unwrap();
    };
    // Old: 1,500 keys read from it and 300 stale copies of route a's;
    // new: 1,200 of route a's and 50 stale copies of the default route's.
    fill(&old, &[("d:", 1500), ("a:stale", 300)]);
    fill(&new, &[("a:", 1200), ("d-stale", 50)]);
    let routes = [
        ("a", Some(&["a:*"][..]), Phase::NewOnly),
        ("default", None, Phase::OldOnly),
    ];
    let proxy = TestProxy::start(&old, &new, &routes).await;
    let mut raw = proxy.raw().await;
    raw.send(b"DBSIZE\r\nPING\r\nDBSIZE\r\n").await;
    let got = String::from_utf8(raw.read_replies(3).await).unwrap();
    assert_eq!(got, ":2700\r\n+PONG\r\n:2700\r\n");
    let mut c = proxy.conn().await;
    let mut kinds = std::collections::BTreeSet::new();
    for _ in 0..200 {
        let key: String = redis::cmd("RANDOMKEY").query_async(&mut c).await.unwrap();
        let visible = key.starts_with("d:") || (key.starts_with("a:") && !key.contains("stale"));
        assert!(visible, "a stale copy shown: {key}");
        kinds.insert(key[..2].to_string());
    }
    assert_eq!(kinds.len(), 2, "keys of both caches picked: {kinds:?}");
    // Both empty: nil, as Redis answers.
    let _: () = redis::cmd("FLUSHALL").query_async(&mut c).await.unwrap();
    let key: Option<String> = redis::cmd("RANDOMKEY").query_async(&mut c).await.unwrap();
    assert_eq!(key, None);
    let n: i64 = redis::cmd("DBSIZE").query_async(&mut c).await.unwrap();
    assert_eq!(n, 0);
}

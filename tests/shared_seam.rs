//! Shared upstream connections (issue 19): what a session on the shared
//! connections keeps for itself (CLIENT SETNAME, GETNAME, SETINFO are
//! answered by cutover, and replayed when the session leaves for a
//! connection of its own), and a shared connection opened again keeps the
//! upstream's database.

mod support;

use cutover::routing::{Phase, Side};
use support::{resp, wait_for, Config, RedisServer, TestProxy};

/// Old and new shared, `per_node` connections each, on one session thread.
fn shared(old: &RedisServer, new: &RedisServer, extra: &str) -> String {
    let lines = format!("connections = \"shared\"\nshared_per_node = 1\n{extra}");
    Config::new(&old.addr(), &new.addr())
        .route("default", None, Phase::DualWrite)
        .upstream_toml(Side::Old, &lines)
        .upstream_toml(Side::New, &lines)
        .with("[listen]\nworkers = 1")
        .text()
}

/// The lines of the cache's CLIENT LIST.
fn client_list(s: &RedisServer) -> String {
    redis::cmd("CLIENT")
        .arg("LIST")
        .query(&mut s.sync())
        .unwrap()
}

/// Sends `cmd` straight to `s` and returns its raw reply.
async fn direct(s: &RedisServer, cmd: &[&str]) -> Vec<u8> {
    let mut c = support::RawClient::connect(s.addr()).await;
    c.send(&resp(cmd)).await;
    c.read_replies(1).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_names_are_kept_by_cutover_on_the_shared_connections() {
    let (old, new) = support::start_pair();
    let proxy = TestProxy::start_text(&shared(&old, &new, "")).await;
    let mut c = proxy.raw().await;
    let mut other = proxy.raw().await;
    let pipeline = [
        resp(&["CLIENT", "GETNAME"]),
        resp(&["CLIENT", "SETNAME", "worker-7"]),
        resp(&["CLIENT", "SETINFO", "LIB-NAME", "redis-py"]),
        resp(&["CLIENT", "SETINFO", "lib-ver", "5.0.1"]),
        resp(&["SET", "k", "v"]),
        resp(&["CLIENT", "GETNAME"]),
    ]
    .concat();
    c.send(&pipeline).await;
    assert_eq!(
        c.read_replies(6).await,
        b"$-1\r\n+OK\r\n+OK\r\n+OK\r\n+OK\r\n$8\r\nworker-7\r\n"
    );
    // Each session its own name; the shared connections are not renamed
    // and no session left them.
    other.send(&resp(&["CLIENT", "GETNAME"])).await;
    assert_eq!(other.read_replies(1).await, b"$-1\r\n");
    for cache in [&old, &new] {
        let list = client_list(cache);
        assert!(!list.contains("worker-7"), "{list}");
        assert_eq!(list.lines().count(), 2, "one shared connection: {list}");
    }
    // Names Redis refuses are refused the same, byte for byte; an unset
    // name (empty) clears it.
    for bad in ["a b", "new\nline"] {
        c.send(&resp(&["CLIENT", "SETNAME", bad])).await;
        let want = direct(&old, &["CLIENT", "SETNAME", bad]).await;
        assert_eq!(c.read_replies(1).await, want);
    }
    c.send(&resp(&["CLIENT", "SETINFO", "LIB-NAME", "a b"]))
        .await;
    assert_eq!(
        c.read_replies(1).await,
        // As Redis 7.2: the option as the client spelled it.
        b"-ERR LIB-NAME cannot contain spaces, newlines or special characters.\r\n"
    );
    c.send(&resp(&["CLIENT", "SETINFO", "colour", "x"])).await;
    assert_eq!(
        c.read_replies(1).await,
        b"-ERR Unrecognized option 'colour'\r\n"
    );
    c.send(&resp(&["CLIENT", "GETNAME"])).await;
    assert_eq!(c.read_replies(1).await, b"$8\r\nworker-7\r\n");
    c.send(&resp(&["CLIENT", "SETNAME", ""])).await;
    c.send(&resp(&["CLIENT", "GETNAME"])).await;
    assert_eq!(c.read_replies(2).await, b"+OK\r\n$-1\r\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_name_kept_on_the_shared_connections_follows_the_session_to_its_own() {
    let (old, new) = support::start_pair();
    let proxy = TestProxy::start_text(&shared(&old, &new, "")).await;
    let mut c = proxy.raw().await;
    let pipeline = [
        resp(&["CLIENT", "SETNAME", "billing"]),
        resp(&["INCR", "n"]),
        // Needs a connection of its own: the name is set there too.
        resp(&["SELECT", "2"]),
        resp(&["INCR", "n"]),
        resp(&["CLIENT", "GETNAME"]),
    ]
    .concat();
    c.send(&pipeline).await;
    assert_eq!(
        c.read_replies(5).await,
        b"+OK\r\n:1\r\n+OK\r\n:1\r\n$7\r\nbilling\r\n"
    );
    // The own connections carry the name and the database, on both caches.
    for cache in [&old, &new] {
        let list = client_list(cache);
        let own: Vec<_> = list.lines().filter(|l| l.contains(" db=2 ")).collect();
        assert_eq!(own.len(), 1, "{list}");
        assert!(own[0].contains(" name=billing "), "{list}");
    }
    proxy.wait_mirrors_settled().await;
    support::assert_same_keyspace(&old, &new, 0);
}

/// Regression: a session whose shared connection had closed while it owed
/// nothing opened a new one without the upstream's `db`, and its writes
/// went to database 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shared_connection_opened_again_selects_the_upstreams_database() {
    let (mut old, new) = support::start_pair();
    let proxy = TestProxy::start_text(&shared(&old, &new, "db = 3")).await;
    let mut idle = proxy.raw().await;
    idle.send(&resp(&["SET", "before", "1"])).await;
    assert_eq!(idle.read_replies(1).await, b"+OK\r\n");
    old.kill();
    old.restart();
    // The session owes nothing on the connection that closed: its next
    // command opens another one (an error only if it raced the close).
    wait_for("the write after the restart", async || {
        idle.send(&resp(&["SET", "after", "2"])).await;
        idle.read_replies(1).await == b"+OK\r\n"
    })
    .await;
    let in_db = |db: u32| -> Option<String> {
        let mut c = old.sync();
        redis::cmd("SELECT").arg(db).exec(&mut c).unwrap();
        redis::cmd("GET").arg("after").query(&mut c).unwrap()
    };
    assert_eq!(in_db(3).as_deref(), Some("2"));
    assert_eq!(in_db(0), None, "written to database 0");
}

/// The shared connections of `cache` by protocol: (RESP2, RESP3).
fn by_protocol(cache: &RedisServer) -> (usize, usize) {
    let list = client_list(cache);
    let others = list.lines().filter(|l| !l.contains(" cmd=client|list "));
    others.fold((0, 0), |(two, three), l| {
        match l.trim_end().ends_with(" resp=3") {
            true => (two, three + 1),
            false => (two + 1, three),
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_on_resp3_share_connections_opened_with_hello_3() {
    let (old, new) = support::start_pair();
    let proxy = TestProxy::start_text(&shared(&old, &new, "")).await;
    for cache in [&old, &new] {
        cache.run(&["HSET", "h", "f", "v"]);
    }
    // The first RESP3 session has connections of its own while cutover
    // finds out whether the caches take HELLO 3 (a cache before Redis 6
    // refuses it, and the client must see that refusal as it is).
    let mut first = proxy.raw().await;
    first.send(&resp(&["HELLO", "3"])).await;
    assert!(first.read_replies(1).await.starts_with(b"%7\r\n"));
    drop(first);
    // Its own connections closed, the RESP3 shared ones open.
    support::wait_for("the RESP3 shared connections", async || {
        let ups = proxy.upstream_status().await;
        ups.iter().all(|u| u["dedicated"] == 0)
            && by_protocol(&old).1 == 1
            && by_protocol(&new).1 == 1
    })
    .await;
    let mut three = proxy.raw().await;
    three.send(&resp(&["HELLO", "3", "SETNAME", "app"])).await;
    let hello = String::from_utf8(three.read_replies(1).await).unwrap();
    assert!(hello.starts_with("%7\r\n"), "{hello}");
    assert!(hello.contains("$5\r\nproto\r\n:3\r\n"), "{hello}");
    let pipeline = [
        resp(&["SET", "k", "v"]),
        resp(&["HGETALL", "h"]),
        resp(&["GET", "missing"]),
        resp(&["CLIENT", "GETNAME"]),
    ]
    .concat();
    three.send(&pipeline).await;
    assert_eq!(
        three.read_replies(4).await,
        b"+OK\r\n%1\r\n$1\r\nf\r\n$1\r\nv\r\n_\r\n$3\r\napp\r\n"
    );
    // A RESP2 session beside it gets RESP2, over a RESP2 connection.
    let mut two = proxy.raw().await;
    two.send(&resp(&["HGETALL", "h"])).await;
    assert_eq!(two.read_replies(1).await, b"*2\r\n$1\r\nf\r\n$1\r\nv\r\n");
    for cache in [&old, &new] {
        assert_eq!(by_protocol(cache), (1, 1), "{}", client_list(cache));
        assert!(!client_list(cache).contains("name=app"));
    }
    // Switching back and forth in one pipeline: each reply in the
    // protocol of the HELLO before it.
    let mut both = proxy.raw().await;
    let pipeline = [
        resp(&["INCR", "n"]),
        resp(&["HELLO", "3"]),
        resp(&["HGETALL", "h"]),
        resp(&["HELLO", "2"]),
        resp(&["HGETALL", "h"]),
        resp(&["CLIENT", "GETNAME"]),
    ]
    .concat();
    both.send(&pipeline).await;
    let replies = both.read_replies(6).await;
    let text = String::from_utf8_lossy(&replies);
    assert!(text.starts_with(":1\r\n%7\r\n"), "{text}");
    let tail = b"%1\r\n$1\r\nf\r\n$1\r\nv\r\n*14\r\n";
    assert!(
        replies.windows(tail.len()).any(|w| w == tail),
        "RESP3 HGETALL then the RESP2 HELLO: {text}"
    );
    assert!(
        replies.ends_with(b"*2\r\n$1\r\nf\r\n$1\r\nv\r\n$-1\r\n"),
        "{text}"
    );
    // No session but the first (gone) needed a connection of its own.
    support::wait_for("only shared connections", async || {
        let ups = proxy.upstream_status().await;
        ups.iter()
            .all(|u| u["dedicated"] == 0 && u["shared"]["connections"] == 2)
    })
    .await;
    proxy.wait_mirrors_settled().await;
    support::assert_same_keyspace(&old, &new, 0);
}

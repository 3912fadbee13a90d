//! Client-side caching through the proxy: CLIENT TRACKING is connection
//! state on both caches, invalidation pushes pass through (never ahead of an
//! earlier reply), a flip that moves reads tells the client to flush, CLIENT
//! CACHING follows the next command, REDIRECT is refused.

mod support;

use std::time::Duration;

use cutover::routing::Phase;
use support::{config_text, exchange, RawClient, RedisServer, StallingRelay, TestProxy};

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn invalidate(key: &str) -> String {
    format!(
        ">2\r\n$10\r\ninvalidate\r\n*1\r\n${}\r\n{key}\r\n",
        key.len()
    )
}

const FLUSH: &str = ">2\r\n$10\r\ninvalidate\r\n_\r\n";

/// A RESP3 connection with tracking on (`options` after ON), replies read.
async fn tracking_client(proxy: &TestProxy, options: &str) -> RawClient {
    let mut c = proxy.raw().await;
    c.send(format!("HELLO 3\r\nCLIENT TRACKING on {options}\r\n").as_bytes())
        .await;
    c.read_until("+OK\r\n").await;
    c
}

async fn set(proxy: &TestProxy, key: &str, value: &str) {
    let mut conn = proxy.conn().await;
    let () = redis::cmd("SET")
        .arg(key)
        .arg(value)
        .query_async(&mut conn)
        .await
        .unwrap();
}

#[tokio::test]
async fn invalidations_pass_through_and_a_flip_that_moves_reads_flushes() {
    let (old, new) = support::start_pair();
    let routes = |phase| vec![("default", None, phase)];
    let proxy = TestProxy::start(&old, &new, &routes(Phase::DualWrite)).await;
    let mut a = tracking_client(&proxy, "").await;

    a.send(b"GET k\r\n").await;
    a.read_until("_\r\n").await;
    set(&proxy, "k", "1").await;
    a.read_until(&invalidate("k")).await;
    a.send(b"GET k\r\n").await;
    a.read_until("$1\r\n1\r\n").await;

    // Reads move to new: the client must drop what it cached from old.
    proxy.rewrite_config(&config_text(
        &old.addr(),
        &new.addr(),
        &routes(Phase::ReadNew),
        "",
    ));
    proxy.wait_phase("default", Phase::ReadNew).await;
    a.read_until(FLUSH).await;

    // Read from new now, so new tracks the key.
    a.send(b"GET k\r\n").await;
    a.read_until("$1\r\n1\r\n").await;
    set(&proxy, "k", "2").await;
    a.read_until(&invalidate("k")).await;
    a.send(b"GET k\r\n").await;
    a.read_until("$1\r\n2\r\n").await;
    let _ = a.read_for(Duration::from_millis(200)).await;

    // new-only reads from the same cache: no flush. Writes now reach new
    // alone, and its invalidation still arrives.
    proxy.rewrite_config(&config_text(
        &old.addr(),
        &new.addr(),
        &routes(Phase::NewOnly),
        "",
    ));
    proxy.wait_phase("default", Phase::NewOnly).await;
    let quiet = a.read_for(Duration::from_millis(300)).await;
    assert_eq!(text(&quiet), "", "no flush when reads stay on new");
    set(&proxy, "k", "3").await;
    assert_eq!(a.read_until(&invalidate("k")).await, invalidate("k"));
}

#[tokio::test]
async fn an_invalidation_never_overtakes_an_earlier_reply() {
    let (old, new) = support::start_pair();
    let relay = StallingRelay::start(new.addr()).await;
    let proxy = TestProxy::start_text(&config_text(
        &old.addr(),
        &relay.addr.to_string(),
        &[
            ("t", Some(&["t:*"]), Phase::ReadNew),
            ("default", None, Phase::OldOnly),
        ],
        "",
    ))
    .await;
    let _: () = redis::cmd("SET")
        .arg("t:1")
        .arg("T")
        .query(&mut new.sync())
        .unwrap();
    let _: () = redis::cmd("SET")
        .arg("k")
        .arg("K")
        .query(&mut old.sync())
        .unwrap();
    let mut a = tracking_client(&proxy, "").await;
    let _ = a.read_for(Duration::from_millis(200)).await;

    // GET t:1 waits on a stalled new; GET k is answered by old and tracked
    // there; k changes, and old's invalidation comes right after.
    relay.stall(true);
    a.send(b"GET t:1\r\nGET k\r\n").await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let _: () = redis::cmd("SET")
        .arg("k")
        .arg("K2")
        .query(&mut old.sync())
        .unwrap();
    let early = a.read_for(Duration::from_millis(300)).await;
    assert_eq!(text(&early), "", "nothing may reach the client yet");
    relay.stall(false);
    let got = a.read_until(&invalidate("k")).await;
    assert_eq!(got, format!("$1\r\nT\r\n$1\r\nK\r\n{}", invalidate("k")));
}

#[tokio::test]
async fn client_caching_follows_the_next_command_to_its_cache() {
    let (old, new) = support::start_pair();
    let proxy = TestProxy::start(
        &old,
        &new,
        &[
            ("t", Some(&["t:*"]), Phase::ReadNew),
            ("default", None, Phase::DualWrite),
        ],
    )
    .await;
    let mut a = tracking_client(&proxy, "OPTIN").await;

    // On old (the default route's read side), OPTIN works as in Redis.
    a.send(b"CLIENT CACHING yes\r\nGET d:0\r\n").await;
    a.read_until("+OK\r\n_\r\n").await;
    set(&proxy, "d:0", "x").await;
    a.read_until(&invalidate("d:0")).await;

    // CACHING answered by old; the read it applies to is served by new.
    a.send(b"CLIENT CACHING yes\r\nGET t:1\r\nGET d:1\r\n")
        .await;
    a.read_until("+OK\r\n_\r\n_\r\n").await;
    set(&proxy, "d:1", "x").await;
    set(&proxy, "t:1", "x").await;
    let got = a.read_until(&invalidate("t:1")).await;
    // d:1 was read without CACHING yes: nobody tracks it.
    let later = text(&a.read_for(Duration::from_millis(300)).await);
    assert!(
        !got.contains("d:1") && !later.contains("d:1"),
        "{got:?} {later:?}"
    );
}

#[tokio::test]
async fn tracking_is_replayed_on_a_connection_opened_later() {
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
    // Tracking is set while only old is connected; the read of n:1 opens
    // the connection to new, which must track it.
    let mut a = tracking_client(&proxy, "").await;
    a.send(b"GET n:1\r\n").await;
    a.read_until("_\r\n").await;
    set(&proxy, "n:1", "x").await;
    a.read_until(&invalidate("n:1")).await;
}

#[tokio::test]
async fn redirect_is_refused_and_the_rest_answers_like_redis() {
    let (old, new) = support::start_pair();
    let proxy = TestProxy::start(&old, &new, &[("default", None, Phase::DualWrite)]).await;
    let reference = RedisServer::start();
    let script = b"CLIENT TRACKING on REDIRECT 5\r\nCLIENT TRACKING on BCAST PREFIX redirect\r\nCLIENT TRACKINGINFO\r\nCLIENT GETREDIR\r\nCLIENT CACHING yes\r\nCLIENT TRACKING off\r\nCLIENT TRACKING on OPTIN\r\nCLIENT CACHING maybe\r\nCLIENT CACHING yes\r\nGET a\r\nCLIENT TRACKING on BCAST\r\nPING\r\n";
    let (want, _) = exchange(reference.addr(), script).await;
    let (got, _) = exchange(proxy.addr, script).await;
    let (got, want) = (text(&got), text(&want));
    let (first, rest) = got.split_once("\r\n").unwrap();
    assert!(
        first.starts_with("-ERR cutover does not support 'client tracking': REDIRECT"),
        "{first}"
    );
    assert_eq!(rest, want.split_once("\r\n").unwrap().1);
}

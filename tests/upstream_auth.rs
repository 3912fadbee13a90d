//! Old and new usually have different passwords. An upstream with its own
//! credentials in the config is authenticated with those only; the client's
//! AUTH goes to the side that answers it and is never forwarded to or
//! replayed on an upstream with its own credentials.

mod support;

use cutover::routing::{Phase, Side};
use redis::AsyncCommands;
use support::{RedisServer, TestProxy};

#[tokio::test]
async fn client_auth_for_old_does_not_break_new_with_its_own_password() {
    let old = RedisServer::start_with(&["--requirepass", "old-secret"]);
    let new = RedisServer::start_with(&["--requirepass", "new-secret"]);
    let text = support::Config::new(&old.addr(), &new.addr())
        .route("default", None, Phase::DualWrite)
        .upstream(Side::New, "password", "new-secret")
        .text();
    let proxy = TestProxy::start_text(&text).await;

    // The application keeps its old connection string, password included.
    let url = format!("redis://:old-secret@{}/", proxy.addr);
    let mut c = support::connect(&url).await;
    for i in 0..20 {
        let _: () = c.set(format!("k{i}"), i).await.unwrap();
    }
    // HELLO with AUTH too (RESP3 clients authenticate that way).
    let mut raw = proxy.raw().await;
    raw.send(b"HELLO 3 AUTH default old-secret\r\nSET h 1\r\n")
        .await;
    let got = raw.read_replies(2).await;
    assert!(
        got.ends_with(b"+OK\r\n") && got.starts_with(b"%"),
        "{}",
        String::from_utf8_lossy(&got)
    );
    proxy.wait_mirrors_settled().await;

    assert_eq!(proxy.stat("default", "mirror_failed"), 0);
    assert_eq!(proxy.stat("default", "mirror_errors"), 0);
    let mut n = redis::Client::open(format!("redis://:new-secret@{}/", new.addr()))
        .unwrap()
        .get_connection()
        .unwrap();
    let size: i64 = redis::cmd("DBSIZE").query(&mut n).unwrap();
    assert_eq!(size, 21, "every write reached new");

    // A wrong password is still refused: the client gets old's verdict.
    let mut bad = proxy.raw().await;
    bad.send(b"AUTH wrong\r\nGET k1\r\n").await;
    let got = bad.read_replies(2).await;
    let text = String::from_utf8_lossy(&got);
    assert!(
        text.starts_with("-WRONGPASS") && text.contains("-NOAUTH"),
        "{text}"
    );
}

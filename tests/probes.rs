//! `GET /live` and `GET /ready` (issue 18, item 6): answered without the
//! admin token; ready only while every cache some route is answered by
//! connects (a mirror down does not make the proxy unready), and ready
//! again once it comes back.

mod support;

use cutover::routing::Phase;
use support::{wait_for, Config, TestProxy};

#[tokio::test]
async fn ready_follows_the_caches_that_answer_and_needs_no_token() {
    let (mut old, mut new) = support::start_pair();
    let text = Config::new(&old.addr(), &new.addr())
        .route("default", None, Phase::DualWrite)
        .with("[admin]\ntoken = \"t0ken\"\n")
        .text();
    let proxy = TestProxy::start_text(&text).await;
    let (code, _) = proxy.admin("GET", "/status", None).await;
    assert_eq!(code, 401, "the token still guards the rest");
    let (code, body) = proxy.admin("GET", "/live", None).await;
    assert_eq!((code, body.as_str()), (200, r#"{"live":true}"#));
    let (code, body) = proxy.admin("GET", "/ready", None).await;
    assert_eq!((code, body.as_str()), (200, r#"{"ready":true}"#));
    // The mirror down: clients do not wait for it, still ready.
    new.kill();
    let (code, _) = proxy.admin("GET", "/ready", None).await;
    assert_eq!(code, 200);
    // Old answers every command in dual-write: not ready without it.
    old.kill();
    let (code, body) = proxy.admin("GET", "/ready", None).await;
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("upstream old unreachable"), "{body}");
    let (code, _) = proxy.admin("GET", "/live", None).await;
    assert_eq!(code, 200);
    old.restart();
    new.restart();
    wait_for("ready again once old is back", async || {
        proxy.admin("GET", "/ready", None).await.0 == 200
    })
    .await;
}

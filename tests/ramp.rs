//! Gradual cutover by key hash: a `read-new` route with `ramp_percent`
//! serves that share of its keys (by hash slot) from new and keeps the rest
//! on `dual-write`, the same way for every command on a key.

mod support;

use cutover::routing::slot::key_slot;
use cutover::routing::Phase;
use support::{RedisServer, TestProxy};

const KEYS: usize = 2000;

fn fill(server: &RedisServer, value: &str) {
    let mut c = server.sync();
    let mut pipe = redis::pipe();
    for i in 0..KEYS {
        pipe.cmd("SET").arg(format!("k{i}")).arg(value).ignore();
    }
    let _: () = pipe.query(&mut c).unwrap();
}

/// Which cache served each key's GET through the proxy.
async fn served_from_new(proxy: &TestProxy) -> Vec<bool> {
    let mut c = proxy.conn().await;
    let mut pipe = redis::pipe();
    for i in 0..KEYS {
        pipe.cmd("GET").arg(format!("k{i}"));
    }
    let values: Vec<String> = pipe.query_async(&mut c).await.unwrap();
    values.iter().map(|v| v == "new").collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_30_percent_ramp_serves_30_percent_of_keys_from_new_consistently() {
    let (old, new) = support::start_pair();
    fill(&old, "old");
    fill(&new, "new");
    let proxy = TestProxy::start(&old, &new, &[("default", None, Phase::DualWrite)]).await;
    assert!(served_from_new(&proxy).await.iter().all(|n| !n));

    let (code, body) = proxy
        .admin(
            "PUT",
            "/routes/default/phase",
            Some(r#"{"phase": "read-new", "ramp_percent": 30}"#),
        )
        .await;
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("\"ramp_percent\":30"), "{body}");
    let first = served_from_new(&proxy).await;
    let share = first.iter().filter(|n| **n).count() as f64 / KEYS as f64;
    assert!((0.25..=0.35).contains(&share), "{share} of keys from new");
    // The key's hash slot decides, the same on every read.
    for (i, from_new) in first.iter().enumerate() {
        let slot = usize::from(key_slot(format!("k{i}").as_bytes()));
        assert_eq!(*from_new, slot * 100 < 30 * 16384, "k{i} (slot {slot})");
    }
    assert_eq!(served_from_new(&proxy).await, first);

    // Writes follow the key's side: each key reads back its own write, and
    // both caches get it (dual-write and read-new both mirror).
    let mut c = proxy.conn().await;
    for i in 0..50 {
        let _: () = redis::cmd("SET")
            .arg(format!("k{i}"))
            .arg("w")
            .query_async(&mut c)
            .await
            .unwrap();
        let v: String = redis::cmd("GET")
            .arg(format!("k{i}"))
            .query_async(&mut c)
            .await
            .unwrap();
        assert_eq!(v, "w");
    }
    proxy.wait_mirrors_settled().await;
    for server in [&old, &new] {
        let v: String = redis::cmd("GET")
            .arg("k7")
            .query(&mut server.sync())
            .unwrap();
        assert_eq!(v, "w");
    }

    // Keys on both sides of the ramp cannot be served by one cache; a hash
    // tag keeps keys together.
    let a = (0..KEYS).find(|&i| first[i]).unwrap();
    let b = (0..KEYS).find(|&i| !first[i]).unwrap();
    let err = redis::cmd("MGET")
        .arg(format!("k{a}"))
        .arg(format!("k{b}"))
        .query_async::<Vec<Option<String>>>(&mut c)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("CROSSROUTE"), "{err}");
    let _: Vec<Option<String>> = redis::cmd("MGET")
        .arg("{user1}:a")
        .arg("{user1}:b")
        .query_async(&mut c)
        .await
        .unwrap();

    // Changing the percentage is a flip like any other.
    let (code, body) = proxy
        .admin(
            "PUT",
            "/routes/default/phase",
            Some(r#"{"phase": "read-new", "ramp_percent": 100}"#),
        )
        .await;
    assert_eq!(code, 200, "{body}");
    let all = served_from_new(&proxy).await;
    assert!(all[50..].iter().all(|n| *n));
    let (code, _) = proxy
        .admin(
            "PUT",
            "/routes/default/phase",
            Some(r#"{"phase": "read-new", "ramp_percent": 101}"#),
        )
        .await;
    assert_eq!(code, 400);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ramp_from_the_config_file_survives_a_restart_and_shows_in_status() {
    let (old, new) = support::start_pair();
    let text = support::config_text(
        &old.addr(),
        &new.addr(),
        &[],
        "[[routes]]\nname = \"default\"\nphase = \"read-new\"\nramp_percent = 10\n",
    );
    let mut proxy = TestProxy::start_text(&text).await;
    let (_, body) = proxy.admin("GET", "/status", None).await;
    assert!(body.contains("\"ramp_percent\":10"), "{body}");
    proxy
        .admin(
            "PUT",
            "/routes/default/phase",
            Some(r#"{"phase": "read-new", "ramp_percent": 50}"#),
        )
        .await;
    proxy.restart().await;
    let (_, body) = proxy.admin("GET", "/status", None).await;
    assert!(body.contains("\"ramp_percent\":50"), "{body}");
    assert!(body.contains("\"source\":\"admin\""), "{body}");
}

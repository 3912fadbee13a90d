//! Hot routing changes: by file change and by SIGHUP, mid-connection, and a
//! rollback that loses nothing.

mod support;

use std::time::Duration;

use cutover::config::Settings;
use cutover::routing::Phase;
use cutover::Proxy;
use redis::AsyncCommands;
use support::{config_text, get, write_atomically, TestProxy};

fn routes(phase: Phase) -> Vec<support::RouteSpec<'static>> {
    vec![
        ("k", Some(&["k:*"][..]), phase),
        ("default", None, Phase::OldOnly),
    ]
}

#[tokio::test]
async fn file_change_flips_mid_connection() {
    let (old, new) = support::start_pair();
    let proxy = TestProxy::start(&old, &new, &routes(Phase::DualWrite)).await;
    let _: () = redis::cmd("SET")
        .arg("k:read")
        .arg("from-old")
        .query(&mut old.sync())
        .unwrap();
    let _: () = redis::cmd("SET")
        .arg("k:read")
        .arg("from-new")
        .query(&mut new.sync())
        .unwrap();

    let mut c = proxy.conn().await;
    let _: () = c.set("k:mine", "written-in-dual-write").await.unwrap();
    let before: String = c.get("k:read").await.unwrap();
    assert_eq!(before, "from-old");

    proxy.rewrite_config(&config_text(
        &old.addr(),
        &new.addr(),
        &routes(Phase::ReadNew),
        "",
    ));
    proxy.wait_phase("k", Phase::ReadNew).await;

    // Same connection, now served by new: and it sees its own earlier write.
    let after: String = c.get("k:read").await.unwrap();
    assert_eq!(after, "from-new");
    let mine: String = c.get("k:mine").await.unwrap();
    assert_eq!(mine, "written-in-dual-write");
}

#[tokio::test]
async fn rollback_loses_nothing() {
    let (old, new) = support::start_pair();
    let proxy = TestProxy::start(&old, &new, &routes(Phase::DualWrite)).await;
    let text = |p| config_text(&old.addr(), &new.addr(), &routes(p), "");
    let mut c = proxy.conn().await;
    let mut written = Vec::new();
    for (round, phase) in [
        Phase::DualWrite,
        Phase::ReadNew,
        Phase::DualWrite,
        Phase::ReadNew,
        Phase::DualWrite,
    ]
    .into_iter()
    .enumerate()
    {
        proxy.rewrite_config(&text(phase));
        proxy.wait_phase("k", phase).await;
        for i in 0..50 {
            let key = format!("k:{round}:{i}");
            let _: () = c.set(&key, i).await.unwrap();
            let _: i64 = c.incr("k:counter", 1).await.unwrap();
            written.push(key);
        }
        // Every key written so far reads back, whichever side serves reads.
        for key in &written {
            let v: Option<String> = c.get(key).await.unwrap();
            assert!(v.is_some(), "{key} lost after flip to {phase}");
        }
        let n: i64 = c.get("k:counter").await.unwrap();
        assert_eq!(n, written.len() as i64, "counter after flip to {phase}");
    }
    proxy.wait_mirrors_settled().await;
    let (mut o, mut n) = (old.sync(), new.sync());
    for key in &written {
        assert!(get(&mut o, key).is_some(), "{key} missing on old");
        assert!(get(&mut n, key).is_some(), "{key} missing on new");
    }
    assert_eq!(get(&mut o, "k:counter"), get(&mut n, "k:counter"));
}

#[tokio::test]
async fn invalid_file_keeps_the_running_table() {
    let (old, new) = support::start_pair();
    let proxy = TestProxy::start(&old, &new, &routes(Phase::DualWrite)).await;
    let mut c = proxy.conn().await;
    let good = config_text(&old.addr(), &new.addr(), &routes(Phase::ReadNew), "");
    proxy.rewrite_config(&good.replace("phase = \"read-new\"", "phase = \"read_new\""));
    // Once the proxy has read it and turned it down, the table is the same.
    let control = &proxy.proxy.as_ref().unwrap().shared().control;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while control.reloads().rejected == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the invalid file was never read"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(proxy.phase("k"), Phase::DualWrite);
    assert_eq!(control.reloads().applied, 0);
    let _: () = c.set("k:still", "serving").await.unwrap();
    // A later valid file is picked up.
    proxy.rewrite_config(&good);
    proxy.wait_phase("k", Phase::ReadNew).await;
}

#[tokio::test]
async fn sighup_reloads() {
    let (old, new) = support::start_pair();
    // The proxy's config path is a symlink into another directory, so editing
    // the real file fires no watch event: only SIGHUP can pick it up.
    let (link_dir, real_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let real = real_dir.path().join("real.toml");
    let link = link_dir.path().join("cutover.toml");
    std::fs::write(
        &real,
        config_text(&old.addr(), &new.addr(), &routes(Phase::DualWrite), ""),
    )
    .unwrap();
    std::os::unix::fs::symlink(&real, &link).unwrap();
    support::init_tracing();
    let proxy = Proxy::start(Settings::load(&link).unwrap(), Some(link.clone()))
        .await
        .unwrap();
    let phase = || proxy.shared().router.current().routes[0].phase;

    let mut c = redis::Client::open(format!("redis://{}/", proxy.local_addr()))
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let _: () = c.set("k:a", "1").await.unwrap();

    write_atomically(
        &real,
        &config_text(&old.addr(), &new.addr(), &routes(Phase::ReadNew), ""),
    );
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(phase(), Phase::DualWrite, "no reload without the signal");

    let status = std::process::Command::new("kill")
        .args(["-HUP", &std::process::id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    for _ in 0..200 {
        if phase() == Phase::ReadNew {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(phase(), Phase::ReadNew);
    assert_eq!(
        proxy.shared().control.reloads().applied,
        1,
        "one reload, the signal's: the edit itself fired none"
    );
    // The connection carries on under the new table.
    let v: String = c.get("k:a").await.unwrap();
    assert_eq!(v, "1");
    proxy.shutdown().await;
}

//! The `cutover serve` binary as operators run it: a real process, real
//! signals.

mod support;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use cutover::routing::Phase;
use redis::AsyncCommands;
use support::get;

#[tokio::test]
async fn sigterm_drains_in_flight_writes_and_exits_zero() {
    let (old, new) = support::start_pair();
    let port = support::free_port();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cutover.toml");
    let text = support::config_text(
        &old.addr(),
        &new.addr(),
        &[("default", None, Phase::DualWrite)],
        "",
    )
    .replacen(
        "address = \"127.0.0.1:0\"",
        &format!("address = \"127.0.0.1:{port}\""),
        1,
    );
    std::fs::write(&path, text).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_cutover"))
        .args(["serve", "--config", path.to_str().unwrap(), "--log", "info"])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let url = format!("redis://127.0.0.1:{port}/");
    let deadline = Instant::now() + Duration::from_secs(10);
    let client = redis::Client::open(url).unwrap();
    let mut c = loop {
        match client.get_multiplexed_async_connection().await {
            Ok(c) => break c,
            Err(_) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await
            }
            Err(e) => panic!("proxy never came up: {e}"),
        }
    };

    // Writers keep going while the signal arrives; each counts what was
    // acknowledged.
    let mut writers = Vec::new();
    for w in 0..4 {
        let mut c = client.get_multiplexed_async_connection().await.unwrap();
        writers.push(tokio::spawn(async move {
            let mut acked = Vec::new();
            for i in 0..100_000 {
                let key = format!("w{w}:{i}");
                match c.set::<_, _, ()>(&key, i).await {
                    Ok(()) => acked.push(key),
                    Err(_) => break,
                }
            }
            acked
        }));
    }
    let _: () = c.set("before", "1").await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let pid = child.id().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());

    let started = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "proxy did not exit after SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(status.success(), "exit status {status:?}");
    let mut stderr = String::new();
    std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut stderr).unwrap();
    assert!(
        stderr.contains("SIGTERM") && stderr.contains("route counters at shutdown"),
        "{stderr}"
    );

    let mut acked = vec!["before".to_string()];
    for w in writers {
        acked.extend(w.await.unwrap());
    }
    assert!(
        acked.len() > 100,
        "the writers made progress: {}",
        acked.len()
    );
    let (mut o, mut n) = (old.sync(), new.sync());
    for key in &acked {
        assert!(
            get(&mut o, key).is_some(),
            "{key} acknowledged but missing on old"
        );
        assert!(
            get(&mut n, key).is_some(),
            "{key} acknowledged but missing on new"
        );
    }
}

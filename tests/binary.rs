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
        &format!("[listen]\naddress = \"127.0.0.1:{port}\""),
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

    // Writers keep going while the signal arrives, 50 writes in flight at
    // a time; each counts what was acknowledged, and how it stopped.
    let mut writers = Vec::new();
    for w in 0..4 {
        let mut c = client.get_multiplexed_async_connection().await.unwrap();
        writers.push(tokio::spawn(async move {
            let mut acked = Vec::new();
            for round in 0..2_000 {
                let keys: Vec<String> = (0..50).map(|i| format!("w{w}:{round}:{i}")).collect();
                let mut pipe = redis::pipe();
                for k in &keys {
                    pipe.set(k, round);
                }
                match pipe.query_async::<()>(&mut c).await {
                    Ok(()) => acked.extend(keys),
                    Err(e) => return (acked, Some(e)),
                }
            }
            (acked, None)
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
        let (keys, stopped) = w.await.unwrap();
        acked.extend(keys);
        // A write the proxy had read is answered, never failed: a writer
        // stops only when the connection closes.
        if let Some(e) = stopped {
            assert!(
                e.is_io_error() || e.is_connection_dropped() || e.is_unrecoverable_error(),
                "a write was answered with an error during the drain: {e}"
            );
        }
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

/// Writers that reconnect whenever their connection drops: keys of the
/// writes the proxy acknowledged.
async fn reconnecting_writer(
    url: String,
    w: usize,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> Vec<String> {
    let client = redis::Client::open(url).unwrap();
    let mut acked = Vec::new();
    let mut conn = None;
    let mut i = 0u64;
    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        let c = match &mut conn {
            Some(c) => c,
            None => match client.get_multiplexed_async_connection().await {
                Ok(c) => conn.insert(c),
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
            },
        };
        let key = format!("r{w}:{i}");
        match c.set::<_, _, ()>(&key, i).await {
            Ok(()) => {
                acked.push(key);
                i += 1;
            }
            // The proxy went away: the write may or may not have landed;
            // only acknowledged ones are checked. Reconnect.
            Err(_) => conn = None,
        }
    }
    acked
}

#[tokio::test]
async fn restart_under_load_loses_no_acknowledged_write() {
    let (old, new) = support::start_pair();
    let text = support::config_text(
        &old.addr(),
        &new.addr(),
        &[("default", None, Phase::DualWrite)],
        "",
    );
    let mut proxy = support::Served::start(&text, &[]).await;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writers: Vec<_> = (0..4)
        .map(|w| tokio::spawn(reconnecting_writer(proxy.url(), w, stop.clone())))
        .collect();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let status = proxy.restart("TERM").await;
    assert!(status.success(), "SIGTERM exit status {status}");
    // The writers found the new process and go on; then a crash.
    tokio::time::sleep(Duration::from_millis(700)).await;
    proxy.restart("KILL").await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut acked = Vec::new();
    for w in writers {
        acked.extend(w.await.unwrap());
    }
    assert!(
        acked.len() > 200,
        "writers made progress across restarts: {}",
        acked.len()
    );
    let (mut o, mut n) = (old.sync(), new.sync());
    let missing_old: Vec<_> = acked.iter().filter(|k| get(&mut o, k).is_none()).collect();
    assert!(
        missing_old.is_empty(),
        "acknowledged but not on old: {missing_old:?}"
    );
    // The mirror: what the crash left unmirrored (writes acknowledged by
    // old whose mirrored half was in flight) is what verify --repair is
    // for, as the runbook says after a crash.
    let settings = cutover::config::Settings::load(&proxy.config).unwrap();
    let repair = cutover::tools::verify::Options {
        repair: true,
        ..Default::default()
    };
    cutover::tools::verify::run(
        &mut cutover::tools::Caches::new(&settings).unwrap(),
        &repair,
    )
    .await
    .unwrap();
    let missing_new: Vec<_> = acked.iter().filter(|k| get(&mut n, k).is_none()).collect();
    assert!(
        missing_new.is_empty(),
        "acknowledged but not on new: {missing_new:?}"
    );
    support::assert_same_keyspace(&old, &new, 1000);
}

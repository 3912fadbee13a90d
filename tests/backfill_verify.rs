//! `cutover backfill` and `cutover verify` (standalone) against real
//! redis-servers.

mod support;

use cutover::config::Settings;
use cutover::routing::Phase;
use cutover::tools::{backfill, verify, Caches};
use support::{config_text, populate, RedisServer};

fn settings(old: &RedisServer, new: &RedisServer) -> (Settings, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cutover.toml");
    let text = config_text(
        &old.addr(),
        &new.addr(),
        &[
            ("sessions", Some(&["sess:*"][..]), Phase::DualWrite),
            ("default", None, Phase::DualWrite),
        ],
        "",
    );
    std::fs::write(&path, text).unwrap();
    (Settings::load(&path).unwrap(), dir)
}

fn dbsize(server: &RedisServer) -> i64 {
    redis::cmd("DBSIZE").query(&mut server.sync()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_thousand_keys_backfill_and_verify_equal() {
    let (old, new) = support::start_pair();
    populate(&old, 100_000);
    let (settings, _dir) = settings(&old, &new);
    let mut caches = Caches::new(&settings);
    let before = verify::run(&mut caches, &verify::Options::default())
        .await
        .unwrap();
    assert!(!before.equal);
    assert_eq!(before.differences.get("missing"), Some(&100_000));

    let report = backfill::run(&mut caches, &backfill::Options::default())
        .await
        .unwrap();
    assert_eq!(report.counts.copied, 100_000, "{report:?}");
    assert_eq!(report.counts.failed, 0);
    assert_eq!(dbsize(&new), 100_000);
    // Full verify, TTLs within 1 s.
    let after = verify::run(&mut caches, &verify::Options::default())
        .await
        .unwrap();
    assert!(after.equal, "{}", after.render());
    assert_eq!(after.keys, 100_000);
    // A second run copies nothing: every key is already on new.
    let again = backfill::run(&mut caches, &backfill::Options::default())
        .await
        .unwrap();
    assert_eq!((again.counts.copied, again.counts.existed), (0, 100_000));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backfill_stopped_halfway_resumes_from_its_cursor() {
    let (old, new) = support::start_pair();
    populate(&old, 20_000);
    let (settings, dir) = settings(&old, &new);
    let mut caches = Caches::new(&settings);
    let opts = backfill::Options {
        batch: 1000,
        cursor_file: Some(dir.path().join("cursor.json")),
        stop_after_batches: Some(8),
        ..Default::default()
    };
    let first = backfill::run(&mut caches, &opts).await.unwrap();
    assert!(first.interrupted);
    assert!(dir.path().join("cursor.json").exists());
    let copied_first = first.counts.copied;
    assert!(copied_first > 0 && copied_first < 20_000, "{copied_first}");
    // A new process (new connections) picks up where it stopped.
    let mut caches = Caches::new(&settings);
    let rest = backfill::run(
        &mut caches,
        &backfill::Options {
            stop_after_batches: None,
            ..opts
        },
    )
    .await
    .unwrap();
    assert!(rest.resumed && !rest.interrupted);
    assert!(
        !dir.path().join("cursor.json").exists(),
        "removed when done"
    );
    // Counts carry over; SCAN may return a key twice, never 2x the keys.
    assert!(rest.counts.scanned < 40_000, "{:?}", rest.counts);
    assert_eq!(dbsize(&new), 20_000);
    let v = verify::run(&mut caches, &verify::Options::default())
        .await
        .unwrap();
    assert!(v.equal, "{}", v.render());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_finds_each_planted_difference_and_repairs_them() {
    let (old, new) = support::start_pair();
    populate(&old, 1000);
    let (settings, _dir) = settings(&old, &new);
    let mut caches = Caches::new(&settings);
    backfill::run(&mut caches, &backfill::Options::default())
        .await
        .unwrap();
    new.run(&["DEL", "s6"]); // missing on new
    new.run(&["SET", "only-new", "1"]); // extra
    new.run(&["DEL", "s7"]);
    new.run(&["RPUSH", "s7", "a"]); // type
    new.run(&["HSET", "h10", "a", "changed"]); // value (TTL kept)
    new.run(&["PERSIST", "s8"]); // ttl: persistent on new only
    new.run(&["EXPIRE", "sess:15", "50000"]); // ttl: 50 s vs none
    let report = verify::run(&mut caches, &verify::Options::default())
        .await
        .unwrap();
    assert!(!report.equal);
    let count = |k: &str| report.differences.get(k).copied().unwrap_or(0);
    assert_eq!(
        (
            count("missing"),
            count("extra"),
            count("type"),
            count("value"),
            count("ttl")
        ),
        (1, 1, 1, 1, 2),
        "{}",
        report.render()
    );
    assert_eq!(report.samples["value"], ["h10"]);
    // Quick mode sees all but the value difference.
    let quick = verify::run(
        &mut caches,
        &verify::Options {
            quick: true,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(quick.differences.get("value"), None);
    assert_eq!(
        quick.differences.values().sum::<u64>(),
        5,
        "{}",
        quick.render()
    );
    // --repair copies old's side (authoritative in dual-write) over them.
    let repaired = verify::run(
        &mut caches,
        &verify::Options {
            repair: true,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(repaired.repaired, 6);
    assert!(repaired.equal, "{}", repaired.render());
    let again = verify::run(&mut caches, &verify::Options::default())
        .await
        .unwrap();
    assert!(again.equal, "{}", again.render());
}

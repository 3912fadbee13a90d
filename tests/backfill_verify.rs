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
    let mut caches = Caches::new(&settings).unwrap();
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
    let mut caches = Caches::new(&settings).unwrap();
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
    let mut caches = Caches::new(&settings).unwrap();
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
    // Resumed from the cursor, not from the start: a scan from 0 would have
    // met every key the first run copied as already on new.
    assert!(
        rest.counts.existed * 10 < copied_first,
        "existed {} of {copied_first} copied before: {:?}",
        rest.counts.existed,
        rest.counts
    );
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
    let mut caches = Caches::new(&settings).unwrap();
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

/// Keys over 1 MiB are compared in chunks (never read whole), and a
/// difference deep inside each is still found.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn big_keys_are_compared_in_chunks() {
    let (old, new) = support::start_pair();
    let mut c = old.sync();
    let n = 40_000;
    let items: Vec<String> = (0..n)
        .map(|i| format!("member-{i:08}-with-some-padding"))
        .collect();
    for chunk in items.chunks(5000) {
        let mut p = redis::pipe();
        p.cmd("RPUSH").arg("big:list").arg(chunk).ignore();
        p.cmd("SADD").arg("big:set").arg(chunk).ignore();
        let mut h = redis::cmd("HSET");
        h.arg("big:hash");
        let mut z = redis::cmd("ZADD");
        z.arg("big:zset");
        for (i, m) in chunk.iter().enumerate() {
            h.arg(m).arg(i);
            z.arg(i).arg(m);
        }
        p.add_command(h).ignore();
        p.add_command(z).ignore();
        for m in chunk {
            p.cmd("XADD")
                .arg("big:stream")
                .arg("*")
                .arg("f")
                .arg(m)
                .ignore();
        }
        let _: () = p.query(&mut c).unwrap();
    }
    let _: () = redis::cmd("SET")
        .arg("big:string")
        .arg("x".repeat(3 << 20))
        .query(&mut c)
        .unwrap();
    let (settings, _dir) = settings(&old, &new);
    let mut caches = Caches::new(&settings).unwrap();
    backfill::run(&mut caches, &backfill::Options::default())
        .await
        .unwrap();
    let same = verify::run(&mut caches, &verify::Options::default())
        .await
        .unwrap();
    assert!(same.equal, "{}", same.render());
    assert_eq!(same.streamed, 6, "{}", same.render());

    // One change deep inside each.
    new.run(&["LSET", "big:list", "30000", "changed"]);
    new.run(&["SREM", "big:set", "member-00031000-with-some-padding"]);
    new.run(&["SADD", "big:set", "another"]);
    new.run(&[
        "HSET",
        "big:hash",
        "member-00032000-with-some-padding",
        "changed",
    ]);
    new.run(&[
        "ZADD",
        "big:zset",
        "0.5",
        "member-00033000-with-some-padding",
    ]);
    new.run(&["SETRANGE", "big:string", "3000000", "y"]);
    // A stream entry in the middle replaced by one at the end: same length.
    let middle: Vec<redis::Value> = redis::cmd("XRANGE")
        .arg("big:stream")
        .arg("-")
        .arg("+")
        .arg("COUNT")
        .arg(20_000)
        .query(&mut new.sync())
        .unwrap();
    let redis::Value::Array(entry) = &middle[19_999] else {
        panic!("{:?}", middle.last())
    };
    let redis::Value::BulkString(id) = &entry[0] else {
        panic!("{entry:?}")
    };
    new.run(&["XDEL", "big:stream", std::str::from_utf8(id).unwrap()]);
    new.run(&["XADD", "big:stream", "*", "f", "changed"]);
    let differ = verify::run(&mut caches, &verify::Options::default())
        .await
        .unwrap();
    assert_eq!(
        differ.differences.get("value"),
        Some(&6),
        "{}",
        differ.render()
    );
    assert_eq!(differ.differences.values().sum::<u64>(), 6);
}

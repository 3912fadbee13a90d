//! Randomized model run: seeded mixed workloads from concurrent clients go
//! through the proxy in `dual-write` and in `read-new`, starting from empty
//! caches; at the end every key on old and new must be identical (type,
//! value, TTL within a tolerance).
//!
//! Each client writes in its own keyspace, plus one shared counter touched
//! only by INCRBY (commutes) and watched by transactions, so WATCH conflicts
//! happen, plus one shared queue that client 0 feeds and the others block
//! on (BLPOP, BLMOVE). A pop served by another client's push races it on
//! the mirror (each client has its own mirror connection, DESIGN point 2):
//! the popper's mirrored LPOP can reach the mirror before the feeder's
//! mirrored RPUSH. When it does, the effect's reply check catches it and the
//! key is copied once the RPUSH was answered (`src/repair/inflight.rs`);
//! whether a given seed races is up to the scheduler, so this run asserts
//! what must hold either way (the caches end identical) and prints the
//! mismatches and copies it saw. `effects.rs`
//! (`a_pop_the_mirror_cannot_repeat_is_caught_and_the_key_copied`) shows
//! the check catching such a pop every time.
//!
//! `CUTOVER_MODEL_SEEDS` (default 3) and `CUTOVER_MODEL_OPS` (per client,
//! default 150) make the long version; `CUTOVER_MODEL_SEED` runs one seed.
//!
//! A second run flips the route between `dual-write` and `read-new` under
//! consumers blocked on one queue, a producer and transactions on keys that
//! existed on old only: each job reaches one consumer, and the caches end
//! identical.

mod support;

use std::time::Duration;

use cutover::routing::Phase;
use support::{assert_same_keyspace, Rng, TestProxy};

const CLIENTS: usize = 3;

const SCRIPT: &str =
    "redis.call('HINCRBY', KEYS[1], 'n', 1); return redis.call('RPUSH', KEYS[2], ARGV[1])";

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// One random command of client `me`.
fn random_command(rng: &mut Rng, me: usize, sha: &str) -> Vec<redis::Cmd> {
    let k = |rng: &mut Rng, kind: &str| format!("c{me}:{kind}:{}", rng.below(4));
    let v = |rng: &mut Rng| format!("v{}", rng.below(1000));
    let c = |name: &str| redis::cmd(name);
    let one = |cmd: &mut redis::Cmd| vec![cmd.clone()];
    match rng.below(29) {
        0 => one(c("SET").arg(k(rng, "s")).arg(v(rng))),
        1 => one(c("INCRBY").arg(k(rng, "n")).arg(rng.below(10))),
        2 => one(c("APPEND").arg(k(rng, "s")).arg(v(rng))),
        3 => one(c("PEXPIRE")
            .arg(k(rng, "s"))
            .arg(100_000 + rng.below(100_000))),
        4 => one(c("DEL").arg(k(rng, "s"))),
        5 => one(c("HSET").arg(k(rng, "h")).arg(v(rng)).arg(v(rng))),
        6 => one(c("HINCRBY").arg(k(rng, "h")).arg("n").arg(rng.below(5))),
        7 => one(c("HDEL").arg(k(rng, "h")).arg(v(rng))),
        8 => one(c("LPUSH").arg(k(rng, "l")).arg(v(rng)).arg(v(rng))),
        9 => one(c("RPOP").arg(k(rng, "l"))),
        10 => one(c("BLMOVE")
            .arg(k(rng, "l"))
            .arg(k(rng, "l"))
            .arg("LEFT")
            .arg("RIGHT")
            .arg(0.01)),
        11 => one(c("SADD")
            .arg(k(rng, "set"))
            .arg(v(rng))
            .arg(v(rng))
            .arg(v(rng))),
        12 => one(c("SPOP").arg(k(rng, "set")).arg(1 + rng.below(2))),
        13 => one(c("SREM").arg(k(rng, "set")).arg(v(rng))),
        14 => one(c("ZADD").arg(k(rng, "z")).arg(rng.below(100)).arg(v(rng))),
        15 => one(c("ZINCRBY").arg(k(rng, "z")).arg(1).arg(v(rng))),
        16 => one(c("BZPOPMIN").arg(k(rng, "z")).arg(0.01)),
        17 => one(c("XADD")
            .arg(k(rng, "x"))
            .arg("MAXLEN")
            .arg("=")
            .arg(20)
            .arg("*")
            .arg("f")
            .arg(v(rng))),
        18 => one(c("EVAL")
            .arg(SCRIPT)
            .arg(2)
            .arg(k(rng, "h"))
            .arg(k(rng, "l"))
            .arg(v(rng))),
        19 => one(c("EVALSHA")
            .arg(sha)
            .arg(2)
            .arg(k(rng, "h"))
            .arg(k(rng, "l"))
            .arg(v(rng))),
        20 => one(c("PUBLISH").arg(format!("c{me}:chan")).arg(v(rng))),
        // Shared keys: commuting operations only.
        21 => one(c("INCRBY").arg("shared:counter").arg(1 + rng.below(3))),
        22 => one(c("RPUSH").arg(k(rng, "l")).arg(v(rng))),
        23 => one(c("BLPOP").arg(k(rng, "l")).arg(k(rng, "l")).arg(0.02)),
        24 => {
            // A transaction, watching the shared counter that other
            // clients bump: some EXECs abort.
            let mut cmds = Vec::new();
            let watch = rng.below(2) == 0;
            if watch {
                cmds.push(c("WATCH").arg("shared:counter").clone());
            }
            cmds.push(c("MULTI").clone());
            cmds.push(c("INCR").arg(k(rng, "n")).clone());
            cmds.push(c("SPOP").arg(k(rng, "set")).clone());
            cmds.push(c("RPUSH").arg(k(rng, "l")).arg(v(rng)).clone());
            cmds.push(
                c("XADD")
                    .arg(k(rng, "x"))
                    .arg("*")
                    .arg("tx")
                    .arg(v(rng))
                    .clone(),
            );
            cmds.push(c("EXEC").clone());
            cmds
        }
        // A queue shared by all clients: client 0 feeds it, the others
        // block on it, so pops are served by another client's push.
        26 | 27 if me == 0 => one(c("RPUSH").arg("shared:q").arg(rng.next())),
        26 => one(c("BLPOP").arg("shared:q").arg(0.05)),
        27 => one(c("BLMOVE")
            .arg("shared:q")
            .arg(k(rng, "l"))
            .arg("LEFT")
            .arg("RIGHT")
            .arg(0.05)),
        _ => one(c("SETEX").arg(k(rng, "s")).arg(1000).arg(v(rng))),
    }
}

async fn client(
    proxy_url: String,
    seed: u64,
    me: usize,
    ops: u64,
    sha: String,
    ready: std::sync::Arc<tokio::sync::Barrier>,
) {
    let mut rng = Rng(seed ^ (0x9E37_79B9_7F4A_7C15u64.wrapping_mul(me as u64 + 1)) | 1);
    let client = redis::Client::open(proxy_url).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    // Every client opens its upstream connections, then all start at once.
    let _: () = redis::cmd("SET")
        .arg(format!("c{me}:warm"))
        .arg(1)
        .query_async(&mut conn)
        .await
        .unwrap();
    ready.wait().await;
    let mut done = 0;
    while done < ops {
        // A pipeline of random length.
        let len = 1 + rng.below(8);
        let mut pipe = redis::pipe();
        for _ in 0..len {
            for cmd in random_command(&mut rng, me, &sha) {
                pipe.add_command(cmd);
            }
        }
        done += len;
        let r: redis::RedisResult<redis::Value> = pipe.query_async(&mut conn).await;
        if let Err(e) = r {
            panic!("client {me}, seed {seed}: {e}");
        }
    }
}

async fn run(seed: u64, phase: Phase, ops: u64) {
    let (old, new) = support::start_pair();
    let proxy = TestProxy::start(&old, &new, &[("default", None, phase)]).await;
    let mut c = proxy.conn().await;
    // SCRIPT LOAD goes to both caches in a dual phase.
    let sha: String = redis::cmd("SCRIPT")
        .arg("LOAD")
        .arg(SCRIPT)
        .query_async(&mut c)
        .await
        .unwrap();
    let ready = std::sync::Arc::new(tokio::sync::Barrier::new(CLIENTS));
    let tasks: Vec<_> = (0..CLIENTS)
        .map(|me| {
            tokio::spawn(client(
                proxy.url(),
                seed,
                me,
                ops,
                sha.clone(),
                ready.clone(),
            ))
        })
        .collect();
    for t in tasks {
        tokio::time::timeout(Duration::from_secs(120), t)
            .await
            .unwrap_or_else(|_| panic!("seed {seed}: clients did not finish"))
            .unwrap_or_else(|e| panic!("seed {seed} {phase}: {e}"));
    }
    proxy.wait_mirrors_settled().await;
    assert_eq!(proxy.stat("default", "mirror_failed"), 0, "seed {seed}");
    assert_eq!(proxy.stat("default", "repair_failed"), 0, "seed {seed}");
    eprintln!(
        "seed {seed} {phase}: {} compared, {} mismatches, {} keys copied",
        proxy.stat("default", "compared"),
        proxy.stat("default", "mismatches"),
        proxy.stat("default", "repaired")
    );
    let result = std::panic::catch_unwind(|| assert_same_keyspace(&old, &new, 2000));
    if let Err(e) = result {
        eprintln!("model run failed: seed {seed}, phase {phase}, {ops} ops per client (rerun with CUTOVER_MODEL_SEED={seed})");
        std::panic::resume_unwind(e);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_workloads_leave_old_and_new_identical() {
    let ops = env("CUTOVER_MODEL_OPS", 150);
    let seeds: Vec<u64> = match std::env::var("CUTOVER_MODEL_SEED") {
        Ok(s) => vec![s.parse().expect("CUTOVER_MODEL_SEED is a number")],
        Err(_) => (1..=env("CUTOVER_MODEL_SEEDS", 3))
            .map(|i| i * 7919)
            .collect(),
    };
    for seed in seeds {
        for phase in [Phase::DualWrite, Phase::ReadNew] {
            run(seed, phase, ops).await;
        }
    }
}

/// Flips under load (issue 16): consumers blocked on one queue, fed
/// through cutover in batches by two producers, while the route flips
/// between `dual-write` and `read-new` between batches, both ways (the
/// next batch pushed as soon as the flip returns);
/// transactions run throughout on keys that existed on old only before
/// the migration (copied once a compared transaction showed new lacked
/// them). Every job reaches exactly one consumer, and old and new end
/// identical.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flips_under_consumers_and_transactions_leave_old_and_new_identical() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, Mutex};
    const JOBS: usize = 200;
    const CONSUMERS: usize = 3;
    let (old, new) = support::start_pair();
    // Before the migration: counters on old only.
    for me in 0..2 {
        for i in 0..4 {
            let _: () = redis::cmd("SET")
                .arg(format!("t{me}:pre:{i}"))
                .arg(10)
                .query(&mut old.sync())
                .unwrap();
        }
    }
    let config = |phase: Phase| {
        support::config_text(&old.addr(), &new.addr(), &[("default", None, phase)], "")
    };
    let proxy = TestProxy::start_text(&config(Phase::DualWrite)).await;
    // The first transaction over each pre-existing key, in dual-write:
    // new lacks them, the element-wise comparison copies them.
    let mut c = proxy.conn().await;
    for me in 0..2 {
        let mut tx = redis::pipe();
        tx.atomic();
        for i in 0..4 {
            tx.incr(format!("t{me}:pre:{i}"), 1);
        }
        let got: Vec<i64> = tx.query_async(&mut c).await.unwrap();
        assert_eq!(got, [11; 4]);
    }
    proxy.wait_mirrors_settled().await;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while proxy.stat("default", "repaired") < 8 {
        assert!(
            std::time::Instant::now() < deadline,
            "pre-existing keys never copied"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let stop = Arc::new(AtomicBool::new(false));
    let popped = Arc::new(Mutex::new(Vec::new()));
    let consumers: Vec<_> = (0..CONSUMERS)
        .map(|_| {
            let (url, stop, popped) = (proxy.url(), stop.clone(), popped.clone());
            tokio::spawn(async move {
                let mut conn = support::connect(&url).await;
                while !stop.load(Ordering::Relaxed) {
                    let got: Option<(String, String)> = redis::cmd("BLPOP")
                        .arg("model:jobs")
                        .arg(0.2)
                        .query_async(&mut conn)
                        .await
                        .unwrap();
                    if let Some((_, job)) = got {
                        popped.lock().unwrap().push(job.parse::<usize>().unwrap());
                    }
                }
            })
        })
        .collect();
    let transactions: Vec<_> = (0..2)
        .map(|me| {
            let (url, stop) = (proxy.url(), stop.clone());
            tokio::spawn(async move {
                let mut conn = support::connect(&url).await;
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let i = n % 4;
                    n += 1;
                    let mut tx = redis::pipe();
                    tx.atomic()
                        .incr(format!("t{me}:pre:{i}"), 1)
                        .pexpire(format!("t{me}:pre:{i}"), 600_000)
                        .rpush(format!("t{me}:log"), n);
                    let _: redis::Value = tx.query_async(&mut conn).await.unwrap();
                }
            })
        })
        .collect();
    // Seven batches of jobs, a flip before each but the first, both ways.
    // Each flip comes while the consumers are blocked on an empty queue,
    // and the next batch is pushed as soon as the flip returns: the route
    // settles (its commands wait) until the consumers have moved.
    // Two producers, each pushing every other group of five at once.
    let mut producers = [
        support::connect(&proxy.url()).await,
        support::connect(&proxy.url()).await,
    ];
    let phases = [Phase::ReadNew, Phase::DualWrite].iter().cycle();
    let jobs: Vec<usize> = (0..JOBS).collect();
    for (i, (batch, phase)) in jobs.chunks(JOBS.div_ceil(7)).zip(phases).enumerate() {
        if i > 0 {
            let body = format!(r#"{{"phase": "{phase}"}}"#);
            let (code, body) = proxy
                .admin("PUT", "/routes/default/phase", Some(&body))
                .await;
            assert_eq!(code, 200, "{body}");
        }
        for ten in batch.chunks(10) {
            let (a, b) = ten.split_at(ten.len().min(5));
            let [p, q] = &mut producers;
            let push = async |conn: &mut redis::aio::MultiplexedConnection, jobs: &[usize]| {
                if !jobs.is_empty() {
                    let _: i64 = redis::cmd("RPUSH")
                        .arg("model:jobs")
                        .arg(jobs)
                        .query_async(conn)
                        .await
                        .unwrap();
                }
            };
            tokio::join!(push(p, a), push(q, b));
        }
        let consumed = batch[batch.len() - 1] + 1;
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while popped.lock().unwrap().len() < consumed {
            assert!(
                std::time::Instant::now() < deadline,
                "{} of {consumed} jobs consumed",
                popped.lock().unwrap().len()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    stop.store(true, Ordering::Relaxed);
    for t in consumers.into_iter().chain(transactions) {
        tokio::time::timeout(Duration::from_secs(30), t)
            .await
            .expect("clients finish")
            .unwrap();
    }
    let mut got = popped.lock().unwrap().clone();
    got.sort_unstable();
    assert_eq!(got, (0..JOBS).collect::<Vec<_>>(), "each job exactly once");
    proxy.wait_mirrors_settled().await;
    eprintln!(
        "flips: {} compared, {} mismatches, {} keys copied",
        proxy.stat("default", "compared"),
        proxy.stat("default", "mismatches"),
        proxy.stat("default", "repaired")
    );
    // Copies queued by the last mismatches land.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let same = std::panic::catch_unwind(|| assert_same_keyspace(&old, &new, 2000));
        match same {
            Ok(()) => break,
            Err(e) if std::time::Instant::now() >= deadline => std::panic::resume_unwind(e),
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}

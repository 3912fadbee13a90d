//! The model run with Redis Clusters on either side (issue 17): seeded
//! mixed workloads from concurrent clients through cutover, for the three
//! shapes of a migration with a cluster in it (standalone → cluster,
//! cluster → cluster, cluster → standalone), in `dual-write` and in
//! `read-new`. Keys are spread over every slot; multi-key commands that a
//! standalone Redis takes with keys anywhere (`MSET`, `MGET`, `DEL`) are
//! used so; the others (scripts, `BLMOVE`, transactions) keep their keys
//! under one hash tag, as an application written for a cluster does. At
//! the end old and new hold the same keys, values and TTLs.

mod support;

use std::time::Duration;

use cutover::routing::{Phase, Side};
use support::{assert_same_keys, Config, KeyState, RedisCluster, RedisServer, Rng, TestProxy};

const CLIENTS: usize = 3;
const SCRIPT: &str =
    "redis.call('HINCRBY', KEYS[1], 'n', 1); return redis.call('RPUSH', KEYS[2], ARGV[1])";

enum Cache {
    One(RedisServer),
    Cluster(RedisCluster),
}

impl Cache {
    fn start(cluster: bool) -> Cache {
        match cluster {
            true => Cache::Cluster(RedisCluster::start(3)),
            false => Cache::One(RedisServer::start()),
        }
    }

    fn addr(&self) -> String {
        match self {
            Cache::One(s) => s.addr(),
            Cache::Cluster(c) => c.nodes[1].addr(),
        }
    }

    fn keyspace(&self) -> std::collections::BTreeMap<Vec<u8>, KeyState> {
        match self {
            Cache::One(s) => support::keyspace(&mut s.sync()),
            Cache::Cluster(c) => c.keyspace(),
        }
    }
}

fn random_command(rng: &mut Rng, me: usize, sha: &str) -> Vec<redis::Cmd> {
    let k = |rng: &mut Rng, kind: &str| format!("c{me}:{kind}:{}", rng.below(4));
    // Keys of multi-key commands the cluster runs on one node share a tag.
    let t = |tag: u64, kind: &str| format!("{{c{me}:{tag}}}:{kind}");
    let v = |rng: &mut Rng| format!("v{}", rng.below(1000));
    let c = |name: &str| redis::cmd(name);
    let one = |cmd: &mut redis::Cmd| vec![cmd.clone()];
    let tag = rng.below(2);
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
            .arg(t(tag, "l"))
            .arg(t(tag, "l2"))
            .arg("LEFT")
            .arg("RIGHT")
            .arg(0.01)),
        11 => one(c("SADD").arg(k(rng, "set")).arg(v(rng)).arg(v(rng))),
        12 => one(c("SPOP").arg(k(rng, "set")).arg(1 + rng.below(2))),
        13 => one(c("ZADD").arg(k(rng, "z")).arg(rng.below(100)).arg(v(rng))),
        14 => one(c("ZINCRBY").arg(k(rng, "z")).arg(1).arg(v(rng))),
        15 => one(c("BZPOPMIN").arg(k(rng, "z")).arg(0.01)),
        16 => one(c("XADD")
            .arg(k(rng, "x"))
            .arg("MAXLEN")
            .arg("=")
            .arg(20)
            .arg("*")
            .arg("f")
            .arg(v(rng))),
        17 => one(c("EVAL")
            .arg(SCRIPT)
            .arg(2)
            .arg(t(tag, "h"))
            .arg(t(tag, "l"))
            .arg(v(rng))),
        18 => one(c("EVALSHA")
            .arg(sha)
            .arg(2)
            .arg(t(tag, "h"))
            .arg(t(tag, "l"))
            .arg(v(rng))),
        19 => one(c("PUBLISH").arg(format!("c{me}:chan")).arg(v(rng))),
        20 => one(c("INCRBY").arg("shared:counter").arg(1 + rng.below(3))),
        21 => one(c("RPUSH").arg(k(rng, "l")).arg(v(rng))),
        22 => one(c("BLPOP").arg(k(rng, "l")).arg(0.02)),
        23 => {
            let mut cmds = Vec::new();
            if rng.below(2) == 0 {
                cmds.push(c("WATCH").arg(t(tag, "n")).clone());
            }
            cmds.push(c("MULTI").clone());
            cmds.push(c("INCR").arg(t(tag, "n")).clone());
            cmds.push(c("RPUSH").arg(t(tag, "l")).arg(v(rng)).clone());
            cmds.push(c("SADD").arg(t(tag, "set")).arg(v(rng)).clone());
            cmds.push(c("EXEC").clone());
            cmds
        }
        // Keys anywhere: split by slot.
        24 => one(c("MSET")
            .arg(k(rng, "s"))
            .arg(v(rng))
            .arg(k(rng, "m"))
            .arg(v(rng))),
        25 => one(c("MGET").arg(k(rng, "s")).arg(k(rng, "m")).arg(k(rng, "n"))),
        26 => one(c("DEL").arg(k(rng, "m")).arg(k(rng, "h"))),
        27 if me == 0 => one(c("RPUSH").arg("shared:q").arg(rng.next())),
        27 => one(c("BLPOP").arg("shared:q").arg(0.05)),
        _ => one(c("SETEX").arg(k(rng, "s")).arg(1000).arg(v(rng))),
    }
}

async fn client(url: String, seed: u64, me: usize, ops: u64, sha: String) {
    let mut rng = Rng(seed ^ (0x9E37_79B9_7F4A_7C15u64.wrapping_mul(me as u64 + 1)) | 1);
    let mut conn = support::connect(&url).await;
    let mut done = 0;
    while done < ops {
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

/// `old-only` and `new-only` with the shape's caches: everything lands on
/// the one cache the phase uses, nothing on the other.
async fn single_sided(old_cluster: bool, new_cluster: bool) {
    for phase in [Phase::OldOnly, Phase::NewOnly] {
        let (old, new) = (Cache::start(old_cluster), Cache::start(new_cluster));
        let mut config = Config::new(&old.addr(), &new.addr()).route("default", None, phase);
        for (side, on) in [(Side::Old, old_cluster), (Side::New, new_cluster)] {
            if on {
                config = config.upstream(side, "cluster", true);
            }
        }
        let proxy = TestProxy::start_text(&config.text()).await;
        let sha: String = redis::cmd("SCRIPT")
            .arg("LOAD")
            .arg(SCRIPT)
            .query_async(&mut proxy.conn().await)
            .await
            .unwrap();
        client(proxy.url(), 31, 0, 60, sha).await;
        let (used, unused) = match phase {
            Phase::OldOnly => (&old, &new),
            _ => (&new, &old),
        };
        assert!(
            used.keyspace().len() > 10,
            "{phase}: the phase's cache has the keys"
        );
        assert!(
            unused.keyspace().is_empty(),
            "{phase}: the other cache got nothing"
        );
    }
}

async fn run(old_cluster: bool, new_cluster: bool, phase: Phase, seed: u64) {
    let (old, new) = (Cache::start(old_cluster), Cache::start(new_cluster));
    let mut config = Config::new(&old.addr(), &new.addr()).route("default", None, phase);
    for (side, on) in [(Side::Old, old_cluster), (Side::New, new_cluster)] {
        if on {
            config = config.upstream(side, "cluster", true);
        }
    }
    let proxy = TestProxy::start_text(&config.text()).await;
    let mut c = proxy.conn().await;
    let sha: String = redis::cmd("SCRIPT")
        .arg("LOAD")
        .arg(SCRIPT)
        .query_async(&mut c)
        .await
        .unwrap();
    let tasks: Vec<_> = (0..CLIENTS)
        .map(|me| tokio::spawn(client(proxy.url(), seed, me, 120, sha.clone())))
        .collect();
    let shape =
        format!("old cluster {old_cluster}, new cluster {new_cluster}, {phase}, seed {seed}");
    for t in tasks {
        tokio::time::timeout(Duration::from_secs(120), t)
            .await
            .unwrap_or_else(|_| panic!("{shape}: clients did not finish"))
            .unwrap_or_else(|e| panic!("{shape}: {e}"));
    }
    proxy.wait_mirrors_settled().await;
    assert_eq!(proxy.stat("default", "mirror_failed"), 0, "{shape}");
    assert_eq!(proxy.stat("default", "repair_failed"), 0, "{shape}");
    eprintln!(
        "{shape}: {} mirrored, {} mirror errors, {} mismatches, {} keys copied",
        proxy.stat("default", "mirrored"),
        proxy.stat("default", "mirror_errors"),
        proxy.stat("default", "mismatches"),
        proxy.stat("default", "repaired")
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let (a, b) = (old.keyspace(), new.keyspace());
        match std::panic::catch_unwind(|| assert_same_keys(&a, &b, 2000)) {
            Ok(()) => break,
            Err(e) if std::time::Instant::now() >= deadline => {
                eprintln!("cluster model run failed: {shape}");
                std::panic::resume_unwind(e)
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn standalone_to_cluster() {
    single_sided(false, true).await;
    for phase in [Phase::DualWrite, Phase::ReadNew] {
        run(false, true, phase, 7919).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_to_cluster() {
    single_sided(true, true).await;
    for phase in [Phase::DualWrite, Phase::ReadNew] {
        run(true, true, phase, 15838).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_to_standalone() {
    single_sided(true, false).await;
    for phase in [Phase::DualWrite, Phase::ReadNew] {
        run(true, false, phase, 23757).await;
    }
}

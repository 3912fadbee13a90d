//! MULTI/EXEC/DISCARD/WATCH in every phase: the authoritative side runs the
//! transaction, the mirror gets the same writes as one MULTI block only after
//! EXEC returned an array.

mod support;

use cutover::routing::Phase;
use support::{assert_same_keyspace, exchange, get, RedisServer, TestProxy};

async fn proxy(old: &RedisServer, new: &RedisServer) -> TestProxy {
    TestProxy::start(
        old,
        new,
        &[
            ("k", Some(&["k:*"]), Phase::DualWrite),
            ("r", Some(&["r:*"]), Phase::ReadNew),
            ("default", None, Phase::OldOnly),
        ],
    )
    .await
}

/// `(MULTI calls, EXEC calls)` a server has run, from `INFO commandstats`.
fn tx_calls(server: &RedisServer) -> (u64, u64) {
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query(&mut server.sync())
        .unwrap();
    let calls = |name: &str| {
        info.lines()
            .find_map(|l| l.strip_prefix(&format!("cmdstat_{name}:calls=")))
            .and_then(|rest| rest.split(',').next()?.parse().ok())
            .unwrap_or(0)
    };
    (calls("multi"), calls("exec"))
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[tokio::test]
async fn exec_is_mirrored_as_one_block_in_both_dual_phases() {
    let (old, new) = support::start_pair();
    let proxy = proxy(&old, &new).await;
    // The same transaction straight on a Redis gives the reference bytes.
    let reference = RedisServer::start();
    let script = b"MULTI\r\nSET k:a 1\r\nINCR k:a\r\nGET k:a\r\nSADD k:s x y z\r\nSPOP k:s 2\r\nEXPIRE k:a 100\r\nEXEC\r\n";
    let (want, _) = exchange(reference.addr(), script).await;
    let new_before = tx_calls(&new);
    let (got, _) = exchange(proxy.addr, script).await;
    // SPOP's members are random: compare everything else byte for byte.
    let cut = |b: &[u8]| {
        let t = text(b);
        t[..t.find("*2\r\n$1").unwrap_or(t.len())].to_string()
    };
    assert_eq!(cut(&got), cut(&want));
    assert!(text(&got).starts_with("+OK\r\n+QUEUED\r\n+QUEUED\r\n+QUEUED\r\n+QUEUED\r\n+QUEUED\r\n+QUEUED\r\n*6\r\n+OK\r\n:2\r\n$1\r\n2\r\n:3\r\n*2\r\n"), "{}", text(&got));

    // The mirror ran it as one MULTI ... EXEC block, not command by command.
    proxy.wait_mirrors_settled().await;
    let new_after = tx_calls(&new);
    assert_eq!(
        (new_after.0 - new_before.0, new_after.1 - new_before.1),
        (1, 1),
        "one MULTI and one EXEC on new"
    );

    // read-new: new runs it, old mirrors it.
    let old_before = tx_calls(&old);
    let (got, _) = exchange(
        proxy.addr,
        b"MULTI\r\nRPUSH r:l a b c\r\nLPOP r:l\r\nSET r:n 5\r\nEXEC\r\n",
    )
    .await;
    assert_eq!(
        text(&got),
        "+OK\r\n+QUEUED\r\n+QUEUED\r\n+QUEUED\r\n*3\r\n:3\r\n$1\r\na\r\n+OK\r\n"
    );
    proxy.wait_mirrors_settled().await;
    let old_after = tx_calls(&old);
    assert_eq!(
        (old_after.0 - old_before.0, old_after.1 - old_before.1),
        (1, 1),
        "one MULTI and one EXEC on old"
    );
    assert_eq!(proxy.stat("k", "mirror_errors"), 0);
    assert_eq!(proxy.stat("r", "mirror_errors"), 0);
    // The popped members were removed from the mirror too.
    assert_same_keyspace(&old, &new, 1000);
    assert_eq!(get(&mut old.sync(), "r:n").as_deref(), Some("5"));
    let members: Vec<String> = redis::cmd("SMEMBERS")
        .arg("k:s")
        .query(&mut new.sync())
        .unwrap();
    assert_eq!(members.len(), 1);
}

#[tokio::test]
async fn aborted_or_failed_exec_mirrors_nothing() {
    let (old, new) = support::start_pair();
    let proxy = proxy(&old, &new).await;
    let mut a = proxy.raw().await;
    a.send(b"SET k:w 1\r\nWATCH k:w\r\n").await;
    assert_eq!(a.read_n(10).await, b"+OK\r\n+OK\r\n");
    let mut b = proxy.raw().await;
    b.send(b"SET k:w 2\r\n").await;
    assert_eq!(b.read_n(5).await, b"+OK\r\n");
    // WATCH conflict: EXEC returns nil, nothing runs on either side.
    a.send(b"MULTI\r\nSET k:w 3\r\nSET k:other 1\r\nEXEC\r\n")
        .await;
    let want = "+OK\r\n+QUEUED\r\n+QUEUED\r\n*-1\r\n";
    assert_eq!(text(&a.read_n(want.len()).await), want);
    // A queueing error (wrong arity): EXECABORT, nothing anywhere.
    a.send(b"MULTI\r\nSET k:x 1\r\nSET k:y\r\nEXEC\r\n").await;
    let want = "+OK\r\n+QUEUED\r\n-ERR wrong number of arguments for 'set' command\r\n-EXECABORT Transaction discarded because of previous errors.\r\n";
    assert_eq!(text(&a.read_n(want.len()).await), want);
    // DISCARD: nothing.
    a.send(b"MULTI\r\nSET k:z 1\r\nDISCARD\r\n").await;
    let want = "+OK\r\n+QUEUED\r\n+OK\r\n";
    assert_eq!(text(&a.read_n(want.len()).await), want);
    proxy.wait_mirrors_settled().await;
    for server in [&old, &new] {
        let mut c = server.sync();
        assert_eq!(get(&mut c, "k:w").as_deref(), Some("2"));
        for k in ["k:other", "k:x", "k:y", "k:z"] {
            assert_eq!(get(&mut c, k), None, "{k} must not exist");
        }
    }
    assert_same_keyspace(&old, &new, 0);
}

#[tokio::test]
async fn transaction_across_caches_fails_at_exec_and_runs_nowhere() {
    let (old, new) = support::start_pair();
    let proxy = proxy(&old, &new).await;
    // k:* is served by old (dual-write), r:* by new (read-new).
    let (got, closed) = exchange(
        proxy.addr,
        b"MULTI\r\nSET k:1 a\r\nSET r:1 b\r\nEXEC\r\nGET k:1\r\nPING\r\n",
    )
    .await;
    let t = text(&got);
    let lines: Vec<&str> = t.split("\r\n").collect();
    assert_eq!(&lines[..3], ["+OK", "+QUEUED", "+QUEUED"], "{t}");
    assert!(
        lines[3].starts_with("-CROSSROUTE Transaction discarded: 'set' on route 'r' (read-new) is served by the new cache"),
        "{t}"
    );
    assert_eq!(&lines[4..6], ["$-1", "+PONG"], "{t}");
    assert!(!closed);
    for server in [&old, &new] {
        let mut c = server.sync();
        assert_eq!(get(&mut c, "k:1"), None);
        assert_eq!(get(&mut c, "r:1"), None);
    }
    // Keys of routes in different phases but served by the same cache are
    // fine in one transaction: old-only and dual-write both read old.
    let (got, _) = exchange(proxy.addr, b"MULTI\r\nSET plain 1\r\nSET k:2 2\r\nEXEC\r\n").await;
    assert_eq!(
        text(&got),
        "+OK\r\n+QUEUED\r\n+QUEUED\r\n*2\r\n+OK\r\n+OK\r\n"
    );
    proxy.wait_mirrors_settled().await;
    assert_eq!(get(&mut new.sync(), "k:2").as_deref(), Some("2"));
    assert_eq!(
        get(&mut new.sync(), "plain"),
        None,
        "old-only is not mirrored"
    );
}

#[tokio::test]
async fn transaction_edge_cases_answer_like_redis() {
    let (old, new) = support::start_pair();
    let proxy = proxy(&old, &new).await;
    let reference = RedisServer::start();
    let script = b"MULTI\r\nMULTI\r\nWATCH k:a\r\nEXEC\r\nEXEC\r\nDISCARD\r\nMULTI\r\nEXEC\r\nMULTI\r\nPING\r\nUNWATCH\r\nEXEC\r\n";
    let (want, _) = exchange(reference.addr(), script).await;
    let (got, _) = exchange(proxy.addr, script).await;
    assert_eq!(text(&got), text(&want));
}

#[tokio::test]
async fn mirrored_block_keeps_the_clients_write_order() {
    let (old, new) = support::start_pair();
    let proxy = proxy(&old, &new).await;
    // A pipelined write after EXEC must land on the mirror after the block.
    let (got, _) = exchange(
        proxy.addr,
        b"MULTI\r\nSET k:o 1\r\nEXEC\r\nSET k:o 2\r\nMULTI\r\nAPPEND k:o 3\r\nEXEC\r\nAPPEND k:o 4\r\n",
    )
    .await;
    assert_eq!(
        text(&got),
        "+OK\r\n+QUEUED\r\n*1\r\n+OK\r\n+OK\r\n+OK\r\n+QUEUED\r\n*1\r\n:2\r\n:3\r\n"
    );
    proxy.wait_mirrors_settled().await;
    assert_eq!(get(&mut new.sync(), "k:o").as_deref(), Some("234"));
    assert_same_keyspace(&old, &new, 0);
}

/// A command the proxy refuses while queueing (unknown, not carried)
/// aborts the transaction as a queueing error does in Redis: EXEC answers
/// EXECABORT and nothing runs.
#[tokio::test]
async fn a_refused_command_inside_multi_aborts_it_like_redis() {
    let (old, new) = support::start_pair();
    let proxy = proxy(&old, &new).await;
    let reference = RedisServer::start();
    // Redis refuses an unknown command itself: the same replies, but for
    // the refusal's text (the proxy's own).
    let script = b"MULTI\r\nFOOBAR x\r\nSET k:a 1\r\nEXEC\r\n";
    let (want, _) = exchange(reference.addr(), script).await;
    let (got, _) = exchange(proxy.addr, script).await;
    let shape = |t: &str| {
        t.split("\r\n")
            .map(|l| l.split(' ').next().unwrap_or_default().to_string())
            .collect::<Vec<_>>()
    };
    let (want, got) = (text(&want), text(&got));
    assert_eq!(shape(&got), shape(&want), "{got:?} vs {want:?}");
    // A command Redis would take but the proxy does not carry aborts too,
    // rather than run the rest without it.
    let (got, _) = exchange(
        proxy.addr,
        b"MULTI\r\nCLIENT REPLY OFF\r\nSET k:a 1\r\nEXEC\r\n",
    )
    .await;
    let got = text(&got);
    assert!(
        got.starts_with("+OK\r\n-ERR cutover does not support 'client reply'"),
        "{got}"
    );
    assert!(
        got.ends_with(
            "+QUEUED\r\n-EXECABORT Transaction discarded because of previous errors.\r\n"
        ),
        "{got}"
    );
    for server in [&old, &new, &reference] {
        assert_eq!(get(&mut server.sync(), "k:a"), None, "nothing ran");
    }
}

/// A flip takes effect for a connection at its transaction boundary: a
/// MULTI (or WATCH) begun under one table finishes under it, both ways,
/// instead of failing with CROSSROUTE.
#[tokio::test]
async fn a_transaction_spanning_a_flip_finishes_under_its_table() {
    let (old, new) = support::start_pair();
    let config = |phase: Phase| {
        support::config_text(
            &old.addr(),
            &new.addr(),
            &[
                ("r", Some(&["r:*"]), phase),
                ("default", None, Phase::OldOnly),
            ],
            "",
        )
    };
    let proxy = TestProxy::start_text(&config(Phase::DualWrite)).await;
    let flip = async |phase: Phase| {
        proxy.rewrite_config(&config(phase));
        proxy.wait_phase("r", phase).await;
    };
    let mut a = proxy.raw().await;
    // MULTI under dual-write, EXEC after the flip to read-new.
    a.send(b"MULTI\r\nSET r:1 a\r\n").await;
    assert_eq!(a.read_replies(2).await, b"+OK\r\n+QUEUED\r\n");
    flip(Phase::ReadNew).await;
    a.send(b"INCR r:n\r\nEXEC\r\n").await;
    assert_eq!(a.read_replies(2).await, b"+QUEUED\r\n*2\r\n+OK\r\n:1\r\n");
    // WATCH under read-new, MULTI and EXEC after the flip back.
    a.send(b"WATCH r:1\r\nGET r:1\r\n").await;
    assert_eq!(a.read_replies(2).await, b"+OK\r\n$1\r\na\r\n");
    flip(Phase::DualWrite).await;
    a.send(b"MULTI\r\nSET r:1 b\r\nINCR r:n\r\nEXEC\r\n").await;
    assert_eq!(
        a.read_replies(4).await,
        b"+OK\r\n+QUEUED\r\n+QUEUED\r\n*2\r\n+OK\r\n:2\r\n"
    );
    // The next transaction runs under the table of its own time.
    a.send(b"MULTI\r\nGET r:1\r\nEXEC\r\n").await;
    assert_eq!(
        a.read_replies(3).await,
        b"+OK\r\n+QUEUED\r\n*1\r\n$1\r\nb\r\n"
    );
    proxy.wait_mirrors_settled().await;
    for s in [&old, &new] {
        let mut c = s.sync();
        assert_eq!(get(&mut c, "r:1").as_deref(), Some("b"), "{}", s.addr());
        assert_eq!(get(&mut c, "r:n").as_deref(), Some("2"), "{}", s.addr());
    }
    assert_eq!(proxy.stat("r", "mismatches"), 0);
}

//! Auto-cutover with `[fleet]` (issue 18, item 5): exactly one member
//! holds the lease and decides, on the figures summed over the members
//! (here each member alone has too few shadow reads to flip); its flips
//! are fleet flips, applied by every member; when it stops, another takes
//! the lease over and decides (a flip back once new fails).

mod support;

use cutover::admin::fleet::FleetView;
use cutover::routing::Phase;
use support::{wait_for, Config, Served};

async fn call(s: &Served, method: &str, path: &str) -> (u16, String) {
    cutover::admin::client::request(&s.admin, method, path, None, None)
        .await
        .unwrap()
}

async fn fleet(s: &Served) -> FleetView {
    let (code, body) = call(s, "GET", "/fleet").await;
    assert_eq!(code, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

/// Whether `s` says it holds the lease (`cutover_fleet_lease`).
async fn holds(s: &Served) -> bool {
    let (_, body) = call(s, "GET", "/metrics").await;
    let v = body
        .lines()
        .find_map(|l| l.strip_prefix("cutover_fleet_lease "))
        .unwrap_or_else(|| panic!("no cutover_fleet_lease in {body}"));
    v.parse::<f64>().unwrap() == 1.0
}

async fn holders(members: &[&Served]) -> Vec<usize> {
    let mut out = Vec::new();
    for (i, m) in members.iter().enumerate() {
        if holds(m).await {
            out.push(i);
        }
    }
    out
}

async fn route(s: &Served) -> cutover::admin::RouteView {
    s.status().await.routes.remove(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_member_decides_on_the_fleets_figures_and_flips_the_fleet() {
    let (old, mut new) = support::start_pair();
    for i in 0..150 {
        for s in [&old, &new] {
            s.run(&["SET", &format!("k{i}"), &i.to_string()]);
        }
    }
    let policy = "min_agreement = 0.99\nmin_samples = 300\nmin_dual_write_secs = 1\n\
                  max_new_error_rate = 0.2\nmin_commands = 20\nerror_window_secs = 2";
    let text = Config::new(&old.addr(), &new.addr())
        .route_toml(
            "default",
            None,
            Phase::DualWrite,
            &format!("shadow_reads = 1.0\n\n[auto_cutover]\n{policy}\n"),
        )
        .command_timeout(cutover::routing::Side::New, 500)
        .with("[fleet]\nname = \"auto\"\nheartbeat_ms = 100\nflip_timeout_ms = 3000\n")
        .text();
    let mut members = Vec::new();
    for _ in 0..3 {
        members.push(Served::start(&text, &[]).await);
    }
    let all: Vec<&Served> = members.iter().collect();
    wait_for("exactly one member holds the lease", async || {
        holders(&all).await.len() == 1
    })
    .await;
    let holder = holders(&all).await[0];
    let holder_id = fleet(&members[holder]).await.id;
    wait_for("every member names the holder", async || {
        let mut named = 0;
        for m in &members {
            named += usize::from(fleet(m).await.lease.as_deref() == Some(holder_id.as_str()));
        }
        named == 3
    })
    .await;
    let other = (holder + 1) % 3;
    wait_for("the others say who decides", async || {
        route(&members[other])
            .await
            .auto_cutover
            .is_some_and(|a| a.contains(&holder_id))
    })
    .await;

    // 150 agreeing shadow reads through each member: under min_samples
    // alone, 450 together.
    for m in &members {
        let mut c = support::connect(&m.url()).await;
        let mut p = redis::pipe();
        for i in 0..150 {
            p.cmd("GET").arg(format!("k{i}"));
        }
        let _: redis::Value = p.query_async(&mut c).await.unwrap();
    }
    wait_for("each member's window is full", async || {
        let mut ok = true;
        for m in &members {
            ok &= route(m).await.shadow.samples == 150;
        }
        ok
    })
    .await;
    wait_for("the members' windows pooled in GET /fleet", async || {
        fleet(&members[other]).await.shadow["default"].samples == 450
    })
    .await;
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_cutover"))
        .args(["status", "--fleet", "--admin", &members[other].admin])
        .output()
        .await
        .unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        said.contains("route default: shadow agreement 100.00% over the members' last"),
        "{said}"
    );
    assert!(
        said.contains(&format!("auto-cutover lease: {holder_id}")),
        "{said}"
    );
    wait_for("the fleet flips to read-new", async || {
        let mut n = 0;
        for m in &members {
            n += usize::from(route(m).await.status.phase == Phase::ReadNew);
        }
        n == 3
    })
    .await;
    let v = fleet(&members[other]).await;
    let record = v.record.unwrap();
    assert_eq!(record.by, holder_id, "the holder flipped");
    assert!(record.why.starts_with("auto "), "{}", record.why);
    // (The holder notes its flip once every member applied it.)
    wait_for("the holder's status says why it flipped", async || {
        let a = route(&members[holder]).await.auto_cutover.unwrap();
        a.contains("flipped to read-new") && a.contains("over 450 shadow reads")
    })
    .await;
    assert_eq!(holders(&all).await, [holder], "still one holder");

    // The holder stops: another takes the lease over...
    let mut stopped = members.remove(holder);
    stopped.child.kill().await.unwrap();
    let rest: Vec<&Served> = members.iter().collect();
    wait_for("another member takes the lease", async || {
        holders(&rest).await.len() == 1
    })
    .await;
    // ...and decides: new fails, the fleet goes back to dual-write.
    new.kill();
    let mut clients = Vec::new();
    for m in &members {
        clients.push(support::connect(&m.url()).await);
    }
    wait_for("the fleet flips back to dual-write", async || {
        for c in clients.iter_mut() {
            for i in 0..5 {
                let _: redis::RedisResult<Option<String>> =
                    redis::cmd("GET").arg(format!("k{i}")).query_async(c).await;
            }
        }
        let mut n = 0;
        for m in &members {
            n += usize::from(route(m).await.status.phase == Phase::DualWrite);
        }
        n == 2
    })
    .await;
    let new_holder = holders(&rest).await[0];
    let record = fleet(rest[1 - new_holder]).await.record.unwrap();
    assert_eq!(record.by, fleet(rest[new_holder]).await.id);
    assert!(record.why.starts_with("auto "), "{}", record.why);
    wait_for(
        "the new holder's status says why it flipped back",
        async || {
            let a = route(rest[new_holder]).await.auto_cutover.unwrap();
            a.contains("flipped back to dual-write") && a.contains("new failed")
        },
    )
    .await;
}

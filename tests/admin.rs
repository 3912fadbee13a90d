//! The admin API and CLI against a running proxy and real redis-servers:
//! flips take effect on open connections, persist across restarts, are not
//! undone by an unrelated reload, show in `cutover status`; metrics parse as
//! Prometheus text; the token is enforced.

mod support;

use tokio::process::Command as Process;

use cutover::routing::Phase;
use support::{config_text, RedisServer, TestProxy};

fn routes() -> Vec<support::RouteSpec<'static>> {
    vec![
        ("s", Some(&["s:*"][..]), Phase::DualWrite),
        ("default", None, Phase::OldOnly),
    ]
}

fn set(server: &RedisServer, key: &str, value: &str) {
    let _: () = redis::cmd("SET")
        .arg(key)
        .arg(value)
        .query(&mut server.sync())
        .unwrap();
}

async fn get(conn: &mut redis::aio::MultiplexedConnection, key: &str) -> Option<String> {
    redis::cmd("GET").arg(key).query_async(conn).await.unwrap()
}

fn json(body: &str) -> serde_json::Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}"))
}

fn route<'a>(status: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    status["routes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == name)
        .unwrap()
}

/// Runs the `cutover` binary (without blocking the proxy in this process).
async fn cli(args: &[&str]) -> (bool, String, String) {
    let out = Process::new(env!("CARGO_BIN_EXE_cutover"))
        .args(args)
        .env_remove("CUTOVER_CONFIG")
        .env_remove("CUTOVER_ADMIN_URL")
        .env_remove("CUTOVER_ADMIN__TOKEN")
        .output()
        .await
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn a_flip_applies_to_open_connections_persists_and_shows_in_status() {
    let (old, new) = support::start_pair();
    set(&old, "s:k", "from-old");
    set(&new, "s:k", "from-new");
    let mut proxy = TestProxy::start(&old, &new, &routes()).await;
    let mut conn = proxy.conn().await;
    assert_eq!(get(&mut conn, "s:k").await.as_deref(), Some("from-old"));

    let (code, body) = proxy
        .admin("PUT", "/routes/s/phase", Some(r#"{"phase": "read-new"}"#))
        .await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(json(&body)["phase"], "read-new");
    assert_eq!(json(&body)["source"], "admin");
    // The very next command on the already open connection reads new.
    assert_eq!(get(&mut conn, "s:k").await.as_deref(), Some("from-new"));

    // Refusals: a skip without force, an unknown route, a bad phase, a bad body.
    let (code, body) = proxy
        .admin("PUT", "/routes/s/phase", Some(r#"{"phase": "old-only"}"#))
        .await;
    assert_eq!(code, 409, "{body}");
    assert!(json(&body)["error"]
        .as_str()
        .unwrap()
        .contains("skips dual-write"));
    let (code, _) = proxy
        .admin(
            "PUT",
            "/routes/nope/phase",
            Some(r#"{"phase": "old-only"}"#),
        )
        .await;
    assert_eq!(code, 404);
    let (code, body) = proxy
        .admin("PUT", "/routes/s/phase", Some(r#"{"phase": "sideways"}"#))
        .await;
    assert_eq!(code, 400, "{body}");
    let (code, _) = proxy.admin("PUT", "/routes/s/phase", Some("{")).await;
    assert_eq!(code, 400);
    assert_eq!(proxy.phase("s"), Phase::ReadNew);

    // The CLI shows it.
    let (ok, out, err) = cli(&["status", "--admin", &proxy.admin_url()]).await;
    assert!(ok, "{err}");
    let line = out.lines().find(|l| l.starts_with("s ")).expect(&out);
    assert!(
        line.contains("read-new") && line.contains("admin (file: dual-write)"),
        "{out}"
    );

    // A restart resumes the flip from the state file.
    drop(conn);
    proxy.restart().await;
    assert_eq!(proxy.phase("s"), Phase::ReadNew);
    let mut conn = proxy.conn().await;
    assert_eq!(get(&mut conn, "s:k").await.as_deref(), Some("from-new"));
    let (_, body) = proxy.admin("GET", "/status", None).await;
    let status = json(&body);
    assert_eq!(route(&status, "s")["source"], "admin");
    assert_eq!(route(&status, "s")["config_phase"], "dual-write");
    assert!(status["state_file"]
        .as_str()
        .unwrap()
        .ends_with("cutover.state.json"));

    // A reload that does not touch the route keeps the flip...
    let text = config_text(
        &old.addr(),
        &new.addr(),
        &routes(),
        "[commands]\ndeny = [\"FLUSHALL\"]\n",
    );
    let version = || proxy.proxy.as_ref().unwrap().shared().router.load().version;
    let before = version();
    proxy.rewrite_config(&text);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while version() == before {
        assert!(
            std::time::Instant::now() < deadline,
            "the reload never happened"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(proxy.phase("s"), Phase::ReadNew);
    // ...an edit of that route's phase in the file is newer, and wins.
    let mut edited = routes();
    edited[0].2 = Phase::NewOnly;
    proxy.rewrite_config(&config_text(&old.addr(), &new.addr(), &edited, ""));
    proxy.wait_phase("s", Phase::NewOnly).await;
    let (_, body) = proxy.admin("GET", "/status", None).await;
    assert_eq!(route(&json(&body), "s")["source"], "config");

    // The CLI flips too, one step at a time unless --force.
    let url = proxy.admin_url();
    let (ok, _, err) = cli(&["phase", "s", "dual-write", "--admin", &url]).await;
    assert!(
        !ok && err.contains("HTTP 409") && err.contains("skips read-new"),
        "{err}"
    );
    let (ok, out, err) = cli(&["phase", "s", "dual-write", "--force", "--admin", &url]).await;
    assert!(ok, "{err}");
    assert!(out.contains("route s is dual-write"), "{out}");
    assert_eq!(proxy.phase("s"), Phase::DualWrite);
}

#[tokio::test]
async fn metrics_parse_as_prometheus_text() {
    let (old, new) = support::start_pair();
    let proxy = TestProxy::start(&old, &new, &routes()).await;
    let mut conn = proxy.conn().await;
    for i in 0..20 {
        let _: () = redis::cmd("SET")
            .arg(format!("s:{i}"))
            .arg(i)
            .query_async(&mut conn)
            .await
            .unwrap();
        let _ = get(&mut conn, &format!("s:{i}")).await;
    }
    proxy.wait_mirrors_settled().await;
    let (code, body) = proxy.admin("GET", "/metrics", None).await;
    assert_eq!(code, 200);
    let lines = body.lines().map(|l| Ok(l.to_string()));
    let scrape = prometheus_parse::Scrape::parse(lines).expect("Prometheus text");
    let value = |name: &str, labels: &[(&str, &str)]| -> Option<prometheus_parse::Value> {
        scrape
            .samples
            .iter()
            .find(|s| s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
            .map(|s| s.value.clone())
    };
    use prometheus_parse::Value;
    // OpenMetrics declares `# TYPE x counter` for samples `x_total`; this
    // parser (Prometheus 0.0.4 rules) then reads them as untyped.
    let counter = |name: &str| match value(name, &[("route", "s")]) {
        Some(Value::Counter(n) | Value::Untyped(n)) => n,
        other => panic!("{name}: {other:?}\n{body}"),
    };
    assert_eq!(counter("cutover_route_writes_total"), 20.0);
    assert_eq!(counter("cutover_route_reads_total"), 20.0);
    assert_eq!(counter("cutover_route_mirror_ok_total"), 20.0);
    assert!(body.contains("# TYPE cutover_route_writes counter"));
    assert!(body.trim_end().ends_with("# EOF"));
    assert!(matches!(
        value("cutover_route_phase", &[("route", "s"), ("phase", "dual-write")]),
        Some(Value::Gauge(n)) if n == 1.0
    ));
    assert!(matches!(
        value("cutover_route_phase", &[("route", "s"), ("phase", "old-only")]),
        Some(Value::Gauge(n)) if n == 0.0
    ));
    // Latency per route, phase and upstream: 40 commands answered by old
    // (20 SET + 20 GET), 20 mirrored SETs answered by new.
    let count = |upstream: &str| match value(
        "cutover_request_duration_seconds",
        &[
            ("route", "s"),
            ("phase", "dual-write"),
            ("upstream", upstream),
        ],
    ) {
        Some(Value::Histogram(buckets)) => buckets.last().map(|b| b.count),
        other => panic!("{other:?}\n{body}"),
    };
    assert_eq!(count("old"), Some(40.0));
    assert_eq!(count("new"), Some(20.0));
}

#[tokio::test]
async fn the_token_is_required_when_set_and_exposed_listeners_need_one() {
    let (old, new) = support::start_pair();
    let text = config_text(
        &old.addr(),
        &new.addr(),
        &routes(),
        "[admin]\naddress = \"127.0.0.1:0\"\ntoken = \"s3cret\"\n",
    );
    let proxy = TestProxy::start_text(&text).await;
    let (code, body) = proxy.admin("GET", "/status", None).await;
    assert_eq!(code, 401, "{body}");
    let url = proxy.admin_url();
    let with = |token| cutover::admin::client::request(&url, "GET", "/status", Some(token), None);
    assert_eq!(with("wrong").await.unwrap().0, 401);
    assert_eq!(with("s3cret").await.unwrap().0, 200);
    let (ok, out, err) = cli(&["status", "--admin", &url, "--token", "s3cret"]).await;
    assert!(ok && out.contains("dual-write"), "{out}{err}");

    let exposed = config_text(
        &old.addr(),
        &new.addr(),
        &routes(),
        "[admin]\naddress = \"0.0.0.0:0\"\n",
    );
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.toml");
    std::fs::write(&path, exposed).unwrap();
    let err = cutover::config::Settings::load(&path)
        .unwrap_err()
        .to_string();
    assert!(err.contains("admin.token"), "{err}");
}

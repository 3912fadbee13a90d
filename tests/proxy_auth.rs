//! Client authentication at the proxy (`[auth]`) and upstream credentials:
//! Redis's own replies (NOAUTH, WRONGPASS) byte for byte, HELLO 3 AUTH, the
//! client's AUTH consumed by the proxy while each cache gets its own
//! password, RESET logging out, and no password in any log line, error or
//! status (the real binary, its logs captured at debug).

mod support;

use cutover::routing::{Phase, Side};
use support::{RedisServer, TestProxy};

const CLIENT_PASSWORD: &str = "app-pass-7Qx";
const OLD_PASSWORD: &str = "old-pass-3Kd";
const NEW_PASSWORD: &str = "new-pass-9Wm";

fn sha256_hex(s: &str) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(s.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A dual-write config where each cache has its own password and clients
/// authenticate to the proxy as `app` (or `default`) with their own.
fn config(old: &RedisServer, new: &RedisServer, new_password: Option<&str>) -> String {
    let auth = format!(
        "[auth]\nusers = [{{ name = \"app\", sha256 = \"{0}\" }}, {{ name = \"default\", sha256 = \"{0}\" }}]\n",
        sha256_hex(CLIENT_PASSWORD)
    );
    let config = support::Config::new(&old.addr(), &new.addr())
        .route("default", None, Phase::DualWrite)
        .with(&auth)
        .upstream(Side::Old, "password", OLD_PASSWORD);
    match new_password {
        Some(p) => config.upstream(Side::New, "password", p),
        None => config,
    }
    .text()
}

fn caches() -> (RedisServer, RedisServer) {
    (
        RedisServer::start_with(&["--requirepass", OLD_PASSWORD]),
        RedisServer::start_with(&["--requirepass", NEW_PASSWORD]),
    )
}

async fn exchange(proxy: &TestProxy, input: &str) -> String {
    let mut raw = proxy.raw().await;
    raw.send(input.as_bytes()).await;
    // One reply per command (one command per line).
    let replies = input.matches("\r\n").count();
    String::from_utf8_lossy(&raw.read_replies(replies).await).into_owned()
}

#[tokio::test]
async fn noauth_wrongpass_and_hello_3_auth_with_redis_replies() {
    let (old, new) = caches();
    let proxy = TestProxy::start_text(&config(&old, &new, Some(NEW_PASSWORD))).await;

    // Before AUTH: every command but AUTH, HELLO and QUIT is refused, and
    // nothing reaches a cache.
    let got = exchange(&proxy, "SET k v\r\nGET k\r\nHELLO 3\r\nPING\r\n").await;
    let noauth = "-NOAUTH Authentication required.\r\n";
    let noauth_hello = "-NOAUTH HELLO must be called with the client already authenticated, otherwise the HELLO <proto> AUTH <user> <pass> option can be used to authenticate the client and select the RESP protocol version at the same time\r\n";
    assert_eq!(got, format!("{noauth}{noauth}{noauth_hello}{noauth}"));
    assert_eq!(proxy.stat("default", "writes"), 0);

    // A wrong password, then the right one in the same pipeline; a failed
    // AUTH later does not log the connection out (as in Redis).
    let wrongpass = "-WRONGPASS invalid username-password pair or user is disabled.\r\n";
    let got = exchange(
        &proxy,
        &format!(
            "AUTH nope\r\nAUTH app nope\r\nAUTH nobody {CLIENT_PASSWORD}\r\nAUTH\r\nAUTH a b c\r\nAUTH app {CLIENT_PASSWORD}\r\nSET k v\r\nAUTH again\r\nGET k\r\nRESET\r\nGET k\r\nAUTH {CLIENT_PASSWORD}\r\nGET k\r\n"
        ),
    )
    .await;
    assert_eq!(
        got,
        format!(
            "{wrongpass}{wrongpass}{wrongpass}-ERR wrong number of arguments for 'auth' command\r\n-ERR syntax error\r\n+OK\r\n+OK\r\n{wrongpass}$1\r\nv\r\n+RESET\r\n{noauth}+OK\r\n$1\r\nv\r\n"
        )
    );

    // HELLO 3 AUTH: a bad password changes nothing; the right one switches
    // to RESP3 with the caches' own HELLO reply.
    let got = exchange(
        &proxy,
        &format!("HELLO 3 AUTH app wrong\r\nHELLO 3 AUTH app {CLIENT_PASSWORD} SETNAME web1\r\nCLIENT GETNAME\r\nGET k\r\n"),
    )
    .await;
    assert!(got.starts_with(wrongpass), "{got}");
    let rest = &got[wrongpass.len()..];
    assert!(rest.starts_with('%'), "a RESP3 map: {rest}");
    assert!(rest.contains("$5\r\nredis\r\n"), "{rest}");
    assert!(rest.ends_with("$4\r\nweb1\r\n$1\r\nv\r\n"), "{rest}");
    let got = exchange(
        &proxy,
        "HELLO 4 AUTH app x\r\nHELLO 3 BOGUS\r\nHELLO 3 AUTH app\r\n",
    )
    .await;
    assert_eq!(
        got,
        "-NOPROTO unsupported protocol version\r\n-ERR Syntax error in HELLO option 'BOGUS'\r\n-ERR Syntax error in HELLO option 'AUTH'\r\n"
    );

    // The application's library authenticates like this too.
    let mut c = support::connect(&format!("redis://app:{CLIENT_PASSWORD}@{}/", proxy.addr)).await;
    for i in 0..20 {
        let _: () = redis::cmd("SET")
            .arg(format!("k{i}"))
            .arg(i)
            .query_async(&mut c)
            .await
            .unwrap();
    }
    proxy.wait_mirrors_settled().await;
    // Each cache got every write with its own password: the client's never
    // reached them (they would have refused it).
    assert_eq!(proxy.stat("default", "mirror_failed"), 0);
    assert_eq!(proxy.stat("default", "mirror_errors"), 0);
    for (server, pass) in [(&old, OLD_PASSWORD), (&new, NEW_PASSWORD)] {
        let mut s = redis::Client::open(format!("redis://:{pass}@{}/", server.addr()))
            .unwrap()
            .get_connection()
            .unwrap();
        let size: i64 = redis::cmd("DBSIZE").query(&mut s).unwrap();
        assert_eq!(size, 21, "{}", server.addr());
    }
}

/// Without [auth]: the proxy's own credentials for new, a database of its
/// own; RESET on the client must not leave new's connection logged out or
/// on db 0. `input` ends with `SET b 2`, mirrored to new.
async fn reset_keeps_new_usable(input: &str, want: &str) {
    let (old, new) = (
        RedisServer::start(),
        RedisServer::start_with(&["--requirepass", NEW_PASSWORD]),
    );
    let text = support::Config::new(&old.addr(), &new.addr())
        .route("default", None, Phase::DualWrite)
        .upstream(Side::New, "password", NEW_PASSWORD)
        .upstream(Side::New, "db", 2)
        .text();
    let proxy = TestProxy::start_text(&text).await;
    assert_eq!(exchange(&proxy, input).await, want);
    proxy.wait_mirrors_settled().await;
    assert_eq!(proxy.stat("default", "mirror_errors"), 0);
    assert_eq!(proxy.stat("default", "mirror_failed"), 0);
    let mut s = redis::Client::open(format!("redis://:{NEW_PASSWORD}@{}/2", new.addr()))
        .unwrap()
        .get_connection()
        .unwrap();
    assert_eq!(support::get(&mut s, "b").as_deref(), Some("2"));
}

#[tokio::test]
async fn reset_keeps_the_upstream_credentials_and_database() {
    reset_keeps_new_usable(
        "SET a 1\r\nRESET\r\nSET b 2\r\n",
        "+OK\r\n+RESET\r\n+OK\r\n",
    )
    .await;
}

/// Regression: a connection opened while a RESET was on its way got the
/// RESET after its setup, and with it lost the proxy's credentials and
/// database: the write mirrored there failed with NOAUTH. (In shared mode,
/// as the session leaves the shared connections for the RESET; in
/// dedicated mode whenever a cache is first used behind a RESET.)
#[tokio::test]
async fn a_connection_opened_behind_a_reset_keeps_the_upstream_credentials() {
    reset_keeps_new_usable("RESET\r\nSET b 2\r\n", "+RESET\r\n+OK\r\n").await;
}

#[tokio::test]
async fn upstream_auth_failure_is_reported_and_no_password_is_ever_logged() {
    let (old, new) = caches();
    // new's password comes from the environment, and is wrong.
    let wrong_new = "wrong-new-pass-5Tz";
    let mut served = support::Served::start(
        &config(&old, &new, None),
        &[("CUTOVER_UPSTREAMS__NEW__PASSWORD", wrong_new)],
    )
    .await;

    // Clients authenticate (right and wrong) and write; the writes reach old
    // and fail on new, which refused the proxy's password.
    let addr = format!("127.0.0.1:{}", served.port);
    let (out, _) = support::exchange(
        &addr,
        format!(
            "AUTH app wrong-client-pass\r\nAUTH app {CLIENT_PASSWORD}\r\nSET k v\r\nHELLO 3 AUTH default {CLIENT_PASSWORD}\r\nGET k\r\n"
        )
        .as_bytes(),
    )
    .await;
    let out = String::from_utf8_lossy(&out).into_owned();
    assert!(out.starts_with("-WRONGPASS"), "{out}");
    assert!(out.contains("+OK\r\n+OK\r\n"), "{out}");

    // Status says new fails, and why.
    let (code, body) = cutover::admin::client::request(&served.admin, "GET", "/status", None, None)
        .await
        .unwrap();
    assert_eq!(code, 200, "{body}");
    let status: cutover::admin::StatusView = serde_json::from_str(&body).unwrap();
    let new_view = &status.upstreams[1];
    let err = new_view.error.clone().unwrap_or_default();
    assert!(
        err.contains("upstream new") && err.contains("WRONGPASS"),
        "{body}"
    );
    assert!(status.upstreams[0].error.is_none(), "{body}");
    let cli = tokio::process::Command::new(env!("CARGO_BIN_EXE_cutover"))
        .args(["status", "--config", served.config.to_str().unwrap()])
        .output()
        .await
        .unwrap();
    let printed = String::from_utf8_lossy(&cli.stdout).into_owned();
    assert!(
        printed.contains(&format!("upstream new {} auth: FAILING: ", new.addr()))
            && printed.contains("WRONGPASS"),
        "{printed}"
    );

    let logs = served.stop_and_logs().await;
    // Reported at start, naming the upstream and the reason.
    assert!(
        logs.lines()
            .any(|l| l.contains("upstream check at start failed")
                && l.contains("side=new")
                && l.contains("WRONGPASS")),
        "{logs}"
    );
    assert!(
        logs.contains("upstream ready") && logs.contains("side=old"),
        "{logs}"
    );
    for secret in [
        CLIENT_PASSWORD,
        OLD_PASSWORD,
        NEW_PASSWORD,
        wrong_new,
        "wrong-client-pass",
        &sha256_hex(CLIENT_PASSWORD),
    ] {
        assert!(!logs.contains(secret), "{secret} in the logs:\n{logs}");
        assert!(!body.contains(secret), "{secret} in status");
        assert!(!printed.contains(secret), "{secret} in cutover status");
        assert!(!out.contains(secret), "{secret} in a reply");
    }
}

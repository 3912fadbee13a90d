//! TLS on both sides of the proxy, against real redis-server processes
//! serving TLS with certificates made in the test: TLS upstreams in
//! dual-write, a TLS client (redis-rs with rustls) on the TLS listener, the
//! handshake failures an operator meets (wrong CA, expired certificate,
//! wrong name, missing client certificate), each named with its upstream and
//! reason, and mutual TLS to the cache.

mod support;

use std::time::Duration;

use cutover::routing::{Phase, Side};
use redis::AsyncCommands;
use support::pki::{Leaf, Pki};
use support::{Config, RedisServer, TestProxy};

fn tls_lines(ca: &Pki) -> String {
    format!("tls = true\nca_file = \"{}\"", ca.ca_file().display())
}

fn config(old: &str, new: &str, phase: Phase) -> Config {
    Config::new(old, new).route("default", None, phase)
}

async fn tls_client(addr: std::net::SocketAddr, ca: &Pki) -> redis::aio::MultiplexedConnection {
    let client = redis::Client::build_with_tls(
        format!("rediss://{addr}/"),
        redis::TlsCertificates {
            client_tls: None,
            root_cert: Some(ca.ca_pem()),
        },
    )
    .unwrap();
    client.get_multiplexed_async_connection().await.unwrap()
}

#[tokio::test]
async fn plain_client_writes_land_on_both_tls_caches_in_dual_write() {
    let pki = Pki::new("cutover test CA");
    let leaf = pki.server();
    let old = RedisServer::start_tls(&pki, &leaf, &[]);
    let new = RedisServer::start_tls(&pki, &leaf, &[]);
    let text = config(&old.tls_addr(), &new.tls_addr(), Phase::DualWrite)
        .upstream_toml(Side::Old, &tls_lines(&pki))
        // The name in the certificate, not the address connected to.
        .upstream_toml(
            Side::New,
            &format!("{}\nserver_name = \"localhost\"", tls_lines(&pki)),
        )
        .text();
    let proxy = TestProxy::start_text(&text).await;

    let mut c = proxy.conn().await;
    for i in 0..50 {
        let _: () = c.set(format!("k{i}"), i).await.unwrap();
    }
    let _: i64 = c.incr("counter", 5).await.unwrap();
    let _: i64 = c.hset("h", "f", "v").await.unwrap();
    // A big value crosses many TLS records both ways.
    let big = "x".repeat(3 << 20);
    let _: () = c.set("big", &big).await.unwrap();
    let back: String = c.get("big").await.unwrap();
    assert_eq!(back.len(), big.len());
    proxy.wait_mirrors_settled().await;

    assert_eq!(proxy.stat("default", "mirror_failed"), 0);
    assert_eq!(proxy.stat("default", "mirror_errors"), 0);
    // Checked on each cache's plain port, from outside the proxy.
    for server in [&old, &new] {
        let mut s = server.sync();
        let size: i64 = redis::cmd("DBSIZE").query(&mut s).unwrap();
        assert_eq!(size, 53, "every key on {}", server.addr());
        assert_eq!(support::get(&mut s, "k49").as_deref(), Some("49"));
        assert_eq!(support::get(&mut s, "counter").as_deref(), Some("5"));
        let len: usize = redis::cmd("STRLEN").arg("big").query(&mut s).unwrap();
        assert_eq!(len, big.len());
    }
    // The offline tools reach TLS caches with the same settings.
    let settings = cutover::config::Settings::load(&proxy.config_path).unwrap();
    let mut caches = cutover::tools::Caches::new(&settings).unwrap();
    let report = cutover::tools::verify::run(&mut caches, &Default::default())
        .await
        .unwrap();
    assert_eq!(report.keys, 53, "{report:?}");
    assert!(report.equal, "{report:?}");
    // Status shows both upstreams as TLS and healthy.
    let (code, body) = proxy.admin("GET", "/status", None).await;
    assert_eq!(code, 200);
    let status: cutover::admin::StatusView = serde_json::from_str(&body).unwrap();
    assert!(
        status.upstreams.iter().all(|u| u.tls && u.error.is_none()),
        "{body}"
    );
}

#[tokio::test]
async fn tls_client_on_the_tls_listener_and_plain_beside_it_with_certificate_reload() {
    let (old, new) = support::start_pair();
    let pki = Pki::new("listener CA");
    let leaf = pki.server();
    let listen = format!(
        "[listen]\naddress = \"127.0.0.1:0\"\ntls_cert_file = \"{}\"\ntls_key_file = \"{}\"\nplain_address = \"127.0.0.1:0\"\n",
        leaf.cert.display(),
        leaf.key.display()
    );
    let text = config(&old.addr(), &new.addr(), Phase::DualWrite)
        .with(&listen)
        .text();
    let proxy = TestProxy::start_text(&text).await;

    let mut c = tls_client(proxy.addr, &pki).await;
    let _: () = c.set("over-tls", "yes").await.unwrap();
    let got: String = c.get("over-tls").await.unwrap();
    assert_eq!(got, "yes");
    let many: Vec<String> = (0..2000).map(|i| format!("v{i}")).collect();
    let _: () = c.rpush("list", &many).await.unwrap();
    let back: Vec<String> = c.lrange("list", 0, -1).await.unwrap();
    assert_eq!(back, many);

    // Plain TCP on the second address, same proxy.
    let plain = proxy.proxy.as_ref().unwrap().plain_addr().unwrap();
    let mut p = support::connect(&format!("redis://{plain}/")).await;
    let got: String = p.get("over-tls").await.unwrap();
    assert_eq!(got, "yes");

    // A plain client on the TLS port gets nothing it could mistake for a
    // reply, and the proxy goes on serving.
    let (out, _) = support::exchange(proxy.addr, b"PING\r\n").await;
    assert!(!out.starts_with(b"+PONG"), "{out:?}");
    let _: () = c.set("still", "up").await.unwrap();

    // A renewed certificate, from another CA, under the same file names:
    // picked up by the config reload, no restart.
    let other = Pki::new("renewed CA");
    let renewed: Leaf = other.server();
    std::fs::copy(&renewed.cert, &leaf.cert).unwrap();
    std::fs::copy(&renewed.key, &leaf.key).unwrap();
    proxy.rewrite_config(&text);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let mut fresh = loop {
        let client = redis::Client::build_with_tls(
            format!("rediss://{}/", proxy.addr),
            redis::TlsCertificates {
                client_tls: None,
                root_cert: Some(other.ca_pem()),
            },
        )
        .unwrap();
        match client.get_multiplexed_async_connection().await {
            Ok(c) => break c,
            Err(e) if std::time::Instant::now() < deadline => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("the renewed certificate was never served: {e}"),
        }
    };
    let got: String = fresh.get("still").await.unwrap();
    assert_eq!(got, "up");
    // The connection made before the renewal carries on.
    let got: String = c.get("over-tls").await.unwrap();
    assert_eq!(got, "yes");
    // A client trusting only the old CA no longer gets in.
    let stale = redis::Client::build_with_tls(
        format!("rediss://{}/", proxy.addr),
        redis::TlsCertificates {
            client_tls: None,
            root_cert: Some(pki.ca_pem()),
        },
    )
    .unwrap();
    assert!(stale.get_multiplexed_async_connection().await.is_err());
}

/// The reply a client gets when its command needs `new`, which the proxy
/// cannot reach over TLS; and the error `/status` shows for `new`.
async fn failure_seen(text: &str) -> (String, String) {
    let proxy = TestProxy::start_text(text).await;
    let mut raw = proxy.raw().await;
    raw.send(b"GET k\r\n").await;
    let reply = raw.read_until("\r\n").await;
    let (_, body) = proxy.admin("GET", "/status", None).await;
    let status: cutover::admin::StatusView = serde_json::from_str(&body).unwrap();
    let new = status
        .upstreams
        .iter()
        .find(|u| u.side == cutover::routing::Side::New)
        .unwrap();
    (reply, new.error.clone().unwrap_or_default())
}

#[tokio::test]
async fn wrong_ca_expired_certificate_and_wrong_name_each_say_which_upstream_and_why() {
    let pki = Pki::new("cutover test CA");
    let stranger = Pki::new("some other CA");
    let old = RedisServer::start();
    let good = RedisServer::start_tls(&pki, &pki.server(), &[]);
    let expired = RedisServer::start_tls(&pki, &pki.leaf(&["localhost", "127.0.0.1"], true), &[]);

    let cases = [
        (&good, tls_lines(&stranger), "not issued by a trusted CA"),
        (&expired, tls_lines(&pki), "expired at 2021-01-01"),
        (
            &good,
            format!("{}\nserver_name = \"cache.example.net\"", tls_lines(&pki)),
            "not valid for the name cache.example.net",
        ),
    ];
    for (server, lines, reason) in cases {
        let text = config(&old.addr(), &server.tls_addr(), Phase::NewOnly)
            .upstream_toml(Side::New, &lines)
            .text();
        let (reply, status_error) = failure_seen(&text).await;
        let named = format!("upstream new ({})", server.tls_addr());
        assert!(reply.starts_with("-ERR cutover: "), "{reply}");
        for text in [&reply, &status_error] {
            assert!(text.contains(&named), "{text}");
            assert!(text.contains("TLS"), "{text}");
            assert!(text.contains(reason), "wanted {reason:?} in {text}");
        }
    }

    // insecure_skip_verify (tests only) accepts the stranger's certificate.
    let text = config(&old.addr(), &good.tls_addr(), Phase::NewOnly)
        .upstream_toml(
            Side::New,
            &format!("{}\ninsecure_skip_verify = true", tls_lines(&stranger)),
        )
        .text();
    let proxy = TestProxy::start_text(&text).await;
    let mut c = proxy.conn().await;
    let _: () = c.set("k", "v").await.unwrap();
    assert_eq!(support::get(&mut good.sync(), "k").as_deref(), Some("v"));
}

#[tokio::test]
async fn mutual_tls_upstream_that_requires_a_client_certificate() {
    let pki = Pki::new("cutover test CA");
    let old = RedisServer::start();
    let new = RedisServer::start_tls(&pki, &pki.server(), &["--tls-auth-clients", "yes"]);
    let base = config(&old.addr(), &new.tls_addr(), Phase::DualWrite)
        .upstream_toml(Side::New, &tls_lines(&pki));

    // Without a client certificate the cache refuses, and says so.
    let new_only = config(&old.addr(), &new.tls_addr(), Phase::NewOnly)
        .upstream_toml(Side::New, &tls_lines(&pki));
    let (reply, status_error) = failure_seen(&new_only.text()).await;
    for text in [&reply, &status_error] {
        assert!(
            text.contains(&format!("upstream new ({})", new.tls_addr())),
            "{text}"
        );
        assert!(text.contains("client certificate"), "{text}");
    }

    let client = pki.leaf(&["cutover-proxy"], false);
    let text = base
        .upstream_toml(
            Side::New,
            &format!(
                "client_cert_file = \"{}\"\nclient_key_file = \"{}\"",
                client.cert.display(),
                client.key.display()
            ),
        )
        .text();
    let proxy = TestProxy::start_text(&text).await;
    let mut c = proxy.conn().await;
    for i in 0..20 {
        let _: () = c.set(format!("m{i}"), i).await.unwrap();
    }
    proxy.wait_mirrors_settled().await;
    assert_eq!(proxy.stat("default", "mirror_failed"), 0);
    let size: i64 = redis::cmd("DBSIZE").query(&mut new.sync()).unwrap();
    assert_eq!(size, 20, "every write reached new over mutual TLS");
}

#[tokio::test]
async fn listener_that_requires_client_certificates() {
    let (old, new) = support::start_pair();
    let pki = Pki::new("listener CA");
    let clients = Pki::new("clients CA");
    let leaf = pki.server();
    let listen = format!(
        "[listen]\naddress = \"127.0.0.1:0\"\ntls_cert_file = \"{}\"\ntls_key_file = \"{}\"\ntls_client_ca_file = \"{}\"\ntls_min_version = \"1.3\"\n",
        leaf.cert.display(),
        leaf.key.display(),
        clients.ca_file().display()
    );
    let text = config(&old.addr(), &new.addr(), Phase::OldOnly)
        .with(&listen)
        .text();
    let proxy = TestProxy::start_text(&text).await;
    let client = |tls: Option<redis::ClientTlsConfig>| {
        redis::Client::build_with_tls(
            format!("rediss://{}/", proxy.addr),
            redis::TlsCertificates {
                client_tls: tls,
                root_cert: Some(pki.ca_pem()),
            },
        )
        .unwrap()
    };
    // No certificate, or one from a CA the listener does not trust: no entry.
    let stranger = pki.leaf(&["app"], false);
    for tls in [
        None,
        Some(redis::ClientTlsConfig {
            client_cert: std::fs::read(&stranger.cert).unwrap(),
            client_key: std::fs::read(&stranger.key).unwrap(),
        }),
    ] {
        let refused = async {
            let mut c = client(tls).get_multiplexed_async_connection().await?;
            redis::cmd("PING").query_async::<String>(&mut c).await
        };
        assert!(refused.await.is_err());
    }
    let app = clients.leaf(&["app"], false);
    let mut c = client(Some(redis::ClientTlsConfig {
        client_cert: std::fs::read(&app.cert).unwrap(),
        client_key: std::fs::read(&app.key).unwrap(),
    }))
    .get_multiplexed_async_connection()
    .await
    .unwrap();
    let _: () = c.set("k", "v").await.unwrap();
    assert_eq!(support::get(&mut old.sync(), "k").as_deref(), Some("v"));

    // tls_min_version = "1.3": the same trusted client offering only TLS
    // 1.2 is refused at the handshake; offering 1.3 it gets in.
    for (versions, accepted) in [
        (&[&rustls::version::TLS12][..], false),
        (&[&rustls::version::TLS13][..], true),
    ] {
        let handshake = tls_handshake(proxy.addr, &pki, &app, versions).await;
        assert_eq!(handshake.is_ok(), accepted, "{versions:?}: {handshake:?}");
    }
}

/// A TLS handshake with the proxy's listener by a client offering only
/// `versions`, presenting `leaf` and trusting `ca`.
async fn tls_handshake(
    addr: std::net::SocketAddr,
    ca: &Pki,
    leaf: &Leaf,
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> std::io::Result<()> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(&ca.ca_pem()) {
        roots.add(cert.unwrap()).unwrap();
    }
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&leaf.cert)
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let key = PrivateKeyDer::from_pem_file(&leaf.key).unwrap();
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(versions)
        .unwrap()
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .unwrap();
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let name = ServerName::try_from("localhost").unwrap();
    let mut tls = connector.connect(name, tcp).await?;
    // With TLS 1.3 a refused client certificate shows after the
    // handshake: a PING must be answered.
    tls.write_all(b"PING\r\n").await?;
    let mut buf = [0u8; 7];
    tls.read_exact(&mut buf).await?;
    assert_eq!(&buf, b"+PONG\r\n");
    Ok(())
}

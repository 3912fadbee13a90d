//! Test harness: real `redis-server` processes on free ports, the proxy
//! in-process on port 0, and a raw RESP client for byte-level checks.
//!
//! A missing `redis-server` fails the test loudly; nothing here skips.
//!
//! | file | what |
//! | --- | --- |
//! | `redis.rs` | throwaway `redis-server`s (plain or TLS), killed on drop |
//! | `cluster.rs` | real Redis Clusters of them ([`RedisCluster`]) |
//! | `config.rs` | proxy configs, built as TOML values |
//! | `proxy.rs` | the proxy in-process ([`TestProxy`]) |
//! | `served.rs` | the `cutover` binary as a process ([`Served`]) |
//! | `raw.rs` | a raw RESP client ([`RawClient`], [`exchange`]) |
//! | `relay.rs` | a delaying/stalling/freezing TCP relay ([`StallingRelay`]) |
//! | `keyspace.rs` | whole-keyspace comparison, test data, [`Rng`] |
//! | `pki.rs` | test certificates made with rcgen |

#![allow(dead_code, unreachable_pub)]

mod cluster;
mod config;
mod keyspace;
pub mod pki;
mod proxy;
mod raw;
mod redis;
mod relay;
mod served;

// Each test binary uses a part of the harness.
#[allow(unused_imports)]
pub use self::cluster::*;
#[allow(unused_imports)]
pub use self::config::*;
#[allow(unused_imports)]
pub use self::keyspace::*;
#[allow(unused_imports)]
pub use self::proxy::*;
#[allow(unused_imports)]
pub use self::raw::*;
#[allow(unused_imports)]
pub use self::redis::*;
#[allow(unused_imports)]
pub use self::relay::*;
#[allow(unused_imports)]
pub use self::served::*;

/// Polls `check` until it holds (or fails the test after 20 s).
pub async fn wait_for(what: &str, mut check: impl AsyncFnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(20);
    while !check().await {
        assert!(tokio::time::Instant::now() < deadline, "never: {what}");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// The python of a virtualenv with redis-py (`scripts/python-client.sh`
/// prepares it once).
pub fn python_client() -> String {
    let root = env!("CARGO_MANIFEST_DIR");
    let prep = std::process::Command::new(format!("{root}/scripts/python-client.sh"))
        .output()
        .expect("scripts/python-client.sh runs");
    assert!(
        prep.status.success(),
        "could not prepare redis-py: {}",
        String::from_utf8_lossy(&prep.stderr)
    );
    String::from_utf8(prep.stdout).unwrap().trim().to_string()
}

pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()))
        .with_test_writer()
        .try_init();
}

//! A second client library: redis-py (installed into a local virtualenv by
//! `scripts/python-client.sh`) drives the proxy with its pipeline,
//! transaction, blocking, pub/sub and RESP3 (`protocol=3`) APIs and checks
//! both caches (`tests/clients/redis_py.py`).

mod support;

use cutover::routing::Phase;
use support::TestProxy;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_py_works_through_the_proxy() {
    let root = env!("CARGO_MANIFEST_DIR");
    let python = support::python_client();
    for phase in [Phase::DualWrite, Phase::ReadNew] {
        let (old, new) = support::start_pair();
        let proxy = TestProxy::start(&old, &new, &[("default", None, phase)]).await;
        let port = |addr: String| addr.rsplit(':').next().unwrap().to_string();
        let out = tokio::process::Command::new(&python)
            .arg(format!("{root}/tests/clients/redis_py.py"))
            .arg(proxy.addr.port().to_string())
            .arg(port(old.addr()))
            .arg(port(new.addr()))
            .arg(phase.to_string())
            .output()
            .await
            .unwrap();
        assert!(
            out.status.success() && out.stdout.starts_with(b"OK"),
            "{phase}: redis-py run failed:\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

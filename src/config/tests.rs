//! The config loader and its validation, on examples.

use super::*;
use crate::routing::Phase;

const GOOD: &str = r#"
[listen]
address = "127.0.0.1:6400"

[upstreams.old]
address = "127.0.0.1:6379"

[upstreams.new]
address = "127.0.0.1:6380"

[[routes]]
name = "sessions"
patterns = ["session:*", "sess:*"]
phase = "dual-write"

[[routes]]
name = "default"
phase = "old-only"
"#;

#[test]
fn the_commented_example_is_valid() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/cutover.toml");
    let s = Settings::load_with_env(&path, std::iter::empty()).unwrap();
    assert_eq!(s.journal, JournalConfig::default());
}

fn load(text: &str, env: &[(&str, &str)]) -> Result<Settings, ConfigError> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cutover.toml");
    std::fs::write(&path, text).unwrap();
    Settings::load_with_env(
        &path,
        env.iter().map(|(k, v)| (k.to_string(), v.to_string())),
    )
}

#[test]
fn the_contract_shape_loads() {
    let s = load(GOOD, &[]).unwrap();
    assert_eq!(s.routes.len(), 2);
    assert_eq!(s.routes[0].phase, Phase::DualWrite);
    assert_eq!(s.upstreams.old.command_timeout_ms, 5000);
    assert_eq!(s.commands.unknown, UnknownPolicy::Refuse);
}

#[test]
fn typo_names_file_line_and_field() {
    let err = load(
        &GOOD.replace("[upstreams.new]\naddress", "[upstreams.new]\nadress"),
        &[],
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("cutover.toml"), "{err}");
    assert!(err.contains("adress"), "{err}");
    assert!(err.contains("line 9"), "{err}");
}

#[test]
fn bad_phase_is_named() {
    let err = load(&GOOD.replace("\"dual-write\"", "\"dual_write\""), &[])
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("dual_write") && err.contains("dual-write"),
        "{err}"
    );
}

#[test]
fn env_overrides_with_prefix() {
    let s = load(
        GOOD,
        &[
            ("CUTOVER_UPSTREAMS__NEW__PASSWORD", "s3cret"),
            ("CUTOVER_LISTEN__ADDRESS", "0.0.0.0:7000"),
            ("CUTOVER_LOG", "debug"),
        ],
    )
    .unwrap();
    assert_eq!(
        s.upstreams.new.password.as_ref().map(Secret::expose),
        Some("s3cret")
    );
    assert_eq!(s.listen.address, "0.0.0.0:7000");
    assert!(!format!("{s:?}").contains("s3cret"));
    let err = load(GOOD, &[("CUTOVER_UPSTREAMS__NEW__PASWORD", "x")])
        .unwrap_err()
        .to_string();
    assert!(err.contains("paswor"), "{err}");
}

#[test]
fn route_shape_rules() {
    let no_default = GOOD.replace(
        "name = \"default\"\nphase",
        "name = \"default\"\npatterns = [\"x\"]\nphase",
    );
    assert!(load(&no_default, &[])
        .unwrap_err()
        .to_string()
        .contains("routes[1].patterns"));
    let default_first = GOOD.replace("patterns = [\"session:*\", \"sess:*\"]\n", "");
    let err = load(&default_first, &[]).unwrap_err().to_string();
    assert!(err.contains("routes[0].patterns"), "{err}");
    let empty = GOOD.replace("[\"session:*\", \"sess:*\"]", "[]");
    assert!(load(&empty, &[])
        .unwrap_err()
        .to_string()
        .contains("must not be empty"));
    let dup = GOOD.replace("\"sessions\"", "\"default\"");
    assert!(load(&dup, &[])
        .unwrap_err()
        .to_string()
        .contains("duplicate"));
    let bad_addr = GOOD.replace("127.0.0.1:6380", "localhost");
    assert!(load(&bad_addr, &[])
        .unwrap_err()
        .to_string()
        .contains("upstreams.new.address"));
}

#[test]
fn tls_and_auth_rules_name_the_field() {
    let new_tls = |lines: &str| {
        GOOD.replace(
            "address = \"127.0.0.1:6380\"\n",
            &format!("address = \"127.0.0.1:6380\"\n{lines}\n"),
        )
    };
    let listen = |lines: &str| {
        GOOD.replace(
            "address = \"127.0.0.1:6400\"\n",
            &format!("address = \"127.0.0.1:6400\"\n{lines}\n"),
        )
    };
    let auth =
        |sha: &str| format!("{GOOD}\n[auth]\nusers = [{{ name = \"app\", sha256 = \"{sha}\" }}]\n");
    let hash = "1ec1c26b50d5d3c58d9583181af8076655fe00756bf7285940ba3670f99fcba0";
    let cases = [
            (new_tls("ca_file = \"ca.pem\""), "upstreams.new.ca_file", "tls = true"),
            (new_tls("insecure_skip_verify = true"), "upstreams.new.insecure_skip_verify", "tls = true"),
            (new_tls("tls = true\nclient_cert_file = \"c.pem\""), "upstreams.new.client_key_file", "needs its key"),
            (new_tls("tls = true\nserver_name = \"not a name\""), "upstreams.new.server_name", "not a valid"),
            (new_tls("tls = true\ntls_min_version = \"1.1\""), "tls_min_version", "1.1"),
            (listen("tls_cert_file = \"c.pem\""), "listen.tls_key_file", "needs its key"),
            (listen("plain_address = \"127.0.0.1:6402\""), "listen.plain_address", "needs TLS"),
            (auth("abc"), "auth.users[0].sha256", "64 hex digits"),
            (format!("{GOOD}\n[auth]\nusers = []\n"), "auth.users", "at least one user"),
            (format!("{}\n[auth]\nusers = [{{ name = \"app\", sha256 = \"{hash}\" }}, {{ name = \"app\", sha256 = \"{hash}\" }}]\n", GOOD), "auth.users[1].name", "duplicate"),
            (format!("{GOOD}\n[auth]\nusers = [{{ name = \"app\", password = \"x\" }}]\n"), "password", "unknown field"),
        ];
    for (text, field, message) in cases {
        let err = load(&text, &[]).unwrap_err().to_string();
        assert!(
            err.contains(field) && err.contains(message),
            "{field}: {err}"
        );
    }
    let ok = load(&auth(hash), &[]).unwrap();
    assert_eq!(ok.auth.unwrap().users[0].name, "app");
}

#[test]
fn relative_tls_files_are_beside_the_config_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cutover.toml");
    let text = GOOD.replace(
            "address = \"127.0.0.1:6380\"\n",
            "address = \"127.0.0.1:6380\"\ntls = true\nca_file = \"tls/ca.pem\"\nclient_cert_file = \"/abs/c.pem\"\nclient_key_file = \"c.key\"\n",
        );
    std::fs::write(&path, text).unwrap();
    let s = Settings::load_with_env(&path, std::iter::empty()).unwrap();
    let new = &s.upstreams.new;
    assert_eq!(
        new.ca_file.as_deref(),
        Some(dir.path().join("tls/ca.pem").as_path())
    );
    assert_eq!(
        new.client_cert_file.as_deref(),
        Some(Path::new("/abs/c.pem"))
    );
    assert_eq!(
        new.client_key_file.as_deref(),
        Some(dir.path().join("c.key").as_path())
    );
}

#[test]
fn shared_connections_are_read_and_checked() {
    let new = |lines: &str| {
        GOOD.replace(
            "address = \"127.0.0.1:6380\"\n",
            &format!("address = \"127.0.0.1:6380\"\n{lines}\n"),
        )
    };
    let s = load(&new("connections = \"shared\"\nshared_per_node = 4"), &[]).unwrap();
    assert_eq!(
        s.upstreams.new.connections,
        crate::config::Connections::Shared
    );
    assert_eq!(s.upstreams.new.shared_per_node, 4);
    assert_eq!(
        s.upstreams.old.connections,
        crate::config::Connections::Dedicated
    );
    for (text, field, says) in [
        (
            new("connections = \"pooled\""),
            "connections",
            "unknown variant",
        ),
        (
            new("shared_per_node = 0"),
            "upstreams.new.shared_per_node",
            "between 1 and 64",
        ),
    ] {
        let err = load(&text, &[]).unwrap_err().to_string();
        assert!(err.contains(field) && err.contains(says), "{err}");
    }
}

#[test]
fn session_threads_are_read_and_checked() {
    let with = |n: &str| GOOD.replace("6400\"\n", &format!("6400\"\nworkers = {n}\n"));
    let s = load(&with("3"), &[]).unwrap();
    assert_eq!(s.listen.workers(), 3);
    let s = load(GOOD, &[]).unwrap();
    assert_eq!(s.listen.workers(), crate::workers::default_count());
    for n in ["0", "1025"] {
        let err = load(&with(n), &[]).unwrap_err().to_string();
        assert!(
            err.contains("listen.workers") && err.contains("between 1 and 1024"),
            "{err}"
        );
    }
}

//! The binary rejects a bad config with a message naming file, line and field.

mod support;

use cutover::routing::Phase;

fn run(args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_cutover"))
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn typo_is_rejected_naming_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cutover.toml");
    // Written out whole: the line number is part of what is checked.
    let typo = "[listen]\naddress = \"127.0.0.1:0\"\n\n[upstreams.old]\naddress = \"127.0.0.1:1\"\ncomand_timeout_ms = 2000\n\n[upstreams.new]\naddress = \"127.0.0.1:2\"\n\n[[routes]]\nname = \"default\"\nphase = \"old-only\"\n";
    std::fs::write(&path, typo).unwrap();
    for sub in ["check", "serve"] {
        let out = run(&[sub, "--config", path.to_str().unwrap()]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{sub} must fail");
        assert!(err.contains("cutover.toml"), "{sub}: {err}");
        assert!(err.contains("comand_timeout_ms"), "{sub}: {err}");
        assert!(err.contains("line 6"), "{sub}: {err}");
    }
}

#[test]
fn route_shape_errors_name_the_route() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cutover.toml");
    let text = support::config_text(
        "127.0.0.1:1",
        "127.0.0.1:2",
        &[
            ("default", None, Phase::OldOnly),
            ("late", Some(&["x:*"]), Phase::DualWrite),
        ],
        "",
    );
    std::fs::write(&path, text).unwrap();
    let out = run(&["check", "--config", path.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("routes[0].patterns") && err.contains("must be the last"),
        "{err}"
    );
}

#[test]
fn check_prints_routes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cutover.toml");
    let text = support::config_text(
        "127.0.0.1:1",
        "127.0.0.1:2",
        &[
            ("s", Some(&["s:*"]), Phase::DualWrite),
            ("default", None, Phase::OldOnly),
        ],
        "",
    );
    std::fs::write(&path, text).unwrap();
    let out = run(&["check", "--config", path.to_str().unwrap()]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("dual-write") && text.contains("s:*"),
        "{text}"
    );
}

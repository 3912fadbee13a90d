use super::*;

fn cfg(name: &str, phase: Phase) -> RouteConfig {
    RouteConfig {
        name: name.into(),
        patterns: None,
        phase,
        ramp_percent: None,
        shadow_reads: 0.0,
        shadow_repair: false,
        read_fallback: false,
        auto_cutover: None,
    }
}

fn st(phase: Phase, source: Source, config_phase: Phase) -> RouteState {
    RouteState {
        phase,
        source,
        config_phase,
        since_ms: 1,
        ramp_percent: None,
        config_ramp: None,
    }
}

#[test]
fn an_override_lasts_until_the_file_changes_that_route() {
    let before = BTreeMap::from([(
        "r".to_string(),
        st(Phase::ReadNew, Source::Admin, Phase::DualWrite),
    )]);
    let kept = reconcile(&[cfg("r", Phase::DualWrite)], &before, false);
    assert_eq!(kept["r"], before["r"]);
    let edited = reconcile(&[cfg("r", Phase::NewOnly)], &before, false);
    assert_eq!(edited["r"].phase, Phase::NewOnly);
    assert_eq!(edited["r"].source, Source::Config);
    // Back to the file's phase the flip was made against: the file rules.
    let gone = reconcile(&[cfg("other", Phase::OldOnly)], &before, false);
    assert!(!gone.contains_key("r"));
}

#[test]
fn with_a_fleet_the_file_never_moves_a_route_it_had() {
    let before = BTreeMap::from([(
        "r".to_string(),
        st(Phase::ReadNew, Source::Fleet, Phase::DualWrite),
    )]);
    let edited = reconcile(&[cfg("r", Phase::NewOnly)], &before, true);
    assert_eq!(edited["r"].phase, Phase::ReadNew);
    assert_eq!(edited["r"].source, Source::Fleet);
    assert_eq!(edited["r"].config_phase, Phase::NewOnly);
    // A route it never had starts from the file.
    let added = reconcile(&[cfg("s", Phase::DualWrite)], &before, true);
    assert_eq!(added["s"].phase, Phase::DualWrite);
}

#[test]
fn since_is_kept_while_the_phase_is() {
    let before = BTreeMap::from([(
        "r".to_string(),
        st(Phase::DualWrite, Source::Config, Phase::DualWrite),
    )]);
    assert_eq!(
        reconcile(&[cfg("r", Phase::DualWrite)], &before, false)["r"].since_ms,
        1
    );
    assert!(reconcile(&[cfg("r", Phase::ReadNew)], &before, false)["r"].since_ms > 1);
}

#[test]
fn flips_step_by_step_unless_forced_and_persist_first() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.json");
    let config = [cfg("r", Phase::OldOnly)];
    let commands = CommandsConfig::default();
    let (control, routes) = Control::start(&config, &commands, Some(path.clone()), false).unwrap();
    let router = Router::new(&routes, &commands);
    let err = control
        .flip(&router, "r", Phase::ReadNew, None, false, Source::Admin)
        .unwrap_err();
    assert!(err.to_string().contains("skips dual-write"), "{err}");
    assert!(matches!(
        control.flip(&router, "x", Phase::ReadNew, None, false, Source::Admin),
        Err(FlipError::NoSuchRoute(_))
    ));
    control
        .flip(&router, "r", Phase::ReadNew, None, true, Source::Admin)
        .unwrap();
    assert_eq!(router.load().routes[0].phase, Phase::ReadNew);
    // A restart resumes it.
    let (_, routes) = Control::start(&config, &commands, Some(path.clone()), false).unwrap();
    assert_eq!(routes[0].phase, Phase::ReadNew);
    // A corrupt file stops the start, naming the file.
    std::fs::write(&path, "{").unwrap();
    let err = Control::start(&config, &commands, Some(path), false).unwrap_err();
    assert!(err.to_string().contains("s.json"), "{err}");
}

//! The planner's decisions, without sockets.

use super::*;
use crate::routing::{CommandsConfig, RouteConfig, Router};

fn router(phase: Phase, extra: &str) -> Router {
    let route = |name: &str, patterns: Option<Vec<String>>, phase| RouteConfig {
        name: name.into(),
        patterns,
        phase,
        ramp_percent: None,
        shadow_reads: 0.5,
        shadow_repair: false,
        read_fallback: true,
        auto_cutover: None,
    };
    let commands = CommandsConfig {
        deny: vec!["FLUSHALL".into()],
        allow: vec![extra.into()],
        ..CommandsConfig::default()
    };
    Router::new(
        &[
            route("s", Some(vec!["s:*".into()]), phase),
            route("default", None, Phase::OldOnly),
        ],
        &commands,
    )
}

fn plan_of(r: &Router, args: &[&str], conn: ConnView) -> Plan {
    let cmd = Command::from_args(args);
    plan(&r.load(), commands::entry(&cmd), &cmd, &conn)
}

fn routed(p: Plan) -> Routed {
    match p {
        Plan::Routed(r) => r,
        other => panic!("not routed: {other:?}"),
    }
}

fn refusal(p: Plan) -> Refusal {
    match p {
        Plan::Refuse(r) => r,
        other => panic!("not refused: {other:?}"),
    }
}

const NONE: ConnView = ConnView {
    in_tx: false,
    subscribed_resp2: false,
    tracking: false,
    scan_side: None,
};

#[test]
fn a_write_in_dual_write_is_mirrored_and_compared() {
    let dual = router(Phase::DualWrite, "");
    let mirrored = |args: &[&str], conn| match routed(plan_of(&dual, args, conn)).how {
        How::Mirror { compare, probe } => (compare, probe),
        other => panic!("{args:?}: {other:?}"),
    };
    let r = routed(plan_of(&dual, &["SET", "s:1", "v"], NONE));
    assert_eq!((r.authoritative, r.mirror), (Side::Old, Some(Side::New)));
    assert_eq!(mirrored(&["SET", "s:1", "v"], NONE), (true, false));
    // Changed in place: the mirror is probed for the key first...
    assert_eq!(mirrored(&["HSET", "s:h", "f", "v"], NONE), (true, true));
    // ...except for tracking clients (the probe would be tracked there).
    let tracking = ConnView {
        tracking: true,
        ..NONE
    };
    assert_eq!(
        mirrored(&["HSET", "s:h", "f", "v"], tracking),
        (true, false)
    );
    // EVALSHA reaches the mirror as EVAL (or is repaired after NOSCRIPT):
    // compared like EVAL.
    assert_eq!(
        mirrored(&["EVALSHA", "ab", "1", "s:1"], NONE),
        (true, false)
    );
}

#[test]
fn effects_queueing_and_unmirrorable_blocking_writes() {
    let dual = router(Phase::DualWrite, "");
    let r = routed(plan_of(&dual, &["SPOP", "s:set"], NONE));
    assert_eq!(r.how, How::Effect(Effect::SPop));
    let tx = ConnView {
        in_tx: true,
        ..NONE
    };
    let r = routed(plan_of(&dual, &["SPOP", "s:set"], tx));
    assert!(matches!(
        r.how,
        How::Queue {
            effect: Some(Effect::SPop),
            ..
        }
    ));
    let r = routed(plan_of(&dual, &["BLPOP", "s:q", "0"], NONE));
    assert!(r.blocking);
    assert_eq!(r.how, How::Effect(Effect::Pop { left: true }));
    // A wrong arity is not mirrored: one side answers Redis's error.
    let r = routed(plan_of(&dual, &["SET", "s:1"], NONE));
    assert_eq!(r.mirror, None);
}

#[test]
fn reads_fall_back_or_are_shadowed_by_phase() {
    let r = routed(plan_of(&router(Phase::ReadNew, ""), &["GET", "s:1"], NONE));
    assert_eq!((r.authoritative, r.how), (Side::New, How::Fallback));
    let r = routed(plan_of(
        &router(Phase::ReadNew, ""),
        &["STRLEN", "s:1"],
        NONE,
    ));
    assert_eq!(
        r.how,
        How::Read {
            shadow: Some(Order::AsIs)
        }
    );
    let r = routed(plan_of(
        &router(Phase::DualWrite, ""),
        &["HGETALL", "s:1"],
        NONE,
    ));
    assert_eq!(
        r.how,
        How::Read {
            shadow: Some(Order::Pairs)
        }
    );
    let r = routed(plan_of(&router(Phase::NewOnly, ""), &["GET", "s:1"], NONE));
    assert_eq!(r.how, How::Read { shadow: None });
    let r = routed(plan_of(
        &router(Phase::DualWrite, ""),
        &["TTL", "s:1"],
        NONE,
    ));
    assert_eq!(r.how, How::Read { shadow: None });
}

#[test]
fn table_policy_and_subscribed_state() {
    let r = router(Phase::DualWrite, "CONFIG GET");
    assert!(matches!(
        refusal(plan_of(&r, &["FLUSHALL"], NONE)),
        Refusal::Denied { .. }
    ));
    assert!(matches!(
        refusal(plan_of(&r, &["CONFIG", "SET", "a", "b"], NONE)),
        Refusal::AdminNotAllowed { .. }
    ));
    let get = routed(plan_of(&r, &["CONFIG", "GET", "a"], NONE));
    assert!(!get.write && get.mirror.is_none());
    assert!(matches!(
        refusal(plan_of(&r, &["NOSUCH"], NONE)),
        Refusal::Unknown { .. }
    ));
    let sub = ConnView {
        subscribed_resp2: true,
        ..NONE
    };
    assert!(matches!(
        refusal(plan_of(&r, &["GET", "s:1"], sub)),
        Refusal::Subscribed { .. }
    ));
    assert!(matches!(plan_of(&r, &["PING", "x"], sub), Plan::Reply(_)));
    assert!(matches!(
        plan_of(&r, &["RESET"], sub),
        Plan::State(StateCmd::Reset, Side::Old)
    ));
}

#[test]
fn crossroute_and_sticky_scan() {
    let r = router(Phase::ReadNew, "");
    assert!(matches!(
        refusal(plan_of(&r, &["MGET", "s:1", "other"], NONE)),
        Refusal::CrossRoute { .. }
    ));
    let scan = routed(plan_of(&r, &["SCAN", "0"], NONE));
    assert_eq!(scan.scan_side, Some(Side::Old));
    let on_new = ConnView {
        scan_side: Some(Side::New),
        ..NONE
    };
    let more = routed(plan_of(&r, &["SCAN", "17"], on_new));
    assert_eq!(
        (more.authoritative, more.scan_side),
        (Side::New, Some(Side::New))
    );
    let restart = routed(plan_of(&r, &["SCAN", "0"], on_new));
    assert_eq!(restart.authoritative, Side::Old);
    // A key's iteration: its cursor is the third argument.
    let hmore = routed(plan_of(&r, &["HSCAN", "other", "17"], on_new));
    assert_eq!(
        (hmore.authoritative, hmore.scan_side),
        (Side::New, Some(Side::New))
    );
    let hstart = routed(plan_of(&r, &["ZSCAN", "other", "0"], on_new));
    assert_eq!(
        (hstart.authoritative, hstart.scan_side),
        (Side::Old, Some(Side::Old))
    );
    let get = routed(plan_of(&r, &["GET", "other"], on_new));
    assert_eq!((get.authoritative, get.scan_side), (Side::Old, None));
}

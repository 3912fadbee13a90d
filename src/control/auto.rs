//! Auto-cutover: routes with `auto_cutover` set flip themselves.
//!
//! - `dual-write -> read-new` once the route has been in `dual-write` for
//!   `min_dual_write_secs`, its shadow-read window holds at least
//!   `min_samples` reads and their agreement is at least `min_agreement`.
//! - `read-new -> dual-write` when the share of client commands new failed
//!   (connect errors, timeouts, dropped connections: `upstream_failed`)
//!   over the last `error_window_secs` passes `max_new_error_rate`, with at
//!   least `min_commands` commands in that window.
//!
//! Both are ordinary flips (persisted, step by step, `source: auto` in the
//! status) and are logged with the numbers that triggered them. What the
//! policy is waiting for is in the status (`auto_cutover`). After a flip
//! back, the route waits `min_dual_write_secs` again before it can return.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::watch;
use tracing::{info, warn};

use super::{Control, Source};
use crate::routing::{AutoCutover, Phase, RouteStats, Router};

/// How often routes are evaluated.
pub const CHECK_EVERY: Duration = Duration::from_millis(500);

/// Per route: (when, failed commands, commands) samples while in
/// `read-new`, and the last automatic flip, for the status.
#[derive(Default)]
struct RouteAuto {
    samples: VecDeque<(Instant, u64, u64)>,
    last: Option<String>,
}

/// Evaluates every route with a policy, until shutdown.
pub async fn run(control: Arc<Control>, router: Arc<Router>, mut shutdown: watch::Receiver<bool>) {
    let mut state: HashMap<String, RouteAuto> = HashMap::new();
    let mut tick = tokio::time::interval(CHECK_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.wait_for(|s| *s) => return,
        }
        evaluate(&control, &router, &mut state);
    }
}

/// Shows `now` in the status, with the last automatic flip.
fn show(stats: &RouteStats, now: String, last: &Option<String>) {
    let text = match last {
        Some(l) => format!("{now} (last: {l})"),
        None => now,
    };
    *stats.auto_status.lock().unwrap_or_else(|e| e.into_inner()) = Some(text);
}

fn evaluate(control: &Control, router: &Router, state: &mut HashMap<String, RouteAuto>) {
    let table = router.current();
    let statuses = control.status();
    for route in &table.routes {
        let Some(policy) = route.auto_cutover else {
            continue;
        };
        let Some(status) = statuses.iter().find(|s| *s.name == *route.name) else {
            continue;
        };
        let stats = &route.stats;
        let name = &*route.name;
        let st = state.entry(name.to_string()).or_default();
        if status.phase != Phase::ReadNew {
            st.samples.clear();
        }
        match status.phase {
            Phase::DualWrite => {
                let age = SystemTime::now()
                    .duration_since(status.since)
                    .unwrap_or_default();
                match waiting_for(&policy, age, stats) {
                    Some(reason) => show(stats, format!("waiting: {reason}"), &st.last),
                    None => flip_to_read_new((control, router), name, &policy, age, stats, st),
                }
            }
            Phase::ReadNew => judge_errors((control, router), name, &policy, stats, st),
            other => show(stats, format!("inactive in {other}"), &st.last),
        }
    }
}

/// What keeps a `dual-write` route from flipping, or `None` when nothing.
fn waiting_for(policy: &AutoCutover, age: Duration, stats: &RouteStats) -> Option<String> {
    let min_age = Duration::from_secs(policy.min_dual_write_secs);
    if age < min_age {
        return Some(format!(
            "in dual-write for {}s of {}s",
            age.as_secs(),
            min_age.as_secs()
        ));
    }
    let agreement = stats.shadow.agreement();
    if (agreement.samples as u64) < policy.min_samples {
        return Some(format!(
            "{} shadow reads of the {} needed",
            agreement.samples, policy.min_samples
        ));
    }
    let ratio = agreement.ratio.unwrap_or(0.0);
    if ratio < policy.min_agreement {
        return Some(format!(
            "shadow agreement {ratio:.4} below {}",
            policy.min_agreement
        ));
    }
    None
}

fn flip_to_read_new(
    (control, router): (&Control, &Router),
    name: &str,
    policy: &AutoCutover,
    age: Duration,
    stats: &RouteStats,
    st: &mut RouteAuto,
) {
    let agreement = stats.shadow.agreement();
    let ratio = agreement.ratio.unwrap_or(0.0);
    match control.flip(router, name, Phase::ReadNew, None, false, Source::Auto) {
        Ok(_) => {
            info!(
                route = name,
                agreement = ratio,
                samples = agreement.samples,
                dual_write_secs = age.as_secs(),
                min_agreement = policy.min_agreement,
                "auto-cutover: flipped to read-new"
            );
            st.last = Some(format!(
                "flipped to read-new at {}: agreement {ratio:.4} over {} shadow reads after {}s in dual-write",
                humantime::format_rfc3339_seconds(SystemTime::now()),
                agreement.samples,
                age.as_secs()
            ));
            show(stats, "in read-new".into(), &st.last);
        }
        Err(e) => {
            warn!(route = name, error = %e, "auto-cutover could not flip the route");
            show(stats, format!("flip to read-new failed: {e}"), &st.last);
        }
    }
}

fn judge_errors(
    (control, router): (&Control, &Router),
    name: &str,
    policy: &AutoCutover,
    stats: &RouteStats,
    st: &mut RouteAuto,
) {
    let window = &mut st.samples;
    let now = Instant::now();
    let failed = stats.upstream_failed.load(Ordering::Relaxed);
    let commands = stats.reads.load(Ordering::Relaxed) + stats.writes.load(Ordering::Relaxed);
    window.push_back((now, failed, commands));
    let span = Duration::from_secs(policy.error_window_secs);
    while window
        .front()
        .is_some_and(|(t, _, _)| now.duration_since(*t) > span)
    {
        window.pop_front();
    }
    let (_, failed0, commands0) = *window.front().expect("just pushed");
    let (failed, commands) = (failed - failed0, commands - commands0);
    if commands < policy.min_commands {
        let now = format!(
            "in read-new; {commands} commands in the last {}s (judged from {})",
            span.as_secs(),
            policy.min_commands
        );
        return show(stats, now, &st.last);
    }
    let rate = failed as f64 / commands as f64;
    if rate <= policy.max_new_error_rate {
        let now = format!(
            "in read-new; new failed {rate:.4} of {commands} commands in the last {}s",
            span.as_secs()
        );
        return show(stats, now, &st.last);
    }
    match control.flip(router, name, Phase::DualWrite, None, false, Source::Auto) {
        Ok(_) => {
            warn!(
                route = name,
                error_rate = rate,
                failed,
                commands,
                max_new_error_rate = policy.max_new_error_rate,
                "auto-cutover: new is failing; flipped back to dual-write"
            );
            st.samples.clear();
            st.last = Some(format!(
                "flipped back to dual-write at {}: new failed {failed} of {commands} commands ({rate:.4}) in {}s",
                humantime::format_rfc3339_seconds(SystemTime::now()),
                span.as_secs()
            ));
            show(stats, "in dual-write".into(), &st.last);
        }
        Err(e) => {
            warn!(route = name, error = %e, "auto-cutover could not flip the route back");
            show(
                stats,
                format!("flip back to dual-write failed: {e}"),
                &st.last,
            );
        }
    }
}

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
//!
//! [`Judge`] decides from a route's [`Figures`]; [`run`] feeds it this
//! instance's own figures and flips here. A fleet feeds it the figures
//! summed over its members and flips fleet-wide (`crate::fleet::auto`).

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::watch;
use tracing::{info, warn};

use super::{Control, RouteStatus, Source};
use crate::routing::{AutoCutover, Phase, RouteStats, Router};
use crate::shadow::Agreement;

/// How often routes are evaluated.
pub const CHECK_EVERY: Duration = Duration::from_millis(500);

/// What the policy judges a route by: its shadow-read window, and its
/// client commands and those new failed (running totals).
#[derive(Clone, Copy, Debug)]
pub struct Figures {
    pub shadow: Agreement,
    pub failed: u64,
    pub commands: u64,
}

impl Figures {
    /// This instance's figures for a route.
    pub fn of(stats: &RouteStats) -> Figures {
        Figures {
            shadow: stats.shadow.agreement(),
            failed: stats.upstream_failed.load(Ordering::Relaxed),
            commands: stats.reads.load(Ordering::Relaxed) + stats.writes.load(Ordering::Relaxed),
        }
    }
}

/// A flip the policy asks for, and why (with the numbers).
#[derive(Clone, Debug)]
pub struct Move {
    pub to: Phase,
    pub why: String,
}

/// Per route: (when, failed commands, commands) samples while in
/// `read-new`, and the last automatic flip, for the status.
#[derive(Default)]
struct RouteAuto {
    samples: VecDeque<(Instant, u64, u64)>,
    last: Option<String>,
}

/// The policy's memory across evaluations.
#[derive(Default)]
pub struct Judge {
    state: HashMap<String, RouteAuto>,
}

impl Judge {
    /// Judges a route in `status` by `figures`: shows what it waits for
    /// in the route's status, and returns the flip it asks for.
    pub fn judge(
        &mut self,
        status: &RouteStatus,
        policy: &AutoCutover,
        stats: &RouteStats,
        figures: Figures,
    ) -> Option<Move> {
        let st = self.state.entry(status.name.clone()).or_default();
        if status.phase != Phase::ReadNew {
            st.samples.clear();
        }
        match status.phase {
            Phase::DualWrite => {
                let age = SystemTime::now()
                    .duration_since(status.since)
                    .unwrap_or_default();
                match waiting_for(policy, age, figures.shadow) {
                    Some(reason) => {
                        show(stats, format!("waiting: {reason}"), &st.last);
                        None
                    }
                    None => Some(Move {
                        to: Phase::ReadNew,
                        why: format!(
                            "agreement {:.4} over {} shadow reads after {}s in dual-write",
                            figures.shadow.ratio.unwrap_or(0.0),
                            figures.shadow.samples,
                            age.as_secs()
                        ),
                    }),
                }
            }
            Phase::ReadNew => judge_errors(policy, stats, figures, st),
            other => {
                show(stats, format!("inactive in {other}"), &st.last);
                None
            }
        }
    }

    /// What became of a flip [`Judge::judge`] asked for.
    pub fn moved(
        &mut self,
        route: &str,
        stats: &RouteStats,
        mv: &Move,
        result: Result<(), String>,
    ) {
        let st = self.state.entry(route.to_string()).or_default();
        match result {
            Ok(()) => {
                match mv.to {
                    Phase::ReadNew => {
                        info!(route, why = %mv.why, "auto-cutover: flipped to read-new")
                    }
                    _ => {
                        warn!(route, why = %mv.why, "auto-cutover: new is failing; flipped back to dual-write")
                    }
                }
                st.samples.clear();
                st.last = Some(format!(
                    "{} at {}: {}",
                    flipped(mv.to),
                    humantime::format_rfc3339_seconds(SystemTime::now()),
                    mv.why
                ));
                show(stats, format!("in {}", mv.to), &st.last);
            }
            Err(e) => {
                warn!(route, to = %mv.to, error = %e, "auto-cutover could not flip the route");
                let flip = flipped(mv.to).replace("flipped", "flip");
                show(stats, format!("{flip} failed: {e}"), &st.last);
            }
        }
    }

    /// Shows `now` as what the route's policy does, with its last flip.
    pub fn show(&mut self, route: &str, stats: &RouteStats, now: String) {
        let st = self.state.entry(route.to_string()).or_default();
        show(stats, now, &st.last);
    }
}

/// A route with a policy, as evaluated.
pub struct Policed {
    pub status: RouteStatus,
    pub policy: AutoCutover,
    pub stats: Arc<RouteStats>,
}

/// The routes with a policy now.
pub fn policed(control: &Control, router: &Router) -> Vec<Policed> {
    let table = router.current();
    let statuses = control.status();
    table
        .routes
        .iter()
        .filter_map(|route| {
            let status = statuses.iter().find(|s| *s.name == *route.name)?;
            Some(Policed {
                status: status.clone(),
                policy: route.auto_cutover?,
                stats: route.stats.clone(),
            })
        })
        .collect()
}

/// Waits for the next evaluation; false at shutdown.
pub async fn next_check(
    tick: &mut Option<tokio::time::Interval>,
    shutdown: &mut watch::Receiver<bool>,
) -> bool {
    let tick = tick.get_or_insert_with(|| {
        let mut t = tokio::time::interval(CHECK_EVERY);
        t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        t
    });
    tokio::select! {
        _ = tick.tick() => true,
        _ = shutdown.wait_for(|s| *s) => false,
    }
}

/// Evaluates every route with a policy by this instance's figures, until
/// shutdown.
pub async fn run(control: Arc<Control>, router: Arc<Router>, mut shutdown: watch::Receiver<bool>) {
    let (mut judge, mut tick) = (Judge::default(), None);
    while next_check(&mut tick, &mut shutdown).await {
        for r in policed(&control, &router) {
            let (name, stats) = (&r.status.name, &*r.stats);
            if let Some(mv) = judge.judge(&r.status, &r.policy, stats, Figures::of(stats)) {
                let done = control.flip(&router, name, mv.to, None, false, Source::Auto);
                judge.moved(
                    name,
                    stats,
                    &mv,
                    done.map(|_| ()).map_err(|e| e.to_string()),
                );
            }
        }
    }
}

/// How the status names an automatic flip to `to`.
fn flipped(to: Phase) -> &'static str {
    match to {
        Phase::ReadNew => "flipped to read-new",
        _ => "flipped back to dual-write",
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

/// What keeps a `dual-write` route from flipping, or `None` when nothing.
fn waiting_for(policy: &AutoCutover, age: Duration, agreement: Agreement) -> Option<String> {
    let min_age = Duration::from_secs(policy.min_dual_write_secs);
    if age < min_age {
        return Some(format!(
            "in dual-write for {}s of {}s",
            age.as_secs(),
            min_age.as_secs()
        ));
    }
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

fn judge_errors(
    policy: &AutoCutover,
    stats: &RouteStats,
    figures: Figures,
    st: &mut RouteAuto,
) -> Option<Move> {
    let window = &mut st.samples;
    let now = Instant::now();
    // Totals summed over a fleet drop when a member restarts or leaves:
    // the window starts again from them.
    if window
        .back()
        .is_some_and(|&(_, f, c)| figures.failed < f || figures.commands < c)
    {
        window.clear();
    }
    window.push_back((now, figures.failed, figures.commands));
    let span = Duration::from_secs(policy.error_window_secs);
    while window
        .front()
        .is_some_and(|(t, _, _)| now.duration_since(*t) > span)
    {
        window.pop_front();
    }
    let (_, failed0, commands0) = *window.front().expect("just pushed");
    let (failed, commands) = (figures.failed - failed0, figures.commands - commands0);
    if commands < policy.min_commands {
        let now = format!(
            "in read-new; {commands} commands in the last {}s (judged from {})",
            span.as_secs(),
            policy.min_commands
        );
        show(stats, now, &st.last);
        return None;
    }
    let rate = failed as f64 / commands as f64;
    if rate <= policy.max_new_error_rate {
        let now = format!(
            "in read-new; new failed {rate:.4} of {commands} commands in the last {}s",
            span.as_secs()
        );
        show(stats, now, &st.last);
        return None;
    }
    Some(Move {
        to: Phase::DualWrite,
        why: format!(
            "new failed {failed} of {commands} commands ({rate:.4}) in {}s, over max_new_error_rate {}",
            span.as_secs(),
            policy.max_new_error_rate
        ),
    })
}

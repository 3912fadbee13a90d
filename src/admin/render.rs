//! `cutover status`: the status as a table.

use super::StatusView;
use crate::control::Source;

/// `cutover status`'s table.
pub fn render_status(s: &StatusView) -> String {
    let mut out = format!(
        "{:<16} {:<13} {:<26} {:<20} {:>10} {:>10} {:>10} {:>8} {:>8} {:>8} {:>8} {:>7}  patterns\n",
        "route",
        "phase",
        "set by",
        "since",
        "reads",
        "writes",
        "mirrored",
        "m.errors",
        "m.failed",
        "repaired",
        "journal",
        "shadow"
    );
    for r in &s.routes {
        let st = &r.status;
        let set_by = match st.source {
            Source::Config => "config".to_string(),
            other => format!("{} (file: {})", other.name(), st.config_phase),
        };
        let c = |k: &str| r.counts.get(k).copied().unwrap_or(0);
        let patterns = st
            .patterns
            .as_ref()
            .map_or_else(|| "(default)".to_string(), |p| p.join(" "));
        out.push_str(&format!(
            "{:<16} {:<13} {:<26} {:<20} {:>10} {:>10} {:>10} {:>8} {:>8} {:>8} {:>8} {:>7}  {}\n",
            st.name,
            match st.ramp_percent {
                Some(p) => format!("{} {p}%", st.phase.name()),
                None => st.phase.name().to_string(),
            },
            set_by,
            st.since,
            c("reads"),
            c("writes"),
            c("mirrored"),
            c("mirror_errors"),
            c("mirror_failed"),
            c("repaired"),
            r.journal_keys,
            r.shadow
                .ratio
                .map_or_else(|| "-".to_string(), |x| format!("{:.1}%", x * 100.0)),
            patterns
        ));
    }
    if let Some(f) = &s.fleet {
        out.push_str(&format!(
            "fleet {} member {}: serves epoch {} of {}{}\n",
            f.name,
            f.id,
            f.applied,
            f.epoch,
            f.out_of_date
                .as_ref()
                .map_or_else(String::new, |why| format!("; OUT OF DATE: {why}"))
        ));
    }
    for r in &s.routes {
        let c = &r.cross_slot;
        if !c.commands.is_empty() {
            let by_name: Vec<String> = c
                .commands
                .iter()
                .map(|(n, k)| format!("{n} x{k}"))
                .collect();
            out.push_str(&format!(
                "route {} cross-slot commands a clustered cache refuses: {} (latest: {})\n",
                r.status.name,
                by_name.join(", "),
                c.samples.iter().cloned().collect::<Vec<_>>().join(" | ")
            ));
        }
    }
    for r in &s.routes {
        if let Some(a) = &r.auto_cutover {
            out.push_str(&format!("route {} auto-cutover: {a}\n", r.status.name));
        }
    }
    for r in &s.routes {
        if let Some(b) = &r.backfill {
            let c = &b.counts;
            out.push_str(&format!(
                "route {} backfill {}: {} scanned, {} copied ({} type by type), {} redone, {} to repair, {} failed, {} keys/s{}\n",
                r.status.name,
                b.state,
                c.scanned,
                c.copied,
                c.typed,
                c.redone,
                c.handed_to_repair,
                c.failed,
                b.keys_per_sec,
                b.error.as_deref().map_or_else(String::new, |e| format!(" ({e})"))
            ));
        }
    }
    for r in s.routes.iter().filter(|r| r.needs_verify) {
        out.push_str(&format!(
            "route {} NEEDS VERIFY: the mirror-failure journal overflowed; verify the route, then clear the mark\n",
            r.status.name
        ));
    }
    for u in &s.upstreams {
        out.push_str(&format!(
            "upstream {} {}{}{}: {}\n",
            u.side,
            u.address,
            if u.tls { " tls" } else { "" },
            if u.credentials { " auth" } else { "" },
            u.error
                .as_deref()
                .map_or_else(|| "ok".to_string(), |e| format!("FAILING: {e}"))
        ));
    }
    if let Some(f) = &s.state_file {
        out.push_str(&format!("state file: {f}\n"));
    }
    out
}

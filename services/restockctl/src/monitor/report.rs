//! The monitor's output: one line per live notice, and the final report
//! (cycle history, summary, problems) as text or JSON. The checker speaks
//! domain types; here they take the shapes and names the README promises
//! (enum names as in the .proto, empty strings for unset fields).

use std::collections::BTreeMap;

use comfy_table::{Cell, CellAlignment, Table, presets};
use restock_domain::{
    Event,
    history::{Checker, Cycle, Notice, Problem, ProblemKind, Warning},
};
use serde::Serialize;

use crate::format::{duration_ms, outcome_proto_name, shorten, state_proto_name, time};

/// Live lines stay readable: a checkout's detail can be a whole HTTP answer
/// (the JSON report and `restockctl events` keep it in full).
const LIVE_DETAIL_CHARS: usize = 100;

/// The watched window.
#[derive(Debug, Clone, Serialize)]
pub struct Window {
    pub arbiter: String,
    pub started_unix_ms: u64,
    pub ended_unix_ms: u64,
    /// Stopped early (Ctrl-C).
    pub interrupted: bool,
    pub stuck_after_ms: u64,
}

/// Numbers for the summary.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    /// Cycles whose RELEASED/EXPIRED was seen.
    pub cycles_completed: usize,
    /// Cycles still holding the slot at the end.
    pub cycles_open: usize,
    /// Leases that disappeared without a RELEASED/EXPIRED seen.
    pub cycles_end_unobserved: usize,
    /// Completed cycles by outcome (`OUTCOME_PURCHASED`, ...).
    pub outcomes: BTreeMap<String, usize>,
    pub cycle_time_median_ms: Option<u64>,
    pub cycle_time_max_ms: Option<u64>,
    /// Problems by kind.
    pub problems: BTreeMap<ProblemKind, usize>,
    pub events: u64,
    pub transitions: u64,
    pub renewals: u64,
    pub snapshots: u64,
}

/// One event as the report shows it (every kind except RENEWED).
#[derive(Debug, Clone, Serialize)]
pub struct Transition {
    pub sequence: u64,
    pub at_unix_ms: u64,
    /// `GRANTED`, ...
    pub kind: String,
    /// Empty when the event names none (likewise the fields below).
    pub tcin: String,
    pub watcher_id: String,
    /// 0 for none.
    pub fencing_token: u64,
    /// `READY`, ...
    pub from_state: String,
    pub to_state: String,
    /// `OUTCOME_PURCHASED`, ...
    pub outcome: String,
    pub detail: String,
}

impl From<&Event> for Transition {
    fn from(e: &Event) -> Self {
        Self {
            sequence: e.sequence,
            at_unix_ms: e.unix_ms,
            kind: e.kind.as_str().to_owned(),
            tcin: e.tcin.as_ref().map(ToString::to_string).unwrap_or_default(),
            watcher_id: e
                .watcher_id
                .as_ref()
                .map(ToString::to_string)
                .unwrap_or_default(),
            fencing_token: e.fencing_token.map_or(0, |t| t.get()),
            from_state: e
                .from_state
                .map(state_proto_name)
                .unwrap_or_default()
                .to_owned(),
            to_state: e
                .to_state
                .map(state_proto_name)
                .unwrap_or_default()
                .to_owned(),
            outcome: e
                .outcome
                .map(outcome_proto_name)
                .unwrap_or_default()
                .to_owned(),
            detail: e.detail.clone(),
        }
    }
}

/// One purchase cycle as the report shows it.
#[derive(Debug, Clone, Serialize)]
pub struct CycleLine {
    /// 1, 2, ... in order of grant.
    pub number: usize,
    pub lease_id: String,
    pub tcin: String,
    pub watcher_id: String,
    pub fencing_token: u64,
    pub started_at_unix_ms: u64,
    pub ended_at_unix_ms: Option<u64>,
    /// As in the .proto (`OUTCOME_PURCHASED`, ...); `None` while open or when
    /// the end was not seen.
    pub outcome: Option<String>,
    pub duration_ms: Option<u64>,
    /// False when the lease was granted before the monitor watched (its start
    /// comes from the lease's grant time).
    pub start_observed: bool,
    /// False when the lease disappeared without a RELEASED/EXPIRED seen.
    pub end_observed: bool,
}

impl From<&Cycle> for CycleLine {
    fn from(c: &Cycle) -> Self {
        let end_observed = c.completed();
        Self {
            number: c.number,
            lease_id: c.lease_id.to_string(),
            tcin: c.tcin.to_string(),
            watcher_id: c.watcher_id.to_string(),
            fencing_token: c.token.get(),
            started_at_unix_ms: c.started_at_unix_ms,
            ended_at_unix_ms: c.ended_at_unix_ms(),
            // An end seen without an outcome shows as the protocol's unset one.
            outcome: end_observed
                .then(|| {
                    c.outcome()
                        .map_or("OUTCOME_UNSPECIFIED", outcome_proto_name)
                })
                .map(str::to_owned),
            duration_ms: c.duration_ms(),
            start_observed: c.start_observed,
            end_observed,
        }
    }
}

/// Everything the monitor saw, for the end of the run.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// No problem found.
    pub clean: bool,
    pub window: Window,
    pub summary: Summary,
    pub problems: Vec<Problem>,
    pub warnings: Vec<Warning>,
    pub cycles: Vec<CycleLine>,
    /// At most the first
    /// [`MAX_KEPT_TRANSITIONS`](restock_domain::history::MAX_KEPT_TRANSITIONS);
    /// `summary.transitions` counts them all.
    pub transitions: Vec<Transition>,
}

/// Median and maximum of some durations.
pub fn median_and_max(values: &[u64]) -> (Option<u64>, Option<u64>) {
    if values.is_empty() {
        return (None, None);
    }
    let mut v = values.to_vec();
    v.sort_unstable();
    let n = v.len();
    let median = if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2
    };
    (Some(median), v.last().copied())
}

impl Report {
    pub fn new(monitor: &Checker, window: Window) -> Self {
        let cycles: Vec<CycleLine> = monitor.cycles().iter().map(CycleLine::from).collect();
        let completed: Vec<&CycleLine> = cycles.iter().filter(|c| c.end_observed).collect();
        let mut outcomes = BTreeMap::new();
        for c in &completed {
            let o = c.outcome.clone().unwrap_or_else(|| "unknown".into());
            *outcomes.entry(o).or_insert(0) += 1;
        }
        let durations: Vec<u64> = completed.iter().filter_map(|c| c.duration_ms).collect();
        let (median, max) = median_and_max(&durations);
        let mut problems = BTreeMap::new();
        for p in monitor.problems() {
            *problems.entry(p.kind).or_insert(0) += 1;
        }
        Self {
            clean: monitor.problems().is_empty(),
            window,
            summary: Summary {
                cycles_completed: completed.len(),
                cycles_open: cycles
                    .iter()
                    .filter(|c| c.ended_at_unix_ms.is_none())
                    .count(),
                cycles_end_unobserved: cycles
                    .iter()
                    .filter(|c| c.ended_at_unix_ms.is_some() && !c.end_observed)
                    .count(),
                outcomes,
                cycle_time_median_ms: median,
                cycle_time_max_ms: max,
                problems,
                events: monitor.events_seen(),
                transitions: monitor.transitions_total(),
                renewals: monitor.renewals(),
                snapshots: monitor.snapshots_seen(),
            },
            problems: monitor.problems().to_vec(),
            warnings: monitor.warnings().to_vec(),
            cycles,
            transitions: monitor.transitions().iter().map(Transition::from).collect(),
        }
    }

    /// The report for people.
    pub fn render(&self) -> String {
        let mut text = String::new();
        let s = &self.summary;
        let w = &self.window;

        text.push_str("\nCycle history\n");
        if self.cycles.is_empty() {
            text.push_str("  (no purchase cycle)\n");
        } else {
            let mut t = Table::new();
            t.load_preset(presets::NOTHING);
            t.set_header(
                [
                    "#", "PRODUCT", "WATCHER", "TOKEN", "START", "END", "OUTCOME", "DURATION",
                ]
                .map(Cell::new),
            );
            for c in &self.cycles {
                let start = if c.start_observed {
                    time(c.started_at_unix_ms)
                } else {
                    format!("{} (before)", time(c.started_at_unix_ms))
                };
                let (end, outcome) = match (c.ended_at_unix_ms, c.end_observed) {
                    (None, _) => ("-".to_owned(), "still held".to_owned()),
                    (Some(e), true) => (time(e), outcome_word(c.outcome.as_deref())),
                    (Some(e), false) => (format!("by {}", time(e)), "end not seen".to_owned()),
                };
                t.add_row(vec![
                    Cell::new(c.number).set_alignment(CellAlignment::Right),
                    Cell::new(&c.tcin),
                    Cell::new(&c.watcher_id),
                    Cell::new(c.fencing_token).set_alignment(CellAlignment::Right),
                    Cell::new(start),
                    Cell::new(end),
                    Cell::new(outcome),
                    Cell::new(c.duration_ms.map_or("-".into(), duration_ms))
                        .set_alignment(CellAlignment::Right),
                ]);
            }
            text.push_str(&crate::format::trim_lines(&t.to_string()));
            text.push('\n');
        }

        text.push_str("\nSummary\n");
        text.push_str(&format!(
            "  watched         {} for {} ({} to {}){}\n",
            w.arbiter,
            duration_ms(w.ended_unix_ms.saturating_sub(w.started_unix_ms)),
            time(w.started_unix_ms),
            time(w.ended_unix_ms),
            if w.interrupted { ", stopped early" } else { "" }
        ));
        text.push_str(&format!(
            "  observed        {} events ({} renewals), {} status snapshots\n",
            s.events, s.renewals, s.snapshots
        ));
        let mut cycles = format!(
            "{} completed, {} still open",
            s.cycles_completed, s.cycles_open
        );
        if s.cycles_end_unobserved > 0 {
            cycles.push_str(&format!(", {} ended unseen", s.cycles_end_unobserved));
        }
        text.push_str(&format!("  cycles          {cycles}\n"));
        let outcomes = if s.outcomes.is_empty() {
            "-".to_owned()
        } else {
            s.outcomes
                .iter()
                .map(|(o, n)| format!("{} {n}", outcome_word(Some(o))))
                .collect::<Vec<_>>()
                .join(", ")
        };
        text.push_str(&format!("  outcomes        {outcomes}\n"));
        match (s.cycle_time_median_ms, s.cycle_time_max_ms) {
            (Some(median), Some(max)) => text.push_str(&format!(
                "  time per cycle  median {}, max {}\n",
                duration_ms(median),
                duration_ms(max)
            )),
            _ => text.push_str("  time per cycle  -\n"),
        }
        text.push_str(&format!(
            "  stuck after     {}\n",
            duration_ms(w.stuck_after_ms)
        ));

        if !self.warnings.is_empty() {
            text.push_str(&format!(
                "\nWarnings ({}; they do not fail the run)\n",
                self.warnings.len()
            ));
            for warning in &self.warnings {
                text.push_str(&format!(
                    "  {} {}\n",
                    time(warning.at_unix_ms),
                    warning.message
                ));
            }
        }

        if self.problems.is_empty() {
            text.push_str(&format!(
                "\nRESULT: clean: no product switch, no concurrent attempt, no stuck purchase in {} cycles\n",
                s.cycles_completed
            ));
        } else {
            text.push_str(&format!("\nProblems ({})\n", self.problems.len()));
            for p in &self.problems {
                text.push_str(&format!("  {}\n", problem_line(p)));
            }
            let counts: Vec<String> = s
                .problems
                .iter()
                .map(|(k, n)| format!("{n} {}", k.label()))
                .collect();
            text.push_str(&format!(
                "\nRESULT: {} problem{} found: {}\n",
                self.problems.len(),
                if self.problems.len() == 1 { "" } else { "s" },
                counts.join(", ")
            ));
        }
        text
    }
}

fn outcome_word(o: Option<&str>) -> String {
    match o {
        None => "-".into(),
        Some(o) => o
            .strip_prefix("OUTCOME_")
            .unwrap_or(o)
            .to_ascii_lowercase()
            .replace('_', "-"),
    }
}

fn problem_line(p: &Problem) -> String {
    let at = match p.sequence {
        Some(seq) => format!("event #{seq}"),
        None => "status".to_owned(),
    };
    format!(
        "PROBLEM {}: {} ({at}, {})",
        p.kind.label(),
        p.detail,
        time(p.at_unix_ms)
    )
}

/// One live line for a notice.
pub fn notice_line(n: &Notice) -> String {
    match n {
        Notice::Transition(e) => {
            let t = Transition::from(e);
            let mut line = format!("{} #{} {}", time(t.at_unix_ms), t.sequence, t.kind);
            if !t.tcin.is_empty() {
                line.push_str(&format!(" {}", t.tcin));
            }
            if !t.from_state.is_empty() || !t.to_state.is_empty() {
                line.push_str(&format!(" {}->{}", t.from_state, t.to_state));
            }
            if !t.outcome.is_empty() {
                line.push_str(&format!(" outcome={}", outcome_word(Some(&t.outcome))));
            }
            if !t.watcher_id.is_empty() {
                line.push_str(&format!(" watcher={}", t.watcher_id));
            }
            if t.fencing_token != 0 {
                line.push_str(&format!(" token={}", t.fencing_token));
            }
            if !t.detail.is_empty() {
                line.push_str(&format!(
                    " detail={:?}",
                    shorten(&t.detail, LIVE_DETAIL_CHARS)
                ));
            }
            line
        }
        Notice::CycleEnded(c) => {
            let c = CycleLine::from(c);
            if c.end_observed {
                format!(
                    "cycle {} done: product {} by {} (token {}), {} after {}",
                    c.number,
                    c.tcin,
                    c.watcher_id,
                    c.fencing_token,
                    outcome_word(c.outcome.as_deref()),
                    c.duration_ms.map_or("-".into(), duration_ms)
                )
            } else {
                format!(
                    "cycle {} over: product {} (token {}); its end was not seen",
                    c.number, c.tcin, c.fencing_token
                )
            }
        }
        Notice::Problem(p) => problem_line(p),
        Notice::Warning(w) => format!("WARNING: {}", w.message),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_and_even_counts() {
        assert_eq!(median_and_max(&[]), (None, None));
        assert_eq!(median_and_max(&[30, 10, 20]), (Some(20), Some(30)));
        assert_eq!(median_and_max(&[40, 10, 20, 30]), (Some(25), Some(40)));
    }

    #[test]
    fn long_details_are_shortened_in_live_lines() {
        assert_eq!(shorten("short", 100), "short");
        let long = "é".repeat(150);
        assert_eq!(shorten(&long, 100), format!("{}...", "é".repeat(100)));
    }

    #[test]
    fn the_report_shows_domain_values_with_the_proto_s_names() {
        use restock_domain::{
            EventKind, LeaseId, Outcome, ProductId, ProductState, WatcherId, history::build,
        };
        let lease = build::lease(
            &LeaseId::parse("lease-1").unwrap(),
            &ProductId::parse("100").unwrap(),
            &WatcherId::parse("w1").unwrap(),
            3,
            1_000,
        );
        let mut m = Checker::new(std::time::Duration::from_secs(120));
        for e in [
            build::plain(1, 900, EventKind::ArbiterStarted),
            build::granted(2, 1_000, &lease, ProductState::Queued),
            build::renewed(3, 1_500, &lease),
            build::released(4, 2_500, &lease, Outcome::OutOfStock),
        ] {
            m.observe_event(&e, e.unix_ms);
        }
        let window = Window {
            arbiter: "http://a:1".into(),
            started_unix_ms: 900,
            ended_unix_ms: 3_000,
            interrupted: false,
            stuck_after_ms: 120_000,
        };
        let json = serde_json::to_value(Report::new(&m, window)).unwrap();
        assert_eq!(json["clean"], true);
        assert_eq!(json["summary"]["outcomes"]["OUTCOME_OUT_OF_STOCK"], 1);
        assert_eq!(json["summary"]["renewals"], 1);
        let granted = &json["transitions"][1];
        assert_eq!(granted["kind"], "GRANTED");
        assert_eq!(granted["from_state"], "QUEUED");
        assert_eq!(granted["to_state"], "ATTEMPTING");
        assert_eq!(granted["outcome"], "");
        assert_eq!(granted["fencing_token"], 3);
        assert_eq!(json["transitions"][0]["tcin"], "");
        assert_eq!(json["transitions"].as_array().unwrap().len(), 3);
        let cycle = &json["cycles"][0];
        assert_eq!(cycle["lease_id"], "lease-1");
        assert_eq!(cycle["outcome"], "OUTCOME_OUT_OF_STOCK");
        assert_eq!(cycle["duration_ms"], 1_500);
        assert_eq!(cycle["end_observed"], true);
        let lines: Vec<String> = m
            .transitions()
            .iter()
            .map(|e| notice_line(&Notice::Transition(e.clone())))
            .collect();
        assert!(
            lines[2].ends_with(
                "#4 RELEASED 100 ATTEMPTING->READY outcome=out-of-stock watcher=w1 token=3"
            ),
            "{lines:#?}"
        );
        let done = notice_line(&Notice::CycleEnded(m.cycles()[0].clone()));
        assert_eq!(
            done,
            "cycle 1 done: product 100 by w1 (token 3), out-of-stock after 1.5s"
        );
    }

    #[test]
    fn outcome_words_match_the_release_flag() {
        assert_eq!(outcome_word(Some("OUTCOME_OUT_OF_STOCK")), "out-of-stock");
        assert_eq!(outcome_word(Some("OUTCOME_PURCHASED")), "purchased");
    }
}

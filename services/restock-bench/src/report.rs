//! The results table, the issue's targets checked against the rows, and the
//! JSON file.

use std::path::Path;

use anyhow::Context;
use comfy_table::{Table, presets::ASCII_MARKDOWN};

use crate::stats::{Row, Store, System};

fn ms(us: Option<f64>) -> String {
    us.map_or_else(String::new, |v| {
        let ms = v / 1_000.0;
        if ms < 10.0 {
            format!("{ms:.3}")
        } else {
            format!("{ms:.1}")
        }
    })
}

fn thousands(v: f64) -> String {
    let n = v.round() as u64;
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// The rows as a Markdown table (latencies in milliseconds).
pub fn table(rows: &[Row]) -> String {
    let mut t = Table::new();
    t.load_preset(ASCII_MARKDOWN);
    t.set_header(vec![
        "scenario",
        "system",
        "variant",
        "fsync",
        "p50 ms",
        "p99 ms",
        "p99.9 ms",
        "per second",
        "RSS MB",
        "CPU %",
        "samples",
    ]);
    for r in rows {
        t.add_row(vec![
            r.scenario.to_owned(),
            r.system.as_str().to_owned(),
            r.variant.clone().unwrap_or_default(),
            r.fsync
                .map_or_else(String::new, |f| if f { "on" } else { "off" }.into()),
            ms(r.p50_us),
            ms(r.p99_us),
            ms(r.p999_us),
            r.per_second.map_or_else(String::new, thousands),
            r.rss_mb.map_or_else(String::new, |v| format!("{v:.1}")),
            r.cpu_percent
                .map_or_else(String::new, |v| format!("{v:.0}")),
            r.samples.map_or_else(String::new, |v| v.to_string()),
        ]);
    }
    t.to_string()
}

/// The end-to-end rows side by side: latency and the poll-gap spread of
/// each configuration; `None` without end-to-end rows.
pub fn e2e_table(rows: &[Row]) -> Option<String> {
    let e2e = matrix_rows(rows);
    if e2e.is_empty() {
        return None;
    }
    let mut t = Table::new();
    t.load_preset(ASCII_MARKDOWN);
    t.set_header(vec![
        "N",
        "T ms",
        "polling",
        "p50 ms",
        "p99 ms",
        "p99.9 ms",
        "gap median ms",
        "gap p99 ms",
        "gap p99/median",
        "flips",
    ]);
    let num =
        |v: Option<f64>, digits: usize| v.map_or_else(String::new, |v| format!("{v:.digits$}"));
    for r in e2e {
        t.add_row(vec![
            r.watchers.map_or_else(String::new, |n| n.to_string()),
            r.poll_interval_ms
                .map_or_else(String::new, |n| n.to_string()),
            match r.planned {
                Some(true) => "planned".into(),
                Some(false) => "unplanned".into(),
                None => String::new(),
            },
            ms(r.p50_us),
            ms(r.p99_us),
            ms(r.p999_us),
            num(r.poll_gap_p50_ms, 1),
            num(r.poll_gap_p99_ms, 1),
            num(r.poll_gap_spread, 2),
            r.samples.map_or_else(String::new, |v| v.to_string()),
        ]);
    }
    Some(t.to_string())
}

/// The end-to-end rows of issue 14's matrix (not under a request budget).
fn matrix_rows(rows: &[Row]) -> Vec<&Row> {
    find(rows, "end_to_end", System::Restock, None)
        .into_iter()
        .filter(|r| r.endpoint.is_none())
        .collect()
}

/// The end-to-end rows under a request budget (issue 20).
fn budget_rows(rows: &[Row]) -> Vec<&Row> {
    find(rows, "end_to_end", System::Restock, None)
        .into_iter()
        .filter(|r| r.endpoint.is_some())
        .collect()
}

/// The budgeted end-to-end rows side by side (issue 20): latency, and the
/// requests spent; `None` without them.
pub fn budget_table(rows: &[Row]) -> Option<String> {
    let b = budget_rows(rows);
    if b.is_empty() {
        return None;
    }
    let mut t = Table::new();
    t.load_preset(ASCII_MARKDOWN);
    t.set_header(vec![
        "N",
        "R req/s",
        "endpoint",
        "T s",
        "p50 ms",
        "p99 ms",
        "max ms",
        "requests",
        "req/detection",
        "req/s per watcher",
        "min req gap ms",
        "product gap median ms",
        "flips",
    ]);
    let num =
        |v: Option<f64>, digits: usize| v.map_or_else(String::new, |v| format!("{v:.digits$}"));
    for r in b {
        t.add_row(vec![
            r.watchers.map_or_else(String::new, |n| n.to_string()),
            num(r.max_rps, 1),
            r.endpoint.unwrap_or_default().to_owned(),
            num(r.poll_interval_ms.map(|ms| ms as f64 / 1_000.0), 0),
            ms(r.p50_us),
            ms(r.p99_us),
            ms(r.max_us),
            r.requests.map_or_else(String::new, |v| v.to_string()),
            num(r.requests_per_detection, 1),
            num(r.requests_per_s_per_watcher, 2),
            num(r.min_request_gap_ms, 0),
            num(r.poll_gap_p50_ms, 0),
            r.samples.map_or_else(String::new, |v| v.to_string()),
        ]);
    }
    Some(t.to_string())
}

/// Issue 20: with the batch endpoint, p99 ≤ 1/(N·R) + 50 ms, beside
/// per-product polling measured in the same run; and every watcher within
/// its budget.
fn budget_targets(rows: &[Row]) -> Vec<TargetCheck> {
    let b = budget_rows(rows);
    let mut out = Vec::new();
    for r in b.iter().filter(|r| r.endpoint == Some("summary")) {
        let (Some(p99), Some(rps)) = (r.p99_us, r.max_rps) else {
            continue;
        };
        let n = r.watchers.unwrap_or(1).max(1);
        let limit_ms = 1_000.0 / (n as f64 * rps) + 50.0;
        let per_product = b
            .iter()
            .find(|o| {
                o.endpoint == Some("hierarchy")
                    && o.watchers == r.watchers
                    && o.max_rps == r.max_rps
            })
            .and_then(|o| o.p99_us)
            .map_or_else(String::new, |p| {
                format!("; one request per product: p99 {:.1} s", p / 1_000_000.0)
            });
        out.push(TargetCheck {
            target: format!(
                "budget: batch p99 ≤ 1/(N·R) + 50 ms, N = {n}, R = {rps} req/s, {} products",
                r.products.unwrap_or(0)
            ),
            measured: format!(
                "p99 {:.0} ms vs {limit_ms:.0} ms (p50 {:.0} ms; {:.1} requests per detection){per_product}",
                p99 / 1_000.0,
                r.p50_us.unwrap_or(0.0) / 1_000.0,
                r.requests_per_detection.unwrap_or(0.0),
            ),
            met: Some(p99 <= limit_ms * 1_000.0),
        });
    }
    // The budget held: no watcher sent more than R requests per second
    // (2% for the clocks), nor two requests closer than 0.98/R (arrival
    // times at the simulator carry the scheduling of both sides).
    let rates: Vec<(f64, f64, Option<f64>)> = b
        .iter()
        .filter_map(|r| {
            Some((
                r.max_rps?,
                r.requests_per_s_per_watcher?,
                r.min_request_gap_ms,
            ))
        })
        .collect();
    if !rates.is_empty() {
        let worst = rates
            .iter()
            .map(|(rps, rate, _)| rate / rps)
            .fold(0.0, f64::max);
        let tightest = rates
            .iter()
            .filter_map(|(rps, _, gap)| Some((*gap)? * rps / 1_000.0))
            .fold(f64::INFINITY, f64::min);
        out.push(TargetCheck {
            target: "budget: every watcher within R (budgeted rows)".into(),
            measured: format!(
                "at most {:.2} of R on average; shortest gap between one watcher's requests {}",
                worst,
                if tightest.is_finite() {
                    format!("{tightest:.3} of 1/R")
                } else {
                    "not seen".into()
                }
            ),
            met: Some(worst <= 1.02 && (!tightest.is_finite() || tightest >= 0.98)),
        });
    }
    out
}

/// The rows of issue 13 side by side: hand-off and grant with the arbiter
/// on its state file and on etcd, etcd's lock, one guarded etcd txn, and
/// the failover gaps; `None` without any etcd-store row.
pub fn replicas_table(rows: &[Row]) -> Option<String> {
    if !rows.iter().any(|r| r.store == Some(Store::Etcd)) {
        return None;
    }
    let mut t = Table::new();
    t.load_preset(ASCII_MARKDOWN);
    t.set_header(vec![
        "scenario", "system", "store", "variant", "fsync", "p50 ms", "p99 ms", "max ms", "samples",
    ]);
    let shown = rows.iter().filter(|r| match r.scenario {
        "handoff" | "grant" => {
            r.system == System::Etcd || (r.system == System::Restock && r.store.is_some())
        }
        "failover" => true,
        _ => false,
    });
    for r in shown {
        t.add_row(vec![
            r.scenario.to_owned(),
            r.system.as_str().to_owned(),
            match r.store {
                Some(Store::File) => "file".into(),
                Some(Store::Etcd) => "etcd".into(),
                None => String::new(),
            },
            r.variant.clone().unwrap_or_default(),
            r.fsync
                .map_or_else(String::new, |f| if f { "on" } else { "off" }.into()),
            ms(r.p50_us),
            ms(r.p99_us),
            ms(r.max_us),
            r.samples.map_or_else(String::new, |v| v.to_string()),
        ]);
    }
    Some(t.to_string())
}

/// One target of issue 7, checked.
#[derive(Debug, Clone, PartialEq)]
pub struct TargetCheck {
    pub target: String,
    pub measured: String,
    /// `None` when the rows needed were not measured.
    pub met: Option<bool>,
}

/// The rows of a scenario and system (with `fsync`, of that setting). The
/// arbiter's rows are those on its state file: the targets of issues 7 and
/// 14 are about it; its rows on etcd are checked apart.
fn find<'a>(rows: &'a [Row], scenario: &str, system: System, fsync: Option<bool>) -> Vec<&'a Row> {
    rows.iter()
        .filter(|r| r.scenario == scenario && r.system == system)
        .filter(|r| fsync.is_none() || r.fsync == fsync)
        .filter(|r| r.store != Some(Store::Etcd))
        .collect()
}

/// The slack allowed over "one guarded txn" (issue 13: "about one guarded
/// etcd transaction over the file store's, no more").
const ONE_TXN_SLACK: f64 = 1.25;

/// Issue 13: the arbiter on etcd costs about one guarded etcd txn over the
/// arbiter on its state file without fsync (where the only durable write
/// is the etcd one), at p50.
fn one_txn_over(rows: &[Row], scenario: &str, what: &str) -> TargetCheck {
    let target = format!(
        "{what} on etcd ≤ on the state file (fsync off) + one guarded etcd txn, p50 (×{ONE_TXN_SLACK} slack)"
    );
    let p50 = |r: Option<&Row>| r.and_then(|r| r.p50_us);
    let file = p50(find(rows, scenario, System::Restock, Some(false))
        .first()
        .copied());
    let on_etcd = p50(rows
        .iter()
        .find(|r| r.scenario == scenario && r.store == Some(Store::Etcd)));
    let txn = p50(rows.iter().find(|r| {
        r.system == System::Etcd
            && r.variant
                .as_deref()
                .is_some_and(|v| v.starts_with("one guarded txn"))
    }));
    match (file, on_etcd, txn) {
        (Some(f), Some(e), Some(x)) => TargetCheck {
            target,
            measured: format!(
                "{:.3} − {:.3} = {:.3} ms over; one txn {:.3} ms",
                e / 1_000.0,
                f / 1_000.0,
                (e - f) / 1_000.0,
                x / 1_000.0
            ),
            met: Some(e - f <= ONE_TXN_SLACK * x),
        },
        _ => not_measured(&target),
    }
}

fn not_measured(target: &str) -> TargetCheck {
    TargetCheck {
        target: target.to_owned(),
        measured: "not measured".into(),
        met: None,
    }
}

fn bound(target: &str, value: Option<f64>, limit: f64, unit: &str, scale: f64) -> TargetCheck {
    match value {
        None => not_measured(target),
        Some(v) => TargetCheck {
            target: target.to_owned(),
            measured: format!("{:.3} {unit} ({:.2}× the limit)", v / scale, v / limit),
            met: Some(v <= limit),
        },
    }
}

/// How many times faster `ours` is than `theirs`, at p50 and p99; met when
/// both reach `factor`.
fn faster(target: &str, ours: Option<&Row>, theirs: Option<&Row>, factor: f64) -> TargetCheck {
    let (Some(o), Some(t)) = (ours, theirs) else {
        return not_measured(target);
    };
    let ratio = |a: Option<f64>, b: Option<f64>| match (a, b) {
        (Some(a), Some(b)) if a > 0.0 => Some(b / a),
        _ => None,
    };
    let (Some(r50), Some(r99)) = (ratio(o.p50_us, t.p50_us), ratio(o.p99_us, t.p99_us)) else {
        return not_measured(target);
    };
    TargetCheck {
        target: target.to_owned(),
        measured: format!("{r50:.1}× faster at p50, {r99:.1}× at p99"),
        met: Some(r50 >= factor && r99 >= factor),
    }
}

/// Checks every target of issue 7 that the rows allow.
pub fn targets(rows: &[Row]) -> Vec<TargetCheck> {
    let first = |s, sys, f| find(rows, s, sys, f).into_iter().next();
    let handoff_off = first("handoff", System::Restock, Some(false));
    let handoff_on = first("handoff", System::Restock, Some(true));
    let etcd_handoff = first("handoff", System::Etcd, None);
    let redis_50 = find(rows, "handoff", System::Redis, None)
        .into_iter()
        .find(|r| {
            r.variant
                .as_deref()
                .is_some_and(|v| v.contains("50 ms") && v.contains("next in line"))
        });
    let cycle_off = first("cycle", System::Restock, Some(false));
    let redis_cycle = first("cycle", System::Redis, None);
    let mut out = vec![
        bound(
            "hand-off p99 ≤ 1 ms without fsync",
            handoff_off.and_then(|r| r.p99_us),
            1_000.0,
            "ms",
            1_000.0,
        ),
        bound(
            "hand-off p99 ≤ 3 ms with fsync",
            handoff_on.and_then(|r| r.p99_us),
            3_000.0,
            "ms",
            1_000.0,
        ),
        faster(
            "hand-off ≥ 5× faster than etcd's (both durable)",
            handoff_on,
            etcd_handoff,
            5.0,
        ),
        faster(
            "hand-off ≥ 20× faster than Redis polling every 50 ms (next in line; restock with fsync)",
            handoff_on,
            redis_50,
            20.0,
        ),
        bound(
            "acquire + release p50 ≤ 0.3 ms without fsync",
            cycle_off.and_then(|r| r.p50_us),
            300.0,
            "ms",
            1_000.0,
        ),
    ];
    out.push(
        match (
            cycle_off.and_then(|r| r.p50_us),
            redis_cycle.and_then(|r| r.p50_us),
        ) {
            (Some(o), Some(t)) if t > 0.0 => TargetCheck {
                target: "acquire + release p50 within 2× of Redis SET NX + delete (no fsync)"
                    .into(),
                measured: format!("{:.2}× Redis's", o / t),
                met: Some(o <= 2.0 * t),
            },
            _ => {
                not_measured("acquire + release p50 within 2× of Redis SET NX + delete (no fsync)")
            }
        },
    );
    for (scenario, what) in [("handoff", "hand-off"), ("grant", "grant")] {
        if rows
            .iter()
            .any(|r| r.scenario == scenario && r.store == Some(Store::Etcd))
        {
            out.push(one_txn_over(rows, scenario, what));
        }
    }
    let ingest = first("ingest", System::Restock, None).and_then(|r| r.per_second);
    out.push(match ingest {
        Some(v) => TargetCheck {
            target: "ingest ≥ 200,000 observations/s".into(),
            measured: format!("{} /s ({:.2}× the target)", thousands(v), v / 200_000.0),
            met: Some(v >= 200_000.0),
        },
        None => not_measured("ingest ≥ 200,000 observations/s"),
    });
    let rss = find(rows, "memory", System::Restock, None)
        .into_iter()
        .filter(|r| {
            r.variant
                .as_deref()
                .is_some_and(|v| v.contains("1000 streams"))
        })
        .filter_map(|r| r.rss_mb)
        .fold(None, |m: Option<f64>, v| Some(m.map_or(v, |m| m.max(v))));
    out.push(match rss {
        Some(v) => TargetCheck {
            target: "≤ 64 MB resident with 1,000 watcher streams".into(),
            measured: format!("{v:.1} MB at most ({:.2}× the limit)", v / 64.0),
            met: Some(v <= 64.0),
        },
        None => not_measured("≤ 64 MB resident with 1,000 watcher streams"),
    });
    let e2e = matrix_rows(rows);
    for r in &e2e {
        let name = r.variant.as_deref().unwrap_or("");
        let (Some(p99), Some(poll)) = (r.p99_us, r.poll_interval_ms) else {
            continue;
        };
        let p50 = r.p50_us.unwrap_or(0.0) / 1_000.0;
        if r.planned == Some(true) {
            // Issue 14: N watchers taking turns cover the product every T/N.
            let n = r.watchers.unwrap_or(1).max(1) as f64;
            let limit = poll as f64 / n + 10.0;
            out.push(TargetCheck {
                target: format!("end to end p99 ≤ T/N + 10 ms, slot free ({name})"),
                measured: format!(
                    "p99 {:.0} ms vs {limit:.0} ms (p50 {p50:.0} ms; T/2N = {:.0} ms)",
                    p99 / 1_000.0,
                    poll as f64 / (2.0 * n)
                ),
                met: Some(p99 <= limit * 1_000.0),
            });
        } else {
            // Issue 7's target, for polling as it was.
            out.push(TargetCheck {
                target: format!("end to end p99 ≤ poll interval + 5 ms ({name})"),
                measured: format!(
                    "p99 {:.0} ms vs {} ms (p50 {p50:.0} ms)",
                    p99 / 1_000.0,
                    poll + 5
                ),
                met: Some(p99 <= (poll as f64 + 5.0) * 1_000.0),
            });
        }
    }
    for r in e2e
        .iter()
        .filter(|r| r.planned == Some(true) && r.watchers == Some(3))
    {
        let target = format!(
            "poll-gap spread (p99 / median) ≤ 1.5 at N = 3 ({})",
            r.variant.as_deref().unwrap_or("")
        );
        let unplanned = e2e
            .iter()
            .find(|u| {
                u.planned == Some(false)
                    && u.watchers == r.watchers
                    && u.poll_interval_ms == r.poll_interval_ms
            })
            .and_then(|u| u.poll_gap_spread);
        out.push(match r.poll_gap_spread {
            Some(s) => TargetCheck {
                target,
                measured: format!(
                    "{s:.2} (gaps: median {:.1} ms, p99 {:.1} ms){}",
                    r.poll_gap_p50_ms.unwrap_or(0.0),
                    r.poll_gap_p99_ms.unwrap_or(0.0),
                    unplanned.map_or_else(String::new, |u| format!("; unplanned {u:.2}"))
                ),
                met: Some(s <= 1.5),
            },
            None => not_measured(&target),
        });
    }
    out.extend(budget_targets(rows));
    out
}

/// The target checks as a Markdown table.
pub fn targets_table(checks: &[TargetCheck]) -> String {
    let mut t = Table::new();
    t.load_preset(ASCII_MARKDOWN);
    t.set_header(vec!["target", "measured", "met"]);
    for c in checks {
        t.add_row(vec![
            c.target.clone(),
            c.measured.clone(),
            match c.met {
                Some(true) => "met".into(),
                Some(false) => "MISSED".into(),
                None => "-".into(),
            },
        ]);
    }
    t.to_string()
}

/// Every selected scenario produced at least one row with a number (and,
/// with the baselines, a Redis and an etcd row where they apply): what CI
/// asserts, rather than any timing.
pub fn check_complete(selected: &[&str], rows: &[Row], baselines: bool) -> anyhow::Result<()> {
    let measured = |r: &Row| {
        [r.p50_us, r.p99_us, r.per_second, r.rss_mb]
            .iter()
            .flatten()
            .any(|v| v.is_finite() && *v > 0.0)
    };
    let mut missing = Vec::new();
    for s in selected {
        let of: Vec<&Row> = rows.iter().filter(|r| r.scenario == *s).collect();
        if !of
            .iter()
            .any(|r| r.system == System::Restock && measured(r))
        {
            missing.push(format!("{s}: no restock figure"));
        }
        if baselines && ["handoff", "grant", "cycle"].contains(s) {
            for sys in [System::Redis, System::Etcd] {
                if !of.iter().any(|r| r.system == sys && measured(r)) {
                    missing.push(format!("{s}: no {} figure", sys.as_str()));
                }
            }
        }
    }
    anyhow::ensure!(
        missing.is_empty(),
        "results are incomplete: {}",
        missing.join("; ")
    );
    Ok(())
}

/// Writes the rows as a pretty JSON list, creating the folder.
pub fn write_json(path: &Path, rows: &[Row]) -> anyhow::Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let text = serde_json::to_vec_pretty(rows).context("serializing the results")?;
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::Latencies;
    use std::time::Duration;

    fn lat(us: u64) -> Latencies {
        let mut l = Latencies::default();
        l.record(Duration::from_micros(us));
        l
    }

    #[test]
    fn targets_compare_like_for_like_rows() {
        let rows = vec![
            Row::new("handoff", System::Restock)
                .fsync(false)
                .latencies(&lat(400)),
            Row::new("handoff", System::Restock)
                .fsync(true)
                .latencies(&lat(2_000)),
            Row::new("handoff", System::Etcd)
                .fsync(true)
                .latencies(&lat(8_000)),
        ];
        let checks = targets(&rows);
        assert_eq!(checks[0].met, Some(true));
        assert_eq!(checks[1].met, Some(true));
        // 8 ms / 2 ms = 4×: short of 5×.
        assert_eq!(checks[2].met, Some(false));
        assert!(
            checks[2].measured.contains("4.0×"),
            "{}",
            checks[2].measured
        );
        // Nothing measured for Redis.
        assert_eq!(checks[3].met, None);
    }

    #[test]
    fn end_to_end_rows_are_checked_against_t_over_n_and_the_gap_spread() {
        let e2e = |n: usize, planned: bool, p99_ms: u64, spread: f64| {
            let mut r = Row::new("end_to_end", System::Restock)
                .variant(format!("{n} watchers every 300 ms, {planned}"))
                .latencies(&lat(p99_ms * 1_000))
                .poll_interval(Duration::from_millis(300))
                .watchers(n)
                .planned(planned);
            r.poll_gap_spread = Some(spread);
            r.poll_gap_p50_ms = Some(100.0);
            r.poll_gap_p99_ms = Some(100.0 * spread);
            r
        };
        let rows = vec![
            // T/N + 10 = 110 ms.
            e2e(3, true, 105, 1.2),
            e2e(3, false, 290, 2.9),
            // 5 watchers: T/N + 10 = 70 ms.
            e2e(5, true, 75, 1.1),
        ];
        let checks = targets(&rows);
        let find = |text: &str| {
            checks
                .iter()
                .find(|c| c.target.contains(text))
                .unwrap_or_else(|| panic!("no target with {text:?} in {checks:?}"))
        };
        assert_eq!(find("T/N + 10 ms, slot free (3 watchers").met, Some(true));
        assert_eq!(find("T/N + 10 ms, slot free (5 watchers").met, Some(false));
        assert_eq!(find("poll interval + 5 ms (3 watchers").met, Some(true));
        let spread = find("spread");
        assert_eq!(spread.met, Some(true));
        assert!(
            spread.measured.contains("unplanned 2.90"),
            "{}",
            spread.measured
        );
        let table = e2e_table(&rows).unwrap();
        assert!(table.contains("| planned"), "{table}");
        assert!(table.contains("2.90"), "{table}");
        assert_eq!(e2e_table(&rows[..0]), None);
    }

    #[test]
    fn budgeted_rows_are_checked_against_one_over_n_r_and_kept_out_of_issue_14s() {
        use crate::stats::BudgetFigures;
        let row = |n: usize, endpoint: &'static str, p99_ms: u64, requests: u64, gap: f64| {
            Row::new("end_to_end", System::Restock)
                .variant(format!("{n} watchers, {endpoint}"))
                .latencies(&lat(p99_ms * 1_000))
                .poll_interval(Duration::from_secs(if endpoint == "summary" {
                    1
                } else {
                    24
                }))
                .watchers(n)
                .planned(true)
                .budget(&BudgetFigures {
                    endpoint,
                    max_rps: 1.0,
                    products: 24,
                    watchers: n,
                    requests,
                    detections: 10,
                    seconds: 100.0,
                    min_request_gap_ms: Some(gap),
                })
        };
        let rows = vec![
            // 1/(1·1) + 50 ms = 1,050 ms.
            row(1, "summary", 990, 100, 1_000.2),
            row(1, "hierarchy", 23_500, 100, 999.8),
            // 1/(3·1) + 50 ms = 383 ms.
            row(3, "summary", 420, 300, 1_001.0),
        ];
        let checks = targets(&rows);
        assert!(
            !checks.iter().any(|c| c.target.contains("T/N + 10 ms")),
            "budgeted rows are not issue 14's: {checks:?}"
        );
        let find = |text: &str| {
            checks
                .iter()
                .find(|c| c.target.contains(text))
                .unwrap_or_else(|| panic!("no target with {text:?} in {checks:?}"))
        };
        let one = find("N = 1,");
        assert_eq!(one.met, Some(true));
        assert!(one.measured.contains("vs 1050 ms"), "{}", one.measured);
        assert!(
            one.measured.contains("per product: p99 23.5 s"),
            "{}",
            one.measured
        );
        assert!(
            one.measured.contains("10.0 requests per detection"),
            "{}",
            one.measured
        );
        assert_eq!(find("N = 3,").met, Some(false));
        // 300 requests / 100 s / 3 watchers = 1.0 per second.
        assert_eq!(find("within R").met, Some(true));
        assert_eq!(e2e_table(&rows), None);
        let table = budget_table(&rows).unwrap();
        assert!(table.contains("| hierarchy"), "{table}");
        assert!(table.contains("| 24 "), "{table}");
        assert_eq!(budget_table(&rows[..0]), None);
        // A watcher over its budget.
        let over = vec![row(1, "summary", 500, 150, 600.0)];
        assert_eq!(
            targets(&over)
                .iter()
                .find(|c| c.target.contains("within R"))
                .and_then(|c| c.met),
            Some(false)
        );
    }

    #[test]
    fn etcd_store_rows_are_checked_against_one_txn_and_kept_out_of_the_file_targets() {
        let rows = vec![
            Row::new("handoff", System::Restock)
                .fsync(false)
                .store(Store::File)
                .latencies(&lat(300)),
            Row::new("handoff", System::Restock)
                .fsync(true)
                .store(Store::File)
                .latencies(&lat(600)),
            Row::new("handoff", System::Restock)
                .fsync(true)
                .store(Store::Etcd)
                .latencies(&lat(1_100)),
            Row::new("handoff", System::Etcd)
                .variant("one guarded txn: put a 900-byte record")
                .fsync(true)
                .latencies(&lat(700)),
            Row::new("grant", System::Restock)
                .fsync(false)
                .store(Store::File)
                .latencies(&lat(200)),
            Row::new("grant", System::Restock)
                .fsync(true)
                .store(Store::Etcd)
                .latencies(&lat(1_200)),
        ];
        let checks = targets(&rows);
        // The file store's row with fsync, not the etcd store's.
        assert!(checks[1].measured.starts_with("0.600"), "{checks:?}");
        let find = |text: &str| {
            checks
                .iter()
                .find(|c| c.target.starts_with(text))
                .unwrap_or_else(|| panic!("no target starting {text:?} in {checks:?}"))
        };
        // 1.1 − 0.3 = 0.8 ms ≤ 1.25 × 0.7 ms.
        assert_eq!(find("hand-off on etcd").met, Some(true));
        assert!(
            find("hand-off on etcd")
                .measured
                .contains("= 0.800 ms over"),
            "{checks:?}"
        );
        // 1.2 − 0.2 = 1.0 ms > 0.875 ms.
        assert_eq!(find("grant on etcd").met, Some(false));
        let table = replicas_table(&rows).unwrap();
        assert!(table.contains("| etcd "), "{table}");
        assert!(table.contains("one guarded txn"), "{table}");
        assert_eq!(replicas_table(&rows[..2]), None);
    }

    #[test]
    fn incomplete_results_are_an_error() {
        let rows = vec![
            Row::new("grant", System::Restock).latencies(&lat(100)),
            Row::new("grant", System::Redis).latencies(&lat(50)),
        ];
        check_complete(&["grant"], &rows, false).unwrap();
        let err = check_complete(&["grant", "ingest"], &rows, true)
            .unwrap_err()
            .to_string();
        assert!(err.contains("grant: no etcd figure"), "{err}");
        assert!(err.contains("ingest: no restock figure"), "{err}");
    }

    #[test]
    fn thousands_separators() {
        assert_eq!(thousands(1_234_567.4), "1,234,567");
        assert_eq!(thousands(999.0), "999");
    }
}

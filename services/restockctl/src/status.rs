//! `restockctl status`: the slot, the products in priority order, the
//! watchers and the counters, as tables or as JSON.

use std::io::Write;

use comfy_table::{Cell, CellAlignment, Table, presets};
use restock_proto::{ROLE_FOLLOWER, ROLE_STANDALONE, v1 as pb};

use crate::{
    client::Target,
    error::CtlError,
    format::{StatusJson, budget_line, dollars, duration_ms, outcome_word, shorten, state_name},
};

/// Fetches the status (the leader's, when `--arbiter` lists replicas: a
/// follower's answer names the leader, who is asked then) and prints it.
pub async fn run(target: &Target, json: bool, out: &mut dyn Write) -> Result<(), CtlError> {
    let (at, _, status) = target.find_leader().await?;
    if json {
        serde_json::to_writer_pretty(&mut *out, &StatusJson::new(&at.url, &status))
            .map_err(std::io::Error::from)?;
        writeln!(out)?;
    } else {
        out.write_all(render(&at.url, &status, crate::format::now_unix_ms()).as_bytes())?;
    }
    Ok(())
}

fn table(headers: &[&str]) -> Table {
    let mut t = Table::new();
    // Plain columns, like kubectl: readable in a terminal, in a log and in
    // a README, and easy to grep.
    t.load_preset(presets::NOTHING);
    t.set_header(headers.iter().map(Cell::new));
    t
}

fn ago(now_unix_ms: u64, then: u64) -> String {
    if then == 0 {
        "never".into()
    } else {
        format!("{} ago", duration_ms(now_unix_ms.saturating_sub(then)))
    }
}

/// The text form of a status; `now_unix_ms` is for "... ago".
pub fn render(url: &str, s: &pb::GetStatusResponse, now_unix_ms: u64) -> String {
    let mut text = String::new();
    let mode = if s.test_mode { "TEST_MODE" } else { "normal" };
    let paused = if s.paused {
        "PAUSED (grants nothing)"
    } else {
        "running"
    };
    if s.role == ROLE_FOLLOWER {
        // A follower's answer holds no state: the leader's is the state.
        let leader = if s.leader_url.is_empty() {
            "no leader is elected (an election may be under way)".to_owned()
        } else {
            format!("the leader is {}", s.leader_url)
        };
        text.push_str(&format!(
            "Arbiter   {url} (follower): {leader}; no replica that leads answered\n"
        ));
        return text;
    }
    // "standalone" (or an arbiter from before replicas, which says nothing)
    // is not worth a word; a leader is.
    let role = if s.role.is_empty() || s.role == ROLE_STANDALONE {
        String::new()
    } else {
        format!(" ({})", s.role)
    };
    text.push_str(&format!("Arbiter   {url}{role}  mode {mode}, {paused}\n"));
    match &s.active_lease {
        Some(l) => text.push_str(&format!(
            "Slot      held by product {} (watcher {}), token {}, {} left of {}\n          lease {}\n",
            l.tcin,
            l.watcher_id,
            l.fencing_token,
            duration_ms(l.remaining_ms),
            duration_ms(l.ttl_ms),
            l.lease_id
        )),
        None => text.push_str("Slot      free\n"),
    }
    text.push_str(&format!(
        "Timing    lease ttl {}, stock ttl {}, failure cool-down {}\n",
        duration_ms(s.lease_ttl_ms),
        duration_ms(s.stock_ttl_ms),
        duration_ms(s.failure_cooldown_ms)
    ));
    text.push_str(&format!(
        "Sequence  next fencing token {}, last event #{}\n",
        s.next_fencing_token, s.last_event_sequence
    ));
    if !s.config_path.is_empty() {
        text.push_str(&format!("Config    {}\n", s.config_path));
    }
    text.push_str(if s.poll_planning {
        "Polling   planned: the watchers of a product take turns\n"
    } else {
        "Polling   each watcher on its own schedule (--poll-planning false)\n"
    });
    if let Some(b) = &s.budget {
        text.push_str(&format!("Budget    {}\n", budget_line(b, now_unix_ms)));
    }

    text.push_str("\nProducts\n");
    let mut products = table(&[
        "PRIORITY",
        "RETAILER",
        "PRODUCT",
        "STATE",
        "PURCHASES",
        "IN STOCK AT",
        "PRICE",
        "POLLED EVERY",
        "LAST OUTCOME",
        "NAME",
        "NOTE",
    ]);
    for p in &s.products {
        let mut note = Vec::new();
        if !p.configured {
            note.push("not in the product config".to_owned());
        }
        if p.cooldown_remaining_ms > 0 {
            note.push(format!(
                "cool-down {} left",
                duration_ms(p.cooldown_remaining_ms)
            ));
        }
        if !p.held_back.is_empty() {
            note.push(shorten(&p.held_back, 80));
        }
        if !p.last_detail.is_empty() {
            // A checkout's detail can be a whole HTTP answer; `--json` has it
            // in full.
            note.push(shorten(&p.last_detail, 60));
        }
        let in_stock = if p.in_stock_at.is_empty() {
            "-".to_owned()
        } else {
            p.in_stock_at.join(",")
        };
        let outcome = outcome_word(p.last_outcome);
        products.add_row(vec![
            Cell::new(p.priority).set_alignment(CellAlignment::Right),
            // An older arbiter does not say: its products are Target's.
            Cell::new(if p.retailer.is_empty() {
                "target"
            } else {
                &p.retailer
            }),
            Cell::new(&p.tcin),
            Cell::new(state_name(p.state)),
            Cell::new(format!("{} of {}", p.purchases, p.quantity)),
            Cell::new(in_stock),
            Cell::new(p.price_cents.map_or_else(|| "-".to_owned(), dollars)),
            Cell::new(if p.effective_poll_interval_ms == 0 {
                "-".to_owned()
            } else {
                duration_ms(p.effective_poll_interval_ms)
            }),
            Cell::new(if outcome.is_empty() {
                "-".into()
            } else {
                outcome
            }),
            Cell::new(&p.name),
            Cell::new(note.join("; ")),
        ]);
    }
    if s.products.is_empty() {
        text.push_str("  (none)\n");
    } else {
        text.push_str(&crate::format::trim_lines(&products.to_string()));
        text.push('\n');
    }

    text.push_str("\nWatchers\n");
    if s.watchers.is_empty() {
        text.push_str("  (none has connected)\n");
    } else {
        let mut watchers = table(&[
            "WATCHER",
            "CONNECTED",
            "SINCE",
            "LAST REPORT",
            "REPORTS",
            "POLLING",
            "EVERY",
            "PHASE",
            "SOURCE",
        ]);
        for w in &s.watchers {
            watchers.add_row(vec![
                Cell::new(&w.watcher_id),
                Cell::new(if w.connected { "yes" } else { "no" }),
                Cell::new(ago(now_unix_ms, w.connected_since_unix_ms)),
                Cell::new(ago(now_unix_ms, w.last_report_unix_ms)),
                Cell::new(w.reports).set_alignment(CellAlignment::Right),
                Cell::new(if w.polling.is_empty() {
                    "all".to_owned()
                } else {
                    w.polling.join(",")
                }),
                Cell::new(if w.poll_interval_ms == 0 {
                    "-".to_owned()
                } else {
                    duration_ms(w.poll_interval_ms)
                }),
                Cell::new(if w.planned {
                    duration_ms(w.poll_phase_ms)
                } else {
                    "own".to_owned()
                }),
                Cell::new(match &w.source_block {
                    None => "ok".to_owned(),
                    Some(b) if w.source_blocked => format!("BLOCKED: {}", b.kind),
                    Some(b) => format!("backing off: {}", b.kind),
                }),
            ]);
        }
        text.push_str(&crate::format::trim_lines(&watchers.to_string()));
        text.push('\n');
        for w in s.watchers.iter().filter(|w| w.source_blocked) {
            let Some(b) = &w.source_block else { continue };
            text.push_str(&format!(
                "  {}: its stock source {} blocks it ({}) since {}",
                w.watcher_id,
                if b.source.is_empty() {
                    "target"
                } else {
                    &b.source
                },
                b.kind,
                ago(now_unix_ms, b.since_unix_ms)
            ));
            if b.paused_until_unix_ms > now_unix_ms {
                text.push_str(&format!(
                    "; paused {} more",
                    duration_ms(b.paused_until_unix_ms - now_unix_ms)
                ));
            }
            if !b.tracking_url.is_empty() {
                text.push_str(&format!("; tracking URL {}", b.tracking_url));
            }
            text.push('\n');
        }
    }

    let c = s.counters.unwrap_or_default();
    text.push_str(&format!(
        "\nCounters  {} grants, {} purchases, {} failures ({} expired), {} refusals, {} observations\n",
        c.grants, c.purchases, c.failures, c.expirations, c.refusals, c.observations
    ));
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_shows_the_holder_and_every_product_in_priority_order() {
        let s = pb::GetStatusResponse {
            active_lease: Some(pb::Lease {
                lease_id: "lease-7-abc".into(),
                tcin: "200".into(),
                watcher_id: "w1".into(),
                fencing_token: 7,
                ttl_ms: 30_000,
                remaining_ms: 27_500,
                ..Default::default()
            }),
            products: vec![
                pb::ProductStatus {
                    tcin: "100".into(),
                    name: "Box".into(),
                    priority: 1,
                    state: pb::ProductState::Failed as i32,
                    quantity: 2,
                    configured: true,
                    cooldown_remaining_ms: 4_000,
                    last_outcome: pb::Outcome::Expired as i32,
                    ..Default::default()
                },
                pb::ProductStatus {
                    tcin: "200".into(),
                    name: "Bundle".into(),
                    priority: 2,
                    state: pb::ProductState::Attempting as i32,
                    purchases: 1,
                    quantity: 2,
                    configured: true,
                    in_stock_at: vec!["w1".into()],
                    ..Default::default()
                },
            ],
            watchers: vec![pb::WatcherStatus {
                watcher_id: "w1".into(),
                connected: true,
                last_report_unix_ms: 9_000,
                connected_since_unix_ms: 1_000,
                reports: 12,
                polling: vec![],
                poll_interval_ms: 300,
                planned: true,
                poll_phase_ms: 100,
                ..Default::default()
            }],
            test_mode: true,
            next_fencing_token: 8,
            last_event_sequence: 42,
            ..Default::default()
        };
        let text = render("http://a:1", &s, 10_000);
        assert!(text.contains("mode TEST_MODE, running"), "{text}");
        assert!(
            text.contains("held by product 200 (watcher w1), token 7, 27.5s left of 30.0s"),
            "{text}"
        );
        let p100 = text.find("FAILED").expect("product 100 shown");
        let p200 = text.find("ATTEMPTING").expect("product 200 shown");
        assert!(p100 < p200, "priority order: {text}");
        assert!(text.contains("cool-down 4.0s left"), "{text}");
        assert!(text.contains("1.0s ago"), "{text}");
        assert!(text.contains("last event #42"), "{text}");
        assert!(!text.contains("BLOCKED"), "{text}");
    }

    #[test]
    fn a_blocked_watcher_is_named_with_its_kind() {
        let s = pb::GetStatusResponse {
            watchers: vec![
                pb::WatcherStatus {
                    watcher_id: "w1".into(),
                    connected: true,
                    source_block: Some(pb::SourceBlock {
                        kind: "captcha".into(),
                        since_unix_ms: 4_000,
                        tracking_url: "/captcha?trackingId=t1".into(),
                        paused_until_unix_ms: 70_000,
                        source: "shopify:cards.example".into(),
                    }),
                    source_blocked: true,
                    ..Default::default()
                },
                pb::WatcherStatus {
                    watcher_id: "w2".into(),
                    connected: true,
                    source_block: Some(pb::SourceBlock {
                        kind: "rate_limited".into(),
                        ..Default::default()
                    }),
                    ..Default::default()
                },
            ],
            ..Default::default()
        };
        let text = render("http://a:1", &s, 10_000);
        assert!(text.contains("BLOCKED: captcha"), "{text}");
        assert!(text.contains("backing off: rate_limited"), "{text}");
        assert!(
            text.contains("w1: its stock source shopify:cards.example blocks it (captcha) since 6.0s ago; paused 1m00s more; tracking URL /captcha?trackingId=t1"),
            "{text}"
        );
        assert!(!text.contains("w2: its stock source"), "{text}");
    }

    #[test]
    fn a_replica_says_its_role_and_a_follower_only_that() {
        let leader = pb::GetStatusResponse {
            role: "leader".into(),
            ..Default::default()
        };
        let text = render("http://a:1", &leader, 0);
        assert!(
            text.starts_with("Arbiter   http://a:1 (leader)  mode"),
            "{text}"
        );
        let standalone = pb::GetStatusResponse {
            role: "standalone".into(),
            ..Default::default()
        };
        let text = render("http://a:1", &standalone, 0);
        assert!(text.starts_with("Arbiter   http://a:1  mode"), "{text}");

        let follower = pb::GetStatusResponse {
            role: "follower".into(),
            ..Default::default()
        };
        let text = render("http://b:1", &follower, 0);
        assert!(
            text.contains("(follower)") && text.contains("no leader is elected"),
            "{text}"
        );
        assert!(!text.contains("Slot"), "a follower holds no state: {text}");
    }
}

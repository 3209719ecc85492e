//! How things look: times, durations, enum names, one event on one line, and
//! the JSON shapes of status and events (field and enum names as in
//! `arbiter.proto`, so scripts can use the same names as with grpcurl).

use restock_domain::{Outcome, ProductState};
use restock_proto::{
    convert,
    v1::{self as pb, event::Kind},
};
use serde::Serialize;

/// [`duration_ms`] of a `Duration`.
pub use restock_domain::duration::short as duration;
/// A short duration for people: `450ms`, `27.5s`, `2m05s`, `1h02m`.
pub use restock_domain::duration::short_ms as duration_ms;
/// `2026-05-01T10:00:00.123Z`, or `-` for 0 (unset). These three are the
/// domain's, so the history checker's messages and these lines read alike.
pub use restock_domain::timestamp::rfc3339_ms as time;

/// Milliseconds since the Unix epoch by this machine's clock.
pub use restock_domain::timestamp::now_unix_ms;

/// At most `max` characters of `text`, with `...` when cut.
pub fn shorten(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        None => text.to_owned(),
        Some((cut, _)) => format!("{}...", &text[..cut]),
    }
}

/// A table without the padding at the end of its lines.
pub fn trim_lines(table: &str) -> String {
    table
        .lines()
        .map(str::trim_end)
        .collect::<Vec<_>>()
        .join("\n")
}

/// `READY`, `ATTEMPTING`, ... as in the .proto.
pub fn state_name(value: i32) -> String {
    pb::ProductState::try_from(value)
        .map(|s| s.as_str_name().to_owned())
        .unwrap_or_else(|_| format!("STATE_{value}"))
}

/// `OUTCOME_PURCHASED`, ... as in the .proto.
pub fn outcome_name(value: i32) -> String {
    pb::Outcome::try_from(value)
        .map(|o| o.as_str_name().to_owned())
        .unwrap_or_else(|_| format!("OUTCOME_{value}"))
}

/// `purchased`, `out-of-stock`, ... as `release --outcome` spells them.
pub fn outcome_flag(o: Outcome) -> String {
    o.as_str().replace('_', "-")
}

/// [`outcome_flag`] of a protocol outcome; empty for an unspecified one.
pub fn outcome_word(value: i32) -> String {
    match convert::outcome("outcome", value) {
        Ok(None) => String::new(),
        Ok(Some(o)) => outcome_flag(o),
        Err(_) => format!("outcome-{value}"),
    }
}

/// `READY`, `ATTEMPTING`, ...: a domain state by its name in the .proto.
pub fn state_proto_name(s: ProductState) -> &'static str {
    pb::ProductState::from(s).as_str_name()
}

/// `OUTCOME_PURCHASED`, ...: a domain outcome by its name in the .proto.
pub fn outcome_proto_name(o: Outcome) -> &'static str {
    pb::Outcome::from(o).as_str_name()
}

/// `GRANTED`, `RELEASED`, ... as in the .proto.
pub fn kind_name(value: i32) -> String {
    Kind::try_from(value)
        .map(|k| k.as_str_name().to_owned())
        .unwrap_or_else(|_| format!("KIND_{value}"))
}

/// One event on one line:
/// `#12 2026-05-01T10:00:00.123Z GRANTED 100 READY->ATTEMPTING watcher=w1 token=3 lease=... detail="..."`.
pub fn event_line(e: &pb::Event) -> String {
    let mut line = format!("#{} {} {}", e.sequence, time(e.unix_ms), kind_name(e.kind));
    if !e.tcin.is_empty() {
        line.push(' ');
        line.push_str(&e.tcin);
    }
    let unspecified = pb::ProductState::Unspecified as i32;
    if e.from_state != unspecified || e.to_state != unspecified {
        line.push_str(&format!(
            " {}->{}",
            state_name(e.from_state),
            state_name(e.to_state)
        ));
    }
    let outcome = outcome_word(e.outcome);
    if !outcome.is_empty() {
        line.push_str(&format!(" outcome={outcome}"));
    }
    if !e.watcher_id.is_empty() {
        line.push_str(&format!(" watcher={}", e.watcher_id));
    }
    if e.fencing_token != 0 {
        line.push_str(&format!(" token={}", e.fencing_token));
    }
    if !e.lease_id.is_empty() {
        line.push_str(&format!(" lease={}", e.lease_id));
    }
    if !e.detail.is_empty() {
        line.push_str(&format!(" detail={:?}", e.detail));
    }
    line
}

/// An event as JSON (one object per line in `events --json`).
#[derive(Debug, Clone, Serialize)]
pub struct EventJson {
    pub sequence: u64,
    pub unix_ms: u64,
    pub time: String,
    pub kind: String,
    pub tcin: String,
    pub watcher_id: String,
    pub lease_id: String,
    pub fencing_token: u64,
    pub outcome: String,
    pub from_state: String,
    pub to_state: String,
    pub detail: String,
}

impl From<&pb::Event> for EventJson {
    fn from(e: &pb::Event) -> Self {
        Self {
            sequence: e.sequence,
            unix_ms: e.unix_ms,
            time: time(e.unix_ms),
            kind: kind_name(e.kind),
            tcin: e.tcin.clone(),
            watcher_id: e.watcher_id.clone(),
            lease_id: e.lease_id.clone(),
            fencing_token: e.fencing_token,
            outcome: outcome_name(e.outcome),
            from_state: state_name(e.from_state),
            to_state: state_name(e.to_state),
            detail: e.detail.clone(),
        }
    }
}

/// A lease as JSON.
#[derive(Debug, Clone, Serialize)]
pub struct LeaseJson {
    pub lease_id: String,
    pub tcin: String,
    pub watcher_id: String,
    pub fencing_token: u64,
    pub ttl_ms: u64,
    pub granted_at_unix_ms: u64,
    pub expires_at_unix_ms: u64,
    pub remaining_ms: u64,
}

impl From<&pb::Lease> for LeaseJson {
    fn from(l: &pb::Lease) -> Self {
        Self {
            lease_id: l.lease_id.clone(),
            tcin: l.tcin.clone(),
            watcher_id: l.watcher_id.clone(),
            fencing_token: l.fencing_token,
            ttl_ms: l.ttl_ms,
            granted_at_unix_ms: l.granted_at_unix_ms,
            expires_at_unix_ms: l.expires_at_unix_ms,
            remaining_ms: l.remaining_ms,
        }
    }
}

/// A product's line of status as JSON.
#[derive(Debug, Clone, Serialize)]
pub struct ProductJson {
    /// The product id (a bare TCIN for Target).
    pub tcin: String,
    /// `target` or `shopify`.
    pub retailer: String,
    pub name: String,
    pub priority: u32,
    pub state: String,
    pub purchases: u32,
    pub quantity: u32,
    pub configured: bool,
    pub in_stock_at: Vec<String>,
    pub cooldown_remaining_ms: u64,
    pub last_outcome: String,
    pub last_detail: String,
    pub effective_poll_interval_ms: u64,
    /// The newest price a watcher reported, in cents.
    pub price_cents: Option<u64>,
    /// With OVER_BUDGET: why the spending limit holds it back.
    pub held_back: String,
}

/// The spending limit as JSON: `GetStatusResponse.budget`'s fields.
#[derive(Debug, Clone, Serialize, Default)]
pub struct BudgetJson {
    /// `None`: no limit in force.
    pub limits: Option<BudgetLimitsJson>,
    pub source: String,
    pub operator_reason: String,
    pub operator_set_unix_ms: u64,
    pub spent_cents: u64,
    pub purchases: u32,
    pub reserved_cents: Option<u64>,
    pub reserved_for_tcin: String,
    pub left_cents: Option<u64>,
    pub purchases_left: Option<u32>,
    pub next_roll_off_unix_ms: u64,
    pub held_back: u32,
}

#[derive(Debug, Clone, Serialize)]
pub struct BudgetLimitsJson {
    pub max_spend_cents: Option<u64>,
    pub max_purchases: Option<u32>,
    pub window_ms: u64,
}

impl From<&pb::BudgetStatus> for BudgetJson {
    fn from(b: &pb::BudgetStatus) -> Self {
        Self {
            limits: b.limits.as_ref().map(|l| BudgetLimitsJson {
                max_spend_cents: l.max_spend_cents,
                max_purchases: l.max_purchases,
                window_ms: l.window_ms,
            }),
            source: b.source.clone(),
            operator_reason: b.operator_reason.clone(),
            operator_set_unix_ms: b.operator_set_unix_ms,
            spent_cents: b.spent_cents,
            purchases: b.purchases,
            reserved_cents: b.reserved_cents,
            reserved_for_tcin: b.reserved_for_tcin.clone(),
            left_cents: b.left_cents,
            purchases_left: b.purchases_left,
            next_roll_off_unix_ms: b.next_roll_off_unix_ms,
            held_back: b.held_back,
        }
    }
}

/// `$12.34` of cents.
pub fn dollars(cents: u64) -> String {
    restock_domain::Price::from_cents(cents).formatted()
}

/// One line for people: the limits, what was spent and what is left.
pub fn budget_line(b: &pb::BudgetStatus, now_unix_ms: u64) -> String {
    let Some(l) = &b.limits else {
        return format!(
            "no limit ({} spent over {} purchases recorded)",
            dollars(b.spent_cents),
            b.purchases
        );
    };
    let limits: restock_domain::BudgetLimits = (*l).into();
    let mut parts = vec![format!("limit {}", limits.describe())];
    if b.source == restock_proto::convert::BUDGET_FROM_OPERATOR {
        parts.push(format!("set by an operator: {}", b.operator_reason));
    }
    parts.push(format!(
        "spent {} over {} purchase{}",
        dollars(b.spent_cents),
        b.purchases,
        if b.purchases == 1 { "" } else { "s" }
    ));
    if let Some(r) = b.reserved_cents {
        parts.push(format!(
            "{} reserved for {}",
            dollars(r),
            b.reserved_for_tcin
        ));
    }
    if let Some(left) = b.left_cents {
        parts.push(format!("{} left", dollars(left)));
    }
    if let Some(n) = b.purchases_left {
        parts.push(format!("{n} purchases left"));
    }
    if b.next_roll_off_unix_ms > now_unix_ms {
        parts.push(format!(
            "oldest spend rolls off in {}",
            duration_ms(b.next_roll_off_unix_ms - now_unix_ms)
        ));
    }
    if b.held_back > 0 {
        parts.push(format!("HOLDING BACK {} product(s)", b.held_back));
    }
    parts.join("; ")
}

/// A watcher's line of status as JSON.
#[derive(Debug, Clone, Serialize)]
pub struct WatcherJson {
    pub watcher_id: String,
    pub connected: bool,
    pub last_report_unix_ms: u64,
    pub connected_since_unix_ms: u64,
    pub reports: u64,
    pub polling: Vec<String>,
    pub poll_interval_ms: u64,
    pub planned: bool,
    pub poll_phase_ms: u64,
}

/// The counters of status as JSON.
#[derive(Debug, Clone, Default, Serialize)]
pub struct CountersJson {
    pub grants: u64,
    pub purchases: u64,
    pub failures: u64,
    pub expirations: u64,
    pub refusals: u64,
    pub observations: u64,
}

/// `status --json`: `GetStatus`, field for field, plus the arbiter's URL.
#[derive(Debug, Clone, Serialize)]
pub struct StatusJson {
    pub arbiter: String,
    /// "standalone", "leader" or "follower" (empty from an arbiter that
    /// predates replicas).
    pub role: String,
    /// The leader's URL, when the arbiter is a replica and knows it.
    pub leader_url: String,
    pub active_lease: Option<LeaseJson>,
    pub products: Vec<ProductJson>,
    pub watchers: Vec<WatcherJson>,
    pub test_mode: bool,
    pub paused: bool,
    pub counters: CountersJson,
    pub next_fencing_token: u64,
    pub last_event_sequence: u64,
    pub lease_ttl_ms: u64,
    pub stock_ttl_ms: u64,
    pub failure_cooldown_ms: u64,
    pub config_path: String,
    pub unix_ms: u64,
    pub poll_planning: bool,
    pub budget: BudgetJson,
}

impl StatusJson {
    pub fn new(arbiter: &str, s: &pb::GetStatusResponse) -> Self {
        Self {
            arbiter: arbiter.to_owned(),
            role: s.role.clone(),
            leader_url: s.leader_url.clone(),
            active_lease: s.active_lease.as_ref().map(LeaseJson::from),
            products: s
                .products
                .iter()
                .map(|p| ProductJson {
                    tcin: p.tcin.clone(),
                    name: p.name.clone(),
                    priority: p.priority,
                    state: state_name(p.state),
                    purchases: p.purchases,
                    quantity: p.quantity,
                    configured: p.configured,
                    in_stock_at: p.in_stock_at.clone(),
                    cooldown_remaining_ms: p.cooldown_remaining_ms,
                    last_outcome: outcome_name(p.last_outcome),
                    last_detail: p.last_detail.clone(),
                    effective_poll_interval_ms: p.effective_poll_interval_ms,
                    price_cents: p.price_cents,
                    held_back: p.held_back.clone(),
                    retailer: if p.retailer.is_empty() {
                        "target".to_owned()
                    } else {
                        p.retailer.clone()
                    },
                })
                .collect(),
            watchers: s
                .watchers
                .iter()
                .map(|w| WatcherJson {
                    watcher_id: w.watcher_id.clone(),
                    connected: w.connected,
                    last_report_unix_ms: w.last_report_unix_ms,
                    connected_since_unix_ms: w.connected_since_unix_ms,
                    reports: w.reports,
                    polling: w.polling.clone(),
                    poll_interval_ms: w.poll_interval_ms,
                    planned: w.planned,
                    poll_phase_ms: w.poll_phase_ms,
                })
                .collect(),
            test_mode: s.test_mode,
            paused: s.paused,
            counters: s
                .counters
                .as_ref()
                .map(|c| CountersJson {
                    grants: c.grants,
                    purchases: c.purchases,
                    failures: c.failures,
                    expirations: c.expirations,
                    refusals: c.refusals,
                    observations: c.observations,
                })
                .unwrap_or_default(),
            next_fencing_token: s.next_fencing_token,
            last_event_sequence: s.last_event_sequence,
            lease_ttl_ms: s.lease_ttl_ms,
            stock_ttl_ms: s.stock_ttl_ms,
            failure_cooldown_ms: s.failure_cooldown_ms,
            config_path: s.config_path.clone(),
            unix_ms: s.unix_ms,
            poll_planning: s.poll_planning,
            budget: s.budget.as_ref().map(BudgetJson::from).unwrap_or_default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_well() {
        assert_eq!(duration_ms(450), "450ms");
        assert_eq!(duration_ms(27_500), "27.5s");
        assert_eq!(duration_ms(125_000), "2m05s");
        assert_eq!(duration_ms(3_720_000), "1h02m");
    }

    #[test]
    fn outcomes_read_as_the_release_flag_and_states_as_the_proto() {
        assert_eq!(outcome_word(pb::Outcome::OutOfStock as i32), "out-of-stock");
        assert_eq!(outcome_word(0), "");
        assert_eq!(outcome_word(99), "outcome-99");
        assert_eq!(outcome_proto_name(Outcome::Purchased), "OUTCOME_PURCHASED");
        assert_eq!(state_proto_name(ProductState::Attempting), "ATTEMPTING");
    }

    #[test]
    fn an_event_fits_on_one_line() {
        let e = pb::Event {
            sequence: 12,
            unix_ms: 1_700_000_000_123,
            kind: Kind::Released as i32,
            tcin: "100".into(),
            watcher_id: "w1".into(),
            lease_id: "lease-3-x".into(),
            fencing_token: 3,
            outcome: pb::Outcome::OutOfStock as i32,
            from_state: pb::ProductState::Attempting as i32,
            to_state: pb::ProductState::Ready as i32,
            detail: "sold out\nagain".into(),
        };
        assert_eq!(
            event_line(&e),
            "#12 2023-11-14T22:13:20.123Z RELEASED 100 ATTEMPTING->READY outcome=out-of-stock \
             watcher=w1 token=3 lease=lease-3-x detail=\"sold out\\nagain\""
        );
    }
}

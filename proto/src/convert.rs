//! Conversions between the protocol's messages and the domain's types, so
//! every service converts at its edge and its core speaks domain types only.
//!
//! Domain → protocol never fails ([`From`]). Protocol → domain checks every
//! id and enum ([`TryFrom`]) and says which field was wrong; an unset
//! optional field (an empty string, an `UNSPECIFIED` enum) becomes `None`.

use std::time::Duration;

use restock_domain::{
    BudgetLimits, BudgetSource, BudgetStatus, Catalog, Counters, Event, EventKind, FencingToken,
    IdError, Lease, LeaseId, Observation, Outcome, Price, PriorityList, ProductId, ProductSpec,
    ProductState, ProductStatus, SourceBlock, SourceBlockKind, Status, WatcherId, WatcherStatus,
    duration::millis,
};

use crate::{ROLE_STANDALONE, v1 as pb};

/// A protocol message that does not make a valid domain value: which field,
/// and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct ConvertError {
    pub field: String,
    pub message: String,
}

impl ConvertError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }

    /// The same error, nested under `outer` (`products[2].tcin`).
    fn within(self, outer: &str) -> Self {
        Self {
            field: format!("{outer}.{}", self.field),
            message: self.message,
        }
    }
}

fn id<T>(field: &str, parse: fn(&str) -> Result<T, IdError>, v: &str) -> Result<T, ConvertError> {
    parse(v).map_err(|e| ConvertError::new(field, e.to_string()))
}

fn optional_id<T>(
    field: &str,
    parse: fn(&str) -> Result<T, IdError>,
    v: &str,
) -> Result<Option<T>, ConvertError> {
    if v.is_empty() {
        Ok(None)
    } else {
        id(field, parse, v).map(Some)
    }
}

fn ms(v: u64) -> Duration {
    Duration::from_millis(v)
}

// ----- enums -----

impl From<ProductState> for pb::ProductState {
    fn from(s: ProductState) -> Self {
        match s {
            ProductState::Ready => Self::Ready,
            ProductState::Queued => Self::Queued,
            ProductState::Attempting => Self::Attempting,
            ProductState::Purchased => Self::Purchased,
            ProductState::Failed => Self::Failed,
            ProductState::OverBudget => Self::OverBudget,
        }
    }
}

/// A product state field: `None` for `PRODUCT_STATE_UNSPECIFIED`, an error
/// for a number the protocol does not define.
pub fn product_state(field: &str, v: i32) -> Result<Option<ProductState>, ConvertError> {
    optional_enum(field, "product state", v, ProductState::ALL, |s| {
        pb::ProductState::from(s) as i32
    })
}

/// The domain value whose protocol number is `v`, out of `all`; 0 (every
/// enum's UNSPECIFIED) is `None`. One lookup instead of a hand-written
/// match per enum, so a variant added on both sides needs no code here.
fn optional_enum<T: Copy>(
    field: &str,
    what: &str,
    v: i32,
    all: impl IntoIterator<Item = T>,
    number: impl Fn(T) -> i32,
) -> Result<Option<T>, ConvertError> {
    if v == 0 {
        return Ok(None);
    }
    all.into_iter()
        .find(|x| number(*x) == v)
        .map(Some)
        .ok_or_else(|| ConvertError::new(field, format!("{v} is not a known {what}")))
}

impl From<Outcome> for pb::Outcome {
    fn from(o: Outcome) -> Self {
        match o {
            Outcome::Purchased => Self::Purchased,
            Outcome::Failed => Self::Failed,
            Outcome::OutOfStock => Self::OutOfStock,
            Outcome::Aborted => Self::Aborted,
            Outcome::Expired => Self::Expired,
        }
    }
}

/// An outcome field: `None` for `OUTCOME_UNSPECIFIED`, an error for a
/// number the protocol does not define.
pub fn outcome(field: &str, v: i32) -> Result<Option<Outcome>, ConvertError> {
    optional_enum(field, "outcome", v, Outcome::ALL, |o| {
        pb::Outcome::from(o) as i32
    })
}

impl From<EventKind> for pb::event::Kind {
    fn from(k: EventKind) -> Self {
        use pb::event::Kind as K;
        match k {
            EventKind::Granted => K::Granted,
            EventKind::Released => K::Released,
            EventKind::Expired => K::Expired,
            EventKind::Queued => K::Queued,
            EventKind::Unqueued => K::Unqueued,
            EventKind::Reset => K::Reset,
            EventKind::Paused => K::Paused,
            EventKind::Resumed => K::Resumed,
            EventKind::WatcherJoined => K::WatcherJoined,
            EventKind::WatcherLeft => K::WatcherLeft,
            EventKind::ConfigReloaded => K::ConfigReloaded,
            EventKind::CooledDown => K::CooledDown,
            EventKind::ArbiterStarted => K::ArbiterStarted,
            EventKind::Renewed => K::Renewed,
            EventKind::SourceBlocked => K::SourceBlocked,
            EventKind::SourceUnblocked => K::SourceUnblocked,
            EventKind::OverBudget => K::OverBudget,
            EventKind::BudgetExhausted => K::BudgetExhausted,
            EventKind::BudgetAvailable => K::BudgetAvailable,
            EventKind::BudgetChanged => K::BudgetChanged,
        }
    }
}

/// An event kind field; unspecified or unknown kinds are errors (every
/// event has a kind).
pub fn event_kind(v: i32) -> Result<EventKind, ConvertError> {
    optional_enum("kind", "event kind", v, EventKind::ALL, |k| {
        pb::event::Kind::from(k) as i32
    })?
    .ok_or_else(|| ConvertError::new("kind", "the event kind is unspecified"))
}

// ----- events -----

impl From<&Event> for pb::Event {
    fn from(e: &Event) -> Self {
        Self {
            sequence: e.sequence,
            unix_ms: e.unix_ms,
            kind: pb::event::Kind::from(e.kind) as i32,
            tcin: e
                .tcin
                .as_ref()
                .map(ProductId::to_string)
                .unwrap_or_default(),
            watcher_id: e
                .watcher_id
                .as_ref()
                .map(WatcherId::to_string)
                .unwrap_or_default(),
            lease_id: e
                .lease_id
                .as_ref()
                .map(LeaseId::to_string)
                .unwrap_or_default(),
            fencing_token: e.fencing_token.map_or(0, FencingToken::get),
            outcome: e.outcome.map_or(pb::Outcome::Unspecified, Into::into) as i32,
            from_state: e
                .from_state
                .map_or(pb::ProductState::Unspecified, Into::into) as i32,
            to_state: e.to_state.map_or(pb::ProductState::Unspecified, Into::into) as i32,
            detail: e.detail.clone(),
        }
    }
}

impl TryFrom<pb::Event> for Event {
    type Error = ConvertError;
    fn try_from(e: pb::Event) -> Result<Self, ConvertError> {
        Ok(Self {
            sequence: e.sequence,
            unix_ms: e.unix_ms,
            kind: event_kind(e.kind)?,
            tcin: optional_id("tcin", ProductId::parse, &e.tcin)?,
            watcher_id: optional_id("watcher_id", WatcherId::parse, &e.watcher_id)?,
            lease_id: optional_id("lease_id", LeaseId::parse, &e.lease_id)?,
            fencing_token: (e.fencing_token > 0).then_some(FencingToken(e.fencing_token)),
            outcome: outcome("outcome", e.outcome)?,
            from_state: product_state("from_state", e.from_state)?,
            to_state: product_state("to_state", e.to_state)?,
            detail: e.detail,
        })
    }
}

// ----- leases -----

impl From<&Lease> for pb::Lease {
    fn from(l: &Lease) -> Self {
        Self {
            lease_id: l.lease_id.to_string(),
            tcin: l.tcin.to_string(),
            watcher_id: l.watcher_id.to_string(),
            fencing_token: l.token.get(),
            ttl_ms: millis(l.ttl),
            expires_at_unix_ms: l.expires_at_unix_ms,
            granted_at_unix_ms: l.granted_at_unix_ms,
            remaining_ms: millis(l.remaining),
        }
    }
}

impl TryFrom<pb::Lease> for Lease {
    type Error = ConvertError;
    fn try_from(l: pb::Lease) -> Result<Self, ConvertError> {
        if l.ttl_ms == 0 {
            return Err(ConvertError::new("ttl_ms", "a lease has a TTL above 0"));
        }
        Ok(Self {
            lease_id: id("lease_id", LeaseId::parse, &l.lease_id)?,
            tcin: id("tcin", ProductId::parse, &l.tcin)?,
            watcher_id: id("watcher_id", WatcherId::parse, &l.watcher_id)?,
            token: FencingToken::presented(l.fencing_token)
                .map_err(|e| ConvertError::new("fencing_token", e.to_string()))?,
            ttl: ms(l.ttl_ms),
            granted_at_unix_ms: l.granted_at_unix_ms,
            expires_at_unix_ms: l.expires_at_unix_ms,
            remaining: ms(l.remaining_ms),
        })
    }
}

// ----- stock -----

impl From<&Observation> for pb::StockObservation {
    fn from(o: &Observation) -> Self {
        Self {
            tcin: o.tcin.to_string(),
            in_stock: o.in_stock,
            price_cents: o.price.map(Price::cents),
            observed_at_unix_ms: o.observed_at_unix_ms,
        }
    }
}

impl TryFrom<pb::StockObservation> for Observation {
    type Error = ConvertError;
    fn try_from(o: pb::StockObservation) -> Result<Self, ConvertError> {
        Ok(Self {
            // Every report carries these: a bare TCIN is taken as it came,
            // without a copy.
            tcin: ProductId::try_from(o.tcin)
                .map_err(|e| ConvertError::new("tcin", e.to_string()))?,
            in_stock: o.in_stock,
            price: o.price_cents.map(Price::from_cents),
            observed_at_unix_ms: o.observed_at_unix_ms,
        })
    }
}

// ----- the catalog a watcher is sent -----

impl From<&Catalog> for pb::Catalog {
    fn from(c: &Catalog) -> Self {
        Self {
            products: c
                .products
                .products()
                .iter()
                .enumerate()
                .map(|(i, p)| pb::CatalogProduct {
                    tcin: p.tcin.to_string(),
                    name: p.name.clone(),
                    priority: (i + 1) as u32,
                    max_price_cents: p.max_price.map_or(0, Price::cents),
                    quantity: p.quantity,
                    enabled: p.enabled,
                })
                .collect(),
            lease_ttl_ms: millis(c.lease_ttl),
            stock_ttl_ms: millis(c.stock_ttl),
            test_mode: c.test_mode,
        }
    }
}

impl TryFrom<pb::Catalog> for Catalog {
    type Error = ConvertError;
    /// Products come back in priority order (equal priorities keep the
    /// message's order); a priority of 0 ranks last.
    fn try_from(c: pb::Catalog) -> Result<Self, ConvertError> {
        let mut products = c
            .products
            .into_iter()
            .enumerate()
            .map(|(i, p)| {
                let tcin = id("tcin", ProductId::parse, &p.tcin)
                    .map_err(|e| e.within(&format!("products[{i}]")))?;
                let priority = if p.priority == 0 {
                    u32::MAX
                } else {
                    p.priority
                };
                Ok((
                    priority,
                    ProductSpec {
                        name: if p.name.is_empty() {
                            tcin.to_string()
                        } else {
                            p.name
                        },
                        tcin,
                        max_price: (p.max_price_cents > 0)
                            .then(|| Price::from_cents(p.max_price_cents)),
                        quantity: p.quantity.max(1),
                        enabled: p.enabled,
                    },
                ))
            })
            .collect::<Result<Vec<_>, ConvertError>>()?;
        products.sort_by_key(|(priority, _)| *priority);
        Ok(Self {
            products: PriorityList::new(products.into_iter().map(|(_, p)| p).collect()),
            lease_ttl: ms(c.lease_ttl_ms),
            stock_ttl: ms(c.stock_ttl_ms),
            test_mode: c.test_mode,
        })
    }
}

// ----- status -----

// ----- source blocks -----

impl From<&SourceBlock> for pb::SourceBlock {
    fn from(b: &SourceBlock) -> Self {
        Self {
            kind: b.kind.as_str().to_owned(),
            since_unix_ms: b.since_unix_ms,
            tracking_url: b.tracking_url.as_deref().unwrap_or_default().to_owned(),
            paused_until_unix_ms: b.paused_until_unix_ms,
            source: b.source.to_string(),
        }
    }
}

/// Longest tracking URL kept; a longer one is cut (it is for display).
pub const MAX_TRACKING_URL: usize = 512;

impl TryFrom<pb::SourceBlock> for SourceBlock {
    type Error = ConvertError;
    /// A kind this build does not know is an error (the caller ignores the
    /// block rather than the report); an over-long tracking URL is cut.
    fn try_from(b: pb::SourceBlock) -> Result<Self, ConvertError> {
        let kind = SourceBlockKind::parse(&b.kind).ok_or_else(|| {
            let shown: String = b.kind.chars().take(40).collect();
            ConvertError::new("kind", format!("unknown source block kind {shown:?}"))
        })?;
        let cut = |mut text: String, max: usize| {
            if text.len() > max {
                let mut end = max;
                while !text.is_char_boundary(end) {
                    end -= 1;
                }
                text.truncate(end);
            }
            text
        };
        let url = cut(b.tracking_url, MAX_TRACKING_URL);
        Ok(Self {
            kind,
            since_unix_ms: b.since_unix_ms,
            paused_until_unix_ms: b.paused_until_unix_ms,
            tracking_url: (!url.is_empty()).then(|| url.into_boxed_str()),
            // "shopify:" and a host name fit; anything longer is not a name.
            source: cut(b.source, restock_domain::product_id::MAX_PRODUCT_ID_LEN).into_boxed_str(),
        })
    }
}

impl From<&Counters> for pb::Counters {
    fn from(c: &Counters) -> Self {
        Self {
            grants: c.grants,
            purchases: c.purchases,
            failures: c.failures,
            expirations: c.expirations,
            refusals: c.refusals,
            observations: c.observations,
        }
    }
}

impl From<pb::Counters> for Counters {
    fn from(c: pb::Counters) -> Self {
        Self {
            grants: c.grants,
            purchases: c.purchases,
            failures: c.failures,
            expirations: c.expirations,
            refusals: c.refusals,
            observations: c.observations,
        }
    }
}

impl From<&Status> for pb::GetStatusResponse {
    fn from(s: &Status) -> Self {
        Self {
            active_lease: s.lease.as_ref().map(Into::into),
            products: s
                .products
                .iter()
                .map(|p| pb::ProductStatus {
                    tcin: p.tcin.to_string(),
                    retailer: p.tcin.retailer().as_str().to_owned(),
                    name: p.name.clone(),
                    priority: p.priority,
                    state: pb::ProductState::from(p.state) as i32,
                    purchases: p.purchases,
                    quantity: p.quantity,
                    configured: p.configured,
                    in_stock_at: p.in_stock_at.iter().map(WatcherId::to_string).collect(),
                    cooldown_remaining_ms: millis(p.cooldown_remaining),
                    last_outcome: p.last_outcome.map_or(pb::Outcome::Unspecified, Into::into)
                        as i32,
                    last_detail: p.last_detail.clone(),
                    effective_poll_interval_ms: p.effective_poll_interval.map_or(0, millis),
                    price_cents: p.price.map(Price::cents),
                    held_back: p.held_back.clone(),
                })
                .collect(),
            watchers: s
                .watchers
                .iter()
                .map(|w| pb::WatcherStatus {
                    watcher_id: w.watcher_id.to_string(),
                    connected: w.connected,
                    last_report_unix_ms: w.last_report_unix_ms,
                    connected_since_unix_ms: w.connected_since_unix_ms,
                    reports: w.reports,
                    polling: w.polling.iter().map(ProductId::to_string).collect(),
                    poll_interval_ms: w.poll_interval.map_or(0, millis),
                    planned: w.poll_phase.is_some(),
                    poll_phase_ms: w.poll_phase.map_or(0, millis),
                    source_block: w.source_block.as_ref().map(Into::into),
                    source_blocked: w.source_block.as_ref().is_some_and(SourceBlock::is_block),
                })
                .collect(),
            test_mode: s.test_mode,
            paused: s.paused,
            counters: Some((&s.counters).into()),
            next_fencing_token: s.next_token.get(),
            last_event_sequence: s.last_event_sequence,
            lease_ttl_ms: millis(s.lease_ttl),
            stock_ttl_ms: millis(s.stock_ttl),
            failure_cooldown_ms: millis(s.failure_cooldown),
            config_path: s.config_path.clone(),
            unix_ms: restock_domain::timestamp::now_unix_ms(),
            poll_planning: s.poll_planning,
            // The arbiter's gRPC layer says which part it plays when it is
            // a replica (see `GetStatusResponse.role`).
            role: ROLE_STANDALONE.into(),
            leader_url: String::new(),
            budget: Some((&s.budget).into()),
        }
    }
}

// ----- the spending limit -----

impl From<&BudgetLimits> for pb::BudgetLimits {
    fn from(l: &BudgetLimits) -> Self {
        Self {
            max_spend_cents: l.max_spend.map(Price::cents),
            max_purchases: l.max_purchases,
            window_ms: l.window.map_or(0, millis),
        }
    }
}

impl From<pb::BudgetLimits> for BudgetLimits {
    fn from(l: pb::BudgetLimits) -> Self {
        Self {
            max_spend: l.max_spend_cents.map(Price::from_cents),
            max_purchases: l.max_purchases,
            window: (l.window_ms > 0).then(|| ms(l.window_ms)),
        }
    }
}

/// The `source` string of a budget status.
pub const BUDGET_FROM_CONFIG: &str = "config";
pub const BUDGET_FROM_OPERATOR: &str = "operator";

impl From<&BudgetStatus> for pb::BudgetStatus {
    fn from(b: &BudgetStatus) -> Self {
        let (source, reason, at) = match &b.source {
            BudgetSource::Config => (BUDGET_FROM_CONFIG, String::new(), 0),
            BudgetSource::Operator { reason, at_unix_ms } => {
                (BUDGET_FROM_OPERATOR, reason.clone(), *at_unix_ms)
            }
        };
        Self {
            limits: b.limits.as_ref().map(Into::into),
            source: source.into(),
            operator_reason: reason,
            operator_set_unix_ms: at,
            spent_cents: b.spent.cents(),
            purchases: b.purchases,
            reserved_cents: b.reserved.map(Price::cents),
            reserved_for_tcin: b
                .reserved_for
                .as_ref()
                .map_or_else(String::new, ProductId::to_string),
            left_cents: b.left.map(Price::cents),
            purchases_left: b.purchases_left,
            next_roll_off_unix_ms: b.next_roll_off_unix_ms.unwrap_or(0),
            held_back: b.held_back,
        }
    }
}

impl TryFrom<pb::BudgetStatus> for BudgetStatus {
    type Error = ConvertError;
    fn try_from(b: pb::BudgetStatus) -> Result<Self, ConvertError> {
        let reserved_for = (!b.reserved_for_tcin.is_empty())
            .then(|| id("reserved_for_tcin", ProductId::parse, &b.reserved_for_tcin))
            .transpose()?;
        Ok(Self {
            limits: b.limits.map(Into::into),
            source: if b.source == BUDGET_FROM_OPERATOR {
                BudgetSource::Operator {
                    reason: b.operator_reason,
                    at_unix_ms: b.operator_set_unix_ms,
                }
            } else {
                BudgetSource::Config
            },
            spent: Price::from_cents(b.spent_cents),
            purchases: b.purchases,
            reserved: b.reserved_cents.map(Price::from_cents),
            reserved_for,
            left: b.left_cents.map(Price::from_cents),
            purchases_left: b.purchases_left,
            next_roll_off_unix_ms: (b.next_roll_off_unix_ms > 0).then_some(b.next_roll_off_unix_ms),
            held_back: b.held_back,
        })
    }
}

impl TryFrom<pb::GetStatusResponse> for Status {
    type Error = ConvertError;
    fn try_from(s: pb::GetStatusResponse) -> Result<Self, ConvertError> {
        let products = s
            .products
            .into_iter()
            .enumerate()
            .map(|(i, p)| {
                let at = |e: ConvertError| e.within(&format!("products[{i}]"));
                Ok(ProductStatus {
                    tcin: id("tcin", ProductId::parse, &p.tcin).map_err(at)?,
                    name: p.name,
                    priority: p.priority,
                    state: product_state("state", p.state)
                        .map_err(at)?
                        .ok_or_else(|| at(ConvertError::new("state", "is unspecified")))?,
                    purchases: p.purchases,
                    quantity: p.quantity,
                    configured: p.configured,
                    in_stock_at: p
                        .in_stock_at
                        .iter()
                        .map(|w| id("in_stock_at", WatcherId::parse, w).map_err(at))
                        .collect::<Result<_, _>>()?,
                    cooldown_remaining: ms(p.cooldown_remaining_ms),
                    last_outcome: outcome("last_outcome", p.last_outcome).map_err(at)?,
                    last_detail: p.last_detail,
                    effective_poll_interval: (p.effective_poll_interval_ms > 0)
                        .then(|| ms(p.effective_poll_interval_ms)),
                    price: p.price_cents.map(Price::from_cents),
                    held_back: p.held_back,
                })
            })
            .collect::<Result<Vec<_>, ConvertError>>()?;
        let watchers = s
            .watchers
            .into_iter()
            .enumerate()
            .map(|(i, w)| {
                let at = |e: ConvertError| e.within(&format!("watchers[{i}]"));
                Ok(WatcherStatus {
                    watcher_id: id("watcher_id", WatcherId::parse, &w.watcher_id).map_err(at)?,
                    connected: w.connected,
                    last_report_unix_ms: w.last_report_unix_ms,
                    connected_since_unix_ms: w.connected_since_unix_ms,
                    reports: w.reports,
                    polling: w
                        .polling
                        .iter()
                        .map(|t| id("polling", ProductId::parse, t).map_err(at))
                        .collect::<Result<_, _>>()?,
                    poll_interval: (w.poll_interval_ms > 0).then(|| ms(w.poll_interval_ms)),
                    poll_phase: w.planned.then(|| ms(w.poll_phase_ms)),
                    // A kind this build does not know is shown as none.
                    source_block: w.source_block.and_then(|b| SourceBlock::try_from(b).ok()),
                })
            })
            .collect::<Result<Vec<_>, ConvertError>>()?;
        Ok(Self {
            lease: s
                .active_lease
                .map(Lease::try_from)
                .transpose()
                .map_err(|e| e.within("active_lease"))?,
            products,
            watchers,
            test_mode: s.test_mode,
            paused: s.paused,
            counters: s.counters.map(Into::into).unwrap_or_default(),
            next_token: FencingToken(s.next_fencing_token),
            last_event_sequence: s.last_event_sequence,
            lease_ttl: ms(s.lease_ttl_ms),
            stock_ttl: ms(s.stock_ttl_ms),
            failure_cooldown: ms(s.failure_cooldown_ms),
            config_path: s.config_path,
            poll_planning: s.poll_planning,
            budget: s
                .budget
                .map(BudgetStatus::try_from)
                .transpose()
                .map_err(|e| e.within("budget"))?
                .unwrap_or_else(BudgetStatus::none),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> ProductId {
        ProductId::parse(s).unwrap()
    }

    #[test]
    fn enums_round_trip() {
        for k in EventKind::ALL {
            assert_eq!(event_kind(pb::event::Kind::from(k) as i32), Ok(k));
        }
        for o in Outcome::ALL {
            assert_eq!(outcome("o", pb::Outcome::from(o) as i32), Ok(Some(o)));
        }
        for s in ProductState::ALL {
            assert_eq!(
                product_state("s", pb::ProductState::from(s) as i32),
                Ok(Some(s))
            );
        }
        assert_eq!(outcome("o", 0), Ok(None));
        assert!(outcome("o", 99).unwrap_err().to_string().contains("99"));
        assert!(event_kind(0).is_err());
    }

    #[test]
    fn events_round_trip_and_bad_ids_name_their_field() {
        let lease = LeaseId::parse("lease-3-x").unwrap();
        let w = WatcherId::parse("w.1").unwrap();
        let e = Event::new(EventKind::Released)
            .lease(&lease, &t("100"), &w, FencingToken(3))
            .product(&t("100"), ProductState::Attempting, ProductState::Ready)
            .outcome(Outcome::Purchased)
            .detail("done")
            .at(9, 1_000);
        let wire = pb::Event::from(&e);
        assert_eq!(Event::try_from(wire.clone()), Ok(e));
        let bad = pb::Event {
            tcin: "a b".into(),
            ..wire
        };
        let err = Event::try_from(bad).unwrap_err();
        assert_eq!(err.field, "tcin");
    }

    #[test]
    fn a_catalog_comes_back_in_priority_order() {
        let wire = pb::Catalog {
            products: vec![
                pb::CatalogProduct {
                    tcin: "b".into(),
                    priority: 2,
                    quantity: 1,
                    enabled: true,
                    ..Default::default()
                },
                pb::CatalogProduct {
                    tcin: "a".into(),
                    priority: 1,
                    max_price_cents: 1999,
                    quantity: 2,
                    enabled: true,
                    ..Default::default()
                },
            ],
            lease_ttl_ms: 30_000,
            stock_ttl_ms: 10_000,
            test_mode: true,
        };
        let c = Catalog::try_from(wire).unwrap();
        let ids: Vec<&str> = c
            .products
            .products()
            .iter()
            .map(|p| p.tcin.as_str())
            .collect();
        assert_eq!(ids, ["a", "b"]);
        assert_eq!(
            c.products.products()[0].max_price,
            Some(Price::from_cents(1999))
        );
        assert_eq!(c.products.products()[1].name, "b");
        let back = pb::Catalog::from(&c);
        assert_eq!(back.products[0].priority, 1);
        let bad = pb::Catalog {
            products: vec![pb::CatalogProduct {
                tcin: String::new(),
                ..Default::default()
            }],
            ..Default::default()
        };
        assert_eq!(
            Catalog::try_from(bad).unwrap_err().field,
            "products[0].tcin"
        );
    }

    #[test]
    fn a_lease_needs_a_token_and_a_ttl() {
        let wire = pb::Lease {
            lease_id: "lease-1-a".into(),
            tcin: "1".into(),
            watcher_id: "w".into(),
            fencing_token: 1,
            ttl_ms: 30_000,
            expires_at_unix_ms: 2,
            granted_at_unix_ms: 1,
            remaining_ms: 29_000,
        };
        let l = Lease::try_from(wire.clone()).unwrap();
        assert_eq!(pb::Lease::from(&l), wire);
        let zero = pb::Lease {
            fencing_token: 0,
            ..wire.clone()
        };
        assert_eq!(Lease::try_from(zero).unwrap_err().field, "fencing_token");
        let no_ttl = pb::Lease { ttl_ms: 0, ..wire };
        assert_eq!(Lease::try_from(no_ttl).unwrap_err().field, "ttl_ms");
    }

    #[test]
    fn source_blocks_round_trip_and_unknown_kinds_are_refused() {
        for kind in SourceBlockKind::ALL {
            let b = SourceBlock {
                kind,
                since_unix_ms: 5,
                paused_until_unix_ms: 9,
                tracking_url: (kind == SourceBlockKind::Captcha).then(|| "/captcha?t=1".into()),
                source: "shopify:cards.example".into(),
            };
            assert_eq!(SourceBlock::try_from(pb::SourceBlock::from(&b)), Ok(b));
        }
        let odd = pb::SourceBlock {
            kind: "solar_flare".into(),
            ..Default::default()
        };
        assert_eq!(SourceBlock::try_from(odd).unwrap_err().field, "kind");
        let long = pb::SourceBlock {
            kind: "captcha".into(),
            tracking_url: "é".repeat(MAX_TRACKING_URL),
            ..Default::default()
        };
        let b = SourceBlock::try_from(long).unwrap();
        assert!(b.tracking_url.unwrap().len() <= MAX_TRACKING_URL);
    }
}

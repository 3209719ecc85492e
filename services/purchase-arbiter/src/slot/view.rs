//! What `GetStatus` shows, built from the slot's state: the lease as it
//! stands, every product in priority order, every watcher, the counters.

use std::time::Duration;

use restock_domain::{
    BudgetStatus, FencingToken, Price, ProductState, ProductStatus, Status, WatcherStatus,
};

use super::{Arbiter, Now};

impl Arbiter {
    /// Everything `GetStatus` shows (all but the config path, which the
    /// arbiter's state does not know).
    pub fn status(&self, now: Now) -> Status {
        let (ranked, pollers) = self.poll_inputs();
        let effective = crate::plan::effective_intervals(&ranked, &pollers);
        let products = self
            .ranked()
            .into_iter()
            .enumerate()
            .map(|(i, tcin)| {
                let p = &self.products[tcin];
                let spec = self.spec(tcin);
                ProductStatus {
                    tcin: tcin.clone(),
                    name: spec.map_or_else(|| tcin.to_string(), |s| s.name.clone()),
                    priority: (i + 1) as u32,
                    state: p.state,
                    purchases: p.purchases,
                    quantity: spec.map_or(1, |s| s.quantity),
                    configured: spec.is_some(),
                    in_stock_at: p
                        .sightings
                        .iter()
                        .filter(|(_, s)| now.mono < s.at + self.timing.stock_ttl)
                        .map(|(w, _)| w.clone())
                        .collect(),
                    cooldown_remaining: p.cooldown_until.map_or(Duration::ZERO, |(u, _)| {
                        u.saturating_duration_since(now.mono)
                    }),
                    last_outcome: p.last_outcome,
                    last_detail: p.last_detail.clone(),
                    effective_poll_interval: effective.get(tcin).copied(),
                    price: self.prices.get(tcin).copied(),
                    held_back: self.held_back.get(tcin).cloned().unwrap_or_default(),
                }
            })
            .collect();
        let mut watchers: Vec<WatcherStatus> = self
            .watchers
            .iter()
            .map(|(id, w)| WatcherStatus {
                watcher_id: id.clone(),
                connected: w.conn.is_some(),
                last_report_unix_ms: w.last_report_unix_ms,
                connected_since_unix_ms: w.connected_since_unix_ms,
                reports: w.reports,
                polling: w.polling.clone(),
                poll_interval: w.poll_interval,
                // The task's poll plan fills it in.
                poll_phase: None,
                source_block: w.source_block.clone(),
            })
            .collect();
        watchers.sort_by(|a, b| a.watcher_id.cmp(&b.watcher_id));
        Status {
            lease: self.lease.as_ref().map(|l| l.view(now.mono)),
            products,
            watchers,
            test_mode: self.timing.test_mode,
            paused: self.paused,
            counters: self.counters,
            next_token: FencingToken(self.next_token),
            last_event_sequence: self.last_sequence(),
            lease_ttl: self.timing.lease_ttl,
            stock_ttl: self.timing.stock_ttl,
            failure_cooldown: self.timing.failure_cooldown,
            config_path: String::new(),
            poll_planning: false,
            budget: self.budget_status(now),
        }
    }

    /// What the status shows of the spending limit.
    pub fn budget_status(&self, now: Now) -> BudgetStatus {
        let (limits, source) = self.budget_limits();
        let window = limits.and_then(|l| l.window);
        let totals = self.budget().totals(window, now.unix_ms);
        let reservation = self.budget().reservation();
        let (room_cents, room_purchases) = self.budget().room(limits.as_ref(), now.unix_ms);
        BudgetStatus {
            limits,
            source,
            spent: Price::from_cents(totals.spent),
            purchases: totals.purchases,
            reserved: reservation.map(|r| r.price.unwrap_or(Price::from_cents(0))),
            reserved_for: reservation.map(|r| r.tcin.clone()),
            left: limits
                .and_then(|l| l.max_spend)
                .map(|_| Price::from_cents(room_cents)),
            purchases_left: limits.and_then(|l| l.max_purchases).map(|_| room_purchases),
            next_roll_off_unix_ms: self.budget().next_roll_off(window, now.unix_ms),
            held_back: self
                .products
                .values()
                .filter(|p| p.state == ProductState::OverBudget)
                .count() as u32,
        }
    }
}

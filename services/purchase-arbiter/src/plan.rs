//! Poll planning: the watchers that poll a product take turns, so N of them
//! polling every T cover it every T/N, evenly, instead of at random moments
//! relative to each other (a restock is then seen after T/(2N) on average
//! and T/N at worst, with no more requests to the retailer than before).
//!
//! Each watcher polls all of its products in one round every period, so a
//! plan gives each watcher one phase: it starts its rounds at
//! `epoch + phase + k·period` on the arbiter's clock. The arbiter sends the
//! phase as an offset from the moment it sends the plan, and the watcher
//! times it with its own monotonic clock from when the plan arrived (no
//! wall clocks are compared). Plans are re-sent now and then, so drift
//! between the machines' clocks never adds up.
//!
//! How phases are chosen:
//!
//! - Watchers are grouped by period: only watchers with the same period keep
//!   a fixed distance from each other (with different periods their rounds
//!   slide past each other whatever their phases), so each group is spread
//!   over its own period.
//! - Within a group, products are taken in priority order. The watchers of
//!   the first product that have no phase yet are spread evenly over the
//!   period (watcher k of N at k/N, in watcher-id order, so a plan does not
//!   reshuffle without cause); a watcher that first appears at a later
//!   product takes the middle of the widest gap among the phases of that
//!   product's watchers. Watchers polling the same products are therefore
//!   spaced exactly evenly, and the top product is always the best served.
//!
//! A product's effective interval is what all connected watchers polling
//! it give together: `1 / Σ 1/period`.

use std::{
    collections::{BTreeMap, HashMap},
    time::Duration,
};

use restock_domain::{ProductId, WatcherId};

/// What the planner needs of one connected watcher.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PollInput {
    pub watcher: WatcherId,
    /// Its `--poll-interval`.
    pub period: Duration,
    /// What it polls; empty means every product.
    pub polling: Vec<ProductId>,
}

impl PollInput {
    fn polls(&self, tcin: &ProductId) -> bool {
        self.polling.is_empty() || self.polling.contains(tcin)
    }
}

/// One watcher's place in the plan.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PollSlot {
    pub period: Duration,
    /// When in each period its rounds start, from the plan's epoch.
    pub phase: Duration,
    /// Its place among the watchers sharing its period (0-based, by phase).
    pub position: u32,
    /// How many watchers share its period.
    pub of: u32,
}

impl PollSlot {
    /// The wait from `since_epoch` (now, on the arbiter's clock, since the
    /// plan's epoch) until this watcher's next round: what the plan message
    /// carries.
    pub fn offset(&self, since_epoch: Duration) -> Duration {
        let period = self.period.as_nanos();
        if period == 0 {
            return Duration::ZERO;
        }
        let into = since_epoch.as_nanos() % period;
        let wait = (self.phase.as_nanos() % period + period - into) % period;
        Duration::from_nanos(u64::try_from(wait).unwrap_or(u64::MAX))
    }
}

/// The phases of every planned watcher.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    pub slots: BTreeMap<WatcherId, PollSlot>,
}

/// Plans `watchers` over the products in priority order (`ranked`).
pub fn plan(ranked: &[ProductId], watchers: &[PollInput]) -> Plan {
    let mut groups: BTreeMap<Duration, Vec<&PollInput>> = BTreeMap::new();
    for w in watchers.iter().filter(|w| !w.period.is_zero()) {
        groups.entry(w.period).or_default().push(w);
    }
    let mut slots = BTreeMap::new();
    for (period, mut members) in groups {
        members.sort_by(|a, b| a.watcher.cmp(&b.watcher));
        // Phases as fractions of the period, in [0, 1).
        let mut phases: BTreeMap<&WatcherId, f64> = BTreeMap::new();
        for tcin in ranked {
            let of_product: Vec<&PollInput> =
                members.iter().copied().filter(|w| w.polls(tcin)).collect();
            let placed: Vec<f64> = of_product
                .iter()
                .filter_map(|w| phases.get(&w.watcher).copied())
                .collect();
            let new: Vec<&PollInput> = of_product
                .iter()
                .copied()
                .filter(|w| !phases.contains_key(&w.watcher))
                .collect();
            if placed.is_empty() {
                let n = new.len() as f64;
                for (k, w) in new.iter().enumerate() {
                    phases.insert(&w.watcher, k as f64 / n);
                }
            } else {
                let mut points = placed;
                for w in new {
                    let at = middle_of_widest_gap(&points);
                    points.push(at);
                    phases.insert(&w.watcher, at);
                }
            }
        }
        // Watchers polling none of the ranked products still poll: they go
        // into the widest gap of the group.
        for w in &members {
            if !phases.contains_key(&w.watcher) {
                let points: Vec<f64> = phases.values().copied().collect();
                let at = if points.is_empty() {
                    0.0
                } else {
                    middle_of_widest_gap(&points)
                };
                phases.insert(&w.watcher, at);
            }
        }
        let mut by_phase: Vec<(&WatcherId, f64)> = phases.into_iter().collect();
        by_phase.sort_by(|a, b| a.1.total_cmp(&b.1).then_with(|| a.0.cmp(b.0)));
        let of = u32::try_from(by_phase.len()).unwrap_or(u32::MAX);
        for (position, (watcher, fraction)) in by_phase.into_iter().enumerate() {
            slots.insert(
                watcher.clone(),
                PollSlot {
                    period,
                    phase: period.mul_f64(fraction),
                    position: u32::try_from(position).unwrap_or(u32::MAX),
                    of,
                },
            );
        }
    }
    Plan { slots }
}

/// The middle of the widest gap between `points` (fractions of a period)
/// on the circle; with one point, its opposite.
fn middle_of_widest_gap(points: &[f64]) -> f64 {
    let mut sorted = points.to_vec();
    sorted.sort_by(f64::total_cmp);
    let mut best = (0.0, sorted[0]);
    for (i, &p) in sorted.iter().enumerate() {
        let next = if i + 1 < sorted.len() {
            sorted[i + 1]
        } else {
            sorted[0] + 1.0
        };
        if next - p > best.0 {
            best = (next - p, p);
        }
    }
    (best.1 + best.0 / 2.0) % 1.0
}

/// How often each product is polled by all of `watchers` together.
pub fn effective_intervals(
    ranked: &[ProductId],
    watchers: &[PollInput],
) -> HashMap<ProductId, Duration> {
    ranked
        .iter()
        .filter_map(|tcin| {
            let rate: f64 = watchers
                .iter()
                .filter(|w| !w.period.is_zero() && w.polls(tcin))
                .map(|w| 1.0 / w.period.as_secs_f64())
                .sum();
            (rate > 0.0).then(|| (tcin.clone(), Duration::from_secs_f64(1.0 / rate)))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> ProductId {
        ProductId::parse(s).unwrap()
    }

    fn w(id: &str, period_ms: u64, polling: &[&str]) -> PollInput {
        PollInput {
            watcher: WatcherId::parse(id).unwrap(),
            period: Duration::from_millis(period_ms),
            polling: polling.iter().map(|p| t(p)).collect(),
        }
    }

    fn phases_ms(plan: &Plan) -> Vec<(String, u64)> {
        plan.slots
            .iter()
            .map(|(id, s)| (id.to_string(), s.phase.as_millis() as u64))
            .collect()
    }

    /// The gaps between consecutive polls of `tcin` over a period, in ms.
    fn gaps(plan: &Plan, watchers: &[PollInput], tcin: &str) -> Vec<u64> {
        let mut at: Vec<u64> = watchers
            .iter()
            .filter(|w| w.polls(&t(tcin)))
            .map(|w| plan.slots[&w.watcher].phase.as_millis() as u64)
            .collect();
        at.sort_unstable();
        let period = watchers[0].period.as_millis() as u64;
        (0..at.len())
            .map(|i| {
                if i + 1 < at.len() {
                    at[i + 1] - at[i]
                } else {
                    at[0] + period - at[i]
                }
            })
            .collect()
    }

    #[test]
    fn watchers_of_the_same_products_take_even_turns() {
        let ranked = [t("A"), t("B")];
        let three = [w("w1", 300, &[]), w("w2", 300, &[]), w("w3", 300, &[])];
        let p = plan(&ranked, &three);
        assert_eq!(
            phases_ms(&p),
            [("w1".into(), 0), ("w2".into(), 100), ("w3".into(), 200)]
        );
        assert!(p.slots.values().all(|s| s.of == 3));
        assert_eq!(p.slots[&WatcherId::parse("w3").unwrap()].position, 2);
        // One leaves: the two left re-space to half the period.
        let p = plan(&ranked, &three[..2]);
        assert_eq!(phases_ms(&p), [("w1".into(), 0), ("w2".into(), 150)]);
        let p = plan(&ranked, &three[..1]);
        assert_eq!(phases_ms(&p), [("w1".into(), 0)]);
        assert_eq!(plan(&ranked, &[]), Plan::default());
    }

    #[test]
    fn the_top_product_is_spread_exactly_and_later_watchers_fill_the_widest_gaps() {
        let ranked = [t("A"), t("B")];
        // w1 and w2 poll A (and B); w3 polls only B.
        let ws = [w("w1", 300, &[]), w("w2", 300, &[]), w("w3", 300, &["B"])];
        let p = plan(&ranked, &ws);
        assert_eq!(gaps(&p, &ws, "A"), [150, 150]);
        // B's three watchers: w3 in the middle of one of A's halves.
        let b = gaps(&p, &ws, "B");
        assert_eq!(b.iter().sum::<u64>(), 300);
        assert!(b.iter().all(|g| *g >= 75), "{b:?}");
    }

    #[test]
    fn different_periods_are_planned_apart_and_the_effective_interval_adds_rates() {
        let ranked = [t("A")];
        let ws = [
            w("fast-1", 100, &[]),
            w("fast-2", 100, &[]),
            w("slow", 300, &[]),
        ];
        let p = plan(&ranked, &ws);
        let fast2 = p.slots[&WatcherId::parse("fast-2").unwrap()];
        assert_eq!((fast2.phase, fast2.of), (Duration::from_millis(50), 2));
        let slow = p.slots[&WatcherId::parse("slow").unwrap()];
        assert_eq!((slow.phase, slow.of), (Duration::ZERO, 1));
        // 10/s + 10/s + 3.33/s = 23.33/s: every ~42.9 ms.
        let e = effective_intervals(&ranked, &ws)[&t("A")];
        assert_eq!(e.as_micros(), 42_857);
        // Nobody polls B: no interval at all.
        assert!(effective_intervals(&[t("B")], &[w("x", 100, &["A"])]).is_empty());
    }

    #[test]
    fn a_watcher_without_a_period_is_not_planned_and_one_polling_nothing_listed_still_is() {
        let ranked = [t("A")];
        let ws = [
            w("known", 200, &[]),
            w("unknown", 0, &[]),
            w("other", 200, &["Z"]),
        ];
        let p = plan(&ranked, &ws);
        assert!(!p.slots.contains_key(&WatcherId::parse("unknown").unwrap()));
        assert_eq!(phases_ms(&p), [("known".into(), 0), ("other".into(), 100)]);
    }

    #[test]
    fn the_offset_is_the_wait_until_the_next_round_of_the_phase() {
        let slot = PollSlot {
            period: Duration::from_millis(300),
            phase: Duration::from_millis(100),
            position: 1,
            of: 3,
        };
        let ms = |m| Duration::from_millis(m);
        assert_eq!(slot.offset(ms(0)), ms(100));
        assert_eq!(slot.offset(ms(50)), ms(50));
        assert_eq!(slot.offset(ms(100)), ms(0));
        assert_eq!(slot.offset(ms(150)), ms(250));
        assert_eq!(slot.offset(ms(3_000 + 40)), ms(60));
    }
}

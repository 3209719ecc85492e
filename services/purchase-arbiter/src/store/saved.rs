//! Between the slot and its saved form: [`snapshot`] makes the whole
//! [`Snapshot`], [`SaveMarks`] remembers what the disk holds so the next
//! journal record ([`Delta`]) carries only what changed, and [`restore`]
//! turns a snapshot read back after a restart into the slot again.

use std::{collections::HashMap, time::Duration};

use restock_domain::{BudgetLimits, Price, PriorityList, ProductId, ProductState};

use super::format::{
    Delta, SNAPSHOT_VERSION, SavedAnswer, SavedBudget, SavedEndedLease, SavedLease, SavedLimits,
    SavedOperatorLimits, SavedProduct, SavedRefusal, SavedReservation, SavedSpend, Snapshot,
    saved_event_count,
};
use crate::slot::{
    AcquireAnswer, ActiveLease, AnswerKey, Arbiter, Budget, EndedLease, Now, OperatorLimits,
    Product, Refusal, Reservation, Resume, SlotError, Spend, Timing, ms,
};

/// The durable part of the state, whole.
pub fn snapshot(a: &Arbiter, now: Now) -> Snapshot {
    Snapshot {
        version: SNAPSHOT_VERSION,
        journal: 0,
        saved_at_unix_ms: now.unix_ms,
        next_fencing_token: a.next_token(),
        sequence_reserved: a.sequence_reserved(),
        paused: a.paused(),
        products: a
            .products()
            .map(|(tcin, p)| (tcin.clone(), saved_product(p)))
            .collect(),
        lease: a.lease().map(|l| saved_lease(l, now)),
        ended_leases: a.ended().iter().map(saved_ended).collect(),
        idempotency: a.answers().iter().map(saved_answer).collect(),
        counters: a.counters(),
        events: a
            .history()
            .newest(saved_event_count(a.history().iter().rev()))
            .cloned()
            .collect(),
        budget: saved_budget(a.budget()),
    }
}

/// The spending limit's record as saved; `None` while it holds nothing
/// (so state files of arbiters that never bought stay as they were).
fn saved_budget(b: &Budget) -> Option<SavedBudget> {
    let saved = SavedBudget {
        spends: b
            .spends()
            .map(|s| SavedSpend {
                at_unix_ms: s.at_unix_ms,
                cents: s.cents,
                purchases: s.purchases,
            })
            .collect(),
        reservation: b.reservation().map(|r| SavedReservation {
            lease_id: r.lease_id.clone(),
            tcin: r.tcin.clone(),
            price_cents: r.price.map(Price::cents),
        }),
        operator: b.operator().map(|o| SavedOperatorLimits {
            limits: o.limits.as_ref().map(saved_limits),
            config_was: o.config_was.as_ref().map(saved_limits),
            reason: o.reason.clone(),
            at_unix_ms: o.at_unix_ms,
        }),
        exhausted: b.exhausted(),
    };
    let empty = saved.is_empty();
    (!empty).then_some(saved)
}

fn saved_limits(l: &BudgetLimits) -> SavedLimits {
    SavedLimits {
        max_spend_cents: l.max_spend.map(Price::cents),
        max_purchases: l.max_purchases,
        window_ms: l.window.map(ms),
    }
}

fn limits_from_saved(l: SavedLimits) -> BudgetLimits {
    BudgetLimits {
        max_spend: l.max_spend_cents.map(Price::from_cents),
        max_purchases: l.max_purchases,
        window: l.window_ms.map(Duration::from_millis),
    }
}

fn budget_from_saved(b: Option<SavedBudget>) -> Budget {
    let Some(b) = b else {
        return Budget::default();
    };
    Budget::restored(
        b.spends
            .into_iter()
            .map(|s| Spend {
                at_unix_ms: s.at_unix_ms,
                cents: s.cents,
                purchases: s.purchases,
            })
            .collect(),
        b.reservation.map(|r| Reservation {
            lease_id: r.lease_id,
            tcin: r.tcin,
            price: r.price_cents.map(Price::from_cents),
        }),
        b.operator.map(|o| OperatorLimits {
            limits: o.limits.map(limits_from_saved),
            config_was: o.config_was.map(limits_from_saved),
            reason: o.reason,
            at_unix_ms: o.at_unix_ms,
        }),
        b.exhausted,
    )
}

/// What the state file (snapshot and journal) holds, as far as the arbiter
/// task knows: the next [`Delta`] carries only what changed since. It moves
/// only when a write succeeded ([`Self::persisted`]), so a failed write's
/// changes ride along with the next one.
#[derive(Debug, Default)]
pub struct SaveMarks {
    /// The newest event on disk.
    events_upto: u64,
    /// [`crate::bounded_log::BoundedLog::total`] of the ended leases on disk.
    ended_total: u64,
    /// The same for the idempotency answers.
    answers_total: u64,
    /// Each product as the disk holds it.
    products: HashMap<ProductId, SavedProduct>,
    /// [`Budget::version`] of the spending limit's record on disk.
    budget_version: u64,
}

/// Where a write brings the disk to. Handed back with
/// [`SaveMarks::persisted`] once the write succeeded; a failed write leaves
/// the marks where they were, so the next write carries its changes again.
#[derive(Debug)]
pub struct PersistMark {
    events_upto: u64,
    ended_total: u64,
    answers_total: u64,
    products: ProductsMark,
    budget_version: u64,
}

#[derive(Debug)]
enum ProductsMark {
    /// A full snapshot: the disk now holds exactly these products.
    All(HashMap<ProductId, SavedProduct>),
    /// A delta: these changed, these were removed.
    Changed {
        upserted: Vec<(ProductId, SavedProduct)>,
        removed: Vec<ProductId>,
    },
}

impl SaveMarks {
    /// The mark of a full [`snapshot`] of `a` taken now.
    pub fn full(a: &Arbiter) -> PersistMark {
        PersistMark {
            budget_version: a.budget().version(),
            events_upto: a.last_sequence(),
            ended_total: a.ended().total(),
            answers_total: a.answers().total(),
            products: ProductsMark::All(
                a.products()
                    .map(|(tcin, p)| (tcin.clone(), saved_product(p)))
                    .collect(),
            ),
        }
    }

    /// What changed since the last successful write: the small fields in
    /// full, the products whose saved form differs, and the events, ended
    /// leases and idempotency answers added since. Applied to the state on
    /// disk ([`Snapshot::apply`]) it gives exactly [`snapshot`].
    pub fn delta(&self, a: &Arbiter, now: Now) -> (Delta, PersistMark) {
        let mut upserted = Vec::new();
        for (tcin, product) in a.products() {
            if self
                .products
                .get(tcin)
                .is_none_or(|s| !same_saved(product, s))
            {
                upserted.push((tcin.clone(), saved_product(product)));
            }
        }
        let removed: Vec<ProductId> = self
            .products
            .keys()
            .filter(|t| a.product(t).is_none())
            .cloned()
            .collect();
        let history = a.history();
        let first_new = history.partition_point(|e| e.sequence <= self.events_upto);
        let new_events = history.len() - first_new;
        let saved_new = saved_event_count(history.iter_from(first_new).rev());
        let events = history
            .iter_from(first_new)
            .skip(new_events - saved_new)
            .cloned()
            .collect();
        let delta = Delta {
            journal: 0,
            saved_at_unix_ms: now.unix_ms,
            next_fencing_token: a.next_token(),
            sequence_reserved: a.sequence_reserved(),
            paused: a.paused(),
            lease: a.lease().map(|l| saved_lease(l, now)),
            counters: a.counters(),
            products: upserted.iter().cloned().collect(),
            removed_products: removed.clone(),
            ended_leases: a
                .ended()
                .added_since(self.ended_total)
                .map(saved_ended)
                .collect(),
            idempotency: a
                .answers()
                .added_since(self.answers_total)
                .map(saved_answer)
                .collect(),
            events,
            // Whole, and only when it changed (an empty one stands for
            // "none left": Snapshot::apply drops it).
            budget: (a.budget().version() != self.budget_version)
                .then(|| saved_budget(a.budget()).unwrap_or_default()),
        };
        let mark = PersistMark {
            budget_version: a.budget().version(),
            events_upto: a.last_sequence(),
            ended_total: a.ended().total(),
            answers_total: a.answers().total(),
            products: ProductsMark::Changed { upserted, removed },
        };
        (delta, mark)
    }

    /// A write with this mark reached the disk.
    pub fn persisted(&mut self, mark: PersistMark) {
        self.events_upto = mark.events_upto;
        self.ended_total = mark.ended_total;
        self.answers_total = mark.answers_total;
        self.budget_version = mark.budget_version;
        match mark.products {
            ProductsMark::All(all) => self.products = all,
            ProductsMark::Changed { upserted, removed } => {
                for t in removed {
                    self.products.remove(&t);
                }
                self.products.extend(upserted);
            }
        }
    }
}

/// How a product is saved. Stock reports are not persisted (watchers report
/// again after a restart), so QUEUED is saved as READY.
fn saved_product(p: &Product) -> SavedProduct {
    SavedProduct {
        state: saved_state(p.state()),
        purchases: p.purchases(),
        cooldown_until_unix_ms: p.cooldown_until_unix_ms(),
        last_outcome: p.last_outcome(),
        last_detail: p.last_detail().to_owned(),
    }
}

fn saved_state(s: ProductState) -> ProductState {
    match s {
        ProductState::Queued | ProductState::OverBudget => ProductState::Ready,
        s => s,
    }
}

/// `saved_product(p) == *s`, without allocating.
fn same_saved(p: &Product, s: &SavedProduct) -> bool {
    saved_state(p.state()) == s.state
        && p.purchases() == s.purchases
        && p.cooldown_until_unix_ms() == s.cooldown_until_unix_ms
        && p.last_outcome() == s.last_outcome
        && p.last_detail() == s.last_detail
}

fn saved_lease(l: &ActiveLease, now: Now) -> SavedLease {
    SavedLease {
        lease_id: l.lease_id.clone(),
        tcin: l.tcin.clone(),
        watcher_id: l.watcher_id.clone(),
        fencing_token: l.token,
        ttl_ms: ms(l.ttl),
        granted_at_unix_ms: l.granted_at_unix_ms,
        expires_at_unix_ms: l.expires_at_unix_ms,
        remaining_ms: ms(l.remaining(now)),
    }
}

fn saved_ended(e: &EndedLease) -> SavedEndedLease {
    SavedEndedLease {
        lease_id: e.lease_id.clone(),
        tcin: e.tcin.clone(),
        watcher_id: e.watcher_id.clone(),
        token: e.token,
        outcome: e.outcome,
        ended_at_unix_ms: e.ended_at_unix_ms,
    }
}

fn ended_from_saved(e: SavedEndedLease) -> EndedLease {
    EndedLease {
        lease_id: e.lease_id,
        tcin: e.tcin,
        watcher_id: e.watcher_id,
        token: e.token,
        outcome: e.outcome,
        ended_at_unix_ms: e.ended_at_unix_ms,
    }
}

fn saved_answer((key, answer): (&AnswerKey, &AcquireAnswer)) -> SavedAnswer {
    SavedAnswer {
        watcher_id: key.0.clone(),
        request_id: key.1.clone(),
        granted_lease_id: match answer {
            AcquireAnswer::Granted(l) => Some(l.lease_id.clone()),
            AcquireAnswer::Refused(_) => None,
        },
        refusal: match answer {
            AcquireAnswer::Granted(_) => None,
            AcquireAnswer::Refused(r) => Some(saved_refusal(r)),
        },
    }
}

fn saved_refusal(r: &Refusal) -> SavedRefusal {
    match r.clone() {
        Refusal::AnotherPurchaseActive {
            holder_tcin,
            holder_watcher_id,
        } => SavedRefusal::AnotherPurchaseActive {
            holder_tcin,
            holder_watcher_id,
        },
        Refusal::HigherPriorityPending { pending_tcin } => {
            SavedRefusal::HigherPriorityPending { pending_tcin }
        }
        Refusal::AlreadyPurchased { purchases } => SavedRefusal::AlreadyPurchased { purchases },
        Refusal::CoolingDown { retry_after_ms } => SavedRefusal::CoolingDown { retry_after_ms },
        Refusal::Paused => SavedRefusal::Paused,
        Refusal::Disabled => SavedRefusal::Disabled,
        Refusal::OverBudget { detail } => SavedRefusal::OverBudget { detail },
    }
}

fn refusal_from_saved(r: SavedRefusal) -> Refusal {
    match r {
        SavedRefusal::AnotherPurchaseActive {
            holder_tcin,
            holder_watcher_id,
        } => Refusal::AnotherPurchaseActive {
            holder_tcin,
            holder_watcher_id,
        },
        SavedRefusal::HigherPriorityPending { pending_tcin } => {
            Refusal::HigherPriorityPending { pending_tcin }
        }
        SavedRefusal::AlreadyPurchased { purchases } => Refusal::AlreadyPurchased { purchases },
        SavedRefusal::CoolingDown { retry_after_ms } => Refusal::CoolingDown { retry_after_ms },
        SavedRefusal::Paused => Refusal::Paused,
        SavedRefusal::Disabled => Refusal::Disabled,
        SavedRefusal::OverBudget { detail } => Refusal::OverBudget { detail },
    }
}

/// Rebuilds the arbiter from a snapshot read back after a restart. The
/// lease keeps the time it had left by the wall clock, never more than its
/// TTL (a clock that went back while the arbiter was down must not lengthen
/// it past what the holder counts); a cool-down keeps its wall-clock end,
/// never more than a whole cool-down from now.
pub fn restore(
    snapshot: Snapshot,
    catalog: PriorityList,
    timing: Timing,
    now: Now,
) -> Result<Arbiter, SlotError> {
    let mono_at = |unix: u64| {
        if unix <= now.unix_ms {
            now.mono
        } else {
            now.mono + Duration::from_millis(unix - now.unix_ms)
        }
    };
    let products = snapshot
        .products
        .into_iter()
        .map(|(tcin, p)| {
            // Nothing is queued or attempting before watchers report again
            // and the lease (below) is put back.
            let state = match p.state {
                ProductState::Queued | ProductState::OverBudget | ProductState::Attempting => {
                    ProductState::Ready
                }
                s => s,
            };
            let cooldown = p.cooldown_until_unix_ms.map(|u| {
                let capped = u.min(now.unix_ms + ms(timing.failure_cooldown));
                (mono_at(capped), capped)
            });
            let product =
                Product::restored(state, p.purchases, cooldown, p.last_outcome, p.last_detail);
            (tcin, product)
        })
        .collect();
    let lease = snapshot.lease.map(|l| {
        // Both wall times are whole milliseconds, cut down: the deadline
        // written may be up to 1 ms before the real one, and `now` up to
        // 1 ms before the real now. Rounding the time left up (1 ms more)
        // keeps the carried lease from ending before a whole TTL has passed
        // for its holder; one whose written deadline is already past has
        // ended for sure.
        let left = if l.expires_at_unix_ms >= now.unix_ms {
            (l.expires_at_unix_ms - now.unix_ms + 1).min(l.ttl_ms)
        } else {
            0
        };
        ActiveLease {
            lease_id: l.lease_id,
            tcin: l.tcin,
            watcher_id: l.watcher_id,
            token: l.fencing_token,
            ttl: Duration::from_millis(l.ttl_ms),
            granted_at_unix_ms: l.granted_at_unix_ms,
            deadline: now.mono + Duration::from_millis(left),
            expires_at_unix_ms: now.unix_ms + left,
        }
    });
    let ended: Vec<EndedLease> = snapshot
        .ended_leases
        .into_iter()
        .map(ended_from_saved)
        .collect();
    let mut answers = Vec::with_capacity(snapshot.idempotency.len());
    for s in snapshot.idempotency {
        let answer = match (s.granted_lease_id, s.refusal) {
            (_, Some(r)) => AcquireAnswer::Refused(refusal_from_saved(r)),
            (Some(id), None) => {
                // Only the current lease can be shown again in full; a
                // retry of an older grant gets it from the ended list.
                match lease.as_ref().filter(|l| l.lease_id == id) {
                    Some(l) => AcquireAnswer::Granted(l.clone()),
                    None => match ended.iter().find(|e| e.lease_id == id) {
                        Some(e) => AcquireAnswer::Granted(ActiveLease {
                            lease_id: e.lease_id.clone(),
                            tcin: e.tcin.clone(),
                            watcher_id: e.watcher_id.clone(),
                            token: e.token,
                            ttl: timing.lease_ttl,
                            granted_at_unix_ms: 0,
                            deadline: now.mono,
                            expires_at_unix_ms: e.ended_at_unix_ms,
                        }),
                        None => continue,
                    },
                }
            }
            (None, None) => continue,
        };
        answers.push(((s.watcher_id, s.request_id), answer));
    }
    Arbiter::resume(
        Resume {
            next_token: snapshot.next_fencing_token,
            paused: snapshot.paused,
            sequence_reserved: snapshot.sequence_reserved,
            counters: snapshot.counters,
            products,
            lease,
            ended,
            answers,
            history: snapshot.events,
            budget: budget_from_saved(snapshot.budget),
        },
        catalog,
        timing,
        now,
    )
}

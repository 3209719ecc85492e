//! The notifier's Prometheus metrics, served at `GET /metrics` with
//! `--http-listen`:
//!
//! - `restock_notifier_alerts_total{kind}`: alerts made (before the
//!   per-destination filter), by kind.
//! - `restock_notifier_deliveries_total{destination,result}`: send attempts
//!   by outcome: `delivered`, `retried` (a failure that will be tried
//!   again), `rate_limited` (a `429`), `failed` (given up).
//! - `restock_notifier_pending{destination}`: alerts in the outbox.
//! - `restock_notifier_arbiter_connected`: 1 while the event stream is open.
//!
//! Destinations are labelled by their redacted URL: no secret reaches a
//! scrape.

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};

use crate::alert::AlertKind;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabel {
    kind: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DestLabel {
    destination: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DeliveryLabel {
    destination: String,
    result: &'static str,
}

/// What one send attempt came to, for the metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attempt {
    Delivered,
    Retried,
    RateLimited,
    Failed,
}

impl Attempt {
    fn as_str(self) -> &'static str {
        match self {
            Self::Delivered => "delivered",
            Self::Retried => "retried",
            Self::RateLimited => "rate_limited",
            Self::Failed => "failed",
        }
    }
}

/// See the module documentation. Cheap to clone: every handle is shared.
#[derive(Debug, Clone, Default)]
pub struct NotifierMetrics {
    alerts: Family<KindLabel, Counter>,
    deliveries: Family<DeliveryLabel, Counter>,
    pending: Family<DestLabel, Gauge>,
    connected: Gauge,
}

impl NotifierMetrics {
    /// Adds every metric to `registry`.
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "restock_notifier_alerts",
            "Alerts made, by kind (before each destination's filter)",
            self.alerts.clone(),
        );
        registry.register(
            "restock_notifier_deliveries",
            "Send attempts by destination (redacted URL) and outcome",
            self.deliveries.clone(),
        );
        registry.register(
            "restock_notifier_pending",
            "Alerts waiting in the outbox, by destination",
            self.pending.clone(),
        );
        registry.register(
            "restock_notifier_arbiter_connected",
            "1 while the notifier follows the arbiter's event stream",
            self.connected.clone(),
        );
    }

    /// Shows every destination (at 0) before anything happened.
    pub fn destinations<'a>(&self, redacted: impl IntoIterator<Item = &'a str>) {
        for d in redacted {
            let _ = self.pending.get_or_create(&DestLabel {
                destination: d.to_owned(),
            });
            for a in [Attempt::Delivered, Attempt::Failed] {
                let _ = self.deliveries.get_or_create(&DeliveryLabel {
                    destination: d.to_owned(),
                    result: a.as_str(),
                });
            }
        }
        for k in AlertKind::ALL {
            let _ = self.alerts.get_or_create(&KindLabel { kind: k.as_str() });
        }
    }

    pub fn alert(&self, kind: AlertKind) {
        self.alerts
            .get_or_create(&KindLabel {
                kind: kind.as_str(),
            })
            .inc();
    }

    pub fn attempt(&self, destination: &str, result: Attempt) {
        self.deliveries
            .get_or_create(&DeliveryLabel {
                destination: destination.to_owned(),
                result: result.as_str(),
            })
            .inc();
    }

    pub fn set_pending(&self, destination: &str, n: usize) {
        self.pending
            .get_or_create(&DestLabel {
                destination: destination.to_owned(),
            })
            .set(i64::try_from(n).unwrap_or(i64::MAX));
    }

    pub fn set_connected(&self, connected: bool) {
        self.connected.set(i64::from(connected));
    }
}

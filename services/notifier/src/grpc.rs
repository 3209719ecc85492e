//! The notifier's own gRPC service, `restock.v1.Notifier`: the delivery
//! record of every destination, and a test alert on demand.

use std::{
    sync::{Arc, atomic::Ordering},
    time::Duration,
};

use restock_proto::v1::{
    self as pb, DestinationStatus, GetNotifierStatusRequest, GetNotifierStatusResponse,
    SendTestRequest, SendTestResponse, TestDelivery, notifier_server::Notifier,
};
use tokio::sync::oneshot;
use tonic::{Request, Response, Status};
use tracing::info;

use crate::{
    alert::{Alert, AlertKind},
    delivery::{Dispatcher, Job, Store, now_ms},
    destination::Destination,
    follow::Live,
};

/// See the module documentation.
#[derive(Debug, Clone)]
pub struct NotifierService {
    pub store: Store,
    pub dispatcher: Dispatcher,
    pub destinations: Arc<[Arc<Destination>]>,
    pub live: Live,
    pub arbiter_url: String,
    /// How long SendTest waits for the workers (their test deadline and a
    /// margin).
    pub test_wait: Duration,
}

#[tonic::async_trait]
impl Notifier for NotifierService {
    async fn get_notifier_status(
        &self,
        _req: Request<GetNotifierStatusRequest>,
    ) -> Result<Response<GetNotifierStatusResponse>, Status> {
        let (records, pending, next) = self.store.with(|s| {
            let pending: Vec<u64> = self
                .destinations
                .iter()
                .map(|d| s.outbox.iter().filter(|p| p.dest == d.tag).count() as u64)
                .collect();
            (s.records.clone(), pending, s.next_sequence)
        });
        let destinations = self
            .destinations
            .iter()
            .zip(pending)
            .map(|(d, pending)| {
                let r = records.get(&d.tag).cloned().unwrap_or_default();
                DestinationStatus {
                    destination: d.redacted.clone(),
                    events: d.events.iter().map(|k| k.as_str().to_owned()).collect(),
                    sent: r.sent,
                    failed: r.failed,
                    pending,
                    last_error: r.last_error,
                    last_error_unix_ms: r.last_error_unix_ms,
                    last_sent_unix_ms: r.last_sent_unix_ms,
                }
            })
            .collect();
        Ok(Response::new(GetNotifierStatusResponse {
            destinations,
            arbiter: self.arbiter_url.clone(),
            arbiter_connected: self.live.connected.load(Ordering::Relaxed),
            next_event_sequence: next,
            test_mode: self.live.test_mode.load(Ordering::Relaxed),
        }))
    }

    async fn send_test(
        &self,
        req: Request<SendTestRequest>,
    ) -> Result<Response<SendTestResponse>, Status> {
        let wanted = req.into_inner().destination;
        let wanted = wanted.trim();
        let chosen: Vec<usize> = if wanted.is_empty() {
            (0..self.destinations.len()).collect()
        } else {
            let by_position = wanted
                .parse::<usize>()
                .ok()
                .filter(|n| (1..=self.destinations.len()).contains(n))
                .map(|n| n - 1);
            let by_url = self.destinations.iter().position(|d| {
                d.redacted == wanted
                    || Destination::parse(wanted, &d.events).is_ok_and(|p| p.tag == d.tag)
            });
            match by_position.or(by_url) {
                Some(i) => vec![i],
                None => {
                    let known: Vec<&str> = self
                        .destinations
                        .iter()
                        .map(|d| d.redacted.as_str())
                        .collect();
                    return Err(Status::not_found(format!(
                        "no destination {} is configured (configured: {})",
                        redact_for_message(wanted),
                        if known.is_empty() {
                            "none".to_owned()
                        } else {
                            known.join(", ")
                        }
                    )));
                }
            }
        };
        if chosen.is_empty() {
            return Err(Status::failed_precondition(
                "no destination is configured (--notify / RESTOCK_NOTIFY)",
            ));
        }
        let now = now_ms();
        let key = format!("test-{now}-{:04x}", rand::random::<u16>());
        let test_mode = self.live.test_mode.load(Ordering::Relaxed);
        let mut waits = Vec::new();
        for i in chosen {
            let d = &self.destinations[i];
            let alert = Alert::new(
                key.clone(),
                AlertKind::Test,
                "Test alert".to_owned(),
                format!("restock-notifier can reach {}.", d.redacted),
                now,
            )
            .in_test_mode(test_mode)
            .for_destination(&d.tag);
            info!(destination = %d.redacted, alert_id = %alert.id, "sending a test alert");
            let (reply, answer) = oneshot::channel();
            let id = alert.id.clone();
            if !self.dispatcher.send(i, Job::Test { alert, reply }) {
                return Err(Status::unavailable("the notifier is stopping"));
            }
            waits.push((d.redacted.clone(), id, answer));
        }
        let mut deliveries = Vec::new();
        for (destination, alert_id, answer) in waits {
            let result = match tokio::time::timeout(self.test_wait, answer).await {
                Err(_) => Err(format!("no answer within {:?}", self.test_wait)),
                Ok(Err(_)) => Err("the notifier is stopping".to_owned()),
                Ok(Ok(r)) => r,
            };
            deliveries.push(TestDelivery {
                destination,
                delivered: result.is_ok(),
                error: result.err().unwrap_or_default(),
                alert_id,
            });
        }
        let delivered = deliveries.iter().all(|d| d.delivered);
        Ok(Response::new(SendTestResponse {
            deliveries,
            delivered,
        }))
    }
}

/// A destination as the caller wrote it, redacted when it parses (it may
/// hold a secret).
fn redact_for_message(text: &str) -> String {
    crate::destination::Parts::split(text).redacted()
}

/// The service name, for health and reflection.
pub const SERVICE_NAME: &str = pb::notifier_server::SERVICE_NAME;

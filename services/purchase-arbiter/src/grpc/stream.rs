//! `StreamStock`: the long-lived stream of one watcher. Its first report
//! names the watcher and registers the stream with the arbiter task; a
//! spawned reader then hands every later report to the task, at most as fast
//! as the stream's [`ReportLimit`] allows, while the reply stream carries
//! what the task pushes (the catalog, grants, revocations) and ends with
//! the error that closed the stream, if any.

use restock_proto::v1 as pb;
use std::time::Duration;

use tokio::{sync::mpsc, time::Instant};
use tokio_stream::{StreamExt, wrappers::ReceiverStream};
use tokio_util::sync::CancellationToken;
use tonic::{Request, Status, Streaming};
use tracing::{debug, info, warn};

use restock_domain::{Observation, ProductId, SourceBlock, WatcherId};

use super::{
    ArbiterService, BoxStream, live_lease_to_pb,
    report_limit::{Admit, ReportBucket, ReportLimit},
    to_status, watcher_id,
};
use crate::{
    limits::{HELLO_TIMEOUT, MAX_OBSERVATIONS_PER_REPORT, STREAM_BUFFER},
    task::{ArbiterHandle, CloseReason, WatcherMessage},
};

/// Opens a watcher's stream: reads its first report, registers the stream
/// with the arbiter task, and starts the reader of the reports that follow.
pub(super) async fn open(
    service: &ArbiterService,
    request: Request<Streaming<pb::StockReport>>,
) -> Result<BoxStream<pb::ArbiterMessage>, Status> {
    let peer = request
        .remote_addr()
        .map_or_else(|| "unknown".to_owned(), |a| a.to_string());
    // A follower refuses at once, before waiting for the first report.
    let term = service.replica.current()?;
    let mut inbound = request.into_inner();
    let first = hello(&mut inbound).await?;
    let watcher = watcher_id(&first.watcher_id)?;
    let first = parse_report(&watcher, first)?;
    let handle = term.handle;
    let conn = handle.new_conn();
    let (tx, rx) = mpsc::channel(STREAM_BUFFER);
    handle
        .connect(watcher.clone(), conn, tx)
        .await
        .map_err(to_status)?;
    info!(watcher_id = %watcher, conn, peer = %peer, "watcher stream opened");
    let (err_tx, err_rx) = mpsc::channel::<Status>(1);
    let reader = Reader {
        handle,
        watcher,
        conn,
        limit: service.report_limit,
        // The term's stop: a leader stepping down ends its streams.
        shutdown: term.stop,
        errors: err_tx,
    };
    tokio::spawn(reader.run(inbound, first));
    // Protocol errors found while reading end the reply stream too.
    let errors = ReceiverStream::new(err_rx).map(Err);
    let messages = ReceiverStream::new(rx).map(watcher_message_to_pb);
    // After the first error the stream ends (tonic sends it as the status).
    Ok(Box::pin(messages.merge(errors)))
}

/// The stream's first report, which must name the watcher.
async fn hello(inbound: &mut Streaming<pb::StockReport>) -> Result<pb::StockReport, Status> {
    let first = match tokio::time::timeout(HELLO_TIMEOUT, inbound.message()).await {
        Err(_) => {
            return Err(Status::deadline_exceeded(format!(
                "no first StockReport naming the watcher within {HELLO_TIMEOUT:?}"
            )));
        }
        Ok(Err(status)) => return Err(status),
        Ok(Ok(None)) => {
            return Err(Status::invalid_argument(
                "the stream ended before its first StockReport",
            ));
        }
        Ok(Ok(Some(m))) => m,
    };
    if first.watcher_id.is_empty() {
        return Err(Status::invalid_argument(
            "the first StockReport on a stream must set watcher_id",
        ));
    }
    Ok(first)
}

/// Reads one stream's reports after the first and hands them to the task.
struct Reader {
    handle: ArbiterHandle,
    watcher: WatcherId,
    conn: u64,
    limit: Option<ReportLimit>,
    shutdown: CancellationToken,
    /// The error that closes the stream, for the reply stream to end with.
    errors: mpsc::Sender<Status>,
}

impl Reader {
    /// Runs until the stream ends, the arbiter shuts down or a report is
    /// refused, then tells the task the stream is gone.
    async fn run(self, mut inbound: Streaming<pb::StockReport>, first: ParsedReport) {
        let why = self.read(&mut inbound, first).await;
        info!(watcher_id = %self.watcher, conn = self.conn, why = %why, "watcher stream closed");
        self.handle.disconnect(self.watcher, self.conn, why).await;
    }

    /// The loop of [`Self::run`]; returns why the stream ended.
    async fn read(&self, inbound: &mut Streaming<pb::StockReport>, first: ParsedReport) -> String {
        let watcher = &self.watcher;
        let mut next = Some(first);
        let mut bucket = self.limit.map(|l| ReportBucket::new(l, Instant::now()));
        loop {
            if let Some((polling, poll_interval, observations, source_block)) = next.take()
                && self
                    .handle
                    .report(
                        watcher.clone(),
                        self.conn,
                        polling,
                        poll_interval,
                        observations,
                        source_block,
                    )
                    .await
                    .is_err()
            {
                return "stream ended by the watcher".into();
            }
            let msg = tokio::select! {
                () = self.shutdown.cancelled() => return "arbiter shutting down".into(),
                m = inbound.message() => m,
            };
            let report = match msg {
                Ok(Some(report)) => report,
                Ok(None) => return "stream ended by the watcher".into(),
                Err(status) => return format!("stream error: {}", status.message()),
            };
            if let Some(b) = bucket.as_mut() {
                match b.admit(Instant::now()) {
                    Admit::Now => {}
                    Admit::After(pause) => {
                        // Not reading meanwhile is what slows the sender.
                        tokio::select! {
                            () = self.shutdown.cancelled() => return "arbiter shutting down".into(),
                            () = tokio::time::sleep(pause) => {}
                        }
                    }
                    Admit::Cut => {
                        let l = b.limit();
                        warn!(watcher_id = %watcher, conn = self.conn, per_second = l.per_second, burst = l.burst, "closing a watcher stream: it keeps reporting faster than the limit");
                        let _ = self.errors.try_send(Status::resource_exhausted(format!(
                            "watcher {watcher} sent stock reports faster than {} per second (bursts of {}) for {} reports in a row; this stream is closed. Report changes rather than every poll, or raise --max-reports-per-second",
                            l.per_second, l.burst, l.cut_after
                        )));
                        return "reports too fast".into();
                    }
                }
            }
            if !report.watcher_id.is_empty() && report.watcher_id != watcher.as_str() {
                let _ = self.errors.try_send(Status::invalid_argument(format!(
                    "this stream belongs to watcher {watcher}; a report names {:?}",
                    report.watcher_id
                )));
                return "report named another watcher".into();
            }
            match parse_report(watcher, report) {
                Ok(parsed) => next = Some(parsed),
                Err(status) => {
                    let why = format!("bad report: {}", status.message());
                    let _ = self.errors.try_send(status);
                    return why;
                }
            }
        }
    }
}

fn watcher_message_to_pb(m: WatcherMessage) -> Result<pb::ArbiterMessage, Status> {
    use pb::arbiter_message::Kind;
    let kind = match m {
        WatcherMessage::Catalog(catalog) => Kind::Catalog(pb::Catalog::from(&catalog)),
        WatcherMessage::Grant(lease) => Kind::Grant(live_lease_to_pb(&lease)),
        WatcherMessage::Revoked {
            lease_id,
            token,
            reason,
        } => Kind::Revoked(pb::LeaseRevoked {
            lease_id: lease_id.to_string(),
            fencing_token: token.0,
            reason,
        }),
        WatcherMessage::PollPlan(plan) => Kind::PollPlan(plan.map_or_else(
            pb::PollPlan::default,
            |(slot, offset)| pb::PollPlan {
                period_ms: millis(slot.period),
                offset_ms: millis(offset),
                position: slot.position,
                of: slot.of,
            },
        )),
        WatcherMessage::Closed(reason, message) => {
            return Err(match reason {
                CloseReason::ShuttingDown => Status::unavailable(message),
                CloseReason::Replaced => Status::aborted(message),
                CloseReason::TooManyProducts => Status::resource_exhausted(message),
            });
        }
    };
    Ok(pb::ArbiterMessage { kind: Some(kind) })
}

/// A report as the task takes it: the polling list and the poll interval
/// when the watcher sent them, the observations, and its source's block.
type ParsedReport = (
    Option<Vec<ProductId>>,
    Option<Duration>,
    Vec<Observation>,
    Option<SourceBlock>,
);

/// The longest poll interval a watcher may announce; a longer one is a
/// mistake (or garbage), and would make a plan nobody can follow.
const MAX_POLL_INTERVAL: Duration = Duration::from_secs(3600);

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

fn parse_report(watcher: &WatcherId, r: pb::StockReport) -> Result<ParsedReport, Status> {
    if r.observations.len() > MAX_OBSERVATIONS_PER_REPORT {
        return Err(Status::invalid_argument(format!(
            "a StockReport from {watcher} has {} observations; at most {MAX_OBSERVATIONS_PER_REPORT} are allowed per message",
            r.observations.len()
        )));
    }
    let observations = r
        .observations
        .into_iter()
        .enumerate()
        .map(|(i, o)| {
            Observation::try_from(o).map_err(|e| {
                Status::invalid_argument(format!(
                    "observation #{} from {watcher}: {}",
                    i + 1,
                    e.message
                ))
            })
        })
        .collect::<Result<Vec<_>, Status>>()?;
    let polling = if r.polling.is_empty() {
        None
    } else {
        let list = r
            .polling
            .iter()
            .map(|p| {
                ProductId::parse(p).map_err(|e| {
                    Status::invalid_argument(format!("polling list from {watcher}: {e}"))
                })
            })
            .collect::<Result<Vec<_>, Status>>()?;
        Some(list)
    };
    let poll_interval = match r.poll_interval_ms {
        0 => None,
        ms if Duration::from_millis(ms) > MAX_POLL_INTERVAL => {
            return Err(Status::invalid_argument(format!(
                "poll_interval_ms {ms} from {watcher} is more than {MAX_POLL_INTERVAL:?}"
            )));
        }
        ms => Some(Duration::from_millis(ms)),
    };
    // A block of a kind this build does not know (a newer watcher) is
    // shown as none rather than refusing the report.
    let source_block = r.source_block.and_then(|b| {
        SourceBlock::try_from(b)
            .inspect_err(|e| debug!(watcher_id = %watcher, error = %e, "source block ignored"))
            .ok()
    });
    Ok((polling, poll_interval, observations, source_block))
}

//! `restockctl notify test [--notify DEST]` and `restockctl notify status`,
//! against the notifier (`--notifier`). `test` exits 0 only when every
//! destination asked took the test alert.

use std::{io::Write, time::Duration};

use restock_proto::v1::{
    GetNotifierStatusRequest, SendTestRequest, notifier_client::NotifierClient,
};

use crate::{
    client::Target,
    error::{CtlError, EXIT_NEGATIVE, EXIT_OK},
};

/// A test alert may be retried for a while (a `429`, a slow server): the
/// call waits at least this long, whatever `--timeout` says.
const TEST_CALL_LIMIT: Duration = Duration::from_secs(60);

/// Sends a test alert to `destination` (a configured URL, its redacted
/// form, or its 1-based position), or to every destination.
pub async fn test(
    target: &Target,
    destination: Option<&str>,
    json: bool,
    out: &mut dyn Write,
) -> Result<u8, CtlError> {
    let mut client = NotifierClient::new(target.connect().await?);
    let long = target.with_timeout(target.timeout.max(TEST_CALL_LIMIT));
    let answer = long
        .call(
            "Notifier.SendTest",
            client.send_test(SendTestRequest {
                destination: destination.unwrap_or_default().to_owned(),
            }),
        )
        .await?;
    if json {
        serde_json::to_writer(&mut *out, &answer)
            .map_err(|e| CtlError::Output(std::io::Error::other(e)))?;
        writeln!(out)?;
    } else {
        for d in &answer.deliveries {
            if d.delivered {
                writeln!(out, "delivered  {}  (id {})", d.destination, d.alert_id)?;
            } else {
                writeln!(out, "NOT delivered  {}: {}", d.destination, d.error)?;
            }
        }
    }
    Ok(if answer.delivered {
        EXIT_OK
    } else {
        EXIT_NEGATIVE
    })
}

/// Every destination with its delivery record.
pub async fn status(target: &Target, json: bool, out: &mut dyn Write) -> Result<u8, CtlError> {
    let mut client = NotifierClient::new(target.connect().await?);
    let s = target
        .call(
            "Notifier.GetNotifierStatus",
            client.get_notifier_status(GetNotifierStatusRequest {}),
        )
        .await?;
    if json {
        serde_json::to_writer(&mut *out, &s)
            .map_err(|e| CtlError::Output(std::io::Error::other(e)))?;
        writeln!(out)?;
        return Ok(EXIT_OK);
    }
    writeln!(
        out,
        "arbiter {} ({}), next event {}{}",
        s.arbiter,
        if s.arbiter_connected {
            "following"
        } else {
            "NOT reachable"
        },
        s.next_event_sequence,
        if s.test_mode { ", TEST_MODE" } else { "" }
    )?;
    if s.destinations.is_empty() {
        writeln!(out, "no destination configured: alerts are only logged")?;
    }
    for d in &s.destinations {
        writeln!(
            out,
            "{}\n  sent {}  failed {}  pending {}  events {}{}",
            d.destination,
            d.sent,
            d.failed,
            d.pending,
            if d.events.len() >= 8 {
                "all".to_owned()
            } else {
                d.events.join(",")
            },
            if d.last_error.is_empty() {
                String::new()
            } else {
                format!("\n  last error: {}", d.last_error)
            }
        )?;
    }
    Ok(EXIT_OK)
}

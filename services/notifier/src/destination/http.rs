//! The webhook destinations, each in its service's real request format:
//!
//! - `json://`: `POST` the alert itself.
//! - Discord: `POST /api/webhooks/{id}/{token}?wait=true` with `content` and
//!   one embed (title, description, fields for product, token, watcher).
//! - Slack: `POST /services/T/B/secret` with `text` and `blocks`.
//! - ntfy: `POST /` with ntfy's JSON (`topic`, `title`, `message`,
//!   `priority`, `tags`), basic auth when the URL has a user.
//! - Telegram: `POST /bot{token}/sendMessage` with `chat_id` and `text`.
//!
//! Every request carries `Idempotency-Key: <alert id>`. The answer decides
//! what comes next: 2xx delivered; 429 rate-limited (with `Retry-After`,
//! Discord's `X-RateLimit-Reset-After` or Telegram's `retry_after`); 408 and
//! 5xx, time-outs and connection errors are retried; any other 4xx is
//! permanent. Errors never carry the URL (it holds the secret).

use std::time::Duration;

use reqwest::{
    Response, StatusCode,
    header::{HeaderMap, RETRY_AFTER},
};
use serde_json::{Value, json};

use super::{SendError, Sent, Target};
use crate::alert::{Alert, AlertKind};

/// At most this much of an error answer is kept in the reason.
const BODY_IN_REASON: usize = 300;

/// The services' length limits (characters): a longer text is refused
/// with a 400, so it is cut (with `…`) instead.
const DISCORD_TITLE_MAX: usize = 256;
const DISCORD_CONTENT_MAX: usize = 2000;
const DISCORD_DESCRIPTION_MAX: usize = 4096;
const TELEGRAM_TEXT_MAX: usize = 4096;
const DISCORD_FIELD_MAX: usize = 1024;
const SLACK_HEADER_MAX: usize = 150;
const SLACK_SECTION_MAX: usize = 3000;

/// `text` cut to at most `max` characters, ending in `…` when cut.
pub fn cut(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        return text.to_owned();
    }
    let mut out: String = text.chars().take(max.saturating_sub(1)).collect();
    out.push('…');
    out
}

/// Sends `alert` to a webhook-kind `target`.
pub async fn send(
    client: &reqwest::Client,
    target: &Target,
    alert: &Alert,
) -> Result<Sent, SendError> {
    let (url, body, auth) = match target {
        Target::Json { url } => (
            url,
            serde_json::to_value(alert).unwrap_or(Value::Null),
            None,
        ),
        Target::Discord { url } => (url, discord_body(alert), None),
        Target::Slack { url } => (url, slack_body(alert), None),
        Target::Ntfy {
            url,
            topic,
            auth,
            priority,
            tags,
        } => (url, ntfy_body(alert, topic, *priority, tags), auth.as_ref()),
        Target::Telegram { url, chat_id } => (url, telegram_body(alert, chat_id), None),
        Target::Exec { .. } | Target::Email(_) => {
            return Err(SendError::Permanent("not a webhook destination".to_owned()));
        }
    };
    let mut req = client
        .post(url.clone())
        .header("Idempotency-Key", &alert.id)
        .json(&body);
    if let Some((user, pass)) = auth {
        req = req.basic_auth(user, Some(pass));
    }
    let resp = req.send().await.map_err(|e| {
        let text = restock_runtime::error::chain_text(&e.without_url());
        SendError::Transient(if text.contains("timed out") || text.contains("timeout") {
            format!("no answer in time: {text}")
        } else {
            text
        })
    })?;
    judge(resp).await
}

async fn judge(resp: Response) -> Result<Sent, SendError> {
    let status = resp.status();
    let headers = resp.headers().clone();
    if status.is_success() {
        return Ok(Sent {
            pause: discord_bucket_empty(&headers),
        });
    }
    let body = resp.text().await.unwrap_or_default();
    let short: String = body.trim().chars().take(BODY_IN_REASON).collect();
    let reason = if short.is_empty() {
        format!("HTTP {status}")
    } else {
        format!("HTTP {status}: {short}")
    };
    if status == StatusCode::TOO_MANY_REQUESTS {
        return Err(SendError::RateLimited {
            retry_after: retry_after(&headers, &body),
            reason,
        });
    }
    if status == StatusCode::REQUEST_TIMEOUT || status.is_server_error() {
        return Err(SendError::Transient(reason));
    }
    Err(SendError::Permanent(reason))
}

/// How long a 429 asks us to wait: `Retry-After` (seconds or an HTTP date), Discord's
/// `X-RateLimit-Reset-After` (fractional seconds) or its JSON `retry_after`,
/// Telegram's `parameters.retry_after`.
pub fn retry_after(headers: &HeaderMap, body: &str) -> Option<Duration> {
    let header_secs = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<f64>().ok())
    };
    // Retry-After may also be an HTTP date.
    let date_secs = || {
        let text = headers.get(RETRY_AFTER)?.to_str().ok()?;
        let at = httpdate::parse_http_date(text.trim()).ok()?;
        Some(
            at.duration_since(std::time::SystemTime::now())
                .unwrap_or_default()
                .as_secs_f64(),
        )
    };
    let secs = header_secs(RETRY_AFTER.as_str())
        .or_else(date_secs)
        .or_else(|| header_secs("x-ratelimit-reset-after"))
        .or_else(|| {
            let doc: Value = serde_json::from_str(body).ok()?;
            doc.get("retry_after")
                .or_else(|| doc.get("parameters").and_then(|p| p.get("retry_after")))
                .and_then(Value::as_f64)
        })?;
    (secs.is_finite() && secs >= 0.0).then(|| Duration::from_secs_f64(secs.min(3600.0)))
}

/// Discord says, on a success, when its bucket for this webhook is empty
/// (`X-RateLimit-Remaining: 0`): the next send waits
/// `X-RateLimit-Reset-After` instead of earning a 429.
fn discord_bucket_empty(headers: &HeaderMap) -> Option<Duration> {
    let remaining = headers.get("x-ratelimit-remaining")?.to_str().ok()?.trim();
    if remaining != "0" {
        return None;
    }
    let after: f64 = headers
        .get("x-ratelimit-reset-after")?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()?;
    (after.is_finite() && after >= 0.0).then(|| Duration::from_secs_f64(after.min(3600.0)))
}

fn colour(kind: AlertKind) -> u32 {
    match kind {
        AlertKind::InStock => 0x2e_cc_71,
        AlertKind::CheckoutStarted => 0x34_98_db,
        AlertKind::Purchased => 0xf1_c4_0f,
        AlertKind::CheckoutFailed | AlertKind::Stuck => 0xe7_4c_3c,
        AlertKind::NoWatchers
        | AlertKind::ArbiterUnreachable
        | AlertKind::MissedEvents
        | AlertKind::SourceBlocked
        | AlertKind::BudgetExhausted => 0xe6_7e_22,
        AlertKind::SourceUnblocked | AlertKind::BudgetAvailable => 0x2e_cc_71,
        AlertKind::Test => 0x95_a5_a6,
    }
}

/// A Discord webhook message: the title as `content` (what a phone shows),
/// and an embed with the details.
pub fn discord_body(a: &Alert) -> Value {
    let mut fields = Vec::new();
    if let Some(t) = &a.tcin {
        let product = match &a.name {
            Some(n) => format!("{n} ({t})"),
            None => t.clone(),
        };
        fields.push(
            json!({"name": "Product", "value": cut(&product, DISCORD_FIELD_MAX), "inline": true}),
        );
    }
    if let Some(p) = a.price_text() {
        fields.push(json!({"name": "Price", "value": p, "inline": true}));
    }
    if let Some(t) = a.fencing_token {
        fields.push(json!({"name": "Fencing token", "value": t.to_string(), "inline": true}));
    }
    if let Some(w) = &a.watcher_id {
        fields.push(json!({"name": "Watcher", "value": cut(w, DISCORD_FIELD_MAX), "inline": true}));
    }
    json!({
        "username": "restock",
        "content": cut(&a.title, DISCORD_CONTENT_MAX),
        "allowed_mentions": {"parse": []},
        "embeds": [{
            "title": cut(&a.title, DISCORD_TITLE_MAX),
            "description": cut(&a.message, DISCORD_DESCRIPTION_MAX),
            "color": colour(a.kind),
            "fields": fields,
            "footer": {"text": format!("{} · {}", a.kind, a.id)},
            "timestamp": rfc3339(a.unix_ms),
        }],
    })
}

/// A Slack incoming-webhook message: `text` (notifications, fallbacks) and
/// a header and a section block.
pub fn slack_body(a: &Alert) -> Value {
    json!({
        "text": format!("{}: {}", a.title, a.message),
        "blocks": [
            {"type": "header", "text": {"type": "plain_text", "text": cut(&a.title, SLACK_HEADER_MAX)}},
            {"type": "section", "text": {"type": "mrkdwn", "text": cut(&a.message, SLACK_SECTION_MAX)}},
            {"type": "context", "elements": [{"type": "mrkdwn", "text": format!("{} · {}", a.kind, a.id)}]},
        ],
    })
}

/// ntfy's JSON publishing body (`POST /` on the server).
pub fn ntfy_body(a: &Alert, topic: &str, priority: Option<u8>, tags: &[String]) -> Value {
    let default_priority = match a.kind {
        AlertKind::InStock | AlertKind::Purchased => 4,
        AlertKind::CheckoutFailed | AlertKind::Stuck | AlertKind::ArbiterUnreachable => 4,
        // Purchases or restocks among the missed events went unalerted.
        AlertKind::MissedEvents => 4,
        // Nothing is polled until it ends: as urgent as no watchers.
        AlertKind::SourceBlocked => 4,
        _ => 3,
    };
    let mut tags: Vec<String> = tags.to_vec();
    tags.push(
        match a.kind {
            AlertKind::InStock => "shopping_cart",
            AlertKind::Purchased => "tada",
            AlertKind::CheckoutFailed | AlertKind::Stuck | AlertKind::MissedEvents => "warning",
            AlertKind::ArbiterUnreachable | AlertKind::NoWatchers => "rotating_light",
            AlertKind::SourceBlocked => "no_entry",
            AlertKind::SourceUnblocked | AlertKind::BudgetAvailable => "white_check_mark",
            AlertKind::BudgetExhausted => "money_with_wings",
            AlertKind::CheckoutStarted => "hourglass_flowing_sand",
            AlertKind::Test => "white_check_mark",
        }
        .to_owned(),
    );
    json!({
        "topic": topic,
        "title": a.title,
        "message": a.message,
        "priority": priority.unwrap_or(default_priority),
        "tags": tags,
    })
}

/// A Telegram `sendMessage` body (plain text: no parse mode, so a product
/// name with `*` or `_` cannot break it).
pub fn telegram_body(a: &Alert, chat_id: &str) -> Value {
    json!({
        "chat_id": chat_id,
        "text": cut(&format!("{}\n\n{}", a.title, a.message), TELEGRAM_TEXT_MAX),
        "disable_web_page_preview": true,
    })
}

/// Unix ms as RFC 3339 (Discord's embed timestamp).
fn rfc3339(unix_ms: u64) -> String {
    humantime::format_rfc3339_millis(std::time::UNIX_EPOCH + Duration::from_millis(unix_ms))
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_come_from_headers_or_bodies() {
        let mut h = HeaderMap::new();
        h.insert(RETRY_AFTER, "2".parse().unwrap());
        assert_eq!(retry_after(&h, ""), Some(Duration::from_secs(2)));
        let mut h = HeaderMap::new();
        h.insert("x-ratelimit-reset-after", "0.5".parse().unwrap());
        assert_eq!(retry_after(&h, ""), Some(Duration::from_millis(500)));
        assert_eq!(
            retry_after(
                &HeaderMap::new(),
                r#"{"ok":false,"parameters":{"retry_after":3}}"#
            ),
            Some(Duration::from_secs(3))
        );
        assert_eq!(retry_after(&HeaderMap::new(), "slow down"), None);
        let mut h = HeaderMap::new();
        let later = std::time::SystemTime::now() + Duration::from_secs(30);
        h.insert(RETRY_AFTER, httpdate::fmt_http_date(later).parse().unwrap());
        let d = retry_after(&h, "").unwrap();
        assert!(
            d > Duration::from_secs(28) && d <= Duration::from_secs(30),
            "{d:?}"
        );
        let mut h = HeaderMap::new();
        h.insert("x-ratelimit-remaining", "0".parse().unwrap());
        h.insert("x-ratelimit-reset-after", "1.25".parse().unwrap());
        assert_eq!(discord_bucket_empty(&h), Some(Duration::from_millis(1250)));
    }

    #[test]
    fn long_texts_are_cut_to_the_services_limits() {
        let mut a = Alert::new(
            "k".into(),
            AlertKind::Purchased,
            "t".into(),
            "x".repeat(5000),
            0,
        );
        a.title = "é".repeat(300);
        let d = discord_body(&a);
        assert_eq!(
            d["embeds"][0]["description"]
                .as_str()
                .unwrap()
                .chars()
                .count(),
            4096
        );
        assert_eq!(
            d["embeds"][0]["title"].as_str().unwrap().chars().count(),
            256
        );
        assert!(d["embeds"][0]["title"].as_str().unwrap().ends_with('…'));
        let t = telegram_body(&a, "1");
        assert_eq!(t["text"].as_str().unwrap().chars().count(), 4096);
        assert_eq!(cut("short", 10), "short");
    }

    #[test]
    fn missed_events_are_a_warning_on_ntfy_and_orange_on_discord() {
        let a = Alert::new(
            "missed_events-41-97".into(),
            AlertKind::MissedEvents,
            "t".into(),
            "m".into(),
            0,
        );
        let n = ntfy_body(&a, "restock", None, &[]);
        assert_eq!(n["priority"], 4);
        assert_eq!(n["tags"], serde_json::json!(["warning"]));
        let d = discord_body(&a);
        assert_eq!(d["embeds"][0]["color"], 0xe6_7e_22);
        assert_eq!(
            d["embeds"][0]["footer"]["text"],
            "missed_events · missed_events-41-97"
        );
    }

    #[test]
    fn discord_embeds_name_the_product_token_and_watcher() {
        let mut a = Alert::new(
            "e1-purchased".into(),
            AlertKind::Purchased,
            "Purchased: X".into(),
            "m".into(),
            0,
        );
        a.tcin = Some("100".into());
        a.name = Some("X".into());
        a.fencing_token = Some(7);
        a.watcher_id = Some("w1".into());
        a.price_cents = Some(1999);
        let b = discord_body(&a);
        let fields = b["embeds"][0]["fields"].as_array().unwrap();
        let names: Vec<&str> = fields.iter().map(|f| f["name"].as_str().unwrap()).collect();
        assert_eq!(names, ["Product", "Price", "Fencing token", "Watcher"]);
        assert_eq!(b["embeds"][0]["timestamp"], "1970-01-01T00:00:00.000Z");
    }
}

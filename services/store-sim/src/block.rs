//! Blocks on demand (`PUT /admin/block`): for a while, every RedSky endpoint
//! answers the way Target's bot wall does instead of with data.
//!
//! | Kind | Status | Body | Source |
//! |---|---|---|---|
//! | `captcha` | 403 | `{"captchaRelativeURL":"/captcha?trackingId=…","captchaAbsoluteURL":"…"}` | **recorded**: `tests/data/target/block-captcha-403.json`, byte layout included |
//! | `perimeterx` | 435 (or 403) | `{"appId":"PXGWPp4wUS","jsClientSrc":…,"firstPartyEnabled":false,"vid":"","uuid":…,"hostUrl":…,"blockScript":…}` | not recorded: PerimeterX's documented JSON block fields, with Target's app id; 435 as third-party notes report |
//! | `html_challenge` | 403 (or 200) | the "Press & Hold" page | not recorded: a page with the markers reported from redsky.target.com |
//! | `rate_limited` | 429 + `Retry-After` | empty | not recorded |
//!
//! Each answer gets a fresh id (`trackingId`, `uuid`, "Reference ID"), as
//! the recordings do. The HTML page loads no script: its PerimeterX URLs are
//! only strings, so a browser pointed at the simulator contacts nobody.

use std::time::Duration;

use serde::Serialize;
use serde_json::Value;

use restock_domain::duration::parse_duration;

/// Target's PerimeterX (HUMAN) application id, as reported from
/// redsky.target.com.
pub const PX_APP_ID: &str = "PXGWPp4wUS";
/// Longest block accepted, so that "until" can always be computed.
pub const MAX_BLOCK: Duration = Duration::from_secs(30 * 24 * 3600);
/// `Retry-After` of a rate-limited answer when the block has no end and no
/// `retry_after` was given.
pub const DEFAULT_RETRY_AFTER_S: u64 = 60;

/// How the wall answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BlockKind {
    Captcha,
    Perimeterx,
    HtmlChallenge,
    RateLimited,
}

impl BlockKind {
    /// Every kind.
    pub const ALL: [BlockKind; 4] = [
        BlockKind::Captcha,
        BlockKind::Perimeterx,
        BlockKind::HtmlChallenge,
        BlockKind::RateLimited,
    ];

    /// The name used in the admin API, logs and metrics.
    pub const fn as_str(self) -> &'static str {
        match self {
            BlockKind::Captcha => "captcha",
            BlockKind::Perimeterx => "perimeterx",
            BlockKind::HtmlChallenge => "html_challenge",
            BlockKind::RateLimited => "rate_limited",
        }
    }

    /// Statuses it may answer with, the default first.
    pub const fn statuses(self) -> &'static [u16] {
        match self {
            BlockKind::Captcha => &[403],
            BlockKind::Perimeterx => &[435, 403],
            BlockKind::HtmlChallenge => &[403, 200],
            BlockKind::RateLimited => &[429],
        }
    }

    fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

/// A validated `PUT /admin/block` body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockSpec {
    pub kind: BlockKind,
    /// How long; `None`: until `DELETE /admin/block`.
    pub duration: Option<Duration>,
    /// The HTTP status of the blocked answers.
    pub status: u16,
    /// `rate_limited` only: the `Retry-After` to send; `None`: the time left.
    pub retry_after_s: Option<u64>,
}

const FIELDS: &str = "kind, for, status, retry_after";

/// A duration field: `"30s"`-style text or a whole number of seconds.
pub(crate) fn duration_field(name: &str, v: &Value) -> Result<Duration, String> {
    let d = match v {
        Value::String(s) => parse_duration(s).map_err(|e| format!("{name}: {e}"))?,
        Value::Number(n) => n.as_u64().map(Duration::from_secs).ok_or_else(|| {
            format!("{name}: {n} is not a whole number of seconds; write it like \"30s\"")
        })?,
        other => {
            return Err(format!(
                "{name}: expected a duration like \"30s\", got {other}"
            ));
        }
    };
    if d.is_zero() {
        return Err(format!("{name}: must be more than zero"));
    }
    if d > MAX_BLOCK {
        return Err(format!(
            "{name}: {} is too long; at most {}",
            humantime::format_duration(d),
            humantime::format_duration(MAX_BLOCK)
        ));
    }
    Ok(d)
}

/// Checks a `PUT /admin/block` body: `{"kind": …, "for": "30s", "status":
/// …, "retry_after": "5s"}`. Every refusal names the field.
pub fn parse_request(body: &Value) -> Result<BlockSpec, String> {
    let Some(obj) = body.as_object() else {
        return Err(format!("expected a JSON object with {FIELDS}, got {body}"));
    };
    if let Some(k) = obj.keys().find(|k| !FIELDS.split(", ").any(|f| f == *k)) {
        return Err(format!("{k}: unknown field; expected {FIELDS}"));
    }
    let kinds = || {
        BlockKind::ALL
            .iter()
            .map(|k| k.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    };
    let kind = match obj.get("kind") {
        None => return Err(format!("kind: missing; one of {}", kinds())),
        Some(Value::String(s)) => BlockKind::parse(s)
            .ok_or_else(|| format!("kind: unknown block kind {s:?}; one of {}", kinds()))?,
        Some(other) => return Err(format!("kind: expected one of {}, got {other}", kinds())),
    };
    let duration = obj
        .get("for")
        .filter(|v| !v.is_null())
        .map(|v| duration_field("for", v))
        .transpose()?;
    let allowed = kind.statuses();
    let status = match obj.get("status").filter(|v| !v.is_null()) {
        None => allowed[0],
        Some(v) => {
            let s = v.as_u64().and_then(|s| u16::try_from(s).ok());
            match s {
                Some(s) if allowed.contains(&s) => s,
                _ => {
                    let list: Vec<String> = allowed.iter().map(u16::to_string).collect();
                    return Err(format!(
                        "status: a {} block answers {}; got {v}",
                        kind.as_str(),
                        list.join(" or ")
                    ));
                }
            }
        }
    };
    let retry_after_s = match obj.get("retry_after").filter(|v| !v.is_null()) {
        None => None,
        Some(_) if kind != BlockKind::RateLimited => {
            return Err(format!(
                "retry_after: only a rate_limited block sends Retry-After, not {}",
                kind.as_str()
            ));
        }
        Some(v) => {
            let d = duration_field("retry_after", v)?;
            // Retry-After is whole seconds; never round a wait down to 0.
            Some(d.as_secs() + u64::from(d.subsec_nanos() > 0))
        }
    };
    Ok(BlockSpec {
        kind,
        duration,
        status,
        retry_after_s,
    })
}

/// What a blocked request gets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockAnswer {
    pub status: u16,
    /// `None`: no body, no content type.
    pub content_type: Option<&'static str>,
    pub body: String,
    pub retry_after_s: Option<u64>,
}

/// A random version-4 UUID, lower case, like Target's tracking ids.
pub fn new_uuid() -> String {
    let mut b: [u8; 16] = rand::random();
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &hex[..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..]
    )
}

/// Keeps a `Host` header only if it is a plain host (and port), so it can be
/// written into a body without escaping; anything else becomes `localhost`.
pub fn safe_host(host: Option<&str>) -> &str {
    host.filter(|h| {
        !h.is_empty()
            && h.len() <= 255
            && h.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-.:[]".contains(&b))
    })
    .unwrap_or("localhost")
}

/// The answer of a `kind` block with `status`. `host` (see [`safe_host`])
/// is where the captcha's absolute URL points: the simulator itself, not
/// target.com. `retry_after_s` is sent by `rate_limited` blocks.
pub fn answer(kind: BlockKind, status: u16, host: &str, retry_after_s: u64) -> BlockAnswer {
    let id = new_uuid();
    match kind {
        // The recorded bytes: two-space indent, no space after the colons.
        BlockKind::Captcha => BlockAnswer {
            status,
            content_type: Some("application/json"),
            body: format!(
                "{{\n  \"captchaRelativeURL\":\"/captcha?trackingId={id}\",\n  \"captchaAbsoluteURL\":\"http://{host}/captcha?trackingId={id}\"\n}}"
            ),
            retry_after_s: None,
        },
        BlockKind::Perimeterx => BlockAnswer {
            status,
            content_type: Some("application/json"),
            body: serde_json::json!({
                "appId": PX_APP_ID,
                "jsClientSrc": format!("https://client.perimeterx.net/{PX_APP_ID}/main.min.js"),
                "firstPartyEnabled": false,
                "vid": "",
                "uuid": id,
                "hostUrl": format!("https://collector-{PX_APP_ID}.perimeterx.net"),
                "blockScript": format!("https://captcha.px-cdn.net/{PX_APP_ID}/captcha.js?a=c&u={id}&v=&m=0"),
            })
            .to_string(),
            retry_after_s: None,
        },
        BlockKind::HtmlChallenge => BlockAnswer {
            status,
            content_type: Some("text/html; charset=utf-8"),
            body: press_and_hold(&id),
            retry_after_s: None,
        },
        BlockKind::RateLimited => BlockAnswer {
            status,
            content_type: None,
            body: String::new(),
            retry_after_s: Some(retry_after_s),
        },
    }
}

/// The "Press & Hold" page with reference id `id`.
fn press_and_hold(id: &str) -> String {
    format!(
        r#"<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>Access to this page has been denied</title>
</head>
<body>
<h1>Before we continue...</h1>
<p>Press &amp; Hold to confirm you are a human (and not a bot).</p>
<div id="px-captcha"></div>
<p>Reference ID {id}</p>
<script>
window._pxAppId = '{PX_APP_ID}';
window._pxJsClientSrc = 'https://client.perimeterx.net/{PX_APP_ID}/main.min.js';
window._pxHostUrl = 'https://collector-{PX_APP_ID}.perimeterx.net';
window._pxUuid = '{id}';
</script>
</body>
</html>
"#
    )
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn requests_are_checked_field_by_field() {
        let spec = parse_request(&json!({"kind": "captcha", "for": "30s"})).unwrap();
        assert_eq!(spec.kind, BlockKind::Captcha);
        assert_eq!(spec.duration, Some(Duration::from_secs(30)));
        assert_eq!(spec.status, 403);
        let spec = parse_request(&json!({"kind": "perimeterx"})).unwrap();
        assert_eq!((spec.status, spec.duration), (435, None));
        let spec =
            parse_request(&json!({"kind": "html_challenge", "status": 200, "for": 5})).unwrap();
        assert_eq!(
            (spec.status, spec.duration),
            (200, Some(Duration::from_secs(5)))
        );
        let spec =
            parse_request(&json!({"kind": "rate_limited", "retry_after": "1500ms"})).unwrap();
        assert_eq!(spec.retry_after_s, Some(2), "rounded up");

        for (body, field) in [
            (json!({"kind": "nope"}), "kind:"),
            (json!({}), "kind:"),
            (json!({"kind": 3}), "kind:"),
            (json!({"kind": "captcha", "for": "soon"}), "for:"),
            (json!({"kind": "captcha", "for": "0s"}), "for:"),
            (json!({"kind": "captcha", "for": -1}), "for:"),
            (json!({"kind": "captcha", "for": "400d"}), "for:"),
            (json!({"kind": "captcha", "for": true}), "for:"),
            (json!({"kind": "captcha", "status": 200}), "status:"),
            (json!({"kind": "perimeterx", "status": 500}), "status:"),
            (
                json!({"kind": "captcha", "retry_after": "1s"}),
                "retry_after:",
            ),
            (json!({"kind": "captcha", "until": "1s"}), "until:"),
            (json!([1]), "JSON object"),
        ] {
            let err = parse_request(&body).unwrap_err();
            assert!(
                err.starts_with(field) || err.contains(field),
                "{body}: {err}"
            );
        }
    }

    #[test]
    fn the_captcha_body_has_the_recorded_layout_and_a_fresh_id() {
        let a = answer(BlockKind::Captcha, 403, "127.0.0.1:8080", 0);
        assert_eq!(a.status, 403);
        let v: Value = serde_json::from_str(&a.body).unwrap();
        let rel = v["captchaRelativeURL"].as_str().unwrap();
        let id = rel.strip_prefix("/captcha?trackingId=").unwrap();
        assert_eq!(id.len(), 36);
        assert_eq!(
            v["captchaAbsoluteURL"],
            format!("http://127.0.0.1:8080/captcha?trackingId={id}")
        );
        assert!(
            a.body
                .starts_with("{\n  \"captchaRelativeURL\":\"/captcha?trackingId=")
        );
        assert_ne!(answer(BlockKind::Captcha, 403, "h", 0).body, a.body);
    }

    #[test]
    fn uuids_are_version_4_and_hosts_are_sanitized() {
        let u = new_uuid();
        let parts: Vec<&str> = u.split('-').collect();
        assert_eq!(
            parts.iter().map(|p| p.len()).collect::<Vec<_>>(),
            [8, 4, 4, 4, 12]
        );
        assert!(parts[2].starts_with('4'));
        assert!(matches!(&parts[3][..1], "8" | "9" | "a" | "b"));
        assert_eq!(safe_host(Some("sim:8080")), "sim:8080");
        assert_eq!(safe_host(Some("a\"b")), "localhost");
        assert_eq!(safe_host(None), "localhost");
    }
}

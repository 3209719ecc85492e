//! Walls and throttles in front of the storefronts on demand
//! (`PUT /admin/shopify/block`), for one shop or for every shop:
//!
//! | Kind | Status | Headers | Body |
//! |---|---|---|---|
//! | `rate_limited` | 429 | `Retry-After: N` | `local_rate_limited` (`text/plain`) |
//! | `throttled` | 429 | no `Retry-After` | `local_rate_limited` (`text/plain`) |
//! | `security_rejection` | 430 | | an HTML "Access denied" page (Shopify's security rejection) |
//! | `cloudflare` | 403 (or 503) | `cf-mitigated: challenge`, `server: cloudflare`, `cf-ray` | the "Just a moment..." HTML challenge page |
//! | `password` | 302 (or 200) | 302: `Location: /password` (`/shops/<shop>/password` on prefixed paths) | 200: the shop's password page, `<form id="login_form" method="post" action="/password">` |
//!
//! None of these is from a recording (`tests/data/shopify/` has data
//! answers only): the 429 body is the one Envoy's local rate limiter
//! sends, the rest carry the markers clients detect them by. The pages load
//! no script. A shop's own block wins over an all-shops block; either
//! answers before an injected fault (`/admin/faults`).

use std::time::Duration;

use serde::Serialize;
use serde_json::Value;

use crate::block::{DEFAULT_RETRY_AFTER_S, duration_field, new_uuid};

/// How a blocked storefront answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ShopifyBlockKind {
    RateLimited,
    Throttled,
    SecurityRejection,
    Cloudflare,
    Password,
}

impl ShopifyBlockKind {
    pub const ALL: [ShopifyBlockKind; 5] = [
        ShopifyBlockKind::RateLimited,
        ShopifyBlockKind::Throttled,
        ShopifyBlockKind::SecurityRejection,
        ShopifyBlockKind::Cloudflare,
        ShopifyBlockKind::Password,
    ];

    /// The name used in the admin API, logs and metrics.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::RateLimited => "rate_limited",
            Self::Throttled => "throttled",
            Self::SecurityRejection => "security_rejection",
            Self::Cloudflare => "cloudflare",
            Self::Password => "password",
        }
    }

    /// Statuses it may answer with, the default first.
    pub const fn statuses(self) -> &'static [u16] {
        match self {
            Self::RateLimited | Self::Throttled => &[429],
            Self::SecurityRejection => &[430],
            Self::Cloudflare => &[403, 503],
            Self::Password => &[302, 200],
        }
    }

    fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

/// A validated `PUT /admin/shopify/block` body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShopifyBlockSpec {
    pub kind: ShopifyBlockKind,
    /// The shop (lower case); `None`: every shop.
    pub shop: Option<String>,
    /// How long; `None`: until `DELETE /admin/shopify/block`.
    pub duration: Option<Duration>,
    pub status: u16,
    /// `rate_limited` only: the `Retry-After` to send; `None`: the time
    /// left (or 60 s without an end).
    pub retry_after_s: Option<u64>,
}

const FIELDS: &str = "kind, shop, for, status, retry_after";

/// Checks a `PUT /admin/shopify/block` body: `{"kind": …, "shop":
/// "cards.example", "for": "30s", "status": …, "retry_after": "5s"}`. Every
/// refusal starts with the field's name. Whether the shop is served is for
/// the caller to check.
pub fn parse_request(body: &Value) -> Result<ShopifyBlockSpec, String> {
    let Some(obj) = body.as_object() else {
        return Err(format!("expected a JSON object with {FIELDS}, got {body}"));
    };
    if let Some(k) = obj.keys().find(|k| !FIELDS.split(", ").any(|f| f == *k)) {
        return Err(format!("{k}: unknown field; expected {FIELDS}"));
    }
    let kinds = || {
        ShopifyBlockKind::ALL
            .iter()
            .map(|k| k.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    };
    let kind = match obj.get("kind") {
        None => return Err(format!("kind: missing; one of {}", kinds())),
        Some(Value::String(s)) => ShopifyBlockKind::parse(s)
            .ok_or_else(|| format!("kind: unknown block kind {s:?}; one of {}", kinds()))?,
        Some(other) => return Err(format!("kind: expected one of {}, got {other}", kinds())),
    };
    let shop = match obj.get("shop").filter(|v| !v.is_null()) {
        None => None,
        Some(Value::String(s)) if !s.trim().is_empty() => {
            let s = s.trim().to_ascii_lowercase();
            Some(s.strip_suffix('.').map(str::to_owned).unwrap_or(s))
        }
        Some(other) => {
            return Err(format!(
                "shop: expected a shop's host name like \"cards.example\" (or no shop: every shop), got {other}"
            ));
        }
    };
    let duration = obj
        .get("for")
        .filter(|v| !v.is_null())
        .map(|v| duration_field("for", v))
        .transpose()?;
    let allowed = kind.statuses();
    let status = match obj.get("status").filter(|v| !v.is_null()) {
        None => allowed[0],
        Some(v) => match v.as_u64().and_then(|s| u16::try_from(s).ok()) {
            Some(s) if allowed.contains(&s) => s,
            _ => {
                let list: Vec<String> = allowed.iter().map(u16::to_string).collect();
                return Err(format!(
                    "status: a {} block answers {}; got {v}",
                    kind.as_str(),
                    list.join(" or ")
                ));
            }
        },
    };
    let retry_after_s = match obj.get("retry_after").filter(|v| !v.is_null()) {
        None => None,
        Some(_) if kind != ShopifyBlockKind::RateLimited => {
            return Err(format!(
                "retry_after: only a rate_limited block sends Retry-After, not {}",
                kind.as_str()
            ));
        }
        Some(v) => {
            let d = duration_field("retry_after", v)?;
            Some(d.as_secs() + u64::from(d.subsec_nanos() > 0))
        }
    };
    Ok(ShopifyBlockSpec {
        kind,
        shop,
        duration,
        status,
        retry_after_s,
    })
}

/// A block in force, as the admin API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ShopifyBlockView {
    /// `null`: every shop.
    pub shop: Option<String>,
    pub kind: ShopifyBlockKind,
    pub status: u16,
    /// When it ends (unix ms); `null` means until cleared.
    pub until_ms: Option<u64>,
    pub remaining_ms: Option<u64>,
    /// `rate_limited` only: the `Retry-After` asked for; `null` means the
    /// time left (or 60 s when the block has no end).
    pub retry_after_s: Option<u64>,
}

impl ShopifyBlockView {
    /// The `Retry-After` seconds a rate-limited answer sends now.
    pub fn retry_after_now(&self) -> u64 {
        self.retry_after_s.unwrap_or_else(|| {
            self.remaining_ms
                .map_or(DEFAULT_RETRY_AFTER_S, |ms| ms.div_ceil(1_000).max(1))
        })
    }
}

/// What a blocked request gets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShopifyBlockAnswer {
    pub status: u16,
    pub content_type: &'static str,
    pub headers: Vec<(&'static str, String)>,
    pub body: String,
}

/// The answer of `block` to a request for `shop`; `password_path` is where
/// a `password` block redirects (`/password`, or the prefixed form).
pub fn answer(block: &ShopifyBlockView, shop: &str, password_path: &str) -> ShopifyBlockAnswer {
    let status = block.status;
    let text = "text/plain; charset=utf-8";
    let html = "text/html; charset=utf-8";
    match block.kind {
        ShopifyBlockKind::RateLimited => ShopifyBlockAnswer {
            status,
            content_type: text,
            headers: vec![("retry-after", block.retry_after_now().to_string())],
            body: "local_rate_limited".into(),
        },
        ShopifyBlockKind::Throttled => ShopifyBlockAnswer {
            status,
            content_type: text,
            headers: Vec::new(),
            body: "local_rate_limited".into(),
        },
        ShopifyBlockKind::SecurityRejection => ShopifyBlockAnswer {
            status,
            content_type: html,
            headers: Vec::new(),
            body: security_rejection_page(&new_uuid()),
        },
        ShopifyBlockKind::Cloudflare => {
            let ray: String = new_uuid().chars().filter(|c| *c != '-').take(16).collect();
            ShopifyBlockAnswer {
                status,
                content_type: html,
                headers: vec![
                    ("cf-mitigated", "challenge".into()),
                    ("server", "cloudflare".into()),
                    ("cf-ray", format!("{ray}-SJC")),
                    (
                        "cache-control",
                        "private, max-age=0, no-store, no-cache, must-revalidate".into(),
                    ),
                ],
                body: cloudflare_page(shop, &ray),
            }
        }
        ShopifyBlockKind::Password if status == 302 => ShopifyBlockAnswer {
            status,
            content_type: html,
            headers: vec![("location", password_path.to_owned())],
            body: format!(
                "<html><body>You are being <a href=\"{password_path}\">redirected</a>.</body></html>"
            ),
        },
        ShopifyBlockKind::Password => ShopifyBlockAnswer {
            status,
            content_type: html,
            headers: Vec::new(),
            body: password_page(shop, password_path),
        },
    }
}

/// Escapes `s` for HTML text and attribute values.
pub fn escape_html(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

fn security_rejection_page(id: &str) -> String {
    format!(
        r#"<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>Access denied</title>
</head>
<body>
<h1>Access denied</h1>
<p>This request was rejected by Shopify's security checks (HTTP 430).</p>
<p>Request ID: {id}</p>
</body>
</html>
"#
    )
}

/// The "Just a moment..." interstitial with its markers
/// (`window._cf_chl_opt`, `challenge-platform`), loading no script.
fn cloudflare_page(shop: &str, ray: &str) -> String {
    let shop = escape_html(shop);
    format!(
        r#"<!DOCTYPE html>
<html lang="en-US">
<head>
<title>Just a moment...</title>
<meta http-equiv="Content-Type" content="text/html; charset=UTF-8">
<meta name="robots" content="noindex,nofollow">
</head>
<body>
<div class="main-wrapper" role="main">
<div class="main-content">
<h1 class="zone-name-title h1">{shop}</h1>
<h2 class="h2" id="challenge-running">Verifying you are human. This may take a few seconds.</h2>
<noscript><div class="h2">Enable JavaScript and cookies to continue</div></noscript>
</div>
</div>
<script>
window._cf_chl_opt = {{cvId: '3', cZone: '{shop}', cType: 'managed', cRay: '{ray}'}};
// The real page loads /cdn-cgi/challenge-platform/h/g/orchestrate/chl_page/v1 here.
</script>
<div class="footer" role="contentinfo">Ray ID: <code>{ray}</code> Performance &amp; security by Cloudflare</div>
</body>
</html>
"#
    )
}

/// A storefront's password page; its form posts to `action`.
pub fn password_page(shop: &str, action: &str) -> String {
    let shop = escape_html(shop);
    let action = escape_html(action);
    format!(
        r#"<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>{shop}</title>
</head>
<body class="template-password">
<h1>Opening soon</h1>
<p>This store is password protected. Use the password to enter the store.</p>
<form method="post" action="{action}" id="login_form" accept-charset="UTF-8" class="storefront-password-form">
<input type="hidden" name="form_type" value="storefront_password">
<input type="hidden" name="utf8" value="✓">
<label for="Password">Enter store using password</label>
<input type="password" name="password" id="Password" autocomplete="off">
<button type="submit" name="commit">Enter</button>
</form>
</body>
</html>
"#
    )
}

/// The page of a shop the simulator does not serve, or of a product it
/// does not have: 404, HTML, like Shopify's.
pub fn not_found_page(what: &str) -> String {
    format!(
        r#"<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>404 Not Found</title>
</head>
<body>
<h1>404 Not Found</h1>
<p>The page you were looking for does not exist.</p>
<p>{}</p>
</body>
</html>
"#,
        escape_html(what)
    )
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn view(kind: ShopifyBlockKind, status: u16) -> ShopifyBlockView {
        ShopifyBlockView {
            shop: None,
            kind,
            status,
            until_ms: None,
            remaining_ms: Some(1_500),
            retry_after_s: None,
        }
    }

    #[test]
    fn requests_are_checked_field_by_field() {
        let s = parse_request(&json!({"kind": "rate_limited", "shop": "Cards.Example.", "for": "30s", "retry_after": "2s"})).unwrap();
        assert_eq!(s.shop.as_deref(), Some("cards.example"));
        assert_eq!(
            (s.status, s.duration, s.retry_after_s),
            (429, Some(Duration::from_secs(30)), Some(2))
        );
        let s = parse_request(&json!({"kind": "password", "status": 200, "shop": null})).unwrap();
        assert_eq!((s.shop, s.status, s.duration), (None, 200, None));
        assert_eq!(
            parse_request(&json!({"kind": "cloudflare"}))
                .unwrap()
                .status,
            403
        );
        assert_eq!(
            parse_request(&json!({"kind": "security_rejection"}))
                .unwrap()
                .status,
            430
        );
        for (body, field) in [
            (json!({"kind": "captcha"}), "kind:"),
            (json!({}), "kind:"),
            (
                json!({"kind": "throttled", "retry_after": "1s"}),
                "retry_after:",
            ),
            (json!({"kind": "throttled", "status": 430}), "status:"),
            (json!({"kind": "password", "status": 301}), "status:"),
            (json!({"kind": "cloudflare", "shop": 3}), "shop:"),
            (json!({"kind": "cloudflare", "shop": " "}), "shop:"),
            (json!({"kind": "cloudflare", "for": "0s"}), "for:"),
            (json!({"kind": "cloudflare", "shops": "a"}), "shops:"),
            (json!("x"), "JSON object"),
        ] {
            let err = parse_request(&body).unwrap_err();
            assert!(
                err.starts_with(field) || err.contains(field),
                "{body}: {err}"
            );
        }
    }

    #[test]
    fn each_kind_answers_with_its_markers() {
        let a = answer(&view(ShopifyBlockKind::RateLimited, 429), "s", "/password");
        assert_eq!(a.headers, vec![("retry-after", "2".to_owned())]);
        assert_eq!(a.body, "local_rate_limited");
        let a = answer(&view(ShopifyBlockKind::Throttled, 429), "s", "/password");
        assert!(a.headers.is_empty());
        let a = answer(&view(ShopifyBlockKind::Cloudflare, 403), "s<", "/password");
        assert!(
            a.headers
                .contains(&("cf-mitigated", "challenge".to_owned()))
        );
        assert!(a.body.contains("<title>Just a moment...</title>"));
        assert!(a.body.contains("s&lt;") && !a.body.contains("s<"));
        let a = answer(
            &view(ShopifyBlockKind::Password, 302),
            "s",
            "/shops/s/password",
        );
        assert_eq!(
            a.headers,
            vec![("location", "/shops/s/password".to_owned())]
        );
        let a = answer(&view(ShopifyBlockKind::Password, 200), "s", "/password");
        assert!(a.body.contains(r#"id="login_form""#) && a.body.contains(r#"action="/password""#));
        let a = answer(
            &view(ShopifyBlockKind::SecurityRejection, 430),
            "s",
            "/password",
        );
        assert_eq!(a.status, 430);
        assert!(a.content_type.starts_with("text/html"));
    }
}

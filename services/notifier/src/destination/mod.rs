//! Where alerts go, written as URLs (Apprise-style): parsing them, the
//! redacted form every log line and error uses, the per-destination filter
//! (`?events=`), and sending one alert.
//!
//! | URL | sends |
//! | --- | --- |
//! | `json://host[:port]/path`, `jsons://…` | the alert as JSON, POSTed over http / https |
//! | `discord://webhook_id/webhook_token` | a Discord webhook message with an embed |
//! | `slack://T…/B…/secret` | a Slack incoming-webhook message |
//! | `ntfy://[user:pass@]host/topic`, `ntfys://…` | an ntfy notification (JSON publish) |
//! | `tgram://bot_token/chat_id` | a Telegram `sendMessage` |
//! | `mailto://user:pass@host[:port]?to=…`, `mailtos://…` | an email over SMTP |
//! | `exec:///path/to/command` | runs the command, the alert on stdin and in env vars |
//!
//! Parameters every URL takes (removed before the URL is used):
//! `events=in_stock,purchased` (which alert kinds go there; default
//! `--events`), and for the hosted services `base=http://127.0.0.1:8080`
//! (another server: a self-hosted one, or a test's receiver).
//!
//! Modules: [`http`] sends the webhook kinds, [`exec`] runs commands,
//! [`email`] sends mail.

pub mod email;
pub mod exec;
pub mod http;

use std::{collections::BTreeSet, fmt, path::PathBuf, time::Duration};

use url::Url;

use crate::alert::{Alert, AlertKind, UnknownKind, parse_kinds};

/// What replaces a secret in logs and errors.
pub const REDACTED: &str = "***";

/// Why a destination URL cannot be used. The URL in it is redacted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DestinationError {
    #[error("destination {url}: {problem}")]
    Bad { url: String, problem: String },
}

/// One parsed destination. Its `Debug` shows the redacted URL only.
#[derive(Clone)]
pub struct Destination {
    /// The URL with every secret replaced by `***`: what logs, errors and
    /// the status call show.
    pub redacted: String,
    /// A short stable tag (a hash of the whole URL): the destination's part
    /// of every alert id, the same after a restart.
    pub tag: String,
    /// The alert kinds it receives (`test` always).
    pub events: BTreeSet<AlertKind>,
    pub target: Target,
    /// The secrets in the URL, scrubbed out of any text shown about it.
    secrets: Vec<String>,
}

impl fmt::Debug for Destination {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Destination")
            .field("redacted", &self.redacted)
            .field("tag", &self.tag)
            .field("events", &self.events)
            .field("target", &self.target)
            .finish_non_exhaustive()
    }
}

/// How one destination is reached.
#[derive(Clone)]
pub enum Target {
    /// POST the alert JSON to this URL.
    Json {
        url: Url,
    },
    Discord {
        url: Url,
    },
    Slack {
        url: Url,
    },
    Ntfy {
        /// The server's root: ntfy's JSON publishing posts there.
        url: Url,
        topic: String,
        auth: Option<(String, String)>,
        priority: Option<u8>,
        tags: Vec<String>,
    },
    Telegram {
        url: Url,
        chat_id: String,
    },
    Exec {
        path: PathBuf,
    },
    Email(email::EmailTarget),
}

impl fmt::Debug for Target {
    // Never the URLs: they hold the secrets.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Json { .. } => "Json",
            Self::Discord { .. } => "Discord",
            Self::Slack { .. } => "Slack",
            Self::Ntfy { .. } => "Ntfy",
            Self::Telegram { .. } => "Telegram",
            Self::Exec { .. } => "Exec",
            Self::Email(_) => "Email",
        })
    }
}

/// How a send ended, when it did not deliver.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SendError {
    /// The destination asked us to slow down (`429`); try again after the
    /// wait it named, if it named one.
    RateLimited {
        retry_after: Option<Duration>,
        reason: String,
    },
    /// Worth another try later (a 5xx, a time-out, a refused connection).
    Transient(String),
    /// Will not work however often it is tried (a 4xx other than 408/429,
    /// a missing command).
    Permanent(String),
}

impl SendError {
    pub fn reason(&self) -> &str {
        match self {
            Self::RateLimited { reason, .. }
            | Self::Transient(reason)
            | Self::Permanent(reason) => reason,
        }
    }
}

/// A delivered alert, and how long the destination asked us to wait before
/// the next one (Discord's `X-RateLimit-Remaining: 0`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Sent {
    pub pause: Option<Duration>,
}

impl Destination {
    /// Parses one destination URL; `default_events` applies unless the URL
    /// has `?events=`.
    pub fn parse(
        text: &str,
        default_events: &BTreeSet<AlertKind>,
    ) -> Result<Self, DestinationError> {
        let text = text.trim();
        let parts = Parts::split(text);
        let redacted = parts.redacted();
        let bad = |problem: String| DestinationError::Bad {
            url: redacted.clone(),
            problem,
        };
        let Some(scheme) = parts.scheme.clone() else {
            return Err(bad(
                "not a URL (expected scheme://…, e.g. json://host/path or discord://id/token)"
                    .to_owned(),
            ));
        };
        let mut events = match parts.param("events") {
            Some(list) => parse_kinds(list).map_err(|e: UnknownKind| bad(e.to_string()))?,
            None => default_events.clone(),
        };
        events.insert(AlertKind::Test);
        let base = match parts.param("base") {
            Some(b) => Some(
                Url::parse(b)
                    .ok()
                    .filter(|u| matches!(u.scheme(), "http" | "https"))
                    .ok_or_else(|| bad("base= must be an http:// or https:// URL".to_owned()))?,
            ),
            None => None,
        };
        let base_or = |default: &str| {
            base.clone()
                .unwrap_or_else(|| Url::parse(default).expect("a valid default base"))
        };
        let segments = parts.segments();
        let mut secrets = Vec::new();
        let target = match scheme.as_str() {
            "json" | "jsons" => {
                if parts.host.is_empty() {
                    return Err(bad("no host (json://host[:port]/path)".to_owned()));
                }
                let http = if scheme == "jsons" { "https" } else { "http" };
                let mut s = format!("{http}://");
                if let Some(user) = &parts.user {
                    s.push_str(user);
                    if let Some(pass) = &parts.password {
                        s.push(':');
                        s.push_str(pass);
                    }
                    s.push('@');
                }
                s.push_str(&parts.host);
                s.push_str(&parts.path);
                let rest = parts.other_query(&["events", "base"]);
                if !rest.is_empty() {
                    s.push('?');
                    s.push_str(&rest);
                }
                let url = Url::parse(&s).map_err(|e| bad(format!("not a valid URL: {e}")))?;
                secrets.extend(parts.password.clone());
                secrets.extend(
                    parts
                        .query
                        .iter()
                        .filter(|(k, _)| k != "events" && k != "base")
                        .map(|(_, v)| v.clone()),
                );
                Target::Json { url }
            }
            "discord" => {
                let [id, token] = two(&parts.host, &segments)
                    .ok_or_else(|| bad("expected discord://webhook_id/webhook_token".to_owned()))?;
                secrets.push(token.clone());
                let url = join(
                    &base_or("https://discord.com"),
                    &["api", "webhooks", &id, &token],
                )
                .map_err(bad)?;
                let mut url = url;
                url.set_query(Some("wait=true"));
                Target::Discord { url }
            }
            "slack" => {
                let mut all = vec![parts.host.clone()];
                all.extend(segments.iter().cloned());
                let [t, b, secret] = <[String; 3]>::try_from(
                    all.into_iter()
                        .filter(|s| !s.is_empty())
                        .collect::<Vec<_>>(),
                )
                .map_err(|_| bad("expected slack://T…/B…/secret".to_owned()))?;
                secrets.push(secret.clone());
                let url = join(
                    &base_or("https://hooks.slack.com"),
                    &["services", &t, &b, &secret],
                )
                .map_err(bad)?;
                Target::Slack { url }
            }
            "ntfy" | "ntfys" => {
                let (server, topic) = match segments.as_slice() {
                    [] if !parts.host.is_empty() => ("ntfy.sh".to_owned(), parts.host.clone()),
                    [topic] if !parts.host.is_empty() && !topic.is_empty() => {
                        (parts.host.clone(), topic.clone())
                    }
                    _ => {
                        return Err(bad(
                            "expected ntfy://[user:pass@]host/topic or ntfy://topic".to_owned(),
                        ));
                    }
                };
                let http = if scheme == "ntfys" || server == "ntfy.sh" {
                    "https"
                } else {
                    "http"
                };
                let url = match &base {
                    Some(b) => b.clone(),
                    None => Url::parse(&format!("{http}://{server}/"))
                        .map_err(|e| bad(format!("not a valid host: {e}")))?,
                };
                let auth = match (&parts.user, &parts.password) {
                    (Some(u), Some(p)) => {
                        secrets.push(p.clone());
                        Some((u.clone(), p.clone()))
                    }
                    (Some(_), None) => {
                        return Err(bad(
                            "ntfy: a user needs a password (user:pass@host)".to_owned()
                        ));
                    }
                    _ => None,
                };
                let priority = match parts.param("priority") {
                    None => None,
                    Some(p) => Some(ntfy_priority(p).ok_or_else(|| {
                        bad(format!(
                            "priority={p}: use 1-5 or min, low, default, high, max"
                        ))
                    })?),
                };
                let tags = parts
                    .param("tags")
                    .map(|t| {
                        t.split(',')
                            .map(str::trim)
                            .filter(|t| !t.is_empty())
                            .map(str::to_owned)
                            .collect()
                    })
                    .unwrap_or_default();
                Target::Ntfy {
                    url,
                    topic,
                    auth,
                    priority,
                    tags,
                }
            }
            "tgram" => {
                let [token, chat_id] = two(&parts.host_raw, &segments)
                    .ok_or_else(|| bad("expected tgram://bot_token/chat_id".to_owned()))?;
                secrets.push(token.clone());
                let url = join(
                    &base_or("https://api.telegram.org"),
                    &[&format!("bot{token}"), "sendMessage"],
                )
                .map_err(bad)?;
                Target::Telegram { url, chat_id }
            }
            "exec" => {
                if !parts.host.is_empty() || !parts.path.starts_with('/') {
                    return Err(bad("expected exec:///absolute/path/to/command".to_owned()));
                }
                let path = PathBuf::from(percent_decode(&parts.path));
                Target::Exec { path }
            }
            "mailto" | "mailtos" => {
                secrets.extend(parts.password.clone());
                Target::Email(email::EmailTarget::parse(&scheme, &parts).map_err(bad)?)
            }
            other => {
                return Err(bad(format!(
                    "unknown scheme {other}:// (known: json, jsons, discord, slack, ntfy, ntfys, tgram, mailto, mailtos, exec)"
                )));
            }
        };
        secrets.retain(|s| !s.is_empty());
        Ok(Self {
            redacted,
            tag: format!("{:08x}", fnv1a(text.as_bytes()) as u32),
            events,
            target,
            secrets,
        })
    }

    /// Does this destination take alerts of `kind`?
    pub fn wants(&self, kind: AlertKind) -> bool {
        kind == AlertKind::Test || self.events.contains(&kind)
    }

    /// `text` with every secret of this destination replaced by `***`:
    /// applied to anything said about a send (a transport error, a body).
    pub fn scrub(&self, text: &str) -> String {
        let mut out = text.to_owned();
        for s in &self.secrets {
            out = out.replace(s.as_str(), REDACTED);
        }
        out
    }

    /// Sends one alert, once.
    pub async fn send(
        &self,
        client: &reqwest::Client,
        alert: &Alert,
        timeout: Duration,
    ) -> Result<Sent, SendError> {
        let result = match &self.target {
            Target::Exec { path } => exec::run(path, alert, timeout).await,
            Target::Email(e) => email::send(e, alert, timeout).await,
            _ => http::send(client, &self.target, alert).await,
        };
        result.map_err(|e| match e {
            SendError::RateLimited {
                retry_after,
                reason,
            } => SendError::RateLimited {
                retry_after,
                reason: self.scrub(&reason),
            },
            SendError::Transient(r) => SendError::Transient(self.scrub(&r)),
            SendError::Permanent(r) => SendError::Permanent(self.scrub(&r)),
        })
    }
}

/// Parses the destinations of `--notify` / `RESTOCK_NOTIFY`: each value may
/// hold several, separated by white space or commas (a comma inside
/// `?events=a,b` stays with its URL: a new URL starts only where a word has
/// `://`).
pub fn parse_all(
    values: &[String],
    default_events: &BTreeSet<AlertKind>,
) -> Result<Vec<Destination>, DestinationError> {
    let mut urls: Vec<String> = Vec::new();
    for v in values {
        for word in v
            .split([',', ' ', '\t', '\n', '\r'])
            .filter(|w| !w.is_empty())
        {
            match urls.last_mut() {
                Some(last) if !word.contains("://") => {
                    last.push(',');
                    last.push_str(word);
                }
                _ => urls.push(word.to_owned()),
            }
        }
    }
    let mut out: Vec<Destination> = Vec::new();
    for u in urls {
        let d = Destination::parse(&u, default_events)?;
        if out.iter().any(|o| o.tag == d.tag) {
            return Err(DestinationError::Bad {
                url: d.redacted,
                problem: "given twice".to_owned(),
            });
        }
        out.push(d);
    }
    Ok(out)
}

/// 64-bit FNV-1a: stable across builds and platforms (the standard hasher
/// is not promised to be), so alert ids survive an upgrade.
fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h ^ (h >> 32)
}

fn ntfy_priority(p: &str) -> Option<u8> {
    match p {
        "min" | "1" => Some(1),
        "low" | "2" => Some(2),
        "default" | "3" => Some(3),
        "high" | "4" => Some(4),
        "max" | "urgent" | "5" => Some(5),
        _ => None,
    }
}

/// Exactly two non-empty parts: the host and one path segment.
fn two(host: &str, segments: &[String]) -> Option<[String; 2]> {
    match segments {
        [one] if !host.is_empty() && !one.is_empty() => Some([host.to_owned(), one.clone()]),
        _ => None,
    }
}

/// `base` with these path segments appended (percent-encoded).
fn join(base: &Url, segments: &[&str]) -> Result<Url, String> {
    let mut url = base.clone();
    {
        let mut p = url
            .path_segments_mut()
            .map_err(|()| "base= cannot take a path".to_owned())?;
        p.pop_if_empty();
        for s in segments {
            p.push(s);
        }
    }
    Ok(url)
}

fn percent_decode(s: &str) -> String {
    url::form_urlencoded::parse(format!("x={}", s.replace('+', "%2B")).as_bytes())
        .next()
        .map(|(_, v)| v.into_owned())
        .unwrap_or_else(|| s.to_owned())
}

/// A destination URL taken apart by hand: the services' URLs are not all
/// valid URLs (a Telegram bot token `123:ABC` reads as a host and a bad
/// port), so only the scheme, user info, host, path and query are split.
/// Its `Debug` is the redacted URL.
#[derive(Clone, Default)]
pub struct Parts {
    pub scheme: Option<String>,
    pub user: Option<String>,
    pub password: Option<String>,
    /// `host[:port]`, without user info.
    pub host: String,
    /// Everything between `://` and the first `/`, user info included.
    pub host_raw: String,
    /// From the first `/` after the host, without the query.
    pub path: String,
    pub query: Vec<(String, String)>,
}

impl fmt::Debug for Parts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Parts({})", self.redacted())
    }
}

impl Parts {
    pub fn split(text: &str) -> Self {
        let Some((scheme, rest)) = text.split_once("://") else {
            return Self {
                host: text.to_owned(),
                ..Self::default()
            };
        };
        let (rest, query) = match rest.split_once('?') {
            Some((r, q)) => (r, q),
            None => (rest, ""),
        };
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, ""),
        };
        let (user, password, host) = match authority.rsplit_once('@') {
            Some((info, host)) => match info.split_once(':') {
                Some((u, p)) => (Some(percent_decode(u)), Some(percent_decode(p)), host),
                None => (Some(percent_decode(info)), None, host),
            },
            None => (None, None, authority),
        };
        Self {
            scheme: Some(scheme.to_ascii_lowercase()),
            user,
            password,
            host: host.to_owned(),
            host_raw: authority.to_owned(),
            path: path.to_owned(),
            query: url::form_urlencoded::parse(query.as_bytes())
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect(),
        }
    }

    pub fn param(&self, key: &str) -> Option<&str> {
        self.query
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// The path's non-empty segments, decoded.
    pub fn segments(&self) -> Vec<String> {
        self.path
            .split('/')
            .filter(|s| !s.is_empty())
            .map(percent_decode)
            .collect()
    }

    /// The query without `skip`, encoded again.
    fn other_query(&self, skip: &[&str]) -> String {
        let mut s = url::form_urlencoded::Serializer::new(String::new());
        for (k, v) in &self.query {
            if !skip.contains(&k.as_str()) {
                s.append_pair(k, v);
            }
        }
        s.finish()
    }

    /// The URL with its secrets replaced: passwords, the last path segment
    /// of the services whose URL ends in a secret, the bot token, and the
    /// value of every query parameter that is not one of ours.
    pub fn redacted(&self) -> String {
        let Some(scheme) = &self.scheme else {
            return if self.host.len() > 12 {
                format!("{}…", &self.host.chars().take(12).collect::<String>())
            } else {
                self.host.clone()
            };
        };
        let mut out = format!("{scheme}://");
        match scheme.as_str() {
            "tgram" => {
                let bot = self.host_raw.split(':').next().unwrap_or("");
                out.push_str(bot);
                out.push(':');
                out.push_str(REDACTED);
                out.push_str(&self.path);
            }
            _ => {
                if let Some(u) = &self.user {
                    out.push_str(u);
                    if self.password.is_some() {
                        out.push(':');
                        out.push_str(REDACTED);
                    }
                    out.push('@');
                }
                out.push_str(&self.host);
                if matches!(scheme.as_str(), "discord" | "slack") {
                    let segs: Vec<&str> = self.path.split('/').collect();
                    if segs.len() > 1 {
                        out.push_str(&segs[..segs.len() - 1].join("/"));
                        out.push('/');
                        out.push_str(REDACTED);
                    }
                } else {
                    out.push_str(&self.path);
                }
            }
        }
        if !self.query.is_empty() {
            let shown = ["events", "base", "to", "cc", "from", "priority", "tags"];
            let q: Vec<String> = self
                .query
                .iter()
                .map(|(k, v)| {
                    if shown.contains(&k.as_str()) {
                        let v = if k == "base" {
                            Parts::split(v).redacted()
                        } else {
                            v.clone()
                        };
                        format!("{k}={v}")
                    } else {
                        format!("{k}={REDACTED}")
                    }
                })
                .collect();
            out.push('?');
            out.push_str(&q.join("&"));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all() -> BTreeSet<AlertKind> {
        AlertKind::ALL.into_iter().collect()
    }

    fn url_of(d: &Destination) -> String {
        match &d.target {
            Target::Json { url }
            | Target::Discord { url }
            | Target::Slack { url }
            | Target::Telegram { url, .. }
            | Target::Ntfy { url, .. } => url.to_string(),
            other => format!("{other:?}"),
        }
    }

    #[test]
    fn every_kind_parses_to_its_service_url_and_hides_its_secret() {
        let cases = [
            (
                "json://hook.example:8080/in?token=s3cret",
                "http://hook.example:8080/in?token=s3cret",
                "json://hook.example:8080/in?token=***",
            ),
            (
                "jsons://u:s3cret@hook.example/in",
                "https://u:s3cret@hook.example/in",
                "jsons://u:***@hook.example/in",
            ),
            (
                "discord://1234/s3cret",
                "https://discord.com/api/webhooks/1234/s3cret?wait=true",
                "discord://1234/***",
            ),
            (
                "slack://T01/B02/s3cret",
                "https://hooks.slack.com/services/T01/B02/s3cret",
                "slack://T01/B02/***",
            ),
            (
                "tgram://123:s3cret/-100200",
                "https://api.telegram.org/bot123:s3cret/sendMessage",
                "tgram://123:***/-100200",
            ),
            (
                "ntfy://u:s3cret@ntfy.local/alerts",
                "http://ntfy.local/",
                "ntfy://u:***@ntfy.local/alerts",
            ),
            ("ntfys://mytopic", "https://ntfy.sh/", "ntfys://mytopic"),
            (
                "discord://1234/s3cret?base=http://127.0.0.1:9/&events=purchased",
                "http://127.0.0.1:9/api/webhooks/1234/s3cret?wait=true",
                "discord://1234/***?base=http://127.0.0.1:9/&events=purchased",
            ),
        ];
        for (given, url, redacted) in cases {
            let d = Destination::parse(given, &all()).unwrap_or_else(|e| panic!("{given}: {e}"));
            assert_eq!(url_of(&d), url, "{given}");
            assert_eq!(d.redacted, redacted, "{given}");
            assert!(!d.redacted.contains("s3cret"));
            let scrubbed = d.scrub(&format!("error for {url}"));
            assert!(!scrubbed.contains("s3cret"), "{given}: {scrubbed}");
        }
    }

    #[test]
    fn events_filter_per_destination_and_test_always_passes() {
        let d = Destination::parse("json://h/p?events=purchased", &all()).unwrap();
        assert!(d.wants(AlertKind::Purchased));
        assert!(!d.wants(AlertKind::InStock));
        assert!(d.wants(AlertKind::Test));
        match &d.target {
            Target::Json { url } => assert_eq!(url.as_str(), "http://h/p"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn bad_urls_are_named_without_their_secrets() {
        for (given, says) in [
            ("discord://only-id", "discord://webhook_id"),
            ("carrier-pigeon://x/y", "unknown scheme"),
            ("json://h/p?events=restock", "unknown alert kind"),
            ("slack://T/B", "slack://T"),
            ("exec://relative", "absolute"),
            ("not a url", "not a URL"),
        ] {
            let e = Destination::parse(given, &all()).unwrap_err().to_string();
            assert!(e.contains(says), "{given}: {e}");
        }
        let e = Destination::parse("discord://1/s3cret?events=nope", &all())
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("discord://1/***") && !e.contains("s3cret"),
            "{e}"
        );
    }

    #[test]
    fn lists_split_on_commas_and_spaces_but_keep_event_lists() {
        let v =
            vec!["json://a/x?events=in_stock,purchased discord://1/t, exec:///bin/true".to_owned()];
        let d = parse_all(&v, &all()).unwrap();
        assert_eq!(d.len(), 3);
        assert!(d[0].wants(AlertKind::Purchased) && !d[0].wants(AlertKind::Stuck));
        let dup = parse_all(&["json://a/x json://a/x".to_owned()], &all()).unwrap_err();
        assert!(dup.to_string().contains("twice"));
    }

    #[test]
    fn debug_output_hides_secrets() {
        let d = Destination::parse("ntfy://u:s3cret@h/t", &all()).unwrap();
        let text = format!("{d:?} {:?}", Parts::split("tgram://1:s3cret/2"));
        assert!(!text.contains("s3cret"), "{text}");
    }

    #[test]
    fn tags_are_stable_and_distinct() {
        let a = Destination::parse("discord://1/a", &all()).unwrap();
        let b = Destination::parse("discord://1/b", &all()).unwrap();
        assert_ne!(a.tag, b.tag);
        assert_eq!(
            a.tag,
            Destination::parse("discord://1/a", &all()).unwrap().tag
        );
        assert_eq!(a.tag.len(), 8);
    }
}

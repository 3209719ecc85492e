//! `mailto://user:pass@host[:port]?to=a@b.c[,d@e.f][&from=…]` (STARTTLS on
//! the submission port, 587 by default) and `mailtos://…` (TLS from the
//! first byte, 465 by default). `to` defaults to the user when it is an
//! address; `from` defaults to the user.

use super::{Parts, SendError, Sent};
use crate::alert::Alert;

/// How one mail destination is reached.
#[derive(Clone)]
pub struct EmailTarget {
    pub host: String,
    pub port: u16,
    /// `mailtos://`: TLS from the start; otherwise STARTTLS when offered.
    pub implicit_tls: bool,
    pub credentials: Option<(String, String)>,
    pub from: String,
    pub to: Vec<String>,
}

impl std::fmt::Debug for EmailTarget {
    // The password never shows.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmailTarget")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("implicit_tls", &self.implicit_tls)
            .field("user", &self.credentials.as_ref().map(|c| &c.0))
            .field("from", &self.from)
            .field("to", &self.to)
            .finish()
    }
}

impl EmailTarget {
    pub fn parse(scheme: &str, parts: &Parts) -> Result<Self, String> {
        let implicit_tls = scheme == "mailtos";
        let (host, port) = match parts.host.rsplit_once(':') {
            Some((h, p)) => (
                h.to_owned(),
                p.parse::<u16>()
                    .map_err(|_| format!("port {p:?} is not a number"))?,
            ),
            None => (parts.host.clone(), if implicit_tls { 465 } else { 587 }),
        };
        if host.is_empty() {
            return Err("no SMTP host (mailto://user:pass@host[:port]?to=…)".to_owned());
        }
        let user = parts.user.clone().filter(|u| !u.is_empty());
        let credentials = match (&user, &parts.password) {
            (Some(u), Some(p)) => Some((u.clone(), p.clone())),
            _ => None,
        };
        let from = parts
            .param("from")
            .map(str::to_owned)
            .or_else(|| user.clone().filter(|u| u.contains('@')))
            .unwrap_or_else(|| format!("restock@{host}"));
        let to: Vec<String> = match parts.param("to") {
            Some(list) => list
                .split([',', ';'])
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect(),
            None => user
                .clone()
                .filter(|u| u.contains('@'))
                .into_iter()
                .collect(),
        };
        if to.is_empty() {
            return Err("no recipient: add ?to=you@example.com".to_owned());
        }
        for a in to.iter().chain([&from]) {
            if !a.contains('@') {
                return Err(format!("{a:?} is not an email address"));
            }
        }
        Ok(Self {
            host,
            port,
            implicit_tls,
            credentials,
            from,
            to,
        })
    }
}

/// Email is not built in yet.
pub async fn send(_target: &EmailTarget, _alert: &Alert) -> Result<Sent, SendError> {
    Err(SendError::Permanent(
        "email is not supported by this build".to_owned(),
    ))
}

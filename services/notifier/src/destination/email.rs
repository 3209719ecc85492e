//! `mailto://user:pass@host[:port]?to=a@b.c[,d@e.f][&from=…]` (STARTTLS on
//! the submission port, 587 by default) and `mailtos://…` (TLS from the
//! first byte, 465 by default). `to` defaults to the user when it is an
//! address; `from` defaults to the user.

use std::time::Duration;

use lettre::{
    AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor,
    message::{Mailbox, header::ContentType},
    transport::smtp::{
        authentication::Credentials,
        client::{Tls, TlsParameters},
    },
};

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

/// Sends `alert` as a plain-text mail. Its `Message-ID` is the alert id,
/// so a duplicate (the crash window) is recognisable.
pub async fn send(
    target: &EmailTarget,
    alert: &Alert,
    timeout: Duration,
) -> Result<Sent, SendError> {
    let bad = |what: &str, e: &dyn std::fmt::Display| SendError::Permanent(format!("{what}: {e}"));
    let mut builder = Message::builder()
        .from(
            target
                .from
                .parse::<Mailbox>()
                .map_err(|e| bad("from", &e))?,
        )
        .subject(alert.title.clone())
        .message_id(Some(format!("<{}@restock-notifier>", alert.id)))
        .header(ContentType::TEXT_PLAIN);
    for to in &target.to {
        builder = builder.to(to.parse::<Mailbox>().map_err(|e| bad("to", &e))?);
    }
    let mut body = format!("{}\n\n", alert.message);
    let mut line = |k: &str, v: Option<String>| {
        if let Some(v) = v {
            body.push_str(&format!("{k}: {v}\n"));
        }
    };
    line(
        "Product",
        alert.tcin.clone().map(|t| match &alert.name {
            Some(n) => format!("{n} ({t})"),
            None => t,
        }),
    );
    line("Price", alert.price_text());
    line("Fencing token", alert.fencing_token.map(|t| t.to_string()));
    line("Watcher", alert.watcher_id.clone());
    line("Kind", Some(alert.kind.to_string()));
    line("Alert id", Some(alert.id.clone()));
    let message = builder.body(body).map_err(|e| bad("message", &e))?;

    let tls_params = || {
        TlsParameters::new(target.host.clone())
            .map_err(|e| SendError::Permanent(format!("TLS set-up for {}: {e}", target.host)))
    };
    let tls = if target.implicit_tls {
        Tls::Wrapper(tls_params()?)
    } else if target.credentials.is_some() && !is_loopback(&target.host) {
        // A password never crosses the network in the clear.
        Tls::Required(tls_params()?)
    } else {
        Tls::Opportunistic(tls_params()?)
    };
    let mut transport =
        AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(target.host.as_str())
            .port(target.port)
            .tls(tls)
            .timeout(Some(timeout));
    if let Some((user, pass)) = &target.credentials {
        transport = transport.credentials(Credentials::new(user.clone(), pass.clone()));
    }
    let transport = transport.build();
    match transport.send(message).await {
        Ok(_) => Ok(Sent::default()),
        Err(e) => {
            let text = format!(
                "SMTP {}:{}: {}",
                target.host,
                target.port,
                restock_runtime::error::chain_text(&e)
            );
            if e.is_permanent() {
                Err(SendError::Permanent(text))
            } else {
                Err(SendError::Transient(text))
            }
        }
    }
}

fn is_loopback(host: &str) -> bool {
    host == "localhost"
        || host
            .trim_matches(['[', ']'])
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(url: &str) -> Result<EmailTarget, String> {
        let parts = Parts::split(url);
        EmailTarget::parse(parts.scheme.as_deref().unwrap(), &parts)
    }

    #[test]
    fn ports_recipients_and_senders_have_defaults() {
        let t = parse("mailto://me%40example.com:pw@smtp.example.com").unwrap();
        assert_eq!((t.port, t.implicit_tls), (587, false));
        assert_eq!(t.to, ["me@example.com"]);
        assert_eq!(t.from, "me@example.com");
        let t = parse("mailtos://u:pw@smtp.example.com?to=a@b.c,d@e.f&from=r@x.y").unwrap();
        assert_eq!((t.port, t.implicit_tls), (465, true));
        assert_eq!(t.to, ["a@b.c", "d@e.f"]);
        assert_eq!(t.from, "r@x.y");
        let t = parse("mailto://127.0.0.1:2525?to=a@b.c").unwrap();
        assert_eq!(t.port, 2525);
        assert!(t.credentials.is_none());
        assert!(
            parse("mailto://u:pw@smtp.example.com")
                .unwrap_err()
                .contains("?to=")
        );
        assert!(parse("mailto://h:notaport?to=a@b.c").is_err());
    }
}

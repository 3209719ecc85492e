//! Connecting to a server and making one call: the URL, the connect and call
//! time limits, and the mapping of failures to [`CtlError`]s that say what
//! failed.

use std::{future::Future, time::Duration};

use restock_runtime::auth::{ClientTlsArgs, SendToken, TokenArgs};
use tonic::{
    service::interceptor::InterceptedService,
    transport::{ClientTlsConfig, Endpoint},
};

use crate::error::{CtlError, error_chain};

/// A connection that sends the shared token (if any) on every call.
pub type Channel = InterceptedService<tonic::transport::Channel, SendToken>;

/// HTTP/2 pings keep long streams honest: a silently dropped link is noticed
/// within about this long instead of never.
const KEEPALIVE: Duration = Duration::from_secs(20);

/// A server to talk to, and how long to wait for it.
#[derive(Debug, Clone)]
pub struct Target {
    /// The normalised URL (`http://host:port`).
    pub url: String,
    /// For connecting, and for each unary call.
    pub timeout: Duration,
    /// What the server is, for messages ("arbiter", "server").
    pub role: &'static str,
    /// `None`: plaintext.
    pub tls: Option<ClientTlsConfig>,
    pub token: SendToken,
}

impl Target {
    /// Checks and normalises `url`; a bare `host:port` means `http://host:port`.
    pub fn new(url: &str, timeout: Duration, role: &'static str) -> Result<Self, CtlError> {
        let url = url.trim();
        let url = if url.contains("://") {
            url.to_owned()
        } else {
            format!("http://{url}")
        };
        Endpoint::from_shared(url.clone()).map_err(|e| CtlError::BadUrl {
            url: url.clone(),
            reason: error_chain(&e),
        })?;
        Ok(Self {
            url,
            timeout,
            role,
            tls: None,
            token: SendToken::default(),
        })
    }

    /// Adds TLS (an `http://` URL becomes `https://`) and the token.
    pub fn secured(self, tls: &ClientTlsArgs, token: &TokenArgs) -> Result<Self, CtlError> {
        let (url, tls) = tls
            .load(&self.url)
            .map_err(|e| CtlError::Setup(e.to_string()))?;
        let token = token.load().map_err(|e| CtlError::Setup(e.to_string()))?;
        Ok(Self {
            url,
            tls,
            token: SendToken::new(token.as_ref()),
            ..self
        })
    }

    /// Opens a connection now, so that an unreachable server is reported as
    /// such before anything else happens. The channel reconnects by itself
    /// later if the link drops.
    pub async fn connect(&self) -> Result<Channel, CtlError> {
        let bad_url = |e: tonic::transport::Error| CtlError::BadUrl {
            url: self.url.clone(),
            reason: error_chain(&e),
        };
        let mut endpoint = Endpoint::from_shared(self.url.clone()).map_err(bad_url)?;
        if let Some(tls) = &self.tls {
            endpoint = endpoint.tls_config(tls.clone()).map_err(bad_url)?;
        }
        let endpoint = endpoint
            .connect_timeout(self.timeout)
            .http2_keep_alive_interval(KEEPALIVE)
            .keep_alive_timeout(KEEPALIVE)
            .keep_alive_while_idle(true);
        match tokio::time::timeout(self.timeout, endpoint.connect()).await {
            Err(_) => Err(self.unreachable(format!(
                "no connection within {}",
                humantime::format_duration(self.timeout)
            ))),
            Ok(Err(e)) => Err(self.unreachable(error_chain(&e))),
            Ok(Ok(channel)) => Ok(InterceptedService::new(channel, self.token.clone())),
        }
    }

    fn unreachable(&self, reason: String) -> CtlError {
        CtlError::Unreachable {
            role: self.role,
            url: self.url.clone(),
            reason,
        }
    }

    /// Runs one unary call named `call` with the time limit.
    pub async fn call<T>(
        &self,
        call: &'static str,
        fut: impl Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    ) -> Result<T, CtlError> {
        match tokio::time::timeout(self.timeout, fut).await {
            Err(_) => Err(CtlError::TimedOut {
                call,
                role: self.role,
                url: self.url.clone(),
                after: self.timeout,
            }),
            Ok(Err(status)) => Err(CtlError::from_status(call, self.role, &self.url, &status)),
            Ok(Ok(response)) => Ok(response.into_inner()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bare_address_means_http() {
        let t = Target::new("127.0.0.1:50051", Duration::from_secs(1), "arbiter").unwrap();
        assert_eq!(t.url, "http://127.0.0.1:50051");
        let t = Target::new("http://arbiter:50051", Duration::from_secs(1), "arbiter").unwrap();
        assert_eq!(t.url, "http://arbiter:50051");
    }

    #[test]
    fn a_bad_url_is_a_usage_error() {
        let e = Target::new("http://bad host:1", Duration::from_secs(1), "arbiter").unwrap_err();
        assert_eq!(e.exit_code(), crate::error::EXIT_USAGE, "{e}");
    }

    #[tokio::test]
    async fn a_closed_port_is_reported_as_unreachable() {
        // Bind and drop: the port is (very likely) closed now.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let t = Target::new(
            &format!("127.0.0.1:{port}"),
            Duration::from_secs(5),
            "arbiter",
        )
        .unwrap();
        let e = t.connect().await.unwrap_err();
        let text = e.to_string();
        assert!(
            text.starts_with(&format!(
                "cannot reach arbiter at http://127.0.0.1:{port}: "
            )),
            "{text}"
        );
        assert_eq!(e.exit_code(), crate::error::EXIT_UNREACHABLE);
    }
}

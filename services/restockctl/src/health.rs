//! `restockctl health`: the standard `grpc.health.v1.Health/Check` against
//! any gRPC server (the arbiter, a watcher). Exits 0 only on SERVING, so it
//! serves as a container health check.

use std::io::Write;

use serde::Serialize;
use tonic::Code;
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

use crate::{
    client::Target,
    error::{CtlError, EXIT_NEGATIVE, EXIT_OK},
};

/// Asks about `service` ("" = the server as a whole).
pub async fn run(
    target: &Target,
    service: &str,
    json: bool,
    out: &mut dyn Write,
) -> Result<u8, CtlError> {
    let mut client = HealthClient::new(target.connect().await?);
    let answer = target
        .call(
            "Health.Check",
            client.check(HealthCheckRequest {
                service: service.to_owned(),
            }),
        )
        .await;
    let status = match answer {
        Ok(r) => ServingStatus::try_from(r.status)
            .map(|s| s.as_str_name().to_owned())
            .unwrap_or_else(|_| format!("STATUS_{}", r.status)),
        // The standard answer for a service the server does not know.
        Err(CtlError::Rpc {
            code: Code::NotFound,
            ..
        }) => ServingStatus::ServiceUnknown.as_str_name().to_owned(),
        Err(e) => return Err(e),
    };
    let serving = status == ServingStatus::Serving.as_str_name();
    if json {
        #[derive(Serialize)]
        struct Health<'a> {
            server: &'a str,
            service: &'a str,
            status: &'a str,
            serving: bool,
        }
        serde_json::to_writer(
            &mut *out,
            &Health {
                server: &target.url,
                service,
                status: &status,
                serving,
            },
        )
        .map_err(std::io::Error::from)?;
        writeln!(out)?;
    } else if service.is_empty() {
        writeln!(out, "{}: {status}", target.url)?;
    } else {
        writeln!(out, "{} {service}: {status}", target.url)?;
    }
    Ok(if serving { EXIT_OK } else { EXIT_NEGATIVE })
}

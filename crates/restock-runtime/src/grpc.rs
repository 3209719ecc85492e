//! What every restock gRPC server serves beside its own service: the
//! standard health service (`grpc.health.v1.Health`) and server reflection
//! (v1 and v1alpha), so `grpcurl` needs no `.proto` files.
//!
//! Reflection lists only what the server really serves: its own service,
//! health and reflection, even though one descriptor set holds every
//! restock service.

use tonic::service::Routes;
use tonic_health::{ServingStatus, server::HealthReporter};

/// The health service's own name.
pub const HEALTH_SERVICE: &str = "grpc.health.v1.Health";

/// The server's health as the health service reports it: the overall
/// status (the empty service name) and the named service's, which turn
/// together.
#[derive(Debug, Clone)]
pub struct Health {
    reporter: HealthReporter,
    service: &'static str,
}

impl Health {
    /// The overall status and the named service's.
    pub async fn set(&self, serving: bool) {
        let status = if serving {
            ServingStatus::Serving
        } else {
            ServingStatus::NotServing
        };
        self.reporter.set_service_status("", status).await;
        self.reporter.set_service_status(self.service, status).await;
    }

    /// The named service's status alone (a replica that is up but does not
    /// lead, say); the overall status stays as it is.
    pub async fn set_service(&self, serving: bool) {
        let status = if serving {
            ServingStatus::Serving
        } else {
            ServingStatus::NotServing
        };
        self.reporter.set_service_status(self.service, status).await;
    }

    pub fn reporter(&self) -> &HealthReporter {
        &self.reporter
    }
}

/// Health and reflection for a server whose own service is `service`
/// (its full name, `restock.v1.PurchaseArbiter`), described in
/// `descriptor_sets`. Health starts SERVING for both the server and the
/// service.
pub async fn support_routes(
    service: &'static str,
    descriptor_sets: &[&'static [u8]],
) -> Result<(Health, Routes), tonic_reflection::server::Error> {
    let (reporter, health_service) = tonic_health::server::health_reporter();
    let health = Health { reporter, service };
    health.set(true).await;
    let configure = || {
        let mut b = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .with_service_name(service)
            .with_service_name(HEALTH_SERVICE);
        for set in descriptor_sets {
            b = b.register_encoded_file_descriptor_set(set);
        }
        b
    };
    let v1 = configure()
        .with_service_name("grpc.reflection.v1.ServerReflection")
        .build_v1()?;
    let v1alpha = configure()
        .with_service_name("grpc.reflection.v1alpha.ServerReflection")
        .build_v1alpha()?;
    let routes = Routes::new(health_service)
        .add_service(v1)
        .add_service(v1alpha);
    Ok((health, routes))
}

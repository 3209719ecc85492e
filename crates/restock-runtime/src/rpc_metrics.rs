//! Per-RPC metrics for every gRPC server, named as grpc-ecosystem's Go
//! interceptors (go-grpc-prometheus) name them, so existing dashboards
//! work:
//!
//! - `grpc_server_started_total{grpc_type, grpc_service, grpc_method}`
//! - `grpc_server_handled_total{grpc_type, grpc_service, grpc_method, grpc_code}`
//! - `grpc_server_handling_seconds{grpc_type, grpc_service, grpc_method}`
//!   (histogram; for a stream, from the call's start to its last frame)
//!
//! [`GrpcMetrics`] is a tower layer over the whole server (every route,
//! health and reflection included; calls refused by the token check count
//! as `Unauthenticated`). A call's code is read where gRPC puts it: the
//! `grpc-status` trailer at the end of the response body, or the header of a
//! trailers-only answer. A stream cut with `RESOURCE_EXHAUSTED` therefore
//! counts as `ResourceExhausted`, not as the `OK` a header-only interceptor
//! would see. A call the client abandons before its status counts as
//! `Canceled`.
//!
//! Whether a method streams comes from the descriptor sets the server
//! already registers for reflection, not from guessing: the table is built
//! once, with every label set and handle, so a call costs a map lookup by
//! its path and a few atomic adds. A path no served service declares is
//! counted under `unknown` (client-chosen paths never become labels).

use std::{
    collections::{HashMap, HashSet},
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll, ready},
    time::Instant,
};

use http_body::{Body, Frame, SizeHint};
use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{
        counter::Counter,
        family::{Family, MetricConstructor},
        histogram::Histogram,
    },
    registry::Registry,
};
use prost::Message;
use tower_layer::Layer;
use tower_service::Service;

use crate::grpc::HEALTH_SERVICE;

/// The reflection services [`crate::grpc::support_routes`] serves.
const REFLECTION_SERVICES: [&str; 2] = [
    "grpc.reflection.v1.ServerReflection",
    "grpc.reflection.v1alpha.ServerReflection",
];

/// go-grpc-prometheus's buckets (Prometheus's default), so dashboards'
/// `histogram_quantile` queries compare across services.
const BUCKETS: [f64; 11] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// The `grpc_code` label values, indexed by the code's number: the names
/// Go's `codes.Code.String()` gives them.
const CODE_NAMES: [&str; 17] = [
    "OK",
    "Canceled",
    "Unknown",
    "InvalidArgument",
    "DeadlineExceeded",
    "NotFound",
    "AlreadyExists",
    "PermissionDenied",
    "ResourceExhausted",
    "FailedPrecondition",
    "Aborted",
    "OutOfRange",
    "Unimplemented",
    "Internal",
    "Unavailable",
    "DataLoss",
    "Unauthenticated",
];
const CANCELED: usize = 1;
const UNKNOWN: usize = 2;

/// A method's shape, as its descriptor declares it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RpcType {
    Unary,
    ClientStream,
    ServerStream,
    BidiStream,
}

impl RpcType {
    pub fn from_streaming(client: bool, server: bool) -> Self {
        match (client, server) {
            (false, false) => Self::Unary,
            (true, false) => Self::ClientStream,
            (false, true) => Self::ServerStream,
            (true, true) => Self::BidiStream,
        }
    }

    /// The `grpc_type` label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Unary => "unary",
            Self::ClientStream => "client_stream",
            Self::ServerStream => "server_stream",
            Self::BidiStream => "bidi_stream",
        }
    }
}

/// Why the method table could not be built; names the service.
#[derive(Debug, thiserror::Error)]
pub enum RpcMetricsError {
    #[error("cannot read a gRPC descriptor set: {0}")]
    Decode(#[from] prost::DecodeError),
    #[error("gRPC service {0} is served but no descriptor set describes it")]
    MissingService(String),
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MethodLabels {
    grpc_type: &'static str,
    grpc_service: String,
    grpc_method: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CodeLabels {
    grpc_type: &'static str,
    grpc_service: String,
    grpc_method: String,
    grpc_code: &'static str,
}

#[derive(Debug, Clone)]
struct Buckets;

impl MetricConstructor<Histogram> for Buckets {
    fn new_metric(&self) -> Histogram {
        Histogram::new(BUCKETS)
    }
}

/// One method's handles, created once.
#[derive(Debug)]
struct MethodMetrics {
    started: Counter,
    handled: [Counter; CODE_NAMES.len()],
    seconds: Histogram,
}

/// The per-RPC metrics of one server, and the tower layer that records
/// them. Cheap to clone.
#[derive(Debug, Clone)]
pub struct GrpcMetrics {
    methods: Arc<HashMap<String, Arc<MethodMetrics>>>,
    unknown: Arc<MethodMetrics>,
}

impl GrpcMetrics {
    /// Registers the metrics in `registry` for a server that serves
    /// `services` (full names, `restock.v1.StockWatcher`) described in
    /// `descriptor_sets`, plus the health and reflection services that
    /// [`crate::grpc::support_routes`] adds to every server.
    pub fn register(
        registry: &mut Registry,
        services: &[&str],
        descriptor_sets: &[&[u8]],
    ) -> Result<Self, RpcMetricsError> {
        let started = Family::<MethodLabels, Counter>::default();
        let handled = Family::<CodeLabels, Counter>::default();
        let seconds = Family::<MethodLabels, Histogram, Buckets>::new_with_constructor(Buckets);
        registry.register(
            "grpc_server_started",
            "RPCs started on the server",
            started.clone(),
        );
        registry.register(
            "grpc_server_handled",
            "RPCs completed on the server, whatever their code",
            handled.clone(),
        );
        registry.register(
            "grpc_server_handling_seconds",
            "Time from an RPC's start to its status (a stream's whole life)",
            seconds.clone(),
        );
        let handles = |grpc_type: &'static str, service: &str, method: &str| {
            let labels = MethodLabels {
                grpc_type,
                grpc_service: service.to_owned(),
                grpc_method: method.to_owned(),
            };
            Arc::new(MethodMetrics {
                started: started.get_or_create(&labels).clone(),
                handled: CODE_NAMES.map(|code| {
                    handled
                        .get_or_create(&CodeLabels {
                            grpc_type: labels.grpc_type,
                            grpc_service: labels.grpc_service.clone(),
                            grpc_method: labels.grpc_method.clone(),
                            grpc_code: code,
                        })
                        .clone()
                }),
                seconds: seconds.get_or_create(&labels).clone(),
            })
        };

        let mut wanted: HashSet<&str> = services.iter().copied().collect();
        wanted.insert(HEALTH_SERVICE);
        wanted.extend(REFLECTION_SERVICES);
        let mut sets: Vec<&[u8]> = vec![
            tonic_health::pb::FILE_DESCRIPTOR_SET,
            tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET,
            tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET,
        ];
        sets.extend_from_slice(descriptor_sets);
        let mut methods = HashMap::new();
        let mut found = HashSet::new();
        for set in sets {
            let set = prost_types::FileDescriptorSet::decode(set)?;
            for file in &set.file {
                for service in &file.service {
                    let full = match file.package() {
                        "" => service.name().to_owned(),
                        p => format!("{p}.{}", service.name()),
                    };
                    if !wanted.contains(full.as_str()) || !found.insert(full.clone()) {
                        continue;
                    }
                    for m in &service.method {
                        let kind =
                            RpcType::from_streaming(m.client_streaming(), m.server_streaming());
                        methods.insert(
                            format!("/{full}/{}", m.name()),
                            handles(kind.as_str(), &full, m.name()),
                        );
                    }
                }
            }
        }
        if let Some(missing) = wanted.iter().find(|s| !found.contains(**s)) {
            return Err(RpcMetricsError::MissingService((*missing).to_owned()));
        }
        Ok(Self {
            methods: Arc::new(methods),
            // A path nobody serves is answered UNIMPLEMENTED; its type is
            // not known either, so it says so.
            unknown: handles("unknown", "unknown", "unknown"),
        })
    }

    fn method(&self, path: &str) -> Arc<MethodMetrics> {
        self.methods.get(path).unwrap_or(&self.unknown).clone()
    }
}

impl<S> Layer<S> for GrpcMetrics {
    type Service = Metered<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Metered {
            inner,
            metrics: self.clone(),
        }
    }
}

/// A gRPC server's routes with [`GrpcMetrics`] recording every call.
#[derive(Debug, Clone)]
pub struct Metered<S> {
    inner: S,
    metrics: GrpcMetrics,
}

impl<S, ReqBody, ResBody> Service<http::Request<ReqBody>> for Metered<S>
where
    S: Service<http::Request<ReqBody>, Response = http::Response<ResBody>>,
{
    type Response = http::Response<MeteredBody<ResBody>>;
    type Error = S::Error;
    type Future = MeteredFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<ReqBody>) -> Self::Future {
        let method = self.metrics.method(req.uri().path());
        method.started.inc();
        MeteredFuture {
            inner: self.inner.call(req),
            call: Some(Pending {
                method,
                start: Instant::now(),
                code: None,
                recorded: false,
            }),
        }
    }
}

/// A call whose code is not recorded yet. Dropped unrecorded (the client
/// went away, the connection broke) it counts with the code the headers
/// gave, or as `Canceled`.
#[derive(Debug)]
struct Pending {
    method: Arc<MethodMetrics>,
    start: Instant,
    /// The `grpc-status` of a trailers-only answer's headers.
    code: Option<usize>,
    /// Set once counted, so the drop does not count it again.
    recorded: bool,
}

impl Pending {
    fn finish(mut self, code: usize) {
        self.record(code);
        self.recorded = true;
    }

    fn record(&self, code: usize) {
        let code = if code < CODE_NAMES.len() {
            code
        } else {
            UNKNOWN
        };
        self.method.handled[code].inc();
        self.method
            .seconds
            .observe(self.start.elapsed().as_secs_f64());
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        if !self.recorded {
            self.record(self.code.unwrap_or(CANCELED));
        }
    }
}

fn status_code(headers: &http::HeaderMap) -> Option<usize> {
    headers
        .get("grpc-status")?
        .to_str()
        .ok()?
        .trim()
        .parse::<usize>()
        .ok()
}

pin_project_lite::pin_project! {
    /// The response future of a [`Metered`] service.
    #[derive(Debug)]
    pub struct MeteredFuture<F> {
        #[pin]
        inner: F,
        call: Option<Pending>,
    }
}

impl<F, B, E> Future for MeteredFuture<F>
where
    F: Future<Output = Result<http::Response<B>, E>>,
{
    type Output = Result<http::Response<MeteredBody<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = ready!(this.inner.poll(cx));
        let mut call = this.call.take();
        Poll::Ready(match result {
            Ok(resp) => {
                if let Some(c) = &mut call {
                    c.code = status_code(resp.headers());
                }
                Ok(resp.map(|inner| MeteredBody { inner, call }))
            }
            Err(e) => {
                if let Some(c) = call {
                    c.finish(UNKNOWN);
                }
                Err(e)
            }
        })
    }
}

pin_project_lite::pin_project! {
    /// A response body that records its call's code when the `grpc-status`
    /// trailer passes, or when it ends or is dropped.
    #[derive(Debug)]
    pub struct MeteredBody<B> {
        #[pin]
        inner: B,
        call: Option<Pending>,
    }
}

impl<B: Body> Body for MeteredBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        let frame = ready!(this.inner.poll_frame(cx));
        match &frame {
            Some(Ok(f)) => {
                if let Some(trailers) = f.trailers_ref()
                    && let Some(call) = this.call.take()
                {
                    let code = status_code(trailers).or(call.code).unwrap_or(UNKNOWN);
                    call.finish(code);
                }
            }
            // The body broke off: the client sees a reset stream, with no
            // status from the server.
            Some(Err(_)) => {
                if let Some(call) = this.call.take() {
                    call.finish(UNKNOWN);
                }
            }
            None => {
                if let Some(call) = this.call.take() {
                    let code = call.code.unwrap_or(UNKNOWN);
                    call.finish(code);
                }
            }
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_served_service_no_descriptor_describes_is_named() {
        let e = GrpcMetrics::register(&mut Registry::default(), &["restock.v1.Nope"], &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("restock.v1.Nope"), "{e}");
    }

    #[test]
    fn types_come_from_the_descriptors_and_only_served_services_show() {
        let mut r = Registry::default();
        GrpcMetrics::register(&mut r, &[], &[]).unwrap();
        let text = crate::metrics::render(&r, crate::metrics::Format::Text);
        for series in [
            r#"grpc_server_started_total{grpc_type="unary",grpc_service="grpc.health.v1.Health",grpc_method="Check"} 0"#,
            r#"grpc_server_started_total{grpc_type="server_stream",grpc_service="grpc.health.v1.Health",grpc_method="Watch"} 0"#,
            r#"grpc_server_started_total{grpc_type="bidi_stream",grpc_service="grpc.reflection.v1.ServerReflection",grpc_method="ServerReflectionInfo"} 0"#,
        ] {
            assert!(text.contains(series), "{series} missing from\n{text}");
        }
        // Served services only: nothing of the restock services here.
        assert!(!text.contains("restock.v1"), "{text}");
    }

    #[test]
    fn streaming_flags_name_the_type() {
        assert_eq!(RpcType::from_streaming(false, false).as_str(), "unary");
        assert_eq!(
            RpcType::from_streaming(true, false).as_str(),
            "client_stream"
        );
        assert_eq!(
            RpcType::from_streaming(false, true).as_str(),
            "server_stream"
        );
        assert_eq!(RpcType::from_streaming(true, true).as_str(), "bidi_stream");
    }
}

//! Process plumbing every restock binary shares, written once: who may call
//! and over what, the flags for it, logging, the shutdown signal, back-off,
//! error chains, health + reflection, per-RPC metrics, the HTTP listener
//! with `/metrics`, and announcing bound addresses.
//!
//! # Layout
//!
//! - [`auth`]: the bearer token and TLS for servers and clients, with their
//!   clap blocks ([`auth::TokenArgs`], [`auth::ServerTlsArgs`],
//!   [`auth::ClientTlsArgs`]) and the tower layer that checks the token.
//! - [`log`]: `--log-format` ([`log::LogArgs`]) and the subscriber set-up.
//! - [`shutdown`]: SIGTERM or SIGINT.
//! - [`backoff`]: exponential back-off with jitter.
//! - [`error`]: an error and its causes on one line.
//! - [`grpc`]: health (overall and per service) and reflection limited to
//!   what a server serves.
//! - [`rpc_metrics`]: [`rpc_metrics::GrpcMetrics`], the tower layer every
//!   gRPC server adds: `grpc_server_started_total`,
//!   `grpc_server_handled_total` (the code from the trailers) and
//!   `grpc_server_handling_seconds`.
//! - [`metrics`]: the Prometheus registry (`prometheus-client`, and why) and
//!   its rendering in the format a scrape asks for.
//! - [`http`]: `--http-listen` ([`http::HttpListen`]) and the HTTP listener
//!   serving `GET /metrics` and `GET /healthz`.
//! - [`leader`]: how a replica that does not lead names the leader
//!   (`UNAVAILABLE` and the `restock-leader` trailer), and reading it back.
//! - [`arbiters`]: `--arbiter URL1,URL2,...` ([`arbiters::ArbiterUrls`]) and
//!   which replica a client tries now ([`arbiters::ArbiterTracker`]: the
//!   hinted leader, else the next URL round robin).
//! - [`announce`]: binding, `--ready-file`, and the "listening" log line.
//! - [`process`]: the exit of every `main`.
//!
//! Nothing here knows the restock protocol or its rules: those live in
//! `restock-proto` and `restock-domain`.

pub mod announce;
pub mod arbiters;
pub mod auth;
pub mod backoff;
pub mod error;
pub mod grpc;
pub mod http;
pub mod leader;
pub mod log;
pub mod metrics;
pub mod process;
pub mod rpc_metrics;
pub mod shutdown;

pub use announce::{Bound, ReadyFileArgs};
pub use backoff::Backoff;
pub use error::Chain;
pub use log::LogArgs;
pub use shutdown::shutdown_signal;

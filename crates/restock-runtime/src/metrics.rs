//! Prometheus metrics: one registry per server instance, rendered by the
//! HTTP listener's `GET /metrics` ([`crate::http`]).
//!
//! Built on `prometheus-client`, not the `metrics` facade with
//! `metrics-exporter-prometheus`, for three reasons:
//!
//! - the registry is a value a server owns, not a process-wide recorder, so
//!   tests that run several servers in one process see each server's own
//!   numbers (the facade's local recorder is per thread and does not follow
//!   a task across the runtime's threads);
//! - histograms are fixed arrays of bucket counters, so memory does not grow
//!   with the number of observations (the exporter keeps every sample until
//!   a scrape or an upkeep task drains it, and without its default features
//!   nothing runs that task: an arbiter nobody scrapes would grow);
//! - every handle is registered once and kept, so recording is an atomic
//!   add, with no name lookup or allocation per observation.
//!
//! `prometheus-client` writes OpenMetrics, whose counter families are named
//! without `_total` (`# TYPE grpc_server_started counter` above samples
//! named `grpc_server_started_total`). Prometheus reads that fine when it is
//! served as OpenMetrics, but the classic text format (what `promtool check
//! metrics` and most other readers parse) wants the family named like its
//! samples, or it reports the samples as a family without help. So
//! [`render`] gives OpenMetrics to a client that asks for it (Prometheus
//! does, in `Accept`) and the classic format, with counter families renamed
//! and `# EOF` dropped, to everyone else.

use std::fmt::Write as _;

pub use prometheus_client;
pub use prometheus_client::registry::Registry;

/// The `Content-Type` of OpenMetrics text.
pub const OPENMETRICS_CONTENT_TYPE: &str =
    "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The `Content-Type` of the classic Prometheus text format.
pub const TEXT_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Which text format a scrape gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// OpenMetrics 1.0, as `prometheus-client` writes it.
    OpenMetrics,
    /// The classic text format, version 0.0.4.
    Text,
}

impl Format {
    /// The format a request's `Accept` header asks for: OpenMetrics only when
    /// it is named, the classic format otherwise (curl, promtool, a browser).
    pub fn from_accept(accept: Option<&str>) -> Self {
        match accept {
            Some(a) if a.contains("application/openmetrics-text") => Self::OpenMetrics,
            _ => Self::Text,
        }
    }

    pub fn content_type(self) -> &'static str {
        match self {
            Self::OpenMetrics => OPENMETRICS_CONTENT_TYPE,
            Self::Text => TEXT_CONTENT_TYPE,
        }
    }
}

/// Every metric of `registry` in `format`.
pub fn render(registry: &Registry, format: Format) -> String {
    let mut open = String::new();
    // Writing to a String cannot fail; an encoder error would be a bug in a
    // metric's own encoding, and a partial page is still more useful than
    // none, so it is logged rather than turned into a panic.
    if let Err(e) = prometheus_client::encoding::text::encode(&mut open, registry) {
        tracing::error!(error = %e, "cannot encode the metrics registry");
    }
    match format {
        Format::OpenMetrics => open,
        Format::Text => to_classic_text(&open),
    }
}

/// OpenMetrics text as the classic format: counter families take the
/// `_total` of their samples, and the OpenMetrics-only lines (`# UNIT`,
/// `# EOF`) go.
fn to_classic_text(open: &str) -> String {
    let mut out = String::with_capacity(open.len());
    // A family's HELP comes before its TYPE, and only the TYPE says whether
    // it is a counter, so HELP waits for the TYPE line.
    let mut help: Option<(&str, &str)> = None;
    for line in open.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            flush_help(&mut out, help.take(), "");
            let (name, text) = rest.split_once(' ').unwrap_or((rest, ""));
            help = Some((name, text));
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap_or((rest, ""));
            let suffix = if kind == "counter" && !name.ends_with("_total") {
                "_total"
            } else {
                ""
            };
            match help.take() {
                Some((h, text)) if h == name => flush_help(&mut out, Some((h, text)), suffix),
                other => flush_help(&mut out, other, ""),
            }
            let _ = writeln!(out, "# TYPE {name}{suffix} {kind}");
        } else if line.starts_with("# UNIT ") || line == "# EOF" {
            continue;
        } else {
            flush_help(&mut out, help.take(), "");
            out.push_str(line);
            out.push('\n');
        }
    }
    flush_help(&mut out, help, "");
    out
}

fn flush_help(out: &mut String, help: Option<(&str, &str)>, suffix: &str) {
    if let Some((name, text)) = help {
        let _ = writeln!(out, "# HELP {name}{suffix} {text}");
    }
}

#[cfg(test)]
mod tests {
    use prometheus_client::metrics::{
        counter::Counter, family::Family, gauge::Gauge, histogram::Histogram,
    };

    use super::*;

    fn registry() -> Registry {
        let mut r = Registry::default();
        let c = Family::<Vec<(String, String)>, Counter>::default();
        c.get_or_create(&vec![("code".into(), "429".into())]).inc();
        r.register("restock_source_requests", "Source requests", c);
        let h = Histogram::new([0.1, 1.0]);
        h.observe(0.5);
        r.register("restock_checkout_seconds", "Checkout time", h);
        r.register("restock_slot_held", "Slot held", Gauge::<i64>::default());
        r
    }

    #[test]
    fn the_classic_format_names_counter_families_like_their_samples() {
        let text = render(&registry(), Format::Text);
        assert!(
            text.contains("# HELP restock_source_requests_total Source requests.\n")
                && text.contains("# TYPE restock_source_requests_total counter\n")
                && text.contains("restock_source_requests_total{code=\"429\"} 1\n"),
            "{text}"
        );
        assert!(text.contains("# TYPE restock_checkout_seconds histogram\n"));
        assert!(text.contains("# TYPE restock_slot_held gauge\n"));
        assert!(!text.contains("# EOF"), "{text}");
    }

    #[test]
    fn openmetrics_is_left_as_written() {
        let text = render(&registry(), Format::OpenMetrics);
        assert!(text.contains("# TYPE restock_source_requests counter\n"));
        assert!(text.ends_with("# EOF\n"), "{text}");
    }

    #[test]
    fn accept_chooses_the_format() {
        assert_eq!(Format::from_accept(None), Format::Text);
        assert_eq!(Format::from_accept(Some("*/*")), Format::Text);
        assert_eq!(
            Format::from_accept(Some(
                "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5"
            )),
            Format::OpenMetrics
        );
    }
}

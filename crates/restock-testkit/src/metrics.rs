//! `/metrics` in tests: scrape it over real HTTP, read one series, and
//! check the whole page with the real `promtool check metrics` (Debian's
//! `prometheus` package), as a Prometheus operator would.

use std::{
    io::Write,
    path::PathBuf,
    process::{Command, Stdio},
};

/// `GET url`, with its `Content-Type`; panics naming the URL when the
/// answer is not 200.
pub async fn scrape(url: &str) -> (String, String) {
    let r = reqwest::get(url)
        .await
        .unwrap_or_else(|e| panic!("GET {url}: {e}"));
    assert_eq!(r.status(), 200, "GET {url}");
    let content_type = r
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let text = r.text().await.unwrap_or_else(|e| panic!("GET {url}: {e}"));
    (text, content_type)
}

/// The value of one series, written exactly as the page writes it
/// (`restock_source_requests_total{code="429"}`); `None` when absent.
pub fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|l| {
        l.strip_prefix(series)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}

/// The real `promtool`, or `None` (with a note) when it is not installed.
/// With `RESTOCK_REQUIRE_PROMTOOL=1` (CI) a missing promtool fails.
pub fn promtool() -> Option<PathBuf> {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|p| p.join("promtool"))
            .find(|p| p.is_file())
    });
    if found.is_none() {
        let required = std::env::var("RESTOCK_REQUIRE_PROMTOOL").is_ok_and(|v| v == "1");
        assert!(
            !required,
            "promtool is required (RESTOCK_REQUIRE_PROMTOOL=1) but not on PATH; apt-get install prometheus"
        );
        eprintln!(
            "SKIPPED: promtool is not on PATH, so /metrics was not checked with it (apt-get install prometheus)"
        );
    }
    found
}

/// `promtool check metrics` on `text` (lint included: help on every
/// family, counters named `_total`, units in names). Panics with
/// promtool's complaints and the page; does nothing (after a `SKIPPED:`
/// note) without promtool.
pub fn check_metrics(what: &str, text: &str) {
    let Some(promtool) = promtool() else {
        return;
    };
    let mut child = Command::new(&promtool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("run {}: {e}", promtool.display()));
    child
        .stdin
        .take()
        .expect("piped stdin")
        .write_all(text.as_bytes())
        .expect("write to promtool");
    let out = child.wait_with_output().expect("wait for promtool");
    assert!(
        out.status.success(),
        "promtool check metrics refuses {what}'s /metrics ({}):\n{}{}\n--- the page ---\n{text}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
}

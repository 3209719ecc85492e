//! Scripted stock: a scenario file lists, per product, the windows of time
//! (in milliseconds since the simulator started) during which it is in
//! stock, optionally at a given price, and optionally repeating:
//!
//! ```json
//! {
//!   "period_ms": 20000,
//!   "products": {
//!     "94300069": [{"from_ms": 0, "to_ms": 5000, "price": 19.99}],
//!     "94336414": [{"from_ms": 3000, "to_ms": 8000}]
//!   }
//! }
//! ```
//!
//! A window covers `from_ms <= t < to_ms`. With `period_ms` the whole
//! timeline repeats: the state at `t` is the state at `t % period_ms`, and
//! every window must end by `period_ms`. Windows of one product must not
//! overlap. Products the scenario does not name stay out of stock.
//!
//! Everything here is a pure function of the elapsed time, so it is tested
//! without a clock.

use std::{collections::HashMap, path::Path};

use serde::Deserialize;

use restock_domain::{Price, ProductId};

/// Why a scenario file could not be used. Every variant names the file.
#[derive(Debug, thiserror::Error)]
pub enum ScenarioError {
    #[error("cannot read scenario {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("scenario {path} is not valid: line {line}, column {column}: {message}")]
    Syntax {
        path: String,
        line: usize,
        column: usize,
        message: String,
    },
    #[error("scenario {path}: {message}")]
    Invalid { path: String, message: String },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileFormat {
    #[serde(default)]
    period_ms: Option<u64>,
    products: HashMap<String, Vec<FileWindow>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileWindow {
    from_ms: u64,
    to_ms: u64,
    /// Dollars.
    #[serde(default)]
    price: Option<f64>,
}

/// One in-stock window of one product.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    pub from_ms: u64,
    pub to_ms: u64,
    /// The price shown while the window is open; `None` keeps the product's
    /// own price.
    pub price: Option<Price>,
}

/// What the scenario says about one product at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScriptedState {
    pub in_stock: bool,
    /// The open window's price, if it has one.
    pub price: Option<Price>,
    /// The latest window boundary (opening or closing) at or before the
    /// moment asked about, in ms since start; `None` before the first one.
    pub last_boundary_ms: Option<u64>,
}

/// A validated scenario.
#[derive(Debug, Clone, Default)]
pub struct Scenario {
    period_ms: Option<u64>,
    /// Windows per product, sorted by start, not overlapping.
    windows: HashMap<ProductId, Vec<Window>>,
}

impl Scenario {
    /// Reads and validates a scenario file.
    pub fn load(path: &Path) -> Result<Self, ScenarioError> {
        let text = std::fs::read_to_string(path).map_err(|source| ScenarioError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::parse(&text, &path.display().to_string())
    }

    /// Parses the JSON text of a scenario; `path` is only used in errors.
    pub fn parse(text: &str, path: &str) -> Result<Self, ScenarioError> {
        let file: FileFormat = serde_json::from_str(text).map_err(|e| ScenarioError::Syntax {
            path: path.to_owned(),
            line: e.line(),
            column: e.column(),
            message: restock_domain::catalog::json_error_message(&e),
        })?;
        let invalid = |message: String| ScenarioError::Invalid {
            path: path.to_owned(),
            message,
        };
        if file.period_ms == Some(0) {
            return Err(invalid("period_ms must be at least 1".into()));
        }
        let mut windows = HashMap::with_capacity(file.products.len());
        for (id, list) in file.products {
            let tcin =
                ProductId::parse(&id).map_err(|e| invalid(format!("product {id:?}: {e}")))?;
            let mut parsed = Vec::with_capacity(list.len());
            for (i, w) in list.into_iter().enumerate() {
                let at = format!("product {id}, window #{}", i + 1);
                if w.from_ms >= w.to_ms {
                    return Err(invalid(format!(
                        "{at}: from_ms {} must be before to_ms {}",
                        w.from_ms, w.to_ms
                    )));
                }
                if let Some(p) = file.period_ms
                    && w.to_ms > p
                {
                    return Err(invalid(format!(
                        "{at}: to_ms {} is past period_ms {p}",
                        w.to_ms
                    )));
                }
                let price = w
                    .price
                    .map(Price::from_dollars)
                    .transpose()
                    .map_err(|e| invalid(format!("{at}: price: {e}")))?;
                parsed.push(Window {
                    from_ms: w.from_ms,
                    to_ms: w.to_ms,
                    price,
                });
            }
            parsed.sort_by_key(|w| w.from_ms);
            if let Some(pair) = parsed.windows(2).find(|p| p[0].to_ms > p[1].from_ms) {
                return Err(invalid(format!(
                    "product {id}: windows {}..{} and {}..{} overlap",
                    pair[0].from_ms, pair[0].to_ms, pair[1].from_ms, pair[1].to_ms
                )));
            }
            windows.insert(tcin, parsed);
        }
        Ok(Self {
            period_ms: file.period_ms,
            windows,
        })
    }

    /// Builds a scenario directly (tests, embedding).
    pub fn new(period_ms: Option<u64>, windows: HashMap<ProductId, Vec<Window>>) -> Self {
        let windows = windows
            .into_iter()
            .map(|(t, mut w)| {
                w.sort_by_key(|w| w.from_ms);
                (t, w)
            })
            .collect();
        Self { period_ms, windows }
    }

    /// The products the scenario names.
    pub fn products(&self) -> impl Iterator<Item = &ProductId> {
        self.windows.keys()
    }

    pub fn period_ms(&self) -> Option<u64> {
        self.period_ms
    }

    /// The product's scripted state `elapsed_ms` after start.
    pub fn state_at(&self, tcin: &ProductId, elapsed_ms: u64) -> ScriptedState {
        let Some(windows) = self.windows.get(tcin).filter(|w| !w.is_empty()) else {
            return ScriptedState {
                in_stock: false,
                price: None,
                last_boundary_ms: None,
            };
        };
        let phase = self.period_ms.map_or(elapsed_ms, |p| elapsed_ms % p);
        let open = windows
            .iter()
            .find(|w| w.from_ms <= phase && phase < w.to_ms);
        ScriptedState {
            in_stock: open.is_some(),
            price: open.and_then(|w| w.price),
            last_boundary_ms: last_boundary(windows, self.period_ms, elapsed_ms),
        }
    }
}

/// The latest window boundary at or before `t` (absolute ms since start).
fn last_boundary(windows: &[Window], period_ms: Option<u64>, t: u64) -> Option<u64> {
    let bounds = windows.iter().flat_map(|w| [w.from_ms, w.to_ms]);
    match period_ms {
        None => bounds.filter(|&b| b <= t).max(),
        Some(p) => {
            // A boundary b repeats at k*p + b. The latest one at or before t
            // is in this cycle or the one before (b may equal p).
            let cycle = t / p;
            let cycles = [cycle.checked_sub(1), Some(cycle)];
            bounds
                .flat_map(|b| cycles.iter().flatten().map(move |k| k * p + b))
                .filter(|&abs| abs <= t)
                .max()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tcin(s: &str) -> ProductId {
        ProductId::parse(s).unwrap()
    }

    #[test]
    fn windows_are_half_open_and_carry_their_price() {
        let s = Scenario::parse(
            r#"{"products":{"1":[{"from_ms":1000,"to_ms":2000,"price":19.99},{"from_ms":3000,"to_ms":4000}]}}"#,
            "s.json",
        )
        .unwrap();
        let one = tcin("1");
        let at = |t| s.state_at(&one, t);
        assert!(!at(0).in_stock);
        assert_eq!(at(0).last_boundary_ms, None);
        assert!(at(1000).in_stock);
        assert_eq!(at(1000).price, Some(Price::from_cents(1999)));
        assert_eq!(at(1000).last_boundary_ms, Some(1000));
        assert!(at(1999).in_stock);
        assert!(!at(2000).in_stock);
        assert_eq!(at(2500).last_boundary_ms, Some(2000));
        assert!(at(3500).in_stock);
        assert_eq!(at(3500).price, None);
        assert!(!at(10_000).in_stock);
        assert_eq!(at(10_000).last_boundary_ms, Some(4000));
        // Products the scenario does not name stay out of stock.
        assert!(!s.state_at(&tcin("2"), 1500).in_stock);
    }

    #[test]
    fn a_period_repeats_the_timeline() {
        let s = Scenario::parse(
            r#"{"period_ms":10000,"products":{"1":[{"from_ms":2000,"to_ms":5000}]}}"#,
            "s.json",
        )
        .unwrap();
        let one = tcin("1");
        let at = |t| s.state_at(&one, t);
        assert!(at(2000).in_stock && at(12_000).in_stock && at(94_999).in_stock);
        assert!(!at(5000).in_stock && !at(15_000).in_stock && !at(100_000).in_stock);
        assert_eq!(at(1000).last_boundary_ms, None);
        assert_eq!(at(3000).last_boundary_ms, Some(2000));
        assert_eq!(at(11_000).last_boundary_ms, Some(5000));
        assert_eq!(at(12_500).last_boundary_ms, Some(12_000));
        assert_eq!(at(16_000).last_boundary_ms, Some(15_000));
    }

    #[test]
    fn a_window_may_end_exactly_at_the_period() {
        let s = Scenario::parse(
            r#"{"period_ms":1000,"products":{"1":[{"from_ms":500,"to_ms":1000}]}}"#,
            "s.json",
        )
        .unwrap();
        let one = tcin("1");
        assert!(s.state_at(&one, 999).in_stock);
        assert!(!s.state_at(&one, 1000).in_stock);
        assert_eq!(s.state_at(&one, 1200).last_boundary_ms, Some(1000));
        assert!(s.state_at(&one, 1500).in_stock);
    }

    #[test]
    fn bad_scenarios_are_refused_with_the_file_name() {
        let cases = [
            (r#"{"products":{"1":[{"from_ms":5,"to_ms":5}]}}"#, "before"),
            (
                r#"{"products":{"1":[{"from_ms":0,"to_ms":5},{"from_ms":4,"to_ms":9}]}}"#,
                "overlap",
            ),
            (
                r#"{"period_ms":10,"products":{"1":[{"from_ms":0,"to_ms":11}]}}"#,
                "period_ms",
            ),
            (r#"{"period_ms":0,"products":{}}"#, "period_ms"),
            (
                r#"{"products":{"1":[{"from_ms":0,"to_ms":5,"price":-2}]}}"#,
                "price",
            ),
            (r#"{"products":{"a b":[]}}"#, "a b"),
            (
                r#"{"products":{"1":[{"from":0,"to_ms":5}]}}"#,
                "unknown field",
            ),
            ("{\n\"products\": [}", "line 2"),
        ];
        for (text, want) in cases {
            let err = Scenario::parse(text, "sc.json").unwrap_err().to_string();
            assert!(
                err.contains(want) && err.contains("sc.json"),
                "{text}: {err}"
            );
        }
    }
}

//! `docs/target-fixtures.md` checked against the parser: the table there
//! says, for each recorded Target answer, what the watcher reads in it; this
//! reads the table and the recordings and fails on any row that no longer
//! matches, so the document cannot drift from the code.

use std::path::PathBuf;

use serde_json::Value;

use restock_domain::ProductId;

use super::{
    SourceError,
    target::{Channels, classify, parse_price, parse_product, parse_summaries},
};

const TABLE: &str = include_str!("../../../../docs/target-fixtures.md");

fn recording(file: &str) -> Vec<u8> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/data/target")
        .join(file);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn stock_text(c: Channels) -> String {
    if !c.any() {
        return "out of stock".into();
    }
    let on: Vec<&str> = [
        ("shipping", c.shipping),
        ("pickup", c.pickup),
        ("delivery", c.delivery),
    ]
    .into_iter()
    .filter_map(|(name, on)| on.then_some(name))
    .collect();
    format!("in stock: {}", on.join(", "))
}

fn price_text(price: Option<restock_domain::Price>) -> String {
    price.map_or("no price".into(), |p| format!("price {}", p.formatted()))
}

fn error_text(e: &SourceError) -> String {
    let text = e.to_string();
    if text.contains("not in the answer") {
        "error: not in the answer".into()
    } else if text.contains("is about tcin") {
        "error: about another product".into()
    } else {
        format!("error: {text}")
    }
}

/// What the watcher says of `body`, in the table's words.
fn says(endpoint: &str, status: u16, body: &[u8], tcin: &ProductId) -> String {
    if let Some(r) = classify(status, body) {
        return format!("blocked: {}", r.kind);
    }
    let doc: Value = serde_json::from_slice(body).expect("recordings are JSON");
    match endpoint {
        "hierarchy" | "fulfillment" => match parse_product(body, tcin, None) {
            Ok(s) => {
                let c = Channels::read(&doc["data"]["product"]["fulfillment"], None);
                assert_eq!(s.in_stock, c.any(), "the sighting agrees with its channels");
                format!("{}; {}", stock_text(c), price_text(s.price))
            }
            Err(e) => error_text(&e),
        },
        "summary" => {
            let answers = parse_summaries(body, std::slice::from_ref(tcin), None).unwrap();
            match &answers[0].1 {
                Ok(s) => {
                    let product = doc["data"]["product_summaries"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .find(|p| p["tcin"] == tcin.as_str())
                        .unwrap();
                    let c = Channels::read(&product["fulfillment"], None);
                    assert_eq!(s.in_stock, c.any(), "the sighting agrees with its channels");
                    format!("{}; {}", stock_text(c), price_text(s.price))
                }
                Err(e) => error_text(e),
            }
        }
        "pdp_client" => match parse_price(body, tcin) {
            Ok(p) => price_text(p),
            Err(e) => error_text(&e),
        },
        other => panic!("unknown endpoint {other:?} in the table"),
    }
}

#[test]
fn every_row_of_the_fixtures_table_in_docs_matches_the_parser() {
    let rows: Vec<Vec<&str>> = TABLE
        .lines()
        .filter(|l| l.starts_with("| `"))
        .map(|l| {
            l.trim()
                .trim_matches('|')
                .split('|')
                .map(str::trim)
                .collect()
        })
        .collect();
    assert!(rows.len() >= 10, "the table has {} rows", rows.len());
    for row in rows {
        let [file, endpoint, tcin, status, want] = row[..] else {
            panic!("a row of five cells: {row:?}");
        };
        let file = file.trim_matches('`');
        let tcin = ProductId::parse(tcin).unwrap();
        let status: u16 = status.parse().unwrap();
        let got = says(endpoint, status, &recording(file), &tcin);
        assert_eq!(got, want, "{file} ({endpoint}, tcin {tcin})");
    }
}

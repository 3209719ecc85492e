//! Random restocks and sell-outs, reproducible from a seed: every product
//! starts out of stock, comes into stock after a random wait whose mean is
//! `restock_every`, stays in stock for a random time whose mean is
//! `in_stock_for`, and so on. Waits are exponentially distributed (a Poisson
//! process, as real restocks look), at least 1 ms.
//!
//! Each product has its own generator, seeded from the seed and the product
//! id, so one product's timeline does not depend on which other products are
//! configured. The timeline is generated lazily as time is asked about,
//! which keeps it a pure function of (seed, id, elapsed time).

use std::{collections::HashMap, time::Duration};

use rand::{Rng, SeedableRng, rngs::StdRng};

use restock_domain::ProductId;

/// What the random timeline says about one product at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RandomState {
    pub in_stock: bool,
    /// When the product last changed state, in ms since start; `None`
    /// before its first restock.
    pub last_change_ms: Option<u64>,
}

#[derive(Debug)]
struct Timeline {
    rng: StdRng,
    in_stock: bool,
    last_change_ms: Option<u64>,
    next_change_ms: u64,
}

/// The random timelines of every product.
#[derive(Debug)]
pub struct RandomRestocks {
    seed: u64,
    restock_every_ms: f64,
    in_stock_for_ms: f64,
    timelines: HashMap<ProductId, Timeline>,
}

impl RandomRestocks {
    /// Timelines for these products. Means shorter than 1 ms count as 1 ms.
    pub fn new<'a>(
        seed: u64,
        restock_every: Duration,
        in_stock_for: Duration,
        products: impl IntoIterator<Item = &'a ProductId>,
    ) -> Self {
        let restock_every_ms = (restock_every.as_secs_f64() * 1000.0).max(1.0);
        let in_stock_for_ms = (in_stock_for.as_secs_f64() * 1000.0).max(1.0);
        let timelines = products
            .into_iter()
            .map(|t| {
                let mut rng = StdRng::seed_from_u64(seed ^ fnv1a(t.as_str()));
                let first = sample(&mut rng, restock_every_ms);
                let timeline = Timeline {
                    rng,
                    in_stock: false,
                    last_change_ms: None,
                    next_change_ms: first,
                };
                (t.clone(), timeline)
            })
            .collect();
        Self {
            seed,
            restock_every_ms,
            in_stock_for_ms,
            timelines,
        }
    }

    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// The product's state `elapsed_ms` after start. Time is expected to
    /// move forward; asking about an earlier moment returns the latest
    /// state computed. Unknown products are out of stock.
    pub fn state_at(&mut self, tcin: &ProductId, elapsed_ms: u64) -> RandomState {
        let Some(tl) = self.timelines.get_mut(tcin) else {
            return RandomState {
                in_stock: false,
                last_change_ms: None,
            };
        };
        while tl.next_change_ms <= elapsed_ms {
            tl.in_stock = !tl.in_stock;
            tl.last_change_ms = Some(tl.next_change_ms);
            let mean = if tl.in_stock {
                self.in_stock_for_ms
            } else {
                self.restock_every_ms
            };
            tl.next_change_ms = tl.next_change_ms.saturating_add(sample(&mut tl.rng, mean));
        }
        RandomState {
            in_stock: tl.in_stock,
            last_change_ms: tl.last_change_ms,
        }
    }
}

/// An exponentially distributed wait with this mean, in whole ms (>= 1).
fn sample(rng: &mut StdRng, mean_ms: f64) -> u64 {
    let u: f64 = rng.random(); // [0, 1)
    let ms = -mean_ms * (1.0 - u).ln();
    // Cap far-out samples so additions cannot overflow in practice.
    (ms.round() as u64).clamp(1, 1 << 48)
}

/// FNV-1a: a stable hash (std's hasher is randomly keyed per process).
fn fnv1a(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(names: &[&str]) -> Vec<ProductId> {
        names.iter().map(|n| ProductId::parse(n).unwrap()).collect()
    }

    fn trace(r: &mut RandomRestocks, t: &ProductId, until_ms: u64) -> Vec<bool> {
        (0..until_ms)
            .step_by(100)
            .map(|ms| r.state_at(t, ms).in_stock)
            .collect()
    }

    #[test]
    fn the_same_seed_gives_the_same_timeline_whatever_the_other_products() {
        let a = ids(&["1", "2"]);
        let b = ids(&["9", "1"]);
        let (every, stay) = (Duration::from_secs(2), Duration::from_secs(1));
        let mut ra = RandomRestocks::new(7, every, stay, &a);
        let mut rb = RandomRestocks::new(7, every, stay, &b);
        assert_eq!(trace(&mut ra, &a[0], 60_000), trace(&mut rb, &b[1], 60_000));
        let mut other = RandomRestocks::new(8, every, stay, &a);
        assert_ne!(
            trace(&mut ra, &a[0], 60_000),
            trace(&mut other, &a[0], 60_000)
        );
    }

    #[test]
    fn products_start_out_of_stock_and_spend_about_the_expected_share_in_stock() {
        let t = ids(&["42"]);
        let mut r = RandomRestocks::new(1, Duration::from_secs(3), Duration::from_secs(1), &t);
        let first = r.state_at(&t[0], 0);
        assert_eq!(
            first,
            RandomState {
                in_stock: false,
                last_change_ms: None
            }
        );
        // Over ~2500 cycles the in-stock share is close to 1 / (3 + 1).
        let samples = trace(&mut r, &t[0], 10_000_000);
        let share = samples.iter().filter(|s| **s).count() as f64 / samples.len() as f64;
        assert!(
            (0.2..0.3).contains(&share),
            "in stock {share:.3} of the time"
        );
    }

    #[test]
    fn last_change_is_reported_and_never_in_the_future() {
        let t = ids(&["5"]);
        let mut r =
            RandomRestocks::new(3, Duration::from_millis(50), Duration::from_millis(50), &t);
        let mut changes = 0;
        let mut prev = r.state_at(&t[0], 0);
        for ms in 1..5_000 {
            let s = r.state_at(&t[0], ms);
            if let Some(c) = s.last_change_ms {
                assert!(c <= ms);
            }
            if s.in_stock != prev.in_stock {
                changes += 1;
                assert_eq!(s.last_change_ms, Some(ms));
            }
            prev = s;
        }
        assert!(changes > 20, "{changes} changes");
    }
}

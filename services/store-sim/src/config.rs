//! Command-line flags, each with an environment variable, and their defaults.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use clap::{ArgAction, Parser, builder::BoolishValueParser};
use restock_domain::duration::parse_duration;
use restock_runtime::{LogArgs, ReadyFileArgs};

pub const DEFAULT_LISTEN: &str = "0.0.0.0:8080";
pub const DEFAULT_CONFIG: &str = "config/product_config.json";
pub const DEFAULT_PRICE: &str = "9.99";
pub const DEFAULT_RESTOCK_EVERY: &str = "20s";
pub const DEFAULT_IN_STOCK_FOR: &str = "10s";
pub const DEFAULT_CHECKOUT_DELAY: &str = "300ms";
pub const DEFAULT_SHUTDOWN_GRACE: &str = "3s";
/// Shortest mean accepted for the random timelines.
pub const MIN_RANDOM_MEAN: Duration = Duration::from_millis(10);
/// Longest checkout delay accepted (flag and admin API).
pub const MAX_CHECKOUT_DELAY: Duration = Duration::from_secs(3600);

/// A path that may be empty (meaning "none"): clap's own path parser
/// refuses empty values, and `STORE_SIM_SCENARIO=` is a natural way to say
/// "no scenario" in a compose file.
fn parse_optional_path(s: &str) -> Result<PathBuf, String> {
    Ok(PathBuf::from(s))
}

/// Parses a price in dollars like `9.99`.
pub fn parse_dollars(s: &str) -> Result<f64, String> {
    let d: f64 = s
        .trim()
        .parse()
        .map_err(|_| format!("{s:?} is not a price in dollars like 9.99"))?;
    restock_domain::Price::from_dollars(d)?;
    Ok(d)
}

/// The store simulator's settings.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "store-sim",
    version,
    about = "Plays the retailers: Target's RedSky answers and Shopify storefronts as recorded, with scripted, random or manual stock, blocks and faults on demand, and a checkout that checks fencing tokens and records overlaps"
)]
pub struct SimConfig {
    /// Address to serve HTTP on.
    #[arg(long, env = "STORE_SIM_LISTEN", default_value = DEFAULT_LISTEN)]
    pub listen: SocketAddr,

    /// Product list, in the arbiter's format.
    #[arg(long, env = "STORE_SIM_CONFIG", default_value = DEFAULT_CONFIG)]
    pub config: PathBuf,

    /// Scenario file: in-stock windows per product (see the README). An
    /// empty value means none. Not together with --random.
    #[arg(
        long,
        env = "STORE_SIM_SCENARIO",
        value_parser = parse_optional_path
    )]
    pub scenario: Option<PathBuf>,

    /// Random restocks and sell-outs (seeded; see --seed, --restock-every,
    /// --in-stock-for).
    #[arg(
        long,
        env = "STORE_SIM_RANDOM",
        value_parser = BoolishValueParser::new(),
        num_args = 0..=1,
        default_value = "false",
        default_missing_value = "true",
        action = ArgAction::Set
    )]
    pub random: bool,

    /// Seed of the random timelines; the same seed gives the same restocks.
    /// Without it a seed is picked and logged.
    #[arg(long, env = "STORE_SIM_SEED")]
    pub seed: Option<u64>,

    /// With --random: mean time a product stays out of stock before a restock.
    #[arg(long, env = "STORE_SIM_RESTOCK_EVERY", default_value = DEFAULT_RESTOCK_EVERY, value_parser = parse_duration)]
    pub restock_every: Duration,

    /// With --random: mean time a product stays in stock.
    #[arg(long, env = "STORE_SIM_IN_STOCK_FOR", default_value = DEFAULT_IN_STOCK_FOR, value_parser = parse_duration)]
    pub in_stock_for: Duration,

    /// Price, in dollars, of products whose config has no max_price.
    #[arg(long, env = "STORE_SIM_DEFAULT_PRICE", default_value = DEFAULT_PRICE, value_parser = parse_dollars)]
    pub default_price: f64,

    /// How long an accepted checkout takes (changeable at run time with
    /// `PUT /admin/checkout`).
    #[arg(long, env = "STORE_SIM_CHECKOUT_DELAY", default_value = DEFAULT_CHECKOUT_DELAY, value_parser = parse_duration)]
    pub checkout_delay: Duration,

    /// On SIGTERM/SIGINT, how long running requests (checkouts) may take to
    /// finish before the server stops anyway.
    #[arg(long, env = "STORE_SIM_SHUTDOWN_GRACE", default_value = DEFAULT_SHUTDOWN_GRACE, value_parser = parse_duration)]
    pub shutdown_grace: Duration,

    #[command(flatten)]
    pub log: LogArgs,

    #[command(flatten)]
    pub ready: ReadyFileArgs,
}

impl SimConfig {
    /// Checks values that parse but make no sense.
    pub fn validate(&self) -> Result<(), String> {
        if self.random && self.scenario_path().is_some() {
            return Err("--scenario and --random cannot be used together; pick one".into());
        }
        if self.random {
            for (flag, d) in [
                ("--restock-every", self.restock_every),
                ("--in-stock-for", self.in_stock_for),
            ] {
                if d < MIN_RANDOM_MEAN {
                    return Err(format!(
                        "{flag} {d:?} is too short; at least {MIN_RANDOM_MEAN:?}"
                    ));
                }
            }
        }
        if self.checkout_delay > MAX_CHECKOUT_DELAY {
            return Err(format!(
                "--checkout-delay {:?} is too long; at most {MAX_CHECKOUT_DELAY:?}",
                self.checkout_delay
            ));
        }
        Ok(())
    }

    /// The scenario file, if one is set (an empty value means none).
    pub fn scenario_path(&self) -> Option<&PathBuf> {
        self.scenario.as_ref().filter(|p| !p.as_os_str().is_empty())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_work_out_of_the_box() {
        let c = SimConfig::try_parse_from(["store-sim"]).unwrap();
        assert_eq!(c.listen.to_string(), DEFAULT_LISTEN);
        assert_eq!(c.config, PathBuf::from(DEFAULT_CONFIG));
        assert_eq!(c.checkout_delay, Duration::from_millis(300));
        assert!(!c.random && c.scenario_path().is_none());
        assert!((c.default_price - 9.99).abs() < 1e-9);
        c.validate().unwrap();
    }

    #[test]
    fn random_takes_a_bare_flag_and_conflicts_with_a_scenario() {
        let c =
            SimConfig::try_parse_from(["s", "--random", "--seed", "7", "--restock-every", "2s"])
                .unwrap();
        assert!(c.random);
        assert_eq!(c.seed, Some(7));
        assert_eq!(c.restock_every, Duration::from_secs(2));
        let both = SimConfig::try_parse_from(["s", "--random", "--scenario", "x.json"]).unwrap();
        assert!(both.validate().unwrap_err().contains("--scenario"));
        let empty = SimConfig::try_parse_from(["s", "--random", "--scenario="]).unwrap();
        assert!(empty.scenario_path().is_none());
        empty.validate().unwrap();
        let short = SimConfig::try_parse_from(["s", "--random", "--in-stock-for", "1ms"]).unwrap();
        assert!(short.validate().unwrap_err().contains("--in-stock-for"));
    }

    #[test]
    fn durations_and_prices_are_checked() {
        let c = SimConfig::try_parse_from(["s", "--checkout-delay", "2"]).unwrap();
        assert_eq!(c.checkout_delay, Duration::from_secs(2));
        assert!(parse_dollars("-1").is_err());
        assert!(parse_dollars("cheap").is_err());
        assert!(SimConfig::try_parse_from(["s", "--checkout-delay", "soon"]).is_err());
    }
}

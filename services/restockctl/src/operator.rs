//! Operator commands: `reset`, `pause`, `resume`, `reload`, and `acquire`,
//! `renew`, `release` for trying the slot by hand. Each makes one unary call (at the
//! leader, when `--arbiter` lists replicas) and prints its answer as a
//! sentence or as JSON.

use std::io::Write;

use restock_proto::v1 as pb;
use serde::Serialize;

use crate::{
    cli::{BudgetCommand, OutcomeArg},
    client::Target,
    error::{CtlError, EXIT_NEGATIVE, EXIT_OK},
    format::{BudgetJson, LeaseJson, budget_line, duration_ms, now_unix_ms, state_name, time},
};

fn print_json(out: &mut dyn Write, value: &impl Serialize) -> Result<(), CtlError> {
    serde_json::to_writer_pretty(&mut *out, value).map_err(std::io::Error::from)?;
    writeln!(out)?;
    Ok(())
}

/// `reset TCIN`.
pub async fn reset(
    target: &Target,
    tcin: &str,
    json: bool,
    out: &mut dyn Write,
) -> Result<u8, CtlError> {
    let r = target
        .leader_call("ResetProduct", |mut c| {
            let req = pb::ResetProductRequest {
                tcin: tcin.to_owned(),
            };
            async move { c.reset_product(req).await }
        })
        .await?;
    let previous = state_name(r.previous_state);
    if json {
        #[derive(Serialize)]
        struct Reset<'a> {
            tcin: &'a str,
            previous_state: String,
        }
        print_json(
            out,
            &Reset {
                tcin,
                previous_state: previous,
            },
        )?;
    } else {
        writeln!(out, "product {tcin} reset to READY (was {previous})")?;
    }
    Ok(EXIT_OK)
}

/// `pause` and `resume`.
pub async fn set_paused(
    target: &Target,
    paused: bool,
    json: bool,
    out: &mut dyn Write,
) -> Result<u8, CtlError> {
    let r = target
        .leader_call("SetPaused", |mut c| {
            let req = pb::SetPausedRequest { paused };
            async move { c.set_paused(req).await }
        })
        .await?;
    if json {
        #[derive(Serialize)]
        struct Paused {
            paused: bool,
        }
        print_json(out, &Paused { paused: r.paused })?;
    } else if r.paused {
        writeln!(
            out,
            "arbiter paused: nothing is granted until `restockctl resume`; a current lease runs to its end"
        )?;
    } else {
        writeln!(out, "arbiter resumed: purchases are granted again")?;
    }
    Ok(EXIT_OK)
}

/// `budget show|set|use-config|reset`.
pub async fn budget(
    target: &Target,
    cmd: BudgetCommand,
    json: bool,
    out: &mut dyn Write,
) -> Result<u8, CtlError> {
    let req = match cmd {
        BudgetCommand::Show => {
            let (_, _, status) = target.find_leader().await?;
            let b = status.budget.unwrap_or_default();
            print_budget(&b, "", json, out)?;
            return Ok(EXIT_OK);
        }
        BudgetCommand::Set {
            max_spend,
            max_purchases,
            window,
            none,
            reason,
        } => pb::SetBudgetRequest {
            limits: (!none).then(|| pb::BudgetLimits {
                max_spend_cents: max_spend,
                max_purchases,
                window_ms: window.map_or(0, |w| w.as_millis() as u64),
            }),
            lift: none,
            reason,
            ..Default::default()
        },
        BudgetCommand::UseConfig { reason } => pb::SetBudgetRequest {
            use_config: true,
            reason,
            ..Default::default()
        },
        BudgetCommand::Reset { reason } => pb::SetBudgetRequest {
            reset_spend: true,
            reason,
            ..Default::default()
        },
    };
    let r = target
        .leader_call("SetBudget", |mut c| {
            let req = req.clone();
            async move { c.set_budget(req).await }
        })
        .await?;
    let b = r.budget.unwrap_or_default();
    print_budget(&b, "budget changed: ", json, out)?;
    Ok(EXIT_OK)
}

fn print_budget(
    b: &pb::BudgetStatus,
    lead: &str,
    json: bool,
    out: &mut dyn Write,
) -> Result<(), CtlError> {
    if json {
        print_json(out, &BudgetJson::from(b))
    } else {
        writeln!(out, "{lead}{}", budget_line(b, now_unix_ms()))?;
        Ok(())
    }
}

/// `reload`.
pub async fn reload(target: &Target, json: bool, out: &mut dyn Write) -> Result<u8, CtlError> {
    let r = target
        .leader_call("ReloadConfig", |mut c| {
            let req = pb::ReloadConfigRequest {};
            async move { c.reload_config(req).await }
        })
        .await?;
    if json {
        #[derive(Serialize)]
        struct Reloaded {
            products: u32,
            config_path: String,
        }
        print_json(
            out,
            &Reloaded {
                products: r.products,
                config_path: r.config_path,
            },
        )?;
    } else {
        writeln!(
            out,
            "product config reloaded from {}: {} products",
            r.config_path, r.products
        )?;
    }
    Ok(EXIT_OK)
}

/// `acquire TCIN --watcher-id W [--request-id R]`: exits 1 when refused.
pub async fn acquire(
    target: &Target,
    tcin: &str,
    watcher_id: &str,
    request_id: Option<&str>,
    json: bool,
    out: &mut dyn Write,
) -> Result<u8, CtlError> {
    let r = target
        .leader_call("AcquirePurchase", |mut c| {
            let req = pb::AcquirePurchaseRequest {
                tcin: tcin.to_owned(),
                watcher_id: watcher_id.to_owned(),
                request_id: request_id.unwrap_or_default().to_owned(),
            };
            async move { c.acquire_purchase(req).await }
        })
        .await?;
    if json {
        #[derive(Serialize)]
        struct Acquired {
            granted: bool,
            lease: Option<LeaseJson>,
            reason: String,
            detail: String,
            holder_tcin: String,
            holder_watcher_id: String,
            pending_tcin: String,
            retry_after_ms: u64,
        }
        print_json(
            out,
            &Acquired {
                granted: r.granted,
                lease: r.lease.as_ref().map(LeaseJson::from),
                reason: r.reason.clone(),
                detail: r.detail.clone(),
                holder_tcin: r.holder_tcin.clone(),
                holder_watcher_id: r.holder_watcher_id.clone(),
                pending_tcin: r.pending_tcin.clone(),
                retry_after_ms: r.retry_after_ms,
            },
        )?;
    } else {
        match (&r.lease, r.granted) {
            (Some(l), true) => {
                writeln!(
                    out,
                    "granted: product {} to watcher {}",
                    l.tcin, l.watcher_id
                )?;
                writeln!(out, "  lease    {}", l.lease_id)?;
                writeln!(out, "  token    {}", l.fencing_token)?;
                writeln!(
                    out,
                    "  expires  in {} ({}) unless renewed",
                    duration_ms(l.remaining_ms),
                    time(l.expires_at_unix_ms)
                )?;
                writeln!(
                    out,
                    "release with: restockctl release {} {} --outcome purchased",
                    l.lease_id, l.fencing_token
                )?;
            }
            _ => {
                // The detail already names the holder, the waiting product
                // or the cool-down.
                writeln!(out, "refused: {}: {}", r.reason, r.detail)?;
            }
        }
    }
    Ok(if r.granted { EXIT_OK } else { EXIT_NEGATIVE })
}

/// `renew LEASE_ID TOKEN`.
pub async fn renew(
    target: &Target,
    lease_id: &str,
    token: u64,
    json: bool,
    out: &mut dyn Write,
) -> Result<u8, CtlError> {
    let r = target
        .leader_call("RenewLease", |mut c| {
            let req = pb::RenewLeaseRequest {
                lease_id: lease_id.to_owned(),
                fencing_token: token,
            };
            async move { c.renew_lease(req).await }
        })
        .await?;
    let lease = r.lease.unwrap_or_default();
    if json {
        print_json(out, &LeaseJson::from(&lease))?;
    } else {
        writeln!(
            out,
            "renewed lease {} (product {}, token {}): {} left, until {}",
            lease.lease_id,
            lease.tcin,
            lease.fencing_token,
            duration_ms(lease.remaining_ms),
            time(lease.expires_at_unix_ms)
        )?;
    }
    Ok(EXIT_OK)
}

/// `release LEASE_ID TOKEN --outcome O [--detail D]`.
pub async fn release(
    target: &Target,
    lease_id: &str,
    token: u64,
    (outcome, paid): (OutcomeArg, Option<u64>),
    detail: Option<&str>,
    json: bool,
    out: &mut dyn Write,
) -> Result<u8, CtlError> {
    let outcome = pb::Outcome::from(outcome);
    let r = target
        .leader_call("ReleasePurchase", |mut c| {
            let req = pb::ReleasePurchaseRequest {
                lease_id: lease_id.to_owned(),
                fencing_token: token,
                outcome: outcome as i32,
                detail: detail.unwrap_or_default().to_owned(),
                paid_price_cents: paid,
            };
            async move { c.release_purchase(req).await }
        })
        .await?;
    let state = state_name(r.product_state);
    if json {
        #[derive(Serialize)]
        struct Released {
            released: bool,
            product_state: String,
        }
        print_json(
            out,
            &Released {
                released: r.released,
                product_state: state,
            },
        )?;
    } else if r.released {
        writeln!(
            out,
            "released lease {lease_id} (token {token}) as {}: the product is now {state}",
            crate::format::outcome_word(outcome as i32)
        )?;
    } else {
        writeln!(
            out,
            "lease {lease_id} was already released with this outcome (a harmless retry); the product is {state}"
        )?;
    }
    Ok(EXIT_OK)
}

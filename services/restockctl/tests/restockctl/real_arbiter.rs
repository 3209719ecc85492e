//! `restockctl` against the real arbiter: run in this process on a port of
//! its own with its own state file (`restock_testkit::spawn_arbiter`), or,
//! where the test restarts it, the `purchase-arbiter` binary
//! (`restock_testkit::ArbiterProcess`), killed on drop.

use std::time::Duration;

use restock_proto::v1::{
    self as pb, AcquirePurchaseRequest, ReleasePurchaseRequest, RenewLeaseRequest,
};
use restock_testkit::{
    ArbiterEndpoint, ArbiterOptions, ArbiterProcess, InProcessArbiter, StoreSimProcess,
    WatcherProcess, eventually, products_json, purchased, spawn_arbiter_with,
};

use crate::helpers::{Background, ctl};

fn options(test_mode: bool) -> ArbiterOptions {
    ArbiterOptions {
        test_mode,
        ..ArbiterOptions::default()
    }
}

async fn arbiter(test_mode: bool) -> InProcessArbiter {
    spawn_arbiter_with(options(test_mode)).await
}

/// `restockctl --arbiter URL args...`
async fn ctl_at(a: &impl ArbiterEndpoint, args: &[&str]) -> crate::helpers::Output {
    let url = a.url();
    let mut all = vec!["--arbiter", url.as_str()];
    all.extend_from_slice(args);
    ctl(&all).await
}

/// `acquire --json`; returns (lease id, token).
async fn acquire(a: &impl ArbiterEndpoint, tcin: &str) -> (String, u64) {
    let out = ctl_at(a, &["--json", "acquire", tcin, "--watcher-id", "w1"]).await;
    assert_eq!(out.code, 0, "{}", out.show());
    let v = out.json();
    assert_eq!(v["granted"], true, "{}", out.show());
    (
        v["lease"]["lease_id"].as_str().unwrap().to_owned(),
        v["lease"]["fencing_token"].as_u64().unwrap(),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn status_shows_the_slot_products_and_counters() {
    let a = arbiter(false).await;
    let (lease_id, token) = acquire(&a, "200").await;
    assert_eq!(token, 1);

    let out = ctl_at(&a, &["status"]).await;
    assert_eq!(out.code, 0, "{}", out.show());
    let text = &out.stdout;
    assert!(text.contains("mode normal, running"), "{text}");
    assert!(
        text.contains("held by product 200 (watcher w1), token 1,"),
        "{text}"
    );
    assert!(text.contains(&format!("lease {lease_id}")), "{text}");
    // Every product in priority order, with its state.
    let rows: Vec<Vec<&str>> = text
        .lines()
        .skip_while(|l| !l.starts_with("Products"))
        .skip(2)
        .take(3)
        .map(|l| l.split_whitespace().take(4).collect())
        .collect();
    assert_eq!(
        rows,
        [
            ["1", "target", "100", "READY"],
            ["2", "target", "200", "ATTEMPTING"],
            ["3", "target", "300", "READY"]
        ],
        "{text}"
    );
    assert!(text.contains("(none has connected)"), "{text}");
    assert!(text.contains("Counters  1 grants, 0 purchases"), "{text}");

    let out = ctl_at(&a, &["status", "--json"]).await;
    assert_eq!(out.code, 0, "{}", out.show());
    let v = out.json();
    assert_eq!(v["arbiter"], a.url());
    assert_eq!(v["active_lease"]["lease_id"], lease_id.as_str());
    assert_eq!(v["active_lease"]["fencing_token"], 1);
    assert_eq!(v["products"][1]["tcin"], "200");
    assert_eq!(v["products"][1]["state"], "ATTEMPTING");
    assert_eq!(v["products"][0]["priority"], 1);
    assert_eq!(v["next_fencing_token"], 2);
    assert_eq!(v["counters"]["grants"], 1);
    assert_eq!(v["last_event_sequence"], 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn events_prints_the_history_one_line_per_event() {
    let a = arbiter(false).await;
    let (lease_id, token) = acquire(&a, "100").await;
    let out = ctl_at(
        &a,
        &[
            "release",
            &lease_id,
            &token.to_string(),
            "--outcome",
            "purchased",
            "--detail",
            "order 42",
        ],
    )
    .await;
    assert_eq!(out.code, 0, "{}", out.show());

    let out = ctl_at(&a, &["events"]).await;
    assert_eq!(out.code, 0, "{}", out.show());
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(lines.len(), 3, "{}", out.show());
    assert!(
        lines[0].starts_with("#1 ") && lines[0].contains(" ARBITER_STARTED "),
        "{}",
        lines[0]
    );
    assert!(
        lines[1].starts_with("#2 ")
            && lines[1].contains(&format!(
                " GRANTED 100 READY->ATTEMPTING watcher=w1 token=1 lease={lease_id}"
            )),
        "{}",
        lines[1]
    );
    assert!(
        lines[2].starts_with("#3 ")
            && lines[2].contains(" RELEASED 100 ATTEMPTING->PURCHASED outcome=purchased")
            && lines[2].ends_with("detail=\"order 42\""),
        "{}",
        lines[2]
    );

    let out = ctl_at(&a, &["events", "--from", "3", "--json"]).await;
    assert_eq!(out.code, 0, "{}", out.show());
    let events: Vec<serde_json::Value> = out
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).expect("one JSON object per line"))
        .collect();
    assert_eq!(events.len(), 1, "{}", out.show());
    assert_eq!(events[0]["sequence"], 3);
    assert_eq!(events[0]["kind"], "RELEASED");
    assert_eq!(events[0]["outcome"], "OUTCOME_PURCHASED");
    assert_eq!(events[0]["to_state"], "PURCHASED");

    // Nothing after the newest event: nothing printed, success.
    let out = ctl_at(&a, &["events", "--from", "99"]).await;
    assert_eq!((out.code, out.stdout.as_str()), (0, ""), "{}", out.show());
}

#[tokio::test(flavor = "multi_thread")]
async fn events_follow_resumes_after_the_arbiter_restarts() {
    let mut a = ArbiterProcess::start(options(false)).await;
    let url = a.url();
    let follow = Background::start(&["--arbiter", &url, "events", "--follow", "--from", "2"]);
    let (lease_id, _) = acquire(&a, "100").await;
    follow.wait_for(false, "#2 ", Duration::from_secs(20)).await;

    // kill -9 and start again on the same port and state file: the stream
    // breaks, restockctl retries with backoff and resumes after #2.
    a.kill9_and_restart().await;
    follow
        .wait_for(false, "ARBITER_STARTED", Duration::from_secs(30))
        .await;
    let out = ctl_at(&a, &["release", &lease_id, "1", "--outcome", "aborted"]).await;
    assert_eq!(out.code, 0, "{}", out.show());
    follow
        .wait_for(
            false,
            "RELEASED 100 ATTEMPTING->READY outcome=aborted",
            Duration::from_secs(20),
        )
        .await;
    follow
        .wait_for(true, "event stream resumed from #3", Duration::from_secs(5))
        .await;
    let lines = follow.stdout_lines();
    let grants = lines.iter().filter(|l| l.contains(" GRANTED ")).count();
    assert_eq!(grants, 1, "no event twice: {lines:#?}");
    assert!(
        follow
            .stderr_lines()
            .iter()
            .any(|l| l.contains("event stream from") && l.contains("lost")),
        "{:#?}",
        follow.stderr_lines()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn monitor_in_test_mode_reports_clean_cycles() {
    let a = arbiter(true).await;
    let monitor = Background::monitor_json(&a.url(), "6s").await;

    // No watcher binary yet: the test plays one, with unary calls. In
    // TEST_MODE the same top product is bought again every cycle.
    let mut client = a.client().await;
    const CYCLES: usize = 5;
    for i in 0..CYCLES {
        let lease = client
            .acquire_purchase(AcquirePurchaseRequest {
                tcin: "100".into(),
                watcher_id: "w1".into(),
                request_id: format!("cycle-{i}"),
            })
            .await
            .expect("AcquirePurchase")
            .into_inner()
            .lease
            .expect("granted");
        client
            .renew_lease(RenewLeaseRequest {
                lease_id: lease.lease_id.clone(),
                fencing_token: lease.fencing_token,
            })
            .await
            .expect("RenewLease");
        client
            .release_purchase(ReleasePurchaseRequest {
                lease_id: lease.lease_id,
                fencing_token: lease.fencing_token,
                outcome: pb::Outcome::Purchased as i32,
                detail: format!("order {i}"),
                paid_price_cents: None,
            })
            .await
            .expect("ReleasePurchase");
    }

    let out = monitor.finish(Duration::from_secs(30)).await;
    assert_eq!(out.code, 0, "{}", out.show());
    let report = out.json();
    assert_eq!(report["clean"], true, "{}", out.show());
    assert_eq!(report["problems"], serde_json::json!([]), "{}", out.show());
    assert_eq!(report["warnings"], serde_json::json!([]), "{}", out.show());
    let summary = &report["summary"];
    assert_eq!(summary["cycles_completed"], CYCLES, "{}", out.show());
    assert_eq!(summary["cycles_open"], 0);
    assert_eq!(summary["outcomes"]["OUTCOME_PURCHASED"], CYCLES);
    assert_eq!(summary["renewals"], CYCLES);
    assert!(summary["cycle_time_median_ms"].is_u64(), "{}", out.show());
    assert!(
        summary["snapshots"].as_u64().unwrap() >= 2,
        "{}",
        out.show()
    );
    let cycles = report["cycles"].as_array().unwrap();
    assert!(
        cycles
            .iter()
            .all(|c| c["tcin"] == "100" && c["watcher_id"] == "w1"),
        "{}",
        out.show()
    );
    let tokens: Vec<u64> = cycles
        .iter()
        .map(|c| c["fencing_token"].as_u64().unwrap())
        .collect();
    assert_eq!(tokens, [1, 2, 3, 4, 5]);
    assert!(
        out.stderr
            .contains("cycle 5 done: product 100 by w1 (token 5), purchased"),
        "{}",
        out.show()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn operator_commands_steer_the_arbiter_and_name_what_failed() {
    let a = arbiter(false).await;

    let out = ctl_at(&a, &["pause"]).await;
    assert_eq!(out.code, 0, "{}", out.show());
    assert!(out.stdout.starts_with("arbiter paused"), "{}", out.show());
    let out = ctl_at(&a, &["acquire", "100", "--watcher-id", "w1"]).await;
    assert_eq!(out.code, 1, "refused is exit 1: {}", out.show());
    assert!(
        out.stdout.starts_with("refused: paused: "),
        "{}",
        out.show()
    );
    let out = ctl_at(&a, &["--json", "resume"]).await;
    assert_eq!(out.json()["paused"], false, "{}", out.show());

    let (lease_id, token) = acquire(&a, "100").await;
    let out = ctl_at(&a, &["renew", &lease_id, &token.to_string()]).await;
    assert_eq!(out.code, 0, "{}", out.show());
    assert!(
        out.stdout.starts_with(&format!(
            "renewed lease {lease_id} (product 100, token 1): "
        )),
        "{}",
        out.show()
    );
    let out = ctl_at(&a, &["renew", &lease_id, "9"]).await;
    assert_eq!(out.code, 4, "{}", out.show());
    assert!(
        out.stderr
            .starts_with("restockctl: RenewLease failed: FAILED_PRECONDITION: "),
        "{}",
        out.show()
    );

    let out = ctl_at(
        &a,
        &["release", &lease_id, "1", "--outcome", "out-of-stock"],
    )
    .await;
    assert_eq!(out.code, 0, "{}", out.show());
    assert!(
        out.stdout
            .contains("as out-of-stock: the product is now READY"),
        "{}",
        out.show()
    );
    let out = ctl_at(&a, &["release", &lease_id, "1", "--outcome", "failed"]).await;
    assert_eq!(out.code, 4, "{}", out.show());
    assert!(
        out.stderr
            .contains("ReleasePurchase failed: FAILED_PRECONDITION: "),
        "{}",
        out.show()
    );

    let (lease_id, _) = acquire(&a, "200").await;
    let out = ctl_at(&a, &["release", &lease_id, "2", "--outcome", "purchased"]).await;
    assert_eq!(out.code, 0, "{}", out.show());
    let out = ctl_at(&a, &["acquire", "200", "--watcher-id", "w1"]).await;
    assert_eq!(out.code, 1, "{}", out.show());
    assert!(
        out.stdout.starts_with("refused: already_purchased: "),
        "{}",
        out.show()
    );
    let out = ctl_at(&a, &["reset", "200"]).await;
    assert_eq!(
        (out.code, out.stdout.trim()),
        (0, "product 200 reset to READY (was PURCHASED)"),
        "{}",
        out.show()
    );
    let out = ctl_at(&a, &["reset", "999"]).await;
    assert_eq!(out.code, 4, "{}", out.show());
    assert!(
        out.stderr
            .contains("ResetProduct failed: NOT_FOUND: product 999 is not known"),
        "{}",
        out.show()
    );

    let out = ctl_at(&a, &["reload"]).await;
    assert_eq!(out.code, 0, "{}", out.show());
    assert!(
        out.stdout.starts_with("product config reloaded from ")
            && out.stdout.trim_end().ends_with(": 3 products"),
        "{}",
        out.show()
    );

    let out = ctl_at(&a, &["health"]).await;
    assert_eq!(out.code, 0, "{}", out.show());
    let out = ctl_at(&a, &["health", "--service", "restock.v1.PurchaseArbiter"]).await;
    assert_eq!(out.code, 0, "{}", out.show());
}

#[tokio::test(flavor = "multi_thread")]
async fn the_arbiter_address_comes_from_the_environment_too() {
    let a = arbiter(false).await;
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_restockctl"))
        .arg("health")
        .env("RESTOCK_ARBITER", a.addr().to_string())
        .output()
        .await
        .expect("run restockctl");
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("http://{}: SERVING", a.addr())
    );
}

/// The whole system in TEST_MODE: the arbiter, the store simulator and three
/// real watchers. 100 and 200 are both in stock; 100 (priority 1) must be
/// bought every cycle while 200 waits, one checkout at a time. The monitor
/// must find nothing wrong and count exactly the cycles the arbiter granted.
#[tokio::test(flavor = "multi_thread")]
async fn monitor_with_real_watchers_in_test_mode_counts_every_cycle() {
    let list = products_json(&["100", "200"]);
    let a = spawn_arbiter_with(ArbiterOptions {
        test_mode: true,
        ..ArbiterOptions::listing(&list)
    })
    .await;
    let store = StoreSimProcess::start(list, &["--checkout-delay", "50ms"]).await;
    let _watchers = [
        WatcherProcess::start(&a, &store, "w1", &[]).await,
        WatcherProcess::start(&a, &store, "w2", &[]).await,
        WatcherProcess::start(&a, &store, "w3", &[]).await,
    ];
    // Paused while the stock is put in place, so every cycle happens while
    // the monitor watches.
    a.set_paused(true).await;
    store.set_stock("100", true).await;
    store.set_stock("200", true).await;
    let grants = |s: &pb::GetStatusResponse| s.counters.as_ref().map_or(0, |c| c.grants);
    eventually("100 and 200 queued", Duration::from_secs(30), || async {
        let s = a.status().await;
        s.products
            .iter()
            .all(|p| p.state == pb::ProductState::Queued as i32)
            .then_some(())
    })
    .await;
    let grants_before = grants(&a.status().await);

    let monitor = Background::monitor_json(&a.url(), "5m").await;
    a.set_paused(false).await;
    eventually("five purchases", Duration::from_secs(60), || async {
        (purchased(&store.orders().await).len() >= 5).then_some(())
    })
    .await;
    // Pause again: the checkout in progress finishes, nothing new starts.
    a.set_paused(true).await;
    let after = eventually("the slot to be free", Duration::from_secs(30), || async {
        let s = a.status().await;
        s.active_lease.is_none().then_some(s)
    })
    .await;
    let cycles = grants(&after) - grants_before;
    assert!(cycles >= 5, "{cycles} grants");
    monitor
        .wait_for(
            true,
            &format!("cycle {cycles} done"),
            Duration::from_secs(20),
        )
        .await;

    // Ctrl-C ends the watch early with the full report.
    let interrupted = std::process::Command::new("kill")
        .arg("-INT")
        .arg(monitor.pid().to_string())
        .status()
        .expect("run kill");
    assert!(interrupted.success());
    let out = monitor.finish(Duration::from_secs(30)).await;
    assert_eq!(out.code, 0, "{}", out.show());
    let report = out.json();
    assert_eq!(report["clean"], true, "{}", out.show());
    assert_eq!(report["window"]["interrupted"], true);
    let summary = &report["summary"];
    assert_eq!(summary["cycles_completed"], cycles, "{}", out.show());
    assert_eq!(summary["cycles_open"], 0, "{}", out.show());
    assert_eq!(
        summary["outcomes"]["OUTCOME_PURCHASED"],
        cycles,
        "{}",
        out.show()
    );
    assert!(
        report["cycles"]
            .as_array()
            .unwrap()
            .iter()
            .all(|c| c["tcin"] == "100"),
        "only the top product is bought while it is in stock: {}",
        out.show()
    );
    // The store saw the same number of purchases, none overlapping.
    let orders = store.orders().await;
    assert_eq!(orders["violations"], 0, "{orders:#}");
    let bought = purchased(&orders).len();
    assert_eq!(bought as u64, cycles, "{orders:#}");
}

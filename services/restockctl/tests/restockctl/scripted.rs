//! A scripted arbiter (`restock_testkit::ScriptedArbiter`) serving
//! histories that the real arbiter refuses to produce (a product switch,
//! overlapping leases, a stuck purchase), so the real `restockctl monitor`
//! can be shown to catch each and exit non-zero. Also the `health` command
//! against a server whose arbiter service is not serving, one without a
//! health service, and an address where nobody listens.

use restock_proto::v1::{self as pb, ProductState as St};
use restock_testkit::{
    ArbiterEndpoint, ClosedPort, History, Script, ScriptedArbiter, StatusSnapshot, history::now_ms,
};
use tonic_health::ServingStatus;

use crate::helpers::ctl;

/// The products 100, 200, 300, all READY, the newest event `seq`.
fn ready(seq: u64) -> pb::GetStatusResponse {
    StatusSnapshot::three().sequence(seq).build()
}

/// Serves a first snapshot with everything READY at sequence 1, then
/// `then` forever, and `history` to `WatchEvents`.
async fn serve(then: pb::GetStatusResponse, history: History) -> ScriptedArbiter {
    ScriptedArbiter::start(
        Script::new()
            .statuses([ready(1), then])
            .events(history.into_events()),
    )
    .await
}

/// Runs `monitor --json` for a short window; returns the exit code and the
/// report.
async fn monitor_json(url: &str, extra: &[&str]) -> (crate::helpers::Output, serde_json::Value) {
    let mut args = vec![
        "--arbiter",
        url,
        "--json",
        "monitor",
        "--duration",
        "2s",
        "--interval",
        "200ms",
    ];
    args.extend_from_slice(extra);
    let out = ctl(&args).await;
    let report = out.json();
    (out, report)
}

fn problem_kinds(report: &serde_json::Value) -> Vec<String> {
    report["problems"]
        .as_array()
        .expect("problems")
        .iter()
        .map(|p| p["kind"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn monitor_reports_a_product_switch_and_exits_non_zero() {
    let history = History::starting(2, now_ms())
        .queued("100")
        // 200 gets the slot although 100 (priority 1) is waiting.
        .granted("200", "lease-1", 1)
        .released("200", "lease-1", 1);
    let queued = StatusSnapshot::three()
        .state("100", St::Queued)
        .sequence(history.last_sequence());
    let served = serve(queued.build(), history).await;
    let (out, report) = monitor_json(&served.url(), &[]).await;
    assert_eq!(out.code, 1, "{}", out.show());
    assert_eq!(problem_kinds(&report), ["product_switch"], "{}", out.show());
    let detail = report["problems"][0]["detail"].as_str().unwrap();
    assert!(
        detail.contains("product 200 (priority 2) was granted")
            && detail.contains("product 100 (priority 1) was QUEUED"),
        "{detail}"
    );
    assert_eq!(report["problems"][0]["sequence"], 3);
    assert_eq!(report["clean"], false);
    assert_eq!(report["summary"]["cycles_completed"], 1);
    assert_eq!(report["summary"]["problems"]["product_switch"], 1);
    // The live lines went to stderr, the problem among them.
    assert!(
        out.stderr
            .contains("PROBLEM product switch mid-cycle: product 200"),
        "{}",
        out.show()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn monitor_reports_overlapping_leases_and_exits_non_zero() {
    let history = History::starting(2, now_ms())
        .granted("100", "lease-1", 1)
        // A second lease while lease-1 is still held.
        .granted("200", "lease-2", 2)
        .released("100", "lease-1", 1)
        .released("200", "lease-2", 2);
    let served = serve(ready(history.last_sequence()), history).await;
    let (out, report) = monitor_json(&served.url(), &[]).await;
    assert_eq!(out.code, 1, "{}", out.show());
    assert_eq!(
        problem_kinds(&report),
        ["concurrent_attempt"],
        "{}",
        out.show()
    );
    let detail = report["problems"][0]["detail"].as_str().unwrap();
    assert!(
        detail.contains("lease lease-2 for product 200")
            && detail.contains("lease lease-1 (product 100, watcher w1, token 1) was still held"),
        "{detail}"
    );
    assert_eq!(report["summary"]["cycles_completed"], 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn monitor_reports_a_snapshot_with_two_products_attempting() {
    let both = StatusSnapshot::three()
        .state("100", St::Attempting)
        .state("200", St::Attempting);
    let served = serve(both.build(), History::starting(2, now_ms())).await;
    let (out, report) = monitor_json(&served.url(), &[]).await;
    assert_eq!(out.code, 1, "{}", out.show());
    assert_eq!(
        problem_kinds(&report),
        ["concurrent_attempt"],
        "{}",
        out.show()
    );
    assert!(
        report["problems"][0]["detail"]
            .as_str()
            .unwrap()
            .contains("2 products ATTEMPTING at once: 100, 200"),
        "{}",
        out.show()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn monitor_reports_a_stuck_purchase_in_text_and_exits_non_zero() {
    let t = now_ms();
    let lease = pb::Lease {
        lease_id: "lease-1".into(),
        tcin: "100".into(),
        watcher_id: "w1".into(),
        fencing_token: 1,
        ttl_ms: 30_000,
        granted_at_unix_ms: t,
        ..Default::default()
    };
    // The checkout starts and then nothing happens: the snapshots keep
    // showing it ATTEMPTING.
    let history = History::starting(2, t).granted("100", "lease-1", 1);
    let attempting = StatusSnapshot::three()
        .state("100", St::Attempting)
        .lease(lease)
        .sequence(history.last_sequence());
    let served = serve(attempting.build(), history).await;
    let out = ctl(&[
        "--arbiter",
        &served.url(),
        "monitor",
        "--duration",
        "3s",
        "--interval",
        "200ms",
        "--stuck-after",
        "1s",
    ])
    .await;
    assert_eq!(out.code, 1, "{}", out.show());
    assert!(
        out.stdout
            .contains("PROBLEM stuck purchase: product 100 has been ATTEMPTING for"),
        "{}",
        out.show()
    );
    assert!(
        out.stdout
            .contains("RESULT: 1 problem found: 1 stuck purchase"),
        "{}",
        out.show()
    );
    assert!(
        out.stdout.contains("0 completed, 1 still open"),
        "{}",
        out.show()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_clean_scripted_history_exits_zero() {
    let history = History::starting(2, now_ms())
        .granted("100", "lease-1", 1)
        .released("100", "lease-1", 1)
        .granted("100", "lease-2", 2)
        .released("100", "lease-2", 2);
    let served = serve(ready(history.last_sequence()), history).await;
    let (out, report) = monitor_json(&served.url(), &[]).await;
    assert_eq!(out.code, 0, "{}", out.show());
    assert_eq!(report["clean"], true);
    assert_eq!(report["summary"]["cycles_completed"], 2);
    assert_eq!(report["summary"]["outcomes"]["OUTCOME_PURCHASED"], 2);
}

// ----- health -----

#[tokio::test(flavor = "multi_thread")]
async fn health_exits_zero_only_when_serving() {
    let script = Script::new().statuses([ready(1)]);
    let served =
        ScriptedArbiter::start(script.clone().arbiter_health(ServingStatus::NotServing)).await;
    let url = served.url();

    let whole = ctl(&["--arbiter", &url, "health"]).await;
    assert_eq!(whole.code, 0, "{}", whole.show());
    assert_eq!(whole.stdout.trim(), format!("{url}: SERVING"));

    let arbiter = ctl(&[
        "--arbiter",
        &url,
        "health",
        "--service",
        "restock.v1.PurchaseArbiter",
    ])
    .await;
    assert_eq!(arbiter.code, 1, "{}", arbiter.show());
    assert!(arbiter.stdout.contains("NOT_SERVING"), "{}", arbiter.show());

    let unknown = ctl(&[
        "--arbiter",
        &url,
        "--json",
        "health",
        "--service",
        "no.such.Service",
    ])
    .await;
    assert_eq!(unknown.code, 1, "{}", unknown.show());
    assert_eq!(unknown.json()["status"], "SERVICE_UNKNOWN");

    // A server without the health service says so, with the gRPC code.
    let bare = ScriptedArbiter::start(script.without_health()).await;
    let out = ctl(&["--arbiter", &bare.url(), "health"]).await;
    assert_eq!(out.code, 4, "{}", out.show());
    assert!(
        out.stderr
            .contains("restockctl: Health.Check failed: UNIMPLEMENTED"),
        "{}",
        out.show()
    );

    // Nobody listening.
    let closed = ClosedPort::new();
    let addr = closed.addr().to_string();
    let out = ctl(&["--arbiter", &addr, "--timeout", "3s", "health"]).await;
    assert_eq!(out.code, 3, "{}", out.show());
    assert!(
        out.stderr.contains(&format!(
            "restockctl: cannot reach server at http://{addr}: "
        )),
        "{}",
        out.show()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn monitor_against_an_unreachable_arbiter_says_so() {
    let closed = ClosedPort::new();
    let url = closed.url();
    let out = ctl(&["--arbiter", &url, "monitor", "--duration", "1s"]).await;
    assert_eq!(out.code, 3, "{}", out.show());
    assert!(
        out.stderr
            .contains(&format!("restockctl: cannot reach arbiter at {url}: ")),
        "{}",
        out.show()
    );
}

/// A follower's status: it names `leader`, and nothing else.
fn follower_of(leader: &str) -> pb::GetStatusResponse {
    pb::GetStatusResponse {
        role: restock_proto::ROLE_FOLLOWER.into(),
        leader_url: leader.into(),
        unix_ms: now_ms(),
        ..Default::default()
    }
}

/// Two replicas, the follower listed first, and an address where nobody
/// listens: `status` shows the leader's state (found through the follower's
/// answer, or past the dead address), saying which replica answered and
/// that it leads.
#[tokio::test(flavor = "multi_thread")]
async fn status_finds_the_leader_among_the_replicas() {
    let leader = ScriptedArbiter::start(Script::new().statuses([pb::GetStatusResponse {
        role: restock_proto::ROLE_LEADER.into(),
        leader_url: String::new(),
        ..ready(7)
    }]))
    .await;
    let follower =
        ScriptedArbiter::start(Script::new().statuses([follower_of(&leader.url())])).await;
    let closed = ClosedPort::new();

    let list = format!("{},{}", follower.url(), leader.url());
    let out = ctl(&["--arbiter", &list, "--json", "status"]).await;
    assert_eq!(out.code, 0, "{}", out.show());
    let v = out.json();
    assert_eq!(v["arbiter"], leader.url(), "{}", out.show());
    assert_eq!(v["role"], "leader");
    assert_eq!(v["last_event_sequence"], 7);
    assert_eq!(
        follower.calls(),
        [restock_testkit::scripted::Call::GetStatus]
    );

    // Text: the replica that answered and its role; a dead first URL is
    // skipped.
    let list = format!("{},{}", closed.url(), leader.url());
    let out = ctl(&["--arbiter", &list, "status"]).await;
    assert_eq!(out.code, 0, "{}", out.show());
    assert!(
        out.stdout
            .starts_with(&format!("Arbiter   {} (leader)  mode", leader.url())),
        "{}",
        out.show()
    );

    // A list with a bad entry is a usage error naming it.
    let out = ctl(&[
        "--arbiter",
        &format!("{},ftp://x:1", leader.url()),
        "status",
    ])
    .await;
    assert_eq!(out.code, 2, "{}", out.show());
    assert!(out.stderr.contains("ftp://x:1"), "{}", out.show());
}

/// A replica that no longer leads answers a release UNAVAILABLE with the
/// leader's URL in the `restock-leader` trailer: `release` makes it again
/// at once at that leader, which takes it.
#[tokio::test(flavor = "multi_thread")]
async fn a_call_refused_by_a_follower_is_made_at_the_leader_it_names() {
    let leader = ScriptedArbiter::start(Script::new()).await;
    let follower = ScriptedArbiter::start(Script::new()).await;
    follower.step_down(Some(&leader.url()));
    let list = format!("{},{}", follower.url(), leader.url());
    let out = ctl(&[
        "--arbiter",
        &list,
        "release",
        "lease-1",
        "1",
        "--outcome",
        "purchased",
    ])
    .await;
    assert_eq!(out.code, 0, "{}", out.show());
    let taken: Vec<String> = leader.releases().into_iter().map(|r| r.lease_id).collect();
    assert_eq!(taken, ["lease-1"], "{}", out.show());
    assert_eq!(follower.releases().len(), 1, "asked once, refused");

    // With only the follower listed, the hint still leads to the leader.
    let out = ctl(&[
        "--arbiter",
        &follower.url(),
        "release",
        "lease-2",
        "1",
        "--outcome",
        "purchased",
    ])
    .await;
    assert_eq!(out.code, 0, "{}", out.show());
    assert_eq!(leader.releases().len(), 2, "{}", out.show());
}

/// `events --follow` given two replicas follows the leader the follower
/// names, and when that leader steps down (its stream ends) it resumes at
/// the new leader after the last event it printed: nothing twice, nothing
/// missed.
#[tokio::test(flavor = "multi_thread")]
async fn events_follow_moves_to_the_new_leader_from_where_it_was() {
    // Both replicas read the same history (as from one store): #2 GRANTED,
    // #3 RELEASED; the second, leading later, holds #4 GRANTED too.
    let history = History::starting(2, now_ms())
        .granted("100", "lease-1", 1)
        .released("100", "lease-1", 1);
    let more = history.clone().granted("100", "lease-2", 2);
    let first = ScriptedArbiter::start(
        Script::new()
            .statuses([pb::GetStatusResponse {
                role: restock_proto::ROLE_LEADER.into(),
                ..ready(4)
            }])
            .events(history.into_events()),
    )
    .await;
    let second = ScriptedArbiter::start(
        Script::new()
            .statuses([follower_of(&first.url())])
            .events(more.into_events()),
    )
    .await;
    second.step_down(Some(&first.url()));

    let list = format!("{},{}", second.url(), first.url());
    let follow = crate::helpers::Background::start(&[
        "--arbiter",
        &list,
        "events",
        "--follow",
        "--from",
        "2",
    ]);
    follow
        .wait_for(false, "RELEASED 100", std::time::Duration::from_secs(10))
        .await;

    second.lead();
    first.step_down(Some(&second.url()));
    // The second grant (#4) only the new leader holds.
    follow
        .wait_for(false, "lease=lease-2", std::time::Duration::from_secs(10))
        .await;
    let lines = follow.stdout_lines();
    let sequences: Vec<&str> = lines
        .iter()
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert_eq!(sequences, ["#2", "#3", "#4"], "{lines:#?}");
    follow
        .wait_for(
            true,
            &format!("event stream resumed from #4 at {}", second.url()),
            std::time::Duration::from_secs(5),
        )
        .await;
}

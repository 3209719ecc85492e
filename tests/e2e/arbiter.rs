//! The purchase arbiter's promises, checked against the real binary: the
//! original bot's five behaviours (one purchase at a time, priority, TEST_MODE
//! without switching, state that survives `kill -9`, many products in stock
//! at once) and the lease rules that replace its check-then-set.

use std::{collections::HashSet, time::Duration};

use futures::future::join_all;
use restock_proto::v1::{
    self as pb, ProductState, ResetProductRequest, SetPausedRequest, WatchEventsRequest,
    event::Kind as EventKind,
};
use restock_testkit::{ArbiterEndpoint, ArbiterOptions, ArbiterProcess, eventually};
use tonic::Code;

use crate::helpers::{WatcherStream, acquire, must_acquire, product, release, renew, status};

const GRANT_WAIT: Duration = Duration::from_secs(5);

#[tokio::test]
async fn single_purchase_enforcement() {
    let arbiter = ArbiterProcess::start(ArbiterOptions::products(&["100", "200", "300"])).await;
    let mut c = arbiter.client().await;

    let lease = must_acquire(&mut c, "200", "w1").await;
    assert_eq!(lease.tcin, "200");
    assert!(lease.fencing_token >= 1);

    // Every other product, from any watcher, is refused while the lease is held.
    for (tcin, watcher) in [("300", "w2"), ("100", "w3"), ("999", "w1"), ("200", "w2")] {
        let r = acquire(&mut c, tcin, watcher, "").await;
        assert!(
            !r.granted,
            "{tcin} must not be granted while 200 holds the slot"
        );
        assert_eq!(r.reason, "another_purchase_active");
        assert_eq!(r.holder_tcin, "200");
        assert_eq!(r.holder_watcher_id, "w1");
        assert!(r.lease.is_none());
    }
    let s = status(&mut c).await;
    let attempting: Vec<_> = s
        .products
        .iter()
        .filter(|p| p.state == ProductState::Attempting as i32)
        .collect();
    assert_eq!(attempting.len(), 1);
    assert_eq!(s.active_lease.as_ref().unwrap().lease_id, lease.lease_id);

    let r = release(&mut c, &lease, pb::Outcome::Purchased)
        .await
        .unwrap();
    assert!(r.released);
    assert_eq!(r.product_state, ProductState::Purchased as i32);

    let next = must_acquire(&mut c, "300", "w2").await;
    assert!(next.fencing_token > lease.fencing_token);
}

#[tokio::test]
async fn grants_are_pushed_in_priority_order_across_two_streams() {
    let arbiter = ArbiterProcess::start(ArbiterOptions::products(&["100", "200", "300"])).await;
    let mut c = arbiter.client().await;
    let mut w1 = WatcherStream::open(&arbiter, "w1").await;
    let mut w2 = WatcherStream::open(&arbiter, "w2").await;

    // The watcher learns the product list and priorities from the stream.
    let listed: Vec<(String, u32)> = w1
        .catalog
        .products
        .iter()
        .map(|p| (p.tcin.clone(), p.priority))
        .collect();
    assert_eq!(
        listed,
        [("100".into(), 1), ("200".into(), 2), ("300".into(), 3)]
    );

    // Hold the slot so that the reports queue up behind it.
    let blocker = must_acquire(&mut c, "999", "operator").await;
    w1.report(&[("300", true), ("200", true)]).await;
    w2.report(&[("100", true)]).await;
    eventually("three products queued", GRANT_WAIT, || {
        let mut c = c.clone();
        async move {
            let s = status(&mut c).await;
            let queued = s
                .products
                .iter()
                .filter(|p| p.state == ProductState::Queued as i32)
                .count();
            (queued == 3).then_some(())
        }
    })
    .await;

    // A lower-priority unary request is refused while a better one waits.
    let r = acquire(&mut c, "300", "w1", "").await;
    assert_eq!(r.reason, "higher_priority_pending");
    assert_eq!(r.pending_tcin, "100");

    release(&mut c, &blocker, pb::Outcome::Aborted)
        .await
        .unwrap();
    let g1 = w2.next_grant(GRANT_WAIT).await;
    assert_eq!((g1.tcin.as_str(), g1.watcher_id.as_str()), ("100", "w2"));
    w1.expect_no_grant(Duration::from_millis(300)).await;

    release(&mut c, &g1, pb::Outcome::Purchased).await.unwrap();
    let g2 = w1.next_grant(GRANT_WAIT).await;
    assert_eq!(g2.tcin, "200");
    release(&mut c, &g2, pb::Outcome::Purchased).await.unwrap();
    let g3 = w1.next_grant(GRANT_WAIT).await;
    assert_eq!(g3.tcin, "300");

    let tokens = [
        blocker.fencing_token,
        g1.fencing_token,
        g2.fencing_token,
        g3.fencing_token,
    ];
    assert!(tokens.windows(2).all(|w| w[0] < w[1]), "tokens {tokens:?}");
}

#[tokio::test]
async fn test_mode_repeats_the_top_product_without_switching() {
    let arbiter = ArbiterProcess::start(ArbiterOptions {
        test_mode: true,
        ..ArbiterOptions::products(&["100", "200", "300"])
    })
    .await;
    let mut c = arbiter.client().await;
    let mut w = WatcherStream::open(&arbiter, "w1").await;
    assert!(w.catalog.test_mode);
    w.report(&[("300", true), ("100", true), ("200", true)])
        .await;

    let mut last_token = 0;
    for cycle in 0..5 {
        let g = w.next_grant(GRANT_WAIT).await;
        assert_eq!(
            g.tcin, "100",
            "cycle {cycle}: the top product must win again"
        );
        assert!(g.fencing_token > last_token);
        last_token = g.fencing_token;
        let r = release(&mut c, &g, pb::Outcome::Purchased).await.unwrap();
        // TEST_MODE: a purchase goes straight back to ready.
        assert_ne!(r.product_state, ProductState::Purchased as i32);
    }
    assert_eq!(product(&status(&mut c).await, "100").purchases, 5);

    // The sixth cycle is 100 again. It sells out mid-cycle: the lease is not
    // switched to another product; the checkout ends, then 200 is bought.
    let sixth = w.next_grant(GRANT_WAIT).await;
    assert_eq!(sixth.tcin, "100");
    w.report(&[("100", false)]).await;
    w.expect_no_grant(Duration::from_millis(300)).await;
    assert_eq!(
        status(&mut c).await.active_lease.unwrap().lease_id,
        sixth.lease_id
    );
    release(&mut c, &sixth, pb::Outcome::OutOfStock)
        .await
        .unwrap();
    let g = w.next_grant(GRANT_WAIT).await;
    assert_eq!(g.tcin, "200");
}

#[tokio::test]
async fn state_persists_across_kill_9_and_restart() {
    let mut arbiter = ArbiterProcess::start(ArbiterOptions::products(&["100", "200", "300"])).await;
    let mut c = arbiter.client().await;

    // A finished purchase and a running one.
    let bought = must_acquire(&mut c, "100", "w1").await;
    release(&mut c, &bought, pb::Outcome::Purchased)
        .await
        .unwrap();
    let running = must_acquire(&mut c, "200", "w1").await;

    arbiter.kill9_and_restart().await;
    let mut c = arbiter.client().await;

    let s = status(&mut c).await;
    let lease = s.active_lease.clone().expect("the lease survives kill -9");
    assert_eq!(lease.lease_id, running.lease_id);
    assert_eq!(lease.fencing_token, running.fencing_token);
    assert!(lease.remaining_ms > 0 && lease.remaining_ms <= 30_000);
    assert_eq!(product(&s, "100").state, ProductState::Purchased as i32);
    assert_eq!(product(&s, "200").state, ProductState::Attempting as i32);

    // Still one purchase at a time, and what was bought stays bought.
    assert_eq!(
        acquire(&mut c, "300", "w2", "").await.reason,
        "another_purchase_active"
    );
    // The holder finishes and releases against the restarted arbiter.
    let r = release(&mut c, &running, pb::Outcome::Purchased)
        .await
        .unwrap();
    assert!(r.released);
    assert_eq!(
        acquire(&mut c, "100", "w2", "").await.reason,
        "already_purchased"
    );
    let next = must_acquire(&mut c, "300", "w2").await;
    assert!(
        next.fencing_token > running.fencing_token,
        "fencing tokens never go backwards across restarts"
    );
}

#[tokio::test]
async fn fifty_products_in_stock_at_once_exactly_one_granted() {
    // On one runtime thread (the default) and on several, where the calls
    // really run in parallel until they reach the task that owns the slot.
    for threads in ["1", "4"] {
        fifty_concurrent_acquires_one_winner(threads).await;
    }
}

async fn fifty_concurrent_acquires_one_winner(worker_threads: &str) {
    let arbiter = ArbiterProcess::start(ArbiterOptions {
        extra_args: vec!["--worker-threads".into(), worker_threads.into()],
        ..ArbiterOptions::products(&["100"])
    })
    .await;
    let c = arbiter.client().await;
    let calls = (0..50).map(|i| {
        let mut c = c.clone();
        async move { acquire(&mut c, &format!("p{i}"), &format!("w{i}"), "").await }
    });
    let answers = join_all(calls).await;
    let granted: Vec<_> = answers.iter().filter(|a| a.granted).collect();
    assert_eq!(
        granted.len(),
        1,
        "exactly one of 50 concurrent acquires wins (--worker-threads {worker_threads})"
    );
    let winner = granted[0].lease.as_ref().unwrap().tcin.clone();
    for a in answers.iter().filter(|a| !a.granted) {
        assert_eq!(a.reason, "another_purchase_active");
        assert_eq!(a.holder_tcin, winner);
    }
}

#[tokio::test]
async fn an_expired_lease_frees_the_slot_and_its_late_release_is_refused() {
    let arbiter = ArbiterProcess::start(ArbiterOptions {
        lease_ttl: "700ms".into(),
        ..ArbiterOptions::products(&["100", "200"])
    })
    .await;
    let mut c = arbiter.client().await;
    let mut w = WatcherStream::open(&arbiter, "w2").await;
    let stale = must_acquire(&mut c, "100", "w1").await;
    w.report(&[("200", true)]).await;

    // Nobody renews: the lease expires and the waiting product is granted.
    let next = w.next_grant(Duration::from_secs(5)).await;
    assert_eq!(next.tcin, "200");
    assert!(next.fencing_token > stale.fencing_token);
    let s = status(&mut c).await;
    let p = product(&s, "100");
    assert_eq!(p.state, ProductState::Failed as i32);
    assert_eq!(p.last_outcome, pb::Outcome::Expired as i32);

    // The stale holder wakes up late: nothing it says changes anything.
    let err = release(&mut c, &stale, pb::Outcome::Purchased)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err}");
    assert!(err.message().contains("expired"), "{err}");
    let err = renew(&mut c, &stale).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err}");
    let after = status(&mut c).await;
    assert_eq!(after.active_lease.as_ref().unwrap().lease_id, next.lease_id);
    assert_eq!(product(&after, "100").purchases, 0);

    // The expiry is in the event history.
    let expired = arbiter
        .events()
        .await
        .into_iter()
        .find(|e| e.kind == EventKind::Expired as i32)
        .expect("an EXPIRED event");
    assert_eq!(expired.lease_id, stale.lease_id);
}

#[tokio::test]
async fn renewing_keeps_the_lease_past_its_ttl() {
    let arbiter = ArbiterProcess::start(ArbiterOptions {
        lease_ttl: "600ms".into(),
        ..ArbiterOptions::products(&["100"])
    })
    .await;
    let mut c = arbiter.client().await;
    let lease = must_acquire(&mut c, "100", "w1").await;
    for _ in 0..6 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let renewed = renew(&mut c, &lease)
            .await
            .expect("renew the current lease");
        assert_eq!(renewed.fencing_token, lease.fencing_token);
    }
    // 1.2 s later, twice the TTL, the lease is still held.
    let r = release(&mut c, &lease, pb::Outcome::Purchased)
        .await
        .unwrap();
    assert!(r.released);
}

#[tokio::test]
async fn the_same_request_id_gets_the_same_answer_and_never_a_second_lease() {
    let arbiter = ArbiterProcess::start(ArbiterOptions::products(&["100", "200"])).await;
    let mut c = arbiter.client().await;
    let first = acquire(&mut c, "100", "w1", "req-1").await;
    assert!(first.granted);
    let again = acquire(&mut c, "100", "w1", "req-1").await;
    assert!(again.granted);
    let (a, b) = (first.lease.unwrap(), again.lease.unwrap());
    assert_eq!(
        (a.lease_id.as_str(), a.fencing_token),
        (b.lease_id.as_str(), b.fencing_token)
    );
    assert_eq!(status(&mut c).await.next_fencing_token, a.fencing_token + 1);

    // A refusal is repeated too, even after the slot frees.
    let refused = acquire(&mut c, "200", "w2", "req-9").await;
    assert_eq!(refused.reason, "another_purchase_active");
    release(&mut c, &a, pb::Outcome::Aborted).await.unwrap();
    let retry = acquire(&mut c, "200", "w2", "req-9").await;
    assert!(!retry.granted);
    assert_eq!(retry.reason, "another_purchase_active");
    // The same request id from another watcher is another request.
    assert!(acquire(&mut c, "200", "w3", "req-9").await.granted);
}

#[tokio::test]
async fn releasing_twice_is_harmless_and_a_wrong_token_changes_nothing() {
    let arbiter = ArbiterProcess::start(ArbiterOptions::products(&["100"])).await;
    let mut c = arbiter.client().await;
    let lease = must_acquire(&mut c, "100", "w1").await;

    let mut wrong = lease.clone();
    wrong.fencing_token += 7;
    let err = release(&mut c, &wrong, pb::Outcome::Purchased)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert!(
        status(&mut c).await.active_lease.is_some(),
        "a wrong token changes nothing"
    );

    assert!(
        release(&mut c, &lease, pb::Outcome::Failed)
            .await
            .unwrap()
            .released
    );
    let repeat = release(&mut c, &lease, pb::Outcome::Failed).await.unwrap();
    assert!(!repeat.released, "a repeated release is a harmless no-op");
    let s = status(&mut c).await;
    assert_eq!(s.counters.unwrap().failures, 1);
}

#[tokio::test]
async fn watch_events_resumes_from_a_sequence_number() {
    let arbiter = ArbiterProcess::start(ArbiterOptions::products(&["100", "200"])).await;
    let mut c = arbiter.client().await;
    for tcin in ["100", "200"] {
        let l = must_acquire(&mut c, tcin, "w1").await;
        release(&mut c, &l, pb::Outcome::Purchased).await.unwrap();
    }
    let last = status(&mut c).await.last_event_sequence;

    let read = |from: u64, n: usize| {
        let mut c = c.clone();
        async move {
            let mut s = c
                .watch_events(WatchEventsRequest {
                    from_sequence: from,
                })
                .await
                .unwrap()
                .into_inner();
            let mut out = Vec::new();
            while out.len() < n {
                let e = tokio::time::timeout(Duration::from_secs(5), s.message())
                    .await
                    .expect("event within 5s")
                    .unwrap()
                    .unwrap();
                out.push(e);
            }
            out
        }
    };
    let all = read(1, last as usize).await;
    let seqs: Vec<u64> = all.iter().map(|e| e.sequence).collect();
    assert_eq!(seqs, (1..=last).collect::<Vec<_>>(), "contiguous from 1");
    let kinds: Vec<i32> = all.iter().map(|e| e.kind).collect();
    assert_eq!(
        kinds
            .iter()
            .filter(|k| **k == EventKind::Granted as i32)
            .count(),
        2
    );

    // A follower that dropped after event 3 resumes at 4, and sees new events live.
    let resumed = read(4, (last - 3) as usize).await;
    assert_eq!(resumed[0].sequence, 4);
    assert_eq!(resumed, all[3..].to_vec());

    let mut live = c
        .watch_events(WatchEventsRequest { from_sequence: 0 })
        .await
        .unwrap()
        .into_inner();
    c.reset_product(ResetProductRequest { tcin: "100".into() })
        .await
        .unwrap();
    let e = tokio::time::timeout(Duration::from_secs(5), live.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(e.kind, EventKind::Reset as i32);
    assert_eq!(e.sequence, last + 1);
    assert_eq!(e.from_state, ProductState::Purchased as i32);
}

#[tokio::test]
async fn a_paused_arbiter_grants_nothing_until_resumed() {
    let arbiter = ArbiterProcess::start(ArbiterOptions::products(&["100"])).await;
    let mut c = arbiter.client().await;
    c.set_paused(SetPausedRequest { paused: true })
        .await
        .unwrap();
    assert!(status(&mut c).await.paused);
    assert_eq!(acquire(&mut c, "100", "w1", "").await.reason, "paused");

    let mut w = WatcherStream::open(&arbiter, "w1").await;
    w.report(&[("100", true)]).await;
    w.expect_no_grant(Duration::from_millis(400)).await;

    c.set_paused(SetPausedRequest { paused: false })
        .await
        .unwrap();
    assert_eq!(w.next_grant(GRANT_WAIT).await.tcin, "100");
}

#[tokio::test]
async fn reset_makes_a_purchased_product_eligible_again() {
    let arbiter = ArbiterProcess::start(ArbiterOptions::products(&["100"])).await;
    let mut c = arbiter.client().await;
    let l = must_acquire(&mut c, "100", "w1").await;
    release(&mut c, &l, pb::Outcome::Purchased).await.unwrap();
    assert_eq!(
        acquire(&mut c, "100", "w1", "").await.reason,
        "already_purchased"
    );
    let r = c
        .reset_product(ResetProductRequest { tcin: "100".into() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.previous_state, ProductState::Purchased as i32);
    must_acquire(&mut c, "100", "w1").await;

    let err = c
        .reset_product(ResetProductRequest {
            tcin: "nope".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{err}");
}

#[tokio::test]
async fn reload_by_rpc_and_sighup_changes_priorities_and_a_bad_file_keeps_the_old_list() {
    let arbiter = ArbiterProcess::start(ArbiterOptions::products(&["100", "200"])).await;
    let mut c = arbiter.client().await;
    let order = |s: &pb::GetStatusResponse| -> Vec<String> {
        s.products.iter().map(|p| p.tcin.clone()).collect()
    };
    assert_eq!(order(&status(&mut c).await), ["100", "200"]);

    restock_testkit::write_product_config(arbiter.dir.path(), &["200", "100", "300"]);
    let r = c
        .reload_config(pb::ReloadConfigRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.products, 3);
    assert_eq!(order(&status(&mut c).await), ["200", "100", "300"]);

    // A broken file is refused with its name and line; the list stays.
    std::fs::write(
        arbiter.config_file(),
        "{\n  \"products\": [\n    {\"tcin\": 12}\n",
    )
    .unwrap();
    let err = c
        .reload_config(pb::ReloadConfigRequest {})
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("product_config.json"), "{err}");
    assert!(err.message().contains("line 3"), "{err}");
    assert_eq!(order(&status(&mut c).await), ["200", "100", "300"]);

    // So are a bad budget and a Shopify entry without its variant: the
    // message names the file and the field, and nothing changes.
    for (text, names) in [
        (
            r#"{"products":[{"tcin":"100"}],"budget":{"max_spend":50,"window":"soon"}}"#,
            "budget.window",
        ),
        (
            r#"{"products":[{"tcin":"100"},{"retailer":"shopify","shop":"cards.example"}]}"#,
            "no \"variant\" or \"handle\"",
        ),
    ] {
        std::fs::write(arbiter.config_file(), text).unwrap();
        let err = c
            .reload_config(pb::ReloadConfigRequest {})
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{err}");
        assert!(
            err.message().contains("product_config.json") && err.message().contains(names),
            "{err}"
        );
        let s = status(&mut c).await;
        assert_eq!(order(&s), ["200", "100", "300"]);
        assert!(
            s.budget.as_ref().is_none_or(|b| b.limits.is_none()),
            "{s:?}"
        );
    }

    // SIGHUP reloads too.
    restock_testkit::write_product_config(arbiter.dir.path(), &["300", "200"]);
    arbiter.process.signal("-HUP");
    eventually("SIGHUP reload", GRANT_WAIT, || {
        let mut c = c.clone();
        async move {
            let s = status(&mut c).await;
            (s.products.first().map(|p| p.tcin.as_str()) == Some("300")).then_some(())
        }
    })
    .await;
    // 100 is no longer listed: it keeps its record and ranks last.
    let s = status(&mut c).await;
    let p = product(&s, "100");
    assert!(!p.configured);
    assert_eq!(p.priority, 3);
}

#[tokio::test]
async fn stream_grants_go_to_connected_watchers_only() {
    let arbiter = ArbiterProcess::start(ArbiterOptions::products(&["100", "200"])).await;
    let mut c = arbiter.client().await;
    let blocker = must_acquire(&mut c, "999", "operator").await;
    {
        let w1 = WatcherStream::open(&arbiter, "w1").await;
        w1.report(&[("100", true)]).await;
        eventually("100 queued", GRANT_WAIT, || {
            let mut c = c.clone();
            async move {
                let s = status(&mut c).await;
                (product(&s, "100").state == ProductState::Queued as i32).then_some(())
            }
        })
        .await;
    } // w1 goes away
    eventually("w1 disconnected and 100 back to ready", GRANT_WAIT, || {
        let mut c = c.clone();
        async move {
            let s = status(&mut c).await;
            let w = s.watchers.iter().find(|w| w.watcher_id == "w1")?;
            (!w.connected && product(&s, "100").state == ProductState::Ready as i32).then_some(())
        }
    })
    .await;
    let mut w2 = WatcherStream::open(&arbiter, "w2").await;
    w2.report(&[("200", true)]).await;
    release(&mut c, &blocker, pb::Outcome::Aborted)
        .await
        .unwrap();
    assert_eq!(w2.next_grant(GRANT_WAIT).await.tcin, "200");
    let seen: HashSet<String> = status(&mut c)
        .await
        .watchers
        .into_iter()
        .map(|w| w.watcher_id)
        .collect();
    assert!(seen.contains("w1") && seen.contains("w2"));
}

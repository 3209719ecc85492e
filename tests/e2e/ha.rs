//! Arbiter replicas on a real three-member etcd cluster (Debian's
//! `etcd-server`): one leader grants, followers name it, a held lease and
//! the fencing tokens survive the leader's death, a frozen leader cannot
//! write, a clean stop hands over at once, and a deployment moving from the
//! file store keeps its tokens rising.

use std::time::{Duration, Instant};

use restock_proto::v1::{self as pb, AcquirePurchaseRequest, ReleasePurchaseRequest};
use restock_runtime::leader::{LEADER_METADATA, leader_hint};
use restock_testkit::{
    ArbiterEndpoint, ArbiterOptions, ArbiterProcess,
    etcd::{EtcdCluster, EtcdTls},
    eventually,
};
use tonic::Code;
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

use crate::helpers::{must_acquire, renew, status};

const SERVICE: &str = "restock.v1.PurchaseArbiter";

/// A replica's flags: the cluster, a prefix of the test's own, a short
/// election TTL.
fn replica_options(etcd: &EtcdCluster, prefix: &str, ttl: &str) -> ArbiterOptions {
    ArbiterOptions {
        lease_ttl: "20s".into(),
        extra_args: vec![
            "--store".into(),
            "etcd".into(),
            "--etcd-endpoints".into(),
            etcd.endpoints(),
            "--etcd-prefix".into(),
            format!("/{prefix}/"),
            "--election-ttl".into(),
            ttl.into(),
            // The test's prefix is new: no token was ever handed out there.
            "--fresh-state".into(),
        ],
        ..ArbiterOptions::products(&["100", "200"])
    }
}

async fn replicas(opts: &ArbiterOptions, n: usize) -> Vec<ArbiterProcess> {
    let mut all = Vec::with_capacity(n);
    for _ in 0..n {
        all.push(ArbiterProcess::start(opts.clone()).await);
    }
    all
}

/// Waits until exactly one of `candidates` (indexes into `all`) leads and
/// every live replica names it; returns its index.
async fn one_leader(all: &[ArbiterProcess], candidates: &[usize], limit: Duration) -> usize {
    eventually("one leader, named by every replica", limit, || async {
        // A killed replica answers nothing; a stopped one (SIGSTOP) accepts
        // the connection but never answers, hence the bound.
        let mut answers = Vec::with_capacity(all.len());
        for a in all {
            answers.push(a.role(Duration::from_secs(1)).await);
        }
        let leaders: Vec<usize> = candidates
            .iter()
            .copied()
            .filter(|&i| {
                answers[i]
                    .as_ref()
                    .is_some_and(|(role, _)| role == "leader")
            })
            .collect();
        let [leader] = leaders[..] else { return None };
        let named = all[leader].url();
        candidates
            .iter()
            .all(|&i| answers[i].as_ref().is_some_and(|(_, url)| *url == named))
            .then_some(leader)
    })
    .await
}

async fn service_serving(a: &ArbiterProcess, service: &str) -> bool {
    let channel = tonic::transport::Endpoint::from_shared(a.url())
        .unwrap()
        .connect()
        .await
        .unwrap();
    HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: service.into(),
        })
        .await
        .is_ok_and(|r| r.into_inner().status == 1)
}

#[tokio::test]
async fn one_replica_leads_and_the_followers_name_it() {
    let Some(etcd) = EtcdCluster::start(3).await else {
        return;
    };
    let opts = replica_options(&etcd, "lead", "2s");
    let all = replicas(&opts, 3).await;
    let leader = one_leader(&all, &[0, 1, 2], Duration::from_secs(15)).await;
    let leader_url = all[leader].url();

    for (i, a) in all.iter().enumerate() {
        let mut c = a.client().await;
        let s = status(&mut c).await;
        assert_eq!(s.leader_url, leader_url);
        // Health: every live replica is SERVING; the service only where
        // it is served.
        assert!(service_serving(a, "").await, "replica {i} overall health");
        assert_eq!(
            service_serving(a, SERVICE).await,
            i == leader,
            "replica {i}"
        );
        if i == leader {
            assert_eq!(s.role, "leader");
            assert_eq!(s.products.len(), 2, "the leader shows the state");
            let lease = must_acquire(&mut c, "100", "w1").await;
            assert!(lease.fencing_token >= 1);
            continue;
        }
        assert_eq!(s.role, "follower");
        assert!(
            s.products.is_empty(),
            "a follower shows no state of its own"
        );
        // Every state-changing call: UNAVAILABLE, naming the leader.
        let e = c
            .acquire_purchase(AcquirePurchaseRequest {
                tcin: "200".into(),
                watcher_id: "w2".into(),
                request_id: String::new(),
            })
            .await
            .expect_err("a follower grants nothing");
        assert_eq!(e.code(), Code::Unavailable, "{e}");
        assert!(e.message().contains(&leader_url), "{e}");
        assert_eq!(leader_hint(&e).as_deref(), Some(leader_url.as_str()));
        assert!(e.metadata().get(LEADER_METADATA).is_some());
        let e = c
            .set_paused(pb::SetPausedRequest { paused: true })
            .await
            .expect_err("a follower pauses nothing");
        assert_eq!(leader_hint(&e).as_deref(), Some(leader_url.as_str()));
        let e = c
            .watch_events(pb::WatchEventsRequest { from_sequence: 1 })
            .await
            .expect_err("a follower has no event history to give");
        assert_eq!(leader_hint(&e).as_deref(), Some(leader_url.as_str()));
    }
}

#[tokio::test]
async fn a_held_lease_and_the_tokens_survive_the_leaders_death() {
    let Some(etcd) = EtcdCluster::start(3).await else {
        return;
    };
    let opts = replica_options(&etcd, "survive", "2s");
    let mut all = replicas(&opts, 3).await;
    let first = one_leader(&all, &[0, 1, 2], Duration::from_secs(15)).await;
    let mut c = all[first].client().await;
    // A few grants, so the token is well past 1.
    for _ in 0..3 {
        let l = must_acquire(&mut c, "200", "w2").await;
        c.release_purchase(ReleasePurchaseRequest {
            lease_id: l.lease_id,
            fencing_token: l.fencing_token,
            outcome: pb::Outcome::Failed as i32,
            detail: "test".into(),
            paid_price_cents: None,
        })
        .await
        .unwrap();
        // Failed puts the product in cool-down; reset it for the next.
        c.reset_product(pb::ResetProductRequest { tcin: "200".into() })
            .await
            .unwrap();
    }
    let held = must_acquire(&mut c, "100", "w1").await;
    // Held a while first, so a lease carried over as it stood on the dead
    // leader would show 5 s less than a whole TTL from the take-over.
    tokio::time::sleep(Duration::from_secs(5)).await;

    all[first].process.kill9();
    let killed_at = Instant::now();
    let rest: Vec<usize> = (0..3).filter(|&i| i != first).collect();
    let second = one_leader(&all, &rest, Duration::from_secs(15)).await;
    let failover = killed_at.elapsed();
    // The fault suite's bound: election TTL + 5 s for 2 loaded cores.
    assert!(
        failover < Duration::from_secs(2 + 5),
        "failover took {failover:?} at an election TTL of 2 s"
    );
    let mut c = all[second].client().await;
    let s = status(&mut c).await;
    let since_kill = killed_at.elapsed().as_millis() as u64;
    // The spending limit's record came over with it: the lease in flight
    // still holds its reservation, and the failed attempts spent nothing.
    let budget = s.budget.clone().expect("the status has the budget");
    assert_eq!(budget.reserved_for_tcin, "100", "{budget:?}");
    assert_eq!((budget.spent_cents, budget.purchases), (0, 0), "{budget:?}");
    let lease = s.active_lease.expect("the lease carried over");
    assert_eq!(lease.lease_id, held.lease_id);
    assert_eq!(lease.fencing_token, held.fencing_token);
    // A whole TTL (20 s) from the take-over, which came after the kill:
    // more than 20 s minus the time since the kill (what was left on the
    // dead one would be 5 s less than that).
    assert!(
        lease.remaining_ms > 20_000 - since_kill,
        "remaining {} ms, {since_kill} ms after the kill",
        lease.remaining_ms
    );
    // The holder goes on with the new leader as if nothing happened.
    let renewed = renew(&mut c, &held)
        .await
        .expect("renewed at the new leader");
    assert_eq!(renewed.fencing_token, held.fencing_token);
    c.release_purchase(ReleasePurchaseRequest {
        lease_id: held.lease_id.clone(),
        fencing_token: held.fencing_token,
        outcome: pb::Outcome::Purchased as i32,
        detail: "bought".into(),
        paid_price_cents: Some(4_999),
    })
    .await
    .expect("released at the new leader");
    let next = must_acquire(&mut c, "200", "w2").await;
    assert!(
        next.fencing_token > held.fencing_token,
        "tokens rise across the failover: {} after {}",
        next.fencing_token,
        held.fencing_token
    );

    // The old leader comes back as a follower of the new one.
    all[first].kill9_and_restart().await;
    let still = one_leader(&all, &[0, 1, 2], Duration::from_secs(15)).await;
    assert_eq!(still, second, "a restarted replica does not take over");

    // A second failover keeps the spend made at the second leader.
    all[second].process.kill9();
    let rest: Vec<usize> = (0..3).filter(|&i| i != second).collect();
    let third = one_leader(&all, &rest, Duration::from_secs(15)).await;
    let mut c = all[third].client().await;
    let budget = status(&mut c).await.budget.expect("the budget");
    assert_eq!(
        (budget.spent_cents, budget.purchases),
        (4_999, 1),
        "{budget:?}"
    );
    assert_eq!(
        budget.reserved_for_tcin, "200",
        "the lease of 200 in flight"
    );
}

#[tokio::test]
async fn a_frozen_leader_is_replaced_and_cannot_write_when_it_wakes() {
    let Some(etcd) = EtcdCluster::start(3).await else {
        return;
    };
    let opts = replica_options(&etcd, "freeze", "2s");
    let all = replicas(&opts, 3).await;
    let first = one_leader(&all, &[0, 1, 2], Duration::from_secs(15)).await;
    let mut old = all[first].client().await;
    let before = must_acquire(&mut old, "200", "w2").await;

    all[first].process.signal("-STOP");
    let rest: Vec<usize> = (0..3).filter(|&i| i != first).collect();
    let second = one_leader(&all, &rest, Duration::from_secs(15)).await;
    let mut new = all[second].client().await;
    // The new leader knows the old one's grant and goes on from it.
    let s = status(&mut new).await;
    assert_eq!(
        s.active_lease.map(|l| l.fencing_token),
        Some(before.fencing_token)
    );

    // Woken up, the old leader still believes it leads for a moment; an
    // acquire sent to it now must not be granted (its write fails its
    // guard), and it steps down.
    let sent = tokio::spawn(async move {
        old.acquire_purchase(AcquirePurchaseRequest {
            tcin: "100".into(),
            watcher_id: "w1".into(),
            request_id: String::new(),
        })
        .await
    });
    all[first].process.signal("-CONT");
    match sent.await.unwrap() {
        Ok(r) => {
            let r = r.into_inner();
            assert!(
                !r.granted,
                "a deposed leader granted token {:?}",
                r.lease.map(|l| l.fencing_token)
            );
        }
        Err(e) => assert_eq!(e.code(), Code::Unavailable, "{e}"),
    }
    eventually(
        "the woken leader to follow",
        Duration::from_secs(10),
        || async {
            let mut c = all[first].client().await;
            let s = status(&mut c).await;
            (s.role == "follower").then_some(())
        },
    )
    .await;
    // The new leader's tokens went on from the last written one.
    let after = status(&mut new).await;
    assert_eq!(after.next_fencing_token, before.fencing_token + 1);
}

#[tokio::test]
async fn a_clean_stop_hands_the_leadership_over_at_once() {
    let Some(etcd) = EtcdCluster::start(3).await else {
        return;
    };
    // A long TTL: only a resignation can make the failover quick.
    let opts = replica_options(&etcd, "resign", "10s");
    let mut all = replicas(&opts, 2).await;
    let first = one_leader(&all, &[0, 1], Duration::from_secs(25)).await;
    let stopped_at = Instant::now();
    assert_eq!(
        all[first].process.terminate(Duration::from_secs(10)),
        Some(0),
        "the leader stops cleanly"
    );
    let other = 1 - first;
    one_leader(&all, &[other], Duration::from_secs(5)).await;
    let took = stopped_at.elapsed();
    assert!(took < Duration::from_secs(4), "hand-over took {took:?}");
    let log = all[first].process.log_text();
    assert!(log.contains("leadership resigned"), "{log}");
}

#[tokio::test]
async fn moving_from_the_file_store_keeps_the_tokens_rising() {
    let Some(etcd) = EtcdCluster::start(1).await else {
        return;
    };
    // A standalone arbiter hands out a few tokens and stops.
    let mut standalone = ArbiterProcess::start(ArbiterOptions::products(&["100", "200"])).await;
    let mut c = standalone.client().await;
    let last = must_acquire(&mut c, "100", "w1").await;
    drop(c);
    assert_eq!(
        standalone.process.terminate(Duration::from_secs(10)),
        Some(0)
    );
    let state_file = standalone.state_file();

    let mut opts = replica_options(&etcd, "import", "2s");
    opts.extra_args.extend([
        "--import-state-file".into(),
        state_file.display().to_string(),
    ]);
    let all = replicas(&opts, 1).await;
    one_leader(&all, &[0], Duration::from_secs(15)).await;
    let mut c = all[0].client().await;
    let s = status(&mut c).await;
    assert_eq!(s.next_fencing_token, last.fencing_token + 1);
    assert_eq!(
        s.active_lease.map(|l| l.lease_id),
        Some(last.lease_id),
        "the lease carried over too"
    );

    // A floor on a fresh prefix.
    let mut opts = replica_options(&etcd, "floor", "2s");
    opts.extra_args
        .extend(["--token-floor".into(), "5000".into()]);
    let all = replicas(&opts, 1).await;
    one_leader(&all, &[0], Duration::from_secs(15)).await;
    let mut c = all[0].client().await;
    let granted = must_acquire(&mut c, "100", "w1").await;
    assert_eq!(granted.fencing_token, 5000);
}

/// Fencing tokens never start from 1 again where tokens were handed out:
/// a replica given no state to start from refuses to lead an empty prefix
/// (another, given the file store's state, leads instead and the tokens go
/// on), and a prefix whose state was written and then lost is refused even
/// with `--fresh-state`, until `--token-floor` is given.
#[tokio::test]
async fn a_replica_never_starts_tokens_from_1_where_it_may_not() {
    let Some(etcd) = EtcdCluster::start(1).await else {
        return;
    };
    let mut standalone = ArbiterProcess::start(ArbiterOptions::products(&["100", "200"])).await;
    let mut c = standalone.client().await;
    let last = must_acquire(&mut c, "100", "w1").await;
    drop(c);
    assert_eq!(
        standalone.process.terminate(Duration::from_secs(10)),
        Some(0)
    );
    let state_file = standalone.state_file();

    // A replica without the import flag (nor --fresh-state) wins the first
    // election alone: it must not start a new state.
    let mut strict = replica_options(&etcd, "nofresh", "2s");
    strict.extra_args.retain(|a| a != "--fresh-state");
    let mut all = replicas(&strict, 1).await;
    eventually(
        "the refusal in the log",
        Duration::from_secs(15),
        || async {
            all[0]
                .process
                .log_text()
                .contains("none was asked for")
                .then_some(())
        },
    )
    .await;
    assert_ne!(
        all[0].role(Duration::from_secs(1)).await.map(|r| r.0),
        Some("leader".to_owned())
    );
    // The replica given the state file leads, and the tokens go on.
    let mut importing = strict.clone();
    importing.extra_args.extend([
        "--import-state-file".into(),
        state_file.display().to_string(),
    ]);
    all.push(ArbiterProcess::start(importing).await);
    let leader = one_leader(&all, &[0, 1], Duration::from_secs(30)).await;
    assert_eq!(leader, 1, "only the replica with the state file may lead");
    let mut c = all[1].client().await;
    let s = status(&mut c).await;
    assert_eq!(s.next_fencing_token, last.fencing_token + 1);
    assert_eq!(s.active_lease.map(|l| l.lease_id), Some(last.lease_id));
    drop(c);
    for a in &mut all {
        a.process.terminate(Duration::from_secs(10));
    }

    // The state is lost from etcd (its marker stays): --fresh-state is
    // not enough.
    let mut kv = etcd_client::Client::connect(etcd.client_urls(), None)
        .await
        .unwrap();
    kv.delete("/nofresh/state", None).await.unwrap();
    assert!(kv.get("/nofresh/written", None).await.unwrap().count() == 1);
    let fresh = replica_options(&etcd, "nofresh", "2s");
    let all = replicas(&fresh, 1).await;
    eventually(
        "the refusal in the log",
        Duration::from_secs(15),
        || async { all[0].process.log_text().contains("was lost").then_some(()) },
    )
    .await;
    let log = all[0].process.log_text();
    assert!(log.contains("--token-floor"), "{log}");
    drop(all);
    let mut floored = fresh.clone();
    floored
        .extra_args
        .extend(["--token-floor".into(), "9000".into()]);
    let all = replicas(&floored, 1).await;
    one_leader(&all, &[0], Duration::from_secs(15)).await;
    let mut c = all[0].client().await;
    assert_eq!(must_acquire(&mut c, "100", "w1").await.fencing_token, 9000);
}

#[tokio::test]
async fn bad_etcd_flags_stop_start_up_with_a_clear_message() {
    let dir = tempfile::tempdir().unwrap();
    let config = restock_testkit::write_product_config(dir.path(), &["100"]);
    for (args, want) in [
        (vec!["--store", "etcd"], "--etcd-endpoints"),
        (
            vec!["--store", "etcd", "--etcd-endpoints", "127.0.0.1:2379"],
            "must start with http://",
        ),
        (
            vec![
                "--store",
                "etcd",
                "--etcd-endpoints",
                "http://127.0.0.1:9",
                "--election-ttl",
                "2500ms",
            ],
            "--election-ttl",
        ),
        (
            vec![
                "--store",
                "etcd",
                "--etcd-endpoints",
                "http://127.0.0.1:9",
                "--etcd-user",
                "root",
            ],
            "--etcd-user and --etcd-password go together",
        ),
        (
            vec![
                "--store",
                "etcd",
                "--etcd-endpoints",
                "http://127.0.0.1:9",
                "--import-state-file",
                "/nonexistent/restock-state.json",
            ],
            "--import-state-file /nonexistent/restock-state.json: no such file",
        ),
    ] {
        let out = std::process::Command::new(restock_testkit::bin("purchase-arbiter"))
            .args([
                "--config",
                &config.display().to_string(),
                "--http-listen",
                "off",
            ])
            .args(["--listen", "127.0.0.1:0"])
            .args(&args)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} started");
        assert!(stderr.contains(want), "{args:?}: {stderr}");
    }
}

#[tokio::test]
async fn etcd_authentication_lets_the_right_user_lead_and_stops_a_wrong_password() {
    let Some(etcd) = EtcdCluster::start(1).await else {
        return;
    };
    // etcd's own authentication on, with the root user.
    let mut admin = etcd_client::Client::connect(etcd.client_urls(), None)
        .await
        .unwrap();
    admin.user_add("root", "s3cret", None).await.unwrap();
    admin.user_grant_role("root", "root").await.unwrap();
    admin.auth_enable().await.unwrap();

    let mut opts = replica_options(&etcd, "auth", "2s");
    opts.extra_args.extend([
        "--etcd-user".into(),
        "root".into(),
        "--etcd-password".into(),
        "s3cret".into(),
    ]);
    let all = replicas(&opts, 1).await;
    one_leader(&all, &[0], Duration::from_secs(15)).await;
    let mut c = all[0].client().await;
    must_acquire(&mut c, "100", "w1").await;

    // A wrong password stops start-up, saying etcd refused it.
    let dir = tempfile::tempdir().unwrap();
    let config = restock_testkit::write_product_config(dir.path(), &["100"]);
    let mut child = std::process::Command::new(restock_testkit::bin("purchase-arbiter"))
        .args(["--config", &config.display().to_string()])
        .args(["--http-listen", "off", "--listen", "127.0.0.1:0"])
        .args(["--store", "etcd", "--etcd-endpoints", &etcd.endpoints()])
        .args(["--etcd-user", "root", "--etcd-password", "wrong"])
        .stderr(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let exited = tokio::time::timeout(Duration::from_secs(15), async {
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    let Ok(exited) = exited else {
        let _ = child.kill();
        panic!("the arbiter with a wrong etcd password still runs after 15 s");
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    assert!(!exited.success(), "started with a wrong etcd password");
    assert!(
        stderr.contains("etcd") && stderr.contains("authentication failed"),
        "{stderr}"
    );
}

#[tokio::test]
async fn tls_towards_etcd_with_a_client_certificate() {
    // scripts/make-certs.sh's CA, server certificate (for 127.0.0.1) and
    // client certificate: etcd takes the first two, the replica the CA and
    // the client pair.
    let certs = tempfile::tempdir().unwrap();
    let made =
        std::process::Command::new(restock_testkit::repo_root().join("scripts/make-certs.sh"))
            .arg(certs.path())
            .output()
            .unwrap();
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );
    let file = |name: &str| certs.path().join(name);
    let Some(etcd) = EtcdCluster::start_tls(
        1,
        EtcdTls {
            cert: file("server.pem"),
            key: file("server-key.pem"),
            ca: file("ca.pem"),
        },
    )
    .await
    else {
        return;
    };
    let path = |name: &str| file(name).display().to_string();
    let mut opts = replica_options(&etcd, "tls", "2s");
    let at = opts
        .extra_args
        .iter()
        .position(|a| a == "--etcd-endpoints")
        .unwrap();
    opts.extra_args[at + 1] = etcd.tls_endpoints();
    opts.extra_args.extend([
        "--etcd-ca".into(),
        path("ca.pem"),
        "--etcd-cert".into(),
        path("client.pem"),
        "--etcd-key".into(),
        path("client-key.pem"),
    ]);
    let all = replicas(&opts, 1).await;
    one_leader(&all, &[0], Duration::from_secs(15)).await;
    let mut c = all[0].client().await;
    must_acquire(&mut c, "100", "w1").await;

    // A CA file that is not there stops start-up, naming it.
    let dir = tempfile::tempdir().unwrap();
    let config = restock_testkit::write_product_config(dir.path(), &["100"]);
    let missing = dir.path().join("no-such-ca.pem");
    let out = std::process::Command::new(restock_testkit::bin("purchase-arbiter"))
        .args(["--config", &config.display().to_string()])
        .args(["--http-listen", "off", "--listen", "127.0.0.1:0"])
        .args(["--store", "etcd", "--etcd-endpoints", &etcd.tls_endpoints()])
        .arg("--etcd-ca")
        .arg(&missing)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "started without its CA file");
    assert!(
        stderr.contains("--etcd-ca") && stderr.contains("no-such-ca.pem"),
        "{stderr}"
    );
}

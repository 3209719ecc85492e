//! The test kit's etcd cluster is a real cluster: three members that agree
//! (a write through one is read through another) and that keep answering
//! with one member down, and a killed member rejoins on its data.

use std::time::Duration;

use restock_testkit::{EtcdCluster, eventually};

/// How long the cluster may take to elect a new raft leader and answer.
const LIMIT: Duration = Duration::from_secs(15);

#[tokio::test]
async fn three_members_form_one_cluster_that_survives_losing_one() {
    let Some(mut etcd) = EtcdCluster::start(3).await else {
        return; // etcd is not installed (and not required): noted, skipped
    };
    assert_eq!(etcd.endpoints().split(',').count(), 3);
    for i in 0..3 {
        assert_eq!(
            etcd.member_count(i).await.unwrap(),
            3,
            "as member {i} sees it"
        );
    }

    etcd.put(0, "/restock-test/a", "one").await.unwrap();
    assert_eq!(
        etcd.get(2, "/restock-test/a").await.unwrap().as_deref(),
        Some("one"),
        "a write through member 0 is read through member 2"
    );
    assert_eq!(etcd.get(1, "/restock-test/missing").await.unwrap(), None);

    // Two of three are a quorum: writes and linearizable reads go on (once
    // they have elected a raft leader, if member 1 was it: a request may
    // fail meanwhile).
    etcd.kill(1);
    assert!(!etcd.running(1));
    eventually("a write through member 2", LIMIT, || async {
        etcd.put(2, "/restock-test/b", "two").await.ok()
    })
    .await;
    assert_eq!(
        etcd.get(0, "/restock-test/b").await.unwrap().as_deref(),
        Some("two")
    );
    assert!(
        etcd.get(1, "/restock-test/b").await.is_err(),
        "member 1 is down"
    );

    // Back on its data and ports, it catches up on what it missed.
    etcd.restart(1).await;
    assert_eq!(
        etcd.get(1, "/restock-test/b").await.unwrap().as_deref(),
        Some("two")
    );

    // A stopped member answers nothing until it is continued.
    etcd.stop(0);
    assert!(etcd.get(0, "/restock-test/a").await.is_err());
    etcd.cont(0);
    eventually("member 0 to answer again", LIMIT, || async {
        etcd.get(0, "/restock-test/a").await.ok().flatten()
    })
    .await;
}

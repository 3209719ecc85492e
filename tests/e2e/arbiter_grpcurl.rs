//! The README's grpcurl calls, run with the real `grpcurl` binary against the
//! real arbiter: reflection (list, describe), health, GetStatus and
//! AcquirePurchase work without any .proto file.

use restock_testkit::{ArbiterEndpoint, ArbiterOptions, ArbiterProcess, grpcurl, run_grpcurl};

#[tokio::test]
async fn grpcurl_lists_describes_checks_health_and_calls_the_arbiter() {
    let Some(grpcurl) = grpcurl() else {
        return; // grpcurl() said why it was skipped
    };
    let arbiter = ArbiterProcess::start(ArbiterOptions {
        test_mode: true,
        ..Default::default()
    })
    .await;
    let addr = arbiter.addr().to_string();
    let addr = addr.as_str();
    let call = |args: &[&str]| {
        let mut all = vec!["-plaintext"];
        all.extend_from_slice(args);
        let (ok, out, err) = run_grpcurl(&grpcurl, &all);
        assert!(ok, "grpcurl {args:?} failed: {err}");
        out
    };

    let list = call(&[addr, "list"]);
    for service in ["restock.v1.PurchaseArbiter", "grpc.health.v1.Health"] {
        assert!(list.lines().any(|l| l == service), "list: {list}");
    }
    // Only what the arbiter serves, though its descriptor set also describes
    // the watcher's status service.
    assert!(
        !list.lines().any(|l| l == "restock.v1.StockWatcher"),
        "the arbiter lists a service it does not serve: {list}"
    );

    let described = call(&[addr, "describe", "restock.v1.PurchaseArbiter"]);
    for rpc in ["AcquirePurchase", "StreamStock", "WatchEvents", "GetStatus"] {
        assert!(described.contains(&format!("rpc {rpc}")), "{described}");
    }
    let health_desc = call(&[addr, "describe", "grpc.health.v1.Health"]);
    assert!(health_desc.contains("rpc Check"), "{health_desc}");

    let health = call(&[addr, "grpc.health.v1.Health/Check"]);
    assert!(health.contains("\"SERVING\""), "{health}");
    let health = call(&[
        "-d",
        r#"{"service":"restock.v1.PurchaseArbiter"}"#,
        addr,
        "grpc.health.v1.Health/Check",
    ]);
    assert!(health.contains("\"SERVING\""), "{health}");

    let granted = call(&[
        "-d",
        r#"{"tcin":"100","watcher_id":"grpcurl","request_id":"r-1"}"#,
        addr,
        "restock.v1.PurchaseArbiter/AcquirePurchase",
    ]);
    let v: serde_json::Value = serde_json::from_str(&granted).unwrap();
    assert_eq!(v["granted"], true, "{granted}");
    assert_eq!(v["lease"]["tcin"], "100");
    // uint64 fields come out as JSON strings.
    assert_eq!(v["lease"]["fencingToken"], "1", "{granted}");

    let refused = call(&[
        "-d",
        r#"{"tcin":"200","watcher_id":"grpcurl"}"#,
        addr,
        "restock.v1.PurchaseArbiter/AcquirePurchase",
    ]);
    let v: serde_json::Value = serde_json::from_str(&refused).unwrap();
    assert_eq!(v["reason"], "another_purchase_active", "{refused}");
    assert_eq!(v["holderTcin"], "100");

    let status = call(&[addr, "restock.v1.PurchaseArbiter/GetStatus"]);
    let v: serde_json::Value = serde_json::from_str(&status).unwrap();
    assert_eq!(v["activeLease"]["tcin"], "100", "{status}");
    assert_eq!(v["testMode"], true);
    assert_eq!(v["products"][0]["state"], "ATTEMPTING", "{status}");
    assert_eq!(v["products"][1]["state"], "READY");

    // The spending limit, as the README sets it from the command line: the
    // lease in flight reserves, the reason goes into the history.
    let set = call(&[
        "-d",
        r#"{"limits":{"max_spend_cents":"5000","max_purchases":3,"window_ms":"86400000"},"reason":"grpcurl"}"#,
        addr,
        "restock.v1.PurchaseArbiter/SetBudget",
    ]);
    let v: serde_json::Value = serde_json::from_str(&set).unwrap();
    assert_eq!(v["budget"]["source"], "operator", "{set}");
    assert_eq!(v["budget"]["operatorReason"], "grpcurl", "{set}");
    assert_eq!(v["budget"]["limits"]["maxSpendCents"], "5000", "{set}");
    assert_eq!(v["budget"]["reservedForTcin"], "100", "{set}");
    assert_eq!(v["budget"]["purchasesLeft"], 2, "{set}");
    let (ok, _, err) = run_grpcurl(
        &grpcurl,
        &[
            "-plaintext",
            "-d",
            r#"{"reset_spend":true}"#,
            addr,
            "restock.v1.PurchaseArbiter/SetBudget",
        ],
    );
    assert!(!ok, "a change without a reason is refused");
    assert!(
        err.contains("InvalidArgument") && err.contains("reason"),
        "{err}"
    );

    // A bad request: grpcurl exits non-zero with the status code and message.
    let (ok, _, err) = run_grpcurl(
        &grpcurl,
        &[
            "-plaintext",
            "-d",
            r#"{"tcin":"bad id","watcher_id":"grpcurl"}"#,
            addr,
            "restock.v1.PurchaseArbiter/AcquirePurchase",
        ],
    );
    assert!(!ok);
    assert!(
        err.contains("InvalidArgument") && err.contains("' '"),
        "{err}"
    );
}

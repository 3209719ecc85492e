//! The command checkout: runs the user's program with `sh -c` in a process
//! group of its own, with `RESTOCK_PRODUCT_ID` (the product id;
//! `RESTOCK_TCIN` carries it too, as before retailers), `RESTOCK_RETAILER`
//! (`target`, `shopify`), `RESTOCK_FENCING_TOKEN`, `RESTOCK_LEASE_ID`,
//! `RESTOCK_WATCHER_ID` and `RESTOCK_TEST_MODE` (`true`/`false`) in its
//! environment, and for a Shopify product `RESTOCK_SHOP` (host name),
//! `RESTOCK_SHOP_URL`, `RESTOCK_VARIANT` and `RESTOCK_CART_URL` (the cart
//! permalink `<shop URL>/cart/<variant>:1`; the last two only when a
//! variant is known). Exit 0 means purchased, exit 3 means
//! out of stock, anything else failed. Its output goes to the watcher's log.
//!
//! When the time limit passes or the lease is lost, the whole process group
//! is killed (SIGKILL), so a browser the script started dies with it. The
//! group is killed before the script is reaped, so its id cannot have been
//! reused.

use std::{collections::VecDeque, process::Stdio, sync::Arc, time::Duration};

use tokio::{
    io::{AsyncBufReadExt, AsyncRead, BufReader},
    process::Command,
    sync::Mutex,
};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::{CheckoutJob, CheckoutOutcome, CheckoutResult};

/// Exit status a script uses to say "out of stock".
pub const EXIT_OUT_OF_STOCK: i32 = 3;
/// Output lines kept for the failure detail.
const TAIL_LINES: usize = 5;

/// See the module documentation.
#[derive(Debug, Clone)]
pub struct CommandCheckout {
    command: String,
    timeout: Duration,
}

/// The Shopify variables of a job (none for Target).
fn shop_env(job: &CheckoutJob) -> Vec<(&'static str, String)> {
    let Some(s) = &job.shop else {
        return Vec::new();
    };
    let mut env = vec![
        ("RESTOCK_SHOP", s.shop.clone()),
        ("RESTOCK_SHOP_URL", s.shop_url.clone()),
    ];
    if let (Some(v), Some(cart)) = (s.variant, s.cart_url()) {
        env.push(("RESTOCK_VARIANT", v.to_string()));
        env.push(("RESTOCK_CART_URL", cart));
    }
    env
}

impl CommandCheckout {
    pub fn new(command: String, timeout: Duration) -> Self {
        Self { command, timeout }
    }

    pub async fn run(&self, job: &CheckoutJob, cancel: &CancellationToken) -> CheckoutResult {
        let mut cmd = Command::new("sh");
        cmd.arg("-c")
            .arg(&self.command)
            .env("RESTOCK_TCIN", job.tcin.as_str())
            .env("RESTOCK_PRODUCT_ID", job.tcin.as_str())
            .env("RESTOCK_RETAILER", job.tcin.retailer().as_str())
            .env("RESTOCK_FENCING_TOKEN", job.fencing_token.to_string())
            .env("RESTOCK_LEASE_ID", job.lease_id.as_str())
            .env("RESTOCK_WATCHER_ID", job.watcher_id.as_str())
            .env(
                "RESTOCK_TEST_MODE",
                if job.test_mode { "true" } else { "false" },
            )
            .envs(shop_env(job))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(true);
        let mut child = match cmd.spawn() {
            Ok(c) => c,
            Err(e) => {
                return CheckoutResult::new(
                    CheckoutOutcome::Failed,
                    format!(
                        "cannot start the checkout command `sh -c {:?}`: {e}",
                        self.command
                    ),
                );
            }
        };
        let pid = child.id();
        info!(pid, tcin = %job.tcin, fencing_token = job.fencing_token.get(), "checkout command started");
        let tail = Arc::new(Mutex::new(VecDeque::new()));
        let mut readers = Vec::new();
        if let Some(out) = child.stdout.take() {
            readers.push(tokio::spawn(forward(out, "stdout", tail.clone())));
        }
        if let Some(err) = child.stderr.take() {
            readers.push(tokio::spawn(forward(err, "stderr", tail.clone())));
        }
        let ended = tokio::select! {
            biased;
            status = child.wait() => Ok(status),
            () = cancel.cancelled() => Err(None),
            () = tokio::time::sleep(self.timeout) => Err(Some(self.timeout)),
        };
        let result = match ended {
            Ok(Ok(status)) => {
                let tail = tail_text(&tail).await;
                match status.code() {
                    Some(0) => CheckoutResult::new(
                        CheckoutOutcome::Purchased,
                        format!("checkout command exited 0{tail}"),
                    ),
                    Some(EXIT_OUT_OF_STOCK) => CheckoutResult::new(
                        CheckoutOutcome::OutOfStock,
                        format!("checkout command exited {EXIT_OUT_OF_STOCK} (out of stock){tail}"),
                    ),
                    _ => CheckoutResult::new(
                        CheckoutOutcome::Failed,
                        format!("checkout command ended with {status}{tail}"),
                    ),
                }
            }
            Ok(Err(e)) => CheckoutResult::new(
                CheckoutOutcome::Failed,
                format!("cannot wait for the checkout command: {e}"),
            ),
            Err(why) => {
                if let Some(pid) = pid {
                    kill_group(pid).await;
                }
                let _ = child.kill().await;
                match why {
                    None => CheckoutResult::new(
                        CheckoutOutcome::Aborted,
                        "checkout cancelled: the command's process group was killed",
                    ),
                    Some(limit) => CheckoutResult::new(
                        CheckoutOutcome::Failed,
                        format!(
                            "checkout command timed out after {limit:?}; its process group was killed{}",
                            tail_text(&tail).await
                        ),
                    ),
                }
            }
        };
        // Output pipes close when the group is gone; do not wait on a
        // grandchild that escaped the group and keeps them open.
        for r in readers {
            r.abort();
        }
        result
    }
}

/// SIGKILL to every process of the group. `sh`'s own `kill` is used because
/// it needs no library with unsafe code and exists wherever `sh -c` does.
async fn kill_group(pgid: u32) {
    let status = Command::new("sh")
        .arg("-c")
        .arg(format!("kill -s KILL -- -{pgid}"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .await;
    match status {
        Ok(s) if s.success() => info!(pgid, "checkout command's process group killed"),
        Ok(s) => warn!(pgid, status = %s, "killing the checkout command's process group failed"),
        Err(e) => {
            warn!(pgid, error = %e, "cannot run kill for the checkout command's process group")
        }
    }
}

async fn forward(
    stream: impl AsyncRead + Unpin,
    which: &'static str,
    tail: Arc<Mutex<VecDeque<String>>>,
) {
    let mut lines = BufReader::new(stream).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        info!(stream = which, line = %line, "checkout command output");
        let mut t = tail.lock().await;
        if t.len() == TAIL_LINES {
            t.pop_front();
        }
        t.push_back(line);
    }
}

async fn tail_text(tail: &Mutex<VecDeque<String>>) -> String {
    // Give the readers a moment to take the last lines of a finished script.
    tokio::time::sleep(Duration::from_millis(20)).await;
    let t = tail.lock().await;
    if t.is_empty() {
        String::new()
    } else {
        format!(
            "; last output: {}",
            t.iter().cloned().collect::<Vec<_>>().join(" | ")
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use restock_domain::{FencingToken, LeaseId, ProductId, WatcherId};

    fn job() -> CheckoutJob {
        CheckoutJob {
            tcin: ProductId::parse("100").unwrap(),
            lease_id: LeaseId::parse("lease-7-x").unwrap(),
            fencing_token: FencingToken(7),
            watcher_id: WatcherId::parse("w1").unwrap(),
            test_mode: true,
            shop: None,
        }
    }

    async fn run(script: &str, timeout: Duration) -> CheckoutResult {
        CommandCheckout::new(script.into(), timeout)
            .run(&job(), &CancellationToken::new())
            .await
    }

    #[tokio::test]
    async fn exit_codes_and_environment() {
        let r = run(
            r#"test "$RESTOCK_TCIN/$RESTOCK_FENCING_TOKEN/$RESTOCK_LEASE_ID/$RESTOCK_WATCHER_ID/$RESTOCK_TEST_MODE" = "100/7/lease-7-x/w1/true""#,
            Duration::from_secs(10),
        )
        .await;
        assert_eq!(r.outcome, CheckoutOutcome::Purchased, "{r:?}");
        let r = run("echo sold out; exit 3", Duration::from_secs(10)).await;
        assert_eq!(r.outcome, CheckoutOutcome::OutOfStock, "{r:?}");
        let r = run("echo card declined >&2; exit 1", Duration::from_secs(10)).await;
        assert_eq!(r.outcome, CheckoutOutcome::Failed);
        assert!(r.detail.contains("card declined"), "{r:?}");
    }

    fn alive(pid: u32) -> bool {
        std::path::Path::new(&format!("/proc/{pid}")).exists()
            && !std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .unwrap_or_default()
                .contains(") Z ")
    }

    /// Starts a script that leaves a grandchild (`sleep`) in its group and
    /// writes its pid to a file, then hangs.
    fn hanging_script(dir: &std::path::Path) -> (String, std::path::PathBuf) {
        let pidfile = dir.join("grandchild.pid");
        (
            format!("sleep 300 & echo $! > {}; wait", pidfile.display()),
            pidfile,
        )
    }

    async fn read_pid(path: &std::path::Path) -> u32 {
        for _ in 0..200 {
            if let Ok(s) = std::fs::read_to_string(path)
                && let Ok(pid) = s.trim().parse()
            {
                return pid;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("the script did not write its pid");
    }

    #[tokio::test]
    async fn a_shopify_checkout_gets_the_shop_the_variant_and_the_cart_permalink() {
        let mut j = job();
        j.tcin = ProductId::parse("shopify:cards.example/4001").unwrap();
        j.shop = Some(super::super::ShopCheckout {
            shop: "cards.example".into(),
            shop_url: "http://127.0.0.1:9/shops/cards.example".into(),
            variant: Some(4001),
        });
        let script = r#"test "$RESTOCK_PRODUCT_ID|$RESTOCK_TCIN|$RESTOCK_RETAILER|$RESTOCK_SHOP|$RESTOCK_VARIANT|$RESTOCK_CART_URL" = "shopify:cards.example/4001|shopify:cards.example/4001|shopify|cards.example|4001|http://127.0.0.1:9/shops/cards.example/cart/4001:1""#;
        let r = CommandCheckout::new(script.into(), Duration::from_secs(10))
            .run(&j, &CancellationToken::new())
            .await;
        assert_eq!(r.outcome, CheckoutOutcome::Purchased, "{r:?}");
        // Target's checkouts see no shop variables.
        let r = run(
            r#"test "$RESTOCK_RETAILER" = target && test -z "${RESTOCK_SHOP+x}${RESTOCK_CART_URL+x}""#,
            Duration::from_secs(10),
        )
        .await;
        assert_eq!(r.outcome, CheckoutOutcome::Purchased, "{r:?}");
    }

    #[tokio::test]
    async fn cancel_kills_the_whole_group() {
        let dir = tempfile::tempdir().unwrap();
        let (script, pidfile) = hanging_script(dir.path());
        let c = CommandCheckout::new(script, Duration::from_secs(60));
        let cancel = CancellationToken::new();
        let j = job();
        let run = c.run(&j, &cancel);
        let check = async {
            let pid = read_pid(&pidfile).await;
            assert!(alive(pid));
            cancel.cancel();
            pid
        };
        let (r, pid) = tokio::join!(run, check);
        assert_eq!(r.outcome, CheckoutOutcome::Aborted, "{r:?}");
        for _ in 0..100 {
            if !alive(pid) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("grandchild {pid} survived the cancellation");
    }

    #[tokio::test]
    async fn timeout_kills_the_group_and_fails() {
        let dir = tempfile::tempdir().unwrap();
        let (script, pidfile) = hanging_script(dir.path());
        let r = run(&script, Duration::from_millis(300)).await;
        assert_eq!(r.outcome, CheckoutOutcome::Failed);
        assert!(r.detail.contains("timed out"), "{r:?}");
        let pid = read_pid(&pidfile).await;
        for _ in 0..100 {
            if !alive(pid) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("grandchild {pid} survived the timeout");
    }
}

//! `exec:///path/to/command`: runs the command (no shell) with the alert as
//! JSON on stdin and its fields in `RESTOCK_ALERT_*` variables. Exit 0 is
//! delivered; another exit is retried (the command may depend on something
//! that comes back), a command that cannot be started is permanent.

use std::{path::Path, process::Stdio, time::Duration};

use tokio::{io::AsyncWriteExt, process::Command};

use super::{SendError, Sent};
use crate::alert::Alert;

/// At most this much of the command's output is kept in the reason.
const OUTPUT_IN_REASON: usize = 300;

pub async fn run(path: &Path, alert: &Alert, limit: Duration) -> Result<Sent, SendError> {
    let opt = |v: &Option<String>| v.clone().unwrap_or_default();
    let mut cmd = Command::new(path);
    cmd.env("RESTOCK_ALERT_ID", &alert.id)
        .env("RESTOCK_ALERT_KIND", alert.kind.as_str())
        .env("RESTOCK_ALERT_TITLE", &alert.title)
        .env("RESTOCK_ALERT_MESSAGE", &alert.message)
        .env("RESTOCK_ALERT_TCIN", opt(&alert.tcin))
        .env("RESTOCK_ALERT_PRODUCT_ID", opt(&alert.tcin))
        .env("RESTOCK_ALERT_RETAILER", opt(&alert.retailer))
        .env("RESTOCK_ALERT_NAME", opt(&alert.name))
        .env(
            "RESTOCK_ALERT_PRICE_CENTS",
            alert.price_cents.map(|p| p.to_string()).unwrap_or_default(),
        )
        .env(
            "RESTOCK_ALERT_FENCING_TOKEN",
            alert
                .fencing_token
                .map(|p| p.to_string())
                .unwrap_or_default(),
        )
        .env("RESTOCK_ALERT_WATCHER_ID", opt(&alert.watcher_id))
        .env("RESTOCK_ALERT_UNIX_MS", alert.unix_ms.to_string())
        .env("RESTOCK_ALERT_TEST_MODE", alert.test_mode.to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut child = cmd
        .spawn()
        .map_err(|e| SendError::Permanent(format!("cannot run {}: {e}", path.display())))?;
    let json = alert.to_json();
    let mut stdin = child.stdin.take();
    let work = async {
        if let Some(s) = stdin.as_mut() {
            // A command that does not read its stdin is fine.
            let _ = s.write_all(json.as_bytes()).await;
            let _ = s.shutdown().await;
        }
        drop(stdin.take());
        child.wait_with_output().await
    };
    match tokio::time::timeout(limit, work).await {
        Err(_) => Err(SendError::Transient(format!(
            "{} did not finish within {}",
            path.display(),
            humantime::format_duration(limit)
        ))),
        Ok(Err(e)) => Err(SendError::Transient(format!("{}: {e}", path.display()))),
        Ok(Ok(out)) if out.status.success() => Ok(Sent::default()),
        Ok(Ok(out)) => {
            let mut text = String::from_utf8_lossy(&out.stderr).trim().to_owned();
            if text.is_empty() {
                text = String::from_utf8_lossy(&out.stdout).trim().to_owned();
            }
            let text: String = text.chars().take(OUTPUT_IN_REASON).collect();
            Err(SendError::Transient(format!(
                "{} exited with {}{}",
                path.display(),
                out.status,
                if text.is_empty() {
                    String::new()
                } else {
                    format!(": {text}")
                }
            )))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::alert::AlertKind;

    #[tokio::test]
    async fn the_alert_arrives_on_stdin_and_in_the_environment() {
        let dir = tempfile::tempdir().unwrap();
        let script = dir.path().join("hook.sh");
        let out = dir.path().join("out.txt");
        std::fs::write(
            &script,
            format!(
                "#!/bin/sh\ncat > {0}\necho \"$RESTOCK_ALERT_KIND $RESTOCK_ALERT_ID\" >> {0}\n",
                out.display()
            ),
        )
        .unwrap();
        std::process::Command::new("chmod")
            .arg("+x")
            .arg(&script)
            .status()
            .unwrap();
        let a = Alert::new("k-1".into(), AlertKind::Test, "t".into(), "m".into(), 1);
        run(&script, &a, Duration::from_secs(10)).await.unwrap();
        let text = std::fs::read_to_string(&out).unwrap();
        assert!(text.starts_with("{\"id\":\"k-1\""), "{text}");
        assert!(text.ends_with("test k-1\n"), "{text}");

        let e = run(Path::new("/bin/false"), &a, Duration::from_secs(10))
            .await
            .unwrap_err();
        assert!(matches!(e, SendError::Transient(_)), "{e:?}");
        let e = run(&dir.path().join("missing"), &a, Duration::from_secs(10))
            .await
            .unwrap_err();
        assert!(matches!(e, SendError::Permanent(_)), "{e:?}");
    }
}

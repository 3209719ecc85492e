//! Running the real `restockctl` binary: to completion, or in the background
//! with its output collected line by line.

use std::{
    process::Stdio,
    sync::{Arc, Mutex},
    time::Duration,
};

use restock_testkit::eventually;
use tokio::{
    io::{AsyncBufReadExt, AsyncRead, BufReader},
    process::{Child, Command},
    task::JoinHandle,
};

/// What a finished run left.
#[derive(Debug)]
pub struct Output {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Output {
    /// For assertion messages.
    pub fn show(&self) -> String {
        format!(
            "exit code {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.code, self.stdout, self.stderr
        )
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e}):\n{}", self.show()))
    }
}

fn command(args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_restockctl"));
    c.args(args)
        // The tests say where the arbiter is; the developer's shell must not.
        .env_remove("RESTOCK_ARBITER")
        .env_remove("RESTOCK_TIMEOUT")
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    c
}

/// Runs `restockctl args...` to the end (at most a minute).
pub async fn ctl(args: &[&str]) -> Output {
    let run = command(args).output();
    let out = tokio::time::timeout(Duration::from_secs(60), run)
        .await
        .unwrap_or_else(|_| panic!("restockctl {args:?} did not finish within 60 s"))
        .expect("run restockctl");
    Output {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

type Lines = Arc<Mutex<Vec<String>>>;

fn collect(stream: impl AsyncRead + Unpin + Send + 'static, lines: Lines) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut reader = BufReader::new(stream).lines();
        while let Ok(Some(line)) = reader.next_line().await {
            lines.lock().unwrap().push(line);
        }
    })
}

/// `restockctl` running in the background; killed when dropped.
pub struct Background {
    child: Child,
    stdout: Lines,
    stderr: Lines,
    readers: Vec<JoinHandle<()>>,
}

impl Background {
    pub fn start(args: &[&str]) -> Self {
        let mut child = command(args).spawn().expect("start restockctl");
        let stdout = Lines::default();
        let stderr = Lines::default();
        let readers = vec![
            collect(child.stdout.take().unwrap(), stdout.clone()),
            collect(child.stderr.take().unwrap(), stderr.clone()),
        ];
        Self {
            child,
            stdout,
            stderr,
            readers,
        }
    }

    /// `restockctl --arbiter URL --json monitor --duration D --interval
    /// 300ms`, once it says it is watching (with `--json` the live lines go
    /// to stderr, the first one "monitoring ...").
    pub async fn monitor_json(url: &str, duration: &str) -> Self {
        let monitor = Self::start(&[
            "--arbiter",
            url,
            "--json",
            "monitor",
            "--duration",
            duration,
            "--interval",
            "300ms",
        ]);
        monitor
            .wait_for(true, "monitoring http://", Duration::from_secs(20))
            .await;
        monitor
    }

    pub fn pid(&self) -> u32 {
        self.child.id().expect("still running")
    }

    pub fn stdout_lines(&self) -> Vec<String> {
        self.stdout.lock().unwrap().clone()
    }

    pub fn stderr_lines(&self) -> Vec<String> {
        self.stderr.lock().unwrap().clone()
    }

    /// Waits until a line of stdout (or stderr) contains `text`.
    pub async fn wait_for(&self, on_stderr: bool, text: &str, limit: Duration) {
        let lines = if on_stderr {
            self.stderr.clone()
        } else {
            self.stdout.clone()
        };
        let what = format!(
            "a line containing {text:?} on {}",
            if on_stderr { "stderr" } else { "stdout" }
        );
        let seen = tokio::time::timeout(
            limit,
            eventually(&what, limit + Duration::from_secs(1), || {
                let lines = lines.clone();
                async move {
                    lines
                        .lock()
                        .unwrap()
                        .iter()
                        .any(|l| l.contains(text))
                        .then_some(())
                }
            }),
        )
        .await;
        assert!(
            seen.is_ok(),
            "timed out after {limit:?} waiting for {what}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.stdout_lines().join("\n"),
            self.stderr_lines().join("\n")
        );
    }

    /// Waits for the process to end by itself (at most `limit`).
    pub async fn finish(mut self, limit: Duration) -> Output {
        let status = match tokio::time::timeout(limit, self.child.wait()).await {
            Ok(status) => status.expect("wait for restockctl"),
            Err(_) => {
                let _ = self.child.kill().await;
                panic!(
                    "restockctl did not finish within {limit:?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
                    self.stdout_lines().join("\n"),
                    self.stderr_lines().join("\n")
                );
            }
        };
        for r in self.readers.drain(..) {
            let _ = r.await;
        }
        Output {
            code: status.code().unwrap_or(-1),
            stdout: self.stdout_lines().join("\n"),
            stderr: self.stderr_lines().join("\n"),
        }
    }
}

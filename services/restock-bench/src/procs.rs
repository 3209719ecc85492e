//! Child processes (killed and reaped when dropped, so a scenario that times
//! out or fails leaves nothing running), free loopback ports, readiness
//! waits, and what `/proc` says about a process's memory and CPU.

use std::{
    collections::HashMap,
    fs,
    future::Future,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, anyhow, bail};
use tonic::transport::Channel;
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

/// `--listen 127.0.0.1:0 --ready-file <ready>`: a restock server picks
/// its own port and announces it, so nothing guesses a free port (bind,
/// release and hope is a race with everything else on the machine).
pub fn listen_anywhere(ready: &Path) -> Vec<String> {
    vec![
        "--listen".to_owned(),
        "127.0.0.1:0".to_owned(),
        "--ready-file".to_owned(),
        ready.display().to_string(),
    ]
}

/// A loopback port that was free a moment ago, for a server that must be
/// told its address before it starts (an arbiter replica advertises its
/// URL to the others). Bind, release and use is a race with whatever else
/// binds ports on the machine; only replicas use it, everything else binds
/// port 0 and announces ([`listen_anywhere`]).
pub fn reserve_port() -> anyhow::Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").context("binding a free loopback port")?;
    Ok(l.local_addr()?.port())
}

/// Waits for `process` to write its ready file and returns the address it
/// announced for `what` (`"grpc"`, `"http"`); fails with the process's last
/// log lines if it dies or takes longer than `limit`.
pub async fn announced(
    process: &mut ChildProcess,
    ready: &Path,
    what: &str,
    limit: Duration,
) -> anyhow::Result<std::net::SocketAddr> {
    let start = Instant::now();
    loop {
        process.check_running()?;
        if let Some(addr) =
            restock_runtime::announce::read_ready_file(ready).and_then(|m| m.get(what).copied())
        {
            return Ok(addr);
        }
        if start.elapsed() > limit {
            bail!(
                "{} did not announce its {what} address in {} within {limit:?}; last log lines:\n{}",
                process.name,
                ready.display(),
                process.log_tail(20)
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// One running program, killed (SIGKILL) and reaped when dropped.
#[derive(Debug)]
pub struct ChildProcess {
    name: String,
    log: PathBuf,
    child: Option<Child>,
}

impl ChildProcess {
    /// Starts `program` with `args` and `env`; stdout and stderr go to `log`.
    pub fn start(
        name: &str,
        program: &Path,
        args: &[String],
        env: &HashMap<String, String>,
        log: PathBuf,
    ) -> anyhow::Result<Self> {
        let out = fs::File::create(&log)
            .with_context(|| format!("creating log file {} for {name}", log.display()))?;
        let err = out.try_clone().context("duplicating a log file handle")?;
        let child = Command::new(program)
            .args(args)
            .envs(env)
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .with_context(|| format!("starting {name} ({})", program.display()))?;
        Ok(Self {
            name: name.to_owned(),
            log,
            child: Some(child),
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// `kill -9` and reap (what dropping it does, now).
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM, through `kill(1)`: the workspace forbids the `unsafe` a
    /// direct `kill(2)` needs, and the millisecond `kill` takes to start is
    /// small against what the signal is timed for.
    pub fn terminate(&self) -> anyhow::Result<()> {
        let status = Command::new("kill")
            .arg("-TERM")
            .arg(self.pid().to_string())
            .status()
            .context("running kill -TERM")?;
        if !status.success() {
            bail!("kill -TERM {} ({}) failed: {status}", self.pid(), self.name);
        }
        Ok(())
    }

    /// Waits up to `limit` for the process to exit by itself (true), then
    /// kills it (false).
    pub async fn wait_exit(&mut self, limit: Duration) -> bool {
        let start = Instant::now();
        while let Some(c) = self.child.as_mut() {
            if matches!(c.try_wait(), Ok(Some(_)) | Err(_)) {
                self.child = None;
                return true;
            }
            if start.elapsed() > limit {
                self.kill9();
                return false;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        true
    }

    /// Fails if the process already exited, with the end of its log.
    pub fn check_running(&mut self) -> anyhow::Result<()> {
        let Some(c) = self.child.as_mut() else {
            bail!("{} was already stopped", self.name);
        };
        if let Some(status) = c.try_wait()? {
            bail!(
                "{} exited ({status}); last log lines:\n{}",
                self.name,
                self.log_tail(20)
            );
        }
        Ok(())
    }

    /// The last `n` lines of the process's log.
    pub fn log_tail(&self, n: usize) -> String {
        let text = fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }
}

impl Drop for ChildProcess {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Calls `check` every 10 ms until it returns `Ok(Some)`, at most `limit`;
/// the error names `what` and the last failure.
pub async fn eventually<T, F, Fut>(what: &str, limit: Duration, mut check: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<Option<T>>>,
{
    let start = Instant::now();
    let mut last_error = None;
    loop {
        match check().await {
            Ok(Some(v)) => return Ok(v),
            Ok(None) => {}
            Err(e) => last_error = Some(e),
        }
        if start.elapsed() > limit {
            return Err(match last_error {
                Some(e) => e.context(format!("timed out after {limit:?} waiting for {what}")),
                None => anyhow!("timed out after {limit:?} waiting for {what}"),
            });
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Waits until the gRPC health service at `url` says SERVING.
pub async fn wait_grpc_healthy(
    url: &str,
    limit: Duration,
    process: &mut ChildProcess,
) -> anyhow::Result<()> {
    let start = Instant::now();
    loop {
        process.check_running()?;
        let serving = async {
            let channel = Channel::from_shared(url.to_owned())?.connect().await?;
            let resp = HealthClient::new(channel)
                .check(HealthCheckRequest {
                    service: String::new(),
                })
                .await?;
            anyhow::Ok(resp.into_inner().status == 1)
        }
        .await;
        if matches!(serving, Ok(true)) {
            return Ok(());
        }
        if start.elapsed() > limit {
            bail!(
                "{} at {url} did not report SERVING within {limit:?}; last log lines:\n{}",
                process.name(),
                process.log_tail(20)
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Resident memory of a process (VmRSS), in MiB.
pub fn rss_mb(pid: u32) -> anyhow::Result<f64> {
    let path = format!("/proc/{pid}/status");
    let text = fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    let kb: f64 = text
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .with_context(|| format!("no VmRSS line in {path}"))?;
    Ok(kb / 1024.0)
}

/// CPU time used so far by a process (user + system), in clock ticks.
pub fn cpu_ticks(pid: u32) -> anyhow::Result<u64> {
    let path = format!("/proc/{pid}/stat");
    let text = fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    // The command name (field 2) may contain spaces; fields after its ')'.
    let rest = text
        .rsplit_once(')')
        .map(|(_, r)| r)
        .with_context(|| format!("unexpected format of {path}"))?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After ')': state is field 3, so utime (14) and stime (15) are at 11, 12.
    let utime: u64 = fields
        .get(11)
        .and_then(|v| v.parse().ok())
        .with_context(|| format!("no utime in {path}"))?;
    let stime: u64 = fields
        .get(12)
        .and_then(|v| v.parse().ok())
        .with_context(|| format!("no stime in {path}"))?;
    Ok(utime + stime)
}

/// Clock ticks per second for [`cpu_ticks`] (`getconf CLK_TCK`; 100 on
/// every common Linux).
pub fn clock_ticks_per_second() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}

/// The soft limit of open files of this process (children inherit it).
pub fn open_files_limit() -> Option<u64> {
    let text = fs::read_to_string("/proc/self/limits").ok()?;
    let line = text.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_its_own_memory_and_cpu() {
        let pid = std::process::id();
        assert!(rss_mb(pid).unwrap() > 0.0);
        cpu_ticks(pid).unwrap();
        assert!(open_files_limit().unwrap() > 0);
    }
}

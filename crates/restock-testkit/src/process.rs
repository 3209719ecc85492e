//! One running binary, killed when dropped. A server is started on port 0
//! and asked where it landed: it writes the address it bound to a ready
//! file (`--ready-file`), which the test reads. A restart after `kill -9`
//! reuses that address, because everything pointed at the server (watchers,
//! proxies, followers) was configured with it.

use std::{
    fs,
    net::{IpAddr, Ipv4Addr, SocketAddr},
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

/// How long a server may take from start to announcing its address. Long,
/// because the machine may be busy building; a server that dies first is
/// reported at once.
pub const READY_LIMIT: Duration = Duration::from_secs(30);

/// Where a server should listen and under which name it announces the
/// address (`"grpc"` for the gRPC servers, `"http"` for the store).
#[derive(Debug, Clone, Copy)]
pub struct Announce {
    pub ip: IpAddr,
    pub key: &'static str,
    /// 0 (the server picks) unless the test reserved one
    /// ([`crate::ReservedPort`]) because the server must be told its own
    /// address up front.
    pub port: u16,
}

impl Announce {
    /// gRPC on `127.0.0.1:0`.
    pub fn grpc() -> Self {
        Self {
            ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
            key: "grpc",
            port: 0,
        }
    }

    /// HTTP on `127.0.0.1:0`.
    pub fn http() -> Self {
        Self {
            key: "http",
            ..Self::grpc()
        }
    }

    /// The same, on another local address (the fault suite's "hosts").
    pub fn on(self, ip: IpAddr) -> Self {
        Self { ip, ..self }
    }

    /// The same, on this address (a port the test holds).
    pub fn at(self, addr: SocketAddr) -> Self {
        Self {
            ip: addr.ip(),
            port: addr.port(),
            ..self
        }
    }
}

/// A server's listening side: the address to pass as `--listen` (port 0
/// until the first start has announced the real one) and its ready file.
#[derive(Debug)]
struct Listen {
    announce: Announce,
    addr: SocketAddr,
    bound: bool,
    ready_file: PathBuf,
}

/// One running binary, killed when dropped.
#[derive(Debug)]
pub struct Process {
    name: String,
    program: PathBuf,
    args: Vec<String>,
    log: PathBuf,
    listen: Option<Listen>,
    child: Option<Child>,
}

impl Process {
    /// Starts `program` with `args`; its output is appended to `log`. For a
    /// binary that serves nothing, or one expected to fail at start-up.
    pub fn start(name: &str, program: PathBuf, args: Vec<String>, log: PathBuf) -> Self {
        let mut p = Self {
            name: name.to_owned(),
            program,
            args,
            log,
            listen: None,
            child: None,
        };
        p.spawn();
        p
    }

    /// Starts a server: `args` plus `--listen IP:0 --ready-file <log>.ready`,
    /// and waits (bounded) until it has announced the address it bound. It
    /// is not yet known to be healthy: the wrappers wait for that.
    pub async fn start_server(
        name: &str,
        program: PathBuf,
        args: Vec<String>,
        log: PathBuf,
        announce: Announce,
    ) -> Self {
        let ready_file = log.with_extension("ready.json");
        let mut p = Self {
            name: name.to_owned(),
            program,
            args,
            log,
            listen: Some(Listen {
                announce,
                addr: SocketAddr::new(announce.ip, announce.port),
                bound: false,
                ready_file,
            }),
            child: None,
        };
        p.spawn();
        p.wait_ready().await;
        p
    }

    fn spawn(&mut self) {
        let out = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("open log file");
        let err = out.try_clone().expect("clone log file");
        let mut cmd = Command::new(&self.program);
        cmd.args(&self.args);
        if let Some(l) = &self.listen {
            // A stale file from the previous run must not be taken for this
            // one's announcement.
            let _ = fs::remove_file(&l.ready_file);
            cmd.arg("--listen")
                .arg(l.addr.to_string())
                .arg("--ready-file")
                .arg(&l.ready_file);
        }
        let child = cmd
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or("info".into()),
            )
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}", self.program.display()));
        self.child = Some(child);
    }

    /// Waits until the server has written its ready file and returns the
    /// address in it; panics (the log is printed as the process is dropped)
    /// if the process exits first or says nothing within [`READY_LIMIT`]. After the first start, the
    /// address is kept for restarts.
    pub async fn wait_ready(&mut self) -> SocketAddr {
        match self.wait_ready_or_exit().await {
            Ok(addr) => addr,
            // The log follows: a Process prints it when dropped in a panic.
            Err(status) => panic!(
                "{} exited ({status}) before announcing its address",
                self.name
            ),
        }
    }

    /// [`Process::wait_ready`], but a process that exits before announcing
    /// its address is an `Err` with its exit status, for a caller that
    /// starts it again as a supervisor would (a server may exit on purpose
    /// when a dependency does not answer at start-up).
    pub async fn wait_ready_or_exit(&mut self) -> Result<SocketAddr, std::process::ExitStatus> {
        let start = Instant::now();
        loop {
            let l = self
                .listen
                .as_ref()
                .expect("a server started with start_server");
            if let Some(addr) = restock_runtime::announce::read_ready_file(&l.ready_file)
                .and_then(|m| m.get(l.announce.key).copied())
            {
                let l = self.listen.as_mut().expect("checked above");
                assert!(
                    !l.bound || l.addr == addr,
                    "{} came back on {addr}, not on {}",
                    self.name,
                    l.addr
                );
                l.addr = addr;
                l.bound = true;
                return Ok(addr);
            }
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                self.child = None;
                return Err(status);
            }
            assert!(
                start.elapsed() < READY_LIMIT,
                "{} did not announce its address within {READY_LIMIT:?}",
                self.name
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// The address the server announced.
    pub fn addr(&self) -> SocketAddr {
        let l = self
            .listen
            .as_ref()
            .unwrap_or_else(|| panic!("{} was not started as a server", self.name));
        assert!(l.bound, "{} has not announced its address yet", self.name);
        l.addr
    }

    /// Another address the server announced in its ready file under `key`
    /// (`"http"` beside `"grpc"`), if it announced one.
    pub fn announced(&self, key: &str) -> Option<SocketAddr> {
        let l = self.listen.as_ref()?;
        restock_runtime::announce::read_ready_file(&l.ready_file)?
            .get(key)
            .copied()
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// Sends a signal by name (`-9`, `-TERM`, `-STOP`, `-CONT`, `-HUP`).
    pub fn signal(&self, sig: &str) {
        let status = Command::new("kill")
            .arg(sig)
            .arg(self.pid().to_string())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill {sig} {} failed", self.name);
    }

    /// `kill -9` and reap.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM and wait for the exit, at most `limit`. Returns the exit code.
    pub fn terminate(&mut self, limit: Duration) -> Option<i32> {
        let mut c = self.child.take()?;
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(c.id().to_string())
            .status();
        let start = Instant::now();
        loop {
            if let Ok(Some(status)) = c.try_wait() {
                return status.code();
            }
            if start.elapsed() > limit {
                let _ = c.kill();
                let _ = c.wait();
                panic!("{} did not stop within {limit:?} of SIGTERM", self.name);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits for the process to exit by itself; returns its exit code.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<i32> {
        let c = self.child.as_mut()?;
        let start = Instant::now();
        loop {
            if let Ok(Some(status)) = c.try_wait() {
                self.child = None;
                return status.code();
            }
            if start.elapsed() > limit {
                panic!("{} did not exit within {limit:?}", self.name);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kills the process (if it still runs) and starts the same command
    /// again; a server listens on the address it announced the first time.
    /// Does not wait: a server's wrapper waits with [`Process::wait_ready`]
    /// and a health check.
    pub fn restart(&mut self) {
        self.kill9();
        self.spawn();
    }

    /// Sets the value that follows `flag` in the command, for the starts
    /// to come (a restart); panics if the command has no such flag.
    pub fn set_arg(&mut self, flag: &str, value: &str) {
        let at = self
            .args
            .iter()
            .position(|a| a == flag)
            .filter(|i| i + 1 < self.args.len())
            .unwrap_or_else(|| panic!("{} was started without {flag} VALUE", self.name));
        self.args[at + 1] = value.to_owned();
    }

    pub fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The last line of its log (what a process that exited said last).
    pub fn last_log_line(&self) -> String {
        self.log_text()
            .lines()
            .last()
            .unwrap_or_default()
            .to_owned()
    }

    fn log_tail(&self, lines: usize) -> String {
        let text = self.log_text();
        let tail: Vec<&str> = text.lines().rev().take(lines).collect();
        let mut out = format!("----- last log lines of {} -----", self.name);
        for l in tail.into_iter().rev() {
            out.push('\n');
            out.push_str(l);
        }
        out
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill9();
        if std::thread::panicking() || std::env::var_os("TEST_LOG").is_some() {
            eprintln!("{}", self.log_tail(60));
        }
    }
}

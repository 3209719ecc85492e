//! A real browser in a test: Debian's headless Chromium, driven over
//! WebDriver by Debian's `chromedriver` (started here on a port it picks
//! and announces, killed with its browser when the [`Browser`] is
//! dropped), spoken to with `fantoccini`.
//!
//! What a test of a live page needs: open a URL, wait (bounded, by
//! polling) for a CSS selector or a JavaScript condition, read text and
//! attributes, run JavaScript, type and click, read the browser's console
//! log (`SEVERE` entries are errors: uncaught exceptions, failed loads,
//! `console.error`), and save a screenshot.
//!
//! Without `chromedriver` and Chromium, [`Browser::start`] returns `None`
//! after a `SKIPPED:` note; with `RESTOCK_REQUIRE_BROWSER=1` (CI) it fails
//! instead (`apt-get install chromium chromium-driver`).

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::Mutex,
    time::{Duration, Instant},
};

use fantoccini::{Client, ClientBuilder, Locator, wd::WebDriverCompatibleCommand};
use serde_json::{Value, json};

/// How long chromedriver may take to announce its port, and the browser
/// to start.
const START_LIMIT: Duration = Duration::from_secs(30);

/// How often a wait asks the page again.
const POLL: Duration = Duration::from_millis(50);

/// The browser's viewport: the page's `innerWidth` x `innerHeight`, set by
/// Chromium's device emulation (a headless window cannot be narrower than
/// 500 px, and its height includes the window's frame).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Viewport {
    pub width: u32,
    pub height: u32,
    /// A phone: mobile user agent, touch, and the page's `<meta
    /// name="viewport">` honoured.
    pub mobile: bool,
}

impl Viewport {
    /// 1280 x 900, a laptop's window.
    pub const DESKTOP: Self = Self {
        width: 1280,
        height: 900,
        mobile: false,
    };
    /// 390 x 844, a phone held upright.
    pub const PHONE: Self = Self {
        width: 390,
        height: 844,
        mobile: true,
    };
}

/// One entry of the browser's console log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogEntry {
    /// `SEVERE`, `WARNING`, `INFO`, `DEBUG`.
    pub level: String,
    /// Where it came from (`console-api`, `javascript`, `network`, ...) and
    /// what it says.
    pub message: String,
    pub source: String,
}

impl std::fmt::Display for LogEntry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} [{}] {}", self.level, self.source, self.message)
    }
}

/// Shows a list of log entries one to a line (or `(none)`).
pub fn show_log(entries: &[LogEntry]) -> String {
    if entries.is_empty() {
        return "(none)".into();
    }
    entries
        .iter()
        .map(|e| format!("  {e}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The first of `names` found on `PATH`.
fn on_path(names: &[&str]) -> Option<PathBuf> {
    let paths = std::env::var_os("PATH")?;
    std::env::split_paths(&paths)
        .flat_map(|dir| names.iter().map(move |n| dir.join(n)))
        .find(|p| p.is_file())
}

/// `chromedriver` and the Chromium it drives, or `None` (with a note) when
/// either is missing. With `RESTOCK_REQUIRE_BROWSER=1` (CI) a missing one
/// fails.
pub fn chromium() -> Option<(PathBuf, PathBuf)> {
    let driver = on_path(&["chromedriver"]);
    let browser = on_path(&["chromium", "chromium-browser", "google-chrome"]);
    match (driver, browser) {
        (Some(d), Some(b)) => Some((d, b)),
        (driver, browser) => {
            let missing = match (driver, browser) {
                (None, None) => "chromedriver and chromium are",
                (None, _) => "chromedriver is",
                _ => "chromium is",
            };
            let required = std::env::var("RESTOCK_REQUIRE_BROWSER").is_ok_and(|v| v == "1");
            assert!(
                !required,
                "a browser is required (RESTOCK_REQUIRE_BROWSER=1) but {missing} not on PATH; \
                 apt-get install chromium chromium-driver"
            );
            eprintln!(
                "SKIPPED: {missing} not on PATH, so the browser tests did not run \
                 (apt-get install chromium chromium-driver)"
            );
            None
        }
    }
}

/// chromedriver's legacy `POST /session/{id}/se/log` with
/// `{"type": "browser"}`: the console entries logged since the last call
/// (the session must ask for them with `goog:loggingPrefs`).
#[derive(Debug)]
struct BrowserLog;

impl WebDriverCompatibleCommand for BrowserLog {
    fn endpoint(
        &self,
        base_url: &url::Url,
        session_id: Option<&str>,
    ) -> Result<url::Url, url::ParseError> {
        base_url.join(&format!(
            "session/{}/se/log",
            session_id.unwrap_or_default()
        ))
    }

    fn method_and_body(&self, _: &url::Url) -> (http::Method, Option<String>) {
        (
            http::Method::POST,
            Some(json!({"type": "browser"}).to_string()),
        )
    }
}

/// A headless Chromium with its own chromedriver and profile folder.
/// Dropping it kills chromedriver and the browser (their whole process
/// group); [`Browser::close`] ends the session politely first.
#[derive(Debug)]
pub struct Browser {
    client: Client,
    driver: Child,
    /// Every console entry read so far (chromedriver hands each out once).
    log: Mutex<Vec<LogEntry>>,
    // Holds the profile and chromedriver's output; removed last.
    _dir: tempfile::TempDir,
}

impl Browser {
    /// A browser with the [`Viewport::DESKTOP`] viewport, or `None` after a
    /// `SKIPPED:` note when none is installed (see [`chromium`]).
    pub async fn start() -> Option<Self> {
        Self::start_with(Viewport::DESKTOP).await
    }

    /// A browser whose pages are `viewport` wide and high.
    pub async fn start_with(viewport: Viewport) -> Option<Self> {
        let (driver_path, browser_path) = chromium()?;
        let dir = tempfile::tempdir().expect("temp dir");
        let out = dir.path().join("chromedriver.log");
        // `--port=0` lets chromedriver pick a port, but it binds IPv4 and
        // IPv6 apart and gives up ("IPv4 port not available") when the
        // port it got on one is taken on the other: a race with every
        // other test binding ports. Starting it again picks another port.
        let mut attempt = 0;
        let (guard, port) = loop {
            attempt += 1;
            let mut cmd = Command::new(&driver_path);
            cmd.arg("--port=0")
                .stdin(Stdio::null())
                .stdout(fs::File::create(&out).expect("chromedriver log file"))
                .stderr(fs::File::create(dir.path().join("chromedriver.err")).expect("log file"));
            // Its own process group, so a drop kills the browser it started too.
            std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
            let driver = cmd
                .spawn()
                .unwrap_or_else(|e| panic!("start {}: {e}", driver_path.display()));
            // From here on a panic kills it (Browser's drop needs a client,
            // so this guard does it until then).
            let mut guard = Group(Some(driver));
            match wait_port(&out, guard.0.as_mut().expect("driver")) {
                Ok(port) => break (guard, port),
                Err(text) if attempt < DRIVER_ATTEMPTS => {
                    eprintln!("chromedriver did not start (attempt {attempt}), again:\n{text}");
                }
                Err(text) => panic!(
                    "chromedriver exited before announcing its port, {attempt} times; the last:\n{text}"
                ),
            }
        };
        let mut guard = guard;

        let profile = dir.path().join("profile");
        let caps = json!({
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": browser_path,
                "args": [
                    "--headless=new",
                    "--no-sandbox",
                    "--disable-gpu",
                    "--window-size=1280,900",
                    "--no-first-run",
                    "--disable-background-networking",
                    format!("--user-data-dir={}", profile.display()),
                ],
                "mobileEmulation": {
                    "deviceMetrics": {
                        "width": viewport.width,
                        "height": viewport.height,
                        "pixelRatio": 1,
                        "mobile": viewport.mobile,
                        "touch": viewport.mobile,
                    }
                },
            },
            "goog:loggingPrefs": {"browser": "ALL"},
        });
        let Value::Object(caps) = caps else {
            unreachable!("a JSON object")
        };
        let connector = hyper_util::client::legacy::connect::HttpConnector::new();
        let client = tokio::time::timeout(
            START_LIMIT,
            ClientBuilder::new(connector)
                .capabilities(caps)
                .connect(&format!("http://127.0.0.1:{port}")),
        )
        .await
        .unwrap_or_else(|_| panic!("chromedriver started no browser within {START_LIMIT:?}"))
        .unwrap_or_else(|e| {
            panic!(
                "chromedriver could not start {}: {e}\n{}",
                browser_path.display(),
                fs::read_to_string(&out).unwrap_or_default()
            )
        });
        Some(Self {
            client,
            driver: guard.0.take().expect("driver"),
            log: Mutex::new(Vec::new()),
            _dir: dir,
        })
    }

    /// The fantoccini client, for anything this module does not wrap.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Goes to `url` and waits for its `load` event.
    pub async fn open(&self, url: &str) {
        self.client
            .goto(url)
            .await
            .unwrap_or_else(|e| panic!("open {url}: {e}"));
    }

    /// The URL the browser shows now.
    pub async fn current_url(&self) -> String {
        self.client
            .current_url()
            .await
            .expect("the browser's URL")
            .to_string()
    }

    /// Runs `script` (a function body: `return ...` gives a value) with
    /// `arguments[0..]` = `args`; panics with the script and the error.
    pub async fn js_with(&self, script: &str, args: Vec<Value>) -> Value {
        self.client
            .execute(script, args)
            .await
            .unwrap_or_else(|e| panic!("the script failed: {e}\n--- script ---\n{script}"))
    }

    /// [`Browser::js_with`] without arguments.
    pub async fn js(&self, script: &str) -> Value {
        self.js_with(script, Vec::new()).await
    }

    /// Polls the JavaScript expression `expr` until it is truthy, at most
    /// `limit`, and returns its value. On a timeout it panics naming `what`,
    /// the last value, and what the page shows.
    pub async fn wait_js(&self, what: &str, expr: &str, limit: Duration) -> Value {
        self.wait_until(what, expr, limit, |v| truthy(v).then(|| v.clone()))
            .await
    }

    /// Polls the JavaScript expression `expr` (a snapshot of what matters)
    /// until `check` accepts its value, at most `limit`, and returns what
    /// `check` made of it. On a timeout it panics naming `what`, the last
    /// snapshot, and what the page shows.
    pub async fn wait_until<T>(
        &self,
        what: &str,
        expr: &str,
        limit: Duration,
        mut check: impl FnMut(&Value) -> Option<T>,
    ) -> T {
        let script = format!("return ({expr});");
        let start = Instant::now();
        loop {
            // A page being replaced may refuse one script: ask again.
            let last = self.client.execute(&script, Vec::new()).await;
            if let Ok(v) = &last
                && let Some(done) = check(v)
            {
                return done;
            }
            if start.elapsed() >= limit {
                let last = match last {
                    Ok(v) => serde_json::to_string_pretty(&v).unwrap_or_default(),
                    Err(e) => format!("an error: {e}"),
                };
                let expr = if expr.len() > 200 {
                    "the snapshot"
                } else {
                    expr
                };
                panic!(
                    "timed out after {limit:?} waiting for {what}\n`{expr}` was {last}\n{}",
                    self.describe().await
                );
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Waits until an element matches the CSS `selector`.
    pub async fn wait_for(&self, selector: &str, limit: Duration) {
        self.wait_js(
            &format!("an element matching `{selector}`"),
            &format!("document.querySelector({}) !== null", json!(selector)),
            limit,
        )
        .await;
    }

    /// The text (`textContent`, trimmed) of the first element matching
    /// `selector`, or `None` when none does.
    pub async fn text(&self, selector: &str) -> Option<String> {
        let v = self
            .js_with(
                "const e = document.querySelector(arguments[0]); \
                 return e === null ? null : e.textContent.trim();",
                vec![json!(selector)],
            )
            .await;
        v.as_str().map(str::to_owned)
    }

    /// The attribute `name` of the first element matching `selector`, or
    /// `None` when there is no such element or attribute.
    pub async fn attr(&self, selector: &str, name: &str) -> Option<String> {
        let v = self
            .js_with(
                "const e = document.querySelector(arguments[0]); \
                 return e === null ? null : e.getAttribute(arguments[1]);",
                vec![json!(selector), json!(name)],
            )
            .await;
        v.as_str().map(str::to_owned)
    }

    /// How many elements match `selector`.
    pub async fn count(&self, selector: &str) -> usize {
        let v = self
            .js_with(
                "return document.querySelectorAll(arguments[0]).length;",
                vec![json!(selector)],
            )
            .await;
        v.as_u64().unwrap_or(0) as usize
    }

    /// Types `text` into the element matching `selector`, key by key, as a
    /// person would.
    pub async fn type_into(&self, selector: &str, text: &str) {
        let e = self
            .client
            .find(Locator::Css(selector))
            .await
            .unwrap_or_else(|e| panic!("no `{selector}` to type into: {e}"));
        e.clear()
            .await
            .unwrap_or_else(|e| panic!("clear `{selector}`: {e}"));
        e.send_keys(text)
            .await
            .unwrap_or_else(|e| panic!("type into `{selector}`: {e}"));
    }

    /// Clicks the element matching `selector`.
    pub async fn click(&self, selector: &str) {
        self.client
            .find(Locator::Css(selector))
            .await
            .unwrap_or_else(|e| panic!("no `{selector}` to click: {e}"))
            .click()
            .await
            .unwrap_or_else(|e| panic!("click `{selector}`: {e}"));
    }

    /// Asks chromedriver for the entries logged since the last ask and
    /// keeps them.
    async fn read_log(&self) -> Result<(), fantoccini::error::CmdError> {
        let fresh = self.client.issue_cmd(BrowserLog).await?;
        let mut log = self.log.lock().expect("log lock");
        for e in fresh.as_array().into_iter().flatten() {
            let field = |k: &str| e[k].as_str().unwrap_or_default().to_owned();
            log.push(LogEntry {
                level: field("level"),
                message: field("message"),
                source: field("source"),
            });
        }
        Ok(())
    }

    /// Every console entry the browser logged in this session so far.
    pub async fn console_log(&self) -> Vec<LogEntry> {
        self.read_log()
            .await
            .unwrap_or_else(|e| panic!("read the browser's console log: {e}"));
        self.log.lock().expect("log lock").clone()
    }

    /// The console entries at level `SEVERE` (errors) so far.
    pub async fn errors(&self) -> Vec<LogEntry> {
        self.console_log()
            .await
            .into_iter()
            .filter(|e| e.level == "SEVERE")
            .collect()
    }

    /// Saves a PNG of what the viewport shows to `path` (its folder is
    /// made if missing).
    pub async fn screenshot(&self, path: &Path) {
        let png = self
            .client
            .screenshot()
            .await
            .unwrap_or_else(|e| panic!("take a screenshot: {e}"));
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            fs::create_dir_all(parent).unwrap_or_else(|e| panic!("make {}: {e}", parent.display()));
        }
        fs::write(path, png).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    }

    /// What the page shows, for a failure message: its URL, the start of
    /// its text, and the console's errors.
    pub async fn describe(&self) -> String {
        let url = self
            .client
            .current_url()
            .await
            .map(|u| u.to_string())
            .unwrap_or_else(|e| format!("(no URL: {e})"));
        let text = self
            .client
            .execute(
                "return document.body ? document.body.innerText : '(no body)';",
                Vec::new(),
            )
            .await
            .map(|v| v.as_str().unwrap_or_default().to_owned())
            .unwrap_or_else(|e| format!("(unreadable: {e})"));
        let text: String = text.chars().take(3000).collect();
        let errors = match self.read_log().await {
            Ok(()) => {
                let log = self.log.lock().expect("log lock");
                let severe: Vec<LogEntry> = log
                    .iter()
                    .filter(|e| e.level == "SEVERE")
                    .cloned()
                    .collect();
                show_log(&severe)
            }
            Err(e) => format!("(unreadable: {e})"),
        };
        format!("--- the page at {url} shows ---\n{text}\n--- console errors ---\n{errors}")
    }

    /// Ends the session (chromedriver stops the browser and removes its
    /// profile), then chromedriver.
    pub async fn close(self) {
        let _ = tokio::time::timeout(Duration::from_secs(10), self.client.clone().close()).await;
        // Drop kills what is left.
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        kill_group(&mut self.driver);
    }
}

/// Kills a process group when dropped (until taken).
struct Group(Option<Child>);

impl Drop for Group {
    fn drop(&mut self) {
        if let Some(c) = self.0.as_mut() {
            kill_group(c);
        }
    }
}

/// `kill -KILL -- -PGID` for a child started as a group leader, then reaps
/// it.
fn kill_group(child: &mut Child) {
    let _ = Command::new("kill")
        .args(["-KILL", "--", &format!("-{}", child.id())])
        .stderr(Stdio::null())
        .status();
    let _ = child.kill();
    let _ = child.wait();
}

/// How many times chromedriver is started before its failing to pick a
/// port fails the test.
const DRIVER_ATTEMPTS: u32 = 5;

/// Reads chromedriver's `... started successfully on port N.` from its
/// output; `Err` with its output when it exited first.
fn wait_port(out: &Path, driver: &mut Child) -> Result<u16, String> {
    let start = Instant::now();
    loop {
        let text = fs::read_to_string(out).unwrap_or_default();
        if let Some(port) = text.lines().find_map(|l| {
            l.split_once("started successfully on port ")?
                .1
                .trim_end_matches('.')
                .trim()
                .parse()
                .ok()
        }) {
            return Ok(port);
        }
        if let Ok(Some(status)) = driver.try_wait() {
            return Err(format!("({status})\n{text}"));
        }
        assert!(
            start.elapsed() < START_LIMIT,
            "chromedriver announced no port within {START_LIMIT:?}:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// JavaScript's truthiness for a value that came back from a script.
fn truthy(v: &Value) -> bool {
    match v {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::Number(n) => n.as_f64().is_some_and(|f| f != 0.0 && !f.is_nan()),
        Value::String(s) => !s.is_empty(),
        Value::Array(_) | Value::Object(_) => true,
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use tokio::{
        io::{AsyncReadExt, AsyncWriteExt},
        net::TcpListener,
    };

    use super::*;

    /// A page that counts by itself, logs an error on the console, and has
    /// a form: served over real HTTP from this test, for the harness to
    /// prove itself on.
    const PAGE: &str = r#"<!doctype html><html><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1"><title>self-test</title></head>
<body><p id="ticks" data-n="0">0</p>
<form><input name="token"><button type="button" id="go">go</button></form><p id="said"></p>
<script>
  console.log("harness says hello");
  console.error("harness self-test error");
  let n = 0;
  setInterval(() => { n += 1; const t = document.getElementById("ticks"); t.textContent = String(n); t.dataset.n = String(n); }, 100);
  document.getElementById("go").addEventListener("click", () => {
    document.getElementById("said").textContent = "you typed " + document.querySelector("input[name=token]").value;
  });
</script></body></html>"#;

    /// Serves `PAGE` to every request on a port of its own.
    async fn serve_page() -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("address");
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 8192];
                    let _ = s.read(&mut buf).await;
                    let reply = format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: text/html; charset=utf-8\r\n\
                         content-length: {}\r\nconnection: close\r\n\r\n{PAGE}",
                        PAGE.len()
                    );
                    let _ = s.write_all(reply.as_bytes()).await;
                });
            }
        });
        addr
    }

    #[test]
    fn truthiness_is_javascripts() {
        for v in [json!(null), json!(false), json!(0), json!(""), json!(0.0)] {
            assert!(!truthy(&v), "{v}");
        }
        for v in [json!(true), json!(1), json!("x"), json!([]), json!({})] {
            assert!(truthy(&v), "{v}");
        }
    }

    #[tokio::test]
    async fn the_harness_reads_a_live_page_its_console_and_a_screenshot() {
        let Some(b) = Browser::start().await else {
            return;
        };
        let addr = serve_page().await;
        b.open(&format!("http://{addr}/")).await;
        assert_eq!(b.current_url().await, format!("http://{addr}/"));
        b.wait_for("#ticks", Duration::from_secs(5)).await;
        // The page changes by itself: read it twice.
        let first: u64 = b.attr("#ticks", "data-n").await.unwrap().parse().unwrap();
        let later = b
            .wait_js(
                "the counter to move",
                &format!("Number(document.getElementById('ticks').dataset.n) > {first} + 2"),
                Duration::from_secs(5),
            )
            .await;
        assert_eq!(later, json!(true));
        assert_eq!(b.text("#nothing-here").await, None);
        assert_eq!(b.attr("#ticks", "data-missing").await, None);
        assert_eq!(b.count("form input").await, 1);
        assert_eq!(b.js("return innerWidth").await, json!(1280));
        assert_eq!(b.js("return innerHeight").await, json!(900));

        b.type_into("input[name=token]", "s3cret").await;
        b.click("#go").await;
        b.wait_js(
            "the click to be answered",
            "document.getElementById('said').textContent !== ''",
            Duration::from_secs(5),
        )
        .await;
        assert_eq!(b.text("#said").await.as_deref(), Some("you typed s3cret"));

        // console.error comes back as SEVERE; console.log as INFO.
        let errors = b.errors().await;
        assert!(
            errors
                .iter()
                .any(|e| e.message.contains("harness self-test error")),
            "no SEVERE entry for console.error:\n{}",
            show_log(&b.console_log().await)
        );
        assert!(errors.iter().all(|e| !e.message.contains("hello")));
        let all = b.console_log().await;
        assert!(
            all.iter()
                .any(|e| e.level == "INFO" && e.message.contains("harness says hello")),
            "{}",
            show_log(&all)
        );
        // Entries are kept: a second read still has them.
        assert_eq!(b.errors().await.len(), errors.len());

        let png = tempfile::tempdir().unwrap();
        let path = png.path().join("shots/page.png");
        b.screenshot(&path).await;
        let bytes = fs::read(&path).unwrap();
        assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n", "a PNG");
        let width = u32::from_be_bytes(bytes[16..20].try_into().unwrap());
        let height = u32::from_be_bytes(bytes[20..24].try_into().unwrap());
        assert_eq!((width, height), (1280, 900));
        b.close().await;
    }

    #[tokio::test]
    async fn a_phone_viewport_is_390_wide_and_a_failed_wait_says_what_the_page_shows() {
        let Some(b) = Browser::start_with(Viewport::PHONE).await else {
            return;
        };
        let addr = serve_page().await;
        b.open(&format!("http://{addr}/")).await;
        assert_eq!(
            b.js("return [innerWidth, innerHeight]").await,
            json!([390, 844])
        );
        let b = std::sync::Arc::new(b);
        let waiting = {
            let b = b.clone();
            tokio::spawn(async move {
                b.wait_js(
                    "a thing that never comes",
                    "document.getElementById('never')",
                    Duration::from_millis(300),
                )
                .await
            })
        };
        let panic = waiting.await.unwrap_err().into_panic();
        let msg = panic.downcast_ref::<String>().cloned().unwrap_or_default();
        assert!(
            msg.contains("a thing that never comes")
                && msg.contains("was null")
                && msg.contains(&format!("http://{addr}/"))
                && msg.contains("harness self-test error"),
            "{msg}"
        );
    }
}

//! The arbiter's live status page in a real browser: headless Chromium
//! driven through Debian's chromedriver (`restock_testkit::browser`),
//! against the real binaries, the purchase cycle running (TEST_MODE, three
//! watchers, the store simulator). The page must follow the system by
//! itself: grants, cycles, watchers and alarms arrive over `/events`
//! without a reload, and the lease countdown ticks on its own.
//!
//! Without chromedriver and chromium these tests print `SKIPPED:` and
//! pass, unless `RESTOCK_REQUIRE_BROWSER=1` (CI). `RESTOCK_SCREENSHOT=PATH`
//! saves a PNG of the page with the system running (docs/status-page.png
//! is made so).

use std::{collections::BTreeSet, path::PathBuf, time::Duration};

use restock_testkit::{
    ArbiterEndpoint, ArbiterOptions, ArbiterProcess, Browser, StoreSimProcess, Viewport,
    WatcherProcess, browser::show_log, products_json, repo_root,
};
use serde::Deserialize;
use serde_json::Value;

/// How long the page may take to show anything it must show.
const WAIT: Duration = Duration::from_secs(20);

/// Everything the page contract names, read in one script so the parts
/// agree with each other.
const SNAPSHOT: &str = r#"(() => {
  const q = s => document.querySelector(s);
  const attr = (s, n) => { const e = q(s); return e === null ? null : e.getAttribute(n); };
  const text = s => { const e = q(s); return e === null ? null : e.textContent.trim(); };
  const rows = (s, f) => Array.from(document.querySelectorAll(s), f);
  return {
    conn: attr('#conn', 'data-state'),
    held: attr('#slot', 'data-held'),
    tcin: text('#slot-tcin'),
    name: text('#slot-name'),
    watcher: text('#slot-watcher'),
    token: text('#slot-token'),
    countdown: text('#slot-countdown'),
    products: rows('#products tbody tr[data-tcin]', r => [r.dataset.tcin, r.dataset.state ?? '']),
    watchers: rows('#watchers tbody tr[data-watcher]', r => [r.dataset.watcher, r.dataset.connected ?? '']),
    cycles: rows('#cycles tbody tr[data-token]', r => [r.dataset.token, r.dataset.outcome ?? '']),
    alarms: rows('#alarms li[data-alarm]', l => l.dataset.alarm),
    last_seq: document.body ? (document.body.dataset.lastSeq ?? null) : null,
    marker: window.__loadMarker ?? null,
  };
})()"#;

/// What [`SNAPSHOT`] reads.
#[derive(Debug, Clone, Deserialize)]
struct Page {
    conn: Option<String>,
    held: Option<String>,
    tcin: Option<String>,
    name: Option<String>,
    watcher: Option<String>,
    token: Option<String>,
    countdown: Option<String>,
    products: Vec<(String, String)>,
    watchers: Vec<(String, String)>,
    cycles: Vec<(String, String)>,
    alarms: Vec<String>,
    last_seq: Option<String>,
    marker: Option<f64>,
}

impl Page {
    fn is_live(&self) -> bool {
        self.conn.as_deref() == Some("live")
    }

    /// The fencing token the slot shows, when it is all digits.
    fn token(&self) -> Option<u64> {
        let t = self.token.as_deref()?;
        if t.is_empty() || !t.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        t.parse().ok()
    }

    fn last_seq(&self) -> Option<u64> {
        self.last_seq.as_deref()?.parse().ok()
    }

    fn product_state(&self, tcin: &str) -> Option<&str> {
        self.products
            .iter()
            .find(|(t, _)| t == tcin)
            .map(|(_, s)| s.as_str())
    }

    fn connected(&self, watcher: &str) -> Option<&str> {
        self.watchers
            .iter()
            .find(|(w, _)| w == watcher)
            .map(|(_, c)| c.as_str())
    }

    fn cycle_tokens(&self) -> BTreeSet<String> {
        self.cycles.iter().map(|(t, _)| t.clone()).collect()
    }
}

/// Polls the page's [`SNAPSHOT`] until `check` accepts it (at most
/// [`WAIT`]); a timeout shows the last snapshot and the page.
async fn wait_page<T>(b: &Browser, what: &str, mut check: impl FnMut(&Page) -> Option<T>) -> T {
    b.wait_until(what, SNAPSHOT, WAIT, |v| {
        let page: Page = serde_json::from_value(v.clone()).ok()?;
        check(&page)
    })
    .await
}

async fn snapshot(b: &Browser) -> Page {
    let v = b.js(&format!("return {SNAPSHOT};")).await;
    serde_json::from_value(v.clone()).unwrap_or_else(|e| panic!("a snapshot ({e}): {v:#}"))
}

/// Marks this page load: a reload (or any navigation) loses the mark.
async fn mark_load(b: &Browser) -> f64 {
    b.js("window.__loadMarker = Math.random(); return window.__loadMarker;")
        .await
        .as_f64()
        .expect("a number")
}

/// Fails, listing them and what the page shows, if the console has errors.
async fn assert_no_console_errors(b: &Browser, when: &str) {
    let errors = b.errors().await;
    assert!(
        errors.is_empty(),
        "the browser's console has errors {when}:\n{}\n{}",
        show_log(&errors),
        b.describe().await
    );
}

/// The products of the repository's own `config/product_config.json`
/// (real names, some long), in priority order: what a person running the
/// system would see.
struct Listing {
    json: Value,
    /// (tcin, name), in priority order.
    products: Vec<(String, String)>,
}

fn repo_listing() -> Listing {
    let path = repo_root().join("config/product_config.json");
    let text =
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    let config: Value = serde_json::from_str(&text).expect("the product config is JSON");
    let json = config["products"].clone();
    let products: Vec<(String, String)> = json
        .as_array()
        .expect("a product list")
        .iter()
        .map(|p| {
            // A Target entry names its TCIN; a Shopify one its shop and
            // variant: the id is read as the arbiter reads it.
            let id = match p["tcin"].as_str() {
                Some(tcin) => tcin.to_owned(),
                None => format!(
                    "shopify:{}/{}",
                    p["shop"].as_str().expect("a shop"),
                    p["variant"].as_u64().expect("a variant")
                ),
            };
            (id, p["name"].as_str().unwrap_or_default().to_owned())
        })
        .collect();
    assert!(products.len() >= 4, "{}: {products:?}", path.display());
    Listing { json, products }
}

/// The cycle running: an arbiter in TEST_MODE (each checkout is voided, so
/// the top product is bought again and again while in stock), the store
/// simulator with checkouts of 1.5 s (a grant every second or two, each
/// lease held long enough for its countdown to move), `in_stock` of the
/// listing's products in stock, and `watchers` connected.
struct System {
    arbiter: ArbiterProcess,
    store: StoreSimProcess,
    watchers: Vec<WatcherProcess>,
}

async fn running_system(listing: &Listing, in_stock: &[usize], watchers: &[&str]) -> System {
    let arbiter = ArbiterProcess::start(ArbiterOptions {
        test_mode: true,
        lease_ttl: "10s".into(),
        ..ArbiterOptions::listing(&listing.json)
    })
    .await;
    let store = StoreSimProcess::start(listing.json.clone(), &["--checkout-delay", "1500ms"]).await;
    let mut started = Vec::new();
    for id in watchers {
        let w = WatcherProcess::start(&arbiter, &store, id, &[]).await;
        w.wait_connected().await;
        started.push(w);
    }
    for &i in in_stock {
        store.set_stock(&listing.products[i].0, true).await;
    }
    System {
        arbiter,
        store,
        watchers: started,
    }
}

const WATCHERS: [&str; 3] = ["watcher-1", "watcher-2", "watcher-3"];

#[tokio::test]
async fn the_status_page_follows_grants_cycles_and_watchers_live_without_a_reload() {
    let Some(b) = Browser::start().await else {
        return;
    };
    let listing = repo_listing();
    let (top, top_name) = listing.products[0].clone();
    let mut sys = running_system(&listing, &[0, 2, 3], &WATCHERS).await;
    b.open(&format!("{}/", sys.arbiter.http_url())).await;
    let marker = mark_load(&b).await;

    wait_page(&b, "#conn data-state=live", |p| p.is_live().then_some(())).await;
    let mut ids: Vec<(String, String)> =
        WATCHERS.map(|w| (w.to_owned(), "true".to_owned())).to_vec();
    ids.sort();
    wait_page(&b, "three watcher rows, all data-connected=true", |p| {
        let mut rows = p.watchers.clone();
        rows.sort();
        (rows == ids).then_some(())
    })
    .await;

    // A lease is held, by one of the three, on the top product (TEST_MODE
    // buys it again and again while it is in stock), shown whole.
    let first = wait_page(
        &b,
        &format!(
            "#slot data-held=true by one of {WATCHERS:?} on {top} (attempting), \
             with a numeric #slot-token"
        ),
        |p| {
            let held = p.held.as_deref() == Some("true")
                && p.token().is_some()
                && p.watcher.as_deref().is_some_and(|w| WATCHERS.contains(&w))
                && p.tcin.as_deref() == Some(top.as_str())
                && p.product_state(&top) == Some("attempting");
            held.then(|| p.clone())
        },
    )
    .await;
    assert_eq!(
        first.name.as_deref(),
        Some(top_name.as_str()),
        "#slot-name: {first:#?}"
    );
    let rows: Vec<&str> = first.products.iter().map(|(t, _)| t.as_str()).collect();
    let want: Vec<&str> = listing.products.iter().map(|(t, _)| t.as_str()).collect();
    assert_eq!(rows, want, "#products rows, in priority order: {first:#?}");
    for (tcin, state) in &first.products {
        assert!(
            ["ready", "queued", "attempting", "purchased", "failed"].contains(&state.as_str()),
            "product {tcin} has data-state {state:?}: {first:#?}"
        );
    }
    assert!(
        first.countdown.as_deref().is_some_and(|c| !c.is_empty()),
        "#slot-countdown is empty while the slot is held: {first:#?}"
    );

    // The countdown moves by itself: two readings 50 ms apart, with the
    // same lease and no event applied in between, differ.
    let ticked = b
        .wait_until(
            "#slot-countdown to change while #slot-token and body.dataset.lastSeq stay",
            r#"(() => {
              const now = {
                token: document.querySelector('#slot-token')?.textContent.trim(),
                countdown: document.querySelector('#slot-countdown')?.textContent.trim(),
                seq: document.body.dataset.lastSeq,
                held: document.querySelector('#slot')?.dataset.held,
              };
              const before = window.__lastReading;
              window.__lastReading = now;
              if (before && before.held === 'true' && now.held === 'true'
                  && before.token === now.token && before.seq === now.seq
                  && before.countdown !== now.countdown) {
                return [before.countdown, now.countdown];
              }
              return null;
            })()"#,
            WAIT,
            |v| v.as_array().cloned(),
        )
        .await;
    eprintln!("the countdown ticked by itself: {ticked:?}");

    // The next grant and the finished cycle arrive over /events.
    let first_token = first.token().expect("a token");
    let known = first.cycle_tokens();
    let later = wait_page(
        &b,
        &format!("#slot-token above {first_token} and a #cycles row not in {known:?}"),
        |p| {
            let moved = p.token().is_some_and(|t| t > first_token)
                && p.cycle_tokens().difference(&known).next().is_some();
            moved.then(|| p.clone())
        },
    )
    .await;
    let new_rows: Vec<&(String, String)> = later
        .cycles
        .iter()
        .filter(|(t, _)| !known.contains(t))
        .collect();
    for (token, outcome) in &new_rows {
        assert!(
            token.parse::<u64>().is_ok() && !outcome.is_empty(),
            "a #cycles row needs a numeric data-token and a data-outcome: {later:#?}"
        );
    }
    let (s1, s2) = (first.last_seq(), later.last_seq());
    assert!(
        s1.is_some() && s2 > s1,
        "body.dataset.lastSeq must be a number that grows: {s1:?} then {s2:?}"
    );
    assert_eq!(
        later.marker,
        Some(marker),
        "the page was reloaded (its load marker changed)"
    );
    assert!(
        later.alarms.is_empty(),
        "no alarm while the cycle runs with three watchers: {later:#?}"
    );
    assert_no_console_errors(&b, "while the cycle runs").await;

    if let Some(path) = std::env::var_os("RESTOCK_SCREENSHOT") {
        // Relative to the repository's top (tests run in tests/).
        let path = repo_root().join(PathBuf::from(path));
        // A picture worth showing: some history, and a lease just granted.
        wait_page(&b, "five cycles, the slot held", |p| {
            (p.cycles.len() >= 5 && p.held.as_deref() == Some("true")).then_some(())
        })
        .await;
        b.screenshot(&path).await;
        eprintln!(
            "saved a screenshot of the status page to {}",
            path.display()
        );
    }

    // Pausing shows an alarm, and resuming takes it away.
    sys.arbiter.set_paused(true).await;
    wait_page(&b, "a `paused` alarm in #alarms", |p| {
        p.alarms.iter().any(|a| a == "paused").then_some(())
    })
    .await;
    sys.arbiter.set_paused(false).await;
    wait_page(&b, "the `paused` alarm to go", |p| {
        p.alarms.iter().all(|a| a != "paused").then_some(())
    })
    .await;

    // A watcher that dies is shown disconnected.
    let gone = sys.watchers.pop().expect("three watchers");
    drop(gone);
    wait_page(&b, "watcher-3's row to show data-connected=false", |p| {
        (p.connected("watcher-3") == Some("false") && p.connected("watcher-1") == Some("true"))
            .then_some(())
    })
    .await;

    let end = snapshot(&b).await;
    assert_eq!(end.marker, Some(marker), "the page was reloaded");
    assert!(end.is_live(), "#conn is no longer live: {end:#?}");
    assert_no_console_errors(&b, "at the end").await;
    // The store's order book agrees with what the slot showed.
    let orders = sys.store.orders().await;
    let order = ["orders", "in_flight"]
        .iter()
        .flat_map(|k| orders[k].as_array().into_iter().flatten())
        .find(|o| o["fencing_token"].as_u64() == Some(first_token))
        .unwrap_or_else(|| {
            panic!("the store has no checkout with token {first_token}: {orders:#}")
        });
    assert_eq!(
        (order["tcin"].as_str(), order["watcher_id"].as_str()),
        (first.tcin.as_deref(), first.watcher.as_deref()),
        "the page showed {first:#?}\nthe store saw {order:#}"
    );
    b.close().await;
}

#[tokio::test]
async fn the_status_page_says_reconnecting_while_the_arbiter_is_down_and_recovers_in_place() {
    let Some(b) = Browser::start().await else {
        return;
    };
    let mut arbiter = ArbiterProcess::start(ArbiterOptions {
        test_mode: true,
        ..ArbiterOptions::default()
    })
    .await;
    b.open(&format!("{}/", arbiter.http_url())).await;
    let marker = mark_load(&b).await;
    // No watcher has connected: the page says so.
    wait_page(&b, "#conn live and a `no-watchers` alarm", |p| {
        (p.is_live() && p.alarms.iter().any(|a| a == "no-watchers")).then_some(())
    })
    .await;
    assert_no_console_errors(&b, "before the arbiter went down").await;

    arbiter.process.kill9();
    wait_page(
        &b,
        "#conn data-state=reconnecting and a `disconnected` alarm",
        |p| {
            (p.conn.as_deref() == Some("reconnecting")
                && p.alarms.iter().any(|a| a == "disconnected"))
            .then_some(())
        },
    )
    .await;
    arbiter.kill9_and_restart().await;
    wait_page(&b, "#conn data-state=live again", |p| {
        p.is_live().then_some(())
    })
    .await;
    // Paused after the restart: the page shows what the new process says.
    arbiter.set_paused(true).await;
    let p = wait_page(&b, "a `paused` alarm from the restarted arbiter", |p| {
        p.alarms.iter().any(|a| a == "paused").then(|| p.clone())
    })
    .await;
    assert_eq!(p.marker, Some(marker), "the page was reloaded");
    assert!(
        p.alarms.iter().all(|a| a != "disconnected"),
        "the `disconnected` alarm stayed after the feed came back: {p:#?}"
    );
    // While it was down the browser logged failed requests (a stream cut,
    // refused connections); nothing else may be an error.
    let errors: Vec<_> = b
        .errors()
        .await
        .into_iter()
        .filter(|e| !(e.source == "network" && e.message.contains("net::ERR_")))
        .collect();
    assert!(
        errors.is_empty(),
        "console errors other than failed requests while the arbiter was down:\n{}",
        show_log(&errors)
    );
    b.close().await;
}

#[tokio::test]
async fn with_a_token_the_page_asks_for_it_refuses_a_wrong_one_and_opens_with_the_right_one() {
    let Some(b) = Browser::start().await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, "page-s3cret-token\n").unwrap();
    let arbiter = ArbiterProcess::start(ArbiterOptions {
        extra_args: vec!["--auth-token-file".into(), token_file.display().to_string()],
        ..ArbiterOptions::default()
    })
    .await;
    let home = format!("{}/", arbiter.http_url());

    // Without the cookie: the form, and the page's data is refused too.
    b.open(&home).await;
    b.wait_for("form input[name=token]", WAIT).await;
    let url = b.current_url().await;
    assert_eq!(
        url,
        format!("{}/login?next=/", arbiter.http_url()),
        "GET / must send the browser to the login form"
    );
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let r = http.get(&home).send().await.unwrap();
    assert_eq!(r.status(), 303, "GET / without the token");
    assert_eq!(
        r.headers().get("location").and_then(|v| v.to_str().ok()),
        Some("/login?next=/"),
        "GET / without the token"
    );
    for path in ["/api/status", "/events"] {
        let url = format!("{}{path}", arbiter.http_url());
        let code = http.get(&url).send().await.unwrap().status();
        assert!(
            !code.is_success(),
            "GET {path} without the token must be refused, not {code}"
        );
    }

    b.type_into("input[name=token]", "not-the-token").await;
    b.click("form button[type=submit]").await;
    let problem = b
        .wait_js(
            "an error on the login form",
            "document.querySelector('input[name=token]') && document.querySelector('[role=alert]')?.textContent.trim()",
            WAIT,
        )
        .await;
    assert!(
        problem.as_str().is_some_and(|p| p.contains("Wrong token")),
        "{problem}"
    );
    assert_eq!(
        b.count("#conn").await,
        0,
        "the page showed without the token"
    );

    b.type_into("input[name=token]", "page-s3cret-token").await;
    b.click("form button[type=submit]").await;
    wait_page(&b, "the status page, live, after logging in", |p| {
        p.is_live().then_some(())
    })
    .await;
    assert_eq!(b.current_url().await, home);
    let cookies = b.js("return document.cookie").await;
    assert!(
        !cookies.as_str().unwrap_or_default().contains("restock"),
        "the session cookie must be HttpOnly, but the page reads {cookies}"
    );
    let p = snapshot(&b).await;
    assert_eq!(p.products.len(), 3, "{p:#?}");
    // The wrong token's answer was a 401 (the form again, with its alert),
    // which the browser logs; nothing else may be an error.
    let errors: Vec<_> = b
        .errors()
        .await
        .into_iter()
        .filter(|e| {
            !(e.source == "network"
                && e.message.contains("/login ")
                && e.message.contains("status of 401"))
        })
        .collect();
    assert!(
        errors.is_empty(),
        "console errors other than the wrong token's 401:\n{}",
        show_log(&errors)
    );
    b.close().await;
}

#[tokio::test]
async fn on_a_phone_the_status_page_fits_the_width() {
    let Some(b) = Browser::start_with(Viewport::PHONE).await else {
        return;
    };
    let listing = repo_listing();
    let sys = running_system(&listing, &[0], &["watcher-with-a-long-name-1"]).await;
    b.open(&format!("{}/", sys.arbiter.http_url())).await;
    wait_page(&b, "a held slot shown live", |p| {
        (p.is_live() && p.held.as_deref() == Some("true") && p.watchers.len() == 1).then_some(())
    })
    .await;
    let sizes: Value = b
        .js("return [document.documentElement.scrollWidth, document.body.scrollWidth, innerWidth]")
        .await;
    let n = |i: usize| sizes[i].as_u64().expect("a width");
    assert_eq!(n(2), 390, "the phone viewport");
    assert!(
        n(0) <= n(2) + 1 && n(1) <= n(2) + 1,
        "the page is wider than the phone: scrollWidth {} (html) / {} (body) > innerWidth {}\n\
         the widest elements: {}",
        n(0),
        n(1),
        n(2),
        b.js("return Array.from(document.querySelectorAll('body *'))\
               .filter(e => e.getBoundingClientRect().right > innerWidth + 1)\
               .slice(0, 10).map(e => e.tagName + (e.id ? '#' + e.id : '') + ' ' + \
               Math.round(e.getBoundingClientRect().right)).join(', ')")
            .await
    );
    assert_no_console_errors(&b, "on a phone").await;
    b.close().await;
}

#[tokio::test]
async fn a_checkout_held_past_stuck_after_raises_the_stuck_alarm_naming_its_watcher() {
    let Some(b) = Browser::start().await else {
        return;
    };
    let list = products_json(&["100"]);
    let arbiter = ArbiterProcess::start(ArbiterOptions {
        extra_args: vec!["--stuck-after".into(), "1s".into()],
        ..ArbiterOptions::listing(&list)
    })
    .await;
    // The checkout takes 20 s: the lease (30 s) is held all that time.
    let store = StoreSimProcess::start(list, &["--checkout-delay", "20s"]).await;
    let w = WatcherProcess::start(&arbiter, &store, "w-slow", &[]).await;
    w.wait_connected().await;
    b.open(&format!("{}/", arbiter.http_url())).await;
    wait_page(&b, "#conn live, no stuck alarm, the slot free", |p| {
        (p.is_live() && p.held.as_deref() == Some("false") && p.alarms.is_empty()).then_some(())
    })
    .await;

    store.set_stock("100", true).await;
    wait_page(&b, "the slot held by w-slow", |p| {
        (p.held.as_deref() == Some("true") && p.watcher.as_deref() == Some("w-slow")).then_some(())
    })
    .await;
    wait_page(&b, "a `stuck` alarm", |p| {
        p.alarms.iter().any(|a| a == "stuck").then_some(())
    })
    .await;
    let text = b
        .text("#alarms li[data-alarm=stuck]")
        .await
        .unwrap_or_default();
    assert!(
        text.contains("w-slow") && text.contains("Product 100"),
        "the stuck alarm should name the watcher and the product: {text:?}"
    );
    assert_no_console_errors(&b, "with a stuck checkout").await;
    b.close().await;
}

#[tokio::test]
async fn a_watcher_whose_source_blocks_it_is_marked_with_the_kind_until_it_ends() {
    let Some(b) = Browser::start().await else {
        return;
    };
    let list = products_json(&["100"]);
    let arbiter = ArbiterProcess::start(ArbiterOptions::listing(&list)).await;
    let store = StoreSimProcess::start(list, &[]).await;
    let w = WatcherProcess::start(
        &arbiter,
        &store,
        "w-blocked",
        &["--block-cooldown", "500ms"],
    )
    .await;
    w.wait_connected().await;
    b.open(&format!("{}/", arbiter.http_url())).await;
    wait_page(&b, "#conn live, w-blocked connected, no alarm", |p| {
        (p.is_live()
            && p.alarms.is_empty()
            && p.watchers
                .iter()
                .any(|(id, c)| id == "w-blocked" && c == "true"))
        .then_some(())
    })
    .await;
    const ROW: &str = "#watchers tbody tr[data-watcher='w-blocked']";
    assert_eq!(b.attr(ROW, "data-blocked").await, None);

    store
        .put("/admin/block", serde_json::json!({"kind": "captcha"}))
        .await;
    b.wait_for(&format!("{ROW}[data-blocked='captcha']"), WAIT)
        .await;
    let shown = b
        .text(&format!("{ROW} td.source"))
        .await
        .unwrap_or_default();
    assert!(shown.starts_with("BLOCKED: captcha"), "{shown:?}");
    let alarm = b
        .text("#alarms li[data-alarm=source-blocked]")
        .await
        .unwrap_or_default();
    assert!(
        alarm.contains("w-blocked (captcha at target)"),
        "the alarm names the watcher and the kind: {alarm:?}"
    );

    let r = reqwest::Client::new()
        .delete(format!("{}/admin/block", store.url()))
        .send()
        .await
        .expect("DELETE /admin/block");
    assert!(r.status().is_success(), "{}", r.status());
    wait_page(&b, "the block gone from the page", |p| {
        (!p.alarms.iter().any(|a| a == "source-blocked")).then_some(())
    })
    .await;
    b.wait_js(
        "w-blocked no longer marked",
        &format!(
            "(r => r !== null && r.dataset.blocked === undefined)(document.querySelector({}))",
            serde_json::json!(ROW)
        ),
        WAIT,
    )
    .await;
    assert_no_console_errors(&b, "with a blocked watcher").await;
    b.close().await;
}

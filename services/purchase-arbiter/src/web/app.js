// The restock status page: reads /api/status (GetStatus in the proto3 JSON
// mapping) and follows /events (server-sent events, one per arbiter event).
// It only reads; nothing here changes the arbiter.
'use strict';

(function () {
  const STATUS_URL = '/api/status';
  const EVENTS_URL = '/events';
  // Status is read again after events (at most this often) and on a timer,
  // so ages and stock expiry show without an event.
  const STATUS_MIN_GAP_MS = 250;
  const STATUS_REFRESH_MS = 5000;
  const MAX_CYCLES = 30;

  const stuckAfterMs = Number(document.body.dataset.stuckAfterMs) || 120000;
  const $ = (id) => document.getElementById(id);

  let status = null;
  // performance.now() when `status` arrived: the countdown and ages run on
  // the browser's monotonic clock from the arbiter's own figures.
  let statusAt = 0;
  let feedUp = false;
  let lastSeq = 0;
  // Fencing token -> one checkout, from GRANTED to RELEASED or EXPIRED.
  const cycles = new Map();

  const num = (v) => (v === undefined || v === null || v === '' ? 0 : Number(v));

  function shortDuration(ms) {
    ms = Math.max(0, Math.round(ms));
    if (ms < 1000) return ms + ' ms';
    const s = ms / 1000;
    if (s < 60) return s.toFixed(s < 10 ? 1 : 0) + ' s';
    const m = Math.floor(s / 60);
    if (m < 60) return m + ' min ' + String(Math.floor(s % 60)).padStart(2, '0') + ' s';
    const h = Math.floor(m / 60);
    if (h < 48) return h + ' h ' + String(m % 60).padStart(2, '0') + ' min';
    return Math.floor(h / 24) + ' d';
  }

  function clockTime(unixMs) {
    if (!unixMs) return '-';
    return new Date(unixMs).toLocaleTimeString([], { hour: '2-digit', minute: '2-digit', second: '2-digit' });
  }

  // The arbiter's clock now, from the status's unix_ms and the time since.
  function serverNow() {
    if (!status) return Date.now();
    return num(status.unixMs) + (performance.now() - statusAt);
  }

  function reportAge(at) {
    return at ? shortDuration(serverNow() - at) + ' ago' : 'never';
  }

  function stateName(s) {
    return String(s || 'PRODUCT_STATE_UNSPECIFIED').toLowerCase();
  }

  function outcomeName(o) {
    return String(o || '').replace(/^OUTCOME_/, '').replace(/_/g, ' ').toLowerCase();
  }

  function cell(tr, text, cls) {
    const td = document.createElement('td');
    td.textContent = text;
    if (cls) td.className = cls;
    tr.appendChild(td);
    return td;
  }

  // An outcome with its detail cut to one short line; the whole detail (a
  // checkout's answer can be long) is in the cell's tooltip.
  function detailCell(tr, outcome, detail) {
    if (!outcome) return cell(tr, '-', 'detail');
    const full = detail ? outcome + ': ' + detail : outcome;
    const td = cell(tr, full.length > 60 ? full.slice(0, 59) + '\u2026' : full, 'detail');
    td.title = full;
    return td;
  }

  const has = (v) => v !== undefined && v !== null;

  // Cents as people read them ($19.99), as the arbiter writes prices.
  function dollars(cents) {
    const c = Math.max(0, Math.round(num(cents)));
    return '$' + Math.floor(c / 100) + '.' + String(c % 100).padStart(2, '0');
  }

  function plural(n, word) {
    return n + ' ' + word + (n === 1 ? '' : 's');
  }

  // A budget window (24 h, 7 d, 30 min) in whole units when it has them.
  function windowSpan(ms) {
    const day = 86400000;
    if (ms % day === 0 && ms >= 2 * day) return ms / day + ' d';
    if (ms % 3600000 === 0) return ms / 3600000 + ' h';
    if (ms % 60000 === 0) return ms / 60000 + ' min';
    return shortDuration(ms);
  }

  // BudgetLimits as one phrase: "$250.00, 4 purchases per 24 h".
  function limitText(l) {
    const parts = [];
    if (has(l.maxSpendCents)) parts.push(dollars(l.maxSpendCents));
    if (has(l.maxPurchases)) parts.push(plural(num(l.maxPurchases), 'purchase'));
    if (!parts.length) parts.push('no limit');
    const w = num(l.windowMs);
    return parts.join(', ') + (w ? ' per ' + windowSpan(w) : ' in all');
  }

  // Why the spending limit holds a product back, without the "budget:"
  // its reason starts with (the state already says so).
  function heldBackText(why) {
    return String(why || '').replace(/^budget:\s*/, '');
  }

  function productName(tcin) {
    if (!status) return tcin;
    const p = (status.products || []).find((x) => x.tcin === tcin);
    return p && p.name ? p.name : tcin;
  }

  // ---- rendering -------------------------------------------------------

  function renderHeader() {
    $('mode').hidden = !status.testMode;
    const c = status.counters || {};
    $('count-grants').textContent = num(c.grants);
    $('count-purchases').textContent = num(c.purchases);
    $('count-failures').textContent = num(c.failures);
    $('count-expirations').textContent = num(c.expirations);
    $('next-token').textContent = num(status.nextFencingToken);
  }

  function renderSlot() {
    const lease = status.activeLease;
    const slot = $('slot');
    slot.dataset.held = lease ? 'true' : 'false';
    $('slot-free').hidden = !!lease;
    $('slot-lease').hidden = !lease;
    if (!lease) {
      for (const id of ['slot-tcin', 'slot-name', 'slot-watcher', 'slot-token', 'slot-countdown', 'slot-held-for']) {
        $(id).textContent = '';
      }
      return;
    }
    $('slot-tcin').textContent = lease.tcin;
    $('slot-name').textContent = productName(lease.tcin);
    $('slot-watcher').textContent = lease.watcherId;
    $('slot-token').textContent = num(lease.fencingToken);
    tick();
  }

  // The spending limit: its limits and where they come from, what was
  // spent and reserved against it, what is left, and a warning while it
  // holds products in stock back.
  function renderBudget() {
    const b = status.budget;
    const box = $('budget');
    box.hidden = !b;
    if (!b) return;
    const l = b.limits;
    box.dataset.limit = l ? 'set' : 'none';
    $('budget-limit').textContent = l
      ? 'Limit: ' + limitText(l)
      : 'No limit: spend is recorded, nothing is held back.';
    const operator = $('budget-operator');
    operator.hidden = b.source !== 'operator';
    operator.textContent = b.source === 'operator'
      ? 'Set by an operator: ' + (b.operatorReason || '(no reason given)')
      : '';
    const setAt = num(b.operatorSetUnixMs);
    operator.title = b.source === 'operator' && setAt ? 'since ' + new Date(setAt).toLocaleString() : '';
    const w = l ? num(l.windowMs) : 0;
    // In the window the limit names (all recorded, without one).
    $('budget-spent').textContent = dollars(b.spentCents) + ' (' + plural(num(b.purchases), 'purchase') + ')';
    const reservedFor = b.reservedForTcin || '';
    const reserving = has(b.reservedCents) || reservedFor !== '';
    $('budget-reserved').textContent = reserving
      ? (has(b.reservedCents) ? dollars(b.reservedCents) : 'unknown price') +
        (reservedFor ? ' for ' + productName(reservedFor) : '')
      : 'none';
    $('budget-left-box').hidden = !has(b.leftCents);
    $('budget-left').textContent = has(b.leftCents) ? dollars(b.leftCents) : '-';
    $('budget-purchases-left-box').hidden = !has(b.purchasesLeft);
    $('budget-purchases-left').textContent = has(b.purchasesLeft) ? String(num(b.purchasesLeft)) : '-';
    const rollOff = num(b.nextRollOffUnixMs);
    $('budget-roll-off-box').hidden = !(w && rollOff);
    $('budget-roll-off').dataset.at = String(rollOff);
    const held = num(b.heldBack);
    box.dataset.heldBack = held > 0 ? 'true' : 'false';
    const heldLine = $('budget-held');
    heldLine.hidden = held === 0;
    if (held > 0) {
      const names = (status.products || [])
        .filter((p) => stateName(p.state) === 'over_budget')
        .map((p) => p.name || p.tcin);
      heldLine.textContent = 'Holding back ' + plural(held, 'product') + ' in stock' +
        (names.length ? ': ' + names.join(', ') : '') + '.';
    } else {
      heldLine.textContent = '';
    }
    tickBudget();
  }

  // The roll-off countdown, from the arbiter's clock.
  function tickBudget() {
    const dd = $('budget-roll-off');
    const at = num(dd.dataset.at);
    if (!at) {
      dd.textContent = '-';
      return;
    }
    const left = at - serverNow();
    dd.textContent = left > 0 ? 'in ' + shortDuration(left) : 'now';
  }

  function renderProducts() {
    const body = $('products').tBodies[0];
    const rows = [];
    for (const p of status.products || []) {
      const tr = document.createElement('tr');
      const state = stateName(p.state);
      tr.dataset.tcin = p.tcin;
      tr.dataset.state = state;
      cell(tr, p.configured === false ? '-' : num(p.priority));
      tr.dataset.retailer = p.retailer || 'target';
      const name = cell(tr, p.name || p.tcin);
      // Who sells it: a TCIN is Target's; other retailers' ids name them.
      const code = document.createElement('code');
      code.textContent = ' ' + (p.tcin.includes(':') ? p.tcin : 'target:' + p.tcin);
      if (p.name) name.appendChild(code);
      let stateText = state;
      if (state === 'failed' && num(p.cooldownRemainingMs) > 0) {
        stateText += ' (again in ' + shortDuration(num(p.cooldownRemainingMs)) + ')';
      }
      const st = cell(tr, '', 'state');
      st.dataset.state = state;
      const stateLabel = document.createElement('span');
      stateLabel.className = 'state-name';
      stateLabel.textContent = state === 'over_budget' ? 'over budget' : stateText;
      st.appendChild(stateLabel);
      if (state === 'over_budget') {
        // Held back by the spending limit: at what price, and why.
        if (has(p.priceCents)) {
          const price = document.createElement('span');
          price.className = 'price';
          price.textContent = ' ' + dollars(p.priceCents);
          st.appendChild(price);
        }
        if (p.heldBack) {
          const why = document.createElement('div');
          why.className = 'held-back-why';
          why.textContent = heldBackText(p.heldBack);
          st.appendChild(why);
          st.title = p.heldBack;
        }
      }
      // In TEST_MODE purchases are voided and cycle past the quantity.
      cell(tr, status.testMode ? String(num(p.purchases)) : num(p.purchases) + ' / ' + (num(p.quantity) || 1));
      const seenAt = p.inStockAt || [];
      const seen = cell(tr, seenAt.length > 2 ? seenAt.length + ' watchers' : seenAt.join(', ') || '-');
      seen.title = seenAt.join(', ');
      const last = outcomeName(p.lastOutcome);
      detailCell(tr, last, p.lastDetail);
      const every = num(p.effectivePollIntervalMs);
      cell(tr, every ? shortDuration(every) : '-');
      rows.push(tr);
    }
    body.replaceChildren(...rows);
  }

  function renderWatchers() {
    const body = $('watchers').tBodies[0];
    const rows = [];
    const watchers = (status.watchers || []).slice().sort((a, b) =>
      (b.connected === true) - (a.connected === true) || a.watcherId.localeCompare(b.watcherId));
    for (const w of watchers) {
      const tr = document.createElement('tr');
      tr.dataset.watcher = w.watcherId;
      tr.dataset.connected = w.connected ? 'true' : 'false';
      cell(tr, w.watcherId);
      const since = num(w.connectedSinceUnixMs);
      cell(tr, w.connected ? 'yes, since ' + clockTime(since) : 'no', w.connected ? 'ok' : 'bad');
      const age = cell(tr, reportAge(num(w.lastReportUnixMs)), 'age');
      age.dataset.lastReport = num(w.lastReportUnixMs);
      cell(tr, num(w.reports));
      const polls = (w.polling || []).length;
      const interval = num(w.pollIntervalMs);
      cell(tr, (polls ? polls + ' products' : 'all') + (interval ? ' every ' + shortDuration(interval) : ''));
      cell(tr, w.planned ? 'at ' + shortDuration(num(w.pollPhaseMs)) : (status.pollPlanning ? '-' : 'own'));
      // Its stock source: a block (captcha, perimeterx, forbidden,
      // endpoint_gone) marks the row; a back-off is only named.
      const block = w.sourceBlock;
      if (block && w.sourceBlocked) {
        tr.dataset.blocked = block.kind;
        tr.classList.add('blocked');
        const since = num(block.sinceUnixMs);
        const src = cell(tr, 'BLOCKED: ' + block.kind + (block.source ? ' at ' + block.source : '') +
          (since ? ' since ' + clockTime(since) : ''), 'bad source');
        src.title = block.trackingUrl ? 'tracking URL ' + block.trackingUrl : '';
      } else if (block) {
        cell(tr, 'backing off: ' + block.kind + (block.source ? ' at ' + block.source : ''), 'source');
      } else {
        cell(tr, 'ok', 'ok source');
      }
      rows.push(tr);
    }
    body.replaceChildren(...rows);
    $('watchers-none').hidden = rows.length > 0;
  }

  function renderCycles() {
    const body = $('cycles').tBodies[0];
    const newest = [...cycles.values()].sort((a, b) => b.token - a.token).slice(0, MAX_CYCLES);
    const rows = newest.map((c) => {
      const tr = document.createElement('tr');
      tr.dataset.token = c.token;
      tr.dataset.outcome = c.outcome || 'running';
      cell(tr, clockTime(c.grantedMs));
      cell(tr, productName(c.tcin));
      cell(tr, c.watcher);
      cell(tr, c.token, 'token');
      cell(tr, c.endedMs ? shortDuration(c.endedMs - c.grantedMs) : 'running');
      if (c.outcome) detailCell(tr, outcomeName(c.outcome), c.detail);
      else cell(tr, 'running', 'detail');
      return tr;
    });
    body.replaceChildren(...rows);
    $('cycles-none').hidden = rows.length > 0;
  }

  function alarms() {
    const out = [];
    if (!feedUp) {
      out.push(['disconnected', 'No live feed from the arbiter: reconnecting. What is shown may be old.']);
    }
    if (!status) return out;
    if (status.role === 'follower') {
      // A replica that does not lead has no state of its own to show.
      out.push(['follower', status.leaderUrl
        ? 'This arbiter replica follows: the leader is ' + status.leaderUrl + '. Open the leader\'s status page to see the slot.'
        : 'This arbiter replica follows, and no leader is elected yet.']);
      return out;
    }
    const lease = status.activeLease;
    if (lease) {
      const heldFor = serverNow() - num(lease.grantedAtUnixMs);
      if (heldFor > stuckAfterMs) {
        out.push(['stuck', 'Purchase stuck: ' + productName(lease.tcin) + ' has held the slot for ' +
          shortDuration(heldFor) + ' (watcher ' + lease.watcherId + ', token ' + num(lease.fencingToken) + ').']);
      }
    }
    if (!(status.watchers || []).some((w) => w.connected)) {
      out.push(['no-watchers', 'No watcher connected: nothing is being watched.']);
    }
    const blocked = (status.watchers || []).filter((w) => w.sourceBlocked && w.sourceBlock);
    if (blocked.length) {
      out.push(['source-blocked', 'Stock source blocked: ' +
        blocked.map((w) => w.watcherId + ' (' + w.sourceBlock.kind +
          (w.sourceBlock.source ? ' at ' + w.sourceBlock.source : '') + ')').join(', ') +
        '. A blocked watcher polls nothing at that source until the block ends.']);
    }
    const budget = status.budget;
    const held = budget ? num(budget.heldBack) : 0;
    if (held > 0) {
      out.push(['over-budget', 'Spending limit reached: holding back ' + plural(held, 'product') + ' in stock' +
        (budget.limits ? ' (' + limitText(budget.limits) + ')' : '') + '. They are not bought until the budget has room again.']);
    }
    if (status.paused) {
      out.push(['paused', 'Paused: no new checkout starts until it is resumed.']);
    }
    return out;
  }

  function renderAlarms() {
    const list = $('alarms');
    const want = alarms();
    const key = want.map((a) => a.join(':')).join('|');
    if (list.dataset.key === key) return;
    list.dataset.key = key;
    list.replaceChildren(...want.map(([kind, text]) => {
      const li = document.createElement('li');
      li.dataset.alarm = kind;
      li.textContent = text;
      return li;
    }));
  }

  function render() {
    if (!status) return;
    renderHeader();
    renderSlot();
    renderBudget();
    renderProducts();
    renderWatchers();
    renderCycles();
    renderAlarms();
    $('updated').textContent = 'status at ' + clockTime(num(status.unixMs));
  }

  // Every 250 ms: the lease countdown, ages, alarms that come with time.
  function tick() {
    if (status) {
      const lease = status.activeLease;
      if (lease) {
        const left = num(lease.remainingMs) - (performance.now() - statusAt);
        $('slot-countdown').textContent = left > 0 ? shortDuration(left) : 'expiring';
        $('slot-held-for').textContent = shortDuration(serverNow() - num(lease.grantedAtUnixMs));
      }
      for (const td of document.querySelectorAll('#watchers td.age')) {
        td.textContent = reportAge(num(td.dataset.lastReport));
      }
      if (status.budget) tickBudget();
    }
    renderAlarms();
  }

  // ---- status ----------------------------------------------------------

  let statusBusy = false;
  let statusAgain = false;
  let statusLastAt = 0;
  let statusTimer = 0;

  function setConn(state, text) {
    const conn = $('conn');
    conn.dataset.state = state;
    conn.textContent = text;
  }

  async function loadStatus() {
    if (statusBusy) {
      statusAgain = true;
      return;
    }
    statusBusy = true;
    statusLastAt = performance.now();
    try {
      const r = await fetch(STATUS_URL, { cache: 'no-store', credentials: 'same-origin' });
      if (r.status === 401) {
        location.assign('/login?next=/');
        return;
      }
      if (!r.ok) throw new Error('GET ' + STATUS_URL + ': ' + r.status);
      status = await r.json();
      statusAt = performance.now();
      render();
    } catch (e) {
      // Shown as the "disconnected" alarm when the feed is down too; a
      // failed read while the feed is up is retried on the next event.
      $('updated').textContent = 'status read failed (' + e.message + ')';
    } finally {
      statusBusy = false;
      if (statusAgain) {
        statusAgain = false;
        scheduleStatus();
      }
    }
  }

  function scheduleStatus() {
    if (statusTimer) return;
    const wait = Math.max(0, STATUS_MIN_GAP_MS - (performance.now() - statusLastAt));
    statusTimer = setTimeout(() => {
      statusTimer = 0;
      loadStatus();
    }, wait);
  }

  // ---- events ----------------------------------------------------------

  function applyEvent(e) {
    const seq = num(e.sequence);
    if (seq <= lastSeq) return;
    lastSeq = seq;
    document.body.dataset.lastSeq = String(seq);
    const token = num(e.fencingToken);
    switch (e.kind) {
      case 'GRANTED':
        cycles.set(token, { token, tcin: e.tcin, watcher: e.watcherId, grantedMs: num(e.unixMs), endedMs: 0, outcome: '', detail: '' });
        break;
      case 'RELEASED':
      case 'EXPIRED': {
        const c = cycles.get(token) ||
          { token, tcin: e.tcin, watcher: e.watcherId, grantedMs: 0, endedMs: 0, outcome: '', detail: '' };
        c.endedMs = num(e.unixMs);
        c.outcome = e.kind === 'EXPIRED' ? 'OUTCOME_EXPIRED' : (e.outcome || 'OUTCOME_UNSPECIFIED');
        c.detail = e.detail || '';
        if (!c.grantedMs) c.grantedMs = c.endedMs;
        cycles.set(token, c);
        break;
      }
      default:
        break;
    }
    if (cycles.size > MAX_CYCLES * 2) {
      const keep = [...cycles.keys()].sort((a, b) => b - a).slice(0, MAX_CYCLES);
      for (const k of [...cycles.keys()]) if (!keep.includes(k)) cycles.delete(k);
    }
  }

  function follow() {
    const source = new EventSource(EVENTS_URL);
    source.onopen = () => {
      feedUp = true;
      setConn('live', 'live');
      renderAlarms();
      scheduleStatus();
    };
    source.onmessage = (m) => {
      try {
        applyEvent(JSON.parse(m.data));
      } catch (err) {
        // A malformed event is skipped; the next status read shows the truth.
        $('updated').textContent = 'skipped an unreadable event';
      }
      renderCycles();
      scheduleStatus();
    };
    source.addEventListener('gap', () => {
      // Events were missed (away longer than the history holds): the cycle
      // table restarts from what is still there.
      cycles.clear();
      scheduleStatus();
    });
    source.onerror = () => {
      feedUp = false;
      setConn('reconnecting', 'reconnecting');
      renderAlarms();
      // EventSource reconnects by itself (sending Last-Event-ID) unless the
      // server refused it outright; then try again from scratch.
      if (source.readyState === EventSource.CLOSED) {
        setTimeout(follow, 2000);
      }
    };
  }

  function start() {
    follow();
    loadStatus();
    setInterval(tick, 250);
    setInterval(() => {
      if (performance.now() - statusLastAt >= STATUS_REFRESH_MS) loadStatus();
    }, 1000);
  }

  if (document.readyState === 'loading') {
    document.addEventListener('DOMContentLoaded', start);
  } else {
    start();
  }
})();

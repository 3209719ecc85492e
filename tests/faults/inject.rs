//! The fault injector: one fault at a time, at random moments, chosen and
//! shaped by the seed. Each fault is recorded with when it began and when
//! its cause was removed; after each the injector waits for the next grant
//! (the liveness the checker then bounds) before the next one, so faults
//! never pile onto a system that has not recovered and every recovery is
//! measured from a clean heal.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use tokio::sync::broadcast;

use crate::{
    checker::{FaultKind, FaultRecord},
    cluster::{CHECKOUT_DELAY_MS, Cluster, LEASE_TTL, StockDriver, now_ms},
    history::EventLog,
    proxy::LinkState,
    rng::Rng,
};

/// How long to wait for a grant to aim a fault at before skipping it.
const GRANT_WAIT: Duration = Duration::from_secs(10);

/// How many times each kind comes up per round: the faults that hit a
/// running checkout twice, the others once.
fn per_round(kind: FaultKind) -> usize {
    match kind {
        FaultKind::HolderKill | FaultKind::HolderPause | FaultKind::WatcherCutOff => 2,
        FaultKind::ArbiterKill
        | FaultKind::ArbiterKillAfterGrant
        | FaultKind::WatcherKill
        | FaultKind::WatcherPause
        | FaultKind::HostCutOff
        | FaultKind::RestockStorm => 1,
        // HA mode's (see `ha`), never drawn here.
        FaultKind::LeaderKill
        | FaultKind::LeaderPause
        | FaultKind::LeaderEtcdCut
        | FaultKind::EtcdMemberKill
        | FaultKind::ReplicasRestart
        | FaultKind::LeaderPauseAtGrant
        | FaultKind::EtcdMemberPause => 0,
    }
}

/// See the module documentation.
pub struct Injector<'a> {
    pub cluster: &'a mut Cluster,
    pub log: Arc<EventLog>,
    pub stock: Arc<StockDriver>,
    pub rng: Rng,
    pub seed: u64,
    pub started: Instant,
    /// How long after a heal the next grant may come (TTL + margin); the
    /// injector waits this long plus a little before moving on.
    pub recovery_bound: Duration,
    pub records: Vec<FaultRecord>,
    pub checkout_delay_ms: u64,
    /// The kinds to draw from (all by default; `RESTOCK_FAULT_ONLY`).
    pub kinds: Vec<FaultKind>,
}

impl std::fmt::Debug for Injector<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Injector")
            .field("seed", &self.seed)
            .field("faults", &self.records.len())
            .finish_non_exhaustive()
    }
}

impl Injector<'_> {
    fn elapsed(&self) -> String {
        format!("{:7.1}s", self.started.elapsed().as_secs_f64())
    }

    /// Injects faults until `until`, then returns the records.
    pub async fn run(&mut self, until: Instant) {
        // Rounds of every kind in a shuffled order, rather than independent
        // draws, so that even a short run (CI) meets every kind.
        let mut round: Vec<FaultKind> = Vec::new();
        while Instant::now() < until {
            let gap = self.rng.range(300, 2_500);
            tokio::time::sleep(Duration::from_millis(gap)).await;
            if self.rng.chance(0.3) {
                let ms = self.rng.range(CHECKOUT_DELAY_MS.0, CHECKOUT_DELAY_MS.1);
                self.cluster.set_checkout_delay(ms).await;
                self.checkout_delay_ms = ms;
            }
            if round.is_empty() {
                round = self
                    .kinds
                    .iter()
                    .flat_map(|k| std::iter::repeat_n(*k, per_round(*k)))
                    .collect();
                self.rng.shuffle(&mut round);
            }
            let kind = round.pop().expect("refilled above");
            let Some(mut record) = self.inject(kind).await else {
                eprintln!(
                    "[{}] skipped {}: no grant to aim at",
                    self.elapsed(),
                    kind.name()
                );
                continue;
            };
            record.id = self.records.len() + 1;
            eprintln!(
                "[{}] fault #{} {}: {} (healed after {} ms)",
                self.elapsed(),
                record.id,
                kind.name(),
                record.detail,
                record.healed_ms.saturating_sub(record.started_ms)
            );
            let healed = record.healed_ms;
            self.records.push(record);
            self.wait_for_grant_since(healed).await;
        }
    }

    /// Waits (bounded) for the first grant after `healed_ms`; the checker
    /// judges the delay.
    async fn wait_for_grant_since(&self, healed_ms: u64) {
        let limit = Instant::now() + self.recovery_bound + Duration::from_secs(5);
        while Instant::now() < limit {
            if self.log.first_grant_since(healed_ms).is_some() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        eprintln!(
            "[{}] no grant within {:?} of the last heal (seed {}); the checker will report it",
            self.elapsed(),
            self.recovery_bound,
            self.seed
        );
    }

    /// The next grant seen on the event feed, within [`GRANT_WAIT`].
    async fn next_grant(
        &self,
        rx: &mut broadcast::Receiver<restock_proto::v1::Event>,
    ) -> Option<restock_proto::v1::Event> {
        let deadline = tokio::time::Instant::now() + GRANT_WAIT;
        loop {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Err(_) => return None,
                Ok(Ok(e)) => return Some(e),
                Ok(Err(broadcast::error::RecvError::Lagged(_))) => continue,
                Ok(Err(broadcast::error::RecvError::Closed)) => return None,
            }
        }
    }

    fn sleep_ms(ms: u64) -> tokio::time::Sleep {
        tokio::time::sleep(Duration::from_millis(ms))
    }

    fn record(
        kind: FaultKind,
        watchers: Vec<String>,
        started_ms: u64,
        detail: String,
    ) -> FaultRecord {
        FaultRecord {
            id: 0,
            kind,
            watchers,
            started_ms,
            healed_ms: now_ms(),
            detail,
        }
    }

    async fn inject(&mut self, kind: FaultKind) -> Option<FaultRecord> {
        match kind {
            FaultKind::ArbiterKill => {
                let down = self.rng.range(0, 2_500);
                let started = now_ms();
                self.cluster.arbiter.process.kill9();
                Self::sleep_ms(down).await;
                let r = Self::record(kind, Vec::new(), started, format!("down {down} ms"));
                self.restart_arbiter().await;
                Some(r)
            }
            FaultKind::ArbiterKillAfterGrant => {
                let down = self.rng.range(0, 1_500);
                let mut rx = self.log.subscribe_grants();
                let grant = self.next_grant(&mut rx).await?;
                // Kill the moment the grant is seen: the watcher may or may
                // not have received it.
                self.cluster.arbiter.process.kill9();
                let started = now_ms();
                Self::sleep_ms(down).await;
                let r = Self::record(
                    kind,
                    Vec::new(),
                    started,
                    format!(
                        "token {} to {} seen {} ms after the grant; down {down} ms",
                        grant.fencing_token,
                        grant.watcher_id,
                        started.saturating_sub(grant.unix_ms)
                    ),
                );
                self.restart_arbiter().await;
                Some(r)
            }
            FaultKind::WatcherKill => {
                let i = self.rng.range(0, self.cluster.watchers.len() as u64 - 1) as usize;
                let down = self.rng.range(0, 2_000);
                let held = self
                    .log
                    .live_lease()
                    .filter(|l| l.watcher_id == self.cluster.watchers[i].id);
                let started = now_ms();
                self.cluster.watchers[i].watcher.process.kill9();
                Self::sleep_ms(down).await;
                let id = self.cluster.watchers[i].id.clone();
                let r = Self::record(
                    kind,
                    vec![id.clone()],
                    started,
                    format!(
                        "{id}{}, down {down} ms",
                        held.map_or(String::new(), |l| format!(" (holding token {})", l.token))
                    ),
                );
                self.cluster.watchers[i].watcher.process.restart();
                Some(r)
            }
            FaultKind::HolderKill => {
                let after_answer = self.rng.chance(0.35);
                let delay = self.checkout_delay_ms;
                let into = self.rng.range(0, delay.saturating_sub(50));
                let down = self.rng.range(0, 1_500);
                let mut rx = self.log.subscribe_grants();
                let grant = self.next_grant(&mut rx).await?;
                let i = self.cluster.watcher(&grant.watcher_id)?;
                let token = grant.fencing_token;
                let (started, how) = if after_answer {
                    // Freeze it just before the store answers, let the store
                    // finish, then kill it: the purchase is made and the
                    // release never sent.
                    Self::sleep_ms(delay.saturating_sub(150)).await;
                    if self.log.ended(token) {
                        return None;
                    }
                    let started = now_ms();
                    self.cluster.watchers[i].watcher.process.signal("-STOP");
                    let answered = self.wait_order_finished(token).await;
                    self.cluster.watchers[i].watcher.process.kill9();
                    (
                        started,
                        format!(
                            "after the store answered ({})",
                            answered.unwrap_or_else(|| "no order seen".into())
                        ),
                    )
                } else {
                    Self::sleep_ms(into).await;
                    if self.log.ended(token) {
                        return None;
                    }
                    let started = now_ms();
                    self.cluster.watchers[i].watcher.process.kill9();
                    (started, format!("{into} ms into a {delay} ms checkout"))
                };
                Self::sleep_ms(down).await;
                let id = self.cluster.watchers[i].id.clone();
                let r = Self::record(
                    kind,
                    vec![id.clone()],
                    started,
                    format!("{id} holding token {token}, {how}, down {down} ms"),
                );
                self.cluster.watchers[i].watcher.process.restart();
                Some(r)
            }
            FaultKind::HolderPause => {
                let delay = self.checkout_delay_ms;
                let into = self.rng.range(0, delay);
                let pause = LEASE_TTL.as_millis() as u64 + self.rng.range(200, 3_000);
                let mut rx = self.log.subscribe_grants();
                let grant = self.next_grant(&mut rx).await?;
                let i = self.cluster.watcher(&grant.watcher_id)?;
                Self::sleep_ms(into).await;
                let started = now_ms();
                self.cluster.watchers[i].watcher.process.signal("-STOP");
                Self::sleep_ms(pause).await;
                let id = self.cluster.watchers[i].id.clone();
                let r = Self::record(
                    kind,
                    vec![id.clone()],
                    started,
                    format!(
                        "{id} holding token {}, {into} ms into a {delay} ms checkout, stopped {pause} ms",
                        grant.fencing_token
                    ),
                );
                self.cluster.watchers[i].watcher.process.signal("-CONT");
                Some(r)
            }
            FaultKind::WatcherPause => {
                let pause = LEASE_TTL.as_millis() as u64 + self.rng.range(200, 3_000);
                let pick = self.rng.range(0, self.cluster.watchers.len() as u64 - 1) as usize;
                let holder = self.log.live_lease().map(|l| l.watcher_id);
                // The next watcher from `pick` that holds nothing.
                let i = (0..self.cluster.watchers.len())
                    .map(|k| (pick + k) % self.cluster.watchers.len())
                    .find(|&i| holder.as_deref() != Some(self.cluster.watchers[i].id.as_str()))?;
                let started = now_ms();
                self.cluster.watchers[i].watcher.process.signal("-STOP");
                Self::sleep_ms(pause).await;
                let id = self.cluster.watchers[i].id.clone();
                let r = Self::record(
                    kind,
                    vec![id.clone()],
                    started,
                    format!("{id} stopped {pause} ms"),
                );
                self.cluster.watchers[i].watcher.process.signal("-CONT");
                Some(r)
            }
            FaultKind::WatcherCutOff => {
                let state = self.link_state();
                let cut = self.rng.range(300, 6_000);
                let aim_at_holder = self.rng.chance(0.6);
                let into = self.rng.range(0, self.checkout_delay_ms);
                let (i, what) = if aim_at_holder {
                    let mut rx = self.log.subscribe_grants();
                    let grant = self.next_grant(&mut rx).await?;
                    let i = self.cluster.watcher(&grant.watcher_id)?;
                    Self::sleep_ms(into).await;
                    (
                        i,
                        format!("holding token {}, {into} ms in", grant.fencing_token),
                    )
                } else {
                    let i = self.rng.range(0, self.cluster.watchers.len() as u64 - 1) as usize;
                    (i, "at a random moment".to_owned())
                };
                let started = now_ms();
                self.cluster.watchers[i].link.set(state);
                Self::sleep_ms(cut).await;
                let id = self.cluster.watchers[i].id.clone();
                let r = Self::record(
                    kind,
                    vec![id.clone()],
                    started,
                    format!("{id} {what}, link {state:?} for {cut} ms"),
                );
                self.cluster.watchers[i].link.set(LinkState::Open);
                Some(r)
            }
            FaultKind::HostCutOff => {
                let state = self.link_state();
                let cut = self.rng.range(500, 6_000);
                let h = self.rng.range(0, self.cluster.hosts.len() as u64 - 1) as usize;
                let ids: Vec<String> = self
                    .cluster
                    .watchers
                    .iter()
                    .filter(|w| w.host == h)
                    .map(|w| w.id.clone())
                    .collect();
                let started = now_ms();
                for w in self.cluster.watchers.iter().filter(|w| w.host == h) {
                    w.link.set(state);
                }
                Self::sleep_ms(cut).await;
                let r = Self::record(
                    kind,
                    ids,
                    started,
                    format!(
                        "{} ({}) link {state:?} for {cut} ms",
                        self.cluster.hosts[h].name, self.cluster.hosts[h].ip
                    ),
                );
                for w in self.cluster.watchers.iter().filter(|w| w.host == h) {
                    w.link.set(LinkState::Open);
                }
                Some(r)
            }
            FaultKind::RestockStorm => {
                let d = self.rng.range(2_000, 6_000);
                let flips = self.stock.flips();
                let started = now_ms();
                self.stock.storm(Instant::now() + Duration::from_millis(d));
                Self::sleep_ms(d).await;
                let mut r = Self::record(kind, Vec::new(), started, String::new());
                r.detail = format!(
                    "{} stock changes in {d} ms",
                    self.stock.flips().saturating_sub(flips)
                );
                Some(r)
            }
            // HA mode's faults need the replicas (see `ha`).
            FaultKind::LeaderKill
            | FaultKind::LeaderPause
            | FaultKind::LeaderEtcdCut
            | FaultKind::EtcdMemberKill
            | FaultKind::ReplicasRestart
            | FaultKind::LeaderPauseAtGrant
            | FaultKind::EtcdMemberPause => None,
        }
    }

    fn link_state(&mut self) -> LinkState {
        if self.rng.chance(0.6) {
            LinkState::BlackHole
        } else {
            LinkState::Down
        }
    }

    async fn restart_arbiter(&mut self) {
        self.cluster.arbiter.kill9_and_restart().await;
    }

    /// Waits (at most 3 s) until the store has finished the checkout with
    /// `token`; returns its result.
    async fn wait_order_finished(&self, token: u64) -> Option<String> {
        let limit = Instant::now() + Duration::from_secs(3);
        while Instant::now() < limit {
            let orders = self.cluster.orders().await;
            let done = orders["orders"].as_array().and_then(|os| {
                os.iter()
                    .rev()
                    .find(|o| o["fencing_token"].as_u64() == Some(token))
                    .map(|o| o["result"].as_str().unwrap_or("?").to_owned())
            });
            let running = orders["in_flight"]
                .as_array()
                .is_some_and(|f| f.iter().any(|o| o["fencing_token"].as_u64() == Some(token)));
            if done.is_some() && !running {
                return done;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        None
    }
}

//! Arbiter replicas on etcd (`--store etcd`): any number run, one leads.
//!
//! Each replica loops through terms:
//!
//! 1. **Follow and campaign.** It takes an etcd lease of `--election-ttl`,
//!    keeps it alive, and campaigns through etcd's election API with its
//!    `--advertise-url` as the value. While it waits it is a follower: it
//!    asks etcd who leads (for `GetStatus` and the `restock-leader` trailer)
//!    and answers every state-changing call with `UNAVAILABLE`.
//! 2. **Lead.** Elected, it reads the state from etcd (`crate::store::etcd`),
//!    gives a held lease the whole TTL from now (the holder may believe it
//!    has up to that much; never less), and starts an arbiter task whose
//!    every write is a transaction guarded by the leadership key's create
//!    revision. Only then does it answer as leader.
//! 3. **Step down** the moment it may no longer lead: a guarded write fails
//!    its guard, a check of the leadership key (every TTL/3) finds it gone
//!    or re-created, or no keep-alive has been confirmed for a whole TTL
//!    (etcd has then dropped, or will drop, the lease). It stops answering
//!    for the term first, then ends the term's task and streams, and
//!    campaigns again.
//!
//! Leadership is never inferred from keep-alive answers (etcd issue 20590:
//! a keep-alive answer could claim a lease that was already revoked): a
//! missing keep-alive can end a term, a present one proves nothing. What
//! proves leadership is the guard on every write and the key check, and
//! behind both the fencing token the store checks.
//!
//! On shutdown the leader writes its last state, resigns (the next replica
//! takes over at once, without waiting for the TTL) and revokes its lease.

use std::{path::PathBuf, sync::Arc, time::Duration};

use etcd_client::{
    Certificate, Client, ConnectOptions, Identity, LeaderKey, ResignOptions, TlsOptions,
};
use tokio::{sync::watch, task::JoinHandle, time::Instant};
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use restock_domain::PriorityList;
use restock_runtime::{Backoff, error::Chain, grpc::Health};

use crate::{
    StartError,
    config::{ArbiterConfig, EtcdArgs},
    limits::ETCD_CHECKS_PER_TTL,
    metrics::ArbiterMetrics,
    replica::{Role, Term},
    slot::{Arbiter, Clock, Timing},
    store::{
        StateFile, StoreError,
        etcd::{self, EtcdAccess, EtcdKeys, EtcdState, Guard},
        format::Snapshot,
        saved,
    },
    task,
};

/// What every term is made from.
pub struct Replicas {
    pub client: Client,
    pub endpoints: String,
    pub keys: EtcdKeys,
    pub ttl: Duration,
    pub advertise_url: String,
    pub import: Option<PathBuf>,
    pub token_floor: u64,
    /// `--fresh-state`: with no state and no marker in etcd, start a new one.
    pub fresh_state: bool,
    /// Bound of one etcd write (see `EtcdArgs::write_limit`).
    pub write_limit: Duration,
    pub compact: bool,
    pub config_path: PathBuf,
    pub timing: Timing,
    pub clock: Clock,
    pub metrics: ArbiterMetrics,
    pub poll_planning: bool,
}

/// Makes the etcd client (it balances over every endpoint); a bad TLS file
/// stops start-up, naming it.
pub async fn connect(args: &EtcdArgs) -> Result<Client, StartError> {
    let endpoints = args.endpoints();
    let named = endpoints.join(",");
    let ttl = args.election_ttl;
    let mut options = ConnectOptions::new()
        .with_connect_timeout(ttl)
        .with_keep_alive(ttl / ETCD_CHECKS_PER_TTL, ttl / ETCD_CHECKS_PER_TTL)
        .with_keep_alive_while_idle(true);
    if let (Some(user), Some(password)) = (&args.etcd_user, &args.etcd_password) {
        options = options.with_user(user.clone(), password.clone());
    }
    let https = endpoints.iter().any(|e| e.starts_with("https://"));
    if https || args.etcd_ca.is_some() || args.etcd_cert.is_some() {
        let mut tls = TlsOptions::new();
        if let Some(ca) = &args.etcd_ca {
            tls = tls.ca_certificate(Certificate::from_pem(read(ca, "--etcd-ca", &named)?));
        } else {
            tls = tls.with_webpki_roots();
        }
        if let (Some(cert), Some(key)) = (&args.etcd_cert, &args.etcd_key) {
            tls = tls.identity(Identity::from_pem(
                read(cert, "--etcd-cert", &named)?,
                read(key, "--etcd-key", &named)?,
            ));
        }
        options = options.with_tls(tls);
    }
    let fail = |step: &'static str, message: String| {
        StartError::Store(StoreError::Etcd {
            endpoints: named.clone(),
            step,
            message,
        })
    };
    let client = tokio::time::timeout(ttl, Client::connect(&endpoints, Some(options)))
        .await
        .map_err(|_| fail("connect", format!("no connection within {ttl:?}")))?
        .map_err(|e| fail("connect", e.to_string()))?;
    // No request yet: etcd may still be forming its cluster (compose
    // starts everything at once). The replica serves as a follower and
    // campaigns, logging every failed try with the endpoints, until etcd
    // answers.
    Ok(client)
}

fn read(path: &PathBuf, flag: &'static str, endpoints: &str) -> Result<Vec<u8>, StartError> {
    std::fs::read(path).map_err(|e| {
        StartError::Store(StoreError::Etcd {
            endpoints: endpoints.to_owned(),
            step: flag,
            message: format!("cannot read {}: {e}", path.display()),
        })
    })
}

/// `--advertise-url`, or http(s)://<host>:<port> of the bound listener
/// (the host name when it listens on every address).
pub fn advertise_url(config: &ArbiterConfig, bound: std::net::SocketAddr, tls: bool) -> String {
    if let Some(url) = &config.etcd.advertise_url {
        return url.trim_end_matches('/').to_owned();
    }
    let scheme = if tls { "https" } else { "http" };
    let host = if bound.ip().is_unspecified() {
        std::fs::read_to_string("/proc/sys/kernel/hostname")
            .ok()
            .map(|h| h.trim().to_owned())
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "localhost".into())
    } else {
        bound.ip().to_string()
    };
    format!("{scheme}://{host}:{}", bound.port())
}

/// Runs terms until `stop`; returns once the last term has ended (its
/// final write made, leadership resigned).
pub fn spawn(
    replicas: Replicas,
    roles: watch::Sender<Role>,
    health: Health,
    stop: CancellationToken,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let replicas = Arc::new(replicas);
        let mut backoff = Backoff::new(Duration::from_millis(200), replicas.ttl);
        while !stop.is_cancelled() {
            match replicas.term(&roles, &health, &stop).await {
                Ok(()) => backoff.reset(),
                Err(e) => {
                    let wait = backoff.next_delay();
                    warn!(error = %Chain(&e), retry_in_ms = wait.as_millis() as u64, "etcd: campaign or term failed; trying again");
                    tokio::select! {
                        () = stop.cancelled() => {}
                        () = tokio::time::sleep(wait) => {}
                    }
                }
            }
        }
        let _ = roles.send(Role::Follower { leader_url: None });
        info!("replica stopped campaigning");
    })
}

/// The lease's keep-alive, running beside the term: when it last saw the
/// lease confirmed, and whether etcd said the lease is gone.
struct KeepAlive {
    confirmed: watch::Receiver<Instant>,
    gone: CancellationToken,
    task: JoinHandle<()>,
}

impl Drop for KeepAlive {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Replicas {
    fn interval(&self) -> Duration {
        self.ttl / ETCD_CHECKS_PER_TTL
    }

    async fn etcd<T, F>(
        &self,
        step: &'static str,
        request: impl FnMut() -> F,
    ) -> Result<T, StoreError>
    where
        F: Future<Output = Result<T, etcd_client::Error>>,
    {
        etcd::bounded(&self.endpoints, step, self.ttl, request).await
    }

    /// One term: campaign (following meanwhile), lead, step down.
    async fn term(
        &self,
        roles: &watch::Sender<Role>,
        health: &Health,
        stop: &CancellationToken,
    ) -> Result<(), StoreError> {
        let leases = self.client.lease_client();
        let ttl = self.ttl.as_secs() as i64;
        let lease = self
            .etcd("take an etcd lease", || {
                let mut leases = leases.clone();
                async move { leases.grant(ttl, None).await }
            })
            .await?
            .id();
        let keep = self.keep_alive(lease);
        let election = self.client.election_client();
        let campaign = async {
            loop {
                let mut election = election.clone();
                match election
                    .campaign(
                        self.keys.election.clone(),
                        self.advertise_url.clone(),
                        lease,
                    )
                    .await
                {
                    // Not sent (a member just went away): try another.
                    Err(e) if etcd::never_sent(&e) => {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                    other => return other,
                }
            }
        };
        let elected = tokio::select! {
            r = campaign => r.map_err(|e| StoreError::Etcd {
                endpoints: self.endpoints.clone(),
                step: "campaign",
                message: e.to_string(),
            }),
            () = self.follow(roles) => unreachable!("following never ends"),
            () = keep.gone.cancelled() => Err(StoreError::Etcd {
                endpoints: self.endpoints.clone(),
                step: "campaign",
                message: "the etcd lease ended while campaigning".into(),
            }),
            () = stop.cancelled() => {
                self.revoke(lease).await;
                return Ok(());
            }
        };
        let leader = match elected.map(|mut r| r.take_leader()) {
            Ok(Some(l)) => l,
            Ok(None) => {
                self.revoke(lease).await;
                return Err(StoreError::Etcd {
                    endpoints: self.endpoints.clone(),
                    step: "campaign",
                    message: "etcd answered without a leader key".into(),
                });
            }
            Err(e) => {
                self.revoke(lease).await;
                return Err(e);
            }
        };
        let guard = Guard {
            key: leader.key().to_vec(),
            revision: leader.rev(),
        };
        let result = self.lead(&guard, roles, health, stop, &keep).await;
        // Whatever ended the term: nothing answers for it any more.
        let _ = roles.send(Role::Follower { leader_url: None });
        health.set_service(false).await;
        if stop.is_cancelled() {
            self.resign(leader).await;
        }
        self.revoke(lease).await;
        result
    }

    /// Leads until the term ends (see the module documentation).
    async fn lead(
        &self,
        guard: &Guard,
        roles: &watch::Sender<Role>,
        health: &Health,
        stop: &CancellationToken,
        keep: &KeepAlive,
    ) -> Result<(), StoreError> {
        let key = String::from_utf8_lossy(&guard.key).into_owned();
        let now = self.clock.now();
        let loaded = etcd::load(&self.client, &self.endpoints, &self.keys, self.ttl).await?;
        let arbiter = match self.arbiter_for_term(&loaded, now) {
            Ok(a) => a,
            Err(e) => {
                // Leave the leadership to a replica that can start (one
                // given the state file, say); this one campaigns again
                // after a back-off and says why each time.
                error!(error = %Chain(&e), "cannot lead: stepping down");
                return Err(e);
            }
        };
        if let Some(lease) = arbiter.lease() {
            info!(
                tcin = %lease.tcin,
                watcher_id = %lease.watcher_id,
                fencing_token = lease.token.get(),
                remaining_ms = lease.remaining(now).as_millis() as u64,
                "lease carried over to this leader, with its whole TTL"
            );
        }
        let term_stop = stop.child_token();
        let access = EtcdAccess {
            client: self.client.clone(),
            endpoints: self.endpoints.clone(),
            keys: self.keys.clone(),
            limit: self.write_limit,
            compact: self.compact,
        };
        // Cancelled by the store when a write fails its guard; the term's
        // stop (a child of the arbiter's) is separate, so the last write
        // of a clean shutdown is still made.
        let deposed = CancellationToken::new();
        let store = EtcdState::new(access, guard.clone(), &loaded, deposed.clone());
        let next_token = arbiter.next_token();
        let (handle, task) = task::spawn(
            arbiter,
            self.clock,
            store,
            term_stop.clone(),
            self.metrics.clone(),
            self.poll_planning,
        );
        // The task's first write (the whole state, guarded) comes before
        // anything it answers; asking its status waits for that write, so
        // this replica says it leads only once a guarded write succeeded.
        let confirmed = tokio::select! {
            s = handle.status() => s.is_ok(),
            () = term_stop.cancelled() => false,
            () = deposed.cancelled() => false,
        };
        if !confirmed {
            term_stop.cancel();
            let _ = task.await;
            return Err(StoreError::Deposed {
                key,
                revision: guard.revision,
            });
        }
        let _ = roles.send(Role::Leader {
            term: Term {
                handle,
                stop: term_stop.clone(),
            },
            url: self.advertise_url.clone(),
        });
        health.set_service(true).await;
        self.metrics.set_leading(true);
        info!(
            leadership_key = %key,
            revision = guard.revision,
            advertise_url = %self.advertise_url,
            next_fencing_token = next_token,
            "leading: this replica grants the purchase slot"
        );
        let why = self
            .watch_leadership(guard, &term_stop, &deposed, keep)
            .await;
        // Stop answering first, then end the task (its streams close).
        let _ = roles.send(Role::Follower { leader_url: None });
        health.set_service(false).await;
        self.metrics.set_leading(false);
        if stop.is_cancelled() {
            info!("shutting down: last write, then resigning the leadership");
        } else {
            warn!(reason = %why, "stepping down");
        }
        term_stop.cancel();
        if let Err(e) = task.await {
            error!(error = %e, "the arbiter task of this term ended abnormally");
        }
        // The task's last batch may have set the gauges again.
        self.metrics.set_leading(false);
        Ok(())
    }

    /// Waits until this term must end; says why.
    async fn watch_leadership(
        &self,
        guard: &Guard,
        term_stop: &CancellationToken,
        deposed: &CancellationToken,
        keep: &KeepAlive,
    ) -> String {
        let mut tick = tokio::time::interval(self.interval());
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = term_stop.cancelled() => return "the arbiter is stopping".into(),
                () = deposed.cancelled() => {
                    return "a guarded write found the leadership key gone or replaced".into();
                }
                () = keep.gone.cancelled() => {
                    return "etcd says this replica's lease is gone".into();
                }
                _ = tick.tick() => {}
            }
            let unconfirmed = keep.confirmed.borrow().elapsed();
            if unconfirmed >= self.ttl {
                return format!(
                    "no keep-alive confirmed for {} ms (the election TTL is {} ms): etcd may have dropped the leadership",
                    unconfirmed.as_millis(),
                    self.ttl.as_millis()
                );
            }
            let kv = self.client.kv_client();
            match etcd::bounded(
                &self.endpoints,
                "check the leadership key",
                self.interval(),
                || {
                    let mut kv = kv.clone();
                    let key = guard.key.clone();
                    async move { kv.get(key, None).await }
                },
            )
            .await
            {
                Ok(r) => match r.kvs().first() {
                    Some(kv) if kv.create_revision() == guard.revision => {}
                    Some(kv) => {
                        return format!(
                            "the leadership key was re-created (revision {}, this term's {})",
                            kv.create_revision(),
                            guard.revision
                        );
                    }
                    None => return "the leadership key is gone from etcd".into(),
                },
                // Unanswered: the keep-alive rule above decides.
                Err(e) => debug!(error = %e, "leadership check unanswered"),
            }
        }
    }

    /// The slot for a new term: the state read from etcd (or imported, or
    /// new), a held lease given the whole TTL from now, the token floor.
    fn arbiter_for_term(
        &self,
        loaded: &etcd::Loaded,
        now: crate::slot::Now,
    ) -> Result<Arbiter, StoreError> {
        let catalog = PriorityList::load(&self.config_path).map_err(|e| StoreError::Etcd {
            endpoints: self.endpoints.clone(),
            step: "load the product config for a new term",
            message: e.to_string(),
        })?;
        let mut snapshot = match &loaded.snapshot {
            Some(s) => s.clone(),
            None => self.first_state(loaded.marker, &catalog, now)?,
        };
        if let Some(l) = &mut snapshot.lease {
            // Clocks of different machines need not agree: the holder was
            // promised up to a TTL from its last renewal, so the new leader
            // counts a whole TTL from its own takeover.
            l.expires_at_unix_ms = now.unix_ms + l.ttl_ms;
        }
        if snapshot.next_fencing_token < self.token_floor {
            info!(
                token_floor = self.token_floor,
                was = snapshot.next_fencing_token,
                "fencing tokens raised to --token-floor"
            );
            snapshot.next_fencing_token = self.token_floor;
        }
        saved::restore(snapshot, catalog, self.timing, now).map_err(|e| StoreError::EtcdCorrupt {
            key: self.keys.snapshot.clone(),
            message: e.to_string(),
        })
    }

    /// The state to start from when etcd holds none: the imported state
    /// file, or a new state only when that cannot hand out a fencing token
    /// again. A new state starts tokens at 1, so it needs to be asked for:
    /// `--fresh-state` where no state was ever written under the prefix,
    /// `--token-floor` (above every token handed out) where the marker
    /// says one was and is gone. Without either, a replica that wins the
    /// first election while another replica's host has the state file to
    /// import would start from 1: it refuses, and the term fails.
    fn first_state(
        &self,
        marker: bool,
        catalog: &PriorityList,
        now: crate::slot::Now,
    ) -> Result<Snapshot, StoreError> {
        let refuse = |message: String| StoreError::Refused {
            key: self.keys.snapshot.clone(),
            message,
        };
        let new_state = || saved::snapshot(&Arbiter::new(catalog.clone(), self.timing, now), now);
        if marker {
            if self.token_floor > 0 {
                warn!(
                    state_key = %self.keys.snapshot,
                    token_floor = self.token_floor,
                    "etcd says a state was written here and it is gone: starting a new state with tokens from --token-floor"
                );
                return Ok(new_state());
            }
            return Err(refuse(format!(
                "no state, but {} says a state was written under this prefix before: it was lost, and a new state would hand out fencing tokens from 1 again. Restore it, or start with --token-floor above the highest token ever handed out",
                self.keys.marker
            )));
        }
        if let Some(path) = &self.import {
            // Checked at start-up; gone since then is an error too.
            let file = StateFile::new(Some(path.clone()), false);
            return match file.load()? {
                Some(s) => {
                    info!(import_state_file = %path.display(), next_fencing_token = s.next_fencing_token, "etcd holds no state yet: starting from the imported state file");
                    Ok(s)
                }
                None => Err(refuse(format!(
                    "--import-state-file {} names no file",
                    path.display()
                ))),
            };
        }
        if self.fresh_state || self.token_floor > 0 {
            info!(
                token_floor = self.token_floor,
                "etcd holds no state yet: starting with a new state"
            );
            return Ok(new_state());
        }
        Err(refuse(
            "etcd holds no state yet, and none was asked for: give --import-state-file (the file store's state, so fencing tokens keep rising), --token-floor, or --fresh-state for a deployment that never handed out a token".into(),
        ))
    }

    /// Keeps `lease` alive every TTL/3; re-opens the keep-alive stream when
    /// an etcd member goes away.
    fn keep_alive(&self, lease: i64) -> KeepAlive {
        let (tx, confirmed) = watch::channel(Instant::now());
        let gone = CancellationToken::new();
        let client = self.client.clone();
        let interval = self.interval();
        let gone_signal = gone.clone();
        let task = tokio::spawn(async move {
            loop {
                let mut leases = client.lease_client();
                let opened = tokio::time::timeout(interval, leases.keep_alive(lease)).await;
                let (mut keeper, mut answers) = match opened {
                    Ok(Ok(pair)) => pair,
                    Ok(Err(e)) => {
                        debug!(error = %e, lease, "keep-alive stream not opened");
                        tokio::time::sleep(interval).await;
                        continue;
                    }
                    Err(_) => continue,
                };
                loop {
                    let sent = Instant::now();
                    if keeper.keep_alive().await.is_err() {
                        break;
                    }
                    match tokio::time::timeout(interval, answers.message()).await {
                        Ok(Ok(Some(a))) if a.ttl() > 0 => {
                            // Counted from when it was sent: etcd renewed
                            // the lease at some moment after that.
                            let _ = tx.send(sent);
                        }
                        Ok(Ok(Some(_))) => {
                            warn!(lease, "etcd says the lease has expired");
                            gone_signal.cancel();
                            return;
                        }
                        Ok(Ok(None) | Err(_)) | Err(_) => break,
                    }
                    tokio::time::sleep_until(sent + interval).await;
                }
                debug!(lease, "keep-alive stream lost; opening another");
            }
        });
        KeepAlive {
            confirmed,
            gone,
            task,
        }
    }

    /// Keeps the follower's idea of who leads current.
    async fn follow(&self, roles: &watch::Sender<Role>) {
        let mut last: Option<Option<String>> = None;
        loop {
            let election = self.client.election_client();
            let asked = etcd::bounded(&self.endpoints, "ask who leads", self.interval(), || {
                let mut election = election.clone();
                let name = self.keys.election.clone();
                async move { election.leader(name).await }
            })
            .await;
            let leader = match asked {
                Ok(r) => r
                    .kv()
                    .and_then(|kv| kv.value_str().ok())
                    .map(str::to_owned)
                    .filter(|u| !u.is_empty()),
                // etcd's answer when nobody campaigns.
                Err(e) if e.to_string().contains("no leader") => None,
                Err(e) => {
                    // Unanswered: what was known stands until etcd answers.
                    debug!(error = %e, "who leads: no answer");
                    tokio::time::sleep(self.interval().min(Duration::from_secs(1))).await;
                    continue;
                }
            };
            if last.as_ref() != Some(&leader) {
                match &leader {
                    Some(url) => info!(leader_url = %url, "following"),
                    None => info!("no leader elected"),
                }
                let _ = roles.send(Role::Follower {
                    leader_url: leader.clone(),
                });
                last = Some(leader);
            }
            tokio::time::sleep(self.interval().min(Duration::from_secs(1))).await;
        }
    }

    async fn resign(&self, leader: LeaderKey) {
        let election = self.client.election_client();
        match self
            .etcd("resign", || {
                let mut election = election.clone();
                let leader = leader.clone();
                async move {
                    election
                        .resign(Some(ResignOptions::new().with_leader(leader)))
                        .await
                }
            })
            .await
        {
            Ok(_) => info!("leadership resigned: another replica takes over now"),
            Err(e) => {
                warn!(error = %Chain(&e), "could not resign; the leadership ends with the lease")
            }
        }
    }

    async fn revoke(&self, lease: i64) {
        let leases = self.client.lease_client();
        if let Err(e) = self
            .etcd("revoke the etcd lease", || {
                let mut leases = leases.clone();
                async move { leases.revoke(lease).await }
            })
            .await
        {
            debug!(error = %e, lease, "lease not revoked; it expires by itself");
        }
    }
}

//! Which arbiter task answers now, and in what part.
//!
//! With the file store there is one task for the life of the process
//! ([`Role::Standalone`]). With `--store etcd` (see `crate::ha`) a replica
//! runs a task only while it leads: each term of leadership has its own
//! task and its own stop signal, and between terms the replica is a
//! follower that answers every state-changing call with `UNAVAILABLE`
//! naming the leader. The gRPC service and the HTTP routes ask
//! [`Replica::current`] on every call, so a replica that steps down stops
//! answering for the old term at once.

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tonic::Status;

use restock_proto::{ROLE_FOLLOWER, ROLE_LEADER, ROLE_STANDALONE, v1 as pb};
use restock_runtime::leader::not_leader;

use crate::task::ArbiterHandle;

/// The task of one term, and the signal that ends it (and every stream
/// opened on it).
#[derive(Debug, Clone)]
pub struct Term {
    pub handle: ArbiterHandle,
    pub stop: CancellationToken,
}

#[derive(Debug, Clone)]
pub enum Role {
    /// One arbiter with its state file.
    Standalone(Term),
    /// The elected replica; `url` is its own advertised URL.
    Leader { term: Term, url: String },
    /// A replica waiting to lead; the leader's URL when known.
    Follower { leader_url: Option<String> },
}

/// The role as the service sees it: cheap to clone, always current.
#[derive(Debug, Clone)]
pub struct Replica {
    role: watch::Receiver<Role>,
}

impl Replica {
    /// A replica whose role `sender` changes.
    pub fn new(initial: Role) -> (Self, watch::Sender<Role>) {
        let (tx, rx) = watch::channel(initial);
        (Self { role: rx }, tx)
    }

    /// The term to answer with, or the follower's `UNAVAILABLE` naming the
    /// leader.
    pub fn current(&self) -> Result<Term, Status> {
        match &*self.role.borrow() {
            Role::Standalone(term) | Role::Leader { term, .. } => Ok(term.clone()),
            Role::Follower { leader_url } => Err(not_leader(leader_url.as_deref())),
        }
    }

    /// `GetStatusResponse.role` and `leader_url`.
    pub fn describe(&self) -> (&'static str, String) {
        match &*self.role.borrow() {
            Role::Standalone(_) => (ROLE_STANDALONE, String::new()),
            Role::Leader { url, .. } => (ROLE_LEADER, url.clone()),
            Role::Follower { leader_url } => {
                (ROLE_FOLLOWER, leader_url.clone().unwrap_or_default())
            }
        }
    }

    /// Marks a status answer with this replica's role.
    pub fn annotate(&self, status: &mut pb::GetStatusResponse) {
        let (role, leader_url) = self.describe();
        role.clone_into(&mut status.role);
        status.leader_url = leader_url;
    }

    /// A follower's answer to `GetStatus`: who leads, nothing of the state
    /// (the leader's is the only one that counts).
    pub fn follower_status(&self) -> pb::GetStatusResponse {
        let mut status = pb::GetStatusResponse {
            unix_ms: restock_domain::timestamp::now_unix_ms(),
            ..Default::default()
        };
        self.annotate(&mut status);
        status
    }
}

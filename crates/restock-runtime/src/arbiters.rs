//! The arbiter URLs a client was given (`--arbiter URL1,URL2,URL3`) and which
//! of them to try now.
//!
//! Arbiter replicas elect one leader; the others answer state-changing
//! calls with `UNAVAILABLE` and the leader's URL (see [`crate::leader`]).
//! A client keeps one [`ArbiterTracker`]: it starts with the first URL,
//! goes straight to a hinted leader, moves round robin to the next URL when
//! the current one cannot be reached (or says no leader is known), and
//! remembers the last URL that worked. With one URL nothing moves, so a
//! client given one URL behaves as before replicas existed.

use std::fmt;

use tracing::{info, warn};

/// The flag's value was not a usable list. Every message names the entry.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ArbiterListError {
    #[error("no arbiter URL given")]
    Empty,
    #[error("entry {position} is empty (two commas in a row, or a comma at an end)")]
    EmptyEntry { position: usize },
    #[error("{entry:?} must start with http:// or https://")]
    Scheme { entry: String },
    #[error("{entry:?} is not a URL: {reason}")]
    NotAUrl { entry: String, reason: String },
    #[error("{entry:?} is listed twice")]
    Duplicate { entry: String },
}

/// One or more arbiter URLs, each `http://` or `https://` with a host, none
/// twice, in the order given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArbiterUrls(Vec<String>);

impl ArbiterUrls {
    /// Parses a comma-separated list; entries are trimmed.
    pub fn parse(value: &str) -> Result<Self, ArbiterListError> {
        if value.trim().is_empty() {
            return Err(ArbiterListError::Empty);
        }
        let mut urls: Vec<String> = Vec::new();
        for (i, raw) in value.split(',').enumerate() {
            let entry = raw.trim();
            if entry.is_empty() {
                return Err(ArbiterListError::EmptyEntry { position: i + 1 });
            }
            check_url(entry)?;
            if urls.iter().any(|u| same_url(u, entry)) {
                return Err(ArbiterListError::Duplicate {
                    entry: entry.to_owned(),
                });
            }
            urls.push(entry.to_owned());
        }
        Ok(Self(urls))
    }

    /// The URLs, in the order given (never empty).
    pub fn urls(&self) -> &[String] {
        &self.0
    }

    /// The first URL given.
    pub fn first(&self) -> &str {
        &self.0[0]
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Always false: a list holds at least one URL.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Is `url` one of them (ignoring a trailing `/` and the case of the
    /// scheme and host)?
    pub fn contains(&self, url: &str) -> bool {
        self.position(url).is_some()
    }

    fn position(&self, url: &str) -> Option<usize> {
        self.0.iter().position(|u| same_url(u, url))
    }
}

impl fmt::Display for ArbiterUrls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0.join(","))
    }
}

/// `http://` or `https://`, and a URI with a host.
fn check_url(entry: &str) -> Result<(), ArbiterListError> {
    let lower = entry.to_ascii_lowercase();
    if !(lower.starts_with("http://") || lower.starts_with("https://")) {
        return Err(ArbiterListError::Scheme {
            entry: entry.to_owned(),
        });
    }
    let uri: http::Uri =
        entry
            .parse()
            .map_err(|e: http::uri::InvalidUri| ArbiterListError::NotAUrl {
                entry: entry.to_owned(),
                reason: e.to_string(),
            })?;
    if uri.host().is_none_or(str::is_empty) {
        return Err(ArbiterListError::NotAUrl {
            entry: entry.to_owned(),
            reason: "it names no host".to_owned(),
        });
    }
    Ok(())
}

/// The same server: equal but for a trailing `/` and letter case (scheme
/// and host are case-insensitive; arbiter URLs carry no path).
pub fn same_url(a: &str, b: &str) -> bool {
    a.trim_end_matches('/')
        .eq_ignore_ascii_case(b.trim_end_matches('/'))
}

/// Why the tracker moved to another URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Move {
    /// Nothing changed (one URL, a stale failure, or the hint is the
    /// current URL already).
    Stay,
    /// To the leader a replica named; `listed` says whether it is one of
    /// the URLs given.
    ToLeader {
        from: String,
        to: String,
        listed: bool,
    },
    /// To the next URL given, round robin, after the current one failed.
    ToNext { from: String, to: String },
}

/// Which arbiter URL to try now; see the module documentation.
#[derive(Debug, Clone)]
pub struct ArbiterTracker {
    urls: ArbiterUrls,
    current: String,
    /// The position in `urls` the round robin goes on from (the current
    /// URL's, or the last listed one's while a hinted URL that is not
    /// listed is current).
    index: usize,
    last_good: Option<String>,
    /// Failures since the last success.
    failures: usize,
    /// Hints followed since the last success.
    hints: usize,
    /// URLs that failed in this round (since the last success, or since
    /// every URL failed in a row): a replica still naming one of them as
    /// the leader (it has not noticed the leader died) is not followed.
    failed: Vec<String>,
}

impl ArbiterTracker {
    pub fn new(urls: ArbiterUrls) -> Self {
        let current = urls.first().to_owned();
        Self {
            urls,
            current,
            index: 0,
            last_good: None,
            failures: 0,
            hints: 0,
            failed: Vec::new(),
        }
    }

    /// The URL to try now.
    pub fn current(&self) -> &str {
        &self.current
    }

    /// The URLs given.
    pub fn urls(&self) -> &ArbiterUrls {
        &self.urls
    }

    /// The last URL that worked, if any has.
    pub fn last_good(&self) -> Option<&str> {
        self.last_good.as_deref()
    }

    /// `url` worked (a call was answered by the leader, a stream opened).
    pub fn on_success(&mut self, url: &str) {
        if same_url(url, &self.current) {
            self.failures = 0;
            self.hints = 0;
            self.failed.clear();
        }
        self.last_good = Some(url.to_owned());
    }

    /// A replica named `leader` as the leader: try it next, listed or not.
    /// A leader that failed in this round is not followed (the replica has
    /// not noticed yet that it died): the replica counts as failed, and the
    /// next URL is tried.
    pub fn on_hint(&mut self, leader: &str) -> Move {
        let leader = leader.trim();
        if same_url(leader, &self.current) {
            return Move::Stay;
        }
        if self.failed.iter().any(|f| same_url(f, leader)) {
            info!(
                arbiter = %self.current,
                leader = %leader,
                "the arbiter names a leader that just failed; not followed"
            );
            let current = self.current.clone();
            return self.on_failure(&current);
        }
        let from = std::mem::replace(&mut self.current, leader.to_owned());
        self.hints += 1;
        let listed = match self.urls.position(leader) {
            Some(i) => {
                self.index = i;
                true
            }
            None => false,
        };
        if listed {
            info!(from = %from, to = %leader, "following the arbiter leader");
        } else {
            warn!(
                from = %from,
                to = %leader,
                arbiters = %self.urls,
                "following the arbiter leader to a URL --arbiter does not list"
            );
        }
        Move::ToLeader {
            from,
            to: leader.to_owned(),
            listed,
        }
    }

    /// `failed` could not be reached, or answered UNAVAILABLE without naming
    /// a leader: move on to the next URL given. A failure of a URL that is
    /// no longer current (another task moved on already) changes nothing
    /// but is counted.
    pub fn on_failure(&mut self, failed: &str) -> Move {
        if !same_url(failed, &self.current) {
            return Move::Stay;
        }
        self.failures += 1;
        if !self.failed.iter().any(|f| same_url(f, failed)) {
            self.failed.push(failed.to_owned());
        }
        if self.failures.is_multiple_of(self.urls.len()) {
            // A new round: hints are trusted again.
            self.failed.clear();
        }
        // After a hinted URL that is not listed, `index` is still the
        // listed one that was current before it: back to the list after it.
        let next = (self.index + 1) % self.urls.len();
        let to = self.urls.urls()[next].clone();
        self.index = next;
        if same_url(&to, &self.current) {
            return Move::Stay;
        }
        let from = std::mem::replace(&mut self.current, to.clone());
        info!(from = %from, to = %to, "arbiter unreachable or without a leader; trying the next one");
        Move::ToNext { from, to }
    }

    /// Should the client pause (its back-off) before the next attempt?
    /// Yes once every URL failed in a row (each time the round robin comes
    /// round again: with one URL, after every failure), and when hints have
    /// gone round more often than there are URLs (replicas naming each
    /// other while an election settles). Moving to a hinted leader or to
    /// the next URL is otherwise immediate.
    pub fn should_back_off(&self) -> bool {
        (self.failures > 0 && self.failures.is_multiple_of(self.urls.len()))
            || self.hints > self.urls.len() + 1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(s: &str) -> ArbiterUrls {
        ArbiterUrls::parse(s).unwrap()
    }

    #[test]
    fn a_list_is_split_trimmed_and_checked() {
        let l = list(" http://a:1 ,https://b:2,http://c:3/");
        assert_eq!(l.urls(), ["http://a:1", "https://b:2", "http://c:3/"]);
        assert_eq!(l.first(), "http://a:1");
        assert!(l.contains("HTTP://A:1/"));
        assert!(!l.contains("http://a:2"));
        assert_eq!(l.to_string(), "http://a:1,https://b:2,http://c:3/");
        assert_eq!(list("http://127.0.0.1:50051").len(), 1);
    }

    #[test]
    fn bad_entries_are_named() {
        assert_eq!(ArbiterUrls::parse("  "), Err(ArbiterListError::Empty));
        assert_eq!(
            ArbiterUrls::parse("http://a:1,,http://b:1"),
            Err(ArbiterListError::EmptyEntry { position: 2 })
        );
        let e = ArbiterUrls::parse("http://a:1,b:2").unwrap_err();
        assert_eq!(
            e,
            ArbiterListError::Scheme {
                entry: "b:2".into()
            }
        );
        assert!(e.to_string().contains("\"b:2\""), "{e}");
        let e = ArbiterUrls::parse("http://a:1,http://bad host:1").unwrap_err();
        assert!(
            matches!(&e, ArbiterListError::NotAUrl { entry, .. } if entry == "http://bad host:1"),
            "{e:?}"
        );
        let e = ArbiterUrls::parse("http://a:1, http://A:1/").unwrap_err();
        assert_eq!(
            e,
            ArbiterListError::Duplicate {
                entry: "http://A:1/".into()
            }
        );
        assert!(e.to_string().contains("twice"), "{e}");
    }

    #[test]
    fn failures_go_round_robin_and_back_off_once_each_round() {
        let mut t = ArbiterTracker::new(list("http://a:1,http://b:1,http://c:1"));
        assert_eq!(t.current(), "http://a:1");
        assert!(!t.should_back_off());
        assert_eq!(
            t.on_failure("http://a:1"),
            Move::ToNext {
                from: "http://a:1".into(),
                to: "http://b:1".into()
            }
        );
        assert!(!t.should_back_off());
        t.on_failure("http://b:1");
        assert_eq!(t.current(), "http://c:1");
        assert!(!t.should_back_off());
        t.on_failure("http://c:1");
        assert_eq!(t.current(), "http://a:1");
        assert!(t.should_back_off(), "every URL failed in a row");
        t.on_failure("http://a:1");
        assert!(!t.should_back_off(), "the next round starts at once");
        t.on_success("http://b:1");
        assert_eq!(t.last_good(), Some("http://b:1"));
        assert!(!t.should_back_off());
    }

    #[test]
    fn a_stale_failure_does_not_move() {
        let mut t = ArbiterTracker::new(list("http://a:1,http://b:1"));
        t.on_failure("http://a:1");
        // Another call still on a:1 fails too: b:1 stays current.
        assert_eq!(t.on_failure("http://a:1"), Move::Stay);
        assert_eq!(t.current(), "http://b:1");
    }

    #[test]
    fn one_url_never_moves_and_always_backs_off_after_a_failure() {
        let mut t = ArbiterTracker::new(list("http://a:1"));
        assert_eq!(t.on_failure("http://a:1"), Move::Stay);
        assert_eq!(t.current(), "http://a:1");
        assert!(t.should_back_off());
        t.on_success("http://a:1");
        assert!(!t.should_back_off());
        assert_eq!(t.last_good(), Some("http://a:1"));
    }

    #[test]
    fn a_hint_goes_straight_to_the_leader_listed_or_not() {
        let mut t = ArbiterTracker::new(list("http://a:1,http://b:1,http://c:1"));
        assert_eq!(
            t.on_hint("http://c:1"),
            Move::ToLeader {
                from: "http://a:1".into(),
                to: "http://c:1".into(),
                listed: true
            }
        );
        assert_eq!(t.current(), "http://c:1");
        assert!(!t.should_back_off());
        assert_eq!(t.on_hint("http://c:1/"), Move::Stay);
        // The round robin goes on from the hinted one.
        t.on_failure("http://c:1");
        assert_eq!(t.current(), "http://a:1");

        assert_eq!(
            t.on_hint("http://d:1"),
            Move::ToLeader {
                from: "http://a:1".into(),
                to: "http://d:1".into(),
                listed: false
            }
        );
        assert_eq!(t.current(), "http://d:1");
        // An unlisted leader that fails: back to the list, after a:1.
        t.on_failure("http://d:1");
        assert_eq!(t.current(), "http://b:1");
    }

    #[test]
    fn a_leader_that_just_failed_is_not_followed_again() {
        let mut t = ArbiterTracker::new(list("http://a:1,http://b:1,http://c:1"));
        t.on_hint("http://c:1");
        // c died; a and b still name it until their election notices.
        t.on_failure("http://c:1");
        assert_eq!(t.current(), "http://a:1");
        assert_eq!(
            t.on_hint("http://c:1"),
            Move::ToNext {
                from: "http://a:1".into(),
                to: "http://b:1".into()
            }
        );
        assert!(!t.should_back_off());
        t.on_hint("http://c:1");
        assert_eq!(t.current(), "http://c:1");
        assert!(t.should_back_off(), "every URL failed in a row");
        // A new round trusts hints again; a new leader is followed.
        t.on_failure("http://c:1");
        assert_eq!(t.current(), "http://a:1");
        assert!(matches!(t.on_hint("http://c:1"), Move::ToNext { .. }));
        // b was elected: a success trusts every hint again.
        t.on_success("http://b:1");
        assert_eq!(t.last_good(), Some("http://b:1"));
        assert!(matches!(t.on_hint("http://c:1"), Move::ToLeader { .. }));
    }

    #[test]
    fn replicas_naming_each_other_end_in_a_back_off() {
        let mut t = ArbiterTracker::new(list("http://a:1,http://b:1"));
        let mut hops = 0;
        while !t.should_back_off() {
            let other = if t.current() == "http://a:1" {
                "http://b:1"
            } else {
                "http://a:1"
            };
            t.on_hint(other);
            hops += 1;
            assert!(hops < 10, "hints alone never back off");
        }
        assert_eq!(hops, 4);
        let leader = t.current().to_owned();
        t.on_success(&leader);
        assert!(!t.should_back_off());
    }
}

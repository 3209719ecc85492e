//! Which arbiter replica leads, as the protocol says it: a replica that does
//! not lead answers every state-changing call with `UNAVAILABLE`, names the
//! leader's URL in the message, and puts it in the [`LEADER_METADATA`]
//! trailer, so a client that was given several arbiter URLs can go straight
//! to the leader instead of trying each in turn.

use tonic::{Code, Status, metadata::MetadataValue};

/// The trailer naming the leader's URL (its `--advertise-url`).
pub const LEADER_METADATA: &str = "restock-leader";

/// How every [`not_leader`] message begins (what [`is_not_leader`] reads
/// when no leader is known, so there is no trailer).
const NOT_LEADER: &str = "this arbiter replica is not the leader";

/// The answer of a replica that does not lead: `UNAVAILABLE`, with the
/// leader's URL in the message and the trailer when one is known.
pub fn not_leader(leader_url: Option<&str>) -> Status {
    match leader_url.filter(|u| !u.is_empty()) {
        Some(url) => {
            let mut status = Status::unavailable(format!("{NOT_LEADER}; the leader is {url}"));
            if let Ok(v) = MetadataValue::try_from(url) {
                status.metadata_mut().insert(LEADER_METADATA, v);
            }
            status
        }
        None => Status::unavailable(format!(
            "{NOT_LEADER} and no leader is elected yet; try again shortly"
        )),
    }
}

/// Is `status` a replica's [`not_leader`] answer (naming the leader or
/// not), rather than an arbiter that could not be reached?
pub fn is_not_leader(status: &Status) -> bool {
    status.code() == Code::Unavailable
        && (leader_hint(status).is_some() || status.message().starts_with(NOT_LEADER))
}

/// The leader's URL a `not_leader` answer names, if `status` is one.
pub fn leader_hint(status: &Status) -> Option<String> {
    if status.code() != Code::Unavailable {
        return None;
    }
    status
        .metadata()
        .get(LEADER_METADATA)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|u| u.starts_with("http://") || u.starts_with("https://"))
        .map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hint_round_trips_and_is_only_read_from_unavailable() {
        let s = not_leader(Some("http://10.0.0.2:50051"));
        assert_eq!(s.code(), Code::Unavailable);
        assert!(
            s.message().contains("http://10.0.0.2:50051"),
            "{}",
            s.message()
        );
        assert_eq!(leader_hint(&s).as_deref(), Some("http://10.0.0.2:50051"));

        let none = not_leader(None);
        assert_eq!(leader_hint(&none), None);
        assert!(none.message().contains("no leader"), "{}", none.message());

        assert!(is_not_leader(&s));
        assert!(is_not_leader(&none));
        assert!(!is_not_leader(&Status::unavailable("connection refused")));
        assert!(!is_not_leader(&Status::failed_precondition(NOT_LEADER)));

        let mut other = Status::failed_precondition("x");
        other
            .metadata_mut()
            .insert(LEADER_METADATA, MetadataValue::from_static("http://a:1"));
        assert_eq!(leader_hint(&other), None);

        let mut junk = Status::unavailable("x");
        junk.metadata_mut()
            .insert(LEADER_METADATA, MetadataValue::from_static("not a url"));
        assert_eq!(leader_hint(&junk), None);
    }
}

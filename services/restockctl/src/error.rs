//! What can go wrong, the message that names it, and the exit code each case
//! maps to (listed in `--help`).

use std::time::Duration;

use tonic::Code;

/// The command did what it was asked and the answer was "yes".
pub const EXIT_OK: u8 = 0;
/// The answer was "no": the monitor found a problem, health is not SERVING,
/// acquire was refused.
pub const EXIT_NEGATIVE: u8 = 1;
/// Bad command line (also what clap exits with).
pub const EXIT_USAGE: u8 = 2;
/// The server could not be reached, or was unavailable.
pub const EXIT_UNREACHABLE: u8 = 3;
/// The server answered with an error status.
pub const EXIT_REFUSED: u8 = 4;

/// Why a command failed.
#[derive(Debug, thiserror::Error)]
pub enum CtlError {
    #[error("{url:?} is not a usable server URL: {reason}")]
    BadUrl { url: String, reason: String },

    /// A TLS file or the token cannot be used (the message names it).
    #[error("{0}")]
    Setup(String),

    /// No connection could be made (refused, no route, connect timeout).
    #[error("cannot reach {role} at {url}: {reason}")]
    Unreachable {
        role: &'static str,
        url: String,
        reason: String,
    },

    /// A call got no answer in time.
    #[error("{call} to {role} at {url} timed out after {}", humantime::format_duration(*.after))]
    TimedOut {
        call: &'static str,
        role: &'static str,
        url: String,
        after: Duration,
    },

    /// The server answered with an error status.
    #[error("{call} failed: {}: {message}", code_name(*.code))]
    Rpc {
        call: &'static str,
        code: Code,
        message: String,
    },

    /// Writing the output failed (other than a closed pipe, which ends the
    /// command quietly).
    #[error("cannot write the output: {0}")]
    Output(#[from] std::io::Error),
}

impl CtlError {
    /// The process exit code for this error.
    pub fn exit_code(&self) -> u8 {
        match self {
            Self::BadUrl { .. } | Self::Setup(_) => EXIT_USAGE,
            Self::Unreachable { .. } | Self::TimedOut { .. } => EXIT_UNREACHABLE,
            Self::Rpc { .. } => EXIT_REFUSED,
            Self::Output(_) => EXIT_NEGATIVE,
        }
    }

    /// A closed stdout (`restockctl events | head`) is not an error worth a
    /// message.
    pub fn is_broken_pipe(&self) -> bool {
        matches!(self, Self::Output(e) if e.kind() == std::io::ErrorKind::BrokenPipe)
    }

    /// Maps a status from `call` to an error: UNAVAILABLE (the transport's
    /// "cannot connect" as well as a server that is shutting down) and
    /// DEADLINE_EXCEEDED mean the server cannot be reached; any other code is
    /// the server's answer.
    pub fn from_status(
        call: &'static str,
        role: &'static str,
        url: &str,
        status: &tonic::Status,
    ) -> Self {
        match status.code() {
            code @ (Code::Unavailable | Code::DeadlineExceeded) => Self::Unreachable {
                role,
                url: url.to_owned(),
                reason: format!("{call}: {}: {}", code_name(code), describe_status(status)),
            },
            code => Self::Rpc {
                call,
                code,
                message: describe_status(status),
            },
        }
    }
}

pub use restock_runtime::error::{chain_text as error_chain, status_text as describe_status};

/// The canonical upper-case name of a gRPC status code, as grpcurl and the
/// gRPC documentation spell it.
pub fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_name_the_call_and_the_code() {
        let e = CtlError::from_status(
            "ReleasePurchase",
            "arbiter",
            "http://h:1",
            &tonic::Status::failed_precondition("lease x already ended"),
        );
        assert_eq!(
            e.to_string(),
            "ReleasePurchase failed: FAILED_PRECONDITION: lease x already ended"
        );
        assert_eq!(e.exit_code(), EXIT_REFUSED);
    }

    #[test]
    fn unavailable_means_unreachable() {
        let e = CtlError::from_status(
            "GetStatus",
            "arbiter",
            "http://h:1",
            &tonic::Status::unavailable("the arbiter is shutting down"),
        );
        assert!(
            e.to_string()
                .starts_with("cannot reach arbiter at http://h:1: GetStatus: UNAVAILABLE"),
            "{e}"
        );
        assert_eq!(e.exit_code(), EXIT_UNREACHABLE);
    }
}

//! The end of every binary's `main`: an error is logged with its causes,
//! printed to stderr as `binary: what failed`, and turned into an exit code.

use std::{error::Error, future::Future, net::SocketAddr, process::ExitCode};

use tokio::net::TcpListener;

use crate::{announce, error::chain_text};

/// Exit code when start-up failed before serving (a bad flag, a port in
/// use, an unreadable file).
pub const EXIT_START: u8 = 2;
/// Exit code when the service stopped with an error.
pub const EXIT_FAILED: u8 = 1;

/// Reports `e` and returns `code`.
pub fn fail(binary: &str, e: &(dyn Error + 'static), code: u8) -> ExitCode {
    let text = chain_text(e);
    tracing::error!(error = %text, "{binary} stopped");
    eprintln!("{binary}: {text}");
    ExitCode::from(code)
}

/// Success, or [`fail`] with [`EXIT_FAILED`].
pub fn finish<E: Error + 'static>(binary: &str, result: Result<(), E>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(binary, &e, EXIT_FAILED),
    }
}

/// The body of a server's `main`: binds `listen` for `what` (`"grpc"`),
/// then runs `serve` on the listener until it returns. A bind failure exits
/// with [`EXIT_START`], an error from `serve` with [`EXIT_FAILED`].
pub async fn serve<F, Fut, E>(
    binary: &str,
    what: &'static str,
    listen: SocketAddr,
    serve: F,
) -> ExitCode
where
    F: FnOnce(TcpListener) -> Fut,
    Fut: Future<Output = Result<(), E>>,
    E: Error + 'static,
{
    match announce::bind(what, listen).await {
        Ok(listener) => finish(binary, serve(listener).await),
        Err(e) => fail(binary, &e, EXIT_START),
    }
}

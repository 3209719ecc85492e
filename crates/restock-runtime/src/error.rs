//! Errors on one line with their causes: "connection refused" is usually in
//! a cause, not in the top error, and a log line or an exit message without
//! it says nothing useful.

use std::{error::Error, fmt};

/// Displays an error followed by each cause (`top: cause: root cause`),
/// leaving out a cause whose text the line already holds (many errors
/// repeat their source in their own message).
#[derive(Debug, Clone, Copy)]
pub struct Chain<'a>(pub &'a (dyn Error + 'static));

impl fmt::Display for Chain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&chain_text(self.0))
    }
}

/// The text of [`Chain`].
pub fn chain_text(e: &(dyn Error + 'static)) -> String {
    let mut text = e.to_string();
    append_causes(&mut text, e.source());
    text
}

/// A gRPC status's message plus its source error when the transport gave
/// one (tonic puts "transport error" in the message and the reason in the
/// source); "(no message)" rather than nothing.
pub fn status_text(status: &tonic::Status) -> String {
    let mut text = status.message().to_owned();
    append_causes(&mut text, Error::source(status));
    if text.is_empty() {
        text = "(no message)".into();
    }
    text
}

fn append_causes(text: &mut String, mut source: Option<&(dyn Error + 'static)>) {
    while let Some(s) = source {
        let s_text = s.to_string();
        if !s_text.is_empty() && !text.contains(&s_text) {
            if !text.is_empty() {
                text.push_str(": ");
            }
            text.push_str(&s_text);
        }
        source = s.source();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct Wrap(&'static str, Option<Box<Wrap>>);
    impl fmt::Display for Wrap {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str(self.0)
        }
    }
    impl Error for Wrap {
        fn source(&self) -> Option<&(dyn Error + 'static)> {
            self.1.as_deref().map(|w| w as &(dyn Error + 'static))
        }
    }

    #[test]
    fn causes_follow_and_repeats_are_left_out() {
        let e = Wrap(
            "cannot reach the arbiter: transport error",
            Some(Box::new(Wrap(
                "transport error",
                Some(Box::new(Wrap("connection refused", None))),
            ))),
        );
        assert_eq!(
            Chain(&e).to_string(),
            "cannot reach the arbiter: transport error: connection refused"
        );
    }

    #[test]
    fn a_status_shows_its_message_or_says_it_has_none() {
        assert_eq!(
            status_text(&tonic::Status::not_found("no lease x")),
            "no lease x"
        );
        assert_eq!(status_text(&tonic::Status::unknown("")), "(no message)");
    }
}

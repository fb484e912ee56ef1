//! How an error reaches the user: one line, every cause in the chain said once.
//!
//! The crates' errors name their file and include their cause in their own message (an
//! I/O error variant reads `{path}: {source}`), and the commands add what they were doing
//! (`--trace {path}`). Printing the chain the usual way (anyhow's `{:#}`, each cause after a
//! colon) therefore said the operating system's reason twice and the path twice:
//! `--trace t: t: File exists (os error 17): File exists (os error 17)`. [`ErrorReport`] joins
//! the chain so that a cause already at the end of the text is left out, and a cause that
//! starts with the words the text ends with (typically the path) continues the text from
//! there: `--trace t: File exists (os error 17)`.

use std::fmt;

/// An error chain displayed as one line without repeats (see the module note).
pub struct ErrorReport<'a>(pub &'a anyhow::Error);

impl fmt::Display for ErrorReport<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&joined(self.0.chain().map(|cause| cause.to_string())))
    }
}

/// The messages of a chain, outermost first, joined without repeats.
fn joined(messages: impl IntoIterator<Item = String>) -> String {
    let mut text = String::new();
    for message in messages {
        if message.is_empty() || text.ends_with(&message) {
            continue;
        }
        if text.is_empty() {
            text = message;
            continue;
        }
        match overlap(&text, &message) {
            0 => {
                text.push_str(": ");
                text.push_str(&message);
            }
            shared => text.push_str(&message[shared..]),
        }
    }
    text
}

/// The length of the longest start of `next` that `text` ends with, counted only where it
/// is whole words on both sides: in `text` it begins the text or follows a space, and in
/// `next` it is followed by `": "`. Shorter than two characters counts as none, so that a
/// lone digit or letter never merges two messages.
fn overlap(text: &str, next: &str) -> usize {
    let mut best = 0;
    for (end, _) in next.match_indices(": ") {
        let shared = &next[..end];
        if shared.len() < 2 || !text.ends_with(shared) {
            continue;
        }
        let before = &text[..text.len() - shared.len()];
        if before.is_empty() || before.ends_with(' ') {
            best = end;
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chain(messages: &[&str]) -> String {
        joined(messages.iter().map(|m| m.to_string()))
    }

    #[test]
    fn a_cause_already_said_is_left_out() {
        assert_eq!(
            chain(&[
                "/k: cannot read: No such file or directory (os error 2)",
                "No such file or directory (os error 2)",
            ]),
            "/k: cannot read: No such file or directory (os error 2)"
        );
    }

    #[test]
    fn a_cause_that_starts_with_the_path_continues_the_text() {
        assert_eq!(
            chain(&[
                "--trace /tmp/t",
                "/tmp/t: File exists (os error 17)",
                "File exists (os error 17)",
            ]),
            "--trace /tmp/t: File exists (os error 17)"
        );
    }

    #[test]
    fn unrelated_causes_are_joined_with_colons() {
        assert_eq!(
            chain(&["reading the log", "chunk 3 is truncated", "early end"]),
            "reading the log: chunk 3 is truncated: early end"
        );
        assert_eq!(chain(&["only"]), "only");
        assert_eq!(chain(&[]), "");
    }

    #[test]
    fn only_whole_words_merge() {
        // "1" is too short, and "b1" is not a whole word of the text.
        assert_eq!(chain(&["ab 1", "1: x"]), "ab 1: 1: x");
        assert_eq!(chain(&["ab1", "b1: x"]), "ab1: b1: x");
        // The shared words must be followed by ": " in the cause, not be just its start.
        assert_eq!(chain(&["open /a", "/ab: gone"]), "open /a: /ab: gone");
        // The whole text may be the shared part.
        assert_eq!(chain(&["/tmp/t", "/tmp/t: gone"]), "/tmp/t: gone");
    }

    #[test]
    fn an_anyhow_chain_with_context_reads_once() {
        let io = std::io::Error::new(std::io::ErrorKind::AlreadyExists, "File exists");
        #[derive(Debug, thiserror::Error)]
        #[error("{path}: {source}")]
        struct Io {
            path: String,
            source: std::io::Error,
        }
        let e = anyhow::Error::new(Io {
            path: "/tmp/t".into(),
            source: io,
        })
        .context("--trace /tmp/t");
        assert_eq!(ErrorReport(&e).to_string(), "--trace /tmp/t: File exists");
    }
}

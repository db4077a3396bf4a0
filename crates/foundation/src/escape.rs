//! Text from outside (a task's output) made safe to put in a failure
//! message, a log line or a terminal: every control character becomes a
//! visible escape, so the text cannot move a cursor, recolour a terminal,
//! reorder what a reader sees, or forge a log line. Depends on nothing
//! else of the crate.

use std::fmt::Write as _;

/// Escapes `text` for one line of a message:
///
/// - `\n`, `\r`, `\t` and `\` become `\n`, `\r`, `\t` and `\\` (visible,
///   and unambiguous: an escape in the output always came from the input's
///   control character, never from its text);
/// - other C0 controls, DEL and C1 controls become `\x1b` (two hex digits)
///   or `\u{9b}`;
/// - Unicode's bidirectional overrides and isolates (U+200E, U+200F,
///   U+202A–U+202E, U+2066–U+2069) and the line and paragraph separators
///   (U+2028, U+2029) become `\u{…}`: they reorder or break what a reader
///   sees (CVE-2021-42574, "Trojan Source").
///
/// Everything else, including non-ASCII letters, is kept.
pub fn escape_control(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        push_escaped(&mut out, c);
    }
    out
}

/// [`escape_control`] for raw bytes: bytes that are not UTF-8 become
/// `\xNN` instead of being replaced, so nothing is silently lost.
pub fn escape_control_bytes(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len());
    for chunk in bytes.utf8_chunks() {
        for c in chunk.valid().chars() {
            push_escaped(&mut out, c);
        }
        for b in chunk.invalid() {
            let _ = write!(out, "\\x{b:02x}");
        }
    }
    out
}

fn push_escaped(out: &mut String, c: char) {
    let _ = write_escaped(out, c);
}

fn write_escaped(out: &mut impl std::fmt::Write, c: char) -> std::fmt::Result {
    match c {
        '\n' => out.write_str("\\n"),
        '\r' => out.write_str("\\r"),
        '\t' => out.write_str("\\t"),
        '\\' => out.write_str("\\\\"),
        c if (c as u32) < 0x20 || c == '\u{7f}' => write!(out, "\\x{:02x}", c as u32),
        c if ('\u{80}'..='\u{9f}').contains(&c) || is_bidi_or_separator(c) => {
            write!(out, "\\u{{{:x}}}", c as u32)
        }
        c => out.write_char(c),
    }
}

/// A value from outside (a worker id, a task id, a message, a user agent)
/// for a log line: displays as [`escape_control`] of its text, without
/// allocating, so it can never start a line of its own, recolour a terminal
/// or hide what follows. `Debug` shows the same text quoted. For tracing
/// fields: `worker_id = %Escaped(&id)`; JSON logs are safe either way (serde
/// escapes control characters) and show the same escaped text.
#[derive(Clone, Copy)]
pub struct Escaped<T>(pub T);

impl<T: AsRef<str>> std::fmt::Display for Escaped<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for c in self.0.as_ref().chars() {
            write_escaped(f, c)?;
        }
        Ok(())
    }
}

impl<T: AsRef<str>> std::fmt::Debug for Escaped<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "\"{self}\"")
    }
}

fn is_bidi_or_separator(c: char) -> bool {
    matches!(c,
        '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}'
        | '\u{2028}' | '\u{2029}')
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn control_characters_become_visible_escapes() {
        #[rustfmt::skip]
        let cases: &[(&str, &str)] = &[
            ("plain text, ünïcode ✓", "plain text, ünïcode ✓"),
            ("line one\nline two", "line one\\nline two"),
            ("a\tb\r\n", "a\\tb\\r\\n"),
            ("back\\slash", "back\\\\slash"),
            ("\u{1b}[31mred\u{1b}[0m", "\\x1b[31mred\\x1b[0m"),
            ("bell\u{7}", "bell\\x07"),
            ("nul\0", "nul\\x00"),
            ("del\u{7f}", "del\\x7f"),
            ("csi\u{9b}2J", "csi\\u{9b}2J"),
            ("admin\u{202e}gnp.exe", "admin\\u{202e}gnp.exe"),
            ("iso\u{2066}x\u{2069}", "iso\\u{2066}x\\u{2069}"),
            ("sep\u{2028}x", "sep\\u{2028}x"),
        ];
        for &(input, want) in cases {
            assert_eq!(escape_control(input), want, "{input:?}");
        }
    }

    #[test]
    fn escaped_displays_like_escape_control() {
        let hostile = "w1\n2026-01-01T00:00:00Z  INFO forged\r\u{1b}[31m";
        assert_eq!(Escaped(hostile).to_string(), escape_control(hostile));
        assert_eq!(format!("{:?}", Escaped("a\nb")), "\"a\\nb\"");
        assert_eq!(Escaped(String::from("plain")).to_string(), "plain");
    }

    #[test]
    fn invalid_utf8_is_shown_not_replaced() {
        assert_eq!(escape_control_bytes(b"ok\xff\xfe\n"), "ok\\xff\\xfe\\n");
        assert_eq!(escape_control_bytes("é\u{1b}".as_bytes()), "é\\x1b");
    }

    proptest! {
        /// The result is one line with no control character in it.
        #[test]
        fn output_has_no_control_characters(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let out = escape_control_bytes(&bytes);
            prop_assert!(!out.chars().any(|c| c.is_control() || is_bidi_or_separator(c)), "{out:?}");
        }

        /// Text without anything to escape is unchanged.
        #[test]
        fn printable_text_is_unchanged(text in "[a-zA-Z0-9 .,:;!?()é✓-]{0,80}") {
            prop_assert_eq!(escape_control(&text), text);
        }
    }
}

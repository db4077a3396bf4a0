//! Text from outside (a task's output) made safe to put in a message a
//! person reads: control bytes are shown as escapes, never sent raw.

/// Escapes control characters (C0, DEL, C1) as `\n`, `\t`, `\r`, `\e` or
/// `\u{…}`, and backslashes as `\\`; everything else is kept.
pub fn escape_control(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            '\u{1b}' => out.push_str("\\e"),
            c if c.is_control() => out.push_str(&format!("\\u{{{:x}}}", c as u32)),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn control_bytes_become_visible_escapes() {
        for (input, want) in [
            ("plain text", "plain text"),
            ("\u{1b}[31mred\u{1b}[0m", "\\e[31mred\\e[0m"),
            ("a\rb\tc\nd", "a\\rb\\tc\\nd"),
            ("bell\u{7}", "bell\\u{7}"),
            ("c1\u{9b}", "c1\\u{9b}"),
            ("back\\slash", "back\\\\slash"),
            ("ünïcödé ✓", "ünïcödé ✓"),
        ] {
            assert_eq!(super::escape_control(input), want);
        }
    }
}

//! Turning spec names and prose into Rust identifiers and doc comments.

/// `IPv4Address` → `ipv4_address`, `one-shot` → `one_shot`, `Type` → `r#type`.
pub fn snake_case(name: &str) -> String {
    let name = fix_acronyms(name);
    let mut out = String::new();
    let chars: Vec<char> = name.chars().collect();
    for (i, &c) in chars.iter().enumerate() {
        if !c.is_ascii_alphanumeric() {
            if !out.is_empty() && !out.ends_with('_') {
                out.push('_');
            }
            continue;
        }
        if c.is_ascii_uppercase() && i > 0 {
            let prev = chars[i - 1];
            let next_lower = chars.get(i + 1).is_some_and(|n| n.is_ascii_lowercase());
            let boundary = prev.is_ascii_lowercase()
                || prev.is_ascii_digit()
                || (prev.is_ascii_uppercase() && next_lower);
            if boundary && !out.is_empty() && !out.ends_with('_') {
                out.push('_');
            }
        }
        out.push(c.to_ascii_lowercase());
    }
    let out = out.trim_end_matches('_').to_owned();
    escape_keyword(if out.starts_with(|c: char| c.is_ascii_digit()) {
        format!("_{out}")
    } else {
        out
    })
}

/// `not-running` → `NotRunning`, `os.version` → `OsVersion`, `CPUSet` → `CPUSet`
/// (an existing capital stays: spec names are already Pascal case).
pub fn pascal_case(name: &str) -> String {
    let mut out = String::new();
    for part in name.split(|c: char| !c.is_ascii_alphanumeric()) {
        let mut chars = part.chars();
        if let Some(first) = chars.next() {
            out.push(first.to_ascii_uppercase());
            out.extend(chars);
        }
    }
    if out.starts_with(|c: char| c.is_ascii_digit()) {
        out.insert(0, 'V');
    }
    out
}

/// Enum variant for a wire value: `on-failure` → `OnFailure`, `""` → `Empty`,
/// `SIGTERM` → `Sigterm`.
pub fn variant_name(value: &str) -> String {
    if value.is_empty() {
        return "Empty".to_owned();
    }
    let lowered = if value.chars().all(|c| !c.is_ascii_lowercase()) {
        value.to_ascii_lowercase()
    } else {
        value.to_owned()
    };
    pascal_case(&lowered)
}

/// Plural acronyms and `IPv4` would otherwise split badly (`nano_cp_us`).
fn fix_acronyms(name: &str) -> String {
    let mut s = name.to_owned();
    for (from, to) in [
        ("IPv4", "Ipv4"),
        ("IPv6", "Ipv6"),
        ("CPUs", "Cpus"),
        ("IDs", "Ids"),
        ("IPs", "Ips"),
        ("UIDGID", "UidGid"),
    ] {
        s = s.replace(from, to);
    }
    s
}

fn escape_keyword(s: String) -> String {
    const KEYWORDS: &[&str] = &[
        "as", "async", "await", "box", "break", "const", "continue", "crate", "dyn", "else",
        "enum", "extern", "false", "fn", "for", "if", "impl", "in", "let", "loop", "macro",
        "match", "mod", "move", "mut", "priv", "pub", "ref", "return", "static", "struct", "trait",
        "true", "try", "type", "unsafe", "use", "virtual", "where", "while", "yield",
    ];
    if KEYWORDS.contains(&s.as_str()) {
        format!("r#{s}")
    } else {
        s
    }
}

/// The first paragraph of a spec description as `///` lines, made safe for
/// rustdoc: one line per paragraph (no accidental indented code blocks),
/// brackets and angle brackets escaped outside code spans, bare URLs wrapped.
pub fn doc_comment(description: Option<&str>) -> String {
    let Some(text) = description else {
        return String::new();
    };
    let paragraph = text
        .trim()
        .split("\n\n")
        .next()
        .unwrap_or("")
        .lines()
        .map(str::trim)
        .collect::<Vec<_>>()
        .join(" ");
    let paragraph = paragraph.trim();
    if paragraph.is_empty() {
        return String::new();
    }
    // A paragraph that opens a list or a heading reads badly alone.
    let paragraph = paragraph.trim_start_matches(['-', '*', '#', '>', ' ']);
    format!("/// {}\n", sanitize(paragraph))
}

fn sanitize(text: &str) -> String {
    let balanced = text.matches('`').count().is_multiple_of(2);
    let mut out = String::new();
    let mut in_code = false;
    let mut rest = text;
    while let Some(c) = rest.chars().next() {
        if c == '`' && balanced {
            in_code = !in_code;
            out.push(c);
            rest = &rest[1..];
            continue;
        }
        if !in_code && (rest.starts_with("http://") || rest.starts_with("https://")) {
            let end = rest
                .find(|c: char| c.is_whitespace() || c == ')' || c == '`')
                .unwrap_or(rest.len());
            let url = rest[..end].trim_end_matches(['.', ',', ';', ':']);
            out.push('<');
            out.push_str(url);
            out.push('>');
            rest = &rest[url.len()..];
            continue;
        }
        match c {
            '`' if !balanced => out.push('\''),
            '[' | ']' | '<' if !in_code => {
                out.push('\\');
                out.push(c);
            }
            _ => out.push(c),
        }
        rest = &rest[c.len_utf8()..];
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert_eq!(snake_case("IPv4Address"), "ipv4_address");
        assert_eq!(snake_case("NanoCPUs"), "nano_cpus");
        assert_eq!(snake_case("one-shot"), "one_shot");
        assert_eq!(snake_case("Type"), "r#type");
        assert_eq!(snake_case("HostIP"), "host_ip");
        assert_eq!(snake_case("copyUIDGID"), "copy_uid_gid");
        assert_eq!(snake_case("os.version"), "os_version");
        assert_eq!(pascal_case("not-running"), "NotRunning");
        assert_eq!(variant_name(""), "Empty");
        assert_eq!(variant_name("SIGTERM"), "Sigterm");
        assert_eq!(variant_name("1"), "V1");
    }

    #[test]
    fn docs_are_sanitized() {
        assert_eq!(
            doc_comment(Some("See [docs](https://x.y/z).\n    indented\n\nsecond")),
            "/// See \\[docs\\](<https://x.y/z>). indented\n"
        );
        assert_eq!(doc_comment(Some("a `<b>` c")), "/// a `<b>` c\n");
    }
}

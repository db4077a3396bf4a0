//! An error's chain of causes said on one line, for log lines and messages
//! that must say why without a multi-line report.

/// An error and its causes on one line, each said once: `a: b: c`, a cause
/// left out when an earlier part already contains its text (hyper's own
/// message is only "client error (Connect)"; the cause says "Connection
/// refused").
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut next = Some(e);
    while let Some(err) = next {
        let text = err.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        next = err.source();
    }
    parts.join(": ")
}

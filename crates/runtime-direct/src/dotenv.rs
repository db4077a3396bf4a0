//! The dotenv file a setup command writes to `$OZ_ENVIRONMENT_FILE`, read
//! as the Go worker reads it (github.com/joho/godotenv v1.5, `parser.go`),
//! except that a statement godotenv would reject makes it drop the whole
//! file, and here only that line is dropped, with a warning naming it.
//!
//! godotenv's rules, kept:
//! - `\r\n` is `\n`; blank lines and lines starting with `#` are skipped;
//!   an optional `export ` prefix;
//! - a name is letters, digits, `_` and `.`, ended by `=` or `:` (its
//!   YAML-style form), with surrounding blanks trimmed;
//! - an unquoted value runs to the end of the line, with blanks trimmed and
//!   a ` #…` comment cut off (at the last blank-then-`#`): `E2=two words` is `two words`;
//! - `'…'` is literal; `"…"` may span lines and turns `\n`, `\r` into line
//!   breaks and `\X` into `X`; a quote preceded by `\` does not end it;
//! - `$NAME` and `${NAME}` in unquoted and double-quoted values expand to
//!   an earlier entry of the file, else the worker's variable, else "";
//!   `\$` is a literal `$`.

/// A line that was refused, for a warning.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    /// 1-based line number of the statement.
    pub line: usize,
    pub why: String,
}

/// Entries in file order (a repeated name keeps its last value, as a map
/// would) and the refused statements.
pub fn parse(
    text: &str,
    lookup: &dyn Fn(&str) -> Option<String>,
) -> (Vec<(String, String)>, Vec<Refused>) {
    let src: Vec<char> = text.replace("\r\n", "\n").chars().collect();
    let mut out: Vec<(String, String)> = Vec::new();
    let mut refused = Vec::new();
    let mut i = 0;
    let line_of = |pos: usize| {
        src[..pos.min(src.len())]
            .iter()
            .filter(|c| **c == '\n')
            .count()
            + 1
    };
    loop {
        // The next statement: skip blanks (line breaks included) and comments.
        while i < src.len() && src[i].is_whitespace() {
            i += 1;
        }
        if i >= src.len() {
            break;
        }
        if src[i] == '#' {
            while i < src.len() && src[i] != '\n' {
                i += 1;
            }
            continue;
        }
        let start = i;
        match statement(&src, &mut i, &out, lookup) {
            Ok((k, v)) => match out.iter_mut().find(|(name, _)| *name == k) {
                Some(slot) => slot.1 = v,
                None => out.push((k, v)),
            },
            Err(why) => {
                refused.push(Refused {
                    line: line_of(start),
                    why: why.to_string(),
                });
                // Resume at the next line.
                i = start;
                while i < src.len() && src[i] != '\n' {
                    i += 1;
                }
            }
        }
    }
    (out, refused)
}

/// Why godotenv would reject a statement (the text of [`Refused::why`]).
#[derive(Debug, thiserror::Error)]
enum Refusal {
    #[error("a name without '=' or ':' and a value")]
    NoValue,
    #[error("unexpected character {found:?} in the variable name of {line:?}")]
    BadNameCharacter { found: char, line: String },
    #[error("an empty variable name")]
    EmptyName,
    #[error("the variable name {0:?} contains a blank")]
    BlankInName(String),
    #[error("an unterminated {quote} quoted value for {key}")]
    Unterminated { quote: char, key: String },
}

fn is_blank(c: char) -> bool {
    matches!(
        c,
        '\t' | '\u{b}' | '\u{c}' | '\r' | ' ' | '\u{85}' | '\u{a0}'
    )
}

fn statement(
    src: &[char],
    i: &mut usize,
    vars: &[(String, String)],
    lookup: &dyn Fn(&str) -> Option<String>,
) -> Result<(String, String), Refusal> {
    // `export NAME=…`
    let rest: String = src[*i..].iter().take(7).collect();
    if rest.starts_with("export") && rest.chars().nth(6).is_some_and(is_blank) {
        *i += 6;
        while *i < src.len() && is_blank(src[*i]) {
            *i += 1;
        }
    }
    let key_start = *i;
    let key_end;
    loop {
        let Some(&c) = src.get(*i) else {
            return Err(Refusal::NoValue);
        };
        if c == '=' || c == ':' {
            key_end = *i;
            *i += 1;
            break;
        }
        if c == '\n' {
            return Err(Refusal::NoValue);
        }
        if !(is_blank(c) || c == '_' || c == '.' || c.is_alphanumeric()) {
            let line: String = src[key_start..]
                .iter()
                .take_while(|c| **c != '\n')
                .collect();
            return Err(Refusal::BadNameCharacter {
                found: c,
                line: oz_foundation::escape::escape_control(&line),
            });
        }
        *i += 1;
    }
    let key: String = src[key_start..key_end]
        .iter()
        .collect::<String>()
        .trim_end()
        .to_string();
    if key.is_empty() {
        return Err(Refusal::EmptyName);
    }
    if key.chars().any(is_blank) {
        return Err(Refusal::BlankInName(key));
    }
    while *i < src.len() && is_blank(src[*i]) {
        *i += 1;
    }
    let expand_with = |v: &str| {
        expand(v, &|name| {
            vars.iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.clone())
                .or_else(|| lookup(name))
        })
    };
    match src.get(*i) {
        Some(&q) if q == '"' || q == '\'' => {
            let mut j = *i + 1;
            while j < src.len() {
                if src[j] == q && src[j - 1] != '\\' {
                    let raw: String = src[*i + 1..j].iter().collect();
                    *i = j + 1;
                    let value = if q == '"' {
                        expand_with(&unescape(&raw))
                    } else {
                        raw
                    };
                    return Ok((key, value));
                }
                j += 1;
            }
            Err(Refusal::Unterminated { quote: q, key })
        }
        _ => {
            let end = src[*i..]
                .iter()
                .position(|c| *c == '\n' || *c == '\r')
                .map_or(src.len(), |p| *i + p);
            let line = &src[*i..end];
            let mut value_end = line.len();
            // A blank then `#` starts a comment; godotenv scans from the
            // end, so the last such `#` is where the value ends.
            for k in (1..line.len()).rev() {
                if line[k] == '#' && is_blank(line[k - 1]) {
                    value_end = k;
                    break;
                }
            }
            let value: String = line[..value_end].iter().collect();
            let value = value.trim_matches(is_blank).to_string();
            *i = end;
            Ok((key, expand_with(&value)))
        }
    }
}

/// godotenv's `expandEscapes`: `\n` and `\r` become line breaks, any other
/// `\X` but `\$` becomes `X`.
fn unescape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('n') => out.push('\n'),
            Some('r') => out.push('\r'),
            Some('$') => out.push_str("\\$"),
            Some(other) => out.push(other),
            None => out.push('\\'),
        }
    }
    out
}

/// `$NAME` / `${NAME}` (NAME of `A-Z0-9_`, as godotenv's pattern) from
/// `lookup`, "" when unknown; `\$` is a literal `$`.
fn expand(s: &str, lookup: &dyn Fn(&str) -> Option<String>) -> String {
    let c: Vec<char> = s.chars().collect();
    let mut out = String::with_capacity(s.len());
    let mut i = 0;
    let is_name = |ch: char| ch.is_ascii_uppercase() || ch.is_ascii_digit() || ch == '_';
    while i < c.len() {
        if c[i] == '\\' && c.get(i + 1) == Some(&'$') {
            out.push('$');
            i += 2;
            continue;
        }
        if c[i] != '$' {
            out.push(c[i]);
            i += 1;
            continue;
        }
        let braced = c.get(i + 1) == Some(&'{');
        let name_start = if braced { i + 2 } else { i + 1 };
        let mut j = name_start;
        while j < c.len() && is_name(c[j]) {
            j += 1;
        }
        if j == name_start {
            out.push('$');
            i += 1;
            continue;
        }
        let name: String = c[name_start..j].iter().collect();
        out.push_str(&lookup(&name).unwrap_or_default());
        i = if braced && c.get(j) == Some(&'}') {
            j + 1
        } else {
            j
        };
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(text: &str) -> (Vec<(String, String)>, Vec<Refused>) {
        parse(text, &|name| {
            (name == "WORKER_VAR").then(|| "w".to_string())
        })
    }

    fn pairs(text: &str) -> Vec<(String, String)> {
        let (p, refused) = env(text);
        assert!(refused.is_empty(), "{refused:?}");
        p
    }

    fn kv(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn godotenv_rules() {
        assert_eq!(
            pairs("E1=one\nE2=two words\n  E3 = spaced  \nexport E4=exported\r\nE5: yaml\n"),
            kv(&[
                ("E1", "one"),
                ("E2", "two words"),
                ("E3", "spaced"),
                ("E4", "exported"),
                ("E5", "yaml")
            ])
        );
        assert_eq!(
            pairs("# comment\n\nA=x # trailing\nB=x#not-a-comment\nC=\nD=\"\"\n"),
            kv(&[("A", "x"), ("B", "x#not-a-comment"), ("C", ""), ("D", "")])
        );
        assert_eq!(
            pairs("S='single $WORKER_VAR \\n'\nD=\"a\\nb \\\"q\\\" $WORKER_VAR ${S}\"\nM=\"two\nlines\"\n"),
            kv(&[
                ("S", "single $WORKER_VAR \\n"),
                ("D", "a\nb \"q\" w single $WORKER_VAR \\n"),
                ("M", "two\nlines")
            ])
        );
        assert_eq!(
            pairs("A=1\nB=$A-${A}-\\$A-$NOPE.\nA=2\n"),
            kv(&[("A", "2"), ("B", "1-1-$A-.")])
        );
        assert_eq!(pairs("a.b=dotted\n"), kv(&[("a.b", "dotted")]));
    }

    #[test]
    fn a_bad_line_is_named_and_the_rest_kept() {
        let (p, refused) = env("GOOD=1\nBAD-NAME=x\nU=\"open\nNOVALUE\nAFTER=2\n");
        assert_eq!(p, kv(&[("GOOD", "1"), ("AFTER", "2")]));
        // The unterminated quote swallows nothing: its line is refused and
        // parsing resumes on the next one.
        assert_eq!(
            refused.iter().map(|r| r.line).collect::<Vec<_>>(),
            [2, 3, 4]
        );
        let (p, refused) = env("A B=1\nC=2\n");
        assert_eq!(p, kv(&[("C", "2")]));
        assert_eq!(refused[0].line, 1);
        assert!(refused[0].why.contains("blank"), "{refused:?}");
    }
}

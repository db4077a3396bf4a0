//! Path globs as GitLab Runner matches `allowed_images` (Go's
//! `doublestar.Match`): `/` separates components; `*` is any run of
//! characters within a component, `?` one character, `[abc]`, `[a-z]` and
//! `[!abc]`/`[^abc]` a class, `{a,b}` alternatives, `\` escapes the next
//! character, and a component that is exactly `**` matches zero or more
//! whole components. (`**` inside a component acts as `*`.)

/// The most alternatives one pattern's `{…}` groups may expand to.
const MAX_ALTERNATIVES: usize = 256;

/// A pattern with a syntax error; Display names it and the problem.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidPattern {
    /// As written.
    pub pattern: String,
    /// What is wrong: `has a [ without its ]`, …
    pub problem: &'static str,
}

impl std::fmt::Display for InvalidPattern {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?} {}", self.pattern, self.problem)
    }
}

impl std::error::Error for InvalidPattern {}

/// A checked pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Glob {
    /// As written, for messages.
    pub pattern: String,
    /// Brace groups expanded, each split into components.
    alternatives: Vec<Vec<String>>,
}

impl Glob {
    /// Checks the syntax (closed `[` and `{`, no trailing `\`).
    pub fn new(pattern: &str) -> Result<Glob, InvalidPattern> {
        let invalid = |problem| InvalidPattern {
            pattern: pattern.to_string(),
            problem,
        };
        let expanded = expand_braces(pattern).map_err(invalid)?;
        if expanded.len() > MAX_ALTERNATIVES {
            return Err(invalid(
                "expands to more than 256 alternatives ({…} groups)",
            ));
        }
        let mut alternatives = Vec::with_capacity(expanded.len());
        for alt in expanded {
            let components: Vec<String> = alt.split('/').map(str::to_string).collect();
            for c in &components {
                check_component(c).map_err(invalid)?;
            }
            alternatives.push(components);
        }
        Ok(Glob {
            pattern: pattern.to_string(),
            alternatives,
        })
    }

    /// Whether `name` (`/`-separated) matches any brace alternative.
    pub fn matches(&self, name: &str) -> bool {
        let name: Vec<&str> = name.split('/').collect();
        self.alternatives.iter().any(|alt| {
            let alt: Vec<&str> = alt.iter().map(String::as_str).collect();
            match_components(&alt, &name)
        })
    }

    /// Whether some alternative could match a name of `min_components` or
    /// more components (a pattern of fewer components and no `**` cannot).
    pub fn can_match_at_least(&self, min_components: usize) -> bool {
        self.alternatives
            .iter()
            .any(|alt| alt.len() >= min_components || alt.iter().any(|c| c == "**"))
    }
}

fn match_components(pattern: &[&str], name: &[&str]) -> bool {
    match pattern.split_first() {
        None => name.is_empty(),
        Some((&"**", rest)) => (0..=name.len()).any(|skip| match_components(rest, &name[skip..])),
        Some((p, rest)) => match name.split_first() {
            Some((n, name_rest)) => {
                match_component(p.as_bytes(), n.as_bytes()) && match_components(rest, name_rest)
            }
            None => false,
        },
    }
}

/// One component: `*`, `?`, classes and escapes; backtracking on `*`.
fn match_component(p: &[u8], n: &[u8]) -> bool {
    let (mut pi, mut ni) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ni < n.len() {
        if pi < p.len() {
            match p[pi] {
                b'*' => {
                    while pi < p.len() && p[pi] == b'*' {
                        pi += 1;
                    }
                    star = Some((pi, ni));
                    continue;
                }
                b'?' => {
                    pi += 1;
                    ni += 1;
                    continue;
                }
                b'[' => {
                    if let Some((hit, next)) = match_class(p, pi, n[ni]) {
                        if hit {
                            pi = next;
                            ni += 1;
                            continue;
                        }
                    }
                }
                b'\\' if pi + 1 < p.len() && p[pi + 1] == n[ni] => {
                    pi += 2;
                    ni += 1;
                    continue;
                }
                c if c != b'\\' && c == n[ni] => {
                    pi += 1;
                    ni += 1;
                    continue;
                }
                _ => {}
            }
        }
        match star {
            Some((sp, sn)) => {
                pi = sp;
                ni = sn + 1;
                star = Some((sp, sn + 1));
            }
            None => return false,
        }
    }
    p[pi..].iter().all(|c| *c == b'*')
}

/// `[…]` at `p[start]` against `c`: (matched, index after `]`).
fn match_class(p: &[u8], start: usize, c: u8) -> Option<(bool, usize)> {
    let mut i = start + 1;
    let negate = matches!(p.get(i), Some(b'!') | Some(b'^'));
    if negate {
        i += 1;
    }
    let mut hit = false;
    let mut first = true;
    while i < p.len() && (p[i] != b']' || first) {
        first = false;
        let mut lo = p[i];
        if lo == b'\\' {
            i += 1;
            lo = *p.get(i)?;
        }
        let mut hi = lo;
        if p.get(i + 1) == Some(&b'-') && p.get(i + 2).is_some_and(|b| *b != b']') {
            hi = p[i + 2];
            if hi == b'\\' {
                hi = *p.get(i + 3)?;
                i += 1;
            }
            i += 2;
        }
        if lo <= c && c <= hi {
            hit = true;
        }
        i += 1;
    }
    if i >= p.len() {
        return None;
    }
    Some((hit != negate, i + 1))
}

fn check_component(c: &str) -> Result<(), &'static str> {
    let b = c.as_bytes();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'\\' if i + 1 >= b.len() => return Err("ends with a lone \\"),
            b'\\' => i += 2,
            b'[' => match match_class(b, i, 0) {
                Some((_, next)) => i = next,
                None => return Err("has a [ without its ]"),
            },
            _ => i += 1,
        }
    }
    Ok(())
}

/// `a{b,c}d` → `abd`, `acd`; nested groups too.
fn expand_braces(pattern: &str) -> Result<Vec<String>, &'static str> {
    let b = pattern.as_bytes();
    let mut depth = 0usize;
    let mut open = None;
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'\\' => i += 1,
            b'{' => {
                if depth == 0 {
                    open = Some(i);
                }
                depth += 1;
            }
            b'}' if depth > 0 => {
                depth -= 1;
                if depth == 0 {
                    let start = open.expect("set with depth");
                    let (prefix, body, suffix) =
                        (&pattern[..start], &pattern[start + 1..i], &pattern[i + 1..]);
                    let mut out = Vec::new();
                    for alt in split_top_level(body) {
                        for tail in expand_braces(&format!("{alt}{suffix}"))? {
                            out.push(format!("{prefix}{tail}"));
                            if out.len() > MAX_ALTERNATIVES {
                                return Ok(out);
                            }
                        }
                    }
                    return Ok(out);
                }
            }
            _ => {}
        }
        i += 1;
    }
    if depth > 0 {
        return Err("has a { without its }");
    }
    Ok(vec![pattern.to_string()])
}

fn split_top_level(body: &str) -> Vec<&str> {
    let b = body.as_bytes();
    let (mut parts, mut depth, mut from, mut i) = (Vec::new(), 0, 0, 0);
    while i < b.len() {
        match b[i] {
            b'\\' => i += 1,
            b'{' => depth += 1,
            b'}' => depth -= 1,
            b',' if depth == 0 => {
                parts.push(&body[from..i]);
                from = i + 1;
            }
            _ => {}
        }
        i += 1;
    }
    parts.push(&body[from..]);
    parts
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(pattern: &str, name: &str) -> bool {
        Glob::new(pattern).unwrap().matches(name)
    }

    /// The cases of GitLab's documentation and doublestar's rules.
    #[test]
    fn doublestar_semantics() {
        let hub = "docker.io/library/debian:12";
        assert!(m("docker.io/library/*", hub));
        assert!(m("docker.io/library/debian:*", hub));
        assert!(m("**", hub));
        assert!(m("docker.io/**", hub));
        assert!(m("**/debian:*", hub));
        assert!(!m("*/*:*", hub), "* never crosses /");
        assert!(m("*/*/*:*", hub));
        assert!(!m("docker.io/*", hub));
        let nested = "registry.example:5000/team/group/app:1";
        assert!(m("registry.example:5000/team/**", nested));
        assert!(m("registry.example:5000/**/app:*", nested));
        assert!(m("registry.example:5000/team/**/*", nested));
        assert!(!m("registry.example:5000/team/*", nested));
        assert!(!m("registry.example:5000/other/**", nested));
        assert!(m("registry.example:500?/team/**", nested));
        assert!(m("registry.example:[0-9]000/team/**", nested));
        assert!(!m("registry.example:[!5]000/team/**", nested));
        assert!(m("{docker.io,registry.example:5000}/**", nested));
        assert!(m("{docker.io,registry.example:5000}/**", hub));
        assert!(m("docker.io/library/debian:1\\2", hub));
        assert!(
            m("docker.io/library/debian:**", hub),
            "** in a component is *"
        );
        assert!(m(
            "docker.io/library/busybox@sha256:*",
            "docker.io/library/busybox@sha256:abc"
        ));
    }

    /// The plain recursive definition of `*` and `?` within a component.
    fn reference(p: &[u8], n: &[u8]) -> bool {
        match p.split_first() {
            None => n.is_empty(),
            Some((b'*', rest)) => reference(rest, n) || (!n.is_empty() && reference(p, &n[1..])),
            Some((b'?', rest)) => !n.is_empty() && reference(rest, &n[1..]),
            Some((c, rest)) => n.first() == Some(c) && reference(rest, &n[1..]),
        }
    }

    proptest::proptest! {
        /// The backtracking matcher agrees with the recursive definition.
        #[test]
        fn component_matching_agrees_with_the_definition(
            p in "[ab*?]{0,8}",
            n in "[ab]{0,10}",
        ) {
            proptest::prop_assert_eq!(
                match_component(p.as_bytes(), n.as_bytes()),
                reference(p.as_bytes(), n.as_bytes()),
                "{} vs {}", p, n
            );
        }

        /// `**` as a component spans any number of components.
        #[test]
        fn double_star_spans_components(parts in proptest::collection::vec("[ab]{1,3}", 1..6)) {
            let name = parts.join("/");
            let first = format!("{}/**", parts[0]);
            let last = format!("**/{}", parts[parts.len() - 1]);
            proptest::prop_assert!(m("**", &name));
            proptest::prop_assert!(m(&first, &name));
            proptest::prop_assert!(m(&last, &name));
        }
    }

    #[test]
    fn bad_patterns_are_refused() {
        for p in ["docker.io/[abc", "docker.io/{a,b", "docker.io/x\\"] {
            assert!(Glob::new(p).is_err(), "{p}");
        }
        assert!(!Glob::new("debian:*").unwrap().can_match_at_least(2));
        assert!(Glob::new("**").unwrap().can_match_at_least(2));
        assert!(Glob::new("{debian,docker.io/*}")
            .unwrap()
            .can_match_at_least(2));
    }
}

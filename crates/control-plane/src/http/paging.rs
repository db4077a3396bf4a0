//! The paging of `GET /api/v1/runs`: `limit` (how many runs) and `cursor`
//! (where the page starts), read from the query, and the opaque cursor a
//! page hands out. Newest first: a cursor names the creation position
//! (`runs.seq`) of the last run of the page before, so runs created while a
//! client pages appear before its first page and never shift a later one,
//! and every run is on exactly one page.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use oz_runs_api::model::{RUNS_PAGE_DEFAULT_LIMIT, RUNS_PAGE_MAX_LIMIT};

/// What a page asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct PageRequest {
    /// 1 to [`RUNS_PAGE_MAX_LIMIT`].
    pub limit: usize,
    /// Only runs created before this position (`None`: from the newest).
    pub before: Option<i64>,
}

impl Default for PageRequest {
    fn default() -> Self {
        PageRequest {
            limit: RUNS_PAGE_DEFAULT_LIMIT,
            before: None,
        }
    }
}

/// A `limit` or `cursor` the API refuses: the message names the parameter
/// and what it accepts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum PageError {
    Limit(String),
    Cursor(String),
}

impl std::fmt::Display for PageError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PageError::Limit(got) => write!(
                f,
                "limit must be a whole number from 1 to {RUNS_PAGE_MAX_LIMIT} (got {got:?}); without it a page has {RUNS_PAGE_DEFAULT_LIMIT} runs"
            ),
            PageError::Cursor(got) => write!(
                f,
                "cursor {got:?} is not one this control plane handed out; pass a page's next_cursor unchanged, or leave cursor out for the first page"
            ),
        }
    }
}

impl std::error::Error for PageError {}

const CURSOR_PREFIX: &str = "runs-before:";

/// The cursor of the page that starts after position `seq`.
pub(crate) fn cursor(seq: i64) -> String {
    URL_SAFE_NO_PAD.encode(format!("{CURSOR_PREFIX}{seq}"))
}

/// The position a cursor names.
pub(crate) fn parse_cursor(text: &str) -> Result<i64, PageError> {
    URL_SAFE_NO_PAD
        .decode(text)
        .ok()
        .and_then(|bytes| String::from_utf8(bytes).ok())
        .and_then(|s| s.strip_prefix(CURSOR_PREFIX)?.parse::<i64>().ok())
        .filter(|seq| *seq > 0)
        .ok_or_else(|| PageError::Cursor(text.to_string()))
}

/// `limit`: 1 to [`RUNS_PAGE_MAX_LIMIT`].
pub(crate) fn parse_limit(text: &str) -> Result<usize, PageError> {
    text.parse::<usize>()
        .ok()
        .filter(|n| (1..=RUNS_PAGE_MAX_LIMIT).contains(n))
        .ok_or_else(|| PageError::Limit(text.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_strangers_are_refused() {
        for seq in [1, 42, i64::MAX] {
            assert_eq!(parse_cursor(&cursor(seq)), Ok(seq));
        }
        for bad in [
            "",
            "42",
            "not base64!",
            &URL_SAFE_NO_PAD.encode("runs-before:-1"),
            &URL_SAFE_NO_PAD.encode("runs-before:x"),
            &URL_SAFE_NO_PAD.encode("other:5"),
        ] {
            let e = parse_cursor(bad).unwrap_err();
            assert!(e.to_string().contains("next_cursor"), "{e}");
        }
    }

    #[test]
    fn limits_outside_the_range_are_refused_with_it() {
        assert_eq!(parse_limit("1"), Ok(1));
        assert_eq!(parse_limit("1000"), Ok(1000));
        for bad in ["0", "1001", "-5", "ten", "", "1.5"] {
            let e = parse_limit(bad).unwrap_err().to_string();
            assert!(e.contains("from 1 to 1000") && e.contains("limit"), "{e}");
        }
    }
}

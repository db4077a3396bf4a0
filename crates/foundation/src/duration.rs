//! Durations as operators write them, parsed exactly as Go's
//! `time.ParseDuration` parses them (the Go worker's flags and config keys
//! go through it): a possibly signed sequence of decimal numbers, each with
//! an optional fraction and a unit, such as `300ms`, `1.5h` or `2h45m`.
//! Units: `ns`, `us` (also `µs` U+00B5 and `μs` U+03BC), `ms`, `s`, `m`,
//! `h`. A number without a unit is refused, except `0` alone (also `+0`,
//! `-0`). Values beyond Go's `time.Duration` (an `i64` of nanoseconds) are
//! refused as overflow, fractions are truncated to the nanosecond as Go does.
//!
//! Shared by the worker's and the control plane's flags; depends on nothing
//! else of the crate.

use std::fmt;
use std::time::Duration;

/// An example shown in every error, so the fix is one glance away.
const EXAMPLE: &str = "e.g. 30s, 1.5h or 1h30m (units: ns, us, ms, s, m, h)";

/// Why a duration string was refused. Display names the input, says what is
/// wrong and shows an example.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DurationError {
    /// The input, exactly as given.
    pub input: String,
    pub problem: DurationProblem,
}

/// What is wrong with a duration string, one variant per rule of Go's
/// grammar (`[-+]?([0-9]*(\.[0-9]*)?[a-z]+)+`) plus the one rule we add.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DurationProblem {
    /// Not the grammar (empty, a stray character, a number without digits).
    Invalid,
    /// A number with no unit after it (`30`; only `0` may go without one).
    MissingUnit,
    /// A unit Go does not know (`5d`, `1 s`).
    UnknownUnit(String),
    /// Beyond Go's `time.Duration` range (about ±292 years).
    Overflow,
    /// Negative, where only a length of time makes sense (our rule: Go
    /// accepts it, and a negative timeout expires at once).
    Negative,
}

impl fmt::Display for DurationError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let input = &self.input;
        match &self.problem {
            DurationProblem::Invalid => write!(f, "invalid duration {input:?}; write a number with a unit, {EXAMPLE}"),
            DurationProblem::MissingUnit => write!(
                f,
                "invalid duration {input:?}: a number needs a unit (only 0 may go without one); {EXAMPLE}"
            ),
            DurationProblem::UnknownUnit(unit) => {
                write!(f, "invalid duration {input:?}: unknown unit {unit:?}; {EXAMPLE}")
            }
            DurationProblem::Overflow => write!(
                f,
                "invalid duration {input:?}: longer than the largest duration (2562047h47m16.854775807s); {EXAMPLE}"
            ),
            DurationProblem::Negative => {
                write!(f, "invalid duration {input:?}: must not be negative; {EXAMPLE}")
            }
        }
    }
}

impl std::error::Error for DurationError {}

const NANOSECOND: u64 = 1;
const MICROSECOND: u64 = 1_000 * NANOSECOND;
const MILLISECOND: u64 = 1_000 * MICROSECOND;
const SECOND: u64 = 1_000 * MILLISECOND;
const MINUTE: u64 = 60 * SECOND;
const HOUR: u64 = 60 * MINUTE;
/// `1 << 63`: the magnitude of Go's most negative duration; every bound
/// below is Go's own.
const LIMIT: u64 = 1 << 63;

fn unit_nanos(unit: &str) -> Option<u64> {
    Some(match unit {
        "ns" => NANOSECOND,
        "us" | "\u{b5}s" | "\u{3bc}s" => MICROSECOND,
        "ms" => MILLISECOND,
        "s" => SECOND,
        "m" => MINUTE,
        "h" => HOUR,
        _ => return None,
    })
}

/// Parses `input` as Go's `time.ParseDuration` does and returns Go's
/// `time.Duration`: signed nanoseconds. Every input Go accepts is accepted
/// with the same value; every input Go refuses is refused.
pub fn parse_go_duration(input: &str) -> Result<i64, DurationError> {
    let fail = |problem| DurationError {
        input: input.to_owned(),
        problem,
    };
    let mut s = input.as_bytes();
    let mut neg = false;
    if let Some(&sign @ (b'-' | b'+')) = s.first() {
        neg = sign == b'-';
        s = &s[1..];
    }
    if s == b"0" {
        return Ok(0);
    }
    if s.is_empty() {
        return Err(fail(DurationProblem::Invalid));
    }
    let mut total: u64 = 0;
    while !s.is_empty() {
        if !(s[0] == b'.' || s[0].is_ascii_digit()) {
            return Err(fail(DurationProblem::Invalid));
        }
        let digits = s.iter().take_while(|b| b.is_ascii_digit()).count();
        let whole = leading_int(&s[..digits]).ok_or_else(|| fail(DurationProblem::Overflow))?;
        s = &s[digits..];
        let (mut fraction, mut scale, mut fraction_digits) = (0u64, 1f64, 0usize);
        if s.first() == Some(&b'.') {
            s = &s[1..];
            fraction_digits = s.iter().take_while(|b| b.is_ascii_digit()).count();
            (fraction, scale) = leading_fraction(&s[..fraction_digits]);
            s = &s[fraction_digits..];
        }
        if digits == 0 && fraction_digits == 0 {
            // No digits around the point (".s", "-.s").
            return Err(fail(DurationProblem::Invalid));
        }
        let unit_len = s
            .iter()
            .take_while(|&&b| !(b == b'.' || b.is_ascii_digit()))
            .count();
        if unit_len == 0 {
            return Err(fail(DurationProblem::MissingUnit));
        }
        // The unit ends before an ASCII byte, so it is whole UTF-8.
        let unit = String::from_utf8_lossy(&s[..unit_len]).into_owned();
        s = &s[unit_len..];
        let Some(unit_ns) = unit_nanos(&unit) else {
            return Err(fail(DurationProblem::UnknownUnit(unit)));
        };
        if whole > LIMIT / unit_ns {
            return Err(fail(DurationProblem::Overflow));
        }
        let mut value = whole * unit_ns;
        if fraction > 0 {
            // Go computes this in float64 and truncates, to stay nanosecond
            // accurate for fractions of an hour; so do we.
            value += (fraction as f64 * (unit_ns as f64 / scale)) as u64;
            if value > LIMIT {
                return Err(fail(DurationProblem::Overflow));
            }
        }
        total += value;
        if total > LIMIT {
            return Err(fail(DurationProblem::Overflow));
        }
    }
    if neg {
        // total <= 1 << 63, so the negation fits.
        return Ok((total as i64).wrapping_neg());
    }
    if total > LIMIT - 1 {
        return Err(fail(DurationProblem::Overflow));
    }
    Ok(total as i64)
}

/// `[0-9]*` as Go's `leadingInt`: `None` past `1 << 63`.
fn leading_int(digits: &[u8]) -> Option<u64> {
    let mut x: u64 = 0;
    for &d in digits {
        if x > LIMIT / 10 {
            return None;
        }
        x = x * 10 + u64::from(d - b'0');
        if x > LIMIT {
            return None;
        }
    }
    Some(x)
}

/// The digits after the point as Go's `leadingFraction`: precision stops
/// accumulating (without an error) once it would overflow.
fn leading_fraction(digits: &[u8]) -> (u64, f64) {
    let (mut x, mut scale) = (0u64, 1f64);
    for &d in digits {
        if x > (LIMIT - 1) / 10 {
            break;
        }
        let y = x * 10 + u64::from(d - b'0');
        if y > LIMIT {
            break;
        }
        x = y;
        scale *= 10.0;
    }
    (x, scale)
}

/// Formats Go's `time.Duration` as its `String()` does: `1h2m3.5s`,
/// `1.5ms`, `0s`, `-2µs`. [`parse_go_duration`] reads every result back to
/// the same value.
pub fn format_go_duration(nanos: i64) -> String {
    let neg = nanos < 0;
    let mut u = nanos.unsigned_abs();
    let mut out = String::new();
    if u < SECOND {
        let (prec, unit) = match u {
            0 => return "0s".into(),
            _ if u < MICROSECOND => (0, "ns"),
            _ if u < MILLISECOND => (3, "\u{b5}s"),
            _ => (6, "ms"),
        };
        out.push_str(&fraction_text(u, prec, &mut u));
        out.insert_str(0, &u.to_string());
        out.push_str(unit);
    } else {
        let frac = fraction_text(u, 9, &mut u);
        out.push_str(&format!("{}{frac}s", u % 60));
        u /= 60;
        if u > 0 {
            out.insert_str(0, &format!("{}m", u % 60));
            u /= 60;
            if u > 0 {
                out.insert_str(0, &format!("{u}h"));
            }
        }
    }
    if neg {
        out.insert(0, '-');
    }
    out
}

/// Go's `fmtFrac`: `.digits` of `v / 10^prec` without trailing zeros (and
/// without the point when they are all zero); leaves the integer part in
/// `rest`.
fn fraction_text(v: u64, prec: u32, rest: &mut u64) -> String {
    let scale = 10u64.pow(prec);
    let frac = v % scale;
    *rest = v / scale;
    if frac == 0 {
        return String::new();
    }
    let digits = format!("{frac:0width$}", width = prec as usize);
    format!(".{}", digits.trim_end_matches('0'))
}

/// A duration for a timeout, grace period or interval: Go's grammar (see
/// [`parse_go_duration`]), and not negative.
pub fn parse_duration(input: &str) -> Result<Duration, DurationError> {
    let nanos = parse_go_duration(input)?;
    if nanos < 0 {
        return Err(DurationError {
            input: input.to_owned(),
            problem: DurationProblem::Negative,
        });
    }
    Ok(Duration::from_nanos(nanos as u64))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const S: i64 = 1_000_000_000;

    /// Inputs Go's `time.ParseDuration` accepts, with its value (nanoseconds).
    /// Source: Go's `time` package (`parseDurationTests` in format_test.go,
    /// and the documented grammar).
    #[test]
    fn go_accepts_these_with_these_values() {
        #[rustfmt::skip]
        let cases: &[(&str, i64)] = &[
            // Simple.
            ("0", 0), ("5s", 5 * S), ("30s", 30 * S), ("1478s", 1478 * S),
            // Sign.
            ("-5s", -5 * S), ("+5s", 5 * S), ("-0", 0), ("+0", 0),
            // Decimal.
            ("5.0s", 5 * S), ("5.6s", 5 * S + 600_000_000), ("5.s", 5 * S),
            (".5s", S / 2), ("1.0s", S), ("1.00s", S), ("1.004s", S + 4_000_000),
            ("1.0040s", S + 4_000_000), ("100.00100s", 100 * S + 1_000_000),
            // Units.
            ("10ns", 10), ("11us", 11_000), ("12\u{b5}s", 12_000), ("12\u{3bc}s", 12_000),
            ("13ms", 13_000_000), ("14s", 14 * S), ("15m", 15 * 60 * S), ("16h", 16 * 3600 * S),
            // Compound.
            ("3h30m", (3 * 3600 + 30 * 60) * S), ("1h30m", 5400 * S),
            ("10.5s4m", 4 * 60 * S + 10 * S + S / 2),
            ("-2m3.4s", -(2 * 60 * S + 3 * S + 400_000_000)),
            ("1h2m3s4ms5us6ns", 3600 * S + 2 * 60 * S + 3 * S + 4_000_000 + 5_000 + 6),
            ("39h9m14.425s", (39 * 3600 + 9 * 60 + 14) * S + 425_000_000),
            ("1.5h", 5400 * S), ("0s", 0), ("0.0s", 0), ("00s", 0),
            // Large values.
            ("52763797000ns", 52_763_797_000),
            ("0.3333333333333333333h", 20 * 60 * S),
            ("9007199254740993ns", (1 << 53) + 1),
            ("9223372036854775807ns", i64::MAX),
            ("9223372036854775.807us", i64::MAX),
            ("9223372036s854ms775us807ns", i64::MAX),
            ("-9223372036854775808ns", i64::MIN),
            ("-9223372036854775.808us", i64::MIN),
            ("-9223372036s854ms775us808ns", i64::MIN),
            ("-2562047h47m16.854775808s", i64::MIN),
            ("0.100000000000000000000h", 6 * 60 * S),
            ("0.830103483285477580700h", 49 * 60 * S + 48 * S + 372_539_827),
        ];
        for &(input, want) in cases {
            assert_eq!(parse_go_duration(input), Ok(want), "{input:?}");
        }
    }

    /// Inputs Go refuses, with the class of its error ("invalid duration",
    /// "missing unit", "unknown unit"). Source: Go's `time` package
    /// (`parseDurationErrorTests`) and the grammar.
    #[test]
    fn go_refuses_these() {
        use DurationProblem::*;
        #[rustfmt::skip]
        let cases: Vec<(&str, DurationProblem)> = vec![
            ("", Invalid), ("3", MissingUnit), ("-", Invalid), ("s", Invalid), (".", Invalid),
            ("-.", Invalid), (".s", Invalid), ("+.s", Invalid), ("1d", UnknownUnit("d".into())),
            ("\u{FFFD}", Invalid), ("1\u{FFFD}", UnknownUnit("\u{FFFD}".into())), ("1 s", UnknownUnit(" s".into())),
            (" 1s", Invalid), ("1s ", UnknownUnit("s ".into())), ("30", MissingUnit),
            ("1.5", MissingUnit), ("1h30", MissingUnit), ("00", MissingUnit), ("ten", Invalid),
            ("5S", UnknownUnit("S".into())), ("1sec", UnknownUnit("sec".into())),
            ("--1s", Invalid), ("+-1s", Invalid),
            // Overflow.
            ("9223372036854775810ns", Overflow), ("9223372036854775808ns", Overflow),
            ("-9223372036854775809ns", Overflow), ("9223372036854776us", Overflow),
            ("3000000h", Overflow), ("9223372036854775.808us", Overflow),
            ("9223372036854ms775us808ns", Overflow), ("99999999999999999999999h", Overflow),
        ];
        for (input, problem) in cases {
            let err = parse_go_duration(input).unwrap_err();
            assert_eq!(err.problem, problem, "{input:?}");
            let text = err.to_string();
            assert!(
                text.contains(&format!("{input:?}")),
                "names the input: {text}"
            );
            assert!(text.contains("e.g. 30s"), "shows an example: {text}");
        }
    }

    /// `time.Duration.String()`. Source: Go's `time` package (`durationTests`).
    #[test]
    fn formats_like_go() {
        #[rustfmt::skip]
        let cases: &[(i64, &str)] = &[
            (0, "0s"), (1, "1ns"), (1100, "1.1\u{b5}s"), (2_200_000, "2.2ms"), (3_300_000_000, "3.3s"),
            (4 * 60 * S + 5 * S, "4m5s"), (4 * 60 * S + 5 * S + 1_000_000, "4m5.001s"),
            (5 * 3600 * S + 6 * 60 * S + 7 * S + 1_000_000, "5h6m7.001s"),
            (8 * 60 * S + 1, "8m0.000000001s"), (i64::MAX, "2562047h47m16.854775807s"),
            (i64::MIN, "-2562047h47m16.854775808s"), (-1100, "-1.1\u{b5}s"),
        ];
        for &(nanos, text) in cases {
            assert_eq!(format_go_duration(nanos), text, "{nanos}");
        }
    }

    #[test]
    fn timeouts_refuse_negative_values_but_take_zero() {
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("-0"), Ok(Duration::ZERO));
        let err = parse_duration("-1s").unwrap_err();
        assert_eq!(err.problem, DurationProblem::Negative);
        assert!(err.to_string().contains("must not be negative"), "{err}");
    }

    proptest! {
        #[test]
        fn never_panics(input in ".{0,40}") {
            let _ = parse_go_duration(&input);
        }

        #[test]
        fn grammar_like_inputs_never_panic(input in "[-+]?([0-9]{0,25}(\\.[0-9]{0,25})?(ns|us|\u{b5}s|ms|s|m|h|x)?){1,4}") {
            let _ = parse_go_duration(&input);
        }

        #[test]
        fn formatting_round_trips(nanos in any::<i64>()) {
            prop_assert_eq!(parse_go_duration(&format_go_duration(nanos)), Ok(nanos));
        }

        #[test]
        fn compound_sums_its_parts(h in 0i64..1000, m in 0i64..1000, s in 0i64..1000, ms in 0i64..1000) {
            let text = format!("{h}h{m}m{s}s{ms}ms");
            prop_assert_eq!(
                parse_go_duration(&text),
                Ok(((h * 3600 + m * 60 + s) * 1000 + ms) * 1_000_000)
            );
        }
    }
}

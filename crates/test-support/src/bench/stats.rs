//! Order statistics and formatting for the figures.

use std::time::Duration;

/// The median (the mean of the two middle values for an even count).
pub fn median(v: &[Duration]) -> Duration {
    assert!(!v.is_empty(), "median of nothing");
    let mut s = v.to_vec();
    s.sort();
    let n = s.len();
    if n % 2 == 1 {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2
    }
}

/// The nearest-rank percentile, `p` in (0, 100].
pub fn percentile(v: &[Duration], p: f64) -> Duration {
    assert!(!v.is_empty(), "percentile of nothing");
    let mut s = v.to_vec();
    s.sort();
    let rank = ((p / 100.0) * s.len() as f64).ceil() as usize;
    s[rank.clamp(1, s.len()) - 1]
}

pub fn median_f64(v: &[f64]) -> f64 {
    assert!(!v.is_empty(), "median of nothing");
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let n = s.len();
    if n % 2 == 1 {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2.0
    }
}

/// The median of the per-pair ratios `a[i] / b[i]`. Each pair ran back to
/// back, so this cancels slow drift in the machine's load better than the
/// ratio of the medians.
pub fn paired_ratio(a: &[Duration], b: &[Duration]) -> f64 {
    let r: Vec<f64> = a
        .iter()
        .zip(b)
        .map(|(a, b)| a.as_secs_f64() / b.as_secs_f64())
        .collect();
    median_f64(&r)
}

/// The middle half of the per-pair ratios `a[i] / b[i]`, as `p25–p75`:
/// how far one pair can be trusted on this machine.
pub fn ratio_spread(a: &[Duration], b: &[Duration]) -> String {
    let mut r: Vec<f64> = a
        .iter()
        .zip(b)
        .map(|(a, b)| a.as_secs_f64() / b.as_secs_f64())
        .collect();
    r.sort_by(f64::total_cmp);
    let at = |p: f64| r[((p * (r.len() - 1) as f64).round() as usize).min(r.len() - 1)];
    format!("{:.3}–{:.3}", at(0.25), at(0.75))
}

/// The ratio of the medians `a / b`.
pub fn ratio(a: Duration, b: Duration) -> f64 {
    a.as_secs_f64() / b.as_secs_f64()
}

/// Whether, in pair `i`, the worker goes first: ABBA order (W B, B W, W B,
/// …) so neither side always runs right after the other.
pub fn worker_first(i: usize) -> bool {
    i.is_multiple_of(2)
}

pub fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1e3)
}

/// Microseconds below a millisecond, milliseconds above.
pub fn us(d: Duration) -> String {
    if d < Duration::from_millis(1) {
        format!("{:.0} µs", d.as_secs_f64() * 1e6)
    } else {
        format!("{:.2} ms", d.as_secs_f64() * 1e3)
    }
}

pub fn secs(d: Duration) -> String {
    format!("{:.2} s", d.as_secs_f64())
}

pub fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

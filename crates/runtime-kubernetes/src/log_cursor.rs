//! Where a follow of a container's log stands, so that a follow that broke
//! (the API server or the kubelet restarted, the connection dropped) goes
//! on where it stopped: every line sent once, none lost.
//!
//! The log is read with `timestamps=true`: Kubernetes puts the time the
//! runtime logged each line (RFC 3339 with nanoseconds, then one space) at
//! its start. A follow opened again asks for `sinceTime`, which the API
//! takes to the second (kube-rs rounds it; we pass it already truncated, so
//! it is never later than a line we sent), and the kubelet answers every
//! line whose timestamp is not before it, in the log's order. So the lines
//! the new stream repeats are exactly the ones we sent with a timestamp at
//! or after that second: we count those and drop that many.
//!
//! Limits: a line longer than [`MAX_LINE`] is sent in parts as it comes;
//! if the stream breaks inside one, the rest of that line is lost (the new
//! stream repeats it whole, and it counts as sent). A line the runtime
//! split (Docker and CRI split at 16 KiB) carries a timestamp at each part;
//! only the first is removed.

use k8s_openapi::jiff::Timestamp;
use std::collections::VecDeque;

/// The longest line held back until its end: beyond it, the line's parts
/// are sent as they come, so one line without a newline cannot grow the
/// worker's memory without bound.
pub const MAX_LINE: usize = 64 * 1024;

/// How far back sent lines' timestamps are kept, in seconds: a repeat
/// starts at most one second before the last line sent, and the runtime
/// logs stdout and stderr lines out of order by far less.
const KEEP_SECONDS: i64 = 10;

/// The follow's position in one container's log.
#[derive(Debug, Default)]
pub struct LogCursor {
    /// Timestamps of the lines passed (sent, or skipped as already sent
    /// when the follow began from the log's end) in the last
    /// [`KEEP_SECONDS`], in log order.
    sent: VecDeque<Timestamp>,
    /// Lines of the current stream still to drop.
    replay: Replay,
    /// The current line until it is decided (its timestamp included).
    line: Vec<u8>,
    /// The current line's fate once decided before its end (a long line).
    fate: Option<bool>,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum Replay {
    #[default]
    None,
    /// Drop this many timestamped lines: the ones already sent.
    Count(usize),
    /// Drop lines up to the one logged at this instant (the log's last
    /// line when the follow began from the log's end), that one included.
    Through(Timestamp),
}

impl LogCursor {
    /// A cursor that starts after the line logged at `last` (the log's
    /// last line when the follow begins): earlier lines are not sent.
    pub fn after(last: Timestamp) -> LogCursor {
        LogCursor {
            replay: Replay::Through(last),
            ..LogCursor::default()
        }
    }

    /// Prepares for a (new) stream and returns the `sinceTime` to ask it
    /// for (None: from the log's beginning). What the broken stream left of
    /// an unfinished line is dropped: the new stream sends it again.
    pub fn reopen(&mut self) -> Option<Timestamp> {
        self.line.clear();
        self.fate = None;
        if let Replay::Through(last) = self.replay {
            // Not passed yet: the new stream is dropped through it again.
            self.sent.clear();
            return Some(floor_second(last));
        }
        let since = floor_second(*self.sent.back()?);
        let repeated = self.sent.iter().filter(|t| **t >= since).count();
        self.replay = if repeated == 0 {
            Replay::None
        } else {
            Replay::Count(repeated)
        };
        Some(since)
    }

    /// Takes bytes of the stream; appends to `out` what is to be sent (the
    /// lines without their timestamps).
    pub fn feed(&mut self, mut chunk: &[u8], out: &mut Vec<u8>) {
        while !chunk.is_empty() {
            let (part, ended) = match chunk.iter().position(|b| *b == b'\n') {
                Some(i) => (&chunk[..=i], true),
                None => (chunk, false),
            };
            chunk = &chunk[part.len()..];
            match self.fate {
                Some(send) => {
                    if send {
                        out.extend_from_slice(part);
                    }
                }
                None => {
                    self.line.extend_from_slice(part);
                    if ended || self.line.len() >= MAX_LINE {
                        let send = self.decide();
                        let line = std::mem::take(&mut self.line);
                        if send {
                            out.extend_from_slice(text_of(&line));
                        }
                        self.fate = Some(send);
                    }
                }
            }
            if ended {
                self.fate = None;
            }
        }
    }

    /// The stream ended with the container: its last line, if it had no
    /// newline, is complete and goes out too.
    pub fn finish(&mut self, out: &mut Vec<u8>) {
        if self.fate.is_none() && !self.line.is_empty() && self.decide() {
            out.extend_from_slice(text_of(&self.line));
        }
        self.line.clear();
        self.fate = None;
    }

    /// Whether the line now in `self.line` is sent; records it if so.
    fn decide(&mut self) -> bool {
        let Some(at) = timestamp_of(&self.line) else {
            // Not placeable in the log: sent (Kubernetes stamps every line).
            return true;
        };
        match self.replay {
            Replay::Count(n) => {
                self.replay = if n > 1 {
                    Replay::Count(n - 1)
                } else {
                    Replay::None
                };
                return false;
            }
            Replay::Through(last) if at <= last => {
                if at == last {
                    self.replay = Replay::None;
                }
                // Not sent, but a later stream repeats it like a line sent.
                self.record(at);
                return false;
            }
            Replay::Through(_) => self.replay = Replay::None,
            Replay::None => {}
        }
        self.record(at);
        true
    }

    /// Notes a line the log holds before the position reached.
    fn record(&mut self, at: Timestamp) {
        while self
            .sent
            .front()
            .is_some_and(|t| at.as_second() - t.as_second() > KEEP_SECONDS)
        {
            self.sent.pop_front();
        }
        self.sent.push_back(at);
    }
}

/// The timestamp at the start of a line, if it has one.
pub fn timestamp_of(line: &[u8]) -> Option<Timestamp> {
    let space = line.iter().take(64).position(|b| *b == b' ')?;
    std::str::from_utf8(&line[..space]).ok()?.parse().ok()
}

/// A line without its timestamp (and the space after it).
fn text_of(line: &[u8]) -> &[u8] {
    match timestamp_of(line) {
        Some(_) => &line[line.iter().position(|b| *b == b' ').unwrap_or(0) + 1..],
        None => line,
    }
}

/// `t` truncated to the second (times here are after 1970).
fn floor_second(t: Timestamp) -> Timestamp {
    Timestamp::from_second(t.as_second()).unwrap_or(t)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feed(c: &mut LogCursor, text: &str) -> String {
        let mut out = Vec::new();
        c.feed(text.as_bytes(), &mut out);
        String::from_utf8(out).unwrap()
    }

    fn ts(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    #[test]
    fn lines_lose_their_timestamps_and_split_chunks_are_joined() {
        let mut c = LogCursor::default();
        assert_eq!(c.reopen(), None, "a first follow starts at the beginning");
        let mut sent = feed(
            &mut c,
            "2026-01-01T10:00:00.100000000Z one\n2026-01-01T10:00:00.2",
        );
        sent += &feed(&mut c, "00000000Z two\n");
        assert_eq!(sent, "one\ntwo\n");
    }

    #[test]
    fn a_reopened_stream_repeats_nothing_and_loses_nothing() {
        let mut c = LogCursor::default();
        c.reopen();
        let sent = feed(
            &mut c,
            "2026-01-01T10:00:00.900000000Z a\n2026-01-01T10:00:01.100000000Z b\n2026-01-01T10:00:01.300000000Z c\n2026-01-01T10:00:01.5",
        );
        assert_eq!(sent, "a\nb\nc\n");
        // The break: the half line is dropped, the new stream starts at the
        // second of the last line sent and repeats b and c.
        assert_eq!(c.reopen(), Some(ts("2026-01-01T10:00:01Z")));
        let sent = feed(
            &mut c,
            "2026-01-01T10:00:01.100000000Z b\n2026-01-01T10:00:01.300000000Z c\n2026-01-01T10:00:01.500000000Z d\n2026-01-01T10:00:02.000000000Z e\n",
        );
        assert_eq!(sent, "d\ne\n");
    }

    #[test]
    fn lines_logged_at_the_same_instant_are_counted_not_compared() {
        let mut c = LogCursor::default();
        c.reopen();
        let same = "2026-01-01T10:00:05.000000000Z";
        assert_eq!(feed(&mut c, &format!("{same} x\n{same} x\n")), "x\nx\n");
        assert_eq!(c.reopen(), Some(ts("2026-01-01T10:00:05Z")));
        assert_eq!(
            feed(&mut c, &format!("{same} x\n{same} x\n{same} y\n")),
            "y\n",
            "the third line at that instant is new"
        );
    }

    #[test]
    fn out_of_order_stdout_and_stderr_lines_are_repeated_in_log_order() {
        // The runtime logs stderr and stdout from two copiers: a line can
        // carry an earlier time than the one before it.
        let mut c = LogCursor::default();
        c.reopen();
        let log = "2026-01-01T10:00:03.500000000Z out\n2026-01-01T10:00:03.400000000Z err\n";
        assert_eq!(feed(&mut c, log), "out\nerr\n");
        assert_eq!(c.reopen(), Some(ts("2026-01-01T10:00:03Z")));
        let again = format!("{log}2026-01-01T10:00:03.600000000Z new\n");
        assert_eq!(feed(&mut c, &again), "new\n");
    }

    #[test]
    fn a_follow_from_the_end_sends_only_what_comes_after_the_last_line() {
        let mut c = LogCursor::after(ts("2026-01-01T10:00:07.250000000Z"));
        assert_eq!(c.reopen(), Some(ts("2026-01-01T10:00:07Z")));
        let log = "2026-01-01T10:00:07.100000000Z old\n2026-01-01T10:00:07.250000000Z last\n2026-01-01T10:00:07.300000000Z new\n";
        assert_eq!(feed(&mut c, log), "new\n");
        // Broken after that: the count takes over.
        assert_eq!(c.reopen(), Some(ts("2026-01-01T10:00:07Z")));
        let more = format!("{log}2026-01-01T10:00:08.000000000Z newer\n");
        assert_eq!(feed(&mut c, &more), "newer\n");
    }

    #[test]
    fn a_follow_from_the_end_whose_last_line_is_gone_starts_at_the_next_one() {
        let mut c = LogCursor::after(ts("2026-01-01T10:00:07.250000000Z"));
        c.reopen();
        assert_eq!(
            feed(&mut c, "2026-01-01T10:00:07.900000000Z next\n"),
            "next\n"
        );
    }

    #[test]
    fn the_last_line_without_a_newline_goes_out_when_the_container_ended() {
        let mut c = LogCursor::default();
        c.reopen();
        assert_eq!(feed(&mut c, "2026-01-01T10:00:00.1Z bye"), "");
        let mut out = Vec::new();
        c.finish(&mut out);
        assert_eq!(out, b"bye");
    }

    #[test]
    fn a_long_line_is_sent_in_parts_and_counted_once() {
        let mut c = LogCursor::default();
        c.reopen();
        let body = "z".repeat(MAX_LINE + 10);
        let line = format!("2026-01-01T10:00:09.000000000Z {body}\n");
        let mut out = Vec::new();
        for part in line.as_bytes().chunks(1000) {
            c.feed(part, &mut out);
        }
        assert_eq!(out, format!("{body}\n").as_bytes());
        assert!(c.line.len() < MAX_LINE + 1000, "memory stays bounded");
        c.reopen();
        let mut out = Vec::new();
        c.feed(line.as_bytes(), &mut out);
        c.feed(b"2026-01-01T10:00:09.500000000Z after\n", &mut out);
        assert_eq!(out, b"after\n");
    }

    #[test]
    fn a_line_without_a_timestamp_is_sent_whole() {
        let mut c = LogCursor::default();
        c.reopen();
        assert_eq!(feed(&mut c, "no time here\n"), "no time here\n");
        assert_eq!(c.reopen(), None, "nothing placeable was sent");
    }
}

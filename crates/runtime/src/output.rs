//! Live task output: runtimes write what a task prints into an
//! [`OutputSink`]; the core forwards it to an orchestrator that offered the
//! `task-output` extension.
//!
//! The sink never blocks and never grows without bound: a task must not run
//! slower because the link is slow (or down). Beyond [`OutputSink::CAPACITY`]
//! bytes waiting to be sent, the *oldest* waiting output is dropped and
//! counted, so what a task printed last (its fatal error) is what survives,
//! and the next chunk that does go out says how many bytes were lost before
//! it.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use tokio::sync::Notify;

pub use oz_protocol::OutputStream;

/// One piece of output ready to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutputChunk {
    pub stream: OutputStream,
    pub data: Vec<u8>,
    /// Bytes dropped (buffer full) between the previous chunk and this one.
    pub dropped_before: u64,
}

#[derive(Default)]
struct Buffer {
    chunks: VecDeque<OutputChunk>,
    bytes: usize,
    dropped_pending: u64,
    dropped_total: u64,
    closed: bool,
}

#[derive(Default)]
struct Shared {
    buffer: Mutex<Buffer>,
    ready: Notify,
}

/// Where a runtime writes a task's output. Cloning shares the buffer.
#[derive(Clone, Default)]
pub struct OutputSink(Option<Arc<Shared>>);

/// The reading end of an [`OutputSink`], held by the core.
pub struct OutputReader(Arc<Shared>);

impl OutputSink {
    /// Most bytes waiting to be sent per task before output is dropped.
    pub const CAPACITY: usize = 256 * 1024;
    /// Largest chunk handed to the reader (bigger writes are split).
    pub const MAX_CHUNK: usize = 16 * 1024;

    /// A sink that discards everything: nobody asked for live output, so a
    /// runtime can skip attaching to the task's output at all.
    pub fn none() -> OutputSink {
        OutputSink(None)
    }

    /// A sink and its reader.
    pub fn channel() -> (OutputSink, OutputReader) {
        let shared = Arc::new(Shared::default());
        (OutputSink(Some(shared.clone())), OutputReader(shared))
    }

    /// Whether anyone reads this sink (a runtime need not collect output otherwise).
    pub fn is_wanted(&self) -> bool {
        self.0.is_some()
    }

    /// Queues output; never blocks. Over capacity the oldest waiting bytes
    /// are dropped (whole chunks) and counted.
    pub fn write(&self, stream: OutputStream, data: &[u8]) {
        let Some(shared) = &self.0 else { return };
        if data.is_empty() {
            return;
        }
        let mut b = shared.buffer.lock().unwrap();
        if b.closed {
            return;
        }
        for piece in data.chunks(Self::MAX_CHUNK) {
            // Room for the newest: the oldest waiting chunks go, and the
            // chunk after them carries the count.
            while b.bytes + piece.len() > Self::CAPACITY {
                let Some(old) = b.chunks.pop_front() else {
                    break;
                };
                b.bytes -= old.data.len();
                b.dropped_total += old.data.len() as u64;
                let lost = old.dropped_before + old.data.len() as u64;
                match b.chunks.front_mut() {
                    Some(next) => next.dropped_before += lost,
                    None => b.dropped_pending += lost,
                }
            }
            // Consecutive small writes to the same stream share a chunk.
            let dropped_pending = b.dropped_pending;
            match b.chunks.back_mut() {
                Some(last)
                    if dropped_pending == 0
                        && last.stream == stream
                        && last.data.len() + piece.len() <= Self::MAX_CHUNK =>
                {
                    last.data.extend_from_slice(piece);
                }
                _ => {
                    b.chunks.push_back(OutputChunk {
                        stream,
                        data: piece.to_vec(),
                        dropped_before: dropped_pending,
                    });
                    b.dropped_pending = 0;
                }
            }
            b.bytes += piece.len();
        }
        drop(b);
        shared.ready.notify_one();
    }

    /// No more output will come (the task ended).
    pub fn close(&self) {
        if let Some(shared) = &self.0 {
            shared.buffer.lock().unwrap().closed = true;
            shared.ready.notify_one();
        }
    }
}

impl OutputReader {
    /// The next chunk; `None` once the sink is closed and everything was read.
    pub async fn next(&self) -> Option<OutputChunk> {
        loop {
            let notified = self.0.ready.notified();
            {
                let mut b = self.0.buffer.lock().unwrap();
                if let Some(chunk) = b.chunks.pop_front() {
                    b.bytes -= chunk.data.len();
                    return Some(chunk);
                }
                if b.closed {
                    if b.dropped_pending > 0 {
                        // Say how much was lost at the very end too.
                        let dropped_before = std::mem::take(&mut b.dropped_pending);
                        return Some(OutputChunk {
                            stream: OutputStream::Stdout,
                            data: Vec::new(),
                            dropped_before,
                        });
                    }
                    return None;
                }
            }
            notified.await;
        }
    }

    /// Bytes dropped so far because the reader fell behind.
    pub fn dropped_total(&self) -> u64 {
        self.0.buffer.lock().unwrap().dropped_total
    }
}

/// Turns chunks into UTF-8 text without breaking a character that a chunk
/// boundary split: an incomplete sequence at a chunk's end waits for the
/// next chunk of the same stream; invalid bytes become U+FFFD.
#[derive(Default)]
pub struct Utf8Carry {
    stdout: Vec<u8>,
    stderr: Vec<u8>,
}

impl Utf8Carry {
    pub fn decode(&mut self, stream: OutputStream, data: &[u8]) -> String {
        let carry = match stream {
            OutputStream::Stdout => &mut self.stdout,
            OutputStream::Stderr => &mut self.stderr,
        };
        let mut bytes = std::mem::take(carry);
        bytes.extend_from_slice(data);
        // At most 3 bytes of an incomplete character at the very end.
        if let Err(e) = std::str::from_utf8(&bytes) {
            if e.error_len().is_none() && bytes.len() - e.valid_up_to() < 4 {
                *carry = bytes.split_off(e.valid_up_to());
            }
        }
        String::from_utf8_lossy(&bytes).into_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn bounded_in_order_and_drops_are_counted() {
        let (sink, reader) = OutputSink::channel();
        sink.write(OutputStream::Stdout, b"a");
        sink.write(OutputStream::Stdout, b"b");
        sink.write(OutputStream::Stderr, b"e");
        let big = vec![b'x'; OutputSink::CAPACITY];
        sink.write(OutputStream::Stdout, &big);
        sink.write(OutputStream::Stdout, b"tail");
        sink.close();
        let mut got = Vec::new();
        while let Some(c) = reader.next().await {
            got.push(c);
        }
        // The oldest went: "ab", "e" and the first big piece; the count is
        // on the first chunk that survived.
        assert_eq!(
            got[0].dropped_before as usize,
            3 + OutputSink::MAX_CHUNK,
            "{:?}",
            got.iter().map(|c| c.dropped_before).collect::<Vec<_>>()
        );
        assert!(got[0].data.iter().all(|b| *b == b'x'));
        let total: usize = got.iter().map(|c| c.data.len()).sum();
        assert!(total <= OutputSink::CAPACITY, "{total}");
        let dropped: u64 = got.iter().map(|c| c.dropped_before).sum();
        assert_eq!(dropped as usize + total, 3 + OutputSink::CAPACITY + 4);
        assert_eq!(reader.dropped_total(), dropped);
        assert_eq!(got.last().unwrap().data, b"tail", "the newest is kept");
    }

    #[test]
    fn characters_split_across_chunks_survive() {
        let text = "héllo ✓";
        let bytes = text.as_bytes();
        let mut c = Utf8Carry::default();
        let mut out = String::new();
        for piece in bytes.chunks(1) {
            out.push_str(&c.decode(OutputStream::Stdout, piece));
        }
        assert_eq!(out, text);
        assert_eq!(c.decode(OutputStream::Stderr, b"\xff!"), "\u{fffd}!");
    }

    #[test]
    fn the_none_sink_is_not_wanted_and_ignores_writes() {
        let s = OutputSink::none();
        assert!(!s.is_wanted());
        s.write(OutputStream::Stdout, b"x");
        s.close();
    }
}

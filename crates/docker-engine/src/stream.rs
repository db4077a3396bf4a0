//! Response streams: raw chunks, JSON lines, and demultiplexed logs.

use crate::error::{DecodeError, DockerError, ErrorKind};
use bytes::{Buf, Bytes, BytesMut};
use futures_util::stream::{BoxStream, StreamExt};
use serde::de::DeserializeOwned;

pub type ByteStream = BoxStream<'static, Result<Bytes, DockerError>>;
pub type JsonStream<T> = BoxStream<'static, Result<T, DockerError>>;

/// Decodes a JSON-lines body (pull/import/build progress, events) into `T`s.
///
/// Works on any byte stream: objects may be split across chunks or share one.
/// An object with `errorDetail` or `error` (a failed pull still answers HTTP
/// 200) becomes an `Err` item of kind [`ErrorKind::InBand`] carrying the
/// daemon's message; the stream ends after it.
pub fn json_lines<T: DeserializeOwned + Send + 'static>(
    operation: &'static str,
    body: ByteStream,
) -> JsonStream<T> {
    struct JsonLinesReader {
        body: Option<ByteStream>,
        buf: BytesMut,
    }
    let state = JsonLinesReader {
        body: Some(body),
        buf: BytesMut::new(),
    };
    futures_util::stream::unfold(state, move |mut st| async move {
        loop {
            if let Some(pos) = st.buf.iter().position(|&b| b == b'\n') {
                let line = st.buf.split_to(pos + 1);
                if let Some(item) = decode_line::<T>(operation, &line) {
                    if item.is_err() {
                        st.body = None;
                        st.buf.clear();
                    }
                    return Some((item, st));
                }
                continue;
            }
            let Some(body) = st.body.as_mut() else {
                // Body finished: a last line without a newline.
                if st.buf.is_empty() {
                    return None;
                }
                let line = st.buf.split();
                match decode_line::<T>(operation, &line) {
                    Some(item) => return Some((item, st)),
                    None => return None,
                }
            };
            match body.next().await {
                Some(Ok(chunk)) => st.buf.extend_from_slice(&chunk),
                Some(Err(e)) => {
                    st.body = None;
                    st.buf.clear();
                    return Some((Err(e), st));
                }
                None => st.body = None,
            }
        }
    })
    .boxed()
}

fn decode_line<T: DeserializeOwned>(
    operation: &'static str,
    line: &[u8],
) -> Option<Result<T, DockerError>> {
    let trimmed = line.trim_ascii();
    if trimmed.is_empty() {
        return None;
    }
    let value: serde_json::Value = match serde_json::from_slice(trimmed) {
        Ok(v) => v,
        Err(e) => {
            return Some(Err(DockerError::new(
                ErrorKind::Protocol,
                operation,
                format!("the daemon sent a line that is not JSON: {e}"),
            )))
        }
    };
    if let Some(message) = in_band_error(&value) {
        return Some(Err(DockerError::new(ErrorKind::InBand, operation, message)));
    }
    Some(serde_json::from_value(value).map_err(|e| {
        DockerError::decode(
            operation,
            "unexpected progress object",
            DecodeError::new::<T>(&e),
        )
    }))
}

fn in_band_error(v: &serde_json::Value) -> Option<String> {
    let detail = v
        .get("errorDetail")
        .and_then(|d| d.get("message"))
        .and_then(|m| m.as_str())
        .filter(|m| !m.is_empty());
    let plain = v
        .get("error")
        .and_then(|m| m.as_str())
        .filter(|m| !m.is_empty());
    detail.or(plain).map(str::to_string).or_else(|| {
        // `errorDetail` without a message still means failure.
        v.get("errorDetail")
            .filter(|d| !d.is_null())
            .map(|d| d.to_string())
    })
}

/// Which output a chunk of container output came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogSource {
    Stdin,
    Stdout,
    Stderr,
    /// A container with a TTY: stdout and stderr merged, passed through raw.
    Console,
}

/// One piece of container output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogChunk {
    pub source: LogSource,
    pub data: Bytes,
}

pub type LogStream = BoxStream<'static, Result<LogChunk, DockerError>>;

/// Container output as the daemon sends it: raw for a TTY container,
/// multiplexed with 8-byte frame headers otherwise. The caller says which
/// (from the container's `Config.Tty`); this never guesses.
pub fn container_output(operation: &'static str, body: ByteStream, tty: bool) -> LogStream {
    if tty {
        body.map(|r| {
            r.map(|data| LogChunk {
                source: LogSource::Console,
                data,
            })
        })
        .boxed()
    } else {
        demultiplex(operation, body)
    }
}

/// Splits a multiplexed stream (`[stream, 0, 0, 0, len_be32]` + payload).
/// Payload is yielded as it arrives, so a large frame is never held whole.
pub fn demultiplex(operation: &'static str, body: ByteStream) -> LogStream {
    struct FrameReader {
        body: Option<ByteStream>,
        buf: BytesMut,
        /// The current frame's source and the payload bytes still to come.
        frame: Option<(LogSource, usize)>,
    }
    let state = FrameReader {
        body: Some(body),
        buf: BytesMut::new(),
        frame: None,
    };
    futures_util::stream::unfold(state, move |mut st| async move {
        loop {
            match st.frame {
                Some((source, remaining)) if !st.buf.is_empty() => {
                    let n = remaining.min(st.buf.len());
                    let data = st.buf.split_to(n).freeze();
                    st.frame = (remaining > n).then_some((source, remaining - n));
                    return Some((Ok(LogChunk { source, data }), st));
                }
                None if st.buf.len() >= 8 => {
                    let source = match st.buf[0] {
                        0 => LogSource::Stdin,
                        1 => LogSource::Stdout,
                        2 => LogSource::Stderr,
                        other => {
                            st.body = None;
                            st.buf.clear();
                            let err = DockerError::new(
                                ErrorKind::Protocol,
                                operation,
                                format!("bad stream frame header (stream byte {other}); is the container's TTY setting right?"),
                            );
                            return Some((Err(err), st));
                        }
                    };
                    let len = u32::from_be_bytes([st.buf[4], st.buf[5], st.buf[6], st.buf[7]]);
                    st.buf.advance(8);
                    if len > 0 {
                        st.frame = Some((source, len as usize));
                    }
                    continue;
                }
                _ => {}
            }
            let body = st.body.as_mut()?;
            match body.next().await {
                Some(Ok(chunk)) => st.buf.extend_from_slice(&chunk),
                Some(Err(e)) => {
                    st.body = None;
                    return Some((Err(e), st));
                }
                None => {
                    st.body = None;
                    if !st.buf.is_empty() || st.frame.is_some() {
                        let err = DockerError::new(
                            ErrorKind::Protocol,
                            operation,
                            "the output stream ended inside a frame",
                        );
                        st.buf.clear();
                        st.frame = None;
                        return Some((Err(err), st));
                    }
                    return None;
                }
            }
        }
    })
    .boxed()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunks(parts: Vec<&'static [u8]>) -> ByteStream {
        futures_util::stream::iter(parts.into_iter().map(|p| Ok(Bytes::from_static(p)))).boxed()
    }

    fn frame(stream: u8, payload: &[u8]) -> Vec<u8> {
        let mut v = vec![stream, 0, 0, 0];
        v.extend_from_slice(&(payload.len() as u32).to_be_bytes());
        v.extend_from_slice(payload);
        v
    }

    #[tokio::test]
    async fn demultiplexes_frames_split_anywhere() {
        let mut all = frame(1, b"hello ");
        all.extend(frame(2, b"oops"));
        all.extend(frame(1, b"world"));
        let all: &'static [u8] = Box::leak(all.into_boxed_slice());
        // Split into 3-byte chunks: headers and payloads straddle chunks.
        let parts: Vec<&'static [u8]> = all.chunks(3).collect();
        let items: Vec<LogChunk> = demultiplex("ContainerLogs", chunks(parts))
            .map(|r| r.unwrap())
            .collect()
            .await;
        let mut out = Vec::new();
        let mut err = Vec::new();
        for c in items {
            match c.source {
                LogSource::Stdout => out.extend_from_slice(&c.data),
                LogSource::Stderr => err.extend_from_slice(&c.data),
                _ => panic!("unexpected source"),
            }
        }
        assert_eq!(out, b"hello world");
        assert_eq!(err, b"oops");
    }

    #[tokio::test]
    async fn truncated_frame_is_an_error() {
        let f = frame(1, b"hello");
        let f: &'static [u8] = Box::leak(f[..7].to_vec().into_boxed_slice());
        let items: Vec<_> = demultiplex("ContainerLogs", chunks(vec![f]))
            .collect()
            .await;
        assert!(items.last().unwrap().is_err());
    }

    #[tokio::test]
    async fn tty_output_is_raw() {
        let items: Vec<_> = container_output("ContainerLogs", chunks(vec![b"\x01raw"]), true)
            .collect()
            .await;
        assert_eq!(items[0].as_ref().unwrap().source, LogSource::Console);
        assert_eq!(&items[0].as_ref().unwrap().data[..], b"\x01raw");
    }

    #[tokio::test]
    async fn json_lines_split_and_in_band_errors() {
        let body = chunks(vec![
            b"{\"status\":\"a\"}\n{\"sta",
            b"tus\":\"b\"}\n\n{\"errorDetail\":{\"message\":\"pull access denied\"},\"error\":\"pull access denied\"}\n",
            b"{\"status\":\"never\"}\n",
        ]);
        let items: Vec<Result<serde_json::Value, _>> =
            json_lines("ImageCreate", body).collect().await;
        assert_eq!(items.len(), 3);
        assert_eq!(items[1].as_ref().unwrap()["status"], "b");
        let err = items[2].as_ref().unwrap_err();
        assert_eq!(err.kind(), &ErrorKind::InBand);
        assert!(err.to_string().contains("pull access denied"));
    }

    #[tokio::test]
    async fn json_lines_last_line_without_newline() {
        let items: Vec<Result<serde_json::Value, _>> =
            json_lines("x", chunks(vec![b"{\"a\":1}\n{\"a\":2}"]))
                .collect()
                .await;
        assert_eq!(items.len(), 2);
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        fn run<T>(future: impl std::future::Future<Output = T>) -> T {
            tokio::runtime::Builder::new_current_thread()
                .build()
                .unwrap()
                .block_on(future)
        }

        /// `bytes` delivered in pieces cut at `cuts` (positions, any order).
        fn pieces(bytes: Vec<u8>, mut cuts: Vec<usize>) -> ByteStream {
            cuts.retain(|c| *c < bytes.len());
            cuts.sort_unstable();
            cuts.dedup();
            let mut out = Vec::new();
            let mut start = 0;
            for cut in cuts.into_iter().chain([bytes.len()]) {
                out.push(Ok(Bytes::copy_from_slice(&bytes[start..cut])));
                start = cut;
            }
            futures_util::stream::iter(out).boxed()
        }

        proptest! {
            /// Any bytes, cut anywhere: the demultiplexer ends without
            /// panicking, and stops at the first error.
            #[test]
            fn demultiplexing_arbitrary_bytes_never_panics(
                bytes in proptest::collection::vec(any::<u8>(), 0..300),
                cuts in proptest::collection::vec(0usize..300, 0..8),
            ) {
                let items: Vec<_> = run(demultiplex("p", pieces(bytes, cuts)).collect());
                if let Some(i) = items.iter().position(|r| r.is_err()) {
                    prop_assert_eq!(i, items.len() - 1);
                }
            }

            /// Frames written and read back: each stream's bytes, in order,
            /// however the body is cut.
            #[test]
            fn frames_round_trip(
                frames in proptest::collection::vec((1u8..=2, proptest::collection::vec(any::<u8>(), 0..40)), 0..6),
                cuts in proptest::collection::vec(0usize..400, 0..10),
            ) {
                let mut body = Vec::new();
                let (mut want_out, mut want_err) = (Vec::<u8>::new(), Vec::<u8>::new());
                for (stream, payload) in &frames {
                    body.extend(frame(*stream, payload));
                    if *stream == 1 { want_out.extend(payload) } else { want_err.extend(payload) }
                }
                let items: Vec<_> = run(demultiplex("p", pieces(body, cuts)).collect());
                let (mut out, mut err) = (Vec::<u8>::new(), Vec::<u8>::new());
                for item in items {
                    let chunk = item.unwrap();
                    match chunk.source {
                        LogSource::Stdout => out.extend_from_slice(&chunk.data),
                        LogSource::Stderr => err.extend_from_slice(&chunk.data),
                        other => prop_assert!(false, "{other:?}"),
                    }
                }
                prop_assert_eq!(out, want_out);
                prop_assert_eq!(err, want_err);
            }

            /// Any bytes as JSON lines: no panic, nothing after an error.
            #[test]
            fn json_lines_of_arbitrary_bytes_never_panic(
                bytes in proptest::collection::vec(any::<u8>(), 0..300),
                cuts in proptest::collection::vec(0usize..300, 0..8),
            ) {
                let items: Vec<Result<serde_json::Value, _>> = run(json_lines("p", pieces(bytes, cuts)).collect());
                if let Some(i) = items.iter().position(|r| r.is_err()) {
                    prop_assert_eq!(i, items.len() - 1);
                }
            }

            /// Progress objects written one per line come back as written,
            /// however the body is cut.
            #[test]
            fn json_lines_round_trip(
                statuses in proptest::collection::vec(".{0,20}", 0..6),
                cuts in proptest::collection::vec(0usize..400, 0..10),
            ) {
                let mut body = Vec::new();
                for s in &statuses {
                    body.extend(serde_json::to_vec(&serde_json::json!({"status": s})).unwrap());
                    body.push(b'\n');
                }
                let items: Vec<Result<serde_json::Value, _>> = run(json_lines("p", pieces(body, cuts)).collect());
                let got: Vec<String> = items
                    .into_iter()
                    .map(|r| r.unwrap()["status"].as_str().unwrap().to_owned())
                    .collect();
                prop_assert_eq!(got, statuses);
            }
        }
    }
}

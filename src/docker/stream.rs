//! Response streams: raw chunks, JSON lines, and demultiplexed logs.

use crate::docker::error::DockerError;
use bytes::Bytes;
use futures_util::stream::BoxStream;

pub type ByteStream = BoxStream<'static, Result<Bytes, DockerError>>;
pub type JsonStream<T> = BoxStream<'static, Result<T, DockerError>>;

//! Percent-encoding as Go's `net/url` does it: everything but RFC 3986's
//! unreserved characters is escaped. Shared by the Docker request paths and
//! queries and the worker's WebSocket query, so both peers see what the
//! reference implementations send.

pub const UNRESERVED: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

pub fn encode(s: &str) -> std::borrow::Cow<'_, str> {
    percent_encoding::utf8_percent_encode(s, UNRESERVED).into()
}

//! One type for every value that must never be printed: API keys, task
//! environment values, harness secrets, registry passwords.
//!
//! `Debug` and `Display` show a placeholder, so a stray `{:?}` of a struct
//! holding one (an assignment, a config) cannot leak it into a log, an error
//! or a panic message. Serde is transparent: the value goes on the wire and
//! into the store unchanged, because that is where it is needed. Reading the
//! value takes an explicit [`Secret::expose`].

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::fmt;

/// What `Debug` and `Display` print instead of the value.
pub const REDACTED: &str = "[redacted]";

/// A value that is never formatted. `T` is usually `String` (an API key, an
/// environment value) or `serde_json::Value` (opaque harness secrets).
#[derive(Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Secret<T = String>(T);

impl<T> Secret<T> {
    pub fn new(value: impl Into<T>) -> Self {
        Secret(value.into())
    }

    /// The value itself, for the one place that must use it (a header, an
    /// environment entry handed to a task, a request body).
    pub fn expose(&self) -> &T {
        &self.0
    }

    pub fn into_inner(self) -> T {
        self.0
    }
}

impl Secret<String> {
    /// The value as `&str` (the common case).
    pub fn expose_str(&self) -> &str {
        &self.0
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl From<String> for Secret<String> {
    fn from(s: String) -> Self {
        Secret(s)
    }
}

impl From<&str> for Secret<String> {
    fn from(s: &str) -> Self {
        Secret(s.to_string())
    }
}

impl<T> fmt::Debug for Secret<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(REDACTED)
    }
}

impl<T> fmt::Display for Secret<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(REDACTED)
    }
}

impl<T: JsonSchema> JsonSchema for Secret<T> {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        T::schema_name()
    }

    fn schema_id() -> std::borrow::Cow<'static, str> {
        T::schema_id()
    }

    fn json_schema(generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
        T::json_schema(generator)
    }

    fn inline_schema() -> bool {
        T::inline_schema()
    }
}

/// Variables that carry the orchestrator key (or where to read it): the
/// worker removes them from its environment at start, and no task program
/// gets them.
pub const SECRET_VARS: [&str; 2] = ["WARP_API_KEY", "WARP_API_KEY_FILE"];

/// The systemd credential (`LoadCredential=`) the worker reads its key from,
/// under `$CREDENTIALS_DIRECTORY`.
pub const CREDENTIAL_NAME: &str = "warp-api-key";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn never_formatted_but_serialized_verbatim() {
        let s: Secret = Secret::new("hunter2");
        assert_eq!(
            format!("{s:?} {s} {s:#?}"),
            format!("{REDACTED} {REDACTED} {REDACTED}")
        );
        assert_eq!(serde_json::to_string(&s).unwrap(), "\"hunter2\"");
        let back: Secret = serde_json::from_str("\"hunter2\"").unwrap();
        assert_eq!(back.expose_str(), "hunter2");
        let json: Secret<serde_json::Value> = serde_json::from_str(r#"{"token":"abc"}"#).unwrap();
        assert!(!format!("{json:?}").contains("abc"));
        assert_eq!(json.expose()["token"], "abc");
    }

    #[test]
    fn structs_holding_secrets_do_not_leak_through_derived_debug() {
        #[derive(Debug)]
        #[allow(dead_code)]
        struct Holder {
            env: std::collections::BTreeMap<String, Secret>,
        }
        let h = Holder {
            env: [("TOKEN".to_string(), Secret::new("s3cr3t"))].into(),
        };
        let text = format!("{h:?}");
        assert!(text.contains("TOKEN") && !text.contains("s3cr3t"), "{text}");
    }
}

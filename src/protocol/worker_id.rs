//! Rules about worker ids that both sides of the protocol enforce.

/// Ids with this prefix belong to Warp-hosted workers.
pub const RESERVED_WORKER_ID_PREFIX: &str = "warp";

/// Whether `id` is reserved for Warp-hosted workers. Case-sensitive, as the
/// Go worker checks it (`strings.HasPrefix(id, "warp")`): `Warp-1` is allowed.
pub fn is_reserved_worker_id(id: &str) -> bool {
    id.starts_with(RESERVED_WORKER_ID_PREFIX)
}

#[cfg(test)]
mod tests {
    #[test]
    fn only_the_lowercase_prefix_is_reserved() {
        for (id, reserved) in [
            ("warp", true),
            ("warp-1", true),
            ("warpdrive", true),
            ("Warp-1", false),
            ("WARP", false),
            ("my-warp", false),
            ("", false),
        ] {
            assert_eq!(super::is_reserved_worker_id(id), reserved, "{id}");
        }
    }
}

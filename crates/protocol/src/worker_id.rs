//! The one rule about worker ids that both sides enforce: the reserved
//! prefix. The worker refuses such an id at start-up and the control plane
//! refuses it at the handshake and as a run's `worker_host`.

/// Worker ids starting with this belong to Warp-hosted workers.
pub const RESERVED_WORKER_ID_PREFIX: &str = "warp";

/// Whether `id` is reserved: it starts with `warp`, compared
/// case-sensitively as the Go worker compares it, so `warp-1` is reserved
/// and `Warp-1` is not.
pub fn is_reserved_worker_id(id: &str) -> bool {
    id.starts_with(RESERVED_WORKER_ID_PREFIX)
}

#[cfg(test)]
mod tests {
    use super::is_reserved_worker_id;

    #[test]
    fn the_prefix_is_case_sensitive_as_in_the_go_worker() {
        assert!(is_reserved_worker_id("warp"));
        assert!(is_reserved_worker_id("warp-runner-1"));
        assert!(is_reserved_worker_id("warpy"));
        assert!(!is_reserved_worker_id("Warp-1"));
        assert!(!is_reserved_worker_id("WARP"));
        assert!(!is_reserved_worker_id("prod-warp"));
        assert!(!is_reserved_worker_id(""));
    }
}

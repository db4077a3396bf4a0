//! Team API keys: `ozk_` followed by 32 bytes from the kernel's CSPRNG,
//! base64url-encoded. Only the SHA-256 of a key is ever stored. Also the
//! random tokens of UI sessions and their comparison.

use base64::Engine;
use sha2::{Digest, Sha256};
use std::io::Read;

pub(crate) const KEY_PREFIX: &str = "ozk_";

/// A fresh secret. Reads `/dev/urandom` (Linux and macOS): `fastrand` is not
/// a cryptographic generator, and the standard library exposes none.
pub(crate) fn generate() -> std::io::Result<String> {
    Ok(format!("{KEY_PREFIX}{}", random_token()?))
}

/// 32 bytes from the kernel's CSPRNG, base64url without padding (43
/// characters): session ids and CSRF tokens.
pub(crate) fn random_token() -> std::io::Result<String> {
    let mut bytes = [0u8; 32];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
    Ok(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes))
}

/// Compares two secrets in time that depends only on their lengths.
pub(crate) fn same_secret(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

/// The stored form of a key.
pub(crate) fn hash(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

/// What `api-keys list` may show of a key: enough to tell keys apart.
pub(crate) fn display_prefix(secret: &str) -> String {
    secret.chars().take(KEY_PREFIX.len() + 6).collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn keys_are_unique_prefixed_and_hash_stably() {
        let a = super::generate().unwrap();
        let b = super::generate().unwrap();
        assert_ne!(a, b);
        assert!(a.starts_with("ozk_") && a.len() == 4 + 43, "{a}");
        assert_eq!(super::hash(&a), super::hash(&a));
        assert_eq!(super::hash(&a).len(), 64);
        assert!(super::same_secret(&a, &a.clone()));
        assert!(!super::same_secret(&a, &b));
        assert!(!super::same_secret(&a, &a[1..]));
    }
}

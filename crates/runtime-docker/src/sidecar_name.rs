//! Names of the volumes that hold sidecar filesystems: the image's repository
//! with characters outside `[A-Za-z0-9_.-]` mapped to `-`, then the first 12
//! hex digits of the image digest, so a new image version gets a new volume
//! and an unchanged one is reused.

pub fn sidecar_volume_name(repository: &str, image_id: &str) -> String {
    let repo: String = repository
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "_.-".contains(c) {
                c
            } else {
                '-'
            }
        })
        .collect();
    let hex = image_id.strip_prefix("sha256:").unwrap_or(image_id);
    let short: String = hex.chars().take(12).collect();
    format!("{repo}-{short}")
}

#[cfg(test)]
mod tests {
    #[test]
    fn maps_characters_and_truncates_digest() {
        assert_eq!(
            super::sidecar_volume_name(
                "127.0.0.1:5000/oz/agent-sidecar",
                "sha256:0123456789abcdef0123"
            ),
            "127.0.0.1-5000-oz-agent-sidecar-0123456789ab"
        );
    }
}

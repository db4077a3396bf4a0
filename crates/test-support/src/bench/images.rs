//! Agent sidecar images made by the benches from this checkout's demo
//! agent (`tests/fixtures/agent-sidecar/entrypoint.sh`), so a bench never
//! depends on whichever version of the shared test image another checkout
//! imported last.

use super::engine::{unique, RawEngine, RawEngineError};
use bytes::Bytes;
use oz_runtime_docker::{sidecar_volume_name, tar};
use sha2::{Digest, Sha256};

pub const ENTRYPOINT: &str = include_str!("../../../../tests/fixtures/agent-sidecar/entrypoint.sh");

/// A sidecar image and the volume the worker's copy path fills from it.
pub struct Sidecar {
    /// `repo:tag`.
    pub reference: String,
    /// `sha256:…`.
    pub id: String,
    pub volume: String,
}

/// The demo agent sidecar, tagged by the script's digest; imported when
/// absent. Its volume is filled by a worker's first task.
pub async fn demo_sidecar(engine: &RawEngine) -> Result<Sidecar, RawEngineError> {
    let tag = &hex::encode(Sha256::digest(ENTRYPOINT.as_bytes()))[..12];
    let repo = "oz-bench/agent-sidecar";
    let reference = format!("{repo}:{tag}");
    let id = match engine.image_id(&reference).await? {
        Some(id) => id,
        None => {
            let archive = tar::archive(&[("entrypoint.sh", ENTRYPOINT.as_bytes(), 0o755)]);
            engine.import_image(repo, tag, Bytes::from(archive)).await?
        }
    };
    Ok(Sidecar {
        volume: sidecar_volume_name(repo, &id),
        reference,
        id,
    })
}

/// A new sidecar image (new id, so a new volume): the demo agent plus
/// `filler` bytes.
pub async fn fresh_sidecar(engine: &RawEngine, filler: &[u8]) -> Result<Sidecar, RawEngineError> {
    let repo = format!("oz-bench/sidecar-{}", unique("s"));
    let archive = tar::archive(&[
        ("entrypoint.sh", ENTRYPOINT.as_bytes(), 0o755),
        ("unique", repo.as_bytes(), 0o644),
        ("filler", filler, 0o644),
    ]);
    let id = engine
        .import_image(&repo, "latest", Bytes::from(archive))
        .await?;
    Ok(Sidecar {
        reference: format!("{repo}:latest"),
        volume: sidecar_volume_name(&repo, &id),
        id,
    })
}

/// Removes a fresh sidecar's image and volume.
pub async fn remove(engine: &RawEngine, s: &Sidecar) {
    let _ = engine.volume_remove(&s.volume).await;
    let _ = engine.remove_image(&s.reference).await;
}

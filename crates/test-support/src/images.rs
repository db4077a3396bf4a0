//! Images made at test time (so each test's starts absent everywhere).

use futures_util::StreamExt;
use oz_docker_engine::params::*;
use oz_docker_engine::Docker;
use oz_runtime_docker::{sidecar_volume_name, tar};

use super::worker::unique_id;

pub const ENTRYPOINT: &str = include_str!("../../../tests/fixtures/agent-sidecar/entrypoint.sh");

/// Imports a sidecar image no other test uses, so its volume starts absent,
/// with `padding` bytes of incompressible filler (a large sidecar takes
/// long enough to copy for a test to act during the copy).
/// Returns (reference, volume name).
pub async fn fresh_sidecar_of(d: &Docker, padding: usize) -> (String, String) {
    fresh_sidecar_with(d, ENTRYPOINT, padding).await
}

/// A fresh sidecar whose agent runs the shell text in the task's
/// `OZ_TEST_SCRIPT` variable (`sh -c`), so a test can make the task do
/// anything the task image's busybox can. Returns (reference, volume name).
pub async fn script_sidecar(d: &Docker) -> (String, String) {
    fresh_sidecar_with(d, "#!/bin/sh\nexec sh -c \"$OZ_TEST_SCRIPT\"\n", 0).await
}

/// A fresh sidecar image with `entrypoint` as its `/entrypoint.sh`.
pub async fn fresh_sidecar_with(d: &Docker, entrypoint: &str, padding: usize) -> (String, String) {
    // Podman 4's import ignores `tag`: make the repository unique instead.
    let tag = "latest".to_string();
    let repo = format!("oz-test/sidecar-{}", unique_id("s"));
    let filler: Vec<u8> = (0..padding).map(|_| fastrand::u8(..)).collect();
    let mut files: Vec<(&str, &[u8], u32)> = vec![
        ("entrypoint.sh", entrypoint.as_bytes(), 0o755),
        ("unique", repo.as_bytes(), 0o644),
    ];
    if padding > 0 {
        files.push(("filler", &filler, 0o644));
    }
    let archive = tar::archive(&files);
    let body = futures_util::stream::once(async move { Ok(bytes::Bytes::from(archive)) }).boxed();
    let params = ImageCreateParams {
        from_src: Some("-".into()),
        repo: Some(repo.clone()),
        tag: Some(tag.clone()),
        ..Default::default()
    };
    let mut progress = d.image_create(&params, Some(body)).await.unwrap();
    while let Some(item) = progress.next().await {
        item.unwrap();
    }
    let reference = format!("{repo}:{tag}");
    let id = d
        .image_inspect(&reference, &Default::default())
        .await
        .unwrap()
        .id;
    (reference.clone(), sidecar_volume_name(&repo, &id))
}

/// A small fresh sidecar.
pub async fn fresh_sidecar(d: &Docker) -> (String, String) {
    fresh_sidecar_of(d, 0).await
}

/// Removes the test's sidecar volume and image (the tests make new ones each run).
pub async fn remove_sidecar(d: &Docker, image: &str, volume: &str) {
    let _ = d
        .volume_delete(volume, &VolumeDeleteParams { force: Some(true) })
        .await;
    let _ = d
        .image_delete(
            image,
            &ImageDeleteParams {
                force: Some(true),
                ..Default::default()
            },
        )
        .await;
}

/// Tags `source` as `<repo>:<fresh tag>`, pushes it with `x_registry_auth`
/// (the `X-Registry-Auth` header's value: base64 of the auth config JSON,
/// `e30=` for none) and removes the local tag, so the image then exists
/// only in the registry. Returns the pushed reference; panics when a step
/// fails.
pub async fn push_only(d: &Docker, source: &str, repo: &str, x_registry_auth: String) -> String {
    let tag = unique_id("t");
    d.image_tag(
        source,
        &ImageTagParams {
            repo: Some(repo.to_string()),
            tag: Some(tag.clone()),
        },
    )
    .await
    .unwrap();
    let params = ImagePushParams {
        tag: Some(tag.clone()),
        x_registry_auth,
        ..Default::default()
    };
    let mut progress = d.image_push(repo, &params).await.unwrap();
    while let Some(item) = progress.next().await {
        item.expect("push succeeds");
    }
    let reference = format!("{repo}:{tag}");
    d.image_delete(&reference, &ImageDeleteParams::default())
        .await
        .unwrap();
    reference
}

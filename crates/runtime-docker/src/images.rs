//! Task and sidecar images: the pull policy, the pull itself (with registry
//! credentials, for the daemon's platform, in-band errors caught) and the
//! platform check of what we got.

use super::failure::Fail;
use super::DockerRuntime;
use futures_util::StreamExt;
use oz_docker_engine::credentials;
use oz_docker_engine::models::ImageInspect;
use oz_foundation::image_reference::ImageRef;
use oz_protocol::FailureReason;
use oz_runtime::PullPolicy;

#[derive(Debug, Clone)]
pub struct ImageInfo {
    /// As the task named it.
    pub reference: String,
    pub parsed: ImageRef,
    /// `sha256:…` image id.
    pub id: String,
}

pub async fn ensure(rt: &DockerRuntime, image: &str) -> Result<ImageInfo, Fail> {
    let parsed = ImageRef::parse(image)
        .map_err(|e| Fail::new(FailureReason::InvalidImage, e.to_string()))?;
    let present = match rt.settings.pull_policy {
        PullPolicy::Always => None,
        PullPolicy::IfNotPresent | PullPolicy::Never => inspect(rt, image).await?,
    };
    let inspected = match (present, rt.settings.pull_policy) {
        (Some(found), _) => found,
        (None, PullPolicy::Never) => {
            return Err(Fail::new(
                FailureReason::ImagePull,
                format!(
                    "image {image} is not present on the daemon and the pull policy is \"never\": \
                     load it first (docker pull / docker load) or use --pull-policy if-not-present"
                ),
            ))
        }
        (None, _) => {
            pull(rt, image, &parsed).await?;
            inspect(rt, image).await?.ok_or_else(|| {
                Fail::new(
                    FailureReason::ImagePull,
                    format!("image {image} was pulled but the daemon cannot find it"),
                )
            })?
        }
    };
    let (os, arch) = (&inspected.os, &inspected.architecture);
    if *os != rt.os || *arch != rt.arch {
        return Err(Fail::new(
            FailureReason::ImagePull,
            format!("image {image} is for {os}/{arch} but the daemon runs {}: use an image built for {}", rt.platform(), rt.platform()),
        ));
    }
    Ok(ImageInfo {
        reference: image.to_string(),
        parsed,
        id: inspected.id,
    })
}

async fn inspect(rt: &DockerRuntime, image: &str) -> Result<Option<ImageInspect>, Fail> {
    match rt.docker.image_inspect(image, &Default::default()).await {
        Ok(i) => Ok(Some(i)),
        Err(e) if e.status().map(|s| s.as_u16()) == Some(404) => Ok(None),
        Err(e) => Err(Fail::new(
            FailureReason::ImagePull,
            format!("cannot inspect image {image}: {e}"),
        )),
    }
}

async fn pull(rt: &DockerRuntime, image: &str, parsed: &ImageRef) -> Result<(), Fail> {
    let key = parsed.registry_auth_key();
    let lookup = |name: &str| std::env::var(name).ok();
    let resolved = credentials::resolve(&key, &lookup).await;
    if let Some(problem) = &resolved.problem {
        // As `docker pull` and the Go worker: warn, pull without credentials.
        tracing::warn!(
            image,
            "{problem}; pulling without credentials, as docker pull does"
        );
    }
    let auth = resolved.auth.as_ref();
    let source = resolved.describe();
    let pull = parsed.name_for_pull();
    let params = oz_docker_engine::params::ImageCreateParams {
        from_image: Some(pull.from_image),
        tag: Some(pull.tag),
        platform: Some(rt.platform()),
        x_registry_auth: auth.map(|a| a.header_value()),
        ..Default::default()
    };
    tracing::info!(image, credentials = %source, "pulling image for {}", rt.platform());
    let result = async {
        let mut progress = rt.docker.image_create(&params, None).await?;
        while let Some(item) = progress.next().await {
            let item = item?;
            tracing::debug!(
                image,
                status = item.status.as_deref().unwrap_or(""),
                id = item.id.as_deref().unwrap_or(""),
                "pull progress"
            );
        }
        Ok::<(), oz_docker_engine::DockerError>(())
    }
    .await;
    result.map_err(|e| classify_pull_error(image, parsed, &source, auth.is_some(), e.message()))
}

/// Turns the daemon's words into what went wrong and what to do, never
/// repeating a credential (the daemon does not echo them either).
fn classify_pull_error(
    image: &str,
    parsed: &ImageRef,
    source: &str,
    sent_credentials: bool,
    daemon: &str,
) -> Fail {
    let lower = daemon.to_ascii_lowercase();
    let registry = &parsed.registry;
    let message = if lower.contains("unauthorized")
        || lower.contains("no basic auth credentials")
        || lower.contains("authentication required")
        || lower.contains("denied") && !lower.contains("repository does not exist")
    {
        if sent_credentials {
            format!(
                "cannot pull {image}: registry {registry} refused the credentials (used: {source}). \
                 Check them with `docker login {registry}`. Daemon said: {daemon}"
            )
        } else {
            format!(
                "cannot pull {image}: registry {registry} wants credentials and none were sent \
                 ({source}). Log in with `docker login {registry}` as the worker's user, or fix \
                 the credential helper. Daemon said: {daemon}"
            )
        }
    } else if lower.contains("not found")
        || lower.contains("manifest unknown")
        || lower.contains("does not exist")
    {
        format!(
            "cannot pull {image}: not found in registry {registry} (check the name and tag; credentials used: {source}). \
             Daemon said: {daemon}"
        )
    } else if lower.contains("connection refused")
        || lower.contains("no such host")
        || lower.contains("i/o timeout")
        || lower.contains("dial tcp")
        || lower.contains("network is unreachable")
        || lower.contains("tls handshake timeout")
    {
        format!(
            "cannot pull {image}: registry {registry} is unreachable from the daemon. \
             Check the registry address and the daemon's network/proxy settings, or pre-load the image and use \
             --pull-policy if-not-present. Daemon said: {daemon}"
        )
    } else {
        format!("cannot pull {image}: {daemon}")
    };
    Fail::new(FailureReason::ImagePull, message)
}

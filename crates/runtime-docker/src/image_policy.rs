//! Which images and pull policies tasks may use: `backend.docker.allowed_images`
//! and `backend.docker.allowed_pull_policies`, as GitLab Runner's Docker
//! executor has them (`[runners.docker] allowed_images`,
//! `allowed_pull_policies`).
//!
//! Patterns are [`Glob`]s over the *normalised* reference
//! (`docker.io/library/debian:12`, see [`ImageRef::canonical`]), so `debian`,
//! `library/debian` and `docker.io/library/debian:latest` are judged alike
//! and a short name cannot slip past a pattern written for its registry.
//! A task whose image or any sidecar image matches no pattern fails before
//! anything is pulled or created, with reason `invalid_image`.

use super::glob::Glob;
use super::InvalidSetting;
use oz_foundation::image_reference::{ImageRef, InvalidReference};
use oz_runtime::PullPolicy;

/// `allowed_images`; empty = every image allowed (GitLab's rule too).
#[derive(Debug, Clone, Default)]
pub struct AllowedImages {
    patterns: Vec<Glob>,
}

impl AllowedImages {
    /// Checks each pattern; errors name `backend.docker.allowed_images[i]`.
    /// A pattern that cannot match any normalised reference (no `/`, no
    /// `**`: written as a short name such as `debian:*`) is refused with
    /// the normalised form to write instead.
    pub fn resolve(patterns: &[String]) -> Result<AllowedImages, InvalidSetting> {
        let mut globs = Vec::with_capacity(patterns.len());
        for (i, p) in patterns.iter().enumerate() {
            let key = format!("backend.docker.allowed_images[{i}]");
            let p = p.trim();
            if p.is_empty() {
                return Err(InvalidSetting::new(
                    key,
                    "empty pattern; remove it, or write one such as docker.io/library/*",
                ));
            }
            let glob = Glob::new(p).map_err(|e| InvalidSetting::new(&key, e.to_string()))?;
            if !glob.can_match_at_least(2) {
                let hint = ImageRef::parse(p.replace(['*', '?'], "x").as_str())
                    .map(|r| format!(" (such as {})", r.name()))
                    .unwrap_or_default();
                return Err(InvalidSetting::new(
                    key,
                    format!(
                        "{p:?} can never match: patterns are matched against the normalised reference, \
                         registry and namespace included (docker.io/library/debian:12); write the full name{hint}, \
                         e.g. docker.io/library/* or registry.example:5000/team/**"
                    ),
                ));
            }
            globs.push(glob);
        }
        Ok(AllowedImages { patterns: globs })
    }

    /// Whether any pattern is set (else every image is allowed).
    pub fn is_restricted(&self) -> bool {
        !self.patterns.is_empty()
    }

    /// The patterns as the operator wrote them, for messages: `[a, b]`.
    pub fn describe(&self) -> String {
        let list: Vec<&str> = self.patterns.iter().map(|g| g.pattern.as_str()).collect();
        format!("[{}]", list.join(", "))
    }

    /// `Ok` when `image` (as the assignment named it) is allowed; else why
    /// not. `what` says which image it is (`the task image`, `sidecar image`).
    pub fn check(&self, image: &str, what: &'static str) -> Result<(), ImageRefused> {
        if self.patterns.is_empty() {
            return Ok(());
        }
        let parsed = ImageRef::parse(image).map_err(ImageRefused::Invalid)?;
        let normalised = parsed.canonical();
        if self.patterns.iter().any(|g| g.matches(&normalised)) {
            return Ok(());
        }
        Err(ImageRefused::NotAllowed {
            what,
            image: image.to_string(),
            normalised,
            patterns: self.describe(),
        })
    }
}

/// Why [`AllowedImages::check`] refused an image. Display names the image,
/// its normalised form and the pattern list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImageRefused {
    /// Not a reference at all, so it cannot be judged.
    Invalid(InvalidReference),
    NotAllowed {
        /// `the task image`, `sidecar image`.
        what: &'static str,
        image: String,
        normalised: String,
        /// `[a, b]`.
        patterns: String,
    },
}

impl std::fmt::Display for ImageRefused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ImageRefused::Invalid(e) => e.fmt(f),
            ImageRefused::NotAllowed {
                what,
                image,
                normalised,
                patterns,
            } => write!(
                f,
                "{what} {image} ({normalised}) is not allowed on this worker: it matches none of \
                 backend.docker.allowed_images {patterns}; use an allowed image or ask the operator to add a pattern"
            ),
        }
    }
}

impl std::error::Error for ImageRefused {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ImageRefused::Invalid(e) => Some(e),
            ImageRefused::NotAllowed { .. } => None,
        }
    }
}

/// The names `pull_policy` takes, for messages.
pub fn policy_name(p: PullPolicy) -> &'static str {
    match p {
        PullPolicy::Always => "always",
        PullPolicy::IfNotPresent => "if-not-present",
        PullPolicy::Never => "never",
    }
}

/// `allowed_pull_policies`: the policies tasks may be pulled with. GitLab's
/// rule: unset = only the configured one. The assignment carries no pull
/// policy today, so what this checks is the worker's own: the configured
/// policy (`--pull-policy`, `backend.docker.pull_policy`) must be listed.
/// `source` names where the configured policy came from.
pub fn check_pull_policy(
    allowed: Option<&[String]>,
    configured: PullPolicy,
    source: &str,
) -> Result<Vec<PullPolicy>, InvalidSetting> {
    let Some(allowed) = allowed else {
        return Ok(vec![configured]);
    };
    let key = "backend.docker.allowed_pull_policies";
    if allowed.is_empty() {
        return Err(InvalidSetting::new(
            key,
            format!(
                "the list is empty, so no image could ever be fetched or used; list at least the policy in use ({})",
                policy_name(configured)
            ),
        ));
    }
    let parsed = allowed
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let item = format!("{key}[{i}]");
            PullPolicy::parse(s.trim(), &item)
        })
        .collect::<Result<Vec<_>, _>>()?;
    if !parsed.contains(&configured) {
        let names: Vec<&str> = parsed.iter().map(|p| policy_name(*p)).collect();
        return Err(InvalidSetting::new(
            key,
            format!(
                "the pull policy in use, {} ({source}), is not in the allowed list [{}]; \
                 set pull_policy to one of them or add {} to the list",
                policy_name(configured),
                names.join(", "),
                policy_name(configured)
            ),
        ));
    }
    Ok(parsed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn allowed(patterns: &[&str]) -> AllowedImages {
        AllowedImages::resolve(&patterns.iter().map(|p| p.to_string()).collect::<Vec<_>>()).unwrap()
    }

    #[test]
    fn images_are_judged_by_their_normalised_reference() {
        let a = allowed(&["docker.io/library/*", "127.0.0.1:5000/oz/**"]);
        for image in [
            "busybox",
            "busybox:1.36",
            "library/busybox",
            "docker.io/library/busybox:latest",
            "index.docker.io/library/busybox",
            "127.0.0.1:5000/oz/busybox:1",
            "127.0.0.1:5000/oz/team/agent:2",
        ] {
            assert!(a.check(image, "image").is_ok(), "{image}");
        }
        for image in [
            "someone/busybox",
            "127.0.0.1:5000/other/busybox:1",
            "127.0.0.1:5001/oz/busybox:1",
            "oz-test/busybox:latest",
        ] {
            let e = a.check(image, "the task image").unwrap_err().to_string();
            assert!(
                e.contains(image)
                    && e.contains("[docker.io/library/*, 127.0.0.1:5000/oz/**]")
                    && e.contains("backend.docker.allowed_images"),
                "{e}"
            );
        }
        let e = a
            .check("oz-test/busybox:latest", "image")
            .unwrap_err()
            .to_string();
        assert!(e.contains("(docker.io/oz-test/busybox:latest)"), "{e}");
        assert!(AllowedImages::default().check("anything", "image").is_ok());
    }

    #[test]
    fn patterns_that_cannot_match_are_refused_at_start_up() {
        let e = AllowedImages::resolve(&["docker.io/*".into(), "debian:*".into()])
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("backend.docker.allowed_images[1]: \"debian:*\" can never match")
                && e.contains("docker.io/library/debian"),
            "{e}"
        );
        let e = AllowedImages::resolve(&["docker.io/[x".into()])
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("backend.docker.allowed_images[0]"), "{e}");
    }

    #[test]
    fn the_pull_policy_in_use_must_be_allowed() {
        let list = |s: &[&str]| s.iter().map(|p| p.to_string()).collect::<Vec<_>>();
        assert_eq!(
            check_pull_policy(None, PullPolicy::Never, "--pull-policy"),
            Ok(vec![PullPolicy::Never])
        );
        assert_eq!(
            check_pull_policy(
                Some(&list(&["never", "if-not-present"])),
                PullPolicy::IfNotPresent,
                "x"
            ),
            Ok(vec![PullPolicy::Never, PullPolicy::IfNotPresent])
        );
        let e = check_pull_policy(Some(&list(&["never"])), PullPolicy::Always, "the default")
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("backend.docker.allowed_pull_policies: the pull policy in use, always (the default), is not in the allowed list [never]"),
            "{e}"
        );
        let e = check_pull_policy(Some(&list(&["never", "sometimes"])), PullPolicy::Never, "x")
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("backend.docker.allowed_pull_policies[1]: unknown pull policy"),
            "{e}"
        );
        assert!(check_pull_policy(Some(&[]), PullPolicy::Never, "x").is_err());
    }
}

//! Image references, parsed and normalised the way Docker does it (the
//! reference grammar of the distribution project, `ParseNormalizedNamed`
//! followed by `TagNameOnly`), so that the image we pull and the registry we
//! ask for credentials are the ones `docker pull` would use.
//!
//! ```text
//! reference  := name [ ":" tag ] [ "@" digest ]
//! name       := [ registry "/" ] path
//! registry   := host [ ":" port ]          host: DNS name, IPv4, or [IPv6]
//! path       := component ( "/" component )*
//! component  := [a-z0-9]+ ( separator [a-z0-9]+ )*   separator: . _ __ -+
//! tag        := [A-Za-z0-9_] [A-Za-z0-9_.-]{0,127}
//! digest     := algorithm ":" hex                   sha256:<64 hex>, ...
//! ```
//!
//! Normalisation: a first component is a registry only when it contains `.`
//! or `:`, is `localhost`, or has an uppercase letter (upstream's rule: a
//! namespace may not be uppercase, so it must be a host); otherwise the image
//! is on Docker Hub (`docker.io`), and a single-component Hub name gets the
//! `library/` namespace. `index.docker.io` is an alias of `docker.io`.
//!
//! Deliberate deviation: where the first component looks like a host but is
//! not a valid one (`foo_bar.com/x`), upstream silently parses the whole name
//! as a path with an *empty* registry, which no daemon can pull; we refuse it.

use std::fmt;
use std::str::FromStr;

/// Docker Hub's registry name in normalised references.
pub const DOCKER_HUB_REGISTRY: &str = "docker.io";
/// The legacy name of Docker Hub, accepted and normalised to `docker.io`.
pub const LEGACY_DOCKER_HUB_REGISTRY: &str = "index.docker.io";
/// The key Docker uses for Docker Hub credentials (`auths`, helpers).
pub const DOCKER_HUB_AUTH_KEY: &str = "https://index.docker.io/v1/";
/// The namespace of Docker Hub's official images.
const OFFICIAL_NAMESPACE: &str = "library/";
/// Longest repository path (the part after the registry), as upstream.
pub const MAX_REPOSITORY_LEN: usize = 255;
const MAX_TAG_LEN: usize = 128;
const DEFAULT_TAG: &str = "latest";

/// A parsed, normalised image reference.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ImageRef {
    /// `docker.io` for Docker Hub, else the registry as written: `host[:port]`.
    pub registry: String,
    /// The path within the registry, e.g. `library/ubuntu`.
    pub repository: String,
    pub tag: Option<String>,
    /// `algorithm:hex`, e.g. `sha256:` followed by 64 hex digits.
    pub digest: Option<String>,
}

/// What to give `POST /images/create`: `fromImage` and `tag`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PullParams {
    /// The repository with its registry: `docker.io/library/ubuntu`.
    pub from_image: String,
    /// The digest if there is one (it pins the content), else the tag, else
    /// `latest` — as the Docker CLI sends it.
    pub tag: String,
}

impl ImageRef {
    /// Parses and normalises `input`, e.g. `ubuntu` →
    /// `docker.io/library/ubuntu` (tag left unset; see [`ImageRef::canonical`]).
    pub fn parse(input: &str) -> Result<ImageRef, InvalidReference> {
        parse(input, true).map_err(|problem| InvalidReference {
            reference: input.to_owned(),
            problem,
        })
    }

    pub fn is_docker_hub(&self) -> bool {
        self.registry == DOCKER_HUB_REGISTRY
    }

    /// The full repository name: `docker.io/library/ubuntu`.
    pub fn name(&self) -> String {
        format!("{}/{}", self.registry, self.repository)
    }

    /// The name as Docker shows it: `ubuntu`, `user/app`, `host:5000/app`.
    pub fn familiar_name(&self) -> String {
        if !self.is_docker_hub() {
            return self.name();
        }
        match self.repository.strip_prefix(OFFICIAL_NAMESPACE) {
            Some(rest) if !rest.contains('/') => rest.to_owned(),
            _ => self.repository.clone(),
        }
    }

    /// The reference as Docker shows it, with the tag and digest as given:
    /// `ubuntu:22.04`, `host:5000/app@sha256:…`.
    pub fn familiar(&self) -> String {
        self.with_suffix(self.familiar_name(), self.tag.as_deref())
    }

    /// The fully qualified reference, with `latest` when neither a tag nor a
    /// digest was given: `docker.io/library/ubuntu:latest`.
    pub fn canonical(&self) -> String {
        let tag = match (&self.tag, &self.digest) {
            (None, None) => Some(DEFAULT_TAG),
            (tag, _) => tag.as_deref(),
        };
        self.with_suffix(self.name(), tag)
    }

    /// The `fromImage` and `tag` query parameters for pulling this image.
    pub fn name_for_pull(&self) -> PullParams {
        let tag = self
            .digest
            .as_deref()
            .or(self.tag.as_deref())
            .unwrap_or(DEFAULT_TAG);
        PullParams {
            from_image: self.name(),
            tag: tag.to_owned(),
        }
    }

    /// The key under which Docker stores this registry's credentials:
    /// `https://index.docker.io/v1/` for Docker Hub, else `host[:port]`.
    pub fn registry_auth_key(&self) -> String {
        if self.is_docker_hub() {
            DOCKER_HUB_AUTH_KEY.to_owned()
        } else {
            self.registry.clone()
        }
    }

    fn with_suffix(&self, mut name: String, tag: Option<&str>) -> String {
        if let Some(tag) = tag {
            name.push(':');
            name.push_str(tag);
        }
        if let Some(digest) = &self.digest {
            name.push('@');
            name.push_str(digest);
        }
        name
    }
}

impl fmt::Display for ImageRef {
    /// The canonical form (see [`ImageRef::canonical`]).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.canonical())
    }
}

impl FromStr for ImageRef {
    type Err = InvalidReference;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        ImageRef::parse(s)
    }
}

/// A reference that cannot be pulled; Display names it, says what is wrong
/// and how to write it instead.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidReference {
    pub reference: String,
    pub problem: ReferenceProblem,
}

/// What is wrong with a reference (one variant per rule of the grammar).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReferenceProblem {
    Empty,
    /// 64 hex digits alone: an image ID, which a pull cannot use.
    ImageId,
    /// The repository path has uppercase letters; `suggestion` is the
    /// reference lowercased where it must be, when that is a valid
    /// reference (`Holdout/Task:1` → `holdout/task:1`).
    Uppercase {
        suggestion: Option<String>,
    },
    /// Nothing before the `:tag` or `@digest`.
    MissingName,
    /// Only a bracketed IPv6 registry, with no repository path after it.
    RegistryWithoutRepository(String),
    InvalidRegistry(String),
    EmptyPathComponent,
    InvalidPathComponent(String),
    RepositoryTooLong(usize),
    InvalidTag(String),
    InvalidDigest(String),
    UnsupportedDigestAlgorithm(String),
    /// The digest's hex part has the wrong length or uppercase digits.
    BadDigestHex {
        algorithm: String,
        expected_len: usize,
    },
}

impl fmt::Display for InvalidReference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid image reference {:?}: ", self.reference)?;
        match &self.problem {
            ReferenceProblem::Empty => {
                f.write_str("the reference is empty; name an image such as \"ubuntu:22.04\"")
            }
            ReferenceProblem::ImageId => f.write_str(
                "64 hex digits are an image ID, not a repository name; \
                 name the image instead, e.g. \"ubuntu@sha256:<digest>\"",
            ),
            ReferenceProblem::Uppercase {
                suggestion: Some(suggestion),
            } => write!(
                f,
                "repository name must be lowercase (did you mean {suggestion:?}?)"
            ),
            ReferenceProblem::Uppercase { suggestion: None } => f.write_str(
                "repository name must be lowercase letters, digits and separators \
                 (\".\", \"_\", \"__\", \"-\")",
            ),
            ReferenceProblem::MissingName => f.write_str(
                "the repository name is missing; write it before the tag or digest, \
                 e.g. \"ubuntu:22.04\"",
            ),
            ReferenceProblem::RegistryWithoutRepository(registry) => write!(
                f,
                "{registry:?} names only a registry; add the repository path, \
                 e.g. \"{registry}/team/image:tag\""
            ),
            ReferenceProblem::InvalidRegistry(host) => write!(
                f,
                "registry {host:?} is not a valid host: use a DNS name, an IPv4 \
                 address or a bracketed IPv6 address, optionally followed by :port"
            ),
            ReferenceProblem::EmptyPathComponent => f.write_str(
                "the repository path has an empty component; remove the doubled \
                 or trailing \"/\"",
            ),
            ReferenceProblem::InvalidPathComponent(component) => write!(
                f,
                "path component {component:?} is not valid: use lowercase letters and \
                 digits, separated by \".\", \"_\", \"__\" or dashes, starting and \
                 ending with a letter or digit"
            ),
            ReferenceProblem::RepositoryTooLong(len) => write!(
                f,
                "the repository path is {len} characters long; at most \
                 {MAX_REPOSITORY_LEN} are allowed"
            ),
            ReferenceProblem::InvalidTag(tag) => write!(
                f,
                "tag {tag:?} is not valid: a tag is 1 to {MAX_TAG_LEN} letters, digits, \
                 \"_\", \".\" or \"-\" and must not start with \".\" or \"-\""
            ),
            ReferenceProblem::InvalidDigest(digest) => write!(
                f,
                "digest {digest:?} is not valid: write it as <algorithm>:<hex>, \
                 e.g. sha256: followed by 64 hex digits"
            ),
            ReferenceProblem::UnsupportedDigestAlgorithm(algorithm) => write!(
                f,
                "digest algorithm {algorithm:?} is not supported; use sha256, sha384 or sha512"
            ),
            ReferenceProblem::BadDigestHex {
                algorithm,
                expected_len,
            } => write!(
                f,
                "a {algorithm} digest must be exactly {expected_len} lowercase hex digits"
            ),
        }
    }
}

impl std::error::Error for InvalidReference {}

/// `suggest`: compute a lowercase suggestion for an uppercase path (off
/// when checking a suggestion, so the check cannot recurse).
fn parse(input: &str, suggest: bool) -> Result<ImageRef, ReferenceProblem> {
    if input.is_empty() {
        return Err(ReferenceProblem::Empty);
    }
    if input.len() == 64
        && input
            .bytes()
            .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    {
        return Err(ReferenceProblem::ImageId);
    }

    // '@' appears nowhere but before the digest; ':' in a name only inside the
    // registry, which is always followed by a '/', so a last ':' with no '/'
    // after it starts the tag.
    let (name_and_tag, digest) = match input.split_once('@') {
        Some((rest, digest)) => (rest, Some(digest)),
        None => (input, None),
    };
    if name_and_tag.starts_with('[') && !name_and_tag.contains('/') {
        return Err(ReferenceProblem::RegistryWithoutRepository(
            name_and_tag.to_owned(),
        ));
    }
    let (name, tag) = match name_and_tag.rsplit_once(':') {
        Some((name, tag)) if !tag.contains('/') => (name, Some(tag)),
        _ => (name_and_tag, None),
    };
    if name.is_empty() {
        return Err(ReferenceProblem::MissingName);
    }

    let (registry, written_registry, path) = split_registry(name);
    if path.chars().any(|c| c.is_uppercase()) {
        return Err(ReferenceProblem::Uppercase {
            suggestion: suggest
                .then(|| lowercase_suggestion(input, name, written_registry, path))
                .flatten(),
        });
    }

    if written_registry.is_some() && !is_valid_registry(&registry) {
        return Err(ReferenceProblem::InvalidRegistry(registry));
    }
    for component in path.split('/') {
        if component.is_empty() {
            return Err(ReferenceProblem::EmptyPathComponent);
        }
        if !is_valid_path_component(component) {
            return Err(ReferenceProblem::InvalidPathComponent(component.to_owned()));
        }
    }
    let repository = if registry == DOCKER_HUB_REGISTRY && !path.contains('/') {
        format!("{OFFICIAL_NAMESPACE}{path}")
    } else {
        path.to_owned()
    };
    if repository.len() > MAX_REPOSITORY_LEN {
        return Err(ReferenceProblem::RepositoryTooLong(repository.len()));
    }

    if let Some(tag) = tag {
        if !is_valid_tag(tag) {
            return Err(ReferenceProblem::InvalidTag(tag.to_owned()));
        }
    }
    if let Some(digest) = digest {
        validate_digest(digest)?;
    }

    Ok(ImageRef {
        registry,
        repository,
        tag: tag.map(str::to_owned),
        digest: digest.map(str::to_owned),
    })
}

/// The reference with its repository path lowercased, if that is a valid
/// reference. A first component taken for a registry only because it has
/// an uppercase letter (no `.` or `:`, not `localhost`: `Holdout/Task`) was
/// meant as a namespace, so it is lowercased too; a real host is kept as
/// written (host names are case-insensitive).
fn lowercase_suggestion(
    input: &str,
    name: &str,
    written_registry: Option<&str>,
    path: &str,
) -> Option<String> {
    let prefix = match written_registry {
        Some(r) if is_host_by_form(r) => format!("{r}/"),
        Some(r) => format!("{}/", r.to_lowercase()),
        None => String::new(),
    };
    let suffix = &input[name.len()..];
    let candidate = format!("{prefix}{}{suffix}", path.to_lowercase());
    parse(&candidate, false).is_ok().then_some(candidate)
}

/// A first component that names a host by its form: `localhost`, or
/// containing `.` or `:` (upstream's rule, less its uppercase clause).
fn is_host_by_form(first: &str) -> bool {
    first == "localhost" || first.contains(['.', ':'])
}

/// Splits a name (without tag or digest) into the normalised registry, the
/// registry as written (when one was written), and the path.
fn split_registry(name: &str) -> (String, Option<&str>, &str) {
    let Some((first, rest)) = name.split_once('/') else {
        return (DOCKER_HUB_REGISTRY.to_owned(), None, name);
    };
    let is_host = is_host_by_form(first) || first.chars().any(|c| c.is_ascii_uppercase());
    if !is_host {
        return (DOCKER_HUB_REGISTRY.to_owned(), None, name);
    }
    let registry = if first == LEGACY_DOCKER_HUB_REGISTRY {
        DOCKER_HUB_REGISTRY
    } else {
        first
    };
    (registry.to_owned(), Some(first), rest)
}

/// `host[:port]`: a DNS name or IPv4 address (dot-separated labels of ASCII
/// letters, digits and inner dashes) or a bracketed IPv6 address.
fn is_valid_registry(registry: &str) -> bool {
    let (host, port) = if let Some(after_bracket) = registry.strip_prefix('[') {
        let Some((inside, after)) = after_bracket.split_once(']') else {
            return false;
        };
        let ipv6_ok =
            !inside.is_empty() && inside.bytes().all(|b| b.is_ascii_hexdigit() || b == b':');
        if !ipv6_ok {
            return false;
        }
        match after {
            "" => return true,
            _ => match after.strip_prefix(':') {
                Some(port) => ("", Some(port)),
                None => return false,
            },
        }
    } else {
        match registry.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (registry, None),
        }
    };
    if let Some(port) = port {
        if port.is_empty() || !port.bytes().all(|b| b.is_ascii_digit()) {
            return false;
        }
    }
    if registry.starts_with('[') {
        return true;
    }
    host.split('.').all(|label| {
        let bytes = label.as_bytes();
        !bytes.is_empty()
            && bytes
                .iter()
                .all(|b| b.is_ascii_alphanumeric() || *b == b'-')
            && bytes[0] != b'-'
            && bytes[bytes.len() - 1] != b'-'
    })
}

/// `[a-z0-9]+` runs joined by exactly one of: `.`, `_`, `__`, or any number
/// of dashes.
fn is_valid_path_component(component: &str) -> bool {
    let bytes = component.as_bytes();
    let is_alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    let mut i = 0;
    loop {
        // A run of alphanumerics.
        let start = i;
        while i < bytes.len() && is_alnum(bytes[i]) {
            i += 1;
        }
        if i == start {
            return false;
        }
        if i == bytes.len() {
            return true;
        }
        // One separator.
        match bytes[i] {
            b'.' => i += 1,
            b'_' => {
                i += 1;
                if bytes.get(i) == Some(&b'_') {
                    i += 1;
                }
            }
            b'-' => {
                while bytes.get(i) == Some(&b'-') {
                    i += 1;
                }
            }
            _ => return false,
        }
    }
}

fn is_word_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_'
}

fn is_valid_tag(tag: &str) -> bool {
    let bytes = tag.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= MAX_TAG_LEN
        && is_word_byte(bytes[0])
        && bytes[1..]
            .iter()
            .all(|&b| is_word_byte(b) || b == b'.' || b == b'-')
}

/// Upstream first checks the generic digest grammar, then that the algorithm
/// is one it knows and the hex is lowercase and of the algorithm's length.
fn validate_digest(digest: &str) -> Result<(), ReferenceProblem> {
    let invalid = || ReferenceProblem::InvalidDigest(digest.to_owned());
    let (algorithm, hex) = digest.split_once(':').ok_or_else(invalid)?;
    let algorithm_ok = !algorithm.is_empty()
        && algorithm.split(['-', '_', '+', '.']).all(|part| {
            let mut bytes = part.bytes();
            bytes.next().is_some_and(|b| b.is_ascii_alphabetic())
                && bytes.all(|b| b.is_ascii_alphanumeric())
        });
    if !algorithm_ok || hex.len() < 32 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(invalid());
    }
    let expected_len = match algorithm {
        "sha256" => 64,
        "sha384" => 96,
        "sha512" => 128,
        other => {
            return Err(ReferenceProblem::UnsupportedDigestAlgorithm(
                other.to_owned(),
            ))
        }
    };
    if hex.len() != expected_len || hex.bytes().any(|b| b.is_ascii_uppercase()) {
        return Err(ReferenceProblem::BadDigestHex {
            algorithm: algorithm.to_owned(),
            expected_len,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHA: &str = "sha256:ffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff";
    const HEX64: &str = "1a3f5e7d9c1b3a5f7e9d1c3b5a7f9e1d3c5b7a9f1e3d5d7c9b1a3f5e7d9c1b3a";

    fn ok(input: &str) -> ImageRef {
        ImageRef::parse(input).unwrap_or_else(|e| panic!("{input:?} should parse: {e}"))
    }

    fn problem(input: &str) -> ReferenceProblem {
        match ImageRef::parse(input) {
            Ok(r) => panic!("{input:?} should be refused, parsed as {r:?}"),
            Err(e) => e.problem,
        }
    }

    /// input, registry, repository, tag, digest, canonical.
    type ValidCase<'a> = (
        &'a str,
        &'a str,
        &'a str,
        Option<&'a str>,
        Option<&'a str>,
        String,
    );

    #[test]
    fn valid_references_normalise_like_docker() {
        let sha512 = format!("sha512:{}", "f".repeat(128));
        let hub_hex = format!("docker.io/{HEX64}");
        let hub_hex_repo = format!("library/{HEX64}");
        let hex63 = &HEX64[..63];
        let hex63_repo = format!("library/{hex63}");
        let ubuntu_sha = format!("ubuntu@{SHA}");
        let busybox_both = format!("busybox:latest@{SHA}");
        let test_both = format!("test:5000/repo:tag@{SHA}");
        let ipv6_sha = format!("[2001:db8::1]:5000/repo@{SHA}");
        let punycode_sha512 = format!("xn--7o8h.com/myimage:xn--7o8h.com@{sha512}");
        #[rustfmt::skip]
        let cases: Vec<ValidCase> = vec![
            ("ubuntu", "docker.io", "library/ubuntu", None, None, "docker.io/library/ubuntu:latest".into()),
            ("ubuntu:22.04", "docker.io", "library/ubuntu", Some("22.04"), None, "docker.io/library/ubuntu:22.04".into()),
            ("library/ubuntu", "docker.io", "library/ubuntu", None, None, "docker.io/library/ubuntu:latest".into()),
            ("docker.io/ubuntu", "docker.io", "library/ubuntu", None, None, "docker.io/library/ubuntu:latest".into()),
            ("docker.io/library/ubuntu", "docker.io", "library/ubuntu", None, None, "docker.io/library/ubuntu:latest".into()),
            ("index.docker.io/ubuntu", "docker.io", "library/ubuntu", None, None, "docker.io/library/ubuntu:latest".into()),
            ("index.docker.io/docker/docker", "docker.io", "docker/docker", None, None, "docker.io/docker/docker:latest".into()),
            ("docker/docker", "docker.io", "docker/docker", None, None, "docker.io/docker/docker:latest".into()),
            ("docker.io/library/foo/bar", "docker.io", "library/foo/bar", None, None, "docker.io/library/foo/bar:latest".into()),
            ("store/foo/bar", "docker.io", "store/foo/bar", None, None, "docker.io/store/foo/bar:latest".into()),
            ("other/library", "docker.io", "other/library", None, None, "docker.io/other/library:latest".into()),
            ("test_com/foo", "docker.io", "test_com/foo", None, None, "docker.io/test_com/foo:latest".into()),
            // A first component without '.' or ':' is a namespace, not a host.
            ("localhostx/foo", "docker.io", "localhostx/foo", None, None, "docker.io/localhostx/foo:latest".into()),
            ("localhost/foo", "localhost", "foo", None, None, "localhost/foo:latest".into()),
            ("localhost:5000/foo", "localhost:5000", "foo", None, None, "localhost:5000/foo:latest".into()),
            // A single component is always a Hub name, even if it looks like a host.
            ("localhost", "docker.io", "library/localhost", None, None, "docker.io/library/localhost:latest".into()),
            ("test.com:5000", "docker.io", "library/test.com", Some("5000"), None, "docker.io/library/test.com:5000".into()),
            ("192.168.1.1", "docker.io", "library/192.168.1.1", None, None, "docker.io/library/192.168.1.1:latest".into()),
            ("192.168.1.1:5000", "docker.io", "library/192.168.1.1", Some("5000"), None, "docker.io/library/192.168.1.1:5000".into()),
            ("foo_bar.com:8080", "docker.io", "library/foo_bar.com", Some("8080"), None, "docker.io/library/foo_bar.com:8080".into()),
            ("foo/foo_bar.com:8080", "docker.io", "foo/foo_bar.com", Some("8080"), None, "docker.io/foo/foo_bar.com:8080".into()),
            ("test.com/repo:tag", "test.com", "repo", Some("tag"), None, "test.com/repo:tag".into()),
            ("test:5000/repo", "test:5000", "repo", None, None, "test:5000/repo:latest".into()),
            ("test-com:8080/foo", "test-com:8080", "foo", None, None, "test-com:8080/foo:latest".into()),
            ("127.0.0.1:5000/team/img:1", "127.0.0.1:5000", "team/img", Some("1"), None, "127.0.0.1:5000/team/img:1".into()),
            ("192.168.1.1/repo", "192.168.1.1", "repo", None, None, "192.168.1.1/repo:latest".into()),
            ("192.168.1.1:5000/repo:5050", "192.168.1.1:5000", "repo", Some("5050"), None, "192.168.1.1:5000/repo:5050".into()),
            ("sub-dom1.foo.com/bar/baz/quux:some-long-tag", "sub-dom1.foo.com", "bar/baz/quux", Some("some-long-tag"), None, "sub-dom1.foo.com/bar/baz/quux:some-long-tag".into()),
            ("b.gcr.io/test.example.com/my-app:test.example.com", "b.gcr.io", "test.example.com/my-app", Some("test.example.com"), None, "b.gcr.io/test.example.com/my-app:test.example.com".into()),
            ("xn--n3h.com:18080/foo", "xn--n3h.com:18080", "foo", None, None, "xn--n3h.com:18080/foo:latest".into()),
            ("[::1]:5000/x", "[::1]:5000", "x", None, None, "[::1]:5000/x:latest".into()),
            ("[2001:db8::1]/repo", "[2001:db8::1]", "repo", None, None, "[2001:db8::1]/repo:latest".into()),
            ("[2001:db8:1:2:3:4:5:6]/repo:tag", "[2001:db8:1:2:3:4:5:6]", "repo", Some("tag"), None, "[2001:db8:1:2:3:4:5:6]/repo:tag".into()),
            ("[fc00::1]:5000/docker/docker", "[fc00::1]:5000", "docker/docker", None, None, "[fc00::1]:5000/docker/docker:latest".into()),
            ("[2001:db8::]:5000/repo", "[2001:db8::]:5000", "repo", None, None, "[2001:db8::]:5000/repo:latest".into()),
            // Upstream treats an uppercase first component as a host.
            ("Docker/docker", "Docker", "docker", None, None, "Docker/docker:latest".into()),
            ("FOO/bar", "FOO", "bar", None, None, "FOO/bar:latest".into()),
            // Tags may be uppercase; only the repository must be lowercase.
            ("lowercase:Uppercase", "docker.io", "library/lowercase", Some("Uppercase"), None, "docker.io/library/lowercase:Uppercase".into()),
            ("tag:_", "docker.io", "library/tag", Some("_"), None, "docker.io/library/tag:_".into()),
            // Separators.
            ("docker-rules/docker", "docker.io", "docker-rules/docker", None, None, "docker.io/docker-rules/docker:latest".into()),
            ("docker---rules/docker", "docker.io", "docker---rules/docker", None, None, "docker.io/docker---rules/docker:latest".into()),
            ("dock__er/docker", "docker.io", "dock__er/docker", None, None, "docker.io/dock__er/docker:latest".into()),
            ("d/docker", "docker.io", "d/docker", None, None, "docker.io/d/docker:latest".into()),
            ("jess/t", "docker.io", "jess/t", None, None, "docker.io/jess/t:latest".into()),
            ("ubuntu-12.04-base", "docker.io", "library/ubuntu-12.04-base", None, None, "docker.io/library/ubuntu-12.04-base:latest".into()),
            ("thisisthesongthatneverendsitgoesonandonandonthisisthesongthatnev", "docker.io", "library/thisisthesongthatneverendsitgoesonandonandonthisisthesongthatnev", None, None, "docker.io/library/thisisthesongthatneverendsitgoesonandonandonthisisthesongthatnev:latest".into()),
            // 64 hex digits are a name once qualified; 63 are never an image ID.
            (&hub_hex, "docker.io", &hub_hex_repo, None, None, format!("docker.io/library/{HEX64}:latest")),
            (hex63, "docker.io", &hex63_repo, None, None, format!("docker.io/library/{hex63}:latest")),
            // Digests: no "latest" is added; tag and digest may both be given.
            (&ubuntu_sha, "docker.io", "library/ubuntu", None, Some(SHA), format!("docker.io/library/ubuntu@{SHA}")),
            (&busybox_both, "docker.io", "library/busybox", Some("latest"), Some(SHA), format!("docker.io/library/busybox:latest@{SHA}")),
            (&test_both, "test:5000", "repo", Some("tag"), Some(SHA), format!("test:5000/repo:tag@{SHA}")),
            (&ipv6_sha, "[2001:db8::1]:5000", "repo", None, Some(SHA), format!("[2001:db8::1]:5000/repo@{SHA}")),
            (&punycode_sha512, "xn--7o8h.com", "myimage", Some("xn--7o8h.com"), Some(&sha512), punycode_sha512.clone()),
        ];
        for (input, registry, repository, tag, digest, canonical) in cases {
            let r = ok(input);
            assert_eq!(r.registry, registry, "registry of {input:?}");
            assert_eq!(r.repository, repository, "repository of {input:?}");
            assert_eq!(r.tag.as_deref(), tag, "tag of {input:?}");
            assert_eq!(r.digest.as_deref(), digest, "digest of {input:?}");
            assert_eq!(r.canonical(), canonical, "canonical of {input:?}");
            assert_eq!(r.to_string(), canonical);
            // Normalisation is idempotent.
            assert_eq!(
                ok(&canonical).canonical(),
                canonical,
                "reparse of {canonical:?}"
            );
        }
    }

    #[test]
    fn invalid_references_say_what_is_wrong() {
        use ReferenceProblem::*;
        let long_path = format!("{}a:tag", "a/".repeat(128));
        let long_namespace = format!("{}/docker", "this_is_not_a_valid_namespace".repeat(9));
        let only_digest = format!("@{SHA}");
        let long_tag = "a".repeat(129);
        let ubuntu_long_tag = format!("ubuntu:{long_tag}");
        let upper_hex = format!("ubuntu@sha256:{}", "F".repeat(64));
        let unknown_algorithm = format!("validname@invaliddigest:{}", "f".repeat(64));
        let bad_algorithm = format!("1sha:{}", "f".repeat(64));
        let ubuntu_bad_algorithm = format!("ubuntu@{bad_algorithm}");
        let two_digests = format!("{SHA}@{SHA}");
        let ubuntu_two_digests = format!("ubuntu@{two_digests}");
        let sha256_hex = || BadDigestHex {
            algorithm: "sha256".into(),
            expected_len: 64,
        };
        #[rustfmt::skip]
        let cases: Vec<(&str, ReferenceProblem)> = vec![
            ("", Empty),
            (HEX64, ImageId),
            (":justtag", MissingName),
            (&only_digest, MissingName),
            ("Ubuntu:22.04", Uppercase { suggestion: Some("ubuntu:22.04".into()) }),
            ("Uppercase", Uppercase { suggestion: Some("uppercase".into()) }),
            ("docker/Docker", Uppercase { suggestion: Some("docker/docker".into()) }),
            ("docker.io/docker/Docker", Uppercase { suggestion: Some("docker.io/docker/docker".into()) }),
            ("test:5000/Uppercase/lowercase:tag", Uppercase { suggestion: Some("test:5000/uppercase/lowercase:tag".into()) }),
            // An uppercase first component is a namespace the user wrote in
            // the wrong case, not a registry: it is lowercased too.
            ("Holdout/Task:1", Uppercase { suggestion: Some("holdout/task:1".into()) }),
            ("Team/Sub/App", Uppercase { suggestion: Some("team/sub/app".into()) }),
            ("LOCALHOST/App", Uppercase { suggestion: Some("localhost/app".into()) }),
            // A real host keeps its case (host names are case-insensitive).
            ("Registry.Example.com/App:1", Uppercase { suggestion: Some("Registry.Example.com/app:1".into()) }),
            // No suggestion when lowercasing does not make it valid.
            ("Ubuntu@sha256:FFFF", Uppercase { suggestion: None }),
            ("My_App!", Uppercase { suggestion: None }),
            ("\u{c9}cole", Uppercase { suggestion: None }),
            // An uppercase letter without a lowercase form (U+03D2).
            ("a\u{3d2}", Uppercase { suggestion: None }),
            ("https://github.com/docker/docker", InvalidRegistry("https:".into())),
            ("-docker.io/docker/docker", InvalidRegistry("-docker.io".into())),
            ("foo_bar.com/x", InvalidRegistry("foo_bar.com".into())),
            ("fc00::1:5000/debian", InvalidRegistry("fc00::1:5000".into())),
            ("[fe80::1%eth0]:5000/debian", InvalidRegistry("[fe80::1%eth0]:5000".into())),
            ("[2001:db8:3:4::192.0.2.33]:5000/debian", InvalidRegistry("[2001:db8:3:4::192.0.2.33]:5000".into())),
            ("[::1]x/repo", InvalidRegistry("[::1]x".into())),
            ("host:/repo", InvalidRegistry("host:".into())),
            ("host:50a/repo", InvalidRegistry("host:50a".into())),
            ("ubuntu:22.04/extra", InvalidRegistry("ubuntu:22.04".into())),
            ("[fc00::1]", RegistryWithoutRepository("[fc00::1]".into())),
            ("[fc00::1]:5000", RegistryWithoutRepository("[fc00::1]:5000".into())),
            ("[2001:db8::1]:tag", RegistryWithoutRepository("[2001:db8::1]:tag".into())),
            ("-docker", InvalidPathComponent("-docker".into())),
            ("-docker/docker", InvalidPathComponent("-docker".into())),
            ("docker-/docker", InvalidPathComponent("docker-".into())),
            ("-docker-/docker", InvalidPathComponent("-docker-".into())),
            ("____/____", InvalidPathComponent("____".into())),
            ("_docker/_docker", InvalidPathComponent("_docker".into())),
            ("dock..er/docker", InvalidRegistry("dock..er".into())),
            ("dock_.er/docker", InvalidRegistry("dock_.er".into())),
            ("dock-.er/docker", InvalidRegistry("dock-.er".into())),
            ("dock___er/docker", InvalidPathComponent("dock___er".into())),
            ("aa/asdf$$^/aa", InvalidPathComponent("asdf$$^".into())),
            (" ubuntu", InvalidPathComponent(" ubuntu".into())),
            ("ub\u{fc}ntu", InvalidPathComponent("ub\u{fc}ntu".into())),
            ("docker///docker", EmptyPathComponent),
            ("docker/", EmptyPathComponent),
            ("docker.io/", EmptyPathComponent),
            (&long_path, RepositoryTooLong(257)),
            (&long_namespace, RepositoryTooLong(268)),
            ("ubuntu:", InvalidTag("".into())),
            ("ubuntu:-x", InvalidTag("-x".into())),
            ("ubuntu:.x", InvalidTag(".x".into())),
            ("ubuntu:a+b", InvalidTag("a+b".into())),
            (&ubuntu_long_tag, InvalidTag(long_tag.clone())),
            ("ubuntu@sha256", InvalidDigest("sha256".into())),
            ("ubuntu@sha256:xyz", InvalidDigest("sha256:xyz".into())),
            ("ubuntu@sha256:ffffffffffffffffffffffffffffffffff", sha256_hex()),
            (&upper_hex, sha256_hex()),
            (&unknown_algorithm, UnsupportedDigestAlgorithm("invaliddigest".into())),
            (&ubuntu_bad_algorithm, InvalidDigest(bad_algorithm.clone())),
            (&ubuntu_two_digests, InvalidDigest(two_digests.clone())),
        ];
        for (input, expected) in cases {
            assert_eq!(problem(input), expected, "problem with {input:?}");
        }
    }

    #[test]
    fn the_longest_allowed_path_and_tag_parse() {
        // 255 characters of path: 127 "a/" plus "a", then a long tag.
        let input = format!("{}a:tag-puts-this-over-max", "a/".repeat(127));
        let r = ok(&input);
        assert_eq!(r.repository.len(), 255);
        assert_eq!(r.registry, "docker.io");
        let tag = format!("_{}", "A.-".repeat(42) + "z");
        assert_eq!(tag.len(), 128);
        assert_eq!(
            ok(&format!("ubuntu:{tag}")).tag.as_deref(),
            Some(tag.as_str())
        );
    }

    #[test]
    fn error_display_names_the_reference_the_problem_and_the_fix() {
        let e = ImageRef::parse("Ubuntu:22.04").unwrap_err();
        assert_eq!(
            e.to_string(),
            "invalid image reference \"Ubuntu:22.04\": repository name must be lowercase \
             (did you mean \"ubuntu:22.04\"?)"
        );
        let e = ImageRef::parse("ubuntu:-bad").unwrap_err().to_string();
        assert!(
            e.starts_with("invalid image reference \"ubuntu:-bad\": tag \"-bad\""),
            "{e}"
        );
        let e = ImageRef::parse("foo_bar.com/x").unwrap_err().to_string();
        assert!(
            e.contains("registry \"foo_bar.com\" is not a valid host"),
            "{e}"
        );
        // Control characters are escaped, not printed raw.
        let e = ImageRef::parse("ubu\nntu").unwrap_err().to_string();
        assert!(e.contains("\"ubu\\nntu\""), "{e}");
        assert!(!e.contains('\n'));
    }

    #[test]
    fn familiar_forms_drop_the_hub_registry_and_library_namespace() {
        let cases = [
            ("ubuntu", "ubuntu", "ubuntu"),
            ("docker.io/library/ubuntu:22.04", "ubuntu", "ubuntu:22.04"),
            ("index.docker.io/library/ubuntu", "ubuntu", "ubuntu"),
            ("fooo/bar", "fooo/bar", "fooo/bar"),
            ("index.docker.io/fooo/bar", "fooo/bar", "fooo/bar"),
            ("library/foo/bar", "library/foo/bar", "library/foo/bar"),
            (
                "127.0.0.1:8000/private/moonbase",
                "127.0.0.1:8000/private/moonbase",
                "127.0.0.1:8000/private/moonbase",
            ),
            (
                "example.com/privatebase:1",
                "example.com/privatebase",
                "example.com/privatebase:1",
            ),
            ("Foo/bar", "Foo/bar", "Foo/bar"),
        ];
        for (input, name, familiar) in cases {
            let r = ok(input);
            assert_eq!(r.familiar_name(), name, "familiar name of {input:?}");
            assert_eq!(r.familiar(), familiar, "familiar of {input:?}");
        }
        let digested = format!("busybox:latest@{SHA}");
        assert_eq!(ok(&digested).familiar(), digested);
    }

    #[test]
    fn pull_parameters_are_the_full_name_and_digest_or_tag_or_latest() {
        let cases = [
            ("ubuntu", "docker.io/library/ubuntu", "latest".to_owned()),
            (
                "ubuntu:22.04",
                "docker.io/library/ubuntu",
                "22.04".to_owned(),
            ),
            (
                "127.0.0.1:5000/team/img:1",
                "127.0.0.1:5000/team/img",
                "1".to_owned(),
            ),
            ("[::1]:5000/x", "[::1]:5000/x", "latest".to_owned()),
        ];
        for (input, from_image, tag) in cases {
            assert_eq!(
                ok(input).name_for_pull(),
                PullParams {
                    from_image: from_image.into(),
                    tag
                }
            );
        }
        // A digest pins the content, so it wins over a tag (as in the Docker CLI).
        let p = ok(&format!("busybox:latest@{SHA}")).name_for_pull();
        assert_eq!(p.from_image, "docker.io/library/busybox");
        assert_eq!(p.tag, SHA);
    }

    #[test]
    fn registry_auth_keys_use_the_legacy_hub_url_for_docker_hub() {
        let cases = [
            ("ubuntu", DOCKER_HUB_AUTH_KEY),
            ("user/app", DOCKER_HUB_AUTH_KEY),
            ("docker.io/user/app", DOCKER_HUB_AUTH_KEY),
            ("index.docker.io/user/app", DOCKER_HUB_AUTH_KEY),
            ("127.0.0.1:5000/team/img:1", "127.0.0.1:5000"),
            ("[::1]:5000/x", "[::1]:5000"),
            ("ghcr.io/org/img", "ghcr.io"),
            ("localhost/img", "localhost"),
        ];
        for (input, key) in cases {
            assert_eq!(ok(input).registry_auth_key(), key, "auth key of {input:?}");
        }
    }

    #[test]
    fn from_str_matches_parse() {
        let r: ImageRef = "alpine:3".parse().unwrap();
        assert_eq!(r, ok("alpine:3"));
        assert!("UPPER".parse::<ImageRef>().is_err());
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        /// Reference-shaped text: optional registry, path components with
        /// separators, optional tag and digest, mixed case.
        fn reference_like() -> impl Strategy<Value = String> {
            "([A-Za-z0-9.-]{1,12}(:[0-9]{1,5})?/)?[A-Za-z0-9]{1,8}([._-]{1,2}[A-Za-z0-9]{1,8}){0,2}(/[A-Za-z0-9._-]{1,8}){0,2}(:[A-Za-z0-9_.-]{1,10})?(@sha256:[0-9a-fA-F]{64})?"
        }

        proptest! {
            #[test]
            fn never_panics(input in ".{0,80}") {
                let _ = ImageRef::parse(&input);
            }

            /// A suggestion, when there is one, is itself a valid reference.
            #[test]
            fn suggestions_are_valid_references(input in reference_like()) {
                if let Err(InvalidReference { problem: ReferenceProblem::Uppercase { suggestion: Some(s) }, .. }) = ImageRef::parse(&input) {
                    prop_assert!(ImageRef::parse(&s).is_ok(), "{input:?} suggests invalid {s:?}");
                }
            }

            /// The canonical and familiar forms parse back to the same image.
            #[test]
            fn canonical_and_familiar_forms_round_trip(input in reference_like()) {
                if let Ok(r) = ImageRef::parse(&input) {
                    let again = ImageRef::parse(&r.canonical()).unwrap();
                    prop_assert_eq!(again.canonical(), r.canonical());
                    prop_assert_eq!(ImageRef::parse(&r.familiar()).unwrap(), r.clone());
                }
            }
        }
    }
}

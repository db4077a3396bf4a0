//! Bind mounts the operator adds to every task (`-v/--volumes`, the docker
//! section's `volumes`): `HOST:CONTAINER[:OPTIONS]`.

/// One operator bind mount.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeSpec {
    /// An absolute host path or a named volume.
    pub host: String,
    /// An absolute path in the container, not `/`.
    pub container: String,
    pub read_only: bool,
}

impl VolumeSpec {
    /// Parses `HOST:CONTAINER[:ro|rw]`. Errors name the spec and the fix.
    pub fn parse(spec: &str) -> Result<Self, String> {
        let bad = |why: &str| {
            format!(
                "invalid volume {spec:?}: {why}; expected HOST:CONTAINER[:ro|rw], e.g. /srv/cache:/cache:ro"
            )
        };
        let parts: Vec<&str> = spec.split(':').collect();
        let (host, container, mode) = match parts.as_slice() {
            [h, c] => (*h, *c, None),
            [h, c, m] => (*h, *c, Some(*m)),
            _ => return Err(bad("it needs two or three ':'-separated parts")),
        };
        if host.is_empty() {
            return Err(bad("the host path is empty"));
        }
        let is_name = host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c))
            && host
                .chars()
                .next()
                .is_some_and(|c| c.is_ascii_alphanumeric());
        if !host.starts_with('/') && !is_name {
            return Err(bad(
                "the host side must be an absolute path or a volume name",
            ));
        }
        if !container.starts_with('/') {
            return Err(bad("the container path must be absolute"));
        }
        if container == "/" {
            return Err(bad("the container path cannot be /"));
        }
        let read_only = match mode {
            None | Some("rw") => false,
            Some("ro") => true,
            Some(m) => return Err(bad(&format!("unknown mode {m:?} (use ro or rw)"))),
        };
        Ok(VolumeSpec {
            host: host.into(),
            container: container.into(),
            read_only,
        })
    }

    /// The Engine API `HostConfig.Binds` entry.
    pub fn bind(&self) -> String {
        format!(
            "{}:{}:{}",
            self.host,
            self.container,
            if self.read_only { "ro" } else { "rw" }
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn volume_specs_are_validated() {
        assert_eq!(
            VolumeSpec::parse("/srv:/data:ro").unwrap(),
            VolumeSpec {
                host: "/srv".into(),
                container: "/data".into(),
                read_only: true
            }
        );
        assert!(!VolumeSpec::parse("cache:/cache").unwrap().read_only);
        for bad in [
            "/srv",
            "relative/path:/x",
            "/a:b",
            "/a:/b:rx",
            "/a:/b:ro:x",
            ":/b",
        ] {
            let e = VolumeSpec::parse(bad).unwrap_err();
            assert!(e.contains(bad) && e.contains("HOST:CONTAINER"), "{e}");
        }
    }
}

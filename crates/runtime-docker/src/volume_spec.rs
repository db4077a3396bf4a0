//! Operator volume specs (`-v/--volumes` and the config file's `volumes`),
//! read as `docker run -v` reads them and handed to the Engine API's
//! `HostConfig.Binds` with every option kept.
//!
//! ```text
//! spec    := source ":" target [ ":" options ]
//! source  := absolute host path | volume name   [a-zA-Z0-9][a-zA-Z0-9_.-]+
//! target  := absolute container path, not "/"
//! options := option ( "," option )*
//! option  := ro | rw                                   access (at most one)
//!          | z | Z                                     SELinux relabel (at most one)
//!          | shared | slave | private
//!          | rshared | rslave | rprivate                propagation, bind mounts only
//!          | nocopy                                    named volumes only
//!          | consistent | cached | delegated           consistency (accepted, no effect on Linux)
//! ```
//!
//! The rules are the Docker daemon's (moby `volume/mounts/linux_parser.go`,
//! which `docker run -v` relies on): one option of each class, propagation
//! only on a bind mount, `nocopy` only on a named volume, and the target not
//! the container's root.
//!
//! Deliberate differences, all towards refusing what would go wrong later:
//! a relative host path (`./data`, `data/x`, `~/x`) is refused instead of
//! being resolved against the working directory as the CLI does (a worker's
//! working directory is an accident of how it was started); a spec with only
//! a container path (an anonymous volume the daemon would create per task
//! and never remove) and an empty options part (`/a:/b:`, which the daemon
//! ignores) are refused.

use std::fmt;
use std::str::FromStr;

/// One parsed volume spec.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct VolumeSpec {
    pub source: VolumeSource,
    /// Absolute path in the task container, as written.
    pub target: String,
    pub options: MountOptions,
}

/// Where the mount comes from.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum VolumeSource {
    /// An absolute path on the daemon's host (a bind mount).
    HostPath(String),
    /// A named volume (created by the daemon if missing).
    Volume(String),
}

impl VolumeSource {
    pub fn as_str(&self) -> &str {
        match self {
            VolumeSource::HostPath(s) | VolumeSource::Volume(s) => s,
        }
    }
}

/// The third field, one optional value per class.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct MountOptions {
    pub access: Option<Access>,
    pub selinux_label: Option<SelinuxLabel>,
    pub propagation: Option<Propagation>,
    /// Do not copy the image's content at the target into a new named volume.
    pub nocopy: bool,
    pub consistency: Option<Consistency>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Access {
    ReadWrite,
    ReadOnly,
}

/// `z`: relabel for sharing between containers; `Z`: private to this one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SelinuxLabel {
    Shared,
    Private,
}

/// Mount propagation (Linux `mount --make-*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Propagation {
    Shared,
    Slave,
    Private,
    RShared,
    RSlave,
    RPrivate,
}

/// Docker Desktop's file-sharing hints; the Linux daemon accepts and ignores them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Consistency {
    Consistent,
    Cached,
    Delegated,
}

/// One recognised option and its class.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Option_ {
    Access(Access),
    Label(SelinuxLabel),
    Propagation(Propagation),
    NoCopy,
    Consistency(Consistency),
}

const OPTIONS: &[(&str, Option_)] = &[
    ("rw", Option_::Access(Access::ReadWrite)),
    ("ro", Option_::Access(Access::ReadOnly)),
    ("z", Option_::Label(SelinuxLabel::Shared)),
    ("Z", Option_::Label(SelinuxLabel::Private)),
    ("shared", Option_::Propagation(Propagation::Shared)),
    ("slave", Option_::Propagation(Propagation::Slave)),
    ("private", Option_::Propagation(Propagation::Private)),
    ("rshared", Option_::Propagation(Propagation::RShared)),
    ("rslave", Option_::Propagation(Propagation::RSlave)),
    ("rprivate", Option_::Propagation(Propagation::RPrivate)),
    ("nocopy", Option_::NoCopy),
    ("consistent", Option_::Consistency(Consistency::Consistent)),
    ("cached", Option_::Consistency(Consistency::Cached)),
    ("delegated", Option_::Consistency(Consistency::Delegated)),
];

fn option_name(option: Option_) -> &'static str {
    OPTIONS
        .iter()
        .find(|(_, o)| *o == option)
        .map(|(name, _)| *name)
        .expect("every option is in the table")
}

impl Option_ {
    fn class(self) -> &'static str {
        match self {
            Option_::Access(_) => "access mode (ro or rw)",
            Option_::Label(_) => "SELinux label (z or Z)",
            Option_::Propagation(_) => "propagation mode",
            Option_::NoCopy => "copy mode (nocopy)",
            Option_::Consistency(_) => "consistency mode",
        }
    }
}

/// Why a spec was refused; Display quotes the spec, names the part at
/// fault and shows the expected form.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeSpecError {
    pub spec: String,
    pub problem: VolumeSpecProblem,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VolumeSpecProblem {
    /// Not two or three `:`-separated parts (the count found).
    PartCount(usize),
    /// The `spec`, `host path`, `container path` or `options` is empty.
    EmptyPart(&'static str),
    RelativeHostPath(String),
    /// Neither an absolute path nor a valid volume name.
    InvalidVolumeName(String),
    RelativeContainerPath(String),
    ContainerRoot(String),
    /// An empty item in the options list (`ro,`).
    EmptyOption,
    UnknownOption(String),
    /// Two options of one class (`ro,rw`, `z,Z`, `shared,slave`).
    Conflict(&'static str, &'static str),
    /// A propagation mode on a named volume.
    PropagationOnVolume(&'static str),
    /// `nocopy` on a bind mount.
    NoCopyOnBind,
}

const EXPECTED: &str =
    "expected HOST:CONTAINER[:OPTIONS], e.g. /srv/cache:/cache:ro or cache-volume:/cache:rw,nocopy";

impl fmt::Display for VolumeSpecError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use VolumeSpecProblem::*;
        write!(f, "invalid volume {:?}: ", self.spec)?;
        match &self.problem {
            PartCount(1) => f.write_str(
                "only a container path: the daemon would create an anonymous volume for every task \
                 and never remove it; name a host path or a volume",
            )?,
            PartCount(n) => write!(f, "it has {n} ':'-separated parts, not 2 or 3")?,
            EmptyPart(part) => write!(f, "the {part} is empty")?,
            RelativeHostPath(p) => write!(
                f,
                "host path {p:?} is relative; give it as an absolute path (the worker does not \
                 resolve it against its working directory)"
            )?,
            InvalidVolumeName(n) => write!(
                f,
                "{n:?} is neither an absolute host path nor a volume name (a volume name is at \
                 least 2 of a-z, A-Z, 0-9, '_', '.', '-', starting with a letter or digit)"
            )?,
            RelativeContainerPath(p) => {
                write!(f, "container path {p:?} must be absolute (start with /)")?
            }
            ContainerRoot(p) => write!(f, "container path {p:?} is the container's root")?,
            EmptyOption => f.write_str("an option in the options list is empty")?,
            UnknownOption(o) => write!(
                f,
                "unknown option {o:?} (options: ro, rw, z, Z, shared, slave, private, rshared, \
                 rslave, rprivate, nocopy, consistent, cached, delegated)"
            )?,
            Conflict(a, b) => write!(f, "options {a:?} and {b:?} conflict: give one of each kind")?,
            PropagationOnVolume(p) => write!(
                f,
                "propagation {p:?} applies only to a host path, not to a named volume"
            )?,
            NoCopyOnBind => f.write_str("nocopy applies only to a named volume, not to a host path")?,
        }
        write!(f, "; {EXPECTED}")
    }
}

impl std::error::Error for VolumeSpecError {}

impl VolumeSpec {
    /// Parses one spec (see the module documentation for the grammar).
    pub fn parse(spec: &str) -> Result<Self, VolumeSpecError> {
        parse(spec).map_err(|problem| VolumeSpecError {
            spec: spec.to_owned(),
            problem,
        })
    }

    /// Whether the container sees the mount read-only (`ro`).
    pub fn read_only(&self) -> bool {
        self.options.access == Some(Access::ReadOnly)
    }

    /// The `HostConfig.Binds` entry: `SOURCE:TARGET[:OPTIONS]`, options in a
    /// fixed order (access, label, propagation, nocopy, consistency).
    /// [`VolumeSpec::parse`] reads it back to the same spec.
    pub fn bind(&self) -> String {
        let mut options: Vec<&str> = Vec::new();
        let o = &self.options;
        options.extend(o.access.map(|a| option_name(Option_::Access(a))));
        options.extend(o.selinux_label.map(|l| option_name(Option_::Label(l))));
        options.extend(o.propagation.map(|p| option_name(Option_::Propagation(p))));
        if o.nocopy {
            options.push(option_name(Option_::NoCopy));
        }
        options.extend(o.consistency.map(|c| option_name(Option_::Consistency(c))));
        let mut bind = format!("{}:{}", self.source.as_str(), self.target);
        if !options.is_empty() {
            bind.push(':');
            bind.push_str(&options.join(","));
        }
        bind
    }
}

impl fmt::Display for VolumeSpec {
    /// The bind string (see [`VolumeSpec::bind`]).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.bind())
    }
}

impl FromStr for VolumeSpec {
    type Err = VolumeSpecError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        VolumeSpec::parse(s)
    }
}

fn parse(spec: &str) -> Result<VolumeSpec, VolumeSpecProblem> {
    use VolumeSpecProblem::*;
    if spec.is_empty() {
        return Err(EmptyPart("spec"));
    }
    let parts: Vec<&str> = spec.split(':').collect();
    let (source, target, options) = match parts.as_slice() {
        [s, t] => (*s, *t, None),
        [s, t, o] => (*s, *t, Some(*o)),
        _ => return Err(PartCount(parts.len())),
    };
    if source.is_empty() {
        return Err(EmptyPart("host path"));
    }
    if target.is_empty() {
        return Err(EmptyPart("container path"));
    }
    let source = if is_absolute(source) {
        VolumeSource::HostPath(source.to_owned())
    } else if is_volume_name(source) {
        VolumeSource::Volume(source.to_owned())
    } else if source.starts_with(['.', '~']) || source.contains(['/', '\\']) {
        return Err(RelativeHostPath(source.to_owned()));
    } else {
        return Err(InvalidVolumeName(source.to_owned()));
    };
    if !is_absolute(target) {
        return Err(RelativeContainerPath(target.to_owned()));
    }
    if cleans_to_root(target) {
        return Err(ContainerRoot(target.to_owned()));
    }
    let options = match options {
        None => MountOptions::default(),
        Some("") => return Err(EmptyPart("options")),
        Some(list) => parse_options(list)?,
    };
    match (&source, options.propagation, options.nocopy) {
        (VolumeSource::Volume(_), Some(p), _) => {
            return Err(PropagationOnVolume(option_name(Option_::Propagation(p))))
        }
        (VolumeSource::HostPath(_), _, true) => return Err(NoCopyOnBind),
        _ => {}
    }
    Ok(VolumeSpec {
        source,
        target: target.to_owned(),
        options,
    })
}

fn parse_options(list: &str) -> Result<MountOptions, VolumeSpecProblem> {
    use VolumeSpecProblem::*;
    let mut seen: Vec<Option_> = Vec::new();
    let mut options = MountOptions::default();
    for item in list.split(',') {
        if item.is_empty() {
            return Err(EmptyOption);
        }
        let option = OPTIONS
            .iter()
            .find(|(name, _)| *name == item)
            .map(|(_, o)| *o)
            .ok_or_else(|| UnknownOption(item.to_owned()))?;
        if let Some(earlier) = seen.iter().find(|o| o.class() == option.class()) {
            return Err(Conflict(option_name(*earlier), option_name(option)));
        }
        seen.push(option);
        match option {
            Option_::Access(a) => options.access = Some(a),
            Option_::Label(l) => options.selinux_label = Some(l),
            Option_::Propagation(p) => options.propagation = Some(p),
            Option_::NoCopy => options.nocopy = true,
            Option_::Consistency(c) => options.consistency = Some(c),
        }
    }
    Ok(options)
}

/// As the daemon: a backslash counts as a slash.
fn is_absolute(path: &str) -> bool {
    path.starts_with(['/', '\\'])
}

/// The daemon's local volume names: `[a-zA-Z0-9][a-zA-Z0-9_.-]+`.
fn is_volume_name(name: &str) -> bool {
    let bytes = name.as_bytes();
    bytes.len() >= 2
        && bytes[0].is_ascii_alphanumeric()
        && bytes[1..]
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(b))
}

/// Whether Go's `path.Clean` (after `\` → `/`) of an absolute path is `/`.
fn cleans_to_root(path: &str) -> bool {
    let mut depth = 0usize;
    for component in path.split(['/', '\\']) {
        match component {
            "" | "." => {}
            ".." => depth = depth.saturating_sub(1),
            _ => depth += 1,
        }
    }
    depth == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use VolumeSpecProblem::*;

    fn bind(spec: &str) -> String {
        VolumeSpec::parse(spec)
            .unwrap_or_else(|e| panic!("{spec:?} should parse: {e}"))
            .bind()
    }

    /// Specs the daemon (and so `docker run -v`) accepts, and the bind
    /// string we hand it. Source: moby `linux_parser.go` (`ParseMountRaw`,
    /// `linuxValidMountMode`); the daemon's acceptance is also checked
    /// against real engines in crates/runtime-docker/tests/engines/volume_specs.rs.
    #[test]
    fn accepted_like_the_daemon() {
        #[rustfmt::skip]
        let cases: &[(&str, &str, bool)] = &[
            ("/srv:/data", "/srv:/data", false),
            ("/srv:/data:ro", "/srv:/data:ro", true),
            ("/srv:/data:rw", "/srv:/data:rw", false),
            ("/srv:/data:z", "/srv:/data:z", false),
            ("/srv:/data:Z,ro", "/srv:/data:ro,Z", true),
            ("/srv:/data:ro,z,rshared", "/srv:/data:ro,z,rshared", true),
            ("/srv:/data:shared", "/srv:/data:shared", false),
            ("/srv:/data:slave", "/srv:/data:slave", false),
            ("/srv:/data:private", "/srv:/data:private", false),
            ("/srv:/data:rslave,rw", "/srv:/data:rw,rslave", false),
            ("/srv:/data:rprivate", "/srv:/data:rprivate", false),
            ("/srv:/data:cached", "/srv:/data:cached", false),
            ("/srv:/data:delegated,ro", "/srv:/data:ro,delegated", true),
            ("/srv:/data:consistent", "/srv:/data:consistent", false),
            ("cache:/cache", "cache:/cache", false),
            ("cache:/cache:nocopy", "cache:/cache:nocopy", false),
            ("cache-1.v_2:/cache:ro,nocopy,z", "cache-1.v_2:/cache:ro,z,nocopy", true),
            ("/:/host:ro", "/:/host:ro", true),
            ("/srv/../srv/:/data/./x", "/srv/../srv/:/data/./x", false),
        ];
        for &(spec, want, read_only) in cases {
            let parsed = VolumeSpec::parse(spec).unwrap();
            assert_eq!(parsed.bind(), want, "{spec}");
            assert_eq!(parsed.read_only(), read_only, "{spec}");
        }
        assert_eq!(
            VolumeSpec::parse("data:/d").unwrap().source,
            VolumeSource::Volume("data".into())
        );
    }

    /// Specs refused, and why. Source: the daemon refuses each (mode
    /// validation, exclusive bind/volume options, root target, volume-name
    /// rule), except where the module documentation says we are stricter
    /// (relative host paths, one part, empty options part).
    #[test]
    fn refused_with_the_part_at_fault() {
        #[rustfmt::skip]
        let cases: Vec<(&str, VolumeSpecProblem)> = vec![
            ("", EmptyPart("spec")),
            ("/data", PartCount(1)),
            ("/a:/b:ro:x", PartCount(4)),
            (":/b", EmptyPart("host path")),
            ("/a:", EmptyPart("container path")),
            ("/a:/b:", EmptyPart("options")),
            ("./data:/d", RelativeHostPath("./data".into())),
            ("../data:/d", RelativeHostPath("../data".into())),
            ("data/x:/d", RelativeHostPath("data/x".into())),
            ("~/x:/d", RelativeHostPath("~/x".into())),
            (".:/d", RelativeHostPath(".".into())),
            ("a:/d", InvalidVolumeName("a".into())),
            ("-vol:/d", InvalidVolumeName("-vol".into())),
            ("my vol:/d", InvalidVolumeName("my vol".into())),
            ("/a:b", RelativeContainerPath("b".into())),
            ("/a:rw", RelativeContainerPath("rw".into())),
            ("/a:/", ContainerRoot("/".into())),
            ("/a:/x/..", ContainerRoot("/x/..".into())),
            ("/a://", ContainerRoot("//".into())),
            ("/a:/b:ro,", EmptyOption),
            ("/a:/b:,ro", EmptyOption),
            ("/a:/b:rx", UnknownOption("rx".into())),
            ("/a:/b:RO", UnknownOption("RO".into())),
            ("/a:/b:ro rw", UnknownOption("ro rw".into())),
            ("/a:/b:ro,rw", Conflict("ro", "rw")),
            ("/a:/b:ro,ro", Conflict("ro", "ro")),
            ("/a:/b:z,Z", Conflict("z", "Z")),
            ("/a:/b:shared,rslave", Conflict("shared", "rslave")),
            ("/a:/b:cached,delegated", Conflict("cached", "delegated")),
            ("vol:/b:nocopy,nocopy", Conflict("nocopy", "nocopy")),
            ("vol:/b:rshared", PropagationOnVolume("rshared")),
            ("/a:/b:nocopy", NoCopyOnBind),
        ];
        for (spec, problem) in cases {
            let err = VolumeSpec::parse(spec).unwrap_err();
            assert_eq!(err.problem, problem, "{spec:?}");
            let text = err.to_string();
            assert!(
                text.contains(&format!("{spec:?}")),
                "names the spec: {text}"
            );
            assert!(text.contains("HOST:CONTAINER"), "shows the form: {text}");
        }
    }

    #[test]
    fn errors_name_the_part_at_fault() {
        let text = VolumeSpec::parse("./cache:/c").unwrap_err().to_string();
        assert!(text.contains("host path \"./cache\" is relative"), "{text}");
        let text = VolumeSpec::parse("/a:/b:ro,rw").unwrap_err().to_string();
        assert!(text.contains("\"ro\" and \"rw\" conflict"), "{text}");
        assert_eq!(bind("/a:/b:ro"), "/a:/b:ro");
    }

    fn option_list() -> impl Strategy<Value = String> {
        proptest::sample::subsequence(OPTIONS.iter().map(|(n, _)| *n).collect::<Vec<_>>(), 0..6)
            .prop_shuffle()
            .prop_map(|names| names.join(","))
    }

    proptest! {
        #[test]
        fn never_panics(spec in ".{0,60}") {
            let _ = VolumeSpec::parse(&spec);
        }

        #[test]
        fn spec_like_inputs_never_panic(spec in "[/a-z.~]{0,8}(:[/a-z.]{0,8}){0,3}(:[a-zA-Z,]{0,20})?") {
            let _ = VolumeSpec::parse(&spec);
        }

        /// Whatever parses, its bind string parses back to the same spec.
        #[test]
        fn bind_strings_round_trip(
            source in "(/[a-z0-9._-]{1,8}){1,3}|[a-z0-9][a-z0-9_.-]{1,10}",
            target in "(/[a-z0-9._-]{1,8}){1,3}",
            options in option_list(),
        ) {
            let spec = if options.is_empty() {
                format!("{source}:{target}")
            } else {
                format!("{source}:{target}:{options}")
            };
            if let Ok(parsed) = VolumeSpec::parse(&spec) {
                prop_assert_eq!(VolumeSpec::parse(&parsed.bind()), Ok(parsed.clone()));
                prop_assert_eq!(parsed.target, target);
            }
        }
    }
}

//! The glibc/musl check against real images in dockerd and Podman. Besides
//! the test environment's glibc, musl and static busybox images, each case
//! builds its image through the Engine API (create from a base, put files
//! with the archive API, commit): a glibc image with Debian's musl loader
//! added, one whose /bin/sh is the host's glibc-linked dash, and one whose
//! agent shell (named by /agent/entrypoint.sh on a mounted volume) is a
//! musl program.

use oz_test_support as support;

use oz_runtime_docker::libc_check::{inspect, Verdict};
use oz_runtime_docker::tar;
use support::docker::{TestDaemon, Via};

const GLIBC: &str = "oz-test/glibc:latest";
const MUSL: &str = "oz-test/musl:latest";
const MUSL_LOADER: &str = "lib/ld-musl-x86_64.so.1";

/// A file put into an image or volume: path (relative to /), content, mode.
type File = (String, Vec<u8>, u32);

fn host_file(path: &str, into: &str, mode: u32) -> File {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{path} on the test host: {e}"));
    (into.to_string(), bytes, mode)
}

fn script(into: &str, text: &str) -> File {
    (into.to_string(), text.as_bytes().to_vec(), 0o755)
}

async fn create(d: &TestDaemon, image: &str, binds: &[String]) -> String {
    let created = d
        .json(
            "ContainerCreate",
            http::Method::POST,
            format!("/containers/create?name={}", d.unique("libc")),
            Some(serde_json::json!({
                "Image": image, "Cmd": ["/bin/sh"], "HostConfig": {"Binds": binds},
            })),
        )
        .await
        .unwrap_or_else(|e| panic!("{:?}: create from {image}: {e}", d.via));
    created["Id"].as_str().unwrap().to_string()
}

async fn put_files(d: &TestDaemon, container: &str, dir: &str, files: &[File]) {
    let entries: Vec<(&str, &[u8], u32)> = files
        .iter()
        .map(|(p, b, m)| (p.as_str(), b.as_slice(), *m))
        .collect();
    let body = tar::archive(&entries);
    d.docker
        .put_container_archive(
            container,
            &oz_docker_engine::params::PutContainerArchiveParams {
                path: dir.into(),
                ..Default::default()
            },
            support::docker::chunked(body),
        )
        .await
        .unwrap_or_else(|e| panic!("{:?}: put files into {dir}: {e}", d.via));
}

/// `base` plus `files`, committed as a new image; returns its name.
async fn build_image(d: &TestDaemon, base: &str, files: &[File]) -> String {
    let builder = create(d, base, &[]).await;
    put_files(d, &builder, "/", files).await;
    let name = d.unique("libc-image");
    d.json(
        "ImageCommit",
        http::Method::POST,
        format!("/commit?container={builder}&repo={name}&tag=t"),
        Some(serde_json::json!({})),
    )
    .await
    .unwrap_or_else(|e| panic!("{:?}: commit: {e}", d.via));
    d.remove(&builder).await;
    format!("{name}:t")
}

/// A named volume holding `files` (as the sidecar volume holds the agent).
async fn volume_with(d: &TestDaemon, files: &[File]) -> String {
    let volume = d.unique("agent");
    let filler = create(d, GLIBC, &[format!("{volume}:/fill")]).await;
    put_files(d, &filler, "/fill", files).await;
    d.remove(&filler).await;
    volume
}

struct Case {
    name: &'static str,
    /// The image: a test image, or one built from a base and files.
    base: String,
    files: Vec<File>,
    /// Files of a volume mounted read-only at /agent.
    agent: Vec<File>,
    program: Option<&'static str>,
    musl: bool,
    /// Text the evidence must contain.
    evidence: &'static str,
}

async fn check_images(via: Via) {
    let Some(d) = TestDaemon::connect(via).await else {
        return;
    };
    let musl_loader = || host_file("/lib/ld-musl-x86_64.so.1", MUSL_LOADER, 0o755);
    let dash = || host_file("/bin/dash", "bin/sh", 0o755);
    let mut cases = vec![
        Case {
            name: "glibc test image",
            base: GLIBC.into(),
            files: vec![],
            agent: vec![],
            program: None,
            musl: false,
            evidence: "glibc's loader /lib64/ld-linux-x86-64.so.2 is present",
        },
        Case {
            name: "musl test image",
            base: MUSL.into(),
            files: vec![],
            agent: vec![],
            program: None,
            musl: true,
            evidence: "the musl loader /lib/ld-musl-x86_64.so.1 is present and glibc's",
        },
        Case {
            name: "static busybox image",
            base: d.env.busybox.clone(),
            files: vec![],
            agent: vec![],
            program: None,
            musl: false,
            evidence: "static image",
        },
        Case {
            name: "glibc image with Debian's musl loader added",
            base: GLIBC.into(),
            files: vec![musl_loader()],
            agent: vec![],
            program: Some("/agent/entrypoint.sh"),
            musl: false,
            evidence: "glibc's loader",
        },
        Case {
            name: "glibc /bin/sh (dash) and the musl loader",
            base: GLIBC.into(),
            files: vec![dash(), musl_loader()],
            agent: vec![],
            program: None,
            musl: false,
            evidence: "the image's shell /bin/sh is linked against /lib64/ld-linux-x86-64.so.2",
        },
        Case {
            name: "agent shell named by the entrypoint on the /agent volume",
            base: GLIBC.into(),
            files: vec![host_file("/bin/dash", "bin/dash", 0o755), musl_loader()],
            agent: vec![script("entrypoint.sh", "#!/bin/dash\nexec true\n")],
            program: Some("/agent/entrypoint.sh"),
            musl: false,
            evidence: "the agent's shell /bin/dash (named by /agent/entrypoint.sh) is linked against /lib64/ld-linux-x86-64.so.2",
        },
    ];
    // A musl-linked agent shell in an image that also has glibc: refused
    // for what the agent runs on. Needs the musl image's own program
    // (built with musl-gcc by the test environment when available).
    let musl_program = musl_program(&d).await;
    if std::env::var("OZ_TEST_MUSL_BINARY").is_ok_and(|p| !p.is_empty()) {
        assert!(
            musl_program.is_some(),
            "{via:?}: the musl image lacks its musl program"
        );
    }
    if let Some(bytes) = musl_program {
        cases.push(Case {
            name: "musl agent shell in a glibc image",
            base: GLIBC.into(),
            files: vec![
                ("usr/bin/musl-sh".into(), bytes.clone(), 0o755),
                musl_loader(),
            ],
            agent: vec![script("entrypoint.sh", "#!/usr/bin/musl-sh\n")],
            program: Some("/agent/entrypoint.sh"),
            musl: true,
            evidence: "the agent's shell /usr/bin/musl-sh (named by /agent/entrypoint.sh) is linked against /lib/ld-musl-x86_64.so.1",
        });
        // Without the musl loader that shell cannot run at all (the
        // container's start fails), so nothing is read and the image passes.
        cases.push(Case {
            name: "musl program without the musl loader",
            base: GLIBC.into(),
            files: vec![("usr/bin/musl-sh".into(), bytes, 0o755)],
            agent: vec![script("entrypoint.sh", "#!/usr/bin/musl-sh\n")],
            program: Some("/agent/entrypoint.sh"),
            musl: false,
            evidence: "glibc's loader /lib64/ld-linux-x86-64.so.2 is present",
        });
    }

    for case in cases {
        let built = !case.files.is_empty();
        let image = if built {
            build_image(&d, &case.base, &case.files).await
        } else {
            case.base.clone()
        };
        let volume = if case.agent.is_empty() {
            None
        } else {
            Some(volume_with(&d, &case.agent).await)
        };
        let binds: Vec<String> = volume.iter().map(|v| format!("{v}:/agent:ro")).collect();
        let container = create(&d, &image, &binds).await;
        let verdict = inspect(&d.docker, &container, case.program, "amd64").await;
        d.remove(&container).await;
        if let Some(v) = &volume {
            let _ = d
                .unit(
                    "VolumeDelete",
                    http::Method::DELETE,
                    format!("/volumes/{v}"),
                    &[],
                )
                .await;
        }
        if built {
            let _ = d
                .unit(
                    "ImageDelete",
                    http::Method::DELETE,
                    format!("/images/{image}"),
                    &[("force", "true")],
                )
                .await;
        }
        let (musl, evidence) = match &verdict {
            Verdict::Musl(e) => (true, e),
            Verdict::Glibc(e) | Verdict::NotMusl(e) => (false, e),
        };
        assert_eq!(musl, case.musl, "{via:?} {}: {verdict:?}", case.name);
        assert!(
            evidence.contains(case.evidence),
            "{via:?} {}: evidence {evidence:?} lacks {:?}",
            case.name,
            case.evidence
        );
    }
}

/// The musl-linked program of the musl test image, if it has one.
async fn musl_program(d: &TestDaemon) -> Option<Vec<u8>> {
    let path = std::env::var("OZ_TEST_MUSL_BINARY")
        .ok()
        .filter(|p| !p.is_empty())?;
    let container = create(d, MUSL, &[]).await;
    let stream = d
        .docker
        .container_archive(
            &container,
            &oz_docker_engine::params::ContainerArchiveParams { path: path.clone() },
        )
        .await;
    let name = path.rsplit('/').next().unwrap().to_string();
    let found = match stream {
        Ok(s) => support::docker::scan_tar(s, &[&name])
            .await
            .1
            .into_iter()
            .next(),
        Err(_) => None,
    };
    d.remove(&container).await;
    found.map(|(_, bytes)| bytes)
}

#[tokio::test]
async fn dockerd_images_are_judged_by_what_their_programs_link() {
    check_images(Via::Unix).await;
}

#[tokio::test]
async fn podman_images_are_judged_by_what_their_programs_link() {
    check_images(Via::Podman).await;
}

//! Is the task image glibc-based? The agent needs glibc; a musl image would
//! fail in confusing ways after it starts, so it is refused before.
//!
//! The answer comes from what the image's programs are linked against, read
//! from the created (not started) container through the archive API:
//!
//! 0. Without the musl loader (`/lib/ld-musl-<arch>.so.1`) nothing in the
//!    container is a runnable musl program, so nothing is read: glibc's
//!    loader present is glibc, else a static image (both accepted). That
//!    is every glibc image (debian, ubuntu) and costs one round trip.
//! 1. the ELF interpreter (`PT_INTERP`) of the agent's shell (the `#!` line
//!    of the agent's program, e.g. `/agent/entrypoint.sh`), then of
//!    `/bin/sh`: `ld-linux*`/`ld64.so.*` is glibc (accepted), `ld-musl-*`
//!    is musl (refused). Symbolic links are followed inside the container.
//! 2. When neither program tells (static, missing, unreadable): glibc's own
//!    loader present is glibc (accepted); else musl (refused), since its
//!    loader is there.
//!
//! So a glibc image that also carries Debian's `musl` package (which adds
//! `/lib/ld-musl-x86_64.so.1`) runs, a real musl image is refused, and a
//! static binary image is not refused for being static.
//!
//! The parsing (ELF program headers, `#!` lines, the first entry of a tar
//! stream) is pure and reads only what it needs; property tests feed it
//! arbitrary bytes.
//!
//! The archive reads cost a daemon several hundred milliseconds per task
//! on some storage drivers (each mounts the container's filesystem), so the
//! independent ones are made concurrently and a passed check is kept for
//! what decided it ([`PassedChecks`]): image ids and sidecar volume names
//! are content-addressed, so the same key cannot name different files.

use super::failure::Fail;
use futures_util::future::join_all;
use futures_util::StreamExt;
use oz_docker_engine::params::{ContainerArchiveInfoParams, ContainerArchiveParams};
use oz_docker_engine::Docker;
use oz_protocol::FailureReason;
use std::collections::HashSet;
use std::sync::Mutex;

/// The most of a file read to find its interpreter: the ELF and program
/// headers and the `.interp` string sit in the first few KiB.
const READ_LIMIT: usize = 256 * 1024;
/// Symbolic links followed before giving up.
const MAX_LINKS: usize = 8;
const TAR_BLOCK: usize = 512;

/// Which C library a loader path belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Libc {
    Glibc,
    Musl,
    Other,
}

/// `ld-linux*` and `ld64.so.*` (glibc's loaders on every Linux
/// architecture) or `ld-musl-*`, by file name.
pub fn classify_loader(path: &str) -> Libc {
    let name = path.rsplit('/').next().unwrap_or(path);
    if name.starts_with("ld-musl-") {
        Libc::Musl
    } else if name.starts_with("ld-linux") || name.starts_with("ld64.so.") {
        Libc::Glibc
    } else {
        Libc::Other
    }
}

/// What a file's first bytes say about how it runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Linkage {
    /// A dynamically linked ELF file and its interpreter.
    Dynamic(String),
    /// An ELF file without an interpreter (static, or static-pie).
    Static,
    /// A script and the interpreter its `#!` line names.
    Script(String),
    /// Neither, or cut off before the answer.
    Unknown,
}

/// Reads `bytes` (the start of a file) as an ELF file or a script.
pub fn linkage(bytes: &[u8]) -> Linkage {
    if bytes.starts_with(b"\x7fELF") {
        return elf_interpreter(bytes);
    }
    match shebang_interpreter(bytes) {
        Some(interpreter) => Linkage::Script(interpreter),
        None => Linkage::Unknown,
    }
}

/// The `PT_INTERP` of an ELF file (32 or 64 bit, either byte order).
fn elf_interpreter(bytes: &[u8]) -> Linkage {
    const PT_INTERP: u32 = 3;
    let (Some(&class), Some(&data)) = (bytes.get(4), bytes.get(5)) else {
        return Linkage::Unknown;
    };
    let big_endian = match data {
        1 => false,
        2 => true,
        _ => return Linkage::Unknown,
    };
    let read = |offset: usize, len: usize| -> Option<u64> {
        let field = bytes.get(offset..offset.checked_add(len)?)?;
        let mut value = 0u64;
        for i in 0..len {
            let byte = if big_endian {
                field[i]
            } else {
                field[len - 1 - i]
            };
            value = (value << 8) | u64::from(byte);
        }
        Some(value)
    };
    // (e_phoff, e_phentsize, e_phnum) offsets, width of addresses, and the
    // p_offset / p_filesz offsets within a program header.
    let (phoff_at, phentsize_at, phnum_at, word, p_offset_at, p_filesz_at) = match class {
        1 => (0x1c, 0x2a, 0x2c, 4, 4, 16),
        2 => (0x20, 0x36, 0x38, 8, 8, 32),
        _ => return Linkage::Unknown,
    };
    let header = || -> Option<(u64, u64, u64)> {
        Some((
            read(phoff_at, word)?,
            read(phentsize_at, 2)?,
            read(phnum_at, 2)?,
        ))
    };
    let Some((phoff, phentsize, phnum)) = header() else {
        return Linkage::Unknown;
    };
    if phnum == 0xffff || phentsize < (p_filesz_at + word) as u64 {
        // PN_XNUM (the count lives in a section header) or a malformed size.
        return Linkage::Unknown;
    }
    for i in 0..phnum {
        let Some(at) = phentsize
            .checked_mul(i)
            .and_then(|o| o.checked_add(phoff))
            .and_then(|o| usize::try_from(o).ok())
        else {
            return Linkage::Unknown;
        };
        let Some(p_type) = read(at, 4) else {
            return Linkage::Unknown;
        };
        if p_type != u64::from(PT_INTERP) {
            continue;
        }
        let (Some(offset), Some(size)) =
            (read(at + p_offset_at, word), read(at + p_filesz_at, word))
        else {
            return Linkage::Unknown;
        };
        let range = usize::try_from(offset)
            .ok()
            .and_then(|o| Some(o..o.checked_add(usize::try_from(size).ok()?)?));
        return match range.and_then(|r| bytes.get(r)) {
            Some(raw) => match std::str::from_utf8(raw) {
                Ok(path) => {
                    let path = path.trim_end_matches('\0');
                    if path.is_empty() {
                        Linkage::Unknown
                    } else {
                        Linkage::Dynamic(path.to_owned())
                    }
                }
                Err(_) => Linkage::Unknown,
            },
            None => Linkage::Unknown,
        };
    }
    Linkage::Static
}

/// The interpreter of a `#!` line (`#!/bin/sh -e` → `/bin/sh`,
/// `#! /usr/bin/env bash` → `/usr/bin/env`).
pub fn shebang_interpreter(bytes: &[u8]) -> Option<String> {
    let rest = bytes.strip_prefix(b"#!")?;
    let line = rest.split(|&b| b == b'\n').next()?;
    let line = std::str::from_utf8(line).ok()?;
    let interpreter = line.split_ascii_whitespace().next()?;
    interpreter.starts_with('/').then(|| interpreter.to_owned())
}

/// The first file of a tar stream, as the archive API sends one path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TarEntry {
    /// A regular file and its first bytes (up to what was given).
    File(Vec<u8>),
    Symlink(String),
    /// A directory, device, or anything else.
    Other,
}

/// Reads the first real entry of `bytes` (the start of a tar stream),
/// skipping PAX (`x`, `g`) and GNU long-name (`L`, `K`) headers and taking
/// the link target from them. `None` when the bytes end before the header.
pub fn first_tar_entry(bytes: &[u8]) -> Option<TarEntry> {
    let mut at = 0usize;
    let mut long_link: Option<String> = None;
    loop {
        let header = bytes.get(at..at.checked_add(TAR_BLOCK)?)?;
        if header.iter().all(|&b| b == 0) {
            return None;
        }
        let size = usize::try_from(tar_size(&header[124..136])?).ok()?;
        let data_start = at + TAR_BLOCK;
        let data_end = data_start.checked_add(size)?;
        let type_flag = header[156];
        match type_flag {
            b'x' | b'g' | b'L' | b'K' => {
                let data = bytes.get(data_start..data_end)?;
                if type_flag == b'K' {
                    long_link = Some(c_string(data));
                } else if type_flag == b'x' {
                    if let Some(path) = pax_record(data, "linkpath") {
                        long_link = Some(path);
                    }
                }
                at = data_start.checked_add(size.div_ceil(TAR_BLOCK) * TAR_BLOCK)?;
            }
            b'0' | b'\0' | b'7' => {
                let end = data_end.min(bytes.len());
                return Some(TarEntry::File(bytes.get(data_start..end)?.to_vec()));
            }
            b'2' => {
                let target = long_link.unwrap_or_else(|| c_string(&header[157..257]));
                return Some(TarEntry::Symlink(target));
            }
            _ => return Some(TarEntry::Other),
        }
    }
}

/// A tar number: octal text, or base-256 when the high bit is set.
fn tar_size(field: &[u8]) -> Option<u64> {
    if field.first().is_some_and(|b| b & 0x80 != 0) {
        let mut value = u64::from(field[0] & 0x7f);
        for &b in &field[1..] {
            value = value.checked_mul(256)?.checked_add(u64::from(b))?;
        }
        return Some(value);
    }
    let text = std::str::from_utf8(field).ok()?;
    let text = text.trim_matches(|c: char| c == '\0' || c == ' ');
    if text.is_empty() {
        return Some(0);
    }
    u64::from_str_radix(text, 8).ok()
}

fn c_string(bytes: &[u8]) -> String {
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    String::from_utf8_lossy(&bytes[..end]).into_owned()
}

/// One `key=value` of PAX records (`"<len> <key>=<value>\n"`).
fn pax_record(data: &[u8], key: &str) -> Option<String> {
    let mut rest = data;
    while !rest.is_empty() {
        let space = rest.iter().position(|&b| b == b' ')?;
        let len: usize = std::str::from_utf8(&rest[..space]).ok()?.parse().ok()?;
        if len <= space || len > rest.len() {
            return None;
        }
        let record = &rest[space + 1..len];
        let record = record.strip_suffix(b"\n").unwrap_or(record);
        if let Some(value) = record
            .strip_prefix(key.as_bytes())
            .and_then(|r| r.strip_prefix(b"="))
        {
            return Some(String::from_utf8_lossy(value).into_owned());
        }
        rest = &rest[len..];
    }
    None
}

/// Joins a link target to the directory of the link (inside the container).
fn resolve_link(link_path: &str, target: &str) -> String {
    if target.starts_with('/') {
        return target.to_owned();
    }
    let dir = link_path.rsplit_once('/').map_or("", |(d, _)| d);
    let mut parts: Vec<&str> = dir.split('/').filter(|p| !p.is_empty()).collect();
    for part in target.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            p => parts.push(p),
        }
    }
    format!("/{}", parts.join("/"))
}

/// The verdict, with the evidence for messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Glibc(String),
    Musl(String),
    /// Nothing says musl (a static image, or nothing readable).
    NotMusl(String),
}

/// The glibc and musl loaders for a Go architecture name.
fn loaders(arch: &str) -> (&'static [&'static str], &'static str) {
    match arch {
        "arm64" => (
            &[
                "/lib/ld-linux-aarch64.so.1",
                "/lib/aarch64-linux-gnu/ld-linux-aarch64.so.1",
            ],
            "/lib/ld-musl-aarch64.so.1",
        ),
        _ => (
            &[
                "/lib64/ld-linux-x86-64.so.2",
                "/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2",
            ],
            "/lib/ld-musl-x86_64.so.1",
        ),
    }
}

/// Decides for the created container `id` (see the module documentation).
/// `program` is the agent's program (`/agent/entrypoint.sh`), if any.
///
/// Reads that do not depend on each other go to the daemon at once: each
/// is a round trip that mounts the container's filesystem (≈ 4 ms on Docker
/// 28 with overlay2), and one after another they were most of an image's
/// first-use cost (≈ 10 ms of 170 ms, benches/cold_start).
pub async fn inspect(docker: &Docker, id: &str, program: Option<&str>, arch: &str) -> Verdict {
    let program = program.filter(|p| p.starts_with('/'));
    let (glibc, musl) = loaders(arch);
    let (glibc_present, musl_present) = tokio::join!(
        join_all(glibc.iter().map(|loader| exists(docker, id, loader))),
        exists(docker, id, musl),
    );
    let glibc_loader = glibc
        .iter()
        .zip(&glibc_present)
        .find(|(_, present)| **present)
        .map(|(loader, _)| *loader);
    if !musl_present {
        return match glibc_loader {
            Some(loader) => Verdict::Glibc(format!("glibc's loader {loader} is present")),
            None => Verdict::NotMusl(
                "no dynamically linked shell and no C library loader (a static image)".into(),
            ),
        };
    }

    let (program_linkage, sh_linkage) = tokio::join!(
        async {
            match program {
                Some(program) => read_linkage(docker, id, program).await,
                None => None,
            }
        },
        read_linkage(docker, id, "/bin/sh"),
    );

    // (path, how messages name it)
    let mut shells: Vec<(String, String)> = Vec::new();
    if let Some(program) = program {
        match program_linkage {
            Some((_, Linkage::Script(shell))) => shells.push((
                shell.clone(),
                format!("the agent's shell {shell} (named by {program})"),
            )),
            Some((resolved, Linkage::Dynamic(interp))) => {
                let what = format!("the agent's program {program}");
                if let Some(v) = verdict_for(&what, program, &resolved, &interp) {
                    return v;
                }
            }
            _ => {}
        }
    }
    // Usually the agent's shell is /bin/sh itself, already read.
    if !shells.iter().any(|(path, _)| path == "/bin/sh") {
        shells.push(("/bin/sh".into(), "the image's shell /bin/sh".into()));
    }
    let mut sh_linkage = Some(sh_linkage);
    for (shell, what) in &shells {
        let linkage = match shell.as_str() {
            "/bin/sh" => sh_linkage.take().flatten(),
            other => read_linkage(docker, id, other).await,
        };
        if let Some((resolved, Linkage::Dynamic(interp))) = linkage {
            if let Some(v) = verdict_for(what, shell, &resolved, &interp) {
                return v;
            }
        }
    }
    match glibc_loader {
        Some(loader) => Verdict::Glibc(format!("glibc's loader {loader} is present")),
        None => Verdict::Musl(format!(
            "the musl loader {musl} is present and glibc's ({}) is not",
            glibc[0]
        )),
    }
}

/// `what` names the program (with its path), `resolved` is where its links led.
fn verdict_for(what: &str, requested: &str, resolved: &str, interp: &str) -> Option<Verdict> {
    let shown = if requested == resolved {
        what.to_owned()
    } else {
        format!("{what} (-> {resolved})")
    };
    match classify_loader(interp) {
        Libc::Glibc => Some(Verdict::Glibc(format!(
            "{shown} is linked against {interp}"
        ))),
        Libc::Musl => Some(Verdict::Musl(format!("{shown} is linked against {interp}"))),
        Libc::Other => None,
    }
}

/// The linkage of `path` in the container, following symbolic links; the
/// final path with it. `None` when the file cannot be read.
async fn read_linkage(docker: &Docker, id: &str, path: &str) -> Option<(String, Linkage)> {
    let mut path = path.to_owned();
    for _ in 0..=MAX_LINKS {
        match read_entry(docker, id, &path).await? {
            TarEntry::File(bytes) => return Some((path, linkage(&bytes))),
            TarEntry::Symlink(target) => path = resolve_link(&path, &target),
            TarEntry::Other => return None,
        }
    }
    None
}

/// The first entry of `GET /containers/{id}/archive?path=…`, reading no more
/// than [`READ_LIMIT`] bytes of content.
async fn read_entry(docker: &Docker, id: &str, path: &str) -> Option<TarEntry> {
    let params = ContainerArchiveParams { path: path.into() };
    let mut stream = match docker.container_archive(id, &params).await {
        Ok(s) => s,
        Err(e) => {
            if e.status().map(|s| s.as_u16()) != Some(404) {
                tracing::debug!(container = id, path, "cannot read for the libc check: {e}");
            }
            return None;
        }
    };
    let mut buf = Vec::new();
    while let Some(chunk) = stream.next().await {
        match chunk {
            Ok(bytes) => buf.extend_from_slice(&bytes),
            Err(e) => {
                tracing::debug!(container = id, path, "reading for the libc check: {e}");
                break;
            }
        }
        if buf.len() >= READ_LIMIT {
            break;
        }
    }
    first_tar_entry(&buf)
}

async fn exists(docker: &Docker, id: &str, path: &str) -> bool {
    let params = ContainerArchiveInfoParams { path: path.into() };
    docker.container_archive_info(id, &params).await.is_ok()
}

/// Containers that passed the check, by what they were made of: the task
/// image's id, the agent's program and the sidecar sources (image ids or
/// volume names that carry the sidecar image's id). At most
/// [`PassedChecks::CAPACITY`] are kept; the set starts over when full.
#[derive(Default)]
pub struct PassedChecks(Mutex<HashSet<String>>);

impl PassedChecks {
    pub const CAPACITY: usize = 1024;

    /// The key of a container made of these parts.
    pub fn key(image_id: &str, program: Option<&str>, sidecars: &[String]) -> String {
        format!(
            "{image_id}\0{}\0{}",
            program.unwrap_or(""),
            sidecars.join("\0")
        )
    }

    pub fn contains(&self, key: &str) -> bool {
        self.0.lock().unwrap().contains(key)
    }

    pub fn insert(&self, key: String) {
        let mut set = self.0.lock().unwrap();
        if set.len() >= Self::CAPACITY {
            set.clear();
        }
        set.insert(key);
    }
}

/// The task-container step: `Err` (reason `invalid_image`) for a musl image.
pub async fn refuse_musl(
    docker: &Docker,
    id: &str,
    program: Option<&str>,
    arch: &str,
    image: &str,
) -> Result<(), Fail> {
    match inspect(docker, id, program, arch).await {
        Verdict::Musl(evidence) => Err(Fail::new(
            FailureReason::InvalidImage,
            format!(
                "image {image} is musl-based: {evidence}; the agent needs a glibc-based image \
                 such as debian or ubuntu"
            ),
        )),
        Verdict::Glibc(evidence) | Verdict::NotMusl(evidence) => {
            tracing::debug!(image, "libc check passed: {evidence}");
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A minimal ELF header with program headers; `interp` adds a PT_INTERP.
    fn elf(class64: bool, big_endian: bool, interp: Option<&str>) -> Vec<u8> {
        let (ehsize, phentsize) = if class64 { (64, 56) } else { (52, 32) };
        let mut out = vec![0u8; ehsize];
        out[..4].copy_from_slice(b"\x7fELF");
        out[4] = if class64 { 2 } else { 1 };
        out[5] = if big_endian { 2 } else { 1 };
        let put = |out: &mut Vec<u8>, at: usize, len: usize, v: u64| {
            for i in 0..len {
                let shift = if big_endian { 8 * (len - 1 - i) } else { 8 * i };
                out[at + i] = (v >> shift) as u8;
            }
        };
        let word = if class64 { 8 } else { 4 };
        let phnum = 2u64;
        let (phoff_at, phentsize_at, phnum_at) = if class64 {
            (0x20, 0x36, 0x38)
        } else {
            (0x1c, 0x2a, 0x2c)
        };
        put(&mut out, phoff_at, word, ehsize as u64);
        put(&mut out, phentsize_at, 2, phentsize as u64);
        put(&mut out, phnum_at, 2, phnum);
        let interp_at = ehsize + phentsize * phnum as usize;
        out.resize(interp_at, 0);
        // Program header 0: PT_LOAD (1); 1: PT_INTERP (3) or PT_NOTE (4).
        let (p_offset_at, p_filesz_at) = if class64 { (8, 32) } else { (4, 16) };
        put(&mut out, ehsize, 4, 1);
        let second = ehsize + phentsize;
        put(&mut out, second, 4, if interp.is_some() { 3 } else { 4 });
        if let Some(path) = interp {
            put(&mut out, second + p_offset_at, word, interp_at as u64);
            put(&mut out, second + p_filesz_at, word, path.len() as u64 + 1);
            out.extend_from_slice(path.as_bytes());
            out.push(0);
        }
        out
    }

    /// Loader names. Source: glibc's and musl's installed loader names per
    /// architecture (`ld-linux-x86-64.so.2`, `ld-linux-aarch64.so.1`,
    /// `ld64.so.2` on ppc64le, `ld-musl-<arch>.so.1`).
    #[test]
    fn passed_checks_are_kept_per_image_program_and_sidecars_and_bounded() {
        let passed = PassedChecks::default();
        let key = |image, program, sidecars: &[&str]| {
            let sidecars: Vec<String> = sidecars.iter().map(|s| s.to_string()).collect();
            PassedChecks::key(image, program, &sidecars)
        };
        passed.insert(key(
            "sha256:a",
            Some("/agent/entrypoint.sh"),
            &["volume:v1"],
        ));
        assert!(passed.contains(&key(
            "sha256:a",
            Some("/agent/entrypoint.sh"),
            &["volume:v1"]
        )));
        for other in [
            key("sha256:b", Some("/agent/entrypoint.sh"), &["volume:v1"]),
            key("sha256:a", Some("/agent/other.sh"), &["volume:v1"]),
            key("sha256:a", None, &["volume:v1"]),
            key("sha256:a", Some("/agent/entrypoint.sh"), &["volume:v2"]),
            key("sha256:a", Some("/agent/entrypoint.sh"), &[]),
        ] {
            assert!(!passed.contains(&other), "{other:?}");
        }
        for i in 0..PassedChecks::CAPACITY {
            passed.insert(format!("k{i}"));
        }
        assert!(passed.0.lock().unwrap().len() <= PassedChecks::CAPACITY);
    }

    #[test]
    fn loaders_are_classified_by_name() {
        #[rustfmt::skip]
        let cases = [
            ("/lib64/ld-linux-x86-64.so.2", Libc::Glibc),
            ("/lib/ld-linux-aarch64.so.1", Libc::Glibc),
            ("/lib/ld-linux.so.2", Libc::Glibc),
            ("/lib/ld-linux-armhf.so.3", Libc::Glibc),
            ("/lib64/ld64.so.2", Libc::Glibc),
            ("/lib/ld-musl-x86_64.so.1", Libc::Musl),
            ("/lib/ld-musl-aarch64.so.1", Libc::Musl),
            ("/system/bin/linker64", Libc::Other),
            ("/lib/ld-uClibc.so.0", Libc::Other),
        ];
        for (path, libc) in cases {
            assert_eq!(classify_loader(path), libc, "{path}");
        }
    }

    #[test]
    fn elf_interpreters_in_every_class_and_byte_order() {
        for class64 in [false, true] {
            for big_endian in [false, true] {
                let dynamic = elf(class64, big_endian, Some("/lib/ld-musl-x86_64.so.1"));
                assert_eq!(
                    linkage(&dynamic),
                    Linkage::Dynamic("/lib/ld-musl-x86_64.so.1".into()),
                    "class64={class64} be={big_endian}"
                );
                assert_eq!(linkage(&elf(class64, big_endian, None)), Linkage::Static);
                // Cut off before the interpreter string: no guess.
                assert_eq!(linkage(&dynamic[..dynamic.len() - 4]), Linkage::Unknown);
            }
        }
    }

    /// The host's own programs: this machine's /bin/sh (dash or bash) is a
    /// glibc program; busybox-static (used by the test images) is static.
    #[test]
    fn real_binaries_on_this_host() {
        let sh = std::fs::read("/bin/sh")
            .or_else(|_| std::fs::read("/bin/dash"))
            .unwrap();
        match linkage(&sh) {
            Linkage::Dynamic(interp) => {
                assert_eq!(classify_loader(&interp), Libc::Glibc, "{interp}")
            }
            other => panic!("/bin/sh: {other:?}"),
        }
        if let Ok(busybox) = std::fs::read("/bin/busybox") {
            assert_eq!(linkage(&busybox), Linkage::Static);
        }
    }

    #[test]
    fn shebang_lines() {
        #[rustfmt::skip]
        let cases: &[(&[u8], Option<&str>)] = &[
            (b"#!/bin/sh\necho", Some("/bin/sh")),
            (b"#!/bin/bash -eu\n", Some("/bin/bash")),
            (b"#! /usr/bin/env bash\n", Some("/usr/bin/env")),
            (b"#!/bin/sh", Some("/bin/sh")),
            (b"#!sh\n", None),
            (b"echo hi\n", None),
            (b"", None),
            (b"#!\n", None),
        ];
        for (bytes, want) in cases {
            assert_eq!(
                shebang_interpreter(bytes).as_deref(),
                *want,
                "{:?}",
                String::from_utf8_lossy(bytes)
            );
        }
    }

    fn tar_header(name: &str, size: usize, type_flag: u8, link: &str) -> Vec<u8> {
        let mut h = vec![0u8; TAR_BLOCK];
        h[..name.len()].copy_from_slice(name.as_bytes());
        let size = format!("{size:011o}\0");
        h[124..136].copy_from_slice(size.as_bytes());
        h[156] = type_flag;
        h[157..157 + link.len()].copy_from_slice(link.as_bytes());
        h[257..263].copy_from_slice(b"ustar\0");
        h
    }

    fn padded(mut data: Vec<u8>) -> Vec<u8> {
        data.resize(data.len().div_ceil(TAR_BLOCK) * TAR_BLOCK, 0);
        data
    }

    #[test]
    fn tar_first_entries() {
        let mut file = tar_header("sh", 5, b'0', "");
        file.extend(padded(b"#!/x\n".to_vec()));
        assert_eq!(
            first_tar_entry(&file),
            Some(TarEntry::File(b"#!/x\n".to_vec()))
        );

        let link = tar_header("sh", 0, b'2', "busybox");
        assert_eq!(
            first_tar_entry(&link),
            Some(TarEntry::Symlink("busybox".into()))
        );

        // A PAX header with a long link target, as Go's archive/tar writes it.
        let target = format!("/{}", "d/".repeat(80));
        let record_body = format!(" linkpath={target}\n");
        let len = record_body.len() + 3;
        let record = format!("{len}{record_body}");
        assert_eq!(record.len(), len);
        let mut pax = tar_header("PaxHeaders/sh", record.len(), b'x', "");
        pax.extend(padded(record.into_bytes()));
        pax.extend(tar_header("sh", 0, b'2', "short"));
        assert_eq!(first_tar_entry(&pax), Some(TarEntry::Symlink(target)));

        // GNU long link.
        let mut gnu = tar_header("././@LongLink", 4, b'K', "");
        gnu.extend(padded(b"abcd".to_vec()));
        gnu.extend(tar_header("sh", 0, b'2', "x"));
        assert_eq!(
            first_tar_entry(&gnu),
            Some(TarEntry::Symlink("abcd".into()))
        );

        assert_eq!(
            first_tar_entry(&tar_header("bin", 0, b'5', "")),
            Some(TarEntry::Other)
        );
        assert_eq!(first_tar_entry(&[0u8; 100]), None);
        assert_eq!(first_tar_entry(&[0u8; 1024]), None);
    }

    #[test]
    fn links_resolve_inside_the_container() {
        #[rustfmt::skip]
        let cases = [
            ("/bin/sh", "busybox", "/bin/busybox"),
            ("/bin/sh", "dash", "/bin/dash"),
            ("/usr/bin/sh", "../../bin/bash", "/bin/bash"),
            ("/bin/sh", "/usr/bin/dash", "/usr/bin/dash"),
            ("/sh", "../../../x", "/x"),
        ];
        for (link, target, want) in cases {
            assert_eq!(resolve_link(link, target), want, "{link} -> {target}");
        }
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
            let _ = linkage(&bytes);
            let _ = first_tar_entry(&bytes);
            let _ = shebang_interpreter(&bytes);
        }

        /// Arbitrary bytes after a valid ELF identification and header.
        #[test]
        fn corrupt_elf_never_panics(tail in proptest::collection::vec(any::<u8>(), 0..512), class64 in any::<bool>(), be in any::<bool>()) {
            let mut bytes = elf(class64, be, Some("/lib/ld-musl-x86_64.so.1"));
            let cut = tail.len().min(bytes.len() - 6);
            bytes.truncate(bytes.len() - cut);
            bytes.extend(tail);
            let _ = linkage(&bytes);
        }

        /// Tar headers with arbitrary size fields and type flags.
        #[test]
        fn corrupt_tar_never_panics(size in any::<[u8; 12]>(), flag in any::<u8>(), tail in proptest::collection::vec(any::<u8>(), 0..1100)) {
            let mut h = tar_header("x", 0, flag, "");
            h[124..136].copy_from_slice(&size);
            h.extend(tail);
            let _ = first_tar_entry(&h);
        }

        #[test]
        fn interpreters_round_trip(path in "/[a-z0-9/._-]{1,60}", class64 in any::<bool>(), be in any::<bool>()) {
            prop_assert_eq!(linkage(&elf(class64, be, Some(&path))), Linkage::Dynamic(path.clone()));
        }
    }
}

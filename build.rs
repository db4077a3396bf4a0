//! How the release executable is linked (release and bench profiles, Linux
//! with glibc): two changes that bring an idle worker's resident memory
//! down; measured in BENCHMARKS.md, "Idle RSS".
//!
//! 1. Non-PIE (`-no-pie`). A PIE is relocated by the dynamic loader at
//!    every start, which reads all of `.rela.dyn` (1.5 MiB of relative
//!    relocations) and writes every pointer in `.data.rel.ro` (1.6 MiB), so
//!    both are resident in every worker process, the latter as private
//!    dirty memory. A non-PIE has its addresses fixed at link time: static
//!    data is paged in only where it is read (15.0 → 12.4 MiB idle on the
//!    same LTO objects). The code stays position-independent (rustc's
//!    default relocation model) and the glibc requirement is unchanged; the
//!    cost is that the executable's own image is not at a random address
//!    (stack, heap, mmap area and libraries still are). `OZ_LINK_PIE=1` at
//!    build time keeps a PIE.
//! 2. The functions an idle worker runs placed together
//!    (`link/idle-symbols.txt`, given to LLD as `--symbol-ordering-file`).
//!    The kernel maps code in 64 KiB blocks around each fault, so the
//!    resident code is set by how many blocks the idle path touches, not by
//!    the code's size: 128 blocks (8.2 MiB) in link order, 31 (2 MiB) in
//!    this order (12.4 → 6.1 MiB idle). Only LLD reads this option, so it
//!    is passed only when rustc links with its own LLD (rustup's toolchains
//!    for x86_64-unknown-linux-gnu since 1.90); other linkers (Debian's
//!    rustc uses GNU ld) get the non-PIE link alone. Names the executable no
//!    longer has are ignored: regenerate the file with
//!    `scripts/idle-symbol-order.sh` after dependency updates.
//!    `OZ_LINK_ORDER=0` at build time leaves the order to the linker.
//!
//! The names carry the crates' metadata hashes, which change with the
//! dependency graph and the compiler, and a stale file fails nothing: it
//! only costs idle memory. So the file's first line is a stamp of what its
//! names depend on (`scripts/idle-symbol-stamp.sh`: sha256 of Cargo.lock and
//! `rustc -V`; a `#` line is a comment to LLD), and when the file is used
//! and the stamp differs from the current one, or is missing, the build
//! warns and names the fix. Never an error.
use std::io::BufRead;
use std::path::Path;
use std::process::Command;

/// The order file, relative to the package.
const ORDER_FILE: &str = "link/idle-symbols.txt";
/// How the stamp line starts (`scripts/idle-symbol-stamp.sh`).
const STAMP_PREFIX: &str = "# oz-idle-symbols ";

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed={ORDER_FILE}");
    println!("cargo:rerun-if-changed=Cargo.lock");
    println!("cargo:rerun-if-env-changed=OZ_LINK_PIE");
    println!("cargo:rerun-if-env-changed=OZ_LINK_ORDER");
    let var = |name: &str| std::env::var(name).unwrap_or_default();
    let release = var("PROFILE") == "release";
    let linux_gnu = var("CARGO_CFG_TARGET_OS") == "linux" && var("CARGO_CFG_TARGET_ENV") == "gnu";
    if !(release && linux_gnu) {
        return;
    }
    if var("OZ_LINK_PIE") != "1" {
        println!("cargo:rustc-link-arg-bins=-no-pie");
    }
    let root = Path::new(&var("CARGO_MANIFEST_DIR")).to_path_buf();
    let order = root.join(ORDER_FILE);
    let rustc_version = command_output(&var("RUSTC"), &["-V"]);
    if var("OZ_LINK_ORDER") != "0" && order.is_file() && links_with_rust_lld(&var, &rustc_version) {
        println!(
            "cargo:rustc-link-arg-bins=-Wl,--symbol-ordering-file={}",
            order.display()
        );
        println!("cargo:rustc-link-arg-bins=-Wl,--no-warn-symbol-ordering");
        if let Some(warning) = staleness(&order, &root, &rustc_version) {
            println!("cargo:warning={warning}");
        }
    }
}

/// Why the order file may not match this build (no stamp, or one made for
/// another Cargo.lock or rustc), as one line naming the fix; `None` when
/// its stamp is the current one.
fn staleness(order: &Path, root: &Path, rustc_version: &str) -> Option<String> {
    let fix = "regenerate it with scripts/idle-symbol-order.sh from this release build \
               (a stale order costs idle memory, not correctness)";
    let mut first = String::new();
    if let Err(e) = std::fs::File::open(order)
        .map(std::io::BufReader::new)
        .and_then(|mut f| f.read_line(&mut first))
    {
        return Some(format!("cannot read {ORDER_FILE} to check its stamp: {e}"));
    }
    let Some(stamped) = first.trim_end().strip_prefix(STAMP_PREFIX) else {
        return Some(format!(
            "{ORDER_FILE} has no stamp line, so nothing says its names match this Cargo.lock \
             and rustc; {fix}"
        ));
    };
    let lock = Command::new("sha256sum")
        .arg(root.join("Cargo.lock"))
        .output()
        .ok()
        .filter(|o| o.status.success())
        .and_then(|o| {
            let out = String::from_utf8_lossy(&o.stdout);
            out.split_whitespace().next().map(str::to_owned)
        });
    let Some(lock) = lock else {
        return Some(format!(
            "cannot check {ORDER_FILE}'s stamp: sha256sum of Cargo.lock did not run"
        ));
    };
    let current = format!("Cargo.lock sha256 {lock}; {rustc_version}");
    if stamped == current {
        return None;
    }
    let (then_lock, then_rustc) = stamped.split_once("; ").unwrap_or((stamped, ""));
    let mut changed = Vec::new();
    if then_lock != format!("Cargo.lock sha256 {lock}") {
        changed.push("Cargo.lock".to_string());
    }
    if then_rustc != rustc_version {
        changed.push(format!(
            "the compiler ({then_rustc:?}, now {rustc_version:?})"
        ));
    }
    Some(format!(
        "{ORDER_FILE} was made for another {} than this build's, so its symbol names may no \
         longer match; {fix}",
        changed.join(" and ")
    ))
}

/// The trimmed standard output of `program args`, or empty when it fails.
fn command_output(program: &str, args: &[&str]) -> String {
    Command::new(program)
        .args(args)
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default()
}

/// Whether rustc will link through its self-contained LLD: the target is
/// x86_64-unknown-linux-gnu, rustc is 1.90 or newer (its default there), the
/// toolchain ships `gcc-ld/ld.lld`, and no rustflag chooses the linker.
fn links_with_rust_lld(var: &dyn Fn(&str) -> String, rustc_version: &str) -> bool {
    let target = var("TARGET");
    if target != "x86_64-unknown-linux-gnu" {
        return false;
    }
    let flags = var("CARGO_ENCODED_RUSTFLAGS");
    if flags.contains("linker") || flags.contains("link-self-contained") {
        return false;
    }
    let minor = rustc_version
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.split('.').nth(1)?.parse::<u32>().ok())
        .unwrap_or(0);
    let sysroot = command_output(&var("RUSTC"), &["--print", "sysroot"]);
    minor >= 90
        && !sysroot.is_empty()
        && Path::new(&sysroot)
            .join("lib/rustlib")
            .join(&target)
            .join("bin/gcc-ld/ld.lld")
            .is_file()
}

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
use std::path::Path;
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=link/idle-symbols.txt");
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
    let order = Path::new(&var("CARGO_MANIFEST_DIR")).join("link/idle-symbols.txt");
    if var("OZ_LINK_ORDER") != "0" && order.is_file() && links_with_rust_lld(&var) {
        println!(
            "cargo:rustc-link-arg-bins=-Wl,--symbol-ordering-file={}",
            order.display()
        );
        println!("cargo:rustc-link-arg-bins=-Wl,--no-warn-symbol-ordering");
    }
}

/// Whether rustc will link through its self-contained LLD: the target is
/// x86_64-unknown-linux-gnu, rustc is 1.90 or newer (its default there), the
/// toolchain ships `gcc-ld/ld.lld`, and no rustflag chooses the linker.
fn links_with_rust_lld(var: &dyn Fn(&str) -> String) -> bool {
    let target = var("TARGET");
    if target != "x86_64-unknown-linux-gnu" {
        return false;
    }
    let flags = var("CARGO_ENCODED_RUSTFLAGS");
    if flags.contains("linker") || flags.contains("link-self-contained") {
        return false;
    }
    let rustc = var("RUSTC");
    let out = |args: &[&str]| {
        Command::new(&rustc)
            .args(args)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
            .unwrap_or_default()
    };
    let minor = out(&["-V"])
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.split('.').nth(1)?.parse::<u32>().ok())
        .unwrap_or(0);
    let sysroot = out(&["--print", "sysroot"]);
    minor >= 90
        && !sysroot.is_empty()
        && Path::new(&sysroot)
            .join("lib/rustlib")
            .join(&target)
            .join("bin/gcc-ld/ld.lld")
            .is_file()
}

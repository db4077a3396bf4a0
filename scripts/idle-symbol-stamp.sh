#!/usr/bin/env bash
# Prints the stamp line of link/idle-symbols.txt: what its names depend on,
# the dependency graph (Cargo.lock) and the compiler (`rustc -V`), since the
# crates' metadata hashes in the names change with either. build.rs reads
# the file's first line and warns when it is not this line (the format is
# build.rs's `stamp`: keep the two the same). LLD reads lines starting with
# `#` in a --symbol-ordering-file as comments.
#
#   scripts/idle-symbol-stamp.sh   # prints e.g.
#   # oz-idle-symbols Cargo.lock sha256 44c2…; rustc 1.95.0 (59807616e 2026-04-14)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
lock=$(sha256sum Cargo.lock | cut -d' ' -f1)
echo "# oz-idle-symbols Cargo.lock sha256 $lock; $(rustc -V)"

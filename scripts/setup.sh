#!/usr/bin/env bash
# Installs what this project needs on a fresh Debian 12 machine, and does
# nothing (in seconds) when it is all there. Idempotent.
#
# Today the workspace needs only the pinned Rust toolchain with rustfmt and
# clippy: the .proto files are compiled by `protox` (pure Rust), so no
# system protoc is needed. Later crates add their apt packages, Python venv
# and model downloads here.
set -euo pipefail
cd "$(dirname "$0")/.."

need_toolchain="$(sed -n 's/^channel = "\(.*\)"/\1/p' rust-toolchain.toml)"
if ! command -v cargo >/dev/null; then
    echo "setup: cargo not found; this machine needs the Rust toolchain $need_toolchain (rustup)" >&2
    exit 1
fi
have="$(rustc --version | awk '{print $2}')"
if [[ "$have" != "$need_toolchain" ]]; then
    echo "setup: rustc $have found, rust-toolchain.toml pins $need_toolchain" >&2
    exit 1
fi
for component in rustfmt clippy; do
    if ! cargo "${component/rustfmt/fmt}" --version >/dev/null 2>&1; then
        rustup component add "$component"
    fi
done
echo "setup: ok (rust $have)"

#!/usr/bin/env bash
# Cross-compiles stationd for a station PC without a container engine: rustup's standard
# library for the target, Debian's cross gcc (linker and C compiler for the bundled
# SQLite and ring), and the linker lines in .cargo/config.toml.
#
#   tools/cross-build.sh [aarch64-unknown-linux-gnu|armv7-unknown-linux-gnueabihf] [cargo args...]
#
# e.g. `tools/cross-build.sh aarch64-unknown-linux-gnu --release`. With qemu-user
# installed, the script also runs the result (`--version`, `check-config`). The V4L2 camera feature needs the target's libv4l and clang: use
# `cross` (cross.toml) on a machine with a container engine for that.
set -euo pipefail
cd "$(dirname "$0")/.."
target="${1:-aarch64-unknown-linux-gnu}"
shift || true
case "$target" in
    aarch64-unknown-linux-gnu) gnu=aarch64-linux-gnu; deb=arm64; qemu=qemu-aarch64 ;;
    armv7-unknown-linux-gnueabihf) gnu=arm-linux-gnueabihf; deb=armhf; qemu=qemu-arm ;;
    *) echo "unsupported target $target" >&2; exit 2 ;;
esac

if ! command -v "$gnu-gcc" >/dev/null 2>&1; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "gcc-$gnu" "libc6-dev-$deb-cross" >/dev/null
fi
rustup target add "$target" >/dev/null
env_target="${target//-/_}"
export "CC_${env_target}=$gnu-gcc" "AR_${env_target}=$gnu-ar"
cargo build --target "$target" --bin stationd "$@"
bin="target/$target/$( [[ " $* " == *" --release "* ]] && echo release || echo debug )/stationd"
ls -l "$bin"

# Smoke test under user-mode emulation when qemu-user is installed (CI installs it): the
# binary starts, parses the laptop config and finds the bundled model.
if command -v "$qemu" >/dev/null 2>&1; then
    "$qemu" -L "/usr/$gnu" "$bin" --version
    "$qemu" -L "/usr/$gnu" "$bin" check-config etc/stationd.dev.toml
else
    echo "($qemu not installed: no smoke test of the $target binary)"
fi

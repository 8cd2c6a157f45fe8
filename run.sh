#!/usr/bin/env bash
# apir: one entry point for a fresh Debian 12 machine.
#   ./run.sh demo   install what is missing, build the demo only, run it (loopback)
#   ./run.sh test   install what is missing, build everything, run the whole test suite
#   ./run.sh build  install what is missing and build everything
# BUILD_DIR (default: build) and MESON_ARGS (extra configure options) are honoured.
set -euo pipefail
cd "$(dirname "$0")"

PACKAGES=(meson ninja-build pkg-config g++ libfmt-dev catch2 libdrm-dev)
# The test suite also builds a CMake project against an installed apir.
TEST_PACKAGES=(cmake)
BUILD_DIR=${BUILD_DIR:-build}

missing_packages() {
    local p
    for p in "${PACKAGES[@]}" "$@"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || echo "$p"
    done
}

# install_deps [extra packages...]
install_deps() {
    local missing
    missing=$(missing_packages "$@")
    [ -z "$missing" ] && return 0
    if [ "$(id -u)" -eq 0 ]; then
        echo "run.sh: installing:" $missing
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq
        # shellcheck disable=SC2086
        apt-get install -y -qq --no-install-recommends $missing >/dev/null
    elif command -v sudo >/dev/null && sudo -n true 2>/dev/null; then
        echo "run.sh: installing with sudo:" $missing
        sudo apt-get update -qq
        # shellcheck disable=SC2086
        sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $missing >/dev/null
    else
        echo "run.sh: missing packages: $missing" >&2
        echo "run.sh: install them with: sudo apt-get install $missing" >&2
        exit 1
    fi
}

# The demo: the program, the backend library it loads, and the library they need.
DEMO_TARGETS=(examples/demo/apir-demo examples/demo/libapir-demo-backend.so)

# configure [ninja targets...]: sets the build directory up, then builds the targets
# (everything when none are given).
configure() {
    if [ ! -f "$BUILD_DIR/build.ninja" ]; then
        # shellcheck disable=SC2086
        meson setup "$BUILD_DIR" ${MESON_ARGS:-}
    elif [ -n "${MESON_ARGS:-}" ]; then
        # shellcheck disable=SC2086
        meson configure "$BUILD_DIR" ${MESON_ARGS}
    fi
    ninja -C "$BUILD_DIR" "$@"
}

case "${1:-}" in
demo)
    install_deps
    configure "${DEMO_TARGETS[@]}"
    shift
    exec "$BUILD_DIR/examples/demo/apir-demo" "$@"
    ;;
test)
    install_deps "${TEST_PACKAGES[@]}"
    configure
    shift
    exec meson test -C "$BUILD_DIR" --print-errorlogs "$@"
    ;;
build)
    install_deps
    configure
    ;;
*)
    echo "usage: ./run.sh demo|test|build [args]" >&2
    exit 2
    ;;
esac

#!/usr/bin/env bash
# apir: one entry point for a fresh Debian 12 machine.
#   ./run.sh demo   install what is missing, build the demo only, run it (loopback)
#   ./run.sh test   install what is missing, build everything, run the whole test suite
#   ./run.sh build  install what is missing and build everything
#   ./run.sh build [targets...]   the same for some ninja targets only
#              (e.g. src/libggml-apir/libggml-apir.so: about a minute instead of the whole tree)
# BUILD_DIR (default: build), MESON_ARGS (extra configure options) and JOBS (ninja's job
# count; default: ninja's own) are honoured. ggml: when pkg-config finds ggml (say
# PKG_CONFIG_PATH=<ggml build>/lib/pkgconfig, or APIR_GGML_PEER_DIR=<ggml build>), the
# build requires it (-Dggml=enabled) and takes PKG_CONFIG_PATH into its configuration
# (-Dpkg_config_path), also in an existing build directory: asking for ggml gives
# libggml-apir or a clear error, never a silent build without it.
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
    local args=() ggml_pc_path
    # shellcheck disable=SC2206
    [ -n "${MESON_ARGS:-}" ] && args+=(${MESON_ARGS})
    if [ -n "${APIR_GGML_PEER_DIR:-}" ]; then
        ggml_pc_path="$APIR_GGML_PEER_DIR/lib/pkgconfig"
        if [ ! -f "$ggml_pc_path/ggml.pc" ]; then
            echo "run.sh: APIR_GGML_PEER_DIR=$APIR_GGML_PEER_DIR has no lib/pkgconfig/ggml.pc" >&2
            echo "run.sh: it must name a ggml build laid out with bin/, lib/ (and lib/pkgconfig/ggml.pc), include/" >&2
            exit 1
        fi
        export PKG_CONFIG_PATH="$ggml_pc_path${PKG_CONFIG_PATH:+:$PKG_CONFIG_PATH}"
    fi
    # Meson reads PKG_CONFIG_PATH only when a build directory is set up: pass it as an
    # option so that an existing directory sees it too.
    [ -n "${PKG_CONFIG_PATH:-}" ] && args+=("-Dpkg_config_path=$PKG_CONFIG_PATH")
    if pkg-config --exists ggml 2>/dev/null; then
        args+=(-Dggml=enabled)
    fi
    # The options given last time are kept beside the build: unchanged, no reconfigure.
    local stamp="$BUILD_DIR/run-sh-options"
    if [ ! -f "$BUILD_DIR/build.ninja" ]; then
        meson setup "$BUILD_DIR" "${args[@]}"
        printf '%s\n' "${args[@]}" >"$stamp"
    elif [ ${#args[@]} -gt 0 ] && [ "$(printf '%s\n' "${args[@]}")" != "$(cat "$stamp" 2>/dev/null)" ]; then
        meson configure "$BUILD_DIR" "${args[@]}"
        printf '%s\n' "${args[@]}" >"$stamp"
    fi
    ninja -C "$BUILD_DIR" ${JOBS:+-j "$JOBS"} "$@"
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
    shift
    configure "$@"
    ;;
*)
    echo "usage: ./run.sh demo|test|build [args]" >&2
    exit 2
    ;;
esac

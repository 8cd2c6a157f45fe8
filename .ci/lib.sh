# Shared by the CI scripts (sourced): package installation and the compilers.
#
# ci_install PKG...  installs the Debian packages that are missing (as root; apt-get
#                    update once per CI run); elsewhere it lists them and fails.
# ci_compilers       puts ccache in front of the compilers when it is installed. The
#                    checkout and ../shared sit side by side, so paths are hashed
#                    relative to their parent folder: a rebuild of the same sources on
#                    the same machine is fast, a cold cache builds everything (correct,
#                    only slower). CI_CC/CI_CXX name the compilers for meson setup.
# ci_setup_tsan      sets up the TSan build directory (CI_TSAN_DIR) unless it exists:
#                    .ci/extra-ggml-backend and .ci/extra-sanitizers share it, one
#                    directory with one option set, so the second builds only what the
#                    first did not (the library and the tests are compiled once per run).
#                    -O1 with line tables only (-g1): about half the build time of the
#                    project's default -O2 -g, and TSan's reports keep file and line.
#
# CI_BUILD_PACKAGES are what a build of apir needs (./run.sh installs the same list on
# its own, so that it needs nothing but itself on a fresh machine).
CI_BUILD_PACKAGES=(meson ninja-build pkg-config g++ libfmt-dev catch2 libdrm-dev)
CI_TSAN_DIR=build-ci-tsan

ci_install() {
    local missing=() p
    for p in "$@"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    if [ "$(id -u)" -ne 0 ]; then
        echo "ci: missing packages: ${missing[*]} (install them as root)" >&2
        return 1
    fi
    echo "ci: installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    if [ -z "${CI_APT_UPDATED:-}" ]; then
        apt-get update -qq
        export CI_APT_UPDATED=1
    fi
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

ci_compilers() {
    local launcher=
    if command -v ccache >/dev/null; then
        launcher="ccache "
        CCACHE_BASEDIR="$(cd .. && pwd)"
        export CCACHE_BASEDIR CCACHE_NOHASHDIR=1
    fi
    export CI_CC="${launcher}${1:-gcc}" CI_CXX="${launcher}${2:-g++}"
}

ci_setup_tsan() {
    ci_install "${CI_BUILD_PACKAGES[@]}" libtsan2
    [ -f "$CI_TSAN_DIR/build.ninja" ] ||
        CC=$CI_CC CXX=$CI_CXX meson setup "$CI_TSAN_DIR" -Db_sanitize=thread -Db_lundef=false \
            -Ddefault_library=static -Dexamples=false -Dbench=false -Doptimization=1 \
            -Dcpp_args=-g1 >/dev/null
}

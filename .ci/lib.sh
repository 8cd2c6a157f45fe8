# Shared by the CI scripts (sourced): package installation and the compilers.
#
# ci_install PKG...  installs the Debian packages that are missing (as root; apt-get
#                    update once per CI run); elsewhere it lists them and fails.
# ci_compilers       puts ccache in front of the compilers when it is installed. The
#                    checkout and ../shared sit side by side, so paths are hashed
#                    relative to their parent folder: a rebuild of the same sources on
#                    the same machine is fast, a cold cache builds everything (correct,
#                    only slower). CI_CC/CI_CXX name the compilers for meson setup.

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

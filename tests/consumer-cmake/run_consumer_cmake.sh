#!/usr/bin/env bash
# Installs this build of apir into a scratch directory (meson install --destdir), then
# builds project/ against it with CMake (find_package(apir)), runs it, and checks what
# the libraries and modules export.
#
#   run_consumer_cmake.sh <apir build dir> <scratch dir> <prefix> <libdir> <bindir> <probe: 0|1>
#                         <the demo backend in the build tree>
#
# With the probe (option tools), the demo backend is installed and both the consumer
# and the installed probe use that one.
#
# Fails if any step fails.
set -euo pipefail

if [ $# -ne 7 ]; then
    echo "usage: $0 <build dir> <scratch dir> <prefix> <libdir> <bindir> <probe: 0|1> <backend>" >&2
    exit 2
fi
build=$(cd "$1" && pwd)
scratch=$2
prefix=$3
libdir=$4
bindir=$5
probe=$6
backend=$7
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

fail() {
    echo "consumer-cmake: FAILED: $*" >&2
    exit 1
}

rm -rf "$scratch"
mkdir -p "$scratch"
scratch=$(cd "$scratch" && pwd)
dest=$scratch/destdir
root=$dest$prefix
case "$libdir" in /*) lib=$dest$libdir ;; *) lib=$root/$libdir ;; esac
case "$bindir" in /*) bin=$dest$bindir ;; *) bin=$root/$bindir ;; esac

meson install -C "$build" --no-rebuild --quiet --destdir "$dest"
[ -f "$lib/cmake/apir/apirConfig.cmake" ] || fail "no apirConfig.cmake in $lib/cmake/apir"
[ -f "$lib/cmake/apir/apirConfigVersion.cmake" ] || fail "no apirConfigVersion.cmake"
if [ "$probe" = 1 ]; then
    backend=$lib/apir/libapir-demo-backend.so
    [ -f "$backend" ] || fail "the demo backend is not installed in $lib/apir"
fi

# The shared library: a soname, and only the compiled entry points exported.
shared=$(ls "$lib"/libapir.so.*.*.* | head -n 1)
soname=$(readelf -d "$shared" | sed -n 's/.*SONAME.*\[\(.*\)\].*/\1/p')
[ -n "$soname" ] && [ -e "$lib/$soname" ] || fail "libapir.so has no soname (or no $soname link)"
exports=$(nm -D --defined-only -C "$shared")
grep -q 'apir::Host::execute' <<<"$exports" || fail "libapir.so does not export apir::Host::execute"
grep -q 'apir::wait_for_reply' <<<"$exports" || fail "libapir.so does not export apir::wait_for_reply"
# (std:: templates instantiated on apir's internal types may stay visible: weak, harmless.)
if grep -E '^[0-9a-f]+ [A-Za-z] ((typeinfo|vtable) for )?apir::((drm|uapi)::|[A-Za-z]+::Impl\b)' \
    <<<"$exports"; then
    fail "libapir.so exports internal symbols (above)"
fi
# The strong definitions of the shared library: what a module must not re-export.
nm -D --defined-only "$shared" | awk '$2 == "T" { print $3 }' | sort -u >"$scratch/apir-entry-points"
entry_points=$(wc -l <"$scratch/apir-entry-points")
[ "$entry_points" -gt 10 ] || fail "only $entry_points entry points in libapir.so"

cmake -S "$here/project" -B "$scratch/build" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
    -DCMAKE_PREFIX_PATH="$root" >"$scratch/cmake.log" 2>&1 || {
    cat "$scratch/cmake.log" >&2
    fail "cmake configure"
}
cmake --build "$scratch/build" || fail "cmake build"

# The package names the installed demo backend: CMake's apir_DEMO_BACKEND and
# pkg-config's demo_backend variable.
if [ "$probe" = 1 ]; then
    named=$(cat "$scratch/build/apir-demo-backend.txt" 2>/dev/null) ||
        fail "find_package(apir) did not set apir_DEMO_BACKEND"
    [ "$named" = "$backend" ] || fail "apir_DEMO_BACKEND is '$named', not $backend"
    named=$(PKG_CONFIG_PATH="$lib/pkgconfig" pkg-config --define-variable=prefix="$root" \
        --variable=demo_backend apir) || fail "pkg-config does not find the installed apir.pc"
    [ "$named" = "$backend" ] || fail "pkg-config's demo_backend is '$named', not $backend"
    echo "consumer-cmake: CMake and pkg-config name the installed demo backend"
fi

# The installed libggml-apir.so (ggml feature) finds the libapir.so installed beside it
# on its own: ggml loads it by path, with no LD_LIBRARY_PATH.
if [ -f "$lib/libggml-apir.so" ]; then
    readelf -d "$lib/libggml-apir.so" | grep -qE 'R(UN)?PATH.*\[\$ORIGIN\]' ||
        fail "the installed libggml-apir.so has no RUNPATH \$ORIGIN"
    resolved=$(env -u LD_LIBRARY_PATH ldd "$lib/libggml-apir.so" | awk '/libapir\.so/ { print $3 }')
    [ "$resolved" = "$lib/$soname" ] ||
        fail "the installed libggml-apir.so resolves libapir.so to '$resolved', not $lib/$soname"
    echo "consumer-cmake: the installed libggml-apir.so finds $soname beside it"
fi

# find_package(apir) for the shared library must not need libdrm's pkg-config file
# (only the static library links libdrm): configure a consumer of apir::apir with
# pkg-config finding nothing.
if [ -n "$(ls "$lib"/libapir.so.* 2>/dev/null)" ]; then
    mkdir -p "$scratch/nodrm/src" "$scratch/nodrm/empty-pc"
    cat >"$scratch/nodrm/src/CMakeLists.txt" <<'CMAKE'
cmake_minimum_required(VERSION 3.16)
project(apir-no-libdrm-pc CXX)
find_package(apir REQUIRED)
if(NOT TARGET apir::apir)
  message(FATAL_ERROR "find_package(apir) gave no apir::apir")
endif()
CMAKE
    env -u PKG_CONFIG_PATH PKG_CONFIG_LIBDIR="$scratch/nodrm/empty-pc" \
        cmake -S "$scratch/nodrm/src" -B "$scratch/nodrm/build" -G Ninja \
        -DCMAKE_PREFIX_PATH="$root" >"$scratch/nodrm.log" 2>&1 || {
        cat "$scratch/nodrm.log" >&2
        fail "find_package(apir) without libdrm's pkg-config file"
    }
    echo "consumer-cmake: find_package(apir) works without libdrm's pkg-config file"
fi

for m in module-shared module-static module-static-hidden; do
    so=$scratch/build/lib$m.so
    nm -D --defined-only "$so" | awk '{ print $3 }' | sort -u >"$scratch/$m.exports"
    leaked=$(comm -12 "$scratch/apir-entry-points" "$scratch/$m.exports" | c++filt)
    [ -z "$leaked" ] || fail "$m re-exports apir's entry points: $leaked"
    grep -qx consumer_module_handshake "$scratch/$m.exports" || fail "$m lost its own export"
done
# Built with hidden visibility: not one of apir's own symbols (std:: templates
# instantiated on apir's types may remain, with vague linkage).
if nm -D --defined-only -C "$scratch/build/libmodule-static-hidden.so" |
    grep -E '^[0-9a-f]+ [A-Za-z] ((typeinfo|typeinfo name|vtable) for )?apir::'; then
    fail "module-static-hidden exports apir symbols (above)"
fi
readelf -d "$scratch/build/libmodule-shared.so" | grep -q "NEEDED.*\[$soname\]" ||
    fail "module-shared does not need $soname"
if readelf -d "$scratch/build/libmodule-static.so" | grep -q "NEEDED.*libapir"; then
    fail "module-static needs libapir.so"
fi
echo "consumer-cmake: $soname exports $entry_points entry points; no module re-exports one"

"$scratch/build/apir-consumer-cmake" "$backend" "$scratch/build/libmodule-shared.so" \
    "$scratch/build/libmodule-static.so" "$scratch/build/libmodule-static-hidden.so"

if [ "$probe" = 1 ]; then
    # The installed probe finds the installed demo backend on its own.
    out=$("$bin/apir-probe" --transport loopback --calls 5) || {
        echo "$out" >&2
        fail "the installed apir-probe"
    }
    grep -qF "backend $backend" <<<"$out" || fail "the installed apir-probe did not load $backend: $out"
    echo "consumer-cmake: the installed apir-probe loaded $backend"
fi

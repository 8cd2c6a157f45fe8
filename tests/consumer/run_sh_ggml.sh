#!/usr/bin/env bash
# The README's ggml path after the quick start: a build directory set up without ggml,
# then ./run.sh again with ggml's pkg-config path. The second run must build with ggml
# (Meson reads PKG_CONFIG_PATH only at setup, so run.sh passes it as an option), and a
# ggml folder without ggml.pc must be a clear error, not a build without libggml-apir.
#
#   run_sh_ggml.sh <apir source root> <scratch dir>
# Needs APIR_GGML_PEER_DIR (skips otherwise). Only configures: no ninja target but
# build.ninja is built.
set -euo pipefail
root=$1 scratch=$2
if [ -z "${APIR_GGML_PEER_DIR:-}" ] || [ ! -f "$APIR_GGML_PEER_DIR/lib/pkgconfig/ggml.pc" ]; then
    echo "SKIP: APIR_GGML_PEER_DIR does not name a ggml build with lib/pkgconfig/ggml.pc"
    exit 77
fi
peer=$APIR_GGML_PEER_DIR
rm -rf "$scratch"
mkdir -p "$scratch"
export BUILD_DIR="$scratch/build"
export MESON_ARGS="-Dtests=disabled -Dexamples=false -Dbench=false -Dtools=false"

backend_built() { # prints True or False: the summary line of libggml-apir
    meson introspect "$BUILD_DIR" --buildoptions |
        python3 -c 'import json,sys; print([o["value"] for o in json.load(sys.stdin) if o["name"]=="ggml"][0])'
}

# 1. The quick start: no ggml anywhere.
env -u PKG_CONFIG_PATH -u APIR_GGML_PEER_DIR "$root/run.sh" build build.ninja >"$scratch/1.log" 2>&1
grep -q "ggml backend (libggml-apir): False" "$scratch/1.log" ||
    { echo "FAIL: the first setup found ggml"; cat "$scratch/1.log"; exit 1; }

# 2. The same directory, now with ggml's pkg-config path, as the README says.
env -u APIR_GGML_PEER_DIR PKG_CONFIG_PATH="$peer/lib/pkgconfig" \
    "$root/run.sh" build build.ninja >"$scratch/2.log" 2>&1 ||
    { echo "FAIL: run.sh with PKG_CONFIG_PATH failed"; cat "$scratch/2.log"; exit 1; }
[ "$(backend_built)" = enabled ] ||
    { echo "FAIL: PKG_CONFIG_PATH was not taken into the existing build directory"; cat "$scratch/2.log"; exit 1; }
grep -q "ggml backend (libggml-apir): True" "$scratch/2.log" ||
    { echo "FAIL: the reconfigured build does not build libggml-apir"; cat "$scratch/2.log"; exit 1; }
echo "ok: an existing build directory picks ggml up through PKG_CONFIG_PATH"

# 3. APIR_GGML_PEER_DIR naming a folder without ggml.pc: a clear error.
mkdir -p "$scratch/not-ggml/lib"
if env -u PKG_CONFIG_PATH APIR_GGML_PEER_DIR="$scratch/not-ggml" \
    "$root/run.sh" build build.ninja >"$scratch/3.log" 2>&1; then
    echo "FAIL: a ggml folder without ggml.pc was accepted"; cat "$scratch/3.log"; exit 1
fi
grep -q "has no lib/pkgconfig/ggml.pc" "$scratch/3.log" ||
    { echo "FAIL: no clear error for a ggml folder without ggml.pc"; cat "$scratch/3.log"; exit 1; }
echo "ok: a wrong ggml folder is a clear error"

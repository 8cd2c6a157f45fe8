#!/usr/bin/env bash
# ggml's unmodified guest frontend (libggml-virtgpu.so.0 in libggml.so.0) through the
# virtual render node, against apir's host loading ggml's unmodified host backend over
# ggml's CPU backend. The peer is $APIR_GGML_PEER_DIR (skip, 77, without it); the node
# is $APIR_VDRM_LIB. APIR_GGML_HOST_BACKEND names another host backend library to load
# instead of ggml's (e.g. libggml-apir-host).
#
#   run_ggml.sh check apir|venus   test-backend-ops support on the VirtGPU device, for
#                                  ADD MUL MUL_MAT SOFT_MAX ROPE GET_ROWS CPY; the capset
#                                  mode is GGML_REMOTING_USE_APIR_CAPSET set or unset
#   run_ggml.sh faults             what ggml's frontend does under each fault of the node
#   run_ggml.sh test apir|venus [test-backend-ops args...]
#                                  test-backend-ops test on the VirtGPU device (docs/VDRM.md)
set -uo pipefail

peer=${APIR_GGML_PEER_DIR:-}
if [ -z "$peer" ] || [ ! -x "$peer/bin/test-backend-ops" ]; then
    echo "skip: APIR_GGML_PEER_DIR does not name a ggml build with bin/test-backend-ops"
    exit 77
fi
lib=${APIR_VDRM_LIB:?APIR_VDRM_LIB names libapir-vdrm.so (and, first, a sanitizer runtime)}
device="[virtgpu] CPU" # ggml's VirtGPU device over the host's CPU backend
ops=(ADD MUL MUL_MAT SOFT_MAX ROPE GET_ROWS CPY)

# Runs test-backend-ops under the node; $1: apir|venus, then its arguments.
ggml() {
    local capset=$1
    shift
    local env=(LD_PRELOAD="$lib"
        APIR_VDRM_BACKEND="${APIR_GGML_HOST_BACKEND:-$peer/lib/libggml-virtgpu-backend.so.0}"
        APIR_VDRM_CONFIG="ggml.library.path=$peer/lib/libggml-cpu.so.0;ggml.library.reg=ggml_backend_cpu_reg")
    if [ "$capset" = apir ]; then
        env+=(GGML_REMOTING_USE_APIR_CAPSET=1)
    fi
    env -u GGML_REMOTING_USE_APIR_CAPSET "${env[@]}" ${VDRM_EXTRA_ENV:-} \
        timeout -k 5 "${VDRM_TIMEOUT:-120}" "$peer/bin/test-backend-ops" "$@"
}

expect() { # $1: output, $2: text that must be in it
    if ! grep -qF -- "$2" <<<"$1"; then
        echo "FAIL: expected '$2' in:"
        echo "$1" | tail -20
        exit 1
    fi
}

case "${1:-}" in
check)
    capset=${2:?apir or venus}
    for op in "${ops[@]}"; do
        out=$(ggml "$capset" support -b "$device" -o "$op" 2>&1)
        rc=$?
        [ $rc -eq 0 ] || {
            echo "FAIL: $op: test-backend-ops exited $rc"
            echo "$out" | tail -20
            exit 1
        }
        expect "$out" "ggml-virtgpu: using DRM device /dev/dri/renderD128"
        if [ "$capset" = apir ]; then
            expect "$out" "Using the APIR capset"
        else
            expect "$out" "Using the Venus capset"
        fi
        expect "$out" "Host is running with 0.2"
        expect "$out" "The API Remoting backend was successfully loaded and initialized"
        expect "$out" "Backend 1/2: $device"
        expect "$out" "2/2 backends passed"
        n=$(grep -c "SUPPORTED" <<<"$out")
        [ "$n" -gt 0 ] || {
            echo "FAIL: $op: no test case listed"
            exit 1
        }
        echo "$op ($capset): $n cases answered through the virtual node"
    done
    ;;
faults)
    # Each fault of the node, and what ggml's frontend makes of it (docs/VDRM.md).
    faults=("APIR_VDRM_DEVICE=blob=0" "APIR_VDRM_FAULT=get_caps=EIO"
        "APIR_VDRM_FAULT=execbuffer=EINVAL" "APIR_VDRM_FAULT=silent-host")
    for f in "${faults[@]}"; do
        for capset in apir venus; do
            start=$(date +%s.%N)
            out=$(VDRM_EXTRA_ENV="$f" VDRM_TIMEOUT=100 ggml "$capset" support -b "$device" -o ADD 2>&1)
            rc=$?
            took=$(echo "$(date +%s.%N) - $start" | bc)
            last=$(grep -E "ggml-virtgpu|GGML_ABORT|error" <<<"$out" | grep -v "^#" | tail -1)
            printf '%-36s %-6s exit %3d after %5.1f s: %s\n' "$f" "$capset" "$rc" "$took" "$last"
            # The frontend must stop (abort) on every one of these: it must not run on
            # as if the device worked, and it must not hang past its own deadlines.
            if [ $rc -eq 0 ] || [ $rc -eq 124 ] || [ $rc -eq 137 ]; then
                echo "FAIL: $f ($capset): exit $rc"
                echo "$out" | tail -20
                exit 1
            fi
        done
    done
    ;;
test)
    capset=${2:?apir or venus}
    shift 2
    ggml "$capset" test -b "$device" "$@"
    ;;
*)
    echo "usage: run_ggml.sh check apir|venus | faults | test apir|venus [args]" >&2
    exit 2
    ;;
esac

#!/usr/bin/env bash
# Runs ggml's own operator tests (test-backend-ops, test mode) on libggml-apir's device:
# every op on APIR0 is compared with ggml's CPU backend. APIR0 is a loopback to ggml's
# host backend (libggml-virtgpu-backend) over ggml's CPU backend, all in this process.
#
#   run_backend_ops.sh LIBGGML_APIR [test-backend-ops options...]   e.g. -o ADD,MUL -j 2
#
# The peer comes from APIR_GGML_PEER_DIR (a folder laid out like ../shared/ggml: bin/,
# lib/); without it the test is skipped (exit 77). Prints the counts at the end:
# passed, failed, not supported. APIR_GGML_OPS_LOG keeps the whole output in a file.
# TSAN_PRELOAD (a libtsan path) is preloaded into test-backend-ops, which is not
# instrumented, for a libggml-apir built with -fsanitize=thread.
# APIR_GGML_OPS_TRANSPORT=vtest runs the same over vtest instead of loopback: ggml's host
# backend is loaded by virglrenderer's APIR host, a virgl_test_server from
# APIR_VIRGL_PEER_DIR started here on a private socket, in a process group of its own
# that is killed at the end (its log is printed when the run fails).
set -euo pipefail

lib=${1:?usage: run_backend_ops.sh LIBGGML_APIR [test-backend-ops options]}
shift
peer=${APIR_GGML_PEER_DIR:-}
if [ -z "$peer" ]; then
    echo "SKIP: APIR_GGML_PEER_DIR is not set (a ggml build with bin/test-backend-ops and lib/)"
    exit 77
fi
for f in bin/test-backend-ops lib/libggml-virtgpu-backend.so.0 lib/libggml-cpu.so.0; do
    if [ ! -e "$peer/$f" ]; then
        echo "SKIP: $peer/$f is missing (APIR_GGML_PEER_DIR=$peer)"
        exit 77
    fi
done

transport=${APIR_GGML_OPS_TRANSPORT:-loopback}
export GGML_BACKEND_PATH=$lib
# APIR_GGML_HOST_BACKEND names another host backend library (e.g. libggml-apir-host).
host_backend=${APIR_GGML_HOST_BACKEND:-$peer/lib/libggml-virtgpu-backend.so.0}
log=${APIR_GGML_OPS_LOG:-$(mktemp)}
server_pid= server_dir=
cleanup() {
    if [ -n "$server_pid" ]; then
        kill -KILL -- "-$server_pid" 2>/dev/null || true
        wait "$server_pid" 2>/dev/null || true
    fi
    [ -z "$server_dir" ] || rm -rf "$server_dir"
    [ -n "${APIR_GGML_OPS_LOG:-}" ] || rm -f "$log"
}
trap cleanup EXIT

case $transport in
loopback)
    export APIR_GGML_TRANSPORT=loopback
    export APIR_GGML_BACKEND_LIBRARY=$host_backend
    export APIR_GGML_CONFIG="ggml.library.path=$peer/lib/libggml-cpu.so.0;ggml.library.reg=ggml_backend_cpu_reg"
    ;;
vtest)
    virgl=${APIR_VIRGL_PEER_DIR:-}
    if [ -z "$virgl" ] || [ ! -x "$virgl/bin/virgl_test_server" ]; then
        echo "SKIP: APIR_VIRGL_PEER_DIR is not set or has no bin/virgl_test_server"
        exit 77
    fi
    server_dir=$(mktemp -d)
    sock=$server_dir/vtest.sock
    # setsid: the server leads a process group of its own (its forked children join it).
    VIRGL_APIR_BACKEND_LIBRARY=$host_backend \
    APIR_LLAMA_CPP_GGML_LIBRARY_PATH=$peer/lib/libggml-cpu.so.0 \
    APIR_LLAMA_CPP_GGML_LIBRARY_REG=ggml_backend_cpu_reg \
    GGML_NO_BACKTRACE=1 \
        setsid "$virgl/bin/virgl_test_server" --no-virgl --socket-path "$sock" \
        >"$server_dir/server.log" 2>&1 &
    server_pid=$!
    for _ in $(seq 1000); do [ -S "$sock" ] && break; sleep 0.01; done
    [ -S "$sock" ] || { echo "virgl_test_server did not start"; cat "$server_dir/server.log"; exit 1; }
    export APIR_GGML_TRANSPORT=vtest
    export APIR_GGML_VTEST_SOCKET=$sock
    ;;
*)
    echo "APIR_GGML_OPS_TRANSPORT=$transport: loopback or vtest"
    exit 1
    ;;
esac
if [ -n "${TSAN_PRELOAD:-}" ]; then
    export LD_PRELOAD=$TSAN_PRELOAD
fi
start=$(date +%s)
set +e
"$peer/bin/test-backend-ops" test -b APIR0 "$@" >"$log" 2>&1
rc=$?
set -e
unset LD_PRELOAD
took=$(($(date +%s) - start))

# Per-case lines look like "  OP(params): OK", ": FAIL" or ": not supported [APIR0] ".
passed=$(grep -c '): .*OK' "$log" || true)
failed=$(grep -c '): .*FAIL' "$log" || true)
unsupported=$(grep -c '): not supported' "$log" || true)
grep -E 'FAIL|ThreadSanitizer|apir: error' "$log" | head -50 || true
tail -n 5 "$log"
echo "test-backend-ops on APIR0 over $transport: passed $passed, failed $failed," \
     "not supported $unsupported, exit $rc, $took s"

if [ "$rc" -ne 0 ]; then
    if [ -n "$server_dir" ]; then
        echo "--- virgl_test_server log"
        grep -v '^INFO' "$server_dir/server.log" | tail -n 40 || true
    fi
    exit 1
fi
# The device must have been there and tested, not skipped.
grep -q 'Backend APIR0: .*OK' "$log" || { echo "APIR0 was not tested"; exit 1; }
[ "$passed" -gt 0 ] || { echo "no test case ran on APIR0"; exit 1; }
if grep -q 'ThreadSanitizer' "$log"; then echo "ThreadSanitizer reported"; exit 1; fi
exit 0

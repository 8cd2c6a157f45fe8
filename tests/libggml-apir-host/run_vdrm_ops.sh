#!/usr/bin/env bash
# ggml's unmodified frontend (libggml-virtgpu in ggml's libggml) through the virtual render
# node against apir's host loading libggml-apir-host: test-backend-ops test on the VirtGPU
# device, which must have run cases and failed none (a device test-backend-ops skips
# reports success having tested nothing).
#
#   run_vdrm_ops.sh LIBGGML_APIR_HOST [test-backend-ops options...]
#
# Needs APIR_GGML_PEER_DIR and APIR_VDRM_LIB (tests/libapir-vdrm/run_ggml.sh; 77 without the peer).
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
export APIR_GGML_HOST_BACKEND=${1:?usage: run_vdrm_ops.sh LIBGGML_APIR_HOST [options]}
shift
log=${APIR_GGML_OPS_LOG:-$(mktemp)} # APIR_GGML_OPS_LOG keeps the whole output
[ -n "${APIR_GGML_OPS_LOG:-}" ] || trap 'rm -f "$log"' EXIT
VDRM_TIMEOUT=${VDRM_TIMEOUT:-800} bash "$here/../libapir-vdrm/run_ggml.sh" test apir "$@" >"$log" 2>&1
rc=$?
[ $rc -eq 77 ] && { cat "$log"; exit 77; }
grep -E 'FAIL|GGML_ABORT' "$log" | head -20
tail -n 6 "$log"
passed=$(grep -c '): .*OK' "$log" || true)
failed=$(grep -c '): .*FAIL' "$log" || true)
echo "test-backend-ops on [virtgpu] CPU: passed $passed, failed $failed, exit $rc"
[ $rc -eq 0 ] && [ "$failed" -eq 0 ] && [ "$passed" -gt 0 ]

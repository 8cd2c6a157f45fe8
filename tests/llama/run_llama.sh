#!/usr/bin/env bash
# llama.cpp end to end: greedy generation on the local CPU backend and on a remote device,
# compared token by token and bit by bit (every logits vector), once per path a guest can
# take. The llama.cpp build and its check are $APIR_LLAMA_PEER_DIR (README.md and run.sh
# there); without it this skips (77).
#
#   run_llama.sh PATH OUTDIR
#
# PATH (each one meson test, so a failure names it):
#   loopback-threaded   libggml-apir, in-process host on its own thread
#   loopback-inline     libggml-apir, in-process host run inline by the caller
#   loopback-fa-off     loopback-threaded with flash attention off (attention as
#                       SOFT_MAX, CONT and matrix products: other ops than the default run)
#   loopback-apir-host  loopback-threaded, vdrm-apir and vtest against apir's own host
#   vdrm-apir-host      backend ($APIR_LLAMA_APIR_HOST, libggml-apir-host.so) instead of
#   vtest-apir-host     ggml's: zero-copy buffers (checked in libggml-apir's log), and
#                       flash attention on the host (checked: 2 graph splits, not one
#                       more per layer)
#   vdrm-apir           libggml-apir over virtio-gpu through the virtual render node
#                       (APIR_LLAMA_VDRM_LIB), the node offering the APIR capset
#   vdrm-venus          the same, the node offering only Venus (transition mode, +331)
#   vtest               libggml-apir over vtest (APIR_GGML_TRANSPORT=vtest) to
#                       virglrenderer's host (virgl_test_server of $APIR_VIRGL_PEER_DIR)
#   frontend-apir       ggml's own unmodified frontend ($APIR_GGML_PEER_DIR's libggml with
#   frontend-venus      libggml-virtgpu) through the node, both capset modes, against the
#                       host backend library $APIR_LLAMA_FRONTEND_HOST_LIB (skips unset)
#
# Environment: APIR_LLAMA_GGML_APIR (libggml-apir.so under test), APIR_LLAMA_VDRM_LIB (what
# LD_PRELOAD takes for the node), APIR_LLAMA_TIMEOUT (seconds per program, 240).
# Logs and results stay in OUTDIR (emptied first); a failure prints the path, the step that
# diverged (the check's own FAIL lines) and where the logs are.
set -uo pipefail

path=${1:?usage: run_llama.sh PATH OUTDIR}
out=${2:?usage: run_llama.sh PATH OUTDIR}
peer=${APIR_LLAMA_PEER_DIR:-}
if [ -z "$peer" ] || [ ! -x "$peer/run.sh" ] || [ ! -x "$peer/bin/apir-llama-check" ]; then
    echo "skip: APIR_LLAMA_PEER_DIR does not name the llama.cpp peer (run.sh, bin/apir-llama-check)"
    exit 77
fi
apir_so=${APIR_LLAMA_GGML_APIR:?APIR_LLAMA_GGML_APIR names libggml-apir.so}
limit=${APIR_LLAMA_TIMEOUT:-240}
model=$peer/models/tiny-llama-f16.gguf

rm -rf "$out"
mkdir -p "$out"
start=${EPOCHREALTIME/./}

fail() {
    echo "FAIL [$path]: $*"
    echo "  logs: $out"
    exit 1
}
skip() {
    echo "skip [$path]: $*"
    exit 77
}
pass() {
    local us=$((${EPOCHREALTIME/./} - start))
    printf 'PASS [%s]: %s (%d.%01d s)\n' "$path" "$*" $((us / 1000000)) $((us / 100000 % 10))
    exit 0
}

# The peer's libraries, loadable (peer.sh); every program runs with this folder first on
# its search path.
. "$(dirname "${BASH_SOURCE[0]}")/peer.sh"
lib=$out/lib
peer_libs "$peer" "$lib"
host_lib=$lib/libggml-virtgpu-backend.so.0
host_cpu=$lib/libggml-cpu.so.0
host_config="ggml.library.path=$host_cpu;ggml.library.reg=ggml_backend_cpu_reg"
unset APIR_GGML_TRANSPORT APIR_GGML_LOOPBACK_MODE GGML_REMOTING_USE_APIR_CAPSET APIR_GGML_NODE PEER_FA PEER_N PEER_PROMPT

# run.sh check over the environment set by the caller; $1: the device description's
# transport (libggml-apir names it: "... over APIR <transport>)"). $verify, when set, is
# a command that must succeed on the APIR0 run's log before the path passes.
verify=
check() {
    local transport=$1
    local rc=0
    PEER_OUT=$out/check APIR_HOST_LIB=$host_lib APIR_HOST_CPU=$host_cpu \
        timeout -k 5 "$limit" "$peer/run.sh" check "$apir_so" >"$out/check.txt" 2>&1 || rc=$?
    cat "$out/check.txt"
    [ $rc -ne 124 ] || fail "the check did not end within ${limit} s"
    [ $rc -eq 0 ] || fail "the check failed (exit $rc): $(grep -E '^(FAIL|NOTE|run.sh)' "$out/check.txt" | head -3 | tr '\n' ' ')"
    # the path this test names is the one the APIR0 run took
    grep -qE "using device APIR0 \(.*over APIR $transport\)" "$out/check/check-apir.log" ||
        fail "the APIR0 run did not go over '$transport': $(grep -m1 'using device' "$out/check/check-apir.log")"
    [ -z "$verify" ] || $verify "$out/check/check-apir.log"
    pass "llama.cpp on APIR0 over $transport: tokens and logits identical to the local CPU"
}

# The APIR0 run of an *-apir-host path had apir's host: libggml-apir made zero-copy
# buffers (ggml's own host backend does not offer them), and FLASH_ATTN_EXT, in the host's
# checked table, ran on the host: ggml's scheduler made the 2 splits of a graph that runs
# whole on APIR0 (the token embeddings stay on the local CPU), not one more per layer.
apir_host_used() {
    local splits
    grep -qF "zero-copy buffers: the host offers them" "$1" ||
        fail "libggml-apir made no zero-copy buffers: was the host apir's? ($(grep -m1 -F 'zero-copy' "$1"))"
    splits=$(grep -m1 -oE 'graph splits = [0-9]+' "$1" | grep -oE '[0-9]+$')
    [ -n "$splits" ] && [ "$splits" -le 2 ] ||
        fail "the APIR0 run made ${splits:-no} graph splits: FLASH_ATTN_EXT did not run on apir's host"
}

vdrm_env() { # $1: capsets the node offers
    local node=${APIR_LLAMA_VDRM_LIB:-}
    [ -n "$node" ] || skip "no virtual render node (APIR_LLAMA_VDRM_LIB unset: the build has no libapir-vdrm.so)"
    export LD_PRELOAD=$node APIR_VDRM_CAPSETS=$1 APIR_VDRM_BACKEND=$host_lib APIR_VDRM_CONFIG=$host_config
}

# Does libggml-apir accept APIR_GGML_TRANSPORT=$1? Its log for that value is compared with
# its log for a value no build accepts (the value itself masked): the same refusal means no.
transport_accepted() {
    local probe=(env -u LD_PRELOAD GGML_BACKEND_PATH="$apir_so" APIR_GGML_LOG=warn
        timeout -k 5 60 "$peer/bin/apir-llama-check" -m /nonexistent.gguf)
    local a b
    a=$(APIR_GGML_TRANSPORT=$1 "${probe[@]}" 2>&1 | grep -F "$1" | sed "s/$1/X/g")
    b=$(APIR_GGML_TRANSPORT=no-such-transport "${probe[@]}" 2>&1 | grep -F no-such-transport |
        sed "s/no-such-transport/X/g")
    [ -n "$b" ] || fail "libggml-apir did not refuse APIR_GGML_TRANSPORT=no-such-transport (no log line naming it)"
    [ "$a" != "$b" ]
}

# ggml's own frontend: apir-llama-check on "[virtgpu] CPU" against the local CPU, with
# the ggml of $APIR_GGML_PEER_DIR (the same commit as the peer's, with the frontend built
# in) for both runs. run.sh check knows only APIR0, so the comparison is done here.
frontend() { # $1: apir|venus
    local capset=$1 ggml=${APIR_GGML_PEER_DIR:-}
    [[ -n $ggml && -f $ggml/lib/libggml-virtgpu.so.0 ]] ||
        skip "APIR_GGML_PEER_DIR does not name a ggml build with libggml-virtgpu.so.0"
    local frontend_host=${APIR_LLAMA_FRONTEND_HOST_LIB:-}
    [ -n "$frontend_host" ] ||
        skip "APIR_LLAMA_FRONTEND_HOST_LIB unset: with ggml's own host backend llama.cpp aborts on this path before its first token (docs/VM.md); set it to a host backend library to run it"
    [ -f "$frontend_host" ] || fail "no host backend library at $frontend_host"
    local glib=$out/ggml-lib
    mkdir -p "$glib"
    for f in "$ggml"/lib/libggml*.so.0; do ln -sf "$f" "$glib/"; done
    vdrm_env "$([ "$capset" = apir ] && echo virgl2,venus,apir || echo venus)"
    export APIR_VDRM_BACKEND=$frontend_host APIR_VDRM_CONFIG="ggml.library.path=$glib/libggml-cpu.so.0;ggml.library.reg=ggml_backend_cpu_reg"
    [ "$capset" = apir ] && export GGML_REMOTING_USE_APIR_CAPSET=1
    export GGML_NO_BACKTRACE=1 LD_LIBRARY_PATH=$glib:$LD_LIBRARY_PATH
    local args=(-m "$model" -n 48 -t 4 -fa on -v) rc=0
    env -u LD_PRELOAD timeout -k 5 "$limit" "$peer/bin/apir-llama-check" "${args[@]}" -ngl 0 \
        >"$out/cpu.txt" 2>"$out/cpu.log" || fail "the local CPU run exited with $? (log: $out/cpu.log)"
    timeout -k 5 "$limit" "$peer/bin/apir-llama-check" "${args[@]}" -ngl 99 -dev "[virtgpu] CPU" \
        >"$out/virtgpu.txt" 2>"$out/virtgpu.log" || rc=$?
    if [ $rc -ne 0 ]; then
        grep -v '^#' "$out/virtgpu.log" | grep -E 'ASSERT|error|abort|failed' | tail -3
        fail "the [virtgpu] CPU run exited with $rc, after $(grep -c '^step' "$out/virtgpu.txt") of 48 steps (log: $out/virtgpu.log)"
    fi
    local want
    want=$([ "$capset" = apir ] && echo "Using the APIR capset" || echo "Using the Venus capset")
    for pat in "$want" "using device [virtgpu] CPU" "offloaded 5/5 layers to GPU"; do
        grep -qF "$pat" "$out/virtgpu.log" || fail "not in the [virtgpu] CPU run's log: '$pat'"
    done
    for f in cpu virtgpu; do grep -E '^(gen_ids|logits_hash):' "$out/$f.txt" >"$out/result-$f.txt"; done
    if ! cmp -s "$out/result-cpu.txt" "$out/result-virtgpu.txt"; then
        echo "first differing step (CPU, then [virtgpu] CPU):"
        diff <(grep '^step' "$out/cpu.txt") <(grep '^step' "$out/virtgpu.txt") | head -4
        fail "the tokens or logits of [virtgpu] CPU differ from the local CPU's"
    fi
    pass "llama.cpp on ggml's frontend ($capset capset): tokens and logits identical to the local CPU"
}

base=$path # the path under test, without -apir-host
if [[ $path == *-apir-host ]]; then
    host_lib=${APIR_LLAMA_APIR_HOST:-}
    [ -n "$host_lib" ] || skip "APIR_LLAMA_APIR_HOST unset (the build has no libggml-apir-host.so)"
    [ -f "$host_lib" ] || fail "no host backend library at $host_lib"
    export APIR_GGML_LOG=info # libggml-apir says whether its buffers are zero-copy
    verify=apir_host_used
    base=${path%-apir-host}
    case $base in loopback) base=loopback-threaded ;; vdrm) base=vdrm-apir ;; esac
fi

case $base in
loopback-threaded | loopback-inline)
    export APIR_GGML_TRANSPORT=loopback APIR_GGML_LOOPBACK_MODE=${base#loopback-}
    check "$base"
    ;;
loopback-fa-off)
    export APIR_GGML_TRANSPORT=loopback APIR_GGML_LOOPBACK_MODE=threaded PEER_FA=off
    check loopback-threaded
    ;;
vdrm-apir | vdrm-venus)
    vdrm_env "$([ "$base" = vdrm-apir ] && echo virgl2,venus,apir || echo venus)"
    export APIR_GGML_TRANSPORT=virtgpu
    check "$([ "$base" = vdrm-apir ] && echo virtgpu || echo virtgpu-venus)"
    ;;
vtest)
    transport_accepted vtest || skip "libggml-apir has no vtest transport (it refuses APIR_GGML_TRANSPORT=vtest)"
    server=${APIR_VIRGL_PEER_DIR:-}/bin/virgl_test_server
    [ -x "$server" ] || skip "APIR_VIRGL_PEER_DIR does not name a virglrenderer build with bin/virgl_test_server"
    sock=$out/vtest.sock
    started=0
    start_vtest_server "$server" "$sock" "$out/server.log" "$host_lib" "$host_cpu" || started=$?
    trap 'kill -- -$vtest_server_pid 2>/dev/null; wait $vtest_server_pid 2>/dev/null' EXIT
    [ $started -eq 0 ] || fail "virgl_test_server made no socket in 10 s (log: $out/server.log)"
    export APIR_GGML_TRANSPORT=vtest APIR_GGML_VTEST_SOCKET=$sock
    check "[^)]*vtest"
    ;;
frontend-apir | frontend-venus)
    frontend "${path#frontend-}"
    ;;
*)
    echo "run_llama.sh: unknown path '$path'" >&2
    exit 2
    ;;
esac

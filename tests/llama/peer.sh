# Sourced by tests/llama/run_llama.sh and bench/llama_bench.sh: the llama.cpp peer's
# libraries made loadable, and virglrenderer's vtest server started with an APIR host.

# peer_libs PEER DIR: DIR gets a link to each of the peer's libraries, with any link that a
# copy flattened into a file holding the link's target name (a 17-byte "libllama.so.0" that
# the loader rejects as "file too short") turned back into a link; DIR goes first on
# LD_LIBRARY_PATH, so every program runs with it.
peer_libs() {
    local peer=$1 dir=$2 f t target
    mkdir -p "$dir"
    for f in "$peer"/lib/*.so*; do
        target=$f t=
        IFS= read -r -n 64 t <"$f" 2>/dev/null || true
        [[ $t == lib*.so* && $t != */* && -f $peer/lib/$t ]] && target=$peer/lib/$t
        ln -sf "$target" "$dir/${f##*/}"
    done
    export LD_LIBRARY_PATH=$dir${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
}

# start_vtest_server SERVER SOCKET LOG HOST_LIB HOST_CPU: virgl_test_server on SOCKET, its
# APIR host loading HOST_LIB (an APIR backend library) over the ggml backend HOST_CPU, in a
# process group of its own (the server forks a child per connection; stop the whole group
# with `kill -- -$vtest_server_pid`). Sets vtest_server_pid; fails when no socket appears
# within 10 s.
start_vtest_server() {
    local server=$1 sock=$2 log=$3 host_lib=$4 host_cpu=$5
    rm -f "$sock"
    setsid env VIRGL_APIR_BACKEND_LIBRARY="$host_lib" APIR_LLAMA_CPP_GGML_LIBRARY_PATH="$host_cpu" \
        APIR_LLAMA_CPP_GGML_LIBRARY_REG=ggml_backend_cpu_reg GGML_NO_BACKTRACE=1 \
        "$server" --no-virgl --socket-path "$sock" >"$log" 2>&1 &
    vtest_server_pid=$!
    for _ in $(seq 100); do
        [ -S "$sock" ] && return 0
        sleep 0.1
    done
    return 1
}

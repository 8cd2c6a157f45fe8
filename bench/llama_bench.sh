#!/usr/bin/env bash
# llama.cpp through APIR0 against apir's own host backend, over the in-process loopback
# and over vtest to virglrenderer's host, beside the local CPU and ggml-rpc, in the same
# rounds: the llama.cpp peer's `run.sh bench` (llama-bench, prompt processing and token
# generation) once per round, thread count and transport, configurations interleaved.
#
#   llama_bench.sh [--quick] [--rounds N] [--threads "2 4"] [--out DIR]
#
#   --quick     1 round at 2 threads, pp32 and tg16, 1 repetition: that every column runs
#               (CI); its figures mean little
#   --rounds N  rounds (5); --threads: llama.cpp's and ggml-rpc's thread counts ("2 4")
#   --out DIR   logs and results (a new folder under $TMPDIR)
#
# Environment: APIR_LLAMA_PEER_DIR (the llama.cpp peer: run.sh, bin/, lib/, models/;
# without it this skips, 77), APIR_VIRGL_PEER_DIR (virglrenderer's build with
# bin/virgl_test_server; without it the vtest column is left out, and said so),
# APIR_LLAMA_GGML_APIR and APIR_LLAMA_APIR_HOST (libggml-apir.so and libggml-apir-host.so;
# meson's benchmark sets them; by default the build folder's, build/ beside this folder).
# PEER_REPS, PEER_PP, PEER_TG and PEER_FA pass through to run.sh (3, 128, 64, off here).
#
# Prints every run's figures, then per thread count and test the median [range] of each
# column in tokens/s and the median [range] of its ratio to the local CPU's figure of the
# same round (the vtest column's: of a local CPU run in its own run.sh bench, just before
# it, so that the machine's drift between the two does not count). Exits non-zero when a run fails or a column has no figure, or when an APIR0
# run did not take the path it names (transport and zero-copy buffers, from its log).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(dirname "$here")
rounds=5 threads="2 4" out= quick=0
while [ $# -gt 0 ]; do
    case $1 in
    --quick) quick=1 rounds=1 threads=2 ;;
    --rounds) rounds=${2:?--rounds N}; shift ;;
    --threads) threads=${2:?--threads \"2 4\"}; shift ;;
    --out) out=${2:?--out DIR}; shift ;;
    *) echo "usage: $0 [--quick] [--rounds N] [--threads \"2 4\"] [--out DIR]" >&2; exit 2 ;;
    esac
    shift
done
[[ $rounds =~ ^[1-9][0-9]*$ ]] || { echo "llama_bench.sh: --rounds wants a positive count" >&2; exit 2; }

peer=${APIR_LLAMA_PEER_DIR:-}
if [ -z "$peer" ] || [ ! -x "$peer/run.sh" ] || [ ! -x "$peer/bin/llama-bench" ]; then
    echo "skip: APIR_LLAMA_PEER_DIR does not name the llama.cpp peer (run.sh, bin/llama-bench)"
    exit 77
fi
apir_so=${APIR_LLAMA_GGML_APIR:-$root/build/src/libggml-apir/libggml-apir.so}
host_lib=${APIR_LLAMA_APIR_HOST:-$root/build/src/libggml-apir-host/libggml-apir-host.so}
for f in "$apir_so" "$host_lib"; do
    [ -f "$f" ] || { echo "llama_bench.sh: no such file: $f (build apir first, or set APIR_LLAMA_GGML_APIR and APIR_LLAMA_APIR_HOST)" >&2; exit 2; }
done
server=${APIR_VIRGL_PEER_DIR:-}/bin/virgl_test_server
[ -x "$server" ] || server=

[ -n "$out" ] || out=$(mktemp -d "${TMPDIR:-/tmp}/apir-llama-bench.XXXXXX")
mkdir -p "$out"
. "$root/tests/llama/peer.sh"
peer_libs "$peer" "$out/lib"
host_cpu=$out/lib/libggml-cpu.so.0

export PEER_FA=${PEER_FA:-off} PEER_REPS=${PEER_REPS:-3} PEER_PP=${PEER_PP:-128} PEER_TG=${PEER_TG:-64}
if [ $quick -eq 1 ]; then
    PEER_REPS=1 PEER_PP=32 PEER_TG=16
fi
unset APIR_GGML_TRANSPORT APIR_GGML_VTEST_SOCKET APIR_GGML_LOOPBACK_MODE
export APIR_GGML_LOG=info # libggml-apir says whether it made zero-copy buffers

vtest_server_pid=
trap '[ -z "$vtest_server_pid" ] || { kill -- -$vtest_server_pid 2>/dev/null; wait $vtest_server_pid 2>/dev/null || true; }' EXIT
if [ -n "$server" ]; then
    start_vtest_server "$server" "$out/vtest.sock" "$out/vtest-server.log" "$host_lib" "$host_cpu" || {
        echo "llama_bench.sh: virgl_test_server made no socket in 10 s (log: $out/vtest-server.log)" >&2
        exit 1
    }
fi

echo "llama.cpp run.sh bench: $rounds round(s), threads $threads, pp$PEER_PP tg$PEER_TG, $PEER_REPS repetition(s), flash attention $PEER_FA"
echo "columns: local CPU, APIR0 over the loopback, $([ -n "$server" ] && echo "APIR0 over vtest, ")ggml-rpc; host: $host_lib"
[ -n "$server" ] || echo "(no vtest column: APIR_VIRGL_PEER_DIR does not name a build with bin/virgl_test_server)"
echo "(logs: $out; load average $(cut -d' ' -f1-3 /proc/loadavg))"

results=$out/results.jsonl
: >"$results"
# One run.sh bench; $1: the APIR0 run's transport (loopback, vtest), $2 the round, $3 the
# threads; the rest: the environment of the run (PEER_BENCH: its configurations). Its rows
# go to $results with round, threads and column (cpu, rpc, or the transport).
bench() {
    local via=$1 round=$2 t=$3 dir
    shift 3
    dir=$out/round$round-t$t-$via
    env "$@" PEER_THREADS="$t" PEER_OUT="$dir" APIR_HOST_LIB="$host_lib" APIR_HOST_CPU="$host_cpu" \
        timeout -k 5 900 "$peer/run.sh" bench "$apir_so" 1 >"$dir.txt" 2>&1 || {
        echo "llama_bench.sh: run.sh bench failed (round $round, $t threads, $via):" >&2
        tail -5 "$dir.txt" >&2
        exit 1
    }
    python3 - "$dir/bench.jsonl" "$round" "$t" "$via" >>"$results" <<'PY' || exit 1
import json, sys
path, rnd, threads, via = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
for line in open(path):
    r = json.loads(line)
    # A local CPU run beside the vtest one is that column's own reference.
    col = via if r["config"] == "apir" else r["config"] if via == "loopback" else r["config"] + "-" + via
    # An APIR0 run went over the transport its column names (the device's description).
    if col == via and "over APIR " + via not in r.get("gpu_info", ""):
        sys.exit("llama_bench.sh: the APIR0 run over %s was on '%s'" % (via, r.get("gpu_info")))
    test = "pp%d" % r["n_prompt"] if r["n_prompt"] else "tg%d" % r["n_gen"]
    print(json.dumps({"round": rnd, "threads": threads, "column": col, "test": test, "ts": r["avg_ts"]}))
PY
    # apir's host backend was behind it: libggml-apir made zero-copy buffers.
    local log
    for log in "$dir"/bench-apir-*.log; do
        grep -qF "zero-copy buffers: the host offers them" "$log" || {
            echo "llama_bench.sh: the APIR0 run over $via made no zero-copy buffers: was the host apir's? ($log)" >&2
            exit 1
        }
    done
    sed -n -e "s/^run 1 apir: /  round $round, $t threads, APIR0 $via: /p" \
        -e "s/^run 1 cpu: /  round $round, $t threads, local CPU ($via's run): /p" \
        -e "s/^run 1 rpc: /  round $round, $t threads, ggml-rpc: /p" "$dir.txt"
}

for round in $(seq "$rounds"); do
    for t in $threads; do
        bench loopback "$round" "$t" PEER_BENCH="cpu apir rpc"
        if [ -n "$server" ]; then
            bench vtest "$round" "$t" PEER_BENCH="cpu apir" APIR_GGML_TRANSPORT=vtest \
                APIR_GGML_VTEST_SOCKET="$out/vtest.sock"
        fi
    done
done

python3 - "$results" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
cols = [c for c in ("cpu", "loopback", "vtest", "rpc") if any(r["column"] == c for r in rows)]
names = {"cpu": "local CPU", "loopback": "APIR0 loopback", "vtest": "APIR0 vtest", "rpc": "ggml-rpc"}
fig = {}
for r in rows:
    fig[(r["threads"], r["test"], r["column"], r["round"])] = r["ts"]
keys = sorted({(r["threads"], r["test"]) for r in rows}, key=lambda k: (k[0], k[1][:2] != "pp", k[1]))
rounds = sorted({r["round"] for r in rows})
def span(v, f):
    return "%s [%s-%s]" % (f(statistics.median(v)), f(min(v)), f(max(v)))
print()
print("medians [ranges] over %d round(s): tokens/s; below each, its ratio to the local CPU in the same round" % len(rounds))
if "vtest" in cols:
    print("(the vtest column's ratio is to the local CPU run of its own run.sh bench, just before it)")
print("| threads | test | " + " | ".join(names[c] for c in cols) + " |")
print("| --- | --- |" + " --- |" * len(cols))
missing = []
for t, test in keys:
    cells, ratios = [], []
    for c in cols:
        v = [fig[(t, test, c, n)] for n in rounds if (t, test, c, n) in fig]
        if len(v) != len(rounds):
            missing.append("%s %s at %d threads: %d of %d rounds" % (names[c], test, t, len(v), len(rounds)))
        cells.append(span(v, lambda x: "%.0f" % x) if v else "-")
        # Each APIR0 column against the local CPU run of its own run.sh bench.
        ref = "cpu-vtest" if c == "vtest" else "cpu"
        q = [fig[(t, test, c, n)] / fig[(t, test, ref, n)] for n in rounds
             if (t, test, c, n) in fig and fig.get((t, test, ref, n))]
        ratios.append(span(q, lambda x: "%.2f" % x) if q and c != "cpu" else "")
    print("| %d | %s | %s |" % (t, test, " | ".join(cells)))
    print("| | ratio | %s |" % " | ".join(ratios))
if missing:
    sys.exit("llama_bench.sh: columns without a figure: " + "; ".join(missing))
PY

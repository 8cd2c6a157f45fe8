#!/usr/bin/env bash
# The demo as a user runs it: a short run over the threaded loopback must succeed, name
# its deliberate failures as such and its commands by name; bad numbers are refused.
# usage: run_demo.sh <apir-demo>
set -uo pipefail
demo=$1
fail() {
    echo "FAIL: $*"
    exit 1
}

out=$("$demo" --calls 2000 --bulk-mib 8 2>&1) || fail "apir-demo exited $?: $out"
echo "$out"
grep -q '^fail(7), a deliberate backend error: ' <<<"$out" || fail "fail(7) not labelled deliberate"
grep -q '^command 99, deliberately one the backend lacks: ' <<<"$out" ||
    fail "command 99 not labelled deliberate"
grep -q 'checksums match' <<<"$out" || fail "no bulk checksum line"
# The counters name the demo's commands; only the unknown one stays a number.
for name in Echo Add Checksum Fail 'FORWARD 99'; do
    grep -q "^$name  *[0-9]" <<<"$out" || fail "no counters row for $name"
done
grep -q '^FORWARD [0-9]  ' <<<"$out" && fail "a known command is shown as a bare FORWARD id"
grep -q '^Add  *200[0-9] ' <<<"$out" || fail "Add row does not count the 2000 timed calls"

for bad in "--calls abc" "--calls 12x" "--calls -1" "--calls ''" "--bulk-mib 0" \
    "--bulk-mib 99999"; do
    eval "set -- $bad"
    err=$("$demo" "$@" 2>&1)
    rc=$?
    [ "$rc" = 2 ] || fail "apir-demo $bad: exit $rc, expected 2 (bad arguments): $err"
    grep -q "wants" <<<"$err" || fail "apir-demo $bad: no explanation: $err"
done
echo "PASS"

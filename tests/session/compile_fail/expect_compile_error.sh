#!/usr/bin/env bash
# usage: expect_compile_error.sh SOURCE EXPECTED_MESSAGE COMPILER [ARGS...]
# Passes when compiling SOURCE fails and the diagnostics contain EXPECTED_MESSAGE.
set -u
src=$1 expected=$2
shift 2
if out=$("$@" -fsyntax-only "$src" 2>&1); then
    echo "expected a compile error, but $src compiled" >&2
    exit 1
fi
if ! grep -qF -- "$expected" <<<"$out"; then
    echo "compile failed, but without: $expected" >&2
    echo "$out" | head -20 >&2
    exit 1
fi
echo "compile error as expected: $expected"

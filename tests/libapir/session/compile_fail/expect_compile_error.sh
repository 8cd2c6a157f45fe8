#!/usr/bin/env bash
# usage: expect_compile_error.sh [--only-error] SOURCE EXPECTED_MESSAGE COMPILER [ARGS...]
# Passes when compiling SOURCE fails and the diagnostics contain EXPECTED_MESSAGE;
# with --only-error, also when that is the only error the compiler reports.
set -u
only=0
if [ "${1:-}" = --only-error ]; then
    only=1
    shift
fi
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
errors=$(grep -cE '(^|: )(fatal )?error:' <<<"$out")
if [ "$only" = 1 ] && [ "$errors" -ne 1 ]; then
    echo "expected only one error, the compiler reported $errors:" >&2
    echo "$out" | head -20 >&2
    exit 1
fi
echo "compile error as expected: $expected"

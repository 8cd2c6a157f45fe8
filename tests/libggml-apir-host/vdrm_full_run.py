#!/usr/bin/env python3
"""ggml's unmodified frontend against libggml-apir-host: every case the host supports.

ggml's frontend answers supports_op itself (always true) and aborts its process on the
first graph the host refuses, and it never destroys a freed buffer's shared blob, so
test-backend-ops cannot run its whole list through it in one process. This runs the
cases the host supports, as a full libggml-apir run found them (a log of
tests/libggml-apir/run_backend_ops.sh with APIR_GGML_HOST_BACKEND and APIR_GGML_OPS_LOG),
through ggml's frontend in batches of at most --batch cases, one process each
(tests/libggml-apir-host/run_vdrm_ops.sh), and prints the counts per op family and in all.

    vdrm_full_run.py LIBGGML_APIR_HOST APIR_RUN_LOG [--batch N] [--exclude REGEX]

Needs APIR_GGML_PEER_DIR and APIR_VDRM_LIB, as run_vdrm_ops.sh does.
"""
import argparse
import collections
import os
import re
import subprocess
import sys
import time

CASE = re.compile(r"^  ([A-Z_0-9]+)\((.*)\): .*OK")
ANSI = re.compile(r"\x1b\[[0-9;]*m")


def supported_cases(log):
    cases = collections.OrderedDict()
    with open(log, errors="replace") as f:
        for line in f:
            m = CASE.match(ANSI.sub("", line))
            # test-backend-ops lists a few cases twice (same parameters): a pattern
            # runs every case with those parameters, so each is listed once here.
            if m and m.group(2) not in cases.setdefault(m.group(1), []):
                cases[m.group(1)].append(m.group(2))
    return cases


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("host_lib")
    ap.add_argument("run_log")
    ap.add_argument("--batch", type=int, default=120)
    ap.add_argument("--exclude", default=None,
                    help="cases whose parameters match are left out (and counted)")
    a = ap.parse_args()
    runner = os.path.join(os.path.dirname(os.path.abspath(__file__)), "run_vdrm_ops.sh")
    cases = supported_cases(a.run_log)
    if not cases:
        sys.exit(f"{a.run_log}: no passed case found")
    excl = re.compile(a.exclude) if a.exclude else None
    totals = collections.Counter()
    failed_batches = []
    start = time.monotonic()
    for op, params in cases.items():
        left_out = [p for p in params if excl and excl.search(p)]
        todo = [p for p in params if not (excl and excl.search(p))]
        counts = collections.Counter(excluded=len(left_out))
        for i in range(0, len(todo), a.batch):
            batch = todo[i:i + a.batch]
            pattern = "^(?:" + "|".join(re.escape(p) for p in batch) + ")$"
            r = subprocess.run([runner, a.host_lib, "-o", op, "-p", pattern],
                               capture_output=True, text=True)
            m = re.search(r"passed (\d+), failed (\d+), exit (-?\d+)", r.stdout)
            passed, failed = (int(m.group(1)), int(m.group(2))) if m else (0, 0)
            counts["passed"] += passed
            counts["failed"] += failed
            # At least one case per parameter string (more when a string is listed twice).
            if r.returncode != 0 or failed or passed < len(batch):
                failed_batches.append((op, i, len(batch), passed, failed, r.returncode))
                print(r.stdout[-2000:], file=sys.stderr)
        totals.update(counts)
        print(f"{op}: passed {counts['passed']}, failed {counts['failed']}, "
              f"left out {counts['excluded']}", flush=True)
    print(f"in all: {len(cases)} op families, passed {totals['passed']}, failed "
          f"{totals['failed']}, left out {totals['excluded']}, "
          f"{len(failed_batches)} batch(es) not clean, {time.monotonic() - start:.0f} s")
    for b in failed_batches:
        print("not clean: {} cases {}..+{}: passed {}, failed {}, exit {}".format(*b))
    sys.exit(1 if failed_batches or totals["failed"] else 0)


if __name__ == "__main__":
    main()

#!/usr/bin/env bash
# Instructions per call of the middleware pipeline, one variant per process, under callgrind:
#
#   ./bazelw build //bench/interceptors:hooks
#   bench/interceptors/hooks.sh handler noop full ServerMetrics -AccessLog
#
# handler = the bare handler; noop = the pipeline with one empty middleware; full = the standard
# stack; Name = only that middleware; -Name = the standard stack without it. Prints instructions per
# call, counted only inside the measured loop (see hooks.py). Needs valgrind.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
calls=2000
for variant in "$@"; do
  out="$(mktemp)"
  # --trace-children: Bazel's launcher execs the real interpreter.
  valgrind --tool=callgrind --trace-children=yes --collect-atstart=no --toggle-collect='functools_reduce*' \
    --callgrind-out-file="${out}.%p" bazel-bin/bench/interceptors/hooks --calls "${calls}" -- "${variant}" \
    >/dev/null 2>&1
  total=$(cat "${out}".* | awk '/^summary:/ { sum += $2 } END { print sum }')
  rm -f "${out}" "${out}".*
  awk -v total="${total}" -v calls="${calls}" -v variant="${variant}" \
    'BEGIN { printf "%-24s %9.0f instructions per call\n", variant, total / calls }'
done

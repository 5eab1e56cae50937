#!/usr/bin/env bash
# Instructions per Recommend call, counted by callgrind: repeatable whatever else the machine does, so
# it can tell apart costs that wall-clock rounds on a shared machine cannot (see bench/RESULTS.md).
#
#   ./bazelw build //bench/interceptors:server
#   bench/interceptors/instructions.sh full [--without AccessLog ...]   # or: bare, noop
#
# Starts the bench server under valgrind, warms it up with 500 calls, zeroes the counters, sends 2000
# calls with h2load (4 connections, 8 streams each) and prints the server's instructions per call, all
# threads included. Needs valgrind and h2load (apt-get install valgrind nghttp2-client).
#
# Under valgrind the server runs ~65x slower (~65 calls/s instead of ~4,000), so the access log's
# 50 ms batches would hold one line instead of ~200 and its per-batch work would be priced per call:
# the batch interval is stretched by the same factor (3.2 s) to keep batches the size they have in a
# real run. Callgrind counts user-space instructions only: the kernel's share of a call (sockets,
# epoll; about a fifth of the server's CPU time here) is in neither side of the comparison.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
variant="$1"
shift
calls=2000
out="$(mktemp -d)"
port="$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
url="http://127.0.0.1:${port}/books.recommendations.v1.RecommendationService/Recommend"
# RecommendRequest{user_id: 1, category: MYSTERY, max_results: 3} in a gRPC frame.
printf '\x00\x00\x00\x00\x06\x08\x01\x10\x01\x18\x03' >"${out}/request.bin"
load() {
  h2load -n "$1" -c 4 -m 8 -t 1 -H 'content-type: application/grpc' -H 'te: trailers' -d "${out}/request.bin" "${url}"
}

# --trace-children: Bazel's launcher execs the real interpreter.
valgrind --tool=callgrind --trace-children=yes --callgrind-out-file="${out}/callgrind" \
  bazel-bin/bench/interceptors/server --variant "${variant}" "$@" --insecure --host 127.0.0.1 \
  --port "${port}" --drain-seconds 0 --access-log-interval 3.2 >"${out}/server.log" 2>&1 &
server=$!
trap 'kill "${server}" 2>/dev/null; rm -rf "${out}"' EXIT
for _ in $(seq 240); do
  load 1 2>/dev/null | grep -q '1 succeeded' && break
  sleep 0.5
done
load 500 >/dev/null
callgrind_control --zero "${server}" >/dev/null 2>&1
load "${calls}" >"${out}/load.txt"
grep -q "${calls} succeeded" "${out}/load.txt" || { echo "not every call succeeded" >&2; exit 1; }
grep -o 'finished in .*' "${out}/load.txt" >&2
callgrind_control --dump "${server}" >/dev/null 2>&1
sleep 1
awk -v calls="${calls}" -v what="$*" -v variant="${variant}" \
  '/^summary:/ { printf "%s %s: %.0f instructions per call\n", variant, what, $2 / calls }' "${out}/callgrind.1"

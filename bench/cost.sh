#!/usr/bin/env bash
# What a change costs the gateway per request, in CPU time rather than req/s: two gateway
# binaries (BEFORE and AFTER) behind the same cheap nginx upstream, one worker each, loaded
# by wrk in interleaved rounds; for each run the gateway's own CPU time (utime + stime from
# /proc) is divided by the requests it served. CPU per request is far less sensitive than
# throughput to whatever else the machine is doing, so it can price a change of a few percent
# on a busy 2-core machine.
#
#   bash bench/cost.sh BEFORE_BINARY AFTER_BINARY     (results: bench/results-cost.md)
#
# Settings (environment): COST_ROUNDS (7), COST_SECONDS per run (6), COST_CONNECTIONS (64),
# COST_WORKERS per gateway (1; 2 prices what workers share, such as the round-robin rotation),
# COST_OUT (bench/results-cost.md).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
BEFORE_BIN=${1:?usage: bench/cost.sh BEFORE_BINARY AFTER_BINARY}
AFTER_BIN=${2:?usage: bench/cost.sh BEFORE_BINARY AFTER_BINARY}
ROUNDS=${COST_ROUNDS:-7}
SECS=${COST_SECONDS:-6}
CONNS=${COST_CONNECTIONS:-64}
WORKERS=${COST_WORKERS:-1}
TMP=$ROOT/bench/tmp/cost
OUT=${COST_OUT:-$ROOT/bench/results-cost.md}
UP1=19381 UP2=19382 UP3=19383 DISCOVERY=19580 B=19300 BA=19301 A=19310 AA=19311
TICKS=$(getconf CLK_TCK)

PIDS=()
cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  [ -f "$TMP/upstream.pid" ] && kill "$(cat "$TMP/upstream.pid")" 2>/dev/null || true
  wait 2>/dev/null || true
}
trap cleanup EXIT
wait_for() { for _ in $(seq 1 200); do "$@" >/dev/null 2>&1 && return 0; sleep 0.1; done; echo "timed out: $*" >&2; exit 1; }
cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }

rm -rf "$TMP" && mkdir -p "$TMP"
sed -e "s|@TMP@|$TMP|g" -e "s|@UP1@|$UP1|g" -e "s|@UP2@|$UP2|g" -e "s|@UP3@|$UP3|g" \
  bench/conf/upstream-nginx.conf > "$TMP/upstream.conf"
nginx -c "$TMP/upstream.conf"
DISCOVERY_BIN=$(dirname "$AFTER_BIN")/discovery
echo '{"health_check_time_interval": "1s", "timeout_threshold": "500ms"}' > "$TMP/discovery.json"
"$DISCOVERY_BIN" --config "$TMP/discovery.json" --listen 127.0.0.1:$DISCOVERY --log-level warn > "$TMP/discovery.log" 2>&1 &
PIDS+=($!)
wait_for curl -sf "http://127.0.0.1:$DISCOVERY/health_check"
for port in $UP1 $UP2 $UP3; do
  curl -sf "http://127.0.0.1:$DISCOVERY/api/register" -d "{\"namespace\": \"cheap\", \"port\": $port}" >/dev/null
done
declare -A PID
for which in before after; do
  if [ $which = before ]; then bin=$BEFORE_BIN port=$B admin=$BA; else bin=$AFTER_BIN port=$A admin=$AA; fi
  "$bin" --config bench/conf/gateway.json --listen 127.0.0.1:$port --admin-listen 127.0.0.1:$admin \
    --discovery-url http://127.0.0.1:$DISCOVERY --log-level warn --worker-threads "$WORKERS" > "$TMP/$which.log" 2>&1 &
  PID[$which]=$!; PIDS+=($!)
  wait_for curl -sf "http://127.0.0.1:$port/cheap" -d '{}'
done

run() { # which port -> "requests cpu_us_per_request req_per_s"
  local pid=${PID[$1]} t0 t1 out reqs
  t0=$(cpu_ticks "$pid")
  out=$(wrk -t1 -c"$CONNS" -d"$SECS"s --latency -s bench/wrk/post256.lua "http://127.0.0.1:$2/cheap" 2>&1)
  t1=$(cpu_ticks "$pid")
  reqs=$(echo "$out" | awk '/requests in/ { print $1 }')
  awk -v r="$reqs" -v t=$((t1 - t0)) -v hz="$TICKS" -v s="$SECS" \
    'BEGIN { printf "%d %.2f %.0f\n", r, t / hz * 1e6 / r, r / s }'
}
for which in before after; do run $which "$([ $which = before ] && echo $B || echo $A)" >/dev/null; done
: > "$TMP/before.txt"; : > "$TMP/after.txt"
for r in $(seq 1 "$ROUNDS"); do
  run before $B >> "$TMP/before.txt"
  run after $A >> "$TMP/after.txt"
  echo "round $r: before $(tail -1 "$TMP/before.txt"), after $(tail -1 "$TMP/after.txt")" >&2
done
median() { sort -n | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
b_cpu=$(cut -d' ' -f2 "$TMP/before.txt" | median); a_cpu=$(cut -d' ' -f2 "$TMP/after.txt" | median)
b_rps=$(cut -d' ' -f3 "$TMP/before.txt" | median); a_rps=$(cut -d' ' -f3 "$TMP/after.txt" | median)
{
  echo "# What a change costs per request"
  echo
  echo "Written by \`COST_WORKERS=$WORKERS bash bench/cost.sh $BEFORE_BIN $AFTER_BIN\` on $(date -u +%Y-%m-%d), $(nproc) cores."
  echo "$WORKERS worker(s) each, the cheap nginx upstream, wrk -t1 -c$CONNS, 256-byte POST, $SECS s runs, $ROUNDS interleaved rounds;"
  echo "CPU time is the gateway process's utime + stime over the run, divided by the requests it served."
  echo
  echo "| gateway | CPU µs per request (median) | req/s (median) |"
  echo "| --- | ---: | ---: |"
  echo "| before | $b_cpu | $b_rps |"
  echo "| after | $a_cpu | $a_rps |"
  echo
  echo "After / before: CPU per request **$(awk -v a="$a_cpu" -v b="$b_cpu" 'BEGIN { printf "%.3f", a / b }')x**, req/s $(awk -v a="$a_rps" -v b="$b_rps" 'BEGIN { printf "%.3f", a / b }')x."
  echo
  echo "Every round (requests, CPU µs per request, req/s): before: $(tr '\n' ';' < "$TMP/before.txt") after: $(tr '\n' ';' < "$TMP/after.txt")"
} > "$OUT"
cat "$OUT"

#!/usr/bin/env bash
# What Idempotency-Key costs a POST: keyed POSTs, each with a new key (the first
# arrival: parse the key, two SHA-256s, claim in the store, forward with the answer
# tapped, settle with the answer), against unkeyed POSTs on the same route with the
# same body and a header of the same size, in the same run, interleaved rounds.
#
#   memory   one gateway, "idempotency_store": "memory" (the default bounds)
#   etcd     one gateway, "idempotency_store": "etcd://..." on a 3-member etcd
#            started here (data in /dev/shm when there is one)
#
# Both gateways route /pay to the cheap nginx upstream (bench/conf/upstream-nginx.conf)
# with "idempotency": {"mode": "honor", "ttl": "1h"}, one worker each, loaded by wrk
# -t1 (bench/wrk/post256-keyed.lua). For each run: requests per second, and the
# gateway process's CPU time (utime + stime from /proc) per request, which a busy
# machine disturbs far less than req/s (bench/cost.sh's method).
#
#   cargo build --profile perf -p gateway -p discovery
#   bash bench/idempotency.sh [BIN_DIR]     (default target/perf; results: bench/results-idempotency.md)
#
# Settings (environment): IDEM_ROUNDS (5), IDEM_SECONDS per run (5), IDEM_CONNECTIONS (64),
# IDEM_ETCD (1; 0 skips the etcd mode), IDEM_OUT (bench/results-idempotency.md).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
BIN=${1:-target/perf}
ROUNDS=${IDEM_ROUNDS:-5}
SECS=${IDEM_SECONDS:-5}
CONNS=${IDEM_CONNECTIONS:-64}
WITH_ETCD=${IDEM_ETCD:-1}
OUT=${IDEM_OUT:-$ROOT/bench/results-idempotency.md}
TMP=$ROOT/bench/tmp/idempotency
UP1=19481 UP2=19482 UP3=19483 DISCOVERY=19680 MEM=19400 MEMA=19401 ETCDG=19410 ETCDGA=19411
ETCD_MEMBERS=(e1:19479:19478 e2:29479:29478 e3:39479:39478)
TICKS=$(getconf CLK_TCK)
for b in gateway discovery; do
  [ -x "$BIN/$b" ] || { echo "$BIN/$b is missing: cargo build --profile perf -p gateway -p discovery" >&2; exit 1; }
done
for tool in wrk nginx curl; do
  command -v $tool >/dev/null || { echo "$tool is not installed" >&2; exit 1; }
done
if [ "$WITH_ETCD" = 1 ] && ! command -v etcd >/dev/null; then
  echo "etcd is not installed (Debian: apt-get install etcd-server), or IDEM_ETCD=0" >&2
  exit 1
fi

PIDS=()
DATA=""
cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  [ -f "$TMP/upstream.pid" ] && kill "$(cat "$TMP/upstream.pid")" 2>/dev/null || true
  wait 2>/dev/null || true
  [ -n "$DATA" ] && rm -rf "$DATA"
}
trap cleanup EXIT
wait_for() { for _ in $(seq 1 200); do "$@" >/dev/null 2>&1 && return 0; sleep 0.1; done; echo "timed out: $*" >&2; exit 1; }
cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }

rm -rf "$TMP" && mkdir -p "$TMP"
sed -e "s|@TMP@|$TMP|g" -e "s|@UP1@|$UP1|g" -e "s|@UP2@|$UP2|g" -e "s|@UP3@|$UP3|g" \
  bench/conf/upstream-nginx.conf > "$TMP/upstream.conf"
nginx -c "$TMP/upstream.conf"
echo '{"health_check_time_interval": "1s", "timeout_threshold": "500ms"}' > "$TMP/discovery.json"
"$BIN/discovery" --config "$TMP/discovery.json" --listen 127.0.0.1:$DISCOVERY --log-level warn > "$TMP/discovery.log" 2>&1 &
PIDS+=($!)
wait_for curl -sf "http://127.0.0.1:$DISCOVERY/health_check"
for port in $UP1 $UP2 $UP3; do
  curl -sf "http://127.0.0.1:$DISCOVERY/api/register" -d "{\"namespace\": \"cheap\", \"port\": $port}" >/dev/null
done

STORE_ETCD=""
ETCD_PIDS=()
if [ "$WITH_ETCD" = 1 ]; then
  base=$TMP
  [ -d /dev/shm ] && base=$(mktemp -d /dev/shm/bench-idem-etcd.XXXXXX) && DATA=$base
  initial="" endpoints=""
  for m in "${ETCD_MEMBERS[@]}"; do
    IFS=: read -r name client peer <<<"$m"
    initial+="${initial:+,}$name=http://127.0.0.1:$peer"
    endpoints+="${endpoints:+,}127.0.0.1:$client"
  done
  for m in "${ETCD_MEMBERS[@]}"; do
    IFS=: read -r name client peer <<<"$m"
    etcd --name "$name" --data-dir "$base/$name" \
      --listen-client-urls "http://127.0.0.1:$client" --advertise-client-urls "http://127.0.0.1:$client" \
      --listen-peer-urls "http://127.0.0.1:$peer" --initial-advertise-peer-urls "http://127.0.0.1:$peer" \
      --initial-cluster "$initial" --initial-cluster-state new --initial-cluster-token bench-idem \
      --logger zap --log-level warn > "$TMP/etcd-$name.log" 2>&1 &
    PIDS+=($!); ETCD_PIDS+=($!)
  done
  for m in "${ETCD_MEMBERS[@]}"; do
    IFS=: read -r name client peer <<<"$m"
    wait_for curl -sf "http://127.0.0.1:$client/health"
  done
  STORE_ETCD="etcd://$endpoints/bench-idem"
fi

declare -A PID PORT ADMIN
start_gateway() { # mode store port admin
  cat > "$TMP/gateway-$1.json" <<JSON
{
  "routes": [{"prefix": "/pay", "namespace": "cheap", "idempotency": {"mode": "honor", "ttl": "1h"}}],
  "upstream_timeout": "2s",
  "ready_timeout": "0s",
  "idempotency_store": "$2"
}
JSON
  "$BIN/gateway" --config "$TMP/gateway-$1.json" --listen 127.0.0.1:$3 --admin-listen 127.0.0.1:$4 \
    --discovery-url http://127.0.0.1:$DISCOVERY --log-level warn --worker-threads 1 > "$TMP/gateway-$1.log" 2>&1 &
  PID[$1]=$!; PORT[$1]=$3; ADMIN[$1]=$4; PIDS+=($!)
  wait_for curl -sf "http://127.0.0.1:$3/pay" -d '{}'
}
MODES=(memory)
start_gateway memory memory $MEM $MEMA
if [ -n "$STORE_ETCD" ]; then
  start_gateway etcd "$STORE_ETCD" $ETCDG $ETCDGA
  MODES+=(etcd)
fi

SEQ=0
run() { # mode kind(keyed|plain) -> "requests cpu_us_per_request req_per_s non2xx [etcd_cpu_us_per_request]"
  local mode=$1 kind=$2 pid=${PID[$1]} t0 t1 e0=0 e1=0 out reqs bad header
  SEQ=$((SEQ + 1))
  header=Idempotency-Key
  [ "$kind" = plain ] && header=X-Sequence
  t0=$(cpu_ticks "$pid")
  if [ "$mode" = etcd ]; then for p in "${ETCD_PIDS[@]}"; do e0=$((e0 + $(cpu_ticks "$p"))); done; fi
  out=$(wrk -t1 -c"$CONNS" -d"$SECS"s -s bench/wrk/post256-keyed.lua "http://127.0.0.1:${PORT[$mode]}/pay" -- "r$$-$SEQ" "$header" 2>&1)
  t1=$(cpu_ticks "$pid")
  if [ "$mode" = etcd ]; then for p in "${ETCD_PIDS[@]}"; do e1=$((e1 + $(cpu_ticks "$p"))); done; fi
  reqs=$(echo "$out" | awk '/requests in/ { print $1 }')
  bad=$(echo "$out" | awk '/Non-2xx/ { print $NF }')
  awk -v r="$reqs" -v t=$((t1 - t0)) -v e=$((e1 - e0)) -v hz="$TICKS" -v s="$SECS" -v bad="${bad:-0}" -v m="$mode" \
    'BEGIN { printf "%d %.2f %.0f %d", r, t / hz * 1e6 / r, r / s, bad; if (m == "etcd") printf " %.2f", e / hz * 1e6 / r; printf "\n" }'
}
for mode in "${MODES[@]}"; do
  for kind in plain keyed; do run "$mode" "$kind" >/dev/null; : > "$TMP/$mode-$kind.txt"; done
done
for r in $(seq 1 "$ROUNDS"); do
  for mode in "${MODES[@]}"; do
    for kind in plain keyed; do
      run "$mode" "$kind" >> "$TMP/$mode-$kind.txt"
      echo "round $r: $mode $kind: $(tail -1 "$TMP/$mode-$kind.txt")" >&2
    done
  done
done
median() { sort -n | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
col() { cut -d' ' -f"$2" "$TMP/$1.txt" | median; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.3f", a / b }'; }
{
  echo "# Idempotency-Key: what a keyed POST costs"
  echo
  echo "Written by \`bash bench/idempotency.sh $BIN\` on $(date -u +%Y-%m-%d), $(nproc) cores ($(uname -m)),"
  echo "after \`cargo build --profile perf -p gateway -p discovery\`."
  echo "One gateway per store, 1 worker, route \`/pay\` with \`\"idempotency\": {\"mode\": \"honor\", \"ttl\": \"1h\"}\` to the"
  echo "cheap nginx upstream; wrk -t1 -c$CONNS, 256-byte POST (bench/wrk/post256-keyed.lua), $SECS s runs, $ROUNDS interleaved"
  echo "rounds. **keyed**: a new \`Idempotency-Key\` on every request (the first arrival: claim, forward with"
  echo "the answer tapped, settle with the answer stored). **unkeyed**: the same route, body and a header of the"
  echo "same size (\`X-Sequence\`) that the gateway only forwards. CPU is the gateway process's utime + stime"
  echo "over the run divided by the requests it served (with etcd, the three members' CPU apart)."
  echo
  echo "| store | requests | req/s (median) | gateway CPU µs per request (median) | etcd CPU µs per request (median) | non-2xx |"
  echo "| --- | --- | ---: | ---: | ---: | ---: |"
  for mode in "${MODES[@]}"; do
    for kind in plain keyed; do
      label=$([ $kind = plain ] && echo unkeyed || echo keyed)
      etcd_cpu="-"
      [ "$mode" = etcd ] && etcd_cpu=$(col "$mode-$kind" 5)
      bad=$(awk '{ s += $4 } END { print s + 0 }' "$TMP/$mode-$kind.txt")
      echo "| $mode | $label | $(col "$mode-$kind" 3) | $(col "$mode-$kind" 2) | $etcd_cpu | $bad |"
    done
  done
  echo
  for mode in "${MODES[@]}"; do
    rps=$(ratio "$(col "$mode-keyed" 3)" "$(col "$mode-plain" 3)")
    cpu=$(ratio "$(col "$mode-plain" 2)" "$(col "$mode-keyed" 2)")
    echo "- **$mode**: keyed / unkeyed req/s **${rps}x**; unkeyed / keyed gateway CPU per request (the throughput one core would give) **${cpu}x**."
  done
  echo
  for mode in "${MODES[@]}"; do
    echo "$mode gateway's /status idempotency at the end: \`$(curl -sf "http://127.0.0.1:${ADMIN[$mode]}/status" | python3 -c 'import json,sys; d=json.load(sys.stdin)["idempotency"]; d.pop("routes", None); print(json.dumps(d))' 2>/dev/null || echo unavailable)\`"
    echo
  done
  echo "Every round (requests, gateway CPU µs per request, req/s, non-2xx[, etcd CPU µs per request]):"
  echo
  for mode in "${MODES[@]}"; do
    for kind in plain keyed; do
      echo "- $mode $kind: $(tr '\n' ';' < "$TMP/$mode-$kind.txt")"
    done
  done
} > "$OUT"
cat "$OUT"

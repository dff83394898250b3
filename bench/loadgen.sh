#!/usr/bin/env bash
# The load generator against wrk: is `loadtest` fast enough not to be the bottleneck?
#
#   bash bench/loadgen.sh        (part of `just bench`)
#
# Both drive the same cheap upstream, an nginx with one worker answering a constant
# {"ok":true}, with the same number of keep-alive connections POSTing 256-byte JSON
# bodies: wrk with one thread, loadtest with --threads 1 and --threads 2. nginx's constant
# answer is not an echo, so loadtest runs with --no-verify. Rounds are interleaved so a
# drift of the machine hits every tool alike; the medians and the ratio to wrk are printed.
#
# Settings (environment): LOADGEN_SECONDS per run (10), LOADGEN_ROUNDS (3),
# LOADGEN_CONNECTIONS (64), LOADGEN_THREADS ("1 2"), LOADGEN_PORT (19181),
# LOADGEN_PIN=1 (nginx on core 0, wrk and loadtest on the other cores: steadier figures,
# but --threads 2 then shares what is left), LOADGEN_OUT (also append the table to this file).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
PORT=${LOADGEN_PORT:-19181}
SECS=${LOADGEN_SECONDS:-10}
ROUNDS=${LOADGEN_ROUNDS:-3}
CONNS=${LOADGEN_CONNECTIONS:-64}
THREADS=${LOADGEN_THREADS:-"1 2"}
PIN=${LOADGEN_PIN:-0}
LUA=$ROOT/bench/wrk/post256.lua

missing=()
tools="nginx wrk"; [ "$PIN" = 1 ] && tools="$tools taskset"
for tool in $tools; do command -v "$tool" >/dev/null 2>&1 || missing+=("$tool"); done
if ((${#missing[@]})); then
  echo "installing ${missing[*]} from Debian's packages"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx wrk util-linux >/dev/null
fi

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
if port_open "$PORT"; then
  echo "port $PORT is taken: stop whatever uses it, or set LOADGEN_PORT" >&2
  exit 1
fi

TMP=$(mktemp -d)
cleanup() {
  [ -f "$TMP/nginx.pid" ] && kill "$(cat "$TMP/nginx.pid")" 2>/dev/null || true
  rm -rf "$TMP"
}
trap cleanup EXIT

cat > "$TMP/nginx.conf" <<EOF
worker_processes 1;
pid $TMP/nginx.pid;
error_log $TMP/error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  keepalive_requests 10000000;
  keepalive_timeout 75s;
  client_body_temp_path $TMP/body;
  proxy_temp_path $TMP/proxy;
  fastcgi_temp_path $TMP/fastcgi;
  uwsgi_temp_path $TMP/uwsgi;
  scgi_temp_path $TMP/scgi;
  server {
    listen 127.0.0.1:$PORT;
    location / {
      default_type application/json;
      return 200 '{"ok":true}';
    }
  }
}
EOF
nginx -c "$TMP/nginx.conf"
for _ in $(seq 1 100); do port_open "$PORT" && break; sleep 0.1; done
port_open "$PORT" || { echo "nginx did not start:" >&2; cat "$TMP/error.log" >&2; exit 1; }
CLIENT=()
LAYOUT="nothing pinned"
if [ "$PIN" = 1 ] && [ "$(nproc)" -ge 2 ]; then
  for pid in $(pgrep -P "$(cat "$TMP/nginx.pid")"); do taskset -pc 0 "$pid" >/dev/null; done
  CLIENT=(taskset -c "1-$(($(nproc) - 1))")
  LAYOUT="nginx pinned to core 0, the load generators to cores 1-$(($(nproc) - 1))"
fi

echo "building loadtest (perf profile)"
cargo build --profile perf -q -p loadtest
URL=http://127.0.0.1:$PORT/

run_wrk() {
  "${CLIENT[@]}" wrk -t1 -c"$CONNS" -d"$1"s -s "$LUA" "$URL" 2>&1 | tee -a "$TMP/wrk.log" |
    awk '/Requests\/sec/ { printf "%.0f\n", $2 }'
}

run_loadtest() { # threads seconds
  "${CLIENT[@]}" target/perf/loadtest --url "http://127.0.0.1:$PORT" --duration "$2"s --connections "$CONNS" \
    --threads "$1" --no-progress --no-verify --json "$TMP/loadtest.json" >> "$TMP/loadtest.log" 2>&1 ||
    { echo "loadtest failed:" >&2; tail -20 "$TMP/loadtest.log" >&2; exit 1; }
  sed -n 's/.*"throughput_rps": \([0-9.]*\).*/\1/p' "$TMP/loadtest.json" | awk '{ printf "%.0f\n", $1 }'
}

median() { sort -n | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }

# Warm up nginx and the page cache of both binaries.
run_wrk 2 >/dev/null
run_loadtest 1 2 >/dev/null

for r in $(seq 1 "$ROUNDS"); do
  rps=$(run_wrk "$SECS"); echo "$rps" >> "$TMP/wrk.txt"
  line="round $r: wrk -t1 $rps req/s"
  for t in $THREADS; do
    rps=$(run_loadtest "$t" "$SECS"); echo "$rps" >> "$TMP/loadtest-$t.txt"
    line="$line, loadtest --threads $t $rps req/s"
  done
  echo "$line"
done

wrk_median=$(median < "$TMP/wrk.txt")
{
  echo
  echo "### Load generator vs wrk ($(date -u +%Y-%m-%d), $(nproc) cores)"
  echo
  echo "nginx (1 worker, constant {\"ok\":true}) on 127.0.0.1:$PORT, $CONNS keep-alive connections,"
  echo "256-byte JSON POSTs, $SECS s per run, median of $ROUNDS interleaved rounds; $LAYOUT."
  echo
  echo "| tool | req/s (median) | vs wrk -t1 | every round |"
  echo "| --- | ---: | ---: | --- |"
  echo "| wrk -t1 | $wrk_median | 1.00x | $(tr '\n' ' ' < "$TMP/wrk.txt")|"
  for t in $THREADS; do
    m=$(median < "$TMP/loadtest-$t.txt")
    printf "| loadtest --threads %s | %s | %.2fx | %s|\n" "$t" "$m" \
      "$(awk -v a="$m" -v b="$wrk_median" 'BEGIN { print a / b }')" "$(tr '\n' ' ' < "$TMP/loadtest-$t.txt")"
  done
} | tee -a "${LOADGEN_OUT:-/dev/null}"

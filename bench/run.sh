#!/usr/bin/env bash
# The gateway beside nginx and HAProxy, same upstreams, same load generator, same run.
#
#   bash bench/run.sh            (what `just bench` runs; writes bench/results.md)
#
# Settings (environment): BENCH_SECONDS per run (10), BENCH_ROUNDS interleaved rounds (5),
# BENCH_CONNECTIONS wrk connections (64), BENCH_LAYOUTS "pinned shared",
# BENCH_PARTS "cheap apps slow memory echo clients10k" (which sections to run; clients10k is
# 10,000 keep-alive clients against each proxy, shared layout, p99 and RSS; "hold" keeps the system
# up afterwards, for profiling), BENCH_GATEWAY_BEFORE a second gateway binary (an earlier
# build) measured as "gateway-before" in the same interleaved rounds, to price a change.
#
# Layouts on this 2-core machine, each proxy given as many workers as it has cores:
#   pinned: every proxy gets core 0 to itself and one worker (nginx worker_processes 1,
#           HAProxy nbthread 1, gateway worker_threads 1); wrk, the upstreams, the apps
#           and discovery share core 1. This measures what a proxy does with one core.
#   shared: nothing is pinned; every proxy runs one worker per core, and proxies, wrk
#           and upstreams compete for both cores.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
TMP=$ROOT/bench/tmp
SECONDS_PER_RUN=${BENCH_SECONDS:-10}
ROUNDS=${BENCH_ROUNDS:-5}
CONNS=${BENCH_CONNECTIONS:-64}
LAYOUTS=${BENCH_LAYOUTS:-"pinned shared"}
PARTS=${BENCH_PARTS:-"cheap apps slow memory echo clients10k"}
# 10,000 clients need 10,000 descriptors in wrk and in each proxy (plus their upstream side).
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
OUT=$ROOT/bench/results.md
# Written here first and moved to $OUT only once every part asked for has run, so a run
# that fails, is stopped, or only holds the system up for profiling keeps the last results.
RESULTS=$TMP/results.md
LUA=$ROOT/bench/wrk/post256.lua

# Ports, all on 127.0.0.1.
UP1=19081 UP2=19082 UP3=19083 APP1=19091 APP2=19092 APP3=19093
DISCOVERY=19500 GATEWAY=19000 ADMIN=19001 NGINX=19100 HAPROXY=19200
BEFORE=19010 BEFORE_ADMIN=19011 BEFORE_BIN=${BENCH_GATEWAY_BEFORE:-}
CORES=$(nproc)
WORKERS=$CORES

need() {
  local missing=()
  for tool in nginx haproxy wrk taskset curl; do
    command -v "$tool" >/dev/null 2>&1 || missing+=("$tool")
  done
  if ((${#missing[@]})); then
    echo "installing ${missing[*]} from Debian's packages"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx haproxy wrk util-linux curl >/dev/null
  fi
}

PIDS=()
declare -A APP_PID=()
cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pidfile in "$TMP"/upstream.pid "$TMP"/proxy-nginx.pid "$TMP"/proxy-haproxy.pid; do
    [ -f "$pidfile" ] && kill "$(cat "$pidfile")" 2>/dev/null || true
  done
  wait 2>/dev/null || true
}
trap cleanup EXIT

port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

render() {
  sed -e "s|@TMP@|$TMP|g" -e "s|@UP1@|$UP1|g" -e "s|@UP2@|$UP2|g" -e "s|@UP3@|$UP3|g" \
      -e "s|@APP1@|$APP1|g" -e "s|@APP2@|$APP2|g" -e "s|@APP3@|$APP3|g" \
      -e "s|@NGINX@|$NGINX|g" -e "s|@HAPROXY@|$HAPROXY|g" -e "s|@WORKERS@|$WORKERS|g" "$1" > "$2"
}

wait_for() { # what, command...
  local what=$1; shift
  for _ in $(seq 1 200); do "$@" >/dev/null 2>&1 && return 0; sleep 0.1; done
  echo "timed out waiting for $what" >&2; exit 1
}

rings_full() { # the gateway routes to all six upstreams (three cheap, three apps)
  [ "$(curl -s "http://127.0.0.1:$ADMIN/status" | grep -o '"upstream"' | wc -l)" = 6 ]
}

start_gateway() {
  target/perf/gateway --config bench/conf/gateway.json --listen 127.0.0.1:$GATEWAY \
    --admin-listen 127.0.0.1:$ADMIN --discovery-url http://127.0.0.1:$DISCOVERY --log-level warn \
    --worker-threads "$WORKERS" > "$TMP/gateway.log" 2>&1 &
  GATEWAY_PID=$!
  PIDS+=("$GATEWAY_PID")
  wait_for "the gateway's rings" rings_full
  BEFORE_PID=
  if [ -n "$BEFORE_BIN" ]; then
    "$BEFORE_BIN" --config bench/conf/gateway.json --listen 127.0.0.1:$BEFORE \
      --admin-listen 127.0.0.1:$BEFORE_ADMIN --discovery-url http://127.0.0.1:$DISCOVERY --log-level warn \
      --worker-threads "$WORKERS" > "$TMP/gateway-before.log" 2>&1 &
    BEFORE_PID=$!
    PIDS+=("$BEFORE_PID")
    wait_for "the earlier gateway" curl -sf "http://127.0.0.1:$BEFORE/cheap" -d '{}'
  fi
}

# Starts the three proxies with $WORKERS workers each.
start_proxies() {
  render bench/conf/proxy-nginx.conf "$TMP/proxy-nginx.conf"
  render bench/conf/proxy-haproxy.cfg "$TMP/proxy-haproxy.cfg"
  start_gateway
  nginx -c "$TMP/proxy-nginx.conf"
  haproxy -D -f "$TMP/proxy-haproxy.cfg" 2>"$TMP/haproxy.log"
  wait_for nginx curl -sf "http://127.0.0.1:$NGINX/cheap"
  wait_for haproxy curl -sf "http://127.0.0.1:$HAPROXY/cheap"
}

stop_proxies() {
  kill "$GATEWAY_PID" $BEFORE_PID "$(cat "$TMP/proxy-nginx.pid")" "$(cat "$TMP/proxy-haproxy.pid")" 2>/dev/null || true
  wait "$GATEWAY_PID" $BEFORE_PID 2>/dev/null || true
  for port in $GATEWAY $NGINX $HAPROXY ${BEFORE_PID:+$BEFORE}; do wait_for "port $port to close" port_free "$port"; done
}

# Restarts the proxies for a layout: pinned (one worker each, alone on core 0,
# everything else on core 1) or shared (one worker per core, nothing pinned).
layout() {
  local proxy_cpus=0 other_cpus=1
  WORKERS=1
  if [ "$1" = shared ]; then proxy_cpus=0-$((CORES - 1)); other_cpus=$proxy_cpus; WORKERS=$CORES; fi
  [ -n "${GATEWAY_PID:-}" ] && stop_proxies
  start_proxies
  for pid in $GATEWAY_PID $BEFORE_PID $(cat "$TMP/proxy-haproxy.pid") $(pgrep -P "$(cat "$TMP/proxy-nginx.pid")"); do
    taskset -apc "$proxy_cpus" "$pid" >/dev/null
  done
  for pid in "${OTHER_PIDS[@]}" $(pgrep -P "$(cat "$TMP/upstream.pid")"); do
    taskset -apc "$other_cpus" "$pid" >/dev/null
  done
  WRK_CPUS=$other_cpus
}

# One wrk run: prints "rps p50_ms p99_ms errors".
measure() { # url seconds connections
  local out
  # wrk's own 2 s default timeout would count a slow-but-successful failover as an error.
  out=$(taskset -c "$WRK_CPUS" wrk -t1 -c"$3" -d"$2"s --timeout 10s --latency -s "$LUA" "$1" 2>&1)
  echo "$out" >> "$TMP/wrk.log"
  echo "$out" | awk '
    function ms(v) { if (v ~ /us$/) return v/1000; if (v ~ /ms$/) return v+0; if (v ~ /s$/) return v*1000; return v }
    /^ +50%/ { p50 = ms($2) } /^ +99%/ { p99 = ms($2) }
    /Requests\/sec/ { rps = $2 }
    /Non-2xx/ { err += $NF } /Socket errors/ { gsub(",", ""); err += $4 + $6 + $8 + $10 }
    END { printf "%.0f %.2f %.2f %d\n", rps, p50, p99, err }'
}

median() { sort -n | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }

# Measures every NAME=URL ROUNDS times, interleaved so a drift of the machine hits all alike,
# after a 2 s warm-up of each (which also fills the proxies' pools); each run appends
# "rps p50 p99 errors" to $TMP/run-NAME.txt.
interleave() { # label rounds seconds name=url...
  local label=$1 rounds=$2 seconds=$3; shift 3
  rm -f "$TMP"/run-*.txt
  for target in "$@"; do measure "${target#*=}" 2 "$CONNS" >/dev/null; done
  for r in $(seq 1 "$rounds"); do
    for target in "$@"; do
      local t=${target%%=*}
      measure "${target#*=}" "$seconds" "$CONNS" >> "$TMP/run-$t.txt"
      echo "  $label round $r $t: $(tail -1 "$TMP/run-$t.txt")" >&2
    done
  done
}

# A target's medians over its rounds and its total errors: "rps p50 p99 errors".
medians() { # name
  local f=$TMP/run-$1.txt
  echo "$(cut -d' ' -f1 "$f" | median) $(cut -d' ' -f2 "$f" | median) $(cut -d' ' -f3 "$f" | median) $(awk '{ s += $4 } END { print s }' "$f")"
}

# The three proxies (and, on the cheap upstream, a direct hit) side by side; appends a table.
compare() { # title path rounds seconds
  local title=$1 path=$2 rounds=$3 seconds=$4
  local targets=(gateway nginx haproxy)
  local urls=("gateway=http://127.0.0.1:$GATEWAY$path" "nginx=http://127.0.0.1:$NGINX$path" "haproxy=http://127.0.0.1:$HAPROXY$path")
  if [ -n "$BEFORE_PID" ]; then targets+=(gateway-before); urls+=("gateway-before=http://127.0.0.1:$BEFORE$path"); fi
  if [ "$path" = /cheap ]; then targets+=(direct); urls+=("direct=http://127.0.0.1:$UP1/"); fi
  interleave "$title" "$rounds" "$seconds" "${urls[@]}"
  local best=0 r nginx_p99
  for t in nginx haproxy; do
    read -r r _ <<<"$(medians "$t")"; best=$(awk -v a="$best" -v b="$r" 'BEGIN { print (b > a) ? b : a }')
  done
  read -r _ _ nginx_p99 _ <<<"$(medians nginx)"
  {
    echo
    echo "### $title"
    echo
    echo "| target | req/s (median of $rounds) | vs better of nginx/HAProxy | p50 ms | p99 ms | p99 vs nginx | errors |"
    echo "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"
    for t in "${targets[@]}"; do
      local rps p50 p99 err; read -r rps p50 p99 err <<<"$(medians "$t")"
      printf "| %s | %.0f | %.2fx | %.2f | %.2f | %.2fx | %d |\n" "$t" "$rps" \
        "$(awk -v a="$rps" -v b="$best" 'BEGIN { print a / b }')" "$p50" "$p99" \
        "$(awk -v a="$p99" -v b="$nginx_p99" 'BEGIN { print a / b }')" "$err"
    done
    echo
    echo "Every round, per target (req/s): $(for t in "${targets[@]}"; do printf '%s %s; ' "$t" "$(cut -d' ' -f1 "$TMP/run-$t.txt" | tr '\n' ' ')"; done)"
  } >> "$RESULTS"
}

peak_rss() { # the gateway's peak RSS with 1,000 keep-alive clients
  kill "$GATEWAY_PID" $BEFORE_PID; wait "$GATEWAY_PID" $BEFORE_PID 2>/dev/null || true
  start_gateway
  taskset -apc 0-$((CORES - 1)) "$GATEWAY_PID" >/dev/null
  local out; out=$(wrk -t1 -c1000 -d"$SECONDS_PER_RUN"s -s "$LUA" "http://127.0.0.1:$GATEWAY/cheap" 2>&1)
  local rss; rss=$(awk '/VmHWM/ { print $2 }' "/proc/$GATEWAY_PID/status")
  local rps; rps=$(echo "$out" | awk '/Requests\/sec/ { print $2 }')
  {
    echo
    echo "### Memory"
    echo
    echo "Peak RSS (VmHWM) of a fresh gateway after ${SECONDS_PER_RUN} s of 1,000 concurrent keep-alive clients: **$((rss / 1024)) MiB** (target: under 64 MiB); $rps req/s meanwhile."
  } >> "$RESULTS"
}

slow_app() { # one of the three real apps slow: the gateway fails over, the others time out
  curl -s -X PUT "http://127.0.0.1:$((APP2 + 100))/chaos" -d '{"delay_ms": 3000}' >/dev/null
  {
    echo
    echo "### One of the three real apps slow (3 s delay, proxy timeout 2 s)"
    echo
    echo "The slow app is made slow just before each target's run and healed after it, so each target meets the fault fresh."
    echo "The gateway retries timed-out POSTs on another instance (retry_non_idempotent, the default) and"
    echo "drops the app from its ring once discovery marks it unavailable; nginx and HAProxy, with static"
    echo "upstream lists and no retry of POSTs, answer those requests with 504."
    echo
    echo "| target | req/s | p50 ms | p99 ms | errors |"
    echo "| --- | ---: | ---: | ---: | ---: |"
  } >> "$RESULTS"
  for t in gateway nginx haproxy; do
    local port; case $t in gateway) port=$GATEWAY;; nginx) port=$NGINX;; haproxy) port=$HAPROXY;; esac
    curl -s -X PUT "http://127.0.0.1:$((APP2 + 100))/chaos" -d '{"delay_ms": 3000}' >/dev/null
    if [ "$t" = gateway ]; then wait_for "the gateway's ring to hold the slow app again" rings_full; fi
    read -r rps p50 p99 err <<<"$(measure "http://127.0.0.1:$port/" "$SECONDS_PER_RUN" 16)"
    echo "| $t | $rps | $p50 | $p99 | $err |" >> "$RESULTS"
    echo "  slow app, $t: $rps $p50 $p99 $err" >&2
    curl -s -X PUT "http://127.0.0.1:$((APP2 + 100))/chaos" -d '{"delay_ms": 0}' >/dev/null
    wait_for "the healed app back in the ring" rings_full
  done
}

# Service A's own echo throughput, the upstream figure the gateway's overhead is judged
# against: one app alone on core 0 (the proxies stopped), wrk on core 1, rounds
# interleaved with the cheap nginx upstream (one worker) pinned the same way as the baseline.
echo_app() {
  stop_proxies
  local app=${APP_PID[$APP1]}
  for pid in "${OTHER_PIDS[@]}"; do taskset -apc 1 "$pid" >/dev/null; done
  taskset -apc 0 "$app" >/dev/null
  for pid in $(pgrep -P "$(cat "$TMP/upstream.pid")"); do taskset -apc 0 "$pid" >/dev/null; done
  WRK_CPUS=1
  interleave echo 3 "$SECONDS_PER_RUN" "app=http://127.0.0.1:$APP1/" "nginx=http://127.0.0.1:$UP1/"
  local base; read -r base _ <<<"$(medians nginx)"
  {
    echo
    echo "### One Service A alone on one core"
    echo
    echo "The app (validates the JSON body and echoes it byte for byte) pinned alone to core 0, wrk on"
    echo "core 1 with $CONNS keep-alive connections; the baseline is the cheap nginx upstream (one worker,"
    echo "constant answer) pinned the same way. Medians of 3 interleaved rounds."
    echo
    echo "| target | req/s | vs nginx constant | p50 ms | p99 ms | errors |"
    echo "| --- | ---: | ---: | ---: | ---: | ---: |"
    for t in app nginx; do
      local rps p50 p99 err; read -r rps p50 p99 err <<<"$(medians "$t")"
      printf "| %s | %.0f | %.2fx | %.2f | %.2f | %d |\n" "$t" "$rps" \
        "$(awk -v a="$rps" -v b="$base" 'BEGIN { print a / b }')" "$p50" "$p99" "$err"
    done
  } >> "$RESULTS"
}

rss_kib() { # target: resident memory now, in KiB, over all of the target's processes
  local pids
  case $1 in
    gateway) pids=$GATEWAY_PID ;;
    gateway-before) pids=$BEFORE_PID ;;
    nginx) pids="$(cat "$TMP/proxy-nginx.pid") $(pgrep -P "$(cat "$TMP/proxy-nginx.pid")" | tr '\n' ' ')" ;;
    haproxy) pids=$(cat "$TMP/proxy-haproxy.pid") ;;
  esac
  # shellcheck disable=SC2086
  ps -o rss= -p "$(echo $pids | tr ' ' ',')" | awk '{ s += $1 } END { print s + 0 }'
}

# 10,000 keep-alive clients on each proxy (shared layout, every proxy one worker per core):
# the tail latency when many connections compete, and the memory they cost. RSS is read
# halfway through each run; bytes per connection is that minus the RSS just before, over 10,000.
clients10k() {
  local clients=10000 rounds=2 targets=(gateway nginx haproxy)
  if [ -n "$BEFORE_PID" ]; then targets+=(gateway-before); fi
  local t port r
  rm -f "$TMP"/c10k-*.txt
  for r in $(seq 1 "$rounds"); do
    for t in "${targets[@]}"; do
      case $t in gateway) port=$GATEWAY;; gateway-before) port=$BEFORE;; nginx) port=$NGINX;; haproxy) port=$HAPROXY;; esac
      local idle; idle=$(rss_kib "$t")
      taskset -c "$WRK_CPUS" wrk -t2 -c"$clients" -d"$SECONDS_PER_RUN"s --timeout 10s --latency -s "$LUA" \
        "http://127.0.0.1:$port/cheap" > "$TMP/c10k-wrk.txt" 2>&1 &
      local wrk=$!
      sleep $((SECONDS_PER_RUN / 2))
      local busy; busy=$(rss_kib "$t")
      wait "$wrk" || true
      cat "$TMP/c10k-wrk.txt" >> "$TMP/wrk.log"
      local line; line=$(awk '
        function ms(v) { if (v ~ /us$/) return v/1000; if (v ~ /ms$/) return v+0; if (v ~ /s$/) return v*1000; return v }
        /^ +50%/ { p50 = ms($2) } /^ +99%/ { p99 = ms($2) }
        /Requests\/sec/ { rps = $2 }
        /Non-2xx/ { err += $NF } /Socket errors/ { gsub(",", ""); err += $4 + $6 + $8 + $10 }
        END { printf "%.0f %.2f %.2f %d", rps, p50, p99, err }' "$TMP/c10k-wrk.txt")
      echo "$line $busy $(( (busy - idle) * 1024 / clients ))" >> "$TMP/c10k-$t.txt"
      echo "  10k clients round $r $t: $line rss ${busy} KiB" >&2
      sleep 2 # let the closed connections' sockets go
    done
  done
  local nginx_p99; nginx_p99=$(cut -d' ' -f3 "$TMP/c10k-nginx.txt" | median)
  {
    echo
    echo "### $clients keep-alive clients, shared layout"
    echo
    echo "wrk with 2 threads and $clients connections on /cheap, $SECONDS_PER_RUN s per run, medians of $rounds interleaved"
    echo "rounds. RSS over all of a proxy's processes, read halfway through the run; per connection: that"
    echo "minus the RSS just before the run, over $clients."
    echo "HAProxy's maxconn is 9000 (its descriptor need at the hard limit of $(ulimit -Hn)), so its last 1,000 clients wait in the backlog."
    echo
    echo "| target | req/s | p50 ms | p99 ms | p99 vs nginx | RSS MiB | bytes per connection | errors |"
    echo "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
    for t in "${targets[@]}"; do
      local f=$TMP/c10k-$t.txt
      local rps p50 p99 err rss per
      rps=$(cut -d' ' -f1 "$f" | median); p50=$(cut -d' ' -f2 "$f" | median); p99=$(cut -d' ' -f3 "$f" | median)
      err=$(awk '{ s += $4 } END { print s }' "$f"); rss=$(cut -d' ' -f5 "$f" | median); per=$(cut -d' ' -f6 "$f" | median)
      printf "| %s | %.0f | %.2f | %.2f | %.2fx | %.0f | %.0f | %d |\n" "$t" "$rps" "$p50" "$p99" \
        "$(awk -v a="$p99" -v b="$nginx_p99" 'BEGIN { print a / b }')" "$(awk -v k="$rss" 'BEGIN { print k / 1024 }')" "$per" "$err"
    done
  } >> "$RESULTS"
}

main() {
  need
  for port in $UP1 $UP2 $UP3 $APP1 $APP2 $APP3 $((APP2 + 100)) $DISCOVERY $GATEWAY $ADMIN $NGINX $HAPROXY; do
    port_free "$port" || { echo "port $port is taken: stop whatever uses it first" >&2; exit 1; }
  done
  echo "building (perf profile: fat LTO, one codegen unit)"
  cargo build --profile perf -q -p gateway -p discovery -p app
  rm -rf "$TMP" && mkdir -p "$TMP"
  render bench/conf/upstream-nginx.conf "$TMP/upstream.conf"

  nginx -c "$TMP/upstream.conf"
  echo '{"health_check_time_interval": "1s", "timeout_threshold": "500ms"}' > "$TMP/discovery.json"
  target/perf/discovery --config "$TMP/discovery.json" --listen 127.0.0.1:$DISCOVERY --log-level warn > "$TMP/discovery.log" 2>&1 &
  PIDS+=($!); OTHER_PIDS=($!)
  wait_for discovery curl -sf "http://127.0.0.1:$DISCOVERY/health_check"
  for port in $APP1 $APP2 $APP3; do
    target/perf/app --port "$port" --discovery-url "http://127.0.0.1:$DISCOVERY" --admin-port $((port + 100)) --chaos --log-level warn > "$TMP/app-$port.log" 2>&1 &
    PIDS+=($!); OTHER_PIDS+=($!); APP_PID[$port]=$!
  done
  for port in $UP1 $UP2 $UP3; do
    curl -sf "http://127.0.0.1:$DISCOVERY/api/register" -d "{\"namespace\": \"cheap\", \"port\": $port}" >/dev/null
  done

  {
    echo "# Benchmark results"
    echo
    echo "Written by \`bash bench/run.sh\` (\`just bench\`) on $(date -u +%Y-%m-%d), $(nproc) cores, $(uname -r)."
    echo "nginx $(nginx -v 2>&1 | sed 's|.*/||'), HAProxy $(haproxy -v | head -1 | awk '{print $3}'), wrk with one thread and"
    echo "$CONNS keep-alive connections POSTing a 256-byte JSON body ($LUA); $SECONDS_PER_RUN s per run."
    echo "Each proxy runs as many workers as it has cores: one when pinned to core 0 (wrk, upstreams"
    echo "and discovery on core 1), $CORES when sharing both cores (nginx worker_processes, HAProxy"
    echo "nbthread, gateway worker_threads). Medians over interleaved rounds; *direct* is wrk against one"
    echo "upstream, no proxy."
  } > "$RESULTS"
  part() { [[ " $PARTS " == *" $1 "* ]]; }
  if part cheap; then
    for l in $LAYOUTS; do
      layout "$l"
      echo "layout $l" >&2
      compare "Cheap fixed-response upstream, $l layout" /cheap "$ROUNDS" "$SECONDS_PER_RUN"
    done
  fi
  layout "${BENCH_HOLD_LAYOUT:-shared}"
  if part apps; then compare "The three real apps (Service A), shared layout" / 3 "$SECONDS_PER_RUN"; fi
  if part slow; then slow_app; fi
  if part memory; then peak_rss; fi
  if part clients10k; then clients10k; fi
  if part echo; then echo_app; fi
  local measured=0
  for p in cheap apps slow memory echo clients10k; do part "$p" && measured=1; done
  if ((measured)); then
    many_cores >> "$RESULTS"
    mv "$RESULTS" "$OUT" && echo "results in $OUT" >&2
  fi
  if part hold; then
    echo "system up (gateway :$GATEWAY, nginx :$NGINX, HAProxy :$HAPROXY); Ctrl-C stops it" >&2
    sleep infinity
  fi
}

# The summaries of bench/cores.sh's results (the many-core layout: this machine's, and any other
# machine's kept in bench/, such as a 16-core machine's), each under its own machine line.
many_cores() {
  local f
  for f in "$ROOT"/bench/results-cores-*cores.md; do
    [ -f "$f" ] || continue
    echo
    echo "## Many cores: $(basename "$f")"
    echo
    sed -n '3p' "$f"
    echo
    echo "From \`bench/cores.sh\` (its file has every layout's table, CPU per request and RSS): W workers"
    echo "on W cores for each proxy, 64 connections per worker; then 10,000 keep-alive clients."
    awk '/^## Summary/ { on = 1; next } on && /^## / { sub(/^## /, "### ") } on' "$f"
  done
}

main "$@"

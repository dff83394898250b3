#!/usr/bin/env bash
# HTTPS on the client side: the gateway, nginx and HAProxy each ending TLS in front of the
# same cheap upstreams (bench/conf/upstream-nginx.conf), with the same certificate (ECDSA
# P-256, made here by openssl) and the same TLS 1.3 suite (TLS_AES_256_GCM_SHA384), in the
# same run, interleaved rounds.
#
#   keep-alive   wrk -t1 -c64 over HTTPS, one handshake per connection: requests per second
#                and the proxy's CPU time per request (utime + stime from /proc).
#   handshakes   the same with `Connection: close`: every request on a new connection, so
#                each is a handshake (wrk resumes its connection's last session: a PSK
#                handshake with a fresh key exchange): handshakes per second and CPU per
#                handshake.
#   memory       N keep-alive TLS clients held open, each served one request
#                (bench/tls_hold.py): the proxy's RSS with them minus its RSS before, per
#                connection.
#
# Every proxy has core 0 and one worker (nginx worker_processes 1, HAProxy nbthread 1,
# gateway worker_threads 1); wrk and the upstreams share core 1. Two layouts, interleaved:
#
#   open     the proxy may use all of core 0. On 2 cores this is bound by core 1 (wrk's own
#            TLS and the upstream), so the three come out close whatever they cost.
#   capped   the proxy's process gets the same CPU share, TLS_CPU_SHARE of one core (0.5),
#            by a CFS quota (a cgroup, v1 or v2): the proxy, not wrk, bounds the rate, and
#            req/s is what each makes of the same CPU. This is the throughput comparison.
#
# A second gateway, the same build with `idle_spin` 0 (its worker sleeps in epoll as soon as
# it has nothing to do), runs every layout too, and a light-load part measures both
# gateways' CPU per connection when connections come one at a time: what the looks before
# sleeping buy and what they cost.
#
# CPU per request is the figure a busy machine disturbs least.
#
#   cargo build --profile perf -p gateway -p discovery
#   bash bench/tls.sh [BIN_DIR]       (default target/perf; results: bench/results-tls.md)
#
# Settings (environment): TLS_ROUNDS (3), TLS_SECONDS per run (5), TLS_CONNECTIONS (64),
# TLS_LIGHT (500 connections one at a time for the light-load part; 0 skips it),
# TLS_CLIENTS for the memory part (10000, HAProxy at most 9,800: its maxconn reserves two
# descriptors a connection and this machine allows 20,000 a process; 0 skips it), TLS_CPU_SHARE (0.5), TLS_OUT
# (bench/results-tls.md). Needs python3 (the memory part) and a writable cpu cgroup (root).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
BIN=${1:-target/perf}
ROUNDS=${TLS_ROUNDS:-3}
SECS=${TLS_SECONDS:-5}
CONNS=${TLS_CONNECTIONS:-64}
CLIENTS=${TLS_CLIENTS:-10000}
LIGHT=${TLS_LIGHT:-500}
SHARE=${TLS_CPU_SHARE:-0.5}
OUT=${TLS_OUT:-$ROOT/bench/results-tls.md}
TMP=$ROOT/bench/tmp/tls
UP1=19581 UP2=19582 UP3=19583 DISCOVERY=19780 GW=19743 GWA=19744 GWP=19745 NGINX=19746 HAPROXY=19747
GW0=19748 GW0A=19749 GW0P=19750
TICKS=$(getconf CLK_TCK)
for b in gateway discovery; do
  [ -x "$BIN/$b" ] || { echo "$BIN/$b is missing: cargo build --profile perf -p gateway -p discovery" >&2; exit 1; }
done
for tool in wrk nginx haproxy openssl curl taskset python3; do
  command -v $tool >/dev/null || { echo "$tool is not installed (Debian: apt-get install $tool)" >&2; exit 1; }
done

PIDS=()
cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  for f in upstream.pid nginx.pid haproxy.pid; do
    [ -f "$TMP/$f" ] && kill "$(cat "$TMP/$f")" 2>/dev/null || true
  done
  wait 2>/dev/null || true
  for g in "${GROUPS_MADE[@]}"; do rmdir "$g" 2>/dev/null || true; done
}
GROUPS_MADE=()
trap cleanup EXIT
wait_for() { for _ in $(seq 1 200); do "$@" >/dev/null 2>&1 && return 0; sleep 0.1; done; echo "timed out: $*" >&2; exit 1; }
cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }
rss_kib() { awk '/^VmRSS/ { print $2 }' "/proc/$1/status"; }

rm -rf "$TMP" && mkdir -p "$TMP"
# One CA and one server certificate for localhost (ECDSA P-256), used by all three.
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 -subj '/CN=bench CA' \
  -keyout "$TMP/ca.key" -out "$TMP/ca.crt" 2>/dev/null
openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj '/CN=localhost' \
  -keyout "$TMP/server.key" -out "$TMP/server.csr" 2>/dev/null
printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n' > "$TMP/ext"
openssl x509 -req -in "$TMP/server.csr" -CA "$TMP/ca.crt" -CAkey "$TMP/ca.key" -CAcreateserial \
  -days 2 -extfile "$TMP/ext" -out "$TMP/server.crt" 2>/dev/null
cat "$TMP/server.crt" "$TMP/server.key" > "$TMP/server.pem"

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

cat > "$TMP/gateway.json" <<JSON
{
  "routes": [{"prefix": "/cheap", "namespace": "cheap"}],
  "upstream_timeout": "2s",
  "ready_timeout": "0s",
  "tls": {"listen": "127.0.0.1:$GW", "cert": "$TMP/server.crt", "key": "$TMP/server.key"}
}
JSON
"$BIN/gateway" --config "$TMP/gateway.json" --listen 127.0.0.1:$GWP --admin-listen 127.0.0.1:$GWA \
  --discovery-url "http://127.0.0.1:$DISCOVERY" --log-level warn --worker-threads 1 > "$TMP/gateway.log" 2>&1 &
GATEWAY_PID=$!; PIDS+=($!)
# The same gateway with idle_spin 0 (its worker sleeps as soon as it has nothing to do), for
# what the looks before sleeping buy and cost.
sed -e "s|\"tls\": {\"listen\": \"127.0.0.1:$GW\"|\"idle_spin\": 0, \"tls\": {\"listen\": \"127.0.0.1:$GW0\"|" "$TMP/gateway.json" > "$TMP/gateway0.json"
grep -q '"idle_spin": 0' "$TMP/gateway0.json" || { echo "could not write $TMP/gateway0.json" >&2; exit 1; }
"$BIN/gateway" --config "$TMP/gateway0.json" --listen 127.0.0.1:$GW0P --admin-listen 127.0.0.1:$GW0A \
  --discovery-url "http://127.0.0.1:$DISCOVERY" --log-level warn --worker-threads 1 > "$TMP/gateway0.log" 2>&1 &
GATEWAY0_PID=$!; PIDS+=($!)

cat > "$TMP/nginx.conf" <<CONF
worker_processes 1;
worker_rlimit_nofile 20000;
pid $TMP/nginx.pid;
error_log $TMP/nginx-error.log warn;
events { worker_connections 20000; }
http {
  access_log off;
  upstream cheap { server 127.0.0.1:$UP1; server 127.0.0.1:$UP2; server 127.0.0.1:$UP3; keepalive 256; }
  server {
    listen 127.0.0.1:$NGINX ssl;
    ssl_certificate $TMP/server.crt;
    ssl_certificate_key $TMP/server.key;
    ssl_protocols TLSv1.3;
    ssl_conf_command Ciphersuites TLS_AES_256_GCM_SHA384;
    keepalive_requests 10000000;
    keepalive_timeout 120s;
    proxy_http_version 1.1;
    proxy_set_header Connection "";
    proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for;
    location /cheap { proxy_pass http://cheap; }
  }
}
CONF
nginx -c "$TMP/nginx.conf"

cat > "$TMP/haproxy.cfg" <<CONF
global
  maxconn 9890
  nbthread 1
  pidfile $TMP/haproxy.pid
  ssl-default-bind-options ssl-min-ver TLSv1.3
  ssl-default-bind-ciphersuites TLS_AES_256_GCM_SHA384
defaults
  mode http
  timeout connect 1s
  timeout client 120s
  timeout server 2s
  option http-keep-alive
  http-reuse always
frontend fe
  bind 127.0.0.1:$HAPROXY ssl crt $TMP/server.pem alpn http/1.1
  default_backend cheap
backend cheap
  balance roundrobin
  option forwardfor
  server a 127.0.0.1:$UP1
  server b 127.0.0.1:$UP2
  server c 127.0.0.1:$UP3
CONF
haproxy -D -f "$TMP/haproxy.cfg" 2>"$TMP/haproxy.log"

declare -A PORT PID
PROXIES="gateway gateway0 nginx haproxy"
PORT[gateway]=$GW PORT[gateway0]=$GW0 PORT[nginx]=$NGINX PORT[haproxy]=$HAPROXY
for p in $PROXIES; do
  wait_for curl -sf --cacert "$TMP/ca.crt" "https://localhost:${PORT[$p]}/cheap"
done
PID[gateway]=$GATEWAY_PID PID[gateway0]=$GATEWAY0_PID
PID[nginx]=$(pgrep -P "$(cat "$TMP/nginx.pid")" | head -1)
PID[haproxy]=$(cat "$TMP/haproxy.pid")
# What each negotiated, for the record: it must be the same suite.
SUITES=""
for p in $PROXIES; do
  s=$(openssl s_client -connect "127.0.0.1:${PORT[$p]}" -servername localhost -CAfile "$TMP/ca.crt" </dev/null 2>/dev/null \
    | awk '/^New, / { print $2, $5 }' | tr -d ,)
  SUITES+="$p: $s; "
done

# Pinned: each proxy on core 0, everything else on core 1.
for p in $PROXIES; do taskset -apc 0 "${PID[$p]}" >/dev/null; done
for pid in "${PIDS[@]}" "$(cat "$TMP/upstream.pid")"; do
  [ "$pid" = "$GATEWAY_PID" ] || [ "$pid" = "$GATEWAY0_PID" ] || taskset -apc 1 "$pid" >/dev/null 2>&1 || true
done
for pid in $(pgrep -P "$(cat "$TMP/upstream.pid")"); do taskset -apc 1 "$pid" >/dev/null; done

# A cpu cgroup per proxy, so its CPU can be capped (cgroup v2 if mounted so, else v1).
if [ -f /sys/fs/cgroup/cgroup.controllers ]; then
  CG=/sys/fs/cgroup
  echo +cpu > $CG/cgroup.subtree_control 2>/dev/null || true
else
  CG=/sys/fs/cgroup/cpu
fi
declare -A GROUP
for p in $PROXIES; do
  GROUP[$p]=$CG/bench-tls-$p-$$
  mkdir "${GROUP[$p]}" || { echo "cannot make a cpu cgroup under $CG (run as root)" >&2; exit 1; }
  GROUPS_MADE+=("${GROUP[$p]}")
  echo "${PID[$p]}" > "${GROUP[$p]}/cgroup.procs"
done
PERIOD_US=10000
QUOTA_US=$(awk -v s="$SHARE" -v p=$PERIOD_US 'BEGIN { printf "%d", s * p }')
cap() { # proxy on|off
  local g=${GROUP[$1]}
  if [ -f "$g/cpu.max" ]; then
    if [ "$2" = on ]; then echo "$QUOTA_US $PERIOD_US" > "$g/cpu.max"; else echo "max $PERIOD_US" > "$g/cpu.max"; fi
  else
    echo $PERIOD_US > "$g/cpu.cfs_period_us"
    if [ "$2" = on ]; then echo "$QUOTA_US" > "$g/cpu.cfs_quota_us"; else echo -1 > "$g/cpu.cfs_quota_us"; fi
  fi
}

run() { # proxy kind(keepalive|handshake) -> "requests cpu_us_per_request req_per_s errors"
  local pid=${PID[$1]} t0 t1 out reqs errs header=()
  [ "$2" = handshake ] && header=(-H "Connection: close")
  t0=$(cpu_ticks "$pid")
  out=$(taskset -c 1 wrk -t1 -c"$CONNS" -d"$SECS"s "${header[@]}" "https://127.0.0.1:${PORT[$1]}/cheap" 2>&1)
  t1=$(cpu_ticks "$pid")
  reqs=$(echo "$out" | awk '/requests in/ { print $1 }')
  errs=$(echo "$out" | awk '/Socket errors/ { gsub(",", ""); print $4 + $6 + $8 + $10 } /Non-2xx/ { print $NF }' | paste -sd+ | bc 2>/dev/null || echo 0)
  awk -v r="$reqs" -v t=$((t1 - t0)) -v hz="$TICKS" -v s="$SECS" -v e="${errs:-0}" \
    'BEGIN { printf "%d %.2f %.0f %d\n", r, t / hz * 1e6 / r, r / s, e }'
}
LAYOUTS="open capped"
for p in $PROXIES; do
  for k in keepalive handshake; do
    run $p $k >/dev/null
    for l in $LAYOUTS; do : > "$TMP/$p-$k-$l.txt"; done
  done
done
for r in $(seq 1 "$ROUNDS"); do
  for l in $LAYOUTS; do
    for p in $PROXIES; do cap $p "$([ $l = capped ] && echo on || echo off)"; done
    sleep 2 # the gateway reads its quota once a second (idle_spin is off under one)
    for k in keepalive handshake; do
      for p in $PROXIES; do
        run $p $k >> "$TMP/$p-$k-$l.txt"
        echo "round $r $l $k $p: $(tail -1 "$TMP/$p-$k-$l.txt")" >&2
      done
    done
  done
done
for p in $PROXIES; do cap $p off; done
label() { if [ "$1" = gateway0 ]; then echo "gateway, idle_spin 0"; else echo "$1"; fi; }
median() { sort -n | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
col() { cut -d' ' -f"$2" "$TMP/$1.txt" | median; }  # file (proxy-kind-layout) column

memory() { # proxy -> "rss_before_kib rss_during_kib bytes_per_connection connections_held"
  local pid=${PID[$1]} n=$CLIENTS before during ready held
  # HAProxy reserves two descriptors per maxconn: 9,890 is the most under a limit of 20,000.
  [ "$1" = haproxy ] && [ "$n" -gt 9800 ] && n=9800
  before=$(rss_kib "$pid")
  coproc HOLD { taskset -c 1 python3 bench/tls_hold.py 127.0.0.1 "${PORT[$1]}" "$TMP/ca.crt" "$n" 2>"$TMP/$1-memory.txt"; }
  read -r ready held _ <&"${HOLD[0]}"
  during=$(rss_kib "$pid")
  exec {HOLD[1]}>&-
  wait "$HOLD_PID" || true
  [ "$ready" = READY ] || { echo "$1: the clients did not all connect: $(cat "$TMP/$1-memory.txt")" >&2; exit 1; }
  echo "$before $during $(( (during - before) * 1024 / held )) $held"
}
declare -A MEM
if [ "$CLIENTS" -gt 0 ]; then
  for p in gateway nginx haproxy; do MEM[$p]=$(memory $p); sleep 2; done
fi

# Light load: new connections one at a time (curl, a full handshake each, LIGHT of them with a
# 20 ms pause between), the gateway's CPU per connection with its looks before sleeping and
# without: what idle_spin costs where the gaps outlast it.
light() { # proxy -> "cpu_us_per_connection"
  local pid=${PID[$1]} t0 t1
  t0=$(cpu_ticks "$pid")
  for _ in $(seq 1 "$LIGHT"); do
    taskset -c 1 curl -sf --cacert "$TMP/ca.crt" "https://localhost:${PORT[$1]}/cheap" >/dev/null
    sleep 0.02
  done
  t1=$(cpu_ticks "$pid")
  awk -v t=$((t1 - t0)) -v hz="$TICKS" -v n="$LIGHT" 'BEGIN { printf "%.0f\n", t / hz * 1e6 / n }'
}
declare -A LIGHTCPU
if [ "$LIGHT" -gt 0 ]; then
  for p in gateway gateway0; do LIGHTCPU[$p]=$(light $p); done
fi

best() { # kind layout -> the better of nginx and HAProxy (higher req/s)
  local n h; n=$(col nginx-$1-$2 3); h=$(col haproxy-$1-$2 3)
  awk -v n="$n" -v h="$h" 'BEGIN { print (n > h) ? n : h }'
}
{
  echo "# HTTPS: the gateway, nginx and HAProxy ending TLS"
  echo
  echo "Written by \`bash bench/tls.sh $BIN\` on $(date -u +%Y-%m-%d), $(nproc) cores ($(uname -m)),"
  echo "after \`cargo build --profile perf -p gateway -p discovery\`. $(nginx -v 2>&1 | sed 's|nginx version: ||'), $(haproxy -v | head -1 | awk '{ print "HAProxy " $3 }'), $(openssl version | awk '{ print "OpenSSL " $2 }') (nginx, HAProxy and wrk), rustls (the gateway)."
  echo "Each proxy on core 0 with one worker, wrk and the cheap nginx upstream on core 1."
  echo "**open**: the proxy may use all of core 0 (on 2 cores, core 1 then bounds all three)."
  echo "**capped**: each proxy's process is held to the same $SHARE of a core (CFS quota ${QUOTA_US} µs per ${PERIOD_US} µs), so the proxy bounds the rate."
  echo "One certificate (ECDSA P-256) for all three; negotiated: $SUITES"
  echo "wrk -t1 -c$CONNS, ${SECS} s runs, $ROUNDS interleaved rounds, GET /cheap (a 11-byte JSON answer)."
  echo "**keep-alive**: one handshake per connection. **handshake**: \`Connection: close\` on every request,"
  echo "so each request is a new TCP connection and a TLS 1.3 handshake, which wrk resumes from its connection's last session (a PSK handshake with a fresh X25519 exchange, no certificate)."
  echo "CPU is the proxy process's utime + stime over the run, divided by the requests it served."
  echo "\"gateway, idle_spin 0\" is the same build with its worker sleeping as soon as it has nothing to do; the ratios are of the default gateway."
  for l in $LAYOUTS; do
    echo
    echo "### $l"
    echo
    echo "| proxy | keep-alive req/s | keep-alive CPU µs per request | handshakes/s | CPU µs per handshake | errors |"
    echo "| --- | ---: | ---: | ---: | ---: | ---: |"
    for p in $PROXIES; do
      echo "| $(label $p) | $(col $p-keepalive-$l 3) | $(col $p-keepalive-$l 2) | $(col $p-handshake-$l 3) | $(col $p-handshake-$l 2) | $(( $(col $p-keepalive-$l 4) + $(col $p-handshake-$l 4) )) |"
    done
    echo
    for k in keepalive handshake; do
      awk -v g="$(col gateway-$k-$l 3)" -v b="$(best $k $l)" -v k="$k" -v l="$l" \
        'BEGIN { printf "- **%s, %s**: gateway / the better of nginx and HAProxy, req/s: **%.3fx**\n", k, l, g / b }'
    done
  done
  if [ "$CLIENTS" -gt 0 ]; then
    echo
    echo "Memory: $CLIENTS keep-alive TLS clients held open, each served one GET (bench/tls_hold.py), the proxy's RSS before and with them:"
    echo
    echo "| proxy | clients held | RSS before KiB | RSS with the clients KiB | bytes per TLS connection |"
    echo "| --- | ---: | ---: | ---: | ---: |"
    for p in gateway nginx haproxy; do
      read -r b d per held <<<"${MEM[$p]}"
      echo "| $p | $held | $b | $d | $per |"
    done
  fi
  if [ "$LIGHT" -gt 0 ]; then
    echo
    echo "Light load: $LIGHT new connections one at a time (curl, 20 ms apart), the gateway's CPU per connection:"
    echo "${LIGHTCPU[gateway]} µs with idle_spin 200us (the default), ${LIGHTCPU[gateway0]} µs with idle_spin 0."
  fi
  echo
  echo "Every round (requests, CPU µs per request, req/s, errors):"
  echo
  for l in $LAYOUTS; do
    for p in $PROXIES; do
      for k in keepalive handshake; do echo "- $l $(label $p) $k: $(paste -sd';' "$TMP/$p-$k-$l.txt")"; done
    done
  done
} > "$OUT"
cat "$OUT"

#!/usr/bin/env bash
# The many-core layout: the gateway beside nginx and HAProxy with W workers each, for W in a
# list of layouts; same upstreams, same client, one run, rounds interleaved, medians.
#
#   bash bench/cores.sh                                   (what `just bench` runs)
#   CORES_TOOLS=.perf-tools CORES_BIN=target/perf bash bench/cores.sh   (a machine with no
#                                                         network and no cargo)
#
# Writes bench/results-cores-<N>cores.md (N = nproc), and, when $OUT is set, a copy of it and
# the raw wrk log under $OUT.
#
# Per layout W, each proxy gets W workers (gateway --worker-threads W, nginx worker_processes W,
# HAProxy nbthread W) and wrk 64 connections per worker, POSTing a 259-byte JSON body (the
# many-core benchmark's) to three cheap nginx upstreams (constant JSON answer) that the
# gateway finds through discovery; "direct" is wrk against one upstream, no proxy. Then
# 10,000 keep-alive clients against each proxy: p99 and peak RSS.
#
# Layouts (CORES = nproc):
#   16 or more cores: proxies on cores 0..W-1, upstreams and discovery on 8-11, wrk -t4 on 12-15;
#                     W in "1 2 4 8"; the 10,000-client run at 4 workers on 0-3.
#   fewer cores:      W in "1 2"; W=1: proxies on core 0, upstreams, discovery and wrk -t1 on the
#                     rest; W>=2: nothing pinned; the 10,000-client run at W = CORES, unpinned,
#                     wrk -t2.
#
# Settings (environment):
#   CORES_LAYOUTS        the worker counts to measure ("1 2 4 8", or "1 2" under 16 cores)
#   CORES_SECS           seconds per wrk run (8)
#   CORES_ROUNDS         interleaved rounds per layout (3)
#   CORES_MEM=0          skips the 10,000-client run
#   CORES_BIN            folder with the gateway and discovery binaries (target/perf; built with
#                        cargo's perf profile when they are missing)
#   CORES_TOOLS          folder holding nginx, HAProxy and wrk binaries and their libraries
#                        (bin/ and lib/); without it they come from PATH (apt-get when missing)
#   CORES_GATEWAY_BEFORE a second gateway binary (an earlier build), measured as
#                        "gateway-before" in the same interleaved rounds, to price a change
set -uo pipefail
CALLER=$PWD
cd "$(dirname "$0")/.." || exit 1
ROOT=$PWD
abs() { case $1 in /*) echo "$1" ;; *) echo "$CALLER/$1" ;; esac; }
die() { echo "cores.sh: $*" >&2; exit 1; }

SECS=${CORES_SECS:-8}
ROUNDS=${CORES_ROUNDS:-3}
MEM=${CORES_MEM:-1}
CORES=$(nproc)
BIN=$ROOT/target/perf
[ -n "${CORES_BIN:-}" ] && BIN=$(abs "$CORES_BIN")
BEFORE_BIN=
if [ -n "${CORES_GATEWAY_BEFORE:-}" ]; then
  BEFORE_BIN=$(abs "$CORES_GATEWAY_BEFORE")
  [ -x "$BEFORE_BIN" ] || die "CORES_GATEWAY_BEFORE=$CORES_GATEWAY_BEFORE is not an executable"
fi
FINAL=$ROOT/bench/results-cores-${CORES}cores.md

# Ports, all on 127.0.0.1; 29xxx, apart from bench/run.sh's 19xxx.
UP1=29081 UP2=29082 UP3=29083 DISCOVERY=29500
GATEWAY=29000 ADMIN=29001 BEFORE=29010 BEFORE_ADMIN=29011 NGINX_PORT=29100 HAPROXY_PORT=29200

T=$(mktemp -d "${TMPDIR:-/tmp}/cores.XXXXXX") || die "no temporary folder"
RESULTS=$T/results.md
# On a borrowed machine (OUT set) the logs are written under $OUT as the run goes, so that a run cut
# short still brings back what it measured.
if [ -n "${OUT:-}" ]; then mkdir -p "$OUT"; LOGDIR=$OUT; else LOGDIR=$T; fi
WRKLOG=$LOGDIR/cores-wrk.log
PROGRESS=$LOGDIR/cores-progress.log
: > "$WRKLOG"; : > "$PROGRESS"
say() { echo "$*" | tee -a "$PROGRESS" >&2; }

# --- processes, and stopping them ---------------------------------------------------------
DISCOVERY_PID='' UPSTREAM_PID='' GW_PID='' BEFORE_PID='' NGINX_PID='' HAPROXY_PID=''

alive() { # pid: running (not a zombie)
  local s
  s=$(awk '{ print $3 }' "/proc/$1/stat" 2>/dev/null) || return 1
  [ -n "$s" ] && [ "$s" != Z ]
}

stop() { # pids: TERM, up to 5 s to go, then KILL
  local p left
  for p in "$@"; do kill "$p" 2>/dev/null; done
  for _ in $(seq 1 50); do
    left=0
    for p in "$@"; do alive "$p" && left=1; done
    ((left)) || break
    sleep 0.1
  done
  for p in "$@"; do alive "$p" && kill -9 "$p" 2>/dev/null; done
  for p in "$@"; do wait "$p" 2>/dev/null; done
  return 0
}

children() { # pid: its child processes (nginx's workers)
  [ -n "$1" ] && pgrep -P "$1"
}

stop_proxies() {
  [ -n "$GW_PID$BEFORE_PID$NGINX_PID$HAPROXY_PID" ] || return 0
  # shellcheck disable=SC2046,SC2086 # empty or several pids: split on purpose
  stop $GW_PID $BEFORE_PID $NGINX_PID $(children "$NGINX_PID") $HAPROXY_PID
  GW_PID='' BEFORE_PID='' NGINX_PID='' HAPROXY_PID=''
  for port in $GATEWAY $BEFORE $NGINX_PORT $HAPROXY_PORT; do
    for _ in $(seq 1 50); do port_free "$port" && break; sleep 0.1; done
  done
}

cleanup() {
  trap - EXIT INT TERM
  stop_proxies
  # shellcheck disable=SC2046,SC2086
  stop $UPSTREAM_PID $(children "$UPSTREAM_PID") $DISCOVERY_PID
  rm -rf "$T"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# --- tools ----------------------------------------------------------------------------------
if [ -n "${CORES_TOOLS:-}" ]; then
  # Debian's binaries and their libraries, with
  # the system libraries a bare machine may lack as a fallback.
  D=$(realpath "$(abs "$CORES_TOOLS")") || die "no CORES_TOOLS folder $CORES_TOOLS"
  LIB=$D/root/usr/lib/x86_64-linux-gnu
  mkdir -p "$T/fallback"
  have_libs=$(ldconfig -p 2>/dev/null)
  for so in libsystemd.so.0 libcrypt.so.1 libcap.so.2 libgcrypt.so.20 liblzma.so.5 libzstd.so.1 liblz4.so.1 libgpg-error.so.0 libz.so.1; do
    grep -q "$so" <<<"$have_libs" || { [ -f "$D/sys/$so" ] && ln -sf "$D/sys/$so" "$T/fallback/$so"; }
  done
  export LD_LIBRARY_PATH=$LIB:$T/fallback
  NGINX=$D/root/usr/sbin/nginx HAPROXY=$D/root/usr/sbin/haproxy WRK=$D/root/usr/bin/wrk
  for b in "$NGINX" "$HAPROXY" "$WRK"; do [ -x "$b" ] || die "$b is missing: make CORES_TOOLS with fetch-tools.sh"; done
else
  missing=()
  for tool in nginx haproxy wrk taskset; do command -v "$tool" >/dev/null 2>&1 || missing+=("$tool"); done
  if ((${#missing[@]})); then
    echo "installing ${missing[*]} from Debian's packages" >&2
    if ! { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx haproxy wrk util-linux >/dev/null; }; then
      die "could not install ${missing[*]}"
    fi
  fi
  NGINX=$(command -v nginx) HAPROXY=$(command -v haproxy) WRK=$(command -v wrk)
fi
for tool in taskset pgrep; do command -v "$tool" >/dev/null 2>&1 || die "$tool is missing (util-linux, procps)"; done

# HTTP from the script itself: python3 as many-core.sh (it copes with CORES_TOOLS's libraries
# in LD_LIBRARY_PATH), else curl.
if command -v python3 >/dev/null 2>&1; then
  get() { python3 -c 'import sys, urllib.request as u; u.urlopen(sys.argv[1], timeout=2).read()' "$1" 2>/dev/null; }
  get_body() { python3 -c 'import sys, urllib.request as u; print(u.urlopen(sys.argv[1], timeout=2).read().decode())' "$1" 2>/dev/null; }
  post() {
    python3 -c 'import sys, urllib.request as u; u.urlopen(u.Request(sys.argv[1], data=sys.argv[2].encode(), headers={"content-type": "application/json"}), timeout=2).read()' "$1" "$2" 2>/dev/null
  }
elif command -v curl >/dev/null 2>&1; then
  get() { curl -sf -o /dev/null --max-time 2 "$1"; }
  get_body() { curl -sf --max-time 2 "$1"; }
  post() { curl -sf -o /dev/null --max-time 2 -H 'content-type: application/json' -d "$2" "$1"; }
else
  die "needs python3 or curl"
fi

wait_for() { # what, command...: up to 10 s; dies on a timeout
  local what=$1; shift
  for _ in $(seq 1 100); do "$@" >/dev/null 2>&1 && return 0; sleep 0.1; done
  die "timed out waiting for $what"
}
try_for() { # command...: up to 10 s; fails on a timeout
  for _ in $(seq 1 100); do "$@" >/dev/null 2>&1 && return 0; sleep 0.1; done
  return 1
}

# --- binaries -------------------------------------------------------------------------------
if [ ! -x "$BIN/gateway" ] || [ ! -x "$BIN/discovery" ]; then
  command -v cargo >/dev/null 2>&1 || die "no gateway and discovery in $BIN, and no cargo to build them"
  echo "building gateway and discovery (perf profile)" >&2
  cargo build --profile perf -q -p gateway -p discovery || die "the build failed"
  BIN=$ROOT/target/perf
fi

# 10,000 clients need 10,000 descriptors in wrk and in each proxy, plus the proxies' upstream side.
ulimit -n 200000 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null
NOFILE=$(ulimit -n)
MAXCONN=$((NOFILE / 2 - 200))

for port in $UP1 $UP2 $UP3 $DISCOVERY $GATEWAY $ADMIN $NGINX_PORT $HAPROXY_PORT ${BEFORE_BIN:+$BEFORE $BEFORE_ADMIN}; do
  port_free "$port" || die "port $port is taken: stop whatever uses it first"
done

# --- layouts --------------------------------------------------------------------------------
ALLC=$(taskset -pc $$ | awk '{ print $NF }') # the cores this script may use: "unpinned"
if ((CORES >= 16)); then
  LAYOUTS=${CORES_LAYOUTS:-"1 2 4 8"}; UPSTREAM_WORKERS=4; MEM_W=4
else
  LAYOUTS=${CORES_LAYOUTS:-"1 2"}; UPSTREAM_WORKERS=$CORES; MEM_W=$CORES
fi
REST=1; ((CORES > 2)) && REST=1-$((CORES - 1))

# Sets PC (proxies' cores), OC (upstreams' and discovery's), WRKC (wrk's), WT (wrk threads) and
# WHERE (the layout in words) for W workers; MEM=1 for the 10,000-client run.
set_layout() { # W [mem]
  local w=$1 mem=${2:-0}
  if ((CORES >= 16)); then
    PC=0-$((w - 1)); OC=8-11; WRKC=12-15; WT=4
    WHERE="proxies on cores $PC; upstreams and discovery on $OC; wrk on $WRKC"
    ((w > 8)) && WHERE="$WHERE (the proxies overlap the upstreams' cores)"
  elif ((w == 1 && CORES >= 2 && mem == 0)); then
    PC=0; OC=$REST; WRKC=$REST; WT=1
    WHERE="proxies on core 0; upstreams, discovery and wrk on core $REST"
  else
    PC=$ALLC; OC=$ALLC; WRKC=$ALLC; WT=1
    ((mem)) && WT=2
    WHERE="nothing pinned: proxies, upstreams, discovery and wrk share cores $ALLC"
  fi
}

# --- the fixed parts: upstreams, discovery, the client's body ----------------------------------
# cheap upstreams: 3 servers, constant JSON answer
cat > "$T/up.conf" <<C
worker_processes $UPSTREAM_WORKERS; pid $T/up.pid; error_log $T/up.err warn; daemon on;
events { worker_connections 20000; }
http { access_log off; keepalive_requests 100000000; keepalive_timeout 300s;
 client_body_temp_path $T/cb; proxy_temp_path $T/pt; fastcgi_temp_path $T/ft; uwsgi_temp_path $T/ut; scgi_temp_path $T/st;
 server { listen 127.0.0.1:$UP1 reuseport; location / { default_type application/json; return 200 '{"ok":true}'; } }
 server { listen 127.0.0.1:$UP2 reuseport; location / { default_type application/json; return 200 '{"ok":true}'; } }
 server { listen 127.0.0.1:$UP3 reuseport; location / { default_type application/json; return 200 '{"ok":true}'; } }
}
C

# The many-core benchmark's body, so that every run measures the same thing.
cat > "$T/post.lua" <<'L'
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = '{"id": 12345, "user": "alice", "amount": 1.0, "currency": "EUR", "tags": ["a", "b"], "note": "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"}'
L
BODY_BYTES=$(sed -n "s/^wrk.body = '\(.*\)'\$/\1/p" "$T/post.lua" | tr -d '\n' | wc -c)

echo '{"health_check_time_interval": "1s", "timeout_threshold": "500ms"}' > "$T/d.json"
echo '{"routes": [{"prefix": "/", "namespace": "cheap"}], "upstream_timeout": "2s"}' > "$T/g.json"

# Pins the upstreams' nginx (master and workers) and discovery (every thread) to cores.
pin_others() { # cores
  local p
  for p in $UPSTREAM_PID $(children "$UPSTREAM_PID") $DISCOVERY_PID; do taskset -apc "$1" "$p" >/dev/null; done
}

# --- the proxies ----------------------------------------------------------------------------
nginx_conf() { # W
  cat > "$T/px-$1.conf" <<C
worker_processes $1; pid $T/px.pid; error_log $T/px.err warn; daemon on;
events { worker_connections 20000; }
http { access_log off; client_body_temp_path $T/cb; proxy_temp_path $T/pt; fastcgi_temp_path $T/ft; uwsgi_temp_path $T/ut; scgi_temp_path $T/st;
 upstream cheap { server 127.0.0.1:$UP1; server 127.0.0.1:$UP2; server 127.0.0.1:$UP3; keepalive 1024; }
 server { listen 127.0.0.1:$NGINX_PORT reuseport; keepalive_requests 100000000; keepalive_timeout 300s;
  proxy_http_version 1.1; proxy_set_header Connection ""; proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for;
  proxy_read_timeout 2s; location / { proxy_pass http://cheap; } }
}
C
}

haproxy_cfg() { # W
  cat > "$T/hx-$1.cfg" <<C
global
  maxconn $MAXCONN
  nbthread $1
  pidfile $T/hx.pid
defaults
  mode http
  timeout connect 1s
  timeout client 120s
  timeout server 2s
  option http-keep-alive
  http-reuse always
frontend fe
  bind 127.0.0.1:$HAPROXY_PORT
  default_backend cheap
backend cheap
  balance roundrobin
  option forwardfor
  server a 127.0.0.1:$UP1
  server b 127.0.0.1:$UP2
  server c 127.0.0.1:$UP3
C
}

# The gateway's rings hold all three upstreams (its admin /status lists each one).
rings_full() { # admin port
  [ "$(get_body "http://127.0.0.1:$1/status" | grep -o '"upstream"' | wc -l)" -ge 3 ]
}

start_gateway() { # binary port admin W log -> pid in STARTED
  taskset -c "$PC" "$1" --config "$T/g.json" --listen "127.0.0.1:$2" --admin-listen "127.0.0.1:$3" \
    --discovery-url "http://127.0.0.1:$DISCOVERY" --log-level warn --worker-threads "$4" > "$T/$5" 2>&1 &
  STARTED=$!
}

start_proxies() { # W
  local w=$1
  start_gateway "$BIN/gateway" $GATEWAY $ADMIN "$w" "gw-$w.log"; GW_PID=$STARTED
  if [ -n "$BEFORE_BIN" ]; then start_gateway "$BEFORE_BIN" $BEFORE $BEFORE_ADMIN "$w" "gwb-$w.log"; BEFORE_PID=$STARTED; fi
  nginx_conf "$w"; haproxy_cfg "$w"
  taskset -c "$PC" "$NGINX" -e stderr -c "$T/px-$w.conf" 2>>"$T/px.err" || { cat "$T/px.err" >&2; die "the proxy nginx did not start"; }
  taskset -c "$PC" "$HAPROXY" -D -f "$T/hx-$w.cfg" 2>>"$T/hx.err" || { cat "$T/hx.err" >&2; die "HAProxy did not start"; }
  wait_for "the proxy nginx" get "http://127.0.0.1:$NGINX_PORT/"
  wait_for HAProxy get "http://127.0.0.1:$HAPROXY_PORT/"
  NGINX_PID=$(cat "$T/px.pid") HAPROXY_PID=$(cat "$T/hx.pid")
  try_for get "http://127.0.0.1:$GATEWAY/" || { tail -5 "$T/gw-$w.log" >&2; die "timed out waiting for the gateway"; }
  wait_for "the gateway's rings to hold the three upstreams" rings_full $ADMIN
  if [ -n "$BEFORE_BIN" ]; then
    try_for get "http://127.0.0.1:$BEFORE/" || { tail -5 "$T/gwb-$w.log" >&2; die "timed out waiting for gateway-before"; }
    # an older build may show its rings otherwise: a warning, not the end of the run
    try_for rings_full $BEFORE_ADMIN || say "  (gateway-before's /status does not list three upstreams; going on)"
  fi
}

# --- measuring ------------------------------------------------------------------------------
# One wrk run: prints "rps p50_ms p99_ms errors" (errors: socket errors and non-2xx answers).
measure() { # url secs conns threads
  local out
  out=$(taskset -c "$WRKC" "$WRK" -t"$4" -c"$3" -d"$2"s --timeout 10s --latency -s "$T/post.lua" "$1" 2>&1)
  { echo "### $(date -u +%T) $WHERE; wrk -t$4 -c$3 -d${2}s $1"; echo "$out"; } >> "$WRKLOG"
  echo "$out" | awk 'function ms(v){ if (v ~ /us$/) return v/1000; if (v ~ /ms$/) return v+0; if (v ~ /s$/) return v*1000; return v }
    /^ +50%/ {p50=ms($2)} /^ +99%/ {p99=ms($2)} /Requests\/sec/ {rps=$2}
    /Non-2xx/ {err+=$NF} /Socket errors/ {gsub(",",""); err+=$4+$6+$8+$10}
    END {printf "%.0f %.2f %.2f %d\n", rps, p50, p99, err}'
}

median() { sort -n | awk '{ v[NR] = $1 } END { if (NR == 0) print 0; else print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }

medians() { # name: "rps p50 p99 errors cpu" over its rounds (errors summed)
  local f=$T/run-$1
  echo "$(cut -d' ' -f1 "$f" | median) $(cut -d' ' -f2 "$f" | median) $(cut -d' ' -f3 "$f" | median) $(awk '{ s += $4 } END { print s + 0 }' "$f") $(cut -d' ' -f5 "$f" | median)"
}

# CPU time a proxy's processes have used, in clock ticks (utime + stime of every thread).
TICKS=$(getconf CLK_TCK)
ticks_of() { # target
  local pids p s=0 v
  case $1 in
    gateway) pids=$GW_PID ;;
    gateway-before) pids=$BEFORE_PID ;;
    nginx) pids=$(children "$NGINX_PID") ;;
    haproxy) pids=$HAPROXY_PID ;;
    *) echo 0; return ;;
  esac
  for p in $pids; do v=$(awk '{ print $14 + $15 }' "/proc/$p/stat" 2>/dev/null); s=$((s + ${v:-0})); done
  echo "$s"
}
# CPU µs per request of a run: ticks used over the requests served (req/s x seconds).
cpu_per_request() { # ticks rps secs
  awk -v d="$1" -v hz="$TICKS" -v rps="$2" -v s="$3" 'BEGIN { if (rps > 0 && d > 0) printf "%.2f", d * 1e6 / hz / (rps * s); else print 0 }'
}

# Peak RSS in KiB, the same measure for every proxy: VmHWM of the gateway's and HAProxy's one
# process; for nginx the sum of its workers' VmHWM.
hwm_kib() { # pids
  local s=0 v p
  for p in "$@"; do v=$(awk '/^VmHWM/ { print $2 }' "/proc/$p/status" 2>/dev/null); s=$((s + ${v:-0})); done
  echo "$s"
}
# shellcheck disable=SC2046 # nginx's worker pids, split
rss_of() { # target
  case $1 in
    gateway) hwm_kib "$GW_PID" ;;
    gateway-before) hwm_kib "$BEFORE_PID" ;;
    nginx) hwm_kib $(children "$NGINX_PID") ;;
    haproxy) hwm_kib "$HAPROXY_PID" ;;
    *) echo "" ;;
  esac
}
mib() { if [ -n "$1" ]; then awk -v k="$1" 'BEGIN { printf "%.1f", k / 1024 }'; else echo "–"; fi; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2fx", a / b; else print "–" }'; }
label() { case $1 in haproxy) echo HAProxy ;; *) echo "$1" ;; esac; }
port_of() {
  case $1 in gateway) echo $GATEWAY ;; gateway-before) echo $BEFORE ;; nginx) echo $NGINX_PORT ;; haproxy) echo $HAPROXY_PORT ;; direct) echo $UP1 ;; esac
}

PROXIES=(gateway)
if [ -n "$BEFORE_BIN" ]; then PROXIES+=(gateway-before); fi
PROXIES+=(nginx haproxy)
TARGETS=("${PROXIES[@]}" direct)

# --- start --------------------------------------------------------------------------------
nlayouts=$(wc -w <<<"$LAYOUTS")
estimate=$((nlayouts * (${#TARGETS[@]} * (2 + ROUNDS * SECS) + 4) + 5))
[ "$MEM" = 1 ] && estimate=$((estimate + ${#PROXIES[@]} * (SECS + 2) + 6))
COMMIT=unknown
if command -v git >/dev/null 2>&1 && COMMIT=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null); then
  [ -n "$(git -C "$ROOT" status --porcelain --untracked-files=no 2>/dev/null)" ] && COMMIT="$COMMIT (with uncommitted changes)"
else
  COMMIT=unknown
fi
NGINX_V=$("$NGINX" -v 2>&1 | sed 's|.*/||')
HAPROXY_V=$("$HAPROXY" -v 2>/dev/null | head -1 | awk '{ print $3 }')
WRK_V=$("$WRK" -v 2>&1 | head -1 | awk '{ print $2 }')
say "cores.sh: $CORES cores, layouts \"$LAYOUTS\", ${SECS} s x $ROUNDS rounds, 10,000 clients: $([ "$MEM" = 1 ] && echo yes || echo no); about ${estimate} s"

set_layout 1
taskset -c "$OC" "$NGINX" -e stderr -c "$T/up.conf" 2>>"$T/up.err" || { cat "$T/up.err" >&2; die "the upstream nginx did not start"; }
wait_for "the upstreams" get "http://127.0.0.1:$UP1/"
UPSTREAM_PID=$(cat "$T/up.pid")
taskset -c "$OC" "$BIN/discovery" --config "$T/d.json" --listen "127.0.0.1:$DISCOVERY" --log-level warn > "$T/discovery.log" 2>&1 &
DISCOVERY_PID=$!
wait_for discovery get "http://127.0.0.1:$DISCOVERY/health_check"
for p in $UP1 $UP2 $UP3; do
  post "http://127.0.0.1:$DISCOVERY/api/register" "{\"namespace\": \"cheap\", \"port\": $p}" || die "could not register port $p with discovery"
done

{
  echo "# Many-core layout: the gateway beside nginx and HAProxy"
  echo
  echo "$CORES cores, kernel $(uname -r), $(date -u '+%Y-%m-%d %H:%M UTC'); nginx $NGINX_V, HAProxy $HAPROXY_V, wrk $WRK_V; gateway $COMMIT ($BIN/gateway)${BEFORE_BIN:+; gateway-before: $BEFORE_BIN}."
  echo
  echo "Written by \`bash bench/cores.sh\`. Each proxy runs W workers (gateway \`--worker-threads W\`,"
  echo "nginx \`worker_processes W\`, HAProxy \`nbthread W\`) in front of three cheap nginx upstreams"
  echo "($UPSTREAM_WORKERS workers, constant JSON answer) that the gateway finds through discovery; wrk POSTs a"
  echo "$BODY_BYTES-byte JSON body (the many-core benchmark's) over 64 keep-alive connections per worker,"
  echo "$SECS s per run, after a 2 s warm-up of each target; medians of $ROUNDS interleaved rounds, errors summed"
  echo "(socket errors and non-2xx answers). *direct* is wrk against one upstream, no proxy."
  echo "RSS: the peak (VmHWM) of the layout's fresh processes, the same measure for each proxy: the gateway's"
  echo "and HAProxy's one process, for nginx the sum of its workers' VmHWM (the master left out)."
  echo "CPU µs per request: the proxy's CPU time (utime + stime of all its threads or workers) over the"
  echo "requests it served in the run; a proxy that is not the bottleneck shows its cost, not its limit."
} > "$RESULTS"
declare -A RSS=()
SUMMARY=$T/summary.md
: > "$SUMMARY"

# --- the layouts ----------------------------------------------------------------------------
for W in $LAYOUTS; do
  set_layout "$W"
  CONNS=$((W * 64))
  say "== $W worker(s): $WHERE; wrk -t$WT -c$CONNS"
  pin_others "$OC"
  start_proxies "$W"
  for t in "${TARGETS[@]}"; do measure "http://127.0.0.1:$(port_of "$t")/" 2 "$CONNS" "$WT" > /dev/null; done
  rm -f "$T"/run-*
  for r in $(seq 1 "$ROUNDS"); do
    for t in "${TARGETS[@]}"; do
      t0=$(ticks_of "$t")
      m=$(measure "http://127.0.0.1:$(port_of "$t")/" "$SECS" "$CONNS" "$WT")
      m="$m $(cpu_per_request $(($(ticks_of "$t") - t0)) "${m%% *}" "$SECS")"
      echo "$m" >> "$T/run-$t"
      say "  round $r $t: $m"
    done
  done
  RSS=()
  for t in "${PROXIES[@]}"; do RSS[$t]=$(rss_of "$t"); done
  read -r gw_rps _ gw_p99 _ <<<"$(medians gateway)"
  read -r ngx_rps _ ngx_p99 _ <<<"$(medians nginx)"
  read -r hap_rps _ _ _ <<<"$(medians haproxy)"
  best=$(awk -v a="$ngx_rps" -v b="$hap_rps" 'BEGIN { print (a > b) ? a : b }')
  {
    echo
    echo "## $W worker$( ((W > 1)) && echo s) each"
    echo
    echo "$WHERE; wrk -t$WT -c$CONNS."
    echo
    echo "| target | req/s | p50 ms | p99 ms | errors | RSS MB | CPU µs per request |"
    echo "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"
    for t in "${TARGETS[@]}"; do
      read -r rps p50 p99 err cpu <<<"$(medians "$t")"
      [ "$t" = direct ] && cpu="–"
      printf "| %s | %.0f | %.2f | %.2f | %d | %s | %s |\n" "$(label "$t")" "$rps" "$p50" "$p99" "$err" "$(mib "${RSS[$t]:-}")" "$cpu"
    done
    echo
    echo "gateway / best of nginx and HAProxy: **$(ratio "$gw_rps" "$best")**; p99 gateway / nginx: **$(ratio "$gw_p99" "$ngx_p99")**."
    if [ -n "$BEFORE_BIN" ]; then
      read -r gb_rps _ gb_p99 _ <<<"$(medians gateway-before)"
      echo "gateway / gateway-before: **$(ratio "$gw_rps" "$gb_rps")** req/s, p99 $(ratio "$gw_p99" "$gb_p99")."
    fi
    echo "Every round (req/s): $(for t in "${TARGETS[@]}"; do printf '%s %s; ' "$(label "$t")" "$(cut -d' ' -f1 "$T/run-$t" | paste -sd' ')"; done | sed 's/; $/./')"
  } >> "$RESULTS"
  row=$(printf "| %s | %.0f | %.0f | %.0f | %s | %s |" "$W" "$gw_rps" "$ngx_rps" "$hap_rps" "$(ratio "$gw_rps" "$best")" "$(ratio "$gw_p99" "$ngx_p99")")
  [ -n "$BEFORE_BIN" ] && row="$row $(printf "%.0f" "$gb_rps") | $(ratio "$gw_rps" "$gb_rps") |"
  echo "$row" >> "$SUMMARY"
  say "  median gateway $gw_rps, nginx $ngx_rps, HAProxy $hap_rps req/s; gateway / best $(ratio "$gw_rps" "$best"); rss KiB: $(for t in "${PROXIES[@]}"; do printf '%s %s ' "$t" "${RSS[$t]}"; done)"
  stop_proxies
  sleep 1
done

{
  echo
  echo "## Summary"
  echo
  echo "Medians of $ROUNDS rounds; gateway / best: the gateway's req/s over the better of nginx and HAProxy."
  echo
  if [ -n "$BEFORE_BIN" ]; then
    echo "| workers | gateway req/s | nginx | HAProxy | gateway / best | p99 gateway / nginx | gateway-before | gateway / before |"
    echo "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
  else
    echo "| workers | gateway req/s | nginx | HAProxy | gateway / best | p99 gateway / nginx |"
    echo "| ---: | ---: | ---: | ---: | ---: | ---: |"
  fi
  cat "$SUMMARY"
} >> "$RESULTS"

# --- 10,000 keep-alive clients ----------------------------------------------------------------
if [ "$MEM" = 1 ]; then
  W=$MEM_W
  set_layout "$W" 1
  say "== 10,000 keep-alive clients, $W workers each: $WHERE; wrk -t$WT -c10000"
  pin_others "$OC"
  start_proxies "$W"
  rows=()
  for t in "${PROXIES[@]}"; do
    m=$(measure "http://127.0.0.1:$(port_of "$t")/" "$SECS" 10000 "$WT")
    rss=$(rss_of "$t")
    read -r rps _ p99 err <<<"$m"
    rows+=("$(printf "| %s | %.0f | %.2f | %d | %s |" "$(label "$t")" "$rps" "$p99" "$err" "$(mib "$rss")")")
    say "  $t: $m rss_kib $rss"
    sleep 2 # let the closed connections' sockets go
  done
  {
    echo
    echo "## 10,000 keep-alive clients"
    echo
    echo "$W workers each; $WHERE; wrk -t$WT -c10000, $SECS s, one run per proxy on freshly started proxies."
    echo "RSS MB: peak (VmHWM) in MiB, the gateway's and HAProxy's process, the sum of nginx's workers."
    ((MAXCONN < 10000)) && echo "HAProxy's maxconn is $MAXCONN (the descriptor limit here is $NOFILE), so its last $((10000 - MAXCONN)) clients wait in the backlog."
    echo
    echo "| proxy | req/s | p99 ms | errors | RSS MB |"
    echo "| --- | ---: | ---: | ---: | ---: |"
    printf '%s\n' "${rows[@]}"
  } >> "$RESULTS"
  stop_proxies
fi

if ! { cp "$RESULTS" "$FINAL.tmp" && mv -f "$FINAL.tmp" "$FINAL"; }; then die "could not write $FINAL"; fi
[ -n "${OUT:-}" ] && cp "$RESULTS" "$OUT/results-cores-${CORES}cores.md"
say "results in $FINAL${OUT:+ (and $OUT)}"

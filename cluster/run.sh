#!/usr/bin/env bash
# `just cluster`: discovery past one machine, all on loopback.
#
#   etcd members      127.0.0.1:2379, :22379, :32379 (peers :2380, :22380, :32380)
#   discovery         replicas d1 http://127.0.0.1:8500 and d2 http://127.0.0.1:8510,
#                     one registry in etcd under /cluster/
#   gateways          two on 127.0.0.1:8000 (SO_REUSEPORT), admin :8001 and :8003,
#                     each watching both replicas; Idempotency-Key records in
#                     etcd under /idempotency/, so both dedupe together
#   state file        target/cluster/state.json (`just loadtest --state
#                     target/cluster/state.json --idempotency`)
#   apps              127.0.0.1:8080 and :8081 register with d1, :8082 with d2
#
# Ctrl-C (or SIGTERM) stops every process and waits for them. Logs and data go
# to target/cluster/ (emptied at each start). Needs etcd on the PATH (Debian:
# apt-get install etcd-server) and the release binaries (`just cluster` builds them).
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v etcd >/dev/null; then
  echo "etcd is not installed (Debian: apt-get install etcd-server)" >&2
  exit 1
fi
bin=${CLUSTER_BIN:-target/release}  # CLUSTER_BIN=target/debug for a debug build
for b in discovery gateway app; do
  [[ -x $bin/$b ]] || { echo "$bin/$b is missing: just build (one release build of the workspace)" >&2; exit 1; }
done

run=target/cluster
rm -rf "$run"
mkdir -p "$run"
pids=()   # every process, for `wait`
tiers=()  # per process: 0 etcd, 1 discovery, 2 gateways and apps

stop() {
  trap - INT TERM EXIT
  echo
  echo "stopping ${#pids[@]} processes"
  # Gateways and apps first (apps deregister while discovery runs), then
  # discovery (it lets go of its etcd lease), then etcd.
  for tier in 2 1 0; do
    local group=()
    for i in "${!pids[@]}"; do
      [[ ${tiers[i]} == "$tier" ]] && group+=("${pids[i]}")
    done
    if [[ $tier == 0 ]]; then
      # One member at a time: a stopping leader hands over to a live member
      # at once, instead of waiting out its transfer timeout.
      for pid in "${group[@]}"; do
        kill -TERM "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
      done
    else
      kill -TERM "${group[@]}" 2>/dev/null || true
      for pid in "${group[@]}"; do wait "$pid" 2>/dev/null || true; done
    fi
  done
  echo "all stopped; logs in $run/"
  exit 0
}
trap stop INT TERM EXIT

start() { # tier, name, then the command line
  local tier=$1 name=$2
  shift 2
  "$@" >"$run/$name.log" 2>&1 &
  pids+=($!)
  tiers+=("$tier")
  echo "started $name (pid $!): log $run/$name.log"
}

wait_http() { # url, what
  for _ in $(seq 1 100); do
    if curl -fsS -o /dev/null "$1" 2>/dev/null; then return 0; fi
    sleep 0.1
  done
  echo "$2 did not come up at $1; see $run/" >&2
  exit 1
}

members=(e1:2379:2380 e2:22379:22380 e3:32379:32380)
initial=""
for m in "${members[@]}"; do
  IFS=: read -r name client peer <<<"$m"
  initial+="${initial:+,}$name=http://127.0.0.1:$peer"
done
endpoints=""
for m in "${members[@]}"; do
  IFS=: read -r name client peer <<<"$m"
  endpoints+="${endpoints:+,}127.0.0.1:$client"
  start 0 "etcd-$name" etcd --name "$name" --data-dir "$run/$name" \
    --listen-client-urls "http://127.0.0.1:$client" --advertise-client-urls "http://127.0.0.1:$client" \
    --listen-peer-urls "http://127.0.0.1:$peer" --initial-advertise-peer-urls "http://127.0.0.1:$peer" \
    --initial-cluster "$initial" --initial-cluster-state new --initial-cluster-token just-cluster \
    --logger zap --log-level warn
done
for m in "${members[@]}"; do
  IFS=: read -r name client peer <<<"$m"
  wait_http "http://127.0.0.1:$client/health" "etcd $name"
done

for r in d1:8500 d2:8510; do
  IFS=: read -r id port <<<"$r"
  cat >"$run/$id.json" <<JSON
{
  "listen": "127.0.0.1:$port",
  "store": "etcd://$endpoints/cluster",
  "replica_id": "$id",
  "advertise_url": "http://127.0.0.1:$port",
  "health_check_time_interval": "2s",
  "timeout_threshold": "500ms",
  "deregister_after": "60s"
}
JSON
  start 1 "discovery-$id" "$bin/discovery" --config "$run/$id.json"
done
wait_http http://127.0.0.1:8500/health_check "discovery d1"
wait_http http://127.0.0.1:8510/health_check "discovery d2"

for g in g1:8001 g2:8003; do
  IFS=: read -r id admin <<<"$g"
  start 2 "gateway-$id" "$bin/gateway" --config config/gateway.json --listen 127.0.0.1:8000 \
    --admin-listen "127.0.0.1:$admin" --discovery-url "http://127.0.0.1:8500,http://127.0.0.1:8510" \
    --idempotency-store "etcd://$endpoints/idempotency"
done

for a in 8080:8500 8081:8500 8082:8510; do
  IFS=: read -r port disco <<<"$a"
  start 2 "app-$port" "$bin/app" --config config/app.json --port "$port" --admin-port $((port + 100)) \
    --discovery-url "http://127.0.0.1:$disco"
done
wait_http http://127.0.0.1:8001/health_check "gateway g1"
wait_http http://127.0.0.1:8003/health_check "gateway g2"

# Where the system is, for `loadtest --state target/cluster/state.json`
# (the URLs only: Ctrl-C here stops the processes, not `just down`).
cat >"$run/state.json" <<JSON
{
  "discovery_url": "http://127.0.0.1:8500",
  "gateway_url": "http://127.0.0.1:8000",
  "admin_url": "http://127.0.0.1:8001",
  "gateway_admin_urls": ["http://127.0.0.1:8001", "http://127.0.0.1:8003"],
  "cwd": "$PWD",
  "processes": {},
  "app_admin_urls": {
    "127.0.0.1:8080": "http://127.0.0.1:8180",
    "127.0.0.1:8081": "http://127.0.0.1:8181",
    "127.0.0.1:8082": "http://127.0.0.1:8182"
  }
}
JSON

cat <<TXT

cluster up:
  gateways   http://127.0.0.1:8000/   (two processes; status at :8001/status and :8003/status)
  discovery  http://127.0.0.1:8500/ and http://127.0.0.1:8510/   (dashboards, /metrics)
  etcd       $endpoints   (prefix /cluster/)
  state      $run/state.json
try: curl -X POST -d '{}' http://127.0.0.1:8000/
     just loadtest --state $run/state.json --idempotency   (each key run once across both gateways)
     kill -9 one replica or etcd member (pids above): the others go on serving
Ctrl-C stops everything.
TXT
# Runs until Ctrl-C, even when a process is killed to see the others cope.
while true; do
  wait || true
  sleep 1
done

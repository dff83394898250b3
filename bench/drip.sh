#!/usr/bin/env bash
# Slow request bodies against the fully optimized (perf profile) gateway ("Bounded slow clients").
#
#   bash bench/drip.sh            (writes bench/results-drip.md)
#
# DRIP_CONNECTIONS clients (300) each declare a 1 MiB body, send 1 MB of it at once,
# then 1 byte every DRIP_EVERY seconds (5). The gateway runs with client_body_timeout
# DRIP_TIMEOUT (10s), once with the default max_buffered_bytes (64 MiB) and once with
# it raised above what the clients hold (512 MiB), so every client reaches the timeout.
# Reported per run: answers by status, when they came (seconds after the client's
# head), and the gateway's peak RSS (VmHWM) and RSS once every client was answered.
# No discovery and no app is needed: no body ever completes, so nothing is forwarded.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
CONNECTIONS=${DRIP_CONNECTIONS:-300}
EVERY=${DRIP_EVERY:-5}
TIMEOUT=${DRIP_TIMEOUT:-10}
OUT=$ROOT/bench/results-drip.md
TMP=$ROOT/bench/tmp/drip
PORT=19300 ADMIN=19301
mkdir -p "$TMP"

cargo build --profile perf -p gateway
BIN=$ROOT/target/perf/gateway

client() {
    python3 - "$PORT" "$CONNECTIONS" "$EVERY" <<'PY'
import asyncio, json, sys, time
port, n, every = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
head = b"POST /api/pay HTTP/1.1\r\nHost: gw\r\nContent-Type: application/json\r\nContent-Length: 1048576\r\n\r\n"
first = b" " * 1_000_000

async def one():
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(head)
    started = time.monotonic()
    writer.write(first)
    answer = asyncio.ensure_future(reader.readline())
    try:
        await writer.drain()
        while not answer.done() and time.monotonic() - started < 120:
            done, _ = await asyncio.wait({answer}, timeout=every)
            if not done:
                writer.write(b" ")
                await writer.drain()
        line = await asyncio.wait_for(answer, 1)
        status = line.split(b" ")[1].decode() if line.startswith(b"HTTP/") else "closed"
    except Exception as e:
        status = "error:" + type(e).__name__
    took = time.monotonic() - started
    writer.close()
    return status, took

async def main():
    results = await asyncio.gather(*(one() for _ in range(n)))
    out = {}
    for status, took in results:
        s = out.setdefault(status, {"count": 0, "min_s": 1e9, "max_s": 0.0})
        s["count"] += 1
        s["min_s"] = round(min(s["min_s"], took), 2)
        s["max_s"] = round(max(s["max_s"], took), 2)
    print(json.dumps(out))

asyncio.run(main())
PY
}

kib() { awk -v k="$2" '$1 == k":" {print $2}' "/proc/$1/status"; }

run() {
    local label=$1 buffered=$2
    cat >"$TMP/gateway.json" <<JSON
{"listen": "127.0.0.1:$PORT", "admin_listen": "127.0.0.1:$ADMIN",
 "discovery_url": "http://127.0.0.1:1", "client_body_timeout": "${TIMEOUT}s",
 "max_buffered_bytes": $buffered, "worker_threads": 0}
JSON
    "$BIN" --config "$TMP/gateway.json" --log-level error >"$TMP/gateway.log" 2>&1 &
    local pid=$!
    for _ in $(seq 100); do
        curl -fsS "http://127.0.0.1:$ADMIN/health_check" >/dev/null 2>&1 && break
        sleep 0.1
    done
    local idle; idle=$(kib "$pid" VmRSS)
    local answers; answers=$(client)
    local after; after=$(kib "$pid" VmRSS)
    local peak; peak=$(kib "$pid" VmHWM)
    kill -TERM "$pid"; wait "$pid" || true
    echo "| $label | $(numfmt --to=iec-i --suffix=B "$buffered") | $answers | $((idle / 1024)) MiB | $((peak / 1024)) MiB | $((after / 1024)) MiB |" | tee -a "$TMP/rows.md"
}

rm -f "$TMP/rows.md"
run "default cap" $((64 * 1024 * 1024))
run "cap above the load" $((512 * 1024 * 1024))

{
    echo "# Slow request bodies: $CONNECTIONS clients dripping"
    echo
    echo "Each client declares a 1 MiB body, sends 1 MB at once, then 1 byte every ${EVERY}s;"
    echo "gateway: perf-profile build, client_body_timeout ${TIMEOUT}s. Answers: status -> count and"
    echo "seconds from the client's head to the answer (min, max). RSS of the gateway process:"
    echo "before the clients, peak (VmHWM), and once every client was answered."
    echo "Machine: $(nproc) cores, $(date -u +%Y-%m-%d). Command: \`bash bench/drip.sh\`."
    echo
    echo "| run | max_buffered_bytes | answers | RSS idle | peak RSS | RSS after |"
    echo "|---|---|---|---|---|---|"
    cat "$TMP/rows.md"
} >"$OUT"
echo "written to $OUT"

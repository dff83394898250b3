"""Load on the gateway's TLS port from Python's ssl and http.client (stdlib
only), for gateway/tests/acceptance/tls_reload.rs.

Usage: tls_reload.py PORT CA_FILE THREADS WARM AFTER BOUND

THREADS threads keep one connection alive each and THREADS more open a new
TLS connection for every request (SNI and verified name gw.test, trusting
CA_FILE only). Every request is a POST of JSON that must come back byte for
byte with 200 (a failure is counted, and the first 50 are kept with their
reasons). Each new connection's certificate is recorded (the SHA-256 of
its DER) with when its handshake started and ended.

Once WARM requests are answered it prints "WARM <n>". The test then rotates
the certificate and, when the gateway has reloaded, writes "RELOADED" on
stdin. The load stops when requests started after that line number AFTER or
more of each kind, or BOUND seconds after the start, or when stdin ends; the
last line printed is "SUMMARY <json>".
"""

import hashlib
import http.client
import json
import socket
import ssl
import sys
import threading
import time

port, ca_file = int(sys.argv[1]), sys.argv[2]
threads_each, warm, after_each = int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
bound = float(sys.argv[6])

started_at = time.monotonic()


def now():
    return time.monotonic() - started_at


context = ssl.create_default_context(cafile=ca_file)
# Python 3.13's default, whatever this Python's is: the test's certificates
# must pass OpenSSL's strict X.509 checks.
context.verify_flags |= ssl.VERIFY_X509_STRICT
context.set_alpn_protocols(["http/1.1"])

cond = threading.Condition()
state = {
    "ok": 0,
    "failed": 0,
    "ok_before_reload": 0,
    "ok_after_reload": {"keep_alive": 0, "new_connection": 0},
    "reload_at": None,
    "stdin_closed": False,
}
failures = []
connections = []
stop = threading.Event()


class Connection(http.client.HTTPConnection):
    """HTTPS to 127.0.0.1:PORT asking for gw.test; records each handshake."""

    def __init__(self, thread, kind):
        super().__init__("gw.test", port, timeout=10)
        self.thread, self.kind = thread, kind

    def connect(self):
        began = now()
        sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        # As http.client's own connect does: it sends a request's head and
        # body in two writes, and the body would wait on a delayed ACK.
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            self.sock = context.wrap_socket(sock, server_hostname="gw.test")
        except BaseException:
            sock.close()
            raise
        der = self.sock.getpeercert(binary_form=True)
        record = {
            "thread": self.thread,
            "kind": self.kind,
            "started": began,
            "done": now(),
            "fingerprint": hashlib.sha256(der).hexdigest(),
            "version": self.sock.version(),
        }
        with cond:
            connections.append(record)


def worker(thread, keep_alive):
    kind = "keep_alive" if keep_alive else "new_connection"
    kept = Connection(thread, kind) if keep_alive else None
    headers = {"Content-Type": "application/json"}
    if not keep_alive:
        headers["Connection"] = "close"
    n = 0
    while not stop.is_set():
        n += 1
        body = json.dumps(
            {"thread": thread, "n": n, "pad": "x" * (n % 40), "price": 1.5}
        ).encode()
        with cond:
            reload_at = state["reload_at"]
        began = now()
        conn = kept if keep_alive else Connection(thread, kind)
        try:
            conn.request("POST", "/api/reload", body=body, headers=headers)
            res = conn.getresponse()
            got = res.read()
            problem = None
            if res.status != 200:
                problem = "status %d: %r" % (res.status, got[:200])
            elif got != body:
                problem = "body %r for %r" % (got[:200], body)
        except Exception as e:  # noqa: BLE001 - every failure is reported
            problem = "%s: %s" % (type(e).__name__, e)
        if problem is not None or not keep_alive:
            # A failed keep-alive connection is made again for the next request.
            conn.close()
        with cond:
            if problem is not None:
                state["failed"] += 1
                if len(failures) < 50:
                    failures.append(
                        {"thread": thread, "kind": kind, "n": n, "at": began, "why": problem}
                    )
            else:
                state["ok"] += 1
                if reload_at is not None:
                    state["ok_after_reload"][kind] += 1
                elif state["reload_at"] is None:
                    state["ok_before_reload"] += 1
            cond.notify_all()
    if kept is not None:
        kept.close()


def listen():
    for line in sys.stdin:
        if line.strip() == "RELOADED":
            with cond:
                state["reload_at"] = now()
                cond.notify_all()
    with cond:
        state["stdin_closed"] = True
        cond.notify_all()


def enough():
    after = state["ok_after_reload"]
    return (
        state["stdin_closed"]
        or now() > bound
        or (
            state["reload_at"] is not None
            and min(after["keep_alive"], after["new_connection"]) >= after_each
        )
    )


threading.Thread(target=listen, daemon=True).start()
workers = [
    threading.Thread(target=worker, args=("%s-%d" % (kind, i), kind == "ka"))
    for kind in ("ka", "new")
    for i in range(threads_each)
]
for w in workers:
    w.start()
with cond:
    # Timeouts only to look at the bound again.
    while state["ok"] < warm and not enough():
        cond.wait(0.5)
    print("WARM %d" % state["ok"], flush=True)
    while not enough():
        cond.wait(0.5)
    timed_out = now() > bound
stop.set()
for w in workers:
    w.join()
summary = dict(state)
summary.update(
    {
        "timed_out": timed_out,
        "elapsed": now(),
        "failures": failures,
        "connections": sorted(connections, key=lambda c: c["started"]),
    }
)
print("SUMMARY " + json.dumps(summary), flush=True)

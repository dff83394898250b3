#!/usr/bin/env python3
"""Holds N keep-alive TLS clients open on a proxy, each served one request.

    python3 bench/tls_hold.py HOST PORT CA_FILE N [PATH]

CA_FILE `-` holds plain HTTP connections instead, for comparison.

Opens N connections (at most 256 handshakes at a time), sends each one GET
and reads its answer whole, then prints `READY <ok> <failed>` and keeps every
connection open until its standard input closes. The bench samples the
proxy's RSS between the two, so the figure is N open TLS connections that
have each carried a request, with no more than a few requests in flight, and
so few connections from the proxy to its upstreams (wrk -cN would need N of
those too, over this machine's descriptor limit at N = 10,000).
"""

import asyncio
import ssl
import sys


async def one(host, port, context, path, gate):
    async with gate:
        tls = {"ssl": context, "server_hostname": "localhost"} if context else {}
        reader, writer = await asyncio.open_connection(host, port, **tls)
        writer.write(f"GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n".encode())
        await writer.drain()
        head = await reader.readuntil(b"\r\n\r\n")
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value.strip())
        await reader.readexactly(length)
        if not head.startswith(b"HTTP/1.1 200"):
            raise RuntimeError(head.split(b"\r\n")[0].decode(errors="replace"))
        return writer


async def main():
    host, port, ca, n = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
    path = sys.argv[5] if len(sys.argv) > 5 else "/cheap"
    context = None if ca == "-" else ssl.create_default_context(cafile=ca)
    gate = asyncio.Semaphore(256)
    results = await asyncio.gather(
        *(one(host, port, context, path, gate) for _ in range(n)), return_exceptions=True
    )
    writers = [r for r in results if not isinstance(r, BaseException)]
    failed = [r for r in results if isinstance(r, BaseException)]
    print(f"READY {len(writers)} {len(failed)}", flush=True)
    if failed:
        print(f"first failure: {failed[0]!r}", file=sys.stderr, flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    for w in writers:
        w.close()


asyncio.run(main())

"""Added latency of the egress proxy, against a direct request in the same run.

    .venv/bin/python benches/bench_egress.py [--requests N]

A small GET to an HTTP server on loopback, direct and through
:class:`execgate.egress.EgressProxy` (listening on the host's loopback here, so
no sandbox start is measured; a decision and its receipt per request, with an
in-memory signed log). Prints p50/p99 per request for both and requests/s with
8 concurrent clients. Compare the ratio, not absolute times: machines are shared.
"""

from __future__ import annotations

import argparse
import http.server
import socket
import statistics
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import execgate
from execgate.egress import EgressProxy

POLICY = """
package execgate
decision := {"allow": true} if input.action.name == "net.request"
"""


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.0"

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("content-length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *args: Any) -> None:
        pass


def _get(address: tuple[str, int], target: str) -> None:
    with socket.create_connection(address, timeout=10) as s:
        s.sendall(f"GET {target} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode())
        while s.recv(65536):
            pass


def _timed(fn: Callable[[], None], n: int) -> list[float]:
    out = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return out


def _rate(fn: Callable[[], None], n: int) -> float:
    t = time.perf_counter()
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda _: fn(), range(n)))
    return n / (time.perf_counter() - t)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=500)
    n = parser.parse_args().requests
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    upstream = server.server_address
    gate = execgate.Gate(POLICY, key=execgate.SigningKey.generate())
    listener = socket.create_server(("127.0.0.1", 0))
    url = f"http://127.0.0.1:{upstream[1]}/"
    with EgressProxy(gate.pipeline, listener, parent="bench"):
        proxy = listener.getsockname()

        def direct() -> None:
            _get(upstream, "/")  # type: ignore[arg-type]

        def proxied() -> None:
            _get(proxy, url)

        for fn in (direct, proxied):  # warm up
            _timed(fn, 20)
        rows = []
        for name, fn in (("direct", direct), ("proxied", proxied)):
            times = sorted(_timed(fn, n))
            p50 = statistics.median(times) * 1e3
            p99 = times[int(len(times) * 0.99) - 1] * 1e3
            rows.append((name, p50, p99, _rate(fn, n)))
    server.shutdown()
    for name, p50, p99, rate in rows:
        print(f"{name:8} p50 {p50:7.3f} ms  p99 {p99:7.3f} ms  {rate:8.0f} req/s (8 concurrent)")
    print(f"added    p50 {rows[1][1] - rows[0][1]:7.3f} ms  p99 {rows[1][2] - rows[0][2]:7.3f} ms")


if __name__ == "__main__":
    main()

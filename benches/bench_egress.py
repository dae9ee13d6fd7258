"""Added latency of the egress proxy, against a direct request in the same run.

    .venv/bin/python benches/bench_egress.py [--requests N]

A small GET to an HTTP server on loopback, direct and through
:class:`execgate.egress.EgressProxy` (listening on the host's loopback here, so
no sandbox start is measured; a decision and its receipt per request, with an
in-memory signed log). As in a sandboxed run, the client (the tool) and the
server are processes of their own and only the proxy runs in this process, so
neither competes with the proxy for this interpreter's lock. Prints p50/p99
per request for both, requests/s with 8 concurrent clients, and this
process's CPU time per proxied request (the proxy's cost, which a loaded
machine's scheduling delays do not inflate). Compare the difference, not
absolute times: machines are shared.
"""

from __future__ import annotations

import argparse
import json
import socket
import statistics
import subprocess
import sys
import time

import execgate
from execgate.egress import EgressProxy

POLICY = """
package execgate
decision := {"allow": true} if input.action.name == "net.request"
"""

SERVER = """
import http.server, sys

class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.0"

    def do_GET(self):
        self.send_response(200)
        self.send_header("content-length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *args):
        pass

server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
print(server.server_address[1], flush=True)
server.serve_forever()
"""

CLIENT = """
import json, socket, sys, time
from concurrent.futures import ThreadPoolExecutor

host, port, target, n = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
message = f"GET {target} HTTP/1.1\\r\\nHost: 127.0.0.1\\r\\nConnection: close\\r\\n\\r\\n".encode()

def get():
    with socket.create_connection((host, port), timeout=10) as s:
        s.sendall(message)
        while s.recv(65536):
            pass

for _ in range(int(sys.argv[5])):  # warm up
    get()
times = []
for _ in range(n):
    t = time.perf_counter()
    get()
    times.append(time.perf_counter() - t)
t = time.perf_counter()
with ThreadPoolExecutor(8) as pool:
    list(pool.map(lambda _: get(), range(n)))
rate = n / (time.perf_counter() - t)
print(json.dumps({"times": times, "rate": rate}))
"""


ROUNDS = 4
WARM_UP = 20


def _client(address: tuple[str, int], target: str, n: int) -> tuple[list[float], float]:
    out = subprocess.run(
        [sys.executable, "-c", CLIENT, address[0], str(address[1]), target, str(n), str(WARM_UP)],
        capture_output=True,
        check=True,
        timeout=600,
    )
    got = json.loads(out.stdout)
    return list(got["times"]), float(got["rate"])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=500)
    n = parser.parse_args().requests
    server = subprocess.Popen([sys.executable, "-c", SERVER], stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout is not None
        upstream = ("127.0.0.1", int(server.stdout.readline()))
        gate = execgate.Gate(POLICY, key=execgate.SigningKey.generate())
        listener = socket.create_server(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{upstream[1]}/"
        with EgressProxy(gate.pipeline, listener, parent="bench"):
            proxy = listener.getsockname()
            variants = (("direct", upstream, "/"), ("proxied", proxy, url))
            runs: dict[str, list[tuple[list[float], float]]] = {"direct": [], "proxied": []}
            cpu = 0.0  # this process's CPU time while it proxied: the proxy's cost
            for _ in range(ROUNDS):  # alternated, so load drift hits both alike
                for name, address, target in variants:
                    started = time.process_time()
                    runs[name].append(_client(address, target, n // ROUNDS))
                    if name == "proxied":
                        cpu += time.process_time() - started
            rows = []
            for name, got in runs.items():
                times = sorted(t for ts, _ in got for t in ts)
                p50 = statistics.median(times) * 1e3
                p99 = times[int(len(times) * 0.99) - 1] * 1e3
                rows.append((name, p50, p99, statistics.mean(r for _, r in got)))
    finally:
        server.terminate()
        server.wait()
    for name, p50, p99, rate in rows:
        print(f"{name:8} p50 {p50:7.3f} ms  p99 {p99:7.3f} ms  {rate:8.0f} req/s (8 concurrent)")
    print(f"added    p50 {rows[1][1] - rows[0][1]:7.3f} ms  p99 {rows[1][2] - rows[0][2]:7.3f} ms")
    proxied = ROUNDS * (WARM_UP + 2 * (n // ROUNDS))
    print(
        f"proxy CPU per request {cpu / proxied * 1e3:7.3f} ms (all its threads, {proxied} requests)"
    )


if __name__ == "__main__":
    main()

"""tools/call round trip through `execgate mcp` vs a direct SDK session.

Both sides use the official MCP SDK client and the same SDK server
(tests/mcp_servers/demo_server.py, tool `echo`). Prints p50/p99 of each and
the ratio of the p50s, for stdio and for Streamable HTTP with 8 concurrent
clients. The proxy signs a receipt and writes a decision and a completion
record per call (the example policy, with its rate obligation).

    python benches/bench_mcp.py [--calls N]
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import pathlib
import socket
import statistics
import subprocess
import sys
import tempfile
import time

import httpx2
from mcp import Client, StdioServerParameters
from mcp.client.streamable_http import streamable_http_client

from execgate import SigningKey

ROOT = pathlib.Path(__file__).resolve().parent.parent
SERVER = ROOT / "tests" / "mcp_servers" / "demo_server.py"
POLICY = ROOT / "python" / "execgate" / "examples" / "mcp.rego"
ENV = {**os.environ, "PYTHONPATH": str(ROOT / "python")}


def pct(xs, q):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


async def timed_calls(client, n, tag):
    out = []
    for i in range(n):
        t = time.perf_counter_ns()
        r = await client.call_tool("echo", {"text": f"{tag}{i}"})
        out.append(time.perf_counter_ns() - t)
        assert not r.is_error, r
    return out


async def stdio(params, n, warmup):
    async with Client(params, mode="legacy") as c:
        await timed_calls(c, warmup, "w")
        return await timed_calls(c, n, "x")


def proxy_args(tmp, *rest):
    return [
        "-m",
        "execgate",
        "mcp",
        "--policy",
        str(POLICY),
        "--key",
        str(tmp / "k.pem"),
        "--log",
        str(tmp / "audit.jsonl"),
        "--data",
        str(tmp / "limits.json"),
        "--principal",
        "bench",
        *rest,
    ]


def report(name, direct, proxied):
    d50, d99 = pct(direct, 0.5) / 1e3, pct(direct, 0.99) / 1e3
    p50, p99 = pct(proxied, 0.5) / 1e3, pct(proxied, 0.99) / 1e3
    print(
        f"{name:<28} direct p50 {d50:8.0f} us  p99 {d99:8.0f} us | "
        f"proxy p50 {p50:8.0f} us  p99 {p99:8.0f} us | ratio p50 {p50 / d50:.2f} "
        f"p99 {p99 / d99:.2f}  ({len(proxied)} calls)"
    )


def port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(p):
    end = time.monotonic() + 30
    while time.monotonic() < end:
        try:
            socket.create_connection(("127.0.0.1", p), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.1)
    raise SystemExit(f"nothing on port {p}")


async def http_many(url, token, n, clients, warmup):
    async def one(i):
        http = httpx2.AsyncClient(headers={"Authorization": f"Bearer {token}"}, timeout=60)
        async with Client(streamable_http_client(url, http_client=http), mode="legacy") as c:
            await timed_calls(c, warmup, "w")
            return await timed_calls(c, n, f"{i}-")

    return [x for xs in await asyncio.gather(*(one(i) for i in range(clients))) for x in xs]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--calls", type=int, default=400)
    ap.add_argument("--rounds", type=int, default=2, help="alternate direct/proxy this often")
    args = ap.parse_args()
    tmp = pathlib.Path(tempfile.mkdtemp(prefix="bench-mcp-"))
    SigningKey.generate().to_pem(tmp / "k.pem")
    (tmp / "limits.json").write_text(json.dumps({"execgate_mcp": {"rate_limit": 10**9}}))
    direct_params = StdioServerParameters(command=sys.executable, args=[str(SERVER)], env=ENV)
    proxy_params = StdioServerParameters(
        command=sys.executable, args=[*proxy_args(tmp), "--", sys.executable, str(SERVER)], env=ENV
    )
    direct, proxied = [], []
    for _ in range(args.rounds):  # side by side, alternating, on a noisy machine
        direct += asyncio.run(stdio(direct_params, args.calls, 30))
        proxied += asyncio.run(stdio(proxy_params, args.calls, 30))
    report("stdio tools/call", direct, proxied)

    token = "bench-token"
    (tmp / "tokens.json").write_text(
        json.dumps({hashlib.sha256(token.encode()).hexdigest(): {"id": "bench"}})
    )
    up, mine = port(), port()
    server = subprocess.Popen(
        [sys.executable, str(SERVER), "http", str(up)], env=ENV, stderr=subprocess.DEVNULL
    )
    proxy = None
    try:
        wait_port(up)
        proxy = subprocess.Popen(
            [
                sys.executable,
                *proxy_args(
                    tmp,
                    "--listen",
                    f"127.0.0.1:{mine}",
                    "--upstream",
                    f"http://127.0.0.1:{up}/mcp",
                    "--tokens",
                    str(tmp / "tokens.json"),
                ),
            ],
            env=ENV,
        )
        wait_port(mine)
        per = max(10, args.calls // 8)
        hd, hp = [], []
        for _ in range(args.rounds):
            hd += asyncio.run(http_many(f"http://127.0.0.1:{up}/mcp", token, per, 8, 5))
            hp += asyncio.run(http_many(f"http://127.0.0.1:{mine}/mcp", token, per, 8, 5))
        report("http tools/call, 8 clients", hd, hp)
    finally:
        for p in (proxy, server):
            if p is not None:
                p.terminate()
                p.wait(timeout=10)
    print(f"median of medians check: stdio direct {statistics.median(direct) / 1e3:.0f} us")


if __name__ == "__main__":
    main()

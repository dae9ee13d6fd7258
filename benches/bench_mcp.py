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


ERRORS: list[str] = []


async def timed_calls(client, n, tag):
    out = []
    for i in range(n):
        t = time.perf_counter_ns()
        r = await client.call_tool("echo", {"text": f"{tag}{i}"})
        out.append(time.perf_counter_ns() - t)
        if r.is_error:
            ERRORS.append(" ".join(getattr(c, "text", "") for c in r.content)[:200])
    return out


def _children():
    """pid -> ppid of every process."""
    out = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    out[int(entry)] = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                pass
    return out


def cpu_of_children():
    """CPU time (ns, from schedstat) of every descendant of this process."""
    parents = _children()
    mine, todo = set(), [os.getpid()]
    while todo:
        p = todo.pop()
        for child, parent in parents.items():
            if parent == p and child not in mine:
                mine.add(child)
                todo.append(child)
    total = 0
    for pid in mine:
        try:
            for tid in os.listdir(f"/proc/{pid}/task"):
                with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                    total += int(f.read().split()[0])
        except OSError:
            pass
    return total


CPU: dict[str, list[float]] = {}


async def stdio(params, n, warmup, name):
    async with Client(params, mode="legacy") as c:
        await timed_calls(c, warmup, "w")
        own, others = time.process_time_ns(), cpu_of_children()
        out = await timed_calls(c, n, "x")
        own, others = time.process_time_ns() - own, cpu_of_children() - others
        CPU.setdefault(name, []).append((own + others) / n)
        return out


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


def cpu_report(title, direct, proxy):
    d_cpu, p_cpu = statistics.median(CPU[direct]) / 1e3, statistics.median(CPU[proxy]) / 1e3
    print(
        f"{title:<28} direct {d_cpu:8.0f} us | proxy {p_cpu:8.0f} us | "
        f"ratio {p_cpu / d_cpu:.2f} (the proxy's own: {p_cpu - d_cpu:.0f} us)"
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


async def http_many(url, token, n, clients, warmup, name):
    warm = asyncio.Barrier(clients + 1)
    timed = asyncio.Barrier(clients + 1)

    async def one(i):
        http = httpx2.AsyncClient(headers={"Authorization": f"Bearer {token}"}, timeout=60)
        async with Client(streamable_http_client(url, http_client=http), mode="legacy") as c:
            await timed_calls(c, warmup, "w")
            await warm.wait()
            out = await timed_calls(c, n, f"{i}-")
            await timed.wait()
            return out

    async def cpu():
        await warm.wait()
        own, others = time.process_time_ns(), cpu_of_children()
        await timed.wait()
        own, others = time.process_time_ns() - own, cpu_of_children() - others
        CPU.setdefault(name, []).append((own + others) / (n * clients))

    *calls, _ = await asyncio.gather(*(one(i) for i in range(clients)), cpu())
    return [x for xs in calls for x in xs]


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
        direct += asyncio.run(stdio(direct_params, args.calls, 30, "direct"))
        proxied += asyncio.run(stdio(proxy_params, args.calls, 30, "proxy"))
    report("stdio tools/call", direct, proxied)
    # CPU per call of client + (proxy +) server, load-independent: the round
    # trip is serial, so on an idle machine it is about the latency (over HTTP
    # the 8 clients share 2 cores, so it is what the p50 ratio tends to).
    cpu_report("stdio CPU per call", "direct", "proxy")

    token = "bench-token"
    (tmp / "tokens.json").write_text(
        json.dumps({hashlib.sha256(token.encode()).hexdigest(): {"id": "bench"}})
    )
    up, mine = port(), port()
    server = subprocess.Popen(
        [sys.executable, str(SERVER), "http", str(up)],
        env=ENV,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
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
            hd += asyncio.run(http_many(f"http://127.0.0.1:{up}/mcp", token, per, 8, 5, "hd"))
            hp += asyncio.run(http_many(f"http://127.0.0.1:{mine}/mcp", token, per, 8, 5, "hp"))
        report("http tools/call, 8 clients", hd, hp)
        cpu_report("http CPU per call", "hd", "hp")
    finally:
        for p in (proxy, server):
            if p is not None:
                p.terminate()
                p.wait(timeout=10)
    print(f"errors (denied or failed calls): {len(ERRORS)}")
    for reason in sorted(set(ERRORS))[:5]:
        print(f"  {reason}")


if __name__ == "__main__":
    main()

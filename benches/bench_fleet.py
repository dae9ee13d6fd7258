"""Shared limits on Redis against in-memory limits, and a fleet's throughput.

Run from the repository root against a release build, niced (the machines are
shared)::

    make release servers
    nice -n 10 .venv/bin/python benches/bench_fleet.py [--quick]

1. Latency per decision (``gate.check``) with a rate and a budget obligation:
   in-memory limits, the same on Redis over its unix socket and over TCP on
   loopback, on a 3-node Redis Cluster (TCP loopback), and a limit-free
   decision; interleaved in rounds in one process, so drift hits all alike.
   The figure to read is what Redis adds: p50/p99 of each minus in-memory.
2. 8 worker processes x 2 threads deciding against one Redis (unix socket),
   every decision taking the same rate and budget keys: aggregate decisions/s,
   and the in-memory figure of the same processes as the ceiling.

Nothing asserts on timings. The run fails if the workers were granted other
than what they asked (every call fits the limits: a refusal means a bug).
"""

from __future__ import annotations

import argparse
import multiprocessing
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent.parent / "tests"))

import execgate
from measure import FULL, QUICK, Stats, interleaved
from redis_server import RedisCluster, RedisServer, redis_binary

LIMITED = """
package execgate
decision := {"allow": true, "obligations": {
    "rate": {"key": sprintf("calls:%v", [input.principal.id]), "limit": 1000000000,
             "window_seconds": 3600},
    "budget": {"key": sprintf("spend:%v", [input.principal.id]), "limit": 1000000000, "cost": 1},
}}
"""
FREE = 'package execgate\ndecision := {"allow": true}\n'


def _gate(policy: str, key: execgate.SigningKey, state: str | None) -> execgate.Gate:
    # A generous evaluation deadline: on a loaded machine the default 100 ms
    # turns a slow evaluation into a deny, which is not what is measured.
    return execgate.Gate(policy, key=key, state=state, timeout=10)


def latency(
    server: RedisServer, cluster: RedisCluster, key: execgate.SigningKey, quick: bool
) -> None:
    sizes = QUICK if quick else FULL
    gates = {
        "no limits": _gate(FREE, key, None),
        "limits in memory": _gate(LIMITED, key, None),
        "limits on Redis, unix socket": _gate(LIMITED, key, server.unix_url),
        "limits on Redis, TCP loopback": _gate(LIMITED, key, server.url),
        "limits on Redis, cluster": _gate(LIMITED, key, cluster.url),
    }
    for g in gates.values():
        assert g.check("tool").allowed
    scenarios = {name: [(g.check, ("tool",), {})] for name, g in gates.items()}
    with execgate.principal("p"):
        samples = interleaved(scenarios, sizes)
    stats = {name: Stats.of(s) for name, s in samples.items()}
    print(f"\nlatency per decision (gate.check), {sizes.iterations:,} calls each")
    print(f"  {'':<32}{'p50 µs':>10}{'p99 µs':>10}{'mean µs':>10}")
    for name, st in stats.items():
        print(f"  {name:<32}{st.p50:>10.1f}{st.p99:>10.1f}{st.mean:>10.1f}")
    base = stats["limits in memory"]
    for name in [n for n in stats if n.startswith("limits on Redis")]:
        st = stats[name]
        print(
            f"  added by Redis ({name.split(', ')[1]}): p50 {st.p50 - base.p50:.1f} µs, "
            f"p99 {st.p99 - base.p99:.1f} µs"
        )


def _worker(
    state: str | None, key_pem: str, threads: int, calls: int, start: object, out: object
) -> None:
    key = execgate.SigningKey.from_pem(key_pem)
    gate = _gate(LIMITED, key, state)
    granted = [0] * threads

    def run(i: int) -> None:
        with execgate.principal("fleet"):
            for _ in range(calls):
                granted[i] += gate.check("tool").allowed

    workers = [threading.Thread(target=run, args=(i,)) for i in range(threads)]
    start.wait()  # type: ignore[attr-defined]
    began = time.perf_counter()
    for t in workers:
        t.start()
    for t in workers:
        t.join()
    out.put((sum(granted), began, time.perf_counter()))  # type: ignore[attr-defined]


def fleet(
    server: RedisServer, key_pem: str, quick: bool, processes: int = 8, threads: int = 2
) -> None:
    calls = 500 if quick else 3_000
    ctx = multiprocessing.get_context("spawn")
    print(f"\n{processes} processes x {threads} threads, {calls:,} decisions per thread")
    for name, state in (("limits in memory", None), ("limits on one Redis", server.unix_url)):
        start, out = ctx.Barrier(processes), ctx.Queue()
        procs = [
            ctx.Process(target=_worker, args=(state, key_pem, threads, calls, start, out))
            for _ in range(processes)
        ]
        for p in procs:
            p.start()
        results = [out.get(timeout=600) for _ in procs]
        for p in procs:
            p.join()
        granted = sum(r[0] for r in results)
        wall = max(r[2] for r in results) - min(r[1] for r in results)
        total = processes * threads * calls
        if granted != total:
            raise SystemExit(f"{name}: {granted} of {total} granted")
        print(f"  {name:<22}{total / wall:>12,.0f} decisions/s  ({wall:.2f} s)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        server = RedisServer(Path(tmp), redis_binary())
        server.start()
        (Path(tmp) / "cluster").mkdir()
        cluster = RedisCluster(Path(tmp) / "cluster", redis_binary())
        try:
            cluster.start()
            key = execgate.SigningKey.generate()
            key_pem = str(Path(tmp) / "k.pem")
            key.to_pem(key_pem)
            execgate._core.rebuild_state(server.url, [])
            execgate._core.rebuild_state(cluster.url, [])
            print(f"python {sys.version.split()[0]}, redis-server on {server.unix_url}")
            latency(server, cluster, key, args.quick)
            fleet(server, key_pem, args.quick)
        finally:
            server.stop()
            cluster.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Open and verify cost at scale (issue 13). Release build: `make release`, then

    .venv/bin/python benches/soak_open.py [--dir /tmp/eg-open] [--sizes 10000,1000000]

Writes one checkpoint-mode log per size through a gate with a rate and a budget
obligation (so the log holds `state` records as a long-running gate writes
them), then, each in a fresh process, measures opening a gate on it (time,
RSS added) and `verify_log` (time, records/s, RSS added). Not part of `make test`.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import subprocess
import sys
import time

POLICY = """
package execgate
decision := {"allow": true, "obligations": {
    "rate": {"key": sprintf("calls:%v", [input.principal.id]),
             "limit": 100000000, "window_seconds": 1},
    "budget": {"key": sprintf("spend:%v", [input.principal.id]), "limit": 1e12, "cost": 1},
}}
"""

CHILD = r"""
import json, resource, sys, time, execgate
def rss():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
policy, path, keyfile, what = sys.argv[1:5]
key = execgate.SigningKey.from_pem(keyfile)
gate0 = execgate.Gate(policy)  # warm the policy compiler and the module
before = rss()
t = time.perf_counter()
if what == "open":
    log = execgate.AuditLog(path, key, signing="checkpoint")
    g = execgate.Gate(policy, audit=log)
    took = time.perf_counter() - t
    d = g.check("x", {}, principal={"id": "p0"})
    after = rss()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps({"seconds": took, "rss_added": after - before, "peak": peak,
                      "allowed": d.allowed}))
else:
    r = execgate.verify_log(path, key.verify_key)
    took = time.perf_counter() - t
    after = rss()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps({"seconds": took, "records": r.records, "ok": r.ok, "reason": r.reason,
                      "rate": r.records / took, "rss_added": after - before,
                      "peak_added": peak - before}))
"""


def write_log(
    path: pathlib.Path, keyfile: pathlib.Path, n: int, signing: str = "checkpoint"
) -> None:
    import execgate

    key = execgate.SigningKey.from_pem(keyfile)
    log = execgate.AuditLog(path, key, signing=signing)
    with execgate.Gate(POLICY, audit=log) as gate:
        t = time.perf_counter()
        for i in range(n):
            gate.check("tool", {"i": i}, principal={"id": f"p{i % 100}"})
            if i and i % 200_000 == 0:
                print(f"  {i} records, {time.perf_counter() - t:.0f} s", file=sys.stderr)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dir", default="/tmp/eg-open")
    ap.add_argument("--sizes", default="10000,1000000")
    args = ap.parse_args()
    import execgate

    d = pathlib.Path(args.dir)
    d.mkdir(parents=True, exist_ok=True)
    keyfile = d / "key.pem"
    if not keyfile.exists():
        execgate.SigningKey.generate().to_pem(keyfile)
    for n in map(int, args.sizes.split(",")):
        path = d / f"log-{n}.jsonl"
        if not path.exists():
            print(f"writing {n} records to {path}", file=sys.stderr)
            write_log(path, keyfile, n)
        for what in ("open", "open", "verify"):
            # Each run works on a copy, so opening (which may append) does
            # not change the next run's input.
            trial = d / f"trial-{n}.jsonl"
            subprocess.run(["cp", str(path), str(trial)], check=True)
            out = subprocess.run(
                [sys.executable, "-c", CHILD, POLICY, str(trial), str(keyfile), what],
                check=True,
                capture_output=True,
                text=True,
            ).stdout
            res = json.loads(out)
            size = path.stat().st_size
            print(json.dumps({"records": n, "bytes": size, "what": what, **res}))


if __name__ == "__main__":
    main()

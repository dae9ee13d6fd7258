"""Open and verify cost at scale (issue 13). Release build: `make release`, then

    .venv/bin/python benches/soak_open.py [--dir /tmp/eg-open] [--sizes 10000,1000000]
        [--worst] [--state-every N] [--no-verify]

Writes one checkpoint-mode log per size through a gate with a rate and a budget
obligation (so the log holds `state` records as a long-running gate writes
them), then, each in a fresh process, measures opening a gate on it (time,
RSS added) and `verify_log` (time, records/s, RSS added). Not part of `make test`.

Where the last `state` record of a log falls is luck: opening folds the records
after it. `--worst` extends each log (a copy, `worst-<n>.jsonl`) until its last
snapshot is as far from the end as it can be (one record short of the next
snapshot), the most an open ever folds. Each result line says how many records
`folded` after the last snapshot. `--state-every` writes the logs (and opens
them) with that cadence instead of the default (the logs are named after it).
"""

from __future__ import annotations

import argparse
import base64
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

# `AuditLog`'s default `state_every` (used when `--state-every` is not given).
DEFAULT_STATE_EVERY = 10_000

CHILD = r"""
import json, resource, sys, time, execgate
def rss():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
policy, path, keyfile, what, every = sys.argv[1:6]
key = execgate.SigningKey.from_pem(keyfile)
opts = {"state_every": int(every)} if every else {}
gate0 = execgate.Gate(policy)  # warm the policy compiler and the module
before = rss()
t = time.perf_counter()
if what == "open":
    log = execgate.AuditLog(path, key, signing="checkpoint", **opts)
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


def audit_log(path: pathlib.Path, keyfile: pathlib.Path, every: int | None):
    import execgate

    key = execgate.SigningKey.from_pem(keyfile)
    opts = {"state_every": every} if every else {}
    return execgate.AuditLog(path, key, signing="checkpoint", **opts)


def write_log(
    path: pathlib.Path, keyfile: pathlib.Path, n: int, every: int | None, start: int = 0
) -> None:
    import execgate

    with execgate.Gate(POLICY, audit=audit_log(path, keyfile, every)) as gate:
        t = time.perf_counter()
        for i in range(start, start + n):
            gate.check("tool", {"i": i}, principal={"id": f"p{i % 100}"})
            if i and i % 200_000 == 0:
                print(f"  {i} records, {time.perf_counter() - t:.0f} s", file=sys.stderr)


def after_last_state(path: pathlib.Path) -> int:
    """Records after the log's last `state` record (all of them if it has none)."""
    n = 0
    with path.open("rb") as f:
        size = f.seek(0, 2)
        block = 1 << 20
        tail = b""
        at = size
        while at > 0:
            at = max(0, at - block)
            f.seek(at)
            tail = f.read(min(block, size - at)) + tail
            lines = tail.split(b"\n")
            keep = lines[0] if at > 0 else None
            for line in reversed(lines[1:] if keep is not None else lines):
                if not line:
                    continue
                if b'"payload":"eyJpZCI6' in line[:256]:
                    payload = json.loads(line)["payload"]
                    if json.loads(base64.b64decode(payload)).get("kind") == "state":
                        return n
                n += 1
            tail = keep or b""
    return n


def make_worst(
    src: pathlib.Path, dst: pathlib.Path, keyfile: pathlib.Path, every: int, start: int
) -> None:
    """A copy of `src` extended until one more record would bring the next snapshot."""
    subprocess.run(["cp", str(src), str(dst)], check=True)
    i = start
    while True:
        k = after_last_state(dst)
        # Checkpoints count as records too: stop short, then step closer.
        missing = every - 1 - k
        if missing <= every // 100 + 2:
            return
        step = max(1, missing - missing // 20 - 2)
        write_log(dst, keyfile, step, every, start=i)
        i += step
        if after_last_state(dst) < k:
            raise SystemExit(f"{dst}: a snapshot was written while extending it")


def measure(
    label: str, path: pathlib.Path, keyfile: pathlib.Path, n: int, every: str, verify: bool
) -> None:
    for what in ("open", "open", "verify") if verify else ("open", "open"):
        # Each run works on a copy, so opening (which may append) does
        # not change the next run's input.
        trial = path.with_name(f"trial-{path.name}")
        subprocess.run(["cp", str(path), str(trial)], check=True)
        out = subprocess.run(
            [sys.executable, "-c", CHILD, POLICY, str(trial), str(keyfile), what, every],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        trial.unlink()
        res = json.loads(out)
        size = path.stat().st_size
        print(
            json.dumps(
                {
                    "log": label,
                    "records": n,
                    "bytes": size,
                    "folded": after_last_state(path),
                    "what": what,
                    **res,
                }
            ),
            flush=True,
        )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dir", default="/tmp/eg-open")
    ap.add_argument("--sizes", default="10000,1000000")
    ap.add_argument("--worst", action="store_true", help="also open each log at its worst phase")
    ap.add_argument("--state-every", type=int, default=None, help="the logs' state_every")
    ap.add_argument("--no-verify", action="store_true", help="measure opening only")
    args = ap.parse_args()
    import execgate

    d = pathlib.Path(args.dir)
    d.mkdir(parents=True, exist_ok=True)
    keyfile = d / "key.pem"
    if not keyfile.exists():
        execgate.SigningKey.generate().to_pem(keyfile)
    every = args.state_every
    suffix = f"-e{every}" if every else ""
    for n in map(int, args.sizes.split(",")):
        path = d / f"log-{n}{suffix}.jsonl"
        if not path.exists():
            print(f"writing {n} records to {path}", file=sys.stderr)
            write_log(path, keyfile, n, every)
        measure("as written", path, keyfile, n, str(every or ""), not args.no_verify)
        if args.worst:
            worst = d / f"worst-{n}{suffix}.jsonl"
            if not worst.exists():
                make_worst(path, worst, keyfile, every or DEFAULT_STATE_EVERY, n)
            measure("worst", worst, keyfile, n, str(every or ""), False)


if __name__ == "__main__":
    main()

"""Memory of writing a large `state` record (issue 13). Release build: `make release`, then

    .venv/bin/python benches/soak_state.py [BASELINE.whl] [--keys 200000]

A gate whose ledger holds `--keys` open rate windows (one per call, an hour
long) writes its `state` snapshot on the record that brings `state_every`.
Each build runs in a fresh process (the installed execgate as the candidate,
a wheel unpacked as the baseline, as `ab.py` does); printed: the peak RSS
that writing the snapshot added over the peak before it, and the record's
size. Not part of `make test`.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import subprocess
import sys
import tempfile

from ab import TLS, unpack

POLICY = """
package execgate
decision := {"allow": true, "obligations": {
    "rate": {"key": sprintf("key-%v", [input.action.args.i]), "limit": 5, "window_seconds": 3600},
}}
"""

CHILD = r"""
import importlib, json, os, resource, sys
sys.path.insert(0, sys.argv[1])
execgate = importlib.import_module(sys.argv[2])
keys, path = int(sys.argv[3]), sys.argv[4]
peak = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
log = execgate.AuditLog(path, execgate.SigningKey.generate(), signing="checkpoint",
                        checkpoint_every=1000000, checkpoint_interval=3600, state_every=keys)
gate = execgate.Gate(sys.argv[5], audit=log)
for i in range(keys - 1):
    gate.check("x", {"i": i})
before = peak()
gate.check("x", {"i": keys})  # the record that brings the snapshot
after = peak()
last = open(path, "rb").read().splitlines()[-1]
print(json.dumps({"added": after - before, "before": before, "record": len(last)}))
"""


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("baseline", nargs="?", type=pathlib.Path)
    ap.add_argument("--keys", type=int, default=200_000)
    args = ap.parse_args()
    env = {**os.environ, "GLIBC_TUNABLES": f"{TLS}=65536"}
    with tempfile.TemporaryDirectory() as tmp:
        roles = {"candidate": "execgate"}
        if args.baseline is not None:
            unpack(args.baseline, pathlib.Path(tmp), "execgate_baseline")
            roles = {"baseline": "execgate_baseline", **roles}
        print(f"state snapshot of {args.keys:,} open rate windows")
        for role, module in roles.items():
            log = pathlib.Path(tmp) / f"{role}.jsonl"
            out = subprocess.run(
                [sys.executable, "-c", CHILD, tmp, module, str(args.keys), str(log), POLICY],
                capture_output=True, text=True, check=True, env=env,
            )  # fmt: skip
            r = json.loads(out.stdout)
            print(
                f"  {role:<10} peak RSS {r['before'] / 2**20:>7.1f} MB before, "
                f"+{r['added'] / 2**20:.1f} MB writing it; record {r['record'] / 2**20:.1f} MB"
            )


if __name__ == "__main__":
    main()

"""Verification at scale (issue 13): `verify_log` on a 1,000,000-record log.

Release build (`make release`), then

    .venv/bin/python benches/soak_verify.py [--dir /tmp/eg-open] [--records 1000000]
        [--signing checkpoint] [--runs 2] [--baseline DIR]

Writes the log once through a gate (as `benches/soak_open.py` does, same
policy: a rate and a budget obligation, so it holds `state` records; every
call is a `check()` with no completion, so every decision stays open and the
verifier must remember all of them), then verifies it in fresh processes and
prints, per run: wall seconds, records/s, CPU seconds (user + system, all
threads) and records per CPU second (the figure to compare on a loaded
machine), RSS added after the verification and the peak RSS added.

`--baseline DIR` runs the same verification, interleaved, with the execgate
package found in DIR (for example a release build of main: a directory with
`execgate/` holding its `_core*.so`), so both builds are measured under the
same load. Not part of `make test`.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import subprocess
import sys

from soak_open import write_log

CHILD = r"""
import json, resource, sys, time, execgate
def rss():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
path, keyfile = sys.argv[1:3]
key = execgate.SigningKey.from_pem(keyfile)
execgate.verify_log(path + ".small", key.verify_key)  # load and warm the module
before = rss()
peak_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
cpu = resource.getrusage(resource.RUSAGE_SELF)
t = time.perf_counter()
r = execgate.verify_log(path, key.verify_key)
took = time.perf_counter() - t
used = resource.getrusage(resource.RUSAGE_SELF)
cpu_s = used.ru_utime - cpu.ru_utime + used.ru_stime - cpu.ru_stime
peak = used.ru_maxrss * 1024
print(json.dumps({
    "ok": r.ok, "reason": r.reason, "records": r.records, "unfinished": r.unfinished_count,
    "seconds": round(took, 2), "records_per_s": round(r.records / took),
    "cpu_seconds": round(cpu_s, 2), "records_per_cpu_s": round(r.records / cpu_s),
    "rss_added_mb": round((rss() - before) / 2**20, 1),
    "peak_added_mb": round((peak - max(before, peak_before)) / 2**20, 1),
}))
"""


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dir", default="/tmp/eg-open")
    ap.add_argument("--records", type=int, default=1_000_000)
    ap.add_argument("--signing", default="checkpoint", choices=["checkpoint", "record"])
    ap.add_argument("--runs", type=int, default=2)
    ap.add_argument("--baseline", help="a directory holding another build's execgate package")
    args = ap.parse_args()
    import execgate

    d = pathlib.Path(args.dir)
    d.mkdir(parents=True, exist_ok=True)
    keyfile = d / "key.pem"
    if not keyfile.exists():
        execgate.SigningKey.generate().to_pem(keyfile)
    suffix = "" if args.signing == "checkpoint" else "-record"
    path = d / f"log-{args.records}{suffix}.jsonl"
    if not path.exists():
        print(f"writing {args.records} records to {path}", file=sys.stderr)
        write_log(path, keyfile, args.records, args.signing)
    small = pathlib.Path(str(path) + ".small")
    if not small.exists():
        write_log(small, keyfile, 10, args.signing)
    builds = [("this build", None)] + ([("baseline", args.baseline)] if args.baseline else [])
    for run in range(args.runs):
        for name, where in builds:
            env = dict(os.environ)
            if where:
                env["PYTHONPATH"] = where
            out = subprocess.run(
                [sys.executable, "-c", CHILD, str(path), str(keyfile)],
                check=True,
                capture_output=True,
                text=True,
                env=env,
            ).stdout
            print(
                json.dumps(
                    {
                        "run": run + 1,
                        "build": name,
                        "signing": args.signing,
                        "bytes": path.stat().st_size,
                        **json.loads(out),
                    }
                )
            )


if __name__ == "__main__":
    main()

"""Long-run memory (issue 13). Release build, then

    .venv/bin/python benches/soak_decisions.py [--n 10000000] [--log PATH]

Sends N decisions through one gate whose policy reads history and takes a
rate and a budget per principal, over 50,000 sessions and 20,000 principals
(past the ledger's 10,000-session bound), sampling RSS every 500,000
decisions. The figure to read: RSS after warm-up stays flat (budgets are kept
by design: 20,000 keys here, a fixed amount once all have been seen).
"""

from __future__ import annotations

import argparse
import time

import execgate
from measure import rss_mb

POLICY = """
package execgate
decision := {"allow": count(input.history) >= 0, "obligations": {
    "rate": {"key": sprintf("r:%v", [input.principal.id]), "limit": 1000000, "window_seconds": 60},
    "budget": {"key": sprintf("b:%v", [input.principal.id]), "limit": 1e15, "cost": 1},
}}
"""


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=10_000_000)
    ap.add_argument("--log", default=None)
    args = ap.parse_args()
    kw = {}
    if args.log:
        kw = {"audit": execgate.AuditLog(args.log, execgate.SigningKey.generate())}
    gate = execgate.Gate(POLICY, history=8, **kw)
    t = time.perf_counter()
    every = 500_000
    for i in range(args.n):
        with execgate.context(session=f"s{i % 50_000}"):
            gate.check("t", {"i": i % 7}, principal={"id": f"p{i % 20_000}"})
        if (i + 1) % every == 0:
            el = time.perf_counter() - t
            rate = (i + 1) / el
            print(
                f"{i + 1:>10} decisions  {el:7.1f} s  {rate:8.0f}/s  RSS {rss_mb():7.1f} MB",
                flush=True,
            )


if __name__ == "__main__":
    main()

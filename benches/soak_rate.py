"""Rate check cost against calls in the window (issue 13). Release build, then

    .venv/bin/python benches/soak_rate.py

Times a gate check with a `rate` obligation after 10 and after 300,000 calls
inside the window (no log, so only evaluation and the ledger are measured).
"""

from __future__ import annotations

import time

import execgate

POLICY = """
package execgate
decision := {"allow": true, "obligations": {
    "rate": {"key": "k", "limit": 100000000, "window_seconds": 86400},
}}
"""


def per_check(gate: execgate.Gate, n: int = 5000) -> float:
    t = time.perf_counter()
    for _ in range(n):
        gate.check("x")
    return (time.perf_counter() - t) / n


def main() -> None:
    for fill in (10, 300_000):
        gate = execgate.Gate(POLICY)
        for _ in range(fill):
            gate.check("x")
        us = per_check(gate) * 1e6
        print(f"calls in window {fill:>7}: {us:.2f} us per check")


if __name__ == "__main__":
    main()

"""execgate benchmark: prints p50/p99/mean latency and calls/s against baselines.

Run from the repository root against a release build::

    VIRTUAL_ENV=$PWD/.venv .venv/bin/maturin develop --release
    .venv/bin/python benches/bench.py [--quick]

Everything is measured side by side in one run, because the machines here are
shared and noisy: read the ratios (guarded overhead over a bare call, gate.check
over regopy, two threads over one), not the absolute numbers. Nothing here
asserts on timings. The one hard failure is a decision mismatch between
execgate and regopy (or with the expected verdict): then the two are not doing
the same work and the comparison would be meaningless, so the script exits 1.

The workload is the example agent policy (``execgate/policies/agent.rego`` with
``agent_data.json``) over a fixed mix of allowed inputs and inputs denied for
each reason the policy has, cycled in order.

The receipts sections measure the same calls with signed receipts appended to
an audit log (each durability and signing mode), against a pure-Python gate
that does the same work (regopy's bundle, canonical JSON, a SHA-256 chain,
PyNaCl Ed25519 over the DSSE PAE, one line per record); then log verification
against a pure-Python verifier (``cryptography``), and 4 processes x 2 threads
appending to one log. Before timing anything, both writers' logs are checked
by both verifiers, so the two sides provably write and check the same records.
"""

from __future__ import annotations

import argparse
import platform
import sys
import tempfile
import time
from collections.abc import Sequence
from importlib import resources
from pathlib import Path

import regopy

import execgate
from baselines import ENTRYPOINT, Keys, RegopyBaseline
from execgate.demo import example_gate
from measure import FULL, QUICK
from workloads import (
    concurrent_writers,
    import_and_load,
    latency,
    log_verification,
    memory,
    receipts,
    receipts_agree,
    redaction,
    sandbox_startup,
    signed_threads,
    stateful,
    threads,
    verify,
)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer iterations (~20 s)")
    sizes = QUICK if parser.parse_args(argv).quick else FULL

    started = time.perf_counter()
    extension = Path(execgate._core.__file__)
    gate = example_gate()
    policies = resources.files("execgate") / "policies"
    with (
        resources.as_file(policies / "agent.rego") as rego,
        resources.as_file(policies / "agent_data.json") as data,
    ):
        baseline = RegopyBaseline(Path(rego), Path(data))

    print(
        # The size tells a release build (a few MB) from a debug one (~100 MB).
        f"execgate {execgate.__version__} ({extension.name}, "
        f"{extension.stat().st_size / 2**20:.1f} MB), "
        f"regopy {regopy.__version__}, Python {platform.python_version()}, "
        f"{'quick' if sizes is QUICK else 'full'} mode"
    )
    print(
        f"policy: agent.rego + agent_data.json, entry point {ENTRYPOINT}; "
        f"regopy bundle built once in {baseline.build_ms:.1f} ms"
    )
    verify(gate, baseline)
    latency(gate, baseline, sizes)
    threads(gate, sizes)
    import_and_load(sizes)
    memory(gate, sizes)
    with tempfile.TemporaryDirectory(prefix="execgate-bench-") as tmp:
        keys = Keys.generate()
        print()
        receipts_agree(Path(tmp), keys, baseline)
        single = receipts(Path(tmp), keys, baseline, sizes)
        signed_threads(Path(tmp), keys, sizes)
        log_verification(Path(tmp), keys, sizes)
        concurrent_writers(Path(tmp), keys, sizes, single)
    sandbox_startup(sizes)
    stateful(sizes)
    redaction(sizes)
    print(f"\ndone in {time.perf_counter() - started:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""How the benchmark measures: sizes of a run, interleaved rounds, percentiles."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from baselines import BaselineDenied
from execgate import ActionDenied


@dataclass(frozen=True)
class Sizes:
    """How much work each section does."""

    iterations: int  # timed calls per latency measurement, summed over rounds
    rounds: int  # latency measurements are interleaved in rounds, to share drift
    warmup: int  # untimed calls before each measurement
    thread_calls: int  # calls per thread in the threading comparison
    thread_rounds: int
    import_runs: int  # fresh subprocesses for the import + load timing
    rss_checks: int  # checks between the RSS readings
    receipt_iterations: int  # timed calls per row of the receipts tables
    log_records: int  # records in the log whose verification is timed
    verify_runs: int  # timed verifications of that log, per verifier
    writer_calls: int  # checks per thread in the 4 processes x 2 threads run
    writer_rounds: int  # rounds of that run (each spawns its processes anew)


FULL = Sizes(
    iterations=20_000,
    rounds=5,
    warmup=1_000,
    thread_calls=20_000,
    thread_rounds=3,
    import_runs=5,
    rss_checks=1_000_000,
    receipt_iterations=20_000,
    log_records=20_000,
    verify_runs=3,
    writer_calls=5_000,
    writer_rounds=2,
)
QUICK = Sizes(
    iterations=5_000,
    rounds=2,
    warmup=300,
    thread_calls=5_000,
    thread_rounds=2,
    import_runs=3,
    rss_checks=100_000,
    receipt_iterations=1_500,
    log_records=5_000,
    verify_runs=2,
    writer_calls=1_000,
    writer_rounds=1,
)


# --- measurement ---------------------------------------------------------------

Call = tuple[Callable[..., Any], tuple[Any, ...], dict[str, Any]]


# The exceptions a guarded call raises when it is denied.
DENIED = (ActionDenied, BaselineDenied)


def measure(
    calls: Sequence[Call],
    iterations: int,
    warmup: int,
    denied: tuple[type[BaseException], ...] = DENIED,
) -> list[int]:
    """Times ``fn(*args, **kwargs)`` for each call in turn (cycling), in ns.

    Denied guarded calls raise ActionDenied; catching it is part of a guarded
    call's cost, and the ``try`` is free for the calls that do not raise.
    """
    n = len(calls)
    for i in range(warmup):
        fn, a, kw = calls[i % n]
        try:
            fn(*a, **kw)
        except denied:
            pass
    clock = time.perf_counter_ns
    samples = [0] * iterations
    for i in range(iterations):
        fn, a, kw = calls[i % n]
        t0 = clock()
        try:
            fn(*a, **kw)
        except denied:
            pass
        samples[i] = clock() - t0
    return samples


@dataclass
class Stats:
    p50: float  # µs
    p99: float
    mean: float

    @property
    def per_second(self) -> float:
        return 1e6 / self.mean

    @classmethod
    def of(cls, samples_ns: Sequence[int]) -> Stats:
        ordered = sorted(samples_ns)
        n = len(ordered)
        return cls(
            p50=ordered[n // 2] / 1e3,
            p99=ordered[min(n - 1, (n * 99) // 100)] / 1e3,
            mean=sum(ordered) / n / 1e3,
        )


def interleaved(
    scenarios: Mapping[str, Sequence[Call]],
    sizes: Sizes,
    iterations: int | None = None,
    denied: tuple[type[BaseException], ...] = DENIED,
) -> dict[str, list[int]]:
    """Runs every scenario in rounds, alternating, so drift in machine load hits
    all of them alike.

    Each round is a whole number of passes over the inputs (every scenario has
    the same number of calls), so sample i of the result is always input i % n
    (the per-input breakdown relies on it).
    """
    samples: dict[str, list[int]] = {name: [] for name in scenarios}
    n = len(next(iter(scenarios.values())))
    total = sizes.iterations if iterations is None else iterations
    per_round = -(-total // (sizes.rounds * n)) * n
    for r in range(sizes.rounds):
        for name, calls in scenarios.items():
            # Warm up before the first round only; later rounds are already warm.
            samples[name] += measure(calls, per_round, sizes.warmup if r == 0 else 0, denied)
    return samples


def rss_mb() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status")

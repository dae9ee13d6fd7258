"""What OpenTelemetry reporting costs per decision (issue 16). Release build, then

    .venv/bin/python benches/bench_otel.py [--rounds 15] [--calls 2000]

Same process, blocks alternated: `gate.check` and a guarded call with
execgate's telemetry off, on without an SDK (the API's no-op tracer and
meter), and on with the SDK configured (a BatchSpanProcessor into an exporter
that drops spans, and an in-memory metric reader). Prints the median
CPU microseconds per call of each mode and the overhead against "off".
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import time
from collections.abc import Callable, Sequence

import execgate
from execgate import telemetry

POLICY = 'package execgate\ndecision := {"allow": true}\n'


def per_call(fn: Callable[[], object], calls: int) -> float:
    # CPU time of the process (every thread, the span processor's included):
    # on a loaded machine, time spent descheduled is not the code's cost.
    t = time.process_time()
    for _ in range(calls):
        fn()
    return (time.process_time() - t) / calls * 1e6


def alternate(
    modes: dict[str, Callable[[], None]], work: Callable[[], object], rounds: int, calls: int
) -> dict[str, float]:
    samples: dict[str, list[float]] = {m: [] for m in modes}
    for _ in range(rounds):
        for mode, switch in modes.items():
            switch()
            samples[mode].append(per_call(work, calls))
    return {m: statistics.median(v) for m, v in samples.items()}


def configure_sdk() -> None:
    from opentelemetry import metrics, trace
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader
    from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
    from opentelemetry.sdk.trace.export import (
        BatchSpanProcessor,
        SpanExporter,
        SpanExportResult,
    )

    class Drop(SpanExporter):
        def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
            return SpanExportResult.SUCCESS

    provider = TracerProvider()
    provider.add_span_processor(BatchSpanProcessor(Drop()))
    trace.set_tracer_provider(provider)
    metrics.set_meter_provider(MeterProvider(metric_readers=[InMemoryMetricReader()]))


def report(title: str, medians: dict[str, float]) -> None:
    base = medians["off"]
    for mode, us in medians.items():
        extra = "" if mode == "off" else f"  +{us - base:.2f} us ({us / base:.2f}x)"
        print(f"{title:<14} {mode:<10} {us:8.2f} us/call{extra}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--calls", type=int, default=2000)
    args = parser.parse_args()
    gate = execgate.Gate(POLICY)
    if importlib.util.find_spec("opentelemetry") is None:
        raise SystemExit("opentelemetry-api is not installed: pip install 'execgate[otel]'")

    @gate.guard(action="tool")
    def tool() -> int:
        return 1

    def check() -> object:
        return gate.check("tool")

    off = {"off": lambda: telemetry.enable(False)}
    no_sdk = {**off, "no SDK": lambda: telemetry.enable(True)}
    for name, work in (("gate.check", check), ("guarded call", tool)):
        report(name, alternate(no_sdk, work, args.rounds, args.calls))
    configure_sdk()
    with_sdk = {**off, "SDK": lambda: telemetry.enable(True)}
    for name, work in (("gate.check", check), ("guarded call", tool)):
        report(name, alternate(with_sdk, work, args.rounds, args.calls))


if __name__ == "__main__":
    main()

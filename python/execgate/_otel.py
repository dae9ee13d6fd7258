"""The OpenTelemetry instruments (imported only when ``opentelemetry-api`` is).

Spans follow the GenAI semantic conventions for tool execution: a tool runs
inside ``execute_tool {gen_ai.tool.name}`` (kind INTERNAL) with
``gen_ai.operation.name = "execute_tool"``, ``gen_ai.tool.name``,
``gen_ai.tool.call.id`` when the entry point knows it (the framework's tool
call id, ``context.tool_call_id``) and ``error.type`` when it fails. Each
decision is an ``execgate.decide {action}`` span. Both carry ``execgate.*``
attributes. Metrics: ``execgate.decisions`` (counter), ``execgate.decision.duration``
(histogram, seconds) and ``execgate.audit.shipping.lag`` (gauge, seconds).
"""

from __future__ import annotations

from collections.abc import Iterable
from time import monotonic
from typing import Any

from opentelemetry import metrics, trace
from opentelemetry.metrics import CallbackOptions, Observation
from opentelemetry.trace import Span, SpanKind, Status, StatusCode

from execgate import telemetry
from execgate._core import Decision, __version__
from execgate._core import Gate as NativeGate

# Decisions take microseconds; a slow one (an audit fsync, a remote store)
# milliseconds.
_BUCKETS = (1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 1e-2, 2.5e-2, 0.1, 1.0)

#: While no SDK is configured, how often (seconds) the pipeline looks again.
POLL_SECONDS = 1.0


def _lags(options: CallbackOptions) -> Iterable[Observation]:
    return [
        Observation(lag, {"execgate.log.id": log_id}) for log_id, lag in telemetry.shipping_lags()
    ]


class Instruments:
    """One tracer and meter ("execgate"), obtained once: they follow whatever
    SDK the application configures, before or after."""

    def __init__(self) -> None:
        self.tracer = trace.get_tracer("execgate", __version__)
        meter = metrics.get_meter("execgate", __version__)
        self.decisions = meter.create_counter(
            "execgate.decisions", unit="{decision}", description="Decisions, by outcome"
        )
        self.duration = meter.create_histogram(
            "execgate.decision.duration",
            unit="s",
            description="Time the gate took to decide (without a human's approval wait)",
            explicit_bucket_boundaries_advisory=_BUCKETS,
        )
        meter.create_observable_gauge(
            "execgate.audit.shipping.lag",
            callbacks=[_lags],
            unit="s",
            description="How far the shipped copy of each audit log lags behind it",
        )
        #: An SDK's tracer provider is set (OpenTelemetry sets it once, for good).
        self.tracing = False
        #: An SDK's tracer or meter provider is set: reports are worth making.
        self.live = False
        #: When (time.monotonic) :meth:`poll` looks again.
        self.next_poll = 0.0
        self.poll()

    def poll(self) -> bool:
        """Looks whether an SDK is configured. :func:`execgate.telemetry.current`
        calls it at most every :data:`POLL_SECONDS` until one is (the lookup
        costs more than a decision): until then the API's tracer and meter are
        no-ops, and the pipeline reports nothing to them."""
        self.next_poll = monotonic() + POLL_SECONDS
        self.tracing = _sdk(trace.get_tracer_provider())
        self.live = self.tracing or _sdk(metrics.get_meter_provider())
        return self.live

    def decided(
        self, native: NativeGate, decision: Decision, start_ns: int, end_ns: int, took_ns: int
    ) -> None:
        """Counts and times one final decision and records its span."""
        action = decision.action
        outcome = "allowed" if decision.allowed else "denied"
        labels = {"execgate.action": action, "execgate.decision": outcome}
        error = decision.error
        if error is not None:
            labels["execgate.error"] = error
        self.decisions.add(1, labels)
        self.duration.record(took_ns / 1e9, labels)
        if not self.tracing:
            return
        attributes = {
            **labels,
            **_policy(decision),
            "execgate.blocked": decision.blocked,
            "execgate.mode": decision.mode,
        }
        if reasons := decision.reasons:
            # Reasons leave the process only through the privacy router.
            redacted, _ = native.redact(list(reasons))
            attributes["execgate.reasons"] = [str(r) for r in redacted]
        if (call_id := decision.context.get("tool_call_id")) is not None:
            attributes["gen_ai.tool.call.id"] = str(call_id)
        span = self.tracer.start_span(
            f"execgate.decide {action}", start_time=start_ns, attributes=attributes
        )
        span.end(end_time=end_ns)

    def tool_started(self, decision: Decision) -> Span | None:
        """The ``execute_tool`` span of an authorized call, started now (None
        while no SDK's tracer provider is configured)."""
        if not self.tracing:
            return None
        name = decision.action
        attributes: dict[str, Any] = {
            "gen_ai.operation.name": "execute_tool",
            "gen_ai.tool.name": name,
            **_policy(decision),
        }
        if (call_id := decision.context.get("tool_call_id")) is not None:
            attributes["gen_ai.tool.call.id"] = str(call_id)
        return self.tracer.start_span(
            f"execute_tool {name}", kind=SpanKind.INTERNAL, attributes=attributes
        )

    @staticmethod
    def tool_ended(span: Span, error: str | None, completion: str | None) -> None:
        if completion is not None:
            span.set_attribute("execgate.completion.id", completion)
        if error is not None:
            span.set_attribute("error.type", error)
            span.set_status(Status(StatusCode.ERROR, error))
        span.end()


def _sdk(provider: object) -> bool:
    """Whether a global provider is an SDK's: the API's own (its proxy until
    one is set, or its no-op) make every span and metric a no-op."""
    api = ("opentelemetry.trace", "opentelemetry.metrics")
    return not type(provider).__module__.startswith(api)


def _policy(decision: Decision) -> dict[str, Any]:
    """What identifies a decision and the policy behind it."""
    attributes: dict[str, Any] = {"execgate.policy.digest": decision.policy_digest}
    if (revision := decision.policy_revision) is not None:
        attributes["execgate.policy.revision"] = revision
    if (receipt := decision.receipt) is not None:
        attributes["execgate.receipt.id"] = receipt.id
    return attributes

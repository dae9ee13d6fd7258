"""The call pipeline, as entry points drive it.

The stages and their rules live in the native core (``execgate._core.Call``):
decide, parse obligations, rewrite and redact the arguments, approval, take
limits, record the decision, then (after the tool ran) redact the output and
record the outcome. This module only adapts that object to Python's calling
conventions: ambient principal and context, the gate's clock, asking an
approver in a thread or from an event loop, timing the tool and turning a
refusal into the right exception. Every entry point (decorators, ``gate.run``,
``isolate=``, the framework adapters, the CLI) uses it; none interprets an
obligation. It is also the one place that reports to OpenTelemetry
(:mod:`execgate.telemetry`): each final decision and each tool run.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Mapping
from time import perf_counter_ns, time_ns
from typing import TYPE_CHECKING, Any

from execgate import telemetry
from execgate._core import Call, Capabilities, Decision
from execgate._core import Gate as NativeGate
from execgate.approval import Approval, ApprovalRequest, Approver, ask
from execgate.errors import ActionDenied, ApprovalRequired, ExecgateError

if TYPE_CHECKING:
    from execgate._otel import Instruments

__all__ = ["IN_PROCESS", "Capabilities", "Pipeline", "Run", "raise_if_blocked"]

#: An entry point that runs the tool in-process and can meet every obligation
#: but a sandbox: a decorator, a framework adapter.
IN_PROCESS = Capabilities()


def _rfc3339(moment: dt.datetime) -> str:
    if moment.tzinfo is None:
        raise ValueError("the gate clock returned a naive datetime; it must be time-zone aware")
    return moment.astimezone(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def blocked_error(decision: Decision) -> ExecgateError:
    """What a blocked call raises: :class:`ApprovalRequired` while an approval
    is pending with nobody to ask, :class:`ActionDenied` otherwise."""
    if decision.error == "approval" and decision.approval is None:
        return ApprovalRequired(ApprovalRequest.of(decision))
    return ActionDenied(decision)


def raise_if_blocked(decision: Decision) -> None:
    """Raises :func:`blocked_error` when the call is blocked."""
    if decision.blocked:
        raise blocked_error(decision)


class Pipeline:
    """One gate's pipeline: how an entry point starts, authorizes, runs and
    completes a call. Reached as ``gate.pipeline``."""

    def __init__(
        self,
        native: NativeGate,
        *,
        clock: Callable[[], dt.datetime] | None,
        approver: Approver | None,
        approval_timeout: float,
    ) -> None:
        self.native = native
        self.clock = clock
        self.approver = approver
        self.approval_timeout = approval_timeout
        telemetry.load()

    def _time(self, time: str | None) -> str | None:
        """The gate clock's reading, when the gate has its own clock and the
        caller gave no time."""
        if time is None and self.clock is not None:
            return _rfc3339(self.clock())
        return time

    def start(
        self,
        action: str,
        args: dict[str, Any] | None,
        principal: Mapping[str, Any] | None = None,
        context: Mapping[str, Any] | None = None,
        *,
        capabilities: Capabilities = IN_PROCESS,
        query: bool = False,
        time: str | None = None,
    ) -> Call:
        """Decides a call. ``principal`` and ``context`` override the ambient
        ones key by key. ``capabilities`` says what the entry point will
        enforce (an obligation it cannot meet denies); ``query`` leaves the
        obligations to the caller (``check()``)."""
        return self.native.decide(
            action,
            args,
            principal,
            context,
            self._time(time),
            None if query else capabilities,
        )

    def decide(
        self,
        action: str,
        args: dict[str, Any] | None,
        principal: Mapping[str, Any] | None = None,
        context: Mapping[str, Any] | None = None,
        *,
        capabilities: Capabilities = IN_PROCESS,
        query: bool = False,
        time: str | None = None,
    ) -> tuple[Call, Decision]:
        """:meth:`start` then :meth:`authorize`, in one native call when the
        gate has no approver to ask (the entry points without a
        human-in-the-loop of their own use this)."""
        if self.approver is not None:
            call = self.start(
                action, args, principal, context, capabilities=capabilities, query=query, time=time
            )
            return call, self.authorize(call)
        when = time if self.clock is None else self._time(time)
        can = None if query else capabilities
        otel = telemetry.current()
        if otel is None:
            call = self.native.decide(action, args, principal, context, when, can, True)
            return call, call.decision
        begun, t0 = time_ns(), perf_counter_ns()
        call = self.native.decide(action, args, principal, context, when, can, True)
        return call, self._observed(otel, call.decision, begun, t0)

    def check(
        self,
        action: str,
        args: dict[str, Any] | None,
        principal: Mapping[str, Any] | None = None,
        context: Mapping[str, Any] | None = None,
    ) -> Decision:
        """The decision of a query (``gate.check``): :meth:`decide` with
        ``query=True``, without a call object when there is nobody to ask."""
        if self.approver is not None:
            return self.decide(action, args, principal, context, query=True)[1]
        when = None if self.clock is None else self._time(None)
        otel = telemetry.current()
        if otel is None:
            return self.native.check(action, args, principal, context, when)
        begun, t0 = time_ns(), perf_counter_ns()
        decision = self.native.check(action, args, principal, context, when)
        return self._observed(otel, decision, begun, t0)

    def _observed(self, otel: Instruments, decision: Decision, begun: int, t0: int) -> Decision:
        """Reports a decision made in one native call that began at ``begun``
        (wall clock) / ``t0`` (performance counter)."""
        took = perf_counter_ns() - t0
        otel.decided(self.native, decision, begun, begun + took, took)
        return decision

    def _request(self, call: Call) -> tuple[Approver, ApprovalRequest] | None:
        """Whom to ask about what, when the call waits for approval and the gate
        has an approver."""
        if self.approver is None or call.approval is None:
            return None
        return self.approver, ApprovalRequest.of(call.decision, call.approval)

    def _answer(self, call: Call, answer: Approval | None) -> None:
        if answer is None:
            call.answer(
                approved=False,
                approver="",
                comment=f"after {self.approval_timeout:g} s",
                timed_out=True,
            )
        else:
            call.answer(approved=answer.approved, approver=answer.approver, comment=answer.comment)

    def authorize(self, call: Call) -> Decision:
        """Asks the approver when the policy requires it (in a thread, with the
        timeout), then takes the limits and records the decision."""
        start = self._began(call)
        asking = self._request(call)
        if asking is not None:
            self._answer(call, ask(*asking, self.approval_timeout))
        return self._authorized(call, start)

    async def aauthorize(self, call: Call) -> Decision:
        """:meth:`authorize` without blocking the event loop while a human decides."""
        start = self._began(call)
        asking = self._request(call)
        if asking is not None:
            import asyncio  # imported here: it costs ~10 ms at import time

            answer = await asyncio.to_thread(ask, *asking, self.approval_timeout)
            self._answer(call, answer)
        return self._authorized(call, start)

    @staticmethod
    def _began(call: Call) -> int | None:
        """When the evaluation of a call decided by :meth:`start` began (about:
        now less its duration), if telemetry is on."""
        if telemetry.current() is None:
            return None
        return time_ns() - call.decision.duration_ns

    def _authorized(self, call: Call, start: int | None) -> Decision:
        """The last stage of a call decided by :meth:`start`, reported as one
        decision from ``start`` (the span includes a human's wait, the
        latency metric does not)."""
        otel = telemetry.current()
        if otel is None or start is None:
            return call.authorize()
        evaluation, t0 = call.decision.duration_ns, perf_counter_ns()
        decision = call.authorize()
        otel.decided(self.native, decision, start, time_ns(), evaluation + perf_counter_ns() - t0)
        return decision


class Run:
    """``with Run(call, decision) as run: run.result = tool(...)`` times the
    tool and records its outcome when the block ends: ``ok``, or ``error``
    with the exception's type (or ``run.error``, for a failure the tool
    reported without raising), and ``run.extra`` fields. :meth:`output` is
    what the caller may see of a result (after ``obligations.redact.output``)."""

    __slots__ = ("call", "decision", "error", "extra", "result", "span", "start")

    def __init__(self, call: Call, decision: Decision) -> None:
        self.call = call
        self.decision = decision
        self.result: Any = None
        self.error: str | None = None
        self.extra: dict[str, Any] | None = None
        self.start = 0
        self.span: Any = None

    def __enter__(self) -> Run:
        otel = telemetry.current()
        if otel is not None and (span := otel.tool_started(self.decision)) is not None:
            self.span = (otel, span)
        self.start = perf_counter_ns()
        return self

    def __exit__(self, exc_type: object, exc: BaseException | None, tb: object) -> None:
        error = type(exc).__qualname__ if exc is not None else self.error
        completion = None
        try:
            completion = self.call.complete(
                "ok" if error is None else "error",
                perf_counter_ns() - self.start,
                self.result if exc is None else None,
                error,
                self.extra,
            )
        finally:
            if self.span is not None:
                otel, span = self.span
                otel.tool_ended(span, error, completion)

    def output(self, value: Any) -> Any:
        """``value`` as the caller may see it; a refusal raises ActionDenied."""
        if not self.call.redacts_output:
            return value
        try:
            return self.call.redact_output(value)
        except ExecgateError as e:
            raise ActionDenied(self.decision, (f"the output was withheld: {e}",)) from None

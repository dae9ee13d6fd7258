"""Human approval: a decision whose policy sets ``obligations.approval``.

Without an approver the call fails closed with :class:`ApprovalRequired`.
With ``Gate(approver=...)`` the gate asks (a sync or async callable given an
:class:`ApprovalRequest`, answering an :class:`Approval` or a bool); the
answer is recorded as a signed ``approval`` record linked to the decision, and
no answer within ``approval_timeout`` seconds is a denial.
"""

from __future__ import annotations

import asyncio
import inspect
import threading
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from execgate._core import Decision

__all__ = ["Approval", "ApprovalRequest", "Approver", "ask"]


@dataclass(frozen=True)
class ApprovalRequest:
    """What an approver is asked about."""

    action: str
    args: Mapping[str, Any]
    principal: Mapping[str, Any]
    context: Mapping[str, Any]
    reason: str | None
    approvers: tuple[str, ...]
    receipt_id: str | None
    decision: Decision = field(repr=False, compare=False)

    @classmethod
    def of(cls, decision: Decision, spec: Mapping[str, Any] | None = None) -> ApprovalRequest:
        """The request for ``decision``; ``spec`` is the pipeline's parsed
        ``obligations.approval`` (read from the decision when not given)."""
        if spec is None:
            ob = decision.obligations.get("approval")
            ob = ob if isinstance(ob, Mapping) else {}
            who = ob.get("approvers") or ob.get("approver") or ()
            spec = {
                "reason": ob.get("reason"),
                "approvers": [who] if isinstance(who, str) else list(who),
            }
        doc = decision.input
        return cls(
            action=decision.action,
            args=doc["action"]["args"],
            principal=doc["principal"],
            context=doc["context"],
            reason=spec.get("reason"),
            approvers=tuple(spec.get("approvers") or ()),
            receipt_id=None if decision.receipt is None else decision.receipt.id,
            decision=decision,
        )


@dataclass(frozen=True)
class Approval:
    """An approver's answer."""

    approved: bool
    approver: str = "unknown"
    comment: str | None = None


Approver = Callable[[ApprovalRequest], "Approval | bool | Awaitable[Approval | bool]"]


def ask(approver: Approver, request: ApprovalRequest, timeout: float) -> Approval | None:
    """The approver's answer, or None when none came within ``timeout`` seconds.

    The approver runs in its own thread (an async approver in its own event
    loop there), so a slow human blocks only this call. An approver that
    raises is a refusal naming the error.
    """
    box: dict[str, Any] = {}

    def run() -> None:
        try:
            answer = approver(request)
            if inspect.isawaitable(answer):
                answer = asyncio.run(_wait(answer))
            box["answer"] = answer
        except BaseException as e:  # reported as a refusal below
            box["error"] = e

    worker = threading.Thread(target=run, name="execgate-approval", daemon=True)
    worker.start()
    worker.join(timeout)
    if worker.is_alive():
        return None
    if "error" in box:
        return Approval(False, "error", f"the approver failed: {box['error']!r}")
    answer = box.get("answer")
    if isinstance(answer, Approval):
        return answer
    name = getattr(approver, "__qualname__", type(approver).__name__)
    return Approval(bool(answer) if isinstance(answer, bool) else False, name)


async def _wait(awaitable: Awaitable[Any]) -> Any:
    return await awaitable

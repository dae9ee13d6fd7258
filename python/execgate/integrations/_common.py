"""What the framework adapters share: finding who and why in a run's context,
and the words a model reads when a call is refused.

Nothing here interprets an obligation; the pipeline does that. Importing this
module imports no agent framework.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from execgate._core import Call, Decision
from execgate.approval import ApprovalRequest
from execgate.errors import ConfigurationError

__all__ = [
    "answer_from",
    "approval_request",
    "check_choice",
    "denial_text",
    "find",
    "meta",
    "pick",
    "who_and_why",
]


def pick(source: Any, name: str) -> Any:
    """``source[name]`` for a mapping, ``source.name`` otherwise (None when absent)."""
    if source is None:
        return None
    if isinstance(source, Mapping):
        return source.get(name)
    return getattr(source, name, None)


def find(name: str, *sources: Any) -> Any:
    """The first non-None ``name`` in ``sources`` (each a mapping or an object)."""
    for source in sources:
        value = pick(source, name)
        if value is not None:
            return value
    return None


def who_and_why(
    sources: tuple[Any, ...], *, session: Any = None, tool_call_id: str | None = None
) -> tuple[Mapping[str, Any] | None, dict[str, Any]]:
    """``(principal, context)`` for :meth:`Pipeline.start` from the first source
    naming each of ``principal``, ``purpose`` and ``session`` (``session`` is
    the framework's own session id, used when no source names one). What none
    names is left to the ambient ``execgate.principal``/``execgate.context``."""
    principal = find("principal", *sources)
    context: dict[str, Any] = {}
    if tool_call_id is not None:
        context["tool_call_id"] = tool_call_id
    purpose = find("purpose", *sources)
    if purpose is not None:
        context["purpose"] = purpose
    chosen = find("session", *sources)
    if chosen is None:
        chosen = session
    if chosen is not None:
        context["session"] = str(chosen)
    if principal is not None and not isinstance(principal, Mapping):
        principal = {"id": str(principal)}
    return principal, context


def denial_text(name: str, reasons: tuple[str, ...] | list[str]) -> str:
    """What the model reads for a refused call: the reasons, and that it did not run."""
    text = "; ".join(reasons) or "denied by policy"
    return (
        f"Tool call {name!r} was denied by policy: {text}. "
        "It did not run; do not retry it unchanged."
    )


def meta(decision: Decision) -> dict[str, Any]:
    """The decision as adapters attach it to a result: verdict, reasons, receipt id."""
    receipt = decision.receipt
    return {
        "decision": "allow" if decision.allowed and not decision.blocked else "deny",
        "reasons": list(decision.reasons),
        "receipt": None if receipt is None else receipt.id,
    }


def approval_request(call: Call) -> dict[str, Any]:
    """The JSON a framework's human-in-the-loop shows for a call awaiting approval."""
    request = ApprovalRequest.of(call.decision, call.approval)
    receipt = call.decision.receipt
    return {
        "type": "execgate.approval",
        "action": request.action,
        "args": dict(request.args),
        "reason": request.reason,
        "approvers": list(request.approvers),
        "receipt": None if receipt is None else receipt.id,
    }


def answer_from(call: Call, approved: bool, details: Any) -> None:
    """Gives the pipeline a human's answer; ``details`` may name ``approver`` and ``comment``."""
    approver = pick(details, "approver")
    comment = pick(details, "comment")
    call.answer(
        approved=approved,
        approver=str(approver) if approver else "unknown",
        comment=None if comment is None else str(comment),
    )


def check_choice(name: str, value: str, allowed: tuple[str, ...]) -> None:
    """Raises ConfigurationError unless ``value`` is one of ``allowed``."""
    if value not in allowed:
        options = " or ".join(f'"{a}"' for a in allowed)
        raise ConfigurationError(f"{name} must be {options}, not {value!r}")

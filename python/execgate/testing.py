"""Assertions for tests of policies and guarded tools."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from execgate._core import Decision
from execgate.gate import Gate

__all__ = ["assert_allowed", "assert_denied"]


def _decide(
    subject: Gate | Decision,
    action: str | None,
    args: Mapping[str, Any] | None,
    principal: Mapping[str, Any] | None,
    context: Mapping[str, Any] | None,
) -> Decision:
    if isinstance(subject, Decision):
        return subject
    if action is None:
        raise TypeError("give an action to check with the gate")
    return subject.check(action, args, principal=principal, context=context)


def _explain(decision: Decision) -> str:
    return (
        f"\n  reasons: {list(decision.reasons)}"
        + (f"\n  error: {decision.error}" if decision.error else "")
        + f"\n  input: {json.dumps(decision.input, indent=2, sort_keys=True, default=str)}"
    )


def assert_allowed(
    subject: Gate | Decision,
    action: str | None = None,
    args: Mapping[str, Any] | None = None,
    *,
    principal: Mapping[str, Any] | None = None,
    context: Mapping[str, Any] | None = None,
) -> Decision:
    """Fails unless the policy allows; the message shows the input and the reasons."""
    decision = _decide(subject, action, args, principal, context)
    if not decision.allowed:
        raise AssertionError(
            f"expected {decision.action} to be allowed, it was denied" + _explain(decision)
        )
    return decision


def assert_denied(
    subject: Gate | Decision,
    action: str | None = None,
    args: Mapping[str, Any] | None = None,
    *,
    reason: str | None = None,
    principal: Mapping[str, Any] | None = None,
    context: Mapping[str, Any] | None = None,
) -> Decision:
    """Fails unless the policy denies (and, with ``reason``, unless a reason contains it)."""
    decision = _decide(subject, action, args, principal, context)
    if decision.allowed:
        raise AssertionError(
            f"expected {decision.action} to be denied, it was allowed" + _explain(decision)
        )
    if reason is not None and not any(reason in r for r in decision.reasons):
        raise AssertionError(
            f"{decision.action} was denied, but no reason contains {reason!r}" + _explain(decision)
        )
    return decision

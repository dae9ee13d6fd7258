"""Ambient principal and context for gate checks.

``with execgate.principal(id="agent-7", roles=["agent"]):`` and
``with execgate.context(purpose="...", session="s-42"):`` set who is acting
and why for every check made inside the block. They use :mod:`contextvars`,
so each thread and each asyncio task sees its own values. Arguments passed
explicitly to a check or a decorator override the ambient ones key by key.
"""

from __future__ import annotations

import contextvars
from collections.abc import Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from types import MappingProxyType
from typing import Any

__all__ = ["context", "current_context", "current_principal", "principal", "purpose"]

# The stored dicts are never mutated after being set (readers get a read-only
# view), so the gate can hand them to the native layer without copying.
_principal: contextvars.ContextVar[dict[str, Any]] = contextvars.ContextVar(
    "execgate_principal",
    default={},  # noqa: B039 - never mutated, see above
)
_context: contextvars.ContextVar[dict[str, Any]] = contextvars.ContextVar(
    "execgate_context",
    default={},  # noqa: B039 - never mutated, see above
)


@contextmanager
def principal(
    id: str | None = None,
    *,
    roles: Sequence[str] = (),
    **attrs: Any,
) -> Iterator[Mapping[str, Any]]:
    """Sets who is acting. A nested block replaces the outer principal."""
    value = {"id": id, "roles": list(roles), **attrs}
    token = _principal.set(value)
    try:
        yield MappingProxyType(value)
    finally:
        _principal.reset(token)


@contextmanager
def context(**attrs: Any) -> Iterator[Mapping[str, Any]]:
    """Adds context (purpose, session, ...). A nested block extends the outer one."""
    value = {**_context.get(), **attrs}
    token = _context.set(value)
    try:
        yield MappingProxyType(value)
    finally:
        _context.reset(token)


def purpose(text: str) -> AbstractContextManager[Mapping[str, Any]]:
    """Shorthand for ``context(purpose=text)``."""
    return context(purpose=text)


def current_principal() -> Mapping[str, Any]:
    """The ambient principal (read-only)."""
    return MappingProxyType(_principal.get())


def current_context() -> Mapping[str, Any]:
    """The ambient context (read-only)."""
    return MappingProxyType(_context.get())

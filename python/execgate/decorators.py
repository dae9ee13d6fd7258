"""``@gate.guard``: authorize every call of a function before its body runs."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar

if TYPE_CHECKING:
    from execgate.gate import Gate
    from execgate.sandbox import Sandbox

__all__ = ["guard"]

P = ParamSpec("P")
R = TypeVar("R")

_FAST_KINDS = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)


class _Binder:
    """Binds call arguments to parameter names, defaults applied.

    The signature is inspected once, at decoration. Plain signatures (no
    ``*args``, ``**kwargs`` or positional-only parameters) take a fast path;
    anything else, and any call that does not fit, goes through
    :meth:`inspect.Signature.bind`, which raises the usual ``TypeError``.
    A leading ``self``/``cls`` parameter is not passed to the policy.
    """

    def __init__(self, fn: Callable[..., Any]) -> None:
        self.signature = inspect.signature(fn)
        params = list(self.signature.parameters.values())
        self.skip = params[0].name if params and params[0].name in ("self", "cls") else None
        self.fast = all(p.kind in _FAST_KINDS for p in params)
        self.positional = [
            p.name for p in params if p.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD
        ]
        self.names = frozenset(p.name for p in params)
        self.defaults = [(p.name, p.default) for p in params if p.default is not p.empty]
        self.var_keyword = next(
            (p.name for p in params if p.kind is inspect.Parameter.VAR_KEYWORD), None
        )

    def __call__(self, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> dict[str, Any]:
        bound = self._fast(args, kwargs) if self.fast else None
        if bound is None:
            b = self.signature.bind(*args, **kwargs)
            b.apply_defaults()
            bound = dict(b.arguments)
            if self.var_keyword is not None:
                bound.update(bound.pop(self.var_keyword))
        if self.skip is not None:
            bound.pop(self.skip, None)
        return bound

    def _fast(self, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> dict[str, Any] | None:
        if len(args) > len(self.positional):
            return None
        bound = dict(zip(self.positional, args, strict=False))
        for key, value in kwargs.items():
            if key in bound or key not in self.names:
                return None
            bound[key] = value
        if len(bound) < len(self.names):
            for name, default in self.defaults:
                if name not in bound:
                    bound[name] = default
            if len(bound) < len(self.names):
                return None  # a required argument is missing: let bind() raise
        return bound


def _redacted_call(
    gate: Gate, decision: Any, bind: _Binder, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """The call's arguments after ``obligations.redact.args`` (unchanged without it)."""
    if gate._redaction(decision, "args") is None:
        return args, kwargs
    bound = bind.signature.bind(*args, **kwargs)
    names = [n for n in bound.arguments if n != bind.skip]
    new = gate._redact_args(decision, {n: bound.arguments[n] for n in names})
    bound.arguments.update(new)
    return bound.args, bound.kwargs


def guard(
    gate: Gate,
    fn: Callable[P, R],
    *,
    action: str | None = None,
    principal: Mapping[str, Any] | None = None,
    context: Mapping[str, Any] | None = None,
    isolate: Sandbox | None = None,
) -> Callable[P, R]:
    """Wraps ``fn`` so each call is authorized by ``gate`` first.

    Sync and async functions are checked when called; generators and async
    generators when iteration starts. A blocked call raises
    :class:`~execgate.errors.ActionDenied` and the body never runs. With a
    receipting gate, each call that ran gets a completion record.
    """
    name = action or fn.__qualname__
    bind = _Binder(fn)
    authorize = gate._authorize
    principal = dict(principal) if principal else None
    context = dict(context) if context else None
    wrapper: Callable[..., Any]

    if isolate is not None:
        if not (
            inspect.isfunction(fn)
            and not inspect.iscoroutinefunction(fn)
            and not inspect.isgeneratorfunction(fn)
            and not inspect.isasyncgenfunction(fn)
        ):
            raise TypeError("isolate= supports plain (sync, non-generator) functions")
        if "<locals>" in fn.__qualname__:
            raise TypeError(
                f"isolate= needs a function the child can import; {fn.__qualname__} is local"
            )
        run_isolated = gate._run_isolated

        @functools.wraps(fn)
        def isolated(*args: Any, **kwargs: Any) -> Any:
            decision = authorize(name, bind(args, kwargs), principal, context)
            return run_isolated(fn, args, kwargs, isolate, decision)

        isolated.__execgate_action__ = name  # type: ignore[attr-defined]
        return isolated

    # When the gate keeps receipts, the outcome of every authorized call
    # (result digest or exception type, duration) is recorded as a completion.
    recording = gate._recording
    if inspect.iscoroutinefunction(fn):

        @functools.wraps(fn)
        async def wrapper(*args: Any, **kwargs: Any) -> Any:
            decision = authorize(name, bind(args, kwargs), principal, context)
            args, kwargs = _redacted_call(gate, decision, bind, args, kwargs)
            with recording(decision.receipt) as call:
                call.result = await fn(*args, **kwargs)  # type: ignore[misc]
            return gate._redact_output(decision, call.result)

    elif inspect.isasyncgenfunction(fn):

        @functools.wraps(fn)
        async def wrapper(*args: Any, **kwargs: Any) -> Any:
            decision = authorize(name, bind(args, kwargs), principal, context)
            with recording(decision.receipt):
                async for item in fn(*args, **kwargs):  # type: ignore[attr-defined]
                    yield item

    elif inspect.isgeneratorfunction(fn):

        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            decision = authorize(name, bind(args, kwargs), principal, context)
            with recording(decision.receipt) as call:
                call.result = yield from fn(*args, **kwargs)
            return call.result

    else:

        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            decision = authorize(name, bind(args, kwargs), principal, context)
            if decision.receipt is None and not decision.obligations:
                return fn(*args, **kwargs)  # the fast path: nothing to record or apply
            args, kwargs = _redacted_call(gate, decision, bind, args, kwargs)
            with recording(decision.receipt) as call:
                call.result = fn(*args, **kwargs)
            return gate._redact_output(decision, call.result)

    wrapper.__execgate_action__ = name  # type: ignore[attr-defined]
    return wrapper

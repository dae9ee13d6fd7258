"""``@gate.guard``: authorize every call of a function before its body runs.

The decorator adapts a Python call to the call pipeline (:mod:`execgate.pipeline`):
it binds the arguments to parameter names, hands them to the pipeline, and calls
the body with exactly the arguments the pipeline gives back (what the policy
judged, rewritten and redacted as the obligations say).
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import AsyncIterator, Callable, Generator, Mapping
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar

from execgate import telemetry
from execgate._core import Capabilities
from execgate.errors import ArgumentError
from execgate.pipeline import Run, blocked_error

if TYPE_CHECKING:
    from execgate._core import Call, Decision
    from execgate.gate import Gate
    from execgate.sandbox import Sandbox

__all__ = ["guard"]

P = ParamSpec("P")
R = TypeVar("R")
#: An authorized call, its decision, and the arguments to call the body with.
Started = tuple["Call", "Decision", tuple[Any, ...], dict[str, Any]]

_P = inspect.Parameter
_PLAIN_KINDS = (_P.POSITIONAL_OR_KEYWORD, _P.KEYWORD_ONLY)


class _Binder:
    """Binds call arguments to parameter names (defaults applied) for the
    policy, and rebuilds the call from what the pipeline returns.

    ``**kwargs`` entries join the named parameters; one that collides with a
    parameter name (``f(*paths, **options)`` called with ``paths=...``) is an
    :class:`ArgumentError`, so the policy cannot be shown a decoy. A leading
    ``self``/``cls`` is not passed to the policy. Plain signatures (no ``*``,
    ``**`` or positional-only parameters) take a fast path.
    """

    def __init__(self, fn: Callable[..., Any]) -> None:
        self.signature = inspect.signature(fn)
        params = list(self.signature.parameters.values())
        first = params[0] if params else None
        self.skip = (
            first.name
            if first is not None
            and first.name in ("self", "cls")
            and first.kind in (_P.POSITIONAL_ONLY, _P.POSITIONAL_OR_KEYWORD)
            else None
        )
        self.params = [p for p in params if p.name != self.skip]
        self.plain = all(p.kind in _PLAIN_KINDS for p in params)
        self.positional = [p.name for p in params if p.kind is _P.POSITIONAL_OR_KEYWORD]
        self.names = frozenset(p.name for p in params)
        self.defaults = [(p.name, p.default) for p in params if p.default is not p.empty]
        self.var_keyword = next((p.name for p in params if p.kind is _P.VAR_KEYWORD), None)
        #: The argument names the body can be given (None: any, through ``**kwargs``).
        self.replaceable = None if self.var_keyword is not None else [p.name for p in self.params]
        self.qualname = getattr(fn, "__qualname__", repr(fn))

        #: ``bind(args, kwargs)``: the arguments by parameter name, defaults applied.
        self.bind: Callable[[tuple[Any, ...], Mapping[str, Any]], dict[str, Any]] = (
            self._fast if self.plain else self._full
        )

    def _full(self, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> dict[str, Any]:
        b = self.signature.bind(*args, **kwargs)
        b.apply_defaults()
        bound = dict(b.arguments)
        if self.var_keyword is not None:
            extra = bound.pop(self.var_keyword)
            clash = sorted(self.names & extra.keys())
            if clash:
                raise ArgumentError(
                    f"{self.qualname}: keyword argument {clash[0]!r} collides with the "
                    f"parameter of that name",
                    argument=f"args.{clash[0]}",
                )
            bound.update(extra)
        if self.skip is not None:
            bound.pop(self.skip, None)
        return bound

    def _fast(self, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> dict[str, Any]:
        """:meth:`_full` for a plain signature, without building a BoundArguments."""
        if len(args) > len(self.positional):
            return self._full(args, kwargs)  # let bind() raise
        bound = dict(zip(self.positional, args, strict=False))
        for key, value in kwargs.items():
            if key in bound or key not in self.names:
                return self._full(args, kwargs)
            bound[key] = value
        if len(bound) < len(self.names):
            for name, default in self.defaults:
                if name not in bound:
                    bound[name] = default
            if len(bound) < len(self.names):
                return self._full(args, kwargs)  # a required argument is missing
        if self.skip is not None:
            bound.pop(self.skip, None)
        return bound

    def rebuild(
        self, tool: dict[str, Any], args: tuple[Any, ...]
    ) -> tuple[tuple[Any, ...], dict[str, Any]]:
        """The call to make with the pipeline's arguments ``tool``."""
        head = args[:1] if self.skip is not None else ()
        if self.plain and self.names.issuperset(tool):
            return head, tool  # every parameter by keyword: the pipeline's dict as it is
        rest = dict(tool)
        positional = list(head)
        keywords: dict[str, Any] = {}
        for p in self.params:
            if p.kind is _P.VAR_POSITIONAL:
                positional.extend(rest.pop(p.name, ()))
            elif p.kind is _P.VAR_KEYWORD:
                continue
            elif p.name not in rest:
                continue  # left to the function's own default
            elif p.kind is _P.KEYWORD_ONLY or (self.plain and p.kind is _P.POSITIONAL_OR_KEYWORD):
                keywords[p.name] = rest.pop(p.name)
            else:
                positional.append(rest.pop(p.name))
        if rest:
            if self.var_keyword is None:
                name = sorted(rest)[0]
                raise ArgumentError(
                    f"{self.qualname} has no parameter {name!r} for the policy's argument rewrite",
                    argument=f"args.{name}",
                )
            keywords.update(rest)
        return tuple(positional), keywords


def _redacted(gen: Generator[Any, Any, Any], run: Run) -> Generator[Any, Any, Any]:
    """``yield from gen`` with every item passed through the output redaction."""
    try:
        item = next(gen)
        while True:
            try:
                sent = yield run.output(item)
            except GeneratorExit:
                gen.close()
                raise
            except BaseException as e:  # forwarded to the tool, as yield from does
                item = gen.throw(e)
            else:
                item = gen.send(sent)
    except StopIteration as stop:
        return stop.value


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
    if _is_langchain_tool(fn):  # @gate.guard over LangChain's @tool
        from execgate.integrations.langchain import guard_tool

        return guard_tool(fn, gate, action=action)  # type: ignore[arg-type,return-value]
    name = action or fn.__qualname__
    binder = _Binder(fn)
    pipeline = gate.pipeline
    principal = dict(principal) if principal else None
    context = dict(context) if context else None
    wrapper: Callable[..., Any]

    capabilities = Capabilities(sandbox=isolate is not None, replaceable=binder.replaceable)

    def begin(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Started:
        call, decision = pipeline.decide(
            name, binder.bind(args, kwargs), principal, context, capabilities=capabilities
        )
        if decision.blocked:
            raise blocked_error(decision)  # raised here: a shorter traceback to build
        return arguments(call, decision, args, kwargs)

    async def abegin(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Started:
        call = pipeline.start(
            name, binder.bind(args, kwargs), principal, context, capabilities=capabilities
        )
        decision = await pipeline.aauthorize(call)
        if decision.blocked:
            raise blocked_error(decision)
        return arguments(call, decision, args, kwargs)

    def arguments(
        call: Call, decision: Decision, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Started:
        """The authorized call and the arguments to call the body with."""
        tool = call.arguments_if_copied()
        if tool is None:  # the caller's own immutable values, exactly as judged
            return call, decision, args, kwargs
        return call, decision, *binder.rebuild(tool, args)

    if isolate is not None:
        from execgate.isolate import check_isolatable, run_isolated

        check_isolatable(fn)
        box = isolate

        @functools.wraps(fn)
        def isolated(*args: Any, **kwargs: Any) -> Any:
            call, decision, a, k = begin(args, kwargs)
            return run_isolated(call, decision, fn, a, k, box, pipeline=pipeline)

        isolated.__execgate_action__ = name  # type: ignore[attr-defined]
        return isolated

    if inspect.iscoroutinefunction(fn):

        @functools.wraps(fn)
        async def wrapper(*args: Any, **kwargs: Any) -> Any:
            call, decision, a, k = await abegin(args, kwargs)
            with Run(call, decision) as run:
                run.result = await fn(*a, **k)
            return run.output(run.result)

    elif inspect.isasyncgenfunction(fn):

        @functools.wraps(fn)
        async def wrapper(*args: Any, **kwargs: Any) -> AsyncIterator[Any]:
            call, decision, a, k = await abegin(args, kwargs)
            with Run(call, decision) as run:
                async for item in fn(*a, **k):
                    yield run.output(item)

    elif inspect.isgeneratorfunction(fn):

        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            call, decision, a, k = begin(args, kwargs)
            with Run(call, decision) as run:
                run.result = yield from _redacted(fn(*a, **k), run)
            return run.result

    else:

        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            call, decision, a, k = begin(args, kwargs)
            if not call.tracked and telemetry.current() is None:
                return fn(*a, **k)  # nothing is recorded or redacted after the body
            with Run(call, decision) as run:
                run.result = fn(*a, **k)
            return run.output(run.result)

    wrapper.__execgate_action__ = name  # type: ignore[attr-defined]
    return wrapper


def _is_langchain_tool(obj: object) -> bool:
    """A LangChain BaseTool, recognized without importing LangChain."""
    return any(
        c.__name__ == "BaseTool" and c.__module__.startswith("langchain_core")
        for c in type(obj).__mro__
    )

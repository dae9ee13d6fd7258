"""``@gate.guard(isolate=Sandbox(...))``: a Python tool's body in a sandboxed child.

The channel carries data, never code. The parent writes one JSON document to
the child's stdin, ``{"module", "qualname", "args", "kwargs"}``, and the child
(``python -m execgate._isolate``) answers with one JSON document on its
stdout: ``{"ok": value}`` or ``{"error": {"type", "module", "message"}}``.
Values cross by the argument conversion rules (:mod:`execgate._convert`:
what a policy would see of them), except that ``bytes`` cross whole, as
``{"$execgate.bytes": base64}``. The parent parses the answer with
:func:`json.loads`, nothing else: a child that writes anything but one such
document (a pickle, garbage, a second document) gets a :class:`SandboxError`
and nothing of it runs. An exception raised in the child is re-raised as the
builtin exception of the same type when it is one of a short list of plain
builtins, and as :class:`~execgate.errors.IsolatedError` otherwise (including
``SystemExit`` and ``KeyboardInterrupt``, which never end the parent).
"""

from __future__ import annotations

import base64
import builtins
import dataclasses
import inspect
import json
import os
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from execgate._convert import NATIVE, to_json
from execgate.errors import IsolatedError, SandboxError
from execgate.sandbox import Sandbox

if TYPE_CHECKING:
    from execgate.pipeline import Pipeline

__all__ = ["check_isolatable", "decode", "encode", "run_isolated"]

BYTES_TAG = "$execgate.bytes"

#: Builtin exceptions re-raised as themselves: plain data, no side effects.
REBUILT = frozenset(
    {
        "ArithmeticError",
        "AssertionError",
        "FileExistsError",
        "FileNotFoundError",
        "IndexError",
        "IsADirectoryError",
        "KeyError",
        "LookupError",
        "NotADirectoryError",
        "NotImplementedError",
        "OSError",
        "OverflowError",
        "PermissionError",
        "RuntimeError",
        "TimeoutError",
        "TypeError",
        "UnicodeError",
        "ValueError",
        "ZeroDivisionError",
    }
)


def _plain(value: Any) -> Any:
    if isinstance(value, (bytes, bytearray, memoryview)):
        return {BYTES_TAG: base64.b64encode(bytes(value)).decode("ascii")}
    converted = to_json(value, "value")
    if converted is NATIVE:  # json encodes these itself; never reached for them
        raise TypeError(f"cannot encode {type(value).__qualname__}")
    return converted[0]


def encode(value: Any) -> bytes:
    """One JSON document for the channel."""
    return json.dumps(value, default=_plain, allow_nan=False, separators=(",", ":")).encode()


def _tagged(obj: dict[str, Any]) -> Any:
    if len(obj) == 1 and isinstance(obj.get(BYTES_TAG), str):
        return base64.b64decode(obj[BYTES_TAG], validate=True)
    return obj


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def decode(data: bytes) -> Any:
    """The value of one channel document (ValueError for anything else)."""
    return json.loads(data, object_hook=_tagged, parse_constant=_no_constant)


def check_isolatable(fn: Callable[..., Any]) -> None:
    """Refuses, at decoration, a function the child could not import and run."""
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


def run_isolated(
    call: Any,
    decision: Any,
    fn: Callable[..., Any],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    box: Sandbox,
    *,
    pipeline: Pipeline | None = None,
) -> Any:
    """Runs an authorized call's body in a sandboxed child; returns its result
    (``pipeline`` decides the requests of a ``network="proxy"`` child)."""
    from execgate.gate import run_sandboxed

    # The child must import the function: it gets this interpreter, this
    # sys.path (readable, and as PYTHONPATH), and nothing else.
    paths = [p for p in {os.path.realpath(p) for p in sys.path if p} if os.path.exists(p)]
    paths += [os.path.realpath(p) for p in (sys.prefix, sys.base_prefix)]
    env = {**(box.env or {}), "PYTHONPATH": os.pathsep.join(paths)}
    child_box = dataclasses.replace(box, read=[*box.read, *paths], env=env)
    request = encode(
        {"module": fn.__module__, "qualname": fn.__qualname__, "args": args, "kwargs": kwargs}
    )
    argv = [os.path.realpath(sys.executable), "-m", "execgate._isolate"]
    run, done = run_sandboxed(call, decision, argv, child_box, request, pipeline=pipeline)
    name = fn.__qualname__
    if done.limit_hit is not None or done.exit_code != 0:
        raise SandboxError(
            f"isolated {name} did not finish: "
            + (
                f"limit {done.limit_hit} hit"
                if done.limit_hit
                else f"exit {done.exit_code}, signal {done.signal}"
            )
            + (f"\n{done.stderr.decode(errors='replace')[-2000:]}" if done.stderr else ""),
            completed=done,
        )
    try:
        reply = decode(done.stdout)
        if not isinstance(reply, dict) or len(reply) != 1:
            raise ValueError("not a single-key object")
    except ValueError as e:
        raise SandboxError(
            f"isolated {name} answered with something other than one JSON reply ({e}); "
            "nothing of it was used",
            completed=done,
        ) from None
    if "ok" in reply:
        return run.output(reply["ok"])
    error = reply.get("error")
    if not (
        isinstance(error, dict)
        and all(isinstance(error.get(k), str) for k in ("type", "module", "message"))
    ):
        raise SandboxError(f"isolated {name} answered with a malformed reply", completed=done)
    kind, module, message = error["type"], error["module"], error["message"]
    if module == "builtins" and kind in REBUILT:
        raise getattr(builtins, kind)(message)
    raise IsolatedError(kind, module, message)

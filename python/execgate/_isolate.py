"""Child side of ``@gate.guard(isolate=Sandbox(...))``.

Reads ``(module, qualname, args, kwargs)`` pickled on stdin, imports the
function, calls the undecorated body, and writes ``("ok", result)`` or
``("error", exception)`` pickled to stdout. Anything the function prints goes
to stderr so it cannot corrupt the result.
"""

from __future__ import annotations

import importlib
import pickle
import sys
from typing import Any


def _resolve(module: str, qualname: str) -> Any:
    obj: Any = importlib.import_module(module)
    for part in qualname.split("."):
        obj = getattr(obj, part)
    # The module attribute is the guarded wrapper; run the body it wraps.
    return getattr(obj, "__wrapped__", obj)


def main() -> int:
    out = sys.stdout.buffer
    sys.stdout = sys.stderr
    module, qualname, args, kwargs = pickle.loads(sys.stdin.buffer.read())
    try:
        result: tuple[str, Any] = ("ok", _resolve(module, qualname)(*args, **kwargs))
    except BaseException as e:  # everything is reported to the parent
        result = ("error", e)
    try:
        payload = pickle.dumps(result)
    except Exception as e:  # an unpicklable result or exception
        payload = pickle.dumps(
            ("unpicklable", f"{type(e).__name__}: {e}; {result[0]}: {result[1]!r}")
        )
    out.write(payload)
    out.flush()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

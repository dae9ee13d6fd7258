"""Child side of ``@gate.guard(isolate=Sandbox(...))`` (see :mod:`execgate.isolate`).

Reads ``{"module", "qualname", "args", "kwargs"}`` as JSON on stdin, imports
the function, calls the undecorated body, and writes ``{"ok": result}`` or
``{"error": {"type", "module", "message"}}`` as JSON to stdout. Anything the
function prints goes to stderr so it cannot corrupt the reply.
"""

from __future__ import annotations

import importlib
import sys
from typing import Any

from execgate.isolate import decode, encode


def _resolve(module: str, qualname: str) -> Any:
    obj: Any = importlib.import_module(module)
    for part in qualname.split("."):
        obj = getattr(obj, part)
    # The module attribute is the guarded wrapper; run the body it wraps.
    return getattr(obj, "__wrapped__", obj)


def _error(e: BaseException) -> bytes:
    kind = type(e)
    return encode(
        {"error": {"type": kind.__qualname__, "module": kind.__module__, "message": str(e)}}
    )


def main() -> int:
    out = sys.stdout.buffer
    sys.stdout = sys.stderr
    request = decode(sys.stdin.buffer.read())
    try:
        result = _resolve(request["module"], request["qualname"])(
            *request["args"], **request["kwargs"]
        )
        payload = encode({"ok": result})
    except BaseException as e:  # everything is reported to the parent
        try:
            payload = _error(e)
        except Exception as unencodable:  # a message that cannot be text
            payload = _error(TypeError(f"unreportable {type(e).__qualname__}: {unencodable}"))
    out.write(payload)
    out.flush()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""How call arguments that are not JSON-native become policy input.

The native layer converts str, int, float, bool, None, list, tuple, dict (with
str keys), bytes and bytearray itself, subclasses included (by their real
content: a ``str`` subclass's characters, never its ``__str__``), and the tool
receives plain copies of what the policy judged. For anything else it calls
:func:`to_json`, which says what the policy sees and what the tool receives:

==========================  ==========================================  ====================
Python value                Policy sees                                 Tool receives
==========================  ==========================================  ====================
``datetime``                RFC 3339 string (``isoformat()``); naive    the value [1]_
                            datetimes are rejected (ambiguous zone)
``date`` / ``time``         ISO 8601 string                             the value [1]_
``timedelta``               seconds as a float                          the value [1]_
``pathlib.PurePath``        its string                                  the value [1]_
``enum.Enum``               its ``value`` (converted by these rules)    the member
``bytes`` / ``bytearray``   ``{"bytes_sha256": hex, "size": n}`` (the   a copy
/ ``memoryview``            content is not exposed to policy or logs)
``uuid.UUID``               its string                                  the value [1]_
``decimal.Decimal``         a string (exact; no float rounding)         the value [1]_
``set`` / ``frozenset``     a sorted list                               a copy
dataclass instance          a dict of its fields                        the instance
pydantic model              ``model_dump(mode="json")``                 the instance
anything else               :class:`~execgate.errors.ArgumentError`
==========================  ==========================================  ====================

.. [1] For a subclass of the standard type, a value of the standard type rebuilt
   from what the policy saw, so an override cannot show the policy one thing
   and the tool another. The policy's view is computed by the standard type's
   own methods for the same reason.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import decimal
import enum
import pathlib
import uuid
from typing import Any

from execgate.errors import ArgumentError

__all__ = ["NATIVE", "to_json"]

#: Returned by :func:`to_json` for a subclass of a JSON-native type: the
#: native layer reads it by its content.
NATIVE = object()

_PATHS = (pathlib.PurePosixPath, pathlib.PureWindowsPath, pathlib.PosixPath, pathlib.WindowsPath)


def to_json(value: Any, path: str) -> Any:
    """``(what the policy sees, what the tool receives)`` for ``value``,
    :data:`NATIVE`, or raises ArgumentError."""
    if isinstance(value, enum.Enum):
        return value.value, value
    if isinstance(value, dt.datetime):
        if value.tzinfo is None:
            raise ArgumentError(
                f"argument {path} is a naive datetime; give it a time zone", argument=path
            )
        text = dt.datetime.isoformat(value)
        return text, value if type(value) is dt.datetime else dt.datetime.fromisoformat(text)
    if isinstance(value, dt.date):
        text = dt.date.isoformat(value)
        return text, value if type(value) is dt.date else dt.date.fromisoformat(text)
    if isinstance(value, dt.time):
        text = dt.time.isoformat(value)
        return text, value if type(value) is dt.time else dt.time.fromisoformat(text)
    if isinstance(value, dt.timedelta):
        seconds = dt.timedelta.total_seconds(value)
        return seconds, value if type(value) is dt.timedelta else dt.timedelta(seconds=seconds)
    if isinstance(value, (str, int, float, dict, list, tuple, bytes, bytearray)):
        return NATIVE
    if isinstance(value, memoryview):
        data = bytes(value)
        return data, data
    if isinstance(value, pathlib.PurePath):
        text = pathlib.PurePath.__str__(value)
        if type(value) in _PATHS:
            return text, value
        rebuilt = pathlib.Path(text) if isinstance(value, pathlib.Path) else pathlib.PurePath(text)
        return text, rebuilt
    if isinstance(value, uuid.UUID):
        text = uuid.UUID.__str__(value)
        return text, value if type(value) is uuid.UUID else uuid.UUID(text)
    if isinstance(value, decimal.Decimal):
        text = decimal.Decimal.__str__(value)
        return text, value if type(value) is decimal.Decimal else decimal.Decimal(text)
    if isinstance(value, (set, frozenset)):
        items = list(set.__iter__(value) if isinstance(value, set) else frozenset.__iter__(value))
        try:
            view = sorted(items)
        except TypeError:
            raise ArgumentError(
                f"argument {path} is a set of unorderable values", argument=path
            ) from None
        return view, set(items) if isinstance(value, set) else frozenset(items)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}, value
    model_dump = getattr(type(value), "model_dump", None)
    if callable(model_dump) and hasattr(type(value), "model_fields"):
        return value.model_dump(mode="json"), value
    raise ArgumentError(
        f"argument {path} has unsupported type {type(value).__module__}.{type(value).__qualname__}"
        " (see execgate._convert for the supported types)",
        argument=path,
    )

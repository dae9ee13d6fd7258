"""How call arguments that are not JSON-native become policy input.

The native layer converts str, int, float, bool, None, list, tuple and dict
(with str keys) itself and calls :func:`to_json` for anything else. The rules:

==========================  ==========================================
Python value                Policy sees
==========================  ==========================================
``datetime``                RFC 3339 string (``isoformat()``); naive
                            datetimes are rejected (ambiguous time zone)
``date`` / ``time``         ISO 8601 string
``timedelta``               seconds as a float
``pathlib.PurePath``        its string
``enum.Enum``               its ``value`` (converted by these rules)
``bytes`` / ``bytearray``   ``{"bytes_sha256": hex, "size": n}`` (the
                            content is not exposed to policy or logs)
``uuid.UUID``               its string
``decimal.Decimal``         a string (exact; no float rounding)
``set`` / ``frozenset``     a sorted list
dataclass instance          a dict of its fields
pydantic model              ``model_dump(mode="json")``
anything else               :class:`~execgate.errors.ArgumentError`
==========================  ==========================================
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import decimal
import enum
import hashlib
import pathlib
import uuid
from typing import Any

from execgate.errors import ArgumentError

__all__ = ["to_json"]


def to_json(value: Any, path: str) -> Any:
    """Returns a JSON-compatible stand-in for ``value`` or raises ArgumentError."""
    if isinstance(value, dt.datetime):
        if value.tzinfo is None:
            raise ArgumentError(
                f"argument {path} is a naive datetime; give it a time zone", argument=path
            )
        return value.isoformat()
    if isinstance(value, (dt.date, dt.time)):
        return value.isoformat()
    if isinstance(value, dt.timedelta):
        return value.total_seconds()
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, (str, int, float, dict, list, tuple)):
        # Subclasses of JSON types (str enums, OrderedDict, named tuples, ...).
        return _builtin_base(value)
    if isinstance(value, pathlib.PurePath):
        return str(value)
    if isinstance(value, (bytes, bytearray, memoryview)):
        data = bytes(value)
        return {"bytes_sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, decimal.Decimal):
        return str(value)
    if isinstance(value, (set, frozenset)):
        try:
            return sorted(value)
        except TypeError:
            raise ArgumentError(
                f"argument {path} is a set of unorderable values", argument=path
            ) from None
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}
    model_dump = getattr(type(value), "model_dump", None)
    if callable(model_dump) and hasattr(type(value), "model_fields"):
        return value.model_dump(mode="json")
    raise ArgumentError(
        f"argument {path} has unsupported type {type(value).__module__}.{type(value).__qualname__}"
        " (see execgate._convert for the supported types)",
        argument=path,
    )


def _builtin_base(value: str | int | float | dict[Any, Any] | list[Any] | tuple[Any, ...]) -> Any:
    if isinstance(value, str):
        return str(value)
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return float(value)
    if isinstance(value, dict):
        return dict(value)
    return list(value)

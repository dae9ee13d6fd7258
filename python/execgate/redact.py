"""The privacy router for direct use: ``execgate.redact(value)``."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal

from execgate import _core

__all__ = ["DETECTORS", "redact"]

#: The built-in detectors.
DETECTORS: tuple[str, ...] = (
    "pem_private_key",
    "jwt",
    "bearer_token",
    "aws_access_key",
    "github_token",
    "gitlab_token",
    "slack_token",
    "email",
    "iban",
    "card",
    "us_ssn",
    "phone",
    "ipv4",
    "ipv6",
)


def redact(
    value: Any,
    *,
    detectors: Sequence[str] | None = None,
    transform: Literal["mask", "hash", "drop", "deny"] = "mask",
    key: bytes = b"",
    custom: Mapping[str, str] | None = None,
) -> tuple[Any, list[dict[str, Any]]]:
    """Returns ``(new_value, report)``.

    Every string in ``value`` (converted like tool arguments) is scanned with
    ``detectors`` (default: all, plus ``custom`` name -> regex) and each
    finding transformed: ``mask`` keeps a hint, ``hash`` is an HMAC-SHA-256
    pseudonym under ``key`` (stable, so joins still work), ``drop`` leaves only
    the detector name, ``deny`` raises :class:`ExecgateError`. The report lists
    ``{path, detector, count}``, never the original values.
    """
    return _core.redact(
        value,
        detectors=None if detectors is None else list(detectors),
        transform=transform,
        key=key,
        custom=dict(custom or {}),
    )

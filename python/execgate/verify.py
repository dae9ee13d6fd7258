"""Verifying an audit log."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable

from execgate import _core
from execgate._core import VerifyKey, VerifyReport

__all__ = ["verify_log"]


def verify_log(
    path: str | os.PathLike[str],
    keys: VerifyKey | Iterable[VerifyKey | str | os.PathLike[str]] = (),
    *,
    keyring: str | os.PathLike[str] | None = None,
    progress: Callable[[int, int], object] | None = None,
) -> VerifyReport:
    """Checks every signature, the hash chain, sequence numbers, checkpoints and
    completion links of the log at ``path``.

    ``keys`` are public keys (objects or PEM file paths); ``keyring`` is a
    directory of ``*.pub``/``*.pem`` public keys, for logs signed by rotated
    keys. The file is read line by line in bounded memory; ``progress`` is
    called as ``progress(bytes_read, total_bytes)`` every few MiB. Returns a
    report: ``report.ok``, counts, ``incidents`` (tampering a writer found
    and recorded), and on failure ``line`` and ``reason`` of the first bad line.
    """
    items = [keys] if isinstance(keys, VerifyKey) else list(keys)
    loaded = [k if isinstance(k, VerifyKey) else VerifyKey.from_pem(os.fspath(k)) for k in items]
    return _core.verify(os.fspath(path), loaded, os.fspath(keyring) if keyring else None, progress)

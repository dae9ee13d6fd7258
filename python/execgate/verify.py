"""Verifying an audit log."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable

from execgate import _core
from execgate._core import VerifyKey, VerifyReport

__all__ = ["verify_log", "verify_logs"]


def verify_log(
    path: str | os.PathLike[str],
    keys: VerifyKey | Iterable[VerifyKey | str | os.PathLike[str]] = (),
    *,
    keyring: str | os.PathLike[str] | None = None,
    progress: Callable[[int, int], object] | None = None,
    after: str | None = None,
) -> VerifyReport:
    """Checks every signature, the hash chain, sequence numbers, checkpoints and
    completion links of the log at ``path``.

    ``keys`` are public keys (objects or PEM file paths); ``keyring`` is a
    directory of ``*.pub``/``*.pem`` public keys, for logs signed by rotated
    keys. The file is read line by line in bounded memory; ``progress`` is
    called as ``progress(bytes_read, total_bytes)`` every few MiB. Returns a
    report: ``report.ok``, counts, ``incidents`` (tampering a writer found
    and recorded), and on failure ``line`` and ``reason`` of the first bad line.

    The log must start at a genesis record: a later file of a rotated log
    (whose first record continues a file not given) fails, naming what is
    missing, unless ``after`` is the digest it continues from (the ``head``
    of the report that verified the files before it).
    """
    loaded = _keys(keys)
    ring = os.fspath(keyring) if keyring else None
    return _core.verify(os.fspath(path), loaded, ring, progress, after)


def verify_logs(
    paths: str | os.PathLike[str] | Iterable[str | os.PathLike[str]],
    keys: VerifyKey | Iterable[VerifyKey | str | os.PathLike[str]] = (),
    *,
    keyring: str | os.PathLike[str] | None = None,
    progress: Callable[[int, int], object] | None = None,
    after: str | None = None,
) -> VerifyReport:
    """Verifies a rotated log as one chain: the files given, or the log files
    of a directory (every regular file but ``*.torn-*`` side files). They are
    checked in chain order (by the ``seq`` of each file's first record), so a
    missing, reordered or altered file fails (a missing first file too,
    unless ``after`` names the digest the set continues from); a failure's
    reason names the file and its line there. Otherwise as :func:`verify_log`.
    """
    if isinstance(paths, (str, os.PathLike)) and os.path.isdir(paths):
        root = os.fspath(paths)
        files = sorted(
            os.path.join(root, name)
            for name in os.listdir(root)
            if ".torn-" not in name and os.path.isfile(os.path.join(root, name))
        )
    elif isinstance(paths, (str, os.PathLike)):
        files = [os.fspath(paths)]
    else:
        files = [os.fspath(p) for p in paths]
    ring = os.fspath(keyring) if keyring else None
    return _core.verify_set(files, _keys(keys), ring, progress, after)


def _keys(keys: VerifyKey | Iterable[VerifyKey | str | os.PathLike[str]]) -> list[VerifyKey]:
    items = [keys] if isinstance(keys, VerifyKey) else list(keys)
    return [k if isinstance(k, VerifyKey) else VerifyKey.from_pem(os.fspath(k)) for k in items]

"""Signed bundles served over HTTP: ETag polling, a cached last good bundle.

The bundle format and every check live in the core (``execgate._core.Bundle``);
this module only moves bytes: it downloads with ``If-None-Match``, hands the
bytes to the core to verify, and keeps the last bundle that verified on disk so
a restart without the server still has a policy. The cache file's mtime is
when its bundle was last confirmed current (installed, or a 304 since), so a
restart from the cache knows how old its policy is (``bundle_max_age``).
"""

from __future__ import annotations

import json
import logging
import os
import pathlib
import random
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable

from execgate._core import Bundle, BundleKey, VerifyKey

__all__ = ["BundleSource", "deny_all_policy", "is_url"]

log = logging.getLogger("execgate.bundle")

#: Largest bundle downloaded (compressed), the core's own cap on a bundle file.
MAX_BUNDLE_BYTES = 32 << 20


def is_url(location: str | os.PathLike[str]) -> bool:
    return isinstance(location, str) and location.startswith(("http://", "https://"))


def deny_all_policy(entrypoint: str, reason: str) -> str:
    """Rego that denies every call with ``reason``, at ``entrypoint``: what a
    gate enforces before it ever had a valid bundle."""
    parts = entrypoint.split(".")
    package = ".".join(parts[1:-1]) or "execgate"
    return (
        f'package {package}\n{parts[-1]} := {{"allow": false, "reasons": [{json.dumps(reason)}]}}\n'
    )


class BundleSource:
    """One bundle URL: fetches it (``If-None-Match`` with the last ETag; 304
    means unchanged), verifies it with ``key``, and caches the last bundle
    that verified at ``cache`` (with its ETag beside it)."""

    def __init__(
        self,
        url: str,
        key: VerifyKey | BundleKey,
        *,
        cache: str | os.PathLike[str] | None = None,
        timeout: float = 10.0,
    ) -> None:
        if urllib.parse.urlsplit(url).scheme not in ("http", "https"):
            raise ValueError(f"bundle URL must be http or https: {url!r}")
        self.url, self.key, self.timeout = url, key, timeout
        self.cache = pathlib.Path(cache) if cache is not None else None
        self.etag: str | None = None
        self._pending: tuple[bytes | None, str | None] = (None, None)

    def cached(self) -> tuple[Bundle, float] | None:
        """The cached last good bundle, verified again, and how many seconds
        ago it was last confirmed current (None if absent or bad; a
        modification time in the future counts as never confirmed)."""
        if self.cache is None or not self.cache.is_file():
            return None
        try:
            bundle = Bundle.read(self.cache, self.key)
            age = time.time() - self.cache.stat().st_mtime
        except Exception as e:  # a damaged cache is not a policy: say so and ignore it
            log.warning("execgate: cached bundle %s refused: %s", self.cache, e)
            return None
        etag = self.cache.with_name(self.cache.name + ".etag")
        self.etag = (etag.read_text().strip() or None) if etag.is_file() else None
        return bundle, age if age >= 0 else float("inf")

    def confirmed(self) -> None:
        """The server said the bundle in force is current (304): the cache's
        mtime says so too."""
        if self.cache is not None and self.cache.is_file():
            os.utime(self.cache)

    def fetch(self) -> Bundle | None:
        """Downloads and verifies the bundle; None when the server says it is
        unchanged (304). Raises on transport errors and on a bundle that does
        not verify (``SignatureError`` / ``PolicyError``)."""
        request = urllib.request.Request(self.url)  # noqa: S310  (scheme checked in __init__)
        if self.etag:
            request.add_header("If-None-Match", self.etag)
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:  # noqa: S310
                data = response.read(MAX_BUNDLE_BYTES + 1)
                etag = response.headers.get("ETag")
        except urllib.error.HTTPError as e:
            e.close()  # it holds the response's socket
            if e.code == 304:
                return None
            raise
        if len(data) > MAX_BUNDLE_BYTES:
            raise ValueError(f"bundle at {self.url} is larger than {MAX_BUNDLE_BYTES} bytes")
        bundle = Bundle.from_bytes(data, self.key)
        self._pending = (data, etag)
        return bundle

    def installed(self) -> None:
        """Records the last fetched bundle as installed: the new ETag, and the
        bytes in the cache (written beside it, then renamed)."""
        data, etag = self._pending
        if data is None:
            return
        self.etag = etag
        if self.cache is not None:
            tmp = self.cache.with_name(f".{self.cache.name}.{os.getpid()}.tmp")
            tmp.write_bytes(data)
            os.replace(tmp, self.cache)
            tag = self.cache.with_name(self.cache.name + ".etag")
            tag.write_text(etag or "")
        self._pending = (None, None)


class Poller:
    """Calls ``update`` every ``period`` seconds (with ±10% jitter), backing
    off up to 8x the period while it fails, on a daemon thread."""

    def __init__(self, update: Callable[[], object], period: float) -> None:
        if period <= 0:
            raise ValueError("bundle_poll must be a positive number of seconds")
        self._update, self._period = update, period
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="execgate-bundle", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        delay = self._period
        while not self._stop.wait(delay * random.uniform(0.9, 1.1)):  # noqa: S311  (jitter)
            try:
                self._update()
                delay = self._period
            except Exception as e:  # the old policy stays; say why the new one did not
                log.warning("execgate: bundle update failed, keeping the policy in force: %s", e)
                delay = min(delay * 2, self._period * 8)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not threading.current_thread():
            self._thread.join(timeout=5)

"""OpenTelemetry for the call pipeline (the ``execgate[otel]`` extra).

When ``opentelemetry-api`` is installed, the pipeline (:mod:`execgate.pipeline`,
which every entry point drives) reports one span per decision and one
``execute_tool`` span per tool execution, and records the decision metrics
(see :mod:`execgate._otel` and the README's "Observability"). Without an SDK
configured by the application, the API's tracer and meter are no-ops.

Nothing imports ``opentelemetry`` until the first gate is built, and nothing
at all when it is not installed. This module itself never imports it, so a
component that reports (the audit shipper's lag) can do so either way.
"""

from __future__ import annotations

import threading
from time import monotonic
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from execgate._otel import Instruments

__all__ = ["current", "enable", "load", "report_shipping_lag", "shipping_lags"]

_lock = threading.Lock()
_loaded = False
_enabled = True
_instruments: Instruments | None = None
_lags: dict[str, float] = {}


def load() -> None:
    """Imports the instruments once, if ``opentelemetry-api`` is importable
    (a gate calls this when it is built)."""
    global _loaded, _instruments
    if _loaded:
        return
    with _lock:
        if _loaded:
            return
        try:
            from execgate._otel import Instruments
        except ImportError:  # the extra is not installed: telemetry stays off
            pass
        else:
            _instruments = Instruments()
        _loaded = True


def current() -> Instruments | None:
    """The instruments the pipeline reports to, or None (not installed, not
    loaded yet, turned off with :func:`enable`, or no SDK configured: an SDK
    configured later is seen within a second, at once after :func:`enable`)."""
    otel = _instruments
    if otel is None or not _enabled:
        return None
    if otel.live:
        return otel
    if monotonic() < otel.next_poll:
        return None
    return otel if otel.poll() else None


def enable(on: bool = True) -> None:
    """Turns execgate's spans and metrics on or off for the process (on by
    default when the extra is installed); turning them on looks at once for
    an SDK configured since."""
    global _enabled
    _enabled = on
    if on and _instruments is not None:
        _instruments.poll()


def report_shipping_lag(log_id: str, seconds: float | None) -> None:
    """The hook an audit shipper calls: how far (in seconds) the copy of log
    ``log_id`` it ships to lags behind the local log; None when it stops.
    Observed as the ``execgate.audit.shipping.lag`` gauge."""
    with _lock:
        if seconds is None:
            _lags.pop(log_id, None)
        else:
            _lags[log_id] = float(seconds)


def shipping_lags() -> list[tuple[str, float]]:
    """The lags last reported, per log."""
    with _lock:
        return list(_lags.items())

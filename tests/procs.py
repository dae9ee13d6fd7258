"""The host's live processes, from /proc: how tests check what a tool, a sandbox
or a gateway left behind (inside a PID namespace pids differ, so processes are
found by an argument they were started with)."""

from __future__ import annotations

import os
from collections.abc import Callable


def alive(pid: int) -> bool:
    """Whether ``pid`` runs: a zombie, reaped or not, is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[-1].split()[0] != "Z"
    except (FileNotFoundError, IndexError):
        return False


def pids(match: Callable[[list[bytes]], bool]) -> list[int]:
    """The live processes whose argv (``/proc/PID/cmdline`` split at NUL) ``match`` accepts."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
        except OSError:
            continue
        if match(argv) and alive(int(entry)):
            found.append(int(entry))
    return found


def pids_with(marker: str) -> list[int]:
    """The live processes with ``marker`` as one of their arguments."""
    return pids(lambda argv: marker.encode() in argv)

"""Sandboxed tool execution: a child process under kernel-enforced limits.

``Sandbox(...).run(argv)`` runs a program as PID 1 of its own user and PID
namespace (uid 65534 there, no capabilities, no_new_privs), with rlimits, a
Landlock filesystem (and optionally TCP port) ruleset with IPC scopes, a seccomp
filter, a private network namespace, cgroup memory and process limits where
available, a clean environment and a parent-death signal. The result says which
protections were in force and which limit, if any, stopped the program.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from execgate import _core

__all__ = ["DEFAULT_ENV", "Completed", "Limits", "Sandbox", "parse_size"]

#: Variables passed through from the parent unless ``env_allow`` says otherwise.
#: Everything else (tokens, keys, credentials) stays behind.
DEFAULT_ENV: tuple[str, ...] = ("PATH", "LANG", "LC_ALL", "TZ", "TERM")

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kKmMgGtT]?)i?[bB]?\s*$")
_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


def parse_size(value: int | str | None) -> int | None:
    """Bytes from an int or a string such as ``"256M"``, ``"1.5G"``, ``"64k"``."""
    if value is None or isinstance(value, int):
        if isinstance(value, int) and value < 0:
            raise ValueError(f"size must not be negative: {value}")
        return value
    m = _SIZE.match(value)
    if not m:
        raise ValueError(f"not a size: {value!r} (use bytes, or a number with k, M, G)")
    return int(float(m.group(1)) * _UNITS[m.group(2).lower()])


@dataclass(frozen=True)
class Limits:
    """Resource limits; ``None`` leaves a resource as inherited.

    ``cpu`` and ``wall`` are seconds; ``memory``, ``file_size`` and ``output``
    are bytes (or strings like ``"256M"``); ``output`` caps what is kept of
    stdout and of stderr each.
    """

    cpu: float | None = None
    memory: int | str | None = None
    file_size: int | str | None = None
    open_files: int | None = None
    processes: int | None = None
    wall: float | None = None
    output: int | str = 1 << 20


@dataclass(frozen=True)
class Completed:
    """The outcome of a sandboxed run."""

    exit_code: int | None
    signal: int | None
    stdout: bytes
    stderr: bytes
    truncated: bool
    duration: float
    usage: Mapping[str, float]
    limit_hit: Literal["memory", "cpu", "wall", "output", "file_size", "processes"] | None
    protections: Mapping[str, Any]
    sandbox: Mapping[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """Exited with status 0 and hit no limit."""
        return self.exit_code == 0 and self.limit_hit is None


@dataclass(frozen=True)
class Sandbox:
    """How to run a tool. See the README's "Sandbox" section for each field.

    ``unix_sockets=True`` lets the tool create Unix sockets, and so connect to
    any named socket it can reach by path; off (the default), only
    ``socketpair`` works.
    """

    limits: Limits = field(default_factory=Limits)
    read: Sequence[str | os.PathLike[str]] = ()
    write: Sequence[str | os.PathLike[str]] = ()
    system_paths: bool = True
    network: Literal["none", "host", "proxy"] | Sequence[int] = "none"
    env: Mapping[str, str] | None = None
    env_allow: Sequence[str] = DEFAULT_ENV
    cwd: str | os.PathLike[str] | None = None
    strict: bool = False
    stream: bool = False
    unix_sockets: bool = False

    def spec(self, join_network: int | None = None) -> dict[str, Any]:
        """The plain specification the native runner takes (``join_network``:
        the egress proxy's namespace, for ``network="proxy"``)."""
        lim = self.limits
        env = {k: os.environ[k] for k in self.env_allow if k in os.environ}
        env.update(self.env or {})
        network: Any = (
            self.network if isinstance(self.network, str) else [int(p) for p in self.network]
        )
        cpu = None if lim.cpu is None else max(1, int(-(-lim.cpu // 1)))
        return {
            "cpu_seconds": cpu,
            "memory_bytes": parse_size(lim.memory),
            "file_size_bytes": parse_size(lim.file_size),
            "open_files": lim.open_files,
            "processes": lim.processes,
            "wall_seconds": lim.wall,
            "output_bytes": parse_size(lim.output),
            "read": [os.fspath(p) for p in self.read],
            "write": [os.fspath(p) for p in self.write],
            "system_paths": self.system_paths,
            "network": network,
            "env": env,
            "cwd": None if self.cwd is None else os.fspath(self.cwd),
            "strict": self.strict,
            "stream": self.stream,
            "unix_sockets": self.unix_sockets,
            "join_network": join_network,
        }

    def request(self) -> dict[str, Any]:
        """What a policy sees as ``input.action.args.sandbox``: the spec without env values."""
        spec = self.spec()
        spec["env"] = sorted(spec["env"])
        del spec["join_network"]
        return spec

    def run(
        self,
        argv: Sequence[str],
        *,
        stdin: bytes | str | None = None,
        obligation: Mapping[str, Any] | None = None,
        join_network: int | None = None,
    ) -> Completed:
        """Runs ``argv``; ``obligation`` (a policy's ``obligations.sandbox``) can only tighten.

        ``network="proxy"`` needs ``join_network``, the namespace of a running
        egress proxy: ``gate.run`` provides both (see :mod:`execgate.egress`);
        without it the run is refused with ``SandboxError``."""
        data = stdin.encode() if isinstance(stdin, str) else (stdin or b"")
        out = _core.run_sandboxed(
            [os.fspath(a) for a in argv],
            self.spec(join_network),
            data,
            None if obligation is None else dict(obligation),
        )
        return Completed(**out)

    async def run_async(
        self,
        argv: Sequence[str],
        *,
        stdin: bytes | str | None = None,
        obligation: Mapping[str, Any] | None = None,
    ) -> Completed:
        """:meth:`run` in a worker thread, so the event loop keeps going."""
        import asyncio  # imported here: it costs ~10 ms at import time

        return await asyncio.to_thread(self.run, argv, stdin=stdin, obligation=obligation)

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
from execgate.errors import ConfigurationError

__all__ = ["DEFAULT_ENV", "Completed", "Egress", "Limits", "Sandbox", "Secret", "parse_size"]

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


_TOKEN = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
#: Header names a credential may not set: they frame or route the request.
_FRAMING = frozenset(
    {"host", "content-length", "transfer-encoding", "connection", "keep-alive", "te", "trailer"}
    | {"upgrade", "expect", "proxy-authorization", "proxy-connection", "proxy-authenticate"}
)
_SECRET_BYTES = 64 << 10


@dataclass(frozen=True)
class Secret:
    """A credential's value for the egress proxy to inject: ``Secret("...")``,
    ``Secret(env="NAME")`` (the gate's environment, read when injected) or
    ``Secret(file="/run/secrets/key")`` (read when injected, one trailing
    newline dropped). Its repr never shows a value."""

    value: str | None = field(default=None, repr=False)
    env: str | None = None
    file: str | None = None

    def __post_init__(self) -> None:
        if sum(x is not None for x in (self.value, self.env, self.file)) != 1:
            raise ConfigurationError("a Secret is one of a value, env= or file=")
        if self.value is not None:
            try:
                _check_secret(self.value, "the value")
            except ValueError as e:
                raise ConfigurationError(str(e)) from None

    @property
    def source(self) -> str:
        """Where the value comes from, as the proxy may say it (never the value)."""
        if self.env is not None:
            return f"env {self.env}"
        return "a literal" if self.file is None else f"file {self.file}"

    def read(self) -> str:
        """The value (``ValueError`` naming the source, never the value, when
        it is missing or cannot be a header value)."""
        if self.value is not None:
            return self.value
        if self.env is not None:
            value = os.environ.get(self.env)
            if value is None:
                raise ValueError(f"the variable {self.env} is not set")
        else:
            try:
                with open(os.fspath(self.file or ""), "rb") as f:
                    data = f.read(_SECRET_BYTES + 1)
            except OSError as e:
                raise ValueError(f"cannot read {self.file}: {e.strerror}") from None
            if len(data) > _SECRET_BYTES:
                raise ValueError(f"{self.file} is over {_SECRET_BYTES} bytes")
            value = data.decode("latin-1").removesuffix("\n").removesuffix("\r")
        _check_secret(value, self.source)
        return value


def _check_secret(value: str, where: str) -> None:
    if not value or value != value.strip() or not all(0x20 <= ord(c) < 0x7F for c in value):
        raise ValueError(
            f"{where} is not a header value (empty, surrounding spaces, or a character"
            " outside printable ASCII)"
        )


@dataclass(frozen=True)
class Egress:
    """What the egress proxy of a ``network="proxy"`` run does besides deciding
    (README, "Egress privacy router").

    ``credentials`` maps an origin (``"https://api.example.com"``,
    ``"http://127.0.0.1:8080"``; a bare host means https on 443) to headers the
    proxy adds to every allowed request to it, after the decision, replacing
    any the tool sent: ``{"Authorization": Secret(env="API_TOKEN")}`` (a plain
    string is a literal secret). The tool never holds them; records name the
    headers injected, never their values. An https origin needs
    ``intercept_tls``: a tunnel the proxy cannot read cannot carry them.

    ``intercept_tls`` terminates the tool's TLS with an ephemeral CA that only
    the sandboxed child trusts, so each request inside a ``CONNECT`` is decided
    and redacted like a plain one; ``upstream_ca`` adds PEM trust anchors for
    the proxy's own (verified) connections to the real servers.
    """

    credentials: Mapping[str, Mapping[str, str | Secret]] = field(default_factory=dict, repr=False)
    intercept_tls: bool = False
    upstream_ca: Sequence[str | os.PathLike[str]] = ()

    def __post_init__(self) -> None:
        from execgate.netloc import origin

        injections: dict[tuple[str, str, int], tuple[tuple[str, Secret], ...]] = {}
        for where, headers in self.credentials.items():
            try:
                key = origin(where)
            except ValueError as e:
                raise ConfigurationError(f"credentials: {e}") from None
            if key[0] == "https" and not self.intercept_tls:
                raise ConfigurationError(
                    f"credentials for {where} need intercept_tls=True: without interception"
                    " the proxy cannot add a header inside the tool's TLS"
                )
            items = []
            for name, value in headers.items():
                if not _TOKEN.match(name) or name.lower() in _FRAMING:
                    raise ConfigurationError(
                        f"{name!r} cannot be a credential header (not a token, or it frames"
                        " the request)"
                    )
                items.append((name.lower(), value if isinstance(value, Secret) else Secret(value)))
            if key in injections:
                raise ConfigurationError(f"two entries for the origin of {where}")
            injections[key] = tuple(items)
        object.__setattr__(self, "_injections", injections)
        for path in self.upstream_ca:
            if not os.path.isfile(path):
                raise ConfigurationError(f"upstream_ca {os.fspath(path)!r} is not a file")

    @property
    def variables(self) -> set[str]:
        """The environment variables the credentials are read from."""
        found: dict[tuple[str, str, int], tuple[tuple[str, Secret], ...]]
        found = self._injections  # type: ignore[attr-defined]
        return {s.env for items in found.values() for _, s in items if s.env is not None}

    def injections(self, scheme: str, host: str, port: int) -> tuple[tuple[str, Secret], ...]:
        """The headers to inject into an allowed request to this origin."""
        found: dict[tuple[str, str, int], tuple[tuple[str, Secret], ...]]
        found = self._injections  # type: ignore[attr-defined]
        return found.get((scheme, host, port), ())


@dataclass(frozen=True)
class Sandbox:
    """How to run a tool. See the README's "Sandbox" section for each field.

    ``unix_sockets=True`` lets the tool create Unix sockets, and so connect to
    any named socket it can reach by path; off (the default), only
    ``socketpair`` works. ``egress`` configures the egress proxy of
    ``network="proxy"`` (credential injection, TLS interception).
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
    egress: Egress = field(default_factory=Egress)

    def __post_init__(self) -> None:
        passed = self.egress.variables & {*self.env_allow, *(self.env or {})}
        if passed:
            raise ConfigurationError(
                f"the credential variables {sorted(passed)} would be passed to the child"
                " (env_allow or env): the proxy injects them, the tool must not hold them"
            )

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

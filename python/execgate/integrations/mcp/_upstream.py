"""Keep-alive HTTP/1.1 connections from the HTTP relay to its one upstream MCP
server: h11 (the protocol) on asyncio streams, nothing else per request.

The relay sends one request per client request to the same origin, so a
general HTTP client's per-request work (URL merging, cookies, auth and
redirect hooks, pool bookkeeping that polls every idle socket) is most of
what relaying costs. Here a request is one h11 exchange on an idle
connection (a new one when none is idle); a connection goes back to the pool
only when its response was read to the end and both sides keep it alive.
"""

from __future__ import annotations

import asyncio
import ssl
import urllib.parse
from collections.abc import AsyncIterator, Iterable

import h11

__all__ = ["Upstream", "UpstreamError", "UpstreamResponse"]

_CHUNK = 1 << 16


class UpstreamError(Exception):
    """The upstream could not be reached, or broke the exchange off."""


class _Connection:
    __slots__ = ("h11", "idle_since", "reader", "writer")

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.h11 = h11.Connection(h11.CLIENT)
        self.idle_since = 0.0

    def usable(self, now: float, keep: float) -> bool:
        fresh = now - self.idle_since < keep
        return fresh and not (self.reader.at_eof() or self.writer.is_closing())

    def close(self) -> None:
        self.writer.close()


class UpstreamResponse:
    """One response: ``status_code``, ``headers`` (lowercase names), the body
    by :meth:`aiter_bytes`; :meth:`aclose` hands the connection back."""

    __slots__ = ("_conn", "_pool", "headers", "status_code")

    def __init__(self, pool: Upstream, conn: _Connection, head: h11.Response) -> None:
        self._pool = pool
        self._conn: _Connection | None = conn
        self.status_code = head.status_code
        self.headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in head.headers}

    async def aiter_bytes(self) -> AsyncIterator[bytes]:
        conn = self._conn
        if conn is None:
            return
        while True:
            event = await self._pool.next_event(conn)
            if isinstance(event, h11.Data):
                yield bytes(event.data)
            elif isinstance(event, h11.EndOfMessage):
                return
            else:
                raise UpstreamError(f"the upstream broke off its answer ({type(event).__name__})")

    async def aclose(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            self._pool.release(conn)


class Upstream:
    """Requests to ``url`` (``http://`` or ``https://``, verified with the
    system's trust anchors) over a pool of keep-alive connections."""

    def __init__(self, url: str, *, connect_timeout: float = 10.0, keep: float = 2.0) -> None:
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"--upstream must be an http:// or https:// URL, not {url!r}")
        self.host = parts.hostname
        self.port = parts.port or (443 if parts.scheme == "https" else 80)
        self.ssl = ssl.create_default_context() if parts.scheme == "https" else None
        self.target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        default = (parts.scheme == "https" and self.port == 443) or self.port == 80
        self.authority = parts.netloc.rpartition("@")[2] if not default else self.host
        self.connect_timeout = connect_timeout
        # A request is never sent twice (the upstream may have acted on it),
        # so a connection the upstream may be about to close for idleness
        # (uvicorn's default: after 5 s) is not reused.
        self.keep = keep
        self.idle: list[_Connection] = []

    async def _connect(self) -> _Connection:
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(self.host, self.port, ssl=self.ssl, limit=_CHUNK),
                self.connect_timeout,
            )
        except (OSError, asyncio.TimeoutError) as e:
            raise UpstreamError(f"cannot connect to {self.host}:{self.port}: {e!r}") from e
        return _Connection(reader, writer)

    async def request(
        self, method: str, headers: Iterable[tuple[bytes, bytes]], body: bytes = b""
    ) -> UpstreamResponse:
        """Sends one request; returns once the response's head is in."""
        fields = [(b"host", self.authority.encode()), *headers]
        if body or method == "POST":
            fields.append((b"content-length", str(len(body)).encode()))
        now = asyncio.get_running_loop().time()
        conn = None
        while self.idle and conn is None:
            conn = self.idle.pop()
            if not conn.usable(now, self.keep):
                conn.close()
                conn = None
        return await self._exchange(conn or await self._connect(), method, fields, body)

    async def _exchange(
        self, conn: _Connection, method: str, fields: list[tuple[bytes, bytes]], body: bytes
    ) -> UpstreamResponse:
        try:
            out = conn.h11.send(h11.Request(method=method, target=self.target, headers=fields))
            if body:
                out = (out or b"") + (conn.h11.send(h11.Data(data=body)) or b"")
            conn.writer.write((out or b"") + (conn.h11.send(h11.EndOfMessage()) or b""))
            await conn.writer.drain()
            while True:
                event = await self.next_event(conn)
                if isinstance(event, h11.Response):
                    return UpstreamResponse(self, conn, event)
                if not isinstance(event, h11.InformationalResponse):
                    raise UpstreamError(f"no answer from the upstream ({type(event).__name__})")
        except (OSError, h11.ProtocolError) as e:
            conn.close()
            raise UpstreamError(f"the upstream failed: {e!r}") from e
        except BaseException:
            conn.close()
            raise

    async def next_event(self, conn: _Connection) -> object:
        while True:
            try:
                event = conn.h11.next_event()
            except h11.ProtocolError as e:
                conn.close()
                raise UpstreamError(f"the upstream broke the protocol: {e}") from e
            if event is not h11.NEED_DATA:
                return event
            try:
                data = await conn.reader.read(_CHUNK)
            except OSError as e:
                conn.close()
                raise UpstreamError(f"the upstream broke off: {e!r}") from e
            conn.h11.receive_data(data)

    def release(self, conn: _Connection) -> None:
        """Back to the pool if the exchange is complete and kept alive, else closed."""
        if conn.h11.our_state is h11.DONE and conn.h11.their_state is h11.DONE:
            try:
                conn.h11.start_next_cycle()
            except h11.LocalProtocolError:
                conn.close()
                return
            conn.idle_since = asyncio.get_running_loop().time()
            if conn.usable(conn.idle_since, self.keep):
                self.idle.append(conn)
                return
        conn.close()

    async def aclose(self) -> None:
        while self.idle:
            self.idle.pop().close()

"""``execgate mcp --listen HOST:PORT --tokens FILE [sandbox flags] -- COMMAND``:
a stdio MCP server, started by the gateway for each HTTP session (confined as
over stdio) and served over Streamable HTTP (needs the ``mcp`` extra).

A stdio server holds one MCP session, so each HTTP MCP session gets its own
child: the stdio gateway itself (:class:`StdioProxy`, unchanged: the gating,
approvals, confinement and the accounting of a server that dies mid-call are
all its own), whose client side is two pipes to this front, with the principal
of the bearer token that opened the session. The front only authenticates,
keeps sessions and frames messages; it decides nothing.

- ``initialize`` without ``Mcp-Session-Id`` opens a session (a new child) and
  answers with its id; at ``max_sessions`` live sessions it gets 503. Every
  other request names its session: without one 400, one this token did not
  open (or one that ended) 404.
- A POST holding requests waits for their answers (SSE when the client accepts
  it, else JSON); one holding only notifications or responses gets 202. A
  request whose id is still in flight in the session is refused, not relayed
  (its answer could not be told from the first one's).
- The server's requests and notifications (and the gateway's
  ``elicitation/create``) go on the session's GET stream, else on the newest
  open SSE answer, else wait (up to ``_BACKLOG`` messages) for one to open.
  An answer whose POST is gone (the client went away) is dropped: the call
  ran to its end in the session and is recorded with its outcome.
- A session ends on DELETE, after ``idle`` seconds without a request while
  nothing is in flight, when its server exits, and when the gateway stops: the
  child's stdin closes, the stdio gateway lets the server finish what is in
  flight (``grace`` seconds) and stops it.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import os
import secrets
import threading
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from execgate.errors import SandboxError
from execgate.integrations.mcp._gateway import INVALID_REQUEST, PARSE_ERROR, error, id_key
from execgate.integrations.mcp.http import _SSE_HEADERS, Front, refused
from execgate.integrations.mcp.stdio import StdioProxy, _Lines

if TYPE_CHECKING:
    from execgate.integrations.mcp._gateway import Gateway
    from execgate.sandbox import Sandbox

__all__ = ["DEFAULT_IDLE", "DEFAULT_MAX_SESSIONS", "Spawner"]

#: Live HTTP sessions (children) at most, unless ``--max-sessions`` says otherwise.
DEFAULT_MAX_SESSIONS = 16
#: Seconds a session may go without a request (nothing in flight) before it ends.
DEFAULT_IDLE = 600.0
#: Server messages held for a session with no stream open to take them.
_BACKLOG = 256

_END = object()  # put on a stream's queue when its session ends


def _event(line: bytes) -> bytes:
    return b"event: message\ndata: " + line + b"\n\n"


def _requests(msg: Any) -> list[tuple[str, Any]]:
    """The ids of the requests in a client message (or batch): what the POST
    waits for."""
    items = msg if isinstance(msg, list) else [msg]
    keys = []
    for item in items:
        if isinstance(item, dict) and "method" in item:
            key = id_key(item.get("id"))
            if key is not None:
                keys.append(key)
    return keys


class _Reader(asyncio.Protocol):
    """The stdio gateway's output, line by line, to the session."""

    def __init__(self, child: _Child, cap: int) -> None:
        self.child = child
        self.lines = _Lines(cap)

    def data_received(self, data: bytes) -> None:
        for line in self.lines.feed(data):
            if isinstance(line, bytes):
                self.child.received(line)

    def connection_lost(self, exc: Exception | None) -> None:
        self.child.ended()


class _Child:
    """One HTTP session: a :class:`StdioProxy` in its own thread, driving its
    own server, and what waits for the server's messages."""

    def __init__(self, spawner: Spawner, sid: str, digest: str, proxy: StdioProxy) -> None:
        self.spawner = spawner
        self.sid = sid
        self.digest = digest
        self.proxy = proxy
        # request id -> the queue of the POST waiting for its answer.
        self.waiters: dict[tuple[str, Any], asyncio.Queue[Any]] = {}
        self.streams: list[asyncio.Queue[Any]] = []  # open SSE answers, newest last
        self.listener: asyncio.Queue[Any] | None = None  # the GET stream
        self.backlog: collections.deque[bytes] = collections.deque()
        self.last = asyncio.get_running_loop().time()
        self.done = False
        self.writer: asyncio.WriteTransport | None = None
        self.thread = threading.Thread(target=self._run, name="execgate-mcp-session", daemon=True)

    async def start(self, to_proxy: int, from_proxy: int) -> None:
        loop = asyncio.get_running_loop()
        self.thread.start()
        self.writer, _ = await loop.connect_write_pipe(
            asyncio.Protocol, os.fdopen(to_proxy, "wb", buffering=0)
        )
        await loop.connect_read_pipe(
            lambda: _Reader(self, 2 * self.proxy.max_message + 4096),
            os.fdopen(from_proxy, "rb", buffering=0),
        )

    def _run(self) -> None:
        try:
            self.proxy.run()
        except SandboxError as e:
            self.spawner.log(f"session {self.sid[:8]}: the sandbox failed: {e}")
        except Exception as e:  # the session's thread must not die silently
            self.spawner.log(f"session {self.sid[:8]}: the stdio gateway failed: {e!r}")

    def send(self, line: bytes) -> None:
        self.last = asyncio.get_running_loop().time()
        if self.writer is not None and not self.writer.is_closing():
            self.writer.write(line)

    def received(self, line: bytes) -> None:
        """A line from the stdio gateway: an answer to a waiting POST, else
        a message for whichever stream can take it."""
        try:
            msg = json.loads(line)
        except ValueError:
            return
        if isinstance(msg, list):  # a batch of answers (refusals of a client batch)
            for item in msg:
                self.received(json.dumps(item, separators=(",", ":")).encode())
            return
        if isinstance(msg, dict) and "method" not in msg:
            key = id_key(msg.get("id"))
            queue = self.waiters.pop(key, None) if key is not None else None
            if queue is not None:
                queue.put_nowait((True, line))
            else:  # its client went away (or sent no request): no one to tell
                self.spawner.log(f"session {self.sid[:8]}: dropped an answer no request waits for")
            return
        self.unsolicited(line)

    def unsolicited(self, line: bytes) -> None:
        if self.listener is not None:
            self.listener.put_nowait((False, line))
        elif self.streams:
            self.streams[-1].put_nowait((False, line))
        else:
            if len(self.backlog) >= _BACKLOG:
                self.backlog.popleft()
                self.spawner.log(f"session {self.sid[:8]}: dropped a server message (no stream)")
            self.backlog.append(line)

    def ended(self) -> None:
        """The stdio gateway is done (the server exited, or the session was
        ended): every waiter gets its answer, every stream its end."""
        if self.done:
            return
        self.done = True
        self.spawner.forget(self)
        for key, queue in self.waiters.items():
            why = "the MCP server's session ended before it answered"
            queue.put_nowait((True, json.dumps(error(key[1], -32603, why)).encode()))
        self.waiters.clear()
        for queue in (*self.streams, *([self.listener] if self.listener else [])):
            queue.put_nowait(_END)
        self.end()

    def end(self) -> None:
        """Closes the server's side: the stdio gateway winds the session down."""
        if self.writer is not None:
            self.writer.close()


class Spawner(Front):
    """The Starlette endpoint serving ``command`` (one child per session)."""

    def __init__(
        self,
        gateway: Gateway,
        command: Sequence[str],
        *,
        sandbox: Sandbox | None,
        tokens: Mapping[str, dict[str, Any]],
        max_message: int,
        approval_timeout: float,
        log: Callable[[str], None],
        max_sessions: int = DEFAULT_MAX_SESSIONS,
        idle: float = DEFAULT_IDLE,
        grace: float = 5.0,
    ) -> None:
        super().__init__(tokens, max_message, log)
        self.gateway = gateway
        self.command = list(command)
        self.sandbox = sandbox
        self.approval_timeout = approval_timeout
        self.max_sessions = max_sessions
        self.idle = idle
        self.grace = grace
        self.sessions: dict[tuple[str, str], _Child] = {}
        self.children: list[_Child] = []  # every child started, until its thread is done
        self._reaper: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    # -- lifecycle ---------------------------------------------------------------

    async def _open(self, digest: str, principal: dict[str, Any]) -> _Child | Response:
        if len(self.sessions) >= self.max_sessions:
            self.log(f"503 for initialize: {self.max_sessions} sessions are live (--max-sessions)")
            return refused(503, -32603, "too many live MCP sessions; try again later")
        self.children = [c for c in self.children if c.thread.is_alive()]
        sid = secrets.token_hex(16)
        to_proxy_r, to_proxy_w = os.pipe()
        from_proxy_r, from_proxy_w = os.pipe()
        proxy = StdioProxy(
            self.gateway,
            self.command,
            principal=principal,
            sandbox=self.sandbox,
            max_message=self.max_message,
            approval_timeout=self.approval_timeout,
            grace=self.grace,
            client_in=to_proxy_r,
            client_out=from_proxy_w,
            log=self.log,
        )
        proxy.session.id = sid  # context.session: the Mcp-Session-Id
        child = _Child(self, sid, digest, proxy)
        self.sessions[(sid, digest)] = child
        self.children.append(child)
        await child.start(to_proxy_w, from_proxy_r)
        if self._reaper is None and self.idle > 0:
            self._reaper = asyncio.get_running_loop().create_task(self._reap())
        return child

    def forget(self, child: _Child) -> None:
        self.sessions.pop((child.sid, child.digest), None)

    async def _reap(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(min(self.idle / 4, 30.0))
            for child in list(self.sessions.values()):
                if not child.waiters and loop.time() - child.last > self.idle:
                    self.log(f"session {child.sid[:8]} idle for {self.idle:g} s: ended")
                    self.forget(child)
                    child.end()

    @contextlib.asynccontextmanager
    async def lifespan(self, _app: Any) -> AsyncIterator[None]:
        """The application's lifespan: when it stops, every session ends and
        every server is stopped before the gateway exits."""
        self._loop = asyncio.get_running_loop()
        try:
            yield
        finally:
            self.end_all()
            if self._reaper is not None:
                self._reaper.cancel()
            await asyncio.to_thread(self._join)

    def stopping(self) -> None:
        """From any thread (a signal handler): the gateway is stopping; every
        session ends now, so that their streams close."""
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self.end_all)

    def end_all(self) -> None:
        for child in self.children:
            self.forget(child)
            child.end()

    def _join(self) -> None:
        """Waits for every session's stdio gateway (and so its server) to be done."""
        for child in self.children:
            child.thread.join(3 * self.grace)
            if child.thread.is_alive():
                self.log(f"session {child.sid[:8]}: its server did not stop")

    # -- requests ----------------------------------------------------------------

    async def handle(self, request: Request) -> Response:
        who = self.principal(request)
        if isinstance(who, Response):
            return who
        digest, principal = who
        sid = request.headers.get("mcp-session-id") or ""
        if request.method == "POST":
            return await self._post(request, digest, principal, sid)
        if not sid:
            return refused(400, INVALID_REQUEST, "the Mcp-Session-Id header is required")
        child = self._session(request, sid, digest)
        if isinstance(child, Response):
            return child
        if request.method == "DELETE":
            self.forget(child)
            child.end()
            return Response(status_code=200)
        if child.listener is not None:
            return refused(409, INVALID_REQUEST, "this session's GET stream is already open")
        child.listener = asyncio.Queue()
        return StreamingResponse(self._listen(child, child.listener), headers=_SSE_HEADERS)

    def _session(self, request: Request, sid: str, digest: str) -> _Child | Response:
        child = self.sessions.get((sid, digest))
        if child is None:
            self.log(f"404 for {request.method}: unknown Mcp-Session-Id")
            return refused(404, INVALID_REQUEST, "unknown or expired Mcp-Session-Id")
        return child

    async def _post(
        self, request: Request, digest: str, principal: dict[str, Any], sid: str
    ) -> Response:
        body = await self.body(request)
        if isinstance(body, Response):
            return body
        try:
            msg = json.loads(body.decode())  # UTF-8 only: the stdio gateway reads lines of it
        except ValueError:
            self.log("refused a body that is not JSON")
            return refused(400, PARSE_ERROR, "not JSON")
        if sid:
            child = self._session(request, sid, digest)
        elif isinstance(msg, dict) and msg.get("method") == "initialize":
            child = await self._open(digest, principal)
        else:
            return refused(400, INVALID_REQUEST, "the Mcp-Session-Id header is required")
        if isinstance(child, Response):
            return child
        keys = _requests(msg)
        if len(set(keys)) < len(keys) or any(k in child.waiters for k in keys):
            # Its answer could not be told from the first one's: never relayed.
            self.log("refused a request whose id is still in flight")
            why = "the id is already in use by a request in flight"
            return JSONResponse(
                error(keys[0][1] if isinstance(msg, dict) else None, INVALID_REQUEST, why)
            )
        queue: asyncio.Queue[Any] = asyncio.Queue()
        for key in keys:
            child.waiters[key] = queue
        # JSON strings cannot hold a raw newline: the ones in a body are
        # whitespace, and the body is one stdio line without them. The stdio
        # gateway parses it and hands the server what it decided.
        child.send(body.replace(b"\n", b" ").replace(b"\r", b" ") + b"\n")
        headers = {"mcp-session-id": child.sid}
        if not keys:
            return Response(status_code=202, headers=headers)
        if "text/event-stream" in request.headers.get("accept", ""):
            return StreamingResponse(
                self._answers(child, queue, keys), headers={**_SSE_HEADERS, **headers}
            )
        lines: list[bytes] = []
        while len(lines) < len(keys):
            answer, line = await queue.get()
            if answer:
                lines.append(line)
        single = isinstance(msg, dict)
        content = lines[0] if single else b"[" + b",".join(lines) + b"]"
        return Response(content, media_type="application/json", headers=headers)

    async def _answers(
        self, child: _Child, queue: asyncio.Queue[Any], keys: list[tuple[str, Any]]
    ) -> AsyncIterator[bytes]:
        """One POST's SSE answer: its answers, and the server's other messages
        while no GET stream takes them."""
        child.streams.append(queue)
        try:
            while child.backlog and child.listener is None:
                yield _event(child.backlog.popleft())
            left = len(keys)
            while left:
                item = await queue.get()
                if item is _END:
                    return
                answer, line = item
                left -= answer
                yield _event(line)
        finally:
            child.streams.remove(queue)
            for key in keys:  # the client went away before its answer came
                if child.waiters.get(key) is queue:
                    del child.waiters[key]
            while not queue.empty():  # what it left unsaid goes to another stream
                item = queue.get_nowait()
                if item is not _END and not item[0]:
                    child.unsolicited(item[1])

    async def _listen(self, child: _Child, queue: asyncio.Queue[Any]) -> AsyncIterator[bytes]:
        """The session's GET stream: the server's messages that answer no POST."""
        try:
            while child.backlog:
                yield _event(child.backlog.popleft())
            while not child.done:
                item = await queue.get()
                if item is _END:
                    return
                yield _event(item[1])
        finally:
            if child.listener is queue:
                child.listener = None

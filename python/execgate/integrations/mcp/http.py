"""``execgate mcp --listen HOST:PORT --upstream URL --tokens FILE``: the
gateway over Streamable HTTP (needs the ``mcp`` extra).

Relays POST (JSON or SSE answers), GET (the server's SSE stream) and DELETE
to the upstream server with the ``Mcp-Session-Id`` and
``Mcp-Protocol-Version`` headers, and hands every JSON-RPC message to the
:class:`~execgate.integrations.mcp._gateway.Gateway`, as over stdio.

The principal comes from authentication, never from the client's say-so: the
tokens file maps the SHA-256 (lowercase hex) of each bearer token to a
principal, ``{"<sha256>": {"id": "alice", "roles": ["dev"]}}``. A request
without a valid token gets 401 and a line on stderr. A session belongs to the
token that opened it: a request naming a session id the relay did not see
opened for that token gets 404, and once the upstream issues session ids a
request without one (other than ``initialize``) gets 400, neither relayed.

A call that needs approval is held when the client declared the elicitation
capability and reads an SSE answer: the relay answers the POST with an SSE
stream, puts an ``elicitation/create`` to the client on it (a request related
to the client's request, as the transport allows), takes the client's answer
from its next POST (``202``), decides, and relays the server's answer on the
same stream. No capability, no SSE, no answer within the timeout, or a client
that goes away: denied (fail closed).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import sys
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import anyio
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from execgate.integrations.mcp._gateway import (
    ASK_PREFIX,
    DEFAULT_MAX_MESSAGE,
    INVALID_REQUEST,
    PARSE_ERROR,
    Forward,
    Gateway,
    Hold,
    Reply,
    Session,
    elicit_result,
    encode,
    error,
    id_key,
)
from execgate.integrations.mcp._upstream import Upstream, UpstreamError, UpstreamResponse

if TYPE_CHECKING:
    from execgate.integrations.mcp.spawn import Spawner
    from execgate.sandbox import Sandbox

__all__ = ["Front", "app", "load_tokens", "refused", "serve"]

_RELAYED = frozenset(
    (b"content-type", b"accept", b"mcp-session-id", b"mcp-protocol-version", b"last-event-id")
)


def load_tokens(path: str) -> dict[str, dict[str, Any]]:
    """The tokens file: ``{sha256_hex: principal}``; each principal needs an ``id``."""
    with open(path, encoding="utf-8") as f:
        raw = json.load(f)
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: the tokens file must map SHA-256 hex digests to principals")
    tokens: dict[str, dict[str, Any]] = {}
    for digest, principal in raw.items():
        if not (isinstance(principal, dict) and isinstance(principal.get("id"), str)):
            raise ValueError(f"{path}: the principal for {digest[:12]}... needs an id")
        if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest.lower()):
            raise ValueError(f"{path}: {digest[:12]}... is not a SHA-256 hex digest")
        tokens[digest.lower()] = dict(principal)
    return tokens


_SSE_HEADERS = {"content-type": "text/event-stream", "cache-control": "no-cache"}


def _event_bytes(msg: Any) -> bytes:
    """One server-sent event carrying ``msg``."""
    return b"event: message\ndata: " + encode(msg) + b"\n\n"


def refused(status: int, code: int, message: str) -> JSONResponse:
    return JSONResponse(error(None, code, message), status_code=status)


class Front:
    """What both HTTP forms share: bearer-token authentication and the capped
    request body."""

    def __init__(
        self, tokens: Mapping[str, dict[str, Any]], max_message: int, log: Callable[[str], None]
    ) -> None:
        self.tokens = tokens
        self.max_message = max_message
        self.log = log

    def principal(self, request: Request) -> tuple[str, dict[str, Any]] | Response:
        """``(token digest, principal)`` of a valid bearer token, else the 401
        (and a line in the log)."""
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() == "bearer" and token:
            digest = hashlib.sha256(token.strip().encode()).hexdigest()
            for known, principal in self.tokens.items():
                if hmac.compare_digest(known, digest):
                    return digest, principal
        self.log(f"401 for {request.method} from {request.client}: no valid bearer token")
        return JSONResponse(
            error(None, INVALID_REQUEST, "a valid bearer token is required"),
            status_code=401,
            headers={"WWW-Authenticate": 'Bearer realm="execgate"'},
        )

    async def body(self, request: Request) -> bytes | Response:
        """The request body, or the 413 when it is over the cap (never read whole)."""
        length = request.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > self.max_message:
            self.log(f"refused a {length}-byte request (over the {self.max_message}-byte cap)")
            return self.too_large()
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > self.max_message:
                self.log(f"refused a request over the {self.max_message}-byte cap")
                return self.too_large()
        return bytes(body)

    def too_large(self) -> Response:
        return refused(413, INVALID_REQUEST, f"message over the {self.max_message}-byte cap")


class _Relay(Front):
    def __init__(
        self,
        gateway: Gateway,
        upstream: str,
        tokens: Mapping[str, dict[str, Any]],
        max_message: int,
        approval_timeout: float,
        log: Callable[[str], None],
    ) -> None:
        super().__init__(tokens, max_message, log)
        self.gateway = gateway
        self.upstream = upstream
        self.approval_timeout = approval_timeout
        self.sessions: dict[tuple[str, str], Session] = {}
        # Once the upstream has issued a session id, every request but
        # initialize must name a session this relay knows.
        self.stateful = False
        # Our elicitation/create requests awaiting the client's answer:
        # ask id -> (token digest, session id, future).
        self.asked: dict[str, tuple[str, str, asyncio.Future[Any]]] = {}
        self.client = Upstream(upstream)

    @contextlib.asynccontextmanager
    async def lifespan(self, _app: Starlette) -> AsyncIterator[None]:
        try:
            yield
        finally:
            await self.client.aclose()

    @staticmethod
    def _headers(request: Request) -> list[tuple[bytes, bytes]]:
        # The ASGI scope's raw headers: names already lowercase.
        return [(k, v) for k, v in request.scope["headers"] if k in _RELAYED]

    async def handle(self, request: Request) -> Response:
        who = self.principal(request)
        if isinstance(who, Response):
            return who
        digest, principal = who
        sid = request.headers.get("mcp-session-id") or ""
        if sid:
            known = self.sessions.get((sid, digest))
            if known is None:
                # Never relayed: a session this token did not open (or one
                # that ended) gets what the upstream would say, undecided.
                self.log(f"404 for {request.method}: unknown Mcp-Session-Id")
                return refused(404, INVALID_REQUEST, "unknown or expired Mcp-Session-Id")
            session = known
        else:
            session = Session(principal=principal)
        if request.method == "POST":
            return await self._post(request, session, digest, sid)
        if not sid and self.stateful:
            return refused(400, INVALID_REQUEST, "the Mcp-Session-Id header is required")
        try:
            response = await self.client.request(request.method, self._headers(request))
        except UpstreamError as e:
            self.log(f"the upstream failed: {e}")
            return refused(502, -32603, "the upstream MCP server could not be reached")
        if request.method == "DELETE" and response.status_code < 300:
            self.sessions.pop((sid, digest), None)
        return self._relay(response, session, None)

    async def _post(self, request: Request, session: Session, digest: str, sid: str) -> Response:
        body = await self.body(request)
        if isinstance(body, Response):
            return body
        try:
            msg = json.loads(body)
        except ValueError:
            self.log("refused a body that is not JSON")
            return refused(400, PARSE_ERROR, "not JSON")
        if isinstance(msg, dict) and "method" not in msg:
            ask_id = msg.get("id")
            if isinstance(ask_id, str) and ask_id.startswith(ASK_PREFIX):
                self._answered(ask_id, msg, digest, session)
                return Response(status_code=202)
        initialize = isinstance(msg, dict) and msg.get("method") == "initialize"
        if not sid and self.stateful and not initialize:
            return refused(400, INVALID_REQUEST, "the Mcp-Session-Id header is required")
        # Approval can be asked on this request's own SSE stream, when the
        # client reads one (the spec lets a server send requests related to
        # the client's request there).
        can_ask = "text/event-stream" in request.headers.get("accept", "")
        verdict = self.gateway.inbound(session, msg, can_ask=can_ask)
        if isinstance(verdict, Reply):
            if verdict.message is None:
                return Response(status_code=202)
            return JSONResponse(verdict.message)
        key = id_key(msg.get("id")) if isinstance(msg, dict) else None
        headers = self._headers(request)
        if isinstance(verdict, Hold):
            return StreamingResponse(
                self._held(verdict, session, digest, headers, key), headers=_SSE_HEADERS
            )
        try:  # what was decided, not the client's bytes
            response = await self._send(headers, encode(verdict.message))
        except UpstreamError as e:
            self.log(f"the upstream failed: {e}")
            replies = self._fail(session, key, "the upstream MCP server could not be reached")
            return JSONResponse(replies[0] if replies else error(None, -32603, "upstream failed"))
        new_sid = response.headers.get("mcp-session-id")
        if initialize and new_sid and (new_sid, digest) not in self.sessions:
            self.stateful = True
            session.id = new_sid
            self.sessions[(new_sid, digest)] = session
        return self._relay(response, session, key)

    async def _send(self, headers: list[tuple[bytes, bytes]], body: bytes) -> UpstreamResponse:
        return await self.client.request("POST", headers, body)

    def _answered(self, ask_id: str, msg: dict[str, Any], digest: str, session: Session) -> None:
        asked = self.asked.get(ask_id)
        if asked is None or asked[0] != digest or asked[1] != session.id:
            # Only the client the question was put to can answer it.
            self.log(f"ignored an answer to {ask_id!r}: no such question in this session")
            return
        if not asked[2].done():
            asked[2].set_result(msg)

    async def _held(
        self,
        hold: Hold,
        session: Session,
        digest: str,
        headers: list[tuple[bytes, bytes]],
        key: Any,
    ) -> AsyncIterator[bytes]:
        """A call awaiting approval: asks the client on this request's SSE
        stream, decides with its answer, then relays the server's answer on
        the same stream."""
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.asked[hold.ask_id] = (digest, session.id, future)
        answer: Any = None
        decided: Forward | Reply | None = None
        try:
            yield _event_bytes(hold.request())
            try:
                answer = elicit_result(await asyncio.wait_for(future, self.approval_timeout))
            except asyncio.TimeoutError:
                self.log(f"no answer to the approval of tool call id {hold.message['id']!r}")
            decided = self.gateway.answer(session, hold, answer)
        finally:
            self.asked.pop(hold.ask_id, None)
            if decided is None:  # the client went away while asked: a denial, recorded
                self.gateway.answer(session, hold, None)
        if not isinstance(decided, Forward):
            if decided is not None:
                yield _event_bytes(decided.message)
            return
        try:
            response = await self._send(headers, encode(decided.message))
        except UpstreamError as e:
            self.log(f"the upstream failed: {e}")
            for out in self._fail(session, key, "the upstream MCP server could not be reached"):
                yield _event_bytes(out)
            return
        async for chunk in self._answers(response, session, key, sse=True):
            yield chunk

    def _fail(
        self, session: Session, key: Any, why: str, error_type: str = "upstream_failed"
    ) -> list[Any]:
        pending = session.pending.get(key) if key is not None else None
        if pending is None:
            return []
        one = Session(principal=session.principal, pending={key: session.pending.pop(key)})
        return self.gateway.fail_pending(one, why, error_type)

    def _relay(self, response: UpstreamResponse, session: Session, key: Any) -> Response:
        headers = {
            k: v
            for k, v in response.headers.items()
            if k.lower() in ("mcp-session-id", "content-type", "cache-control")
        }
        sse = response.headers.get("content-type", "").startswith("text/event-stream")
        return StreamingResponse(
            self._answers(response, session, key, sse=sse),
            status_code=response.status_code,
            headers=headers,
        )

    async def _answers(
        self, response: UpstreamResponse, session: Session, key: Any, *, sse: bool
    ) -> AsyncIterator[bytes]:
        """What the client gets of the upstream's answer to one POST (or
        GET): SSE events when ``sse``, else one JSON body. Whatever the
        request leaves undecided is recorded as failed on the way out: the
        upstream broke off (``upstream_failed``) or the client went away
        (``client_disconnected``)."""
        why, error_type = "the client disconnected", "client_disconnected"

        def frame(msg: Any) -> bytes:
            return _event_bytes(msg) if sse else encode(msg)

        try:
            if response.headers.get("content-type", "").startswith("text/event-stream"):
                async for event in _sse(response, self.max_message):
                    yield self._event(session, event)
                    self.gateway.finish(session)  # once the answer is on its way
            else:
                data = bytearray()
                async for chunk in response.aiter_bytes():
                    data += chunk
                    if len(data) > self.max_message:
                        for out in self.gateway.oversized(session, bytes(data), self.max_message):
                            yield frame(out)
                        return
                if data:
                    try:
                        msg = json.loads(data)
                    except ValueError:
                        msg = None
                    if msg is None:
                        if not sse:
                            yield bytes(data)
                    else:
                        out = self.gateway.outbound(session, msg)
                        if sse:
                            for item in out:
                                yield frame(item)
                        elif out:
                            yield frame(out[0] if len(out) == 1 else out)
            why, error_type = "the upstream MCP server sent no answer", "upstream_failed"
            if sse:
                for out in self._fail(session, key, why, error_type):
                    yield frame(out)
        except UpstreamError as e:
            self.log(f"the upstream broke off: {e}")
            for out in self._fail(session, key, "the upstream MCP server broke off"):
                yield frame(out)
        finally:
            self.gateway.finish(session)
            self._fail(session, key, why, error_type)
            with anyio.CancelScope(shield=True):
                await response.aclose()

    def _event(self, session: Session, event: list[tuple[bytes, bytes]]) -> bytes:
        lines = []
        for field, value in event:
            if field != b"data":
                lines.append(field + b": " + value)
                continue
            try:
                msg = json.loads(value)
            except ValueError:
                continue
            out = self.gateway.outbound(session, msg)
            if len(out) == 1 and out[0] is msg:  # nothing to change: as it came (as over stdio)
                lines.append(b"data: " + value)
            else:
                lines.extend(b"data: " + encode(item) for item in out)
        return b"\n".join(lines) + b"\n\n"


async def _sse(response: UpstreamResponse, cap: int) -> AsyncIterator[list[tuple[bytes, bytes]]]:
    """Server-sent events as ``[(field, value), ...]``, one list per event
    (lines end with LF or CRLF). An event over ``cap`` bytes loses its data
    lines, and no line is held longer than that."""
    buf = bytearray()
    event: list[tuple[bytes, bytes]] = []
    size = 0
    skipping = False  # inside a line over the cap

    def dropped() -> list[tuple[bytes, bytes]]:
        return [(f, v) for f, v in event if f != b"data"]

    async for chunk in response.aiter_bytes():
        buf += chunk
        start = 0
        while (nl := buf.find(b"\n", start)) >= 0:
            line = bytes(buf[start : nl - 1 if nl > start and buf[nl - 1] == 13 else nl])
            start = nl + 1
            if skipping:
                skipping = False
                continue
            if not line:
                if event:
                    yield event
                event, size = [], 0
                continue
            size += len(line)
            if size > cap:
                event = dropped()
                continue
            field, _, value = line.partition(b":")
            event.append((field, value[1:] if value[:1] == b" " else value))
        del buf[:start]
        if len(buf) > cap:
            skipping, size, event = True, cap + 1, dropped()
            buf.clear()
    if event:
        yield event


def app(
    gateway: Gateway,
    *,
    upstream: str | None = None,
    command: Sequence[str] = (),
    sandbox: Sandbox | None = None,
    tokens: Mapping[str, dict[str, Any]],
    max_message: int = DEFAULT_MAX_MESSAGE,
    approval_timeout: float = 300.0,
    log: Callable[[str], None] | None = None,
    **spawn: Any,
) -> Starlette:
    """The Starlette application relaying to ``upstream``, or serving
    ``command`` (a stdio server, one child per session, confined by
    ``sandbox``; ``spawn`` goes to :class:`~execgate.integrations.mcp.spawn.Spawner`).
    A call awaiting approval waits ``approval_timeout`` seconds for the
    human's answer. The application's ``state.front`` is the endpoint."""
    say = log or (lambda line: print(f"execgate mcp: {line}", file=sys.stderr, flush=True))
    front: _Relay | Spawner
    if upstream is not None:
        front = _Relay(gateway, upstream, tokens, max_message, approval_timeout, say)
    else:
        from execgate.integrations.mcp.spawn import Spawner

        front = Spawner(
            gateway,
            command,
            sandbox=sandbox,
            tokens=tokens,
            max_message=max_message,
            approval_timeout=approval_timeout,
            log=say,
            **spawn,
        )
    application = Starlette(
        routes=[Route("/{path:path}", front.handle, methods=["GET", "POST", "DELETE"])],
        lifespan=front.lifespan,
    )
    application.state.front = front
    return application


class _Server(uvicorn.Server):
    """Tells ``stopping`` as soon as the gateway is told to stop (before
    uvicorn waits for the open streams to close)."""

    def __init__(self, config: uvicorn.Config, stopping: Callable[[], None]) -> None:
        super().__init__(config)
        self.stopping = stopping

    def handle_exit(self, sig: int, frame: Any) -> None:
        self.stopping()
        super().handle_exit(sig, frame)


def serve(
    gateway: Gateway,
    *,
    listen: str,
    tokens: str,
    upstream: str | None = None,
    command: Sequence[str] = (),
    sandbox: Sandbox | None = None,
    max_message: int = DEFAULT_MAX_MESSAGE,
    approval_timeout: float = 300.0,
    **spawn: Any,
) -> int:
    """Serves the gateway on ``listen`` (``HOST:PORT``) until interrupted;
    spawned sessions are ended and their servers stopped before it returns."""
    host, _, port = listen.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"--listen must be HOST:PORT, not {listen!r}")
    application = app(
        gateway,
        upstream=upstream,
        command=command,
        sandbox=sandbox,
        tokens=load_tokens(tokens),
        max_message=max_message,
        approval_timeout=approval_timeout,
        **spawn,
    )
    front = application.state.front
    # No proxy headers: request.client (in the 401 lines) is the peer, and
    # nothing is done per request that the gateway does not use.
    config = uvicorn.Config(
        application,
        host=host,
        port=int(port),
        log_level="warning",
        access_log=False,
        proxy_headers=False,
    )
    if isinstance(front, _Relay):
        uvicorn.Server(config).run()
    else:
        config.timeout_graceful_shutdown = int(3 * front.grace) + 1
        _Server(config, front.stopping).run()
    return 0

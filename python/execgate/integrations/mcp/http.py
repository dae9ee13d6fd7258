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
token that opened it. Approval by elicitation is not offered over HTTP yet: a
call that needs approval is denied pending approval (fail closed).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import sys
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

import httpx2
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from execgate.integrations.mcp._gateway import (
    DEFAULT_MAX_MESSAGE,
    INVALID_REQUEST,
    PARSE_ERROR,
    Forward,
    Gateway,
    Reply,
    Session,
    error,
    id_key,
)

__all__ = ["app", "load_tokens", "serve"]

_RELAYED = ("content-type", "accept", "mcp-session-id", "mcp-protocol-version", "last-event-id")


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


class _Relay:
    def __init__(
        self,
        gateway: Gateway,
        upstream: str,
        tokens: Mapping[str, dict[str, Any]],
        max_message: int,
        log: Callable[[str], None],
    ) -> None:
        self.gateway = gateway
        self.upstream = upstream
        self.tokens = tokens
        self.max_message = max_message
        self.log = log
        self.sessions: dict[tuple[str, str], Session] = {}
        self.client = httpx2.AsyncClient(timeout=httpx2.Timeout(None, connect=10.0))

    def _principal(self, request: Request) -> tuple[str, dict[str, Any]] | None:
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token:
            return None
        digest = hashlib.sha256(token.strip().encode()).hexdigest()
        for known, principal in self.tokens.items():
            if hmac.compare_digest(known, digest):
                return digest, principal
        return None

    def _session(self, request: Request, digest: str, principal: dict[str, Any]) -> Session:
        sid = request.headers.get("mcp-session-id") or ""
        session = self.sessions.get((sid, digest))
        if session is None:
            session = Session(principal=principal)
            if sid:
                session.id = sid
                self.sessions[(sid, digest)] = session
        return session

    def _headers(self, request: Request) -> dict[str, str]:
        return {k: v for k, v in request.headers.items() if k.lower() in _RELAYED}

    async def handle(self, request: Request) -> Response:
        who = self._principal(request)
        if who is None:
            self.log(f"401 for {request.method} from {request.client}: no valid bearer token")
            return JSONResponse(
                error(None, INVALID_REQUEST, "a valid bearer token is required"),
                status_code=401,
                headers={"WWW-Authenticate": 'Bearer realm="execgate"'},
            )
        digest, principal = who
        session = self._session(request, digest, principal)
        if request.method == "POST":
            return await self._post(request, session, digest)
        upstream = self.client.build_request(
            request.method, self.upstream, headers=self._headers(request)
        )
        response = await self.client.send(upstream, stream=True)
        return self._relay(response, session, None)

    async def _post(self, request: Request, session: Session, digest: str) -> Response:
        length = request.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > self.max_message:
            self.log(f"refused a {length}-byte request (over the {self.max_message}-byte cap)")
            return JSONResponse(error(None, INVALID_REQUEST, "message too large"), status_code=413)
        body = b""
        async for chunk in request.stream():
            body += chunk
            if len(body) > self.max_message:
                self.log(f"refused a request over the {self.max_message}-byte cap")
                return JSONResponse(
                    error(None, INVALID_REQUEST, "message too large"), status_code=413
                )
        try:
            msg = json.loads(body)
        except ValueError:
            return JSONResponse(error(None, PARSE_ERROR, "not JSON"), status_code=400)
        session.elicitation = False  # no approval by elicitation over HTTP: fail closed
        verdict = self.gateway.inbound(session, msg)
        session.elicitation = False
        if isinstance(verdict, Reply):
            if verdict.message is None:
                return Response(status_code=202)
            return JSONResponse(verdict.message)
        if not isinstance(verdict, Forward):
            raise TypeError(f"unexpected verdict {type(verdict).__name__}")
        out = body if verdict.message is msg else json.dumps(verdict.message).encode()
        key = id_key(msg.get("id")) if isinstance(msg, dict) else None
        try:
            response = await self.client.send(
                self.client.build_request(
                    "POST", self.upstream, headers=self._headers(request), content=out
                ),
                stream=True,
            )
        except httpx2.HTTPError as e:
            self.log(f"the upstream failed: {e}")
            replies = self._fail(session, key, "the upstream MCP server could not be reached")
            return JSONResponse(replies[0] if replies else error(None, -32603, "upstream failed"))
        sid = response.headers.get("mcp-session-id")
        if sid and (sid, digest) not in self.sessions:
            session.id = sid
            self.sessions[(sid, digest)] = session
        return self._relay(response, session, key)

    def _fail(self, session: Session, key: Any, why: str) -> list[Any]:
        pending = session.pending.get(key) if key is not None else None
        if pending is None:
            return []
        one = Session(principal=session.principal, pending={key: session.pending.pop(key)})
        return self.gateway.fail_pending(one, why, "upstream_failed")

    def _relay(self, response: httpx2.Response, session: Session, key: Any) -> Response:
        headers = {
            k: v
            for k, v in response.headers.items()
            if k.lower() in ("mcp-session-id", "content-type", "cache-control")
        }
        kind = response.headers.get("content-type", "")

        async def body() -> AsyncIterator[bytes]:
            try:
                if kind.startswith("text/event-stream"):
                    async for event in _sse(response, self.max_message):
                        yield self._event(session, event)
                else:
                    data = b""
                    async for chunk in response.aiter_bytes():
                        data += chunk
                        if len(data) > self.max_message:
                            for out in self.gateway.oversized(session, data, self.max_message):
                                yield json.dumps(out).encode()
                            return
                    if not data:
                        return
                    try:
                        msg = json.loads(data)
                    except ValueError:
                        yield data
                        return
                    out = self.gateway.outbound(session, msg)
                    yield json.dumps(out[0] if len(out) == 1 else out).encode()
            finally:
                await response.aclose()
                # Whatever this request left undecided (the client went away,
                # the upstream broke off) is recorded as failed.
                self._fail(session, key, "the answer never arrived")

        return StreamingResponse(body(), status_code=response.status_code, headers=headers)

    def _event(self, session: Session, event: list[tuple[str, str]]) -> bytes:
        lines = []
        for field, value in event:
            if field != "data":
                lines.append(f"{field}: {value}")
                continue
            try:
                msg = json.loads(value)
            except ValueError:
                continue
            for out in self.gateway.outbound(session, msg):
                lines.append("data: " + json.dumps(out, separators=(",", ":")))
        return ("\n".join(lines) + "\n\n").encode()


async def _sse(response: httpx2.Response, cap: int) -> AsyncIterator[list[tuple[str, str]]]:
    """Server-sent events as ``[(field, value), ...]``, one list per event."""
    event: list[tuple[str, str]] = []
    size = 0
    async for line in response.aiter_lines():
        if line == "":
            if event:
                yield event
            event, size = [], 0
            continue
        size += len(line)
        if size > cap:
            event = [(f, v) for f, v in event if f != "data"]
            continue
        field, _, value = line.partition(":")
        event.append((field, value[1:] if value.startswith(" ") else value))
    if event:
        yield event


def app(
    gateway: Gateway,
    *,
    upstream: str,
    tokens: Mapping[str, dict[str, Any]],
    max_message: int = DEFAULT_MAX_MESSAGE,
    log: Callable[[str], None] | None = None,
) -> Starlette:
    """The Starlette application relaying to ``upstream``."""
    say = log or (lambda line: print(f"execgate mcp: {line}", file=sys.stderr, flush=True))
    relay = _Relay(gateway, upstream, tokens, max_message, say)
    return Starlette(
        routes=[Route("/{path:path}", relay.handle, methods=["GET", "POST", "DELETE"])]
    )


def serve(
    gateway: Gateway,
    *,
    listen: str,
    upstream: str,
    tokens: str,
    max_message: int = DEFAULT_MAX_MESSAGE,
    approval_timeout: float = 300.0,
) -> int:
    """Serves the gateway on ``listen`` (``HOST:PORT``) until interrupted."""
    host, _, port = listen.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"--listen must be HOST:PORT, not {listen!r}")
    application = app(
        gateway, upstream=upstream, tokens=load_tokens(tokens), max_message=max_message
    )
    uvicorn.run(application, host=host, port=int(port), log_level="warning")
    return 0

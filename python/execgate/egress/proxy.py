"""The egress proxy: h11 on each tool connection, a pipeline call per request.

See :mod:`execgate.egress` for what it guarantees; this module is how.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import queue
import selectors
import socket
import ssl
import threading
import time
import urllib.parse
from collections.abc import Iterable, Mapping
from typing import Any

import h11

from execgate._core import Call, Capabilities, Decision
from execgate.errors import ExecgateError, SandboxError
from execgate.netloc import authority, host_port, normalize_path
from execgate.pipeline import Pipeline, Run
from execgate.sandbox import Egress

__all__ = ["Bounds", "EgressProxy", "proxy_environment"]

#: Headers that describe one hop, never forwarded (RFC 9110 7.6.1), plus the
#: proxy's own credentials and the length, which the proxy sets itself.
_HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"proxy-authorization",
        b"proxy-authenticate",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
        b"content-length",
        b"host",
        b"expect",
    }
)
_RESPONSE_DROPPED = _HOP_BY_HOP - {b"content-length"}
_IDENTITY = (None, b"", b"identity")
#: What the proxy can do with a request: replace its body (redaction, rewrites).
_REQUEST = Capabilities(replaceable=["body"])

#: A tunnel of one proxied connection: ``("https", host, port)``.
_Origin = tuple[str, str, int]


@dataclasses.dataclass(frozen=True)
class Bounds:
    """What one connection may cost the proxy."""

    #: The request line and headers together (431 past it).
    header_bytes: int = 16 << 10
    #: A request body (larger: 413, undecided).
    body_bytes: int = 1 << 20
    #: A response body the proxy must redact (``obligations.redact.output``)
    #: is held whole; past this it is withheld (502).
    response_bytes: int = 4 << 20
    #: Silence from either side before the connection is closed (also the
    #: wait for the next request on a kept-alive connection).
    idle_seconds: float = 10.0
    #: One request, first byte to last body byte (slow-loris clients).
    request_seconds: float = 15.0
    #: Connections served at once (more are closed at once).
    connections: int = 64


class _Refused(Exception):
    """A request answered with an error status, undecided and not forwarded;
    the connection is closed after it."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


def proxy_environment(port: int) -> dict[str, str]:
    """The variables that point a tool at the proxy on ``127.0.0.1:port``."""
    url = f"http://127.0.0.1:{port}"
    env = {"NO_PROXY": "", "no_proxy": ""}
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"):
        env[name] = url
        env[name.lower()] = url
    return env


def _host_port(netloc: str, default_port: int) -> tuple[str, int]:
    try:
        return host_port(netloc, default_port)
    except ValueError as e:
        raise _Refused(400, str(e)) from None


def _header(headers: Iterable[tuple[bytes, bytes]], name: bytes) -> bytes | None:
    for n, v in headers:
        if n == name:
            return v
    return None


class EgressProxy:
    """Serves one sandboxed run's egress on ``listener`` (a socket in the
    run's network namespace) until :meth:`close`.

    ``principal`` and ``context`` are the tool call's (from its decision's
    input); ``parent`` is its receipt id, put in every request's
    ``context.parent``. ``egress`` adds credential injection and TLS
    interception (:class:`execgate.Egress`).
    """

    def __init__(
        self,
        pipeline: Pipeline,
        listener: socket.socket,
        *,
        principal: Mapping[str, Any] | None = None,
        context: Mapping[str, Any] | None = None,
        parent: str | None = None,
        bounds: Bounds | None = None,
        egress: Egress | None = None,
    ) -> None:
        self.pipeline = pipeline
        self.listener = listener
        self.bounds = bounds or Bounds()
        self.egress = egress or Egress()
        self.principal = dict(principal or {})
        self.context = {k: v for k, v in (context or {}).items() if k != "time"}
        self.context["parent"] = parent
        self.interceptor: Any = None
        self._upstream_tls: ssl.SSLContext | None = None
        if self.egress.intercept_tls:
            try:
                from execgate.egress.tls import Interceptor
            except ImportError as e:
                raise SandboxError(
                    f"Egress(intercept_tls=True) needs execgate[egress-tls] (cryptography): {e}"
                ) from None
            self.interceptor = Interceptor()
        self._slots = threading.BoundedSemaphore(self.bounds.connections)
        self._stop = threading.Event()
        # Connections go to worker threads that stay for the next one (a
        # thread start per connection costs a scheduling round trip).
        self._queue: queue.SimpleQueue[socket.socket | None] = queue.SimpleQueue()
        self._workers: list[threading.Thread] = []
        self._idle = 0
        self._lock = threading.Lock()
        self.listener.settimeout(0.1)
        self._acceptor = threading.Thread(target=self._accept, name="execgate-egress", daemon=True)
        self._acceptor.start()

    # -- lifecycle -------------------------------------------------------------

    def environment(self, port: int) -> dict[str, str]:
        """What the child is given: the proxy variables, and with interception
        the CA bundle variables."""
        env = proxy_environment(port)
        if self.interceptor is not None:
            env.update(self.interceptor.environment())
        return env

    def close(self, timeout: float = 5.0) -> None:
        """Stops accepting, waits (bounded) for requests in flight, closes the listener."""
        self._stop.set()
        self._acceptor.join(timeout)
        deadline = time.monotonic() + timeout
        with self._lock:
            workers = list(self._workers)
        for _ in workers:
            self._queue.put(None)
        for t in workers:
            t.join(max(0.0, deadline - time.monotonic()))
        self.listener.close()
        if self.interceptor is not None:
            self.interceptor.close()

    def __enter__(self) -> EgressProxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self.listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            if not self._slots.acquire(blocking=False):
                client.close()
                continue
            with self._lock:
                spawn = self._idle == 0
                self._idle -= 0 if spawn else 1
            self._queue.put(client)
            if spawn:
                t = threading.Thread(target=self._work, name="execgate-egress-conn", daemon=True)
                with self._lock:
                    self._workers.append(t)
                t.start()

    def _work(self) -> None:
        while (client := self._queue.get()) is not None:
            try:
                self._serve(client)
            finally:
                with self._lock:
                    self._idle += 1

    # -- one connection ----------------------------------------------------------

    def _serve(self, client: socket.socket) -> None:
        try:
            with client:
                with contextlib.suppress(OSError):  # the client may be gone already
                    client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                self._session(client, None)
        finally:
            self._slots.release()

    def _session(self, stream: socket.socket, tunnel: _Origin | None) -> int:
        """Serves requests on one connection (the tool's, or the inside of an
        intercepted tunnel to ``tunnel``) until either side closes or a
        request is refused; returns how many requests were decided."""
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=self.bounds.header_bytes)
        decided = 0
        while True:
            try:
                got = self._read_request(stream, conn)
                if got is None:
                    return decided
                decided += 1
                if not self._handle(stream, conn, got[0], got[1], tunnel):
                    return decided
            except _Refused as e:
                self._answer(stream, conn, e.status, e.reason, close=True)
                return decided
            except h11.RemoteProtocolError as e:
                self._answer(stream, conn, e.error_status_hint, f"bad request: {e}", close=True)
                return decided
            except (OSError, h11.LocalProtocolError):
                return decided  # the client went away, or timed out: nothing to answer
            except Exception as e:  # fail closed: answered, never forwarded undecided
                self._answer(
                    stream, conn, 500, f"the proxy failed: {type(e).__name__}: {e}", close=True
                )
                return decided
            if conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
                return decided
            conn.start_next_cycle()

    def _recv(self, sock: socket.socket, deadline: float) -> bytes:
        left = deadline - time.monotonic()
        if left <= 0:
            raise _Refused(408, "the request was not complete in time")
        sock.settimeout(min(self.bounds.idle_seconds, left))
        try:
            return sock.recv(65536)
        except TimeoutError:
            raise _Refused(408, "the request was not complete in time") from None

    def _read_request(
        self, client: socket.socket, conn: h11.Connection
    ) -> tuple[h11.Request, bytes] | None:
        """The next request and its whole body; None when the client closed
        (or stayed silent) before sending one."""
        bounds = self.bounds
        started = bool(conn.trailing_data[0])
        deadline = time.monotonic() + bounds.request_seconds
        request: h11.Request | None = None
        body = bytearray()
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                if conn.they_are_waiting_for_100_continue:
                    # The body is read before the decision (it is an argument).
                    client.sendall(
                        conn.send(h11.InformationalResponse(status_code=100, headers=[])) or b""
                    )
                if not started:
                    # Between requests: wait (idle bound) for the next one's first byte.
                    client.settimeout(bounds.idle_seconds)
                    try:
                        data = client.recv(65536)
                    except TimeoutError:
                        return None
                    started = True
                    deadline = time.monotonic() + bounds.request_seconds
                else:
                    data = self._recv(client, deadline)
                conn.receive_data(data)
                continue
            if isinstance(event, h11.Request):
                size = len(event.method) + len(event.target)
                size += sum(len(n) + len(v) + 4 for n, v in event.headers)
                if size > bounds.header_bytes:
                    # h11 bounds only what is incomplete; a whole block can be larger.
                    raise _Refused(
                        431, f"the request line and headers are over {bounds.header_bytes} bytes"
                    )
                names = [n for n, _ in event.headers]
                if b"transfer-encoding" in names and b"content-length" in names:
                    raise _Refused(400, "both Content-Length and Transfer-Encoding: refused")
                length = _header(event.headers, b"content-length") or b"0"
                if length.isdigit() and int(length) > bounds.body_bytes:
                    raise _Refused(413, f"the body is over {bounds.body_bytes} bytes")
                request = event
            elif isinstance(event, h11.Data):
                body += event.data
                if len(body) > bounds.body_bytes:
                    raise _Refused(413, f"the body is over {bounds.body_bytes} bytes")
            elif isinstance(event, h11.EndOfMessage) or event is h11.PAUSED:
                if request is None:
                    raise _Refused(400, "no request")
                return request, bytes(body)
            elif isinstance(event, h11.ConnectionClosed):
                if request is None:
                    return None
                raise OSError("the client closed the connection")

    def _answer(
        self,
        client: socket.socket,
        conn: h11.Connection,
        status: int,
        text: str,
        extra: list[tuple[str, str]] | None = None,
        *,
        close: bool = False,
    ) -> None:
        """Answers the current request from the proxy itself (kept alive
        unless ``close``)."""
        if conn.our_state not in (h11.IDLE, h11.SEND_RESPONSE):
            return
        data = text.encode() + b"\n"
        headers = [
            ("content-type", "text/plain; charset=utf-8"),
            ("content-length", str(len(data))),
            *([("connection", "close")] if close else []),
            *(extra or []),
        ]
        try:
            client.sendall(
                (conn.send(h11.Response(status_code=status, headers=headers)) or b"")
                + (conn.send(h11.Data(data=data)) or b"")
                + (conn.send(h11.EndOfMessage()) or b"")
            )
        except (OSError, h11.LocalProtocolError):
            pass

    # -- deciding --------------------------------------------------------------

    def _target(
        self, request: h11.Request, method: str, tunnel: _Origin | None
    ) -> tuple[str, str, int, str, str]:
        """``scheme, host, port, path, query`` the request is decided on."""
        target = request.target.decode("ascii", "replace")
        if tunnel is not None:
            # Inside an intercepted tunnel: the tunnel's origin, whatever else is named.
            scheme, host, port = tunnel
            parts = urllib.parse.urlsplit(target)
            named = _header(request.headers, b"host")
            if method == "CONNECT" or not (target.startswith("/") or parts.scheme == "https"):
                raise _Refused(400, f"not a request for the tunnel's origin: {target[:200]!r}")
            if parts.netloc and _host_port(parts.netloc, 443) != (host, port):
                raise _Refused(400, "the URL names another origin than the tunnel")
            if named is None or _host_port(named.decode("ascii", "replace"), 443) != (host, port):
                raise _Refused(400, "the Host header names another origin than the tunnel")
            return scheme, host, port, _path(parts.path or "/"), parts.query
        if method == "CONNECT":
            host, port = _host_port(target, 0)
            return "https", host, port, "", ""
        parts = urllib.parse.urlsplit(target)
        if parts.scheme.lower() != "http" or not parts.netloc:
            raise _Refused(
                400, f"only absolute http:// URLs and CONNECT are proxied (got {target[:200]!r})"
            )
        host, port = _host_port(parts.netloc, 80)
        return "http", host, port, _path(parts.path or "/"), parts.query

    def _handle(
        self,
        client: socket.socket,
        conn: h11.Connection,
        request: h11.Request,
        body: bytes,
        tunnel: _Origin | None,
    ) -> bool:
        """Decides one request and forwards it if allowed; whether the
        connection may carry another."""
        method = request.method.decode("ascii", "replace").upper()
        scheme, host, port, path, query = self._target(request, method, tunnel)
        args: dict[str, Any] = {
            "method": method,
            "scheme": scheme,
            "host": host,
            "port": port,
            "path": path,
            "query": query,
            "header_names": sorted({n.decode("ascii", "replace") for n, _ in request.headers}),
            "body_sha256": hashlib.sha256(body).hexdigest(),
            "body_size": len(body),
            # bytes: the policy sees only {bytes_sha256, size}; redaction reads it.
            "body": body,
        }
        call, decision = self.pipeline.decide(
            "net.request", args, self.principal, self.context, capabilities=_REQUEST
        )
        if decision.blocked:
            reasons = list(decision.reasons) or ["denied by policy"]
            self._answer(
                client,
                conn,
                403,
                "execgate denied this request:\n" + "\n".join(f"- {r}" for r in reasons),
                [("x-execgate-decision", "deny")],
            )
            return True
        with Run(call, decision) as run:
            if method == "CONNECT":
                run.extra = self._connect(client, conn, host, port)
                keep = False
            else:
                origin = (scheme, host, port)
                run.extra, keep = self._forward(
                    client, conn, call, decision, request, origin, path, query
                )
            if run.extra.get("error"):
                run.error = str(run.extra["error"])
        return keep

    # -- forwarding ---------------------------------------------------------------

    def _refuse_after_decision(
        self,
        client: socket.socket,
        conn: h11.Connection,
        out: dict[str, Any],
        status: int,
        why: str,
    ) -> tuple[dict[str, Any], bool]:
        out["error"] = why
        self._answer(client, conn, status, why)
        return out, True

    def _open(self, scheme: str, host: str, port: int) -> socket.socket:
        sock = socket.create_connection((host, port), timeout=self.bounds.idle_seconds)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if scheme != "https":
            return sock
        if self._upstream_tls is None:
            from execgate.egress.tls import upstream_context

            self._upstream_tls = upstream_context(self.egress.upstream_ca)
        try:
            return self._upstream_tls.wrap_socket(sock, server_hostname=host)
        except BaseException:
            sock.close()
            raise

    def _forward(
        self,
        client: socket.socket,
        conn: h11.Connection,
        call: Call,
        decision: Decision,
        request: h11.Request,
        origin: _Origin,
        path: str,
        query: str,
    ) -> tuple[dict[str, Any], bool]:
        """Sends the allowed request (its body as redacted, credentials
        added) and relays the answer; the outcome's fields and whether the
        client connection may go on."""
        scheme, host, port = origin
        sent = call.arguments()["body"]
        if isinstance(sent, str):
            sent = sent.encode()
        out: dict[str, Any] = {
            "inspected": True,
            "request_bytes": len(sent) if isinstance(sent, bytes) else 0,
        }
        if not isinstance(sent, bytes):
            return self._refuse_after_decision(
                client, conn, out, 502, "the redacted body is not bytes"
            )
        encoding = _header(request.headers, b"content-encoding")
        if sent and encoding not in _IDENTITY and "args" in decision.obligations.get("redact", {}):
            return self._refuse_after_decision(
                client, conn, out, 415, "a body with a Content-Encoding cannot be redacted"
            )
        injected = self.egress.injections(scheme, host, port)
        added: list[tuple[bytes, bytes]] = []
        for name, secret in injected:
            try:
                added.append((name.encode(), secret.read().encode()))
            except ValueError as e:
                return self._refuse_after_decision(
                    client, conn, out, 502, f"the credential {name} for this origin: {e}"
                )
        if injected:
            out["credentials"] = [name for name, _ in injected]
        redacts = call.redacts_output
        dropped = _HOP_BY_HOP | {n for n, _ in added}
        if redacts:
            dropped |= {b"accept-encoding"}
            added.append((b"accept-encoding", b"identity"))
        host_header = authority(scheme, host, port)
        headers = [(b"host", host_header.encode())]
        headers += [(n, v) for n, v in request.headers if n not in dropped]
        headers += added
        headers += [(b"content-length", str(len(sent)).encode()), (b"connection", b"close")]
        target = (path + (f"?{query}" if query else "")).encode()
        try:
            upstream = self._open(scheme, host, port)
        except ssl.SSLCertVerificationError as e:
            why = f"the certificate of {host_header} is not trusted: {e.verify_message}"
            return self._refuse_after_decision(client, conn, out, 502, why)
        except OSError as e:
            why = f"cannot reach {host_header}: {e.strerror or type(e).__name__}"
            return self._refuse_after_decision(client, conn, out, 502, why)
        with upstream:
            up = h11.Connection(h11.CLIENT, max_incomplete_event_size=self.bounds.header_bytes)
            try:
                upstream.sendall(
                    (
                        up.send(h11.Request(method=request.method, target=target, headers=headers))
                        or b""
                    )
                    + (up.send(h11.Data(data=sent)) or b"")
                    + (up.send(h11.EndOfMessage()) or b"")
                )
            except OSError as e:
                return self._refuse_after_decision(
                    client, conn, out, 502, f"cannot send to {host_header}: {type(e).__name__}"
                )
            return self._relay(client, conn, call, upstream, up, out, redacts)

    def _relay(
        self,
        client: socket.socket,
        conn: h11.Connection,
        call: Call,
        upstream: socket.socket,
        up: h11.Connection,
        out: dict[str, Any],
        redacts: bool,
    ) -> tuple[dict[str, Any], bool]:
        """The upstream's answer to the client: streamed, or held whole and
        redacted when the decision says so."""
        received = 0
        held = bytearray()
        pending = bytearray()  # for the client: sent before waiting on the server
        response: h11.Response | None = None
        while True:
            try:
                event = up.next_event()
                if event is h11.NEED_DATA:
                    if pending:
                        client.sendall(pending)
                        pending.clear()
                    up.receive_data(upstream.recv(65536))
                    continue
            except (OSError, h11.RemoteProtocolError) as e:
                out["error"] = f"upstream: {type(e).__name__}"
                self._answer(client, conn, 502, "a bad answer from the server", close=True)
                return out, False
            if isinstance(event, h11.Response):
                response = event
                out["http_status"] = event.status_code
                if redacts:
                    if _header(event.headers, b"content-encoding") not in _IDENTITY:
                        out["error"] = "an encoded response cannot be redacted"
                        self._answer(
                            client, conn, 502, f"the response was withheld: {out['error']}"
                        )
                        return out, False
                    continue
                kept = [(n, v) for n, v in event.headers if n not in _RESPONSE_DROPPED]
                head = h11.Response(
                    status_code=event.status_code, headers=kept, reason=event.reason
                )
                pending += conn.send(head) or b""
            elif isinstance(event, h11.Data):
                received += len(event.data)
                if not redacts:
                    pending += conn.send(h11.Data(data=event.data)) or b""
                    continue
                held += event.data
                if len(held) > self.bounds.response_bytes:
                    out["error"] = (
                        f"a response to redact is over {self.bounds.response_bytes} bytes"
                    )
                    self._answer(client, conn, 502, f"the response was withheld: {out['error']}")
                    return out, False
            elif isinstance(event, (h11.EndOfMessage, h11.ConnectionClosed)):
                break
        out["response_bytes"] = received
        if response is None:
            out["error"] = "upstream: no response"
            self._answer(client, conn, 502, "the server closed without an answer", close=True)
            return out, False
        if redacts:
            try:
                shown = call.redact_output(bytes(held))
            except ExecgateError as e:
                out["error"] = "withheld"
                self._answer(client, conn, 502, f"the response was withheld: {e}")
                return out, True
            data = shown.encode() if isinstance(shown, str) else shown
            if not isinstance(data, bytes):
                out["error"] = "the redacted response is not bytes"
                self._answer(client, conn, 502, out["error"])
                return out, True
            kept = [(n, v) for n, v in response.headers if n not in _HOP_BY_HOP]
            kept.append((b"content-length", str(len(data)).encode()))
            head = h11.Response(
                status_code=response.status_code, headers=kept, reason=response.reason
            )
            pending += (conn.send(head) or b"") + (conn.send(h11.Data(data=data)) or b"")
            out["redacted"] = data != bytes(held)
        client.sendall(pending + (conn.send(h11.EndOfMessage()) or b""))
        return out, True

    def _connect(
        self, client: socket.socket, conn: h11.Connection, host: str, port: int
    ) -> dict[str, Any]:
        """An allowed CONNECT: intercepted (each request inside decided) or tunnelled."""
        if self.interceptor is None:
            return self._tunnel(client, conn, host, port)
        out: dict[str, Any] = {"inspected": True, "intercepted": True}
        if conn.trailing_data[0]:
            out["error"] = "bytes sent before the tunnel was open"
            self._answer(client, conn, 400, out["error"], close=True)
            return out
        context = self.interceptor.server_context(host)
        client.sendall(conn.send(h11.Response(status_code=200, headers=[])) or b"")
        client.settimeout(self.bounds.idle_seconds)
        try:
            tls = context.wrap_socket(client, server_side=True)
        except (OSError, ValueError) as e:
            out["error"] = (
                f"the tool's TLS handshake failed: {getattr(e, 'reason', None) or type(e).__name__}"
            )
            return out
        with tls:
            out["requests"] = self._session(tls, ("https", host, port))
        out["http_status"] = 200
        return out

    def _tunnel(
        self, client: socket.socket, conn: h11.Connection, host: str, port: int
    ) -> dict[str, Any]:
        out: dict[str, Any] = {"inspected": False}
        try:
            upstream = socket.create_connection((host, port), timeout=self.bounds.idle_seconds)
        except OSError as e:
            out["error"] = f"upstream: {type(e).__name__}"
            self._answer(
                client, conn, 502, f"cannot reach {host}:{port}: {e.strerror or e}", close=True
            )
            return out
        with upstream:
            client.sendall(conn.send(h11.Response(status_code=200, headers=[])) or b"")
            early, _ = conn.trailing_data
            if early:
                upstream.sendall(early)
            sent, received = len(early), 0
            with selectors.DefaultSelector() as sel:
                sel.register(client, selectors.EVENT_READ, upstream)
                sel.register(upstream, selectors.EVENT_READ, client)
                done = False
                while not done:
                    ready = sel.select(self.bounds.idle_seconds)
                    if not ready:
                        break  # idle
                    for key, _ in ready:
                        src: socket.socket = key.fileobj  # type: ignore[assignment]
                        dst: socket.socket = key.data
                        try:
                            data = src.recv(65536)
                            if data:
                                dst.sendall(data)
                        except OSError:
                            data = b""
                        if not data:
                            done = True
                            break
                        if src is client:
                            sent += len(data)
                        else:
                            received += len(data)
        out.update(http_status=200, request_bytes=sent, response_bytes=received)
        return out


def _path(path: str) -> str:
    try:
        return normalize_path(path)
    except ValueError as e:
        raise _Refused(400, str(e)) from None

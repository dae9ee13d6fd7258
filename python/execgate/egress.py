"""The egress privacy router: the only way out of a ``Sandbox(network="proxy")``.

The tool runs in a private network namespace with only loopback
(``execgate._core.private_network``). Inside it, on ``127.0.0.1:PORT``, is a
listening socket that this process holds; nothing else connects that namespace
to any network. :class:`EgressProxy` accepts the tool's connections on it and
makes its own connections from the gate's network, only for requests the
policy allowed. The tool is told where it is through ``HTTP_PROXY``,
``HTTPS_PROXY`` and ``ALL_PROXY`` (and their lowercase forms); a tool that
ignores them has nowhere else to go.

Every request is a call through the gate's pipeline (``gate.pipeline``): action
``net.request``, arguments ``{method, scheme, host, port, path, query,
header_names, body_sha256, body_size, body}``, ``context.parent`` the receipt id
of the tool call that made it. ``body`` is passed as ``bytes``, so the policy
sees only its digest and size (the argument conversion rule for bytes) and the
log only the arguments' digest, while ``obligations.redact.args`` rewrites it
(as UTF-8 text; a finding in a binary body refuses the request) before it is
forwarded: the pipeline interprets the obligations, this module forwards what
``call.arguments()`` hands back. A denied request gets ``403`` with the
reasons; an allowed one is forwarded inside ``Run``, whose completion record
carries the status, bytes and duration.

HTTPS: ``CONNECT host:port`` is decided on host and port (``scheme`` is
``"https"``, ``method`` ``"CONNECT"``, path, query and body empty) and tunnelled
without interception; its completion says ``inspected: false``.

Fail closed: a request h11 cannot parse, one with both ``Content-Length`` and
``Transfer-Encoding`` (request smuggling), headers over :attr:`Bounds.header_bytes`,
a body over :attr:`Bounds.body_bytes`, a request not complete within
:attr:`Bounds.request_seconds`, or anything but an absolute ``http://`` URL or a
``CONNECT`` is answered with an error status, never decided and never forwarded.
"""

from __future__ import annotations

import dataclasses
import hashlib
import ipaddress
import selectors
import socket
import threading
import time
import urllib.parse
from collections.abc import Mapping
from typing import Any

import h11

from execgate.pipeline import Pipeline, Run

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


@dataclasses.dataclass(frozen=True)
class Bounds:
    """What one connection may cost the proxy."""

    #: The request line and headers together (h11's incomplete-event limit).
    header_bytes: int = 16 << 10
    #: A request body (larger: 413, undecided).
    body_bytes: int = 1 << 20
    #: Silence from either side before the connection is closed.
    idle_seconds: float = 10.0
    #: The whole request, line to last body byte (slow-loris clients).
    request_seconds: float = 15.0
    #: Connections served at once (more are closed at once).
    connections: int = 64


class _Refused(Exception):
    """A request answered with an error status, undecided and not forwarded."""

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


def _host_port(authority: str, default_port: int) -> tuple[str, int]:
    """``host`` and ``port`` of an authority; no user info, a valid port."""
    parts = urllib.parse.urlsplit(f"//{authority}")
    if parts.username is not None or parts.password is not None or "@" in authority:
        raise _Refused(400, "user info in the authority is not accepted")
    try:
        port = parts.port if parts.port is not None else default_port
    except ValueError:
        raise _Refused(400, f"bad port in {authority!r}") from None
    host = (parts.hostname or "").rstrip(".").lower()
    if not host or port == 0:
        raise _Refused(400, f"no host or port in {authority!r}")
    if not all(c.isalnum() or c in "-._:" for c in host):
        raise _Refused(400, f"bad host {host!r}")
    if ":" in host:
        try:
            host = ipaddress.IPv6Address(host).compressed
        except ValueError:
            raise _Refused(400, f"bad host {host!r}") from None
    elif all(c in "0123456789abcdefx." for c in host):
        # The resolver reads 2130706433, 0x7f.1 or 127.1 as 127.0.0.1: the
        # policy decides on the address that will be used.
        try:
            host = socket.inet_ntoa(socket.inet_aton(host))
        except OSError:
            pass  # a name that only looks numeric (e.g. "cafe.be")
    return host, port


_UNRESERVED = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")


def _normalize_path(path: str) -> str:
    """The path as a server will read it, so the policy decides what is sent:
    percent-encoded unreserved characters decoded, other escapes upper-cased,
    dot segments removed (RFC 3986 6.2.2). An encoded slash, backslash or NUL
    is refused: servers disagree about what they mean."""
    out = []
    i = 0
    while i < len(path):
        c = path[i]
        if c == "%":
            code = path[i + 1 : i + 3]
            if len(code) != 2 or not all(h in "0123456789abcdefABCDEF" for h in code):
                raise _Refused(400, "a bad percent escape in the path")
            char = chr(int(code, 16))
            if char in "/\\\0" or code.upper() in ("2F", "5C", "00"):
                raise _Refused(400, "an encoded slash, backslash or NUL in the path")
            out.append(char if char in _UNRESERVED else "%" + code.upper())
            i += 3
            continue
        if c == "\\":
            raise _Refused(400, "a backslash in the path")
        out.append(c)
        i += 1
    segments: list[str] = []
    parts = "".join(out).split("/")
    for seg in parts[1:]:
        if seg == "..":
            if segments:
                segments.pop()
        elif seg != ".":
            segments.append(seg)
    trailing = parts[-1] in (".", "..") and len(parts) > 1
    return "/" + "/".join(segments) + ("/" if trailing and segments else "")


class EgressProxy:
    """Serves one sandboxed run's egress on ``listener`` (a socket in the
    run's network namespace) until :meth:`close`.

    ``principal`` and ``context`` are the tool call's (from its decision's
    input); ``parent`` is its receipt id, put in every request's
    ``context.parent``.
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
    ) -> None:
        self.pipeline = pipeline
        self.listener = listener
        self.bounds = bounds or Bounds()
        self.principal = dict(principal or {})
        self.context = {k: v for k, v in (context or {}).items() if k != "time"}
        self.context["parent"] = parent
        self._slots = threading.BoundedSemaphore(self.bounds.connections)
        self._stop = threading.Event()
        self._threads: set[threading.Thread] = set()
        self._lock = threading.Lock()
        self.listener.settimeout(0.1)
        self._acceptor = threading.Thread(target=self._accept, name="execgate-egress", daemon=True)
        self._acceptor.start()

    # -- lifecycle -------------------------------------------------------------

    def close(self, timeout: float = 5.0) -> None:
        """Stops accepting, waits (bounded) for requests in flight, closes the listener."""
        self._stop.set()
        self._acceptor.join(timeout)
        deadline = time.monotonic() + timeout
        with self._lock:
            threads = list(self._threads)
        for t in threads:
            t.join(max(0.0, deadline - time.monotonic()))
        self.listener.close()

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
            t = threading.Thread(target=self._serve, args=(client,), daemon=True)
            with self._lock:
                self._threads.add(t)
            t.start()

    # -- one connection ----------------------------------------------------------

    def _serve(self, client: socket.socket) -> None:
        try:
            with client:
                client.settimeout(self.bounds.idle_seconds)
                conn = h11.Connection(
                    h11.SERVER, max_incomplete_event_size=self.bounds.header_bytes
                )
                try:
                    request, body = self._read_request(client, conn)
                    self._handle(client, conn, request, body)
                except _Refused as e:
                    self._answer(client, conn, e.status, e.reason)
                except h11.RemoteProtocolError as e:
                    self._answer(client, conn, e.error_status_hint, f"bad request: {e}")
                except (OSError, h11.LocalProtocolError):
                    pass  # the client went away, or timed out: nothing to answer
                except Exception as e:  # fail closed: answered, never forwarded undecided
                    self._answer(client, conn, 500, f"the proxy failed: {type(e).__name__}: {e}")
        finally:
            self._slots.release()
            with self._lock:
                self._threads.discard(threading.current_thread())

    def _recv(self, sock: socket.socket, deadline: float, size: int = 65536) -> bytes:
        left = deadline - time.monotonic()
        if left <= 0:
            raise _Refused(408, "the request was not complete in time")
        sock.settimeout(min(self.bounds.idle_seconds, left))
        try:
            return sock.recv(size)
        except TimeoutError:
            raise _Refused(408, "the request was not complete in time") from None

    def _read_request(
        self, client: socket.socket, conn: h11.Connection
    ) -> tuple[h11.Request, bytes]:
        deadline = time.monotonic() + self.bounds.request_seconds
        request: h11.Request | None = None
        body = bytearray()
        head = 0  # bytes fed before the request line and headers were complete
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                if conn.they_are_waiting_for_100_continue:
                    # The body is read before the decision (it is an argument).
                    client.sendall(
                        conn.send(h11.InformationalResponse(status_code=100, headers=[])) or b""
                    )
                # Until the headers are in, h11 never holds more than the bound
                # plus one byte, so a header block over it fails (431) even when
                # it arrives whole (h11 bounds only incomplete events).
                size = 65536 if request is not None else self.bounds.header_bytes + 1 - head
                data = self._recv(client, deadline, max(1, size))
                head += len(data)
                conn.receive_data(data)
                continue
            if isinstance(event, h11.Request):
                names = [n for n, _ in event.headers]
                if b"transfer-encoding" in names and b"content-length" in names:
                    raise _Refused(400, "both Content-Length and Transfer-Encoding: refused")
                length = dict(event.headers).get(b"content-length", b"0")
                if length.isdigit() and int(length) > self.bounds.body_bytes:
                    raise _Refused(413, f"the body is over {self.bounds.body_bytes} bytes")
                request = event
            elif isinstance(event, h11.Data):
                body += event.data
                if len(body) > self.bounds.body_bytes:
                    raise _Refused(413, f"the body is over {self.bounds.body_bytes} bytes")
            elif isinstance(event, h11.EndOfMessage) or event is h11.PAUSED:
                if request is None:
                    raise _Refused(400, "no request")
                return request, bytes(body)
            elif isinstance(event, h11.ConnectionClosed):
                raise OSError("the client closed the connection")

    def _answer(
        self,
        client: socket.socket,
        conn: h11.Connection,
        status: int,
        text: str,
        extra: list[tuple[str, str]] | None = None,
    ) -> None:
        if conn.our_state not in (h11.IDLE, h11.SEND_RESPONSE):
            return
        data = text.encode() + b"\n"
        headers = [
            ("content-type", "text/plain; charset=utf-8"),
            ("content-length", str(len(data))),
            ("connection", "close"),
            *(extra or []),
        ]
        try:
            client.sendall(conn.send(h11.Response(status_code=status, headers=headers)) or b"")
            client.sendall(conn.send(h11.Data(data=data)) or b"")
            client.sendall(conn.send(h11.EndOfMessage()) or b"")
        except (OSError, h11.LocalProtocolError):
            pass

    # -- deciding and forwarding ------------------------------------------------

    def _handle(
        self, client: socket.socket, conn: h11.Connection, request: h11.Request, body: bytes
    ) -> None:
        method = request.method.decode("ascii", "replace").upper()
        target = request.target.decode("ascii", "replace")
        header_names = sorted({n.decode("ascii", "replace") for n, _ in request.headers})
        if method == "CONNECT":
            host, port = _host_port(target, 0)
            scheme, path, query = "https", "", ""
        else:
            parts = urllib.parse.urlsplit(target)
            if parts.scheme.lower() != "http" or not parts.netloc:
                raise _Refused(
                    400,
                    f"only absolute http:// URLs and CONNECT are proxied (got {target[:200]!r})",
                )
            host, port = _host_port(parts.netloc, 80)
            scheme, query = "http", parts.query
            path = _normalize_path(parts.path or "/")
        args: dict[str, Any] = {
            "method": method,
            "scheme": scheme,
            "host": host,
            "port": port,
            "path": path,
            "query": query,
            "header_names": header_names,
            "body_sha256": hashlib.sha256(body).hexdigest(),
            "body_size": len(body),
            # bytes: the policy sees only {bytes_sha256, size}; redaction reads it.
            "body": body,
        }
        call = self.pipeline.start(
            "net.request", args, self.principal, self.context, replaceable=["body"], output=False
        )
        decision = self.pipeline.authorize(call)
        if decision.blocked:
            reasons = list(decision.reasons) or ["denied by policy"]
            self._answer(
                client,
                conn,
                403,
                "execgate denied this request:\n" + "\n".join(f"- {r}" for r in reasons),
                [("x-execgate-decision", "deny")],
            )
            return
        with Run(call, decision) as run:
            if method == "CONNECT":
                run.extra = self._tunnel(client, conn, host, port)
                return
            sent = call.arguments()["body"]
            if isinstance(sent, str):
                sent = sent.encode()
            if not isinstance(sent, bytes):
                run.error = "the redacted body is not bytes"
                self._answer(client, conn, 502, run.error)
                return
            run.extra = self._forward(client, conn, request, host, port, path, query, sent)
            if run.extra.get("error"):
                run.error = str(run.extra["error"])

    def _forward(
        self,
        client: socket.socket,
        conn: h11.Connection,
        request: h11.Request,
        host: str,
        port: int,
        path: str,
        query: str,
        body: bytes,
    ) -> dict[str, Any]:
        authority = f"[{host}]" if ":" in host else host
        if port != 80:
            authority += f":{port}"
        headers: list[tuple[bytes, bytes]] = [(b"host", authority.encode())]
        headers += [(n, v) for n, v in request.headers if n not in _HOP_BY_HOP]
        headers += [(b"content-length", str(len(body)).encode()), (b"connection", b"close")]
        target = (path + (f"?{query}" if query else "")).encode()
        out: dict[str, Any] = {"inspected": True, "request_bytes": len(body)}
        try:
            upstream = socket.create_connection((host, port), timeout=self.bounds.idle_seconds)
        except OSError as e:
            out["error"] = f"upstream: {type(e).__name__}"
            self._answer(client, conn, 502, f"cannot reach {authority}: {e.strerror or e}")
            return out
        with upstream:
            up = h11.Connection(h11.CLIENT, max_incomplete_event_size=self.bounds.header_bytes)
            upstream.sendall(
                (up.send(h11.Request(method=request.method, target=target, headers=headers)) or b"")
                + (up.send(h11.Data(data=body)) or b"")
                + (up.send(h11.EndOfMessage()) or b"")
            )
            received = 0
            while True:
                try:
                    event = up.next_event()
                    if event is h11.NEED_DATA:
                        up.receive_data(upstream.recv(65536))
                        continue
                except (OSError, h11.RemoteProtocolError) as e:
                    out["error"] = f"upstream: {type(e).__name__}"
                    self._answer(client, conn, 502, f"bad answer from {authority}")
                    break
                if isinstance(event, h11.Response):
                    out["http_status"] = event.status_code
                    kept = [
                        (n, v)
                        for n, v in event.headers
                        if n not in _HOP_BY_HOP - {b"content-length"}
                    ]
                    kept.append((b"connection", b"close"))
                    client.sendall(
                        conn.send(
                            h11.Response(
                                status_code=event.status_code, headers=kept, reason=event.reason
                            )
                        )
                        or b""
                    )
                elif isinstance(event, h11.Data):
                    received += len(event.data)
                    client.sendall(conn.send(h11.Data(data=event.data)) or b"")
                elif isinstance(event, h11.EndOfMessage):
                    client.sendall(conn.send(h11.EndOfMessage()) or b"")
                    break
                elif isinstance(event, h11.ConnectionClosed):
                    break
        out["response_bytes"] = received
        return out

    def _tunnel(
        self, client: socket.socket, conn: h11.Connection, host: str, port: int
    ) -> dict[str, Any]:
        out: dict[str, Any] = {"inspected": False}
        try:
            upstream = socket.create_connection((host, port), timeout=self.bounds.idle_seconds)
        except OSError as e:
            out["error"] = f"upstream: {type(e).__name__}"
            self._answer(client, conn, 502, f"cannot reach {host}:{port}: {e.strerror or e}")
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

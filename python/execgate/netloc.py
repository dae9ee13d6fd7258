"""The URL parts a ``net.request`` is decided on, normalized as a server reads
them, so the policy decides what is sent: the egress proxy and the egress
options (credential origins) share these rules. Each raises ``ValueError``
naming what it refused."""

from __future__ import annotations

import ipaddress
import socket
import urllib.parse

__all__ = ["DEFAULT_PORTS", "authority", "host_port", "normalize_path", "origin"]

DEFAULT_PORTS = {"http": 80, "https": 443}


def host_port(netloc: str, default_port: int) -> tuple[str, int]:
    """``host`` and ``port`` of an authority; no user info, a valid port. The
    host is lowercased, IPv6 compressed, and numeric IPv4 forms are written as
    the dotted address they reach."""
    parts = urllib.parse.urlsplit(f"//{netloc}")
    if parts.username is not None or parts.password is not None or "@" in netloc:
        raise ValueError("user info in the authority is not accepted")
    try:
        port = parts.port if parts.port is not None else default_port
    except ValueError:
        raise ValueError(f"bad port in {netloc!r}") from None
    host = (parts.hostname or "").rstrip(".").lower()
    if not host or port == 0:
        raise ValueError(f"no host or port in {netloc!r}")
    if not all(c.isalnum() or c in "-._:" for c in host) or not host.isascii():
        raise ValueError(f"bad host {host!r}")
    if ":" in host:
        try:
            host = ipaddress.IPv6Address(host).compressed
        except ValueError:
            raise ValueError(f"bad host {host!r}") from None
    elif all(c in "0123456789abcdefx." for c in host):
        # The resolver reads 2130706433, 0x7f.1 or 127.1 as 127.0.0.1: the
        # policy decides on the address that will be used.
        try:
            host = socket.inet_ntoa(socket.inet_aton(host))
        except OSError:
            pass  # a name that only looks numeric (e.g. "cafe.be")
    return host, port


def authority(scheme: str, host: str, port: int) -> str:
    """``host[:port]`` as a ``Host`` header writes it (no default port)."""
    name = f"[{host}]" if ":" in host else host
    return name if DEFAULT_PORTS.get(scheme) == port else f"{name}:{port}"


def origin(text: str) -> tuple[str, str, int]:
    """``(scheme, host, port)`` of ``https://host[:port]``, ``http://host[:port]``
    or a bare ``host[:port]`` (https); nothing after the authority."""
    scheme, sep, rest = text.partition("://")
    if not sep:
        scheme, rest = "https", text
    scheme = scheme.lower()
    if scheme not in DEFAULT_PORTS:
        raise ValueError(f"an origin is http:// or https://, not {text!r}")
    if not rest or any(c in rest for c in "/?#"):
        raise ValueError(f"an origin is scheme://host[:port] with nothing after, not {text!r}")
    host, port = host_port(rest, DEFAULT_PORTS[scheme])
    return scheme, host, port


_UNRESERVED = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")


def normalize_path(path: str) -> str:
    """The path as a server will read it: percent-encoded unreserved
    characters decoded, other escapes upper-cased, dot segments removed
    (RFC 3986 6.2.2). An encoded slash, backslash or NUL is refused: servers
    disagree about what they mean."""
    out = []
    i = 0
    while i < len(path):
        c = path[i]
        if c == "%":
            code = path[i + 1 : i + 3]
            if len(code) != 2 or not all(h in "0123456789abcdefABCDEF" for h in code):
                raise ValueError("a bad percent escape in the path")
            char = chr(int(code, 16))
            if char in "/\\\0" or code.upper() in ("2F", "5C", "00"):
                raise ValueError("an encoded slash, backslash or NUL in the path")
            out.append(char if char in _UNRESERVED else "%" + code.upper())
            i += 3
            continue
        if c == "\\":
            raise ValueError("a backslash in the path")
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

"""A small MCP server built with the official SDK, for the proxy's tests and benchmark.

Tools: ``echo`` (trivial), ``add`` (structured output), ``contact`` (text and
structured output carrying an email address, for output redaction),
``delete`` (an argument rule), ``admin_reset`` (hidden by the example policy),
``read_file``, ``write_file``, ``connect`` and ``fetch`` (what a sandbox confines), ``crash`` (the server
dies mid-call), ``slow`` (a call that takes a while), ``deploy`` (needs approval), ``calls`` (how many tool
calls this server saw, so a test can prove a denied call never arrived).
"""

from __future__ import annotations

import os
import socket
import sys
import time

from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from pydantic import BaseModel

server = MCPServer("demo-server")
_seen: list[str] = []


class Contact(BaseModel):
    name: str
    email: str


def _saw(name: str) -> None:
    _seen.append(name)
    print(f"demo-server: call {name}", file=sys.stderr, flush=True)


@server.tool()
def echo(text: str) -> str:
    """Returns its argument."""
    _saw("echo")
    return text


@server.tool()
def add(a: int, b: int) -> int:
    """Adds two integers."""
    _saw("add")
    return a + b


@server.tool()
def contact(name: str) -> Contact:
    """A person's contact card (with an email address)."""
    _saw("contact")
    return Contact(name=name, email=f"{name.lower()}@example.com")


@server.tool()
def delete(path: str) -> str:
    """Pretends to delete a file."""
    _saw("delete")
    return f"deleted {path}"


@server.tool()
def admin_reset() -> str:
    """Resets everything (hidden by the example policy)."""
    _saw("admin_reset")
    return "reset"


@server.tool()
def read_file(path: str) -> str:
    """Reads a text file, or says why it could not."""
    _saw("read_file")
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except OSError as e:
        return f"error: {type(e).__name__}: {e}"


@server.tool()
def write_file(path: str, text: str) -> str:
    """Writes a text file, or says why it could not."""
    _saw("write_file")
    try:
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
        return "written"
    except OSError as e:
        return f"error: {type(e).__name__}: {e}"


@server.tool()
def connect(host: str, port: int) -> str:
    """Opens a TCP connection, or says why it could not."""
    _saw("connect")
    try:
        with socket.create_connection((host, port), timeout=2):
            return "connected"
    except OSError as e:
        return f"error: {type(e).__name__}: {e}"


@server.tool()
def fetch(url: str) -> str:
    """GETs a URL (through the proxy in HTTP_PROXY, if any); the answer or the error."""
    import urllib.error
    import urllib.request

    _saw("fetch")
    try:
        with urllib.request.urlopen(url, timeout=10) as answer:
            return str(answer.read().decode())
    except urllib.error.HTTPError as e:
        return f"error: HTTP {e.code}: {e.read().decode()}"
    except OSError as e:
        return f"error: {type(e).__name__}: {e}"


@server.tool()
def crash() -> str:
    """Kills the server in the middle of the call."""
    _saw("crash")
    os._exit(3)


@server.tool()
def slow(seconds: float) -> str:
    """Sleeps, then answers."""
    _saw("slow")
    time.sleep(seconds)
    return "done"


@server.tool()
def fail() -> str:
    """A tool that reports an error (isError)."""
    _saw("fail")
    raise ToolError("it went wrong")


@server.tool()
def deploy(service: str) -> str:
    """Deploys a service (the example policy asks a human first)."""
    _saw("deploy")
    return f"deployed {service}"


@server.tool()
def calls() -> list[str]:
    """The tool calls this server has seen, oldest first."""
    return list(_seen)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "http":
        server.run("streamable-http", host="127.0.0.1", port=int(sys.argv[2]))
    else:
        server.run()

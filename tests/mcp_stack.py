"""What the MCP gateway tests share: the demo server, the example policy, a
signing key and audit log, `execgate mcp` command lines, and processes that
serve HTTP on a free local port (started, waited for, always stopped)."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import pathlib
import socket
import subprocess
import sys
import time
from typing import Any

import execgate
from execgate import SigningKey
from procs import pids

ROOT = pathlib.Path(__file__).resolve().parent.parent
SERVER = ROOT / "tests" / "mcp_servers" / "demo_server.py"
POLICY = ROOT / "python" / "execgate" / "examples" / "mcp.rego"
ENV = {**os.environ, "PYTHONPATH": str(ROOT / "python")}
TIMEOUT = 30

TOKENS = {
    hashlib.sha256(b"alice-token").hexdigest(): {"id": "alice", "roles": ["dev"]},
    hashlib.sha256(b"bob-token").hexdigest(): {"id": "bob", "roles": ["dev"]},
}


def elicit(answer: bool | None) -> Any:
    """An MCP client's elicitation callback answering every approval question
    with ``answer`` (None: declines); ``callback.asked`` lists the questions."""
    import mcp.types

    async def callback(context: Any, params: Any) -> mcp.types.ElicitResult:
        callback.asked.append(params.message)  # type: ignore[attr-defined]
        if answer is None:
            return mcp.types.ElicitResult(action="decline")
        return mcp.types.ElicitResult(action="accept", content={"approve": answer})

    callback.asked = []  # type: ignore[attr-defined]
    return callback


def key_and_log(tmp: pathlib.Path) -> tuple[SigningKey, pathlib.Path, pathlib.Path]:
    """A fresh signing key (saved in ``tmp``) and where its audit log goes."""
    key = SigningKey.generate()
    key.to_pem(tmp / "k.pem")
    return key, tmp / "k.pem", tmp / "audit.jsonl"


def gateway_argv(key_path, log, *extra, policy=POLICY):
    """``python -m execgate mcp`` with the policy, key and log, then ``extra``."""
    return [
        "-m",
        "execgate",
        "mcp",
        "--policy",
        str(policy),
        "--key",
        str(key_path),
        "--log",
        str(log),
        *extra,
    ]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def listening() -> socket.socket:
    """A TCP socket listening on a free local port (what a confined server must not reach)."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(1)
    return sock


def _wait_port(port: int, proc: subprocess.Popen[bytes]) -> None:
    end = time.monotonic() + TIMEOUT
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise AssertionError(f"exited early: {proc.stderr.read().decode()[-2000:]}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.1)
    raise AssertionError(f"nothing listens on {port}")


def stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM, then SIGKILL after 10 s; closes its stderr pipe."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
    if proc.stderr is not None:
        proc.stderr.close()


@contextlib.contextmanager
def serving(argv, port):
    """``python ARGV`` until the block ends, once something listens on ``port``."""
    proc = subprocess.Popen([sys.executable, *argv], env=ENV, stderr=subprocess.PIPE)
    try:
        _wait_port(port, proc)
        yield proc
    finally:
        stop(proc)


@contextlib.contextmanager
def http_gateway(tmp, *extra, upstream=True, tokens=TOKENS, policy=POLICY):
    """`execgate mcp --listen` in front of the demo server, with ``extra``
    flags: an SDK server over Streamable HTTP as ``--upstream`` or, with
    ``upstream=False``, the stdio demo server as ``-- COMMAND`` (``extra`` may
    end with its own ``-- COMMAND``). Yields what the tests need."""
    key, key_path, log = key_and_log(tmp)
    (tmp / "tokens.json").write_text(json.dumps(tokens))
    mine = free_port()
    listen = ["--listen", f"127.0.0.1:{mine}", "--tokens", str(tmp / "tokens.json")]
    with contextlib.ExitStack() as stack:
        server = None
        if upstream:
            up = free_port()
            server = stack.enter_context(serving([str(SERVER), "http", str(up)], up))
            listen += ["--upstream", f"http://127.0.0.1:{up}/mcp"]
        elif "--" not in extra:
            extra = (*extra, "--", sys.executable, str(SERVER))
        proxy = stack.enter_context(
            serving(gateway_argv(key_path, log, *listen, *extra, policy=policy), mine)
        )
        yield {
            "url": f"http://127.0.0.1:{mine}/mcp",
            "log": log,
            "key": key,
            "proxy": proxy,
            "server": server,
        }


def run(coro):
    """Runs ``coro`` to its end, within TIMEOUT."""

    async def bounded():
        return await asyncio.wait_for(coro, TIMEOUT)

    return asyncio.run(bounded())


def text(result) -> str:
    return " ".join(getattr(c, "text", "") for c in result.content)


def records(log):
    lines = log.read_text().splitlines() if log.exists() else []
    return [execgate.Receipt.from_json(line).payload for line in lines if line]


def verified(log, key):
    """The log's verification report, asserted ok with nothing unfinished. A
    live gateway answers a call before its completion record is written, so
    calls still unfinished are given until TIMEOUT to complete."""
    end = time.monotonic() + TIMEOUT
    while True:
        report = execgate.verify_log(str(log), [key.verify_key])
        assert report.ok, report.reason
        if report.unfinished_count == 0 or time.monotonic() > end:
            break
        time.sleep(0.05)
    assert report.unfinished_count == 0, report.unfinished
    return report


@contextlib.asynccontextmanager
async def http_client(url, token, **options):
    """An SDK client over Streamable HTTP on its own HTTP client, both closed
    on the way out (the SDK leaves an HTTP client it was handed open)."""
    import httpx2
    from mcp import Client
    from mcp.client.streamable_http import streamable_http_client

    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with (
        httpx2.AsyncClient(headers=headers, timeout=TIMEOUT) as http,
        Client(streamable_http_client(url, http_client=http), mode="legacy", **options) as client,
    ):
        yield client


def servers(marker: str) -> list[int]:
    """Live demo servers started with the argument ``marker``."""
    return pids(lambda argv: argv[1:3] == [str(SERVER).encode(), marker.encode()])

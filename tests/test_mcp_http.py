"""`execgate mcp --listen` over Streamable HTTP, with a real SDK server and client."""

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

import pytest

mcp = pytest.importorskip("mcp")
httpx2 = pytest.importorskip("httpx2")

from mcp import Client  # noqa: E402
from mcp.client.streamable_http import streamable_http_client  # noqa: E402

import execgate  # noqa: E402
from execgate import SigningKey  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parent.parent
SERVER = ROOT / "tests" / "mcp_servers" / "demo_server.py"
POLICY = ROOT / "python" / "execgate" / "examples" / "mcp.rego"
TIMEOUT = 30


def _port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_port(port, proc):
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


@pytest.fixture(scope="module")
def gateway(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("mcp_http")
    key = SigningKey.generate()
    key.to_pem(tmp / "k.pem")
    log = tmp / "audit.jsonl"
    tokens = {
        hashlib.sha256(b"alice-token").hexdigest(): {"id": "alice", "roles": ["dev"]},
        hashlib.sha256(b"bob-token").hexdigest(): {"id": "bob", "roles": ["dev"]},
    }
    (tmp / "tokens.json").write_text(json.dumps(tokens))
    env = {**os.environ, "PYTHONPATH": str(ROOT / "python")}
    up, mine = _port(), _port()
    server = subprocess.Popen(
        [sys.executable, str(SERVER), "http", str(up)], env=env, stderr=subprocess.PIPE
    )
    proxy = None
    try:
        _wait_port(up, server)
        proxy = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "execgate",
                "mcp",
                "--policy",
                str(POLICY),
                "--key",
                str(tmp / "k.pem"),
                "--log",
                str(log),
                "--listen",
                f"127.0.0.1:{mine}",
                "--upstream",
                f"http://127.0.0.1:{up}/mcp",
                "--tokens",
                str(tmp / "tokens.json"),
            ],
            env=env,
            stderr=subprocess.PIPE,
        )
        _wait_port(mine, proxy)
        yield {"url": f"http://127.0.0.1:{mine}/mcp", "log": log, "key": key, "proxy": proxy}
    finally:
        for p in (proxy, server):
            if p is not None:
                p.terminate()
                try:
                    p.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait(timeout=10)
                if p.stderr is not None:
                    p.stderr.close()


@contextlib.asynccontextmanager
async def _client(url, token):
    """An SDK client over its own HTTP client, both closed on the way out (the
    SDK leaves an HTTP client it was handed open)."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with (
        httpx2.AsyncClient(headers=headers, timeout=TIMEOUT) as http,
        Client(streamable_http_client(url, http_client=http), mode="legacy") as client,
    ):
        yield client


def _run(coro):
    async def bounded():
        return await asyncio.wait_for(coro, TIMEOUT)

    return asyncio.run(bounded())


def _text(result):
    return " ".join(getattr(c, "text", "") for c in result.content)


def _records(log):
    lines = log.read_text().splitlines()
    return [execgate.Receipt.from_json(line).payload for line in lines if line]


def test_http_gates_calls_with_the_tokens_principal(gateway):
    async def session():
        async with _client(gateway["url"], "alice-token") as c:
            names = {t.name for t in (await c.list_tools()).tools}
            echo = await c.call_tool("echo", {"text": "over http"})
            card = await c.call_tool("contact", {"name": "Bo"})
            hidden = await c.call_tool("admin_reset", {})
            deploy = await c.call_tool("deploy", {"service": "web"})  # no elicitation: denied
            return names, echo, card, hidden, deploy

    names, echo, card, hidden, deploy = _run(session())
    assert "echo" in names and "admin_reset" not in names
    assert _text(echo) == "over http" and echo.meta["execgate"]["receipt"]
    assert card.structured_content == {"name": "Bo", "email": "[email]"}
    assert "bo@example.com" not in _text(card)
    assert hidden.is_error and deploy.is_error
    records = [r for r in _records(gateway["log"]) if r["kind"] == "decision"]
    echo_record = next(r for r in records if r["id"] == echo.meta["execgate"]["receipt"])
    assert echo_record["principal"]["id"] == "alice"  # from the token, not the client
    assert echo_record["context"]["mcp"]["server"] == "demo-server"


@pytest.mark.parametrize("token", [None, "wrong-token"])
def test_http_401_without_a_valid_token(gateway, token):
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    body = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "tools/call",
        "params": {"name": "echo", "arguments": {"text": "x"}},
    }
    r = httpx2.post(
        gateway["url"],
        json=body,
        headers={**headers, "Accept": "application/json, text/event-stream"},
        timeout=TIMEOUT,
    )
    assert r.status_code == 401


def test_http_eight_concurrent_clients(gateway):
    async def one(i):
        async with _client(gateway["url"], "bob-token" if i % 2 else "alice-token") as c:
            return [_text(await c.call_tool("echo", {"text": f"{i}-{n}"})) for n in range(5)]

    async def many():
        return await asyncio.gather(*(one(i) for i in range(8)))

    results = _run(many())
    assert results == [[f"{i}-{n}" for n in range(5)] for i in range(8)]


def test_http_log_verifies(gateway):
    report = execgate.verify_log(str(gateway["log"]), [gateway["key"].verify_key])
    assert report.ok, report.reason
    assert report.unfinished_count == 0
    assert report.completions == report.allowed

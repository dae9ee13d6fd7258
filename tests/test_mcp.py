"""`execgate mcp` over stdio, with a real MCP SDK server and a real SDK client.

Each test starts the proxy as `python -m execgate mcp ... -- python demo_server.py`
(the CLI MCP hosts launch), talks to it with the official SDK's `Client`, and
checks what the client saw, what the server saw (its `calls` tool) and the
signed audit log.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

mcp = pytest.importorskip("mcp")

from mcp import Client, StdioServerParameters  # noqa: E402

import execgate  # noqa: E402
from mcp_stack import (  # noqa: E402
    ENV,
    POLICY,
    ROOT,
    SERVER,
    TIMEOUT,
    elicit,
    gateway_argv,
    key_and_log,
    listening,
    records,
    run,
    text,
    verified,
)


@pytest.fixture
def keyed(tmp_path):
    return key_and_log(tmp_path)


def _proxy_argv(key_path, log, *extra, server=None):
    """The stdio gateway as agent-7, in front of ``server`` (the demo server)."""
    principal = ["--principal", "agent-7", "--role", "agent"]
    server = server or [sys.executable, str(SERVER)]
    return gateway_argv(key_path, log, *principal, *extra, "--", *server)


def _params(key_path, log, *extra, server=None):
    return StdioServerParameters(
        command=sys.executable, args=_proxy_argv(key_path, log, *extra, server=server), env=ENV
    )


def test_allowed_denied_redacted_hidden_over_stdio(keyed):
    key, key_path, log = keyed

    async def session():
        async with Client(_params(key_path, log)) as client:  # mode="auto": discover falls back
            names = {t.name for t in (await client.list_tools()).tools}
            echo = await client.call_tool("echo", {"text": "hello"})
            added = await client.call_tool("add", {"a": 2, "b": 3})
            card = await client.call_tool("contact", {"name": "Ann"})
            hidden = await client.call_tool("admin_reset", {})
            outside = await client.call_tool("delete", {"path": "/etc/passwd"})
            inside = await client.call_tool("delete", {"path": "/tmp/scratch/a.txt"})
            failed = await client.call_tool("fail", {})
            seen = await client.call_tool("calls", {})
            return names, echo, added, card, hidden, outside, inside, failed, seen

    names, echo, added, card, hidden, outside, inside, failed, seen = run(session())
    assert "echo" in names and "contact" in names
    assert "admin_reset" not in names  # hidden by data.execgate.visible
    assert text(echo) == "hello" and not echo.is_error
    assert echo.meta["execgate"]["decision"] == "allow"
    assert echo.meta["execgate"]["receipt"]
    assert added.structured_content == {"result": 5}
    # Output redaction covers the text and the structured content.
    assert "ann@example.com" not in text(card)
    assert card.structured_content == {"name": "Ann", "email": "[email]"}
    # Denied calls: isError, the reasons as text, decision and receipt in _meta.
    assert hidden.is_error and "denied by policy" in text(hidden)
    assert hidden.meta["execgate"]["decision"] == "deny"
    assert hidden.meta["execgate"]["receipt"]
    assert outside.is_error and "delete outside /tmp/scratch" in text(outside)
    assert not inside.is_error and text(inside) == "deleted /tmp/scratch/a.txt"
    assert failed.is_error
    # The server never saw a denied call.
    assert seen.structured_content["result"] == ["echo", "add", "contact", "delete", "fail"]

    report = verified(log, key)
    logged = records(log)
    decisions = [r for r in logged if r["kind"] == "decision"]
    completions = {r["authorization"]["id"]: r for r in logged if r["kind"] == "completion"}
    assert report.denied == 2 and report.allowed == 6
    for d in decisions:
        assert d["principal"]["id"] == "agent-7"
        assert d["context"]["mcp"] == {
            "server": "demo-server",
            "client": "mcp",
            "protocol": "2025-11-25",
        }
        assert d["context"]["tool_call_id"]
        if d["decision"] == "allow":
            assert d["id"] in completions  # every allowed call has its completion
    statuses = {
        completions[d["id"]]["outcome"]["status"]
        for d in decisions
        if d["decision"] == "allow" and d["action"]["name"] == "fail"
    }
    assert statuses == {"error"}  # isError -> a failed completion


@pytest.mark.parametrize("answer", [True, False, None])
def test_approval_by_elicitation(keyed, answer):
    key, key_path, log = keyed
    callback = elicit(answer)

    async def session():
        async with Client(
            _params(key_path, log), mode="legacy", elicitation_callback=callback
        ) as c:
            result = await c.call_tool("deploy", {"service": "web"})
            seen = await c.call_tool("calls", {})
            return result, seen

    result, seen = run(session())
    assert len(callback.asked) == 1 and "deploy" in callback.asked[0]
    assert "deploys need a human" in callback.asked[0]
    if answer is True:
        assert not result.is_error and text(result) == "deployed web"
        assert seen.structured_content["result"] == ["deploy"]
    else:
        assert result.is_error and "denied" in text(result)
        assert seen.structured_content["result"] == []
    verified(log, key)
    deploys = [r for r in records(log) if r.get("action", {}).get("name") == "deploy"]
    assert len(deploys) == 1 and deploys[0]["approval"]["approved"] is (answer is True)
    assert deploys[0]["decision"] == ("allow" if answer is True else "deny")


def test_approval_without_elicitation_capability_fails_closed(keyed):
    key, key_path, log = keyed

    async def session():
        async with Client(_params(key_path, log), mode="legacy") as c:
            return await c.call_tool("deploy", {"service": "web"}), await c.call_tool("calls", {})

    result, seen = run(session())
    assert result.is_error and "approval" in text(result).lower()
    assert seen.structured_content["result"] == []
    verified(log, key)


def test_rate_limit(keyed, tmp_path):
    key, key_path, log = keyed
    data = tmp_path / "limits.json"
    data.write_text(json.dumps({"execgate_mcp": {"rate_limit": 2}}))

    async def session():
        async with Client(_params(key_path, log, "--data", str(data)), mode="legacy") as c:
            return [await c.call_tool("echo", {"text": str(i)}) for i in range(3)]

    results = run(session())
    assert [r.is_error for r in results] == [False, False, True]
    assert "rate" in text(results[2]).lower()
    verified(log, key)


def test_published_server_mcp_server_time(keyed):
    pytest.importorskip("mcp_server_time")
    key, key_path, log = keyed
    server = [sys.executable, "-m", "mcp_server_time", "--local-timezone", "UTC"]

    async def session():
        async with Client(_params(key_path, log, server=server), mode="legacy") as c:
            names = {t.name for t in (await c.list_tools()).tools}
            now = await c.call_tool("get_current_time", {"timezone": "Europe/Paris"})
            return names, now

    names, now = run(session())
    assert {"get_current_time", "convert_time"} <= names
    assert not now.is_error and "Europe/Paris" in text(now)
    assert records(log)[0]["context"]["mcp"]["server"] == "mcp-time"
    verified(log, key)


def test_sandboxed_server(keyed, tmp_path):
    key, key_path, log = keyed
    secret = tmp_path / "secret.txt"
    secret.write_text("top secret")
    sock = listening()
    port = sock.getsockname()[1]
    flags = ["--read", str(ROOT), "--read", sys.prefix, "--read", sys.base_prefix]
    flags += ["--memory", "1G", "--processes", "64"]

    async def session():
        async with Client(_params(key_path, log, *flags), mode="legacy") as c:
            own = await c.call_tool("read_file", {"path": str(SERVER)})
            other = await c.call_tool("read_file", {"path": str(secret)})
            net = await c.call_tool("connect", {"host": "127.0.0.1", "port": port})
            return own, other, net

    try:
        own, other, net = run(session())
    finally:
        sock.close()
    assert "MCPServer" in text(own)  # its own code is readable
    assert "top secret" not in text(other) and "PermissionError" in text(other)
    assert "connected" != text(net) and "error" in text(net)
    verified(log, key)


EGRESS_POLICY = """
package execgate
import rego.v1

default decision := {"allow": false, "reasons": ["not allowed"]}
default visible := true

decision := {"allow": true} if input.action.name in {"fetch", "calls"}

decision := {"allow": count(deny) == 0, "reasons": sort(deny)} if {
    input.action.name == "net.request"
}
deny contains sprintf("host %s is not allowed", [h]) if {
    h := input.action.args.host
    h != "127.0.0.1"
}
deny contains sprintf("path %s is not allowed", [p]) if {
    p := input.action.args.path
    startswith(p, "/admin")
}
"""


@pytest.mark.skipif(os.geteuid() != 0, reason="the proxy's network namespace needs root")
def test_a_sandboxed_server_reaches_the_network_only_through_the_egress_proxy(keyed, tmp_path):
    import http.server
    import threading

    key, key_path, log = keyed
    seen: list[str] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            seen.append(self.path)
            self.send_response(200)
            self.send_header("content-length", "5")
            self.end_headers()
            self.wfile.write(b"hello")

        def log_message(self, *args):
            pass

    web = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=web.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{web.server_address[1]}"
    policy = tmp_path / "egress.rego"
    policy.write_text(EGRESS_POLICY)
    argv = _proxy_argv(key_path, log, "--network", "proxy", "--read", str(ROOT))
    argv[argv.index(str(POLICY))] = str(policy)
    argv[argv.index("--") : argv.index("--")] = ["--read", sys.prefix, "--read", sys.base_prefix]
    params = StdioServerParameters(command=sys.executable, args=argv, env=ENV)

    async def session():
        async with Client(params, mode="legacy") as c:
            ok = await c.call_tool("fetch", {"url": f"{url}/data"})
            denied = await c.call_tool("fetch", {"url": f"{url}/admin"})
            elsewhere = await c.call_tool("fetch", {"url": "http://10.255.255.1/"})
            return ok, denied, elsewhere

    try:
        ok, denied, elsewhere = run(session())
    finally:
        web.shutdown()
        web.server_close()
    assert text(ok) == "hello"
    assert "403" in text(denied) and "path /admin is not allowed" in text(denied)
    assert "host 10.255.255.1 is not allowed" in text(elsewhere)
    assert seen == ["/data"]
    requests = [r for r in records(log) if r.get("action", {}).get("name") == "net.request"]
    assert [r["decision"] for r in requests] == ["allow", "deny", "deny"]
    assert all(r["principal"]["id"] == "agent-7" for r in requests)
    verified(log, key)


# -- hostile protocol: raw lines to the proxy --------------------------------------------


class Raw:
    """The proxy under a hand-written client that can send anything."""

    def __init__(self, key_path, log, *extra):
        self.proc = subprocess.Popen(
            [sys.executable, *_proxy_argv(key_path, log, *extra)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=ENV,
        )
        self.lines: list[dict] = []

    def send(self, obj):
        data = obj if isinstance(obj, bytes) else json.dumps(obj).encode()
        self.proc.stdin.write(data + b"\n")
        self.proc.stdin.flush()

    def read(self, want_id, deadline=TIMEOUT):
        end = time.monotonic() + deadline
        while time.monotonic() < end:
            for i, m in enumerate(self.lines):
                if isinstance(m, dict) and m.get("id") == want_id:
                    return self.lines.pop(i)
            line = self.proc.stdout.readline()
            if not line:
                break
            msg = json.loads(line)
            self.lines.extend(msg if isinstance(msg, list) else [msg])
        raise AssertionError(f"no answer with id {want_id!r}; got {self.lines}")

    def init(self, caps=None):
        self.send(
            {
                "jsonrpc": "2.0",
                "id": 0,
                "method": "initialize",
                "params": {
                    "protocolVersion": "2025-06-18",
                    "capabilities": caps or {},
                    "clientInfo": {"name": "raw", "version": "1"},
                },
            }
        )
        assert self.read(0)["result"]["serverInfo"]["name"] == "demo-server"
        self.send({"jsonrpc": "2.0", "method": "notifications/initialized"})

    def call(self, id_, name, args=None):
        self.send(
            {
                "jsonrpc": "2.0",
                "id": id_,
                "method": "tools/call",
                "params": {"name": name, "arguments": args or {}},
            }
        )

    def close(self):
        try:
            self.proc.stdin.close()
        except BrokenPipeError:
            pass
        try:
            return self.proc.wait(timeout=TIMEOUT)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait(timeout=TIMEOUT)
            self.stderr = self.proc.stderr.read().decode()
            self.proc.stdout.close()
            self.proc.stderr.close()


def test_hostile_lines_never_crash_or_pass(keyed):
    key, key_path, log = keyed
    raw = Raw(key_path, log)
    try:
        raw.init()
        raw.send(b"this is not json")
        assert raw.read(None)["error"]["code"] == -32700
        raw.send(b'{"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "ec')
        raw.send(b"")  # the torn line above ends here: still not JSON
        assert raw.read(None)["error"]["code"] == -32700
        # A 10 MB message, over the 4 MiB cap: refused, never parsed or forwarded.
        big = {
            "jsonrpc": "2.0",
            "id": 2,
            "method": "tools/call",
            "params": {"name": "echo", "arguments": {"text": "x" * (10 << 20)}},
        }
        raw.send(big)
        assert raw.read(2)["error"]["code"] == -32600
        # A batch carrying a tools/call: refused as a whole.
        raw.send(
            [
                {
                    "jsonrpc": "2.0",
                    "id": 3,
                    "method": "tools/call",
                    "params": {"name": "echo", "arguments": {"text": "batched"}},
                }
            ]
        )
        assert raw.read(3)["error"]["code"] == -32600
        # A tools/call as a notification (no id): dropped.
        raw.send(
            {
                "jsonrpc": "2.0",
                "method": "tools/call",
                "params": {"name": "echo", "arguments": {"text": "note"}},
            }
        )
        # Task-augmented: refused.
        raw.send(
            {
                "jsonrpc": "2.0",
                "id": 4,
                "method": "tools/call",
                "params": {"name": "echo", "arguments": {"text": "t"}, "task": {"ttl": 1000}},
            }
        )
        assert raw.read(4)["error"]["code"] == -32602
        # Unknown and 2026-era methods: refused.
        raw.send({"jsonrpc": "2.0", "id": 5, "method": "tools/execute", "params": {}})
        assert raw.read(5)["error"]["code"] == -32601
        raw.send({"jsonrpc": "2.0", "id": 6, "method": "server/discover", "params": {}})
        assert raw.read(6)["error"]["code"] == -32601
        # Bad shapes: invalid ids and params.
        raw.send({"jsonrpc": "2.0", "id": 1.5, "method": "tools/call", "params": {"name": "echo"}})
        assert raw.read(None)["error"]["code"] == -32600
        raw.send({"jsonrpc": "2.0", "id": 7, "method": "tools/call", "params": {"name": 7}})
        assert raw.read(7)["error"]["code"] == -32602
        raw.send(
            {
                "jsonrpc": "2.0",
                "id": 8,
                "method": "tools/call",
                "params": {"name": "echo", "arguments": ["x"]},
            }
        )
        assert raw.read(8)["error"]["code"] == -32602
        # A duplicate id while the first call is in flight: refused.
        raw.call(9, "slow", {"seconds": 0.5})
        raw.call(9, "echo", {"text": "dup"})
        dup = raw.read(9)
        assert dup["error"]["code"] == -32600 and "in flight" in dup["error"]["message"]
        assert raw.read(9)["result"]["content"][0]["text"] == "done"
        # Duplicate keys: the gateway decides on the last "method" (a ping) and
        # the server gets that ping re-encoded, never the bytes a first-wins
        # parser would read as an undecided tools/call.
        raw.send(
            b'{"jsonrpc": "2.0", "id": 11, "method": "tools/call", '
            b'"params": {"name": "echo", "arguments": {"text": "smuggled"}}, "method": "ping"}'
        )
        assert raw.read(11)["result"] == {}
        # Still serving, and the server saw only what was allowed.
        raw.call(10, "calls")
        assert raw.read(10)["result"]["structuredContent"]["result"] == ["slow"]
    finally:
        raw.close()
    assert "refused a JSON-RPC batch" in raw.stderr
    assert "demo-server: call slow" in raw.stderr  # the server's stderr passes through
    verified(log, key)


def test_server_crash_mid_call_is_recorded_failed(keyed):
    key, key_path, log = keyed
    raw = Raw(key_path, log)
    try:
        raw.init()
        raw.call(1, "crash")
        answer = raw.read(1)
        assert answer["result"]["isError"] is True
        assert "exited" in answer["result"]["content"][0]["text"]
    finally:
        status = raw.close()
    assert status == 3  # the server's exit status
    verified(log, key)
    completion = next(r for r in records(log) if r["kind"] == "completion")
    assert completion["outcome"]["status"] == "error"
    assert completion["outcome"]["error_type"] == "server_exited"


def test_client_disconnect_mid_call(keyed):
    key, key_path, log = keyed
    raw = Raw(key_path, log)
    raw.init()
    raw.call(1, "slow", {"seconds": 30})
    time.sleep(0.5)
    raw.proc.stdout.close()
    started = time.monotonic()
    raw.close()
    assert time.monotonic() - started < 15  # the proxy stops the server and exits
    report = verified(log, key)
    assert report.allowed == 1 and report.completions == 1
    completion = next(r for r in records(log) if r["kind"] == "completion")
    assert completion["outcome"]["status"] == "error"


def test_client_gone_while_asked_is_a_recorded_denial(keyed):
    key, key_path, log = keyed
    raw = Raw(key_path, log)
    raw.init(caps={"elicitation": {}})
    raw.call(1, "deploy", {"service": "web"})
    asked = json.loads(raw.proc.stdout.readline())
    assert asked["method"] == "elicitation/create" and "deploy" in asked["params"]["message"]
    raw.close()  # gone without answering
    verified(log, key)
    [record] = records(log)
    assert record["action"]["name"] == "deploy" and record["decision"] == "deny"
    assert record["approval"]["approved"] is False


# -- the gateway in-process: result shapes the demo server does not produce ----------------


def _gateway(policy, visible=True):
    from execgate.integrations.mcp import Session, gateway_for

    gate = execgate.Gate(policy)
    return gateway_for(
        gate, policy, visible="data.execgate.visible" if visible else None
    ), Session()


def _forwarded(gw, session, id_, name, args=None):
    from execgate.integrations.mcp._gateway import Forward

    verdict = gw.inbound(
        session,
        {
            "jsonrpc": "2.0",
            "id": id_,
            "method": "tools/call",
            "params": {"name": name, "arguments": args or {}},
        },
    )
    assert isinstance(verdict, Forward), verdict
    return verdict.message


REDACTING = """package execgate
decision := {"allow": true, "obligations": {"redact": {"output": {"detectors": ["email"], "transform": "drop"}}}}
"""


def test_redaction_covers_embedded_resources_and_withholds_binary():
    gw, session = _gateway(REDACTING)
    _forwarded(gw, session, 1, "read")
    [out] = gw.outbound(
        session,
        {
            "jsonrpc": "2.0",
            "id": 1,
            "result": {
                "content": [
                    {"type": "text", "text": "mail ann@example.com"},
                    {
                        "type": "resource",
                        "resource": {"uri": "file:///a", "text": "bob@example.com"},
                    },
                ]
            },
        },
    )
    texts = [out["result"]["content"][0]["text"], out["result"]["content"][1]["resource"]["text"]]
    assert texts == ["mail [email]", "[email]"]
    _forwarded(gw, session, 2, "shot")
    [out] = gw.outbound(
        session,
        {
            "jsonrpc": "2.0",
            "id": 2,
            "result": {"content": [{"type": "image", "data": "aGk=", "mimeType": "image/png"}]},
        },
    )
    assert out["result"]["isError"] is True and "cannot be redacted" in json.dumps(out)


def test_server_batches_and_oversized_answers_are_still_watched():
    gw, session = _gateway(REDACTING)
    _forwarded(gw, session, 1, "a")
    [out] = gw.outbound(
        session,
        [
            {
                "jsonrpc": "2.0",
                "id": 1,
                "result": {"content": [{"type": "text", "text": "x@example.com"}]},
            }
        ],
    )
    assert out["result"]["content"][0]["text"] == "[email]"  # a batch does not bypass redaction
    _forwarded(gw, session, 2, "b")
    raw = b'{"jsonrpc":"2.0","id":2,"result":{"content":[{"type":"text","text":"' + b"y" * 100
    [out] = gw.oversized(session, raw, 64)
    assert out["id"] == 2 and out["result"]["isError"] is True
    assert not session.pending


def test_an_allowed_call_to_a_hidden_tool_is_refused():
    policy = """package execgate
decision := true
visible if input.action.name != "secret"
"""
    from execgate.integrations.mcp._gateway import Reply

    gw, session = _gateway(policy)
    verdict = gw.inbound(
        session,
        {
            "jsonrpc": "2.0",
            "id": 1,
            "method": "tools/call",
            "params": {"name": "secret", "arguments": {}},
        },
    )
    assert isinstance(verdict, Reply) and verdict.message["result"]["isError"] is True
    # Recorded as what it is: a deny the gateway refused, not an allow that failed.
    meta = verdict.message["result"]["_meta"]["execgate"]
    assert meta["decision"] == "deny" and "hidden" in " ".join(meta["reasons"])
    [out] = gw.outbound(session, {"jsonrpc": "2.0", "id": 9, "result": {"tools": []}})
    assert out["id"] == 9
    session.pending[("n", 3)] = __import__(
        "execgate.integrations.mcp._gateway", fromlist=["Pending"]
    ).Pending("tools/list", 3)
    [out] = gw.outbound(
        session,
        {"jsonrpc": "2.0", "id": 3, "result": {"tools": [{"name": "open"}, {"name": "secret"}]}},
    )
    assert [t["name"] for t in out["result"]["tools"]] == ["open"]


def test_the_server_gets_what_was_decided_not_the_clients_bytes():
    """A first-wins parser behind the gateway must not read a duplicate key
    the gateway (last-wins) decided differently: the relay re-encodes."""
    from execgate.integrations.mcp.stdio import StdioProxy, _Out

    gw, _session = _gateway(REDACTING)
    proxy = StdioProxy(gw, ["unused"], log=lambda _line: None)
    r, w = os.pipe()
    proxy._to_server = _Out(w, owned=True)
    try:
        proxy._from_client(b'{"jsonrpc": "2.0", "id": 1, "method": "tools/call", "method": "ping"}')
        proxy._from_client(
            b'{"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {"name": "rm", '
            b'"arguments": {"path": "/etc/passwd", "path": "/tmp/scratch/a"}}}'
        )
        lines = os.read(r, 65536).splitlines()
    finally:
        proxy._to_server.close()
        os.close(r)
    assert json.loads(lines[0]) == {"jsonrpc": "2.0", "id": 1, "method": "ping"}
    assert lines[0].count(b'"method"') == 1 and b"tools/call" not in lines[0]
    assert json.loads(lines[1])["params"]["arguments"] == {"path": "/tmp/scratch/a"}
    assert lines[1].count(b'"path"') == 1

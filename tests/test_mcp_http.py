"""`execgate mcp --listen` over Streamable HTTP, with a real SDK server and client."""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import subprocess
import sys
import time

import pytest

mcp = pytest.importorskip("mcp")
httpx2 = pytest.importorskip("httpx2")

import execgate  # noqa: E402
from mcp_stack import (  # noqa: E402
    ENV,
    POLICY,
    TIMEOUT,
    elicit,
    http_client,
    http_gateway,
    records,
    run,
    text,
    verified,
)


@pytest.fixture(scope="module")
def gateway(tmp_path_factory):
    with http_gateway(tmp_path_factory.mktemp("mcp_http")) as stack:
        yield stack


def test_http_gates_calls_with_the_tokens_principal(gateway):
    async def session():
        async with http_client(gateway["url"], "alice-token") as c:
            names = {t.name for t in (await c.list_tools()).tools}
            echo = await c.call_tool("echo", {"text": "over http"})
            card = await c.call_tool("contact", {"name": "Bo"})
            hidden = await c.call_tool("admin_reset", {})
            deploy = await c.call_tool("deploy", {"service": "web"})  # no elicitation: denied
            return names, echo, card, hidden, deploy

    names, echo, card, hidden, deploy = run(session())
    assert "echo" in names and "admin_reset" not in names
    assert text(echo) == "over http" and echo.meta["execgate"]["receipt"]
    assert card.structured_content == {"name": "Bo", "email": "[email]"}
    assert "bo@example.com" not in text(card)
    assert hidden.is_error and deploy.is_error
    decisions = [r for r in records(gateway["log"]) if r["kind"] == "decision"]
    echo_record = next(r for r in decisions if r["id"] == echo.meta["execgate"]["receipt"])
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
        async with http_client(gateway["url"], "bob-token" if i % 2 else "alice-token") as c:
            return [text(await c.call_tool("echo", {"text": f"{i}-{n}"})) for n in range(5)]

    async def many():
        return await asyncio.gather(*(one(i) for i in range(8)))

    results = run(many())
    assert results == [[f"{i}-{n}" for n in range(5)] for i in range(8)]


@pytest.mark.parametrize("answer", [True, False, None])
def test_http_approval_by_elicitation(gateway, answer):
    callback = elicit(answer)
    service = f"svc-{answer}"

    async def session():
        async with http_client(gateway["url"], "alice-token", elicitation_callback=callback) as c:
            before = (await c.call_tool("calls", {})).structured_content["result"]
            result = await c.call_tool("deploy", {"service": service})
            after = (await c.call_tool("calls", {})).structured_content["result"]
            return result, after[len(before) :]

    result, seen = run(session())
    assert len(callback.asked) == 1 and "deploy" in callback.asked[0]
    assert "deploys need a human" in callback.asked[0]
    if answer is True:
        assert not result.is_error and text(result) == f"deployed {service}"
        assert seen == ["deploy"]
    else:
        assert result.is_error and "denied" in text(result)
        assert seen == []  # the server never saw it
    record = [
        r
        for r in records(gateway["log"])
        if r["kind"] == "decision" and r["action"]["name"] == "deploy"
    ][-1]
    assert record["approval"]["approved"] is (answer is True)
    assert record["approval"]["approver"] == "mcp-elicitation:mcp"
    assert record["decision"] == ("allow" if answer is True else "deny")
    assert record["principal"]["id"] == "alice"


def test_http_approval_without_elicitation_capability_fails_closed(gateway):
    async def session():
        async with http_client(gateway["url"], "alice-token") as c:
            before = (await c.call_tool("calls", {})).structured_content["result"]
            result = await c.call_tool("deploy", {"service": "no-capability"})
            after = (await c.call_tool("calls", {})).structured_content["result"]
            return result, after[len(before) :]

    result, seen = run(session())
    assert result.is_error and "approval" in text(result).lower()
    assert seen == []


def test_http_log_verifies(gateway):
    report = verified(gateway["log"], gateway["key"])
    assert report.completions == report.allowed


def test_http_rate_limit(tmp_path):
    data = tmp_path / "limits.json"
    data.write_text(json.dumps({"execgate_mcp": {"rate_limit": 2}}))

    async def session(url):
        async with http_client(url, "alice-token") as c:
            results = [await c.call_tool("echo", {"text": str(i)}) for i in range(3)]
        async with http_client(url, "bob-token") as c:  # bob's own rate: not spent
            seen = (await c.call_tool("calls", {})).structured_content["result"]
        return results, seen

    with http_gateway(tmp_path, "--data", str(data)) as stack:
        results, seen = run(session(stack["url"]))
        log, key = stack["log"], stack["key"]
    assert [r.is_error for r in results] == [False, False, True]
    assert "rate" in text(results[2]).lower()
    assert seen == ["echo", "echo"]  # the call past the rate never reached the server
    report = execgate.verify_log(str(log), [key.verify_key])
    assert report.ok and report.denied == 1 and report.completions == report.allowed == 3


# -- hostile protocol over HTTP: raw requests to the relay ---------------------------------


class RawHTTP:
    """A hand-written Streamable HTTP client that can send anything."""

    def __init__(self, url, token="alice-token"):
        self.url = url
        self.http = httpx2.Client(timeout=TIMEOUT)
        self.headers = {
            "Authorization": f"Bearer {token}",
            "Accept": "application/json, text/event-stream",
            "Content-Type": "application/json",
        }
        self.sid = None

    def post(self, body, *, sid=True, **headers):
        h = {**self.headers, **headers}
        if sid and self.sid:
            h["Mcp-Session-Id"] = self.sid
        content = body if isinstance(body, bytes) else json.dumps(body).encode()
        return self.http.post(self.url, content=content, headers=h)

    @staticmethod
    def messages(response):
        """The JSON-RPC messages of a JSON or SSE answer."""
        if response.headers.get("content-type", "").startswith("text/event-stream"):
            return [
                json.loads(line[5:])
                for line in response.text.splitlines()
                if line.startswith("data:") and line[5:].strip()
            ]
        body = response.json()
        return body if isinstance(body, list) else [body]

    def init(self):
        r = self.post(
            {
                "jsonrpc": "2.0",
                "id": 0,
                "method": "initialize",
                "params": {
                    "protocolVersion": "2025-06-18",
                    "capabilities": {},
                    "clientInfo": {"name": "raw", "version": "1"},
                },
            }
        )
        assert r.status_code == 200, r.text
        self.sid = r.headers["mcp-session-id"]
        assert self.messages(r)[0]["result"]["serverInfo"]["name"] == "demo-server"
        assert (
            self.post({"jsonrpc": "2.0", "method": "notifications/initialized"}).status_code == 202
        )
        self.headers["Mcp-Protocol-Version"] = "2025-06-18"

    def call(self, id_, name, args=None, **options):
        body = {
            "jsonrpc": "2.0",
            "id": id_,
            "method": "tools/call",
            "params": {"name": name, "arguments": args or {}},
        }
        return self.post(body, **options)

    def seen(self, id_=1000):
        [answer] = self.messages(self.call(id_, "calls"))
        return answer["result"]["structuredContent"]["result"]

    def close(self):
        self.http.close()


def test_http_hostile_requests_never_crash_or_pass(tmp_path):
    with http_gateway(tmp_path) as stack:
        raw = RawHTTP(stack["url"])
        try:
            raw.init()
            r = raw.post(b"this is not json")
            assert r.status_code == 400 and r.json()["error"]["code"] == -32700
            # A 10 MB body, over the 4 MiB cap: 413, never read whole nor relayed;
            # with a Content-Length and chunked without one.
            big = {
                "jsonrpc": "2.0",
                "id": 2,
                "method": "tools/call",
                "params": {"name": "echo", "arguments": {"text": "x" * (10 << 20)}},
            }
            assert raw.post(big).status_code == 413
            data = json.dumps(big).encode()
            chunked = raw.http.post(
                raw.url,
                content=(data[i : i + 65536] for i in range(0, len(data), 65536)),
                headers={**raw.headers, "Mcp-Session-Id": raw.sid},
            )
            assert chunked.status_code == 413 and "cap" in chunked.json()["error"]["message"]
            # A batch carrying a tools/call: refused as a whole.
            batch = [
                {
                    "jsonrpc": "2.0",
                    "id": 3,
                    "method": "tools/call",
                    "params": {"name": "echo", "arguments": {"text": "batched"}},
                },
                {"jsonrpc": "2.0", "id": 4, "method": "ping"},
            ]
            answers = raw.messages(raw.post(batch))
            assert sorted(a["id"] for a in answers) == [3, 4]
            assert {a["error"]["code"] for a in answers} == {-32600}
            # A tools/call as a notification: dropped (202, nothing relayed).
            note = {
                "jsonrpc": "2.0",
                "method": "tools/call",
                "params": {"name": "echo", "arguments": {"text": "note"}},
            }
            assert raw.post(note).status_code == 202
            # Unknown and 2026-era methods, task-augmented calls: refused.
            for id_, method in ((5, "tools/execute"), (6, "server/discover")):
                r = raw.post({"jsonrpc": "2.0", "id": id_, "method": method, "params": {}})
                assert raw.messages(r)[0]["error"]["code"] == -32601
            task = {
                "jsonrpc": "2.0",
                "id": 7,
                "method": "tools/call",
                "params": {"name": "echo", "arguments": {}, "task": {"ttl": 1000}},
            }
            assert raw.messages(raw.post(task))[0]["error"]["code"] == -32602
            # No session id once the upstream issues them: 400; an unknown
            # one, or another token's: 404. None of them decided or relayed.
            assert raw.call(8, "echo", {"text": "no session"}, sid=False).status_code == 400
            r = raw.call(8, "echo", {"text": "?"}, **{"Mcp-Session-Id": "f" * 32}, sid=False)
            assert r.status_code == 404
            bob = RawHTTP(stack["url"], token="bob-token")
            bob.sid = raw.sid
            try:
                assert bob.call(8, "echo", {"text": "not bob's"}).status_code == 404
            finally:
                bob.close()
            # A duplicate id while the first call is in flight: refused.
            with concurrent.futures.ThreadPoolExecutor(2) as pool:
                slow = pool.submit(raw.call, 9, "slow", {"seconds": 1.0})
                time.sleep(0.4)
                dup = raw.messages(raw.call(9, "echo", {"text": "dup"}))[0]
                first = raw.messages(slow.result())[0]
            assert dup["error"]["code"] == -32600 and "in flight" in dup["error"]["message"]
            assert first["result"]["content"][0]["text"] == "done"
            # Duplicate keys: decided on the last "method" (a ping), and the
            # upstream gets that ping re-encoded, not the client's bytes.
            r = raw.post(
                b'{"jsonrpc": "2.0", "id": 11, "method": "tools/call", '
                b'"params": {"name": "echo", "arguments": {"text": "smuggled"}}, "method": "ping"}'
            )
            assert raw.messages(r)[0]["result"] == {}
            # Still serving, and the server saw only what was decided and allowed.
            assert raw.seen() == ["slow"]
        finally:
            raw.close()
        report = verified(stack["log"], stack["key"])
    assert report.allowed == report.completions == 2  # slow and calls
    assert report.denied == 0


def _wait_completion(log, name):
    end = time.monotonic() + TIMEOUT
    while time.monotonic() < end:
        seen = records(log)
        ids = {r["id"] for r in seen if r["kind"] == "decision" and r["action"]["name"] == name}
        done = [r for r in seen if r["kind"] == "completion" and r["authorization"]["id"] in ids]
        if done:
            return done
        time.sleep(0.1)
    raise AssertionError(f"no completion for {name}")


def test_http_client_disconnect_mid_call(tmp_path):
    with http_gateway(tmp_path) as stack:
        raw = RawHTTP(stack["url"])
        try:
            raw.init()
            body = json.dumps(
                {
                    "jsonrpc": "2.0",
                    "id": 1,
                    "method": "tools/call",
                    "params": {"name": "slow", "arguments": {"seconds": 30}},
                }
            ).encode()
            with raw.http.stream(
                "POST",
                raw.url,
                content=body,
                headers={**raw.headers, "Mcp-Session-Id": raw.sid},
            ) as r:
                assert r.status_code == 200
            raw.http.close()  # gone, mid-call
            [completion] = _wait_completion(stack["log"], "slow")
            assert completion["outcome"]["status"] == "error"
            assert completion["outcome"]["error_type"] == "client_disconnected"
            assert stack["proxy"].poll() is None  # the relay keeps serving
        finally:
            raw.close()
        verified(stack["log"], stack["key"])


def test_http_client_gone_while_asked_is_a_recorded_denial(tmp_path):
    with http_gateway(tmp_path) as stack:
        raw = RawHTTP(stack["url"])
        try:
            r = raw.post(
                {
                    "jsonrpc": "2.0",
                    "id": 0,
                    "method": "initialize",
                    "params": {
                        "protocolVersion": "2025-06-18",
                        "capabilities": {"elicitation": {}},
                        "clientInfo": {"name": "raw", "version": "1"},
                    },
                }
            )
            raw.sid = r.headers["mcp-session-id"]
            raw.post({"jsonrpc": "2.0", "method": "notifications/initialized"})
            body = json.dumps(
                {
                    "jsonrpc": "2.0",
                    "id": 1,
                    "method": "tools/call",
                    "params": {"name": "deploy", "arguments": {"service": "web"}},
                }
            ).encode()
            headers = {**raw.headers, "Mcp-Session-Id": raw.sid}
            with raw.http.stream("POST", raw.url, content=body, headers=headers) as r:
                assert r.headers["content-type"].startswith("text/event-stream")
                line = next(x for x in r.iter_lines() if x.startswith("data:"))
                assert json.loads(line[5:])["method"] == "elicitation/create"
            raw.http.close()  # gone without answering
            end = time.monotonic() + TIMEOUT
            while time.monotonic() < end and not stack["log"].exists():
                time.sleep(0.1)
            time.sleep(0.5)
            [record] = records(stack["log"])
        finally:
            raw.close()
    assert record["action"]["name"] == "deploy" and record["decision"] == "deny"
    assert record["approval"]["approved"] is False


def test_http_upstream_crash_mid_call_is_recorded_failed(tmp_path):
    async def session(url):
        async with http_client(url, "alice-token") as c:
            return await c.call_tool("crash", {})

    with http_gateway(tmp_path) as stack:
        result = run(session(stack["url"]))
        stack["server"].wait(timeout=TIMEOUT)
        log, key = stack["log"], stack["key"]
    assert result.is_error and "upstream" in text(result)
    [completion] = [r for r in records(log) if r["kind"] == "completion"]
    assert completion["outcome"]["status"] == "error"
    assert completion["outcome"]["error_type"] == "upstream_failed"
    verified(log, key)


@pytest.mark.parametrize(
    ("flags", "said"),
    [
        (
            ["--listen", "127.0.0.1:1", "--upstream", "http://127.0.0.1:2/mcp", "--read", "/"],
            "sandbox",
        ),
        (["--upstream", "http://127.0.0.1:2/mcp"], "--listen"),
        (
            ["--listen", "127.0.0.1:1", "--upstream", "http://127.0.0.1:2/mcp", "--", "true"],
            "no command",
        ),
        (["--listen", "127.0.0.1:1"], "command"),
    ],
)
def test_http_usage_errors(tmp_path, flags, said):
    """Sandbox flags confine only a server the gateway starts; --upstream and a
    command exclude each other; exit status 2, nothing served."""
    argv = [sys.executable, "-m", "execgate", "mcp", "--policy", str(POLICY), *flags]
    done = subprocess.run(argv, env=ENV, capture_output=True, timeout=TIMEOUT, cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    assert said in done.stderr.decode()

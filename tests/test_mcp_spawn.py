"""`execgate mcp --listen ... -- COMMAND`: a stdio SDK server the gateway starts,
confined, once per HTTP session, and serves over Streamable HTTP to SDK clients."""

from __future__ import annotations

import concurrent.futures
import json
import os
import signal
import sys
import time
import uuid

import pytest

mcp = pytest.importorskip("mcp")
httpx2 = pytest.importorskip("httpx2")

from mcp_stack import (  # noqa: E402
    ROOT,
    SERVER,
    TIMEOUT,
    http_client,
    http_gateway,
    listening,
    records,
    run,
    servers,
    text,
    verified,
)

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the sandbox's namespaces need root")

# The interpreter and the demo server must be readable inside the box.
BOX = ["--read", str(ROOT), "--read", sys.prefix, "--read", sys.base_prefix]
BOX += ["--memory", "1G", "--processes", "64"]

OPEN_POLICY = """package execgate
default visible := true
decision := {"allow": true}
"""


def _server(marker):
    """The demo server's command, with an argument naming this gateway's children."""
    return ["--", sys.executable, str(SERVER), marker]


@pytest.fixture(scope="module")
def spawned(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("mcp_spawn")
    marker = f"spawn-{uuid.uuid4().hex}"
    with http_gateway(tmp, *BOX, *_server(marker), upstream=False) as stack:
        yield {**stack, "marker": marker}


def _calls(result):
    return result.structured_content["result"]


def test_spawned_server_gated_with_the_tokens_principal(spawned):
    async def session():
        async with http_client(spawned["url"], "alice-token") as c:
            names = {t.name for t in (await c.list_tools()).tools}
            echo = await c.call_tool("echo", {"text": "spawned"})
            card = await c.call_tool("contact", {"name": "Bo"})
            hidden = await c.call_tool("admin_reset", {})
            outside = await c.call_tool("delete", {"path": "/etc/passwd"})
            deploy = await c.call_tool("deploy", {"service": "web"})  # no elicitation
            seen = await c.call_tool("calls", {})
            return names, echo, card, hidden, outside, deploy, seen

    names, echo, card, hidden, outside, deploy, seen = run(session())
    assert "echo" in names and "admin_reset" not in names
    assert text(echo) == "spawned" and echo.meta["execgate"]["decision"] == "allow"
    assert card.structured_content == {"name": "Bo", "email": "[email]"}
    assert "bo@example.com" not in text(card)
    assert hidden.is_error and outside.is_error and deploy.is_error
    assert "delete outside /tmp/scratch" in text(outside)
    assert _calls(seen) == ["echo", "contact"]  # the server never saw the denied calls
    decisions = [r for r in records(spawned["log"]) if r["kind"] == "decision"]
    echo_record = next(r for r in decisions if r["id"] == echo.meta["execgate"]["receipt"])
    assert echo_record["principal"]["id"] == "alice"  # from the token, not the client
    assert echo_record["context"]["mcp"]["server"] == "demo-server"
    assert len(echo_record["context"]["session"]) == 32  # the Mcp-Session-Id


def test_each_token_gets_its_own_child(spawned):
    marker = spawned["marker"]

    async def both():
        async with (
            http_client(spawned["url"], "alice-token") as a,
            http_client(spawned["url"], "bob-token") as b,
        ):
            await a.call_tool("echo", {"text": "a"})
            await a.call_tool("add", {"a": 1, "b": 2})
            await b.call_tool("echo", {"text": "b"})
            live = len(servers(marker))
            return (
                _calls(await a.call_tool("calls", {})),
                _calls(await b.call_tool("calls", {})),
                live,
            )

    alice, bob, live = run(both())
    assert alice == ["echo", "add"] and bob == ["echo"]  # two servers, two histories
    assert live == 2
    end = time.monotonic() + TIMEOUT
    while servers(marker) and time.monotonic() < end:  # DELETE ended both
        time.sleep(0.1)
    assert servers(marker) == []
    principals = {
        r["context"]["session"]: r["principal"]["id"]
        for r in records(spawned["log"])
        if r["kind"] == "decision" and r["action"]["name"] in ("echo", "add")
    }
    assert sorted(principals.values()).count("bob") == 1


def _raw_init(url, token="alice-token", caps=None):
    http = httpx2.Client(
        timeout=TIMEOUT,
        headers={
            "Authorization": f"Bearer {token}",
            "Accept": "application/json, text/event-stream",
        },
    )
    r = http.post(
        url,
        json={
            "jsonrpc": "2.0",
            "id": 0,
            "method": "initialize",
            "params": {
                "protocolVersion": "2025-06-18",
                "capabilities": caps or {},
                "clientInfo": {"name": "raw", "version": "1"},
            },
        },
    )
    assert r.status_code == 200, r.text
    sid = r.headers["mcp-session-id"]
    http.headers["Mcp-Session-Id"] = sid
    http.headers["Mcp-Protocol-Version"] = "2025-06-18"
    assert (
        http.post(url, json={"jsonrpc": "2.0", "method": "notifications/initialized"}).status_code
        == 202
    )
    return http, sid


def _messages(response):
    if response.headers.get("content-type", "").startswith("text/event-stream"):
        return [json.loads(x[5:]) for x in response.text.splitlines() if x.startswith("data:")]
    body = response.json()
    return body if isinstance(body, list) else [body]


def _call(http, url, id_, name, args=None, **headers):
    body = {"jsonrpc": "2.0", "id": id_, "method": "tools/call"}
    body["params"] = {"name": name, "arguments": args or {}}
    return http.post(url, json=body, headers=headers)


def test_sessions_belong_to_their_token_and_end_on_delete(spawned):
    url = spawned["url"]
    http, sid = _raw_init(url)
    try:
        # JSON answers for a client that does not read SSE.
        r = _call(http, url, 1, "echo", {"text": "json"}, Accept="application/json")
        assert r.headers["content-type"] == "application/json"
        assert r.json()["result"]["content"][0]["text"] == "json"
        bob = httpx2.post(
            url,
            json={"jsonrpc": "2.0", "id": 2, "method": "ping"},
            headers={"Authorization": "Bearer bob-token", "Mcp-Session-Id": sid},
            timeout=TIMEOUT,
        )
        assert bob.status_code == 404  # not bob's session
        no_token = httpx2.post(url, json={"jsonrpc": "2.0", "id": 2, "method": "ping"})
        assert no_token.status_code == 401
        del http.headers["Mcp-Session-Id"]
        assert _call(http, url, 3, "echo", {"text": "x"}).status_code == 400  # no session id
        http.headers["Mcp-Session-Id"] = sid
        batch = http.post(url, json=[{"jsonrpc": "2.0", "id": 4, "method": "ping"}])
        assert [m["error"]["code"] for m in _messages(batch)] == [-32600]  # refused whole
        assert http.delete(url).status_code == 200
        assert _call(http, url, 5, "echo", {"text": "after"}).status_code == 404
    finally:
        http.close()


def _elicit(answer):
    async def callback(context, params):
        callback.asked.append(params.message)
        return mcp.types.ElicitResult(action="accept", content={"approve": answer})

    callback.asked = []
    return callback


@pytest.mark.parametrize("answer", [True, False])
def test_spawned_approval_by_elicitation(spawned, answer):
    callback = _elicit(answer)

    async def session():
        async with http_client(spawned["url"], "alice-token", elicitation_callback=callback) as c:
            result = await c.call_tool("deploy", {"service": f"svc-{answer}"})
            return result, _calls(await c.call_tool("calls", {}))

    result, seen = run(session())
    assert len(callback.asked) == 1 and "deploys need a human" in callback.asked[0]
    if answer:
        assert not result.is_error and text(result) == "deployed svc-True"
        assert seen == ["deploy"]
    else:
        assert result.is_error and "denied" in text(result)
        assert seen == []


def test_spawned_crash_mid_call_is_recorded_failed(spawned):
    url = spawned["url"]
    http, _ = _raw_init(url)
    try:
        [answer] = _messages(_call(http, url, 1, "crash"))
        assert answer["result"]["isError"] is True and "exited" in text_of(answer)
        end = time.monotonic() + TIMEOUT
        while time.monotonic() < end:
            r = http.post(url, json={"jsonrpc": "2.0", "id": 2, "method": "ping"})
            if r.status_code == 404:  # the session ended with its server
                break
            time.sleep(0.1)
        assert r.status_code == 404
    finally:
        http.close()
    [completion] = [
        r
        for r in records(spawned["log"])
        if r["kind"] == "completion" and r["outcome"].get("error_type") == "server_exited"
    ]
    assert completion["outcome"]["status"] == "error"


def text_of(message):
    return " ".join(c.get("text", "") for c in message["result"]["content"])


def test_spawned_hostile_requests_never_crash_or_pass(spawned):
    url = spawned["url"]
    http, _ = _raw_init(url)
    try:
        r = http.post(
            url, content=b"this is not json", headers={"Content-Type": "application/json"}
        )
        assert r.status_code == 400 and r.json()["error"]["code"] == -32700
        big = {"jsonrpc": "2.0", "id": 1, "method": "tools/call"}
        big["params"] = {"name": "echo", "arguments": {"text": "x" * (10 << 20)}}
        assert http.post(url, json=big).status_code == 413  # over the 4 MiB cap, never relayed
        note = {"jsonrpc": "2.0", "method": "tools/call", "params": {"name": "echo"}}
        assert http.post(url, json=note).status_code == 202  # dropped by the gateway
        # A second request with an id in flight: refused, not relayed.
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            slow = pool.submit(_call, http, url, 2, "slow", {"seconds": 1.0})
            time.sleep(0.4)
            dup = _call(http, url, 2, "echo", {"text": "dup"}).json()
            first = _messages(slow.result())[0]
        assert dup["error"]["code"] == -32600 and "in flight" in dup["error"]["message"]
        assert text_of(first) == "done"
        # The client goes away mid-call: the call runs to its end in the
        # session (recorded with its outcome), and the session keeps serving.
        body = {"jsonrpc": "2.0", "id": 3, "method": "tools/call"}
        body["params"] = {"name": "slow", "arguments": {"seconds": 0.5}}
        with httpx2.Client(timeout=TIMEOUT, headers=http.headers) as gone:
            with gone.stream("POST", url, json=body) as r:
                assert r.status_code == 200
        time.sleep(1.0)
        [seen] = _messages(_call(http, url, 4, "calls"))
        assert seen["result"]["structuredContent"]["result"][-2:] == ["slow", "slow"]
    finally:
        http.close()


def test_one_principal_shares_its_rate_across_sessions(tmp_path):
    data = tmp_path / "limits.json"
    data.write_text(json.dumps({"execgate_mcp": {"rate_limit": 3}}))

    async def sessions(url):
        async with http_client(url, "alice-token") as a:
            first = await a.call_tool("echo", {"text": "1"})
        async with http_client(url, "alice-token") as a:  # a new session, a new child
            second = await a.call_tool("echo", {"text": "2"})
            seen = _calls(await a.call_tool("calls", {}))  # the third call in the window
            third = await a.call_tool("echo", {"text": "3"})
        return [first, second, third], seen

    with http_gateway(tmp_path, *BOX, "--data", str(data), upstream=False) as stack:
        results, seen = run(sessions(stack["url"]))
        report = verified(stack["log"], stack["key"])
    assert [r.is_error for r in results] == [False, False, True]
    assert "rate" in text(results[2]).lower()
    assert seen == ["echo"]  # this child saw only its own call
    assert report.denied == 1 and report.completions == report.allowed == 3


def test_spawned_log_verifies(spawned):
    report = verified(spawned["log"], spawned["key"])
    assert report.completions == report.allowed and report.denied >= 3


def test_the_confinement_holds_for_each_child(tmp_path):
    policy = tmp_path / "open.rego"
    policy.write_text(OPEN_POLICY)
    allowed = tmp_path / "allowed"
    allowed.mkdir()
    secret = tmp_path / "secret.txt"
    secret.write_text("top secret")
    sock = listening()
    port = sock.getsockname()[1]
    flags = [*BOX, "--write", str(allowed)]

    async def session(url):
        async with http_client(url, "alice-token") as c:
            return (
                await c.call_tool("read_file", {"path": str(SERVER)}),
                await c.call_tool("read_file", {"path": str(secret)}),
                await c.call_tool("write_file", {"path": str(allowed / "a"), "text": "ok"}),
                await c.call_tool("write_file", {"path": str(tmp_path / "b"), "text": "no"}),
                await c.call_tool("connect", {"host": "127.0.0.1", "port": port}),
            )

    try:
        with http_gateway(tmp_path, *flags, upstream=False, policy=policy) as stack:
            own, other, inside, outside, net = run(session(stack["url"]))
    finally:
        sock.close()
    assert "MCPServer" in text(own)  # its own code is readable
    assert "top secret" not in text(other) and "PermissionError" in text(other)
    assert text(inside) == "written" and (allowed / "a").read_text() == "ok"
    assert "PermissionError" in text(outside) and not (tmp_path / "b").exists()
    assert text(net) != "connected" and "error" in text(net)


def test_caps_idle_and_no_process_outlives_the_gateway(tmp_path):
    marker = f"spawn-{uuid.uuid4().hex}"
    extra = [*BOX, "--max-sessions", "2", "--session-idle", "8", *_server(marker)]
    with http_gateway(tmp_path, *extra, upstream=False) as stack:
        url = stack["url"]
        first, _ = _raw_init(url)
        idle, _ = _raw_init(url, token="bob-token")
        try:
            over = httpx2.post(
                url,
                json={"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {}},
                headers={"Authorization": "Bearer alice-token"},
                timeout=TIMEOUT,
            )
            assert over.status_code == 503  # two live sessions: the cap
            assert len(servers(marker)) == 2
            # The idle one ends (and its child with it); the busy one stays.
            end = time.monotonic() + TIMEOUT
            while len(servers(marker)) > 1 and time.monotonic() < end:
                assert _call(first, url, 1, "echo", {"text": "busy"}).status_code == 200
                time.sleep(0.5)
            assert len(servers(marker)) == 1
            ping = {"jsonrpc": "2.0", "id": 2, "method": "ping"}
            assert idle.post(url, json=ping).status_code == 404
            assert first.post(url, json=ping).status_code == 200
            third, _ = _raw_init(url)  # room again
            third.close()
            assert len(servers(marker)) == 2
        finally:
            first.close()
            idle.close()
        gateway = stack["proxy"]
        gateway.send_signal(signal.SIGTERM)
        assert gateway.wait(timeout=TIMEOUT) in (0, -signal.SIGTERM)  # uvicorn re-raises it
        cgroups = _box_cgroups(gateway.pid)
    assert servers(marker) == []  # every child stopped with the gateway
    assert cgroups == []
    verified(stack["log"], stack["key"])


def _box_cgroups(pid):
    """The processes still in the sandbox cgroups of gateway ``pid``."""
    import pathlib

    procs = []
    for controller in ("memory", "pids"):
        for d in pathlib.Path(f"/sys/fs/cgroup/{controller}/execgate").glob(f"{pid}-*"):
            procs += (d / "cgroup.procs").read_text().split()
    return procs

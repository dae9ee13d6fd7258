"""The egress privacy router, tested as a sandboxed tool would try to get out:
through the proxy with allowed and denied requests, around it, and with
requests built to confuse it."""

from __future__ import annotations

import http.server
import json
import os
import pathlib
import socket
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

import execgate
from execgate import Limits, Sandbox
from execgate.egress import Bounds, EgressProxy

pytestmark = [
    pytest.mark.skipif(sys.platform != "linux", reason="Linux sandbox"),
    pytest.mark.skipif(os.geteuid() != 0, reason="the proxy's network namespace needs root"),
]

PYTHON_PATHS = sorted({os.path.realpath(p) for p in (sys.prefix, sys.base_prefix, sys.exec_prefix)})
PY = os.path.realpath(sys.executable)
BOX = Sandbox(network="proxy", read=PYTHON_PATHS, limits=Limits(wall=20))

POLICY = """
package execgate
import rego.v1

default decision := {"allow": false, "reasons": ["not allowed"]}

decision := {"allow": true} if input.action.name == "shell.exec"

decision := {
    "allow": count(deny) == 0,
    "reasons": sort(deny),
    "obligations": {"redact": {"args": {"paths": ["body"], "detectors": ["email", "card"]}}},
} if input.action.name == "net.request"

deny contains sprintf("host %s is not allowed", [h]) if {
    h := input.action.args.host
    h != "127.0.0.1"
}
deny contains sprintf("method %s is not allowed", [m]) if {
    m := input.action.args.method
    not m in {"GET", "POST", "CONNECT"}
}
deny contains sprintf("path %s is not allowed", [p]) if {
    p := input.action.args.path
    startswith(p, "/admin")
}
deny contains sprintf("port %d is not allowed", [p]) if {
    p := input.action.args.port
    not p in {x | some x in data.ports}
}
deny contains "the policy saw the raw body" if is_string(input.action.args.body)
"""


@dataclass
class Received:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class Upstream:
    """A plain HTTP server on the host's loopback, recording what arrives."""

    port: int
    received: list[Received] = field(default_factory=list)


@pytest.fixture
def upstream() -> Iterator[Upstream]:
    record: list[Received] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def _any(self) -> None:
            n = int(self.headers.get("content-length") or 0)
            body = self.rfile.read(n)
            record.append(
                Received(
                    self.command, self.path, {k.lower(): v for k, v in self.headers.items()}, body
                )
            )
            # /echo answers with the request's body (and its content type).
            echo = self.path.startswith("/echo")
            data = body if echo else b"hello from upstream"
            self.send_response(200)
            if echo and self.headers.get("content-type"):
                self.send_header("content-type", self.headers["content-type"])
            self.send_header("content-length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = do_DELETE = do_PUT = _any

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield Upstream(server.server_address[1], record)
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def gate(tmp_path: pathlib.Path, upstream: Upstream) -> Iterator[execgate.Gate]:
    key = execgate.SigningKey.generate()
    with execgate.Gate(
        POLICY, data={"ports": [upstream.port]}, key=key, audit=tmp_path / "audit.jsonl"
    ) as g:
        g.test_key = key  # type: ignore[attr-defined]
        g.test_log = tmp_path / "audit.jsonl"  # type: ignore[attr-defined]
        yield g


def logged(gate: execgate.Gate) -> pathlib.Path:
    """The gate's log, once the completions of the calls so far are written."""
    gate.flush()
    return gate.test_log  # type: ignore[attr-defined,no-any-return]


def records(path: pathlib.Path) -> list[dict[str, Any]]:
    return [
        execgate.Receipt.from_json(line).payload
        for line in path.read_text().splitlines()
        if line.strip()
    ]


def decisions(path: pathlib.Path, action: str) -> list[dict[str, Any]]:
    return [r for r in records(path) if r.get("action", {}).get("name") == action]


def curl(gate: execgate.Gate, *args: str) -> execgate.Completed:
    return gate.run(["curl", "-sS", "--max-time", "10", *args], sandbox=BOX)


def python(gate: execgate.Gate, script: str) -> execgate.Completed:
    return gate.run([PY, "-c", script], sandbox=BOX)


def test_an_allowed_request_arrives_and_the_tool_gets_the_answer(
    gate: execgate.Gate, upstream: Upstream
) -> None:
    done = curl(gate, f"http://127.0.0.1:{upstream.port}/data?q=1")
    assert done.ok, done.stderr
    assert done.stdout == b"hello from upstream"
    assert [(r.method, r.path) for r in upstream.received] == [("GET", "/data?q=1")]
    # No proxy header reaches the server; the host is the URL's.
    assert "proxy-connection" not in upstream.received[0].headers
    assert upstream.received[0].headers["host"] == f"127.0.0.1:{upstream.port}"
    assert done.protections["netns"] and done.sandbox["network"] == "proxy"


@pytest.mark.parametrize(
    ("args", "reason"),
    [
        (["http://localhost:{port}/data"], "host localhost is not allowed"),
        (["-X", "DELETE", "http://127.0.0.1:{port}/data"], "method DELETE is not allowed"),
        (["http://127.0.0.1:{port}/admin/users"], "path /admin/users is not allowed"),
    ],
)
def test_a_denied_request_never_arrives_and_the_tool_sees_403_with_the_reason(
    gate: execgate.Gate, upstream: Upstream, args: list[str], reason: str
) -> None:
    done = curl(gate, "-w", "\n%{http_code}", *(a.format(port=upstream.port) for a in args))
    assert done.exit_code == 0, done.stderr
    assert done.stdout.endswith(b"\n403")
    assert reason.encode() in done.stdout
    assert upstream.received == []
    (denied,) = decisions(logged(gate), "net.request")
    assert denied["decision"] == "deny" and reason in denied["reasons"]


def test_an_email_and_a_card_in_a_json_body_arrive_masked(
    gate: execgate.Gate, upstream: Upstream
) -> None:
    body = json.dumps({"to": "alice@example.com", "card": "4111 1111 1111 1111", "n": 1})
    done = curl(
        gate,
        "-H",
        "content-type: application/json",
        "--data-binary",
        body,
        f"http://127.0.0.1:{upstream.port}/send",
    )
    assert done.ok, done.stderr
    (got,) = upstream.received
    assert b"alice@" not in got.body and b"4111 1111 1111 1111" not in got.body
    sent = json.loads(got.body)  # still JSON, with the right length
    assert sent["to"].endswith("@example.com") and sent["card"].endswith("1111]")
    assert sent["n"] == 1
    assert int(got.headers["content-length"]) == len(got.body)
    # The log never holds the body: not raw, not in the decision.
    assert "alice@example.com" not in logged(gate).read_text()


def test_the_policy_sees_only_the_bodys_digest(tmp_path: pathlib.Path, upstream: Upstream) -> None:
    key = execgate.SigningKey.generate()
    log = tmp_path / "a.jsonl"
    with execgate.Gate(
        POLICY, data={"ports": [upstream.port]}, key=key, audit=log, record_input=True
    ) as g:
        done = g.run(
            [
                "curl",
                "-sS",
                "--data-binary",
                "secret=alice@example.com",
                f"http://127.0.0.1:{upstream.port}/f",
            ],
            sandbox=BOX,
        )
    assert done.ok, done.stderr
    (d,) = decisions(log, "net.request")
    args = d["input"]["action"]["args"]
    assert set(args["body"]) == {"bytes_sha256", "size"} and args["body"]["size"] == 24
    assert args["body_size"] == 24 and len(args["body_sha256"]) == 64
    assert "alice@example.com" not in log.read_text()


def test_a_tool_that_ignores_the_proxy_cannot_get_out(
    gate: execgate.Gate, upstream: Upstream
) -> None:
    # Straight to the server's port, to a non-loopback address of this host,
    # UDP to anything: the tool's namespace has only loopback, and on it
    # only the proxy listens.
    script = f"""
import socket
addrs = [("127.0.0.1", {upstream.port}), ("10.255.255.1", 80), ("8.8.8.8", 53)]
for a in addrs:
    try:
        socket.create_connection(a, timeout=3)
        print("CONNECTED", a)
    except OSError as e:
        print("refused", a, e.errno)
try:
    socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(b"x", ("8.8.8.8", 53))
    print("SENT udp")
except OSError as e:
    print("refused udp", e.errno)
"""
    done = python(gate, script)
    assert done.ok, done.stderr
    assert b"CONNECTED" not in done.stdout and b"SENT" not in done.stdout, done.stdout
    assert done.stdout.count(b"refused") == 4
    none = curl(gate, "--noproxy", "*", f"http://127.0.0.1:{upstream.port}/direct")
    assert none.exit_code != 0
    assert upstream.received == []
    assert decisions(logged(gate), "net.request") == []


def test_the_log_holds_one_decision_per_request_linked_to_the_tool_call(
    gate: execgate.Gate, upstream: Upstream
) -> None:
    url = f"http://127.0.0.1:{upstream.port}"
    done = gate.run(
        ["sh", "-c", f"curl -sS {url}/a; curl -sS {url}/b; curl -sS {url}/admin; true"], sandbox=BOX
    )
    assert done.ok, done.stderr
    log = logged(gate)
    (tool,) = decisions(log, "shell.exec")
    requests = decisions(log, "net.request")
    assert [r["decision"] for r in requests] == ["allow", "allow", "deny"]
    assert all(r["context"]["parent"] == tool["id"] for r in requests)
    outcomes = {r["authorization"]["id"]: r["outcome"] for r in records(log) if "outcome" in r}
    # The allowed requests were completed (status, bytes, duration); the
    # denied one never ran; the tool's own completion is there too.
    assert set(outcomes) == {requests[0]["id"], requests[1]["id"], tool["id"]}
    for r in requests[:2]:
        o = outcomes[r["id"]]
        assert o["status"] == "ok" and o["http_status"] == 200 and o["inspected"] is True
        assert o["response_bytes"] == 19 and o["request_bytes"] == 0 and o["duration_ns"] > 0
    report = execgate.verify_log(log, [gate.test_key.verify_key])  # type: ignore[attr-defined]
    assert report.ok, report.reason
    report = execgate.verify_log(log, [gate.test_key.verify_key])  # type: ignore[attr-defined]
    assert report.ok, report.reason


def test_connect_to_an_allowed_host_and_port_is_tunnelled_without_inspection(
    gate: execgate.Gate, upstream: Upstream
) -> None:
    done = curl(gate, "--proxytunnel", f"http://127.0.0.1:{upstream.port}/tunnelled")
    assert done.ok, done.stderr
    assert done.stdout == b"hello from upstream"
    assert [r.path for r in upstream.received] == ["/tunnelled"]
    log = logged(gate)
    (req,) = decisions(log, "net.request")
    assert req["decision"] == "allow"
    (outcome,) = [
        r["outcome"] for r in records(log) if r.get("authorization", {}).get("id") == req["id"]
    ]
    assert outcome["inspected"] is False and outcome["http_status"] == 200
    assert outcome["response_bytes"] > 19 and outcome["request_bytes"] > 0


def test_connect_elsewhere_is_refused(gate: execgate.Gate, upstream: Upstream) -> None:
    script = """
import os, socket
port = int(os.environ["HTTP_PROXY"].rsplit(":", 1)[1])
for target in ["127.0.0.1:22", "example.com:443"]:
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    s.sendall(f"CONNECT {target} HTTP/1.1\\r\\nHost: {target}\\r\\n\\r\\n".encode())
    print(s.recv(4096).decode().splitlines()[0])
"""
    done = python(gate, script)
    assert done.ok, done.stderr
    assert done.stdout.decode().splitlines() == ["HTTP/1.1 403 ", "HTTP/1.1 403 "]
    reasons = [r["reasons"] for r in decisions(logged(gate), "net.request")]
    assert reasons == [
        ["port 22 is not allowed"],
        ["host example.com is not allowed", "port 443 is not allowed"],
    ]


RAW = """
import os, socket, sys
port = int(os.environ["HTTP_PROXY"].rsplit(":", 1)[1])
s = socket.create_connection(("127.0.0.1", port), timeout=10)
try:
    s.sendall(sys.stdin.buffer.read())
    s.shutdown(socket.SHUT_WR)
except OSError:
    pass  # the proxy may answer and close before it has read everything
print(s.recv(4096).decode().splitlines()[0])
"""


#: Sends stdin to the proxy and prints everything it answers.
RAW_ALL = RAW.replace(
    "print(s.recv(4096).decode().splitlines()[0])",
    """out = b""
while chunk := s.recv(65536):
    out += chunk
sys.stdout.buffer.write(out)""",
)


def raw(gate: execgate.Gate, request: bytes) -> str:
    done = gate.run([PY, "-c", RAW], sandbox=BOX, stdin=request)
    assert done.ok, done.stderr
    return done.stdout.decode()


@pytest.mark.parametrize(
    ("message", "status"),
    [
        # Conflicting lengths: a server behind might read either (smuggling).
        (
            b"POST http://127.0.0.1:{port}/x HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b"Content-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"0\r\n\r\nGET /admin HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
            "400",
        ),
        (
            b"POST http://127.0.0.1:{port}/x HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b"Content-Length: 4\r\nContent-Length: 40\r\n\r\nabcd",
            "400",
        ),
        # Headers over the bound.
        (
            b"GET http://127.0.0.1:{port}/x HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: "
            + b"a" * 40000
            + b"\r\n\r\n",
            "431",
        ),
        # A body over the bound.
        (
            b"POST http://127.0.0.1:{port}/x HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b"Content-Length: 2097152\r\n\r\n" + b"x" * (2 << 20),
            "413",
        ),
        # Not a proxy request (origin form), HTTPS without CONNECT, user info.
        (b"GET /x HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n", "400"),
        (b"GET https://127.0.0.1:{port}/x HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n", "400"),
        (b"GET http://u:p@127.0.0.1:{port}/x HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n", "400"),
        (b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03garbage\r\n\r\n", "400"),
    ],
)
def test_hostile_requests_are_refused_undecided_and_never_forwarded(
    gate: execgate.Gate, upstream: Upstream, message: bytes, status: str
) -> None:
    answer = raw(gate, message.replace(b"{port}", str(upstream.port).encode()))
    assert answer.split()[1] == status, answer
    assert upstream.received == []
    assert decisions(logged(gate), "net.request") == []


def test_a_slow_loris_client_is_cut_off_undecided(upstream: Upstream) -> None:
    gate = execgate.Gate(POLICY, data={"ports": [upstream.port]})
    listener = socket.create_server(("127.0.0.1", 0))
    seen: list[str] = []
    original = gate.pipeline.decide

    def decide(action: str, *a: Any, **kw: Any) -> Any:
        seen.append(action)
        return original(action, *a, **kw)

    gate.pipeline.decide = decide  # type: ignore[method-assign]
    with EgressProxy(gate.pipeline, listener, bounds=Bounds(request_seconds=1.0, idle_seconds=5)):
        c = socket.create_connection(listener.getsockname(), timeout=10)
        started = time.monotonic()
        head = f"GET http://127.0.0.1:{upstream.port}/x HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        answer = b""
        try:
            for ch in head:  # one byte every 0.2 s: never idle, never done
                c.sendall(ch.encode())
                time.sleep(0.2)
        except OSError:
            pass
        c.settimeout(5)
        answer = c.recv(4096)
        c.close()
    assert answer.startswith(b"HTTP/1.1 408"), answer
    assert time.monotonic() - started < 8
    assert seen == [] and upstream.received == []


def test_proxy_mode_without_a_gate_is_refused() -> None:
    with pytest.raises(execgate.SandboxError, match="egress proxy"):
        Sandbox(network="proxy").run(["true"])


def test_a_policy_can_put_a_host_network_run_behind_the_proxy(
    tmp_path: pathlib.Path, upstream: Upstream
) -> None:
    policy = POLICY.replace(
        'decision := {"allow": true} if input.action.name == "shell.exec"',
        'decision := {"allow": true, "obligations": {"sandbox": {"network": "proxy"}}} '
        'if input.action.name == "shell.exec"',
    )
    with execgate.Gate(policy, data={"ports": [upstream.port]}) as g:
        done = g.run(
            ["curl", "-sS", "-w", "\n%{http_code}", f"http://127.0.0.1:{upstream.port}/admin"],
            sandbox=Sandbox(network="host", limits=Limits(wall=20)),
        )
    assert done.sandbox["network"] == "proxy"
    assert done.stdout.endswith(b"\n403") and upstream.received == []


def test_execgate_run_network_proxy(
    tmp_path: pathlib.Path, upstream: Upstream, capfd: pytest.CaptureFixture[str]
) -> None:
    from execgate.cli import main

    policy = tmp_path / "p.rego"
    policy.write_text(POLICY.replace("data.ports", f"{{{upstream.port}}}"))
    url = f"http://127.0.0.1:{upstream.port}"
    argv = ["run", "--policy", str(policy), "--network", "proxy", "--wall", "20", "--"]
    assert main([*argv, "sh", "-c", f"curl -sS {url}/ok; curl -sS {url}/admin"]) == 0
    out = capfd.readouterr().out
    assert "hello from upstream" in out and "path /admin is not allowed" in out
    assert [r.path for r in upstream.received] == ["/ok"]


def test_numeric_host_forms_are_decided_as_the_address_they_reach(
    gate: execgate.Gate, upstream: Upstream
) -> None:
    port = upstream.port
    for host in ("2130706433", "0x7f.1", "127.1"):
        answer = raw(gate, f"GET http://{host}:{port}/n HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        assert answer.split()[1] == "200", answer
    verdicts = {r["decision"] for r in decisions(logged(gate), "net.request")}
    assert verdicts == {"allow"}  # the policy allows the host "127.0.0.1" only
    assert len(upstream.received) == 3


def test_expect_100_continue_is_answered_and_not_forwarded(
    gate: execgate.Gate, upstream: Upstream
) -> None:
    # The proxy reads the body before deciding: it says 100 Continue itself
    # (curl would otherwise wait a second before sending a body over 1 KiB).
    head = (
        f"POST http://127.0.0.1:{upstream.port}/big HTTP/1.1\r\nHost: x\r\n"
        "Content-Length: 5\r\nExpect: 100-continue\r\n\r\n"
    )
    script = f"""
import os, socket
port = int(os.environ["HTTP_PROXY"].rsplit(":", 1)[1])
s = socket.create_connection(("127.0.0.1", port), timeout=10)
s.sendall({head!r}.encode())
print(s.recv(4096).decode().splitlines()[0])
s.sendall(b"hello")
print(s.recv(4096).decode().splitlines()[0])
"""
    done = python(gate, script)
    assert done.ok, done.stderr
    assert done.stdout.decode().split("\n")[:2] == ["HTTP/1.1 100 ", "HTTP/1.1 200 OK"]
    (got,) = upstream.received
    assert got.body == b"hello" and "expect" not in got.headers


def test_a_finding_in_a_binary_body_refuses_the_request(
    gate: execgate.Gate, upstream: Upstream
) -> None:
    body = b"\xff\xfe\x00binary alice@example.com"
    message = (
        f"POST http://127.0.0.1:{upstream.port}/bin HTTP/1.1\r\nHost: x\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body
    answer = raw(gate, message)
    assert answer.split()[1] == "403", answer
    assert upstream.received == []
    (d,) = decisions(logged(gate), "net.request")
    assert d["decision"] == "deny" and d["error"] == "obligation"


def test_an_obligation_the_proxy_cannot_meet_denies(upstream: Upstream) -> None:
    policy = POLICY.replace(
        '"obligations": {"redact": {"args": {"paths": ["body"], "detectors": ["email", "card"]}}},',
        '"obligations": {"sandbox": {"network": "none"}},',
    )
    with execgate.Gate(policy, data={"ports": [upstream.port]}) as g:
        done = g.run(
            ["curl", "-sS", "-w", "\n%{http_code}", f"http://127.0.0.1:{upstream.port}/x"],
            sandbox=BOX,
        )
    assert done.stdout.endswith(b"\n403") and b"sandbox" in done.stdout
    assert upstream.received == []


OUTPUT_POLICY = POLICY.replace(
    '"obligations": {"redact": {"args": {"paths": ["body"], "detectors": ["email", "card"]}}},',
    '"obligations": {"redact": {"output": {"detectors": ["email", "card"]}}},',
)


def test_the_response_is_redacted_before_the_tool_sees_it(
    tmp_path: pathlib.Path, upstream: Upstream
) -> None:
    log = tmp_path / "a.jsonl"
    body = json.dumps({"to": "alice@example.com", "card": "4111 1111 1111 1111", "n": 1})
    key = execgate.SigningKey.generate()
    with execgate.Gate(OUTPUT_POLICY, data={"ports": [upstream.port]}, key=key, audit=log) as g:
        done = g.run(
            [
                "curl",
                "-sS",
                "-H",
                "content-type: application/json",
                "-H",
                "accept-encoding: gzip",
                "--data-binary",
                body,
                f"http://127.0.0.1:{upstream.port}/echo",
            ],
            sandbox=BOX,
        )
    assert done.ok, done.stderr
    (got,) = upstream.received
    assert got.body == body.encode()  # the request left as it was
    assert got.headers["accept-encoding"] == "identity"  # a body it can read
    assert b"alice@" not in done.stdout and b"4111 1111 1111 1111" not in done.stdout
    shown = json.loads(done.stdout)  # still JSON
    assert shown["to"].endswith("@example.com") and shown["card"].endswith("1111]")
    (req,) = decisions(log, "net.request")
    (outcome,) = [
        r["outcome"] for r in records(log) if r.get("authorization", {}).get("id") == req["id"]
    ]
    assert outcome["redacted"] is True and outcome["response_bytes"] == len(body)
    assert "alice@example.com" not in log.read_text()


def test_a_binary_response_with_a_finding_is_withheld(upstream: Upstream) -> None:
    body = b"\xff\xfe\x00binary alice@example.com"
    message = (
        f"POST http://127.0.0.1:{upstream.port}/echo HTTP/1.1\r\nHost: x\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body
    with execgate.Gate(OUTPUT_POLICY, data={"ports": [upstream.port]}) as g:
        done = g.run([PY, "-c", RAW_ALL], sandbox=BOX, stdin=message)
    assert done.ok, done.stderr
    assert done.stdout.startswith(b"HTTP/1.1 502"), done.stdout
    assert b"withheld" in done.stdout and b"alice@" not in done.stdout
    assert len(upstream.received) == 1


def test_one_connection_carries_several_requests_each_decided(
    gate: execgate.Gate, upstream: Upstream
) -> None:
    script = f"""
import http.client, os
port = int(os.environ["HTTP_PROXY"].rsplit(":", 1)[1])
c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
for path in ["/a", "/admin", "/b"]:
    c.request("GET", "http://127.0.0.1:{upstream.port}" + path)
    r = c.getresponse()
    print(r.status, r.read().decode().splitlines()[0], r.getheader("connection"))
print(c.sock is not None)
"""
    done = python(gate, script)
    assert done.ok, done.stderr
    lines = done.stdout.decode().splitlines()
    assert lines[0] == "200 hello from upstream None"
    assert lines[1] == "403 execgate denied this request: None"
    assert lines[2] == "200 hello from upstream None"
    assert lines[3] == "True"  # the same connection throughout
    assert [r.path for r in upstream.received] == ["/a", "/b"]
    verdicts = [r["decision"] for r in decisions(logged(gate), "net.request")]
    assert verdicts == ["allow", "deny", "allow"]


ISOLATING = execgate.Gate(
    POLICY.replace(
        'decision := {"allow": true} if input.action.name == "shell.exec"',
        'decision := {"allow": true} if input.action.name == "fetch_isolated"',
    ).replace("not p in {x | some x in data.ports}", "p < 1024"),
    key=execgate.SigningKey.generate(),
)


@ISOLATING.guard(action="fetch_isolated", isolate=Sandbox(network="proxy", limits=Limits(wall=20)))
def fetch_isolated(url: str) -> str:
    import urllib.request

    with urllib.request.urlopen(url, timeout=10) as answer:
        return str(answer.read().decode())


def test_an_isolated_function_reaches_the_network_through_the_proxy(upstream: Upstream) -> None:
    assert fetch_isolated(f"http://127.0.0.1:{upstream.port}/iso") == "hello from upstream"
    with pytest.raises(Exception, match="403"):
        fetch_isolated(f"http://127.0.0.1:{upstream.port}/admin")
    assert [r.path for r in upstream.received] == ["/iso"]


@pytest.mark.parametrize(
    "path", ["/%61dmin/users", "/data/../admin", "/./admin", "/data/%2e%2e/admin"]
)
def test_an_encoded_or_dotted_path_is_decided_as_the_server_reads_it(
    gate: execgate.Gate, upstream: Upstream, path: str
) -> None:
    message = f"GET http://127.0.0.1:{upstream.port}{path} HTTP/1.1\r\nHost: x\r\n\r\n"
    answer = raw(gate, message.encode())
    assert answer.split()[1] == "403", answer
    assert upstream.received == []
    (d,) = decisions(logged(gate), "net.request")
    assert any(r.startswith("path /admin") for r in d["reasons"]), d["reasons"]


@pytest.mark.parametrize("path", ["/x%2F..%2Fadmin", "/x%5C..%5Cadmin", "/x%00", "/%zz"])
def test_an_ambiguous_path_is_refused_undecided(
    gate: execgate.Gate, upstream: Upstream, path: str
) -> None:
    message = f"GET http://127.0.0.1:{upstream.port}{path} HTTP/1.1\r\nHost: x\r\n\r\n"
    assert raw(gate, message.encode()).split()[1] == "400"
    assert upstream.received == []
    assert decisions(logged(gate), "net.request") == []


def test_the_forwarded_path_is_the_decided_one(gate: execgate.Gate, upstream: Upstream) -> None:
    message = f"GET http://127.0.0.1:{upstream.port}/a/./b/../%63?q=%41 HTTP/1.1\r\nHost: x\r\n\r\n"
    assert raw(gate, message.encode()).split()[1] == "200"
    assert [r.path for r in upstream.received] == ["/a/c?q=%41"]

"""The egress proxy's credential injection and TLS interception, tested with
a sandboxed tool, a local HTTPS server with its own CA and the plain server of
test_egress: what arrives, what the tool could have seen, what the log holds,
and what a hostile tool gets."""

from __future__ import annotations

import http.server
import json
import pathlib
import ssl
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

import execgate
from certs import local_ca
from execgate import Egress, Sandbox, Secret
from test_egress import (  # the plain upstream, the policy and the helpers
    BOX,
    POLICY,
    PY,
    Received,
    Upstream,
    decisions,
    pytestmark,
    records,
    upstream,
)

__all__ = ["pytestmark", "upstream"]  # the module's marks and a fixture used here

TOKEN = "Bearer s3cr3t-7f1c2a9e"  # the operator's secret under test


@dataclass
class TlsUpstream:
    """An HTTPS server on the host's loopback with a certificate from its own CA."""

    port: int
    ca: pathlib.Path
    received: list[Received] = field(default_factory=list)


@pytest.fixture
def tls_upstream(tmp_path: pathlib.Path) -> Iterator[TlsUpstream]:
    ca, chain = local_ca(tmp_path)
    record: list[Received] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def _any(self) -> None:
            n = int(self.headers.get("content-length") or 0)
            body = self.rfile.read(n)
            headers = {k.lower(): v for k, v in self.headers.items()}
            record.append(Received(self.command, self.path, headers, body))
            data = body or b"hello over tls"
            self.send_response(200)
            self.send_header("content-length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = _any

        def log_message(self, *args: Any) -> None:
            pass

    class Server(http.server.ThreadingHTTPServer):
        def handle_error(self, request: Any, client_address: Any) -> None:
            pass  # a refused handshake is what some tests expect

    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(chain)
    server = Server(("127.0.0.1", 0), Handler)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield TlsUpstream(server.server_address[1], ca, record)
    finally:
        server.shutdown()
        server.server_close()


def _gate(tmp_path: pathlib.Path, *ports: int, **options: Any) -> execgate.Gate:
    key = execgate.SigningKey.generate()
    gate = execgate.Gate(
        POLICY, data={"ports": list(ports)}, key=key, audit=tmp_path / "audit.jsonl", **options
    )
    gate.test_key = key  # type: ignore[attr-defined]
    return gate


def _verified(gate: execgate.Gate, log: pathlib.Path) -> None:
    report = execgate.verify_log(log, [gate.test_key.verify_key])  # type: ignore[attr-defined]
    assert report.ok, report.reason


def _box(**egress: Any) -> Sandbox:
    from dataclasses import replace

    return replace(BOX, egress=Egress(**egress))


def _outcomes(log: pathlib.Path) -> dict[str, dict[str, Any]]:
    return {r["authorization"]["id"]: r["outcome"] for r in records(log) if "outcome" in r}


# -- credential injection ------------------------------------------------------------


SNOOP = """
import os, sys, urllib.request
print("env has it:", any("s3cr3t" in k + v for k, v in os.environ.items()))
try:
    print("file:", open(sys.argv[1]).read())
except OSError as e:
    print("file refused:", type(e).__name__)
req = urllib.request.Request(sys.argv[2], headers={"Authorization": "Bearer from-the-tool"})
print(urllib.request.urlopen(req, timeout=10).read().decode())
"""


def test_an_injected_credential_arrives_though_the_tool_never_had_it(
    tmp_path: pathlib.Path, upstream: Upstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EXECGATE_TEST_TOKEN", TOKEN)
    key_file = tmp_path / "api-key"
    key_file.write_text("k-s3cr3t-file\n")
    origin = f"http://127.0.0.1:{upstream.port}"
    box = _box(
        credentials={
            origin: {
                "Authorization": Secret(env="EXECGATE_TEST_TOKEN"),
                "X-Api-Key": Secret(file=str(key_file)),
            }
        }
    )
    with _gate(tmp_path, upstream.port) as g:
        done = g.run([PY, "-c", SNOOP, str(key_file), f"{origin}/data"], sandbox=box)
    assert done.ok, done.stderr
    out = done.stdout.decode()
    assert "env has it: False" in out and "file refused: PermissionError" in out
    assert "hello from upstream" in out and "s3cr3t" not in out
    (got,) = upstream.received
    assert got.headers["authorization"] == TOKEN  # replaced the tool's own
    assert got.headers["x-api-key"] == "k-s3cr3t-file"
    log = tmp_path / "audit.jsonl"
    assert b"s3cr3t" not in log.read_bytes()
    (req,) = decisions(log, "net.request")
    assert _outcomes(log)[req["id"]]["credentials"] == ["authorization", "x-api-key"]
    # The policy saw the tool's header names only.
    assert req["decision"] == "allow"


def test_a_credential_goes_only_to_its_origin(
    tmp_path: pathlib.Path, upstream: Upstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    box = _box(credentials={"http://127.0.0.1:1": {"Authorization": TOKEN}})
    with _gate(tmp_path, upstream.port) as g:
        done = g.run(["curl", "-sS", f"http://127.0.0.1:{upstream.port}/x"], sandbox=box)
    assert done.ok, done.stderr
    (got,) = upstream.received
    assert "authorization" not in got.headers


def test_a_credential_that_cannot_be_read_refuses_the_request_without_saying_it(
    tmp_path: pathlib.Path, upstream: Upstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EXECGATE_TEST_TOKEN", "Bearer s3cr3t\r\nX-Injected: 1")
    origin = f"http://127.0.0.1:{upstream.port}"
    box = _box(credentials={origin: {"Authorization": Secret(env="EXECGATE_TEST_TOKEN")}})
    with _gate(tmp_path, upstream.port) as g:
        done = g.run(["curl", "-sS", "-w", "\n%{http_code}", f"{origin}/x"], sandbox=box)
    assert done.stdout.endswith(b"\n502") and b"env EXECGATE_TEST_TOKEN" in done.stdout
    assert b"s3cr3t" not in done.stdout and upstream.received == []
    assert b"s3cr3t" not in (tmp_path / "audit.jsonl").read_bytes()


@pytest.mark.parametrize(
    ("credentials", "match"),
    [
        ({"https://api.example.com": {"Authorization": "x"}}, "intercept_tls"),
        ({"api.example.com": {"Authorization": "x"}}, "intercept_tls"),
        ({"http://a.example": {"X-A\r\nEvil": "x"}}, "cannot be a credential header"),
        ({"http://a.example": {"X-A: b": "x"}}, "cannot be a credential header"),
        ({"http://a.example": {"Host": "evil.example"}}, "cannot be a credential header"),
        ({"http://a.example": {"Content-Length": "0"}}, "cannot be a credential header"),
        ({"http://a.example": {"Transfer-Encoding": "chunked"}}, "cannot be a credential header"),
        ({"http://a.example": {"X-Key": "v\r\nX-Evil: 1"}}, "not a header value"),
        ({"http://a.example": {"X-Key": ""}}, "not a header value"),
        ({"http://a.example/path": {"X-Key": "v"}}, "nothing after"),
        ({"ftp://a.example": {"X-Key": "v"}}, "http:// or https://"),
    ],
)
def test_credentials_that_could_change_the_request_are_refused(
    credentials: dict[str, dict[str, str]], match: str
) -> None:
    with pytest.raises(execgate.ConfigurationError, match=match):
        Egress(credentials=credentials)


def test_a_credential_variable_cannot_also_be_passed_to_the_child() -> None:
    egress = Egress(credentials={"http://a.example": {"X-Key": Secret(env="API_TOKEN")}})
    with pytest.raises(execgate.ConfigurationError, match="API_TOKEN"):
        Sandbox(egress=egress, env_allow=["PATH", "API_TOKEN"])
    with pytest.raises(execgate.ConfigurationError, match="API_TOKEN"):
        Sandbox(egress=egress, env={"API_TOKEN": "x"})


def test_a_secret_is_never_shown() -> None:
    box = Sandbox(egress=Egress(credentials={"http://a.example": {"X-Key": TOKEN}}))
    assert "s3cr3t" not in repr(box) and "s3cr3t" not in repr(Secret(TOKEN))
    assert "s3cr3t" not in json.dumps(box.request())


# -- TLS interception ---------------------------------------------------------------


def test_a_body_is_redacted_and_a_credential_injected_through_tls(
    tmp_path: pathlib.Path, tls_upstream: TlsUpstream
) -> None:
    origin = f"https://127.0.0.1:{tls_upstream.port}"
    box = _box(
        intercept_tls=True,
        upstream_ca=[str(tls_upstream.ca)],
        credentials={origin: {"Authorization": TOKEN}},
    )
    body = json.dumps({"to": "alice@example.com", "card": "4111 1111 1111 1111"})
    with _gate(tmp_path, tls_upstream.port) as g:
        done = g.run(
            ["curl", "-sS", "-H", "content-type: application/json", "--data-binary", body,
             f"{origin}/send"],
            sandbox=box,
        )  # fmt: skip
    assert done.ok, done.stderr
    (got,) = tls_upstream.received
    assert got.path == "/send" and got.headers["authorization"] == TOKEN
    assert b"alice@" not in got.body and b"4111 1111 1111 1111" not in got.body
    assert json.loads(got.body)["to"].endswith("@example.com")
    log = tmp_path / "audit.jsonl"
    connect, post = decisions(log, "net.request")
    assert connect["decision"] == post["decision"] == "allow"
    outcomes = _outcomes(log)
    assert outcomes[connect["id"]]["intercepted"] is True
    assert outcomes[connect["id"]]["requests"] == 1
    assert outcomes[post["id"]]["credentials"] == ["authorization"]
    assert outcomes[post["id"]]["http_status"] == 200
    text = log.read_text()
    assert "s3cr3t" not in text and "alice@example.com" not in text
    _verified(g, log)
    (tool,) = decisions(log, "shell.exec")
    assert connect["context"]["parent"] == post["context"]["parent"] == tool["id"]


def test_requests_inside_a_tunnel_are_decided_one_by_one(
    tmp_path: pathlib.Path, tls_upstream: TlsUpstream
) -> None:
    script = f"""
import http.client, os, ssl
port = int(os.environ["HTTPS_PROXY"].rsplit(":", 1)[1])
c = http.client.HTTPSConnection("127.0.0.1", port, timeout=10,
                                context=ssl.create_default_context())
c.set_tunnel("127.0.0.1", {tls_upstream.port})
for path in ["/a", "/admin", "/b"]:
    c.request("GET", path)
    r = c.getresponse()
    print(r.status, r.read().decode().splitlines()[0])
"""
    box = _box(intercept_tls=True, upstream_ca=[str(tls_upstream.ca)])
    with _gate(tmp_path, tls_upstream.port, record_input=True) as g:
        done = g.run([PY, "-c", script], sandbox=box)
    assert done.ok, done.stderr
    assert done.stdout.decode().splitlines() == [
        "200 hello over tls",
        "403 execgate denied this request:",
        "200 hello over tls",
    ]
    assert [r.path for r in tls_upstream.received] == ["/a", "/b"]
    requests = decisions(tmp_path / "audit.jsonl", "net.request")
    args = [r["input"]["action"]["args"] for r in requests]
    seen = [(a["method"], a["scheme"], r["decision"]) for a, r in zip(args, requests, strict=True)]
    assert seen == [
        ("CONNECT", "https", "allow"),
        ("GET", "https", "allow"),
        ("GET", "https", "deny"),
        ("GET", "https", "allow"),
    ]
    assert {a["port"] for a in args} == {tls_upstream.port}
    assert [a["path"] for a in args] == ["", "/a", "/admin", "/b"]


def test_an_upstream_with_an_untrusted_certificate_is_refused(
    tmp_path: pathlib.Path, tls_upstream: TlsUpstream
) -> None:
    box = _box(intercept_tls=True)  # the test CA is not among the proxy's anchors
    with _gate(tmp_path, tls_upstream.port) as g:
        done = g.run(
            ["curl", "-sS", "-w", "\n%{http_code}", f"https://127.0.0.1:{tls_upstream.port}/x"],
            sandbox=box,
        )
    assert done.stdout.endswith(b"\n502"), done.stdout
    assert b"is not trusted" in done.stdout
    assert tls_upstream.received == []
    log = tmp_path / "audit.jsonl"
    _, get = decisions(log, "net.request")
    assert "not trusted" in _outcomes(log)[get["id"]]["error"]


HANDSHAKE = """
import os, socket, ssl, sys
port = int(os.environ["HTTPS_PROXY"].rsplit(":", 1)[1])
s = socket.create_connection(("127.0.0.1", port), timeout=10)
s.sendall(f"CONNECT 127.0.0.1:{sys.argv[1]} HTTP/1.1\\r\\nHost: x\\r\\n\\r\\n".encode())
print(s.recv(4096).decode().splitlines()[0])
request = b"GET /x HTTP/1.1\\r\\nHost: 127.0.0.1\\r\\n\\r\\n"
try:
    if sys.argv[2] != "garbage":
        s = ssl.create_default_context().wrap_socket(s, server_hostname=sys.argv[2])
    s.sendall(request)
    print("answer:", s.recv(4096)[:20])
except OSError:  # ssl.SSLError included
    print("refused")
"""


@pytest.mark.parametrize("then", ["evil.example", "garbage"])
def test_a_clienthello_naming_another_host_or_plaintext_in_the_tunnel_gets_nowhere(
    tmp_path: pathlib.Path, tls_upstream: TlsUpstream, then: str
) -> None:
    box = _box(intercept_tls=True, upstream_ca=[str(tls_upstream.ca)])
    with _gate(tmp_path, tls_upstream.port) as g:
        done = g.run([PY, "-c", HANDSHAKE, str(tls_upstream.port), then], sandbox=box)
    assert done.ok, done.stderr
    lines = done.stdout.decode().splitlines()
    assert lines[0] == "HTTP/1.1 200 "
    assert lines[1] in ("refused", "answer: b''"), lines  # no HTTP answer at all
    assert tls_upstream.received == []
    log = tmp_path / "audit.jsonl"
    (connect,) = decisions(log, "net.request")  # nothing inside was decided
    assert "handshake failed" in _outcomes(log)[connect["id"]]["error"]


def test_a_request_inside_a_tunnel_naming_another_origin_is_refused_undecided(
    tmp_path: pathlib.Path, tls_upstream: TlsUpstream
) -> None:
    script = f"""
import http.client, os, ssl
port = int(os.environ["HTTPS_PROXY"].rsplit(":", 1)[1])
c = http.client.HTTPSConnection("127.0.0.1", port, timeout=10,
                                context=ssl.create_default_context())
c.set_tunnel("127.0.0.1", {tls_upstream.port})
c.putrequest("GET", "/x", skip_host=True)
c.putheader("Host", "evil.example")
c.endheaders()
r = c.getresponse()
print(r.status, r.read().decode().strip())
"""
    box = _box(intercept_tls=True, upstream_ca=[str(tls_upstream.ca)])
    with _gate(tmp_path, tls_upstream.port) as g:
        done = g.run([PY, "-c", script], sandbox=box)
    assert done.ok, done.stderr
    assert done.stdout.decode().strip() == (
        "400 the Host header names another origin than the tunnel"
    )
    assert tls_upstream.received == []
    (connect,) = decisions(tmp_path / "audit.jsonl", "net.request")  # the CONNECT only
    assert connect["decision"] == "allow"


def test_the_child_trusts_only_the_ephemeral_ca_and_it_is_gone_after_the_run(
    tmp_path: pathlib.Path, tls_upstream: TlsUpstream
) -> None:
    script = """
import os
names = ["CURL_CA_BUNDLE", "NODE_EXTRA_CA_CERTS", "REQUESTS_CA_BUNDLE", "SSL_CERT_FILE"]
paths = {os.environ.get(n) for n in names}
print(len(paths), paths.pop())
"""
    box = _box(intercept_tls=True, upstream_ca=[str(tls_upstream.ca)])
    with _gate(tmp_path, tls_upstream.port) as g:
        done = g.run([PY, "-c", script], sandbox=box)
    assert done.ok, done.stderr
    count, bundle = done.stdout.decode().split()
    assert count == "1" and bundle.endswith("/ca.pem")
    assert not pathlib.Path(bundle).exists()
    # The gate's own process was never told to trust it.
    assert bundle not in {v for v in __import__("os").environ.values()}


def test_execgate_run_credential_flags(
    tmp_path: pathlib.Path,
    upstream: Upstream,
    monkeypatch: pytest.MonkeyPatch,
    capfd: pytest.CaptureFixture[str],
) -> None:
    from execgate.cli import main

    monkeypatch.setenv("EXECGATE_TEST_TOKEN", TOKEN)
    policy = tmp_path / "p.rego"
    policy.write_text(POLICY.replace("data.ports", f"{{{upstream.port}}}"))
    origin = f"http://127.0.0.1:{upstream.port}"
    flags = ["--credential", origin, "Authorization=env:EXECGATE_TEST_TOKEN"]
    base = ["run", "--policy", str(policy), "--wall", "20"]
    argv = [*base, *flags]
    assert main([*argv, "--", "curl", "-sS", f"{origin}/x"]) == 2  # needs --network proxy
    assert "need --network proxy" in capfd.readouterr().err
    assert main([*argv, "--network", "proxy", "--", "curl", "-sS", f"{origin}/x"]) == 0
    assert "hello from upstream" in capfd.readouterr().out
    (got,) = upstream.received
    assert got.headers["authorization"] == TOKEN
    bad = [*base, "--network", "proxy", "--credential", origin, "Authorization=Bearer x"]
    assert main([*bad, "--", "true"]) == 2  # no literal secrets on a command line
    assert "HEADER=env:NAME" in capfd.readouterr().err

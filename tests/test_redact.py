"""The privacy router: detectors with validators, transforms, and secrets kept
out of the audit log whatever the policy says."""

from __future__ import annotations

import base64
import json
import pathlib

import hypothesis.strategies as st
import pytest
from hypothesis import given, settings

import execgate
from execgate import redact

CASES = {
    "email": (["mail alice.smith+x@example.co.uk now"], ["alice@", "a@b", "user at example.com"]),
    "card": (
        ["4111 1111 1111 1111", "5500-0000-0000-0004"],
        ["4111 1111 1111 1112", "1234567890123"],
    ),
    "iban": (
        ["GB82 WEST 1234 5698 7654 32", "DE89370400440532013000"],
        ["GB82 WEST 1234 5698 7654 33"],
    ),
    "us_ssn": (["123-45-6789"], ["000-12-3456", "666-12-3456", "923-45-6789", "123-00-6789"]),
    "phone": (["+1 415-555-2671", "(415) 555-2671"], ["415-5552"]),
    "ipv4": (["10.1.2.3", "host 192.168.0.1:80"], ["1.2.3.256", "1.02.3.4", "1.2.3"]),
    "ipv6": (["2001:db8::8a2e:370:7334", "fe80:0:0:0:202:b3ff:fe1e:8329"], ["12:30", "12:30:45"]),
    "aws_access_key": (["AKIAIOSFODNN7EXAMPLE"], ["AKIAIOSFODNN7EXAMPL", "akiaiosfodnn7example"]),
    "github_token": (["ghp_" + "a" * 36], ["ghp_" + "a" * 20]),
    "gitlab_token": (["glpat-" + "b" * 20], ["glpat-short"]),
    "slack_token": (["xoxb-1234567890-abcdefghij"], ["xoxq-1234567890-abcdefghij"]),
    "jwt": (
        [
            "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U"
        ],
        ["eyJhbGciOiJIUzI1NiJ9"],
    ),
    "pem_private_key": (
        ["-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEIA==\n-----END PRIVATE KEY-----"],
        ["-----BEGIN PUBLIC KEY-----\nMCowBQYDK2VwAyEA\n-----END PUBLIC KEY-----"],
    ),
    "bearer_token": (["Authorization: Bearer abcdefghijklmnop1234"], ["bearer of bad news"]),
}


@pytest.mark.parametrize("detector", sorted(CASES))
def test_detector_true_positives_and_near_misses(detector: str) -> None:
    hits, misses = CASES[detector]
    for text in hits:
        out, report = redact(text, detectors=[detector], transform="drop")
        assert report and report[0]["detector"] == detector, (detector, text)
        assert f"[{detector}]" in out
    for text in misses:
        out, report = redact(text, detectors=[detector])
        assert report == [] and out == text, (detector, text, report)


def test_transforms() -> None:
    value = {"to": "alice@example.com", "card": "4111 1111 1111 1111"}
    masked, report = redact(value)
    assert masked == {"to": "***@example.com", "card": "[card:…1111]"}
    assert sorted(r["path"] for r in report) == ["card", "to"]
    h1, _ = redact(value, transform="hash", key=b"k1")
    h2, _ = redact(value, transform="hash", key=b"k1")
    h3, _ = redact(value, transform="hash", key=b"k2")
    assert h1 == h2 != h3 and h1["to"].startswith("<email:")  # stable per key: joins work
    with pytest.raises(
        execgate.ExecgateError, match=r"(card|email) found in (card|to): the call is refused"
    ):
        redact(value, transform="deny")
    custom, report = redact(
        "ticket INC-123456", custom={"incident": r"INC-\d{6}"}, transform="drop"
    )
    assert custom == "ticket [incident]" and report[0]["detector"] == "incident"
    with pytest.raises(ValueError, match="unknown detector"):
        redact("x", detectors=["nope"])


# Issue 13's fuzz crash: a card candidate that fails Luhn (it spans a phone
# number) hid the valid card at its end, which a second pass then found.
CRASH = '"B1 0555 1111 4111011111/111 111 1115 11111 1111 11111 111 1115 11111 1111 11111111112704'


@pytest.mark.parametrize(
    ("text", "dropped"),
    [
        (
            CRASH,
            CRASH[: CRASH.index("111 111 1115")] + "[phone] 11111 1111 11111 111 1115 "
            "11111 1111 [card]",
        ),
        ("9 9 4111 1111 1111 1111", "9 9 [card]"),
        ("4111 1111 1111 1111 12", "[card] 12"),
        ("4111 1111 1111 1111 555 123 4567", "[card] [phone]"),
        ("XX00 GB82 WEST 1234 5698 7654 32", "XX00 [iban]"),
        ("BE68 5390 0754 7034 1234", "[iban] 1234"),
    ],
)
def test_a_rejected_candidate_hides_no_valid_match(text: str, dropped: str) -> None:
    once, report = redact(text, transform="drop")
    assert once == dropped, report
    assert redact(once, transform="drop") == (once, [])


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet="0123456789  --aZ:.", max_size=80))
def test_dropping_twice_finds_nothing_more(text: str) -> None:
    once, _ = redact(text, transform="drop")
    assert redact(once, transform="drop") == (once, [])


def test_secrets_never_reach_the_log(tmp_path: pathlib.Path) -> None:
    policy = """package execgate
decision := {"allow": false, "reasons": [sprintf("refusing to mail %v", [input.action.args.to])]}
"""
    key = execgate.SigningKey.generate()
    log = tmp_path / "audit.jsonl"
    secrets = ["alice@example.com", "4111 1111 1111 1111", "AKIAIOSFODNN7EXAMPLE", "123-45-6789"]
    with execgate.Gate(policy, key=key, audit=log, record_input=True) as gate:
        with (
            execgate.principal("bob@example.com"),
            execgate.context(purpose="card 4111 1111 1111 1111"),
        ):
            d = gate.check(
                "mail.send",
                {"to": "alice@example.com", "aws": "AKIAIOSFODNN7EXAMPLE", "ssn": "123-45-6789"},
            )
    assert "alice@example.com" in d.reasons[0]  # the caller sees the policy's own words
    raw = log.read_bytes()
    decoded = b"".join(base64.b64decode(json.loads(line)["payload"]) for line in raw.splitlines())
    for secret in [*secrets, "bob@example.com"]:
        assert secret.encode() not in raw and secret.encode() not in decoded, secret
    payload = execgate.Receipt.from_json(raw.decode().splitlines()[0]).payload
    assert {r["detector"] for r in payload["redacted"]} >= {
        "email",
        "card",
        "aws_access_key",
        "us_ssn",
    }
    assert payload["principal"]["id"].startswith("<email:")
    assert execgate.verify_log(log, key.verify_key).ok


def test_custom_patterns_from_policy_data(tmp_path: pathlib.Path) -> None:
    key = execgate.SigningKey.generate()
    log = tmp_path / "audit.jsonl"
    data = {"execgate_redact": {"patterns": {"employee_id": r"EMP-\d{5}"}}}
    with execgate.Gate(
        "package execgate\ndecision := true\n", data=data, key=key, audit=log
    ) as gate:
        with execgate.context(purpose="review EMP-12345"):
            gate.check("x")
    decoded = base64.b64decode(json.loads(log.read_text().splitlines()[0])["payload"])
    assert b"EMP-12345" not in decoded and b"employee_id" in decoded


REDACTING = """package execgate
decision := {"allow": true, "obligations": {"redact": {
    "args": {"transform": "mask", "paths": ["body"]},
    "output": {"transform": "drop"},
}}}
"""


def test_tool_receives_redacted_arguments_and_returns_redacted_output() -> None:
    gate = execgate.Gate(REDACTING)
    received: list[tuple[str, str]] = []

    @gate.guard(action="mail.send")
    def send(to: str, body: str) -> str:
        received.append((to, body))
        return f"sent to {to}; contact ops@example.com"

    out = send("alice@example.com", body="card 4111 1111 1111 1111 and bob@example.com")
    # Only the listed argument is rewritten before the tool sees it ...
    assert received == [("alice@example.com", "card [card:…1111] and ***@example.com")]
    # ... and the output is scrubbed before it goes back.
    assert out == "sent to [email]; contact [email]"


def test_deny_transform_refuses_the_call() -> None:
    gate = execgate.Gate(
        'package execgate\ndecision := {"allow": true, "obligations": {"redact": {"args": {"transform": "deny", "detectors": ["aws_access_key"]}}}}\n'
    )
    ran: list[str] = []

    @gate.guard(action="upload")
    def upload(data: str) -> None:
        ran.append(data)

    upload("harmless")
    with pytest.raises(execgate.ActionDenied, match="aws_access_key found in data"):
        upload("key AKIAIOSFODNN7EXAMPLE")
    assert ran == ["harmless"]


def test_middleware_redacts_tool_arguments_and_output() -> None:
    pytest.importorskip("langchain")
    from langchain.agents import create_agent
    from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
    from langchain_core.messages import AIMessage, ToolMessage
    from langchain_core.tools import tool

    from execgate.integrations.langchain import ExecgateMiddleware

    class Model(GenericFakeChatModel):
        def bind_tools(self, tools, **kwargs):  # type: ignore[no-untyped-def]
            return self

    seen: list[str] = []

    @tool
    def note(body: str) -> str:
        """Store a note."""
        seen.append(body)
        return "stored for carol@example.com"

    model = Model(
        messages=iter(
            [
                AIMessage(
                    content="",
                    tool_calls=[{"name": "note", "args": {"body": "ssn 123-45-6789"}, "id": "c1"}],
                ),
                AIMessage(content="ok"),
            ]
        )
    )
    agent = create_agent(
        model, tools=[note], middleware=[ExecgateMiddleware(execgate.Gate(REDACTING))]
    )
    messages = agent.invoke({"messages": [{"role": "user", "content": "x"}]})["messages"]
    assert seen == ["ssn [us_ssn:…6789]"]
    assert next(m for m in messages if isinstance(m, ToolMessage)).content == "stored for [email]"

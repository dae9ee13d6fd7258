"""The policy the framework adapter tests share (tests/test_<framework>.py).

Each tool of the scripted agents exercises one obligation: a plain allow or
deny, an argument redaction, an output redaction, an approval.
"""

from __future__ import annotations

import pathlib
from typing import Any

import execgate

POLICY = """
package execgate

decision := grant if grant
else := {"allow": false, "reasons": [sprintf("%s is not allowed for %v", [input.action.name, input.principal.id])]}

grant := {"allow": true} if {
    input.action.name == "read_file"
    startswith(input.action.args.path, "/workspace/")
}

grant := {"allow": true, "obligations": {"redact": {"args": {"transform": "mask", "paths": ["body"]}}}} if {
    input.action.name == "send_email"
}

grant := {"allow": true, "obligations": {"redact": {"output": {"transform": "mask"}}}} if {
    input.action.name == "lookup_customer"
}

grant := {"allow": true, "obligations": {"approval": {"reason": "payments need a human", "approvers": ["finance"]}}} if {
    input.action.name == "pay"
}
"""

CARD = "4111 1111 1111 1111"


def make_gate(
    tmp_path: pathlib.Path, **options: Any
) -> tuple[execgate.Gate, execgate.SigningKey, pathlib.Path]:
    key = execgate.SigningKey.generate()
    log = tmp_path / "audit.jsonl"
    return execgate.Gate(POLICY, key=key, audit=str(log), **options), key, log


def records(log: pathlib.Path) -> list[dict[str, Any]]:
    """The payloads of the log's records, in order."""
    return [execgate.Receipt.from_json(line).payload for line in log.read_text().splitlines()]


def decisions(log: pathlib.Path) -> list[dict[str, Any]]:
    return [r for r in records(log) if r["kind"] == "decision"]


def completions(log: pathlib.Path) -> list[dict[str, Any]]:
    return [r for r in records(log) if r["kind"] == "completion"]


def verifies(log: pathlib.Path, key: execgate.SigningKey) -> bool:
    report = execgate.verify_log(str(log), key.verify_key)
    return bool(report.ok)


def assert_allowed_then_denied(log: pathlib.Path, key: execgate.SigningKey, **context: str) -> None:
    """The log of a run whose first tool call (``call_1``, by agent-7 in session
    s-1) was allowed and ran, and whose second was denied: two decisions with the
    caller's identity and ``context``, one completion, and a chain that verifies."""
    first, second = decisions(log)
    assert first["principal"]["id"] == "agent-7" and first["context"]["session"] == "s-1"
    assert first["context"]["tool_call_id"] == "call_1"
    assert {k: first["context"][k] for k in context} == context
    assert (first["decision"], second["decision"]) == ("allow", "deny")
    assert [c["outcome"]["status"] for c in completions(log)] == ["ok"]
    assert verifies(log, key)


__all__ = [
    "CARD",
    "POLICY",
    "assert_allowed_then_denied",
    "completions",
    "decisions",
    "make_gate",
    "records",
    "verifies",
]

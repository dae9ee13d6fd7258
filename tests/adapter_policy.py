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


__all__ = ["CARD", "POLICY", "completions", "decisions", "make_gate", "records", "verifies"]

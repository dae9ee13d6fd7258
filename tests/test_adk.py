"""Google ADK: real Runner loops with a scripted BaseLlm, gated by ExecgatePlugin."""

from __future__ import annotations

import asyncio
import pathlib
from collections.abc import AsyncGenerator
from typing import Any

import pytest

pytest.importorskip("google.adk")

from google.adk.agents import LlmAgent
from google.adk.apps import App
from google.adk.models.base_llm import BaseLlm
from google.adk.models.llm_request import LlmRequest
from google.adk.models.llm_response import LlmResponse
from google.adk.runners import InMemoryRunner
from google.genai import types
from pydantic import Field

import execgate
from adapter_policy import (
    CARD,
    assert_allowed_then_denied,
    completions,
    decisions,
    make_gate,
    verifies,
)
from execgate.integrations.adk import ExecgatePlugin

RAN: list[str] = []


class ScriptedLlm(BaseLlm):
    """Makes each scripted call in turn (one per model turn), then answers with text."""

    script: list[tuple[str, dict[str, Any]]] = Field(default_factory=list)
    turn: int = 0
    seen: list[Any] = Field(default_factory=list)

    async def generate_content_async(
        self, llm_request: LlmRequest, stream: bool = False
    ) -> AsyncGenerator[LlmResponse, None]:
        self.seen.append(llm_request.contents[-1] if llm_request.contents else None)
        if self.turn < len(self.script):
            name, args = self.script[self.turn]
            self.turn += 1
            part = types.Part(
                function_call=types.FunctionCall(name=name, args=args, id=f"call_{self.turn}")
            )
        else:
            part = types.Part(text="done")
        yield LlmResponse(content=types.Content(role="model", parts=[part]))


def read_file(path: str) -> dict[str, Any]:
    """Read a file."""
    RAN.append(f"read {path}")
    return {"content": f"contents of {path}"}


async def send_email(to: str, body: str) -> dict[str, Any]:
    """Send an email."""
    RAN.append(f"mail {body}")
    return {"status": f"sent to {to}"}


def lookup_customer(name: str) -> dict[str, Any]:
    """Look a customer up."""
    RAN.append(f"lookup {name}")
    return {"customer": f"{name}: card {CARD}"}


async def pay(amount: int) -> dict[str, Any]:
    """Make a payment."""
    RAN.append(f"pay {amount}")
    return {"status": f"paid {amount}"}


def explode() -> dict[str, Any]:
    """Fail."""
    RAN.append("explode")
    raise RuntimeError("boom")


def make_runner(
    gate: execgate.Gate, *calls: tuple[str, dict[str, Any]], **options: Any
) -> tuple[InMemoryRunner, ScriptedLlm]:
    model = ScriptedLlm(model="scripted", script=list(calls), seen=[])
    agent = LlmAgent(
        name="worker", model=model, tools=[read_file, send_email, lookup_customer, pay, explode]
    )
    app = App(name="t", root_agent=agent, plugins=[ExecgatePlugin(gate, **options)])
    return InMemoryRunner(app=app), model


def run(
    runner: InMemoryRunner,
    text: str | None = None,
    *,
    user: str = "agent-7",
    session: str = "s-1",
    state: dict[str, Any] | None = None,
    message: types.Content | None = None,
) -> list[Any]:
    async def go() -> list[Any]:
        service = runner.session_service
        if await service.get_session(app_name="t", user_id=user, session_id=session) is None:
            await service.create_session(
                app_name="t", user_id=user, session_id=session, state=state
            )
        new = message or types.Content(role="user", parts=[types.Part(text=text or "go")])
        return [
            e async for e in runner.run_async(user_id=user, session_id=session, new_message=new)
        ]

    return asyncio.run(go())


def responses(events: list[Any]) -> dict[str, Any]:
    """The tool responses the model saw, by function call id."""
    seen: dict[str, Any] = {}
    for event in events:
        for r in event.get_function_responses():
            seen[r.id] = r.response
    return seen


@pytest.fixture(autouse=True)
def _clear() -> None:
    RAN.clear()


def test_allowed_and_denied(tmp_path: pathlib.Path) -> None:
    gate, key, log = make_gate(tmp_path)
    runner, _ = make_runner(
        gate, ("read_file", {"path": "/workspace/a.txt"}), ("read_file", {"path": "/etc/shadow"})
    )
    events = run(runner, state={"execgate_purpose": "audit"})
    seen = responses(events)
    assert RAN == ["read /workspace/a.txt"]  # the denied body never ran
    assert seen["call_1"] == {"content": "contents of /workspace/a.txt"}
    assert "read_file is not allowed for agent-7" in seen["call_2"]["error"]
    assert events[-1].content.parts[0].text == "done"
    gate.close()
    assert_allowed_then_denied(log, key, purpose="audit")


def test_principal_from_state_keeps_ambient_roles(tmp_path: pathlib.Path) -> None:
    gate, key, log = make_gate(tmp_path)
    runner, _ = make_runner(gate, ("read_file", {"path": "/workspace/a"}))
    with execgate.principal("ambient", roles=["reader"]):
        run(runner, user="u-1")
    runner2, _ = make_runner(gate, ("read_file", {"path": "/workspace/a"}))
    run(runner2, user="u-2", state={"execgate_principal": {"id": "svc", "roles": ["agent"]}})
    gate.close()
    a, b = decisions(log)
    assert a["principal"] == {"id": "u-1", "roles": ["reader"]}
    assert b["principal"] == {"id": "svc", "roles": ["agent"]}
    assert verifies(log, key)


def test_argument_and_output_redaction(tmp_path: pathlib.Path) -> None:
    gate, key, log = make_gate(tmp_path)
    runner, model = make_runner(
        gate,
        ("send_email", {"to": "cfo@example.com", "body": f"card {CARD}"}),
        ("lookup_customer", {"name": "Ada"}),
    )
    seen = responses(run(runner))
    assert RAN == ["mail card [card:…1111]", "lookup Ada"]  # the tool got the masked body
    assert seen["call_2"] == {
        "customer": "Ada: card [card:…1111]"
    }  # the model saw the masked output
    assert CARD not in str(model.seen[-1])
    gate.close()
    assert len(completions(log)) == 2
    assert verifies(log, key)


def test_tool_error_is_recorded_and_on_deny_raise(tmp_path: pathlib.Path) -> None:
    key = execgate.SigningKey.generate()
    gate = execgate.Gate(
        'package execgate\ndecision := {"allow": true}', key=key, audit=str(tmp_path / "b.jsonl")
    )
    runner, _ = make_runner(gate, ("explode", {}))
    with pytest.raises(RuntimeError, match="boom"):
        run(runner)
    gate.close()
    (done,) = completions(tmp_path / "b.jsonl")
    assert done["outcome"]["status"] == "error" and done["outcome"]["error_type"] == "RuntimeError"
    gate, _, _ = make_gate(tmp_path)
    runner, _ = make_runner(gate, ("read_file", {"path": "/etc/shadow"}), on_deny="raise")
    with pytest.raises(RuntimeError) as failed:  # ADK wraps whatever a plugin raises
        run(runner)
    assert isinstance(failed.value.__cause__, execgate.ActionDenied)
    assert RAN == ["explode"]
    gate.close()


def _confirm(events: list[Any], confirmed: bool) -> types.Content:
    (request,) = [
        c for e in events for c in e.get_function_calls() if c.name == "adk_request_confirmation"
    ]
    payload = request.args["toolConfirmation"]["payload"]
    assert payload["type"] == "execgate.approval" and payload["reason"] == "payments need a human"
    assert payload["args"] == {"amount": 30} and payload["approvers"] == ["finance"]
    answer = {"confirmed": confirmed, "payload": {"approver": "alice", "comment": "checked"}}
    return types.Content(
        role="user",
        parts=[
            types.Part(
                function_response=types.FunctionResponse(
                    name="adk_request_confirmation", id=request.id, response=answer
                )
            )
        ],
    )


@pytest.mark.parametrize("approved", [True, False])
def test_approval_through_tool_confirmation(tmp_path: pathlib.Path, approved: bool) -> None:
    gate, key, log = make_gate(tmp_path)
    runner, _ = make_runner(gate, ("pay", {"amount": 30}))
    first = run(runner)
    assert RAN == []
    second = run(runner, message=_confirm(first, approved))
    assert RAN == (["pay 30"] if approved else [])
    seen = responses(second)
    assert ("status" in seen["call_1"]) is approved
    gate.close()
    assert [d["decision"] for d in decisions(log)] == ["deny", "allow" if approved else "deny"]
    assert len(completions(log)) == (1 if approved else 0)
    assert verifies(log, key)


def test_approval_by_the_gate_approver(tmp_path: pathlib.Path) -> None:
    gate, key, log = make_gate(tmp_path, approver=lambda request: True)
    runner, _ = make_runner(gate, ("pay", {"amount": 5}), approval="gate")
    seen = responses(run(runner))
    assert seen["call_1"] == {"status": "paid 5"} and RAN == ["pay 5"]
    gate.close()
    assert verifies(log, key)


def test_demo(tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]) -> None:
    from execgate import cli

    log = tmp_path / "audit.jsonl"
    assert cli.main(["demo", "--framework", "adk", "--log", str(log)]) == 0
    out = capsys.readouterr().out
    assert "VALID" in out and "exfiltration" in out and "over the mail budget" in out
    assert "[card:…1111]" in out  # the tool got the masked card number
    report = execgate.verify_log(str(log), execgate.VerifyKey.from_pem(tmp_path / "audit.pub"))
    assert report.ok and report.completions == 6

"""PydanticAI: real agent runs with a scripted model (FunctionModel), gated by ExecgateCapability."""

from __future__ import annotations

import asyncio
import pathlib
from typing import Any

import pytest

pytest.importorskip("pydantic_ai")

from pydantic_ai import Agent, RunContext
from pydantic_ai.messages import (
    ModelMessage,
    ModelResponse,
    TextPart,
    ToolCallPart,
    ToolReturnPart,
)
from pydantic_ai.models.function import AgentInfo, FunctionModel
from pydantic_ai.tools import DeferredToolRequests, DeferredToolResults

import execgate
from adapter_policy import (
    CARD,
    assert_allowed_then_denied,
    completions,
    decisions,
    make_gate,
    verifies,
)
from execgate.integrations.pydantic_ai import ExecgateCapability

RAN: list[str] = []


def scripted(*calls: tuple[str, dict[str, Any]]) -> FunctionModel:
    """A model that makes each call in turn (one per step), then answers with text."""

    def respond(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        step = sum(1 for m in messages if isinstance(m, ModelResponse))
        if step < len(calls):
            name, args = calls[step]
            return ModelResponse(parts=[ToolCallPart(name, args, tool_call_id=f"call_{step + 1}")])
        return ModelResponse(parts=[TextPart("done")])

    return FunctionModel(respond)


def returns(messages: list[ModelMessage]) -> dict[str, Any]:
    """What the model saw of each tool call, by tool_call_id: (outcome, content)."""
    seen: dict[str, Any] = {}
    for m in messages:
        for part in getattr(m, "parts", []):
            if isinstance(part, ToolReturnPart):
                seen[part.tool_call_id] = (part.outcome, part.content)
            elif type(part).__name__ == "RetryPromptPart":
                seen[part.tool_call_id] = ("retry", part.content)
    return seen


def make_agent(model: FunctionModel, gate: execgate.Gate, **options: Any) -> Agent[Any, Any]:
    agent: Agent[Any, Any] = Agent(
        model,
        output_type=[str, DeferredToolRequests],
        capabilities=[ExecgateCapability(gate, **options)],
    )

    @agent.tool_plain
    def read_file(path: str) -> str:
        """Read a file."""
        RAN.append(f"read {path}")
        return f"contents of {path}"

    @agent.tool_plain
    async def send_email(to: str, body: str) -> str:
        """Send an email."""
        RAN.append(f"mail {body}")
        return f"sent to {to}"

    @agent.tool_plain
    def lookup_customer(name: str) -> str:
        """Look a customer up."""
        RAN.append(f"lookup {name}")
        return f"{name}: card {CARD}"

    @agent.tool
    async def pay(ctx: RunContext[Any], amount: int) -> str:
        """Make a payment."""
        RAN.append(f"pay {amount}")
        return f"paid {amount}"

    return agent


@pytest.fixture(autouse=True)
def _clear() -> None:
    RAN.clear()


def test_allowed_and_denied(tmp_path: pathlib.Path) -> None:
    gate, key, log = make_gate(tmp_path)
    model = scripted(
        ("read_file", {"path": "/workspace/a.txt"}), ("read_file", {"path": "/etc/shadow"})
    )
    result = make_agent(model, gate).run_sync(
        "read", deps={"principal": {"id": "agent-7", "roles": ["agent"]}, "session": "s-1"}
    )
    seen = returns(result.all_messages())
    assert RAN == ["read /workspace/a.txt"]  # the denied body never ran
    assert seen["call_1"] == ("success", "contents of /workspace/a.txt")
    outcome, text = seen["call_2"]
    assert outcome == "failed" and "read_file is not allowed for agent-7" in text
    assert result.output == "done"  # the model saw the refusal and went on
    gate.close()
    assert_allowed_then_denied(log, key)


def test_principal_from_metadata_then_ambient(tmp_path: pathlib.Path) -> None:
    gate, key, log = make_gate(tmp_path)
    model = scripted(
        ("read_file", {"path": "/workspace/a"}), ("read_file", {"path": "/workspace/b"})
    )
    agent = make_agent(model, gate)
    agent.run_sync(
        "x", metadata={"execgate_principal": {"id": "meta-bot"}, "execgate_purpose": "p"}
    )
    with execgate.principal("ambient-bot"), execgate.purpose("ambient"):
        agent.run_sync("x")
    gate.close()
    ids = [(d["principal"]["id"], d["context"].get("purpose")) for d in decisions(log)]
    assert ids == [
        ("meta-bot", "p"),
        ("meta-bot", "p"),
        ("ambient-bot", "ambient"),
        ("ambient-bot", "ambient"),
    ]
    assert verifies(log, key)


def test_argument_and_output_redaction(tmp_path: pathlib.Path) -> None:
    gate, key, log = make_gate(tmp_path)
    model = scripted(
        ("send_email", {"to": "cfo@example.com", "body": f"card {CARD}"}),
        ("lookup_customer", {"name": "Ada"}),
    )
    result = make_agent(model, gate).run_sync("go")
    seen = returns(result.all_messages())
    assert RAN[0] == "mail card [card:…1111]"  # the tool got the masked body
    assert RAN[1] == "lookup Ada"
    assert seen["call_2"] == (
        "success",
        "Ada: card [card:…1111]",
    )  # the model saw the masked output
    assert CARD not in str(result.all_messages()[-2:])
    gate.close()
    assert len(completions(log)) == 2
    assert verifies(log, key)


def test_async_run_and_on_deny_raise(tmp_path: pathlib.Path) -> None:
    gate, key, log = make_gate(tmp_path)
    agent = make_agent(scripted(("send_email", {"to": "a@b.c", "body": "hi"})), gate)
    ok = asyncio.run(agent.run("go"))
    assert ok.output == "done" and RAN == ["mail hi"]
    agent = make_agent(scripted(("read_file", {"path": "/etc/shadow"})), gate, on_deny="raise")
    with pytest.raises(execgate.ActionDenied) as denied:
        asyncio.run(agent.run("go"))
    assert "read_file is not allowed" in "; ".join(denied.value.reasons)
    assert RAN == ["mail hi"]
    gate.close()
    assert verifies(log, key)


@pytest.mark.parametrize("approved", [True, False])
def test_approval_through_deferred_tools(tmp_path: pathlib.Path, approved: bool) -> None:
    gate, key, log = make_gate(tmp_path)
    agent = make_agent(scripted(("pay", {"amount": 30})), gate)
    first = agent.run_sync("pay")
    assert isinstance(first.output, DeferredToolRequests) and RAN == []
    (request,) = first.output.approvals
    shown = first.output.metadata[request.tool_call_id]
    assert shown["type"] == "execgate.approval" and shown["reason"] == "payments need a human"
    assert shown["args"] == {"amount": 30} and shown["approvers"] == ["finance"]
    results = DeferredToolResults(
        approvals={request.tool_call_id: approved},
        metadata={request.tool_call_id: {"approver": "alice", "comment": "ok"}},
    )
    second = agent.run_sync(message_history=first.all_messages(), deferred_tool_results=results)
    assert second.output == "done"
    assert RAN == (["pay 30"] if approved else [])
    gate.close()
    kinds = [d["decision"] for d in decisions(log)]
    assert kinds == (["deny", "allow"] if approved else ["deny"])
    assert len(completions(log)) == (1 if approved else 0)
    assert verifies(log, key)


def test_approval_by_the_gate_approver(tmp_path: pathlib.Path) -> None:
    gate, key, log = make_gate(tmp_path, approver=lambda request: False)
    result = make_agent(scripted(("pay", {"amount": 5})), gate, approval="gate").run_sync("pay")
    outcome, text = returns(result.all_messages())["call_1"]
    assert outcome == "failed" and "did not run" in text and RAN == []
    gate.close()
    assert verifies(log, key)


def test_demo(tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]) -> None:
    from execgate import cli

    log = tmp_path / "audit.jsonl"
    assert cli.main(["demo", "--framework", "pydantic-ai", "--log", str(log)]) == 0
    out = capsys.readouterr().out
    assert "VALID" in out and "exfiltration" in out and "over the mail budget" in out
    assert "[card:…1111]" in out  # the tool got the masked card number
    report = execgate.verify_log(str(log), execgate.VerifyKey.from_pem(tmp_path / "audit.pub"))
    assert report.ok and report.completions == 6

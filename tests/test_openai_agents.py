"""OpenAI Agents SDK: real Runner loops with the SDK's ScriptedModel, tools guarded by guard_agent."""

from __future__ import annotations

import asyncio
import pathlib
from typing import Any

import pytest

pytest.importorskip("agents")

from agents import Agent, RunConfig, Runner, function_tool, set_tracing_disabled
from agents.items import ToolCallOutputItem
from agents.testing import ScriptedModel, assistant_message, function_call

import execgate
import execgate.errors
from adapter_policy import (
    CARD,
    assert_allowed_then_denied,
    completions,
    decisions,
    make_gate,
    verifies,
)
from execgate.integrations.openai_agents import guard_agent

set_tracing_disabled(True)  # no trace export: the tests make no network calls
NO_TRACING = RunConfig(tracing_disabled=True)
RAN: list[str] = []


def _run_sync(*args: Any, **kwargs: Any) -> Any:
    """``Runner.run`` in a fresh event loop that is closed afterwards (the SDK's
    ``run_sync`` leaves its loop open, which pytest reports as a leak)."""
    return asyncio.run(Runner.run(*args, **kwargs))


@function_tool
def read_file(path: str) -> str:
    """Read a file."""
    RAN.append(f"read {path}")
    return f"contents of {path}"


@function_tool
async def send_email(to: str, body: str) -> str:
    """Send an email."""
    RAN.append(f"mail {body}")
    return f"sent to {to}"


@function_tool
def lookup_customer(name: str) -> str:
    """Look a customer up."""
    RAN.append(f"lookup {name}")
    return f"{name}: card {CARD}"


@function_tool
async def pay(amount: int) -> str:
    """Make a payment."""
    RAN.append(f"pay {amount}")
    return f"paid {amount}"


@function_tool
def explode() -> str:
    """Fail."""
    RAN.append("explode")
    raise RuntimeError("boom")


def scripted(*calls: tuple[str, dict[str, Any]]) -> ScriptedModel:
    """A model that makes each call in turn (one per turn), then answers with text."""
    steps: list[Any] = [
        [function_call(n, a, call_id=f"call_{i}")] for i, (n, a) in enumerate(calls, 1)
    ]
    return ScriptedModel([*steps, [assistant_message("done")]])


def make_agent(model: ScriptedModel, gate: execgate.Gate, **options: Any) -> Agent[Any]:
    agent = Agent(
        name="worker", model=model, tools=[read_file, send_email, lookup_customer, pay, explode]
    )
    return guard_agent(agent, gate, **options)


def outputs(result: Any) -> dict[str, Any]:
    """What the model saw of each tool call, by call id."""
    return {
        item.raw_item["call_id"]: item.output
        for item in result.new_items
        if isinstance(item, ToolCallOutputItem)
    }


@pytest.fixture(autouse=True)
def _clear() -> None:
    RAN.clear()


def test_allowed_and_denied(tmp_path: pathlib.Path) -> None:
    gate, key, log = make_gate(tmp_path)
    agent = make_agent(
        scripted(
            ("read_file", {"path": "/workspace/a.txt"}), ("read_file", {"path": "/etc/shadow"})
        ),
        gate,
    )
    who = {"principal": {"id": "agent-7", "roles": ["agent"]}, "session": "s-1", "purpose": "audit"}
    result = _run_sync(agent, "read", context=who, run_config=NO_TRACING)
    seen = outputs(result)
    assert RAN == ["read /workspace/a.txt"]  # the denied body never ran
    assert seen["call_1"] == "contents of /workspace/a.txt"
    assert (
        "read_file is not allowed for agent-7" in seen["call_2"] and "did not run" in seen["call_2"]
    )
    assert result.final_output == "done"
    gate.close()
    assert_allowed_then_denied(log, key, purpose="audit")


def test_ambient_principal(tmp_path: pathlib.Path) -> None:
    gate, key, log = make_gate(tmp_path)
    agent = make_agent(scripted(("read_file", {"path": "/etc/passwd"})), gate)
    with execgate.principal("ambient-bot"):
        result = _run_sync(agent, "x", run_config=NO_TRACING)
    assert "not allowed for ambient-bot" in outputs(result)["call_1"]
    gate.close()
    assert verifies(log, key)


def test_argument_and_output_redaction(tmp_path: pathlib.Path) -> None:
    gate, key, log = make_gate(tmp_path)
    model = scripted(
        ("send_email", {"to": "cfo@example.com", "body": f"card {CARD}"}),
        ("lookup_customer", {"name": "Ada"}),
    )
    result = _run_sync(make_agent(model, gate), "go", run_config=NO_TRACING)
    assert RAN == ["mail card [card:…1111]", "lookup Ada"]  # the tool got the masked body
    assert outputs(result)["call_2"] == "Ada: card [card:…1111]"  # the model saw the masked output
    sent = [
        i
        for i in model.last_call.input
        if isinstance(i, dict) and i.get("type") == "function_call_output"
    ]
    assert len(sent) == 2 and CARD not in str(sent)  # nor in what the next model call received
    gate.close()
    assert len(completions(log)) == 2
    assert verifies(log, key)


def test_tool_error_is_recorded(tmp_path: pathlib.Path) -> None:
    key = execgate.SigningKey.generate()
    gate2 = execgate.Gate(
        'package execgate\ndecision := {"allow": true}', key=key, audit=str(tmp_path / "b.jsonl")
    )
    result = _run_sync(make_agent(scripted(("explode", {})), gate2), "go", run_config=NO_TRACING)
    assert (
        RAN == ["explode"] and "error occurred" in outputs(result)["call_1"]
    )  # the SDK told the model
    gate2.close()
    (done,) = completions(tmp_path / "b.jsonl")
    assert done["outcome"]["status"] == "error" and done["outcome"]["error_type"] == "RuntimeError"


def test_async_run_and_on_deny_raise(tmp_path: pathlib.Path) -> None:
    gate, key, log = make_gate(tmp_path)
    ok = asyncio.run(
        Runner.run(
            make_agent(scripted(("send_email", {"to": "a@b.c", "body": "hi"})), gate),
            "go",
            run_config=NO_TRACING,
        )
    )
    assert ok.final_output == "done" and RAN == ["mail hi"]
    agent = make_agent(scripted(("read_file", {"path": "/etc/shadow"})), gate, on_deny="raise")
    with pytest.raises(execgate.ActionDenied) as denied:
        asyncio.run(Runner.run(agent, "go", run_config=NO_TRACING))
    assert "read_file is not allowed" in "; ".join(denied.value.reasons)
    assert RAN == ["mail hi"]
    gate.close()
    assert verifies(log, key)


@pytest.mark.parametrize("approved", [True, False])
def test_approval_through_run_interruptions(tmp_path: pathlib.Path, approved: bool) -> None:
    gate, key, log = make_gate(tmp_path)
    agent = make_agent(scripted(("pay", {"amount": 30})), gate)
    first = _run_sync(agent, "pay", context={"approver": "alice"}, run_config=NO_TRACING)
    assert RAN == [] and len(first.interruptions) == 1
    state = first.to_state()
    if approved:
        state.approve(first.interruptions[0])
    else:
        state.reject(first.interruptions[0])
    second = _run_sync(agent, state, run_config=NO_TRACING)
    assert second.final_output == "done"
    assert RAN == (["pay 30"] if approved else [])
    gate.close()
    assert [d["decision"] for d in decisions(log)] == (["deny", "allow"] if approved else ["deny"])
    assert len(completions(log)) == (1 if approved else 0)
    assert verifies(log, key)


def test_approval_by_the_gate_approver(tmp_path: pathlib.Path) -> None:
    gate, key, log = make_gate(tmp_path, approver=lambda request: False)
    result = _run_sync(
        make_agent(scripted(("pay", {"amount": 5})), gate, approval="gate"),
        "pay",
        run_config=NO_TRACING,
    )
    assert "did not run" in outputs(result)["call_1"] and RAN == [] and not result.interruptions
    gate.close()
    assert verifies(log, key)


def test_hosted_tools_are_refused(tmp_path: pathlib.Path) -> None:
    from agents import WebSearchTool

    gate, _, _ = make_gate(tmp_path)
    with pytest.raises(execgate.errors.ConfigurationError, match="not a function tool"):
        guard_agent(Agent(name="w", tools=[WebSearchTool()]), gate)


def test_demo(tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]) -> None:
    from execgate import cli

    log = tmp_path / "audit.jsonl"
    assert cli.main(["demo", "--framework", "openai-agents", "--log", str(log)]) == 0
    out = capsys.readouterr().out
    assert "VALID" in out and "exfiltration" in out and "over the mail budget" in out
    assert "[card:…1111]" in out  # the tool got the masked card number
    report = execgate.verify_log(str(log), execgate.VerifyKey.from_pem(tmp_path / "audit.pub"))
    assert report.ok and report.completions == 6

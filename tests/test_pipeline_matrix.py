"""Every entry point x every obligation kind x {met, refused, malformed, unknown}.

One policy attaches the obligations of a scenario (named by the ambient
``purpose``) to every call. Each entry point runs the same tool; the body runs
exactly when the obligations are met, it receives the rewritten/redacted
arguments, the caller sees the redacted output, and every refusal is an
ExecgateError whose decision names the cause.
"""

from __future__ import annotations

import asyncio
import pathlib
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest

import execgate
from execgate import Limits, Sandbox

pytest.importorskip("langchain")

from langchain.agents import create_agent
from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
from langchain_core.messages import AIMessage, ToolMessage
from langchain_core.tools import tool

from execgate.integrations.langchain import ExecgateCallbackHandler, ExecgateMiddleware, guard_tool

POLICY = """
package execgate
decision := {"allow": true, "obligations": data.scenarios[input.context.purpose]}
"""

EMAIL = "write to alice@example.com"
CARD = "card 4111 1111 1111 1111"

SCENARIOS: dict[str, Any] = {
    "none": {},
    "annotations": {"annotations": {"ticket": "OPS-1"}},
    "unknown": {"quarantine": True},
    "approval_yes": {"approval": {"reason": "needs a human"}},
    "approval_no": {"approval": {"reason": "needs a human"}},
    "approval_malformed": {"approval": "soon"},
    "rate_ok": {"rate": {"key": "r", "limit": 100000, "window_seconds": 60}},
    "rate_spent": {"rate": {"key": "r0", "limit": 0, "window_seconds": 60}},
    "rate_malformed": {"rate": {"key": "r", "limit": 1.5, "window_seconds": 60}},
    "budget_ok": {"budget": {"key": "b", "limit": 1e9, "cost": 1}},
    "budget_spent": {"budget": {"key": "b0", "limit": 0, "cost": 1}},
    "budget_malformed": {"budget": {"key": "b", "limit": "lots", "cost": 1}},
    "redact_args": {"redact": {"args": {}}},
    "redact_args_deny": {"redact": {"args": {"transform": "deny"}}},
    "redact_output": {"redact": {"output": {"detectors": ["card"]}}},
    "redact_malformed": {"redact": ["args"]},
    "redact_unknown_detector": {"redact": {"args": {"transform": "deny", "detectors": ["dna"]}}},
    "sandbox": {"sandbox": {"limits": {"wall_seconds": 60}}},
    "sandbox_malformed": {"sandbox": {"jail": True}},
    "args": {"args": {"text": "rewritten"}},
    "args_malformed": {"args": ["text"]},
}

#: Scenario -> the failure kind of its refusal (None: the call runs).
REFUSED = {
    "unknown": "obligation",
    "approval_no": "approval",
    "approval_malformed": "obligation",
    "rate_spent": "obligation",
    "rate_malformed": "obligation",
    "budget_spent": "obligation",
    "budget_malformed": "obligation",
    "redact_args_deny": "obligation",
    "redact_malformed": "obligation",
    "redact_unknown_detector": "obligation",
    "sandbox_malformed": "obligation",
    "args_malformed": "obligation",
}


@dataclass(frozen=True)
class EntryPoint:
    name: str
    #: Runs the tool with ``text``; returns what the caller got back.
    call: Callable[[execgate.Gate, str], Any]
    rewrite: bool = True
    output: bool = True
    sandbox: bool = False
    #: Whether the tool takes an argument named "text" (what "args" rewrites).
    takes_text: bool = True


RAN: list[str] = []


def _gate(tmp_path: pathlib.Path) -> tuple[execgate.Gate, execgate.SigningKey, pathlib.Path]:
    key = execgate.SigningKey.generate()
    log = tmp_path / "audit.jsonl"
    gate = execgate.Gate(
        POLICY,
        data={"scenarios": SCENARIOS},
        key=key,
        audit=log,
        approver=lambda request: request.context.get("purpose") == "approval_yes",
    )
    return gate, key, log


def _reply(text: str) -> str:
    RAN.append(text)
    return f"got {text}; {CARD}"


# -- the entry points ----------------------------------------------------------


def _sync(gate: execgate.Gate, text: str) -> Any:
    @gate.guard(action="tool")
    def tool_(text: str) -> str:
        return _reply(text)

    return tool_(text)


def _async(gate: execgate.Gate, text: str) -> Any:
    @gate.guard(action="tool")
    async def tool_(text: str) -> str:
        await asyncio.sleep(0)
        return _reply(text)

    return asyncio.run(tool_(text))


def _generator(gate: execgate.Gate, text: str) -> Any:
    @gate.guard(action="tool")
    def tool_(text: str) -> Any:
        yield _reply(text)

    return "".join(tool_(text))


def _async_generator(gate: execgate.Gate, text: str) -> Any:
    @gate.guard(action="tool")
    async def tool_(text: str) -> Any:
        yield _reply(text)

    async def collect() -> str:
        return "".join([item async for item in tool_(text)])

    return asyncio.run(collect())


def _method(gate: execgate.Gate, text: str) -> Any:
    class Tools:
        @gate.guard(action="tool")
        def tool_(self, text: str) -> str:
            return _reply(text)

    return Tools().tool_(text)


ISOLATING: dict[int, Callable[..., Any]] = {}


def isolated_reply(text: str) -> str:
    """The isolated body: runs in the child, so it cannot append to RAN."""
    return f"got {text}; {CARD}"


def _isolate(gate: execgate.Gate, text: str) -> Any:
    guarded = gate.guard(action="tool", isolate=Sandbox(limits=Limits(wall=60)))(isolated_reply)
    out = guarded(text)
    RAN.append(out.split("; ")[0].removeprefix("got "))
    return out


def _run(gate: execgate.Gate, text: str) -> Any:
    # The card is assembled by the command, so it is in the output only.
    script = 'printf "got %s; card 4111 1111 1111 %s\\n" "$0" 1111'
    done = gate.run(["/bin/sh", "-c", script, text], action="tool")
    out = done.stdout.decode().strip()
    RAN.append(out.split("; ")[0].removeprefix("got "))
    return out


class _Model(GenericFakeChatModel):
    def bind_tools(self, tools: Any, **kwargs: Any) -> _Model:
        return self


@tool
def lc_tool(text: str) -> str:
    """A LangChain tool."""
    return _reply(text)


def _middleware(gate: execgate.Gate, text: str) -> Any:
    model = _Model(
        messages=iter(
            [
                AIMessage(
                    content="",
                    tool_calls=[{"name": "lc_tool", "args": {"text": text}, "id": "c1"}],
                ),
                AIMessage(content="done"),
            ]
        )
    )
    agent = create_agent(
        model,
        tools=[lc_tool],
        middleware=[
            ExecgateMiddleware(gate, on_deny="raise", approval="gate", actions={"lc_tool": "tool"})
        ],
    )
    result = agent.invoke({"messages": [{"role": "user", "content": "go"}]})
    return next(m for m in result["messages"] if isinstance(m, ToolMessage)).content


def _callback(gate: execgate.Gate, text: str) -> Any:
    renamed = lc_tool.model_copy(update={"name": "tool"})
    return renamed.invoke({"text": text}, config={"callbacks": [ExecgateCallbackHandler(gate)]})


def _guard_tool(gate: execgate.Gate, text: str) -> Any:
    return guard_tool(lc_tool, gate, action="tool").invoke({"text": text})


ENTRY_POINTS = [
    EntryPoint("sync", _sync),
    EntryPoint("async", _async),
    EntryPoint("generator", _generator),
    EntryPoint("async_generator", _async_generator),
    EntryPoint("method", _method),
    EntryPoint("isolate", _isolate, sandbox=True),
    # gate.run's tool takes only argv: a rewrite of "text" cannot reach it.
    EntryPoint("run", _run, sandbox=True, takes_text=False),
    EntryPoint("middleware", _middleware),
    EntryPoint("callback", _callback, rewrite=False, output=False),
    EntryPoint("guard_tool", _guard_tool),
]


def _expected(ep: EntryPoint, scenario: str) -> str | None:
    """The failure kind this entry point must refuse the scenario with (None: it runs)."""
    if scenario in REFUSED:
        return REFUSED[scenario]
    needs = {
        "redact_args": ep.rewrite,
        "args": ep.rewrite and ep.takes_text,
        "redact_output": ep.output,
        "sandbox": ep.sandbox,
    }
    return None if needs.get(scenario, True) else "obligation"


@pytest.mark.parametrize("scenario", list(SCENARIOS))
@pytest.mark.parametrize("ep", ENTRY_POINTS, ids=lambda ep: ep.name)
def test_body_runs_exactly_when_the_obligations_are_met(
    tmp_path: pathlib.Path, ep: EntryPoint, scenario: str
) -> None:
    if ep.name in ("isolate", "run") and sys.platform != "linux":
        pytest.skip("the sandbox is Linux-only")
    gate, key, log = _gate(tmp_path)
    RAN.clear()
    text = EMAIL
    expected = _expected(ep, scenario)
    with execgate.purpose(scenario):
        if expected is not None:
            with pytest.raises(execgate.ExecgateError) as info:
                ep.call(gate, text)
            decision = getattr(info.value, "decision", None)
            assert decision is not None, info.value
            assert decision.error == expected, (decision.error, decision.reasons)
            assert RAN == [], "the body ran although the call was refused"
            gate.close()
            report = execgate.verify_log(log, key.verify_key)
            assert report.ok and report.completions == 0, (report.reason, report.completions)
            return
        out = ep.call(gate, text)
    # The body ran once, with exactly the arguments the obligations ask for.
    received = {"redact_args": "write to ***@example.com", "args": "rewritten"}.get(scenario, text)
    assert RAN == [received]
    shown = str(out)
    if scenario == "redact_output":
        assert "4111 1111 1111 1111" not in shown and "[card:" in shown
    else:
        assert "4111 1111 1111 1111" in shown
    gate.close()
    report = execgate.verify_log(log, key.verify_key)
    assert report.ok, (report.line, report.reason)
    assert report.completions == 1 and report.unfinished == []

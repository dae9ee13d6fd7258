"""The README's examples run as written."""

from __future__ import annotations

import pathlib
import re
from typing import Any

import pytest

import execgate

README = (pathlib.Path(__file__).parent.parent / "README.md").read_text()
pytest_plugins = ["pytester"]


def example(name: str) -> str:
    match = re.search(rf"<!-- example: {name}\b.*?-->\s*```python\n(.*?)```", README, re.S)
    assert match, f"README example {name!r} not found"
    return match.group(1)


def quickstart_gate() -> execgate.Gate:
    source = re.search(r'gate = execgate\.Gate\("""(.*?)"""\)', README, re.S)
    assert source
    return execgate.Gate(source.group(1))


def test_quickstart_policy_decides_as_described() -> None:
    gate = quickstart_gate()
    assert gate.check("fs.read", {"path": "/workspace/report.md"}).allowed
    denied = gate.check("fs.read", {"path": "/etc/shadow"})
    assert not denied.allowed and denied.reasons == ("only reads under /workspace/ are allowed",)


def test_langchain_example() -> None:
    pytest.importorskip("langchain")
    from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
    from langchain_core.messages import AIMessage, ToolMessage

    class ScriptedModel(GenericFakeChatModel):
        def bind_tools(self, tools: Any, **kwargs: Any) -> ScriptedModel:
            return self

    model = ScriptedModel(
        messages=iter(
            [
                AIMessage(
                    content="",
                    tool_calls=[{"name": "read_file", "args": {"path": "/etc/shadow"}, "id": "c1"}],
                ),
                AIMessage(content="I may not read that."),
            ]
        )
    )
    namespace: dict[str, Any] = {"model": model, "gate": quickstart_gate()}
    exec(example("langchain"), namespace)
    tool_message = next(m for m in namespace["result"]["messages"] if isinstance(m, ToolMessage))
    assert tool_message.status == "error" and "only reads under /workspace/" in tool_message.content


def test_pytest_example(pytester: pytest.Pytester) -> None:
    policies = pytester.mkdir("policies")
    (policies / "policy.rego").write_text(
        'package execgate\ndefault decision := {"allow": false, "reasons": ["only reads under /workspace/"]}\n'
        'decision := {"allow": true} if startswith(input.action.args.path, "/workspace/")\n'
    )
    pytester.makepyfile(test_example=example("pytest"))
    pytester.runpytest("-p", "no:cacheprovider", "-p", "no:asyncio").assert_outcomes(passed=1)


def test_openai_agents_example() -> None:
    pytest.importorskip("agents")
    from agents import set_tracing_disabled
    from agents.testing import ScriptedModel, assistant_message, function_call

    set_tracing_disabled(True)
    model = ScriptedModel(
        [
            [function_call("read_file", {"path": "/etc/shadow"}, call_id="c1")],
            [assistant_message("I may not read that.")],
        ]
    )
    namespace: dict[str, Any] = {"model": model, "gate": quickstart_gate()}
    exec(example("openai-agents"), namespace)
    outputs = [getattr(i, "output", "") for i in namespace["result"].new_items]
    assert any("only reads under /workspace/" in str(o) for o in outputs)


def test_pydantic_ai_example() -> None:
    pytest.importorskip("pydantic_ai")
    from pydantic_ai.messages import ModelResponse, TextPart, ToolCallPart, ToolReturnPart
    from pydantic_ai.models.function import FunctionModel

    def respond(messages: Any, info: Any) -> ModelResponse:
        if len(messages) == 1:
            return ModelResponse(parts=[ToolCallPart("read_file", {"path": "/etc/shadow"})])
        return ModelResponse(parts=[TextPart("I may not read that.")])

    namespace: dict[str, Any] = {"model": FunctionModel(respond), "gate": quickstart_gate()}
    exec(example("pydantic-ai"), namespace)
    parts = [p for m in namespace["result"].all_messages() for p in m.parts]
    (failed,) = [p for p in parts if isinstance(p, ToolReturnPart)]
    assert failed.outcome == "failed" and "only reads under /workspace/" in failed.content


def test_adk_example() -> None:
    pytest.importorskip("google.adk")
    import asyncio

    from google.adk.models.base_llm import BaseLlm
    from google.genai import types

    class ScriptedLlm(BaseLlm):
        turn: int = 0

        async def generate_content_async(self, llm_request: Any, stream: bool = False) -> Any:
            from google.adk.models.llm_response import LlmResponse

            self.turn += 1
            if self.turn == 1:
                call = types.FunctionCall(name="read_file", args={"path": "/etc/shadow"}, id="c1")
                part = types.Part(function_call=call)
            else:
                part = types.Part(text="I may not read that.")
            yield LlmResponse(content=types.Content(role="model", parts=[part]))

    namespace: dict[str, Any] = {"model": ScriptedLlm(model="scripted"), "gate": quickstart_gate()}
    exec(example("adk"), namespace)
    runner = namespace["runner"]

    async def go() -> list[Any]:
        await runner.session_service.create_session(
            app_name="docs", user_id="agent-7", session_id="s"
        )
        message = types.Content(role="user", parts=[types.Part(text="show me /etc/shadow")])
        return [
            e
            async for e in runner.run_async(user_id="agent-7", session_id="s", new_message=message)
        ]

    responses = [r.response for e in asyncio.run(go()) for r in e.get_function_responses()]
    assert "only reads under /workspace/" in responses[0]["error"]

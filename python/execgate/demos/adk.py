"""``execgate demo --framework adk``: a Google ADK agent with a scripted
``BaseLlm``, gated by :class:`ExecgatePlugin`."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator
from typing import Any

from google.adk.agents import LlmAgent
from google.adk.apps import App
from google.adk.models.base_llm import BaseLlm
from google.adk.models.llm_request import LlmRequest
from google.adk.models.llm_response import LlmResponse
from google.adk.runners import InMemoryRunner
from google.genai import types

from execgate.demos.scenario import ACTIONS, FINAL, OPERATOR, PROMPT, PURPOSE, SCRIPT, Demo, call_id
from execgate.integrations.adk import ExecgatePlugin

__all__ = ["run"]


class ScriptedLlm(BaseLlm):
    """Plays back the scenario: one tool call per model turn, then the last word."""

    turn: int = 0

    async def generate_content_async(
        self, llm_request: LlmRequest, stream: bool = False
    ) -> AsyncGenerator[LlmResponse, None]:
        if self.turn < len(SCRIPT):
            tool, args, _ = SCRIPT[self.turn]
            self.turn += 1
            call = types.FunctionCall(name=tool, args=args, id=call_id(self.turn))
            part = types.Part(function_call=call)
        else:
            part = types.Part(text=FINAL)
        usage = types.GenerateContentResponseUsageMetadata(
            prompt_token_count=0, candidates_token_count=0, total_token_count=0
        )
        yield LlmResponse(content=types.Content(role="model", parts=[part]), usage_metadata=usage)


async def _run(runner: InMemoryRunner) -> list[Any]:
    await runner.session_service.create_session(
        app_name="execgate-demo",
        user_id=OPERATOR["id"],
        session_id="demo",
        state={"execgate_principal": OPERATOR, "execgate_purpose": PURPOSE},
    )
    message = types.Content(role="user", parts=[types.Part(text=PROMPT)])
    return [
        event
        async for event in runner.run_async(
            user_id=OPERATOR["id"], session_id="demo", new_message=message
        )
    ]


def run(log_path: str | None = None) -> int:
    demo = Demo("Google ADK", log_path)
    tools: list[Any] = list(demo.tools())
    agent = LlmAgent(name="demo", model=ScriptedLlm(model="scripted"), tools=tools)
    plugin = ExecgatePlugin(demo.gate, actions=ACTIONS)
    runner = InMemoryRunner(app=App(name="execgate-demo", root_agent=agent, plugins=[plugin]))
    with demo.ambient():
        events = asyncio.run(_run(runner))
    shown: dict[str, Any] = {}
    final = ""
    for event in events:
        for response in event.get_function_responses():
            value = response.response or {}
            shown[response.id or ""] = value.get("result", value)
        if event.content and event.content.parts and event.content.parts[0].text:
            final = event.content.parts[0].text
    return demo.finish(shown, final)

"""``execgate demo --framework openai-agents``: an OpenAI Agents SDK agent with
the SDK's ``ScriptedModel``, its tools guarded by :func:`guard_agent`.
Tracing is off: nothing leaves the machine."""

from __future__ import annotations

import asyncio
from typing import Any

from agents import Agent, RunConfig, Runner, function_tool, set_tracing_disabled
from agents.items import ToolCallOutputItem
from agents.testing import ScriptedModel, assistant_message, function_call

from execgate.demos.scenario import ACTIONS, FINAL, OPERATOR, PROMPT, PURPOSE, SCRIPT, Demo, call_id
from execgate.integrations.openai_agents import guard_agent

__all__ = ["run"]


def run(log_path: str | None = None) -> int:
    set_tracing_disabled(True)
    demo = Demo("OpenAI Agents SDK", log_path)
    steps: list[Any] = [
        [function_call(tool, args, call_id=call_id(turn))]
        for turn, (tool, args, _) in enumerate(SCRIPT, 1)
    ]
    model = ScriptedModel([*steps, [assistant_message(FINAL)]])
    tools: list[Any] = [function_tool(fn) for fn in demo.tools()]
    agent = guard_agent(Agent(name="demo", model=model, tools=tools), demo.gate, actions=ACTIONS)
    with demo.ambient():
        result = asyncio.run(
            Runner.run(
                agent,
                PROMPT,
                context={"principal": OPERATOR, "purpose": PURPOSE},
                max_turns=len(SCRIPT) + 2,
                run_config=RunConfig(tracing_disabled=True),
            )
        )
    shown: dict[str, Any] = {}
    for item in result.new_items:
        raw: Any = getattr(item, "raw_item", None)
        if isinstance(item, ToolCallOutputItem) and isinstance(raw, dict):
            shown[str(raw.get("call_id"))] = item.output
    return demo.finish(shown, str(result.final_output))

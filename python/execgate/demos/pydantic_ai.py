"""``execgate demo --framework pydantic-ai``: a PydanticAI agent with a
scripted ``FunctionModel``, gated by :class:`ExecgateCapability`."""

from __future__ import annotations

from typing import Any

from pydantic_ai import Agent
from pydantic_ai.messages import (
    ModelMessage,
    ModelResponse,
    RetryPromptPart,
    TextPart,
    ToolCallPart,
    ToolReturnPart,
)
from pydantic_ai.models.function import AgentInfo, FunctionModel

from execgate.demos.scenario import ACTIONS, FINAL, OPERATOR, PROMPT, PURPOSE, SCRIPT, Demo, call_id
from execgate.integrations.pydantic_ai import ExecgateCapability

__all__ = ["run"]


def _model() -> FunctionModel:
    def respond(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        turn = sum(1 for m in messages if isinstance(m, ModelResponse))
        if turn < len(SCRIPT):
            tool, args, _ = SCRIPT[turn]
            return ModelResponse(parts=[ToolCallPart(tool, args, tool_call_id=call_id(turn + 1))])
        return ModelResponse(parts=[TextPart(FINAL)])

    return FunctionModel(respond)


def run(log_path: str | None = None) -> int:
    demo = Demo("PydanticAI", log_path)
    agent: Agent[Any, str] = Agent(
        _model(),
        tools=demo.tools(),
        capabilities=[ExecgateCapability(demo.gate, actions=ACTIONS)],
    )
    with demo.ambient():
        result = agent.run_sync(PROMPT, deps={"principal": OPERATOR, "purpose": PURPOSE})
    shown: dict[str, Any] = {}
    for message in result.all_messages():
        for part in getattr(message, "parts", []):
            if isinstance(part, (ToolReturnPart, RetryPromptPart)) and part.tool_call_id:
                shown[part.tool_call_id] = (
                    part.content if isinstance(part, ToolReturnPart) else part.model_response()
                )
    return demo.finish(shown, result.output)

"""execgate for PydanticAI agents (``pip install 'execgate[pydantic-ai]'``).

:class:`ExecgateCapability` is a PydanticAI capability
(``Agent(model, capabilities=[ExecgateCapability(gate)])``) whose
``wrap_tool_execute`` hook runs around every function tool call of the agent,
after PydanticAI validated the arguments and before the tool runs:

- a denied call never runs; the model receives the reasons as a failed tool
  result (``ToolFailed``) and can recover; ``on_deny="raise"`` aborts the run
  with :class:`~execgate.ActionDenied` instead;
- argument rewrites and redaction reach the tool; output redaction covers what
  the model sees (the return value, and a ``ToolReturn``'s value and content);
- approval uses PydanticAI's deferred tools: the run ends with a
  ``DeferredToolRequests`` output (the agent's ``output_type`` must allow it)
  whose ``metadata`` for the call is the request; the next run, given
  ``DeferredToolResults(approvals={id: True|False}, metadata={id: {"approver":
  ..., "comment": ...}})``, decides again and records the human's answer;
  ``approval="gate"`` asks the gate's approver instead;
- every call that ran gets a completion record.

Who and why, first found wins: the run's ``deps`` (a mapping or an object with
``principal``, ``purpose``, ``session``), the run's ``metadata``
(``execgate_principal``, ``execgate_purpose``, ``execgate_session``), the
capability's defaults, then the ambient ``execgate.principal(...)`` /
``execgate.context(...)``; the session falls back to the run's
``conversation_id``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Literal

from pydantic_ai import RunContext
from pydantic_ai.capabilities import AbstractCapability
from pydantic_ai.exceptions import ApprovalRequired, ToolFailed
from pydantic_ai.messages import ToolCallPart, ToolReturn
from pydantic_ai.tools import ToolDefinition

from execgate._core import Call, Decision
from execgate.errors import ActionDenied
from execgate.integrations._common import (
    answer_from,
    approval_request,
    check_choice,
    denial_text,
    who_and_why,
)
from execgate.pipeline import Run, blocked_error

if TYPE_CHECKING:
    from pydantic_ai.capabilities.abstract import ValidatedToolArgs, WrapToolExecuteHandler

    from execgate.gate import Gate

__all__ = ["ExecgateCapability"]


@dataclass
class ExecgateCapability(AbstractCapability[Any]):
    """Authorizes every function tool call of a PydanticAI agent with ``gate``.

    ``actions`` maps tool names to policy action names (``{"read_file":
    "fs.read"}``); unmapped tools use their own name. ``principal``,
    ``purpose`` and ``session`` are defaults for runs that do not name them.
    """

    gate: Gate
    on_deny: Literal["message", "raise"] = "message"
    principal: Mapping[str, Any] | None = None
    purpose: str | None = None
    session: str | None = None
    actions: Mapping[str, str] = field(default_factory=dict)
    approval: Literal["defer", "gate"] = "defer"

    def __post_init__(self) -> None:
        check_choice("on_deny", self.on_deny, ("message", "raise"))
        check_choice("approval", self.approval, ("defer", "gate"))

    @classmethod
    def get_serialization_name(cls) -> str | None:
        return None  # holds a Gate: not spec-serializable

    def _start(self, ctx: RunContext[Any], call: ToolCallPart, args: dict[str, Any]) -> Call:
        metadata = {
            k.removeprefix("execgate_"): v
            for k, v in (ctx.metadata or {}).items()
            if k.startswith("execgate_")
        }
        defaults = {"principal": self.principal, "purpose": self.purpose, "session": self.session}
        principal, context = who_and_why(
            (ctx.deps, metadata, defaults),
            session=ctx.conversation_id,
            tool_call_id=call.tool_call_id,
        )
        action = self.actions.get(call.tool_name, call.tool_name)
        return self.gate.pipeline.start(action, dict(args), principal, context)

    def _refuse(self, name: str, decision: Decision, reasons: tuple[str, ...]) -> ToolFailed:
        return ToolFailed(denial_text(name, reasons))

    async def wrap_tool_execute(
        self,
        ctx: RunContext[Any],
        *,
        call: ToolCallPart,
        tool_def: ToolDefinition,
        args: ValidatedToolArgs,
        handler: WrapToolExecuteHandler,
    ) -> Any:
        """Decides the call, runs it with the pipeline's arguments, records it,
        and gives the model what the policy lets it see."""
        pending = self._start(ctx, call, args)
        if pending.approval is not None and self.approval == "defer":
            if not ctx.tool_call_approved:
                request = approval_request(pending)
                pending.authorize()  # recorded as a deny pending approval
                raise ApprovalRequired(metadata=request)
            # PydanticAI only calls an approved tool: a refusal never reaches here.
            answer_from(pending, True, ctx.tool_call_metadata)
        decision = await self.gate.pipeline.aauthorize(pending)
        if decision.blocked:
            if self.on_deny == "raise":
                raise blocked_error(decision)
            raise self._refuse(call.tool_name, decision, decision.reasons)
        with Run(pending, decision) as run:
            result = await handler(pending.arguments())
            run.result = result.return_value if isinstance(result, ToolReturn) else result
        try:
            if isinstance(result, ToolReturn):
                content = result.content
                return replace(
                    result,
                    return_value=run.output(result.return_value),
                    content=None if content is None else run.output(content),
                )
            return run.output(result)
        except ActionDenied as refusal:
            if self.on_deny == "raise":
                raise
            raise self._refuse(call.tool_name, refusal.decision, refusal.reasons) from None

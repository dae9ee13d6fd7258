"""execgate for Google's Agent Development Kit (``pip install 'execgate[adk]'``).

:class:`ExecgatePlugin` is an ADK plugin (``Runner(..., plugins=[ExecgatePlugin(gate)])``):
its tool callbacks run for every tool call of every agent the runner drives,
before the agents' own callbacks:

- ``before_tool_callback`` decides the call. A denied call never runs: the
  model receives ``{"error": reasons}`` as the tool's response and can
  recover; ``on_deny="raise"`` fails the run with :class:`~execgate.ActionDenied`.
  An allowed call's arguments are replaced, in place, by what the pipeline
  says the tool must receive (argument rewrites and redaction).
- ``after_tool_callback`` records the completion and replaces the response
  with what output redaction lets the model see; ``on_tool_error_callback``
  records a call that raised (or was cancelled).
- approval uses ADK's tool confirmation: the call asks for a confirmation
  (``adk_request_confirmation``, with the request as its payload) and the
  pause is recorded as a deny pending approval; when the user answers
  (a ``FunctionResponse`` with ``{"confirmed": bool, "payload": {"approver":
  ..., "comment": ...}}``), ADK calls the tool again, the call is decided
  again and the answer recorded with that decision. ``approval="gate"``
  asks the gate's approver instead.

Who and why, first found wins: the session state (``execgate_principal``,
``execgate_purpose``, ``execgate_session``), the plugin's defaults, then the
run itself (the ``user_id`` as the principal's id, the session id as the
session), then the ambient ``execgate.principal(...)`` / ``execgate.context(...)``
(a principal named only by ``user_id`` keeps the ambient roles).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Literal

from google.adk.plugins.base_plugin import BasePlugin
from google.adk.tools.base_tool import BaseTool
from google.adk.tools.tool_context import ToolContext

from execgate._core import Call
from execgate.errors import ActionDenied
from execgate.integrations._common import (
    answer_from,
    approval_request,
    check_choice,
    denial_text,
    pick,
    who_and_why,
)
from execgate.pipeline import Run, blocked_error

if TYPE_CHECKING:
    from execgate.gate import Gate

__all__ = ["ExecgatePlugin"]


class ExecgatePlugin(BasePlugin):
    """Authorizes every tool call of the agents an ADK runner drives.

    ``actions`` maps tool names to policy action names (``{"read_file":
    "fs.read"}``); unmapped tools use their own name.
    """

    def __init__(
        self,
        gate: Gate,
        *,
        name: str = "execgate",
        on_deny: Literal["message", "raise"] = "message",
        principal: Mapping[str, Any] | None = None,
        purpose: str | None = None,
        session: str | None = None,
        actions: Mapping[str, str] | None = None,
        approval: Literal["confirmation", "gate"] = "confirmation",
    ) -> None:
        super().__init__(name=name)
        check_choice("on_deny", on_deny, ("message", "raise"))
        check_choice("approval", approval, ("confirmation", "gate"))
        self.gate = gate
        self.on_deny = on_deny
        self.approval = approval
        self._defaults = {"principal": principal, "purpose": purpose, "session": session}
        self._actions = dict(actions or {})
        # Calls that ran, by function call id, until their after/error callback.
        self._running: dict[str, Run] = {}

    def _start(self, tool: BaseTool, args: dict[str, Any], ctx: ToolContext) -> Call:
        state = {
            k.removeprefix("execgate_"): v
            for k, v in ctx.state.to_dict().items()
            if isinstance(k, str) and k.startswith("execgate_")
        }
        run = {"principal": {"id": ctx.user_id} if ctx.user_id else None}
        principal, context = who_and_why(
            (state, self._defaults, run),
            session=ctx.session.id,
            tool_call_id=ctx.function_call_id,
        )
        action = self._actions.get(tool.name, tool.name)
        return self.gate.pipeline.start(action, dict(args), principal, context)

    def _refused(self, name: str, reasons: tuple[str, ...]) -> dict[str, Any]:
        return {"error": denial_text(name, reasons)}

    async def before_tool_callback(
        self, *, tool: BaseTool, tool_args: dict[str, Any], tool_context: ToolContext
    ) -> dict[str, Any] | None:
        """Decides the call: a response (the refusal, or the pause for a human)
        stops it; None lets it run with the pipeline's arguments."""
        call = self._start(tool, tool_args, tool_context)
        if call.approval is not None and self.approval == "confirmation":
            confirmation = tool_context.tool_confirmation
            if confirmation is None:
                tool_context.request_confirmation(
                    hint=f"execgate: {call.approval.get('reason') or 'approval required'}",
                    payload=approval_request(call),
                )
                call.authorize()  # recorded as a deny pending approval
                # A pause, not a result for the model to summarize.
                tool_context.actions.skip_summarization = True
                return {"error": "This tool call requires approval, please approve or reject."}
            answer = confirmation.payload
            if pick(answer, "approver") is None:
                answer = {"approver": tool_context.user_id, "comment": pick(answer, "comment")}
            answer_from(call, confirmation.confirmed, answer)
        decision = await self.gate.pipeline.aauthorize(call)
        if decision.blocked:
            if self.on_deny == "raise":
                raise blocked_error(decision)
            return self._refused(tool.name, decision.reasons)
        arguments = call.arguments()
        if arguments != tool_args:
            # ADK runs the tool with this very dict: the rewrite reaches it.
            tool_args.clear()
            tool_args.update(arguments)
        run = Run(call, decision)
        if tool_context.function_call_id is not None:
            self._running[tool_context.function_call_id] = run.__enter__()
        return None

    async def after_tool_callback(
        self,
        *,
        tool: BaseTool,
        tool_args: dict[str, Any],
        tool_context: ToolContext,
        result: dict[str, Any],
    ) -> dict[str, Any] | None:
        """Records the completion; the response becomes what the model may see."""
        run = self._running.pop(tool_context.function_call_id or "", None)
        if run is None:
            return None  # answered by a callback, not run: nothing to record
        run.result = result
        run.__exit__(None, None, None)
        try:
            shown = run.output(result)
        except ActionDenied as refusal:
            if self.on_deny == "raise":
                raise
            return self._refused(tool.name, refusal.reasons)
        if shown is result:
            return None
        return shown if isinstance(shown, dict) else {"result": shown}

    async def on_tool_error_callback(
        self,
        *,
        tool: BaseTool,
        tool_args: dict[str, Any],
        tool_context: ToolContext,
        error: Exception,
    ) -> dict[str, Any] | None:
        """Records a call that raised (or was cancelled); the error goes on."""
        run = self._running.pop(tool_context.function_call_id or "", None)
        if run is not None:
            run.__exit__(type(error), error, None)
        return None

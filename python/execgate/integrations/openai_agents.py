"""execgate for the OpenAI Agents SDK (``pip install 'execgate[openai-agents]'``).

:func:`guard_agent` (or :func:`guard_tool` for one tool) gives an agent
function tools whose every call goes through the gate. The hook is the
function tool itself: its ``on_invoke_tool`` (the one place that receives the
model's arguments, can change them, runs the function and returns what the
model sees) and its ``needs_approval`` check (the SDK's human-in-the-loop):

- a denied call never runs; the model receives the reasons as the tool's
  output (the SDK's way to report a tool error to the model) and can recover;
  ``on_deny="raise"`` fails the run with :class:`~execgate.ActionDenied`;
- argument rewrites and redaction reach the function; output redaction covers
  what the model sees;
- a decision that requires approval interrupts the run: ``result.interruptions``
  holds the ``ToolApprovalItem``; ``state = result.to_state()``,
  ``state.approve(item)`` or ``state.reject(item)``, then ``Runner.run(agent,
  state)``. The pause is recorded as a deny pending approval; an approved call
  is decided again and the approval recorded with that decision (the SDK does
  not say who approved: the run context's ``approver`` names them, else
  ``"openai-agents"``). A rejected call never runs; the model gets the SDK's
  rejection message. ``approval="gate"`` asks the gate's approver instead;
- every call that ran gets a completion record (an exception the SDK turns
  into an error message for the model is recorded as an ``error``).

Who and why, first found wins: the run's ``context`` (``Runner.run(agent,
input, context=...)``: a mapping or an object with ``principal``,
``purpose``, ``session``), the adapter's defaults, then the ambient
``execgate.principal(...)`` / ``execgate.context(...)``.

What an adapter cannot gate here: hosted tools (web search, file search, code
interpreter...) run on the model provider's side, so :func:`guard_agent`
refuses an agent that has them; handoffs pass control to another agent, which
needs its own :func:`guard_agent`.
"""

from __future__ import annotations

import contextvars
import copy
import json
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any, Literal

from agents import Agent, FunctionTool, RunContextWrapper, Tool
from agents.exceptions import AgentsException
from agents.tool_context import ToolContext

from execgate._core import Call, Decision
from execgate.errors import ActionDenied, ApprovalRequired, ConfigurationError
from execgate.integrations._common import (
    answer_from,
    check_choice,
    denial_text,
    find,
    who_and_why,
)
from execgate.pipeline import Run, raise_if_blocked

if TYPE_CHECKING:
    from execgate.gate import Gate

__all__ = ["ToolCallDenied", "ToolCallNeedsApproval", "guard_agent", "guard_tool"]

Invoker = Callable[[ToolContext[Any], str], Awaitable[Any]]

# The Run of the call whose body the SDK's failure handler is running.
_RUN: contextvars.ContextVar[Run] = contextvars.ContextVar("execgate_openai_agents_run")


def _parse(input_json: str) -> dict[str, Any]:
    """The model's arguments as the policy sees them (a non-object is ``{"input": ...}``)."""
    try:
        value = json.loads(input_json) if input_json else {}
    except ValueError:
        return {"input": input_json}
    return value if isinstance(value, dict) else {"input": value}


class ToolCallDenied(ActionDenied, AgentsException):
    """:class:`~execgate.ActionDenied` as the Agents SDK lets it out of a run
    (it wraps any other exception from a tool in a ``UserError``)."""

    def __init__(self, decision: Decision, reasons: tuple[str, ...] | None = None) -> None:
        super().__init__(decision, reasons)
        self.run_data = None


class ToolCallNeedsApproval(ApprovalRequired, AgentsException):
    """:class:`~execgate.ApprovalRequired` as the Agents SDK lets it out of a run."""

    def __init__(self, request: Any) -> None:
        super().__init__(request)
        self.run_data = None


def _raise(decision: Decision, refusal: ActionDenied | None = None) -> None:
    """Raises what a refusal means, in exceptions the SDK does not rewrap."""
    try:
        if refusal is not None:
            raise refusal
        raise_if_blocked(decision)
    except ApprovalRequired as e:
        raise ToolCallNeedsApproval(e.request) from None
    except ActionDenied as e:
        raise ToolCallDenied(e.decision, e.reasons) from None


class _Guard:
    """One tool's hooks: the approval check and the invoker around the SDK's own."""

    def __init__(
        self,
        tool: FunctionTool,
        gate: Gate,
        *,
        action: str,
        on_deny: Literal["message", "raise"],
        defaults: Mapping[str, Any],
        approval: Literal["interrupt", "gate"],
    ) -> None:
        self.name = tool.name
        self.gate = gate
        self.action = action
        self.on_deny = on_deny
        self.defaults = defaults
        self.approval = approval
        self.needs_approval = tool.needs_approval
        inner = tool.on_invoke_tool
        # The SDK's invoker turns a tool's exception into a message for the model.
        # Keep it for the tool's body only, with the Run inside it, so the
        # completion record sees the exception and a refusal is never swallowed.
        impl: Invoker | None = getattr(inner, "_invoke_tool_impl", None)
        report = getattr(inner, "_on_handled_error", None)
        self.impl: Invoker = inner
        self.handled: Any = None
        if impl is not None and report is not None:
            self.impl = impl
            self.handled = type(inner)(self._run_body, report)  # type: ignore[misc]

    def bind(self, tool: FunctionTool) -> None:
        """Binds the SDK's failure handler to the guarded copy (its error policy)."""
        bind = getattr(self.handled, "__agents_bind_function_tool__", None)
        if bind is not None:
            self.handled = bind(tool)

    async def _run_body(self, ctx: ToolContext[Any], input_json: str) -> Any:
        run = _RUN.get()
        with run:
            run.result = await self.impl(ctx, input_json)
        return run.result

    def _start(self, ctx: RunContextWrapper[Any], args: dict[str, Any], call_id: str) -> Call:
        principal, context = who_and_why((ctx.context, self.defaults), tool_call_id=call_id)
        return self.gate.pipeline.start(self.action, args, principal, context)

    async def check_approval(
        self, ctx: RunContextWrapper[Any], params: dict[str, Any], call_id: str
    ) -> bool:
        """The SDK's ``needs_approval``: True interrupts the run for a human."""
        original = self.needs_approval
        if original is True:
            return True
        if callable(original) and await original(ctx, params, call_id):
            return True
        if self.approval != "interrupt":
            return False
        call = self._start(ctx, dict(params), call_id)
        if call.approval is None:
            return False  # not recorded: the invocation decides again
        call.authorize()  # recorded as a deny pending approval
        return True

    async def invoke(self, ctx: ToolContext[Any], input_json: str) -> Any:
        """Decides the call, runs the tool with the pipeline's arguments, records it."""
        args = _parse(input_json)
        call = self._start(ctx, args, ctx.tool_call_id)
        if call.approval is not None and self.approval == "interrupt":
            if ctx.is_tool_approved(self.name, ctx.tool_call_id) is True:
                answer = {"approver": find("approver", ctx.context) or "openai-agents"}
                answer_from(call, True, answer)
            # Otherwise left unanswered: a deny pending approval.
        decision = await self.gate.pipeline.aauthorize(call)
        if decision.blocked:
            if self.on_deny == "raise":
                _raise(decision)
            return denial_text(self.name, decision.reasons)
        arguments = call.arguments()
        if arguments != args:
            input_json = json.dumps(arguments, ensure_ascii=False)
        run = Run(call, decision)
        if self.handled is None:
            with run:
                result = run.result = await self.impl(ctx, input_json)
        else:
            token = _RUN.set(run)
            try:
                result = await self.handled(ctx, input_json)
            finally:
                _RUN.reset(token)
        try:
            return run.output(result)
        except ActionDenied as refusal:
            if self.on_deny == "raise":
                _raise(decision, refusal)
            return denial_text(self.name, refusal.reasons)


def guard_tool(
    tool: Tool,
    gate: Gate,
    *,
    action: str | None = None,
    on_deny: Literal["message", "raise"] = "message",
    principal: Mapping[str, Any] | None = None,
    purpose: str | None = None,
    session: str | None = None,
    approval: Literal["interrupt", "gate"] = "interrupt",
) -> FunctionTool:
    """A copy of ``tool`` (same name, description and schema) whose every
    call is authorized by ``gate``; ``action`` names it for the policy
    (default: the tool's name)."""
    if not isinstance(tool, FunctionTool):
        raise ConfigurationError(
            f"{type(tool).__name__} {getattr(tool, 'name', '')!r} is not a function tool; "
            "execgate cannot see its calls"
        )
    check_choice("on_deny", on_deny, ("message", "raise"))
    check_choice("approval", approval, ("interrupt", "gate"))
    guard = _Guard(
        tool,
        gate,
        action=action or tool.name,
        on_deny=on_deny,
        defaults={"principal": principal, "purpose": purpose, "session": session},
        approval=approval,
    )
    guarded = copy.copy(tool)
    guarded.on_invoke_tool = guard.invoke
    guarded.needs_approval = guard.check_approval
    guard.bind(guarded)
    return guarded


def guard_agent(
    agent: Agent[Any],
    gate: Gate,
    *,
    actions: Mapping[str, str] | None = None,
    on_deny: Literal["message", "raise"] = "message",
    principal: Mapping[str, Any] | None = None,
    purpose: str | None = None,
    session: str | None = None,
    approval: Literal["interrupt", "gate"] = "interrupt",
) -> Agent[Any]:
    """A clone of ``agent`` whose function tools are all guarded
    (:func:`guard_tool`); ``actions`` maps tool names to policy action names.
    Raises :class:`~execgate.ConfigurationError` for a tool execgate cannot
    intercept (a hosted tool), rather than leave it ungated."""
    names = dict(actions or {})
    tools = [
        guard_tool(
            t,
            gate,
            action=names.get(t.name, t.name),
            on_deny=on_deny,
            principal=principal,
            purpose=purpose,
            session=session,
            approval=approval,
        )
        for t in agent.tools
    ]
    return agent.clone(tools=tools)

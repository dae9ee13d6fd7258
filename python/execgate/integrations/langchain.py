"""execgate for LangChain / LangGraph agents (``pip install 'execgate[langchain]'``).

- :class:`ExecgateMiddleware`: one middleware for ``create_agent``; every tool call
  is authorized, denied calls come back to the model as an error ``ToolMessage``
  with the reasons, allowed ones run and get a completion receipt.
- :class:`ExecgateCallbackHandler`: for code paths that only take callbacks.
- :func:`guard_tool`: authorize a ``BaseTool`` wherever it is called.

Who and why: the principal, purpose and session come, in this order of
precedence, from the run's ``context`` (``agent.invoke(..., context={"principal":
{"id": ..., "roles": [...]}, "purpose": ..., "session": ...})``, a dict or an
object with those attributes), from ``config["configurable"]``
(``execgate_principal``, ``execgate_purpose``, ``execgate_session``, and
``thread_id`` as the session), from the middleware's own defaults, and from the
ambient ``execgate.principal(...)`` / ``execgate.context(...)`` blocks.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any, Literal

from langchain.agents.middleware import AgentMiddleware
from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.messages import ToolMessage
from langchain_core.tools import BaseTool, StructuredTool

from execgate._core import Decision, Receipt
from execgate.approval import Approval, ApprovalRequest
from execgate.errors import ActionDenied

if TYPE_CHECKING:
    from langgraph.prebuilt.tool_node import ToolCallRequest
    from langgraph.types import Command

    from execgate.gate import Gate

__all__ = ["ExecgateCallbackHandler", "ExecgateMiddleware", "guard_tool"]


def _pick(source: Any, name: str) -> Any:
    if source is None:
        return None
    if isinstance(source, Mapping):
        return source.get(name)
    return getattr(source, name, None)


def _who_and_why(
    request: ToolCallRequest, defaults: Mapping[str, Any]
) -> tuple[Mapping[str, Any] | None, dict[str, Any]]:
    runtime = request.runtime
    run_context = getattr(runtime, "context", None)
    configurable = (getattr(runtime, "config", None) or {}).get("configurable") or {}

    def find(name: str) -> Any:
        for value in (
            _pick(run_context, name),
            configurable.get(f"execgate_{name}"),
            defaults.get(name),
        ):
            if value is not None:
                return value
        return None

    principal = find("principal")
    context: dict[str, Any] = {"tool_call_id": request.tool_call.get("id")}
    purpose = find("purpose")
    session = find("session") or configurable.get("thread_id")
    if purpose is not None:
        context["purpose"] = purpose
    if session is not None:
        context["session"] = str(session)
    return principal, context


def _denial(
    decision: Decision, tool_call_id: str | None, name: str, reasons_list: tuple[str, ...]
) -> ToolMessage:
    reasons = "; ".join(reasons_list) or "denied by policy"
    return ToolMessage(
        content=f"Tool call {name!r} was denied by policy: {reasons}. "
        "It did not run; do not retry it unchanged.",
        tool_call_id=tool_call_id or "",
        name=name,
        status="error",
        # Refused (by policy or by an approver): the call did not run.
        response_metadata={
            "execgate": {**_meta(decision), "decision": "deny", "reasons": list(reasons_list)}
        },
    )


def _meta(decision: Decision) -> dict[str, Any]:
    receipt = decision.receipt
    return {
        "decision": "allow" if decision.allowed else "deny",
        "reasons": list(decision.reasons),
        "receipt": None if receipt is None else receipt.id,
    }


class ExecgateMiddleware(AgentMiddleware):  # type: ignore[type-arg]
    """Authorizes every tool call of a ``create_agent`` agent.

    ``on_deny="message"`` (default) answers a denied call with an error
    ``ToolMessage`` carrying the reasons and the same ``tool_call_id``, so the
    model sees why and can recover; ``on_deny="raise"`` aborts the run with
    :class:`~execgate.ActionDenied`. ``principal``, ``purpose`` and ``session``
    are defaults used when the run does not name them. ``actions`` maps tool
    names to policy action names (``{"read_file": "fs.read"}``); unmapped tools
    use their own name. An obligation ``args`` (an object) replaces the
    arguments the tool receives.

    A decision that requires approval (``obligations.approval``) pauses the run
    with LangGraph's ``interrupt`` (the agent needs a checkpointer); resume it
    with ``Command(resume={"approved": bool, "approver": ..., "comment": ...})``.
    The pause is recorded as a not-approved answer to the first decision; the
    resumed run decides again and records the human's answer to that one.
    ``approval="gate"`` asks the gate's own approver instead.
    """

    def __init__(
        self,
        gate: Gate,
        *,
        on_deny: Literal["message", "raise"] = "message",
        principal: Mapping[str, Any] | None = None,
        purpose: str | None = None,
        session: str | None = None,
        actions: Mapping[str, str] | None = None,
        approval: Literal["interrupt", "gate"] = "interrupt",
    ) -> None:
        super().__init__()
        if on_deny not in ("message", "raise"):
            raise ValueError(f'on_deny must be "message" or "raise", not {on_deny!r}')
        self.gate = gate
        self.on_deny = on_deny
        self._defaults = {"principal": principal, "purpose": purpose, "session": session}
        self._actions = dict(actions or {})
        self.approval = approval

    def _authorize(
        self, request: ToolCallRequest
    ) -> tuple[ToolCallRequest, Decision, ToolMessage | None]:
        call = request.tool_call
        principal, context = _who_and_why(request, self._defaults)
        action = self._actions.get(call["name"], call["name"])
        decision = self.gate.check(
            action, dict(call.get("args") or {}), principal=principal, context=context
        )
        if decision.blocked:
            return self._refuse(request, decision, ActionDenied(decision))
        if "approval" in decision.obligations:
            try:
                self._approve(decision)
            except ActionDenied as refused:
                return self._refuse(request, decision, refused)
        rewritten = decision.obligations.get("args")
        args = dict(rewritten) if isinstance(rewritten, Mapping) else dict(call.get("args") or {})
        try:
            args = self.gate._redact_args(decision, args)
        except ActionDenied as refused:
            return self._refuse(request, decision, refused)
        if args != call.get("args"):
            request = request.override(tool_call={**call, "args": args})
        return request, decision, None

    def _refuse(
        self, request: ToolCallRequest, decision: Decision, refusal: ActionDenied
    ) -> tuple[ToolCallRequest, Decision, ToolMessage | None]:
        if self.on_deny == "raise":
            raise refusal
        call = request.tool_call
        return request, decision, _denial(decision, call.get("id"), call["name"], refusal.reasons)

    def _approve(self, decision: Decision) -> None:
        """Obtains approval or raises ActionDenied (or ApprovalRequired)."""
        if self.approval == "gate":
            self.gate._approve(decision)
            return
        from langgraph.errors import GraphInterrupt
        from langgraph.types import interrupt

        request = ApprovalRequest.of(decision)
        try:
            answer = interrupt(
                {
                    "type": "execgate.approval",
                    "action": request.action,
                    "args": dict(request.args),
                    "reason": request.reason,
                    "approvers": list(request.approvers),
                    "receipt": request.receipt_id,
                }
            )
        except GraphInterrupt:
            if decision.receipt is not None:
                self.gate._native.record_approval(
                    decision.receipt,
                    approved=False,
                    approver="",
                    comment="paused for human approval",
                )
            raise
        if isinstance(answer, Mapping):
            approval = Approval(
                bool(answer.get("approved")),
                str(answer.get("approver") or "unknown"),
                answer.get("comment"),
            )
        else:
            approval = Approval(answer is True, "unknown")
        if decision.receipt is not None:
            self.gate._native.record_approval(
                decision.receipt,
                approved=approval.approved,
                approver=approval.approver,
                comment=approval.comment,
            )
        if not approval.approved:
            why = f"approval refused by {approval.approver}"
            raise ActionDenied(
                decision, (why + (f": {approval.comment}" if approval.comment else ""),)
            )

    def _finish(
        self, decision: Decision, start: int, result: Any, error: BaseException | None
    ) -> Any:
        receipt: Receipt | None = decision.receipt
        output = getattr(result, "content", None) if error is None else None
        if receipt is not None:
            self.gate._complete(receipt, start, output, error)
        if isinstance(result, ToolMessage):
            # Egress: what the model sees of the output passes the privacy router.
            result.content = self.gate._redact_output(decision, result.content)
            result.response_metadata = {**result.response_metadata, "execgate": _meta(decision)}
        return result

    def wrap_tool_call(
        self,
        request: ToolCallRequest,
        handler: Callable[[ToolCallRequest], ToolMessage | Command[Any]],
    ) -> ToolMessage | Command[Any]:
        request, decision, denied = self._authorize(request)
        if denied is not None:
            return denied
        start = time.perf_counter_ns()
        try:
            result = handler(request)
        except BaseException as e:
            self._finish(decision, start, None, e)
            raise
        return self._finish(decision, start, result, None)

    async def awrap_tool_call(
        self,
        request: ToolCallRequest,
        handler: Callable[[ToolCallRequest], Awaitable[ToolMessage | Command[Any]]],
    ) -> ToolMessage | Command[Any]:
        request, decision, denied = self._authorize(request)
        if denied is not None:
            return denied
        start = time.perf_counter_ns()
        try:
            result = await handler(request)
        except BaseException as e:
            self._finish(decision, start, None, e)
            raise
        return self._finish(decision, start, result, None)


class ExecgateCallbackHandler(BaseCallbackHandler):
    """Gates tools on paths that only take callbacks (``AgentExecutor``, a plain
    ``tool.invoke(..., config={"callbacks": [handler]})``, chains).

    ``on_tool_start`` checks the call; with ``raise_error=True`` (default) a
    blocked call raises :class:`~execgate.ActionDenied` before the tool runs,
    for sync and async tools alike. A callback cannot change arguments, return
    a message to the model, or record completions: use the middleware for that.
    """

    def __init__(self, gate: Gate, *, raise_error: bool = True) -> None:
        self.gate = gate
        self.raise_error = raise_error
        self.decisions: list[Decision] = []

    def on_tool_start(
        self,
        serialized: dict[str, Any],
        input_str: str,
        *,
        inputs: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        name = (serialized or {}).get("name") or kwargs.get("name") or "tool"
        args = dict(inputs) if inputs is not None else {"input": input_str}
        decision = self.gate.check(name, args)
        self.decisions.append(decision)
        if decision.blocked:
            raise ActionDenied(decision)


def guard_tool(tool: BaseTool, gate: Gate, *, action: str | None = None) -> BaseTool:
    """A copy of ``tool`` (same name, description and args schema) whose every
    call is authorized by ``gate`` first and recorded after."""
    name = action or tool.name

    @gate.guard(action=name)
    def run(**kwargs: Any) -> Any:
        return tool.invoke(kwargs)

    @gate.guard(action=name)
    async def arun(**kwargs: Any) -> Any:
        return await tool.ainvoke(kwargs)

    return StructuredTool.from_function(
        func=run,
        coroutine=arun,
        name=tool.name,
        description=tool.description,
        args_schema=tool.args_schema,
        return_direct=tool.return_direct,
        response_format=tool.response_format,
    )

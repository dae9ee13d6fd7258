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

from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any, Literal

from langchain.agents.middleware import AgentMiddleware
from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.messages import ToolMessage
from langchain_core.tools import BaseTool, StructuredTool

from execgate._core import Call, Capabilities, Decision
from execgate.approval import ApprovalRequest
from execgate.errors import ActionDenied, ConfigurationError
from execgate.pipeline import Run, blocked_error, raise_if_blocked

if TYPE_CHECKING:
    from langgraph.prebuilt.tool_node import ToolCallRequest
    from langgraph.types import Command

    from execgate.gate import Gate

__all__ = ["ExecgateCallbackHandler", "ExecgateMiddleware", "guard_tool"]

#: A callback handler sees a tool's start and end: it can neither replace the
#: arguments nor the output (an obligation to do so denies the call).
_OBSERVER = Capabilities(rewrite=False, output=False)


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


class ExecgateMiddleware(AgentMiddleware):
    """Authorizes every tool call of a ``create_agent`` agent.

    ``on_deny="message"`` (default) answers a denied call with an error
    ``ToolMessage`` carrying the reasons and the same ``tool_call_id``, so the
    model sees why and can recover; ``on_deny="raise"`` aborts the run with
    :class:`~execgate.ActionDenied`. ``principal``, ``purpose`` and ``session``
    are defaults used when the run does not name them. ``actions`` maps tool
    names to policy action names (``{"read_file": "fs.read"}``); unmapped tools
    use their own name. Argument rewrites and redaction reach the tool; output
    redaction covers the ``ToolMessage`` content, also inside a returned
    ``Command`` (a result whose text it cannot find is withheld).

    A decision that requires approval (``obligations.approval``) pauses the run
    with LangGraph's ``interrupt`` (the agent needs a checkpointer); resume it
    with ``Command(resume={"approved": bool, "approver": ..., "comment": ...})``.
    The pause is recorded as a deny pending approval; the resumed run decides
    again and records the human's answer with that decision.
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
            raise ConfigurationError(f'on_deny must be "message" or "raise", not {on_deny!r}')
        if approval not in ("interrupt", "gate"):
            raise ConfigurationError(f'approval must be "interrupt" or "gate", not {approval!r}')
        self.gate = gate
        self.on_deny = on_deny
        self._defaults = {"principal": principal, "purpose": purpose, "session": session}
        self._actions = dict(actions or {})
        self.approval = approval

    def _start(self, request: ToolCallRequest) -> Call:
        call = request.tool_call
        principal, context = _who_and_why(request, self._defaults)
        action = self._actions.get(call["name"], call["name"])
        return self.gate.pipeline.start(action, dict(call.get("args") or {}), principal, context)

    def _interrupt(self, call: Call) -> None:
        """Pauses the run for a human (LangGraph ``interrupt``) and gives the
        pipeline the answer the run was resumed with."""
        from langgraph.errors import GraphInterrupt
        from langgraph.types import interrupt

        request = ApprovalRequest.of(call.decision, call.approval)
        try:
            answer = interrupt(
                {
                    "type": "execgate.approval",
                    "action": request.action,
                    "args": dict(request.args),
                    "reason": request.reason,
                    "approvers": list(request.approvers),
                }
            )
        except GraphInterrupt:
            call.authorize()  # recorded as a deny pending approval
            raise
        if isinstance(answer, Mapping):
            call.answer(
                approved=answer.get("approved") is True,
                approver=str(answer.get("approver") or "unknown"),
                comment=answer.get("comment"),
            )
        else:
            call.answer(approved=answer is True, approver="unknown")

    def _authorized(
        self, request: ToolCallRequest, call: Call, decision: Decision
    ) -> tuple[ToolCallRequest, ToolMessage | None]:
        if decision.blocked:
            tool_call = request.tool_call
            if self.on_deny == "raise":
                raise blocked_error(decision)
            return request, _denial(
                decision, tool_call.get("id"), tool_call["name"], decision.reasons
            )
        args = call.arguments()
        if args != request.tool_call.get("args"):
            request = request.override(tool_call={**request.tool_call, "args": args})
        return request, None

    def _authorize(self, request: ToolCallRequest) -> tuple[Call, Decision]:
        call = self._start(request)
        if call.approval is not None and self.approval == "interrupt":
            self._interrupt(call)
        return call, self.gate.pipeline.authorize(call)

    async def _aauthorize(self, request: ToolCallRequest) -> tuple[Call, Decision]:
        call = self._start(request)
        if call.approval is not None and self.approval == "interrupt":
            self._interrupt(call)
        return call, await self.gate.pipeline.aauthorize(call)

    @staticmethod
    def _shown(run: Run, result: ToolMessage | Command[Any]) -> ToolMessage | Command[Any]:
        """What the model sees of a result: every ToolMessage's content after
        the output redaction, with the decision in its metadata."""
        messages = [result] if isinstance(result, ToolMessage) else _command_messages(result)
        if messages is None:
            if run.call.redacts_output:
                raise ActionDenied(
                    run.decision,
                    (
                        f"the output was withheld: a {type(result).__name__} result cannot "
                        "be redacted",
                    ),
                )
            return result
        for message in messages:
            message.content = run.output(message.content)
            message.response_metadata = {
                **message.response_metadata,
                "execgate": _meta(run.decision),
            }
        return result

    def _refused(self, request: ToolCallRequest, refusal: ActionDenied) -> ToolMessage:
        if self.on_deny == "raise":
            raise refusal
        tool_call = request.tool_call
        return _denial(refusal.decision, tool_call.get("id"), tool_call["name"], refusal.reasons)

    def wrap_tool_call(
        self,
        request: ToolCallRequest,
        handler: Callable[[ToolCallRequest], ToolMessage | Command[Any]],
    ) -> ToolMessage | Command[Any]:
        call, decision = self._authorize(request)
        request, denied = self._authorized(request, call, decision)
        if denied is not None:
            return denied
        with Run(call, decision) as run:
            result = handler(request)
            run.result = _output(result)
        try:
            return self._shown(run, result)
        except ActionDenied as refusal:
            return self._refused(request, refusal)

    async def awrap_tool_call(
        self,
        request: ToolCallRequest,
        handler: Callable[[ToolCallRequest], Awaitable[ToolMessage | Command[Any]]],
    ) -> ToolMessage | Command[Any]:
        call, decision = await self._aauthorize(request)
        request, denied = self._authorized(request, call, decision)
        if denied is not None:
            return denied
        with Run(call, decision) as run:
            result = await handler(request)
            run.result = _output(result)
        try:
            return self._shown(run, result)
        except ActionDenied as refusal:
            return self._refused(request, refusal)


def _command_messages(result: Any) -> list[ToolMessage] | None:
    """The ToolMessages a returned ``Command`` carries (None: not a Command
    whose messages can be found)."""
    update = getattr(result, "update", None)
    if not (type(result).__name__ == "Command" and isinstance(update, Mapping)):
        return None
    messages = update.get("messages")
    if not isinstance(messages, list):
        return [] if "messages" not in update else None
    if not all(isinstance(m, ToolMessage) or not hasattr(m, "content") for m in messages):
        return None
    return [m for m in messages if isinstance(m, ToolMessage)]


def _output(result: Any) -> Any:
    """What the completion record digests of a tool's result."""
    if isinstance(result, ToolMessage):
        return result.content
    messages = _command_messages(result)
    return None if messages is None else [m.content for m in messages]


class ExecgateCallbackHandler(BaseCallbackHandler):
    """Gates tools on paths that only take callbacks (``AgentExecutor``, a plain
    ``tool.invoke(..., config={"callbacks": [handler]})``, chains).

    ``on_tool_start`` decides the call and raises
    :class:`~execgate.ActionDenied` (or :class:`~execgate.ApprovalRequired`)
    before a blocked tool runs, for sync and async tools alike; the gate's
    approver is asked when the policy requires approval. A callback cannot
    change arguments or what the model sees, so a decision whose obligations
    need that (an argument rewrite, a redaction that would change the
    arguments, output redaction, a sandbox) is denied: use the middleware for
    those. Completions are recorded from ``on_tool_end`` / ``on_tool_error``.
    """

    # A callback's exception must stop the tool: never let LangChain swallow it.
    raise_error = True

    def __init__(self, gate: Gate) -> None:
        self.gate = gate
        self.decisions: list[Decision] = []
        self._running: dict[Any, Run] = {}

    def on_tool_start(
        self,
        serialized: dict[str, Any],
        input_str: str,
        *,
        inputs: dict[str, Any] | None = None,
        run_id: Any = None,
        **kwargs: Any,
    ) -> None:
        name = (serialized or {}).get("name") or kwargs.get("name") or "tool"
        args = dict(inputs) if inputs is not None else {"input": input_str}
        pipeline = self.gate.pipeline
        call, decision = pipeline.decide(name, args, capabilities=_OBSERVER)
        self.decisions.append(decision)
        raise_if_blocked(decision)
        run = Run(call, decision)
        self._running[run_id] = run.__enter__()

    def on_tool_end(self, output: Any, *, run_id: Any = None, **kwargs: Any) -> None:
        run = self._running.pop(run_id, None)
        if run is not None:
            run.result = getattr(output, "content", output)
            run.__exit__(None, None, None)

    def on_tool_error(self, error: BaseException, *, run_id: Any = None, **kwargs: Any) -> None:
        run = self._running.pop(run_id, None)
        if run is not None:
            run.__exit__(type(error), error, None)


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

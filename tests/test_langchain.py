"""LangChain / LangGraph integration: real create_agent loops with a scripted chat model."""

from __future__ import annotations

import asyncio
import pathlib
from typing import Any

import pytest

pytest.importorskip("langchain")

from langchain.agents import create_agent
from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
from langchain_core.messages import AIMessage, ToolMessage
from langchain_core.tools import tool

import execgate
from execgate.integrations.langchain import (
    ExecgateCallbackHandler,
    ExecgateMiddleware,
    guard_tool,
)

POLICY = """
package execgate
decision := {"allow": true} if allowed
else := {"allow": false, "reasons": [sprintf("%s is not allowed for %v", [input.action.name, input.principal.id])]}

allowed if {
    input.action.name == "read_file"
    startswith(input.action.args.path, "/workspace/")
}
"""


class ScriptedModel(GenericFakeChatModel):
    """A fake chat model that accepts bind_tools (create_agent binds the tools)."""

    def bind_tools(self, tools: Any, **kwargs: Any) -> ScriptedModel:
        return self


RAN: list[str] = []


@tool
def read_file(path: str) -> str:
    """Read a file from the workspace."""
    RAN.append(f"read {path}")
    return f"contents of {path}"


@tool
def delete_all(confirm: bool = True) -> str:
    """Delete everything."""
    RAN.append("delete_all")
    return "deleted"


def script() -> ScriptedModel:
    return ScriptedModel(
        messages=iter(
            [
                AIMessage(
                    content="",
                    tool_calls=[
                        {"name": "read_file", "args": {"path": "/workspace/a.txt"}, "id": "call_1"},
                        {"name": "delete_all", "args": {"confirm": True}, "id": "call_2"},
                    ],
                ),
                AIMessage(content="I read the file; deleting was refused."),
            ]
        )
    )


@pytest.fixture
def gate(tmp_path: pathlib.Path):  # type: ignore[no-untyped-def]
    key = execgate.SigningKey.generate()
    g = execgate.Gate(POLICY, key=key, audit=tmp_path / "audit.jsonl")
    yield g
    g.close()
    report = execgate.verify_log(tmp_path / "audit.jsonl", key.verify_key)
    assert report.ok, (report.line, report.reason)
    # One authorization and one completion per allowed call.
    assert report.completions == report.allowed and report.unfinished == []


def _check_run(messages: list[Any], gate: execgate.Gate) -> None:
    tool_messages = {m.tool_call_id: m for m in messages if isinstance(m, ToolMessage)}
    assert RAN == ["read /workspace/a.txt"]  # the denied body never ran
    allowed, denied = tool_messages["call_1"], tool_messages["call_2"]
    assert allowed.content == "contents of /workspace/a.txt" and allowed.status != "error"
    assert denied.status == "error" and "delete_all is not allowed for agent-7" in denied.content
    assert denied.response_metadata["execgate"]["decision"] == "deny"
    assert allowed.response_metadata["execgate"]["receipt"]
    assert messages[-1].content == "I read the file; deleting was refused."


@pytest.mark.parametrize("mode", ["invoke", "ainvoke", "stream"])
def test_create_agent_loop(gate: execgate.Gate, mode: str) -> None:
    RAN.clear()
    agent = create_agent(
        script(), tools=[read_file, delete_all], middleware=[ExecgateMiddleware(gate)]
    )
    request = {"messages": [{"role": "user", "content": "clean up"}]}
    context = {"principal": {"id": "agent-7", "roles": ["agent"]}, "purpose": "cleanup"}
    if mode == "invoke":
        messages = agent.invoke(request, context=context)["messages"]
    elif mode == "ainvoke":
        messages = asyncio.run(agent.ainvoke(request, context=context))["messages"]
    else:
        messages = []
        for update in agent.stream(request, context=context, stream_mode="values"):
            messages = update["messages"]
    _check_run(messages, gate)


def test_on_deny_raise_aborts_the_run(gate: execgate.Gate) -> None:
    RAN.clear()
    agent = create_agent(
        script(),
        tools=[read_file, delete_all],
        middleware=[ExecgateMiddleware(gate, on_deny="raise", principal={"id": "x"})],
    )
    with pytest.raises(execgate.ActionDenied):
        agent.invoke({"messages": [{"role": "user", "content": "go"}]})
    assert "delete_all" not in RAN


def test_principal_from_configurable_and_session_from_thread(gate: execgate.Gate) -> None:
    RAN.clear()
    seen: list[execgate.Decision] = []
    original = gate.pipeline.authorize

    def spy(*a: Any, **k: Any) -> execgate.Decision:
        seen.append(original(*a, **k))
        return seen[-1]

    gate.pipeline.authorize = spy  # type: ignore[method-assign]
    agent = create_agent(
        script(), tools=[read_file, delete_all], middleware=[ExecgateMiddleware(gate)]
    )
    agent.invoke(
        {"messages": [{"role": "user", "content": "go"}]},
        config={"configurable": {"execgate_principal": {"id": "cfg-user"}, "thread_id": "t-9"}},
    )
    # The two tool calls of one turn run concurrently, in either order.
    assert {d.input["context"]["tool_call_id"] for d in seen} == {"call_1", "call_2"}
    assert {d.input["principal"]["id"] for d in seen} == {"cfg-user"}
    assert {d.input["context"]["session"] for d in seen} == {"t-9"}


def test_obligations_rewrite_the_arguments_the_tool_receives() -> None:
    RAN.clear()
    rewriting = execgate.Gate(
        'package execgate\ndecision := {"allow": true, "obligations": {"args": {"path": "/workspace/safe.txt"}}}\n'
    )
    model = ScriptedModel(
        messages=iter(
            [
                AIMessage(
                    content="",
                    tool_calls=[{"name": "read_file", "args": {"path": "/etc/passwd"}, "id": "c1"}],
                ),
                AIMessage(content="ok"),
            ]
        )
    )
    agent = create_agent(model, tools=[read_file], middleware=[ExecgateMiddleware(rewriting)])
    messages = agent.invoke({"messages": [{"role": "user", "content": "go"}]})["messages"]
    assert RAN == ["read /workspace/safe.txt"]
    assert (
        next(m for m in messages if isinstance(m, ToolMessage)).content
        == "contents of /workspace/safe.txt"
    )


def test_callback_handler_blocks_sync_and_async_tools() -> None:
    gate = execgate.Gate(POLICY)
    handler = ExecgateCallbackHandler(gate)
    RAN.clear()
    assert (
        read_file.invoke({"path": "/workspace/x"}, config={"callbacks": [handler]})
        == "contents of /workspace/x"
    )
    with pytest.raises(execgate.ActionDenied):
        delete_all.invoke({"confirm": True}, config={"callbacks": [handler]})

    @tool
    async def async_delete(target: str) -> str:
        """Delete asynchronously."""
        RAN.append("async_delete")
        return "gone"

    with pytest.raises(execgate.ActionDenied):
        asyncio.run(async_delete.ainvoke({"target": "/"}, config={"callbacks": [handler]}))
    assert RAN == ["read /workspace/x"]
    assert [d.allowed for d in handler.decisions] == [True, False, False]


def test_guard_and_tool_decorators_compose_in_either_order() -> None:
    gate = execgate.Gate(POLICY)

    @tool
    @gate.guard(action="read_file")
    def inner_guard(path: str) -> str:
        """Read inner."""
        return path

    @gate.guard(action="read_file")
    @tool
    def outer_guard(path: str) -> str:
        """Read outer."""
        return path

    wrapped = guard_tool(delete_all, gate)
    for t, name in ((inner_guard, "inner_guard"), (outer_guard, "outer_guard")):
        assert t.name == name and t.description.startswith("Read")
        assert set(t.args) == {"path"}
        assert t.invoke({"path": "/workspace/ok"}) == "/workspace/ok"
        with pytest.raises(execgate.ActionDenied):
            t.invoke({"path": "/etc/passwd"})
    assert wrapped.name == "delete_all" and wrapped.description == delete_all.description
    assert wrapped.args == delete_all.args
    with pytest.raises(execgate.ActionDenied):
        wrapped.invoke({"confirm": True})
    with pytest.raises(execgate.ActionDenied):
        asyncio.run(wrapped.ainvoke({"confirm": True}))


def test_toolnode_in_a_stategraph(gate: execgate.Gate) -> None:
    from langgraph.graph import END, START, MessagesState, StateGraph
    from langgraph.prebuilt import ToolNode

    RAN.clear()
    middleware = ExecgateMiddleware(gate, principal={"id": "agent-7"})
    node = ToolNode([read_file, delete_all], wrap_tool_call=middleware.wrap_tool_call)
    graph = StateGraph(MessagesState)
    graph.add_node("tools", node)
    graph.add_edge(START, "tools")
    graph.add_edge("tools", END)
    calls = AIMessage(
        content="",
        tool_calls=[
            {"name": "read_file", "args": {"path": "/workspace/a.txt"}, "id": "call_1"},
            {"name": "delete_all", "args": {}, "id": "call_2"},
        ],
    )
    out = graph.compile().invoke({"messages": [calls]})
    by_id = {m.tool_call_id: m for m in out["messages"] if isinstance(m, ToolMessage)}
    assert by_id["call_1"].content == "contents of /workspace/a.txt"
    assert by_id["call_2"].status == "error"
    assert RAN == ["read /workspace/a.txt"]


def test_importing_execgate_does_not_import_langchain() -> None:
    import subprocess
    import sys

    code = "import sys, execgate; print(any(m.startswith('langchain') for m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


APPROVAL_POLICY = """
package execgate
decision := {"allow": true, "obligations": {"approval": {"reason": "destructive", "approvers": ["ops"]}}} if {
    input.action.name == "delete_all"
}
decision := {"allow": true} if input.action.name != "delete_all"
"""


@pytest.mark.parametrize("answer", [True, False])
def test_approval_pauses_with_an_interrupt_and_resumes(
    tmp_path: pathlib.Path, answer: bool
) -> None:
    from langgraph.checkpoint.memory import InMemorySaver
    from langgraph.types import Command

    RAN.clear()
    key = execgate.SigningKey.generate()
    gate = execgate.Gate(APPROVAL_POLICY, key=key, audit=tmp_path / "audit.jsonl")
    model = ScriptedModel(
        messages=iter(
            [
                AIMessage(
                    content="",
                    tool_calls=[{"name": "delete_all", "args": {"confirm": True}, "id": "c1"}],
                ),
                AIMessage(content="finished"),
            ]
        )
    )
    agent = create_agent(
        model,
        tools=[delete_all],
        middleware=[ExecgateMiddleware(gate)],
        checkpointer=InMemorySaver(),
    )
    config = {"configurable": {"thread_id": "t-1"}}
    paused = agent.invoke({"messages": [{"role": "user", "content": "wipe"}]}, config=config)
    (pending,) = paused["__interrupt__"]
    assert pending.value["type"] == "execgate.approval" and pending.value["reason"] == "destructive"
    assert RAN == []
    done = agent.invoke(
        Command(resume={"approved": answer, "approver": "bob", "comment": "ok"}), config=config
    )
    tool_message = next(m for m in done["messages"] if isinstance(m, ToolMessage))
    if answer:
        assert RAN == ["delete_all"] and tool_message.content == "deleted"
    else:
        assert (
            RAN == []
            and tool_message.status == "error"
            and "approval refused by bob: ok" in tool_message.content
        )
    gate.close()
    report = execgate.verify_log(tmp_path / "audit.jsonl", key.verify_key)
    assert report.ok and report.unfinished == []
    decisions = [
        p
        for p in (
            execgate.Receipt.from_json(line).payload
            for line in (tmp_path / "audit.jsonl").read_text().splitlines()
        )
        if p["kind"] == "decision"
    ]
    # The pause is a deny pending approval; the resumed run's decision carries the answer.
    assert [(d["decision"], d.get("error")) for d in decisions] == [
        ("deny", "approval"),
        ("allow" if answer else "deny", None if answer else "approval"),
    ]
    assert "approval" not in decisions[0]
    assert decisions[1]["approval"]["approver"] == "bob"

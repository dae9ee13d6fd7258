"""``execgate demo`` with LangChain installed: a real ``create_agent`` run.

A scripted chat model (no network, no API key) asks for tools; the
:class:`~execgate.integrations.langchain.ExecgateMiddleware` authorizes each
call against the embedded example policy; denied calls return to the model as
error messages; a code-running tool is sandboxed and hits its CPU limit. Every
decision and completion is signed into a log that is verified at the end.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from typing import Any

from langchain.agents import create_agent
from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
from langchain_core.messages import AIMessage, ToolMessage
from langchain_core.tools import tool

from execgate._core import SigningKey
from execgate.context import principal, purpose
from execgate.demo import _style, example_gate, report_log
from execgate.demos.scenario import SCRIPT
from execgate.integrations.langchain import ExecgateMiddleware
from execgate.sandbox import Limits, Sandbox

__all__ = ["run"]


class ScriptedModel(GenericFakeChatModel):
    """Plays back the script; accepts the tools create_agent binds."""

    def bind_tools(self, tools: Any, **kwargs: Any) -> ScriptedModel:
        return self


def run(log_path: str | None = None, model_name: str | None = None) -> int:
    if log_path is None:
        log_path = os.path.join(tempfile.mkdtemp(prefix="execgate-demo-"), "audit.jsonl")
    key = SigningKey.generate()
    gate = example_gate(key=key, audit=log_path)
    box = Sandbox(limits=Limits(cpu=1, wall=10, memory="256M"))

    @tool
    def read_file(path: str) -> str:
        """Read a file from the workspace."""
        return f"<contents of {path}>"

    @tool
    def http_get(url: str) -> str:
        """Fetch a URL."""
        return f"<response from {url}>"

    @tool
    def send_email(to: str, body: str) -> str:
        """Send an email."""
        return f"sent to {to}: {body!r}"

    @tool
    def run_code(command: str) -> str:
        """Run a shell command in a sandbox."""
        done = gate.run(["/bin/sh", "-c", command], sandbox=box)
        return f"exit={done.exit_code} signal={done.signal} limit_hit={done.limit_hit}"

    if model_name:
        from langchain.chat_models import init_chat_model

        model: Any = init_chat_model(model_name)
        prompt = "Read /workspace/report.md, fetch https://api.github.com/repos/x/y, then stop."
    else:
        turns = [
            AIMessage(content="", tool_calls=[{"name": t, "args": a, "id": f"call_{i}"}])
            for i, (t, a, _) in enumerate(SCRIPT, 1)
        ]
        model = ScriptedModel(
            messages=iter([*turns, AIMessage(content="Done: some calls were refused.")])
        )
        prompt = "Summarize the report and tidy up."
    middleware = ExecgateMiddleware(
        gate,
        actions={
            "read_file": "fs.read",
            "http_get": "http.get",
            "run_code": "shell.exec",
            "send_email": "mail.send",
        },
    )
    # No context_schema: the run's context is a plain dict (typed as Any here).
    agent: Any = create_agent(
        model, tools=[read_file, http_get, run_code, send_email], middleware=[middleware]
    )
    operator: dict[str, Any] = {"id": "ops-bot", "roles": ["agent", "operator"]}
    start = time.perf_counter()
    # The run's context names the principal for the middleware; the ambient
    # block names it for gate.run inside the run_code tool.
    with principal(operator["id"], roles=operator["roles"]), purpose("execgate demo"):
        result = agent.invoke(
            {"messages": [{"role": "user", "content": prompt}]},
            context={"principal": operator, "purpose": "execgate demo"},
        )
    elapsed = time.perf_counter() - start
    gate.close()

    color = sys.stdout.isatty() and "NO_COLOR" not in os.environ
    print(
        f"execgate demo: a create_agent run, policy {gate.policy_digest[:16]}, "
        f"principal {operator['id']}\n"
    )
    notes = {f"call_{i}": note for i, (_, _, note) in enumerate(SCRIPT, 1)}
    calls = {
        c["id"]: c for m in result["messages"] if isinstance(m, AIMessage) for c in m.tool_calls
    }
    for m in result["messages"]:
        if not isinstance(m, ToolMessage):
            continue
        call: dict[str, Any] = dict(calls.get(m.tool_call_id) or {})
        meta = m.response_metadata.get("execgate", {})
        allowed = meta.get("decision") == "allow"
        verdict = _style("allowed" if allowed else "DENIED ", "32" if allowed else "31;1", color)
        args = ", ".join(f"{k}={v!r}" for k, v in (call.get("args") or {}).items())
        text = m.content if allowed else "; ".join(meta.get("reasons") or [])
        print(f"  {verdict}  {call.get('name')}({args})")
        print(f"           {notes.get(m.tool_call_id, '')}: {text}")
    final = result["messages"][-1].content
    print(f"\n  model's last word: {final!r}  ({elapsed:.2f} s, including the sandboxed run)")
    ok = report_log(log_path, key, color)
    return 0 if ok else 1

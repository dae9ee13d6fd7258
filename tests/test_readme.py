"""The README's examples run as written."""

from __future__ import annotations

import pathlib
import re
from typing import Any

import pytest

import execgate

README = (pathlib.Path(__file__).parent.parent / "README.md").read_text()
pytest_plugins = ["pytester"]


def example(name: str) -> str:
    match = re.search(rf"<!-- example: {name}\b.*?-->\s*```python\n(.*?)```", README, re.S)
    assert match, f"README example {name!r} not found"
    return match.group(1)


def quickstart_gate() -> execgate.Gate:
    source = re.search(r'gate = execgate\.Gate\("""(.*?)"""\)', README, re.S)
    assert source
    return execgate.Gate(source.group(1))


def test_quickstart_policy_decides_as_described() -> None:
    gate = quickstart_gate()
    assert gate.check("fs.read", {"path": "/workspace/report.md"}).allowed
    denied = gate.check("fs.read", {"path": "/etc/shadow"})
    assert not denied.allowed and denied.reasons == ("only reads under /workspace/ are allowed",)


def test_langchain_example() -> None:
    pytest.importorskip("langchain")
    from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
    from langchain_core.messages import AIMessage, ToolMessage

    class ScriptedModel(GenericFakeChatModel):
        def bind_tools(self, tools: Any, **kwargs: Any) -> ScriptedModel:
            return self

    model = ScriptedModel(
        messages=iter(
            [
                AIMessage(
                    content="",
                    tool_calls=[{"name": "read_file", "args": {"path": "/etc/shadow"}, "id": "c1"}],
                ),
                AIMessage(content="I may not read that."),
            ]
        )
    )
    namespace: dict[str, Any] = {"model": model, "gate": quickstart_gate()}
    exec(example("langchain"), namespace)
    tool_message = next(m for m in namespace["result"]["messages"] if isinstance(m, ToolMessage))
    assert tool_message.status == "error" and "only reads under /workspace/" in tool_message.content


def test_pytest_example(pytester: pytest.Pytester) -> None:
    policies = pytester.mkdir("policies")
    (policies / "policy.rego").write_text(
        'package execgate\ndefault decision := {"allow": false, "reasons": ["only reads under /workspace/"]}\n'
        'decision := {"allow": true} if startswith(input.action.args.path, "/workspace/")\n'
    )
    pytester.makepyfile(test_example=example("pytest"))
    pytester.runpytest("-p", "no:cacheprovider", "-p", "no:asyncio").assert_outcomes(passed=1)

"""A guarded LangChain tool passes LangChain's standard tool conformance suite
(`langchain-tests`' ToolsUnitTests) unchanged."""

from __future__ import annotations

import pytest

pytest.importorskip("langchain_tests")

from langchain_core.tools import BaseTool, tool
from langchain_tests.unit_tests import ToolsUnitTests

import execgate
from execgate.integrations.langchain import guard_tool

GATE = execgate.Gate('package execgate\ndecision := input.action.name == "multiply"\n')


@tool
def multiply(a: int, b: int) -> int:
    """Multiply two integers."""
    return a * b


class TestGuardedToolConformance(ToolsUnitTests):
    @property
    def tool_constructor(self) -> BaseTool:
        return guard_tool(multiply, GATE)

    @property
    def tool_invoke_params_example(self) -> dict[str, int]:
        return {"a": 6, "b": 7}

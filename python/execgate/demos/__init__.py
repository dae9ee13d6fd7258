"""``execgate demo --framework NAME``: one scenario, one scripted agent per framework.

Each framework's module runs a real agent loop of that framework with a
scripted model (no network, no API key) through :mod:`execgate.demos.scenario`,
then verifies the signed log and writes the public key beside it.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable

__all__ = ["FRAMEWORKS", "load", "run"]

# NAME -> (module, the extra that installs the framework)
FRAMEWORKS: dict[str, tuple[str, str]] = {
    "langchain": ("execgate.agent_demo", "langchain"),
    "openai-agents": ("execgate.demos.openai_agents", "openai-agents"),
    "pydantic-ai": ("execgate.demos.pydantic_ai", "pydantic-ai"),
    "adk": ("execgate.demos.adk", "adk"),
}


def load(framework: str) -> Callable[[str | None], int]:
    """The ``run(log_path)`` of ``framework``'s demo; ImportError when the
    framework is not installed."""
    module = importlib.import_module(FRAMEWORKS[framework][0])
    run: Callable[[str | None], int] = module.run
    return run


def run(framework: str, log_path: str | None = None) -> int:
    """Runs the demo of ``framework``."""
    return load(framework)(log_path)

"""The MCP gateway: every tool call of any MCP server, gated.

``execgate mcp ... -- COMMAND`` starts an MCP server as a child and relays the
Model Context Protocol between it and the client (an MCP host such as Claude
Desktop or an IDE) over stdio; ``execgate mcp --listen ... --upstream URL``
does the same for a Streamable HTTP server, and ``execgate mcp --listen ...
-- COMMAND`` serves a stdio server over Streamable HTTP, one (confined) child
per HTTP session. Each ``tools/call`` is driven
through the gate's call pipeline: denied calls never reach the server,
arguments are rewritten and outputs redacted as the obligations say, approval
is asked of the human through MCP elicitation, and every call that ran gets a
completion record. A policy rule ``data.execgate.visible`` (when the policy
has one) decides which tools ``tools/list`` shows.

The stdio relay needs nothing beyond execgate; the HTTP relay needs the
``mcp`` extra (``pip install 'execgate[mcp]'``), whose Starlette, uvicorn and
httpx it uses.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from execgate.errors import PolicyError
from execgate.integrations.mcp._gateway import (
    CLIENT_METHODS,
    DEFAULT_MAX_MESSAGE,
    Gateway,
    Session,
)
from execgate.integrations.mcp.stdio import StdioProxy

if TYPE_CHECKING:
    from execgate.gate import DataLike, Gate, PolicyLike

__all__ = [
    "CLIENT_METHODS",
    "DEFAULT_MAX_MESSAGE",
    "DEFAULT_VISIBLE",
    "Gateway",
    "Session",
    "StdioProxy",
    "gateway_for",
]

#: The rule that decides which tools a client is shown, when the policy has it.
DEFAULT_VISIBLE = "data.execgate.visible"


def gateway_for(
    gate: Gate,
    policy: PolicyLike | Sequence[Any],
    *,
    data: DataLike | None = None,
    visible: str | None = DEFAULT_VISIBLE,
    **options: Any,
) -> Gateway:
    """A :class:`Gateway` deciding calls with ``gate``, and tool visibility
    with the rule ``visible`` of the same ``policy`` and ``data``.

    When the policy has no such rule every tool is listed; when it has one, a
    tool is listed only if the rule is true for it (undefined hides it).
    ``visible=None`` turns visibility off. ``options`` go to :class:`Gateway`.
    """
    from execgate.gate import Gate

    seen: Gate | None = None
    if visible is not None:
        try:
            seen = Gate(policy, data=data, entrypoint=visible)
        except PolicyError as e:
            if "not a valid rule path" not in str(e):
                raise
    return Gateway(gate, visible=seen, **options)

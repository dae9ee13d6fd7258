"""execgate: action-level authorization for AI agents.

Decorate a tool with ``@gate.guard`` and every call is evaluated against Rego
policies natively, then blocked with reasons or allowed.
"""

from execgate._core import Decision, __version__
from execgate.context import context, current_context, current_principal, principal, purpose
from execgate.errors import (
    ActionDenied,
    ApprovalRequired,
    ArgumentError,
    AuditLogError,
    ExecgateError,
    PolicyError,
    SandboxError,
    SignatureError,
)
from execgate.gate import DEFAULT_ENTRYPOINT, Gate

__all__ = [
    "DEFAULT_ENTRYPOINT",
    "ActionDenied",
    "ApprovalRequired",
    "ArgumentError",
    "AuditLogError",
    "Decision",
    "ExecgateError",
    "Gate",
    "PolicyError",
    "SandboxError",
    "SignatureError",
    "__version__",
    "context",
    "current_context",
    "current_principal",
    "principal",
    "purpose",
]
